# Minimal stand-ins for the parts of nixpkgs' `lib`, `pkgs` and NixOS'
# `utils` that nix/package.nix and nix/module.nix use, so that CI can
# evaluate them without nixpkgs (which cannot be fetched there).
#
# Honesty rules: every function here has the same name, arguments and
# result SHAPE as the real one (mkIf/mkMerge/mkDefault produce the same
# `_type` records the real module system consumes; callPackage passes only
# the arguments a function asks for). Types and option declarations are
# inert markers: these stubs check how the module is wired, not the NixOS
# type system. Anything the module uses that is missing here fails the
# evaluation loudly, which is the point: it keeps the module to standard
# idioms.
let
  # Paths of stub "derivations": deterministic, never realised.
  storePath = name: "/nix/store/00000000000000000000000000000000-${name}";
  drv = name: attrs: attrs // { inherit name; outPath = storePath name; type = "derivation"; };

  lib = rec {
    # --- options ----------------------------------------------------------
    mkOption = attrs: attrs // { _type = "option"; };
    mkEnableOption = name: mkOption {
      default = false;
      example = true;
      description = "Whether to enable ${name}.";
      type = types.bool;
    };
    literalExpression = text: { _type = "literalExpression"; inherit text; };
    literalMD = text: { _type = "literalMD"; inherit text; };
    types = {
      bool = { name = "bool"; };
      str = { name = "str"; };
      path = { name = "path"; };
      package = { name = "package"; };
      listOf = t: { name = "listOf"; elemType = t; };
    };

    # --- module system records (same shapes as lib/modules.nix) -------------
    mkIf = condition: content: { _type = "if"; inherit condition content; };
    mkMerge = contents: { _type = "merge"; inherit contents; };
    mkOverride = priority: content: { _type = "override"; inherit priority content; };
    mkDefault = mkOverride 1000;
    mkForce = mkOverride 50;

    # --- plain functions (real semantics) -----------------------------------
    optional = cond: x: if cond then [ x ] else [ ];
    optionalString = cond: s: if cond then s else "";
    hasPrefix = pre: s: builtins.substring 0 (builtins.stringLength pre) s == pre;
    removePrefix =
      pre: s:
      if hasPrefix pre s then
        builtins.substring (builtins.stringLength pre) (builtins.stringLength s) s
      else
        s;
    catAttrs = builtins.catAttrs;
    genAttrs =
      names: f:
      builtins.listToAttrs (
        map (n: {
          name = n;
          value = f n;
        }) names
      );
    concatMapStringsSep = sep: f: l: builtins.concatStringsSep sep (map f l);
    importTOML = path: builtins.fromTOML (builtins.readFile path);
    getExe = x: "${x}/bin/${x.meta.mainProgram}";

    # lib.fileset: records what was asked for; toSource keeps the root.
    fileset = {
      unions = list: { _fileset = "unions"; inherit list; };
      maybeMissing = path: { _fileset = "maybeMissing"; inherit path; };
      fileFilter = predicate: path: { _fileset = "fileFilter"; inherit predicate path; };
      toSource = { root, fileset }: { outPath = root; inherit root fileset; };
    };

    licenses.asl20 = { spdxId = "Apache-2.0"; };
    platforms.linux = [ "x86_64-linux" "aarch64-linux" ];
  };

  platform = { system = "x86_64-linux"; canExecute = other: other.system == "x86_64-linux"; };

  pkgs = rec {
    inherit lib;
    stdenv = { buildPlatform = platform; hostPlatform = platform; };

    # callPackage: like lib.callPackageWith, auto-arguments from this set.
    callPackage =
      fn: overrides:
      let
        f = if builtins.isFunction fn then fn else import fn;
      in
      f (builtins.intersectAttrs (builtins.functionArgs f) pkgs // overrides);

    # buildRustPackage: the derivation carries its arguments for inspection.
    rustPlatform.buildRustPackage = args: drv "${args.pname}-${args.version}" args;

    installShellFiles = drv "install-shell-files" { };
    coreutils = drv "coreutils" { };
    nftables = drv "nftables" { };
    iptables = drv "iptables" { };

    runCommand = name: env: script: drv name { inherit env script; };

    formats.toml = { }: {
      type = { name = "toml value"; };
      generate = name: value: drv name { inherit value; };
    };
  };

  # nixos/lib/utils.nix: escapeSystemdExecArg(s), same definition.
  utils = rec {
    escapeSystemdExecArg =
      arg:
      let
        s =
          if builtins.isPath arg then
            "${arg}"
          else if builtins.isString arg then
            arg
          else if builtins.isInt arg || builtins.isFloat arg then
            toString arg
          else
            throw "escapeSystemdExecArg only allows strings, paths and numbers";
      in
      builtins.replaceStrings [ "%" "$" ] [ "%%" "$$" ] (builtins.toJSON s);
    escapeSystemdExecArgs = lib.concatMapStringsSep " " escapeSystemdExecArg;
  };
in
{
  inherit lib pkgs utils storePath;
}
