//! Kernel → [`Observed`] through rtnetlink dumps (links, addresses, routes,
//! neighbours, bridge-family FDB), plus the NAT and lease readers.
//!
//! Invariant: read-only; one dump per object kind per pass; the result is
//! filtered to what the desired state can own or depends on.
//!
//! STUB: implemented in the core engine issue.

use crate::model::{Desired, Observed};

#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("netlink dump of {what} failed: {source}")]
    Netlink {
        what: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
    #[error(transparent)]
    Nat(#[from] crate::nat::NatError),
    #[error(transparent)]
    Lease(#[from] crate::lease::LeaseError),
}

pub async fn observe(
    handle: &rtnetlink::Handle,
    desired: &Desired,
) -> Result<Observed, ObserveError> {
    let _ = (handle, desired);
    Ok(Observed::default())
}
