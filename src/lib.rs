//! netconverge: keeps a node's VXLAN overlay (devices, addresses, routes,
//! FDB/neighbour entries, NAT masquerade, flannel subnet lease) exactly as
//! declared in one TOML file.
//!
//! Layering (only `apply`, `nat` backends, `lease` writing and `daemon` touch
//! the system): `config` → `model` → `observe` → `plan` → `apply`, glued by
//! `engine`.

pub mod apply;
pub mod bulk;
pub mod cni;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod lease;
pub mod logging;
pub mod model;
pub mod nat;
pub mod netlink;
pub mod nexthop;
pub mod observe;
pub mod plan;
pub mod record;
pub mod show;
