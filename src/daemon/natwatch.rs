//! Change notifications for the NAT rules, so their drift is repaired as
//! fast as a route's: `nft flush ruleset` (an nftables.service or firewalld
//! reload), `nft delete table ip netconverge`, a hand edit, or
//! `iptables-nft -t nat -F <chain>`.
//!
//! - nf_tables announces every committed change on netlink
//!   (`NETLINK_NETFILTER`, group `NFNLGRP_NFTABLES`), whoever made it: `nft`
//!   and the iptables-nft tools alike. [`NatInterest`] keeps the messages
//!   that name our table (nftables backend), or the `nat` table's
//!   `POSTROUTING` and our chain (iptables backend), or delete a table we
//!   live in.
//! - iptables-legacy has no notifications: when the configured `iptables`
//!   tools are the legacy flavour, our lines of `iptables-save -t nat` are
//!   read every [`LEGACY_POLL`] and compared with what the last pass
//!   verified ([`NatWatch::learn`]; before the first pass, with the previous
//!   read): any difference counts as an event. Comparing with the verified
//!   state, not merely the previous read, catches a drift that comes back
//!   the same between two reads (flushed, repaired, flushed again).
//!
//! Invariant: a hint only, like every event source — it makes a pass happen
//! sooner and the pass re-reads the rules. Our own writes are announced too;
//! they are not filtered: the debounced pass after them finds nothing to do
//! and writes nothing, so they cannot loop. Failing to subscribe is logged,
//! and the periodic resync still covers the rules.

use std::time::Duration;

use netlink_sys::{AsyncSocket, AsyncSocketExt, TokioSocket, protocols::NETLINK_NETFILTER};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::model::{Family, NatBackendKind, NatSpec};
use crate::nat::{Flavour, IptFamily, Named, NatObserved, Seen, iptables};

/// Our lines of each configured family (IPv4 first); `None`: unreadable.
type LegacySnapshot = Vec<Option<IptFamily>>;
/// What the last pass verified: the iptables flavour it chose, and (for
/// legacy) our lines as it saw them.
type Verified = Option<(Flavour, LegacySnapshot)>;

/// How often our iptables-legacy chain is read (legacy has no events): one
/// `iptables-save -t nat` per family per interval, a few milliseconds each.
pub const LEGACY_POLL: Duration = Duration::from_secs(1);
/// A legacy read that takes longer than this is abandoned (and retried at
/// the next interval).
const LEGACY_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// `NFNLGRP_NFTABLES` (linux/netfilter/nfnetlink.h).
const NFNLGRP_NFTABLES: u32 = 7;
/// `NFNL_SUBSYS_NFTABLES`: the high byte of an nf_tables message type.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
/// `struct nlmsghdr` and `struct nfgenmsg`.
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
/// `NLA_F_NESTED | NLA_F_NET_BYTEORDER`.
const NLA_TYPE_MASK: u16 = 0x3fff;

// enum nf_tables_msg_types (linux/netfilter/nf_tables.h)
const NFT_MSG_NEWTABLE: u8 = 0;
const NFT_MSG_DELTABLE: u8 = 2;
const NFT_MSG_NEWCHAIN: u8 = 3;
const NFT_MSG_DELCHAIN: u8 = 5;
const NFT_MSG_NEWRULE: u8 = 6;
const NFT_MSG_DELRULE: u8 = 8;
const NFT_MSG_NEWGEN: u8 = 15;
const NFT_MSG_TRACE: u8 = 17;
const NFT_MSG_DESTROYTABLE: u8 = 26;
const NFT_MSG_DESTROYCHAIN: u8 = 27;
const NFT_MSG_DESTROYRULE: u8 = 28;

/// Attribute 1 is the table name in every nf_tables object message
/// (`NFTA_TABLE_NAME`, `NFTA_CHAIN_TABLE`, `NFTA_RULE_TABLE`, sets,
/// elements, objects, flowtables).
const NFTA_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_CHAIN_NAME: u16 = 3;

/// The iptables-nft table our chain lives in, and the chain that jumps to it.
const IPT_TABLE: &str = "nat";
const IPT_POSTROUTING: &str = "POSTROUTING";

/// Which nf_tables notifications concern the NAT rules we keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatInterest {
    /// Our own tables `ip <name>` / `ip6 <name>`: any change in them.
    Nftables { table: String },
    /// iptables-nft: our chain and POSTROUTING (the jump) in table `nat`,
    /// and the `nat` table itself.
    Iptables { chain: String },
}

impl NatInterest {
    pub fn new(spec: &NatSpec) -> NatInterest {
        match spec.backend {
            NatBackendKind::Nftables => NatInterest::Nftables {
                table: spec.nft_table.clone(),
            },
            NatBackendKind::Iptables => NatInterest::Iptables {
                chain: spec.iptables_chain.clone(),
            },
        }
    }

    /// Does any message of this datagram concern us?
    pub fn relevant(&self, datagram: &[u8]) -> bool {
        messages(datagram).any(|m| self.message(&m))
    }

    fn message(&self, m: &NftMessage<'_>) -> bool {
        if !matches!(m.family, NFPROTO_IPV4 | NFPROTO_IPV6) {
            return false;
        }
        // generation bumps and traces name no object
        if matches!(m.kind, NFT_MSG_NEWGEN | NFT_MSG_TRACE) {
            return false;
        }
        let Some(table) = m.attr(NFTA_TABLE) else {
            return false;
        };
        match self {
            NatInterest::Nftables { table: ours } => table == ours.as_bytes(),
            NatInterest::Iptables { chain } => {
                if table != IPT_TABLE.as_bytes() {
                    return false;
                }
                let ours = |name: Option<&[u8]>| {
                    name.is_some_and(|n| n == chain.as_bytes() || n == IPT_POSTROUTING.as_bytes())
                };
                match m.kind {
                    // the whole nat table (`nft flush ruleset`, recreated)
                    NFT_MSG_NEWTABLE | NFT_MSG_DELTABLE | NFT_MSG_DESTROYTABLE => true,
                    NFT_MSG_NEWCHAIN | NFT_MSG_DELCHAIN | NFT_MSG_DESTROYCHAIN => {
                        ours(m.attr(NFTA_CHAIN_NAME))
                    }
                    NFT_MSG_NEWRULE | NFT_MSG_DELRULE | NFT_MSG_DESTROYRULE => {
                        ours(m.attr(NFTA_RULE_CHAIN))
                    }
                    // sets, objects, flowtables: iptables keeps none of ours
                    _ => false,
                }
            }
        }
    }
}

/// One nf_tables notification: message kind, protocol family, attributes.
struct NftMessage<'a> {
    kind: u8,
    family: u8,
    attrs: &'a [u8],
}

impl<'a> NftMessage<'a> {
    /// The value of top-level attribute `kind`, without the C string's NUL.
    fn attr(&self, kind: u16) -> Option<&'a [u8]> {
        let mut rest = self.attrs;
        while rest.len() >= 4 {
            let len = usize::from(u16::from_ne_bytes([*rest.first()?, *rest.get(1)?]));
            let t = u16::from_ne_bytes([*rest.get(2)?, *rest.get(3)?]) & NLA_TYPE_MASK;
            if len < 4 {
                return None;
            }
            let value = rest.get(4..len)?;
            if t == kind {
                return Some(value.strip_suffix(&[0]).unwrap_or(value));
            }
            rest = rest.get(align4(len)..).unwrap_or_default();
        }
        None
    }
}

fn align4(n: usize) -> usize {
    n.saturating_add(3) & !3
}

/// The nf_tables messages of one netlink datagram (others are skipped; a
/// truncated message ends the walk).
fn messages(mut buf: &[u8]) -> impl Iterator<Item = NftMessage<'_>> {
    std::iter::from_fn(move || {
        loop {
            let hdr = buf.get(..NLMSG_HDRLEN)?;
            let len = u32::from_ne_bytes(hdr.get(..4)?.try_into().ok()?) as usize;
            let ty = u16::from_ne_bytes(hdr.get(4..6)?.try_into().ok()?);
            if len < NLMSG_HDRLEN {
                return None;
            }
            let msg = buf.get(..len)?;
            buf = buf.get(align4(len)..).unwrap_or_default();
            if ty >> 8 != NFNL_SUBSYS_NFTABLES {
                continue;
            }
            let Some(body) = msg.get(NLMSG_HDRLEN..) else {
                continue;
            };
            let Some(&family) = body.first() else {
                continue;
            };
            return Some(NftMessage {
                kind: (ty & 0xff) as u8,
                family,
                attrs: body.get(NFGENMSG_LEN..).unwrap_or_default(),
            });
        }
    })
}

/// What a NAT event source reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatEvent {
    /// Our rules (may) have changed: converge soon.
    Changed,
    /// Notifications were lost (ENOBUFS): converge now.
    Overrun,
}

/// The NAT event sources for one `[nat]` section.
pub struct NatWatch {
    interest: Option<NatInterest>,
    socket: Option<TokioSocket>,
    rcvbuf: usize,
    legacy: Option<(mpsc::Receiver<()>, JoinHandle<()>)>,
    /// What the last pass verified, for the legacy poller to compare with.
    verified: Option<watch::Sender<Verified>>,
    spec: Option<NatSpec>,
}

impl Drop for NatWatch {
    fn drop(&mut self) {
        if let Some((_, task)) = &self.legacy {
            task.abort();
        }
    }
}

impl NatWatch {
    /// Subscribe for `spec` (nothing without a `[nat]` section). Must run
    /// inside the runtime (the legacy poller is a task).
    pub fn new(spec: Option<&NatSpec>, rcvbuf: usize) -> NatWatch {
        let Some(spec) = spec else {
            return NatWatch {
                interest: None,
                socket: None,
                rcvbuf,
                legacy: None,
                verified: None,
                spec: None,
            };
        };
        let mut verified = None;
        let legacy = (spec.backend == NatBackendKind::Iptables).then(|| {
            let (tx, rx) = mpsc::channel(1);
            let (vtx, vrx) = watch::channel(None);
            verified = Some(vtx);
            let task = tokio::spawn(legacy_poller(spec.clone(), tx, vrx));
            (rx, task)
        });
        NatWatch {
            interest: Some(NatInterest::new(spec)),
            socket: subscribe(rcvbuf),
            rcvbuf,
            legacy,
            verified,
            spec: Some(spec.clone()),
        }
    }

    /// The NAT state a pass ended with (its verifying observation): the
    /// legacy poller reports any read that differs from it.
    pub fn learn(&self, observed: &NatObserved) {
        let (Some(tx), Some(spec)) = (self.verified.as_ref(), self.spec.as_ref()) else {
            return;
        };
        // Without a flavour choice (the backend could not be read) the
        // poller keeps its last idea.
        let Named::Iptables {
            choice, ipv4, ipv6, ..
        } = &observed.named
        else {
            return;
        };
        let snapshot = configured(spec)
            .map(|f| match if f == Family::Ipv4 { ipv4 } else { ipv6 } {
                Seen::Present(s) => Some(comparable(s.clone())),
                Seen::Absent => Some(IptFamily::default()),
                Seen::Unavailable { .. } => None,
            })
            .collect();
        tx.send_replace(Some((choice.flavour, snapshot)));
    }

    /// Wait for a NAT event. Pending forever without a `[nat]` section.
    pub async fn changed(&mut self) -> NatEvent {
        loop {
            let got = {
                let NatWatch {
                    interest,
                    socket,
                    legacy,
                    ..
                } = &mut *self;
                let from_legacy = async {
                    match legacy.as_mut() {
                        Some((rx, _)) => legacy_changed(rx).await,
                        None => std::future::pending().await,
                    }
                };
                let from_netlink = async {
                    match (interest.as_ref(), socket.as_mut()) {
                        (Some(_), Some(s)) => s.recv_from_full().await,
                        _ => std::future::pending().await,
                    }
                };
                tokio::select! {
                    ev = from_legacy => Err(ev),
                    got = from_netlink => Ok(got),
                }
            };
            match got {
                Err(ev) => return ev,
                Ok(Ok((datagram, _))) => {
                    if self
                        .interest
                        .as_ref()
                        .is_some_and(|i| i.relevant(&datagram))
                    {
                        return NatEvent::Changed;
                    }
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    return NatEvent::Overrun;
                }
                Ok(Err(e)) => {
                    warn!(
                        "nf_tables notification socket failed ({e}): resubscribing and resyncing"
                    );
                    self.socket = subscribe(self.rcvbuf);
                    return NatEvent::Overrun;
                }
            }
        }
    }
}

async fn legacy_changed(rx: &mut mpsc::Receiver<()>) -> NatEvent {
    match rx.recv().await {
        Some(()) => NatEvent::Changed,
        // the poller ended (not the legacy flavour): nothing more from it
        None => std::future::pending().await,
    }
}

/// A socket in the nf_tables notification group, or `None` (logged).
fn subscribe(rcvbuf: usize) -> Option<TokioSocket> {
    let open = || -> std::io::Result<TokioSocket> {
        let mut s = TokioSocket::new(NETLINK_NETFILTER)?;
        let sock = s.socket_mut();
        sock.bind_auto()?;
        sock.add_membership(NFNLGRP_NFTABLES)?;
        if let Err(e) = sock.set_rx_buf_sz(rcvbuf) {
            debug!("nf_tables notification SO_RCVBUF {rcvbuf}: {e}");
        }
        Ok(s)
    };
    match open() {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(
                "cannot subscribe to nf_tables notifications ({e}): NAT drift is repaired at the periodic resync only"
            );
            None
        }
    }
}

/// The families `spec` configures, IPv4 first.
fn configured(spec: &NatSpec) -> impl Iterator<Item = Family> + '_ {
    [
        (Family::Ipv4, spec.ipv4.is_some()),
        (Family::Ipv6, spec.ipv6.is_some()),
    ]
    .into_iter()
    .filter_map(|(f, on)| on.then_some(f))
}

/// The part of an observation the poller compares: what the kernel holds
/// (the adoption record is the planner's business, not a kernel change).
fn comparable(mut seen: IptFamily) -> IptFamily {
    seen.recorded = false;
    seen
}

/// Our lines of each configured family, as iptables-legacy shows them;
/// `None` for a family whose read failed.
async fn legacy_snapshot(spec: &NatSpec) -> LegacySnapshot {
    let mut out = Vec::new();
    for family in configured(spec) {
        let save = Flavour::Legacy.save(family);
        let run = tokio::process::Command::new(&save)
            .args(["-t", "nat"])
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let seen = match tokio::time::timeout(LEGACY_READ_TIMEOUT, run).await {
            Ok(Ok(o)) if o.status.success() => Some(comparable(
                iptables::parse_nat(&String::from_utf8_lossy(&o.stdout))
                    .family_view(&spec.iptables_chain, None),
            )),
            _ => None,
        };
        out.push(seen);
    }
    out
}

/// Poll our iptables-legacy chain while the flavour the last pass chose
/// is legacy; a read that differs from the last verified state (or, until
/// a pass verified one, from the previous read) is sent as an event.
async fn legacy_poller(
    spec: NatSpec,
    tx: mpsc::Sender<()>,
    mut verified: watch::Receiver<Verified>,
) {
    let mut announced = false;
    let mut tick = tokio::time::interval(LEGACY_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<LegacySnapshot> = None;
    loop {
        tick.tick().await;
        let learned = if verified.has_changed().unwrap_or(false) {
            verified.borrow_and_update().clone()
        } else {
            None
        };
        let flavour = verified.borrow().as_ref().map(|(f, _)| *f);
        if flavour != Some(Flavour::Legacy) {
            // iptables-nft (or not chosen yet): nf_tables notifications
            // cover it, nothing to read.
            last = None;
            continue;
        }
        if !announced {
            info!(
                "iptables-legacy has no change notifications: reading chain {} every {} ms",
                spec.iptables_chain,
                LEGACY_POLL.as_millis()
            );
            announced = true;
        }
        let now = legacy_snapshot(&spec).await;
        if let Some((_, v)) = learned {
            last = Some(v);
        }
        if last.as_ref().is_some_and(|l| *l != now) {
            debug!("iptables-legacy chain {} changed", spec.iptables_chain);
            // a full channel already holds an event: one pass covers both
            let _ = tx.try_send(());
        }
        last = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An nf_tables notification as the kernel frames it.
    fn msg(kind: u8, family: u8, attrs: &[(u16, &str)]) -> Vec<u8> {
        let mut body = vec![family, 0, 0, 0];
        for (t, v) in attrs {
            let len = 4 + v.len() + 1;
            body.extend_from_slice(&(len as u16).to_ne_bytes());
            body.extend_from_slice(&t.to_ne_bytes());
            body.extend_from_slice(v.as_bytes());
            body.push(0);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        let mut out = Vec::new();
        out.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        out.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | u16::from(kind)).to_ne_bytes());
        out.extend_from_slice(&[0; 10]);
        out.extend_from_slice(&body);
        out
    }

    fn nft() -> NatInterest {
        NatInterest::Nftables {
            table: "netconverge".into(),
        }
    }

    fn ipt() -> NatInterest {
        NatInterest::Iptables {
            chain: "NETCONVERGE-POSTRTG".into(),
        }
    }

    #[test]
    fn nftables_events_of_our_table_only() {
        let i = nft();
        assert!(i.relevant(&msg(NFT_MSG_DELTABLE, NFPROTO_IPV4, &[(1, "netconverge")])));
        assert!(i.relevant(&msg(
            NFT_MSG_DELRULE,
            NFPROTO_IPV6,
            &[(1, "netconverge"), (2, "postrouting")]
        )));
        assert!(!i.relevant(&msg(NFT_MSG_DELTABLE, NFPROTO_IPV4, &[(1, "firewalld")])));
        // inet/bridge tables of that name are not ours
        assert!(!i.relevant(&msg(NFT_MSG_DELTABLE, 1, &[(1, "netconverge")])));
        assert!(!i.relevant(&msg(NFT_MSG_NEWGEN, NFPROTO_IPV4, &[(1, "netconverge")])));
        // a prefix is not a match
        assert!(!i.relevant(&msg(NFT_MSG_NEWTABLE, NFPROTO_IPV4, &[(1, "netconverge2")])));
    }

    #[test]
    fn a_flush_ruleset_batch_is_found_among_foreign_messages() {
        let mut d = msg(NFT_MSG_DELTABLE, NFPROTO_IPV4, &[(1, "filter")]);
        d.extend(msg(NFT_MSG_DELTABLE, NFPROTO_IPV6, &[(1, "netconverge")]));
        d.extend(msg(NFT_MSG_NEWGEN, 0, &[]));
        assert!(nft().relevant(&d));
        assert!(!nft().relevant(&d[..d.len() / 3]), "truncated: no match");
    }

    #[test]
    fn iptables_events_of_our_chain_postrouting_and_the_nat_table() {
        let i = ipt();
        let rule = |chain: &str| {
            msg(
                NFT_MSG_DELRULE,
                NFPROTO_IPV4,
                &[(1, "nat"), (2, chain), (3, "x")],
            )
        };
        assert!(i.relevant(&rule("NETCONVERGE-POSTRTG")));
        assert!(i.relevant(&rule("POSTROUTING")));
        assert!(!i.relevant(&rule("KUBE-SERVICES")));
        assert!(!i.relevant(&msg(
            NFT_MSG_DELRULE,
            NFPROTO_IPV4,
            &[(1, "filter"), (2, "NETCONVERGE-POSTRTG")]
        )));
        assert!(i.relevant(&msg(NFT_MSG_DELTABLE, NFPROTO_IPV6, &[(1, "nat")])));
        assert!(i.relevant(&msg(
            NFT_MSG_DELCHAIN,
            NFPROTO_IPV4,
            &[(1, "nat"), (3, "NETCONVERGE-POSTRTG")]
        )));
        assert!(!i.relevant(&msg(
            NFT_MSG_NEWCHAIN,
            NFPROTO_IPV4,
            &[(1, "nat"), (3, "KUBE-POSTROUTING")]
        )));
    }

    #[test]
    fn garbage_is_never_relevant_and_never_panics() {
        for n in 0..64 {
            let junk: Vec<u8> = (0..n).map(|k| (k * 37 % 251) as u8).collect();
            assert!(!nft().relevant(&junk));
            assert!(!ipt().relevant(&junk));
        }
        // a zero-length attribute must not loop forever
        let mut m = msg(NFT_MSG_DELTABLE, NFPROTO_IPV4, &[]);
        m.extend_from_slice(&[0, 0, 1, 0]);
        let len = m.len() as u32;
        m[..4].copy_from_slice(&len.to_ne_bytes());
        assert!(!nft().relevant(&m));
    }
}
