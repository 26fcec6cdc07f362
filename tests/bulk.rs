#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The bulk socket on a real kernel: verdicts line up with requests across
//! many windows, failures anywhere are reported exactly, successes are real
//! (checked with `ip -j neigh`).
mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::Netns;
use netconverge::bulk::{BulkError, BulkRequest, BulkSocket};
use netconverge::netlink::Errno;
use netconverge::nexthop::{NexthopMessage, NexthopNetlinkMessage};
use rtnetlink::packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::{AddressFamily, route::RouteType};

fn neighbour(ifindex: u32, ip: Ipv4Addr, i: u32) -> RouteNetlinkMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.ifindex = ifindex;
    m.header.state = NeighbourState::Permanent;
    m.header.kind = RouteType::Unspec;
    m.attributes = vec![
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)),
        NeighbourAttribute::LinkLayerAddress(vec![2, 0x42, 0, 0, (i >> 8) as u8, i as u8]),
    ];
    RouteNetlinkMessage::NewNeighbour(m)
}

fn device(ns: &Netns) -> u32 {
    ns.ip(&["link", "add", "b0", "type", "veth", "peer", "name", "b1"]);
    ns.ip(&["link", "set", "b0", "up"]);
    ns.ip(&["link", "set", "b1", "up"]);
    ns.ip_json(&["link", "show", "b0"])[0]["ifindex"]
        .as_u64()
        .unwrap() as u32
}

fn run_in(
    ns: &Netns,
    rx: usize,
    window: Option<usize>,
    requests: Vec<BulkRequest>,
) -> (usize, Vec<Result<(), BulkError>>) {
    ns.enter(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let mut bulk = BulkSocket::open(rx).unwrap();
                if let Some(w) = window {
                    bulk = bulk.with_window(w);
                }
                (bulk.window(), bulk.run(&requests).await)
            })
    })
}

/// Requests that fail when `i % 7 == 3` (a device that does not exist).
fn neighbours(ifindex: u32, n: u32) -> Vec<BulkRequest> {
    (0..n)
        .map(|i| {
            let dev = if i % 7 == 3 { 999_999 } else { ifindex };
            let ip = Ipv4Addr::new(198, 18, (i >> 8) as u8, i as u8);
            BulkRequest::Route(
                neighbour(dev, ip, i),
                NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
            )
        })
        .collect()
}

#[test]
fn lost_replies_are_never_reported_as_applied() {
    let ns = Netns::new("bulk-lost");
    let ifindex = device(&ns);
    // A window far larger than the buffer can hold NACKs for.
    let start = std::time::Instant::now();
    let (_, verdicts) = run_in(&ns, 4096, Some(2000), neighbours(ifindex, 1400));
    assert_eq!(verdicts.len(), 1400, "one verdict per request");
    assert!(
        start.elapsed() < std::time::Duration::from_secs(10),
        "no timeout wait"
    );
    let mut lost = 0;
    for (i, v) in verdicts.iter().enumerate() {
        match v {
            Ok(()) => assert_ne!(i % 7, 3, "request {i} failed but was reported applied"),
            Err(BulkError::Nack(code)) => {
                assert_eq!((i % 7, *code), (3, Errno::ENODEV), "request {i}")
            }
            Err(BulkError::Lost(why)) => {
                assert!(why.contains("lost"), "{why}");
                lost += 1;
            }
            Err(e @ BulkError::Interrupted(_)) => panic!("request {i}: {e}"),
        }
    }
    assert!(
        lost > 0,
        "the buffer must have overflowed for this test to mean anything"
    );
}

#[test]
fn verdicts_line_up_with_requests_across_windows() {
    let ns = Netns::new("bulk");
    let ifindex = device(&ns);
    const N: u32 = 1000;
    // Every 7th on a device that does not exist (ENODEV); a nexthop create
    // on an id taken by hand (EEXIST) in the middle; a nexthop delete of an
    // absent id (ENOENT) at the end.
    ns.ip(&["nexthop", "add", "id", "77", "blackhole"]);
    let mut requests = neighbours(ifindex, N);
    requests.insert(
        500,
        BulkRequest::Nexthop(
            NexthopNetlinkMessage::New(NexthopMessage::gateway(
                77,
                IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
                ifindex,
                true,
                199,
            )),
            NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL,
        ),
    );
    requests.push(BulkRequest::Nexthop(
        NexthopNetlinkMessage::Del(NexthopMessage::id_only(78)),
        NLM_F_REQUEST,
    ));
    // A tiny buffer: windows of a few requests, many of them.
    let (window, verdicts) = run_in(&ns, 4096, None, requests);
    assert!(window < 16, "window {window}");
    assert_eq!(verdicts.len(), N as usize + 2);
    let mut expect_ok = 0;
    for (k, v) in verdicts.iter().enumerate() {
        let want = match k {
            500 => Err(BulkError::Nack(Errno::EEXIST)),
            k if k == N as usize + 1 => Err(BulkError::Nack(Errno::ENOENT)),
            k => {
                let i = if k > 500 { k - 1 } else { k } as u32;
                if i % 7 == 3 {
                    Err(BulkError::Nack(Errno::ENODEV))
                } else {
                    expect_ok += 1;
                    Ok(())
                }
            }
        };
        assert_eq!(v, &want, "request {k}");
    }
    let neigh = ns.ip_json(&["neigh", "show", "dev", "b0"]);
    assert_eq!(neigh.as_array().unwrap().len(), expect_ok);
    let nh = &ns.ip_json(&["nexthop", "show", "id", "77"])[0];
    assert!(
        nh.as_object().unwrap().contains_key("blackhole") && nh.get("gateway").is_none(),
        "the taken id was overwritten: {nh}"
    );
}

#[test]
fn dumps_stream_every_reply_and_report_kernel_errors() {
    let ns = Netns::new("bulk-dump");
    let ifindex = device(&ns);
    for i in 0..300u32 {
        ns.ip(&[
            "nexthop",
            "add",
            "id",
            &(1000 + i).to_string(),
            "via",
            &format!("198.18.{}.{}", i >> 8, i & 0xff),
            "dev",
            "b0",
            "onlink",
        ]);
    }
    let (ids, rejected, links) = ns.enter(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let bulk = BulkSocket::open(8 << 20).unwrap();
                let all = NexthopNetlinkMessage::Get(NexthopMessage::default());
                let ids = bulk
                    .dump(&all, |ids: &mut Vec<u32>, m: NexthopNetlinkMessage| {
                        ids.extend(m.message().id());
                        assert_eq!(m.message().oif(), Some(ifindex));
                    })
                    .await
                    .unwrap();
                // The kernel refuses a nexthop dump with header fields set.
                let mut bad = NexthopMessage::default();
                bad.header.protocol = 5;
                let rejected = bulk
                    .dump(
                        &NexthopNetlinkMessage::Get(bad),
                        |_: &mut (), _: NexthopNetlinkMessage| {},
                    )
                    .await;
                // ... and the socket still serves the next dump.
                let req = RouteNetlinkMessage::GetLink(Default::default());
                let links = bulk
                    .dump(&req, |links: &mut usize, m: RouteNetlinkMessage| {
                        *links += usize::from(matches!(m, RouteNetlinkMessage::NewLink(_)));
                    })
                    .await
                    .unwrap();
                (ids, rejected, links)
            })
    });
    assert_eq!(ids, (1000..1300).collect::<Vec<u32>>());
    assert_eq!(rejected, Err(BulkError::Nack(Errno::EINVAL)));
    assert_eq!(links, 3, "lo, b0, b1");
}

/// A window whose barrier is never acknowledged: every request the kernel
/// did not NACK has an unknown outcome, never a success — even though (the
/// control, read with `ip -j neigh`) the kernel did apply them: only its
/// word counts.
#[test]
fn without_the_barriers_ack_nothing_is_reported_applied() {
    let ns = Netns::new("bulk-noack");
    let ifindex = device(&ns);
    const N: u32 = 50;
    let (verdicts, applied) = ns.enter(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let bulk = BulkSocket::open(1 << 20)
                    .unwrap()
                    .without_barrier_ack(Duration::from_secs(1));
                let verdicts = bulk.run(&neighbours(ifindex, N)).await;
                // control: with acknowledged barriers the same kind of
                // requests succeed (the first five again: replaced)
                let fine = BulkSocket::open(1 << 20).unwrap();
                let applied = fine.run(&neighbours(ifindex, 5)).await;
                (verdicts, applied)
            })
    });
    assert_eq!(verdicts.len(), N as usize, "one verdict per request");
    let mut unknown = 0;
    for (i, v) in verdicts.iter().enumerate() {
        match v {
            Err(BulkError::Nack(e)) => assert_eq!((i % 7, *e), (3, Errno::ENODEV)),
            Err(BulkError::Lost(why)) => {
                assert_ne!(i % 7, 3, "request {i}: its NACK was read");
                assert!(why.contains("no reply"), "{why}");
                unknown += 1;
            }
            other => panic!("request {i}: {other:?} without the kernel's word"),
        }
    }
    let in_kernel = ns.ip_json(&["neigh", "show", "dev", "b0"]);
    assert_eq!(
        in_kernel.as_array().unwrap().len(),
        unknown,
        "the kernel did apply them: unknown, not failed"
    );
    assert!(
        applied
            .iter()
            .enumerate()
            .all(|(i, v)| v.is_ok() == (i % 7 != 3))
    );
}

/// The same through `apply`: lost verdicts are failures in the report
/// ("outcome unknown"), never counted as applied; with replies (the
/// positive control) the same plan is applied entirely.
#[test]
fn apply_counts_a_lost_verdict_as_a_failure() {
    use netconverge::apply::{self, ApplyReport};
    use netconverge::model::{Mac, Observed};
    use netconverge::plan::{Change, ChangeKind, Op, Plan};
    let ns = Netns::new("bulk-apply-lost");
    device(&ns);
    let plan = Plan {
        changes: (0..20u8)
            .map(|i| Change {
                kind: ChangeKind::Add,
                object: format!("neighbor 198.18.0.{i}"),
                reason: "test".into(),
                op: Op::SetNeighbor {
                    dev: "b0".into(),
                    ip: IpAddr::V4(Ipv4Addr::new(198, 18, 0, i)),
                    mac: Mac([2, 0x42, 0, 0, 0, i]),
                },
            })
            .collect(),
        blocked: vec![],
        notes: vec![],
    };
    let run = |lose: bool| -> ApplyReport {
        let plan = plan.clone();
        ns.enter(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let mut h = netconverge::netlink::connect().unwrap();
                    if lose {
                        let bulk = BulkSocket::open(1 << 20)
                            .unwrap()
                            .without_barrier_ack(Duration::from_secs(1));
                        h = h.with_bulk(bulk);
                    }
                    let observed = Observed {
                        links: netconverge::observe::dump_links(&h).await.unwrap(),
                        ..Observed::default()
                    };
                    apply::apply(&h, &plan, &observed).await
                })
        })
    };
    let lost = run(true);
    assert_eq!(lost.applied, 0, "{lost:#?}");
    assert_eq!(lost.failures.len(), plan.changes.len());
    for f in &lost.failures {
        assert!(f.error.starts_with("outcome unknown"), "{f:?}");
        assert_eq!(f.errno, None);
    }
    let fine = run(false);
    assert_eq!(fine.applied, plan.changes.len(), "{fine:#?}");
    assert!(fine.failures.is_empty());
}
