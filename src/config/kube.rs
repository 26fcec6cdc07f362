//! `[fleet] source = "kubernetes"`: the cluster's Node objects → the fleet's
//! node entries, and this node's annotations back (issue 15). Pure: the
//! API is read and written by `crate::kube`; this module only judges.
//!
//! Invariant: remote data is untrusted input. A Node that is not flannel's
//! (no `kube-subnet-manager = "true"`), has a malformed annotation, a
//! podCIDR outside the cluster network or overlapping an accepted one, an
//! underlay address of the wrong family, a multicast or zero VTEP MAC, or a
//! MAC or underlay address another accepted Node already has, is left out
//! with a [`Skip`] naming the Node and the field — it never fails the whole
//! selection, and never changes what the older Nodes contribute. What is
//! accepted is therefore a valid fleet by construction (disjoint subnets,
//! distinct addresses and MACs), so [`super::fleet::expand`] turns it into
//! peers exactly as it does a hand-written `[[fleet.node]]` list. Nodes are
//! judged this node first, then oldest first, so the outcome does not depend
//! on the API's list order and a newcomer cannot displace an established
//! Node. O(n log n) in the number of Nodes.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Serialize;

use crate::model::{Family, Mac};

/// flannel's default annotation prefix (`--kube-annotation-prefix`).
pub const DEFAULT_PREFIX: &str = "flannel.alpha.coreos.com";

/// One family the cluster runs, from `[fleet]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KubeFamily {
    pub family: Family,
    /// The cluster CIDR of this family (`network` / `ipv6_network`).
    pub network: IpNet,
    /// The VXLAN device of this family (`flannel.1` / `flannel-v6.1`).
    pub device: String,
}

/// What `[fleet]` with `source = "kubernetes"` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KubeSpec {
    /// `[fleet.kubernetes] kubeconfig`; `None`: in-cluster, then `$KUBECONFIG`.
    pub kubeconfig: Option<PathBuf>,
    /// The annotation prefix as written (`annotation_prefix`).
    pub annotation_prefix: String,
    /// PATCH this node's annotations (`publish`, default true).
    pub publish: bool,
    /// This node's Node name (`--node`, `NETCONVERGE_NODE`, `node_name`, hostname).
    pub node_name: String,
    pub vni: u32,
    pub families: Vec<KubeFamily>,
}

impl KubeSpec {
    /// The full key of annotation `name`, joined as flannel joins it
    /// (`pkg/subnet/kube/annotations.go`): a prefix without `/` gets one;
    /// otherwise `-` unless it already ends in `/` or `-`.
    pub fn key(&self, name: &str) -> String {
        let p = self.annotation_prefix.as_str();
        if !p.contains('/') {
            format!("{p}/{name}")
        } else if p.ends_with('/') || p.ends_with('-') {
            format!("{p}{name}")
        } else {
            format!("{p}-{name}")
        }
    }

    /// Whether annotation key `k` is one of ours (kept in [`NodeView`]).
    fn is_ours(&self, k: &str) -> bool {
        ANNOTATIONS.iter().any(|a| self.key(a) == k)
    }
}

/// The annotations read (and, the first five, written), after the prefix.
const ANNOTATIONS: [&str; 9] = [
    "kube-subnet-manager",
    "backend-type",
    "backend-data",
    "backend-v6-data",
    "public-ip",
    "public-ipv6",
    "public-ip-overwrite",
    "public-ipv6-overwrite",
    "node-public-ip",
];

fn data_key(f: Family) -> &'static str {
    match f {
        Family::Ipv4 => "backend-data",
        Family::Ipv6 => "backend-v6-data",
    }
}

fn ip_key(f: Family) -> &'static str {
    match f {
        Family::Ipv4 => "public-ip",
        Family::Ipv6 => "public-ipv6",
    }
}

fn overwrite_key(f: Family) -> &'static str {
    match f {
        Family::Ipv4 => "public-ip-overwrite",
        Family::Ipv6 => "public-ipv6-overwrite",
    }
}

fn fam_name(f: Family) -> &'static str {
    match f {
        Family::Ipv4 => "IPv4",
        Family::Ipv6 => "IPv6",
    }
}

/// The part of a Node that matters here; two equal views give equal peers,
/// so a Node update that leaves its view unchanged (kubelet heartbeats,
/// other annotations) triggers nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NodeView {
    pub name: String,
    /// Only the annotations under the prefix.
    pub annotations: BTreeMap<String, String>,
    /// `spec.podCIDRs`, else `[spec.podCIDR]`.
    pub pod_cidrs: Vec<String>,
    /// `status.addresses` of type `InternalIP`.
    pub internal_ips: Vec<String>,
    /// `metadata.creationTimestamp` (RFC 3339, UTC): of two Nodes claiming
    /// the same subnet, address or MAC, the older one keeps it.
    pub created: Option<String>,
}

impl NodeView {
    /// From a Node as the API serves it (JSON). `None` without a name.
    pub fn from_json(node: &serde_json::Value, spec: &KubeSpec) -> Option<NodeView> {
        let meta = node.get("metadata")?;
        let name = meta.get("name")?.as_str()?.to_string();
        let annotations = meta
            .get("annotations")
            .and_then(|a| a.as_object())
            .map(|a| {
                a.iter()
                    .filter(|(k, _)| spec.is_ours(k))
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        let strings = |v: Option<&serde_json::Value>| -> Vec<String> {
            v.and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let nspec = node.get("spec");
        let mut pod_cidrs = strings(nspec.and_then(|s| s.get("podCIDRs")));
        if pod_cidrs.is_empty()
            && let Some(c) = nspec
                .and_then(|s| s.get("podCIDR"))
                .and_then(|c| c.as_str())
                .filter(|c| !c.is_empty())
        {
            pod_cidrs.push(c.to_string());
        }
        let internal_ips = node
            .get("status")
            .and_then(|s| s.get("addresses"))
            .and_then(|a| a.as_array())
            .map(|a| {
                a.iter()
                    .filter(|x| x.get("type").and_then(|t| t.as_str()) == Some("InternalIP"))
                    .filter_map(|x| x.get("address").and_then(|t| t.as_str()))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let created = meta
            .get("creationTimestamp")
            .and_then(|c| c.as_str())
            .map(str::to_string);
        Some(NodeView {
            name,
            annotations,
            pod_cidrs,
            internal_ips,
            created,
        })
    }
}

/// One Node entry of the fleet, as the API gave it (already judged valid).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FleetNode {
    pub name: String,
    /// Underlay address per family: the peer's `public-ip(v6)`; this
    /// node's InternalIP (the VXLAN's `local`).
    pub address: BTreeMap<Family, IpAddr>,
    pub subnet: BTreeMap<Family, IpNet>,
    /// VTEP MAC per family. A peer always has one; this node has one only
    /// when its Node already carries a valid VtepMAC (a node migrating from
    /// flannel keeps it, so no peer has to change).
    pub mac: BTreeMap<Family, Mac>,
}

/// A Node left out, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skip {
    pub node: String,
    /// The field or annotation at fault.
    pub field: String,
    pub reason: String,
    /// `false`: an ordinary state (not flannel-managed, no podCIDR yet),
    /// logged at debug level; `true`: a malformed or conflicting Node.
    pub warn: bool,
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Node `{}` skipped: `{}`: {}",
            self.node, self.field, self.reason
        )
    }
}

/// What this node publishes (see [`publish_patch`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OwnNode {
    /// Its annotations under the prefix, as the API has them now.
    pub annotations: BTreeMap<String, String>,
    /// `public-ip(v6)` to publish: the `-overwrite` annotation, else the
    /// InternalIP.
    pub public: BTreeMap<Family, IpAddr>,
}

/// The outcome of [`select`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Selection {
    /// This node first (when usable), then the accepted peers by name.
    pub nodes: Vec<FleetNode>,
    pub skipped: Vec<Skip>,
    /// This node, when usable.
    pub me: Option<OwnNode>,
    /// Why this node is not usable (absent, no podCIDR yet, no InternalIP).
    pub me_problem: Option<String>,
}

/// Accepted subnets of one family: disjoint by construction, keyed by
/// first address, so an overlap test looks at two neighbours only.
#[derive(Default)]
struct Blocks(BTreeMap<u128, (u128, String)>);

fn bounds(n: &IpNet) -> (u128, u128) {
    let num = |a: IpAddr| match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    };
    (num(n.network()), num(n.broadcast()))
}

impl Blocks {
    /// The accepted Node whose subnet overlaps `n`.
    fn clash(&self, n: &IpNet) -> Option<&str> {
        let (s, e) = bounds(n);
        let before = self
            .0
            .range(..=s)
            .next_back()
            .filter(|(_, (end, _))| *end >= s);
        let after = self.0.range(s..=e).next();
        before.or(after).map(|(_, (_, name))| name.as_str())
    }

    fn insert(&mut self, n: &IpNet, name: &str) {
        let (s, e) = bounds(n);
        self.0.insert(s, (e, name.to_string()));
    }
}

/// What accepted Nodes must not share.
#[derive(Default)]
struct Taken {
    blocks: [Blocks; 2],
    addrs: HashMap<IpAddr, String>,
    macs: HashMap<(Family, Mac), String>,
}

fn fam_index(f: Family) -> usize {
    match f {
        Family::Ipv4 => 0,
        Family::Ipv6 => 1,
    }
}

impl Taken {
    fn blocks(&self, f: Family) -> Option<&Blocks> {
        self.blocks.get(fam_index(f))
    }

    fn accept(&mut self, n: &FleetNode) {
        for (f, s) in &n.subnet {
            if let Some(b) = self.blocks.get_mut(fam_index(*f)) {
                b.insert(s, &n.name);
            }
        }
        for a in n.address.values() {
            self.addrs.insert(*a, n.name.clone());
        }
        for (f, m) in &n.mac {
            self.macs.insert((*f, *m), n.name.clone());
        }
    }
}

/// A failed check: (field, reason).
type Bad = (String, String);

/// The podCIDR of `fam` among `cidrs` (at most two, as flannel requires),
/// inside the cluster network.
fn pod_cidr(v: &NodeView, kf: &KubeFamily) -> Result<IpNet, Bad> {
    let field = || "spec.podCIDRs".to_string();
    if v.pod_cidrs.len() > 2 {
        return Err((
            field(),
            format!("{} entries (at most one per family)", v.pod_cidrs.len()),
        ));
    }
    let mut found = None;
    for c in &v.pod_cidrs {
        let n: IpNet = c
            .parse()
            .map_err(|_| (field(), format!("`{c}` is not a CIDR")))?;
        if Family::of_net(&n) == kf.family && found.is_none() {
            found = Some(n.trunc());
        }
    }
    let n = found.ok_or_else(|| (field(), format!("no {} podCIDR", fam_name(kf.family))))?;
    if !kf.network.contains(&n) {
        return Err((
            field(),
            format!("{n} is outside the cluster network {}", kf.network),
        ));
    }
    Ok(n)
}

/// A unicast address of `fam` from annotation `key`.
fn family_ip(spec: &KubeSpec, v: &NodeView, key: &str, fam: Family) -> Result<IpAddr, Bad> {
    let full = spec.key(key);
    let Some(s) = v.annotations.get(&full) else {
        return Err((full, "missing".into()));
    };
    check_ip(s, fam).map_err(|r| (full, r))
}

fn check_ip(s: &str, fam: Family) -> Result<IpAddr, String> {
    let a: IpAddr = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not an IP address"))?;
    if Family::of(&a) != fam {
        return Err(format!(
            "`{s}` is an {} address, expected {}",
            fam_name(Family::of(&a)),
            fam_name(fam)
        ));
    }
    if a.is_unspecified() || a.is_multicast() || a.is_loopback() {
        return Err(format!("`{s}` is not a unicast address"));
    }
    if let IpAddr::V4(v4) = a
        && v4.is_broadcast()
    {
        return Err(format!("`{s}` is not a unicast address"));
    }
    Ok(a)
}

/// The VtepMAC of flannel's `backend(-v6)-data` (`{"VNI":1,"VtepMAC":"…"}`).
fn vtep_mac(spec: &KubeSpec, v: &NodeView, fam: Family) -> Result<Mac, Bad> {
    let full = spec.key(data_key(fam));
    let Some(s) = v.annotations.get(&full) else {
        return Err((full, "missing".into()));
    };
    parse_backend_data(s).map_err(|r| (full, r))
}

fn parse_backend_data(s: &str) -> Result<Mac, String> {
    let v: serde_json::Value =
        serde_json::from_str(s).map_err(|e| format!("not JSON ({e}): `{s}`"))?;
    let m = v
        .get("VtepMAC")
        .and_then(|m| m.as_str())
        .ok_or_else(|| format!("no string `VtepMAC` in `{s}`"))?;
    let mac: Mac = m
        .parse()
        .map_err(|_| format!("VtepMAC `{m}` is not a MAC address"))?;
    if mac.is_multicast() {
        return Err(format!("VtepMAC `{m}` is a multicast MAC"));
    }
    if mac.is_zero() {
        return Err(format!("VtepMAC `{m}` is all zeros"));
    }
    Ok(mac)
}

/// A peer Node, judged alone (conflicts with others come after).
fn judge_peer(spec: &KubeSpec, v: &NodeView) -> Result<FleetNode, Skip> {
    let skip = |(field, reason): Bad, warn: bool| Skip {
        node: v.name.clone(),
        field,
        reason,
        warn,
    };
    let ksm = spec.key("kube-subnet-manager");
    match v.annotations.get(&ksm).map(String::as_str) {
        Some("true") => {}
        Some(other) => {
            return Err(skip((ksm, format!("`{other}`, expected `true`")), true));
        }
        // an ordinary Node: not (yet) flannel's
        None => {
            return Err(skip(
                (ksm, "absent: not a flannel-managed Node".into()),
                false,
            ));
        }
    }
    let bt = spec.key("backend-type");
    match v.annotations.get(&bt).map(String::as_str) {
        Some("vxlan") => {}
        Some(other) => {
            return Err(skip(
                (bt, format!("`{other}`: only vxlan peers are reachable")),
                true,
            ));
        }
        None => return Err(skip((bt, "missing".into()), true)),
    }
    if v.pod_cidrs.is_empty() {
        return Err(skip(
            ("spec.podCIDRs".into(), "no podCIDR assigned yet".into()),
            false,
        ));
    }
    let mut n = FleetNode {
        name: v.name.clone(),
        address: BTreeMap::new(),
        subnet: BTreeMap::new(),
        mac: BTreeMap::new(),
    };
    for kf in &spec.families {
        let f = kf.family;
        n.subnet
            .insert(f, pod_cidr(v, kf).map_err(|b| skip(b, true))?);
        n.address.insert(
            f,
            family_ip(spec, v, ip_key(f), f).map_err(|b| skip(b, true))?,
        );
        n.mac
            .insert(f, vtep_mac(spec, v, f).map_err(|b| skip(b, true))?);
    }
    Ok(n)
}

/// This node, judged alone: podCIDR(s), InternalIP per family, and the
/// VtepMAC it already publishes (kept when valid).
fn judge_me(
    spec: &KubeSpec,
    v: &NodeView,
    skipped: &mut Vec<Skip>,
) -> Result<(FleetNode, OwnNode), String> {
    let mut n = FleetNode {
        name: v.name.clone(),
        address: BTreeMap::new(),
        subnet: BTreeMap::new(),
        mac: BTreeMap::new(),
    };
    let mut public = BTreeMap::new();
    if v.pod_cidrs.is_empty() {
        return Err("its Node has no podCIDR assigned yet (spec.podCIDR)".into());
    }
    for kf in &spec.families {
        let f = kf.family;
        let s = pod_cidr(v, kf).map_err(|(k, r)| format!("`{k}`: {r}"))?;
        n.subnet.insert(f, s);
        let addr = v
            .internal_ips
            .iter()
            .find_map(|a| check_ip(a, f).ok())
            .ok_or_else(|| {
                format!(
                    "its Node has no {} InternalIP in status.addresses",
                    fam_name(f)
                )
            })?;
        n.address.insert(f, addr);
        let ow = spec.key(overwrite_key(f));
        let pubip = match v.annotations.get(&ow) {
            Some(s) => match check_ip(s, f) {
                Ok(a) => a,
                Err(r) => {
                    skipped.push(Skip {
                        node: v.name.clone(),
                        field: ow,
                        reason: format!("{r}; publishing the InternalIP instead"),
                        warn: true,
                    });
                    addr
                }
            },
            None => addr,
        };
        public.insert(f, pubip);
        match vtep_mac(spec, v, f) {
            Ok(m) => {
                n.mac.insert(f, m);
            }
            Err((_, r)) if r == "missing" => {}
            Err((field, reason)) => skipped.push(Skip {
                node: v.name.clone(),
                field,
                reason: format!("{reason}; not kept, the device's own MAC is published"),
                warn: true,
            }),
        }
    }
    Ok((
        n,
        OwnNode {
            annotations: v.annotations.clone(),
            public,
        },
    ))
}

/// The conflict of an (individually valid) peer with the accepted ones.
fn conflict(t: &Taken, n: &FleetNode, spec: &KubeSpec) -> Option<Bad> {
    for (f, s) in &n.subnet {
        if let Some(other) = t.blocks(*f).and_then(|b| b.clash(s)) {
            return Some((
                "spec.podCIDRs".into(),
                format!("{s} overlaps the podCIDR of Node `{other}`"),
            ));
        }
    }
    for (f, a) in &n.address {
        if let Some(other) = t.addrs.get(a) {
            return Some((
                spec.key(ip_key(*f)),
                format!("{a} is also Node `{other}`'s underlay address"),
            ));
        }
    }
    for (f, m) in &n.mac {
        if let Some(other) = t.macs.get(&(*f, *m)) {
            return Some((
                spec.key(data_key(*f)),
                format!("VtepMAC {m} is also Node `{other}`'s"),
            ));
        }
    }
    None
}

/// Judges every Node: this node first, then the rest oldest first (by
/// `creationTimestamp`, then name; Nodes without one last), so a Node that
/// joins later can never take what an established one has.
pub fn select(spec: &KubeSpec, nodes: &[NodeView]) -> Selection {
    let mut order: Vec<&NodeView> = nodes.iter().collect();
    order.sort_by(|a, b| {
        (a.created.is_none(), &a.created, &a.name).cmp(&(b.created.is_none(), &b.created, &b.name))
    });
    let mut sel = Selection {
        nodes: Vec::with_capacity(order.len()),
        skipped: Vec::new(),
        me: None,
        me_problem: None,
    };
    let mut taken = Taken::default();
    match order.iter().find(|v| v.name == spec.node_name) {
        None => {
            sel.me_problem = Some("there is no Node of this name in the API".into());
        }
        Some(v) => match judge_me(spec, v, &mut sel.skipped) {
            Ok((n, own)) => {
                taken.accept(&n);
                sel.nodes.push(n);
                sel.me = Some(own);
            }
            Err(e) => sel.me_problem = Some(e),
        },
    }
    for v in order.into_iter().filter(|v| v.name != spec.node_name) {
        match judge_peer(spec, v) {
            Ok(n) => match conflict(&taken, &n, spec) {
                Some((field, reason)) => sel.skipped.push(Skip {
                    node: n.name,
                    field,
                    reason,
                    warn: true,
                }),
                None => {
                    taken.accept(&n);
                    sel.nodes.push(n);
                }
            },
            Err(s) => sel.skipped.push(s),
        }
    }
    sel
}

/// flannel's `backend-data` value, byte for byte: `VNI` first, no spaces
/// (flannel's own restart path splits this string by hand).
pub fn backend_data(vni: u32, mac: Mac) -> String {
    format!("{{\"VNI\":{vni},\"VtepMAC\":\"{mac}\"}}")
}

/// The strategic-merge PATCH body for `nodes/<name>/status` that makes
/// this node's annotations say what flannel's node agent would: only the
/// keys that differ from `own.annotations` (`None`: nothing to change).
/// `macs` are the VXLAN devices' real MACs per family.
pub fn publish_patch(
    spec: &KubeSpec,
    own: &OwnNode,
    macs: &BTreeMap<Family, Mac>,
) -> Option<serde_json::Value> {
    let mut want: BTreeMap<String, String> = BTreeMap::new();
    want.insert(spec.key("kube-subnet-manager"), "true".into());
    want.insert(spec.key("backend-type"), "vxlan".into());
    for kf in &spec.families {
        let f = kf.family;
        if let Some(m) = macs.get(&f) {
            want.insert(spec.key(data_key(f)), backend_data(spec.vni, *m));
        }
        if let Some(a) = own.public.get(&f) {
            want.insert(spec.key(ip_key(f)), a.to_string());
        }
    }
    let changed: serde_json::Map<String, serde_json::Value> = want
        .into_iter()
        .filter(|(k, v)| own.annotations.get(k) != Some(v))
        .map(|(k, v)| (k, serde_json::Value::String(v)))
        .collect();
    (!changed.is_empty()).then(|| serde_json::json!({ "metadata": { "annotations": changed } }))
}

#[cfg(test)]
mod tests;
