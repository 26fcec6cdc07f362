//! Config texts and expected rule texts, written out by hand: the tests'
//! independent expectations, never produced by the code under test.
//!
//! Config pieces are TOML fragments that concatenate in any order; every
//! address lies in the test ranges of TEAM.md.

use std::path::{Path, PathBuf};

/// `text` written as `dir/name`; returns the path.
pub fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// `node_name = "<node>"` (the seed of every derived MAC).
pub fn node_name(node: &str) -> String {
    format!("node_name = \"{node}\"\n")
}

/// flannel's IPv4 device `flannel.1` (VNI 1) on `underlay`, with its
/// address 198.18.1.0/32.
pub fn vxlan_v4(underlay: &str) -> String {
    format!(
        "\n[[vxlan]]\nname = \"flannel.1\"\nvni = 1\nunderlay = \"{underlay}\"\n\
         \n[[address]]\ndev = \"flannel.1\"\ncidr = \"198.18.1.0/32\"\n"
    )
}

/// flannel's IPv6 device `flannel-v6.1` (VNI 1) on `underlay`, with its
/// address fd00:42:0:1::/128.
pub fn vxlan_v6(underlay: &str) -> String {
    format!(
        "\n[[vxlan]]\nname = \"flannel-v6.1\"\nvni = 1\nunderlay = \"{underlay}\"\nfamily = \"ipv6\"\n\
         \n[[address]]\ndev = \"flannel-v6.1\"\ncidr = \"fd00:42:0:1::/128\"\n"
    )
}

pub fn peer(dev: &str, subnet: &str, vtep_ip: &str, vtep_mac: &str) -> String {
    format!(
        "\n[[peer]]\ndev = \"{dev}\"\nsubnet = \"{subnet}\"\nvtep_ip = \"{vtep_ip}\"\nvtep_mac = \"{vtep_mac}\"\n"
    )
}

/// `n` peers on `flannel.1`, peer `k` = 2, 3, …: 198.18.k.0/24 behind VTEP
/// 192.0.2.k with MAC 02:00:00:00:00:kk.
pub fn peers_v4_24(n: usize) -> String {
    (2..n + 2)
        .map(|k| {
            peer(
                "flannel.1",
                &format!("198.18.{k}.0/24"),
                &format!("192.0.2.{k}"),
                &format!("02:00:00:00:00:{k:02x}"),
            )
        })
        .collect()
}

/// `n` (up to 1024) peers on `flannel.1` with /26 subnets in 198.19.0.0/16:
/// peer `i` = 0, 1, …: 198.19.(i/4).(i%4·64)/26 behind VTEP 192.0.2.(i%250+2)
/// with MAC 02:00:00:00:ii:ii.
pub fn peers_v4(n: usize) -> String {
    (0..n)
        .map(|i| {
            peer(
                "flannel.1",
                &format!("198.19.{}.{}/26", i / 4, (i % 4) * 64),
                &format!("192.0.2.{}", i % 250 + 2),
                &format!("02:00:00:00:{:02x}:{:02x}", i >> 8, i & 0xff),
            )
        })
        .collect()
}

/// `n` peers on `flannel-v6.1`, peer `i` = 0, 1, …: fd00:42:0:(i+2)::/64
/// behind VTEP 2001:db8::(i+2) with MAC 02:00:00:06:ii:ii.
pub fn peers_v6(n: usize) -> String {
    (0..n)
        .map(|i| {
            peer(
                "flannel-v6.1",
                &format!("fd00:42:0:{:x}::/64", i + 2),
                &format!("2001:db8::{:x}", i + 2),
                &format!("02:00:00:06:{:02x}:{:02x}", i >> 8, i & 0xff),
            )
        })
        .collect()
}

/// Where [`lease`] puts the lease file.
pub fn lease_path(dir: &Path) -> PathBuf {
    dir.join("run/subnet.env")
}

/// `[lease]` (write mode) for `stack`'s families: networks 198.18.0.0/15
/// and fd00:42::/56, this node's subnets 198.18.1.0/24 and
/// fd00:42:0:1::/64, the file at [`lease_path`], state in `dir/state`.
pub fn lease(dir: &Path, stack: super::Stack) -> String {
    let mut s = String::from("\n[lease]\n");
    if stack.v4() {
        s += "network = \"198.18.0.0/15\"\nsubnet = \"198.18.1.0/24\"\n";
    }
    if stack.v6() {
        s += "ipv6_network = \"fd00:42::/56\"\nipv6_subnet = \"fd00:42:0:1::/64\"\n";
    }
    s + &format!(
        "path = \"{}\"\nstate_dir = \"{}\"\n",
        lease_path(dir).display(),
        dir.join("state").display()
    )
}

/// `[daemon]` with a 10 ms debounce, `resync_secs`, and `extra` keys.
pub fn daemon(resync_secs: u32, extra: &str) -> String {
    format!("\n[daemon]\nresync_secs = {resync_secs}\ndebounce_ms = 10\n{extra}")
}

/// flannel's masquerade rules for pod subnet 198.18.1.0/24 (IPv4) and
/// fd00:42:0:1::/64 in fd00:42::/56 (IPv6), kube-proxy mark 0x4000, as
/// `nft list table` and `iptables-save -t nat` (our lines only) print them.
pub struct NatRules {
    pub nft_v4: String,
    pub nft_v6: String,
    pub ipt_v4: String,
    pub ipt_v6: String,
}

impl NatRules {
    /// The rules for an IPv4 cluster network `cluster_v4` (the IPv6 one is
    /// always fd00:42::/56).
    pub fn new(cluster_v4: &str) -> NatRules {
        let v4 = ("198.18.1.0/24", cluster_v4, "224.0.0.0/4");
        let v6 = ("fd00:42:0:1::/64", "fd00:42::/56", "ff00::/8");
        NatRules {
            nft_v4: nft("ip", v4),
            nft_v6: nft("ip6", v6),
            ipt_v4: iptables(v4),
            ipt_v6: iptables(v6),
        }
    }
}

/// `nft list table <word> netconverge` for (pod subnet, cluster, multicast).
fn nft(word: &str, (pod, net, mcast): (&str, &str, &str)) -> String {
    format!(
        r#"table {word} netconverge {{
	comment "managed by netconverge"
	chain postrouting {{
		type nat hook postrouting priority srcnat; policy accept;
		meta mark & 0x00004000 == 0x00004000 return comment "netconverge masq"
		{word} saddr {pod} {word} daddr {net} return comment "netconverge masq"
		{word} saddr {net} {word} daddr {pod} return comment "netconverge masq"
		{word} saddr != {net} {word} daddr {pod} return comment "netconverge masq"
		{word} saddr {net} {word} daddr != {mcast} masquerade fully-random comment "netconverge masq"
		{word} saddr != {net} {word} daddr {net} masquerade fully-random comment "netconverge masq"
	}}
}}
"#
    )
}

/// Our lines of `iptables-save -t nat` for (pod subnet, cluster, multicast).
fn iptables((pod, net, mcast): (&str, &str, &str)) -> String {
    let c = r#"-m comment --comment "netconverge masq""#;
    format!(
        ":NETCONVERGE-POSTRTG - [0:0]
-A POSTROUTING {c} -j NETCONVERGE-POSTRTG
-A NETCONVERGE-POSTRTG -m mark --mark 0x4000/0x4000 {c} -j RETURN
-A NETCONVERGE-POSTRTG -s {pod} -d {net} {c} -j RETURN
-A NETCONVERGE-POSTRTG -s {net} -d {pod} {c} -j RETURN
-A NETCONVERGE-POSTRTG ! -s {net} -d {pod} {c} -j RETURN
-A NETCONVERGE-POSTRTG -s {net} ! -d {mcast} {c} -j MASQUERADE --random-fully
-A NETCONVERGE-POSTRTG ! -s {net} -d {net} {c} -j MASQUERADE --random-fully
"
    )
}
