//! Node JSON (flannel's documented annotation format, fixtures in this
//! directory) → the fleet's entries, every malformed variant; this node's
//! PATCH body; the whole path through `parse_cluster` to peers.

use std::collections::BTreeMap;

use super::*;
use crate::config::{NodeSelect, Purpose, parse_cluster};

fn spec(families: &[(Family, &str, &str)]) -> KubeSpec {
    KubeSpec {
        kubeconfig: None,
        annotation_prefix: DEFAULT_PREFIX.into(),
        publish: true,
        node_name: "node-a".into(),
        vni: 1,
        families: families
            .iter()
            .map(|(f, n, d)| KubeFamily {
                family: *f,
                network: n.parse().unwrap(),
                device: (*d).into(),
            })
            .collect(),
    }
}

fn v4() -> KubeSpec {
    spec(&[(Family::Ipv4, "198.18.0.0/16", "flannel.1")])
}

fn dual() -> KubeSpec {
    spec(&[
        (Family::Ipv4, "198.18.0.0/16", "flannel.1"),
        (Family::Ipv6, "fd00:42::/48", "flannel-v6.1"),
    ])
}

fn views(fixture: &str, s: &KubeSpec) -> Vec<NodeView> {
    let v: serde_json::Value = serde_json::from_str(fixture).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter_map(|n| NodeView::from_json(n, s))
        .collect()
}

const V4: &str = include_str!("nodes-v4.json");
const DUAL: &str = include_str!("nodes-dual.json");

/// A readable table: accepted entries, then each skip on one line.
fn render(sel: &Selection) -> String {
    let mut out = String::new();
    for n in &sel.nodes {
        out.push_str(&format!(
            "+ {} subnet {:?} address {:?} mac {:?}\n",
            n.name,
            n.subnet
                .values()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            n.address
                .values()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            n.mac.values().map(ToString::to_string).collect::<Vec<_>>(),
        ));
    }
    for s in &sel.skipped {
        out.push_str(&format!(
            "{} {s}\n",
            if s.warn { "warning:" } else { "debug:  " }
        ));
    }
    if let Some(me) = &sel.me {
        out.push_str(&format!(
            "me: publish {:?}\n",
            me.public
                .values()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        ));
    }
    if let Some(p) = &sel.me_problem {
        out.push_str(&format!("me: unusable: {p}\n"));
    }
    out
}

#[test]
fn every_malformed_node_is_skipped_with_its_field() {
    let s = v4();
    let sel = select(&s, &views(V4, &s));
    insta::assert_snapshot!("kube_select_v4", render(&sel));
    // the good ones: this node, b, c, and the one with host bits in its podCIDR
    let names: Vec<&str> = sel.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        names,
        ["node-a", "node-b", "node-c", "zz-podcidr-host-bits"]
    );
    // only the ordinary states are not warnings
    let quiet: Vec<&str> = sel
        .skipped
        .iter()
        .filter(|s| !s.warn)
        .map(|s| s.node.as_str())
        .collect();
    assert_eq!(quiet, ["plain-no-annotations", "no-podcidr-yet"]);
}

#[test]
fn dual_stack_reads_both_families_and_the_overwrites() {
    let s = dual();
    let sel = select(&s, &views(DUAL, &s));
    insta::assert_snapshot!("kube_select_dual", render(&sel));
    let me = &sel.nodes[0];
    // a node migrating from flannel keeps both published MACs
    assert_eq!(me.mac[&Family::Ipv4].to_string(), "0a:58:c6:12:01:00");
    assert_eq!(me.mac[&Family::Ipv6].to_string(), "0a:58:fd:00:01:00");
}

#[test]
fn the_outcome_does_not_depend_on_list_order() {
    let s = v4();
    let mut nodes = views(V4, &s);
    let a = select(&s, &nodes);
    nodes.reverse();
    assert_eq!(select(&s, &nodes), a);
}

#[test]
fn this_node_absent_or_not_ready_is_a_problem_not_a_skip() {
    let s = v4();
    let sel = select(&s, &[]);
    assert_eq!(
        sel.me_problem.as_deref(),
        Some("there is no Node of this name in the API")
    );
    let mut no_cidr = views(V4, &s);
    no_cidr[0].pod_cidrs.clear();
    assert!(
        select(&s, &no_cidr)
            .me_problem
            .unwrap()
            .contains("no podCIDR")
    );
    let mut no_ip = views(V4, &s);
    no_ip[0].internal_ips = vec!["2001:db8::11".into()];
    assert!(
        select(&s, &no_ip)
            .me_problem
            .unwrap()
            .contains("no IPv4 InternalIP")
    );
}

#[test]
fn prefix_joined_as_flannel_joins_it() {
    let mut s = v4();
    assert_eq!(
        s.key("backend-data"),
        "flannel.alpha.coreos.com/backend-data"
    );
    s.annotation_prefix = "example.com/net".into();
    assert_eq!(s.key("public-ip"), "example.com/net-public-ip");
    s.annotation_prefix = "example.com/net-".into();
    assert_eq!(s.key("public-ip"), "example.com/net-public-ip");
    s.annotation_prefix = "example.com/".into();
    assert_eq!(s.key("public-ip"), "example.com/public-ip");
}

#[test]
fn only_annotations_under_the_prefix_are_kept() {
    let s = v4();
    let v = &views(V4, &s)[0];
    assert!(v.annotations.is_empty(), "{v:?}");
    let b = &views(V4, &s)[1];
    assert_eq!(b.annotations.len(), 4);
}

fn macs(m: &[(Family, &str)]) -> BTreeMap<Family, Mac> {
    m.iter().map(|(f, s)| (*f, s.parse().unwrap())).collect()
}

#[test]
fn patch_body_is_flannels_byte_for_byte_and_only_what_differs() {
    let s = v4();
    let sel = select(&s, &views(V4, &s));
    let own = sel.me.unwrap();
    let m = macs(&[(Family::Ipv4, "06:bb:51:cc:76:02")]);
    let body = publish_patch(&s, &own, &m).unwrap();
    assert_eq!(
        body.to_string(),
        r#"{"metadata":{"annotations":{"flannel.alpha.coreos.com/backend-data":"{\"VNI\":1,\"VtepMAC\":\"06:bb:51:cc:76:02\"}","flannel.alpha.coreos.com/backend-type":"vxlan","flannel.alpha.coreos.com/kube-subnet-manager":"true","flannel.alpha.coreos.com/public-ip":"192.0.2.11"}}}"#
    );
    // once the Node says it, nothing is sent
    let mut after = own.clone();
    for (k, v) in body["metadata"]["annotations"].as_object().unwrap() {
        after
            .annotations
            .insert(k.clone(), v.as_str().unwrap().into());
    }
    assert_eq!(publish_patch(&s, &after, &m), None);
    // a changed MAC: only backend-data
    let m2 = macs(&[(Family::Ipv4, "06:bb:51:cc:76:03")]);
    let b2 = publish_patch(&s, &after, &m2).unwrap();
    assert_eq!(
        b2["metadata"]["annotations"].as_object().unwrap().len(),
        1,
        "{b2}"
    );
}

#[test]
fn dual_stack_patch_publishes_the_overwrite_and_both_families() {
    let s = dual();
    let sel = select(&s, &views(DUAL, &s));
    let own = sel.me.unwrap();
    let m = macs(&[
        (Family::Ipv4, "0a:58:c6:12:01:00"),
        (Family::Ipv6, "0a:58:fd:00:01:00"),
    ]);
    let body = publish_patch(&s, &own, &m).unwrap();
    insta::assert_snapshot!(
        "kube_patch_dual",
        serde_json::to_string_pretty(&body).unwrap()
    );
}

const CONFIG: &str = r#"
node_name = "node-a"

[fleet]
source = "kubernetes"
network = "198.18.0.0/16"

[fleet.kubernetes]
kubeconfig = "/etc/netconverge/kubeconfig"

[lease]
path = "/run/flannel/subnet.env"
"#;

#[test]
fn nodes_from_the_api_become_the_peers_of_the_file_fleet() {
    let sel_node = NodeSelect::default();
    let spec = crate::config::kube_source(CONFIG, "k.toml", &sel_node)
        .unwrap()
        .unwrap();
    assert_eq!(spec, {
        let mut s = v4();
        s.kubeconfig = Some("/etc/netconverge/kubeconfig".into());
        s
    });
    let sel = select(&spec, &views(V4, &spec));
    let d = parse_cluster(CONFIG, "k.toml", &sel_node, Purpose::Converge, Some(&sel)).unwrap();
    insta::assert_json_snapshot!(
        "kube_desired",
        serde_json::json!({
            "vxlans": d.vxlans,
            "addresses": d.addresses,
            "peers": d.peers,
            "lease": d.lease,
        })
    );
    // without the Nodes (validate, cleanup) only the file is checked
    let offline = parse_cluster(CONFIG, "k.toml", &sel_node, Purpose::Converge, None).unwrap();
    assert!(offline.vxlans.is_empty() && offline.peers.is_empty());
}

#[test]
fn this_node_unusable_is_a_config_error_at_the_fleet() {
    let s = v4();
    let sel = select(&s, &[]);
    let e = parse_cluster(
        CONFIG,
        "k.toml",
        &NodeSelect::default(),
        Purpose::Converge,
        Some(&sel),
    )
    .unwrap_err();
    insta::assert_snapshot!("kube_me_absent", e.to_string());
}

fn errs(src: &str) -> String {
    match crate::config::kube_source(src, "k.toml", &NodeSelect::default()) {
        Ok(s) => panic!("expected errors, got {s:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn schema_errors() {
    let src = r#"
node_name = "node-a"
[fleet]
network = "198.18.0.0/16"
[fleet.kubernetes]
kubeconfig = "relative/path"
annotation_prefix = "has space"
publish = "yes"
pubilsh = true
"#;
    insta::assert_snapshot!("kube_schema_errors", errs(src));
    let src = r#"
node_name = "node-a"
[fleet]
source = "kubernets"
network = "198.18.0.0/16"
"#;
    insta::assert_snapshot!("kube_source_typo", errs(src));
    let src = r#"
node_name = "node-a"
[fleet]
source = "kubernetes"
network = "198.18.0.0/16"
[[fleet.node]]
name = "node-a"
address = "192.0.2.11"
subnet = "198.18.1.0/24"
"#;
    insta::assert_snapshot!("kube_source_with_nodes", errs(src));
    let src = r#"
[fleet]
source = "kubernetes"
network = "198.18.0.0/16"
"#;
    insta::assert_snapshot!("kube_no_node_name", errs(src));
}
