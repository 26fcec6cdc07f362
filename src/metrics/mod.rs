//! The daemon's Prometheus metrics (`[daemon] metrics = "127.0.0.1:9474"`):
//! one registry for the process, fed by the daemon's loop and by the event
//! sources, served as OpenMetrics text by [`http`].
//!
//! Invariant: recording never blocks and never fails — every metric is an
//! atomic (or a short, uncontended lock inside `prometheus-client`), and
//! nothing here does I/O; the daemon's behaviour is the same with the
//! endpoint on or off (the values are always kept, only serving is
//! optional). Every label value comes from a fixed set (triggers, results,
//! [`ObjectKind`]s, socket and source names), so the number of series is
//! bounded whatever the kernel or the fleet does; every series of those
//! sets exists from the start (at 0), so `rate()` and `absent()` work from
//! the first scrape.
//!
//! The registry is process-wide ([`get`]): one daemon runs per process
//! (and per network namespace, by its lock), and the owners of event
//! sources (NetworkManager, a fleet source) report their connection state
//! with [`Metrics::set_source`] from wherever they run, without a handle
//! being threaded through.

pub mod http;

use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::engine::Outcome;
use crate::model::Desired;
use crate::plan::kind::{self, KindCounts, ObjectKind};

/// How a pass ended (`result` label of `netconverge_passes_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassResult {
    /// Everything in sync, nothing blocked.
    Converged,
    /// Everything possible applied; something waits (an absent underlay, a
    /// foreign object in the way).
    Blocked,
    /// Changes remain that the pass could not make (apply failures).
    Failed,
    /// The pass could not observe the system (or record its state).
    Error,
    /// The pass ran out of time and was abandoned.
    Timeout,
    /// A reload replaced the configuration while the pass ran: its result
    /// was dropped unseen (what it applied stays; the reload's pass
    /// verifies it).
    Abandoned,
}

impl PassResult {
    pub const ALL: [PassResult; 6] = [
        PassResult::Converged,
        PassResult::Blocked,
        PassResult::Failed,
        PassResult::Error,
        PassResult::Timeout,
        PassResult::Abandoned,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PassResult::Converged => "converged",
            PassResult::Blocked => "blocked",
            PassResult::Failed => "failed",
            PassResult::Error => "error",
            PassResult::Timeout => "timeout",
            PassResult::Abandoned => "abandoned",
        }
    }

    /// The result of a pass that produced an outcome.
    pub fn of(outcome: &Outcome) -> PassResult {
        if !outcome.remaining.changes.is_empty() {
            PassResult::Failed
        } else if !outcome.remaining.blocked.is_empty() {
            PassResult::Blocked
        } else {
            PassResult::Converged
        }
    }
}

/// The `trigger` label values: the daemon's reasons for a pass
/// (`daemon::reconciler::Trigger::label`).
pub const TRIGGERS: [&str; 6] = ["startup", "events", "urgent", "retry", "resync", "reload"];

/// Notification sockets whose overruns are counted.
pub const SOCKETS: [&str; 3] = ["route", "nexthop", "nftables"];

/// The state of an event source (`netconverge_source_state`): exactly one
/// of these is 1 for each source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceState {
    /// Connected and following (NetworkManager on the bus, a fleet API
    /// watched).
    Connected,
    /// Configured, but not connected now (bus unreachable, NetworkManager
    /// not running, API unreachable): the daemon follows the kernel alone
    /// and retries in the background.
    Disconnected,
    /// Nothing to connect to: the data is in the config file (a `[fleet]`
    /// table), read at start and on reload.
    Static,
    /// Turned off in the config.
    Off,
}

impl SourceState {
    pub const ALL: [SourceState; 4] = [
        SourceState::Connected,
        SourceState::Disconnected,
        SourceState::Static,
        SourceState::Off,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SourceState::Connected => "connected",
            SourceState::Disconnected => "disconnected",
            SourceState::Static => "static",
            SourceState::Off => "off",
        }
    }
}

/// The NetworkManager source's name.
pub const SOURCE_NM: &str = "networkmanager";
/// The fleet source's name (a `[fleet]` in the file: [`SourceState::Static`]).
pub const SOURCE_FLEET: &str = "fleet";

/// The states of `netconverge_objects`.
const OBJECT_STATES: [&str; 3] = ["in_sync", "blocked", "failed"];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PassLabels {
    trigger: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ObjectLabels {
    kind: &'static str,
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SocketLabel {
    socket: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

/// Every metric of the daemon, and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    passes: Family<PassLabels, Counter>,
    pass_duration: Histogram,
    objects: Family<ObjectLabels, Gauge>,
    changes: Family<KindLabel, Counter>,
    repairs: Family<KindLabel, Counter>,
    converged: Gauge,
    ready: Gauge,
    last_converged: Gauge<f64, AtomicU64>,
    last_pass: Gauge<f64, AtomicU64>,
    events: Counter,
    overruns: Family<SocketLabel, Counter>,
    sources: Family<SourceLabels, Gauge>,
    scrapes: Counter,
    /// Since the last start or reload, some pass ended converged: later
    /// changes are repairs of drift, earlier ones the initial convergence.
    converged_once: std::sync::atomic::AtomicBool,
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Metrics {
    /// A fresh registry (the daemon uses [`get`]; tests make their own).
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("netconverge");
        let m = Metrics {
            registry: Registry::default(),
            passes: Family::default(),
            // 1 ms … ~33 s: a no-op pass on a small node to a pass at the
            // largest timeout (30 s).
            pass_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            objects: Family::default(),
            changes: Family::default(),
            repairs: Family::default(),
            converged: Gauge::default(),
            ready: Gauge::default(),
            last_converged: Gauge::default(),
            last_pass: Gauge::default(),
            events: Counter::default(),
            overruns: Family::default(),
            sources: Family::default(),
            scrapes: Counter::default(),
            converged_once: false.into(),
        };
        registry.register(
            "build",
            "netconverge's version",
            Info::new(VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        registry.register(
            "passes",
            "Converge passes that ended, by why they ran and how they ended (converged, blocked, failed, error, timeout, abandoned)",
            m.passes.clone(),
        );
        registry.register_with_unit(
            "pass_duration",
            "Duration of converge passes (observe, plan, apply, verify), timed-out ones included",
            Unit::Seconds,
            m.pass_duration.clone(),
        );
        registry.register(
            "objects",
            "Declared objects after the last completed pass, by kind and state: in_sync, blocked (cannot be converged now), failed (changes left after the pass; stale objects of ours still present count here too)",
            m.objects.clone(),
        );
        registry.register(
            "changes",
            "Changes passes set out to make, by object kind (initial convergence, reloads and repairs)",
            m.changes.clone(),
        );
        registry.register(
            "repairs",
            "Drift repairs: changes made after the declaration was once converged (since start or the last reload), by object kind",
            m.repairs.clone(),
        );
        registry.register(
            "converged",
            "1 when the last pass ended with everything in sync and nothing blocked",
            m.converged.clone(),
        );
        registry.register(
            "ready",
            "1 once READY=1 was sent to systemd (readiness policy met)",
            m.ready.clone(),
        );
        registry.register_with_unit(
            "last_converged_timestamp",
            "Unix time at which a pass last ended converged (0: never)",
            Unit::Seconds,
            m.last_converged.clone(),
        );
        registry.register_with_unit(
            "last_pass_timestamp",
            "Unix time at which the last pass ended (0: none yet)",
            Unit::Seconds,
            m.last_pass.clone(),
        );
        registry.register(
            "relevant_events",
            "Kernel, nf_tables and file events that concerned the declared state",
            m.events.clone(),
        );
        registry.register(
            "notification_overruns",
            "Notification socket overruns (ENOBUFS: events were lost; each is followed by a full resync), by socket",
            m.overruns.clone(),
        );
        registry.register(
            "source_state",
            "State of each event source (networkmanager, fleet, ...): 1 for its current state (connected, disconnected, static, off)",
            m.sources.clone(),
        );
        registry.register("scrapes", "Requests for /metrics served", m.scrapes.clone());
        for trigger in TRIGGERS {
            for result in PassResult::ALL {
                let _ = m.passes.get_or_create(&PassLabels {
                    trigger,
                    result: result.name(),
                });
            }
        }
        for kind in ObjectKind::ALL {
            let kind = kind.name();
            for state in OBJECT_STATES {
                let _ = m.objects.get_or_create(&ObjectLabels { kind, state });
            }
            let _ = m.changes.get_or_create(&KindLabel { kind });
            let _ = m.repairs.get_or_create(&KindLabel { kind });
        }
        for socket in SOCKETS {
            let _ = m.overruns.get_or_create(&SocketLabel { socket });
        }
        Metrics { registry, ..m }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(8 << 10);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// A pass that produced an outcome for `desired`.
    pub fn pass_done(&self, trigger: &'static str, took: Duration, desired: &Desired, o: &Outcome) {
        let result = PassResult::of(o);
        self.pass_ended(trigger, result, took);
        let converged_once = self
            .converged_once
            .load(std::sync::atomic::Ordering::Relaxed);
        for (kind, n) in o.initial_by_kind.iter() {
            let label = KindLabel { kind: kind.name() };
            let n = n as u64;
            self.changes.get_or_create(&label).inc_by(n);
            if converged_once {
                self.repairs.get_or_create(&label).inc_by(n);
            }
        }
        self.set_objects(&object_states(desired, o));
        if result == PassResult::Converged {
            self.last_converged.set(unix_now());
            self.converged_once
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A pass that ended with `result`, with or without an outcome. An
    /// abandoned pass changes no gauge: it said nothing about the state.
    pub fn pass_ended(&self, trigger: &'static str, result: PassResult, took: Duration) {
        self.passes
            .get_or_create(&PassLabels {
                trigger,
                result: result.name(),
            })
            .inc();
        if result == PassResult::Abandoned {
            return;
        }
        self.pass_duration.observe(took.as_secs_f64());
        self.converged
            .set(i64::from(result == PassResult::Converged));
        self.last_pass.set(unix_now());
    }

    fn set_objects(&self, s: &ObjectStates) {
        for (state, counts) in [
            ("in_sync", &s.in_sync),
            ("blocked", &s.blocked),
            ("failed", &s.failed),
        ] {
            for (kind, n) in counts.iter() {
                self.objects
                    .get_or_create(&ObjectLabels {
                        kind: kind.name(),
                        state,
                    })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
    }

    /// A new declaration (reload): its first convergence is no repair.
    pub fn reloaded(&self) {
        self.converged_once
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    pub fn relevant_event(&self) {
        self.events.inc();
    }

    /// An overrun of `socket` (one of [`SOCKETS`]).
    pub fn overrun(&self, socket: &'static str) {
        self.overruns.get_or_create(&SocketLabel { socket }).inc();
    }

    /// The state of event source `source` (e.g. [`SOURCE_NM`],
    /// [`SOURCE_FLEET`], or a new source's own name): its `state` series
    /// becomes 1, the others 0. For the owner of the source, from any task
    /// or thread; cheap enough to call on every transition.
    pub fn set_source(&self, source: &str, state: SourceState) {
        for s in SourceState::ALL {
            self.sources
                .get_or_create(&SourceLabels {
                    source: source.to_string(),
                    state: s.name(),
                })
                .set(i64::from(s == state));
        }
    }

    pub(crate) fn scraped(&self) {
        self.scrapes.inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Declared objects by state after a pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectStates {
    pub in_sync: KindCounts,
    pub blocked: KindCounts,
    pub failed: KindCounts,
}

/// What `o` (the pass's final plan and observation) says of `desired`'s
/// objects. `failed`: the changes left (removals of stale objects of ours
/// included); `blocked`: what the blocked entries stand for; `in_sync`: the
/// declared objects of each kind less the blocked ones and those with a
/// change left. Nexthops are derived, not declared: the ones of ours the
/// observation holds count as declared. O(changes left + blocked entries).
pub fn object_states(desired: &Desired, o: &Outcome) -> ObjectStates {
    let failed = kind::changes_by_kind(&o.remaining.changes, true);
    let unfinished = kind::changes_by_kind(&o.remaining.changes, false);
    let blocked = kind::blocked_by_kind(&o.remaining);
    let mut declared = KindCounts::default();
    declared.add(ObjectKind::Device, desired.vxlans.len());
    declared.add(ObjectKind::Address, desired.addresses.len());
    declared.add(ObjectKind::Neighbor, desired.neighbors.len());
    declared.add(ObjectKind::Fdb, desired.fdb.len());
    declared.add(ObjectKind::Route, desired.routes.len());
    let ours = desired.engine.route_protocol;
    declared.add(
        ObjectKind::Nexthop,
        o.observed
            .nexthops
            .iter()
            .filter(|n| n.protocol == ours)
            .count(),
    );
    if let Some(nat) = desired.nat.as_ref().filter(|n| n.masquerade) {
        declared.add(
            ObjectKind::Nat,
            usize::from(nat.ipv4.is_some()) + usize::from(nat.ipv6.is_some()),
        );
    }
    declared.add(ObjectKind::Lease, usize::from(desired.lease.is_some()));
    declared.add(ObjectKind::Cni, usize::from(desired.cni.is_some()));
    let mut in_sync = KindCounts::default();
    for (k, n) in declared.iter() {
        in_sync.add(
            k,
            n.saturating_sub(blocked.get(k))
                .saturating_sub(unfinished.get(k)),
        );
    }
    ObjectStates {
        in_sync,
        blocked,
        failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Blocked, Change, ChangeKind, Op, Plan};

    fn outcome(changes: Vec<Change>, blocked: Vec<Blocked>) -> Outcome {
        Outcome {
            remaining: Plan {
                changes,
                blocked,
                notes: vec![],
            },
            ..Outcome::default()
        }
    }

    fn route_desired(n: usize) -> Desired {
        let r = crate::model::RouteSpec {
            table: crate::model::MAIN_TABLE,
            dst: "198.18.2.0/24".parse().unwrap(),
            via: None,
            dev: Some("flannel.1".into()),
            onlink: false,
            src: None,
            metric: None,
            origin: "route".into(),
        };
        Desired {
            routes: vec![r; n],
            ..Desired::default()
        }
    }

    /// The sample value of the series `name{labels}` in `text`.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn in_sync_is_declared_less_blocked_and_unfinished() {
        let desired = route_desired(5);
        let add = Change {
            kind: ChangeKind::Add,
            object: "route x".into(),
            reason: "missing".into(),
            op: Op::DelNexthop { id: 9 },
        };
        let stale = Change {
            kind: ChangeKind::Remove,
            object: "route y".into(),
            reason: "not declared".into(),
            op: Op::DelRoute(crate::model::RouteState {
                table: 254,
                dst: "198.18.9.0/24".parse().unwrap(),
                via: None,
                dev: None,
                onlink: false,
                src: None,
                metric: None,
                protocol: 199,
                nhid: None,
            }),
        };
        let mut counts = crate::plan::kind::KindCounts::default();
        counts.add(ObjectKind::Route, 2);
        let blocked = Blocked::of(
            counts,
            "2 routes on flannel.1",
            "waiting for vxlan flannel.1",
        );
        let s = object_states(&desired, &outcome(vec![add, stale], vec![blocked]));
        assert_eq!(s.blocked.get(ObjectKind::Route), 2);
        // the removal is a failure, but no declared route is missing for it
        assert_eq!(s.failed.get(ObjectKind::Route), 1);
        assert_eq!(s.failed.get(ObjectKind::Nexthop), 1);
        assert_eq!(s.in_sync.get(ObjectKind::Route), 3);
        // nothing declared in excess: saturates at 0
        assert_eq!(s.in_sync.get(ObjectKind::Nexthop), 0);
    }

    #[test]
    fn repairs_count_only_after_the_first_convergence_and_reload_resets_it() {
        let m = Metrics::new();
        let desired = route_desired(3);
        let mut first = outcome(vec![], vec![]);
        first.initial_by_kind.add(ObjectKind::Route, 3);
        m.pass_done("startup", Duration::from_millis(5), &desired, &first);
        let text = m.encode().unwrap();
        assert_eq!(
            sample(&text, "netconverge_changes_total{kind=\"route\"}"),
            Some(3.0)
        );
        assert_eq!(
            sample(&text, "netconverge_repairs_total{kind=\"route\"}"),
            Some(0.0)
        );
        let mut drift = outcome(vec![], vec![]);
        drift.initial_by_kind.add(ObjectKind::Route, 1);
        m.pass_done("events", Duration::from_millis(2), &desired, &drift);
        let text = m.encode().unwrap();
        assert_eq!(
            sample(&text, "netconverge_repairs_total{kind=\"route\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "netconverge_passes_total{trigger=\"events\",result=\"converged\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "netconverge_objects{kind=\"route\",state=\"in_sync\"}"
            ),
            Some(3.0)
        );
        assert_eq!(sample(&text, "netconverge_converged"), Some(1.0));
        m.reloaded();
        m.pass_done("reload", Duration::from_millis(2), &desired, &drift);
        let text = m.encode().unwrap();
        assert_eq!(
            sample(&text, "netconverge_repairs_total{kind=\"route\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "netconverge_changes_total{kind=\"route\"}"),
            Some(5.0)
        );
    }

    #[test]
    fn every_series_exists_from_the_start_and_sources_have_one_state() {
        let m = Metrics::new();
        m.set_source(SOURCE_NM, SourceState::Disconnected);
        m.set_source(SOURCE_NM, SourceState::Connected);
        m.set_source("kubernetes", SourceState::Disconnected);
        let text = m.encode().unwrap();
        assert!(text.ends_with("# EOF\n"), "{text}");
        let series = |prefix: &str| text.lines().filter(|l| l.starts_with(prefix)).count();
        assert_eq!(
            series("netconverge_passes_total{"),
            TRIGGERS.len() * PassResult::ALL.len()
        );
        assert_eq!(series("netconverge_objects{"), ObjectKind::ALL.len() * 3);
        assert_eq!(series("netconverge_repairs_total{"), ObjectKind::ALL.len());
        assert_eq!(
            series("netconverge_notification_overruns_total{"),
            SOCKETS.len()
        );
        let nm = |state: &str| {
            sample(
                &text,
                &format!("netconverge_source_state{{source=\"networkmanager\",state=\"{state}\"}}"),
            )
        };
        assert_eq!(nm("connected"), Some(1.0));
        assert_eq!(nm("disconnected"), Some(0.0));
        assert_eq!(
            sample(
                &text,
                "netconverge_source_state{source=\"kubernetes\",state=\"disconnected\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "netconverge_last_converged_timestamp_seconds"),
            Some(0.0)
        );
    }
}
