//! `[daemon] metrics`: the Prometheus endpoint of a real `netconverge run`
//! in its own namespace, scraped from inside it and parsed by an
//! independent, strict parser (Python's `prometheus_client` OpenMetrics
//! parser, installed by .ci/deps): drift repaired and counted, a blocked
//! underlay seen and recovered, a port that is taken, scrapers that hang,
//! and a bad address rejected before anything is applied.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use common::daemon::{Daemon, eventually};
use common::fixtures;
use common::nm::{IF, NmSandbox};
use common::{LONG, Netns, Stack, UNDERLAY, UNDERLAY_V4};
use serde_json::Value;

const LISTEN: &str = "127.0.0.1:9474";
const PEERS: usize = 3;

/// Fetches `/metrics` (urllib), parses it with the OpenMetrics parser
/// (which rejects anything malformed: a missing `# EOF`, a bad name, a
/// counter without `_total`, a duplicate series) and prints the samples as
/// JSON, with the Content-Type and each family's type.
const SCRAPER: &str = r#"
import json, sys, urllib.request
from prometheus_client.openmetrics.parser import text_string_to_metric_families
with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
    ctype = r.headers.get("Content-Type", "")
    text = r.read().decode()
out = {"content_type": ctype, "types": {}, "samples": []}
for fam in text_string_to_metric_families(text):
    out["types"][fam.name] = fam.type
    for s in fam.samples:
        out["samples"].append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;

/// One parsed scrape.
struct Scrape(Value);

impl Scrape {
    /// The value of the sample `name` whose labels are exactly `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0["samples"].as_array()?.iter().find_map(|s| {
            let l = s[1].as_object()?;
            let same = s[0] == name
                && l.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).and_then(Value::as_str) == Some(*v));
            same.then(|| s[2].as_f64()).flatten()
        })
    }

    fn val(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in {}", self.0))
    }

    fn objects(&self, kind: &str, state: &str) -> f64 {
        self.val("netconverge_objects", &[("kind", kind), ("state", state)])
    }

    /// The sum of `name` over every series.
    fn sum(&self, name: &str) -> f64 {
        self.0["samples"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s[0] == name)
            .filter_map(|s| s[2].as_f64())
            .sum()
    }
}

/// Scrape from inside `ns`; `Err` with what went wrong (not listening yet,
/// a parse error).
fn try_scrape(ns: &Netns) -> Result<Scrape, String> {
    try_scrape_at(|args| ns.exec_output(args), LISTEN)
}

/// Scrape `listen` with `exec` (a command runner inside the namespace).
fn try_scrape_at(exec: impl Fn(&[&str]) -> Output, listen: &str) -> Result<Scrape, String> {
    let url = format!("http://{listen}/metrics");
    let out = exec(&["python3", "-c", SCRAPER, &url]);
    if !out.status.success() {
        return Err(common::stdout_stderr(&out));
    }
    serde_json::from_slice(&out.stdout)
        .map(Scrape)
        .map_err(|e| format!("{e}: {}", common::stdout(&out)))
}

fn scrape(ns: &Netns) -> Scrape {
    try_scrape(ns).unwrap_or_else(|e| panic!("scrape failed: {e}"))
}

/// Scrape until `f` holds for one scrape (passes run asynchronously).
fn scrape_until(ns: &Netns, what: &str, f: impl FnMut(&Scrape) -> bool) -> Scrape {
    scrape_until_at(|args| ns.exec_output(args), LISTEN, what, f)
}

fn scrape_until_at(
    exec: impl Fn(&[&str]) -> Output,
    listen: &str,
    what: &str,
    mut f: impl FnMut(&Scrape) -> bool,
) -> Scrape {
    let mut found = None;
    let mut last = String::new();
    let r = common::poll(LONG, || {
        let s = try_scrape_at(&exec, listen)?;
        if f(&s) {
            found = Some(s);
            return Ok(());
        }
        last = s.0.to_string();
        Err(String::new())
    });
    match (r, found) {
        (Ok(()), Some(s)) => s,
        (r, _) => panic!("{what}: never seen; last scrape {last} {r:?}"),
    }
}

/// A node config: `flannel.1` with `PEERS` peers, a lease file, a long
/// resync (repairs prove the event path), NetworkManager off, the endpoint
/// at `metrics` (a TOML value).
fn config(dir: &Path, metrics: &str) -> PathBuf {
    let extra = format!("networkmanager = \"off\"\nmetrics = {metrics}\n");
    let s = fixtures::node_name("node-m")
        + &fixtures::daemon(3600, &extra)
        + &fixtures::vxlan_v4(UNDERLAY)
        + &fixtures::peers_v4(PEERS)
        + &fixtures::lease(dir, Stack::V4);
    fixtures::write_config(dir, "netconverge.toml", &s)
}

fn start(tag: &str) -> (Netns, tempfile::TempDir, Daemon) {
    let ns = Netns::node(tag, Stack::V4);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &format!("\"{LISTEN}\""));
    let mut d = Daemon::start(&ns, &cfg, &[]);
    d.wait_notify("READY=1", LONG);
    (ns, dir, d)
}

fn route_present(ns: &Netns, dst: &str) -> bool {
    !ns.ip_list(&["route", "show", dst]).is_empty()
}

#[test]
fn a_deleted_peer_route_is_counted_as_a_repair_and_a_blocked_underlay_recovers() {
    let (ns, _dir, mut d) = start("mdrift");
    let s = scrape(&ns);
    assert!(
        s.0["content_type"]
            .as_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{}",
        s.0
    );
    assert_eq!(s.0["types"]["netconverge_passes"], "counter");
    assert_eq!(
        s.0["types"]["netconverge_pass_duration_seconds"],
        "histogram"
    );
    assert_eq!(s.0["types"]["netconverge_objects"], "gauge");
    // the startup pass converged everything: creations, not repairs
    assert_eq!(
        s.val(
            "netconverge_passes_total",
            &[("trigger", "startup"), ("result", "converged")]
        ),
        1.0
    );
    assert_eq!(s.objects("route", "in_sync"), PEERS as f64);
    assert_eq!(s.objects("device", "in_sync"), 1.0);
    assert_eq!(s.objects("address", "in_sync"), 1.0);
    assert_eq!(s.objects("neighbor", "in_sync"), PEERS as f64);
    assert_eq!(s.objects("fdb", "in_sync"), PEERS as f64);
    assert_eq!(s.objects("lease", "in_sync"), 1.0);
    for state in ["blocked", "failed"] {
        for kind in ["device", "route", "neighbor", "fdb"] {
            assert_eq!(s.objects(kind, state), 0.0, "{kind} {state}");
        }
    }
    assert!(s.val("netconverge_changes_total", &[("kind", "route")]) >= PEERS as f64);
    assert_eq!(s.sum("netconverge_repairs_total"), 0.0);
    assert_eq!(s.val("netconverge_converged", &[]), 1.0);
    assert_eq!(s.val("netconverge_ready", &[]), 1.0);
    assert!(s.val("netconverge_last_converged_timestamp_seconds", &[]) > 1.0e9);
    assert!(s.val("netconverge_pass_duration_seconds_count", &[]) >= 1.0);
    assert_eq!(
        s.val(
            "netconverge_source_state",
            &[("source", "networkmanager"), ("state", "off")]
        ),
        1.0
    );
    assert_eq!(
        s.val(
            "netconverge_source_state",
            &[("source", "fleet"), ("state", "off")]
        ),
        1.0
    );
    assert_eq!(s.sum("netconverge_notification_overruns_total"), 0.0);

    // drift: a peer route deleted by hand is put back and counted
    ns.ip(&["route", "del", "198.19.0.0/26"]);
    let s = scrape_until(&ns, "the route repair in the metrics", |s| {
        s.get("netconverge_repairs_total", &[("kind", "route")]) == Some(1.0)
    });
    assert!(route_present(&ns, "198.19.0.0/26"), "{}", d.logs());
    assert_eq!(s.objects("route", "in_sync"), PEERS as f64);
    assert_eq!(s.sum("netconverge_repairs_total"), 1.0, "{}", s.0);
    assert!(
        s.val(
            "netconverge_passes_total",
            &[("trigger", "events"), ("result", "converged")]
        ) >= 1.0
    );
    assert!(s.val("netconverge_relevant_events_total", &[]) >= 1.0);

    // the underlay loses its address: the device and everything on it are
    // blocked, nothing is in sync, the overlay is not converged
    let addr = format!("{UNDERLAY_V4}/24");
    ns.ip(&["addr", "del", &addr, "dev", UNDERLAY]);
    let s = scrape_until(&ns, "the blocked underlay in the metrics", |s| {
        s.get("netconverge_converged", &[]) == Some(0.0)
    });
    assert_eq!(s.objects("device", "blocked"), 1.0, "{}", s.0);
    assert_eq!(s.objects("route", "in_sync"), 0.0, "{}", s.0);
    assert_eq!(s.objects("route", "blocked"), PEERS as f64, "{}", s.0);
    let blocked_passes: f64 = ["events", "retry", "urgent"]
        .iter()
        .filter_map(|t| {
            s.get(
                "netconverge_passes_total",
                &[("trigger", t), ("result", "blocked")],
            )
        })
        .sum();
    assert!(blocked_passes >= 1.0, "{}", s.0);
    let converged_at = s.val("netconverge_last_converged_timestamp_seconds", &[]);

    // and back: in sync again, a later convergence time
    ns.ip(&["addr", "add", &addr, "dev", UNDERLAY]);
    let s = scrape_until(&ns, "recovery in the metrics", |s| {
        s.get("netconverge_converged", &[]) == Some(1.0)
    });
    assert_eq!(s.objects("route", "in_sync"), PEERS as f64, "{}", s.0);
    assert_eq!(s.objects("device", "blocked"), 0.0, "{}", s.0);
    assert_eq!(s.objects("route", "blocked"), 0.0, "{}", s.0);
    assert!(s.val("netconverge_last_converged_timestamp_seconds", &[]) >= converged_at);
    assert_eq!(d.stop(), 0, "{}", d.logs());
}

/// Connections that never send a request, held open by a helper process in
/// the namespace (more than the endpoint serves at once).
fn hung_scrapers(ns: &Netns, n: usize) -> Child {
    let script = format!(
        "import socket, sys, time\n\
         ss = [socket.create_connection(('127.0.0.1', 9474)) for _ in range({n})]\n\
         print('open', flush=True)\n\
         time.sleep(60)\n"
    );
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name, "python3", "-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "open");
    child
}

#[test]
fn hung_scrapers_stall_neither_convergence_nor_later_scrapes() {
    let (ns, _dir, mut d) = start("mhung");
    let mut hung = hung_scrapers(&ns, 20);
    // the daemon keeps converging while they hang
    ns.ip(&["route", "del", "198.19.0.64/26"]);
    eventually("route repaired with hung scrapers", LONG, || {
        route_present(&ns, "198.19.0.64/26")
    });
    // their connections time out (READ_TIMEOUT) and scraping works again,
    // the helper still holding its sockets open
    scrape_until(&ns, "a scrape after hung clients", |s| {
        s.get("netconverge_repairs_total", &[("kind", "route")]) == Some(1.0)
    });
    // a reload keeps the endpoint (same address) and the counters
    d.signal("-HUP");
    d.wait_notify("READY=1", LONG);
    let s = scrape_until(&ns, "the reload pass", |s| {
        s.get(
            "netconverge_passes_total",
            &[("trigger", "reload"), ("result", "converged")],
        ) == Some(1.0)
    });
    assert_eq!(
        s.val("netconverge_repairs_total", &[("kind", "route")]),
        1.0
    );
    assert!(s.val("netconverge_scrapes_total", &[]) >= 1.0);
    assert!(
        hung.try_wait().unwrap().is_none(),
        "the hung clients quit early"
    );
    hung.kill().unwrap();
    hung.wait().unwrap();
    assert_eq!(d.stop(), 0, "{}", d.logs());
}

#[test]
fn a_taken_port_degrades_to_no_endpoint_then_binds_when_free() {
    let ns = Netns::node("mtaken", Stack::V4);
    let dir = tempfile::tempdir().unwrap();
    // someone else holds the port
    let mut holder = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "python3",
            "-c",
            "import socket, time\n\
             s = socket.socket(); s.bind(('127.0.0.1', 9474)); s.listen()\n\
             print('bound', flush=True)\n\
             time.sleep(120)\n",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(holder.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "bound");
    let cfg = config(dir.path(), &format!("\"{LISTEN}\""));
    let mut d = Daemon::start(&ns, &cfg, &[]);
    // converged and ready all the same, and saying why there is no endpoint
    d.wait_notify("READY=1", LONG);
    assert!(
        d.messages.iter().any(|m| m.starts_with("STATUS=converged")
            && m.contains("metrics endpoint 127.0.0.1:9474 could not listen")),
        "{:?}",
        d.messages
    );
    assert!(
        d.logs()
            .contains("metrics: cannot listen on 127.0.0.1:9474"),
        "{}",
        d.logs()
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
    // the retry binds it
    let s = scrape_until(&ns, "the endpoint after the port was freed", |_| true);
    assert_eq!(s.val("netconverge_converged", &[]), 1.0);
    assert_eq!(d.stop(), 0, "{}", d.logs());
}

#[test]
fn a_bad_listen_address_exits_2_with_its_position_and_applies_nothing() {
    let ns = Netns::node("mbad", Stack::V4);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "\"localhost:9474\"");
    let out = ns.netconverge(&cfg, &["run"]);
    let err = common::stderr(&out);
    assert_eq!(common::code(&out), 2, "{err}");
    assert!(
        err.contains(
            "netconverge.toml:7:12: error: `metrics` = \"localhost:9474\" is not an IP address and port"
        ),
        "{err}"
    );
    assert!(err.contains("help: use an IP address"), "{err}");
    assert!(
        ns.link("flannel.1").is_none(),
        "applied despite a bad config"
    );
}

#[test]
fn a_reload_moves_the_endpoint_and_overruns_are_counted() {
    let ns = Netns::node("mmove", Stack::V4);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &format!("\"{LISTEN}\""));
    // a tiny notification buffer: a storm overflows it
    let mut d = Daemon::start(&ns, &cfg, &[("NETCONVERGE_MONITOR_RCVBUF", "4096")]);
    d.wait_notify("READY=1", LONG);
    scrape(&ns);
    // the daemon does not read while the storm fills its buffer
    d.signal("-STOP");
    let batch = dir.path().join("storm.batch");
    let storm: String = (0..3000)
        .map(|i| {
            format!(
                "route add 100.64.{}.{}/32 dev nc-under-p\n",
                i / 250,
                i % 250
            )
        })
        .collect();
    std::fs::write(&batch, storm).unwrap();
    ns.ip(&["-batch", batch.to_str().unwrap()]);
    d.signal("-CONT");
    let s = scrape_until(&ns, "the overrun in the metrics", |s| {
        s.get(
            "netconverge_notification_overruns_total",
            &[("socket", "route")],
        )
        .is_some_and(|n| n >= 1.0)
    });
    assert!(
        s.val(
            "netconverge_passes_total",
            &[("trigger", "urgent"), ("result", "converged")]
        ) >= 1.0,
        "an overrun is followed by a full resync: {}",
        s.0
    );

    // reload with another port: the old one closes, the new one serves,
    // the counters go on (one process, one registry)
    let moved = "127.0.0.1:9475";
    config(dir.path(), &format!("\"{moved}\""));
    d.signal("-HUP");
    d.wait_notify("READY=1", LONG);
    let s = scrape_until_at(
        |a| ns.exec_output(a),
        moved,
        "the moved endpoint",
        |s| {
            s.get(
                "netconverge_passes_total",
                &[("trigger", "reload"), ("result", "converged")],
            ) == Some(1.0)
        },
    );
    assert!(
        s.val(
            "netconverge_notification_overruns_total",
            &[("socket", "route")]
        ) >= 1.0
    );
    eventually("the old port closed", LONG, || try_scrape(&ns).is_err());

    // and to every address on the same port: the previous endpoint holds
    // it until its task ends, which is no error (no STATUS= note)
    config(dir.path(), "\"0.0.0.0:9475\"");
    d.signal("-HUP");
    d.wait_notify("READY=1", LONG);
    scrape_until_at(
        |a| ns.exec_output(a),
        moved,
        "the endpoint on 0.0.0.0",
        |s| {
            s.get(
                "netconverge_passes_total",
                &[("trigger", "reload"), ("result", "converged")],
            ) == Some(2.0)
        },
    );
    d.drain();
    assert!(
        !d.messages.iter().any(|m| m.contains("could not listen")),
        "{:?}\n{}",
        d.messages,
        d.logs()
    );
    assert_eq!(d.stop(), 0, "{}", d.logs());
}

#[test]
fn networkmanager_source_state_follows_the_real_networkmanager() {
    let mut sb = NmSandbox::new();
    sb.add_mgmt0();
    let dir = tempfile::tempdir().unwrap();
    let text = fixtures::node_name("node-m")
        + &fixtures::daemon(
            3600,
            &format!("networkmanager = \"auto\"\nmetrics = \"{LISTEN}\"\n"),
        )
        + &fixtures::vxlan_v4(IF)
        + &fixtures::peers_v4(PEERS);
    let cfg = fixtures::write_config(dir.path(), "netconverge.toml", &text);
    let bus = sb.bus_address();
    let mut d = Daemon::start_with(&sb.prefix(), &cfg, &[("DBUS_SYSTEM_BUS_ADDRESS", &bus)]);
    d.wait_notify("READY=1", LONG);
    let nm = |state: &'static str| {
        move |s: &Scrape| {
            s.get(
                "netconverge_source_state",
                &[("source", "networkmanager"), ("state", state)],
            ) == Some(1.0)
        }
    };
    // found at startup: a transition that sends the daemon no hint
    let s = scrape_until_at(
        |a| sb.exec_output(a),
        LISTEN,
        "NM connected",
        nm("connected"),
    );
    let states: f64 = ["connected", "disconnected", "static", "off"]
        .iter()
        .filter_map(|st| {
            s.get(
                "netconverge_source_state",
                &[("source", "networkmanager"), ("state", st)],
            )
        })
        .sum();
    assert_eq!(states, 1.0, "exactly one state: {}", s.0);
    sb.stop_nm();
    scrape_until_at(
        |a| sb.exec_output(a),
        LISTEN,
        "NM disconnected",
        nm("disconnected"),
    );
    sb.start_nm();
    scrape_until_at(|a| sb.exec_output(a), LISTEN, "NM back", nm("connected"));
    assert_eq!(d.stop(), 0, "{}", d.logs());
    sb.finish();
}
