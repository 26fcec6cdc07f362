# A three-node k3s cluster whose pod network comes from netconverge instead
# of k3s's embedded flannel. Every host imports this one module and sets only
# its own networking.hostName ("node-a", "node-b" or "node-c"); node-a is the
# k3s server, the others are agents. See docs/k3s.md.
#
# netconverge owns, on each host: flannel.1, its VTEP address, the peers
# (neighbour, FDB, route) to the two other nodes, the masquerade rules,
# /run/flannel/subnet.env and the CNI conflist
# /etc/cni/net.d/10-netconverge.conflist (bridge + host-local + portmap),
# which is where containerd reads CNI configs when k3s runs with
# --flannel-backend=none. The plugins come from nixpkgs' cni-plugins,
# linked to /opt/cni/bin (containerd's default plugin directory in that
# mode).
#
# Use it from each host's configuration.nix:
#   imports = [ ./fleet.nix ];  networking.hostName = "node-b";
# (with the flake: imports = [ netconverge.nixosModules.default ] and drop
# the relative import below).
{
  config,
  lib,
  pkgs,
  ...
}:

let
  fleet = import ./fleet-cluster.nix;
  me = lib.findFirst (n: n.name == config.networking.hostName) (throw
    "examples/nixos/fleet.nix: networking.hostName ${config.networking.hostName} is not a node of fleet-cluster.nix"
  ) fleet.node;
  server = lib.head fleet.node;
  isServer = me.name == server.name;
in
{
  imports = [ ../../nix/module.nix ];

  services.k3s = {
    enable = true;
    role = if isServer then "server" else "agent";
    serverAddr = lib.mkIf (!isServer) "https://${server.address}:6443";
    tokenFile = lib.mkIf (!isServer) "/var/lib/rancher/k3s/agent-token";
    # --flannel-backend is a server flag; agents inherit "none" from it.
    extraFlags = [
      "--node-ip=${me.address}"
    ]
    ++ lib.optionals isServer [
      "--flannel-backend=none"
      "--cluster-cidr=${fleet.network}"
      "--service-cidr=198.19.0.0/16"
      "--cluster-dns=198.19.0.10"
    ];
  };

  # With flannel off, containerd's CNI defaults apply: configs from
  # /etc/cni/net.d (netconverge writes its conflist there), plugins from
  # /opt/cni/bin. Link nixpkgs' plugins (bridge, host-local, portmap, ...).
  systemd.tmpfiles.rules = [
    "L+ /opt/cni/bin - - - - ${pkgs.cni-plugins}/bin"
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

  services.netconverge = {
    enable = true;
    settings = {
      # The same attrset on every host; node_name defaults to
      # networking.hostName.
      inherit fleet;

      nat = {
        backend = "nftables";
        masquerade = true;
        # network and subnet come from the fleet (through [lease])
      };

      # /etc/cni/net.d/10-netconverge.conflist: bridge cni0, this node's
      # subnet, MTU of flannel.1, routes to the cluster network, portmap.
      cni.plugin = "bridge";

      # READY (and so k3s) only once the overlay is really up.
      daemon.ready = "converged";
    };
  };
}
