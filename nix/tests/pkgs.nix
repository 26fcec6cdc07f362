# Stand-ins for the parts of nixpkgs' `pkgs` (and NixOS' `utils`) that
# nix/package.nix, nix/module.nix and the NixOS examples use. Everything
# else comes from the real `lib` (./lib.nix): callPackage is
# lib.callPackageWith, platforms are lib.systems.elaborate, types are
# lib.types.
#
# A stand-in derivation is an attrset with type = "derivation", name and a
# fake, never realised outPath whose hash covers the name and the
# serialisable arguments, so that a changed config gives a changed path (as
# in nixpkgs) and equal inputs give equal paths. Builders keep their
# arguments for inspection by the tests; nothing is built.
#
# pkgs.formats.toml lives in nixpkgs' pkgs/pkgs-lib/formats.nix, not in lib:
# the stand-in has the same `type` (built from lib.types: bool, int, float,
# str, path, attrsOf and listOf of itself, described "TOML value"; no null),
# and the same `generate` (callPackage of a runCommand that hands
# builtins.toJSON of the value to remarshal's json2toml). The tests render
# that JSON to TOML themselves (eval-module.nix) to run `netconverge
# validate` on it.
{
  lib,
  system ? "x86_64-linux",
}:

let
  platform = lib.systems.elaborate system;

  # Arguments that are plain data (or derivations, via their outPath) go
  # into the fake hash; functions, paths and source trees (hashing those
  # would read or copy files) do not.
  hashable =
    v:
    if v ? _isLibCleanSourceWith then
      "<source>"
    else if lib.isDerivation v then
      v.outPath
    else if builtins.isAttrs v then
      lib.mapAttrs (_: hashable) (lib.filterAttrs (_: x: !(builtins.isFunction x) && !(builtins.isPath x)) v)
    else if builtins.isList v then
      map hashable (builtins.filter (x: !(builtins.isFunction x) && !(builtins.isPath x)) v)
    else
      v;
  storePath =
    name: args:
    "${builtins.storeDir}/${
      builtins.substring 0 32 (builtins.hashString "sha256" (name + builtins.toJSON (hashable args)))
    }-${name}";
  mkDerivation =
    name: args:
    args
    // {
      type = "derivation";
      inherit name;
      outPath = storePath name args;
      drvPath = storePath "${name}.drv" args;
      outputs = [ "out" ];
      outputName = "out";
    };
  leaf = name: mkDerivation name { pname = name; };
in
lib.fix (
  pkgs:
  {
    inherit lib system;
    stdenv = {
      buildPlatform = platform;
      hostPlatform = platform;
      inherit (platform) system;
    };

    callPackage = lib.callPackageWith pkgs;

    rustPlatform.buildRustPackage = args: mkDerivation "${args.pname}-${args.version}" args;

    runCommand =
      name: env: buildCommand:
      mkDerivation name (env // { inherit buildCommand; });
    writeText = name: text: mkDerivation name { inherit text; };

    formats.toml =
      { }:
      {
        type =
          let
            valueType =
              lib.types.oneOf [
                lib.types.bool
                lib.types.int
                lib.types.float
                lib.types.str
                lib.types.path
                (lib.types.attrsOf valueType)
                (lib.types.listOf valueType)
              ]
              // {
                description = "TOML value";
              };
          in
          valueType;
        generate =
          name: value:
          pkgs.callPackage (
            { runCommand, remarshal }:
            runCommand name {
              nativeBuildInputs = [ remarshal ];
              value = builtins.toJSON value;
              passAsFile = [ "value" ];
              preferLocalBuild = true;
            } ''json2toml "$valuePath" "$out"''
          ) { };
      };

    # nixos/lib/utils.nix, passed to NixOS modules as `utils`: same
    # definitions.
    utils = rec {
      escapeSystemdExecArg =
        arg:
        let
          s =
            if builtins.isPath arg then
              "${arg}"
            else if builtins.isString arg then
              arg
            else if builtins.isInt arg || builtins.isFloat arg || lib.isDerivation arg then
              toString arg
            else
              throw "escapeSystemdExecArg only allows strings, paths, numbers and derivations";
        in
        builtins.replaceStrings [ "%" "$" ] [ "%%" "$$" ] (builtins.toJSON s);
      escapeSystemdExecArgs = lib.concatMapStringsSep " " escapeSystemdExecArg;
    };
  }
  // lib.genAttrs [
    "cni-plugins"
    "coreutils"
    "installShellFiles"
    "iptables"
    "nftables"
    "remarshal"
  ] leaf
)
