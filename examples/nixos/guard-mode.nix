# Guard mode: k3s keeps its embedded flannel (VXLAN backend, default), and
# netconverge only guards /run/flannel/subnet.env.
#
# Why: the file lives on tmpfs and flannel writes it once at start. After a
# reboot where flannel has not (yet) started, or after something removed
# /run/flannel, every new pod fails with "loadFlannelSubnetEnv failed: no
# such file". In `preserve` mode netconverge keeps a last-known-good copy in
# /var/lib/netconverge and puts it back whenever the file is missing;
# flannel stays the only writer of its content.
#
# Use it from configuration.nix:  imports = [ ./guard-mode.nix ];
_:

{
  imports = [ ../../nix/module.nix ];

  services.k3s = {
    enable = true;
    role = "server";
    extraFlags = [
      "--node-ip=192.0.2.11"
      "--cluster-cidr=198.18.0.0/16"
      "--service-cidr=198.19.0.0/16"
      "--cluster-dns=198.19.0.10"
    ];
  };

  networking.firewall.allowedUDPPorts = [ 8472 ];

  services.netconverge = {
    enable = true;
    settings = {
      # No vxlan/peer/nat sections: flannel owns the overlay and the NAT
      # rules; netconverge touches neither.
      lease = {
        mode = "preserve";
        path = "/run/flannel/subnet.env";
        state_dir = "/var/lib/netconverge";
      };
      daemon = {
        # k3s is ordered after netconverge (the module adds After=/Requires=
        # to k3s.service), and here the file netconverge guards is written
        # by k3s itself: READY must not wait for it.
        ready = "applied";
        # Nothing here for NetworkManager to disturb.
        networkmanager = "off";
      };
    };
  };
}
