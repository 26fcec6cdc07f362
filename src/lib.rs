//! netconverge: keeps a node's VXLAN overlay (devices, addresses, routes,
//! FDB/neighbour entries, NAT masquerade, flannel subnet lease) exactly as
//! declared in one TOML file.
//!
//! Layering (only `apply`, `nat` backends, `lease`/`cni` writing and `daemon`
//! touch the system), one way, no cycles (kept by `tests/architecture.rs`):
//! `config` → `model` → `plan` → {`observe`, `apply`, `nat`, `lease`, `cni`,
//! `netlink`, `record`} → `engine` → `metrics` → `daemon` → the binary.

pub mod apply;
pub mod cni;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod kube;
pub mod lease;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod nat;
pub mod netlink;
pub mod observe;
pub mod plan;
pub mod record;
pub mod show;

// The kernel transport is one room (`netlink`); its parts keep their old
// paths for the daemon and the tests.
pub use netlink::{bulk, nexthop};
