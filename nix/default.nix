# Non-flake entry point:
#   nix-build nix -A netconverge
#   imports = [ (import /path/to/netconverge/nix { }).module ];
{
  pkgs ? import <nixpkgs> { },
}:

{
  netconverge = pkgs.callPackage ./package.nix { };
  module = ./module.nix;
  overlay = final: _prev: { netconverge = final.callPackage ./package.nix { }; };
}
