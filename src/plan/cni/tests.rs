//! Rendered conflists (insta) and the drift rules, without root.

use std::path::PathBuf;

use super::*;
use crate::cni::CniObserved;
use crate::lease::FileContent;
use crate::model::{CniPlugin, CniSpec, LeaseFamily};

fn fam(network: &str, subnet: &str) -> LeaseFamily {
    LeaseFamily {
        network: network.parse().unwrap(),
        subnet: subnet.parse().unwrap(),
    }
}

fn spec(v4: bool, v6: bool) -> CniSpec {
    CniSpec {
        path: PathBuf::from("/etc/cni/net.d/10-netconverge.conflist"),
        plugin: CniPlugin::Bridge,
        name: "cbr0".into(),
        bridge: "cni0".into(),
        mtu: None,
        hairpin: true,
        ip_masq: false,
        portmap: true,
        bandwidth: false,
        ipv4: v4.then(|| fam("198.18.0.0/16", "198.18.1.0/24")),
        ipv6: v6.then(|| fam("fd00:42::/48", "fd00:42:0:1::/64")),
        subnet_file: None,
    }
}

fn observed(text: &str) -> CniObserved {
    CniObserved {
        file: FileContent::Text(text.to_string()),
        earlier: Vec::new(),
    }
}

#[test]
fn render_ipv4() {
    insta::assert_snapshot!("cni_ipv4", render(&spec(true, false), 1450));
}

#[test]
fn render_ipv6() {
    insta::assert_snapshot!("cni_ipv6", render(&spec(false, true), 1430));
}

#[test]
fn render_dual_stack() {
    insta::assert_snapshot!("cni_dual", render(&spec(true, true), 1450));
}

#[test]
fn render_flannel_delegate() {
    let mut s = spec(true, true);
    s.plugin = CniPlugin::Flannel;
    s.subnet_file = Some(PathBuf::from(FLANNEL_SUBNET_FILE));
    s.bandwidth = true;
    insta::assert_snapshot!("cni_flannel", render(&s, 0));
    // A lease elsewhere is named to the plugin.
    s.subnet_file = Some(PathBuf::from("/run/nc/subnet.env"));
    assert!(render(&s, 0).contains("\"subnetFile\": \"/run/nc/subnet.env\""));
}

#[test]
fn missing_file_is_added_and_written_file_is_in_sync() {
    let s = spec(true, true);
    let p = plan(Some(&s), Some(1450), &CniObserved::default());
    assert_eq!(
        p.to_string(),
        "+ cni /etc/cni/net.d/10-netconverge.conflist: missing\n"
    );
    let Some(Change {
        op: Op::Cni(CniOp::Write { contents, path }),
        ..
    }) = p.changes.first()
    else {
        panic!("{p:?}")
    };
    assert_eq!(path, &s.path);
    assert!(plan(Some(&s), Some(1450), &observed(contents)).in_sync());
    // Whitespace and key order are not drift.
    let v: serde_json::Value = serde_json::from_str(contents).unwrap();
    assert!(plan(Some(&s), Some(1450), &observed(&v.to_string())).in_sync());
    // No [cni]: nothing, whatever is on disk.
    assert!(plan(None, Some(1450), &observed("junk")).in_sync());
}

#[test]
fn drift_names_the_differing_fields() {
    let s = spec(true, false);
    let old = render(&s, 1500).replace("\"cni0\"", "\"br-x\"");
    let p = plan(Some(&s), Some(1450), &observed(&old));
    insta::assert_snapshot!("cni_drift", p.to_string());
    let p = plan(Some(&s), Some(1450), &observed("{\"cniVersion\": "));
    assert!(
        p.to_string()
            .starts_with("~ cni /etc/cni/net.d/10-netconverge.conflist: not valid JSON"),
        "{p}"
    );
}

#[test]
fn unusable_paths_block_only_the_conflist() {
    let s = spec(true, false);
    let dir = CniObserved {
        file: FileContent::NotAFile("a directory".into()),
        earlier: vec![],
    };
    assert_eq!(
        plan(Some(&s), Some(1450), &dir).to_string(),
        "! cni /etc/cni/net.d/10-netconverge.conflist: blocked: a directory, not a regular file; not written\n"
    );
    let link = CniObserved {
        file: FileContent::Symlink,
        earlier: vec![],
    };
    assert!(matches!(
        plan(Some(&s), Some(1450), &link)
            .changes
            .first()
            .map(|c| c.kind),
        Some(ChangeKind::Modify)
    ));
    // MTU unknown: never guessed.
    let p = plan(Some(&s), None, &CniObserved::default());
    assert!(p.changes.is_empty() && p.blocked.len() == 1, "{p}");
    // ... unless [cni] sets it, or the flannel plugin takes it from subnet.env.
    let mut fixed = s.clone();
    fixed.mtu = Some(1400);
    assert!(render(&fixed, 1400).contains("\"mtu\": 1400"));
    assert_eq!(
        plan(Some(&fixed), None, &CniObserved::default())
            .changes
            .len(),
        1
    );
    let mut fl = s.clone();
    fl.plugin = CniPlugin::Flannel;
    assert_eq!(
        plan(Some(&fl), None, &CniObserved::default()).changes.len(),
        1
    );
    // IPv6 pods need 1280.
    let p = plan(
        Some(&spec(false, true)),
        Some(1000),
        &CniObserved::default(),
    );
    assert!(p.changes.is_empty() && p.blocked.len() == 1, "{p}");
}

#[test]
fn an_earlier_config_file_is_noted() {
    let s = spec(true, false);
    let obs = CniObserved {
        file: FileContent::Missing,
        earlier: vec!["05-other.conflist".into()],
    };
    let p = plan(Some(&s), Some(1450), &obs);
    assert_eq!(p.notes.len(), 1);
    assert!(
        p.notes[0].contains("05-other.conflist sorts before it"),
        "{p}"
    );
}
