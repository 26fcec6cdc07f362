#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! `[cni]` end to end: real pods from the conflist netconverge wrote.
//!
//! Two nodes (namespaces node-a, node-b on a bridge underlay, a third
//! namespace is the switch) are converged by the built binary from the
//! shipped `examples/fleet/fleet.toml` plus `[cni]`, each with its own
//! `--node`. The REAL CNI plugins (Debian `containernetworking-plugins`,
//! `/usr/lib/cni`, or `$NETCONVERGE_CNI_PATH`) are then run the way a
//! runtime runs a conflist — each plugin of `plugins` in order with
//! `CNI_COMMAND=ADD`, the list's `name`/`cniVersion` and the previous
//! result — against a fresh pod namespace on each node. pod-a then pings
//! pod-b over the VXLAN overlay (IPv4 and IPv6), checked with `ip -j`; DEL
//! (reverse order) removes the pods' interfaces and host-local's
//! allocations, after which the same ping fails (the control).
//!
//! The only thing the test adds to each plugin's configuration is
//! host-local's `dataDir` (a temp dir): the nodes share this host's
//! filesystem, and /var/lib/cni must not be touched.

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::fixtures::write_config;
use common::{LONG, Netns, code, poll, stdout_stderr};
use serde_json::Value;

const NODES: [(&str, &str, &str); 2] = [
    ("node-a", "192.0.2.11", "2001:db8::11"),
    ("node-b", "192.0.2.12", "2001:db8::12"),
];

fn cni_path() -> PathBuf {
    let p = PathBuf::from(
        std::env::var("NETCONVERGE_CNI_PATH").unwrap_or_else(|_| "/usr/lib/cni".to_string()),
    );
    assert!(
        p.join("bridge").exists() && p.join("host-local").exists() && p.join("portmap").exists(),
        "the CNI plugins are not in {} (install Debian's containernetworking-plugins: bash .ci/deps)",
        p.display()
    );
    p
}

fn config(dir: &Path) -> PathBuf {
    let example = format!("{}/examples/fleet/fleet.toml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(example).unwrap();
    let d = dir.display();
    write_config(
        dir,
        "fleet.toml",
        &format!(
            "{text}\n[lease]\npath = \"{d}/subnet.env\"\nstate_dir = \"{d}/state\"\n\n[cni]\npath = \"{d}/net.d/10-netconverge.conflist\"\n"
        ),
    )
}

fn conflist_path(dir: &Path) -> PathBuf {
    dir.join("net.d/10-netconverge.conflist")
}

/// One plugin invocation, as a runtime does it: in the node's namespace,
/// the network configuration on stdin.
fn plugin(node: &Netns, pod: &Netns, cmd: &str, id: &str, conf: &Value) -> Value {
    let kind = conf["type"].as_str().unwrap();
    let bin = cni_path().join(kind);
    let mut child = Command::new("ip")
        .args(["netns", "exec", &node.name])
        .arg(&bin)
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", format!("/run/netns/{}", pod.name))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", cni_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        code(&out),
        0,
        "{kind} {cmd} with {conf}: {}",
        stdout_stderr(&out)
    );
    if out.stdout.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// Each plugin's configuration: the list's name and version, host-local's
/// state in `data`, the previous result.
fn plugin_confs(list: &Value, data: &Path) -> Vec<Value> {
    list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let mut c = p.clone();
            c["name"] = list["name"].clone();
            c["cniVersion"] = list["cniVersion"].clone();
            if c.get("ipam").is_some() {
                c["ipam"]["dataDir"] = Value::String(data.display().to_string());
            }
            c
        })
        .collect()
}

fn add(node: &Netns, pod: &Netns, list: &Value, data: &Path) -> Value {
    let mut prev = Value::Null;
    for mut c in plugin_confs(list, data) {
        if !prev.is_null() {
            c["prevResult"] = prev.clone();
        }
        prev = plugin(node, pod, "ADD", &pod.name, &c);
    }
    prev
}

fn del(node: &Netns, pod: &Netns, list: &Value, data: &Path, result: &Value) {
    for mut c in plugin_confs(list, data).into_iter().rev() {
        c["prevResult"] = result.clone();
        plugin(node, pod, "DEL", &pod.name, &c);
    }
}

/// The pod's address of `v6` family from a CNI result (without prefix).
fn pod_ip(result: &Value, v6: bool) -> String {
    result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["address"].as_str().unwrap())
        .find(|a| a.contains(':') == v6)
        .unwrap_or_else(|| {
            panic!(
                "no {} address in {result}",
                if v6 { "IPv6" } else { "IPv4" }
            )
        })
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

/// host-local's allocation files of network `cbr0` (named by address).
fn allocations(data: &Path) -> Vec<String> {
    std::fs::read_dir(data.join("cbr0"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                .collect()
        })
        .unwrap_or_default()
}

fn ping(pod: &Netns, ip: &str) -> Result<(), String> {
    let out = pod.exec_output(&["ping", "-n", "-c", "1", "-W", "1", ip]);
    if code(&out) == 0 {
        Ok(())
    } else {
        Err(format!("ping {ip}: {}", stdout_stderr(&out)))
    }
}

#[test]
fn pods_made_by_the_real_cni_plugins_reach_each_other_over_the_overlay() {
    common::require_root();
    cni_path();
    let switch = Netns::new("cni-sw");
    switch.ip(&["link", "add", "br0", "type", "bridge"]);
    switch.ip(&["link", "set", "br0", "up"]);
    let nodes: Vec<Netns> = NODES
        .iter()
        .map(|(n, ..)| Netns::new(&format!("cni-{}", &n[5..])))
        .collect();
    let dirs: Vec<tempfile::TempDir> = NODES.iter().map(|_| tempfile::tempdir().unwrap()).collect();
    for (((name, v4, v6), ns), i) in NODES.iter().zip(&nodes).zip(0..) {
        let leg = format!("sw-{i}");
        switch.ip(&[
            "link", "add", &leg, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ]);
        switch.ip(&["link", "set", &leg, "master", "br0", "up"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", "eth0"]);
        ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"]);
        // What kubelet/k3s set on a node: it routes pod traffic.
        ns.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        ns.exec(&["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"]);
        let cfg = config(dirs[i].path());
        ns.netconverge_exits(&cfg, &["--node", name, "converge"], 0);
        ns.netconverge_exits(&cfg, &["--node", name, "converge", "--check"], 0);
    }

    // The conflists as netconverge wrote them, fed to the plugins as is.
    let lists: Vec<Value> = dirs
        .iter()
        .map(|d| {
            serde_json::from_str(&std::fs::read_to_string(conflist_path(d.path())).unwrap())
                .unwrap()
        })
        .collect();
    let types: Vec<&str> = lists[0]["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["bridge", "portmap"], "{}", lists[0]);

    let pods: Vec<Netns> = ["pod-a", "pod-b"].iter().map(|t| Netns::new(t)).collect();
    let data: Vec<PathBuf> = dirs.iter().map(|d| d.path().join("ipam")).collect();
    let results: Vec<Value> = (0..2)
        .map(|i| add(&nodes[i], &pods[i], &lists[i], &data[i]))
        .collect();

    for (i, r) in results.iter().enumerate() {
        let subnet_v4 = format!("198.18.{}.", i + 1);
        let subnet_v6 = format!("fd00:42:0:{}::", i + 1);
        assert!(pod_ip(r, false).starts_with(&subnet_v4), "{r}");
        assert!(pod_ip(r, true).starts_with(&subnet_v6), "{r}");
        // Independent reader: the pod's interface has the VXLAN device's MTU
        // and the route to the cluster network through the bridge.
        let vx = nodes[i].link("flannel.1").unwrap();
        let eth = pods[i].link("eth0").unwrap();
        assert_eq!(eth["mtu"], vx["mtu"], "{eth}");
        let routes = pods[i].ip_list(&["-4", "route", "show"]);
        assert!(
            routes
                .iter()
                .any(|r| r["dst"] == "198.18.0.0/16" && r["gateway"] == format!("{subnet_v4}1")),
            "{routes:?}"
        );
        let br = nodes[i].ip_list(&["addr", "show", "dev", "cni0"]);
        let addrs: Vec<String> = br[0]["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
            .collect();
        assert!(addrs.contains(&format!("{subnet_v4}1/24")), "{addrs:?}");
        assert!(addrs.contains(&format!("{subnet_v6}1/64")), "{addrs:?}");
    }

    // pod-a → pod-b and back, both families, over flannel.1 / flannel-v6.1.
    for v6 in [false, true] {
        let (a, b) = (pod_ip(&results[0], v6), pod_ip(&results[1], v6));
        poll(LONG, || ping(&pods[0], &b)).unwrap();
        poll(LONG, || ping(&pods[1], &a)).unwrap();
    }
    // Control: without node-a's peer route (netconverge's) pod-b is out of
    // reach; converging restores it.
    let b4 = pod_ip(&results[1], false);
    nodes[0].ip(&["route", "del", "198.18.2.0/24"]);
    assert!(
        ping(&pods[0], &b4).is_err(),
        "reachable without the overlay route"
    );
    nodes[0].netconverge_exits(
        &config(dirs[0].path()),
        &["--node", "node-a", "converge"],
        0,
    );
    poll(LONG, || ping(&pods[0], &b4)).unwrap();
    // ... and it went through the overlay: node-a's VXLAN device counted it.
    let stats = nodes[0].ip_list(&["-s", "link", "show", "flannel.1"]);
    assert!(
        stats[0]["stats64"]["tx"]["packets"].as_u64().unwrap() > 0,
        "{stats:?}"
    );

    // DEL cleans up: interfaces and allocations gone, and the ping fails.
    for i in 0..2 {
        // control: host-local holds both pod addresses (files named by IP)
        assert_eq!(
            allocations(&data[i]).len(),
            2,
            "{:?}",
            allocations(&data[i])
        );
        del(&nodes[i], &pods[i], &lists[i], &data[i], &results[i]);
        assert!(pods[i].link("eth0").is_none(), "pod {i} still has eth0");
        let held = allocations(&data[i]);
        assert!(held.is_empty(), "host-local still holds {held:?}");
    }
    assert!(ping(&pods[0], &pod_ip(&results[1], false)).is_err());
}

#[test]
fn conflist_drift_is_reported_and_repaired_and_a_directory_blocks_only_it() {
    common::require_root();
    let ns = Netns::new("cni-drift");
    ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0-p",
    ]);
    ns.ip(&["link", "set", "eth0", "up"]);
    ns.ip(&["addr", "add", "192.0.2.11/24", "dev", "eth0"]);
    ns.ip(&["addr", "add", "2001:db8::11/64", "dev", "eth0", "nodad"]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let path = conflist_path(dir.path());
    let check =
        |want| ns.netconverge_exits(&cfg, &["--node", "node-a", "converge", "--check"], want);
    let out = check(1);
    assert!(
        out.contains(&format!("+ cni {}: missing", path.display())),
        "{out}"
    );
    ns.netconverge_exits(&cfg, &["--node", "node-a", "converge"], 0);
    let good = std::fs::read_to_string(&path).unwrap();
    check(0);

    // Someone edits the MTU and the bridge: `~` with exactly those fields.
    std::fs::write(
        &path,
        good.replace("\"mtu\": 1450", "\"mtu\": 1500")
            .replace("\"cni0\"", "\"br9\""),
    )
    .unwrap();
    let out = check(1);
    assert!(
        out.contains(&format!(
            "~ cni {}: plugins[0].bridge \"br9\", declared \"cni0\"; plugins[0].mtu 1500, declared 1450",
            path.display()
        )),
        "{out}"
    );
    ns.netconverge_exits(&cfg, &["--node", "node-a", "converge"], 0);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), good);
    check(0);

    // Another config file that sorts first would win in containerd: noted.
    let other = path.with_file_name("05-other.conflist");
    std::fs::write(&other, "{}").unwrap();
    let out = check(0);
    assert!(out.contains("05-other.conflist sorts before it"), "{out}");
    std::fs::remove_file(&other).unwrap();
    assert!(!check(0).contains("sorts before it"));

    // A directory at the path (a bind mount of a missing file): blocked,
    // the rest converges (the device comes back), exit 1.
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    ns.ip(&["link", "del", "flannel.1"]);
    let out = ns.netconverge_exits(&cfg, &["--node", "node-a", "converge"], 1);
    assert!(
        out.contains("a directory, not a regular file; not written"),
        "{out}"
    );
    assert!(
        ns.link("flannel.1").is_some(),
        "the device was not converged"
    );
    assert!(path.is_dir());
}

/// `show` prints the conflist `[cni]` declares with the planner's verdict:
/// missing before the first converge, in sync with the file's text after,
/// drift (with what differs) after an edit — in JSON and in TOML.
#[test]
fn show_prints_the_conflist_and_its_status() {
    common::require_root();
    let ns = Netns::new("cni-show");
    ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0-p",
    ]);
    ns.ip(&["link", "set", "eth0", "up"]);
    ns.ip(&["addr", "add", "192.0.2.11/24", "dev", "eth0"]);
    ns.ip(&["addr", "add", "2001:db8::11/64", "dev", "eth0", "nodad"]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let path = conflist_path(dir.path());
    let show = || -> Value {
        let out = ns.netconverge(&cfg, &["--node", "node-a", "show", "--format", "json"]);
        assert_eq!(code(&out), 0, "{}", stdout_stderr(&out));
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        let cni = doc["cni"].clone();
        assert_eq!(cni["path"], path.display().to_string(), "{doc}");
        cni
    };
    let cni = show();
    assert_eq!(cni["status"], "missing", "{cni}");
    assert_eq!(cni["file"]["state"], "missing", "{cni}");

    ns.netconverge_exits(&cfg, &["--node", "node-a", "converge"], 0);
    let good = std::fs::read_to_string(&path).unwrap();
    let cni = show();
    assert_eq!(cni["status"], "in_sync", "{cni}");
    assert_eq!(cni["file"]["state"], "text", "{cni}");
    assert_eq!(cni["file"]["detail"], good.as_str(), "{cni}");
    assert!(cni.get("reason").is_none(), "{cni}");

    std::fs::write(&path, good.replace("\"mtu\": 1450", "\"mtu\": 1500")).unwrap();
    let cni = show();
    assert_eq!(cni["status"], "drift", "{cni}");
    assert_eq!(cni["reason"], "plugins[0].mtu 1500, declared 1450", "{cni}");
    let toml = ns.netconverge_exits(&cfg, &["--node", "node-a", "show"], 0);
    assert!(toml.contains("[cni]"), "{toml}");
    assert!(toml.contains("status = \"drift\""), "{toml}");
    // show changes nothing.
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .contains("\"mtu\": 1500")
    );
}

/// The conflist raises no netlink event when someone deletes or edits it:
/// the daemon's watch on the files it writes repairs it at once. The resync
/// is an hour away, so only the watch can explain a prompt restore.
#[test]
fn daemon_repairs_a_deleted_or_edited_conflist_from_the_file_watch() {
    common::require_root();
    let ns = Netns::new("cni-watch");
    ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0-p",
    ]);
    ns.ip(&["link", "set", "eth0", "up"]);
    ns.ip(&["addr", "add", "192.0.2.11/24", "dev", "eth0"]);
    ns.ip(&["addr", "add", "2001:db8::11/64", "dev", "eth0", "nodad"]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("\n[daemon]\nresync_secs = 3600\n");
    std::fs::write(&cfg, text).unwrap();
    let path = conflist_path(dir.path());
    let mut d = common::daemon::Daemon::start(&ns, &cfg, &[("NETCONVERGE_NODE", "node-a")]);
    d.wait_notify("READY=1", LONG);
    let good = std::fs::read_to_string(&path).unwrap();
    let restored = || std::fs::read_to_string(&path).ok().as_deref() == Some(good.as_str());
    std::fs::remove_file(&path).unwrap();
    common::daemon::eventually("deleted conflist restored", LONG, restored);
    std::fs::write(&path, good.replace("\"cni0\"", "\"br9\"")).unwrap();
    common::daemon::eventually("edited conflist restored", LONG, restored);
    let logs = d.logs();
    assert!(
        logs.contains(&format!("{} changed on disk", path.display())),
        "{logs}"
    );
    assert!(
        !logs.contains("(periodic resync)"),
        "no resync may have done it: {logs}"
    );
    assert_eq!(d.stop(), 0, "{}", d.logs());
}
