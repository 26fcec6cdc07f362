{
  description = "netconverge: declarative, self-healing VXLAN overlay, NAT and flannel lease for k3s/flannel nodes";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAllSystems (pkgs: {
        netconverge = pkgs.callPackage ./nix/package.nix { };
        default = self.packages.${pkgs.stdenv.hostPlatform.system}.netconverge;
      });

      # pkgs.netconverge, which the module's `package` option picks up.
      overlays.default = final: _prev: { netconverge = final.callPackage ./nix/package.nix { }; };

      nixosModules.default = ./nix/module.nix;
      nixosModules.netconverge = self.nixosModules.default;

      checks = forAllSystems (pkgs: {
        package = self.packages.${pkgs.stdenv.hostPlatform.system}.netconverge;
      });
    };
}
