//! `netconverge run`: keep the node converged for as long as it runs.
//!
//! Invariant: the kernel is the source of truth. Every pass is a full
//! observe → plan → apply → verify through [`crate::engine`]; events
//! (netlink and nf_tables notifications, NetworkManager hints, timers,
//! signals) only decide *when* a pass runs, through the sans-IO
//! [`reconciler::Reconciler`]. On stop nothing is removed or flushed.
//!
//! Invariant: the loop never waits on anything but its `select!`. A pass is
//! a future polled by that loop (so signals, watchdog pings and events are
//! served while it runs), bounded by a timeout derived from the watchdog
//! interval; systemd notifications never block ([`notify`]).

pub mod filter;
pub mod leasewatch;
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
use crate::model::{Desired, LeaseMode};
use crate::plan::Blocked;
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
    mut nm: Option<nm::Watcher>,
) -> Result<(), DaemonError> {
    // Subscribe before the first dump, so no change between dump and
    // subscription can be missed.
    let mut monitor = monitor_connection()?;
    let mut nexthop_events = nexthop_monitor();
    let mut nat_watch = NatWatch::new(desired.nat.as_ref(), monitor_rcvbuf());
    let handle = crate::netlink::connect().map_err(DaemonError::Connect)?;

    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signal)?;
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;

    let mut notifier = Notifier::from_env();
    let mut notify_retry_at: Option<tokio::time::Instant> = None;
    let watchdog = notify::watchdog_interval();
    let timeout = pass_timeout(watchdog);
    let mut budget = timeout;
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

    let mut desired = Arc::new(desired);
    let mut interest = Interest::new(&desired);
    let lease_path = |d: &Desired| d.lease.as_ref().map(|l| l.path.clone());
    let mut lease_watch = leasewatch::LeaseWatch::new(lease_path(&desired).as_deref());
    let mut rec = Reconciler::new(&desired.daemon, Instant::now());
    let mut note: Option<String> = None;
    let mut relevant_events: u64 = 0;
    let mut last_status = String::new();
    let mut running: Option<Running> = None;
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
    notifier.status("starting: first converge pass");

    loop {
        let deadline = tokio::time::Instant::from_std(rec.poll_timeout());
        // A retry deadline that survives loop turns: a stream of events
        // must not keep postponing it.
        if !notifier.pending() {
            notify_retry_at = None;
        } else if notify_retry_at.is_none() {
            notify_retry_at = Some(tokio::time::Instant::now() + notifier.retry_delay());
        }
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        tokio::select! {
            biased;
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = wd_tick.tick(), if watchdog.is_some() => {
                // Sent from the loop itself, which is polling the pass: a
                // wedged loop stops pinging and systemd restarts us. A pass
                // past its timeout (which should have fired) is no proof of
                // life either.
                let alive = running
                    .as_ref()
                    .is_none_or(|p| p.started.elapsed() < p.budget + ping.unwrap_or_default());
                if alive {
                    notifier.watchdog();
                } else {
                    warn!("pass overran its timeout: not pinging the watchdog");
                }
            }
            _ = tokio::time::sleep_until(notify_retry_at.unwrap_or(far)), if notify_retry_at.is_some() => {
                notify_retry_at = None;
                notifier.retry();
            }
            _ = hup.recv() => {
                let mut msg = "RELOADING=1".to_string();
                if let Ok(mono) = NotifyState::monotonic_usec_now() {
                    msg = format!("{msg}\n{mono}");
                }
                notifier.must(&msg);
                match loader() {
                    Ok(new) => {
                        info!("reload: configuration valid, converging to it");
                        if let Some(p) = running.take() {
                            // its result would describe the old configuration
                            info!("reload: abandoning pass #{} in flight", p.n);
                        }
                        interest = Interest::new(&new);
                        lease_watch = leasewatch::LeaseWatch::new(lease_path(&new).as_deref());
                        if new.nat != desired.nat {
                            nat_watch = NatWatch::new(new.nat.as_ref(), monitor_rcvbuf());
                        }
                        rec.reconfigure(&new.daemon, Instant::now());
                        nm = nm::reconfigure(nm.take(), &new);
                        desired = Arc::new(new);
                        note = None;
                    }
                    Err(errors) => {
                        for e in &errors.0 {
                            error!("reload rejected: {e}");
                        }
                        let first = errors.0.first().map(|e| e.to_string()).unwrap_or_default();
                        let first = first.lines().next().unwrap_or_default().to_string();
                        let n = format!("reload failed ({} error(s)), running previous config: {first}", errors.0.len());
                        notifier.must("READY=1");
                        notifier.status(&n);
                        last_status = n.clone();
                        note = Some(n);
                    }
                }
            }
            result = async {
                match running.as_mut() {
                    Some(p) => (&mut p.fut).await,
                    None => std::future::pending().await,
                }
            } => {
                let Some(p) = running.take() else { continue };
                let (n, trigger) = (p.n, p.trigger);
                budget = if result.is_err() {
                    next_budget(p.budget, timeout)
                } else {
                    timeout
                };
                let took = p.started.elapsed();
                let pass = match result {
                    Ok(Ok(outcome)) => {
                        log_pass(n, trigger, &outcome, took);
                        interest.learn_links(&outcome.observed.links);
                        if lease_watch.arm() {
                            // unwatched until now: look once more
                            rec.on_event(Instant::now());
                        }
                        interest.learn_nexthops(&outcome.observed.nexthops);
                        nat_watch.learn(&outcome.observed.nat);
                        if outcome.converged() {
                            // the explanation of a vanished device is history now
                            if note.as_deref().is_some_and(|n| n.contains("NetworkManager")) {
                                note = None;
                            }
                        }
                        let status = status_line(&desired, &outcome, note.as_deref());
                        // only changes: STATUS= is a display, not a heartbeat
                        if status != last_status {
                            notifier.status(&status);
                            last_status = status;
                        }
                        let waiting = outcome
                            .remaining
                            .blocked
                            .iter()
                            .filter(|b| waits_for_flannel(&desired, b))
                            .count();
                        PassResult {
                            remaining: outcome.remaining.changes.len(),
                            blocked: outcome.remaining.blocked.len(),
                            waiting_for_dependents: waiting,
                            error: false,
                        }
                    }
                    Ok(Err(e)) => {
                        error!(pass = n, "pass #{n} ({trigger}) failed: {e}");
                        let status = format!("error: {e}");
                        notifier.status(&status);
                        last_status = status;
                        PassResult { error: true, ..PassResult::default() }
                    }
                    Err(_) => {
                        error!(
                            pass = n,
                            "pass #{n} ({trigger}) timed out after {} ms; what it applied stays, the retry continues (within {} ms)",
                            p.budget.as_millis(),
                            budget.as_millis()
                        );
                        let status = "error: converge pass timed out".to_string();
                        notifier.status(&status);
                        last_status = status;
                        PassResult { error: true, ..PassResult::default() }
                    }
                };
                for action in rec.on_pass_done(Instant::now(), pass) {
                    match action {
                        Notify::Ready => {
                            info!("ready after pass #{n}");
                            notifier.must("READY=1");
                        }
                    }
                }
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
            ev = nat_watch.changed() => match ev {
                NatEvent::Changed if !ignore_netlink => {
                    debug!("NAT rules changed: converging");
                    relevant_events += 1;
                    rec.on_event(Instant::now());
                }
                NatEvent::Changed => {}
                NatEvent::Overrun => {
                    warn!("nf_tables notification overrun (ENOBUFS): full resync");
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
            _ = tokio::time::sleep_until(deadline), if running.is_none() => {
                let Some(trigger) = rec.poll(Instant::now()) else { continue };
                let n = rec.passes() + 1;
                debug!(pass = n, %trigger, "pass #{n} starting");
                let (h, d) = (handle.clone(), desired.clone());
                running = Some(Running {
                    n,
                    trigger,
                    started: Instant::now(),
                    budget,
                    fut: Box::pin(async move {
                        tokio::time::timeout(budget, engine::converge_keeping(&h, &d, 3, DETAIL)).await
                    }),
                });
            }
        }
    }
    if let Some(p) = running.take() {
        // Nothing is rolled back: every write is atomic on its own (NAT
        // transactions, lease file renames, netlink requests).
        info!("stopping during pass #{}: abandoning it", p.n);
    }
    info!(
        "stopping after {} pass(es), {relevant_events} relevant event(s); kernel state and NAT rules stay in place",
        rec.passes()
    );
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
    Ok(())
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
        let lease_blocked = Blocked {
            object: "lease /run/flannel/subnet.env".into(),
            reason: "no lease file and no backup yet".into(),
        };
        let vxlan_blocked = Blocked {
            object: "vxlan flannel.1".into(),
            reason: "underlay eth0 absent".into(),
        };
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
