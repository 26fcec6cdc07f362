# NixOS module: services.netconverge.
#
# The unit mirrors systemd/netconverge.service (same ordering, hardening,
# watchdog and state handling; .ci/check-nix.sh compares the two). The
# differences, each on purpose:
# - Type=notify-reload instead of notify + ExecReload=kill: NixOS ships
#   systemd >= 253, and a synchronous reload lets `nixos-rebuild switch`
#   report a config the daemon rejected;
# - the config file is /etc/netconverge/netconverge.toml, a link to the
#   build-time-validated store file, so that a config change is a reload
#   (reloadTriggers) and not a restart (which would also restart k3s);
# - nat.backend = "iptables" adds what iptables-legacy needs (CAP_NET_RAW,
#   /run/xtables.lock), the lease directory and state directory follow
#   `settings.lease`, and TimeoutStartSec follows `settings.daemon.ready`.
#
# `metrics.*` is the one typed shortcut into the settings: it renders
# `[daemon] metrics` (checked by `netconverge validate` like every key) and
# can open the port; the unit's RestrictAddressFamilies= already allows
# AF_INET/AF_INET6.
{
  config,
  lib,
  pkgs,
  utils,
  ...
}:

let
  cfg = config.services.netconverge;
  settingsFormat = pkgs.formats.toml { };

  configPath = "/etc/netconverge/netconverge.toml";

  lease = cfg.settings.lease or { };
  leasePath = lease.path or "/run/flannel/subnet.env";
  leaseDir = dirOf leasePath;
  stateDir = lease.state_dir or "/var/lib/netconverge";
  ready = (cfg.settings.daemon or { }).ready or "converged";
  natBackend = (cfg.settings.nat or { }).backend or "nftables";
  useIptables = natBackend == "iptables";
  # [cni]: netconverge writes the conflist; its directory must be writable.
  cniSettings = cfg.settings.cni or null;
  cniDir =
    if cniSettings == null then
      null
    else
      dirOf (cniSettings.path or "/etc/cni/net.d/10-netconverge.conflist");
  # A fleet node is named by its host name unless the settings say otherwise
  # (the fleet attrset itself is shared by every host).
  effectiveSettings = lib.recursiveUpdate (
    cfg.settings
    // lib.optionalAttrs (
      cfg.settings ? fleet && !(cfg.settings ? node_name) && config.networking.hostName != ""
    ) { node_name = config.networking.hostName; }
  ) (lib.optionalAttrs cfg.metrics.enable { daemon.metrics = metricsListen; });
  # [daemon] metrics = "IP:PORT" (an IPv6 address in brackets).
  metricsListen =
    let
      a = cfg.metrics.listenAddress;
    in
    "${if lib.hasInfix ":" a then "[${a}]" else a}:${toString cfg.metrics.port}";
  # Devices netconverge owns: NetworkManager must leave them alone.
  fleetSettings = cfg.settings.fleet or null;
  vxlanNames =
    lib.catAttrs "name" (cfg.settings.vxlan or [ ])
    ++ lib.optionals (fleetSettings != null) (
      lib.optional (fleetSettings ? network) (fleetSettings.device or "flannel.1")
      ++ lib.optional (fleetSettings ? ipv6_network) (fleetSettings.ipv6_device or "flannel-v6.1")
    );

  generatedConfig = settingsFormat.generate "netconverge.toml" effectiveSettings;

  # `fleet.source = "kubernetes"` on a k3s server: the API netconverge waits
  # for (READY=1 only after the first list of Nodes) is served by this very
  # k3s, so k3s must not wait for netconverge (docs/kubernetes.md).
  kubeSource = fleetSettings != null && (fleetSettings.source or "file") == "kubernetes";
  apiIsLocal = kubeSource && config.services.k3s.enable && (config.services.k3s.role or "server") == "server";

  # Like nginx's and prometheus' checks: a config the binary rejects fails
  # the system build instead of the service at boot. `validate` reads only
  # the file (no kernel, no machine-id), so it runs in the build sandbox.
  validatedConfig =
    if cfg.checkConfig && pkgs.stdenv.buildPlatform.canExecute pkgs.stdenv.hostPlatform then
      pkgs.runCommand "netconverge-checked.toml"
        {
          preferLocalBuild = true;
        }
        ''
          ${lib.getExe cfg.package} --config ${generatedConfig} validate
          cp ${generatedConfig} $out
        ''
    else
      generatedConfig;
in
{
  options.services.netconverge = {
    enable = lib.mkEnableOption "netconverge, the declarative VXLAN overlay, NAT and flannel lease daemon";

    package = lib.mkOption {
      type = lib.types.package;
      default = pkgs.netconverge or (pkgs.callPackage ./package.nix { });
      defaultText = lib.literalExpression "pkgs.netconverge or (pkgs.callPackage ./package.nix { })";
      description = "The netconverge package to use.";
    };

    settings = lib.mkOption {
      type = settingsFormat.type;
      default = { };
      description = ''
        netconverge configuration, rendered to TOML (see `man netconverge`
        for every key). Ignored when `configFile` is set. The generated file
        is checked with `netconverge validate` at build time.

        `settings.fleet` carries the whole cluster (one attrset shared by
        every host, e.g. from the flake); each host picks itself out of it
        by `node_name`, which defaults to `networking.hostName` when a fleet
        is set. With `settings.cni` the conflist's directory (default
        /etc/cni/net.d) is made writable for the service.
      '';
      # Every section (vxlan, address, peer, nat, lease, daemon), shown in the
      # option docs verbatim; the CI evaluates and renders the same file.
      example = lib.literalExpression (builtins.readFile ./example-settings.nix);
    };

    checkConfig = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = ''
        Run `netconverge validate` on the generated configuration at build
        time. Skipped automatically when cross-compiling.
      '';
    };

    configFile = lib.mkOption {
      type = lib.types.path;
      default = validatedConfig;
      defaultText = lib.literalMD "generated from `settings` and checked with `netconverge validate` at build time";
      description = ''
        Configuration file, linked to ${configPath}. Setting it bypasses
        `settings` and the build-time check; `settings` is still read for
        the lease/state directories, `daemon.ready` and the device names
        handed to NetworkManager.
      '';
    };

    metrics = {
      enable = lib.mkEnableOption ''
        the Prometheus endpoint (`[daemon] metrics`): converge passes,
        objects in sync/blocked/failed, drift repairs, source states, at
        http://listenAddress:port/metrics (see docs/metrics.md)'';

      listenAddress = lib.mkOption {
        type = lib.types.str;
        default = "127.0.0.1";
        example = "::";
        description = ''
          IP address the endpoint listens on (an address, not a host name:
          `netconverge validate` rejects names at build time). The default
          serves this host only; a scraper on another host needs an address
          it can reach, and `openFirewall`.
        '';
      };

      port = lib.mkOption {
        type = lib.types.port;
        default = 9474;
        description = "TCP port of the endpoint.";
      };

      openFirewall = lib.mkOption {
        type = lib.types.bool;
        default = false;
        description = "Open `port` in the firewall (networking.firewall.allowedTCPPorts).";
      };
    };

    extraArgs = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      example = [
        "--log-format"
        "json"
      ];
      description = "Extra global arguments, placed before the `run` subcommand.";
    };
  };

  config = lib.mkIf cfg.enable (
    lib.mkMerge [
      {
        assertions = [
          {
            assertion = lib.hasPrefix "/var/lib/" stateDir;
            message = "services.netconverge: settings.lease.state_dir must be below /var/lib/ (it becomes the unit's StateDirectory=), got ${stateDir}";
          }
          {
            assertion = !(cfg.metrics.enable && (cfg.settings.daemon or { }) ? metrics);
            message = "services.netconverge: set the endpoint either with services.netconverge.metrics or with settings.daemon.metrics, not both";
          }
          {
            assertion = lib.hasPrefix "/" leasePath;
            message = "services.netconverge: settings.lease.path must be absolute, got ${leasePath}";
          }
        ];

        # The CLI (`netconverge converge --check`, `show`) finds the same file
        # by default.
        environment.systemPackages = [ cfg.package ];
        environment.etc."netconverge/netconverge.toml".source = cfg.configFile;

        systemd.services.netconverge = {
          description = "netconverge VXLAN overlay, NAT and flannel lease";
          documentation = [ "man:netconverge(1)" ];
          wantedBy = [ "multi-user.target" ];
          # After firewall loaders (they order themselves before
          # network-pre.target and may flush the ruleset) and NetworkManager;
          # deliberately not network-online.target: k3s waits for us, and we
          # only need the underlay link. See systemd/netconverge.service.
          wants = [ "network-pre.target" ];
          after = [
            "network-pre.target"
            "NetworkManager.service"
          ];
          before = lib.optionals (!apiIsLocal) [
            "k3s.service"
            "k3s-agent.service"
            "kubelet.service"
          ];
          # NAT backends run as child processes.
          path = [
            pkgs.nftables
            pkgs.iptables
          ];
          # Config edits reload (SIGHUP, synchronous with notify-reload);
          # package updates change ExecStart and restart as usual.
          reloadTriggers = [ cfg.configFile ];

          serviceConfig = {
            Type = "notify-reload";
            NotifyAccess = "main";
            ExecStart = "${lib.getExe cfg.package} ${
              utils.escapeSystemdExecArgs ([
                "--config"
                configPath
              ] ++ cfg.extraArgs ++ [ "run" ])
            }";
            # Not RuntimeDirectory=: systemd deletes it on stop, which would
            # remove subnet.env under running pods (nixpkgs' flannel module
            # did this). "+": runs outside the sandbox, before the namespace
            # (where /run is read-only and a missing ReadWritePaths= entry
            # fails the start) is set up.
            ExecStartPre =
              [ "+${pkgs.coreutils}/bin/mkdir -p ${leaseDir}" ]
              # /run/netconverge: the one-writer-per-namespace lock
              ++ [ "+${pkgs.coreutils}/bin/mkdir -p /run/netconverge" ]
              ++ lib.optional useIptables "+${pkgs.coreutils}/bin/touch /run/xtables.lock"
              # /etc/cni/net.d: read-only inside (ProtectSystem=strict) unless listed
              ++ lib.optional (cniDir != null) "+${pkgs.coreutils}/bin/mkdir -p ${cniDir}";
            # SIGTERM: STOPPING=1, exit, kernel state and NAT rules stay.
            KillMode = "mixed";
            TimeoutStopSec = "20s";
            WatchdogSec = "30s";
            Restart = "on-failure";
            RestartSec = "5s";
            # "converged" waits for a blocked underlay (DHCP, NM activation)
            # and k3s waits with it; "applied" is ready within seconds.
            TimeoutStartSec = lib.mkDefault (if ready == "applied" then "90s" else "5min");
            StateDirectory = lib.removePrefix "/var/lib/" stateDir;
            StateDirectoryMode = "0700";
            # subnet.env is public and 0644 like flannel's own.
            UMask = "0022";

            # Root with only CAP_NET_ADMIN: uid 0's children get the bounding
            # set back on execve, so nft/iptables-restore keep CAP_NET_ADMIN
            # without AmbientCapabilities= (which is for non-root users).
            # iptables-legacy also opens a SOCK_RAW socket (CAP_NET_RAW).
            CapabilityBoundingSet = [ "CAP_NET_ADMIN" ] ++ lib.optional useIptables "CAP_NET_RAW";
            NoNewPrivileges = true;

            ProtectSystem = "strict";
            PrivateMounts = true;
            ReadWritePaths = [
              leaseDir
              "/run/netconverge"
              # accept_ra=0 on our own devices, the only sysctl we write;
              # ProtectKernelTunables keeps the rest of /proc/sys read-only.
              "-/proc/sys/net/ipv6/conf"
            ]
            ++ lib.optional useIptables "/run/xtables.lock"
            ++ lib.optional (cniDir != null) cniDir;
            ProtectKernelTunables = true;
            ProtectHome = true;
            PrivateTmp = true;
            PrivateDevices = true;
            ProtectKernelModules = true;
            ProtectKernelLogs = true;
            ProtectControlGroups = true;
            ProtectClock = true;
            ProtectHostname = true;
            ProtectProc = "invisible";

            RestrictAddressFamilies = [
              "AF_NETLINK"
              "AF_UNIX"
              "AF_INET"
              "AF_INET6"
            ];
            RestrictNamespaces = true;
            RestrictRealtime = true;
            RestrictSUIDSGID = true;
            LockPersonality = true;
            MemoryDenyWriteExecute = true;
            SystemCallArchitectures = "native";
            SystemCallFilter = [
              "@system-service"
              "~@privileged @resources"
            ];
            SystemCallErrorNumber = "EPERM";
          };
        };
      }

      (lib.mkIf (cfg.metrics.enable && cfg.metrics.openFirewall) {
        networking.firewall.allowedTCPPorts = [ cfg.metrics.port ];
      })

      (lib.mkIf config.networking.networkmanager.enable {
        networking.networkmanager.unmanaged = map (name: "interface-name:${name}") vxlanNames;
      })

      # k3s starts only after netconverge is READY, and not at all if it
      # failed. Only the unit is touched, no services.k3s option.
      (lib.mkIf (config.services.k3s.enable && !apiIsLocal) {
        systemd.services.k3s = {
          after = [ "netconverge.service" ];
          requires = [ "netconverge.service" ];
        };
      })
    ]
  );
}
