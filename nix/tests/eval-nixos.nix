# A NixOS evaluation in miniature, as nixos/lib/eval-config.nix does it:
# lib.evalModules (the real module system, ./lib.nix) over the option
# declarations of ./nixos-options.nix, `pkgs` and `utils` as module
# arguments (./pkgs.nix), and the given modules. NixOS fails the system
# build on a false assertion; `failedAssertions` lists their messages so
# that tests can expect them.
{ lib, pkgs }:
modules:
let
  ev = lib.evalModules {
    modules = [
      ./nixos-options.nix
      {
        _module.args = {
          inherit pkgs;
          inherit (pkgs) utils;
        };
      }
    ]
    ++ modules;
  };
in
ev
// {
  failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) ev.config.assertions);
}
