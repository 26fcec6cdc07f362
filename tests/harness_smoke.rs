#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod common;

#[test]
fn netns_is_private_and_removed() {
    let ns = common::Netns::new("smoke");
    ns.ip(&[
        "link", "add", "nct0", "type", "veth", "peer", "name", "nct1",
    ]);
    let links = ns.ip_json(&["link", "show"]);
    let names: Vec<&str> = links
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .collect();
    assert!(names.contains(&"nct0"), "{names:?}");
    let path = format!("/run/netns/{}", ns.name);
    drop(ns);
    assert!(!std::path::Path::new(&path).exists());
}
