# Evaluates nix/module.nix, nix/package.nix and the NixOS examples with
# nixpkgs' real module system (lib.evalModules and lib.types from
# ../shared/vendor/nixpkgs-lib, see ./lib.nix), over the NixOS option
# declarations the module uses (./nixos-options.nix) and stand-ins for
# `pkgs` derivations (./pkgs.nix), and checks how the NixOS unit is wired.
#
#   nix-instantiate --eval --strict --json nix/tests/eval-module.nix
#
# Throws (non-zero exit) listing every failed check; on success returns the
# names of the checks passed, the rendered service of the full example (for
# the parity check against systemd/netconverge.service in .ci/check-nix.sh)
# and the example configs rendered to TOML (for `netconverge validate`).
#
# Because the module system is the real one, a wrongly typed value (in the
# module's defaults, the examples or the configurations below), a definition
# of an undeclared option, conflicting definitions or a bad mkIf/mkMerge/
# mkDefault nesting fail the evaluation with NixOS' own error message.
let
  lib = import ./lib.nix;
  pkgs = import ./pkgs.nix { inherit lib; };
  evalNixos = import ./eval-nixos.nix { inherit lib pkgs; };

  inherit (builtins)
    all
    any
    attrNames
    concatStringsSep
    elem
    filter
    isAttrs
    isList
    map
    ;

  moduleFile = ../module.nix;

  # One evaluation of the module together with `user`, the configuration a
  # user writes (services.netconverge, networking.networkmanager.enable,
  # services.k3s.enable, ...).
  evalWith =
    user:
    let
      ev = evalNixos [
        moduleFile
        user
      ];
      inherit (ev) config;
      unit = config.systemd.services.netconverge or { };
    in
    {
      inherit ev config unit;
      inherit (ev) failedAssertions;
      cfg = config.services.netconverge;
      opts = ev.options.services.netconverge;
      sc = unit.serviceConfig or { };
      # Every option of other modules that nix/module.nix defines a value
      # for (mkIf false discharged; its own options' defaults left out), as
      # "a.b.c".
      defined = map (o: lib.showOption o.loc) (
        filter (o: elem (toString moduleFile) o.files && !(elem (toString moduleFile) o.declarations)) (
          lib.collect lib.isOption ev.options
        )
      );
    };

  # Forces every option value of an evaluated system, as a system build
  # reads them all: the module system checks a value's type only when it is
  # read. Derivations are forced up to their outPath (a stand-in's is
  # computed from its arguments, not from the package's source tree).
  forceAll =
    v:
    if lib.isDerivation v then
      builtins.seq v.outPath true
    else if isAttrs v then
      all forceAll (builtins.attrValues v)
    else if isList v then
      all forceAll v
    else
      builtins.seq v true;
  forceConfig = r: forceAll (removeAttrs r.config [ "_module" ]) && forceAll r.failedAssertions;
  # Whether an evaluation goes through. Module system errors are `throw`s,
  # so tryEval sees them.
  evaluates = r: (builtins.tryEval (forceConfig r)).success;

  # --- TOML rendering of what pkgs.formats.toml's generator hands to
  # json2toml (builtins.toJSON of the settings). The CI round-trips it
  # through builtins.fromTOML and feeds it to `netconverge validate`.
  toTOML =
    let
      isTable = builtins.isAttrs;
      isTableArray = v: isList v && v != [ ] && all isAttrs v;
      key = k: if builtins.match "[A-Za-z0-9_-]+" k != null then k else builtins.toJSON k;
      scalar =
        v:
        if builtins.isString v then
          builtins.toJSON v
        else if builtins.isBool v then
          (if v then "true" else "false")
        else if builtins.isInt v || builtins.isFloat v then
          toString v
        else if isList v then
          "[" + concatStringsSep ", " (map scalar v) + "]"
        else
          throw "value not representable in TOML";
      render =
        prefix: set:
        let
          names = attrNames set;
          path = n: (if prefix == "" then "" else prefix + ".") + key n;
          simple = filter (n: !(isTable set.${n}) && !(isTableArray set.${n})) names;
          tables = filter (n: isTable set.${n}) names;
          arrays = filter (n: isTableArray set.${n}) names;
        in
        concatStringsSep "" (map (n: "${key n} = ${scalar set.${n}}\n") simple)
        + concatStringsSep "" (map (n: "\n[${path n}]\n" + render (path n) set.${n}) tables)
        + concatStringsSep "" (
          map (n: concatStringsSep "" (map (e: "\n[[${path n}]]\n" + render (path n) e) set.${n})) arrays
        );
    in
    render "";

  # The file the module generates from its settings (same name and value,
  # so the same stand-in store path), and the JSON json2toml would read.
  generatedFor = r: (pkgs.formats.toml { }).generate "netconverge.toml" r.cfg.settings;
  generatorInput = r: builtins.fromJSON (generatedFor r).value;
  generatorInput' = file: builtins.fromJSON file.value;

  exampleSettings = import ../example-settings.nix;

  # The NixOS examples are evaluated as they are used: as modules of a
  # system, importing nix/module.nix themselves.
  loadModules =
    mods:
    let
      ev = evalNixos mods;
    in
    {
      inherit ev;
      inherit (ev) config failedAssertions;
      cfg = ev.config.services.netconverge;
      imported = elem (toString moduleFile) ev.options.services.netconverge.enable.declarations;
    };
  loadExample = file: loadModules [ file ];
  k3sNode = loadExample ../../examples/nixos/k3s-node.nix;
  # The fleet example on each of its hosts: only the host name differs.
  fleetNames = [
    "node-a"
    "node-b"
    "node-c"
  ];
  fleetNodes = lib.genAttrs fleetNames (
    name:
    loadModules [
      ../../examples/nixos/fleet.nix
      { networking.hostName = name; }
    ]
  );
  # What the module must generate for a fleet host: its settings plus
  # node_name = networking.hostName.
  fleetGenerated = r: (pkgs.formats.toml { }).generate "netconverge.toml" (r.cfg.settings // { node_name = r.config.networking.hostName; });
  guard = loadExample ../../examples/nixos/guard-mode.nix;

  fullUser = {
    services.netconverge = {
      enable = true;
      settings = exampleSettings;
      extraArgs = [
        "--log-format"
        "json"
      ];
    };
    networking.networkmanager.enable = true;
    services.k3s.enable = true;
  };
  full = evalWith fullUser;
  # The same with one setting changed: a config edit.
  edited = evalWith {
    imports = [ fullUser ];
    services.netconverge.settings.daemon.resync_secs = lib.mkForce 30;
  };
  minimal = evalWith {
    services.netconverge.enable = true;
  };
  custom = evalWith {
    services.netconverge = {
      enable = true;
      settings = {
        vxlan = [
          { name = "ovl4"; }
          { name = "ovl6"; }
        ];
        nat.backend = "iptables";
        lease = {
          path = "/run/custom/subnet.env";
          state_dir = "/var/lib/nc-state";
        };
        daemon.ready = "applied";
      };
    };
    networking.networkmanager.enable = true;
  };
  disabled = evalWith {
    services.netconverge.settings = exampleSettings;
    networking.networkmanager.enable = true;
    services.k3s.enable = true;
  };
  badState = evalWith {
    services.netconverge = {
      enable = true;
      settings.lease.state_dir = "/srv/netconverge";
    };
  };
  unchecked = evalWith {
    services.netconverge = {
      enable = true;
      checkConfig = false;
    };
  };
  # The metrics endpoint: the default address, and IPv6 with the firewall
  # opened; both ways of setting it at once are an assertion.
  metricsDefault = evalWith {
    services.netconverge = {
      enable = true;
      metrics.enable = true;
    };
  };
  metricsV6 = evalWith {
    services.netconverge = {
      enable = true;
      settings = exampleSettings;
      metrics = {
        enable = true;
        listenAddress = "::";
        port = 9100;
        openFirewall = true;
      };
    };
  };
  metricsTwice = evalWith {
    services.netconverge = {
      enable = true;
      metrics.enable = true;
      settings.daemon.metrics = "127.0.0.1:9474";
    };
  };
  # The file the module must generate with the endpoint on.
  metricsGenerated =
    r: listen:
    (pkgs.formats.toml { }).generate "netconverge.toml" (
      lib.recursiveUpdate r.cfg.settings { daemon.metrics = listen; }
    );
  # A user's own unit override wins over the module's mkDefault.
  overridden = evalWith {
    services.netconverge.enable = true;
    systemd.services.netconverge.serviceConfig.TimeoutStartSec = "10min";
  };

  # Wrongly typed or unknown definitions, each the minimal configuration
  # plus one mistake: the real type system must reject every one (the
  # minimal configuration itself evaluates: the positive control).
  rejected = {
    "settings value null (not a TOML value)" = {
      services.netconverge.settings.vxlan = [ { vni = null; } ];
    };
    "settings value a function" = {
      services.netconverge.settings.daemon.ready = x: x;
    };
    "extraArgs a string, not a list of strings" = {
      services.netconverge.extraArgs = "--log-format json";
    };
    "metrics.port out of range" = {
      services.netconverge.metrics.port = 70000;
    };
    "metrics.listenAddress a list" = {
      services.netconverge.metrics.listenAddress = [ "127.0.0.1" ];
    };
    "checkConfig a string" = {
      services.netconverge.checkConfig = "yes";
    };
    "enable an integer" = {
      services.netconverge.enable = lib.mkForce 1;
    };
    "configFile a relative path string" = {
      services.netconverge.configFile = "netconverge.toml";
    };
    "misspelled option services.netconverge.setting" = {
      services.netconverge.setting = { };
    };
    "unit Type systemd does not know" = {
      systemd.services.netconverge.serviceConfig.Type = lib.mkForce "notfy";
    };
    "unit option that is no unit-file value" = {
      systemd.services.netconverge.serviceConfig.Environment = {
        A = "b";
      };
    };
    "conflicting scalar definitions of a unit setting" = {
      systemd.services.netconverge.serviceConfig.UMask = "not-the-module's";
    };
  };
  rejectedNotRejected = filter (n: evaluates (evalWith {
    imports = [ rejected.${n} ];
    services.netconverge.enable = true;
  })) (attrNames rejected);

  # The module's options as the NixOS manual documents them.
  optionDocs = filter (o: lib.hasPrefix "services.netconverge." o.name) (
    lib.optionAttrSetToDocList full.ev.options
  );

  pkg = pkgs.callPackage ../package.nix { };
  exe = lib.getExe pkg;
  unitText = builtins.readFile ../../systemd/netconverge.service;
  cargo = lib.importTOML ../../Cargo.toml;
  # The package's source as the real lib.fileset sees it: every file, as
  # "./relative/path".
  srcFiles = map (f: "./" + lib.removePrefix (toString ../.. + "/") (toString f)) (
    lib.fileset.toList (lib.fileset.fromSource pkg.src)
  );

  hardeningKeys = [
    "CapabilityBoundingSet"
    "NoNewPrivileges"
    "ProtectSystem"
    "PrivateMounts"
    "ReadWritePaths"
    "ProtectKernelTunables"
    "ProtectHome"
    "PrivateTmp"
    "PrivateDevices"
    "ProtectKernelModules"
    "ProtectKernelLogs"
    "ProtectControlGroups"
    "ProtectClock"
    "ProtectHostname"
    "ProtectProc"
    "RestrictAddressFamilies"
    "RestrictNamespaces"
    "RestrictRealtime"
    "RestrictSUIDSGID"
    "LockPersonality"
    "MemoryDenyWriteExecute"
    "SystemCallArchitectures"
    "SystemCallFilter"
    "SystemCallErrorNumber"
    "UMask"
  ];

  contains = lib.hasInfix;

  checks = [
    # ---- the real module system --------------------------------------------
    {
      name = "evaluated by nixpkgs' lib.evalModules ${lib.version} (lib.types, mkIf/mkMerge/mkDefault as NixOS has them) on Nix ${builtins.nixVersion}: every option value of the test systems and both examples type-checks";
      ok = all forceConfig [
        full
        minimal
        custom
        disabled
        k3sNode
        guard
      ];
    }
    {
      name = "wrongly typed or undeclared definitions are rejected by the real types (${toString (builtins.length (attrNames rejected))} cases, each minimal config + one mistake)${
        lib.optionalString (rejectedNotRejected != [ ]) ": ACCEPTED ${concatStringsSep ", " rejectedNotRejected}"
      }";
      ok = rejectedNotRejected == [ ] && evaluates minimal;
    }
    {
      name = "the module defines only assertions, environment.{etc,systemPackages}, systemd.services, networking.networkmanager.unmanaged (no services.k3s option)";
      ok =
        lib.sort lib.lessThan full.defined == [
          "assertions"
          "environment.etc"
          "environment.systemPackages"
          "networking.networkmanager.unmanaged"
          "systemd.services"
        ];
    }
    # ---- the unit: type, notify protocol, reload -------------------------
    {
      name = "unit Type=notify-reload, NotifyAccess=main, WatchdogSec=30s, Restart=on-failure";
      ok =
        full.sc.Type == "notify-reload"
        && full.sc.NotifyAccess == "main"
        && full.sc.WatchdogSec == "30s"
        && full.sc.Restart == "on-failure"
        && !(full.sc ? ExecReload);
    }
    {
      name = "ExecStart runs the package's binary on /etc/netconverge/netconverge.toml, extraArgs before `run`";
      ok =
        full.sc.ExecStart
        == ''${exe} "--config" "/etc/netconverge/netconverge.toml" "--log-format" "json" "run"''
        && minimal.sc.ExecStart == ''${exe} "--config" "/etc/netconverge/netconverge.toml" "run"'';
    }
    {
      name = "package default is pkgs.callPackage ./package.nix (no pkgs.netconverge in the stand-in pkgs)";
      ok = full.cfg.package.pname == "netconverge" && full.cfg.package.outPath == pkg.outPath;
    }
    {
      name = "config is linked to /etc/netconverge/netconverge.toml and is a reloadTrigger (reload, not restart)";
      ok =
        full.config.environment.etc."netconverge/netconverge.toml".source == full.cfg.configFile
        && full.config.environment.etc."netconverge/netconverge.toml".mode == "symlink"
        && full.unit.reloadTriggers == [ full.cfg.configFile ]
        && full.unit.restartTriggers == [ ];
    }
    {
      name = "a settings edit changes the config file and the reloadTrigger, and nothing in [Service] (so NixOS reloads, not restarts)";
      ok =
        edited.cfg.settings.daemon.resync_secs == 30
        && edited.cfg.configFile.outPath != full.cfg.configFile.outPath
        && edited.unit.reloadTriggers != full.unit.reloadTriggers
        && edited.sc == full.sc;
    }
    {
      name = "default configFile = settings rendered by formats.toml, validated by `netconverge --config FILE validate` at build time";
      ok =
        full.cfg.configFile.name == "netconverge-checked.toml"
        && contains "${exe} --config ${generatedFor full} validate" full.cfg.configFile.buildCommand
        && contains "cp ${generatedFor full} $out" full.cfg.configFile.buildCommand
        && generatorInput full == exampleSettings;
    }
    {
      name = "checkConfig = false uses the generated file unvalidated";
      ok = unchecked.cfg.configFile.outPath == (generatedFor unchecked).outPath;
    }
    {
      name = "CLI package installed system-wide";
      ok = elem full.cfg.package full.config.environment.systemPackages;
    }
    # ---- ordering ---------------------------------------------------------
    {
      name = "ordering: after network-pre.target + NetworkManager, wants network-pre, before k3s/k3s-agent/kubelet, wantedBy multi-user";
      ok =
        full.unit.after == [
          "network-pre.target"
          "NetworkManager.service"
        ]
        && full.unit.wants == [ "network-pre.target" ]
        && full.unit.before == [
          "k3s.service"
          "k3s-agent.service"
          "kubelet.service"
        ]
        && full.unit.wantedBy == [ "multi-user.target" ];
    }
    {
      name = "never ordered after network-online.target";
      ok = !(any (u: u == "network-online.target") (full.unit.after ++ full.unit.wants ++ full.unit.requires));
    }
    {
      name = "k3s enabled: systemd.services.k3s after + requires netconverge.service";
      ok =
        full.config.systemd.services.k3s.after == [ "netconverge.service" ]
        && full.config.systemd.services.k3s.requires == [ "netconverge.service" ];
    }
    {
      name = "k3s disabled: no k3s unit defined";
      ok = !(minimal.config.systemd.services ? k3s) && !(custom.config.systemd.services ? k3s);
    }
    # ---- NetworkManager ----------------------------------------------------
    {
      name = "NetworkManager enabled: every settings.vxlan name is unmanaged (interface-name:<name>)";
      ok =
        full.config.networking.networkmanager.unmanaged == [ "interface-name:flannel.1" ]
        && custom.config.networking.networkmanager.unmanaged == [
          "interface-name:ovl4"
          "interface-name:ovl6"
        ];
    }
    {
      name = "NetworkManager disabled: networking.networkmanager untouched";
      ok =
        minimal.config.networking.networkmanager.unmanaged == [ ]
        && !(elem "networking.networkmanager.unmanaged" minimal.defined);
    }
    # ---- metrics endpoint ----------------------------------------------------
    {
      name = "metrics off by default: no [daemon] metrics in the generated file, no firewall port";
      ok =
        !((generatorInput minimal) ? daemon)
        && !((generatorInput full).daemon ? metrics)
        && minimal.config.networking.firewall.allowedTCPPorts == [ ];
    }
    {
      name = "metrics.enable renders [daemon] metrics = \"127.0.0.1:9474\" (IPv6 as \"[::]:9100\") into the file validated at build time; openFirewall opens the port, only then";
      ok =
        contains "--config ${metricsGenerated metricsDefault "127.0.0.1:9474"} validate" metricsDefault.cfg.configFile.buildCommand
        && contains "--config ${metricsGenerated metricsV6 "[::]:9100"} validate" metricsV6.cfg.configFile.buildCommand
        && metricsV6.config.networking.firewall.allowedTCPPorts == [ 9100 ]
        && metricsDefault.config.networking.firewall.allowedTCPPorts == [ ]
        && metricsDefault.failedAssertions == [ ]
        && metricsV6.failedAssertions == [ ];
    }
    {
      name = "metrics set both as services.netconverge.metrics and settings.daemon.metrics: rejected by an assertion";
      ok =
        builtins.length metricsTwice.failedAssertions == 1
        && contains "either with services.netconverge.metrics or with settings.daemon.metrics" (builtins.head metricsTwice.failedAssertions);
    }
    # ---- state, lease directory, timeouts ----------------------------------
    {
      name = "no RuntimeDirectory; /run/flannel and /run/netconverge created by an unsandboxed ExecStartPre and writable; StateDirectory=netconverge";
      ok =
        !(full.sc ? RuntimeDirectory)
        && full.sc.ExecStartPre == [
          "+${pkgs.coreutils}/bin/mkdir -p /run/flannel"
          "+${pkgs.coreutils}/bin/mkdir -p /run/netconverge"
        ]
        && elem "/run/flannel" full.sc.ReadWritePaths
        && elem "/run/netconverge" full.sc.ReadWritePaths
        && full.sc.StateDirectory == "netconverge"
        && minimal.sc.StateDirectory == "netconverge"
        && elem "/run/flannel" minimal.sc.ReadWritePaths;
    }
    {
      name = "custom lease path/state_dir follow settings.lease; ready=applied => TimeoutStartSec=90s, default 5min, a user's value wins (mkDefault)";
      ok =
        elem "/run/custom" custom.sc.ReadWritePaths
        && elem "+${pkgs.coreutils}/bin/mkdir -p /run/custom" custom.sc.ExecStartPre
        && custom.sc.StateDirectory == "nc-state"
        && custom.sc.TimeoutStartSec == "90s"
        && full.sc.TimeoutStartSec == "5min"
        && minimal.sc.TimeoutStartSec == "5min"
        && overridden.sc.TimeoutStartSec == "10min";
    }
    {
      name = "nat.backend=iptables adds CAP_NET_RAW and /run/xtables.lock (iptables-legacy), nftables does not";
      ok =
        custom.sc.CapabilityBoundingSet == [
          "CAP_NET_ADMIN"
          "CAP_NET_RAW"
        ]
        && elem "/run/xtables.lock" custom.sc.ReadWritePaths
        && full.sc.CapabilityBoundingSet == [ "CAP_NET_ADMIN" ]
        && !(elem "/run/xtables.lock" full.sc.ReadWritePaths);
    }
    {
      name = "state_dir outside /var/lib is rejected by an assertion; valid configs raise none";
      ok =
        builtins.length badState.failedAssertions == 1
        && contains "state_dir must be below /var/lib/" (builtins.head badState.failedAssertions)
        && full.failedAssertions == [ ]
        && custom.failedAssertions == [ ];
    }
    {
      name = "enable = false defines nothing";
      ok =
        disabled.defined == [ ]
        && disabled.config.systemd.services == { }
        && disabled.config.environment.etc == { }
        && disabled.config.environment.systemPackages == [ ]
        && disabled.config.networking.networkmanager.unmanaged == [ ];
    }
    # ---- hardening ---------------------------------------------------------
    {
      name = "hardening keys all present (${toString (builtins.length hardeningKeys)})";
      ok = all (k: full.sc ? ${k}) hardeningKeys && !(full.sc ? AmbientCapabilities) && !(full.sc ? User);
    }
    {
      name = "hardening values: strict FS, caps only NET_ADMIN, ProtectKernelTunables with the accept_ra exception";
      ok =
        full.sc.ProtectSystem == "strict"
        && full.sc.NoNewPrivileges
        && full.sc.ProtectKernelTunables
        && elem "-/proc/sys/net/ipv6/conf" full.sc.ReadWritePaths
        && full.sc.ProtectProc == "invisible"
        && full.sc.RestrictAddressFamilies == [
          "AF_NETLINK"
          "AF_UNIX"
          "AF_INET"
          "AF_INET6"
        ]
        && full.sc.SystemCallFilter == [
          "@system-service"
          "~@privileged @resources"
        ];
    }
    # ---- options -----------------------------------------------------------
    {
      name = "options: enable (mkEnableOption), package, settings typed by formats.toml, checkConfig, configFile (path), extraArgs (list of str)";
      ok =
        attrNames full.opts == [
          "checkConfig"
          "configFile"
          "enable"
          "extraArgs"
          "metrics"
          "package"
          "settings"
        ]
        && full.opts.enable.default == false
        && full.opts.enable.type.name == "bool"
        && full.opts.package.type.name == "package"
        && full.opts.settings.type.description == "TOML value"
        && full.opts.checkConfig.type.name == "bool"
        && full.opts.configFile.type.name == "path"
        && full.opts.extraArgs.type.description == "list of string"
        && full.opts.metrics.enable.default == false
        && full.opts.metrics.listenAddress.default == "127.0.0.1"
        && full.opts.metrics.port.type.name == "unsignedInt16"
        && full.opts.metrics.port.default == 9474
        && full.opts.metrics.openFirewall.default == false
        && full.opts.settings.example.text == builtins.readFile ../example-settings.nix;
    }
    {
      name = "option docs render as the NixOS manual renders them (lib.optionAttrSetToDocList): each has a description, no default or example shows a derivation or store path";
      ok =
        builtins.length optionDocs == 10
        && all (
          o:
          o.description or null != null
          && o.description != ""
          && all (v: !(contains "<derivation" v.text) && !(contains builtins.storeDir v.text)) (
            map (k: o.${k}) (filter (k: o ? ${k}) [
              "default"
              "example"
            ])
          )
        ) optionDocs;
    }
    {
      name = "settings example covers vxlan, address, peer, nat, lease, daemon";
      ok = all (s: exampleSettings ? ${s}) [
        "vxlan"
        "address"
        "peer"
        "nat"
        "lease"
        "daemon"
      ];
    }
    # ---- package -----------------------------------------------------------
    {
      name = "package: version from Cargo.toml, cargoLock = ../Cargo.lock, installShellFiles, --lib tests only";
      ok =
        pkg.version == cargo.package.version
        && pkg.cargoLock.lockFile == ../../Cargo.lock
        && pkg.nativeBuildInputs == [ pkgs.installShellFiles ]
        && pkg.cargoTestFlags == [ "--lib" ];
    }
    {
      name = "package: src (lib.fileset, ${toString (builtins.length srcFiles)} files) is the crate: Cargo.*, src/, systemd/, example TOML; no nix/, docs/, .ci/, target/, *.nix";
      ok =
        pkg.src.origSrc == ../..
        && elem "./Cargo.toml" srcFiles
        && elem "./Cargo.lock" srcFiles
        && elem "./src/main.rs" srcFiles
        && elem "./systemd/netconverge.service" srcFiles
        && any (f: lib.hasPrefix "./examples/" f && lib.hasSuffix ".toml" f) srcFiles
        && !(any (
          f:
          lib.hasPrefix "./nix/" f
          || lib.hasPrefix "./docs/" f
          || lib.hasPrefix "./.ci/" f
          || lib.hasPrefix "./target/" f
          || lib.hasSuffix ".nix" f
        ) srcFiles);
    }
    {
      name = "package: postInstall installs the unit (each --replace-fail pattern exists in it), completions and man page";
      ok =
        let
          p = pkg.postInstall;
          words = filter builtins.isString (builtins.split "[[:space:]\\]+" p);
          idx = builtins.genList (i: i) (builtins.length words);
          # the word following each --replace-fail
          replaced = map (i: builtins.elemAt words (i + 1)) (
            filter (i: builtins.elemAt words i == "--replace-fail") idx
          );
        in
        contains "$out/lib/systemd/system/netconverge.service" p
        && builtins.length replaced == 3
        && all (r: contains r unitText) replaced
        && contains "installShellCompletion --cmd netconverge" p
        && contains "netconverge completions bash" p
        && contains "netconverge completions zsh" p
        && contains "netconverge completions fish" p
        && contains "netconverge man > netconverge.1" p
        && contains "installManPage netconverge.1" p;
    }
    {
      name = "package meta: description, asl20, mainProgram, linux (lib.licenses, lib.platforms)";
      ok =
        pkg.meta.license == lib.licenses.asl20
        && pkg.meta.mainProgram == "netconverge"
        && pkg.meta.platforms == lib.platforms.linux
        && pkg.meta.description != "";
    }
    # ---- the examples -------------------------------------------------------
    {
      name = "examples/nixos/k3s-node.nix: node-a of the fleet example, k3s server with --flannel-backend=none, netconverge owns overlay+NAT+lease+CNI from settings.fleet";
      ok =
        k3sNode.imported
        && k3sNode.config.services.k3s.enable
        && elem "--flannel-backend=none" k3sNode.config.services.k3s.extraFlags
        && k3sNode.cfg.enable
        && k3sNode.cfg.settings ? fleet
        && k3sNode.cfg.settings ? nat
        && k3sNode.cfg.settings ? cni
        && k3sNode.config.systemd.services.k3s.requires == [ "netconverge.service" ]
        && k3sNode.config.networking.networkmanager.unmanaged == [ "interface-name:flannel.1" ]
        && k3sNode.failedAssertions == [ ];
    }
    {
      name = "examples/nixos/fleet.nix on node-a/b/c: one fleet attrset, node_name = networking.hostName in each generated file, /etc/cni/net.d writable, agents without --flannel-backend";
      ok = all (
        name:
        let
          r = fleetNodes.${name};
          sc = r.config.systemd.services.netconverge.serviceConfig;
        in
        r.cfg.settings.fleet == fleetNodes.node-a.cfg.settings.fleet
        && !(r.cfg.settings ? node_name)
        && contains "--config ${fleetGenerated r} validate" r.cfg.configFile.buildCommand
        && (generatorInput' (fleetGenerated r)).node_name == name
        && elem "/etc/cni/net.d" sc.ReadWritePaths
        && r.config.networking.networkmanager.unmanaged == [ "interface-name:flannel.1" ]
        && (r.config.services.k3s.role == "server") == (name == "node-a")
        && (any (f: contains "flannel-backend" f) r.config.services.k3s.extraFlags) == (name == "node-a")
        && r.failedAssertions == [ ]
      ) fleetNames;
    }
    {
      name = "examples/nixos/guard-mode.nix: k3s keeps its flannel, netconverge only guards subnet.env (preserve)";
      ok =
        guard.imported
        && guard.config.services.k3s.enable
        && !(any (f: contains "flannel-backend" f) guard.config.services.k3s.extraFlags)
        && guard.cfg.settings.lease.mode == "preserve"
        && !(guard.cfg.settings ? vxlan)
        && !(guard.cfg.settings ? nat)
        && guard.config.systemd.services.k3s.after == [ "netconverge.service" ]
        && guard.failedAssertions == [ ];
    }
    {
      name = "example settings round-trip through TOML (builtins.fromTOML of the rendering == the generator's JSON input)";
      ok = all (r: builtins.fromTOML (toTOML (generatorInput r)) == generatorInput r) [
        full
        k3sNode
        guard
      ];
    }
    {
      name = "fleet host files round-trip through TOML";
      ok = all (r: builtins.fromTOML (toTOML (generatorInput' (fleetGenerated r))) == generatorInput' (fleetGenerated r)) (
        lib.attrValues fleetNodes
      );
    }
  ];

  failed = filter (c: !c.ok) checks;
in
if failed != [ ] then
  throw "eval-module: ${toString (builtins.length failed)} check(s) FAILED:\n  - ${concatStringsSep "\n  - " (map (c: c.name) failed)}"
else
  {
    passed = map (c: c.name) checks;
    # The NixOS unit of the full example, for the parity check.
    serviceConfig = full.sc;
    unit = {
      inherit (full.unit)
        after
        before
        wants
        wantedBy
        ;
    };
    toml = {
      "example-settings" = toTOML (generatorInput full);
      "k3s-node" = toTOML (generatorInput' (fleetGenerated k3sNode));
      "guard-mode" = toTOML (generatorInput guard);
      "metrics-ipv6" = toTOML (generatorInput' (metricsGenerated metricsV6 "[::]:9100"));
    }
    // lib.mapAttrs' (
      name: r: lib.nameValuePair "fleet-${name}" (toTOML (generatorInput' (fleetGenerated r)))
    ) fleetNodes;
    # Which node each rendered file is validated as (`validate --node`).
    nodes = lib.mapAttrs' (name: _: lib.nameValuePair "fleet-${name}" name) fleetNodes;
  }
