#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! `[fleet] source = "kubernetes"` against a local API stand-in
//! (tests/kube_api.py — a MODEL of the API's Node endpoints, not a
//! kube-apiserver: list, chunked watch with resourceVersions, a 410 ERROR
//! event on a resume from a forgotten version, get, strategic-merge PATCH of
//! nodes/status). It listens on 127.0.0.1 inside the test's own namespace and
//! the built binary talks to it with kube-rs over plain HTTP (a kubeconfig
//! whose server is `http://127.0.0.1:PORT`).
//!
//! What this proves: the daemon's peers follow the Node objects it is
//! served (initial list, ADDED/MODIFIED/DELETED, a relist after 410, an
//! outage with changes meanwhile), a malformed Node is skipped with a warning
//! naming it, nothing is removed while the API is down, and the PATCH body
//! it sends is flannel's (kernel state read with `ip -j`/`bridge -j`). What
//! it cannot prove: that a real apiserver (authn/authz, pagination, watch
//! bookmarks, its exact 410 timing) behaves like the model — see
//! `real_cluster_peers_and_annotations` (ignored; needs $KUBECONFIG).
//!
//! The mixed-cluster test programs a second namespace by hand exactly the
//! way flannel's vxlan backend does from a peer's annotations (device
//! flannel.1, neighbour, FDB, onlink route — from our PATCH body), and pings
//! across the overlay both ways.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use common::daemon::{Daemon, eventually};
use common::fixtures::write_config;
use common::{LONG, Netns, Stack, UNDERLAY_V4, code, stdout_stderr};
use serde_json::{Value, json};

const PORT: u16 = 16443;
const P: &str = "flannel.alpha.coreos.com";

/// The stand-in API server, running in a namespace; stopped by PID on drop.
struct StandIn {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    dir: PathBuf,
}

impl StandIn {
    fn start(ns: &Netns, dir: &Path, nodes: &[Value], rv: u64) -> StandIn {
        let file = dir.join(format!("nodes-{rv}.json"));
        std::fs::write(&file, serde_json::to_string(nodes).unwrap()).unwrap();
        let script = format!("{}/tests/kube_api.py", env!("CARGO_MANIFEST_DIR"));
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "python3", &script])
            .args(["--port", &PORT.to_string(), "--dir"])
            .arg(dir)
            .arg("--nodes")
            .arg(&file)
            .args(["--rv", &rv.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (tests/kube_api.py)");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert!(
            line.starts_with("listening"),
            "stand-in did not start: {line:?}"
        );
        StandIn {
            child,
            stdin,
            stdout,
            dir: dir.to_path_buf(),
        }
    }

    fn cmd(&mut self, c: Value) {
        writeln!(self.stdin, "{c}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ok", "stand-in answered {line:?} to {c}");
    }

    fn put(&mut self, node: Value) {
        self.cmd(json!({"op": "put", "node": node}));
    }

    fn patches(&self) -> Vec<Value> {
        read_jsonl(&self.dir.join("patches.jsonl"))
    }

    fn requests(&self) -> Vec<Value> {
        read_jsonl(&self.dir.join("requests.jsonl"))
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop();
    }
}

fn read_jsonl(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn kubeconfig(dir: &Path) -> PathBuf {
    write_config(
        dir,
        "kubeconfig.yaml",
        &format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: http://127.0.0.1:{PORT}\ncontexts:\n- name: standin\n  context:\n    cluster: standin\n    user: nobody\ncurrent-context: standin\nusers:\n- name: nobody\n  user: {{}}\n"
        ),
    )
}

fn config(dir: &Path, kubeconfig: &Path, extra: &str) -> PathBuf {
    let d = dir.display();
    write_config(
        dir,
        "kube.toml",
        &format!(
            "node_name = \"node-a\"\n\n[fleet]\nsource = \"kubernetes\"\nnetwork = \"198.18.0.0/16\"\n\n[fleet.kubernetes]\nkubeconfig = \"{}\"\n{extra}\n[lease]\npath = \"{d}/subnet.env\"\nstate_dir = \"{d}/state\"\n\n[daemon]\ndebounce_ms = 20\n",
            kubeconfig.display()
        ),
    )
}

/// This node as the API has it before netconverge ran: podCIDR, InternalIP.
fn me(pod_cidr: &str, ip: &str) -> Value {
    json!({
        "metadata": {"name": "node-a", "annotations": {"unrelated/annotation": "x"}},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
        "status": {"addresses": [
            {"type": "InternalIP", "address": ip},
            {"type": "Hostname", "address": "node-a"}
        ]}
    })
}

/// A Node run by flannel (vxlan), with its annotations.
fn flannel_node(name: &str, pod_cidr: &str, public_ip: &str, mac: &str) -> Value {
    json!({
        "metadata": {"name": name, "annotations": {
            format!("{P}/kube-subnet-manager"): "true",
            format!("{P}/backend-type"): "vxlan",
            format!("{P}/backend-data"): format!("{{\"VNI\":1,\"VtepMAC\":\"{mac}\"}}"),
            format!("{P}/public-ip"): public_ip,
        }},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
        "status": {"addresses": [{"type": "InternalIP", "address": public_ip}]}
    })
}

fn routes(ns: &Netns) -> Vec<String> {
    ns.ip_list(&["route", "show", "dev", "flannel.1"])
        .iter()
        .map(|r| r["dst"].as_str().unwrap().to_string())
        .filter(|d| d.starts_with("198.18."))
        .collect()
}

/// FDB of flannel.1 as (mac, dst).
fn fdb(ns: &Netns) -> Vec<(String, String)> {
    ns.bridge_list(&["fdb", "show", "dev", "flannel.1"])
        .iter()
        .filter_map(|e| Some((e["mac"].as_str()?.into(), e["dst"].as_str()?.into())))
        .collect()
}

fn neighbours(ns: &Netns) -> Vec<(String, String)> {
    ns.ip_list(&["neigh", "show", "dev", "flannel.1"])
        .iter()
        .filter_map(|e| Some((e["dst"].as_str()?.into(), e["lladdr"].as_str()?.into())))
        .collect()
}

fn has_peer(ns: &Netns, subnet: &str, mac: &str, dst: &str) -> bool {
    let net = subnet.split('/').next().unwrap();
    routes(ns).iter().any(|r| r == subnet)
        && fdb(ns).iter().any(|(m, d)| m == mac && d == dst)
        && neighbours(ns).iter().any(|(ip, m)| ip == net && m == mac)
}

fn wait_for(what: &str, f: impl FnMut() -> bool) {
    eventually(what, LONG, f);
}

fn device_mac(ns: &Netns) -> String {
    ns.link("flannel.1").unwrap()["address"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The four annotations flannel's node agent writes, byte for byte.
fn assert_flannel_patch(p: &Value, mac: &str, public_ip: &str) {
    assert_eq!(
        p["content_type"], "application/strategic-merge-patch+json",
        "{p}"
    );
    assert_eq!(p["node"], "node-a");
    let ann = p["body"]["metadata"]["annotations"].as_object().unwrap();
    assert_eq!(ann[&format!("{P}/kube-subnet-manager")], "true", "{p}");
    assert_eq!(ann[&format!("{P}/backend-type")], "vxlan", "{p}");
    assert_eq!(ann[&format!("{P}/public-ip")], public_ip, "{p}");
    assert_eq!(
        ann[&format!("{P}/backend-data")],
        format!("{{\"VNI\":1,\"VtepMAC\":\"{mac}\"}}"),
        "{p}"
    );
    // nothing but flannel's annotations: the rest of the Node is not ours
    assert_eq!(p["body"].as_object().unwrap().len(), 1, "{p}");
    assert_eq!(ann.len(), 4, "{p}");
}

const MAC_B: &str = "0a:00:00:00:00:02";
const MAC_C: &str = "0a:00:00:00:00:03";
const MAC_D: &str = "0a:00:00:00:00:04";
const MAC_E: &str = "0a:00:00:00:00:05";

#[test]
fn daemon_follows_list_and_watch_and_publishes_flannels_annotations() {
    let ns = Netns::node("kube", Stack::V4);
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(dir.path());
    let cfg = config(dir.path(), &kc, "");
    let mut bad = flannel_node("node-x", "198.18.9.0/24", "192.0.2.19", MAC_B);
    bad["metadata"]["annotations"][format!("{P}/backend-data")] =
        json!("{\"VNI\":1,\"VtepMAC\":\"01:00:5e:00:00:01\"}");
    let plain = json!({"metadata": {"name": "node-plain"}, "spec": {"podCIDR": "198.18.8.0/24"}});
    let mut api = StandIn::start(
        &ns,
        dir.path(),
        &[
            me("198.18.1.0/24", UNDERLAY_V4),
            flannel_node("node-b", "198.18.2.0/24", "192.0.2.12", MAC_B),
            flannel_node("node-c", "198.18.3.0/24", "192.0.2.13", MAC_C),
            bad,
            plain,
        ],
        1000,
    );
    let mut d = Daemon::start(&ns, &cfg, &[]);
    d.wait_notify("READY=1", LONG);

    // initial list
    assert!(
        has_peer(&ns, "198.18.2.0/24", MAC_B, "192.0.2.12"),
        "{:?}",
        fdb(&ns)
    );
    assert!(has_peer(&ns, "198.18.3.0/24", MAC_C, "192.0.2.13"));
    assert_eq!(routes(&ns).len(), 2, "only b and c: {:?}", routes(&ns));
    let addrs = ns.ip_list(&["-4", "addr", "show", "dev", "flannel.1"]);
    assert!(
        format!("{addrs:?}").contains("198.18.1.0"),
        "own VTEP address from podCIDR: {addrs:?}"
    );
    let logs = d.logs();
    assert!(
        logs.contains("Node `node-x` skipped")
            && logs.contains("backend-data")
            && logs.contains("multicast"),
        "a warning naming node and field:\n{logs}"
    );

    // our PATCH: flannel's four annotations, the device's real MAC
    wait_for("one PATCH", || !api.patches().is_empty());
    let mac = device_mac(&ns);
    assert_flannel_patch(&api.patches()[0], &mac, UNDERLAY_V4);

    // ADDED
    api.put(flannel_node("node-d", "198.18.4.0/24", "192.0.2.14", MAC_D));
    wait_for("node-d added", || {
        has_peer(&ns, "198.18.4.0/24", MAC_D, "192.0.2.14")
    });
    // MODIFIED: node-b moved to another underlay address
    api.put(flannel_node("node-b", "198.18.2.0/24", "192.0.2.22", MAC_B));
    wait_for("node-b's FDB follows its public-ip", || {
        has_peer(&ns, "198.18.2.0/24", MAC_B, "192.0.2.22")
            && !fdb(&ns).iter().any(|(_, d)| d == "192.0.2.12")
    });
    // DELETED
    api.cmd(json!({"op": "delete", "name": "node-c"}));
    wait_for("node-c removed", || {
        !routes(&ns).iter().any(|r| r == "198.18.3.0/24")
            && !fdb(&ns).iter().any(|(m, _)| m == MAC_C)
            && !neighbours(&ns).iter().any(|(ip, _)| ip == "198.18.3.0")
    });
    // a Node whose annotation turns malformed is dropped, the others stay
    let mut d_bad = flannel_node("node-d", "198.18.4.0/24", "192.0.2.14", MAC_D);
    d_bad["metadata"]["annotations"][format!("{P}/public-ip")] = json!("2001:db8::14");
    api.put(d_bad);
    wait_for("node-d dropped (IPv6 public-ip in an IPv4 fleet)", || {
        !routes(&ns).iter().any(|r| r == "198.18.4.0/24")
    });
    assert!(has_peer(&ns, "198.18.2.0/24", MAC_B, "192.0.2.22"));
    assert!(
        d.logs()
            .contains("Node `node-d` skipped: `flannel.alpha.coreos.com/public-ip`")
    );
    // one PATCH only: our own MODIFIED echo changed nothing to publish
    assert_eq!(api.patches().len(), 1, "{:?}", api.patches());
    assert_eq!(d.stop(), 0);
}

#[test]
fn relist_after_410_and_nothing_removed_while_the_api_is_down() {
    let ns = Netns::node("kube410", Stack::V4);
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(dir.path());
    let cfg = config(dir.path(), &kc, "");
    // the file ends in [daemon]: the metrics endpoint says the source's state
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("metrics = \"127.0.0.1:9474\"\n");
    std::fs::write(&cfg, text).unwrap();
    let nodes = [
        me("198.18.1.0/24", UNDERLAY_V4),
        flannel_node("node-b", "198.18.2.0/24", "192.0.2.12", MAC_B),
        flannel_node("node-c", "198.18.3.0/24", "192.0.2.13", MAC_C),
    ];
    let mut api = StandIn::start(&ns, dir.path(), &nodes, 1000);
    let mut d = Daemon::start(&ns, &cfg, &[]);
    d.wait_notify("READY=1", LONG);
    assert!(has_peer(&ns, "198.18.3.0/24", MAC_C, "192.0.2.13"));
    wait_for("watch started", || {
        api.requests()
            .iter()
            .any(|r| r["query"]["watch"][0] == "true")
    });

    // A change that raises no event, then the history is forgotten and the
    // watch ended: only the resume → 410 → relist can reveal node-d.
    api.cmd(json!({"op": "put_silent", "node": flannel_node("node-d", "198.18.4.0/24", "192.0.2.14", MAC_D)}));
    let lists_before = api
        .requests()
        .iter()
        .filter(|r| {
            r["method"] == "GET"
                && r["query"].get("watch").is_none()
                && r["path"] == "/api/v1/nodes"
        })
        .count();
    api.cmd(json!({"op": "expire"}));
    wait_for("node-d from the relist after 410", || {
        has_peer(&ns, "198.18.4.0/24", MAC_D, "192.0.2.14")
    });
    let reqs = api.requests();
    assert!(
        reqs.iter().any(|r| r["event"] == "410"),
        "a resume got 410: {reqs:?}"
    );
    let lists_after = reqs
        .iter()
        .filter(|r| {
            r["method"] == "GET"
                && r["query"].get("watch").is_none()
                && r["path"] == "/api/v1/nodes"
        })
        .count();
    assert!(lists_after > lists_before, "relisted after the 410");

    // The API goes down: nothing is removed, STATUS says so.
    assert_eq!(source_state(&ns), "connected");
    api.stop();
    d.wait_notify("kubernetes: unreachable since", LONG);
    assert_eq!(source_state(&ns), "disconnected");
    d.collect_for(Duration::from_secs(2));
    for (s, m, ip) in [
        ("198.18.2.0/24", MAC_B, "192.0.2.12"),
        ("198.18.3.0/24", MAC_C, "192.0.2.13"),
        ("198.18.4.0/24", MAC_D, "192.0.2.14"),
    ] {
        assert!(has_peer(&ns, s, m, ip), "{s} kept while the API is down");
    }
    // Back, with node-c deleted and node-e added meanwhile (new history).
    let back = [
        me("198.18.1.0/24", UNDERLAY_V4),
        flannel_node("node-b", "198.18.2.0/24", "192.0.2.12", MAC_B),
        flannel_node("node-d", "198.18.4.0/24", "192.0.2.14", MAC_D),
        flannel_node("node-e", "198.18.5.0/24", "192.0.2.15", MAC_E),
    ];
    let _api2 = StandIn::start(&ns, dir.path(), &back, 5000);
    wait_for("node-e added and node-c gone after the relist", || {
        has_peer(&ns, "198.18.5.0/24", MAC_E, "192.0.2.15")
            && !routes(&ns).iter().any(|r| r == "198.18.3.0/24")
            && !fdb(&ns).iter().any(|(m, _)| m == MAC_C)
    });
    assert!(has_peer(&ns, "198.18.2.0/24", MAC_B, "192.0.2.12"));
    d.wait_notify("STATUS=converged", LONG);
    let last = d
        .messages
        .iter()
        .rev()
        .find(|m| m.contains("STATUS="))
        .unwrap()
        .clone();
    assert!(!last.contains("unreachable"), "{last}");
    assert_eq!(source_state(&ns), "connected");
    assert_eq!(d.stop(), 0);
}

#[test]
fn one_shot_commands_list_once_and_a_migrating_node_keeps_its_mac() {
    let ns = Netns::node("kubeone", Stack::V4);
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(dir.path());
    let cfg = config(dir.path(), &kc, "");
    // node-a ran flannel before: its Node carries a VtepMAC already
    let mut mine = flannel_node("node-a", "198.18.1.0/24", UNDERLAY_V4, "0a:00:00:00:00:0a");
    mine["status"]["addresses"] = json!([{"type": "InternalIP", "address": UNDERLAY_V4}]);
    let mut api = StandIn::start(
        &ns,
        dir.path(),
        &[
            mine,
            flannel_node("node-b", "198.18.2.0/24", "192.0.2.12", MAC_B),
        ],
        1000,
    );
    let out = ns.netconverge(&cfg, &["converge", "--check"]);
    assert_eq!(code(&out), 1, "drift: {}", stdout_stderr(&out));
    assert!(
        stdout_stderr(&out).contains("0a:00:00:00:00:0a"),
        "{}",
        stdout_stderr(&out)
    );
    let out = ns.netconverge(&cfg, &["converge"]);
    assert_eq!(code(&out), 0, "{}", stdout_stderr(&out));
    assert_eq!(
        device_mac(&ns),
        "0a:00:00:00:00:0a",
        "the published MAC is kept"
    );
    assert!(has_peer(&ns, "198.18.2.0/24", MAC_B, "192.0.2.12"));
    // every annotation already says what we would publish: no PATCH
    assert!(api.patches().is_empty(), "{:?}", api.patches());
    let out = ns.netconverge(&cfg, &["show", "--format", "json"]);
    assert_eq!(code(&out), 0, "{}", stdout_stderr(&out));
    let out = ns.netconverge(&cfg, &["converge", "--check"]);
    assert_eq!(code(&out), 0, "in sync: {}", stdout_stderr(&out));
    let gets = api
        .requests()
        .iter()
        .filter(|r| r["method"] == "GET")
        .map(|r| r["query"].get("watch").is_some())
        .collect::<Vec<_>>();
    assert_eq!(gets, vec![false; 4], "one list per command, no watch");

    // publish = false: read-only, although the Node lost its annotations
    api.put(me("198.18.1.0/24", UNDERLAY_V4));
    let ro = config(dir.path(), &kc, "publish = false\n");
    let out = ns.netconverge(&ro, &["converge"]);
    assert_eq!(code(&out), 0, "{}", stdout_stderr(&out));
    assert!(api.patches().is_empty(), "{:?}", api.patches());
    // … which a publishing converge restores, with the device's real MAC
    // (no VtepMAC on the Node any more: the node's own derived one)
    let rw = config(dir.path(), &kc, "");
    let out = ns.netconverge(&rw, &["converge"]);
    assert_eq!(code(&out), 0, "{}", stdout_stderr(&out));
    assert_eq!(api.patches().len(), 1);
    assert_flannel_patch(&api.patches()[0], &device_mac(&ns), UNDERLAY_V4);
}

#[test]
fn mixed_cluster_a_flannel_node_programmed_from_our_patch_reaches_us() {
    // us: node-a (netconverge); them: node-b, programmed as flannel would
    let us = Netns::new("kube-us");
    let them = Netns::new("kube-fl");
    us.ip(&[
        "link", "add", "nc-under", "type", "veth", "peer", "name", "nc-under", "netns", &them.name,
    ]);
    us.ip(&["addr", "add", "192.0.2.1/24", "dev", "nc-under"]);
    us.ip(&["link", "set", "nc-under", "up"]);
    them.ip(&["addr", "add", "192.0.2.2/24", "dev", "nc-under"]);
    them.ip(&["link", "set", "nc-under", "up"]);
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(dir.path());
    let cfg = config(dir.path(), &kc, "");
    // node-b's flannel: flannel.1 with the MAC it published
    them.ip(&[
        "link",
        "add",
        "flannel.1",
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        "192.0.2.2",
        "dev",
        "nc-under",
        "dstport",
        "8472",
        "nolearning",
    ]);
    them.ip(&["link", "set", "flannel.1", "address", MAC_B, "up"]);
    them.ip(&["addr", "add", "198.18.2.0/32", "dev", "flannel.1"]);
    let api = StandIn::start(
        &us,
        dir.path(),
        &[
            me("198.18.1.0/24", "192.0.2.1"),
            flannel_node("node-b", "198.18.2.0/24", "192.0.2.2", MAC_B),
        ],
        1000,
    );
    let mut d = Daemon::start(&us, &cfg, &[]);
    d.wait_notify("READY=1", LONG);
    wait_for("our PATCH", || !api.patches().is_empty());
    let patch = api.patches()[0].clone();
    assert_flannel_patch(&patch, &device_mac(&us), "192.0.2.1");
    // What flannel's vxlan backend does with a new lease (handleSubnetEvents):
    // neighbour, FDB, onlink route — from our annotations and podCIDR.
    let ann = &patch["body"]["metadata"]["annotations"];
    let data: Value =
        serde_json::from_str(ann[format!("{P}/backend-data")].as_str().unwrap()).unwrap();
    let mac = data["VtepMAC"].as_str().unwrap();
    let ip = ann[format!("{P}/public-ip")].as_str().unwrap();
    them.ip(&[
        "neigh",
        "replace",
        "198.18.1.0",
        "lladdr",
        mac,
        "dev",
        "flannel.1",
        "nud",
        "permanent",
    ]);
    them.bridge(&[
        "fdb",
        "append",
        mac,
        "dev",
        "flannel.1",
        "dst",
        ip,
        "self",
        "permanent",
    ]);
    them.ip(&[
        "route",
        "replace",
        "198.18.1.0/24",
        "via",
        "198.18.1.0",
        "dev",
        "flannel.1",
        "onlink",
    ]);

    let ping = |ns: &Netns, src: &str, dst: &str| {
        let out = ns.exec_output(&["ping", "-c", "1", "-W", "2", "-I", src, dst]);
        (code(&out) == 0, stdout_stderr(&out))
    };
    let (ok, out) = ping(&them, "198.18.2.0", "198.18.1.0");
    assert!(
        ok,
        "flannel node → us over the overlay: {out}\n{}",
        d.logs()
    );
    let (ok, out) = ping(&us, "198.18.1.0", "198.18.2.0");
    assert!(ok, "us → flannel node over the overlay: {out}");
    assert_eq!(d.stop(), 0);
}

/// The same against a real cluster: `KUBECONFIG=… NETCONVERGE_KUBE_NODE=<a
/// Node with a podCIDR> cargo test --test kube -- --ignored`. Read-only
/// (`publish = false`, `converge --check` in a fresh namespace): it lists
/// the real Nodes and shows the peers that would be programmed.
#[test]
#[ignore = "needs a real cluster: set KUBECONFIG and NETCONVERGE_KUBE_NODE"]
fn real_cluster_peers_and_annotations() {
    let kc = std::env::var("KUBECONFIG").expect("KUBECONFIG");
    let node = std::env::var("NETCONVERGE_KUBE_NODE").expect("NETCONVERGE_KUBE_NODE");
    let network = std::env::var("NETCONVERGE_KUBE_NETWORK").unwrap_or("10.42.0.0/16".into());
    let ns = Netns::node("kubereal", Stack::V4);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let cfg = write_config(
        dir.path(),
        "kube.toml",
        &format!(
            "node_name = \"{node}\"\n[fleet]\nsource = \"kubernetes\"\nnetwork = \"{network}\"\n[fleet.kubernetes]\nkubeconfig = \"{kc}\"\npublish = false\n[lease]\npath = \"{d}/subnet.env\"\nstate_dir = \"{d}/state\"\n"
        ),
    );
    let out = ns.netconverge(&cfg, &["converge", "--check"]);
    let text = stdout_stderr(&out);
    println!("{text}");
    // drift or blocked (a fresh namespace has nothing, and not the Node's
    // InternalIP), never a config (2) or API (3) error
    assert_eq!(code(&out), 1, "{text}");
    assert!(text.contains("flannel.1"), "{text}");
}

/// A node migrating from flannel: flannel.1 (flannel's, MAC published in the
/// Node) and flannel's `proto boot` peer route exist. Without `adopt` they
/// are foreign: blocked, untouched. With `[fleet.kubernetes] adopt = true`
/// the device is taken over in place (same ifindex, same MAC: no peer has to
/// change) and the route becomes ours.
#[test]
fn migrating_node_adopts_flannels_device_in_place() {
    let ns = Netns::node("kubemig", Stack::V4);
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(dir.path());
    let mine_mac = "0a:00:00:00:00:0a";
    ns.ip(&[
        "link",
        "add",
        "flannel.1",
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        UNDERLAY_V4,
        "dev",
        "nc-under",
        "dstport",
        "8472",
        "nolearning",
    ]);
    ns.ip(&[
        "link",
        "set",
        "flannel.1",
        "address",
        mine_mac,
        "mtu",
        "1450",
        "up",
    ]);
    ns.ip(&["addr", "add", "198.18.1.0/32", "dev", "flannel.1"]);
    ns.ip(&[
        "route",
        "add",
        "198.18.2.0/24",
        "via",
        "198.18.2.0",
        "dev",
        "flannel.1",
        "onlink",
    ]);
    let index = ns.link("flannel.1").unwrap()["ifindex"].clone();
    let mut mine = flannel_node("node-a", "198.18.1.0/24", UNDERLAY_V4, mine_mac);
    mine["status"]["addresses"] = json!([{"type": "InternalIP", "address": UNDERLAY_V4}]);
    let _api = StandIn::start(
        &ns,
        dir.path(),
        &[
            mine,
            flannel_node("node-b", "198.18.2.0/24", "192.0.2.12", MAC_B),
        ],
        1000,
    );
    let foreign = config(dir.path(), &kc, "");
    let out = ns.netconverge(&foreign, &["converge"]);
    assert_ne!(
        code(&out),
        0,
        "flannel's device is not ours: {}",
        stdout_stderr(&out)
    );
    assert_eq!(ns.link("flannel.1").unwrap()["ifindex"], index, "untouched");

    let adopting = config(dir.path(), &kc, "adopt = true\n");
    let out = ns.netconverge(&adopting, &["converge"]);
    assert_eq!(code(&out), 0, "{}", stdout_stderr(&out));
    assert_eq!(
        ns.link("flannel.1").unwrap()["ifindex"],
        index,
        "taken over in place"
    );
    assert_eq!(device_mac(&ns), mine_mac, "the published MAC stays");
    assert!(has_peer(&ns, "198.18.2.0/24", MAC_B, "192.0.2.12"));
    let out = ns.netconverge(&adopting, &["converge", "--check"]);
    assert_eq!(code(&out), 0, "in sync: {}", stdout_stderr(&out));
}

/// Dual-stack: both devices, both families' peers (backend-v6-data,
/// public-ipv6), and the PATCH carries both families' annotations.
#[test]
fn dual_stack_peers_and_patch_carry_both_families() {
    let ns = Netns::node("kubedual", Stack::Dual);
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(dir.path());
    let d = dir.path().display();
    let cfg = write_config(
        dir.path(),
        "kube.toml",
        &format!(
            "node_name = \"node-a\"\n[fleet]\nsource = \"kubernetes\"\nnetwork = \"198.18.0.0/16\"\nipv6_network = \"fd00:42::/48\"\n[fleet.kubernetes]\nkubeconfig = \"{}\"\n[lease]\npath = \"{d}/subnet.env\"\nstate_dir = \"{d}/state\"\n",
            kc.display()
        ),
    );
    let mut mine = me("198.18.1.0/24", UNDERLAY_V4);
    mine["spec"]["podCIDRs"] = json!(["198.18.1.0/24", "fd00:42:0:1::/64"]);
    mine["status"]["addresses"] = json!([
        {"type": "InternalIP", "address": UNDERLAY_V4},
        {"type": "InternalIP", "address": common::UNDERLAY_V6}
    ]);
    let mut b = flannel_node("node-b", "198.18.2.0/24", "192.0.2.12", MAC_B);
    b["spec"]["podCIDRs"] = json!(["198.18.2.0/24", "fd00:42:0:2::/64"]);
    let ann = b["metadata"]["annotations"].as_object_mut().unwrap();
    ann.insert(
        format!("{P}/backend-v6-data"),
        json!("{\"VNI\":1,\"VtepMAC\":\"0a:00:00:00:06:02\"}"),
    );
    ann.insert(format!("{P}/public-ipv6"), json!("2001:db8::12"));
    let api = StandIn::start(&ns, dir.path(), &[mine, b], 1000);
    let out = ns.netconverge(&cfg, &["converge"]);
    assert_eq!(code(&out), 0, "{}", stdout_stderr(&out));
    assert!(has_peer(&ns, "198.18.2.0/24", MAC_B, "192.0.2.12"));
    let fdb6: Vec<(String, String)> = ns
        .bridge_list(&["fdb", "show", "dev", "flannel-v6.1"])
        .iter()
        .filter_map(|e| Some((e["mac"].as_str()?.into(), e["dst"].as_str()?.into())))
        .collect();
    assert!(
        fdb6.contains(&("0a:00:00:00:06:02".into(), "2001:db8::12".into())),
        "{fdb6:?}"
    );
    let r6 = ns.ip_list(&["-6", "route", "show", "dev", "flannel-v6.1"]);
    assert!(format!("{r6:?}").contains("fd00:42:0:2::/64"), "{r6:?}");
    let p = &api.patches()[0];
    let ann = p["body"]["metadata"]["annotations"].as_object().unwrap();
    let mac6 = ns.link("flannel-v6.1").unwrap()["address"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(ann[&format!("{P}/public-ipv6")], common::UNDERLAY_V6, "{p}");
    assert_eq!(
        ann[&format!("{P}/backend-v6-data")],
        format!("{{\"VNI\":1,\"VtepMAC\":\"{mac6}\"}}"),
        "{p}"
    );
    assert_eq!(ann.len(), 6, "{p}");
}

/// The state whose `netconverge_source_state{source="kubernetes"}` series is
/// 1, scraped from inside `ns` (Python's OpenMetrics parser).
fn source_state(ns: &Netns) -> String {
    const SCRAPE: &str = r#"
import sys, urllib.request
from prometheus_client.openmetrics.parser import text_string_to_metric_families
body = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
on = [s.labels["state"] for f in text_string_to_metric_families(body) for s in f.samples
      if s.name == "netconverge_source_state" and s.labels.get("source") == "kubernetes" and s.value == 1]
print(",".join(on))
"#;
    let out = ns.exec_output(&["python3", "-c", SCRAPE, "http://127.0.0.1:9474/metrics"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
