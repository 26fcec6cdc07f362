# Evaluates nix/module.nix and nix/package.nix against the stubs in
# ./stubs.nix and checks how the NixOS unit is wired.
#
#   nix-instantiate --eval --strict --json nix/tests/eval-module.nix
#
# Throws (non-zero exit) listing every failed check; on success returns the
# names of the checks passed, the rendered service of the full example (for
# the parity check against systemd/netconverge.service in .ci/check-nix.sh)
# and the example configs rendered to TOML.
#
# How the module is evaluated: the NixOS module system is replaced by the
# smallest honest equivalent. The user's `services.netconverge` definitions
# are completed with the defaults the module itself declares (so the
# configFile default, the package default via callPackage etc. are the
# module's own), the other modules' switches (NetworkManager, k3s) are plain
# inputs, and the module's `config` is resolved by interpreting the
# mkIf/mkMerge/mkOverride records exactly as lib/modules.nix defines them
# (lists concatenate, equal values merge, different scalars conflict).
let
  stubs = import ./stubs.nix;
  inherit (stubs) lib pkgs utils;

  inherit (builtins)
    all
    any
    attrNames
    concatStringsSep
    elem
    filter
    foldl'
    isAttrs
    isList
    listToAttrs
    map
    ;

  absent = {
    _absent = true;
  };
  isAbsent = x: isAttrs x && x ? _absent;
  filterAttrs =
    pred: set:
    listToAttrs (
      map (n: {
        name = n;
        value = set.${n};
      }) (filter (n: pred n set.${n}) (attrNames set))
    );

  merge2 =
    path: a: b:
    if isAttrs a && isAttrs b && !(a ? outPath) && !(b ? outPath) then
      a // builtins.mapAttrs (n: bv: if a ? ${n} then merge2 "${path}.${n}" a.${n} bv else bv) b
    else if isList a && isList b then
      a ++ b
    else if a == b then
      a
    else
      throw "conflicting definitions for ${path}";

  resolve =
    v:
    if isAttrs v then
      let
        t = v._type or null;
      in
      if t == "if" then
        (if v.condition then resolve v.content else absent)
      else if t == "merge" then
        foldl' (merge2 "config") { } (filter (x: !isAbsent x) (map resolve v.contents))
      else if t == "override" then
        resolve v.content
      else if v ? outPath then
        v
      else
        filterAttrs (_: x: !isAbsent x) (builtins.mapAttrs (_: resolve) v)
    else if isList v then
      map resolve v
    else
      v;

  moduleFile = ../module.nix;

  # One evaluation: `netconverge` = the user's services.netconverge
  # definitions, `nm`/`k3s` = whether those NixOS modules are enabled.
  evalWith =
    {
      netconverge,
      nm ? false,
      k3s ? false,
    }:
    let
      out = import moduleFile {
        inherit lib pkgs utils;
        config = cfgAll;
      };
      opts = out.options.services.netconverge;
      cfg = builtins.mapAttrs (n: o: netconverge.${n} or o.default) opts;
      cfgAll = {
        services.netconverge = cfg;
        services.k3s.enable = k3s;
        networking.networkmanager.enable = nm;
      };
      # A module whose whole config is mkIf false defines nothing.
      resolved =
        let
          r = resolve out.config;
        in
        if isAbsent r then { } else r;
    in
    {
      inherit opts cfg resolved;
      unit = resolved.systemd.services.netconverge or { };
      sc = resolved.systemd.services.netconverge.serviceConfig or { };
      failedAssertions = map (a: a.message) (filter (a: !a.assertion) (resolved.assertions or [ ]));
    };

  # --- TOML rendering: stands in for pkgs.formats.toml's generator. The CI
  # round-trips it through builtins.fromTOML and feeds it to
  # `netconverge validate` when a binary is given.
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

  exampleSettings = import ../example-settings.nix;

  # The NixOS examples are plain modules; their definitions feed evalWith.
  loadExample =
    file:
    let
      m = import file {
        inherit lib pkgs;
        config = { };
      };
    in
    {
      inherit m;
      ev = evalWith {
        netconverge = m.services.netconverge;
        nm = m.networking.networkmanager.enable or false;
        k3s = m.services.k3s.enable or false;
      };
    };
  k3sNode = loadExample ../../examples/nixos/k3s-node.nix;
  guard = loadExample ../../examples/nixos/guard-mode.nix;

  full = evalWith {
    netconverge = {
      enable = true;
      settings = exampleSettings;
      extraArgs = [
        "--log-format"
        "json"
      ];
    };
    nm = true;
    k3s = true;
  };
  minimal = evalWith {
    netconverge.enable = true;
  };
  custom = evalWith {
    netconverge = {
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
    nm = true;
  };
  disabled = evalWith {
    netconverge.settings = exampleSettings;
    nm = true;
    k3s = true;
  };
  badState = evalWith {
    netconverge = {
      enable = true;
      settings.lease.state_dir = "/srv/netconverge";
    };
  };
  unchecked = evalWith {
    netconverge = {
      enable = true;
      checkConfig = false;
    };
  };

  pkg = pkgs.callPackage ../package.nix { };
  unitText = builtins.readFile ../../systemd/netconverge.service;
  cargo = builtins.fromTOML (builtins.readFile ../../Cargo.toml);

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

  # Substring test (builtins.split takes a regex: escape the needle).
  contains =
    needle: s:
    let
      specials = [ "\\" "." "+" "*" "[" "]" "(" ")" "$" "^" "?" "|" "{" "}" ];
      re = builtins.replaceStrings specials (map (c: "\\" + c) specials) needle;
    in
    builtins.length (builtins.split re s) > 1;

  exe = "${pkg}/bin/netconverge";
  generated = stubs.storePath "netconverge.toml";

  checks = [
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
        == ''${exe} "--config" "/etc/netconverge/netconverge.toml" "--log-format" "json" "run"'';
    }
    {
      name = "package default is pkgs.callPackage ./package.nix (no pkgs.netconverge in the stub pkgs)";
      ok = full.cfg.package.pname == "netconverge" && full.cfg.package.outPath == pkg.outPath;
    }
    {
      name = "config is linked to /etc/netconverge/netconverge.toml and is a reloadTrigger (reload, not restart)";
      ok =
        full.resolved.environment.etc."netconverge/netconverge.toml".source == full.cfg.configFile
        && full.unit.reloadTriggers == [ full.cfg.configFile ]
        && !(full.unit ? restartTriggers);
    }
    {
      name = "default configFile = settings rendered by formats.toml, validated by `netconverge --config FILE validate` at build time";
      ok =
        full.cfg.configFile.name == "netconverge-checked.toml"
        && contains "${exe} --config ${generated} validate" full.cfg.configFile.script
        && contains "cp ${generated} $out" full.cfg.configFile.script;
    }
    {
      name = "checkConfig = false uses the generated file unvalidated";
      ok = unchecked.cfg.configFile.outPath == generated;
    }
    {
      name = "CLI package installed system-wide";
      ok = elem full.cfg.package full.resolved.environment.systemPackages;
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
      ok = !(any (u: u == "network-online.target") (full.unit.after ++ full.unit.wants ++ (full.unit.requires or [ ])));
    }
    {
      name = "k3s enabled: systemd.services.k3s after + requires netconverge.service, no services.k3s option touched";
      ok =
        full.resolved.systemd.services.k3s == {
          after = [ "netconverge.service" ];
          requires = [ "netconverge.service" ];
        }
        && !(full.resolved.services or { } ? k3s);
    }
    {
      name = "k3s disabled: no k3s unit defined";
      ok = !(minimal.resolved.systemd.services ? k3s) && !(custom.resolved.systemd.services ? k3s);
    }
    # ---- NetworkManager ----------------------------------------------------
    {
      name = "NetworkManager enabled: every settings.vxlan name is unmanaged (interface-name:<name>)";
      ok =
        full.resolved.networking.networkmanager.unmanaged == [ "interface-name:flannel.1" ]
        && custom.resolved.networking.networkmanager.unmanaged == [
          "interface-name:ovl4"
          "interface-name:ovl6"
        ];
    }
    {
      name = "NetworkManager disabled: networking.networkmanager untouched";
      ok = !(minimal.resolved ? networking);
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
      name = "custom lease path/state_dir follow settings.lease; ready=applied => TimeoutStartSec=90s, default 5min";
      ok =
        elem "/run/custom" custom.sc.ReadWritePaths
        && elem "+${pkgs.coreutils}/bin/mkdir -p /run/custom" custom.sc.ExecStartPre
        && custom.sc.StateDirectory == "nc-state"
        && custom.sc.TimeoutStartSec == "90s"
        && full.sc.TimeoutStartSec == "5min"
        && minimal.sc.TimeoutStartSec == "5min";
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
        && full.failedAssertions == [ ]
        && custom.failedAssertions == [ ];
    }
    {
      name = "enable = false defines nothing";
      ok = disabled.resolved == { };
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
      name = "options: enable (mkEnableOption), package, settings typed by formats.toml, checkConfig, configFile, extraArgs";
      ok =
        attrNames full.opts == [
          "checkConfig"
          "configFile"
          "enable"
          "extraArgs"
          "package"
          "settings"
        ]
        && full.opts.enable.default == false
        && full.opts.settings.type == (pkgs.formats.toml { }).type
        && full.opts.settings.example.text == builtins.readFile ../example-settings.nix;
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
      name = "package: src is a fileset of the crate (not the whole repo: no nix/, docs/, .ci/)";
      ok =
        pkg.src.root == ../..
        && (
          let
            members = pkg.src.fileset.list;
            paths = map (m: if isAttrs m then m.path else m) members;
          in
          elem ../../Cargo.toml paths
          && elem ../../Cargo.lock paths
          && elem ../../src paths
          && elem ../../systemd paths
          && !(elem ../../nix paths)
          && !(elem ../../docs paths)
          && !(elem ../../. paths)
        );
    }
    {
      name = "package: postInstall installs the unit (each --replace-fail pattern exists in it), completions and man page";
      ok =
        let
          p = pkg.postInstall;
          patterns = builtins.filter builtins.isString (
            builtins.split " " (builtins.replaceStrings [ "\n" "\\" ] [ " " " " ] p)
          );
          # words following each --replace-fail
          idx = builtins.genList (i: i) (builtins.length patterns);
          replaced = map (i: builtins.elemAt patterns (i + 1)) (
            filter (i: builtins.elemAt patterns i == "--replace-fail") idx
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
      name = "package meta: description, asl20, mainProgram, linux";
      ok =
        pkg.meta.license == lib.licenses.asl20
        && pkg.meta.mainProgram == "netconverge"
        && pkg.meta.platforms == lib.platforms.linux
        && pkg.meta.description != "";
    }
    # ---- the examples -------------------------------------------------------
    {
      name = "examples/nixos/k3s-node.nix: imports the module, k3s with --flannel-backend=none, netconverge owns overlay+NAT+lease(write)";
      ok =
        elem moduleFile k3sNode.m.imports
        && k3sNode.m.services.k3s.enable
        && elem "--flannel-backend=none" k3sNode.m.services.k3s.extraFlags
        && k3sNode.m.services.netconverge.enable
        && k3sNode.ev.cfg.settings ? vxlan
        && k3sNode.ev.cfg.settings ? nat
        && k3sNode.ev.cfg.settings.lease.mode == "write"
        && k3sNode.ev.resolved.systemd.services.k3s.requires == [ "netconverge.service" ]
        && k3sNode.ev.failedAssertions == [ ];
    }
    {
      name = "examples/nixos/guard-mode.nix: k3s keeps its flannel, netconverge only guards subnet.env (preserve)";
      ok =
        elem moduleFile guard.m.imports
        && guard.m.services.k3s.enable
        && !(any (f: contains "flannel-backend" f) (guard.m.services.k3s.extraFlags or [ ]))
        && guard.ev.cfg.settings.lease.mode == "preserve"
        && !(guard.ev.cfg.settings ? vxlan)
        && !(guard.ev.cfg.settings ? nat)
        && guard.ev.resolved.systemd.services.k3s.after == [ "netconverge.service" ]
        && guard.ev.failedAssertions == [ ];
    }
    {
      name = "example settings round-trip through TOML (builtins.fromTOML)";
      ok = all (s: builtins.fromTOML (toTOML s) == s) [
        exampleSettings
        k3sNode.ev.cfg.settings
        guard.ev.cfg.settings
      ];
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
    serviceConfig = builtins.mapAttrs (_: v: if isAttrs v && v ? outPath then v.outPath else v) full.sc;
    unit = {
      inherit (full.unit)
        after
        before
        wants
        wantedBy
        ;
    };
    toml = {
      "example-settings" = toTOML exampleSettings;
      "k3s-node" = toTOML k3sNode.ev.cfg.settings;
      "guard-mode" = toTOML guard.ev.cfg.settings;
    };
  }
