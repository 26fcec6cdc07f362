# Example for services.netconverge.settings: one node (198.18.1.0/24) of a
# k3s cluster (198.18.0.0/16) with one peer, every section present.
# Underlay addresses are documentation ranges (192.0.2.0/24).
{
  # Seed of the derived, stable VXLAN MAC (default: /etc/machine-id).
  node_name = "node-a";

  # The VXLAN device(s) netconverge owns (flannel's names and port).
  vxlan = [
    {
      name = "flannel.1";
      vni = 1;
      port = 8472;
      underlay = "eth0";
      family = "ipv4";
    }
  ];

  # This node's VTEP address: its pod subnet's network address as /32.
  address = [
    {
      dev = "flannel.1";
      cidr = "198.18.1.0/32";
    }
  ];

  # One entry per remote node: neighbour, FDB entry and route.
  peer = [
    {
      dev = "flannel.1";
      subnet = "198.18.2.0/24";
      vtep_ip = "192.0.2.12";
      vtep_mac = "aa:c3:55:b1:c3:25";
    }
  ];

  # flannel's masquerade rules for pod traffic leaving the cluster.
  nat = {
    backend = "nftables";
    masquerade = true;
    random_fully = true;
    # network and subnet come from [lease]
  };

  # /run/flannel/subnet.env for the flannel CNI plugin.
  lease = {
    mode = "write";
    path = "/run/flannel/subnet.env";
    state_dir = "/var/lib/netconverge";
    ipmasq = true;
    network = "198.18.0.0/16";
    subnet = "198.18.1.0/24";
  };

  daemon = {
    ready = "converged";
    networkmanager = "auto";
    resync_secs = 60;
  };
}
