# A k3s server node whose pod network comes from netconverge instead of
# k3s's embedded flannel: netconverge owns the VXLAN device, the peer
# routes/FDB/neighbours, the masquerade rules and /run/flannel/subnet.env;
# the flannel CNI plugin (bundled with k3s) reads that file as usual.
#
# Addresses are documentation/benchmark ranges: underlay 192.0.2.0/24,
# pods 198.18.0.0/16, services 198.19.0.0/16. Node "node-a" has pod subnet
# 198.18.1.0/24 at 192.0.2.11; its peer "node-b" has 198.18.2.0/24 at
# 192.0.2.12 (node-b's file is the mirror image of this one).
#
# Use it from configuration.nix:  imports = [ ./k3s-node.nix ];
# (with the flake: imports = [ netconverge.nixosModules.default ] and drop
# the relative import below).
{ pkgs, ... }:

let
  # The CNI configuration k3s writes itself when its own flannel runs; with
  # --flannel-backend=none it writes none, so provide it. The flannel plugin
  # turns FLANNEL_SUBNET/FLANNEL_MTU/FLANNEL_IPMASQ into a bridge+host-local
  # config.
  cniConf = pkgs.writeText "10-flannel.conflist" (
    builtins.toJSON {
      name = "cbr0";
      cniVersion = "1.0.0";
      plugins = [
        {
          type = "flannel";
          delegate = {
            hairpinMode = true;
            forceAddress = true;
            isDefaultGateway = true;
          };
        }
        {
          type = "portmap";
          capabilities.portMappings = true;
        }
        {
          type = "bandwidth";
          capabilities.bandwidth = true;
        }
      ];
    }
  );
in
{
  imports = [ ../../nix/module.nix ];

  services.k3s = {
    enable = true;
    role = "server";
    extraFlags = [
      "--flannel-backend=none"
      "--node-ip=192.0.2.11"
      "--cluster-cidr=198.18.0.0/16"
      "--service-cidr=198.19.0.0/16"
      "--cluster-dns=198.19.0.10"
    ];
  };

  # k3s reads its CNI config from its agent directory.
  systemd.tmpfiles.rules = [
    "d /var/lib/rancher/k3s/agent/etc/cni/net.d 0755 root root -"
    "L+ /var/lib/rancher/k3s/agent/etc/cni/net.d/10-flannel.conflist - - - - ${cniConf}"
  ];

  # The module marks flannel.1 unmanaged in NetworkManager by itself.
  networking.networkmanager.enable = true;

  networking.firewall = {
    # VXLAN from the other nodes, and pod traffic on the overlay/bridge.
    allowedUDPPorts = [ 8472 ];
    trustedInterfaces = [
      "flannel.1"
      "cni0"
    ];
  };
  # With networking.nftables.enable, set networking.nftables.flushRuleset =
  # false: a flushing reload of nftables.service would drop netconverge's
  # NAT table until its next resync.

  services.netconverge = {
    enable = true;
    settings = {
      node_name = "node-a";

      vxlan = [
        {
          name = "flannel.1";
          vni = 1;
          port = 8472;
          underlay = "eth0";
          family = "ipv4";
        }
      ];

      address = [
        {
          dev = "flannel.1";
          cidr = "198.18.1.0/32";
        }
      ];

      # vtep_mac: node-b's VXLAN MAC, stable because derived from its
      # node_name (`netconverge show` on node-b prints it).
      peer = [
        {
          dev = "flannel.1";
          subnet = "198.18.2.0/24";
          vtep_ip = "192.0.2.12";
          vtep_mac = "aa:c3:55:b1:c3:25";
        }
      ];

      nat = {
        backend = "nftables";
        masquerade = true;
        # network and subnet come from [lease]
      };

      # This subnet must be the one k3s assigned to the node
      # (`kubectl get node node-a -o jsonpath='{.spec.podCIDR}'`).
      lease = {
        mode = "write";
        ipmasq = true;
        network = "198.18.0.0/16";
        subnet = "198.18.1.0/24";
      };

      # READY (and so k3s) only once the overlay is really up.
      daemon.ready = "converged";
    };
  };
}
