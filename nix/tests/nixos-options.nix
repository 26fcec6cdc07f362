# The NixOS options nix/module.nix and examples/nixos/*.nix read or define,
# declared with the real lib.types the way NixOS declares them (shapes from
# nixos/modules/misc/assertions.nix, nixos/modules/system/etc/etc.nix,
# nixos/lib/systemd-unit-options.nix, services/networking/networkmanager.nix,
# services/cluster/k3s, networking/firewall.nix), and nothing else: a
# definition of any other option is an evaluation error ("The option `…'
# does not exist"), so the module cannot silently grow a dependency on an
# option these tests do not model.
#
# What is simplified, on purpose: submodules carry only the sub-options used
# here (an unknown one is again an error), and no unit file is rendered
# (.ci/check-nix.sh renders serviceConfig the way NixOS does, one line per
# list element, for the parity and exposure checks).
{ lib, ... }:

let
  inherit (lib) mkOption types;

  # nixos/lib/systemd-lib.nix: unitNameType.
  unitName = types.strMatching "[a-zA-Z0-9@%:_.\\-]+[.](service|socket|device|mount|automount|swap|target|path|timer|scope|slice)";

  # nixos/lib/systemd-unit-options.nix: unitOption. All definitions lists:
  # concatenated (repeated lines); otherwise they must be equal. The check
  # stands in for the error NixOS raises when rendering a value that is no
  # unit-file atom.
  atom = x: builtins.isBool x || builtins.isInt x || lib.isStringLike x;
  unitOption = lib.mkOptionType {
    name = "systemd option";
    description = "systemd option";
    check = x: atom x || (builtins.isList x && builtins.all atom x);
    merge =
      loc: defs:
      let
        defs' = lib.filterOverrides defs;
      in
      if builtins.any (d: builtins.isList d.value) defs' then
        lib.concatMap (d: lib.toList d.value) defs'
      else
        lib.mergeEqualOption loc defs';
  };

  # The serviceConfig check NixOS applies (checkService): Type and Restart
  # must be among the values NixOS accepts (the same lists).
  oneOfOrAbsent =
    key: allowed: cfg:
    !(cfg ? ${key}) || builtins.elem cfg.${key} allowed;
  serviceConfigType = types.addCheck (types.attrsOf unitOption) (
    cfg:
    oneOfOrAbsent "Type" [
      "exec"
      "simple"
      "forking"
      "oneshot"
      "dbus"
      "notify"
      "notify-reload"
      "idle"
    ] cfg
    && oneOfOrAbsent "Restart" [
      "no"
      "on-success"
      "on-failure"
      "on-abnormal"
      "on-abort"
      "always"
    ] cfg
  );

  units = mkOption {
    type = types.listOf unitName;
    default = [ ];
  };

  service = types.submodule {
    options = {
      enable = mkOption {
        type = types.bool;
        default = true;
      };
      description = mkOption {
        type = types.singleLineStr;
        default = "";
      };
      documentation = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      wantedBy = units;
      requiredBy = units;
      wants = units;
      requires = units;
      after = units;
      before = units;
      path = mkOption {
        type = types.listOf (
          types.oneOf [
            types.package
            types.str
          ]
        );
        default = [ ];
      };
      reloadTriggers = mkOption {
        type = types.listOf unitOption;
        default = [ ];
      };
      restartTriggers = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      serviceConfig = mkOption {
        type = serviceConfigType;
        default = { };
      };
    };
  };

  etcFile = types.submodule (
    { name, ... }:
    {
      options = {
        enable = mkOption {
          type = types.bool;
          default = true;
        };
        target = mkOption {
          type = types.str;
          default = name;
        };
        source = mkOption { type = types.path; };
        mode = mkOption {
          type = types.str;
          default = "symlink";
        };
      };
    }
  );
in
{
  options = {
    assertions = mkOption {
      type = types.listOf types.unspecified;
      default = [ ];
      internal = true;
    };
    warnings = mkOption {
      type = types.listOf types.str;
      default = [ ];
      internal = true;
    };

    environment.etc = mkOption {
      type = types.attrsOf etcFile;
      default = { };
    };
    environment.systemPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
    };

    systemd.services = mkOption {
      type = types.attrsOf service;
      default = { };
    };
    systemd.tmpfiles.rules = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };

    networking.hostName = mkOption {
      type = types.str;
      default = "nixos";
    };
    networking.networkmanager.enable = lib.mkEnableOption "NetworkManager";
    networking.networkmanager.unmanaged = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
    networking.firewall.allowedTCPPorts = mkOption {
      type = types.listOf types.port;
      default = [ ];
    };
    networking.firewall.allowedUDPPorts = mkOption {
      type = types.listOf types.port;
      default = [ ];
    };
    networking.firewall.trustedInterfaces = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };

    services.k3s.enable = lib.mkEnableOption "k3s";
    services.k3s.role = mkOption {
      type = types.enum [
        "server"
        "agent"
      ];
      default = "server";
    };
    services.k3s.serverAddr = mkOption {
      type = types.str;
      default = "";
    };
    services.k3s.tokenFile = mkOption {
      type = types.nullOr types.path;
      default = null;
    };
    services.k3s.extraFlags = mkOption {
      type = types.either types.str (types.listOf types.str);
      default = [ ];
    };
  };
}
