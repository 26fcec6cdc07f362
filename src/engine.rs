//! One converge pass: observe → plan → apply → verify (re-observe, re-plan,
//! expect nothing left), with a bounded number of rounds.
//!
//! Invariant: the only place that sequences I/O for a pass; the CLI and the
//! daemon both go through it, so `converge`, `converge --check` and the
//! daemon can never disagree about what "in sync" means.

use serde::Serialize;

use crate::apply::{self, Failure};
use crate::model::{Desired, Observed};
use crate::observe::{self, ObserveError};
use crate::plan::{self, Plan};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Observe(#[from] ObserveError),
    #[error("background task failed: {0}")]
    Task(String),
    #[error(transparent)]
    Record(#[from] crate::record::RecordError),
}

/// Read everything the desired state manages: kernel objects through
/// netlink, NAT rules and the lease file through their backends (run off the
/// async thread: they spawn processes and touch files).
pub async fn observe_all(
    handle: &crate::netlink::Handle,
    desired: &Desired,
) -> Result<Observed, EngineError> {
    // Old route protocols from the record: their routes and nexthops are
    // ours to sweep, whatever the file says now.
    let past = match crate::record::state_dir(desired) {
        Some(dir) => crate::record::past_protocols(&dir, desired.engine.route_protocol)?,
        None => Default::default(),
    };
    // One state directory for both records: the NAT adoption record
    // follows the same rule as the kernel record (env, then the file).
    if let Some(dir) = crate::record::state_dir(desired) {
        crate::nat::record::set_dir(dir);
    }
    let mut observed = observe::observe_owning(handle, desired, &past).await?;
    let nat = desired.nat.clone();
    let lease = desired.lease.clone();
    let cni = desired.cni.clone();
    let (nat, lease, cni) = tokio::task::spawn_blocking(move || {
        (
            crate::nat::observe(nat.as_ref()),
            crate::lease::observe(lease.as_ref()),
            crate::cni::observe(cni.as_ref()),
        )
    })
    .await
    .map_err(|e| EngineError::Task(e.to_string()))?;
    observed.nat = nat.map_err(ObserveError::from)?;
    observed.lease = lease.map_err(ObserveError::from)?;
    observed.cni = cni.map_err(ObserveError::from)?;
    Ok(observed)
}

/// What a pass brings the system to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// The file's desired state ([`plan::plan`]).
    Converge,
    /// Nothing of netconverge's left ([`plan::cleanup_plan`]).
    Cleanup,
}

impl Goal {
    fn plan(self, desired: &Desired, observed: &Observed) -> Plan {
        match self {
            Goal::Converge => plan::plan(&desired.resolve_underlays(observed), observed),
            Goal::Cleanup => plan::cleanup_plan(desired, observed),
        }
    }
}

/// What differs, without changing anything.
pub async fn check(
    handle: &crate::netlink::Handle,
    desired: &Desired,
) -> Result<Plan, EngineError> {
    check_goal(handle, desired, Goal::Converge).await
}

/// What a pass towards `goal` would do, without changing anything.
pub async fn check_goal(
    handle: &crate::netlink::Handle,
    desired: &Desired,
    goal: Goal,
) -> Result<Plan, EngineError> {
    let observed = observe_all(handle, desired).await?;
    Ok(goal.plan(desired, &observed))
}

/// Result of [`converge`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    /// The plan of the first round: what was out of sync (its first
    /// changes only, with [`converge_keeping`]).
    pub initial: Plan,
    /// How many changes the first plan had.
    pub initial_changes: usize,
    /// The first plan's changes by kind (all of them, also with
    /// [`converge_keeping`]): what this pass repaired or created.
    #[serde(skip)]
    pub initial_by_kind: plan::kind::KindCounts,
    /// Operations that succeeded, over all rounds.
    pub applied: usize,
    /// Operations that failed in the last round that had failures.
    pub failures: Vec<Failure>,
    /// What still differs after the last round (empty when converged).
    pub remaining: Plan,
    pub rounds: u32,
    /// The last observation (the one that verified `remaining`).
    #[serde(skip)]
    pub observed: Observed,
}

impl Outcome {
    /// Everything applied and verified, nothing blocked.
    pub fn converged(&self) -> bool {
        self.remaining.in_sync()
    }

    /// Whether any failure was a permission problem (exit code 3).
    /// EPERM/EACCES from the kernel or a backend (by errno): not a drift
    /// but a missing capability (run as root or with CAP_NET_ADMIN).
    pub fn permission_denied(&self) -> bool {
        self.failures.iter().any(Failure::permission_denied)
    }
}

/// Record the route protocol before anything carrying it is created: a
/// later protocol change must still recognise (and sweep) these routes.
fn remember(desired: &Desired) -> Result<(), EngineError> {
    if let Some(dir) = crate::record::state_dir(desired) {
        crate::record::remember_protocol(&dir, desired.engine.route_protocol)?;
    }
    Ok(())
}

/// Apply until the kernel matches: at most `max_rounds` rounds of
/// observe → plan → apply; the last observation verifies.
pub async fn converge(
    handle: &crate::netlink::Handle,
    desired: &Desired,
    max_rounds: u32,
) -> Result<Outcome, EngineError> {
    converge_keeping(handle, desired, max_rounds, usize::MAX).await
}

/// [`converge`], keeping only the first `keep` changes of the initial plan
/// (its blocked entries and [`Outcome::initial_changes`] stay complete).
/// For callers that only summarize it (the daemon): at fleet scale, holding
/// tens of thousands of changes through the verify round would be most of
/// a pass's peak memory, which the allocator then keeps resident.
pub async fn converge_keeping(
    handle: &crate::netlink::Handle,
    desired: &Desired,
    max_rounds: u32,
    keep: usize,
) -> Result<Outcome, EngineError> {
    pass(handle, desired, Goal::Converge, max_rounds, keep).await
}

/// `cleanup`: the same observe → plan → apply → verify rounds as
/// [`converge`], towards nothing of ours.
pub async fn cleanup(
    handle: &crate::netlink::Handle,
    desired: &Desired,
    max_rounds: u32,
) -> Result<Outcome, EngineError> {
    pass(handle, desired, Goal::Cleanup, max_rounds, usize::MAX).await
}

async fn pass(
    handle: &crate::netlink::Handle,
    desired: &Desired,
    goal: Goal,
    max_rounds: u32,
    keep: usize,
) -> Result<Outcome, EngineError> {
    let mut out = Outcome::default();
    let mut observed = observe_all(handle, desired).await?;
    let mut current = goal.plan(desired, &observed);
    out.initial_changes = current.changes.len();
    out.initial_by_kind = plan::kind::changes_by_kind(&current.changes, true);
    let mut initial: Option<Plan> = None;
    while !current.is_empty() && out.rounds < max_rounds.max(1) {
        out.rounds += 1;
        if goal == Goal::Converge {
            remember(desired)?;
        }
        let report = apply::apply(handle, &current, &observed).await;
        out.applied += report.applied;
        if !report.failures.is_empty() {
            out.failures = report.failures;
        }
        // The first plan becomes `initial` (moved, never copied); neither
        // it nor the old observation is needed for the verify round.
        let done = std::mem::take(&mut current);
        if initial.is_none() {
            let mut first = done;
            if first.changes.len() > keep {
                first.changes.truncate(keep);
                first.changes.shrink_to_fit();
            }
            initial = Some(first);
        }
        drop(std::mem::take(&mut observed));
        observed = observe_all(handle, desired).await?;
        current = goal.plan(desired, &observed);
    }
    out.initial = initial.unwrap_or_else(|| {
        let mut p = current.clone();
        p.changes.truncate(keep);
        p
    });
    out.remaining = current;
    out.observed = observed;
    Ok(out)
}
