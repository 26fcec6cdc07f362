//! Independent readers and writers of a namespace's NAT rules, through the
//! `nft` and `ip[6]tables[-save]` tools the test runs itself.

use std::time::Duration;

use serde_json::Value;

use super::Netns;
use super::rules_watch::{Report, Watch};

/// netconverge's nftables table (both families) and iptables chain.
pub const TABLE: &str = "netconverge";
pub const CHAIN: &str = "NETCONVERGE-POSTRTG";

/// `nft list table <word> netconverge` (`word`: `ip`, `ip6`), `None` when
/// the table does not exist.
pub fn nft_table(ns: &Netns, word: &str) -> Option<String> {
    let out = ns.exec_output(&["nft", "list", "table", word, TABLE]);
    out.status.success().then(|| super::stdout(&out))
}

/// `nft list tables`.
pub fn nft_tables(ns: &Netns) -> String {
    ns.exec(&["nft", "list", "tables"])
}

/// Panics if `nft list tables` lists our table in either family.
pub fn assert_no_nft_table_of_ours(ns: &Netns) {
    let tables = nft_tables(ns);
    assert!(
        !tables.contains("ip netconverge\n") && !tables.contains("ip6 netconverge\n"),
        "{tables}"
    );
}

/// The rule objects of `nft -j` output.
pub fn rules_in(v: &Value) -> impl Iterator<Item = &Value> {
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.get("rule"))
}

/// The rules of our chain of family `word`, in order, from
/// `nft -j list ruleset`: (handle, JSON expression).
pub fn nft_rules(ns: &Netns, word: &str) -> Vec<(u64, Value)> {
    let v: Value = serde_json::from_str(&ns.exec(&["nft", "-j", "list", "ruleset"])).unwrap();
    rules_in(&v)
        .filter(|r| r["family"] == word && r["table"] == TABLE && r["chain"] == "postrouting")
        .map(|r| (r["handle"].as_u64().unwrap(), r["expr"].clone()))
        .collect()
}

/// Load `text` with `nft -f` inside `ns` (through a temp file: `nft -f -`
/// is what netconverge itself uses).
pub fn nft_file(ns: &Netns, text: &str) {
    let path = std::env::temp_dir().join(format!("nct-{}-{}.nft", std::process::id(), ns.name));
    std::fs::write(&path, text).unwrap();
    ns.exec(&["nft", "-f", path.to_str().unwrap()]);
    std::fs::remove_file(&path).unwrap();
}

/// `nft <args>` with the arguments separated by `|` (rule texts have spaces).
pub fn nft(ns: &Netns, args: &str) -> String {
    ns.exec(&[&["nft"][..], &args.split('|').collect::<Vec<_>>()].concat())
}

/// Our lines of `<save> -t nat` (`save`: an `ip[6]tables[-flavour]-save`):
/// chain declaration, jumps, rules.
pub fn ipt_ours(ns: &Netns, save: &str) -> String {
    keep_lines(&ns.exec(&[save, "-t", "nat"]), |l| l.contains(CHAIN))
}

/// Every line of `<save> -c` (all tables, with counters) that is not ours
/// and not a comment (those carry a timestamp): what must stay byte for byte.
pub fn ipt_foreign(ns: &Netns, save: &str) -> String {
    keep_lines(&ns.exec(&[save, "-c"]), |l| {
        !l.starts_with('#') && !l.contains(CHAIN)
    })
}

/// `<cli> -w -t nat <args>` (`cli`: an `ip[6]tables[-flavour]`), must succeed.
pub fn ipt_nat(ns: &Netns, cli: &str, args: &[&str]) {
    ns.exec(&[&[cli, "-w", "-t", "nat"][..], args].concat());
}

/// The control of a no-gap proof (so that the watcher can fail): `w` must
/// see the gap of a non-atomic flush of our IPv4 chain (with `nft`, or with
/// iptables tool `iptables_cli`), 50 ms, then `refill`.
pub fn assert_watch_sees_a_gap(
    ns: &Netns,
    w: Watch,
    iptables_cli: Option<&str>,
    what: &str,
    refill: impl FnOnce(),
) {
    match iptables_cli {
        None => nft(ns, &format!("flush|chain|ip|{TABLE}|postrouting")),
        Some(cli) => ns.exec(&[cli, "-w", "-t", "nat", "-F", CHAIN]),
    };
    std::thread::sleep(Duration::from_millis(50));
    refill();
    let control = w.stop();
    eprintln!("{what} control: {control:?} ({:.0} Hz)", control.hz());
    assert!(
        control.bad > 0,
        "{what}: the watcher missed a 50 ms gap: {control:?}"
    );
}

/// Stop `w`: not one bad sample, at 200 Hz at least.
pub fn assert_no_gap(w: Watch, what: &str) -> Report {
    let report = w.stop();
    eprintln!("{what}: {report:?} ({:.0} Hz)", report.hz());
    report.assert_no_gap(200.0);
    report
}

/// A rule's match `head` with our comment, jumping to `target`.
pub fn commented<'a>(head: &[&'a str], target: &[&'a str]) -> Vec<&'a str> {
    let comment = ["-m", "comment", "--comment", "netconverge masq", "-j"];
    [head, &comment[..], target].concat()
}

fn keep_lines(text: &str, keep: impl Fn(&str) -> bool) -> String {
    text.lines()
        .filter(|l| keep(l))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// flannel's masquerade layout for one family, as `iptables-restore
/// --noflush` input (rules written from flannel-reference.md): its chain
/// with six rules commented "flanneld masq", its jump appended to
/// POSTROUTING, here between a kube-proxy jump before it and a user's
/// MASQUERADE rule after it (so that a moved jump would show).
pub fn flannel_layout(pod: &str, cluster: &str, multicast: &str) -> String {
    let c = r#"-m comment --comment "flanneld masq""#;
    format!(
        "*nat
:FLANNEL-POSTRTG - [0:0]
:KUBE-POSTROUTING - [0:0]
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
-A POSTROUTING {c} -j FLANNEL-POSTRTG
-A POSTROUTING -o lo -j MASQUERADE
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {c} -j RETURN
-A FLANNEL-POSTRTG -s {pod} -d {cluster} {c} -j RETURN
-A FLANNEL-POSTRTG -s {cluster} -d {pod} {c} -j RETURN
-A FLANNEL-POSTRTG ! -s {cluster} -d {pod} {c} -j RETURN
-A FLANNEL-POSTRTG -s {cluster} ! -d {multicast} {c} -j MASQUERADE --random-fully
-A FLANNEL-POSTRTG ! -s {cluster} -d {cluster} {c} -j MASQUERADE --random-fully
COMMIT
"
    )
}

/// Feed `input` to `<restore> --noflush` inside `ns`.
pub fn ipt_restore(ns: &Netns, restore: &str, input: &str) {
    let path = std::env::temp_dir().join(format!("nct-{}-{}.rules", std::process::id(), ns.name));
    std::fs::write(&path, input).unwrap();
    ns.exec(&[
        "sh",
        "-c",
        &format!("{restore} -w --noflush < {}", path.display()),
    ]);
    std::fs::remove_file(&path).unwrap();
}

/// `<save> -t nat` without its timestamped comment lines.
pub fn ipt_nat_save(ns: &Netns, save: &str) -> String {
    keep_lines(&ns.exec(&[save, "-t", "nat"]), |l| !l.starts_with('#'))
}
