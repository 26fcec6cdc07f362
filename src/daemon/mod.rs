//! `netconverge run`: keep the node converged for as long as it runs.
//!
//! Invariant: the kernel is the source of truth. Every pass is a full
//! observe → plan → apply → verify through [`crate::engine`]; events
//! (netlink and nf_tables notifications, NetworkManager hints, timers,
//! signals) only decide *when* a pass runs, through the sans-IO
//! [`reconciler::Reconciler`]. On stop nothing is removed or flushed.
//!
//! Shape: a `Daemon` struct holds the state between events;
//! `Daemon::next_event` waits on every source at once and each source has
//! one handler (`on_netlink`, `on_nexthop`, `on_nat`, `on_hint`, `on_reload`,
//! `on_watchdog_tick`, …); `Daemon::run_pass` starts a due pass and
//! `Daemon::on_pass_done` takes its result. After every pass the sources
//! learn from its observation (ifindexes, underlays found by address, our
//! nexthop ids, the NAT flavour, the written files' directories).
//!
//! Invariant: the loop never waits on anything but its `select!`. A pass is
//! a future polled by that loop (so signals, watchdog pings and events are
//! served while it runs), bounded by a timeout derived from the watchdog
//! interval; systemd notifications never block ([`notify`]).

pub mod filewatch;
pub mod filter;
pub mod kubewatch;
pub mod natwatch;
pub mod nm;
pub mod notify;
pub mod reconciler;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use netlink_packet_core::NetlinkPayload;
use netlink_sys::AsyncSocket;
use rtnetlink::MulticastGroup;
use sd_notify::NotifyState;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{debug, error, info, warn};

use crate::config::ConfigErrors;
use crate::engine::{self, EngineError, Outcome};
use crate::metrics::{self, SourceState};
use crate::model::{Desired, LeaseMode};
use crate::plan::Blocked;
use filewatch::FileWatch;
use filter::Interest;
use natwatch::{NatEvent, NatWatch};
use notify::Notifier;
use reconciler::{Notify, PassResult, Reconciler, Trigger};

/// A pass that takes longer than this is abandoned (and retried), so a
/// wedged request can never stall the daemon forever. Under a systemd
/// watchdog the bound is half the watchdog interval ([`pass_timeout`]).
const PASS_TIMEOUT: Duration = Duration::from_secs(30);
/// The shortest pass timeout, whatever the watchdog: below this even a
/// small node's pass could never finish (pings go on during a pass, so a
/// tiny `WatchdogSec` needs no tinier timeout).
const MIN_PASS_TIMEOUT: Duration = Duration::from_secs(1);
/// After SIGTERM, how long an unsent STOPPING=1 is retried before exiting
/// anyway (the receiver is not reading; exiting promptly matters more).
const STOP_NOTIFY_GRACE: Duration = Duration::from_secs(1);
/// Default receive buffer of the notification sockets: a re-convergence of
/// 10 000 peers echoes ~30 000 notifications of ~1 KiB (kernel truesize)
/// each while the daemon is busy applying; 8 MiB (what rmem_max allowed)
/// overran and cost a full resync. Forced past rmem_max (root); memory is
/// charged only while notifications wait.
const MONITOR_RCVBUF: usize = 48 << 20;

/// Hints from NetworkManager (D-Bus), keyed by interface name. They only
/// make a pass happen sooner or explain one; the kernel is still re-read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// NM activated the device: converge now.
    Activated(String),
    /// NM is deactivating/removed the device: the kernel is about to drop
    /// everything bound to it.
    Deactivated(String),
    /// NetworkManager appeared on / left the bus.
    NmUp,
    NmDown,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot open netlink socket: {0}")]
    Netlink(#[source] std::io::Error),
    #[error(transparent)]
    Connect(#[from] crate::netlink::NetlinkError),
    #[error("cannot install signal handler: {0}")]
    Signal(#[source] std::io::Error),
}

/// Re-reads and validates the config file (SIGHUP); for a Kubernetes
/// fleet, with the Nodes last selected from the API (`None`: none yet).
pub type Loader =
    Box<dyn Fn(Option<&crate::config::Selection>) -> Result<Desired, ConfigErrors> + Send>;

/// The pass timeout under a watchdog of `watchdog` (`None`: no watchdog):
/// half the interval, so a wedged pass is abandoned (and the daemon says so)
/// long before systemd would have to kill it, within
/// [`MIN_PASS_TIMEOUT`]..=[`PASS_TIMEOUT`]. Pings continue during the pass
/// either way; a pass that times out keeps what it applied, and the retry
/// continues from there.
pub fn pass_timeout(watchdog: Option<Duration>) -> Duration {
    watchdog.map_or(PASS_TIMEOUT, |w| {
        (w / 2).clamp(MIN_PASS_TIMEOUT, PASS_TIMEOUT)
    })
}

/// The budget of the pass after one that timed out with `budget`: doubled,
/// up to [`PASS_TIMEOUT`] (or `base`, if larger). A pass that is merely long
/// (a slow machine, a huge fleet) then still completes, while a wedged
/// request is abandoned at `base` first. Pings go on during a pass, so a
/// budget beyond the watchdog interval costs no restart.
pub fn next_budget(budget: Duration, base: Duration) -> Duration {
    (budget * 2).min(PASS_TIMEOUT.max(base))
}

/// How often the watchdog is pinged: a quarter of its interval, so a ping
/// arrives well within half of it even when one tick is late.
pub fn ping_interval(watchdog: Duration) -> Duration {
    (watchdog / 4).max(Duration::from_millis(1))
}

/// In guard mode (`[lease] mode = "preserve"`) the lease file is written by
/// k3s's flannel, and k3s is ordered after us: a lease blocked on that file
/// (not there yet, invalid) must never hold READY=1, or nothing would ever
/// write it.
fn waits_for_flannel(desired: &Desired, b: &Blocked) -> bool {
    desired
        .lease
        .as_ref()
        .is_some_and(|l| l.mode == LeaseMode::Preserve)
        && b.object.starts_with("lease ")
}

fn monitor_connection() -> Result<futures::channel::mpsc::UnboundedReceiver<Monitored>, DaemonError>
{
    let groups = [
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
        MulticastGroup::Neigh,
    ];
    let (mut conn, _handle, messages) =
        rtnetlink::new_multicast_connection(&groups).map_err(DaemonError::Netlink)?;
    let size = monitor_rcvbuf();
    match crate::netlink::size_notification_buffer(conn.socket_mut().socket_mut(), size) {
        Ok(got) => debug!("netlink notification buffer: {got} bytes"),
        Err(e) => warn!("cannot size the netlink notification buffer to {size} bytes: {e}"),
    }
    tokio::spawn(conn);
    Ok(messages)
}

/// Nexthop notifications, when the kernel has nexthop objects: deleting a
/// nexthop silently deletes its IPv4 routes, so this is the only sign of it.
fn nexthop_monitor() -> Option<futures::channel::mpsc::UnboundedReceiver<NexthopMonitored>> {
    match crate::nexthop::monitor(MONITOR_RCVBUF) {
        Ok(m) => Some(m),
        Err(e) => {
            debug!("no nexthop notifications (kernel without nexthop objects?): {e}");
            None
        }
    }
}

type NexthopMonitored = (
    netlink_packet_core::NetlinkMessage<crate::nexthop::NexthopNetlinkMessage>,
    netlink_sys::SocketAddr,
);

type Monitored = (
    netlink_packet_core::NetlinkMessage<netlink_packet_route::RouteNetlinkMessage>,
    netlink_sys::SocketAddr,
);

/// One-line human summary for systemd's STATUS=.
fn status_line(desired: &Desired, outcome: &Outcome, note: Option<&str>) -> String {
    let (flannel, blocked): (Vec<&Blocked>, Vec<&Blocked>) = outcome
        .remaining
        .blocked
        .iter()
        .partition(|b| waits_for_flannel(desired, b));
    let mut s = if let Some(b) = blocked.first() {
        format!("waiting: {}: {}", b.object, b.reason)
    } else if !outcome.remaining.changes.is_empty() {
        let first = outcome
            .failures
            .first()
            .map(|f| format!(" (first: {}: {})", f.object, f.error))
            .unwrap_or_default();
        format!(
            "degraded: {} change(s) not applied{first}",
            outcome.remaining.changes.len()
        )
    } else {
        let mut parts = vec![
            format!("{} device(s)", desired.vxlans.len()),
            format!("{} peer(s)", desired.peers.len()),
        ];
        if desired.nat.is_some() {
            parts.push("nat ok".into());
        }
        match flannel.first() {
            Some(b) => parts.push(format!(
                "{} waiting for flannel: {} (guard mode: readiness does not wait for it)",
                b.object, b.reason
            )),
            None if desired.lease.is_some() => parts.push("lease ok".into()),
            None => {}
        }
        format!("converged: {}", parts.join(", "))
    };
    if let Some(n) = note {
        s.push_str("; ");
        s.push_str(n);
    }
    s
}

/// Changes of a pass that are logged one by one (more are counted).
const DETAIL: usize = 20;

fn log_pass(n: u64, trigger: Trigger, outcome: &Outcome, took: Duration) {
    let changes = &outcome.initial.changes;
    let total = outcome.initial_changes;
    if total == 0 && outcome.converged() {
        debug!(pass = n, %trigger, "pass #{n} ({trigger}): in sync ({} ms)", took.as_millis());
        return;
    }
    let what = if total == 0 {
        "no changes possible".to_string()
    } else if total <= DETAIL {
        changes
            .iter()
            .map(|c| format!("{} {}: {}", c.kind.sigil(), c.object, c.reason))
            .collect::<Vec<_>>()
            .join("; ")
    } else {
        format!("{total} changes")
    };
    info!(
        pass = n,
        %trigger,
        applied = outcome.applied,
        remaining = outcome.remaining.changes.len(),
        blocked = outcome.remaining.blocked.len(),
        "pass #{n} ({trigger}): {what}; applied {} in {} ms, {} remaining, {} blocked",
        outcome.applied,
        took.as_millis(),
        outcome.remaining.changes.len(),
        outcome.remaining.blocked.len()
    );
    for f in &outcome.failures {
        warn!(pass = n, "failed: {}: {}", f.object, f.error);
    }
    for b in &outcome.remaining.blocked {
        info!(pass = n, "blocked: {}: {}", b.object, b.reason);
    }
}

/// TEST ONLY: when set (to anything), every netlink notification is ignored,
/// so the integration tests can prove that NetworkManager hints alone
/// trigger repairs. Overruns still resync. Never set it in production.
const TEST_IGNORE_NETLINK_ENV: &str = "NETCONVERGE_TEST_IGNORE_NETLINK";

type PassOutput = Result<Result<Outcome, EngineError>, tokio::time::error::Elapsed>;

/// The pass being polled by the loop.
struct Running {
    n: u64,
    trigger: Trigger,
    started: Instant,
    budget: Duration,
    fut: Pin<Box<dyn Future<Output = PassOutput>>>,
}

fn monitor_rcvbuf() -> usize {
    std::env::var("NETCONVERGE_MONITOR_RCVBUF")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(MONITOR_RCVBUF)
}

/// Run until SIGTERM/SIGINT. `nm` follows NetworkManager (D-Bus) when that
/// integration is enabled; a reload starts, retargets or stops it.
pub async fn run(
    desired: Desired,
    loader: Loader,
    nm: Option<nm::Watcher>,
) -> Result<(), DaemonError> {
    run_with_kube(desired, loader, nm, None).await
}

/// [`run`] with the Kubernetes API as the fleet's source: no pass runs
/// before its first complete list (see [`kubewatch`]).
pub async fn run_with_kube(
    desired: Desired,
    loader: Loader,
    nm: Option<nm::Watcher>,
    kube: Option<kubewatch::KubeSource>,
) -> Result<(), DaemonError> {
    let mut d = Daemon::new(desired, loader, nm)?;
    d.kube = kube;
    loop {
        match d.next_event().await {
            Event::Stop => break,
            ev => d.handle(ev).await?,
        }
    }
    d.stop().await;
    Ok(())
}

/// What woke the loop: one variant per event source.
enum Event {
    Stop,
    WatchdogTick,
    NotifyRetry,
    Reload,
    PassDone(Box<PassOutput>),
    Netlink(Option<Monitored>),
    Nexthop(Option<NexthopMonitored>),
    Nat(NatEvent),
    FileChanged(std::path::PathBuf),
    Nm(Option<Hint>),
    /// The Node watch state changed (`false`: the watch task is gone).
    Kube(bool),
    KubePatched(Option<(serde_json::Value, Result<(), crate::kube::KubeError>)>),
    /// The reconciler's deadline passed (no pass running).
    Due,
}

/// The event sources, each polled by [`Daemon::next_event`].
struct Sources {
    monitor: futures::channel::mpsc::UnboundedReceiver<Monitored>,
    nexthop: Option<futures::channel::mpsc::UnboundedReceiver<NexthopMonitored>>,
    nat: NatWatch,
    files: FileWatch,
    nm: Option<nm::Watcher>,
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    wd_tick: tokio::time::Interval,
}

/// systemd's view of us: notifications, watchdog, the status line.
struct Systemd {
    notifier: Notifier,
    /// A retry deadline that survives loop turns: a stream of events must
    /// not keep postponing it.
    retry_at: Option<tokio::time::Instant>,
    watchdog: Option<Duration>,
    ping: Option<Duration>,
    last_status: String,
}

impl Systemd {
    fn status(&mut self, status: String) {
        // only changes: STATUS= is a display, not a heartbeat
        if status != self.last_status {
            self.notifier.status(&status);
            self.last_status = status;
        }
    }
}

/// The daemon between two events: the state every handler works on.
struct Daemon {
    src: Sources,
    sd: Systemd,
    loader: Loader,
    handle: crate::netlink::Handle,
    desired: Arc<Desired>,
    interest: Interest,
    rec: Reconciler,
    /// An explanation appended to STATUS= (NetworkManager, a failed reload).
    note: Option<String>,
    relevant_events: u64,
    running: Option<Running>,
    /// The pass timeout without a timed-out predecessor.
    timeout: Duration,
    /// The next pass's budget.
    budget: Duration,
    ignore_netlink: bool,
    /// `[fleet] source = "kubernetes"`: the Node watch.
    kube: Option<kubewatch::KubeSource>,
    /// STATUS= of the last pass, before the notes.
    base_status: String,
    /// The `[daemon] metrics` endpoint, while configured.
    metrics: Option<metrics::http::Server>,
}

/// The metrics endpoint `desired` asks for, keeping `current` when its
/// address is unchanged; the STATUS= note when it cannot listen (the daemon
/// converges without it and the server retries: see docs/metrics.md). Also
/// the sources' states the daemon knows from the configuration alone.
fn serve_metrics(
    current: Option<metrics::http::Server>,
    desired: &Desired,
    nm_on: bool,
) -> (Option<metrics::http::Server>, Option<String>) {
    let m = metrics::get();
    if !nm_on {
        m.set_source(metrics::SOURCE_NM, SourceState::Off);
    }
    let fleet = if desired.fleet {
        SourceState::Static
    } else {
        SourceState::Off
    };
    m.set_source(metrics::SOURCE_FLEET, fleet);
    let Some(addr) = desired.daemon.metrics else {
        return (None, None);
    };
    if current.as_ref().is_some_and(|s| s.listen() == addr) {
        return (current, None);
    }
    // the old endpoint goes first (its socket closes on the next turn)
    let replacing = current.is_some_and(|s| s.listen().port() == addr.port());
    let (server, err) = metrics::http::start(addr, m, replacing);
    let note = err.map(|e| {
        format!(
            "metrics endpoint {addr} could not listen ({e}); retrying (up to every {} s)",
            metrics::http::REBIND_EVERY.as_secs()
        )
    });
    (Some(server), note)
}

async fn next_pass(running: &mut Option<Running>) -> PassOutput {
    match running.as_mut() {
        Some(p) => (&mut p.fut).await,
        None => std::future::pending().await,
    }
}

async fn next_nexthop(
    m: &mut Option<futures::channel::mpsc::UnboundedReceiver<NexthopMonitored>>,
) -> Option<NexthopMonitored> {
    match m.as_mut() {
        Some(m) => m.next().await,
        None => std::future::pending().await,
    }
}

async fn next_hint(nm: &mut Option<nm::Watcher>) -> Option<Hint> {
    match nm.as_mut() {
        Some(w) => w.recv().await,
        None => std::future::pending().await,
    }
}

impl Daemon {
    fn new(
        desired: Desired,
        loader: Loader,
        nm: Option<nm::Watcher>,
    ) -> Result<Daemon, DaemonError> {
        // Subscribe before the first dump, so no change between dump and
        // subscription can be missed.
        let monitor = monitor_connection()?;
        let nexthop = nexthop_monitor();
        let nat = NatWatch::new(desired.nat.as_ref(), monitor_rcvbuf());
        let handle = crate::netlink::connect().map_err(DaemonError::Connect)?;
        let sig = |k| signal(k).map_err(DaemonError::Signal);
        let (hup, term, int) = (
            sig(SignalKind::hangup())?,
            sig(SignalKind::terminate())?,
            sig(SignalKind::interrupt())?,
        );
        let watchdog = notify::watchdog_interval();
        let timeout = pass_timeout(watchdog);
        let ping = watchdog.map(ping_interval);
        let mut wd_tick = tokio::time::interval(ping.unwrap_or(Duration::from_secs(3600)));
        wd_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if let (Some(w), Some(p)) = (watchdog, ping) {
            info!(
                "watchdog every {} ms: pinging every {} ms, passes time out after {} ms",
                w.as_millis(),
                p.as_millis(),
                timeout.as_millis()
            );
        }
        let ignore_netlink = std::env::var_os(TEST_IGNORE_NETLINK_ENV).is_some();
        if ignore_netlink {
            warn!(
                "{TEST_IGNORE_NETLINK_ENV} is set: ignoring every netlink notification (test-only)"
            );
        }
        info!(
            "netconverge {} running: {} device(s), {} peer(s)",
            env!("CARGO_PKG_VERSION"),
            desired.vxlans.len(),
            desired.peers.len()
        );
        let mut notifier = Notifier::from_env();
        notifier.status("starting: first converge pass");
        let (metrics, note) = serve_metrics(None, &desired, nm.is_some());
        Ok(Daemon {
            src: Sources {
                monitor,
                nexthop,
                nat,
                files: FileWatch::new(&desired.written_files()),
                nm,
                hup,
                term,
                int,
                wd_tick,
            },
            sd: Systemd {
                notifier,
                retry_at: None,
                watchdog,
                ping,
                last_status: String::new(),
            },
            loader,
            handle,
            interest: Interest::new(&desired),
            rec: Reconciler::new(&desired.daemon, Instant::now()),
            desired: Arc::new(desired),
            note,
            relevant_events: 0,
            running: None,
            timeout,
            budget: timeout,
            ignore_netlink,
            kube: None,
            base_status: String::new(),
            metrics,
        })
    }

    /// An event that concerns the declared state.
    fn relevant(&mut self) {
        self.relevant_events += 1;
        metrics::get().relevant_event();
    }

    /// Wait for the next event, in priority order (stopping first).
    async fn next_event(&mut self) -> Event {
        let deadline = tokio::time::Instant::from_std(self.rec.poll_timeout());
        let sd = &mut self.sd;
        if !sd.notifier.pending() {
            sd.retry_at = None;
        } else if sd.retry_at.is_none() {
            sd.retry_at = Some(tokio::time::Instant::now() + sd.notifier.retry_delay());
        }
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        // Before the first state from the API, nothing may converge.
        let may_pass = self.kube.as_ref().is_none_or(|k| k.ready() || k.dirty());
        let src = &mut self.src;
        tokio::select! {
            biased;
            _ = src.term.recv() => Event::Stop,
            _ = src.int.recv() => Event::Stop,
            _ = src.wd_tick.tick(), if sd.watchdog.is_some() => Event::WatchdogTick,
            _ = tokio::time::sleep_until(sd.retry_at.unwrap_or(far)), if sd.retry_at.is_some() => Event::NotifyRetry,
            _ = src.hup.recv() => Event::Reload,
            result = next_pass(&mut self.running) => Event::PassDone(Box::new(result)),
            msg = src.monitor.next() => Event::Netlink(msg),
            msg = next_nexthop(&mut src.nexthop) => Event::Nexthop(msg),
            ev = src.nat.changed() => Event::Nat(ev),
            path = src.files.changed() => Event::FileChanged(path),
            hint = next_hint(&mut src.nm) => Event::Nm(hint),
            ev = kubewatch::KubeSource::next(&mut self.kube) => ev,
            _ = tokio::time::sleep_until(deadline), if self.running.is_none() && may_pass => Event::Due,
        }
    }

    async fn handle(&mut self, ev: Event) -> Result<(), DaemonError> {
        match ev {
            Event::Stop => {}
            Event::WatchdogTick => self.on_watchdog_tick(),
            Event::NotifyRetry => {
                self.sd.retry_at = None;
                self.sd.notifier.retry();
            }
            Event::Reload => self.on_reload(),
            Event::PassDone(result) => self.on_pass_done(*result),
            Event::Netlink(msg) => self.on_netlink(msg).await?,
            Event::Nexthop(msg) => self.on_nexthop(msg).await,
            Event::Nat(ev) => self.on_nat(ev),
            Event::FileChanged(path) => {
                if self.desired.lease.as_ref().is_some_and(|l| l.path == path) {
                    debug!("lease file changed on disk: converging");
                } else {
                    debug!("{} changed on disk: converging", path.display());
                }
                self.relevant();
                self.rec.on_event(Instant::now());
            }
            Event::Nm(hint) => self.on_hint(hint),
            Event::Kube(alive) => self.on_kube(alive),
            Event::KubePatched(r) => {
                if let Some(k) = self.kube.as_mut() {
                    k.on_patched(r);
                }
            }
            Event::Due => self.run_pass(),
        }
        Ok(())
    }

    /// Sent from the loop itself, which is polling the pass: a wedged loop
    /// stops pinging and systemd restarts us. A pass past its timeout
    /// (which should have fired) is no proof of life either.
    fn on_watchdog_tick(&mut self) {
        let ping = self.sd.ping.unwrap_or_default();
        let alive = self
            .running
            .as_ref()
            .is_none_or(|p| p.started.elapsed() < p.budget + ping);
        if alive {
            self.sd.notifier.watchdog();
        } else {
            warn!("pass overran its timeout: not pinging the watchdog");
        }
    }

    /// SIGHUP: re-read the file; a valid one replaces the desired state (and
    /// every source that depends on it), an invalid one is reported and the
    /// previous state kept.
    fn on_reload(&mut self) {
        let mut msg = "RELOADING=1".to_string();
        if let Ok(mono) = NotifyState::monotonic_usec_now() {
            msg = format!("{msg}\n{mono}");
        }
        self.sd.notifier.must(&msg);
        match (self.loader)(self.kube.as_ref().and_then(|k| k.selection())) {
            Ok(new) => {
                info!("reload: configuration valid, converging to it");
                if let Some(p) = self.running.take() {
                    // its result would describe the old configuration
                    info!("reload: abandoning pass #{} in flight", p.n);
                    metrics::get().pass_ended(
                        p.trigger.label(),
                        metrics::PassResult::Abandoned,
                        p.started.elapsed(),
                    );
                }
                self.interest = Interest::new(&new);
                self.src.files = FileWatch::new(&new.written_files());
                if new.nat != self.desired.nat {
                    self.src.nat = NatWatch::new(new.nat.as_ref(), monitor_rcvbuf());
                }
                self.rec.reconfigure(&new.daemon, Instant::now());
                self.src.nm = nm::reconfigure(self.src.nm.take(), &new);
                let (server, note) =
                    serve_metrics(self.metrics.take(), &new, self.src.nm.is_some());
                self.metrics = server;
                metrics::get().reloaded();
                self.desired = Arc::new(new);
                self.note = note;
            }
            Err(errors) => {
                for e in &errors.0 {
                    error!("reload rejected: {e}");
                }
                let first = errors.0.first().map(|e| e.to_string()).unwrap_or_default();
                let first = first.lines().next().unwrap_or_default().to_string();
                let n = format!(
                    "reload failed ({} error(s)), running previous config: {first}",
                    errors.0.len()
                );
                self.sd.notifier.must("READY=1");
                self.sd.notifier.status(&n);
                self.sd.last_status = n.clone();
                self.note = Some(n);
            }
        }
    }

    /// Start the pass the reconciler says is due. It is a future the loop
    /// polls ([`Daemon::next_event`]), so every source is served while it
    /// runs; [`Daemon::on_pass_done`] takes its result.
    fn run_pass(&mut self) {
        if !self.rebuild_from_kube() {
            return;
        }
        let Some(trigger) = self.rec.poll(Instant::now()) else {
            return;
        };
        let n = self.rec.passes() + 1;
        debug!(pass = n, %trigger, "pass #{n} starting");
        let (h, d, budget) = (self.handle.clone(), self.desired.clone(), self.budget);
        self.running = Some(Running {
            n,
            trigger,
            started: Instant::now(),
            budget,
            fut: Box::pin(async move {
                tokio::time::timeout(budget, engine::converge_keeping(&h, &d, 3, DETAIL)).await
            }),
        });
    }

    fn on_pass_done(&mut self, result: PassOutput) {
        let Some(p) = self.running.take() else { return };
        let (n, trigger) = (p.n, p.trigger);
        self.budget = if result.is_err() {
            next_budget(p.budget, self.timeout)
        } else {
            self.timeout
        };
        let took = p.started.elapsed();
        let m = metrics::get();
        let pass = match result {
            Ok(Ok(outcome)) => {
                m.pass_done(trigger.label(), took, &self.desired, &outcome);
                log_pass(n, trigger, &outcome, took);
                self.learn(&outcome);
                if outcome.converged()
                    && let Some(k) = self.kube.as_mut()
                {
                    k.publish(&outcome.observed);
                }
                self.pass_status(&outcome)
            }
            Ok(Err(e)) => {
                m.pass_ended(trigger.label(), metrics::PassResult::Error, took);
                error!(pass = n, "pass #{n} ({trigger}) failed: {e}");
                self.sd.notifier.status(&format!("error: {e}"));
                self.sd.last_status = format!("error: {e}");
                PassResult {
                    error: true,
                    ..PassResult::default()
                }
            }
            Err(_) => {
                m.pass_ended(trigger.label(), metrics::PassResult::Timeout, took);
                error!(
                    pass = n,
                    "pass #{n} ({trigger}) timed out after {} ms; what it applied stays, the retry continues (within {} ms)",
                    p.budget.as_millis(),
                    self.budget.as_millis()
                );
                let status = "error: converge pass timed out".to_string();
                self.sd.notifier.status(&status);
                self.sd.last_status = status;
                PassResult {
                    error: true,
                    ..PassResult::default()
                }
            }
        };
        for action in self.rec.on_pass_done(Instant::now(), pass) {
            match action {
                Notify::Ready => {
                    info!("ready after pass #{n}");
                    self.sd.notifier.must("READY=1");
                    m.set_ready(true);
                }
            }
        }
    }

    /// What a pass's observation teaches the event sources: the ifindexes
    /// and underlays (found by address) to follow, our nexthop ids, the NAT
    /// flavour, the written files' directories (now created).
    fn learn(&mut self, outcome: &Outcome) {
        let resolved = self.desired.resolve_underlays(&outcome.observed);
        self.interest.learn_underlays(&resolved);
        self.interest.learn_links(&outcome.observed.links);
        if let Some(w) = &self.src.nm {
            w.set_underlays(nm::resolved_underlays(&self.desired, &resolved));
        }
        if self.src.files.arm() {
            // unwatched until now: look once more
            self.rec.on_event(Instant::now());
        }
        self.interest.learn_nexthops(&outcome.observed.nexthops);
        self.src.nat.learn(&outcome.observed.nat);
    }

    /// STATUS= after a pass, and what the reconciler needs to know of it.
    fn pass_status(&mut self, outcome: &Outcome) -> PassResult {
        if outcome.converged() {
            // the explanation of a vanished device is history now
            if self
                .note
                .as_deref()
                .is_some_and(|n| n.contains("NetworkManager"))
            {
                self.note = None;
            }
        }
        self.base_status = status_line(&self.desired, outcome, None);
        self.refresh_status();
        let waiting = outcome
            .remaining
            .blocked
            .iter()
            .filter(|b| waits_for_flannel(&self.desired, b))
            .count();
        PassResult {
            remaining: outcome.remaining.changes.len(),
            blocked: outcome.remaining.blocked.len(),
            waiting_for_dependents: waiting,
            error: false,
        }
    }

    async fn on_netlink(&mut self, msg: Option<Monitored>) -> Result<(), DaemonError> {
        match msg {
            Some((m, _)) => match m.payload {
                NetlinkPayload::InnerMessage(inner)
                    if !self.ignore_netlink && self.interest.relevant(&inner) =>
                {
                    self.relevant();
                    tracing::trace!("relevant: {}", Interest::describe(&inner));
                    self.rec.on_event(Instant::now());
                }
                NetlinkPayload::Overrun(_) => {
                    warn!(
                        "netlink notification overrun (ENOBUFS): discarding cached view, full resync"
                    );
                    metrics::get().overrun("route");
                    self.rec.on_urgent(Instant::now());
                }
                _ => {}
            },
            None => {
                warn!("netlink notification socket closed: resubscribing and resyncing");
                tokio::time::sleep(Duration::from_millis(100)).await;
                self.src.monitor = monitor_connection()?;
                self.rec.on_urgent(Instant::now());
            }
        }
        Ok(())
    }

    async fn on_nexthop(&mut self, msg: Option<NexthopMonitored>) {
        match msg {
            Some((m, _)) => match m.payload {
                NetlinkPayload::InnerMessage(inner)
                    if !self.ignore_netlink && self.interest.nexthop(inner.message()) =>
                {
                    self.relevant();
                    self.rec.on_event(Instant::now());
                }
                NetlinkPayload::Overrun(_) => {
                    warn!("nexthop notification overrun (ENOBUFS): full resync");
                    metrics::get().overrun("nexthop");
                    self.rec.on_urgent(Instant::now());
                }
                _ => {}
            },
            None => {
                warn!("nexthop notification socket closed: resubscribing and resyncing");
                tokio::time::sleep(Duration::from_millis(100)).await;
                self.src.nexthop = nexthop_monitor();
                self.rec.on_urgent(Instant::now());
            }
        }
    }

    fn on_nat(&mut self, ev: NatEvent) {
        match ev {
            NatEvent::Changed if !self.ignore_netlink => {
                debug!("NAT rules changed: converging");
                self.relevant();
                self.rec.on_event(Instant::now());
            }
            NatEvent::Changed => {}
            NatEvent::Overrun => {
                warn!("nf_tables notification overrun (ENOBUFS): full resync");
                metrics::get().overrun("nftables");
                self.rec.on_urgent(Instant::now());
            }
        }
    }

    fn on_hint(&mut self, hint: Option<Hint>) {
        match hint {
            Some(Hint::Activated(dev)) => {
                info!("NetworkManager activated {dev}: converging now");
                self.rec.on_urgent(Instant::now());
            }
            Some(Hint::Deactivated(dev)) => {
                info!("underlay {dev} deactivated by NetworkManager");
                self.note = Some(format!("underlay {dev} deactivated by NetworkManager"));
                self.rec.on_event(Instant::now());
            }
            Some(Hint::NmUp) => {
                info!("NetworkManager appeared on the bus");
                self.rec.on_event(Instant::now());
            }
            Some(Hint::NmDown) => {
                info!("NetworkManager left the bus; continuing with netlink alone")
            }
            None => self.src.nm = None,
        }
    }

    /// SIGTERM/SIGINT: abandon the pass in flight (nothing is rolled back,
    /// nothing removed), say STOPPING=1, exit.
    async fn stop(mut self) {
        if let Some(p) = self.running.take() {
            // Nothing is rolled back: every write is atomic on its own (NAT
            // transactions, lease file renames, netlink requests).
            info!("stopping during pass #{}: abandoning it", p.n);
        }
        info!(
            "stopping after {} pass(es), {} relevant event(s); kernel state and NAT rules stay in place",
            self.rec.passes(),
            self.relevant_events
        );
        let notifier = &mut self.sd.notifier;
        notifier.must("STOPPING=1");
        let end = Instant::now() + STOP_NOTIFY_GRACE;
        while notifier.pending() && Instant::now() < end {
            tokio::time::sleep(notifier.retry_delay().min(Duration::from_millis(50))).await;
            notifier.retry();
        }
        if notifier.pending() {
            warn!(
                "systemd is not reading notifications; exiting without sending: {:?}",
                notifier.queued()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LeaseSpec;

    #[test]
    fn pass_timeout_is_half_the_watchdog_within_bounds() {
        let s = Duration::from_secs;
        assert_eq!(pass_timeout(None), PASS_TIMEOUT);
        assert_eq!(pass_timeout(Some(s(30))), s(15));
        assert_eq!(pass_timeout(Some(s(4))), s(2));
        assert_eq!(pass_timeout(Some(Duration::from_millis(200))), s(1));
        assert_eq!(pass_timeout(Some(s(600))), PASS_TIMEOUT);
        assert_eq!(ping_interval(s(2)), Duration::from_millis(500));
        // after timeouts: 1, 2, 4, … up to 30 s
        assert_eq!(next_budget(s(1), s(1)), s(2));
        assert_eq!(next_budget(s(16), s(1)), PASS_TIMEOUT);
        assert_eq!(next_budget(PASS_TIMEOUT, s(15)), PASS_TIMEOUT);
    }

    fn lease(mode: LeaseMode) -> Desired {
        Desired {
            lease: Some(LeaseSpec {
                mode,
                ipv4: None,
                ipv6: None,
                mtu: None,
                ipmasq: false,
                path: "/run/flannel/subnet.env".into(),
                state_dir: "/var/lib/netconverge".into(),
            }),
            ..Desired::default()
        }
    }

    #[test]
    fn only_a_guard_mode_lease_is_waited_for_without_holding_readiness() {
        let lease_blocked = Blocked::new(
            crate::plan::kind::ObjectKind::Lease,
            "lease /run/flannel/subnet.env",
            "no lease file and no backup yet",
        );
        let vxlan_blocked = Blocked::new(
            crate::plan::kind::ObjectKind::Device,
            "vxlan flannel.1",
            "underlay eth0 absent",
        );
        let guard = lease(LeaseMode::Preserve);
        assert!(waits_for_flannel(&guard, &lease_blocked));
        assert!(!waits_for_flannel(&guard, &vxlan_blocked));
        // in write mode the file is ours: READY waits for it
        assert!(!waits_for_flannel(&lease(LeaseMode::Write), &lease_blocked));
        let outcome = Outcome {
            remaining: crate::plan::Plan {
                changes: vec![],
                blocked: vec![lease_blocked],
                notes: vec![],
            },
            ..Outcome::default()
        };
        let status = status_line(&guard, &outcome, None);
        assert!(
            status.starts_with("converged: 0 device(s), 0 peer(s), lease /run/flannel/subnet.env waiting for flannel: no lease file"),
            "{status}"
        );
    }
}
