# One host of the three-node fleet in ./fleet.nix: the k3s server node-a.
# The other hosts are the same two lines with their own name. (This file
# used to hand-write node-a's peers; the fleet derives them.)
{
  imports = [ ./fleet.nix ];
  networking.hostName = "node-a";
}
