# Evaluates flake.nix's outputs and nix/default.nix with nixpkgs' real lib
# (./lib.nix) and the `pkgs` stand-ins of ./pkgs.nix (nixpkgs itself cannot
# be fetched in CI):
#
#   nix-instantiate --eval --strict --json nix/tests/eval-flake.nix
let
  lib = import ./lib.nix;
  pkgsFor = system: import ./pkgs.nix { inherit lib system; };
  pkgs = pkgsFor "x86_64-linux";

  flake = import ../../flake.nix;
  systems = [
    "x86_64-linux"
    "aarch64-linux"
  ];
  # A nixpkgs flake input: lib + legacyPackages.<system>.
  nixpkgs = {
    inherit lib;
    legacyPackages = lib.genAttrs systems pkgsFor;
  };
  self = flake.outputs { inherit self nixpkgs; };
  overlaid = self.overlays.default pkgs pkgs;
  nonFlake = import ../default.nix { inherit pkgs; };

  # A system built from the flake's module with its overlay applied: the
  # module's `package` default picks pkgs.netconverge up (marked, since the
  # callPackage fallback builds an identical stand-in).
  overlayPkgs = pkgs // {
    netconverge = overlaid.netconverge // {
      fromOverlay = true;
    };
  };
  systemWith =
    p:
    import ./eval-nixos.nix {
      inherit lib;
      pkgs = p;
    } [
      self.nixosModules.default
      { services.netconverge.enable = true; }
    ];
  withOverlay = systemWith overlayPkgs;
  withoutOverlay = systemWith pkgs;

  checks = [
    {
      name = "flake input nixpkgs";
      ok = flake.inputs.nixpkgs.url == "github:NixOS/nixpkgs/nixos-unstable";
    }
    {
      name = "packages.<system>.default and .netconverge for ${builtins.concatStringsSep ", " systems}";
      ok = builtins.all (
        s: self.packages.${s}.default.pname == "netconverge" && self.packages.${s}.netconverge.pname == "netconverge"
      ) systems;
    }
    {
      name = "nixosModules.default is nix/module.nix";
      ok = self.nixosModules.default == ../module.nix && self.nixosModules.netconverge == ../module.nix;
    }
    {
      name = "overlays.default adds pkgs.netconverge";
      ok = overlaid.netconverge.pname == "netconverge";
    }
    {
      name = "nixosModules.default + overlay: services.netconverge.package defaults to pkgs.netconverge";
      ok =
        withOverlay.config.services.netconverge.package.fromOverlay or false
        && !(withoutOverlay.config.services.netconverge.package ? fromOverlay)
        && withOverlay.failedAssertions == [ ];
    }
    {
      name = "checks.<system>.package builds the package";
      ok = builtins.all (s: self.checks.${s}.package.pname == "netconverge") systems;
    }
    {
      name = "nix/default.nix exposes netconverge, module, overlay";
      ok =
        nonFlake.netconverge.pname == "netconverge"
        && nonFlake.module == ../module.nix
        && (nonFlake.overlay pkgs pkgs).netconverge.pname == "netconverge";
    }
  ];
  failed = builtins.filter (c: !c.ok) checks;
in
if failed != [ ] then
  throw "eval-flake: FAILED:\n  - ${builtins.concatStringsSep "\n  - " (map (c: c.name) failed)}"
else
  { passed = map (c: c.name) checks; }
