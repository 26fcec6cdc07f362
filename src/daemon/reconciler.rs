//! The daemon's decision logic as a sans-IO state machine: when to run a
//! converge pass (debounce, retry with backoff, periodic resync), and when
//! systemd is told READY=1.
//!
//! Invariant: no clock, no I/O — time comes in as `now`, decisions go out as
//! return values — so debounce, backoff and readiness are unit-tested without
//! a runtime. The I/O loop only ever sleeps until [`Reconciler::poll_timeout`].

use std::time::{Duration, Instant};

use crate::model::{DaemonSpec, ReadyPolicy};

/// First retry delay after a pass that left work undone.
const BACKOFF_START: Duration = Duration::from_millis(100);
/// A burst of events is coalesced, but never delayed by more than this many
/// debounce intervals in total (a steady trickle must not starve us).
const MAX_DEBOUNCE_FACTOR: u32 = 5;

/// Why a pass runs, for the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Startup,
    Events,
    Urgent,
    Retry,
    Resync,
    Reload,
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Trigger::Startup => "startup",
            Trigger::Events => "kernel events",
            Trigger::Urgent => "urgent (overrun or NetworkManager)",
            Trigger::Retry => "retry",
            Trigger::Resync => "periodic resync",
            Trigger::Reload => "reload",
        })
    }
}

impl Trigger {
    /// The metrics' label value (one of `crate::metrics::TRIGGERS`).
    pub fn label(self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::Events => "events",
            Trigger::Urgent => "urgent",
            Trigger::Retry => "retry",
            Trigger::Resync => "resync",
            Trigger::Reload => "reload",
        }
    }
}

/// What one converge pass left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PassResult {
    /// Changes still planned after the pass (failed or not yet possible).
    pub remaining: usize,
    /// Objects blocked (underlay absent, no address, …).
    pub blocked: usize,
    /// Of those, how many wait for someone who starts only after our
    /// READY=1 (the guard-mode lease file, written by k3s's flannel): they
    /// are retried like any blocked object, but never hold readiness.
    pub waiting_for_dependents: usize,
    /// The pass could not even observe the system.
    pub error: bool,
}

impl PassResult {
    fn converged(&self) -> bool {
        !self.error && self.remaining == 0 && self.blocked == 0
    }

    /// Everything that is not blocked has been applied.
    fn applied(&self) -> bool {
        !self.error && self.remaining == 0
    }

    /// Converged but for what only our dependents can provide.
    fn converged_for_readiness(&self) -> bool {
        self.applied() && self.blocked <= self.waiting_for_dependents
    }
}

/// Messages for systemd that the I/O loop must send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notify {
    Ready,
}

#[derive(Debug)]
pub struct Reconciler {
    debounce: Duration,
    resync: Duration,
    backoff_max: Duration,
    policy: ReadyPolicy,
    /// A pass is wanted; `(due, first_event, trigger)`.
    pending: Option<(Instant, Instant, Trigger)>,
    retry_at: Option<Instant>,
    backoff: Duration,
    resync_at: Instant,
    ready_sent: bool,
    /// READY=1 must follow the next pass (after a reload).
    ready_after_next: bool,
    passes: u64,
}

impl Reconciler {
    /// A reconciler that wants a pass at once (startup).
    pub fn new(spec: &DaemonSpec, now: Instant) -> Reconciler {
        let mut r = Reconciler {
            debounce: Duration::from_millis(spec.debounce_ms),
            resync: Duration::from_secs(spec.resync_secs.max(1)),
            backoff_max: Duration::from_secs(spec.backoff_max_secs.max(1)),
            policy: spec.ready,
            pending: None,
            retry_at: None,
            backoff: BACKOFF_START,
            resync_at: now,
            ready_sent: false,
            ready_after_next: false,
            passes: 0,
        };
        r.want(now, now, Trigger::Startup);
        r.resync_at = now + r.resync;
        r
    }

    /// Apply a new `[daemon]` section (reload) and ask for a pass.
    pub fn reconfigure(&mut self, spec: &DaemonSpec, now: Instant) {
        self.debounce = Duration::from_millis(spec.debounce_ms);
        self.resync = Duration::from_secs(spec.resync_secs.max(1));
        self.backoff_max = Duration::from_secs(spec.backoff_max_secs.max(1));
        self.policy = spec.ready;
        self.backoff = BACKOFF_START;
        self.retry_at = None;
        self.ready_after_next = true;
        self.want(now, now, Trigger::Reload);
    }

    pub fn passes(&self) -> u64 {
        self.passes
    }

    pub fn is_ready(&self) -> bool {
        self.ready_sent
    }

    fn want(&mut self, due: Instant, now: Instant, trigger: Trigger) {
        self.pending = Some(match self.pending {
            // keep the earliest deadline, and the burst's first event
            Some((d, first, t)) if d <= due => (d, first, t),
            Some((_, first, _)) => (due, first, trigger),
            None => (due, now, trigger),
        });
    }

    /// A relevant kernel event: converge after a short quiet period, but no
    /// later than `MAX_DEBOUNCE_FACTOR` debounce intervals after the first.
    pub fn on_event(&mut self, now: Instant) {
        self.pending = Some(match self.pending {
            Some((_, first, Trigger::Events)) => {
                let cap = first + self.debounce * MAX_DEBOUNCE_FACTOR;
                ((now + self.debounce).min(cap), first, Trigger::Events)
            }
            // a startup/urgent/reload pass is already due: it will see this too
            Some(p) => p,
            None => (now + self.debounce, now, Trigger::Events),
        });
    }

    /// Something that needs a pass now: netlink overrun (the cached view is
    /// gone), NetworkManager reporting an underlay activated.
    pub fn on_urgent(&mut self, now: Instant) {
        self.want(now, now, Trigger::Urgent);
    }

    /// When the I/O loop must wake up next.
    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.resync_at;
        if let Some((due, _, _)) = self.pending {
            t = t.min(due);
        }
        if let Some(r) = self.retry_at {
            t = t.min(r);
        }
        t
    }

    /// Is a pass due at `now`? Returns why; the caller runs it and reports
    /// back with [`Reconciler::on_pass_done`].
    pub fn poll(&mut self, now: Instant) -> Option<Trigger> {
        if let Some((due, _, t)) = self.pending
            && due <= now
        {
            self.pending = None;
            return Some(t);
        }
        if let Some(r) = self.retry_at
            && r <= now
        {
            self.retry_at = None;
            return Some(Trigger::Retry);
        }
        if self.resync_at <= now {
            self.resync_at = now + self.resync;
            return Some(Trigger::Resync);
        }
        None
    }

    /// Record a finished pass; returns what systemd must be told.
    pub fn on_pass_done(&mut self, now: Instant, result: PassResult) -> Vec<Notify> {
        self.passes += 1;
        // Every pass is a full observe: the periodic resync restarts from here.
        self.resync_at = now + self.resync;
        if result.converged() {
            self.backoff = BACKOFF_START;
            self.retry_at = None;
        } else {
            self.retry_at = Some(now + self.backoff);
            self.backoff = (self.backoff * 2).min(self.backoff_max);
        }
        let ready_now = match self.policy {
            ReadyPolicy::Converged => result.converged_for_readiness(),
            ReadyPolicy::Applied => result.applied(),
        };
        let mut out = Vec::new();
        if (!self.ready_sent && ready_now) || self.ready_after_next {
            self.ready_sent = true;
            self.ready_after_next = false;
            out.push(Notify::Ready);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(ready: ReadyPolicy) -> DaemonSpec {
        DaemonSpec {
            resync_secs: 60,
            debounce_ms: 20,
            ready,
            networkmanager: crate::model::NmMode::Off,
            backoff_max_secs: 2,
            metrics: None,
        }
    }

    const OK: PassResult = PassResult {
        remaining: 0,
        blocked: 0,
        waiting_for_dependents: 0,
        error: false,
    };

    #[test]
    fn startup_pass_is_immediate_and_ready_follows_convergence() {
        let t0 = Instant::now();
        let mut r = Reconciler::new(&spec(ReadyPolicy::Converged), t0);
        assert_eq!(r.poll_timeout(), t0);
        assert_eq!(r.poll(t0), Some(Trigger::Startup));
        assert_eq!(r.poll(t0), None);
        assert_eq!(r.on_pass_done(t0, OK), vec![Notify::Ready]);
        // never twice
        r.on_event(t0);
        let t1 = r.poll_timeout();
        assert_eq!(r.poll(t1), Some(Trigger::Events));
        assert!(r.on_pass_done(t1, OK).is_empty());
    }

    #[test]
    fn burst_is_coalesced_into_one_pass_and_capped() {
        let t0 = Instant::now();
        let mut r = Reconciler::new(&spec(ReadyPolicy::Converged), t0);
        r.poll(t0);
        r.on_pass_done(t0, OK);
        let ms = Duration::from_millis;
        // events every 10 ms for 300 ms: debounce 20 ms would never expire,
        // the cap (5 × 20 ms after the first) forces a pass
        let mut passes = 0;
        let mut t = t0;
        for _ in 0..30 {
            t += ms(10);
            if r.poll(t).is_some() {
                passes += 1;
                r.on_pass_done(t, OK);
            }
            r.on_event(t);
        }
        assert!((2..=4).contains(&passes), "{passes} passes");
        // a single event waits exactly one debounce interval
        let mut r = Reconciler::new(&spec(ReadyPolicy::Converged), t0);
        r.poll(t0);
        r.on_pass_done(t0, OK);
        r.on_event(t0 + ms(1000));
        assert_eq!(r.poll(t0 + ms(1019)), None);
        assert_eq!(r.poll_timeout(), t0 + ms(1020));
        assert_eq!(r.poll(t0 + ms(1020)), Some(Trigger::Events));
    }

    #[test]
    fn urgent_preempts_debounce() {
        let t0 = Instant::now();
        let mut r = Reconciler::new(&spec(ReadyPolicy::Converged), t0);
        r.poll(t0);
        r.on_pass_done(t0, OK);
        r.on_event(t0);
        r.on_urgent(t0);
        assert_eq!(r.poll(t0), Some(Trigger::Urgent));
    }

    #[test]
    fn failures_back_off_exponentially_up_to_the_cap_and_reset() {
        let t0 = Instant::now();
        let mut r = Reconciler::new(&spec(ReadyPolicy::Converged), t0);
        let mut t = t0;
        r.poll(t);
        let bad = PassResult {
            remaining: 1,
            blocked: 0,
            waiting_for_dependents: 0,
            error: false,
        };
        let mut delays = Vec::new();
        r.on_pass_done(t, bad);
        for _ in 0..7 {
            let next = r.poll_timeout();
            delays.push((next - t).as_millis());
            t = next;
            assert_eq!(r.poll(t), Some(Trigger::Retry));
            r.on_pass_done(t, bad);
        }
        assert_eq!(delays, vec![100, 200, 400, 800, 1600, 2000, 2000]);
        let next = r.poll_timeout();
        r.poll(next);
        r.on_pass_done(next, OK);
        // converged: only the periodic resync is left
        assert_eq!(r.poll_timeout(), next + Duration::from_secs(60));
    }

    #[test]
    fn blocked_holds_readiness_only_with_converged_policy() {
        let t0 = Instant::now();
        let blocked = PassResult {
            remaining: 0,
            blocked: 3,
            waiting_for_dependents: 0,
            error: false,
        };
        let mut strict = Reconciler::new(&spec(ReadyPolicy::Converged), t0);
        strict.poll(t0);
        assert!(strict.on_pass_done(t0, blocked).is_empty());
        assert!(!strict.is_ready());
        let mut lax = Reconciler::new(&spec(ReadyPolicy::Applied), t0);
        lax.poll(t0);
        assert_eq!(lax.on_pass_done(t0, blocked), vec![Notify::Ready]);
        // a failed observe is never "applied"
        let mut err = Reconciler::new(&spec(ReadyPolicy::Applied), t0);
        err.poll(t0);
        let e = PassResult { error: true, ..OK };
        assert!(err.on_pass_done(t0, e).is_empty());
    }

    #[test]
    fn periodic_resync_fires_when_idle() {
        let t0 = Instant::now();
        let mut r = Reconciler::new(&spec(ReadyPolicy::Converged), t0);
        r.poll(t0);
        r.on_pass_done(t0, OK);
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!(r.poll_timeout(), t1);
        assert_eq!(r.poll(t1 - Duration::from_millis(1)), None);
        assert_eq!(r.poll(t1), Some(Trigger::Resync));
    }

    #[test]
    fn reload_sends_ready_after_the_next_pass_even_if_blocked() {
        let t0 = Instant::now();
        let mut r = Reconciler::new(&spec(ReadyPolicy::Converged), t0);
        r.poll(t0);
        r.on_pass_done(t0, OK);
        r.reconfigure(&spec(ReadyPolicy::Converged), t0);
        assert_eq!(r.poll(t0), Some(Trigger::Reload));
        let blocked = PassResult {
            remaining: 0,
            blocked: 1,
            waiting_for_dependents: 0,
            error: false,
        };
        assert_eq!(r.on_pass_done(t0, blocked), vec![Notify::Ready]);
        assert_eq!(r.passes(), 2);
    }

    #[test]
    fn waiting_for_dependents_never_holds_readiness_but_is_retried() {
        let t0 = Instant::now();
        let mut r = Reconciler::new(&spec(ReadyPolicy::Converged), t0);
        r.poll(t0);
        let lease = PassResult {
            blocked: 1,
            waiting_for_dependents: 1,
            ..OK
        };
        assert_eq!(r.on_pass_done(t0, lease), vec![Notify::Ready]);
        // still retried (with backoff) like any blocked object
        assert_eq!(r.poll_timeout(), t0 + BACKOFF_START);
        // one more blocked object that is not theirs holds it
        let mut r = Reconciler::new(&spec(ReadyPolicy::Converged), t0);
        r.poll(t0);
        let both = PassResult {
            blocked: 2,
            waiting_for_dependents: 1,
            ..OK
        };
        assert!(r.on_pass_done(t0, both).is_empty());
    }
}
