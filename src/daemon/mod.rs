//! `netconverge run`: keep the node converged for as long as it runs.
//!
//! Invariant: the kernel is the source of truth. Every pass is a full
//! observe → plan → apply → verify through [`crate::engine`]; events
//! (netlink notifications, NetworkManager hints, timers, signals) only decide
//! *when* a pass runs, through the sans-IO [`reconciler::Reconciler`]. On
//! stop nothing is removed or flushed.

pub mod filter;
pub mod leasewatch;
pub mod nm;
pub mod reconciler;

use std::time::{Duration, Instant};

use futures::StreamExt;
use netlink_packet_core::NetlinkPayload;
use netlink_sys::AsyncSocket;
use rtnetlink::MulticastGroup;
use sd_notify::NotifyState;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{debug, error, info, warn};

use crate::config::ConfigErrors;
use crate::engine::{self, Outcome};
use crate::model::Desired;
use filter::Interest;
use reconciler::{Notify, PassResult, Reconciler, Trigger};

/// A pass that takes longer than this is abandoned (and retried), so a
/// wedged request can never stall the loop or its watchdog forever.
const PASS_TIMEOUT: Duration = Duration::from_secs(30);
/// Default receive buffer of the notification socket.
const MONITOR_RCVBUF: usize = 8 << 20;

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

/// Re-reads and validates the config file (SIGHUP).
pub type Loader = Box<dyn Fn() -> Result<Desired, ConfigErrors> + Send>;

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        debug!("sd_notify failed: {e}");
    }
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
    let size = std::env::var("NETCONVERGE_MONITOR_RCVBUF")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(MONITOR_RCVBUF);
    if let Err(e) = conn.socket_mut().socket_mut().set_rx_buf_sz(size) {
        warn!("cannot size the netlink notification buffer to {size} bytes: {e}");
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
    let mut s = if let Some(b) = outcome.remaining.blocked.first() {
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
        if desired.lease.is_some() {
            parts.push("lease ok".into());
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

/// Run until SIGTERM/SIGINT. `nm` follows NetworkManager (D-Bus) when that
/// integration is enabled; a reload starts, retargets or stops it.
pub async fn run(
    mut desired: Desired,
    loader: Loader,
    mut nm: Option<nm::Watcher>,
) -> Result<(), DaemonError> {
    // Subscribe before the first dump, so no change between dump and
    // subscription can be missed.
    let mut monitor = monitor_connection()?;
    let mut nexthop_events = nexthop_monitor();
    let handle = crate::netlink::connect().map_err(DaemonError::Connect)?;

    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signal)?;
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;

    let mut wd_usec = 0u64;
    let watchdog = sd_notify::watchdog_enabled(false, &mut wd_usec)
        .then(|| Duration::from_micros(wd_usec / 2));
    let mut wd_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    wd_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let mut interest = Interest::new(&desired);
    let lease_path = |d: &Desired| d.lease.as_ref().map(|l| l.path.clone());
    let mut lease_watch = leasewatch::LeaseWatch::new(lease_path(&desired).as_deref());
    let mut rec = Reconciler::new(&desired.daemon, Instant::now());
    let mut note: Option<String> = None;
    let mut relevant_events: u64 = 0;
    let mut last_status = String::new();
    let ignore_netlink = std::env::var_os(TEST_IGNORE_NETLINK_ENV).is_some();
    if ignore_netlink {
        warn!("{TEST_IGNORE_NETLINK_ENV} is set: ignoring every netlink notification (test-only)");
    }
    info!(
        "netconverge {} running: {} device(s), {} peer(s)",
        env!("CARGO_PKG_VERSION"),
        desired.vxlans.len(),
        desired.peers.len()
    );
    notify(&[NotifyState::Status("starting: first converge pass")]);

    loop {
        let deadline = tokio::time::Instant::from_std(rec.poll_timeout());
        tokio::select! {
            biased;
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                let mono = NotifyState::monotonic_usec_now().ok();
                let mut states = vec![NotifyState::Reloading];
                states.extend(mono);
                notify(&states);
                match loader() {
                    Ok(new) => {
                        info!("reload: configuration valid, converging to it");
                        interest = Interest::new(&new);
                        lease_watch = leasewatch::LeaseWatch::new(lease_path(&new).as_deref());
                        rec.reconfigure(&new.daemon, Instant::now());
                        nm = nm::reconfigure(nm.take(), &new);
                        desired = new;
                        note = None;
                    }
                    Err(errors) => {
                        for e in &errors.0 {
                            error!("reload rejected: {e}");
                        }
                        let first = errors.0.first().map(|e| e.to_string()).unwrap_or_default();
                        let first = first.lines().next().unwrap_or_default().to_string();
                        note = Some(format!("reload failed ({} error(s)), running previous config: {first}", errors.0.len()));
                        notify(&[NotifyState::Ready, NotifyState::Status(note.as_deref().unwrap_or_default())]);
                    }
                }
            }
            _ = wd_tick.tick(), if watchdog.is_some() => {
                // Sent from the loop itself: a wedged loop stops pinging and
                // systemd restarts us.
                notify(&[NotifyState::Watchdog]);
            }
            msg = monitor.next() => match msg {
                Some((m, _)) => match m.payload {
                    NetlinkPayload::InnerMessage(inner) if !ignore_netlink && interest.relevant(&inner) => {
                        relevant_events += 1;
                        tracing::trace!("relevant: {}", Interest::describe(&inner));
                        rec.on_event(Instant::now());
                    }
                    NetlinkPayload::Overrun(_) => {
                        warn!("netlink notification overrun (ENOBUFS): discarding cached view, full resync");
                        rec.on_urgent(Instant::now());
                    }
                    _ => {}
                },
                None => {
                    warn!("netlink notification socket closed: resubscribing and resyncing");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    monitor = monitor_connection()?;
                    rec.on_urgent(Instant::now());
                }
            },
            msg = async { match nexthop_events.as_mut() { Some(m) => m.next().await, None => std::future::pending().await } } => match msg {
                Some((m, _)) => match m.payload {
                    NetlinkPayload::InnerMessage(inner) if !ignore_netlink && interest.nexthop(inner.message()) => {
                        relevant_events += 1;
                        rec.on_event(Instant::now());
                    }
                    NetlinkPayload::Overrun(_) => {
                        warn!("nexthop notification overrun (ENOBUFS): full resync");
                        rec.on_urgent(Instant::now());
                    }
                    _ => {}
                },
                None => {
                    warn!("nexthop notification socket closed: resubscribing and resyncing");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    nexthop_events = nexthop_monitor();
                    rec.on_urgent(Instant::now());
                }
            },
            () = lease_watch.changed() => {
                debug!("lease file changed on disk: converging");
                relevant_events += 1;
                rec.on_event(Instant::now());
            }
            hint = async { match nm.as_mut() { Some(w) => w.recv().await, None => std::future::pending().await } } => match hint {
                Some(Hint::Activated(dev)) => {
                    info!("NetworkManager activated {dev}: converging now");
                    rec.on_urgent(Instant::now());
                }
                Some(Hint::Deactivated(dev)) => {
                    info!("underlay {dev} deactivated by NetworkManager");
                    note = Some(format!("underlay {dev} deactivated by NetworkManager"));
                    rec.on_event(Instant::now());
                }
                Some(Hint::NmUp) => { info!("NetworkManager appeared on the bus"); rec.on_event(Instant::now()); }
                Some(Hint::NmDown) => info!("NetworkManager left the bus; continuing with netlink alone"),
                None => nm = None,
            },
            _ = tokio::time::sleep_until(deadline) => {
                let Some(trigger) = rec.poll(Instant::now()) else { continue };
                let start = Instant::now();
                let n = rec.passes() + 1;
                debug!(pass = n, %trigger, "pass #{n} starting");
                let result = tokio::time::timeout(PASS_TIMEOUT, engine::converge_keeping(&handle, &desired, 3, DETAIL)).await;
                let took = start.elapsed();
                let pass = match result {
                    Ok(Ok(outcome)) => {
                        log_pass(n, trigger, &outcome, took);
                        interest.learn_links(&outcome.observed.links);
                        lease_watch.arm();
                        interest.learn_nexthops(&outcome.observed.nexthops);
                        if outcome.converged() {
                            // the explanation of a vanished device is history now
                            if note.as_deref().is_some_and(|n| n.contains("NetworkManager")) {
                                note = None;
                            }
                        }
                        let status = status_line(&desired, &outcome, note.as_deref());
                        // only changes: STATUS= is a display, not a heartbeat
                        if status != last_status {
                            notify(&[NotifyState::Status(&status)]);
                            last_status = status;
                        }
                        PassResult {
                            remaining: outcome.remaining.changes.len(),
                            blocked: outcome.remaining.blocked.len(),
                            error: false,
                        }
                    }
                    Ok(Err(e)) => {
                        error!(pass = n, "pass #{n} ({trigger}) failed: {e}");
                        notify(&[NotifyState::Status(&format!("error: {e}"))]);
                        PassResult { error: true, ..PassResult::default() }
                    }
                    Err(_) => {
                        error!(pass = n, "pass #{n} ({trigger}) timed out after {} s", PASS_TIMEOUT.as_secs());
                        notify(&[NotifyState::Status("error: converge pass timed out")]);
                        PassResult { error: true, ..PassResult::default() }
                    }
                };
                for action in rec.on_pass_done(Instant::now(), pass) {
                    match action {
                        Notify::Ready => {
                            info!("ready after pass #{n}");
                            notify(&[NotifyState::Ready]);
                        }
                    }
                }
            }
        }
    }
    info!(
        "stopping after {} pass(es), {relevant_events} relevant event(s); kernel state and NAT rules stay in place",
        rec.passes()
    );
    notify(&[NotifyState::Stopping]);
    Ok(())
}
