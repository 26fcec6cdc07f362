//! iptables backend: one chain in the `nat` table per family, entered by
//! one jump from POSTROUTING, in either iptables flavour (nft or legacy).
//!
//! Invariant: every write is one `ip[6]tables-<flavour>-restore --noflush`
//! commit (atomic): a chain is flushed only by its own declaration in the
//! same commit that refills it. A chain is netconverge's only when the
//! kernel says so (its rules or its jump carry [`COMMENT`]) or the adoption
//! record names it with exactly its current rules; any other chain, even
//! one with our name, is never changed unless `adopt = true`.

use ipnet::IpNet;
use serde::Serialize;

use super::diff::rule_differences;
use super::rules::{AddrMatch, COMMENT, MarkMatch, Rule, Verdict};
use crate::model::Family;
use crate::model::nat::NatOp;
pub use crate::model::nat::{Flavour, IptFamily, chain_label};
use crate::plan::ChangeKind;

const BUILTIN: [&str; 4] = ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"];

// --------------------------------------------------------- the nat table --

/// The `nat` table of one flavour and family, as `iptables-save` prints it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NatTable {
    /// User chains declared (not the built-in ones), in order.
    pub chains: Vec<String>,
    /// Every `-A` line, in order.
    pub lines: Vec<String>,
}

/// Parse `iptables-save` output: only its `*nat` part.
pub fn parse_nat(text: &str) -> NatTable {
    let mut out = NatTable::default();
    let mut in_nat = false;
    for line in text.lines().map(str::trim_end) {
        if line.starts_with('#') {
            continue;
        }
        if let Some(table) = line.strip_prefix('*') {
            in_nat = table == "nat";
            continue;
        }
        if !in_nat {
            continue;
        }
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or("");
            if !name.is_empty() && !BUILTIN.contains(&name) {
                out.chains.push(name.to_string());
            }
        } else if line.starts_with("-A ") {
            out.lines.push(line.to_string());
        }
    }
    out
}

impl NatTable {
    fn chain_of(line: &str) -> Option<&str> {
        line.strip_prefix("-A ")?.split_whitespace().next()
    }

    /// The rules of `chain`, in order.
    pub fn rules_of(&self, chain: &str) -> Vec<String> {
        self.lines
            .iter()
            .filter(|l| Self::chain_of(l) == Some(chain))
            .cloned()
            .collect()
    }

    /// POSTROUTING rules whose target is `chain`, with their 1-based
    /// position in POSTROUTING.
    pub fn jumps_to(&self, chain: &str) -> Vec<(usize, String)> {
        self.lines
            .iter()
            .filter(|l| Self::chain_of(l) == Some("POSTROUTING"))
            .enumerate()
            .filter(|(_, l)| target(l).as_deref() == Some(chain))
            .map(|(i, l)| (i + 1, l.clone()))
            .collect()
    }

    /// What this table holds at `chain`, for planning.
    pub fn family_view(&self, chain: &str, recorded: Option<&[String]>) -> IptFamily {
        let rules = self.rules_of(chain);
        let (positions, jumps): (Vec<usize>, Vec<String>) =
            self.jumps_to(chain).into_iter().unzip();
        IptFamily {
            chain: self.chains.iter().any(|c| c == chain),
            recorded: recorded.is_some_and(|r| r == rules.as_slice()),
            rules,
            jumps,
            jump_positions: positions,
        }
    }

    /// Rules that are not part of any of the `ours` chains (or jumps to
    /// them): how much of the host's NAT lives in this table.
    pub fn foreign_rules(&self, ours: &[String]) -> usize {
        self.lines
            .iter()
            .filter(|l| {
                let c = Self::chain_of(l).unwrap_or("");
                let t = target(l).unwrap_or_default();
                !ours.iter().any(|o| o == c || *o == t)
            })
            .count()
    }

    /// kube-proxy keeps chains here.
    pub fn has_kube(&self) -> bool {
        self.chains.iter().any(|c| c.starts_with("KUBE-"))
    }
}

impl IptFamily {
    pub fn is_absent(&self) -> bool {
        !self.chain && self.rules.is_empty() && self.jumps.is_empty()
    }

    /// Why this chain is netconverge's, if it is (kernel markers first).
    pub fn ownership(&self) -> Option<&'static str> {
        if self.jumps.iter().any(|j| carries_marker(j)) {
            Some("its jump from POSTROUTING carries the netconverge comment")
        } else if !self.rules.is_empty() && self.rules.iter().all(|r| carries_marker(r)) {
            Some("its rules carry the netconverge comment")
        } else if self.recorded {
            Some("recorded as adopted by netconverge")
        } else {
            None
        }
    }

    /// Short description of the content, for conflicts.
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        match self.rules.first() {
            None => parts.push("no rules".to_string()),
            Some(first) => parts.push(format!("{} rule(s), the first `{first}`", self.rules.len())),
        }
        if !self.jumps.is_empty() {
            parts.push(format!("{} jump(s) from POSTROUTING", self.jumps.len()));
        }
        parts.join(", ")
    }
}

/// Does an iptables-save line carry netconverge's comment?
pub fn carries_marker(line: &str) -> bool {
    comment_of(line).as_deref() == Some(COMMENT)
}

fn comment_of(line: &str) -> Option<String> {
    let t = tokens(line);
    t.windows(2)
        .find(|w| w.first().map(String::as_str) == Some("--comment"))
        .and_then(|w| w.get(1).cloned())
}

// ------------------------------------------------------------- rendering --

/// One rule of our chain exactly as `iptables-save` prints it.
pub fn rule_line(chain: &str, rule: &Rule) -> String {
    let mut s = format!("-A {chain}");
    for (flag, m) in [("-s", rule.src), ("-d", rule.dst)] {
        if let Some(m) = m {
            let neg = if m.negated { "! " } else { "" };
            s.push_str(&format!(" {neg}{flag} {}", m.net));
        }
    }
    if let Some(m) = rule.mark {
        if m.mask == u32::MAX {
            s.push_str(&format!(" -m mark --mark {:#x}", m.value));
        } else {
            s.push_str(&format!(" -m mark --mark {:#x}/{:#x}", m.value, m.mask));
        }
    }
    s.push_str(&format!(" -m comment --comment \"{COMMENT}\""));
    s.push_str(match rule.verdict {
        Verdict::Return => " -j RETURN",
        Verdict::Masquerade { random_fully: true } => " -j MASQUERADE --random-fully",
        Verdict::Masquerade {
            random_fully: false,
        } => " -j MASQUERADE",
    });
    s
}

/// The one POSTROUTING rule that sends packets through our chain.
pub fn jump_line(chain: &str) -> String {
    format!("-A POSTROUTING -m comment --comment \"{COMMENT}\" -j {chain}")
}

/// `-A CHAIN spec` → `-D CHAIN spec` (deletes the first rule with that spec).
fn delete_line(line: &str) -> String {
    match line.strip_prefix("-A ") {
        Some(rest) => format!("-D {rest}"),
        None => line.to_string(),
    }
}

/// Restore input making our chain hold `rules` (when `Some`: the chain
/// declaration flushes it inside the same commit), deleting the jumps
/// `delete` and appending our jump when `append_jump`.
pub fn restore_apply(
    chain: &str,
    rules: Option<&[String]>,
    delete: &[String],
    append_jump: bool,
) -> String {
    let mut out = vec!["*nat".to_string()];
    if let Some(rules) = rules {
        out.push(format!(":{chain} - [0:0]"));
        out.extend(rules.iter().cloned());
    }
    out.extend(delete.iter().map(|j| delete_line(j)));
    if append_jump {
        out.push(jump_line(chain));
    }
    out.push("COMMIT".to_string());
    out.join("\n") + "\n"
}

/// Restore input removing `jumps` and (when it exists) `chain`.
pub fn restore_remove(chain: &str, jumps: &[String], chain_exists: bool) -> String {
    let mut out = vec!["*nat".to_string()];
    out.extend(jumps.iter().map(|j| delete_line(j)));
    if chain_exists {
        out.push(format!("-F {chain}"));
        out.push(format!("-X {chain}"));
    }
    out.push("COMMIT".to_string());
    out.join("\n") + "\n"
}

// --------------------------------------------------------------- parsing --

/// Split an iptables-save line into arguments (double quotes group, `\`
/// escapes), the way iptables-restore reads it.
fn tokens(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_token = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                in_token = true;
            }
            '"' => {
                quoted = !quoted;
                in_token = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_token {
                    out.push(std::mem::take(&mut cur));
                    in_token = false;
                }
            }
            c => {
                cur.push(c);
                in_token = true;
            }
        }
    }
    if in_token {
        out.push(cur);
    }
    out
}

/// The `-j`/`-g` target of a rule line.
fn target(line: &str) -> Option<String> {
    let t = tokens(line);
    t.windows(2)
        .find(|w| {
            matches!(
                w.first().map(String::as_str),
                Some("-j" | "-g" | "--jump" | "--goto")
            )
        })
        .and_then(|w| w.get(1).cloned())
}

/// A jump that only jumps (optionally with a comment of any text): the
/// form flannel and netconverge both use, kept wherever it stands.
fn is_plain_jump(line: &str, chain: &str) -> bool {
    let t = tokens(line);
    let t: Vec<&str> = t.iter().map(String::as_str).collect();
    match t.as_slice() {
        ["-A", "POSTROUTING", "-j", c] => *c == chain,
        [
            "-A",
            "POSTROUTING",
            "-m",
            "comment",
            "--comment",
            _,
            "-j",
            c,
        ] => *c == chain,
        _ => false,
    }
}

fn parse_net(s: &str, family: Family) -> Option<IpNet> {
    let net: IpNet = match s.parse() {
        Ok(n) => n,
        Err(_) => IpNet::from(s.parse::<std::net::IpAddr>().ok()?),
    };
    (Family::of_net(&net) == family).then(|| net.trunc())
}

fn parse_u32(s: &str) -> Option<u32> {
    match s.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// The typed rule an iptables-save line of `chain` expresses, if it is in
/// the vocabulary netconverge renders (the comment is not part of it).
pub fn parse_line(family: Family, chain: &str, line: &str) -> Option<Rule> {
    let t = tokens(line);
    let mut it = t.iter().map(String::as_str);
    if it.next() != Some("-A") || it.next() != Some(chain) {
        return None;
    }
    let mut rule = Rule {
        mark: None,
        src: None,
        dst: None,
        verdict: Verdict::Return,
    };
    let mut verdict = None;
    let mut negated = false;
    while let Some(tok) = it.next() {
        match tok {
            "!" => negated = true,
            "-s" | "-d" => {
                let net = parse_net(it.next()?, family)?;
                let m = Some(AddrMatch { net, negated });
                negated = false;
                let slot = if tok == "-s" {
                    &mut rule.src
                } else {
                    &mut rule.dst
                };
                if slot.is_some() {
                    return None;
                }
                *slot = m;
            }
            "-m" => match it.next()? {
                "comment" => {
                    if it.next()? != "--comment" {
                        return None;
                    }
                    it.next()?;
                }
                "mark" => {
                    if it.next()? != "--mark" || rule.mark.is_some() {
                        return None;
                    }
                    let v = it.next()?;
                    let (value, mask) = match v.split_once('/') {
                        Some((v, m)) => (parse_u32(v)?, parse_u32(m)?),
                        None => (parse_u32(v)?, u32::MAX),
                    };
                    rule.mark = Some(MarkMatch { value, mask });
                }
                _ => return None,
            },
            "-j" => {
                verdict = Some(match it.next()? {
                    "RETURN" => Verdict::Return,
                    "MASQUERADE" => {
                        let rest: Vec<&str> = it.by_ref().collect();
                        match rest.as_slice() {
                            [] => Verdict::Masquerade {
                                random_fully: false,
                            },
                            ["--random-fully"] => Verdict::Masquerade { random_fully: true },
                            _ => return None,
                        }
                    }
                    _ => return None,
                });
            }
            _ => return None,
        }
        if negated && !matches!(tok, "!") {
            return None;
        }
    }
    rule.verdict = verdict?;
    Some(rule)
}

/// A line as netconverge would print the same rule (so rules that differ
/// only in their comment compare equal), or the line itself.
fn normalized(family: Family, chain: &str, line: &str) -> String {
    parse_line(family, chain, line).map_or_else(|| line.to_string(), |r| rule_line(chain, &r))
}

/// A rule compared by its normalized form, printed as it is in the kernel.
#[derive(Debug)]
struct Seen<'a> {
    norm: String,
    raw: &'a str,
}

impl PartialEq for Seen<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.norm == other.norm
    }
}

impl std::fmt::Display for Seen<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.raw)
    }
}

// -------------------------------------------------------------- planning --

/// What the plan for one family at one chain is.
pub type FamilyPlan = Result<Option<(ChangeKind, String, NatOp)>, String>;

/// The change (if any) that makes `chain` of `flavour`/`family` hold
/// `want` with one jump to it; `Err` is a conflict: the chain is not ours.
pub fn plan_family(
    flavour: Flavour,
    family: Family,
    chain: &str,
    want: &[Rule],
    seen: Option<&IptFamily>,
    adopt: bool,
) -> FamilyPlan {
    let want_lines: Vec<String> = want.iter().map(|r| rule_line(chain, r)).collect();
    let op = |restore: Option<String>, adopted: Option<Vec<String>>| NatOp::Iptables {
        flavour,
        family,
        chain: chain.to_string(),
        restore,
        adopted,
        forget: false,
    };
    let Some(seen) = seen.filter(|s| !s.is_absent()) else {
        let reason = format!(
            "missing (chain {chain} with {} rules, jump from POSTROUTING)",
            want.len()
        );
        let restore = restore_apply(chain, Some(&want_lines), &[], true);
        return Ok(Some((ChangeKind::Add, reason, op(Some(restore), None))));
    };
    let label = chain_label(flavour, family, chain);
    let observed: Vec<String> = seen
        .rules
        .iter()
        .map(|l| normalized(family, chain, l))
        .collect();
    let mut reasons = Vec::new();
    let (mut rewrite, adopted) =
        ownership_step(&label, seen, &observed, &want_lines, adopt, &mut reasons)?;
    rewrite |= rule_step(chain, seen, &observed, &want_lines, &mut reasons);
    let (delete, append) = jump_step(chain, seen, &mut reasons);
    if reasons.is_empty() {
        return Ok(None);
    }
    let restore = (rewrite || append || !delete.is_empty()).then(|| {
        let rules = rewrite.then_some(want_lines.as_slice());
        restore_apply(chain, rules, &delete, append)
    });
    // Rewritten rules carry our comment: the kernel marks them, no record.
    let adopted = adopted.filter(|_| !rewrite);
    Ok(Some((
        ChangeKind::Modify,
        reasons.join("; "),
        op(restore, adopted),
    )))
}

/// A chain not marked as ours: adopted when its rules are already ours
/// (only their comment differs), replaced with `adopt = true`, else a
/// conflict (`Err`). Kept apart so the ownership rule reads in one place.
/// Returns (rewrite, rules to record as adopted).
fn ownership_step(
    label: &str,
    seen: &IptFamily,
    observed: &[String],
    want_lines: &[String],
    adopt: bool,
    reasons: &mut Vec<String>,
) -> Result<(bool, Option<Vec<String>>), String> {
    if seen.ownership().is_some() {
        return Ok((false, None));
    }
    if seen.chain && observed == want_lines {
        let comments: Vec<String> = seen.rules.iter().filter_map(|r| comment_of(r)).collect();
        let comment = comments
            .first()
            .map_or_else(|| "no comment".to_string(), |c| format!("comment {c:?}"));
        let at = match seen.jump_positions.first() {
            Some(p) => format!("; its jump stays at POSTROUTING position {p}"),
            None => String::new(),
        };
        reasons.push(format!(
            "adopted: not created by netconverge, but its {} rules are netconverge's \
             (they differ only in their {comment}, kept){at}",
            seen.rules.len()
        ));
        Ok((false, Some(seen.rules.clone())))
    } else if adopt {
        reasons.push(format!(
            "adopting (adopt = true) a chain netconverge did not create: replacing {}",
            seen.describe()
        ));
        Ok((true, None))
    } else {
        Err(format!(
            "conflict: {label} exists and was not created by netconverge ({}); \
             it is left alone: remove it, choose another `[nat] chain`, or set \
             `[nat] adopt = true` to replace its rules",
            seen.describe()
        ))
    }
}

/// The chain's rules against the wanted ones (normalised, so iptables'
/// own spelling is not a difference); `true` when they must be rewritten.
fn rule_step(
    chain: &str,
    seen: &IptFamily,
    observed: &[String],
    want_lines: &[String],
    reasons: &mut Vec<String>,
) -> bool {
    if !seen.chain {
        reasons.push(format!("chain {chain} missing"));
        return true;
    }
    let want_seen: Vec<Seen> = want_lines
        .iter()
        .map(|l| Seen {
            norm: l.clone(),
            raw: l,
        })
        .collect();
    let observed_seen: Vec<Seen> = observed
        .iter()
        .zip(&seen.rules)
        .map(|(n, raw)| Seen {
            norm: n.clone(),
            raw,
        })
        .collect();
    let diffs = rule_differences(&want_seen, &observed_seen);
    let rewrite = !diffs.is_empty();
    reasons.extend(diffs);
    rewrite
}

/// Jumps: the first plain one stays where it is (its position decides
/// what runs before and after us); every other jump goes. Returns the
/// jumps to delete and whether our jump must be appended.
fn jump_step(chain: &str, seen: &IptFamily, reasons: &mut Vec<String>) -> (Vec<String>, bool) {
    let keep = seen.jumps.iter().position(|j| is_plain_jump(j, chain));
    let mut delete = Vec::new();
    let mut duplicates = 0;
    for (i, j) in seen.jumps.iter().enumerate() {
        if Some(i) == keep {
            continue;
        }
        if is_plain_jump(j, chain) {
            duplicates += 1;
        } else {
            reasons.push(format!("unexpected jump from POSTROUTING `{j}`"));
        }
        delete.push(j.clone());
    }
    if duplicates > 0 {
        reasons.push(format!(
            "jump from POSTROUTING duplicated ({} copies)",
            duplicates + 1
        ));
    }
    let append = keep.is_none();
    if append {
        reasons.push("jump from POSTROUTING missing".to_string());
    }
    (delete, append)
}

/// The op removing `chain` of `flavour`/`family` and every jump to it.
pub fn remove_op(flavour: Flavour, family: Family, chain: &str, seen: &IptFamily) -> NatOp {
    NatOp::Iptables {
        flavour,
        family,
        chain: chain.to_string(),
        restore: Some(restore_remove(chain, &seen.jumps, seen.chain)),
        adopted: None,
        forget: true,
    }
}

/// What [`remove_op`] removes, printable (as `cleanup` reports it).
pub fn removal_items(
    flavour: Flavour,
    family: Family,
    chain: &str,
    seen: &IptFamily,
) -> Vec<String> {
    let mut out = Vec::new();
    if seen.chain {
        out.push(chain_label(flavour, family, chain));
    }
    if !seen.jumps.is_empty() {
        out.push(format!(
            "{} jump(s) from {} POSTROUTING to {chain}",
            seen.jumps.len(),
            flavour.cli(family)
        ));
    }
    out
}

// ------------------------------------------------------------------- I/O --

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_follow_restore_quoting() {
        assert_eq!(
            tokens(r#"-A POSTROUTING -m comment --comment "a \"b\" -j X" -j KUBE"#),
            [
                "-A",
                "POSTROUTING",
                "-m",
                "comment",
                "--comment",
                "a \"b\" -j X",
                "-j",
                "KUBE"
            ]
        );
        assert_eq!(
            target(r#"-A POSTROUTING -m comment --comment "-j OURS" -j KUBE"#).as_deref(),
            Some("KUBE")
        );
        assert_eq!(target("-A POSTROUTING -g OURS").as_deref(), Some("OURS"));
    }

    #[test]
    fn parse_keeps_chains_rules_and_jumps_apart() {
        let save = r#"# Generated by iptables-save
*filter
:OURS - [0:0]
-A OURS -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-POSTROUTING - [0:0]
:OURS - [0:0]
:OURS-2 - [0:0]
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A POSTROUTING -m comment --comment "netconverge masq" -j OURS
-A POSTROUTING -j OURS-2
-A KUBE-POSTROUTING -j OURS
-A OURS -s 198.18.1.0/24 -j RETURN
-A OURS-2 -j RETURN
COMMIT
"#;
        let t = parse_nat(save);
        assert_eq!(t.chains, ["KUBE-POSTROUTING", "OURS", "OURS-2"]);
        assert!(t.has_kube());
        let seen = t.family_view("OURS", None);
        assert!(seen.chain);
        assert_eq!(seen.rules, ["-A OURS -s 198.18.1.0/24 -j RETURN"]);
        assert_eq!(
            seen.jumps,
            [r#"-A POSTROUTING -m comment --comment "netconverge masq" -j OURS"#]
        );
        assert_eq!(seen.jump_positions, [2]);
        assert!(seen.ownership().is_some());
        assert!(t.family_view("NONE", None).is_absent());
        // OURS-2: no marker anywhere, not recorded: not ours
        assert_eq!(t.family_view("OURS-2", None).ownership(), None);
        let rec = ["-A OURS-2 -j RETURN".to_string()];
        assert!(t.family_view("OURS-2", Some(&rec)).ownership().is_some());
        // everything but OURS and the jump to it
        assert_eq!(t.foreign_rules(&["OURS".to_string()]), 3);
    }

    #[test]
    fn flannel_lines_parse_to_our_rules() {
        let f = r#"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN"#;
        let r = parse_line(Family::Ipv4, "FLANNEL-POSTRTG", f).unwrap();
        assert_eq!(
            r.mark,
            Some(MarkMatch {
                value: 0x4000,
                mask: 0x4000
            })
        );
        let f = r#"-A FLANNEL-POSTRTG ! -s 198.18.0.0/16 -d 198.18.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#;
        let r = parse_line(Family::Ipv4, "FLANNEL-POSTRTG", f).unwrap();
        assert_eq!(
            rule_line("FLANNEL-POSTRTG", &r),
            r#"-A FLANNEL-POSTRTG ! -s 198.18.0.0/16 -d 198.18.0.0/16 -m comment --comment "netconverge masq" -j MASQUERADE --random-fully"#
        );
        assert!(parse_line(Family::Ipv4, "C", "-A C -o eth0 -j MASQUERADE").is_none());
        assert!(parse_line(Family::Ipv4, "C", "-A C -j DROP").is_none());
        assert!(parse_line(Family::Ipv6, "C", "-A C -s 198.18.0.0/16 -j RETURN").is_none());
        assert!(is_plain_jump(
            r#"-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG"#,
            "FLANNEL-POSTRTG"
        ));
        assert!(!is_plain_jump("-A POSTROUTING -o lo -j X", "X"));
    }
}
