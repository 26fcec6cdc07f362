//! Cross-object checks on the raw config, and the mapping into [`Desired`].
//!
//! Invariant: checks only look at values the schema layer accepted, so each
//! mistake is reported once; every check is O(n log n) or better in the
//! number of objects (thousands of peers are normal), using maps, never
//! pairwise scans.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
// FxHash: keys come from the config file being checked, and SipHash was a
// tenth of validating 10 000 peers.
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use toml_span::Span;

use super::Diags;
use super::schema::{Field, Raw, RawFamily, RawPeer, RawVxlan, Sp, fam_name, fam_of, family_keys};
use crate::model::{
    AddressSpec, Desired, Family, FdbSpec, IPV6_DEFAULT_METRIC, LeaseFamily, LeaseMode, LeaseSpec,
    MAIN_TABLE, Mac, NatFamily, NatSpec, NeighborSpec, PeerSpec, RouteSpec, VxlanSpec,
    effective_metric,
};

const FAMILIES: [Family; 2] = [Family::Ipv4, Family::Ipv6];

fn fam_of_net(n: &IpNet) -> &'static str {
    fam_name(Family::of_net(n))
}

/// An IPv6 route with `metric = 0` is stored by the kernel with 1024, so it
/// is declared as 1024: comparing against 0 would re-add it every pass.
/// Normalised rather than rejected because `ip -6 route add … metric 0`
/// accepts it with exactly this meaning.
fn normal_metric6(metric: Option<u32>) -> Option<u32> {
    match metric {
        Some(0) => Some(IPV6_DEFAULT_METRIC),
        m => m,
    }
}

/// IPv6's minimum link MTU (RFC 8200): below it the kernel refuses IPv6
/// addresses on a device and drops the ones it has.
pub(crate) const IPV6_MIN_MTU: u32 = 1280;

/// Networks, each with a payload, answering "does anything overlap this
/// network?" in O(prefix length) hash lookups: CIDR blocks either nest or
/// are disjoint, so an overlapping block either starts inside the query, or
/// is one of its at most 128 supernets. Only held prefix lengths are looked
/// up, and a block starting inside the query needs an ordered search only
/// when a longer prefix than the query's is held (otherwise it can only
/// start where the query does): 10 000 /24 peers cost two hash lookups each.
struct NetIndex<T> {
    by_network: HashMap<IpAddr, Vec<(u8, T)>>,
    /// The same networks in order, for the ordered search; filled from
    /// `unsorted` only when one is needed.
    sorted: BTreeSet<IpAddr>,
    unsorted: Vec<IpAddr>,
    /// Which prefix lengths are held, per family (bit `len`, lengths
    /// 0..=128 in three words).
    lens: [[u64; 3]; 2],
    /// The longest prefix held, per family.
    longest: [u8; 2],
}

impl<T> NetIndex<T> {
    fn new() -> Self {
        NetIndex {
            by_network: HashMap::default(),
            sorted: BTreeSet::new(),
            unsorted: Vec::new(),
            lens: [[0; 3]; 2],
            longest: [0; 2],
        }
    }

    fn family(net: &IpNet) -> usize {
        usize::from(net.addr().is_ipv6())
    }

    fn holds_len(&self, net: &IpNet, len: u8) -> bool {
        self.lens
            .get(Self::family(net))
            .and_then(|l| l.get(usize::from(len / 64)))
            .is_some_and(|word| word & (1u64 << (len % 64)) != 0)
    }

    fn insert(&mut self, net: IpNet, v: T) {
        let (f, len) = (Self::family(&net), net.prefix_len());
        if let Some(word) = self
            .lens
            .get_mut(f)
            .and_then(|l| l.get_mut(usize::from(len / 64)))
        {
            *word |= 1u64 << (len % 64);
        }
        if let Some(l) = self.longest.get_mut(f) {
            *l = (*l).max(len);
        }
        let entries = self.by_network.entry(net.network()).or_default();
        if entries.is_empty() {
            self.unsorted.push(net.network());
        }
        entries.push((len, v));
    }

    /// The first network held that starts inside `q`.
    fn first_inside(&mut self, q: &IpNet) -> Option<IpAddr> {
        let longest = self
            .longest
            .get(Self::family(q))
            .copied()
            .unwrap_or_default();
        if longest <= q.prefix_len() {
            // Every held block is at most as long as `q`: one starting
            // inside `q` is aligned to `q`'s size, so it starts at `q`.
            return self
                .by_network
                .contains_key(&q.network())
                .then(|| q.network());
        }
        self.sorted.extend(self.unsorted.drain(..));
        self.sorted
            .range(q.network()..)
            .next()
            .filter(|addr| **addr <= q.broadcast())
            .copied()
    }

    fn find_overlap(&mut self, q: &IpNet) -> Option<(IpNet, &T)> {
        if let Some(addr) = self.first_inside(q) {
            if let Some((len, v)) = self.by_network.get(&addr).and_then(|e| e.first()) {
                if let Ok(n) = IpNet::new(addr, *len) {
                    return Some((n, v));
                }
            }
        }
        for len in 0..q.prefix_len() {
            if !self.holds_len(q, len) {
                continue;
            }
            let Ok(sup) = IpNet::new(q.network(), len) else {
                continue;
            };
            if let Some(entries) = self.by_network.get(&sup.network()) {
                for (plen, v) in entries {
                    if let Ok(n) = IpNet::new(sup.network(), *plen) {
                        if n.contains(q) {
                            return Some((n, v));
                        }
                    }
                }
            }
        }
        None
    }
}

/// What the [[vxlan]] entries declare, for reference checks.
struct Devices<'r> {
    vxlans: HashMap<&'r str, &'r RawVxlan>,
    underlays: HashSet<&'r str>,
}

impl Devices<'_> {
    fn knows(&self, dev: &str) -> bool {
        self.vxlans.contains_key(dev) || self.underlays.contains(dev)
    }

    fn names(&self) -> String {
        let mut v: Vec<&str> = self.vxlans.keys().copied().collect();
        v.sort_unstable();
        v.join(", ")
    }
}

/// One family's network or subnet after taking [nat] values from [lease].
#[derive(Clone, Copy)]
enum Merged {
    Absent,
    /// Invalid somewhere: already reported, nothing to check.
    Unknown,
    Known {
        net: IpNet,
        span: Span,
        from_nat: bool,
    },
}

fn merge(nat: &Field<IpNet>, lease: Option<&Field<IpNet>>) -> Merged {
    match (nat, lease) {
        (Field::Invalid, _) | (_, Some(Field::Invalid)) => Merged::Unknown,
        (Field::Given(s), _) => Merged::Known {
            net: s.v,
            span: s.span,
            from_nat: true,
        },
        (Field::Absent, Some(Field::Given(s))) => Merged::Known {
            net: s.v,
            span: s.span,
            from_nat: false,
        },
        (Field::Absent, Some(Field::Absent) | None) => Merged::Absent,
    }
}

/// This node's pod subnet of `f` ([lease] first, else [nat]), with where it
/// was written.
fn pod_subnet(raw: &Raw, f: Family) -> Option<(IpNet, String)> {
    let (_, key) = family_keys(f);
    if let Some(s) = raw.lease.as_ref().and_then(|l| l.family(f).subnet.given()) {
        return Some((s.v, format!("[lease] `{key}`")));
    }
    raw.nat
        .as_ref()
        .and_then(|n| n.family(f).subnet.given())
        .map(|s| (s.v, format!("[nat] `{key}`")))
}

/// Runs every semantic check; problems go to `d`. `allow_empty`: a file
/// that declares nothing is fine (for `cleanup`).
pub(crate) fn check(raw: &Raw, d: &mut Diags<'_>, allow_empty: bool) {
    // Only when nothing else is wrong: a misspelt `[[vxaln]]` already has
    // its own error with a suggestion.
    if !allow_empty && declares_nothing(raw) && d.is_empty() {
        d.error(
            Span::new(0, 0),
            "the configuration declares nothing: no [[vxlan]], [[address]], [[route]], [[neighbor]], [[fdb]], [[peer]], [nat] or [lease]",
            "an empty or truncated file would remove everything netconverge owns, so it is refused; \
             restore the file, or run `netconverge cleanup` (with this file, or the last good one) to remove it all on purpose",
        );
        return;
    }
    let devs = vxlans(raw, d);
    addresses(raw, &devs, d);
    routes(raw, &devs, d);
    neighbors(raw, &devs, d);
    fdb(raw, &devs, d);
    peers(raw, &devs, d);
    lease(raw, d);
    super::cni::check(raw, d);
    nat(raw, d);
    ipv6_mtu(raw, &devs, d);
}

/// Nothing that netconverge would own: converging it removes every owned
/// object, which only `cleanup` may do.
fn declares_nothing(raw: &Raw) -> bool {
    raw.vxlans.is_empty()
        && raw.addresses.is_empty()
        && raw.routes.is_empty()
        && raw.neighbors.is_empty()
        && raw.fdb.is_empty()
        && raw.peers.is_empty()
        && raw.nat.is_none()
        && raw.lease.is_none()
        && raw.cni.is_none()
}

/// A declared MTU below 1280 where IPv6 is declared: the kernel would refuse
/// the addresses (and drop the routes), and pods given that MTU get no IPv6.
/// A derived MTU (underlay − overhead) is only known at converge time; the
/// planner blocks that case.
fn ipv6_mtu(raw: &Raw, devs: &Devices<'_>, d: &mut Diags<'_>) {
    // First IPv6 object on each device: (what, line).
    let mut v6: HashMap<&str, (&'static str, Span)> = HashMap::default();
    // Only declared VXLANs: an underlay's MTU is not netconverge's.
    let mut note = |dev: &Sp<String>, what: &'static str, at: Span| {
        if let Some((name, _)) = devs.vxlans.get_key_value(dev.v.as_str()) {
            v6.entry(*name).or_insert((what, at));
        }
    };
    for a in &raw.addresses {
        if let (Some(dev), Some(c)) = (&a.dev, &a.cidr) {
            if Family::of_net(&c.v) == Family::Ipv6 {
                note(dev, "IPv6 [[address]]", c.span);
            }
        }
    }
    for r in &raw.routes {
        if let (Some(dev), Some(dst)) = (r.dev.given(), &r.dst) {
            if Family::of_net(&dst.v) == Family::Ipv6 {
                note(dev, "IPv6 [[route]]", dst.span);
            }
        }
    }
    for n in &raw.neighbors {
        if let (Some(dev), Some(ip)) = (&n.dev, &n.ip) {
            if Family::of(&ip.v) == Family::Ipv6 {
                note(dev, "IPv6 [[neighbor]]", ip.span);
            }
        }
    }
    for p in &raw.peers {
        if let (Some(dev), Some(sub)) = (&p.dev, &p.subnet) {
            if Family::of_net(&sub.v) == Family::Ipv6 {
                note(dev, "IPv6 [[peer]]", sub.span);
            }
        }
    }
    for v in &raw.vxlans {
        let (Some(name), Some(mtu)) = (&v.name, v.mtu.given()) else {
            continue;
        };
        if mtu.v >= IPV6_MIN_MTU {
            continue;
        }
        if let Some((what, at)) = v6.get(name.v.as_str()) {
            d.error(
                mtu.span,
                format!(
                    "`mtu` {} on `{}` is below IPv6's minimum of {IPV6_MIN_MTU}, but the {what} at line {} uses it",
                    mtu.v,
                    name.v,
                    d.line(*at)
                ),
                format!(
                    "the kernel refuses IPv6 on a device with an MTU below {IPV6_MIN_MTU}: raise `mtu` to at least {IPV6_MIN_MTU}, or remove the IPv6 objects from `{}`",
                    name.v
                ),
            );
        }
    }
    if let Some(l) = &raw.lease {
        if let (Some(mtu), Some(f)) = (l.mtu.given(), l.v6.subnet.given()) {
            if mtu.v < IPV6_MIN_MTU {
                d.error(
                    mtu.span,
                    format!(
                        "[lease] `mtu` {} is below IPv6's minimum of {IPV6_MIN_MTU}, but the lease declares `ipv6_subnet` {} (line {})",
                        mtu.v,
                        f.v,
                        d.line(f.span)
                    ),
                    format!(
                        "pods get this MTU and the kernel refuses IPv6 below {IPV6_MIN_MTU}: raise `mtu` to at least {IPV6_MIN_MTU}, or remove the IPv6 family"
                    ),
                );
            }
        }
    }
}

fn vxlans<'r>(raw: &'r Raw, d: &mut Diags<'_>) -> Devices<'r> {
    let mut devs = Devices {
        vxlans: HashMap::default(),
        underlays: HashSet::default(),
    };
    let mut name_at: HashMap<&str, Span> = HashMap::default();
    let mut vni_at: HashMap<(u32, u16, Family, bool), (&str, Span)> = HashMap::default();
    for v in &raw.vxlans {
        if let Some(u) = &v.underlay {
            devs.underlays.insert(u.v.as_str());
        }
        let Some(name) = &v.name else { continue };
        if let Some(first) = name_at.get(name.v.as_str()) {
            d.error(
                name.span,
                format!("duplicate [[vxlan]] name `{}`", name.v),
                format!(
                    "first declared at line {}; each device needs its own name",
                    d.line(*first)
                ),
            );
            continue;
        }
        name_at.insert(&name.v, name.span);
        devs.vxlans.insert(&name.v, v);
    }

    for v in &raw.vxlans {
        let name = v.name.as_ref().map_or("", |n| n.v.as_str());
        if let (Some(vni), Some(port), Some(fam), Some(gbp)) = (&v.vni, &v.port, &v.family, &v.gbp)
        {
            // The kernel's own uniqueness key (vxlan_vni_in_use): the underlay
            // does not matter, the family and GBP flag do.
            let key = (vni.v, port.v, fam.v, gbp.v);
            if let Some((other, at)) = vni_at.get(&key) {
                d.error(
                    vni.span,
                    format!(
                        "VNI {} on UDP port {} is already used by {} [[vxlan]] `{other}` (line {})",
                        vni.v,
                        port.v,
                        fam_name(fam.v),
                        d.line(*at)
                    ),
                    format!(
                        "the kernel allows one {} VXLAN device per VNI and port: change `vni` or `port`",
                        fam_name(fam.v)
                    ),
                );
            } else {
                vni_at.insert(key, (name, vni.span));
            }
        }
        if let (true, Some(fam), Some(local)) = (v.family_explicit, &v.family, v.local.given()) {
            if Family::of(&local.v) != fam.v {
                d.error(
                    local.span,
                    format!(
                        "`local` {} is {} but `family` is \"{}\"",
                        local.v,
                        fam_of(&local.v),
                        fam.v
                    ),
                    format!(
                        "use an {} local address, or set family = \"{}\"",
                        fam_name(fam.v),
                        Family::of(&local.v)
                    ),
                );
            }
        }
        if let Some(u) = &v.underlay {
            if devs.vxlans.contains_key(u.v.as_str()) {
                d.error(
                    u.span,
                    format!("underlay `{}` is itself a declared [[vxlan]]", u.v),
                    "the underlay is the interface that carries the encapsulated packets, e.g. \"eth0\"",
                );
            }
        }
    }
    devs
}

fn unknown_dev(d: &mut Diags<'_>, dev: &Sp<String>, what: &str) {
    d.error(
        dev.span,
        format!(
            "{what} device `{}` is neither a declared [[vxlan]] nor a VXLAN underlay",
            dev.v
        ),
        "declare it as [[vxlan]] or use an underlay",
    );
}

fn addresses(raw: &Raw, devs: &Devices<'_>, d: &mut Diags<'_>) {
    let mut seen: HashMap<(&str, IpNet), usize> = HashMap::default();
    for (i, a) in raw.addresses.iter().enumerate() {
        let (Some(dev), Some(cidr)) = (&a.dev, &a.cidr) else {
            continue;
        };
        if !devs.knows(&dev.v) {
            unknown_dev(d, dev, "[[address]]");
            continue;
        }
        if let Some(first) = seen.get(&(dev.v.as_str(), cidr.v)) {
            d.error(
                cidr.span,
                format!("address {} on `{}` is declared twice", cidr.v, dev.v),
                format!("address #{} already declares it: remove one", first + 1),
            );
            continue;
        }
        seen.insert((&dev.v, cidr.v), i);
        let fam = Family::of_net(&cidr.v);
        if devs.vxlans.contains_key(dev.v.as_str()) {
            if let Some((subnet, from)) = pod_subnet(raw, fam) {
                if !subnet.contains(&cidr.v) {
                    let full = if fam == Family::Ipv4 { 32 } else { 128 };
                    d.error(
                        cidr.span,
                        format!(
                            "address {} on VXLAN `{}` is outside this node's pod subnet {subnet} ({from})",
                            cidr.v, dev.v
                        ),
                        format!(
                            "flannel convention: the subnet's network address, i.e. \"{}/{full}\"",
                            subnet.network()
                        ),
                    );
                }
            }
        }
    }
}

fn routes(raw: &Raw, devs: &Devices<'_>, d: &mut Diags<'_>) {
    // (table, dst, metric) → route #N (0-based)
    let mut seen: HashMap<(u32, IpNet, u32), usize> = HashMap::default();
    for (i, r) in raw.routes.iter().enumerate() {
        if r.via.is_absent() && r.dev.is_absent() {
            d.error(
                r.header,
                "[[route]] needs `via`, `dev`, or both",
                "add `dev = \"flannel.1\"` for a device route, or `via = \"192.0.2.1\"` for a gateway",
            );
        }
        if let (Some(onlink), true) = (&r.onlink, r.via.is_absent()) {
            if onlink.v {
                d.error(
                    onlink.span,
                    "`onlink` requires `via`",
                    "add the gateway with `via`, or remove `onlink`",
                );
            }
        }
        if let Some(dev) = r.dev.given() {
            if !devs.knows(&dev.v) {
                unknown_dev(d, dev, "[[route]]");
            }
        }
        let Some(dst) = &r.dst else { continue };
        for (key, f) in [("via", &r.via), ("src", &r.src)] {
            if let Some(a) = f.given() {
                if Family::of(&a.v) != Family::of_net(&dst.v) {
                    d.error(
                        a.span,
                        format!(
                            "`{key}` {} is {} but `dst` {} is {}",
                            a.v,
                            fam_of(&a.v),
                            dst.v,
                            fam_of_net(&dst.v)
                        ),
                        format!(
                            "use an {} `{key}`, or write one [[route]] per family",
                            fam_of_net(&dst.v)
                        ),
                    );
                }
            }
        }
        let (Some(table), Ok(metric)) = (&r.table, r.metric.value()) else {
            continue;
        };
        let key = (table.v, dst.v, effective_metric(&dst.v, metric));
        if let Some(first) = seen.get(&key) {
            d.error(
                dst.span,
                format!(
                    "route {} (table {}, metric {}) is declared twice",
                    dst.v, key.0, key.2
                ),
                format!(
                    "route #{} already declares it: remove one, or give them different metrics",
                    first + 1
                ),
            );
        } else {
            seen.insert(key, i);
        }
    }
    for p in &raw.peers {
        let Some(subnet) = &p.subnet else { continue };
        let key = (MAIN_TABLE, subnet.v, effective_metric(&subnet.v, None));
        if let Some(first) = seen.get(&key) {
            d.error(
                subnet.span,
                format!(
                    "peer {} installs a route to {} that route #{} also declares",
                    subnet.v,
                    subnet.v,
                    first + 1
                ),
                "remove that [[route]]: the peer already routes its subnet",
            );
        }
    }
}

fn neighbors(raw: &Raw, devs: &Devices<'_>, d: &mut Diags<'_>) {
    let mut seen: HashMap<(&str, IpAddr), usize> = HashMap::default();
    for (i, n) in raw.neighbors.iter().enumerate() {
        let Some(dev) = &n.dev else { continue };
        if !devs.knows(&dev.v) {
            unknown_dev(d, dev, "[[neighbor]]");
            continue;
        }
        let Some(ip) = &n.ip else { continue };
        if let Some(first) = seen.get(&(dev.v.as_str(), ip.v)) {
            d.error(
                ip.span,
                format!("neighbor {} on `{}` is declared twice", ip.v, dev.v),
                format!("neighbor #{} already declares it: remove one", first + 1),
            );
        } else {
            seen.insert((&dev.v, ip.v), i);
        }
    }
    for p in &raw.peers {
        let (Some(dev), Some(subnet)) = (&p.dev, &p.subnet) else {
            continue;
        };
        if let Some(first) = seen.get(&(dev.v.as_str(), subnet.v.network())) {
            d.error(
                subnet.span,
                format!(
                    "peer {} installs the neighbor {} on `{}` that neighbor #{} also declares",
                    subnet.v,
                    subnet.v.network(),
                    dev.v,
                    first + 1
                ),
                "remove that [[neighbor]]: the peer already installs it",
            );
        }
    }
}

/// The declared VXLAN a [[fdb]]/[[peer]] entry lives on, reporting when absent.
fn vxlan_dev<'r>(
    devs: &Devices<'r>,
    dev: &Sp<String>,
    what: &str,
    d: &mut Diags<'_>,
) -> Option<&'r RawVxlan> {
    let v = devs.vxlans.get(dev.v.as_str()).copied();
    if v.is_none() {
        let names = devs.names();
        let help = if names.is_empty() {
            "declare the VXLAN device with a [[vxlan]] table".to_string()
        } else {
            format!("{what} entries live on a declared [[vxlan]]: {names}")
        };
        d.error(
            dev.span,
            format!("{what} device `{}` is not a declared [[vxlan]]", dev.v),
            help,
        );
    }
    v
}

fn family_mismatch(d: &mut Diags<'_>, at: &Sp<IpAddr>, key: &str, v: &RawVxlan, fam: Family) {
    let name = v.name.as_ref().map_or("", |n| n.v.as_str());
    d.error(
        at.span,
        format!(
            "`{key}` {} is {} but [[vxlan]] `{name}` is {}",
            at.v,
            fam_of(&at.v),
            fam_name(fam)
        ),
        format!(
            "use the remote VTEP's {} underlay address (or a VXLAN device of family \"{}\")",
            fam_name(fam),
            Family::of(&at.v)
        ),
    );
}

fn fdb(raw: &Raw, devs: &Devices<'_>, d: &mut Diags<'_>) {
    let mut seen: HashMap<(&str, Mac, IpAddr), usize> = HashMap::default();
    for (i, e) in raw.fdb.iter().enumerate() {
        let Some(dev) = &e.dev else { continue };
        let Some(v) = vxlan_dev(devs, dev, "[[fdb]]", d) else {
            continue;
        };
        let Some(dst) = &e.dst else { continue };
        if let Some(fam) = &v.family {
            if Family::of(&dst.v) != fam.v {
                family_mismatch(d, dst, "dst", v, fam.v);
                continue;
            }
        }
        let Some(mac) = &e.mac else { continue };
        if let Some(first) = seen.get(&(dev.v.as_str(), mac.v, dst.v)) {
            d.error(
                dst.span,
                format!(
                    "FDB entry {} → {} on `{}` is declared twice",
                    mac.v, dst.v, dev.v
                ),
                format!("fdb #{} already declares it: remove one", first + 1),
            );
        } else {
            seen.insert((&dev.v, mac.v, dst.v), i);
        }
    }
    for p in &raw.peers {
        let (Some(dev), Some(mac), Some(ip)) = (&p.dev, &p.vtep_mac, &p.vtep_ip) else {
            continue;
        };
        if let Some(first) = seen.get(&(dev.v.as_str(), mac.v, ip.v)) {
            d.error(
                mac.span,
                format!(
                    "peer installs the FDB entry {} → {} on `{}` that fdb #{} also declares",
                    mac.v,
                    ip.v,
                    dev.v,
                    first + 1
                ),
                "remove that [[fdb]]: the peer already installs it",
            );
        }
    }
}

/// The MAC this node's VXLAN will carry, when it is known without machine-id.
fn own_mac(raw: &Raw, v: &RawVxlan) -> Option<Mac> {
    if let Some(m) = v.mac.given() {
        return Some(m.v);
    }
    let seed = raw.node_name.as_ref()?;
    let name = v.name.as_ref()?;
    v.mac.is_absent().then(|| Mac::derive(&seed.v, &name.v))
}

/// What each [[peer]] is checked against, built once for all of them.
struct PeerIndex<'r> {
    /// Every [[address]] on a device, as the network it covers.
    addrs: HashMap<&'r str, NetIndex<Span>>,
    /// This node's own pod subnet per family, and where it comes from.
    own: Vec<(Family, IpNet, String)>,
    /// The subnets of the peers checked so far.
    others: NetIndex<Span>,
    /// The VTEP MAC of every peer checked so far, per device.
    macs: HashMap<(&'r str, Mac), (&'r RawPeer, Span)>,
}

fn peers(raw: &Raw, devs: &Devices<'_>, d: &mut Diags<'_>) {
    let mut addrs: HashMap<&str, NetIndex<Span>> = HashMap::default();
    for a in &raw.addresses {
        if let (Some(dev), Some(cidr)) = (&a.dev, &a.cidr) {
            addrs
                .entry(&dev.v)
                .or_insert_with(NetIndex::new)
                .insert(cidr.v.trunc(), cidr.span);
        }
    }
    let mut ix = PeerIndex {
        addrs,
        own: FAMILIES
            .iter()
            .filter_map(|f| pod_subnet(raw, *f).map(|(n, from)| (*f, n, from)))
            .collect(),
        others: NetIndex::new(),
        macs: HashMap::default(),
    };
    // Each device's own MAC, derived (a SHA-256) once, not once per peer.
    let mut own_macs: HashMap<&str, Option<Mac>> = HashMap::default();
    for p in &raw.peers {
        let v = p
            .dev
            .as_ref()
            .and_then(|dev| vxlan_dev(devs, dev, "[[peer]]", d));
        if let (Some(v), Some(dev)) = (v, &p.dev) {
            let own = *own_macs
                .entry(dev.v.as_str())
                .or_insert_with(|| own_mac(raw, v));
            peer_vtep(own, v, p, d);
        }
        peer_mac_unique(p, &mut ix, d);
        if let Some(subnet) = &p.subnet {
            peer_subnet(p, subnet, &mut ix, d);
        }
    }
}

/// The peer's VTEP is another node's: its address has the device's family
/// and is not this node's `local`, its MAC is not this node's.
fn peer_vtep(own_mac: Option<Mac>, v: &RawVxlan, p: &RawPeer, d: &mut Diags<'_>) {
    if let Some(ip) = &p.vtep_ip {
        if let Some(fam) = &v.family {
            if Family::of(&ip.v) != fam.v {
                family_mismatch(d, ip, "vtep_ip", v, fam.v);
            }
        }
        if v.local.given().is_some_and(|l| l.v == ip.v) {
            d.error(
                ip.span,
                format!("`vtep_ip` {} is this node's own `local` address", ip.v),
                "a peer is another node: use that node's underlay address",
            );
        }
    }
    if let Some(mac) = &p.vtep_mac {
        if own_mac == Some(mac.v) {
            d.error(
                mac.span,
                format!("`vtep_mac` {} is this node's own VTEP MAC", mac.v),
                "a peer is another node: use that node's VTEP MAC",
            );
        }
    }
}

/// Each node's VTEP has its own MAC: a second peer with it on the same
/// device is reported with the first one's line.
fn peer_mac_unique<'r>(p: &'r RawPeer, ix: &mut PeerIndex<'r>, d: &mut Diags<'_>) {
    let (Some(dev), Some(mac)) = (&p.dev, &p.vtep_mac) else {
        return;
    };
    match ix.macs.get(&(dev.v.as_str(), mac.v)) {
        Some((first, at)) => {
            let other = first
                .subnet
                .as_ref()
                .map_or(String::new(), |s| s.v.to_string());
            d.error(
                mac.span,
                format!(
                    "VTEP MAC {} on `{}` is already used by peer {other} (line {})",
                    mac.v,
                    dev.v,
                    d.line(*at)
                ),
                "each node's VTEP has its own MAC: check which peer has the wrong one",
            );
        }
        None => {
            ix.macs.insert((&dev.v, mac.v), (p, mac.span));
        }
    }
}

/// The peer's pod subnet is its own: it overlaps neither this node's pod
/// subnet, nor an address on its device, nor another peer's subnet.
fn peer_subnet(p: &RawPeer, subnet: &Sp<IpNet>, ix: &mut PeerIndex<'_>, d: &mut Diags<'_>) {
    for (f, n, from) in &ix.own {
        if Family::of_net(&subnet.v) == *f && (n.contains(&subnet.v) || subnet.v.contains(n)) {
            d.error(
                subnet.span,
                format!(
                    "peer subnet {} overlaps this node's own pod subnet {n} ({from})",
                    subnet.v
                ),
                "a peer is another node: use that node's pod subnet",
            );
        }
    }
    if let Some(dev) = &p.dev {
        if let Some((n, at)) = ix
            .addrs
            .get_mut(dev.v.as_str())
            .and_then(|a| a.find_overlap(&subnet.v))
        {
            d.error(
                subnet.span,
                format!(
                    "peer subnet {} overlaps address {n} on `{}` (line {})",
                    subnet.v,
                    dev.v,
                    d.line(*at)
                ),
                "this node's own address is not a peer's: use the peer's pod subnet",
            );
        }
    }
    match ix.others.find_overlap(&subnet.v) {
        Some((n, at)) => {
            let how = if n == subnet.v {
                "is the same as".to_string()
            } else {
                "overlaps".to_string()
            };
            d.error(
                subnet.span,
                format!(
                    "peer subnet {} {how} peer subnet {n} (line {})",
                    subnet.v,
                    d.line(*at)
                ),
                "each node has its own pod subnet: remove the duplicate peer or fix its subnet",
            );
        }
        None => ix.others.insert(subnet.v, subnet.span),
    }
}

fn lease(raw: &Raw, d: &mut Diags<'_>) {
    let Some(l) = &raw.lease else { return };
    let mut any = false;
    for f in FAMILIES {
        let (nk, sk) = family_keys(f);
        let fam = l.family(f);
        any |= !fam.network.is_absent() || !fam.subnet.is_absent();
        family_pair(d, "[lease]", fam, nk, sk);
    }
    if let (Some(mode), Some(path), Some(dir)) = (&l.mode, &l.path, &l.state_dir) {
        if mode.v == LeaseMode::Preserve
            && path.v == dir.v.join(crate::model::lease::BACKUP_FILE_NAME)
        {
            d.error(
                path.span,
                format!(
                    "`path` {} is the guard-mode backup inside `state_dir`",
                    path.v.display()
                ),
                "the backup must be a separate file: point `state_dir` elsewhere, e.g. \"/var/lib/netconverge\"",
            );
        }
    }
    if !any && l.mode.as_ref().is_some_and(|m| m.v == LeaseMode::Write) {
        d.error(
            l.header,
            "[lease] in write mode needs at least one address family",
            "set `network` and `subnet` (and/or `ipv6_network` and `ipv6_subnet`), or use mode = \"preserve\"",
        );
    }
}

/// One family of [lease] as written: both keys or neither, subnet in network.
pub(crate) fn family_pair(d: &mut Diags<'_>, section: &str, fam: &RawFamily, nk: &str, sk: &str) {
    match (&fam.network, &fam.subnet) {
        (Field::Given(n), Field::Absent) => d.error(
            n.span,
            format!("{section} has `{nk}` but no `{sk}`"),
            format!(
                "add `{sk}` (this node's pod subnet inside {}), or remove `{nk}`",
                n.v
            ),
        ),
        (Field::Absent, Field::Given(s)) => d.error(
            s.span,
            format!("{section} has `{sk}` but no `{nk}`"),
            format!(
                "add `{nk}` (the cluster network containing {}), or remove `{sk}`",
                s.v
            ),
        ),
        (Field::Given(n), Field::Given(s)) if !n.v.contains(&s.v) => d.error(
            s.span,
            format!("`{sk}` {} is not inside `{nk}` {}", s.v, n.v),
            format!(
                "the node's pod subnet must be part of the cluster network {}",
                n.v
            ),
        ),
        _ => {}
    }
}

fn nat(raw: &Raw, d: &mut Diags<'_>) {
    let Some(n) = &raw.nat else { return };
    let mut complete = false;
    let mut unknown = false;
    for f in FAMILIES {
        let (nk, sk) = family_keys(f);
        let lf = raw.lease.as_ref().map(|l| l.family(f));
        let nf = n.family(f);
        // [nat] repeating a [lease] value must agree with it.
        let mut differs = false;
        for (key, nv, lv) in [
            (nk, &nf.network, lf.map(|x| &x.network)),
            (sk, &nf.subnet, lf.map(|x| &x.subnet)),
        ] {
            if let (Some(a), Some(Field::Given(b))) = (nv.given(), lv) {
                if a.v != b.v {
                    differs = true;
                    d.error(
                        a.span,
                        format!("[nat] `{key}` {} differs from [lease] `{key}` {}", a.v, b.v),
                        format!(
                            "remove `{key}` from [nat] (it is taken from [lease]), or make both {}",
                            b.v
                        ),
                    );
                }
            }
        }
        if differs {
            // Which of the two is meant is unknown: nothing more to check.
            unknown = true;
            continue;
        }
        let net = merge(&nf.network, lf.map(|x| &x.network));
        let sub = merge(&nf.subnet, lf.map(|x| &x.subnet));
        match (net, sub) {
            (Merged::Unknown, _) | (_, Merged::Unknown) => unknown = true,
            (Merged::Known { net, span, from_nat: true }, Merged::Absent) => d.error(
                span,
                format!("[nat] has `{nk}` but no `{sk}`"),
                format!(
                    "add `{sk}` (this node's pod subnet inside {net}) to [nat] or [lease], or remove `{nk}`"
                ),
            ),
            (Merged::Absent, Merged::Known { net, span, from_nat: true }) => d.error(
                span,
                format!("[nat] has `{sk}` but no `{nk}`"),
                format!(
                    "add `{nk}` (the cluster network containing {net}) to [nat] or [lease], or remove `{sk}`"
                ),
            ),
            (
                Merged::Known {
                    net: cn,
                    span: cs,
                    from_nat: cf,
                },
                Merged::Known {
                    net: sn,
                    span: ss,
                    from_nat: sf,
                },
            ) => {
                complete = true;
                if (cf || sf) && !cn.contains(&sn) {
                    d.error(
                        if sf { ss } else { cs },
                        format!("`{sk}` {sn} is not inside `{nk}` {cn}"),
                        format!("the node's pod subnet must be part of the cluster network {cn}"),
                    );
                }
            }
            _ => {}
        }
    }
    if !complete && !unknown && n.masquerade.as_ref().is_some_and(|m| m.v) {
        d.error(
            n.header,
            "[nat] masquerades but knows no cluster network",
            "set `network` and `subnet` (or the ipv6_ ones) in [nat] or [lease], or set masquerade = false",
        );
    }
}

// ---------------------------------------------------------------- mapping --

fn nat_family(raw: &Raw, f: Family) -> Option<NatFamily> {
    let n = raw.nat.as_ref()?;
    let lf = raw.lease.as_ref().map(|l| l.family(f));
    let nf = n.family(f);
    match (
        merge(&nf.network, lf.map(|x| &x.network)),
        merge(&nf.subnet, lf.map(|x| &x.subnet)),
    ) {
        (Merged::Known { net: c, .. }, Merged::Known { net: s, .. }) => Some(NatFamily {
            cluster: c,
            pod_subnet: s,
        }),
        _ => None,
    }
}

fn lease_family(fam: &RawFamily) -> Option<LeaseFamily> {
    Some(LeaseFamily {
        network: fam.network.given()?.v,
        subnet: fam.subnet.given()?.v,
    })
}

/// Maps a config that passed [`check`] (with no errors) into the model.
/// `None` only if a required value is missing, which `check` has reported.
pub(crate) fn build(raw: &Raw) -> Option<Desired> {
    if !raw.settings_ok {
        return None;
    }
    let mut out = Desired {
        mac_seed: raw.node_name.as_ref().map(|n| n.v.clone()),
        daemon: raw.daemon.clone(),
        engine: raw.engine.clone(),
        state_dir: raw.state_dir.as_ref().map_or_else(
            || std::path::PathBuf::from(crate::model::DEFAULT_STATE_DIR),
            |d| d.v.clone(),
        ),
        ..Desired::default()
    };
    // One step per section. Explicit objects come before the peers' (the
    // planner keeps declaration order within a stage); NAT before the
    // lease, whose ipmasq defaults to NAT's masquerade.
    build_vxlans(raw, &mut out)?;
    build_objects(raw, &mut out)?;
    build_peers(raw, &mut out)?;
    build_nat(raw, &mut out)?;
    build_lease(raw, &mut out)?;
    out.cni = super::cni::build(raw)?;
    Some(out)
}

/// The [[vxlan]] devices, and those adopted.
fn build_vxlans(raw: &Raw, out: &mut Desired) -> Option<()> {
    for v in &raw.vxlans {
        out.vxlans.push(VxlanSpec {
            name: v.name.as_ref()?.v.clone(),
            vni: v.vni.as_ref()?.v,
            port: v.port.as_ref()?.v,
            underlay: v.underlay.as_ref()?.v.clone(),
            family: v.family.as_ref()?.v,
            local: v.local.value().ok()?,
            mac: v.mac.value().ok()?,
            mtu: v.mtu.value().ok()?,
            learning: v.learning.as_ref()?.v,
            gbp: v.gbp.as_ref()?.v,
        });
        if v.adopt.as_ref().is_some_and(|a| a.v) {
            out.adopt.vxlans.insert(v.name.as_ref()?.v.clone());
        }
    }
    Some(())
}

/// The explicit [[address]], [[route]], [[neighbor]] and [[fdb]] objects,
/// each with its origin (`route #3`) for reasons and messages.
fn build_objects(raw: &Raw, out: &mut Desired) -> Option<()> {
    for (i, a) in raw.addresses.iter().enumerate() {
        out.addresses.push(AddressSpec {
            dev: a.dev.as_ref()?.v.clone(),
            cidr: a.cidr.as_ref()?.v,
            origin: format!("address #{}", i + 1),
        });
    }
    for (i, r) in raw.routes.iter().enumerate() {
        out.routes.push(RouteSpec {
            dst: r.dst.as_ref()?.v,
            via: r.via.value().ok()?,
            dev: r.dev.value().ok()?,
            onlink: r.onlink.as_ref()?.v,
            src: r.src.value().ok()?,
            metric: match r.dst.as_ref()?.v {
                IpNet::V4(_) => r.metric.value().ok()?,
                IpNet::V6(_) => normal_metric6(r.metric.value().ok()?),
            },
            table: r.table.as_ref()?.v,
            origin: format!("route #{}", i + 1),
        });
        if r.adopt.as_ref().is_some_and(|a| a.v) {
            out.adopt.routes.insert((
                r.table.as_ref()?.v,
                r.dst.as_ref()?.v,
                r.metric.value().ok()?,
            ));
        }
    }
    for (i, n) in raw.neighbors.iter().enumerate() {
        out.neighbors.push(NeighborSpec {
            dev: n.dev.as_ref()?.v.clone(),
            ip: n.ip.as_ref()?.v,
            mac: n.mac.as_ref()?.v,
            origin: format!("neighbor #{}", i + 1),
        });
    }
    for (i, e) in raw.fdb.iter().enumerate() {
        out.fdb.push(FdbSpec {
            dev: e.dev.as_ref()?.v.clone(),
            mac: e.mac.as_ref()?.v,
            dst: e.dst.as_ref()?.v,
            origin: format!("fdb #{}", i + 1),
        });
    }
    Some(())
}

/// The [[peer]]s, and their routes adopted.
fn build_peers(raw: &Raw, out: &mut Desired) -> Option<()> {
    // Each remote node becomes flannel's three objects (`PeerSpec::expand`).
    for p in &raw.peers {
        let peer = PeerSpec {
            dev: p.dev.as_ref()?.v.clone(),
            subnet: p.subnet.as_ref()?.v,
            vtep_ip: p.vtep_ip.as_ref()?.v,
            vtep_mac: p.vtep_mac.as_ref()?.v,
        };
        if p.adopt.as_ref().is_some_and(|a| a.v) {
            out.adopt.routes.insert((MAIN_TABLE, peer.subnet, None));
        }
        out.add_peer(peer);
    }
    Some(())
}

fn build_nat(raw: &Raw, out: &mut Desired) -> Option<()> {
    if let Some(n) = &raw.nat {
        out.nat = Some(NatSpec {
            backend: n.backend.as_ref()?.v,
            masquerade: n.masquerade.as_ref()?.v,
            ipv4: nat_family(raw, Family::Ipv4),
            ipv6: nat_family(raw, Family::Ipv6),
            random_fully: n.random_fully.as_ref()?.v,
            mark: n.mark.as_ref()?.v,
            nft_table: n.table.as_ref()?.v.clone(),
            iptables_chain: n.chain.as_ref()?.v.clone(),
            iptables: n.iptables.as_ref()?.v,
            adopt: n.adopt.as_ref()?.v,
        });
    }
    Some(())
}

/// The [lease]; `ipmasq` defaults to whether [nat] masquerades.
fn build_lease(raw: &Raw, out: &mut Desired) -> Option<()> {
    if let Some(l) = &raw.lease {
        let nat_masq = out.nat.as_ref().is_some_and(|n| n.masquerade);
        out.lease = Some(LeaseSpec {
            mode: l.mode.as_ref()?.v,
            ipv4: lease_family(&l.v4),
            ipv6: lease_family(&l.v6),
            mtu: l.mtu.value().ok()?,
            ipmasq: l.ipmasq.value().ok()?.unwrap_or(nat_masq),
            path: l.path.as_ref()?.v.clone(),
            state_dir: l.state_dir.as_ref()?.v.clone(),
        });
    }
    Some(())
}
