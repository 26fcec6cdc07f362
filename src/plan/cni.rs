//! Planning the CNI conflist (`[cni]`): rendering and drift.
//!
//! Invariant: pure. The same spec and MTU render the same bytes; the file
//! is in sync when it parses as JSON equal to the rendering (key order and
//! whitespace are not drift), otherwise one change names every field that
//! differs. An MTU that is not known blocks the file instead of guessing.
//!
//! The `bridge` chain reproduces what flannel's CNI plugin derives from
//! subnet.env (cni-plugin `flannel_linux.go` `doCmdAdd`/`getDelegateIPAM`,
//! see docs/k3s-research-notes.md): bridge `cni0`, the node's pod
//! subnet(s) as host-local ranges with the first address as gateway, the
//! cluster network(s) as routes, `isGateway`/`isDefaultGateway`,
//! `hairpinMode`, `forceAddress`, `ipMasq` false (`[nat]` masquerades), MTU
//! of the VXLAN device, then `portmap` (and optionally `bandwidth`).

use std::collections::BTreeMap;
use std::path::Path;

use ipnet::IpNet;
use serde::Serialize;
use serde_json::Value;

use crate::model::cni::{CniObserved, CniOp};
use crate::model::lease::FileContent;
use crate::model::{CniPlugin, CniSpec, Desired, Family, LeaseFamily};
use crate::plan::kind::ObjectKind;
use crate::plan::{Blocked, Change, ChangeKind, Op, Plan};

/// The CNI spec version written (supported by containernetworking/plugins
/// ≥ 1.0 and k3s's bundled plugins; k3s writes the same).
pub const CNI_VERSION: &str = "1.0.0";
/// flannel's CNI plugin reads this unless `subnetFile` says otherwise.
pub const FLANNEL_SUBNET_FILE: &str = "/run/flannel/subnet.env";
/// IPv6's minimum link MTU.
const IPV6_MIN_MTU: u32 = 1280;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConfList<'a> {
    cni_version: &'static str,
    name: &'a str,
    plugins: Vec<Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Bridge<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    bridge: &'a str,
    is_gateway: bool,
    is_default_gateway: bool,
    hairpin_mode: bool,
    force_address: bool,
    ip_masq: bool,
    mtu: u32,
    ipam: Ipam,
}

#[derive(Serialize)]
struct Ipam {
    #[serde(rename = "type")]
    kind: &'static str,
    ranges: Vec<Vec<Range>>,
    routes: Vec<Route>,
}

#[derive(Serialize)]
struct Range {
    subnet: IpNet,
    gateway: std::net::IpAddr,
}

#[derive(Serialize)]
struct Route {
    dst: IpNet,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Flannel<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    subnet_file: Option<&'a Path>,
    delegate: Delegate<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Delegate<'a> {
    bridge: &'a str,
    hairpin_mode: bool,
    force_address: bool,
    is_default_gateway: bool,
}

fn families(spec: &CniSpec) -> impl Iterator<Item = &LeaseFamily> {
    spec.ipv4.iter().chain(spec.ipv6.iter())
}

/// The pod subnet's first address: the bridge's address and the pods'
/// gateway (what host-local and flannel choose by default).
fn gateway(subnet: &IpNet) -> std::net::IpAddr {
    super::lease::file::first_usable(subnet)
}

fn to_value<T: Serialize>(v: &T) -> Value {
    // Serializing these plain structs cannot fail (no maps with non-string
    // keys, no custom serializers that error).
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn chained(spec: &CniSpec, plugins: &mut Vec<Value>) {
    if spec.portmap {
        plugins
            .push(serde_json::json!({"type": "portmap", "capabilities": {"portMappings": true}}));
    }
    if spec.bandwidth {
        plugins.push(serde_json::json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}));
    }
}

/// The conflist for `spec` with `mtu` (used by the bridge chain only), as
/// written: pretty JSON with a final newline.
pub fn render(spec: &CniSpec, mtu: u32) -> String {
    let mut plugins = Vec::new();
    match spec.plugin {
        CniPlugin::Bridge => plugins.push(to_value(&Bridge {
            kind: "bridge",
            bridge: &spec.bridge,
            is_gateway: true,
            is_default_gateway: true,
            hairpin_mode: spec.hairpin,
            force_address: true,
            ip_masq: spec.ip_masq,
            mtu,
            ipam: Ipam {
                kind: "host-local",
                ranges: families(spec)
                    .map(|f| {
                        vec![Range {
                            subnet: f.subnet.trunc(),
                            gateway: gateway(&f.subnet),
                        }]
                    })
                    .collect(),
                routes: families(spec)
                    .map(|f| Route {
                        dst: f.network.trunc(),
                    })
                    .collect(),
            },
        })),
        CniPlugin::Flannel => plugins.push(to_value(&Flannel {
            kind: "flannel",
            subnet_file: spec
                .subnet_file
                .as_deref()
                .filter(|p| *p != Path::new(FLANNEL_SUBNET_FILE)),
            delegate: Delegate {
                bridge: &spec.bridge,
                hairpin_mode: spec.hairpin,
                force_address: true,
                is_default_gateway: true,
            },
        })),
    }
    chained(spec, &mut plugins);
    let list = ConfList {
        cni_version: CNI_VERSION,
        name: &spec.name,
        plugins,
    };
    let mut text = serde_json::to_string_pretty(&list).unwrap_or_default();
    text.push('\n');
    text
}

/// MTU of the VXLAN device carrying the conflist's first family (IPv4
/// first), as the kernel plan converges it: the first VXLAN with an address
/// of that family, else the first VXLAN of that underlay family (the lease's
/// rule).
pub(super) fn vxlan_mtu(desired: &Desired, mtus: &BTreeMap<String, u32>) -> Option<u32> {
    let cni = desired.cni.as_ref()?;
    let family = if cni.ipv4.is_some() {
        Family::Ipv4
    } else {
        Family::Ipv6
    };
    let dev = desired.pod_device(family)?;
    mtus.get(&dev.name).copied()
}

/// How plans (and `show`) name the conflist.
pub fn object(path: &Path) -> String {
    format!("cni {}", path.display())
}

/// Pure: the change that makes the conflist match, or why it cannot.
/// `vxlan_mtu` is the MTU the planner resolved for the VXLAN device of the
/// spec's first family (`None` when that device is blocked).
pub fn plan(spec: Option<&CniSpec>, vxlan_mtu: Option<u32>, observed: &CniObserved) -> Plan {
    let mut plan = Plan::default();
    let Some(spec) = spec else { return plan };
    let object = object(&spec.path);
    let blocked = |reason: String| Blocked::new(ObjectKind::Cni, object.clone(), reason);
    for name in &observed.earlier {
        plan.notes.push(format!(
            "{}: {name} sorts before it in the same directory; containerd loads only the first CNI config file (max_conf_num = 1), so remove or rename {name}",
            object
        ));
    }
    // The flannel plugin takes the MTU from subnet.env: none needed here.
    let mtu = match (spec.plugin, spec.mtu.or(vxlan_mtu)) {
        (CniPlugin::Flannel, m) => m.unwrap_or(0),
        (CniPlugin::Bridge, Some(m)) => m,
        (CniPlugin::Bridge, None) => {
            plan.blocked.push(blocked(
                "MTU unknown (the VXLAN device is blocked and [cni] sets no mtu); not written"
                    .to_string(),
            ));
            return plan;
        }
    };
    if spec.plugin == CniPlugin::Bridge && spec.ipv6.is_some() && mtu < IPV6_MIN_MTU {
        plan.blocked.push(blocked(format!(
            "MTU {mtu} is below IPv6's minimum {IPV6_MIN_MTU} and [cni] declares IPv6 pods; not written"
        )));
        return plan;
    }
    let desired = render(spec, mtu);
    let (kind, reason) = match &observed.file {
        FileContent::Missing => (ChangeKind::Add, "missing".to_string()),
        FileContent::Text(text) => match drift(text, &desired) {
            None => return plan,
            Some(why) => (ChangeKind::Modify, why),
        },
        FileContent::Unusable(why) => (ChangeKind::Modify, why.clone()),
        FileContent::Symlink => (
            ChangeKind::Modify,
            "a symbolic link (not followed); replaced by a regular file".to_string(),
        ),
        FileContent::NotAFile(what) => {
            plan.blocked
                .push(blocked(format!("{what}, not a regular file; not written")));
            return plan;
        }
        FileContent::Unreadable(why) => {
            plan.blocked
                .push(blocked(format!("cannot read ({why}); not written")));
            return plan;
        }
    };
    plan.changes.push(Change {
        kind,
        object,
        reason,
        op: Op::Cni(CniOp::Write {
            path: spec.path.clone(),
            contents: desired,
        }),
    });
    plan
}

/// `None` when `found` means the same JSON as `want`; else the differing
/// fields, e.g. `plugins[0].mtu 1500, declared 1450`.
fn drift(found: &str, want: &str) -> Option<String> {
    let want: Value = serde_json::from_str(want).ok()?;
    let found: Value = match serde_json::from_str(found) {
        Ok(v) => v,
        Err(e) => return Some(format!("not valid JSON ({e})")),
    };
    if found == want {
        return None;
    }
    let mut items = Vec::new();
    diff("", &found, &want, &mut items);
    const MAX: usize = 6;
    let more = items.len().saturating_sub(MAX);
    items.truncate(MAX);
    if more > 0 {
        items.push(format!("{more} more"));
    }
    Some(items.join("; "))
}

fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(59).collect::<String>())
    } else {
        s
    }
}

fn diff(at: &str, found: &Value, want: &Value, out: &mut Vec<String>) {
    let name = |k: &str| {
        if at.is_empty() {
            k.to_string()
        } else {
            format!("{at}.{k}")
        }
    };
    match (found, want) {
        (Value::Object(f), Value::Object(w)) => {
            for (k, wv) in w {
                match f.get(k) {
                    Some(fv) => diff(&name(k), fv, wv, out),
                    None => out.push(format!("{} missing, declared {}", name(k), show(wv))),
                }
            }
            for (k, fv) in f {
                if !w.contains_key(k) {
                    out.push(format!("{} {} not declared", name(k), show(fv)));
                }
            }
        }
        (Value::Array(f), Value::Array(w)) if f.len() == w.len() => {
            for (i, (fv, wv)) in f.iter().zip(w).enumerate() {
                diff(&format!("{at}[{i}]"), fv, wv, out);
            }
        }
        _ if found == want => {}
        _ => out.push(format!(
            "{} {}, declared {}",
            if at.is_empty() { "(file)" } else { at },
            show(found),
            show(want)
        )),
    }
}

#[cfg(test)]
mod tests;
