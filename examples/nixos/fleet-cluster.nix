# The whole cluster as one attrset: the SAME value on every host (import
# this file from each host's configuration, or pass it from the flake).
# It becomes [fleet] in each host's netconverge.toml; every host picks
# itself out by its networking.hostName (services.netconverge's default
# node_name) and derives its VXLAN device, VTEP address, subnet.env, CNI
# conflist and one peer per other node, with every VTEP MAC derived from
# the node names: nothing is copied from host to host.
#
# Each `subnet` must be the podCIDR k3s gave that node (see docs/k3s.md,
# "Pod CIDRs"). Documentation ranges only: underlay 192.0.2.0/24, pods
# 198.18.0.0/16.
{
  network = "198.18.0.0/16";
  vni = 1;
  node = [
    {
      name = "node-a";
      address = "192.0.2.11";
      subnet = "198.18.1.0/24";
    }
    {
      name = "node-b";
      address = "192.0.2.12";
      subnet = "198.18.2.0/24";
    }
    {
      name = "node-c";
      address = "192.0.2.13";
      subnet = "198.18.3.0/24";
    }
  ];
}
