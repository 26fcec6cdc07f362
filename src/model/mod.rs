//! Typed desired and observed state: the contract between every layer.
//!
//! Invariant: nothing here does I/O, and every value in a [`Desired`] has
//! already passed validation (the config layer is the only constructor in
//! production code), so the planner never has to re-check it.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub mod cni;
pub mod lease;
pub mod nat;

/// Default `state_dir` (netconverge's own state: records, lease backup).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/netconverge";

/// Route protocol number that marks routes netconverge created
/// (`ip route ... proto 199`). Routes outside owned devices are only ever
/// removed when they carry this marker.
pub const ROUTE_PROTOCOL: u8 = 199;

/// Prefix of the `ifalias` netconverge puts on every device it creates or
/// adopts: the kernel carries the mark, so a device is recognised as ours
/// even when the file no longer names it.
pub const DEVICE_MARK: &str = "netconverge";

/// Main routing table.
pub const MAIN_TABLE: u32 = 254;

/// Route protocol of the routes the kernel adds itself (connected
/// networks, `/etc/iproute2/rt_protos` "kernel").
pub const RTPROT_KERNEL: u8 = 2;
/// Route protocol of routes learnt from IPv6 router advertisements ("ra").
pub const RTPROT_RA: u8 = 9;

/// The metric the kernel gives an IPv6 route that asks for none or for 0
/// (`IP6_RT_PRIO_USER`).
pub const IPV6_DEFAULT_METRIC: u32 = 1024;

/// The metric the kernel stores for a route to `dst` asking for `metric`:
/// IPv4 keeps what it is given (unset is 0); IPv6 stores an unset or 0
/// metric as [`IPV6_DEFAULT_METRIC`]. Two routes whose effective metrics
/// are equal hold the same place, so every key of a route uses this.
pub fn effective_metric(dst: &IpNet, metric: Option<u32>) -> u32 {
    match (dst, metric) {
        (IpNet::V4(_), m) => m.unwrap_or(0),
        (IpNet::V6(_), None | Some(0)) => IPV6_DEFAULT_METRIC,
        (IpNet::V6(_), Some(m)) => m,
    }
}

/// Address family of a VXLAN device, a lease, a NAT rule set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }

    pub fn of_net(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::Ipv4,
            IpNet::V6(_) => Family::Ipv6,
        }
    }

    /// VXLAN encapsulation overhead on an underlay of this family
    /// (outer IP + UDP + VXLAN + inner Ethernet). flannel uses 50 for both,
    /// which is wrong for IPv6 (40-byte header instead of 20).
    pub fn vxlan_overhead(self) -> u32 {
        match self {
            Family::Ipv4 => 50,
            Family::Ipv6 => 70,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        })
    }
}

/// An Ethernet address. Displayed and parsed as `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub const ZERO: Mac = Mac([0; 6]);

    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// A stable, locally administered unicast MAC for `device`, derived from
    /// a node seed (machine-id or configured node name). Same inputs, same
    /// MAC: a recreated VXLAN device keeps the address its peers point at.
    pub fn derive(seed: &str, device: &str) -> Mac {
        let mut h = Sha256::new();
        h.update(b"netconverge-vtep-mac\0");
        h.update(seed.trim().as_bytes());
        h.update(b"\0");
        h.update(device.as_bytes());
        let d = h.finalize();
        let mut m = [0u8; 6];
        for (dst, src) in m.iter_mut().zip(d.iter()) {
            *dst = *src;
        }
        // locally administered (bit 1 set), unicast (bit 0 clear)
        m[0] = (m[0] | 0x02) & 0xfe;
        Mac(m)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // By hand: six `{:02x}` cost more than the rest of a plan line.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [b':'; 17];
        for (byte, slot) in self.0.iter().zip(out.chunks_mut(3)) {
            for (d, nibble) in slot.iter_mut().zip([byte >> 4, byte & 0x0f]) {
                *d = HEX.get(usize::from(nibble)).copied().unwrap_or(b'0');
            }
        }
        f.pad(std::str::from_utf8(&out).unwrap_or("??:??:??:??:??:??"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a MAC address (expected six hex pairs like 02:42:ac:11:00:02)")]
pub struct MacParseError(pub String);

impl FromStr for Mac {
    type Err = MacParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for slot in out.iter_mut() {
            let p = parts.next().ok_or_else(|| MacParseError(s.to_string()))?;
            if p.len() != 2 {
                return Err(MacParseError(s.to_string()));
            }
            *slot = u8::from_str_radix(p, 16).map_err(|_| MacParseError(s.to_string()))?;
        }
        if parts.next().is_some() {
            return Err(MacParseError(s.to_string()));
        }
        Ok(Mac(out))
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------- desired --

/// The whole validated desired state of one node.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Desired {
    /// Seed for derived MACs: `node_name` from the file, else the machine-id
    /// (filled in by the loader; `None` only in `validate` without one).
    pub mac_seed: Option<String>,
    pub vxlans: Vec<VxlanSpec>,
    pub addresses: Vec<AddressSpec>,
    pub routes: Vec<RouteSpec>,
    pub neighbors: Vec<NeighborSpec>,
    pub fdb: Vec<FdbSpec>,
    /// Kept for status/reporting; already expanded into neighbors, fdb, routes.
    pub peers: Vec<PeerSpec>,
    pub nat: Option<NatSpec>,
    pub lease: Option<LeaseSpec>,
    /// The CNI conflist netconverge writes (`[cni]`).
    pub cni: Option<CniSpec>,
    pub daemon: DaemonSpec,
    pub engine: EngineSpec,
    /// VXLAN devices (by name) whose underlay is not known by name: it is
    /// whichever interface holds the device's `local` address when
    /// converging (a `[fleet]` node without `[fleet] underlay`: one file
    /// for every host, whose interface names differ). Their `underlay` is a
    /// placeholder that names no interface until
    /// [`Desired::resolve_underlays`] replaces it.
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub underlay_by_local: BTreeSet<String>,
    /// Where netconverge keeps its record of what it created that the
    /// kernel cannot mark (route protocols used). Empty: no record (tests
    /// that build a `Desired` by hand).
    pub state_dir: PathBuf,
    /// Objects the file explicitly allows netconverge to take over although
    /// it did not create them (`adopt = true`).
    pub adopt: AdoptSpec,
    /// The peers came from a `[fleet]` in the file (a static source: it
    /// changes only on reload; reported as such by the daemon's metrics).
    #[serde(skip)]
    pub fleet: bool,
}

/// What `adopt = true` covers: a `[[vxlan]]` device (and every declared
/// object on it, e.g. the peer routes a previous flannel left with proto
/// boot), and single `[[route]]`s by their kernel key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AdoptSpec {
    pub vxlans: std::collections::BTreeSet<String>,
    /// (table, dst, metric as written).
    pub routes: std::collections::BTreeSet<(u32, IpNet, Option<u32>)>,
}

impl Desired {
    /// The VXLAN device carrying this node's pods of `family`: the first
    /// one with an address of that family, else the first one of that
    /// underlay family. The lease's and the CNI conflist's MTU come from it.
    pub fn pod_device(&self, family: Family) -> Option<&VxlanSpec> {
        let by_addr = self.vxlans.iter().find(|v| {
            self.addresses
                .iter()
                .any(|a| a.dev == v.name && Family::of_net(&a.cidr) == family)
        });
        by_addr.or_else(|| self.vxlans.iter().find(|v| v.family == family))
    }

    /// Every file netconverge writes as declared state (the lease, the CNI
    /// conflist): the daemon watches each of them for drift.
    pub fn written_files(&self) -> Vec<PathBuf> {
        self.lease
            .iter()
            .map(|l| l.path.clone())
            .chain(self.cni.iter().map(|c| c.path.clone()))
            .collect()
    }

    /// This state with every [`Desired::underlay_by_local`] device's
    /// underlay set to the interface that holds its `local` address in
    /// `observed` (the smallest name if several do: deterministic). A device
    /// whose address is held by no interface keeps its placeholder, which
    /// the planner reports as an absent underlay. Borrowed, at no cost,
    /// when there is nothing to resolve.
    pub fn resolve_underlays(&self, observed: &Observed) -> Cow<'_, Desired> {
        if self.underlay_by_local.is_empty() {
            return Cow::Borrowed(self);
        }
        let owned: BTreeSet<&str> = self.owned_devices().collect();
        let mut out = self.clone();
        for v in &mut out.vxlans {
            if !self.underlay_by_local.contains(&v.name) {
                continue;
            }
            let Some(local) = v.local else { continue };
            if let Some(dev) = observed
                .addresses
                .iter()
                .filter(|a| a.cidr.addr() == local && !owned.contains(a.dev.as_str()))
                .map(|a| a.dev.as_str())
                .min()
            {
                v.underlay = dev.to_string();
            }
        }
        Cow::Owned(out)
    }

    /// The MAC a VXLAN device must have: the configured one, else derived
    /// from the node seed. `None` when there is no seed (validate-only).
    pub fn vxlan_mac(&self, v: &VxlanSpec) -> Option<Mac> {
        v.mac
            .or_else(|| self.mac_seed.as_deref().map(|s| Mac::derive(s, &v.name)))
    }

    /// Names of every device whose contents netconverge fully owns.
    pub fn owned_devices(&self) -> impl Iterator<Item = &str> {
        self.vxlans.iter().map(|v| v.name.as_str())
    }

    pub fn vxlan(&self, name: &str) -> Option<&VxlanSpec> {
        self.vxlans.iter().find(|v| v.name == name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub underlay: String,
    pub family: Family,
    /// `None`: the underlay's first global address of `family`.
    pub local: Option<IpAddr>,
    /// `None`: derived (see [`Desired::vxlan_mac`]).
    pub mac: Option<Mac>,
    /// `None`: underlay MTU − [`Family::vxlan_overhead`].
    pub mtu: Option<u32>,
    pub learning: bool,
    pub gbp: bool,
}

/// Where an object came from, for reasons and error messages
/// (`peer 198.18.2.0/24`, `route #3`).
pub type Origin = String;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AddressSpec {
    pub dev: String,
    /// Address with prefix length, e.g. `198.18.1.0/32`.
    pub cidr: IpNet,
    pub origin: Origin,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteSpec {
    /// Network address (host bits zero).
    pub dst: IpNet,
    pub via: Option<IpAddr>,
    pub dev: Option<String>,
    pub onlink: bool,
    pub src: Option<IpAddr>,
    pub metric: Option<u32>,
    pub table: u32,
    pub origin: Origin,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NeighborSpec {
    pub dev: String,
    pub ip: IpAddr,
    pub mac: Mac,
    pub origin: Origin,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FdbSpec {
    pub dev: String,
    pub mac: Mac,
    pub dst: IpAddr,
    pub origin: Origin,
}

/// One remote node (flannel's lease of another node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerSpec {
    pub dev: String,
    pub subnet: IpNet,
    pub vtep_ip: IpAddr,
    pub vtep_mac: Mac,
}

/// The three kernel objects flannel installs for one remote node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerObjects {
    /// The peer's gateway (its subnet's network address) at its VTEP MAC.
    pub neighbor: NeighborSpec,
    /// The VTEP MAC behind the peer's underlay address.
    pub fdb: FdbSpec,
    /// The peer's subnet via its gateway, onlink, in the main table.
    pub route: RouteSpec,
}

/// `n` in decimal, as `Display` writes it.
fn push_decimal(s: &mut String, n: u8) {
    if n >= 100 {
        s.push(char::from(b'0' + n / 100));
    }
    if n >= 10 {
        s.push(char::from(b'0' + n / 10 % 10));
    }
    s.push(char::from(b'0' + n % 10));
}

impl PeerSpec {
    /// Where the peer's objects come from, for reasons and messages.
    pub fn origin(&self) -> Origin {
        match self.subnet {
            // By hand: `format!` of an IPv4 network was a tenth of
            // loading 10 000 peers.
            IpNet::V4(n) => {
                let mut s = String::with_capacity(23);
                s.push_str("peer ");
                for (i, octet) in n.addr().octets().into_iter().enumerate() {
                    if i > 0 {
                        s.push('.');
                    }
                    push_decimal(&mut s, octet);
                }
                s.push('/');
                push_decimal(&mut s, n.prefix_len());
                s
            }
            IpNet::V6(_) => format!("peer {}", self.subnet),
        }
    }

    /// The one definition of what a peer is in the kernel: validation, the
    /// tests and the benchmarks all expand peers through it.
    pub fn expand(&self) -> PeerObjects {
        let origin = self.origin();
        let gw = self.subnet.network();
        PeerObjects {
            neighbor: NeighborSpec {
                dev: self.dev.clone(),
                ip: gw,
                mac: self.vtep_mac,
                origin: origin.clone(),
            },
            fdb: FdbSpec {
                dev: self.dev.clone(),
                mac: self.vtep_mac,
                dst: self.vtep_ip,
                origin: origin.clone(),
            },
            route: RouteSpec {
                dst: self.subnet,
                via: Some(gw),
                dev: Some(self.dev.clone()),
                onlink: true,
                src: None,
                metric: None,
                table: MAIN_TABLE,
                origin,
            },
        }
    }
}

impl Desired {
    /// Add `peer` with its three objects, in flannel's order: neighbour,
    /// FDB, then the route (the planner keeps stage order).
    pub fn add_peer(&mut self, peer: PeerSpec) {
        self.add_peer_objects(peer.expand());
        self.peers.push(peer);
    }

    /// Add a peer's three objects only (without recording the peer itself).
    pub fn add_peer_objects(&mut self, o: PeerObjects) {
        self.neighbors.push(o.neighbor);
        self.fdb.push(o.fdb);
        self.routes.push(o.route);
    }
}

// -------------------------------------------------------------------- NAT --

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NatBackendKind {
    Nftables,
    Iptables,
}

/// Which iptables flavour the iptables backend writes (`[nat] iptables`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IptablesMode {
    /// Where the host's nat rules live (see `nat::flavour`).
    #[default]
    Auto,
    /// iptables-nft (`iptables-nft-save` & co.).
    Nft,
    /// iptables-legacy (`iptables-legacy-save` & co.).
    Legacy,
}

/// Cluster network and this node's pod subnet for one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct NatFamily {
    pub cluster: IpNet,
    pub pod_subnet: IpNet,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NatSpec {
    pub backend: NatBackendKind,
    /// `false`: netconverge keeps no masquerade rules (its own, if any, are removed).
    pub masquerade: bool,
    pub ipv4: Option<NatFamily>,
    pub ipv6: Option<NatFamily>,
    pub random_fully: bool,
    /// kube-proxy's masquerade-skip mark: (value, mask).
    pub mark: (u32, u32),
    /// nftables table name (in families `ip` and `ip6`).
    pub nft_table: String,
    /// iptables chain name in the nat table.
    pub iptables_chain: String,
    /// iptables flavour (iptables backend only).
    pub iptables: IptablesMode,
    /// Take over a table/chain with our name that netconverge did not
    /// create, replacing its content (otherwise it is a conflict).
    pub adopt: bool,
}

// ------------------------------------------------------------------ lease --

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseMode {
    /// netconverge owns the file's content.
    Write,
    /// Someone else (k3s's embedded flannel) writes it; netconverge keeps a
    /// last-known-good copy and restores it when the file is missing.
    Preserve,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LeaseFamily {
    pub network: IpNet,
    /// The node's pod subnet (network address + prefix).
    pub subnet: IpNet,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseSpec {
    pub mode: LeaseMode,
    pub ipv4: Option<LeaseFamily>,
    pub ipv6: Option<LeaseFamily>,
    /// `None`: the MTU of the VXLAN device of that family (IPv4 first).
    pub mtu: Option<u32>,
    pub ipmasq: bool,
    pub path: PathBuf,
    pub state_dir: PathBuf,
}

// -------------------------------------------------------------------- cni --

/// Which conflist `[cni]` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CniPlugin {
    /// bridge + host-local + portmap with what flannel's CNI plugin would
    /// derive from subnet.env: no flannel binary needed.
    Bridge,
    /// flannel's delegating conflist (the flannel CNI plugin reads the lease).
    Flannel,
}

/// The CNI network configuration list netconverge owns (declared state,
/// like the lease file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CniSpec {
    pub path: PathBuf,
    pub plugin: CniPlugin,
    /// The network name (host-local keeps its allocations under it).
    pub name: String,
    pub bridge: String,
    /// `None`: the MTU of the VXLAN device of the first family (IPv4 first).
    pub mtu: Option<u32>,
    pub hairpin: bool,
    pub ip_masq: bool,
    pub portmap: bool,
    pub bandwidth: bool,
    pub ipv4: Option<LeaseFamily>,
    pub ipv6: Option<LeaseFamily>,
    /// The flannel plugin's `subnetFile` (the `[lease]` path); `None`: its
    /// default `/run/flannel/subnet.env`.
    pub subnet_file: Option<PathBuf>,
}

// ----------------------------------------------------------------- daemon --

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadyPolicy {
    /// READY=1 only when nothing is blocked.
    Converged,
    /// READY=1 once everything not blocked is applied.
    Applied,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NmMode {
    Auto,
    Off,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DaemonSpec {
    pub resync_secs: u64,
    pub debounce_ms: u64,
    pub ready: ReadyPolicy,
    pub networkmanager: NmMode,
    pub backoff_max_secs: u64,
    /// Where the Prometheus endpoint listens (`metrics = "127.0.0.1:9474"`);
    /// `None`: no endpoint (the default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<std::net::SocketAddr>,
}

impl Default for DaemonSpec {
    fn default() -> Self {
        DaemonSpec {
            resync_secs: 60,
            debounce_ms: 20,
            ready: ReadyPolicy::Converged,
            networkmanager: NmMode::Auto,
            backoff_max_secs: 30,
            metrics: None,
        }
    }
}

/// How routes with a gateway and a device are installed (`[engine]
/// nexthops`): through kernel nexthop objects (`ip nexthop`, Linux ≥ 5.3;
/// one per gateway, shared by its routes, ~6× faster for the kernel to
/// install at fleet scale) or as classic `via` routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NexthopMode {
    /// Use kernel nexthop objects when the kernel supports them (the default).
    Auto,
    /// Always use kernel nexthop objects (routes are blocked without them).
    On,
    /// Classic routes with a gateway.
    Off,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EngineSpec {
    pub route_protocol: u8,
    pub nexthops: NexthopMode,
}

impl Default for EngineSpec {
    fn default() -> Self {
        EngineSpec {
            route_protocol: ROUTE_PROTOCOL,
            nexthops: NexthopMode::Auto,
        }
    }
}

// --------------------------------------------------------------- observed --

/// Attributes the kernel reports for a VXLAN link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VxlanAttrs {
    pub vni: u32,
    pub port: u16,
    pub local: Option<IpAddr>,
    pub underlay_index: Option<u32>,
    pub learning: bool,
    pub gbp: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkState {
    pub name: String,
    pub index: u32,
    /// `IFLA_INFO_KIND` (`vxlan`, `veth`, `bridge`, …), empty if none.
    pub kind: String,
    pub mtu: u32,
    pub mac: Option<Mac>,
    /// Administratively up (IFF_UP).
    pub up: bool,
    pub vxlan: Option<VxlanAttrs>,
    /// `IFLA_IFALIAS`; netconverge's devices carry [`DEVICE_MARK`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
}

impl LinkState {
    /// Carries netconverge's mark (created or adopted by it).
    pub fn marked(&self) -> bool {
        self.alias
            .as_deref()
            .is_some_and(|a| a == DEVICE_MARK || a.starts_with("netconverge "))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AddressState {
    pub dev: String,
    pub cidr: IpNet,
    /// `true` for global scope.
    pub global: bool,
    /// `IFA_PROTO` (Linux ≥ 6.1): netconverge marks the addresses it adds
    /// with its route protocol; 0 when unset.
    #[serde(skip_serializing_if = "is_zero")]
    pub protocol: u8,
}

fn is_zero(p: &u8) -> bool {
    *p == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteState {
    pub table: u32,
    pub dst: IpNet,
    /// For a route through a nexthop object: the nexthop's gateway, device
    /// and onlink flag (as the kernel reports them, or resolved from
    /// [`Observed::nexthops`]).
    pub via: Option<IpAddr>,
    pub dev: Option<String>,
    pub onlink: bool,
    pub src: Option<IpAddr>,
    pub metric: Option<u32>,
    pub protocol: u8,
    /// The nexthop object the route goes through (`ip route ... nhid N`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nhid: Option<u32>,
}

/// A kernel nexthop object (`ip nexthop`). `via`/`dev` are absent for
/// groups, blackholes and FDB nexthops, which netconverge never creates but
/// must not collide with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NexthopState {
    pub id: u32,
    pub via: Option<IpAddr>,
    pub dev: Option<String>,
    pub onlink: bool,
    pub protocol: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NeighborState {
    pub dev: String,
    pub ip: IpAddr,
    pub mac: Option<Mac>,
    pub permanent: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FdbState {
    pub dev: String,
    pub mac: Mac,
    pub dst: Option<IpAddr>,
    pub permanent: bool,
}

// ------------------------------------------------ declared → as converged --
// What the kernel holds once a declared object is in place: used to build
// converged observations (tests, benchmarks) from a desired state.

impl From<&NeighborSpec> for NeighborState {
    /// netconverge's neighbours are permanent.
    fn from(n: &NeighborSpec) -> Self {
        NeighborState {
            dev: n.dev.clone(),
            ip: n.ip,
            mac: Some(n.mac),
            permanent: true,
        }
    }
}

impl From<&FdbSpec> for FdbState {
    /// netconverge's FDB entries are permanent.
    fn from(f: &FdbSpec) -> Self {
        FdbState {
            dev: f.dev.clone(),
            mac: f.mac,
            dst: Some(f.dst),
            permanent: true,
        }
    }
}

impl AddressSpec {
    /// The address as the kernel holds it once added with `protocol`.
    pub fn state(&self, protocol: u8) -> AddressState {
        AddressState {
            dev: self.dev.clone(),
            cidr: self.cidr,
            global: true,
            protocol,
        }
    }
}

impl RouteSpec {
    /// The route as the kernel reports it once installed with `protocol`
    /// (through nexthop `nhid`, if any): an IPv6 route always has a metric.
    pub fn state(&self, protocol: u8, nhid: Option<u32>) -> RouteState {
        RouteState {
            table: self.table,
            dst: self.dst,
            via: self.via,
            dev: self.dev.clone(),
            onlink: self.onlink,
            src: self.src,
            metric: match self.dst {
                IpNet::V4(_) => self.metric,
                IpNet::V6(_) => Some(effective_metric(&self.dst, self.metric)),
            },
            protocol,
            nhid,
        }
    }
}

/// What the kernel (and the files/rule sets netconverge manages) look like now.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Observed {
    pub links: BTreeMap<String, LinkState>,
    pub addresses: Vec<AddressState>,
    pub routes: Vec<RouteState>,
    /// Every nexthop object of the namespace (foreign ones too: their ids
    /// are taken).
    pub nexthops: Vec<NexthopState>,
    /// The kernel answered a nexthop dump (Linux ≥ 5.3). `false` in
    /// hand-written observations: classic routes.
    pub nexthop_objects: bool,
    pub neighbors: Vec<NeighborState>,
    pub fdb: Vec<FdbState>,
    pub nat: nat::NatObserved,
    pub lease: lease::LeaseObserved,
    pub cni: cni::CniObserved,
    /// Route protocols netconverge used before (from its record in
    /// `state_dir`): routes and nexthops carrying them are its own too.
    pub past_protocols: std::collections::BTreeSet<u8>,
}

impl Observed {
    pub fn link_by_index(&self, index: u32) -> Option<&LinkState> {
        self.links.values().find(|l| l.index == index)
    }

    /// First global address of `family` on `dev`, in kernel order.
    pub fn first_global_addr(&self, dev: &str, family: Family) -> Option<IpAddr> {
        self.addresses
            .iter()
            .find(|a| a.dev == dev && a.global && Family::of_net(&a.cidr) == family)
            .map(|a| a.cidr.addr())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_origin_is_display_of_the_subnet() {
        for net in [
            "0.0.0.0/0",
            "1.2.3.4/32",
            "10.0.0.0/8",
            "100.64.255.0/24",
            "255.255.255.255/32",
            "fd00:64::/64",
        ] {
            let subnet: IpNet = net.parse().unwrap_or_default();
            let p = PeerSpec {
                dev: "flannel.1".into(),
                subnet,
                vtep_ip: subnet.addr(),
                vtep_mac: Mac([2, 0, 0, 0, 0, 1]),
            };
            assert_eq!(p.origin(), format!("peer {subnet}"));
        }
    }

    #[test]
    fn mac_roundtrip_and_derivation_is_stable_unicast_local() {
        let m: Mac = "02:42:AC:11:00:02".parse().unwrap();
        assert_eq!(m.to_string(), "02:42:ac:11:00:02");
        assert!("02:42:ac:11:00".parse::<Mac>().is_err());
        assert!("02:42:ac:11:00:02:03".parse::<Mac>().is_err());
        let a = Mac::derive("node-a", "flannel.1");
        assert_eq!(a, Mac::derive("node-a", "flannel.1"));
        assert_ne!(a, Mac::derive("node-b", "flannel.1"));
        assert_ne!(a, Mac::derive("node-a", "flannel-v6.1"));
        assert!(!a.is_multicast());
        assert_eq!(a.0[0] & 0x02, 0x02);
    }
}
