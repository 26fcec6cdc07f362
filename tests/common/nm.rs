//! A real NetworkManager for tests, confined to namespaces: a holder process
//! in new net + mount + uts namespaces (private tmpfs `/run`, private sysfs,
//! NetworkManager's config dirs and `/etc/resolv.conf` bind-mounted from a
//! temp dir), a private `dbus-daemon`, and `NetworkManager --no-daemon`
//! managing only `mgmt0*` interfaces. Follows
//! /work/shared/tools/nm-sandbox.sh.
//!
//! Every process is started and stopped by PID; teardown also stops any
//! stray process left in the sandbox's network namespace, and
//! [`NmSandbox::finish`] asserts the host's network state, resolv.conf,
//! hostname and NetworkManager dirs are exactly as before.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::require_root;

/// The interface NetworkManager builds (a bridge with a veth port for carrier).
pub const IF: &str = "mgmt0-system";
/// The connection profile that owns it.
pub const CON: &str = "mgmt0";
/// The system bus socket inside the sandbox (its private tmpfs `/run`).
pub const NS_BUS: &str = "/run/dbus/system_bus_socket";

const NM_CONF: &str = "\
[main]
plugins=keyfile
dhcp=internal
dns=default
# never write /etc/resolv.conf; NM still writes /run/NetworkManager/resolv.conf (private tmpfs)
rc-manager=unmanaged
systemd-resolved=false
hostname-mode=none
no-auto-default=*
auth-polkit=false
firewall-backend=none

[keyfile]
path=/etc/NetworkManager/system-connections
# everything except the test interfaces is unmanaged
unmanaged-devices=except:interface-name:mgmt0*

[connectivity]
enabled=false

[logging]
level=INFO
";

pub struct NmSandbox {
    pub dir: tempfile::TempDir,
    holder: Option<Child>,
    holder_pid: u32,
    /// `net:[inode]` of the sandbox, to find strays and prove it is gone.
    netns: String,
    dbus: Option<Child>,
    nm: Option<Child>,
    host_before: String,
    torn_down: bool,
}

fn ns_link(pid: u32, kind: &str) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

fn alive(pid: u32) -> bool {
    // a zombie is not alive for our purposes
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// SIGTERM, wait up to 5 s, then SIGKILL; reaps the child.
fn stop_child(child: &mut Child, what: &str) {
    let pid = child.id();
    if child.try_wait().ok().flatten().is_none() {
        signal(pid, "-TERM");
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("nm sandbox: {what} ({pid}) ignored SIGTERM, killing");
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// Stop a process that is not our child (a stray), by PID.
fn stop_pid(pid: u32) {
    if !alive(pid) {
        return;
    }
    signal(pid, "-TERM");
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end && alive(pid) {
        std::thread::sleep(Duration::from_millis(20));
    }
    if alive(pid) {
        signal(pid, "-KILL");
    }
}

/// Everything NetworkManager could conceivably touch on the host, read-only.
fn host_snapshot() -> String {
    let run = |args: &[&str]| -> String {
        Command::new(args[0])
            .args(&args[1..])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout).into_owned()
                    + &String::from_utf8_lossy(&o.stderr)
            })
            .unwrap_or_else(|e| format!("{e}\n"))
    };
    let strip_lft = |s: String| -> String {
        s.lines()
            .map(|l| {
                let mut out = Vec::new();
                let mut it = l.split_whitespace();
                while let Some(t) = it.next() {
                    if t == "valid_lft" || t == "preferred_lft" || t == "expires" {
                        it.next();
                    } else {
                        out.push(t);
                    }
                }
                out.join(" ")
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let file = |p: &str| -> String {
        match std::fs::read(p) {
            Ok(b) => format!("{p}: {} bytes, {:x?}", b.len(), &b[..b.len().min(64)]),
            Err(e) => format!("{p}: {e}"),
        }
    };
    let meta = |p: &str| -> String {
        match std::fs::symlink_metadata(p) {
            Ok(m) => format!("{p}: {:?} {:?}", m.file_type(), m.modified().ok()),
            Err(e) => format!("{p}: {e}"),
        }
    };
    let dir = |p: &str| -> String {
        let mut names: Vec<String> = std::fs::read_dir(p)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        format!("{p}: {names:?}")
    };
    [
        format!("## links\n{}", run(&["ip", "-o", "link"])),
        format!("## addrs\n{}", strip_lft(run(&["ip", "-o", "addr"]))),
        format!(
            "## routes\n{}",
            strip_lft(run(&["ip", "route", "show", "table", "all"]))
        ),
        format!(
            "## rules\n{}{}",
            run(&["ip", "rule"]),
            run(&["ip", "-6", "rule"])
        ),
        format!("## nft\n{}", run(&["nft", "list", "ruleset"])),
        format!(
            "## resolv\n{}\n{}",
            meta("/etc/resolv.conf"),
            file("/etc/resolv.conf")
        ),
        format!(
            "## hostname\n{}{}\n{}",
            file("/proc/sys/kernel/hostname"),
            file("/etc/hostname"),
            file("/etc/hosts")
        ),
        format!(
            "## nm dirs\n{}\n{}\n{}\n{}\n{}",
            dir("/etc/NetworkManager"),
            dir("/etc/NetworkManager/system-connections"),
            dir("/var/lib/NetworkManager"),
            meta("/run/NetworkManager"),
            meta("/run/dbus/system_bus_socket")
        ),
    ]
    .join("\n")
}

impl NmSandbox {
    /// Namespaces, mounts, bus and NetworkManager (running, startup
    /// complete). No profile yet: see [`NmSandbox::add_mgmt0`].
    pub fn new() -> NmSandbox {
        let mut sb = NmSandbox::without_nm();
        sb.start_nm();
        sb
    }

    /// Namespaces, mounts and the bus; NetworkManager not started.
    pub fn without_nm() -> NmSandbox {
        require_root();
        for tool in [
            "NetworkManager",
            "nmcli",
            "nm-online",
            "dbus-daemon",
            "busctl",
            "unshare",
            "nsenter",
        ] {
            let found = Command::new("sh")
                .args([
                    "-c",
                    &format!("command -v {tool} || PATH=$PATH:/usr/sbin:/sbin command -v {tool}"),
                ])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            assert!(
                found,
                "{tool} is missing: run .ci/deps (network-manager, dbus-daemon)"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("nct-nm-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        for sub in [
            "etc-NetworkManager/conf.d",
            "etc-NetworkManager/system-connections",
            "var-lib-NetworkManager",
            "bus",
        ] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        for sub in [
            "var-lib-NetworkManager",
            "etc-NetworkManager/system-connections",
        ] {
            sh_ok(&["chmod", "700", d.join(sub).to_str().unwrap()]);
        }
        std::fs::write(
            d.join("resolv.conf"),
            "# private resolv.conf of a netconverge test\n",
        )
        .unwrap();
        std::fs::write(d.join("etc-NetworkManager/NetworkManager.conf"), NM_CONF).unwrap();
        let host_bus = d.join("bus/system_bus_socket");
        std::fs::write(
            d.join("dbus-system.conf"),
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <!-- no <user>, no <fork>, no <servicedir>: nothing is ever bus-activated -->
  <listen>unix:path={NS_BUS}</listen>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
  </policy>
</busconfig>
"#,
                host_bus.display()
            ),
        )
        .unwrap();
        let host_before = host_snapshot();

        let holder = Command::new("unshare")
            .args([
                "--net",
                "--mount",
                "--uts",
                "--propagation",
                "private",
                "--",
                "sleep",
                "infinity",
            ])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let holder_pid = holder.id();
        let me = std::process::id();
        let (my_net, my_mnt) = (ns_link(me, "net"), ns_link(me, "mnt"));
        let end = Instant::now() + Duration::from_secs(5);
        let netns = loop {
            let (n, m) = (ns_link(holder_pid, "net"), ns_link(holder_pid, "mnt"));
            if let Some(n) = n.filter(|n| Some(n) != my_net.as_ref())
                && m != my_mnt
            {
                break n;
            }
            assert!(
                Instant::now() < end,
                "holder {holder_pid} never got its own namespaces"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        let mut sb = NmSandbox {
            dir,
            holder: Some(holder),
            holder_pid,
            netns,
            dbus: None,
            nm: None,
            host_before,
            torn_down: false,
        };
        let d = sb.dir.path().to_path_buf();
        let setup = format!(
            "set -e
            mount -t tmpfs -o mode=0755,size=16m nct-nm-run /run
            mkdir -p /run/dbus /run/NetworkManager
            # sysfs of this netns; /sys itself read-only so NetworkManager does not
            # wait for udev, /sys/class and /sys/devices writable for bridge ports
            mount -t sysfs nct-nm-sysfs /sys
            mount --bind /sys/class /sys/class
            mount --bind /sys/devices /sys/devices
            mount -o remount,bind,ro /sys
            mount --bind '{d}/etc-NetworkManager' /etc/NetworkManager
            mount --bind '{d}/var-lib-NetworkManager' /var/lib/NetworkManager
            mount --bind '{d}/resolv.conf' /etc/resolv.conf
            hostname nct-nm-sandbox
            ip link set lo up",
            d = d.display()
        );
        sb.exec(&["sh", "-c", &setup]);
        assert_eq!(
            sb.exec(&["readlink", "/proc/self/ns/net"]).trim(),
            sb.netns,
            "nsenter does not land in the sandbox"
        );
        sb.start_bus();
        sb
    }

    /// `nsenter` into the sandbox's net, mount and uts namespaces.
    pub fn prefix(&self) -> Vec<String> {
        [
            "nsenter",
            "-t",
            &self.holder_pid.to_string(),
            "-n",
            "-m",
            "-u",
            "--",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// The bus address that works both inside the sandbox and on the host.
    pub fn bus_address(&self) -> String {
        format!("unix:path={}", self.host_bus().display())
    }

    fn host_bus(&self) -> PathBuf {
        self.dir.path().join("bus/system_bus_socket")
    }

    fn command(&self, args: &[&str]) -> Command {
        let p = self.prefix();
        let mut c = Command::new(&p[0]);
        c.args(&p[1..])
            .args(args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", format!("unix:path={NS_BUS}"))
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        c
    }

    /// Run a command inside the sandbox; any exit status.
    pub fn exec_output(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("spawn nsenter")
    }

    /// Run a command inside the sandbox; panics with its output unless it succeeds.
    pub fn exec(&self, args: &[&str]) -> String {
        let out = self.exec_output(args);
        assert!(
            out.status.success(),
            "`{}` failed in the NM sandbox: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["ip"];
        full.extend_from_slice(args);
        self.exec(&full)
    }

    /// `ip -j <args>` inside the sandbox, parsed (an independent reader).
    pub fn ip_json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = vec!["ip", "-j"];
        full.extend_from_slice(args);
        json(&self.exec(&full))
    }

    /// `bridge -j <args>` inside the sandbox, parsed.
    pub fn bridge_json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = vec!["bridge", "-j"];
        full.extend_from_slice(args);
        json(&self.exec(&full))
    }

    pub fn nmcli(&self, args: &[&str]) -> String {
        let mut full = vec!["nmcli"];
        full.extend_from_slice(args);
        self.exec(&full)
    }

    /// Run the netconverge binary inside the sandbox with the bus address set.
    pub fn netconverge(&self, config: &Path, args: &[&str]) -> Output {
        // The record next to the config (see `super::state_dir`).
        let state = format!(
            "{}={}",
            super::STATE_DIR_ENV,
            super::state_dir(config).display()
        );
        let mut full = vec![
            "env",
            state.as_str(),
            env!("CARGO_BIN_EXE_netconverge"),
            "-c",
            config.to_str().unwrap(),
        ];
        full.extend_from_slice(args);
        self.exec_output(&full)
    }

    pub fn ifindex(&self, iface: &str) -> Option<u32> {
        let out = self.exec_output(&["cat", &format!("/sys/class/net/{iface}/ifindex")]);
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    }

    /// `GENERAL.STATE` of a device as NetworkManager reports it.
    pub fn device_state(&self, iface: &str) -> Option<u32> {
        let out = self.exec_output(&["nmcli", "-g", "GENERAL.STATE", "device", "show", iface]);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
    }

    pub fn wait_activated(&self, iface: &str) {
        let end = Instant::now() + Duration::from_secs(30);
        while self.device_state(iface) != Some(100) {
            assert!(
                Instant::now() < end,
                "{iface} not activated within 30 s; NetworkManager log:\n{}",
                self.nm_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `mgmt0` profile: bridge `mgmt0-system` (manual 192.0.2.10/24,
    /// 2001:db8::10/64) with a veth port for carrier; activated.
    pub fn add_mgmt0(&self) {
        let ip = [
            "connection.autoconnect",
            "no",
            "ipv4.method",
            "manual",
            "ipv4.addresses",
            "192.0.2.10/24",
            "ipv4.dns",
            "192.0.2.53",
            "ipv6.method",
            "manual",
            "ipv6.addresses",
            "2001:db8::10/64",
            "ipv6.dns",
            "2001:db8::53",
        ];
        let mut add = vec![
            "connection",
            "add",
            "type",
            "bridge",
            "ifname",
            IF,
            "con-name",
            CON,
            "bridge.stp",
            "no",
            "connection.autoconnect-slaves",
            "yes",
        ];
        add.extend_from_slice(&ip);
        self.nmcli(&add);
        self.nmcli(&[
            "connection",
            "add",
            "type",
            "veth",
            "ifname",
            "mgmt0-p0",
            "con-name",
            "mgmt0-p0",
            "veth.peer",
            "mgmt0-p0b",
            "connection.autoconnect",
            "no",
            "master",
            IF,
            "slave-type",
            "bridge",
        ]);
        self.nmcli(&["--wait", "30", "connection", "up", CON]);
        self.wait_activated(IF);
    }

    /// `nmcli connection down` + `up`: NetworkManager deletes and recreates
    /// the link (new ifindex). Returns once it is activated again.
    pub fn down_up(&self) {
        self.nmcli(&["--wait", "30", "connection", "down", CON]);
        self.nmcli(&["--wait", "30", "connection", "up", CON]);
        self.wait_activated(IF);
    }

    fn log_file(&self, name: &str) -> std::fs::File {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(name))
            .unwrap()
    }

    pub fn start_bus(&mut self) {
        assert!(self.dbus.is_none(), "bus already running");
        let log = self.log_file("dbus.log");
        let conf = self.dir.path().join("dbus-system.conf");
        let child = self
            .command(&[
                "dbus-daemon",
                &format!("--config-file={}", conf.display()),
                "--nofork",
                "--nopidfile",
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let pid = child.id();
        self.dbus = Some(child);
        let end = Instant::now() + Duration::from_secs(10);
        while !self.host_bus().exists() {
            assert!(
                Instant::now() < end,
                "private dbus-daemon did not come up: {}",
                std::fs::read_to_string(self.dir.path().join("dbus.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        assert_eq!(
            comm.trim(),
            "dbus-daemon",
            "PID {pid} is not the dbus-daemon"
        );
    }

    /// SIGTERM the bus by PID (NetworkManager should be stopped first).
    pub fn stop_bus(&mut self) {
        if let Some(mut c) = self.dbus.take() {
            stop_child(&mut c, "dbus-daemon");
        }
        let _ = std::fs::remove_file(self.host_bus());
    }

    fn nm_has_name(&self) -> bool {
        Command::new("busctl")
            .args([
                &format!("--address={}", self.bus_address()),
                "call",
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "NameHasOwner",
                "s",
                "org.freedesktop.NetworkManager",
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("true"))
            .unwrap_or(false)
    }

    /// Start NetworkManager and wait until its startup is complete.
    pub fn start_nm(&mut self) {
        assert!(self.nm.is_none(), "NetworkManager already running");
        let log = self.log_file("NetworkManager.log");
        let mut child = self
            .command(&[
                "NetworkManager",
                "--no-daemon",
                "--debug",
                "--log-level=INFO",
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let end = Instant::now() + Duration::from_secs(30);
        while !self.nm_has_name() {
            if let Some(st) = child.try_wait().unwrap() {
                panic!("NetworkManager exited ({st}):\n{}", self.nm_log());
            }
            assert!(
                Instant::now() < end,
                "NetworkManager never took its bus name:\n{}",
                self.nm_log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let comm =
            std::fs::read_to_string(format!("/proc/{}/comm", child.id())).unwrap_or_default();
        assert_eq!(comm.trim(), "NetworkManager");
        self.nm = Some(child);
        let out = self.exec_output(&["nm-online", "-s", "-q", "-t", "30"]);
        assert!(
            out.status.success(),
            "NetworkManager startup incomplete:\n{}",
            self.nm_log()
        );
    }

    /// SIGTERM NetworkManager by PID and wait for it to exit.
    pub fn stop_nm(&mut self) {
        if let Some(mut c) = self.nm.take() {
            stop_child(&mut c, "NetworkManager");
        }
        let end = Instant::now() + Duration::from_secs(10);
        while self.dbus.is_some() && self.nm_has_name() {
            assert!(
                Instant::now() < end,
                "NetworkManager's bus name outlived it"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn nm_pid(&self) -> Option<u32> {
        self.nm.as_ref().map(Child::id)
    }

    pub fn nm_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("NetworkManager.log")).unwrap_or_default()
    }

    /// Processes (other than the holder) inside the sandbox's netns.
    fn inhabitants(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if pid != self.holder_pid
                && alive(pid)
                && ns_link(pid, "net").as_deref() == Some(self.netns.as_str())
            {
                pids.push(pid);
            }
        }
        pids
    }

    fn teardown(&mut self) -> Vec<String> {
        if self.torn_down {
            return Vec::new();
        }
        self.torn_down = true;
        let mut problems = Vec::new();
        if let Some(mut c) = self.nm.take() {
            stop_child(&mut c, "NetworkManager");
        }
        if let Some(mut c) = self.dbus.take() {
            stop_child(&mut c, "dbus-daemon");
        }
        // safety net: anything still in our netns was started by this test
        for pid in self.inhabitants() {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            eprintln!(
                "nm sandbox: stopping stray pid {pid} ({}) in the sandbox",
                comm.trim()
            );
            stop_pid(pid);
        }
        if let Some(mut h) = self.holder.take() {
            stop_child(&mut h, "namespace holder");
        }
        let left = self.inhabitants();
        if !left.is_empty() {
            problems.push(format!(
                "processes still inside the sandbox netns: {left:?}"
            ));
        }
        let after = host_snapshot();
        if after != self.host_before {
            problems.push(format!(
                "host state changed:\n--- before\n{}\n--- after\n{after}",
                self.host_before
            ));
        }
        problems
    }

    /// Stop everything by PID and assert the host is untouched.
    pub fn finish(mut self) {
        let problems = self.teardown();
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
}

impl Drop for NmSandbox {
    fn drop(&mut self) {
        for p in self.teardown() {
            eprintln!("nm sandbox teardown: {p}");
        }
    }
}

fn json(s: &str) -> serde_json::Value {
    if s.trim().is_empty() {
        return serde_json::Value::Array(vec![]);
    }
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

fn sh_ok(args: &[&str]) {
    let st = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(st.success(), "{args:?} failed");
}
