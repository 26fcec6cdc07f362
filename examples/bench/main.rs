//! Fleet-scale benchmark of netconverge against iproute2, in private network
//! namespaces: initial converge vs `ip -batch` + `bridge -batch`, no-op
//! `converge --check` vs iproute2 dumps, daemon re-convergence after an
//! underlay rebuild, memory and idle CPU. Results (medians) go into
//! BENCHMARKS.md between its `bench:begin`/`bench:end` markers, raw samples
//! to bench/results.json, the scaling plot to bench/scaling.svg.
//!
//! Invariant: never part of `cargo test` (an example, run only by
//! `bash bench/run.sh`); every namespace it creates is deleted again, and
//! nothing runs in the host's namespace. Needs root.
//!
//! Usage: `bash bench/run.sh [--quick] [--reps N]`

mod fleet;
mod ns;
mod svg;

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use ipnet::IpNet;
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::route::{RouteAddress, RouteAttribute};
use netlink_sys::AsyncSocket;
use rtnetlink::MulticastGroup;
use serde::Serialize;

use ns::Netns;

struct Opts {
    reps: usize,
    sizes: Vec<u32>,
    dual_sizes: Vec<u32>,
    reconverge_sizes: Vec<u32>,
    rss_size: u32,
    idle_secs: u64,
    root: PathBuf,
    bin: PathBuf,
    /// Sections to run (all when empty): initial, reconverge, memory.
    only: Vec<String>,
}

impl Opts {
    fn runs(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

fn opts() -> Result<Opts> {
    let mut args = std::env::args().skip(1);
    let exe = std::env::current_exe()?;
    // target/release/examples/bench → target/release/netconverge
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("netconverge"))
        .ok_or_else(|| anyhow!("cannot locate the netconverge binary next to {exe:?}"))?;
    let mut o = Opts {
        reps: 5,
        sizes: vec![100, 1000, 10_000, 50_000],
        dual_sizes: vec![1000],
        reconverge_sizes: vec![10, 1000, 5000, 10_000],
        rss_size: 10_000,
        idle_secs: 10,
        root: std::env::current_dir()?,
        bin: std::env::var_os("NETCONVERGE_BIN").map_or(bin, PathBuf::from),
        only: Vec::new(),
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => {
                o.reps = 3;
                o.sizes = vec![100, 1000];
                o.dual_sizes = vec![100];
                o.reconverge_sizes = vec![10, 1000];
                o.rss_size = 1000;
                o.idle_secs = 2;
            }
            "--reps" => {
                o.reps = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| anyhow!("--reps needs a number"))?;
            }
            "--only" => o.only.extend(
                args.next()
                    .ok_or_else(|| anyhow!("--only needs initial,reconverge,memory"))?
                    .split(',')
                    .map(str::to_owned),
            ),
            other => bail!(
                "unknown argument {other}; usage: bench [--quick] [--reps N] [--only initial,reconverge,memory]"
            ),
        }
    }
    Ok(o)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s.get(n / 2).copied().unwrap_or(f64::NAN),
        n => {
            (s.get(n / 2 - 1).copied().unwrap_or(0.0) + s.get(n / 2).copied().unwrap_or(0.0)) / 2.0
        }
    }
}

#[derive(Debug, Clone, Serialize)]
struct Case {
    peers: u32,
    dual: bool,
    nexthops: &'static str,
}

impl Case {
    fn family(&self) -> &'static str {
        if self.dual { "dual-stack" } else { "IPv4" }
    }
    /// Peer objects per family: neighbour, FDB entry, route (+ nexthop).
    fn routes(&self) -> usize {
        self.peers as usize * if self.dual { 2 } else { 1 }
    }
}

#[derive(Debug, Default, Serialize)]
struct Samples {
    /// `netconverge validate`: process start + config parse, no kernel.
    validate_ms: Vec<f64>,
    converge_ms: Vec<f64>,
    batch_ms: Vec<f64>,
    check_ms: Vec<f64>,
    dump_ms: Vec<f64>,
}

#[derive(Debug, Serialize)]
struct Reconverge {
    peers: u32,
    nexthops: &'static str,
    ms: Vec<f64>,
    /// Notification overruns (ENOBUFS) the daemon logged over all reps.
    overruns: usize,
}

#[derive(Debug, Default, Serialize)]
struct Memory {
    peers: u32,
    converge_peak_rss_kib: Vec<u64>,
    daemon_rss_kib: u64,
    daemon_hwm_kib: u64,
    daemon_idle_cpu_ms: f64,
    idle_secs: u64,
}

#[derive(Debug, Default, Serialize)]
struct Results {
    machine: BTreeMap<String, String>,
    reps: usize,
    initial: Vec<(Case, Samples)>,
    reconverge: Vec<Reconverge>,
    memory: Option<Memory>,
}

fn main() -> Result<()> {
    let o = opts()?;
    if !o.bin.exists() {
        bail!(
            "{} not found: build it first (bash bench/run.sh does)",
            o.bin.display()
        );
    }
    let status = std::fs::read_to_string("/proc/self/status")?;
    if !status
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
    {
        bail!("the benchmark creates network namespaces: run it as root");
    }
    let tmp = tempfile::tempdir()?;
    let settle = Settle::new()?;
    let mut res = Results {
        machine: machine()?,
        reps: o.reps,
        ..Results::default()
    };

    let mut cases = Vec::new();
    for &n in &o.sizes {
        // Classic routes at 50 000 peers cost the kernel minutes (its
        // gateway lookups grow with the routes): the scaling point is
        // measured with nexthops only.
        for nh in ["auto", "off"]
            .into_iter()
            .filter(|nh| n <= 10_000 || *nh == "auto")
        {
            cases.push(Case {
                peers: n,
                dual: false,
                nexthops: nh,
            });
        }
    }
    for &n in &o.dual_sizes {
        for nh in ["auto", "off"] {
            cases.push(Case {
                peers: n,
                dual: true,
                nexthops: nh,
            });
        }
    }
    for case in cases.into_iter().filter(|_| o.runs("initial")) {
        eprintln!(
            "initial converge / no-op check: {} peers {} nexthops={}",
            case.peers,
            case.family(),
            case.nexthops
        );
        let s = initial(&o, tmp.path(), &case, &settle)?;
        eprintln!(
            "  converge {:.1} ms, ip/bridge -batch {:.1} ms, check {:.1} ms, dumps {:.1} ms",
            median(&s.converge_ms),
            median(&s.batch_ms),
            median(&s.check_ms),
            median(&s.dump_ms)
        );
        res.initial.push((case, s));
    }
    for &n in o.reconverge_sizes.iter().filter(|_| o.runs("reconverge")) {
        for nh in ["auto", "off"] {
            eprintln!("re-convergence after underlay rebuild: {n} peers nexthops={nh}");
            settle.wait()?;
            let r = reconverge(&o, tmp.path(), n, nh, &settle)?;
            eprintln!("  median {:.1} ms ({:?})", median(&r.ms), r.ms);
            res.reconverge.push(r);
        }
    }
    if o.runs("memory") {
        eprintln!("memory and idle CPU: {} peers", o.rss_size);
        settle.wait()?;
        let m = memory(&o, tmp.path(), &settle)?;
        eprintln!(
            "  converge peak RSS {:?} KiB, daemon RSS {} KiB, idle CPU {:.1} ms / {} s",
            m.converge_peak_rss_kib, m.daemon_rss_kib, m.daemon_idle_cpu_ms, m.idle_secs
        );
        res.memory = Some(m);
    }

    if !o.only.is_empty() {
        // A partial run prints its sections and leaves the full run's
        // BENCHMARKS.md, results.json and plot alone.
        println!("{}", report(&o, &res));
        return Ok(());
    }
    let bench_dir = o.root.join("bench");
    std::fs::create_dir_all(&bench_dir)?;
    std::fs::write(
        bench_dir.join("results.json"),
        serde_json::to_string_pretty(&res)?,
    )?;
    std::fs::write(bench_dir.join("scaling.svg"), plot(&res))?;
    let report = report(&o, &res);
    update_benchmarks_md(&o.root.join("BENCHMARKS.md"), &report)?;
    println!("{report}");
    Ok(())
}

fn machine() -> Result<BTreeMap<String, String>> {
    let mut m = BTreeMap::new();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo")?;
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown", |(_, v)| v.trim());
    m.insert("cpu".into(), model.to_string());
    m.insert(
        "nproc".into(),
        std::thread::available_parallelism()
            .map(|n| n.to_string())
            .unwrap_or_default(),
    );
    m.insert(
        "kernel".into(),
        ns::host(&["uname", "-r"])?.trim().to_string(),
    );
    m.insert(
        "iproute2".into(),
        ns::host(&["ip", "-V"])?.trim().to_string(),
    );
    if let Ok(l) = std::fs::read_to_string("/proc/loadavg") {
        let avg: Vec<&str> = l.split_whitespace().take(3).collect();
        m.insert("load average at start (1/5/15 min)".into(), avg.join(" "));
    }
    m.insert(
        "date".into(),
        ns::host(&["date", "-u", "+%Y-%m-%d %H:%M UTC"])?
            .trim()
            .to_string(),
    );
    let mem = std::fs::read_to_string("/proc/meminfo")?;
    if let Some(l) = mem.lines().next() {
        m.insert(
            "memory".into(),
            l.replace("MemTotal:", "").trim().to_string(),
        );
    }
    Ok(m)
}

/// Deleting a namespace full of objects makes the kernel flush them in a
/// background worker that holds the rtnl lock for up to a second (40 000
/// objects): any netlink request meanwhile waits. Before each timed run,
/// wait until a probe request (`ip link show lo` in a spare namespace) is
/// quick several times in a row, so no run pays for the previous one.
struct Settle {
    probe: Netns,
    quick: Duration,
}

impl Settle {
    fn new() -> Result<Settle> {
        let probe = Netns::new(false, true)?;
        let mut times = Vec::new();
        for _ in 0..7 {
            times.push(ms(probe.timed(&["ip", "link", "show", "lo"], None)?.0));
            std::thread::sleep(Duration::from_millis(20));
        }
        let base = median(&times);
        Ok(Settle {
            probe,
            quick: Duration::from_secs_f64((3.0 * base + 5.0) / 1000.0),
        })
    }

    fn wait(&self) -> Result<()> {
        let end = Instant::now() + Duration::from_secs(60);
        let mut in_a_row = 0;
        while in_a_row < 3 {
            let (t, _) = self.probe.timed(&["ip", "link", "show", "lo"], None)?;
            in_a_row = if t <= self.quick { in_a_row + 1 } else { 0 };
            if Instant::now() > end {
                bail!("the kernel stayed busy for a minute (probe {t:?})");
            }
            std::thread::sleep(Duration::from_millis(30));
        }
        Ok(())
    }
}

fn write_config(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, text)?;
    Ok(p)
}

/// Proto-199 routes in the namespace (both families).
fn our_routes(ns: &Netns) -> Result<usize> {
    let mut n = 0;
    for fam in ["-4", "-6"] {
        let s = ns.ip(&["-j", fam, "route", "show", "proto", "199"])?;
        let v: serde_json::Value = serde_json::from_str(s.trim()).unwrap_or_default();
        n += v.as_array().map_or(0, Vec::len);
    }
    Ok(n)
}

/// (1) and (2) for one case: fresh namespaces, netconverge and iproute2
/// batches alternating, then the no-op check against iproute2's dumps.
fn initial(o: &Opts, tmp: &Path, case: &Case, settle: &Settle) -> Result<Samples> {
    let cfg = write_config(
        tmp,
        "converge.toml",
        &fleet::config_toml(case.peers, case.dual, case.nexthops),
    )?;
    let bin = o.bin.to_string_lossy().into_owned();
    let cfg_s = cfg.to_string_lossy().into_owned();
    let nexthops = case.nexthops == "auto";
    let (ip_batch, bridge_batch) = fleet::iproute2_batches(case.peers, case.dual, nexthops);
    let ip_file = write_config(tmp, "ip.batch", &(device_batch(case.dual) + &ip_batch))?;
    let bridge_file = write_config(tmp, "bridge.batch", &bridge_batch)?;
    let ip_s = ip_file.to_string_lossy().into_owned();
    let bridge_s = bridge_file.to_string_lossy().into_owned();

    let mut s = Samples::default();
    for rep in 0..o.reps {
        // netconverge, from an empty namespace
        let ns = Netns::new(case.dual, false)?;
        settle.wait()?;
        let (t, out) = ns.timed(&[&bin, "-c", &cfg_s, "converge"], None)?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !text.contains("converged:") {
            bail!("converge did not converge: {text}");
        }
        s.converge_ms.push(ms(t));
        let routes = our_routes(&ns)?;
        if routes != case.routes() {
            bail!(
                "expected {} routes after converge, found {routes}",
                case.routes()
            );
        }
        let (t, _) = ns.timed(&[&bin, "-c", &cfg_s, "validate"], None)?;
        s.validate_ms.push(ms(t));
        // (2) no-op check on the converged namespace, and iproute2's dumps
        let (t, _) = ns.timed(&[&bin, "-c", &cfg_s, "converge", "--check"], None)?;
        s.check_ms.push(ms(t));
        // One namespace entry, like our side: every dump in one shell
        // started inside the namespace (links, nexthops, both route
        // families, neighbours, FDB — what observe reads).
        let dumps =
            "ip -j link; ip -j nexthop; ip -j route; ip -j -6 route; ip -j neigh; bridge -j fdb";
        let (t, out) = ns.timed(&["sh", "-c", dumps], None)?;
        if out.stdout.len() < 100 * case.peers as usize {
            bail!("the iproute2 dumps printed only {} bytes", out.stdout.len());
        }
        s.dump_ms.push(ms(t));
        drop(ns);

        // the same objects through iproute2 batches
        let ns = Netns::new(case.dual, false)?;
        settle.wait()?;
        let (a, _) = ns.timed(&["ip", "-batch", &ip_s], None)?;
        let (b, _) = ns.timed(&["bridge", "-batch", &bridge_s], None)?;
        s.batch_ms.push(ms(a + b));
        let routes = our_routes(&ns)?;
        if routes != case.routes() {
            bail!(
                "expected {} routes after ip -batch, found {routes}",
                case.routes()
            );
        }
        eprintln!(
            "  rep {rep}: converge {:.1} ms, batch {:.1} ms",
            s.converge_ms.last().copied().unwrap_or_default(),
            s.batch_ms.last().copied().unwrap_or_default()
        );
    }
    Ok(s)
}

/// The devices and addresses netconverge creates, as `ip -batch` lines.
fn device_batch(dual: bool) -> String {
    let mut s = format!(
        "link add {vx} type vxlan id 1 dev {ul} local {l} dstport 8472 nolearning\n\
         link set {vx} up\naddr add 100.64.0.0/32 dev {vx}\n",
        vx = fleet::VX4,
        ul = fleet::UNDERLAY,
        l = fleet::LOCAL4
    );
    if dual {
        let _ = write!(
            s,
            "link add {vx} type vxlan id 1 dev {ul} local {l} dstport 8472 nolearning\n\
             link set {vx} up\naddr add fd00:64::/128 dev {vx} nodad\n",
            vx = fleet::VX6,
            ul = fleet::UNDERLAY,
            l = fleet::LOCAL6
        );
    }
    s
}

/// A `netconverge run` with NOTIFY_SOCKET pointing at our socket.
struct Daemon {
    child: std::process::Child,
    /// Fed by a thread that reads the notify socket all the time, as
    /// systemd does: the kernel queues only a few datagrams, and a full
    /// queue would block the daemon's sd_notify.
    notify: mpsc::Receiver<String>,
    log: PathBuf,
}

impl Daemon {
    fn start(o: &Opts, ns: &Netns, dir: &Path, cfg: &Path) -> Result<Daemon> {
        let sock_path = dir.join(format!("notify-{}.sock", ns.name));
        let _ = std::fs::remove_file(&sock_path);
        let notify = UnixDatagram::bind(&sock_path)?;
        let log_path = dir.join(format!("daemon-{}.log", ns.name));
        let log = std::fs::File::create(&log_path)?;
        let args = vec![
            o.bin.to_string_lossy().into_owned(),
            "-c".into(),
            cfg.to_string_lossy().into_owned(),
            "run".into(),
        ];
        let env = vec![(
            "NOTIFY_SOCKET".to_string(),
            sock_path.to_string_lossy().into_owned(),
        )];
        let child = ns.spawn(&args, &env, log)?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = notify.recv(&mut buf) {
                let text = String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned();
                if tx.send(text).is_err() {
                    break;
                }
            }
        });
        let mut d = Daemon {
            child,
            notify: rx,
            log: log_path,
        };
        d.wait_notify("READY=1", Duration::from_secs(60))?;
        Ok(d)
    }

    fn wait_notify(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("daemon sent no {needle} within {timeout:?}");
            }
            if let Ok(m) = self
                .notify
                .recv_timeout(left.min(Duration::from_millis(200)))
                && m.contains(needle)
            {
                return Ok(());
            }
            if let Some(st) = self.child.try_wait()? {
                bail!("daemon exited ({st}) before {needle}");
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of its log, for error messages.
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines
            .get(lines.len().saturating_sub(25)..)
            .unwrap_or_default()
            .join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = ns::host(&["kill", "-TERM", &self.child.id().to_string()]);
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (3) With the daemon running: delete the underlay (the kernel deletes the
/// VXLAN device with everything on it), recreate it, then add its address
/// and time from that address's RTM_NEWADDR to the RTM_NEWROUTE that
/// completes the set of peer routes, both seen on our own netlink socket.
fn reconverge(
    o: &Opts,
    tmp: &Path,
    peers: u32,
    nexthops: &'static str,
    settle: &Settle,
) -> Result<Reconverge> {
    let ns = Netns::new(false, false)?;
    let cfg = write_config(
        tmp,
        &format!("reconverge-{peers}-{nexthops}.toml"),
        &fleet::config_toml(peers, false, nexthops),
    )?;
    let daemon = Daemon::start(o, &ns, tmp, &cfg)?;
    let mut out = Reconverge {
        peers,
        nexthops,
        ms: Vec::new(),
        overruns: 0,
    };
    for _ in 0..o.reps {
        ns.ip(&["link", "del", fleet::UNDERLAY])?;
        wait_until(Duration::from_secs(10), || Ok(our_routes(&ns)? == 0))?;
        ns.add_underlay()?;
        // let the daemon see the bare underlay (blocked: no address yet)
        std::thread::sleep(Duration::from_millis(200));
        settle.wait()?;
        let took = watch_restore(&ns, peers as usize, || ns.add_underlay_addr(false))
            .with_context(|| format!("rep {}; daemon log:\n{}", out.ms.len(), daemon.tail()))?;
        out.ms.push(ms(took));
        wait_until(Duration::from_secs(10), || {
            Ok(our_routes(&ns)? == peers as usize)
        })?;
        // settle: the daemon's verify pass and our own events
        std::thread::sleep(Duration::from_millis(300));
    }
    out.overruns = std::fs::read_to_string(&daemon.log)
        .unwrap_or_default()
        .matches("notification overrun")
        .count();
    Ok(out)
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let end = Instant::now() + timeout;
    while !f()? {
        if Instant::now() > end {
            bail!("condition not met within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Subscribe to address and route events inside `ns`, run `trigger`, and
/// return the time from the underlay address appearing to the `expect`-th
/// distinct proto-199 route.
fn watch_restore(
    ns: &Netns,
    expect: usize,
    trigger: impl FnOnce() -> Result<()>,
) -> Result<Duration> {
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let path = format!("/run/netns/{}", ns.name);
    let watcher = std::thread::spawn(move || -> Result<Duration> {
        let fd = std::fs::File::open(&path)?;
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let (mut conn, _h, mut msgs) = rtnetlink::new_multicast_connection(&[
                MulticastGroup::Ipv4Ifaddr,
                MulticastGroup::Ipv4Route,
            ])?;
            conn.socket_mut().socket_mut().set_rx_buf_sz(8 << 20)?;
            tokio::spawn(conn);
            ready_tx.send(()).map_err(|_| anyhow!("watcher: main thread gone"))?;
            let local: std::net::IpAddr = fleet::LOCAL4.parse()?;
            let mut t0: Option<Instant> = None;
            let mut routes: HashSet<IpNet> = HashSet::new();
            let wait = async {
                while let Some((m, _)) = msgs.next().await {
                    let now = Instant::now();
                    match m.payload {
                        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(a))
                            if a.attributes.iter().any(|x| {
                                matches!(x, AddressAttribute::Local(ip) | AddressAttribute::Address(ip) if *ip == local)
                            }) =>
                        {
                            t0.get_or_insert(now);
                        }
                        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r))
                            if u8::from(r.header.protocol) == 199 =>
                        {
                            if let Some(dst) = r.attributes.iter().find_map(|x| match x {
                                RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(*a),
                                _ => None,
                            }) {
                                routes.insert(IpNet::new(dst.into(), r.header.destination_prefix_length)?);
                            }
                            if let (Some(t0), true) = (t0, routes.len() >= expect) {
                                return Ok(now - t0);
                            }
                        }
                        NetlinkPayload::Overrun(_) => bail!("watcher socket overrun"),
                        _ => {}
                    }
                }
                bail!("watcher socket closed")
            };
            tokio::time::timeout(Duration::from_secs(20), wait)
                .await
                .context("routes not restored within 20 s")?
        })
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .context("watcher did not start")?;
    trigger()?;
    watcher
        .join()
        .map_err(|_| anyhow!("watcher thread panicked"))?
}

fn proc_status_kib(pid: u32, key: &str) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no {key} in /proc/{pid}/status"))
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // fields after the parenthesised command name
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime 15
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Ok(get(11) + get(12))
}

/// (4) Peak RSS of `converge` from empty, and the idle daemon's RSS and CPU.
fn memory(o: &Opts, tmp: &Path, settle: &Settle) -> Result<Memory> {
    let n = o.rss_size;
    let cfg = write_config(tmp, "memory.toml", &fleet::config_toml(n, false, "auto"))?;
    let bin = o.bin.to_string_lossy().into_owned();
    let cfg_s = cfg.to_string_lossy().into_owned();
    let mut m = Memory {
        peers: n,
        idle_secs: o.idle_secs,
        ..Memory::default()
    };
    for _ in 0..o.reps.min(3) {
        let ns = Netns::new(false, false)?;
        settle.wait()?;
        let out_file = tmp.join("time.out");
        let out_s = out_file.to_string_lossy().into_owned();
        ns.timed(
            &[
                "/usr/bin/time",
                "-f",
                "%M",
                "-o",
                &out_s,
                &bin,
                "-c",
                &cfg_s,
                "converge",
            ],
            None,
        )?;
        let kib: u64 = std::fs::read_to_string(&out_file)?
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| anyhow!("no max RSS from /usr/bin/time"))?;
        m.converge_peak_rss_kib.push(kib);
    }
    let ns = Netns::new(false, false)?;
    let d = Daemon::start(o, &ns, tmp, &cfg)?;
    // let the events of its own first pass settle
    std::thread::sleep(Duration::from_secs(3));
    let pid = d.pid();
    let ticks = ns::host(&["getconf", "CLK_TCK"])?
        .trim()
        .parse::<f64>()
        .unwrap_or(100.0);
    let before = cpu_ticks(pid)?;
    std::thread::sleep(Duration::from_secs(o.idle_secs));
    let after = cpu_ticks(pid)?;
    m.daemon_idle_cpu_ms = (after.saturating_sub(before)) as f64 * 1000.0 / ticks;
    m.daemon_rss_kib = proc_status_kib(pid, "VmRSS:")?;
    m.daemon_hwm_kib = proc_status_kib(pid, "VmHWM:")?;
    Ok(m)
}

fn find<'a>(res: &'a Results, peers: u32, dual: bool, nh: &str) -> Option<&'a Samples> {
    res.initial
        .iter()
        .find(|(c, _)| c.peers == peers && c.dual == dual && c.nexthops == nh)
        .map(|(_, s)| s)
}

fn plot(res: &Results) -> String {
    let line = |name: &str, nh: &str, f: fn(&Samples) -> &Vec<f64>, dashed: bool| svg::Series {
        name: name.to_string(),
        points: res
            .initial
            .iter()
            .filter(|(c, _)| !c.dual && c.nexthops == nh)
            .map(|(c, s)| (f64::from(c.peers), median(f(s))))
            .collect(),
        dashed,
    };
    let mut series = vec![
        line("converge, nexthops", "auto", |s| &s.converge_ms, false),
        line("ip -batch, nexthops", "auto", |s| &s.batch_ms, true),
        line("converge, classic", "off", |s| &s.converge_ms, false),
        line("ip -batch, classic", "off", |s| &s.batch_ms, true),
        line("converge --check", "auto", |s| &s.check_ms, false),
        line("iproute2 dumps", "auto", |s| &s.dump_ms, true),
    ];
    series.push(svg::Series {
        name: "re-converge (daemon)".into(),
        points: res
            .reconverge
            .iter()
            .filter(|r| r.nexthops == "auto")
            .map(|r| (f64::from(r.peers), median(&r.ms)))
            .collect(),
        dashed: false,
    });
    svg::chart(
        "netconverge vs iproute2 (IPv4, median)",
        "peers (N), 3-4 kernel objects each",
        "time (ms)",
        &series,
    )
}

/// BENCHMARKS.md's measured part: one section per figure, each written by
/// its own function below.
fn report(o: &Opts, res: &Results) -> String {
    let mut s = String::new();
    report_machine(&mut s, res);
    report_initial(&mut s, res);
    report_check(&mut s, res);
    report_reconverge(&mut s, res);
    report_memory(&mut s, res);
    report_criterion(&mut s, o);
    let _ = writeln!(s, "\n![time against N](bench/scaling.svg)\n");
    let _ = writeln!(
        s,
        "Raw samples: `bench/results.json`. Generated by `bash bench/run.sh{}`.",
        if o.sizes.len() < 3 { " --quick" } else { "" }
    );
    s
}

/// The machine the figures come from.
fn report_machine(s: &mut String, res: &Results) {
    let _ = writeln!(s, "### Machine\n");
    for (k, v) in &res.machine {
        let _ = writeln!(s, "- {k}: {v}");
    }
    let _ = writeln!(
        s,
        "- repetitions per figure: {} (median reported)\n",
        res.reps
    );
}

/// (1) Initial converge against iproute2 batches.
fn report_initial(s: &mut String, res: &Results) {
    let _ = writeln!(
        s,
        "### (1) Initial converge from empty vs `ip -batch` + `bridge -batch` (same objects)\n"
    );
    let _ = writeln!(
        s,
        "| peers | family | nexthops | netconverge converge | ip + bridge -batch | ratio | of which config parse |"
    );
    let _ = writeln!(s, "|---:|---|---|---:|---:|---:|---:|");
    for (c, smp) in &res.initial {
        let (a, b) = (median(&smp.converge_ms), median(&smp.batch_ms));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {a:.1} ms | {b:.1} ms | {:.2} | {:.1} ms |",
            c.peers,
            c.family(),
            c.nexthops,
            a / b,
            median(&smp.validate_ms)
        );
    }
    let _ = writeln!(
        s,
        "\n\"Of which config parse\": `netconverge validate` on the same file (process start, TOML parse, validation; no kernel access), part of every `converge` and `converge --check`.\n"
    );
    let _ = writeln!(
        s,
        "\n`nexthops = auto` uses kernel nexthop objects (this kernel has them): the batch then holds `nexthop add` + `route add ... nhid`; `off` is classic `route add ... via ... onlink` in both.\n"
    );
    if let (Some(a), Some(b)) = (
        find(res, 10_000, false, "auto"),
        find(res, 50_000, false, "auto"),
    ) {
        let x = |f: fn(&Samples) -> &Vec<f64>| median(f(b)) / median(f(a));
        let _ = writeln!(
            s,
            "Scaling 10 000 → 50 000 peers (×5, nexthops): converge ×{:.2}, `ip -batch` ×{:.2}, `converge --check` ×{:.2}, iproute2 dumps ×{:.2}, `validate` ×{:.2}.\n",
            x(|s| &s.converge_ms),
            x(|s| &s.batch_ms),
            x(|s| &s.check_ms),
            x(|s| &s.dump_ms),
            x(|s| &s.validate_ms)
        );
    }
    let _ = writeln!(
        s,
        "Against classic iproute2 routes (what flannel installs), netconverge with nexthops:\n"
    );
    let _ = writeln!(
        s,
        "| peers | family | netconverge (nexthops) | ip + bridge -batch (classic) | ratio |"
    );
    let _ = writeln!(s, "|---:|---|---:|---:|---:|");
    for (c, smp) in res.initial.iter().filter(|(c, _)| c.nexthops == "auto") {
        if let Some(classic) = find(res, c.peers, c.dual, "off") {
            let (a, b) = (median(&smp.converge_ms), median(&classic.batch_ms));
            let _ = writeln!(
                s,
                "| {} | {} | {a:.1} ms | {b:.1} ms | {:.2} |",
                c.peers,
                c.family(),
                a / b
            );
        }
    }
}

/// (2) No-op `converge --check` against iproute2 dumps.
fn report_check(s: &mut String, res: &Results) {
    let _ = writeln!(s, "\n### (2) No-op `converge --check` vs iproute2 dumps\n");
    let _ = writeln!(
        s,
        "| peers | family | nexthops | converge --check | iproute2 dumps | ratio | check minus config parse |"
    );
    let _ = writeln!(s, "|---:|---|---|---:|---:|---:|---:|");
    for (c, smp) in &res.initial {
        let (a, b) = (median(&smp.check_ms), median(&smp.dump_ms));
        let v = median(&smp.validate_ms);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {a:.1} ms | {b:.1} ms | {:.2} | {:.1} ms |",
            c.peers,
            c.family(),
            c.nexthops,
            a / b,
            a - v
        );
    }
    let _ = writeln!(
        s,
        "\nDumps: one `sh -c` started inside the namespace (one namespace entry, as for `converge --check`) running `ip -j link; ip -j nexthop; ip -j route; ip -j -6 route; ip -j neigh; bridge -j fdb` — the object kinds observe reads. Before 2026-12-02 the baseline was one namespace-entering process per dump (no links, nexthops only with nexthops), summed, which flattered the ratio.\n"
    );
}

/// (3) Re-convergence after the underlay came back.
fn report_reconverge(s: &mut String, res: &Results) {
    let _ = writeln!(
        s,
        "### (3) Re-convergence after underlay delete + recreate, daemon running\n"
    );
    let _ = writeln!(
        s,
        "From the underlay address's RTM_NEWADDR to the RTM_NEWROUTE completing the peer routes (IPv4), both seen on a netlink socket of the harness; default `[daemon]` settings (debounce 20 ms).\n"
    );
    let _ = writeln!(
        s,
        "| peers | nexthops | median | min | max | notification overruns (all reps) |"
    );
    let _ = writeln!(s, "|---:|---|---:|---:|---:|---:|");
    for r in &res.reconverge {
        let min = r.ms.iter().copied().fold(f64::MAX, f64::min);
        let max = r.ms.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} ms | {min:.1} ms | {max:.1} ms | {} |",
            r.peers,
            r.nexthops,
            median(&r.ms),
            r.overruns
        );
    }
}

/// (4) Memory and idle CPU, when measured.
fn report_memory(s: &mut String, res: &Results) {
    if let Some(m) = &res.memory {
        let _ = writeln!(
            s,
            "\n### (4) Memory and idle CPU, {} peers, nexthops auto\n",
            m.peers
        );
        let peak: Vec<f64> = m.converge_peak_rss_kib.iter().map(|k| *k as f64).collect();
        let _ = writeln!(
            s,
            "- `converge` from empty, peak RSS (max resident, `/usr/bin/time -f %M`): {:.1} MiB (median)",
            median(&peak) / 1024.0
        );
        let _ = writeln!(
            s,
            "- idle daemon (`run`, converged): VmRSS {:.1} MiB, VmHWM {:.1} MiB",
            m.daemon_rss_kib as f64 / 1024.0,
            m.daemon_hwm_kib as f64 / 1024.0
        );
        let _ = writeln!(
            s,
            "- idle daemon CPU over {} s: {:.0} ms (utime + stime from /proc/PID/stat)",
            m.idle_secs, m.daemon_idle_cpu_ms
        );
    }
}

/// (5) The criterion figures of `plan()`, when `cargo bench` ran.
fn report_criterion(s: &mut String, o: &Opts) {
    let criterion = criterion_medians(&o.root.join("target/criterion/plan_10000_peers"));
    if !criterion.is_empty() {
        let _ = writeln!(
            s,
            "\n### (5) `plan()` alone, 10 000 peers (criterion, `cargo bench --bench plan`)\n"
        );
        let _ = writeln!(s, "| case | median | 95% interval |");
        let _ = writeln!(s, "|---|---:|---:|");
        for (name, median, lo, hi) in &criterion {
            let _ = writeln!(s, "| {name} | {median:.2} ms | {lo:.2}–{hi:.2} ms |");
        }
        let _ = writeln!(
            s,
            "\n`in_sync`: the kernel already matches (every daemon pass, every `--check`); `from_empty`: 30 002 changes (40 002 with nexthops), each with its diff line."
        );
    }
}

/// (case, median, 95% low, 95% high) in ms from criterion's estimates.
fn criterion_medians(dir: &Path) -> Vec<(String, f64, f64, f64)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "report")
        .collect();
    names.sort();
    for name in names {
        let path = dir.join(&name).join("new/estimates.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        let ms_at = |pointer: &str| {
            v.pointer(pointer)
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(f64::NAN)
                / 1e6
        };
        out.push((
            name,
            ms_at("/median/point_estimate"),
            ms_at("/median/confidence_interval/lower_bound"),
            ms_at("/median/confidence_interval/upper_bound"),
        ));
    }
    out
}

const BEGIN: &str = "<!-- bench:begin (generated by bench/run.sh; edits here are overwritten) -->";
const END: &str = "<!-- bench:end -->";

fn update_benchmarks_md(path: &Path, report: &str) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!("{BEGIN}\n\n{report}\n{END}");
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(a), Some(b)) if a < b => {
            let head = old.get(..a).unwrap_or_default();
            let tail = old.get(b + END.len()..).unwrap_or_default();
            format!("{head}{block}{tail}")
        }
        _ => format!("{old}\n{block}\n"),
    };
    std::fs::write(path, new)?;
    Ok(())
}
