//! Config layer tests: exact rendered errors (insta), positions counted by
//! hand, the mapping into `Desired`, and the example files.

use std::net::IpAddr;

use super::*;
use crate::model::{Family, MAIN_TABLE, Mac};

/// A valid base every semantic test extends.
const BASE: &str = r#"
[[vxlan]]
name = "flannel.1"
vni = 1
underlay = "eth0"
"#;

fn errs(src: &str) -> String {
    match parse(src, "test.toml") {
        Ok(d) => panic!("expected errors, got {d:#?}"),
        Err(e) => e.to_string(),
    }
}

fn ok(src: &str) -> Desired {
    match parse(src, "test.toml") {
        Ok(d) => d,
        Err(e) => panic!("expected success, got:\n{e}"),
    }
}

/// Snapshot of the rendered errors, with the input in the snapshot header.
macro_rules! snap_errs {
    ($name:expr, $src:expr) => {{
        let src: &str = $src;
        insta::with_settings!({ description => src, omit_expression => true }, {
            insta::assert_snapshot!($name, errs(src));
        });
    }};
}

fn with_base(extra: &str) -> String {
    format!("{BASE}{extra}")
}

fn example(path: &str) -> Desired {
    let full = format!("{}/examples/{path}", env!("CARGO_MANIFEST_DIR"));
    match load(std::path::Path::new(&full)) {
        Ok(d) => d,
        Err(e) => panic!("{path}:\n{e}"),
    }
}

// ------------------------------------------------------------- positions --

#[test]
fn positions_are_one_based_line_and_column_counted_by_hand() {
    // line 1 is empty (BASE starts with \n); line 4 is `vni = 0`;
    // the value starts after "vni = ", i.e. column 7.
    let src = "\n[[vxlan]]\nname = \"flannel.1\"\nvni = 0\nunderlay = \"eth0\"\n";
    let e = parse(src, "f.toml").unwrap_err();
    assert_eq!(e.0.len(), 1);
    assert_eq!((e.0[0].line, e.0[0].col), (4, 7));
    assert_eq!(e.0[0].file, "f.toml");

    // A string value points at its first character inside the quotes:
    // `underlay = "eth0/1"` → `u` at col 1, `"` at col 12, `e` at col 13.
    let src = "[[vxlan]]\nname = \"flannel.1\"\nvni = 1\nunderlay = \"eth0/1\"\n";
    let e = parse(src, "f.toml").unwrap_err();
    assert_eq!((e.0[0].line, e.0[0].col), (4, 13));

    // Unknown keys point at the key; columns count characters, not bytes
    // (the comment on line 1 has a 2-byte `é`, which must not shift line 2).
    let src = "# café\n  nodename = \"x\"\n";
    let e = parse(src, "f.toml").unwrap_err();
    assert_eq!((e.0[0].line, e.0[0].col), (2, 3));

    // Columns on a line containing multi-byte characters count characters.
    let src = "node_name = \"é\"\n[[vxlan]]\nname = \"é\" ; x = 1\n";
    let e = parse(src, "f.toml").unwrap_err();
    // `name = "é" ; ` → `;` is the 12th character.
    assert_eq!((e.0[0].line, e.0[0].col), (3, 12), "{e}");

    // Missing keys point at the table header.
    let src = "node_name = \"n\"\n\n  [[vxlan]]\nname = \"flannel.1\"\nunderlay = \"eth0\"\n";
    let e = parse(src, "f.toml").unwrap_err();
    assert_eq!((e.0[0].line, e.0[0].col), (3, 3));
}

#[test]
fn errors_are_sorted_in_file_order() {
    let src = with_base(
        r#"
[daemon]
resync_secs = 0

[[peer]]
dev = "flannel.2"
subnet = "198.18.2.1/24"
vtep_ip = "192.0.2.2"
vtep_mac = "02:00:00:00:00:02"
"#,
    );
    let e = parse(&src, "t").unwrap_err();
    let lines: Vec<usize> = e.0.iter().map(|e| e.line).collect();
    let mut sorted = lines.clone();
    sorted.sort_unstable();
    assert_eq!(lines, sorted);
    assert_eq!(lines.len(), 3, "{e}");
}

#[test]
fn unreadable_file_has_no_position() {
    let e = load(std::path::Path::new("/nonexistent/netconverge.toml")).unwrap_err();
    let s = e.to_string();
    assert!(
        s.starts_with("/nonexistent/netconverge.toml: error: cannot read config"),
        "{s}"
    );
}

// ---------------------------------------------------------------- syntax --

#[test]
fn syntax_errors() {
    snap_errs!("syntax_missing_equals", "[[vxlan]]\nname \"flannel.1\"\n");
    snap_errs!(
        "syntax_unterminated_string",
        "[[vxlan]]\nname = \"flannel.1\nvni = 1\n"
    );
    snap_errs!("syntax_bare_word", "[[vxlan]]\nname = flannel\n");
    snap_errs!(
        "syntax_duplicate_key",
        "[[vxlan]]\nname = \"a\"\nvni = 1\nvni = 2\n"
    );
    snap_errs!(
        "syntax_duplicate_table",
        "[nat]\nmasquerade = true\n\n[nat]\nbackend = \"iptables\"\n"
    );
}

// ------------------------------------------------------------ type errors --

#[test]
fn type_errors() {
    snap_errs!(
        "type_string_for_integer",
        "[[vxlan]]\nname = \"flannel.1\"\nvni = \"1\"\nunderlay = \"eth0\"\n"
    );
    snap_errs!(
        "type_integer_for_string",
        "[[vxlan]]\nname = 1\nvni = 1\nunderlay = \"eth0\"\n"
    );
    snap_errs!(
        "type_string_for_bool",
        &with_base(
            "[nat]\nmasquerade = \"yes\"\nnetwork = \"198.18.0.0/16\"\nsubnet = \"198.18.1.0/24\"\n"
        )
    );
    snap_errs!(
        "type_float_and_array",
        "[[vxlan]]\nname = \"flannel.1\"\nvni = 1.0\nunderlay = [\"eth0\"]\n"
    );
    snap_errs!(
        "type_route_table_bool",
        &with_base("[[route]]\ndst = \"198.18.9.0/24\"\ndev = \"flannel.1\"\ntable = true\n")
    );
    snap_errs!("type_table_written_once", "[vxlan]\nname = \"flannel.1\"\n");
    snap_errs!(
        "type_single_table_twice",
        &with_base("[[nat]]\nmasquerade = false\n")
    );
    snap_errs!("type_scalar_for_table", "lease = \"write\"\n");
}

#[test]
fn value_errors() {
    snap_errs!(
        "value_vxlan_fields",
        r#"
[[vxlan]]
name = "a-much-too-long-name"
vni = 16777216
port = 0
underlay = "eth 0"
family = "ipv5"
mac = "01:00:5e:00:00:01"
mtu = 40

[[vxlan]]
name = ".."
vni = -1
underlay = "eth0"
local = "192.0.2.300"
mac = "00:00:00:00:00:00"
"#
    );
    snap_errs!(
        "value_addresses_and_networks",
        &with_base(
            r#"
[[address]]
dev = "flannel.1"
cidr = "198.18.1.0"

[[address]]
dev = "flannel.1"
cidr = "not-an-address"

[[route]]
dst = "198.18.2.1/24"
dev = "flannel.1"

[[route]]
dst = "198.18.3.0"
via = "198.18.3.0/32"
dev = "flannel.1"

[[neighbor]]
dev = "flannel.1"
ip = "224.0.0.1"
mac = "02:00:00:00:00:zz"
"#
        )
    );
    snap_errs!(
        "value_route_tables",
        &with_base(
            r#"
[[route]]
dst = "198.18.2.0/24"
dev = "flannel.1"
table = 255

[[route]]
dst = "198.18.3.0/24"
dev = "flannel.1"
table = "local"

[[route]]
dst = "198.18.4.0/24"
dev = "flannel.1"
table = 0
metric = -1
"#
        )
    );
    snap_errs!(
        "value_settings",
        &with_base(
            r#"
[daemon]
resync_secs = 0
debounce_ms = 20000
ready = "convreged"
networkmanager = "no"
backoff_max_secs = 0

[engine]
route_protocol = 3
nexthops = "yes"
"#
        )
    );
    snap_errs!(
        "value_nat_and_lease",
        &with_base(
            r#"
[nat]
backend = "nftable"
mark = "0x4000/0x0"
table = "nat"
chain = "POSTROUTING"
network = "fd00:42::/56"

[lease]
mode = "keep"
path = "run/flannel/subnet.env"
state_dir = "var/lib/netconverge"
ipv6_subnet = "198.18.1.0/24"
mtu = 9999999
"#
        )
    );
    snap_errs!(
        "value_marks_and_names",
        &with_base(
            r#"
[nat]
mark = "0x4001/0x4000"
table = "1bad name"
chain = "A-CHAIN-NAME-LONGER-THAN-28-CHARS"
network = "198.18.0.0/16"
subnet = "198.18.1.0/24"

[lease]
path = "/run/flannel/"
network = "198.18.0.0/16"
subnet = "198.18.1.0/24"
"#
        )
    );
    snap_errs!(
        "value_node_name_empty",
        &format!("node_name = \"  \"\n{BASE}")
    );
}

// ---------------------------------------------------------- unknown keys --

#[test]
fn unknown_keys() {
    snap_errs!(
        "unknown_key_suggestion",
        "[[vxlan]]\nname = \"flannel.1\"\nvni = 1\nunderlya = \"eth0\"\n"
    );
    snap_errs!(
        "unknown_key_no_suggestion",
        &with_base(
            "[[peer]]\ndev = \"flannel.1\"\nsubnet = \"198.18.2.0/24\"\nvtep_ip = \"192.0.2.2\"\nvtep_mac = \"02:00:00:00:00:02\"\ncolour = \"blue\"\n"
        )
    );
    snap_errs!(
        "unknown_top_level",
        &with_base(
            "nodename = \"x\"\n[natt]\nbackend = \"iptables\"\n\n[[neighbour]]\ndev = \"flannel.1\"\n\n[firewall]\nx = 1\n"
        )
    );
    snap_errs!(
        "unknown_top_level_key_inside_table",
        "[[vxlan]]\nname = \"flannel.1\"\nvni = 1\nunderlay = \"eth0\"\nnode_name = \"a\"\n"
    );
    snap_errs!(
        "unknown_key_in_settings",
        &with_base("[daemon]\nresync_sec = 5\n\n[engine]\nroute_proto = 42\n")
    );
}

// ------------------------------------------------------- semantic errors --

#[test]
fn semantic_vxlan() {
    snap_errs!(
        "sem_vxlan_duplicates",
        r#"
[[vxlan]]
name = "flannel.1"
vni = 1
underlay = "eth0"

[[vxlan]]
name = "flannel.1"
vni = 2
underlay = "eth0"

[[vxlan]]
name = "vx-other"
vni = 1
underlay = "eth1"

[[vxlan]]
name = "vx-v6"
vni = 1
underlay = "eth0"
family = "ipv6"

[[vxlan]]
name = "vx-gbp"
vni = 1
underlay = "eth0"
gbp = true
"#
    );
    snap_errs!(
        "sem_vxlan_local_family_and_underlay",
        r#"
[[vxlan]]
name = "flannel.1"
vni = 1
underlay = "eth0"
family = "ipv4"
local = "2001:db8::1"

[[vxlan]]
name = "vx2"
vni = 2
underlay = "flannel.1"
"#
    );
}

#[test]
fn semantic_devices_and_duplicates() {
    snap_errs!(
        "sem_unknown_devices",
        &with_base(
            r#"
[[address]]
dev = "eth9"
cidr = "192.0.2.10/24"

[[route]]
dst = "198.51.100.0/24"
via = "192.0.2.1"
dev = "wlan0"

[[neighbor]]
dev = "cni0"
ip = "198.18.1.2"
mac = "02:00:00:00:00:02"

[[fdb]]
dev = "eth0"
mac = "00:00:00:00:00:00"
dst = "192.0.2.2"

[[peer]]
dev = "flannel.2"
subnet = "198.18.2.0/24"
vtep_ip = "192.0.2.2"
vtep_mac = "02:00:00:00:00:02"
"#
        )
    );
    snap_errs!(
        "sem_duplicates",
        &with_base(
            r#"
[[address]]
dev = "flannel.1"
cidr = "198.18.1.0/32"

[[address]]
dev = "flannel.1"
cidr = "198.18.1.0/32"

[[route]]
dst = "198.51.100.0/24"
via = "192.0.2.1"
dev = "eth0"

[[route]]
dst = "198.51.100.0/24"
dev = "eth0"
metric = 0

[[route]]
dst = "198.51.100.0/24"
dev = "eth0"
metric = 5

[[neighbor]]
dev = "flannel.1"
ip = "198.18.9.0"
mac = "02:00:00:00:00:09"

[[neighbor]]
dev = "flannel.1"
ip = "198.18.9.0"
mac = "02:00:00:00:00:0a"

[[fdb]]
dev = "flannel.1"
mac = "00:00:00:00:00:00"
dst = "192.0.2.2"

[[fdb]]
dev = "flannel.1"
mac = "00:00:00:00:00:00"
dst = "192.0.2.3"

[[fdb]]
dev = "flannel.1"
mac = "00:00:00:00:00:00"
dst = "192.0.2.2"
"#
        )
    );
    snap_errs!(
        "sem_duplicates_with_peer",
        &with_base(
            r#"
[[route]]
dst = "198.18.2.0/24"
dev = "flannel.1"

[[neighbor]]
dev = "flannel.1"
ip = "198.18.2.0"
mac = "02:00:00:00:00:02"

[[fdb]]
dev = "flannel.1"
mac = "02:00:00:00:00:02"
dst = "192.0.2.2"

[[peer]]
dev = "flannel.1"
subnet = "198.18.2.0/24"
vtep_ip = "192.0.2.2"
vtep_mac = "02:00:00:00:00:02"
"#
        )
    );
}

#[test]
fn semantic_routes() {
    snap_errs!(
        "sem_routes",
        &with_base(
            r#"
[[route]]
dst = "198.51.100.0/24"

[[route]]
dst = "198.51.100.0/24"
dev = "eth0"
onlink = true

[[route]]
dst = "198.51.100.0/24"
via = "2001:db8::1"
src = "2001:db8::2"
table = 100
"#
        )
    );
}

#[test]
fn semantic_fdb_and_peers() {
    snap_errs!(
        "sem_fdb_family",
        r#"
[[vxlan]]
name = "flannel-v6.1"
vni = 1
underlay = "eth0"
family = "ipv6"

[[fdb]]
dev = "flannel-v6.1"
mac = "00:00:00:00:00:00"
dst = "192.0.2.2"

[[fdb]]
dev = "flannel-v6.1"
mac = "01:00:00:00:00:00"
dst = "2001:db8::2"
"#
    );
    snap_errs!(
        "sem_peer_checks",
        r#"
node_name = "node-a"

[[vxlan]]
name = "flannel.1"
vni = 1
underlay = "eth0"
local = "192.0.2.1"

[[address]]
dev = "flannel.1"
cidr = "198.18.1.0/32"

[[peer]]
dev = "flannel.1"
subnet = "198.18.1.0/24"
vtep_ip = "2001:db8::2"
vtep_mac = "00:00:00:00:00:00"

[[peer]]
dev = "flannel.1"
subnet = "198.18.2.0/24"
vtep_ip = "192.0.2.1"
vtep_mac = "06:bb:51:cc:76:02"

[[peer]]
dev = "flannel.1"
subnet = "198.18.2.0/25"
vtep_ip = "192.0.2.3"
vtep_mac = "02:00:00:00:00:03"

[[peer]]
dev = "flannel.1"
subnet = "198.18.0.0/16"
vtep_ip = "192.0.2.4"
vtep_mac = "02:00:00:00:00:03"

[[peer]]
dev = "flannel.1"
subnet = "198.18.2.0/24"
vtep_ip = "192.0.2.5"
vtep_mac = "02:00:00:00:00:05"

[lease]
network = "198.18.0.0/16"
subnet = "198.18.1.0/24"
"#
    );
}

#[test]
fn semantic_nat_and_lease() {
    snap_errs!(
        "sem_lease_families",
        &with_base(
            r#"
[lease]
network = "198.18.0.0/16"
ipv6_subnet = "fd00:42:0:1::/64"
"#
        )
    );
    snap_errs!(
        "sem_lease_write_needs_family",
        &with_base("[lease]\nmode = \"write\"\n")
    );
    snap_errs!(
        "sem_lease_subnet_outside_network",
        &with_base("[lease]\nnetwork = \"198.18.0.0/16\"\nsubnet = \"198.19.1.0/24\"\n")
    );
    snap_errs!(
        "sem_nat_masquerade_without_network",
        &with_base("[nat]\nbackend = \"iptables\"\n")
    );
    snap_errs!(
        "sem_nat_partial_and_mismatch",
        &with_base(
            r#"
[nat]
network = "198.19.0.0/16"
ipv6_subnet = "fd00:42:0:1::/64"

[lease]
network = "198.18.0.0/16"
subnet = "198.18.1.0/24"
"#
        )
    );
    snap_errs!(
        "sem_nat_subnet_outside_network",
        &with_base("[nat]\nnetwork = \"198.18.0.0/16\"\nsubnet = \"198.19.1.0/24\"\n")
    );
    snap_errs!(
        "sem_address_outside_pod_subnet",
        &with_base(
            r#"
[[address]]
dev = "flannel.1"
cidr = "198.18.2.0/32"

[[address]]
dev = "flannel.1"
cidr = "198.18.1.0/16"

[[address]]
dev = "eth0"
cidr = "192.0.2.10/24"

[lease]
network = "198.18.0.0/16"
subnet = "198.18.1.0/24"
"#
        )
    );
}

#[test]
fn many_errors_at_once() {
    snap_errs!(
        "many_errors",
        r#"
node_name = "node-a"
colour = "red"

[[vxlan]]
name = "flannel.1"
vni = 0
underlya = "eth0"

[[vxlan]]
name = "flannel.1"
vni = 2
underlay = "eth0"
mtu = "1450"

[[address]]
dev = "flannel.1"
cidr = "198.18.7.0/32"

[[route]]
dst = "198.18.5.1/24"
dev = "flannel.9"

[[peer]]
dev = "flannel.1"
subnet = "198.18.1.0/24"
vtep_ip = "192.0.2.2"
vtep_mac = "ff:ff:ff:ff:ff:ff"

[nat]
backend = "ipchains"

[lease]
network = "198.18.0.0/16"
subnet = "198.18.1.0/24"
path = "subnet.env"

[daemon]
debounce_ms = 50000
"#
    );
}

#[test]
fn invalid_values_do_not_cascade() {
    // An invalid family must not also produce FDB family mismatches, and an
    // invalid vxlan name must not make every peer's device "undeclared"...
    let src = r#"
[[vxlan]]
name = "flannel.1"
vni = 1
underlay = "eth0"
family = "ipv9"

[[fdb]]
dev = "flannel.1"
mac = "00:00:00:00:00:00"
dst = "2001:db8::2"

[[route]]
dst = "198.51.100.0/24"
via = "not-an-ip"
"#;
    let e = parse(src, "t").unwrap_err();
    assert_eq!(e.0.len(), 2, "{e}");
}

// ------------------------------------------------------------- mapping --

#[test]
fn defaults_and_minimal_config() {
    let d = ok(BASE);
    assert_eq!(d.mac_seed, None);
    let v = &d.vxlans[0];
    assert_eq!((v.vni, v.port, v.family), (1, 8472, Family::Ipv4));
    assert!(!v.learning && !v.gbp);
    assert_eq!((v.local, v.mac, v.mtu), (None, None, None));
    assert_eq!(d.daemon, crate::model::DaemonSpec::default());
    assert_eq!(d.engine, crate::model::EngineSpec::default());
    assert!(d.nat.is_none() && d.lease.is_none());
}

#[test]
fn family_defaults_to_that_of_local() {
    let d = ok("[[vxlan]]\nname = \"v6\"\nvni = 1\nunderlay = \"eth0\"\nlocal = \"2001:db8::1\"\n");
    assert_eq!(d.vxlans[0].family, Family::Ipv6);
}

#[test]
fn route_table_and_mark_forms() {
    let d = ok(&with_base(
        r#"
[[route]]
dst = "198.51.100.0/24"
dev = "eth0"
table = "main"

[[route]]
dst = "198.51.100.0/24"
dev = "eth0"
table = 4294967295

[nat]
mark = "16384/0x4000"
network = "198.18.0.0/16"
subnet = "198.18.1.0/24"
"#,
    ));
    assert_eq!(d.routes[0].table, MAIN_TABLE);
    assert_eq!(d.routes[1].table, u32::MAX);
    assert_eq!(d.routes[0].origin, "route #1");
    assert_eq!(d.nat.unwrap().mark, (0x4000, 0x4000));
    let d = ok(&with_base("[nat]\nmark = \"0x10\"\nmasquerade = false\n"));
    let n = d.nat.unwrap();
    assert_eq!(n.mark, (0x10, u32::MAX));
    assert_eq!((n.ipv4, n.ipv6), (None, None));
}

#[test]
fn nat_takes_networks_from_lease_and_lease_ipmasq_follows_nat() {
    let d = ok(&with_base(
        "[nat]\n[lease]\nnetwork = \"198.18.0.0/16\"\nsubnet = \"198.18.1.0/24\"\n",
    ));
    let n = d.nat.unwrap();
    let v4 = n.ipv4.unwrap();
    assert_eq!(v4.cluster.to_string(), "198.18.0.0/16");
    assert_eq!(v4.pod_subnet.to_string(), "198.18.1.0/24");
    assert!(n.ipv6.is_none());
    assert!(d.lease.unwrap().ipmasq);

    let d = ok(&with_base(
        "[nat]\nmasquerade = false\n[lease]\nnetwork = \"198.18.0.0/16\"\nsubnet = \"198.18.1.0/24\"\n",
    ));
    assert!(!d.lease.unwrap().ipmasq);
    let d = ok(&with_base("[lease]\nmode = \"preserve\"\n"));
    let l = d.lease.unwrap();
    assert!(!l.ipmasq && l.ipv4.is_none());
    assert_eq!(l.path.to_str(), Some("/run/flannel/subnet.env"));
    assert_eq!(l.state_dir.to_str(), Some("/var/lib/netconverge"));
}

#[test]
fn peers_expand_into_flannels_three_objects() {
    let d = ok(&with_base(
        r#"
[[neighbor]]
dev = "flannel.1"
ip = "198.18.9.1"
mac = "02:00:00:00:00:09"

[[peer]]
dev = "flannel.1"
subnet = "198.18.2.0/24"
vtep_ip = "192.0.2.2"
vtep_mac = "02:00:00:00:00:02"
"#,
    ));
    assert_eq!(d.peers.len(), 1);
    let mac: Mac = "02:00:00:00:00:02".parse().unwrap();
    let net: IpAddr = "198.18.2.0".parse().unwrap();
    assert_eq!(d.neighbors.len(), 2);
    assert_eq!(d.neighbors[0].origin, "neighbor #1");
    let n = &d.neighbors[1];
    assert_eq!((n.dev.as_str(), n.ip, n.mac), ("flannel.1", net, mac));
    assert_eq!(n.origin, "peer 198.18.2.0/24");
    let f = &d.fdb[0];
    assert_eq!((f.mac, f.dst), (mac, "192.0.2.2".parse().unwrap()));
    assert_eq!(f.origin, "peer 198.18.2.0/24");
    let r = &d.routes[0];
    assert_eq!(r.dst.to_string(), "198.18.2.0/24");
    assert_eq!(r.via, Some(net));
    assert_eq!(r.dev.as_deref(), Some("flannel.1"));
    assert!(r.onlink);
    assert_eq!((r.table, r.metric, r.src), (MAIN_TABLE, None, None));
    assert_eq!(r.origin, "peer 198.18.2.0/24");
}

#[test]
fn thousands_of_peers() {
    // 4095 peers in 198.18.0.0/15 as /27s; this node has the first /27.
    let mut src = with_base("[lease]\nnetwork = \"198.18.0.0/15\"\nsubnet = \"198.18.0.0/27\"\n");
    for i in 1u32..4096 {
        let base = u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0)) + i * 32;
        let net = std::net::Ipv4Addr::from(base);
        src.push_str(&format!(
            "[[peer]]\ndev = \"flannel.1\"\nsubnet = \"{net}/27\"\nvtep_ip = \"192.0.2.{}\"\nvtep_mac = \"02:00:00:00:{:02x}:{:02x}\"\n",
            i % 250 + 1,
            i / 256,
            i % 256
        ));
    }
    let d = ok(&src);
    assert_eq!(d.peers.len(), 4095);
    assert_eq!(d.routes.len(), 4095);
    // One overlapping peer among thousands is found, and only once.
    src.push_str(
        "[[peer]]\ndev = \"flannel.1\"\nsubnet = \"198.18.100.0/24\"\nvtep_ip = \"192.0.2.254\"\nvtep_mac = \"02:00:00:00:ff:fe\"\n",
    );
    let e = parse(&src, "t").unwrap_err();
    assert_eq!(e.0.len(), 1, "{e}");
    assert!(
        e.0[0]
            .message
            .contains("overlaps peer subnet 198.18.100.0/27"),
        "{e}"
    );
}

#[test]
fn suggestions() {
    use super::schema::suggest;
    let keys = [
        "name", "vni", "port", "underlay", "family", "local", "mac", "mtu",
    ];
    assert_eq!(suggest("underlya", keys.iter().copied()), Some("underlay"));
    assert_eq!(suggest("vnii", keys.iter().copied()), Some("vni"));
    assert_eq!(suggest("colour", keys.iter().copied()), None);
}

// -------------------------------------------------------------- examples --

#[test]
fn example_k3s_node() {
    insta::assert_json_snapshot!("example_k3s_node", example("k3s-node.toml"));
}

#[test]
fn example_dual_stack() {
    insta::assert_json_snapshot!("example_dual_stack", example("dual-stack.toml"));
}

#[test]
fn example_pair() {
    insta::assert_json_snapshot!("example_pair_node_a", example("pair/node-a.toml"));
    insta::assert_json_snapshot!("example_pair_node_b", example("pair/node-b.toml"));
}

/// The pair files describe each other: every peer's VTEP MAC is what the
/// other node derives for itself, its VTEP IP is the other's `local`, its
/// subnet the other's lease subnet, and every device of the other is peered.
#[test]
fn example_pair_is_consistent() {
    let a = example("pair/node-a.toml");
    let b = example("pair/node-b.toml");
    for (me, other) in [(&a, &b), (&b, &a)] {
        assert_eq!(me.peers.len(), other.vxlans.len());
        for v in &other.vxlans {
            let p = me
                .peers
                .iter()
                .find(|p| p.dev == v.name)
                .unwrap_or_else(|| panic!("no peer on {}", v.name));
            assert_eq!(
                Some(p.vtep_mac),
                other.vxlan_mac(v),
                "vtep_mac on {}",
                v.name
            );
            assert_eq!(
                p.vtep_mac,
                Mac::derive(other.mac_seed.as_deref().unwrap(), &v.name)
            );
            assert_eq!(Some(p.vtep_ip), v.local, "vtep_ip on {}", v.name);
            let lease = other.lease.as_ref().unwrap();
            let fam = match Family::of_net(&p.subnet) {
                Family::Ipv4 => lease.ipv4,
                Family::Ipv6 => lease.ipv6,
            };
            assert_eq!(
                Some(p.subnet),
                fam.map(|f| f.subnet),
                "subnet on {}",
                v.name
            );
            // The other node's address on that device is its subnet's
            // network address, the neighbour entry's IP.
            assert!(
                other
                    .addresses
                    .iter()
                    .any(|x| x.dev == v.name && x.cidr.addr() == p.subnet.network()),
                "address on {}",
                v.name
            );
        }
        let l = me.lease.as_ref().unwrap();
        assert!(l.path.starts_with("/run/netconverge-example/"));
        assert!(l.state_dir.starts_with("/run/netconverge-example/"));
    }
}

#[test]
fn other_toml_spellings_and_line_endings() {
    // Inline arrays of tables mean the same as [[vxlan]] headers.
    let inline = ok("vxlan = [{ name = \"flannel.1\", vni = 1, underlay = \"eth0\" }]\n");
    assert_eq!(inline, ok(BASE));
    // CRLF line endings: positions are still per line.
    let e = parse(
        "[[vxlan]]\r\nname = \"x\"\r\nvni = 0\r\nunderlay = \"eth0\"\r\n",
        "t",
    )
    .unwrap_err();
    assert_eq!((e.0[0].line, e.0[0].col), (3, 7));
    // A non-table entry in a list, and TOML datetimes, are errors, not panics.
    assert_eq!(parse("vxlan = [1]\n", "t").unwrap_err().0.len(), 1);
    assert!(parse("x = 1979-05-27T07:32:00Z\n", "t").is_err());
    // An empty file is refused (see `a_file_that_declares_nothing_is_refused`).
    assert!(parse("", "t").is_err());
}

/// The full example in docs/config.md parses (the doc cannot rot silently).
#[test]
fn docs_full_example_parses() {
    let doc = include_str!("../../docs/config.md");
    let start = doc.find("## Full example").expect("section");
    let rest = &doc[start..];
    let body = rest
        .split("```toml\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("toml block");
    let d = ok(body);
    assert_eq!(d.vxlans.len(), 2);
    assert_eq!(d.vxlans[1].family, Family::Ipv6);
    assert_eq!(d.routes.len(), 3);
}

// ------------------------------------------ what the kernel would refuse --

#[test]
fn names_with_bytes_the_kernel_treats_as_whitespace_are_refused() {
    // `à` is C3 A0: the kernel's Latin-1 isspace() sees 0xA0 and answers
    // EINVAL (checked with `ip link add`), so validate must say so first.
    snap_errs!(
        "kernel_name_a_grave",
        "[[vxlan]]\nname = \"vx\\u00e0\"\nvni = 1\nunderlay = \"eth0\"\n"
    );
    // U+00A0 itself (C2 A0), in an underlay and a route device.
    snap_errs!(
        "kernel_name_nbsp",
        "[[vxlan]]\nname = \"vx\"\nvni = 1\nunderlay = \"eth\\u00a00\"\n\n[[route]]\ndst = \"198.51.100.0/24\"\ndev = \"e\\u00a0\"\n"
    );
    for c in ["\\t", "\\n", "\\u000b", "\\f", "\\r", " "] {
        let src = format!("[[vxlan]]\nname = \"a{c}b\"\nvni = 1\nunderlay = \"eth0\"\n");
        assert!(errs(&src).contains("interface name"), "{src}");
    }
    // Positive control: other non-ASCII names are accepted by the kernel
    // (`é` is C3 A9; 0x85 is a control byte there, not whitespace).
    let d = ok("[[vxlan]]\nname = \"vx\\u00e9\\u0085\"\nvni = 1\nunderlay = \"eth0\"\n");
    assert_eq!(d.vxlans[0].name, "vx\u{e9}\u{85}");
}

/// flannel.1 with `mtu` and one IPv6 object of each kind in turn.
fn v6_on_vxlan(mtu: u32, object: &str) -> String {
    format!(
        "[[vxlan]]\nname = \"flannel.1\"\nvni = 1\nunderlay = \"eth0\"\nmtu = {mtu}\n\n{object}"
    )
}

#[test]
fn an_mtu_below_1280_on_a_device_with_ipv6_is_refused() {
    let address = "[[address]]\ndev = \"flannel.1\"\ncidr = \"fd00:42:0:1::/128\"\n";
    let route = "[[route]]\ndst = \"fd00:43::/64\"\ndev = \"flannel.1\"\n";
    let neighbor =
        "[[neighbor]]\ndev = \"flannel.1\"\nip = \"fd00:43::\"\nmac = \"02:00:00:00:00:01\"\n";
    let peer = "[[peer]]\ndev = \"flannel.1\"\nsubnet = \"fd00:43::/64\"\nvtep_ip = \"192.0.2.2\"\nvtep_mac = \"02:00:00:00:00:02\"\n";
    snap_errs!("kernel_mtu_ipv6_address", &v6_on_vxlan(1279, address));
    for object in [route, neighbor, peer] {
        let e = errs(&v6_on_vxlan(1200, object));
        assert!(e.contains("below IPv6's minimum of 1280"), "{e}");
        assert!(e.contains("test.toml:5:7: error"), "points at `mtu`: {e}");
    }
    // Controls: 1280 is enough; an IPv4-only device may go lower; an IPv6
    // address on the underlay is not the VXLAN's.
    ok(&v6_on_vxlan(1280, address));
    ok(&v6_on_vxlan(
        1200,
        "[[address]]\ndev = \"flannel.1\"\ncidr = \"198.18.1.0/32\"\n",
    ));
    ok(&v6_on_vxlan(
        1200,
        "[[address]]\ndev = \"eth0\"\ncidr = \"2001:db8::1/64\"\n",
    ));
    // The lease hands its MTU to pods: with IPv6 pods it must be >= 1280.
    snap_errs!(
        "kernel_mtu_ipv6_lease",
        &with_base(
            "[lease]\nipv6_network = \"fd00:42::/56\"\nipv6_subnet = \"fd00:42:0:1::/64\"\nmtu = 1200\n"
        )
    );
    ok(&with_base(
        "[lease]\nnetwork = \"198.18.0.0/16\"\nsubnet = \"198.18.1.0/24\"\nmtu = 1200\n",
    ));
}

#[test]
fn lease_paths_that_name_a_directory_are_refused() {
    snap_errs!(
        "kernel_lease_path_dot",
        &with_base("[lease]\nmode = \"preserve\"\npath = \"/run/flannel/.\"\n")
    );
    for p in ["/run/flannel/..", "/run/flannel/", "/.", "/.."] {
        let e = errs(&with_base(&format!(
            "[lease]\nmode = \"preserve\"\npath = \"{p}\"\n"
        )));
        assert!(e.contains("names a directory"), "{p}: {e}");
    }
    // Controls: a dot file, and dots inside the path, are file names.
    for p in [
        "/run/flannel/.env",
        "/run/flannel/..env",
        "/run/./flannel/subnet.env",
    ] {
        ok(&with_base(&format!(
            "[lease]\nmode = \"preserve\"\npath = \"{p}\"\n"
        )));
    }
    // Guard mode: the live file cannot be its own backup.
    snap_errs!(
        "sem_lease_path_is_backup",
        &with_base(
            "[lease]\nmode = \"preserve\"\npath = \"/var/lib/nc/subnet.env\"\nstate_dir = \"/var/lib/nc\"\n"
        )
    );
}

#[test]
fn ipv6_metric_0_is_the_kernels_1024() {
    // The kernel stores an IPv6 route asked with metric 0 as 1024; declaring
    // 0 would make every pass re-add it (it flapped 86 times in 6 s).
    let d = ok(&with_base(
        "[[route]]\ndst = \"fd00:43::/64\"\ndev = \"flannel.1\"\nmetric = 0\n\n[[route]]\ndst = \"198.51.100.0/24\"\ndev = \"flannel.1\"\nmetric = 0\n",
    ));
    assert_eq!(d.routes[0].metric, Some(1024));
    assert_eq!(d.routes[1].metric, Some(0), "IPv4 keeps metric 0");
    // So metric 0 and no metric are the same IPv6 route.
    snap_errs!(
        "kernel_metric6_zero_duplicate",
        &with_base(
            "[[route]]\ndst = \"fd00:43::/64\"\ndev = \"flannel.1\"\nmetric = 0\n\n[[route]]\ndst = \"fd00:43::/64\"\ndev = \"flannel.1\"\n"
        )
    );
}

#[test]
fn a_file_that_declares_nothing_is_refused() {
    // An empty or truncated file on reload would remove every owned object.
    snap_errs!("declares_nothing_empty", "");
    snap_errs!(
        "declares_nothing_settings_only",
        "# truncated\nnode_name = \"a\"\n\n[daemon]\nresync_secs = 60\n"
    );
    let e = parse("\n\n", "f.toml").unwrap_err();
    assert_eq!((e.0.len(), e.0[0].line, e.0[0].col), (1, 1, 1));
    // `cleanup` removes everything netconverge owns anyway: it takes such a
    // file (and its settings), and still reports real errors.
    let cleanup = |src: &str| {
        super::parse_for(
            src,
            "f.toml",
            &super::NodeSelect::default(),
            super::Purpose::Cleanup,
        )
    };
    let d = cleanup("state_dir = \"/var/lib/nc-test\"\n").unwrap();
    assert_eq!(d.state_dir, std::path::PathBuf::from("/var/lib/nc-test"));
    assert!(cleanup("state_dir = 1\n").is_err());
    // Any one declaration is enough (controls).
    ok(BASE);
    ok("[lease]\nmode = \"preserve\"\n");
    ok("[nat]\nmasquerade = false\n");
}

// --------------------------------------------------------- [daemon] metrics --

#[test]
fn daemon_metrics_listen_address() {
    // off unless given
    assert_eq!(ok(BASE).daemon.metrics, None);
    let d = ok(&with_base("[daemon]\nmetrics = \"127.0.0.1:9474\"\n"));
    assert_eq!(d.daemon.metrics, Some("127.0.0.1:9474".parse().unwrap()));
    let d = ok(&with_base("[daemon]\nmetrics = \"[::]:9474\"\n"));
    assert_eq!(d.daemon.metrics, Some("[::]:9474".parse().unwrap()));
    // every bad shape, each with its own help; one file per value (the key
    // can be given once)
    let bad = [
        "metrics = \"127.0.0.1\"",
        "metrics = \"::1\"",
        "metrics = \"localhost:9474\"",
        "metrics = \"127.0.0.1:0\"",
        "metrics = \"127.0.0.1:70000\"",
        "metrics = \"127.0.0.1:metrics\"",
        "metrics = \"239.1.1.1:9474\"",
        "metrics = 9474",
        "metrics = true",
        "metric = \"127.0.0.1:9474\"",
    ];
    let all: Vec<String> = bad
        .iter()
        .map(|line| {
            format!(
                "{line}\n{}",
                errs(&with_base(&format!("[daemon]\n{line}\n")))
            )
        })
        .collect();
    insta::assert_snapshot!("daemon_metrics_errors", all.join("\n"));
}

#[test]
fn a_fleet_is_marked_as_the_source_of_the_peers() {
    assert!(!ok(BASE).fleet);
    let src = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/fleet/fleet.toml"
    ))
    .unwrap();
    let sel = NodeSelect {
        flag: Some("node-b".into()),
        ..NodeSelect::default()
    };
    let d = parse_as(&src, "fleet.toml", &sel).unwrap();
    assert!(d.fleet && !d.peers.is_empty());
}
