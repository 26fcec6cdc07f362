//! iptables backend: chain `<iptables_chain>` in the nat table of each
//! family, entered through exactly one jump from POSTROUTING.
//!
//! Invariant: rules are rendered exactly as `iptables-save` prints them, so
//! live and desired compare as strings; every write is one
//! `iptables-restore --noflush` input ending in one COMMIT (one atomic table
//! replacement, legacy and nft flavours alike), and only our chain and the
//! POSTROUTING rules that jump to it are ever named in it.

use serde::Serialize;

use super::diff::rule_differences;
use super::exec::{self, Package};
use super::rules::{COMMENT, Rule, Verdict};
use super::{FamilyObserved, NatBackend, NatError, NatObserved, NatOp};
use crate::model::{Family, NatBackendKind, NatSpec};
use crate::plan::ChangeKind;

/// What `iptables-save -t nat` showed of ours, for one family.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IptFamily {
    /// Our chain is declared in the nat table.
    pub chain: bool,
    /// Rules of our chain, as `iptables-save` prints them (`-A CHAIN …`).
    pub rules: Vec<String>,
    /// POSTROUTING rules whose target is our chain (`-A POSTROUTING …`).
    pub jumps: Vec<String>,
}

/// Printable name of our chain: `iptables chain NETCONVERGE-POSTRTG`.
pub fn chain_label(family: Family, chain: &str) -> String {
    match family {
        Family::Ipv4 => format!("iptables chain {chain}"),
        Family::Ipv6 => format!("ip6tables chain {chain}"),
    }
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
/// declaration flushes it inside the same commit) and leaving exactly one
/// canonical jump from POSTROUTING, given the jumps seen now.
pub fn restore_apply(chain: &str, rules: Option<&[String]>, jumps: &[String]) -> String {
    let mut out = vec!["*nat".to_string()];
    if let Some(rules) = rules {
        out.push(format!(":{chain} - [0:0]"));
        out.extend(rules.iter().cloned());
    }
    let canon = jump_line(chain);
    let mut kept = false;
    for j in jumps {
        if *j == canon && !kept {
            kept = true;
        } else {
            out.push(delete_line(j));
        }
    }
    if !kept {
        out.push(canon);
    }
    out.push("COMMIT".to_string());
    out.join("\n") + "\n"
}

/// Restore input removing our jumps and our chain.
pub fn restore_remove(chain: &str, seen: &IptFamily) -> String {
    let mut out = vec!["*nat".to_string()];
    out.extend(seen.jumps.iter().map(|j| delete_line(j)));
    if seen.chain {
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

/// What `iptables-save -t nat` output holds of ours.
pub fn parse_save(chain: &str, text: &str) -> IptFamily {
    let mut out = IptFamily::default();
    let declare = format!(":{chain} ");
    let ours = format!("-A {chain} ");
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
        if line.starts_with(&declare) {
            out.chain = true;
        } else if line.starts_with(&ours) {
            out.rules.push(line.to_string());
        } else if line.starts_with("-A POSTROUTING ") && target(line).as_deref() == Some(chain) {
            out.jumps.push(line.to_string());
        }
    }
    out
}

fn is_absent(seen: &IptFamily) -> bool {
    !seen.chain && seen.rules.is_empty() && seen.jumps.is_empty()
}

// -------------------------------------------------------------- planning --

/// The change (if any) that makes our chain of `family` hold `want` with one
/// jump to it. `seen == None`: nothing of ours exists.
pub fn plan_family(
    family: Family,
    chain: &str,
    want: &[Rule],
    seen: Option<&IptFamily>,
) -> Option<(ChangeKind, String, NatOp)> {
    let want_lines: Vec<String> = want.iter().map(|r| rule_line(chain, r)).collect();
    let op = |rules: Option<&[String]>, jumps: &[String]| NatOp::Iptables {
        family,
        chain: chain.to_string(),
        restore: restore_apply(chain, rules, jumps),
    };
    let Some(seen) = seen else {
        let reason = format!(
            "missing (chain {chain} with {} rules, jump from POSTROUTING)",
            want.len()
        );
        return Some((ChangeKind::Add, reason, op(Some(&want_lines), &[])));
    };
    let mut reasons = Vec::new();
    if !seen.chain {
        reasons.push(format!("chain {chain} missing"));
    }
    reasons.extend(rule_differences(&want_lines, &seen.rules));
    let rules_wrong = !reasons.is_empty();
    let canon = jump_line(chain);
    let copies = seen.jumps.iter().filter(|j| **j == canon).count();
    match copies {
        0 => reasons.push("jump from POSTROUTING missing".to_string()),
        1 => {}
        n => reasons.push(format!("jump from POSTROUTING duplicated ({n} copies)")),
    }
    for j in seen.jumps.iter().filter(|j| **j != canon) {
        reasons.push(format!("unexpected jump from POSTROUTING `{j}`"));
    }
    if reasons.is_empty() {
        return None;
    }
    let rules = rules_wrong.then_some(want_lines.as_slice());
    Some((
        ChangeKind::Modify,
        reasons.join("; "),
        op(rules, &seen.jumps),
    ))
}

/// The op removing our chain of `family` and every jump to it.
pub fn remove_op(family: Family, chain: &str, seen: &IptFamily) -> NatOp {
    NatOp::Iptables {
        family,
        chain: chain.to_string(),
        restore: restore_remove(chain, seen),
    }
}

// ------------------------------------------------------------------- I/O --

/// The save/restore binaries per family. [`IptablesTools::system`] uses
/// whatever flavour the distribution's `iptables` alternative points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IptablesTools {
    pub save4: String,
    pub restore4: String,
    pub save6: String,
    pub restore6: String,
}

impl IptablesTools {
    fn with_infix(infix: &str) -> IptablesTools {
        IptablesTools {
            save4: format!("iptables{infix}-save"),
            restore4: format!("iptables{infix}-restore"),
            save6: format!("ip6tables{infix}-save"),
            restore6: format!("ip6tables{infix}-restore"),
        }
    }

    /// `iptables-save` & co. (Debian: iptables-nft unless switched).
    pub fn system() -> IptablesTools {
        Self::with_infix("")
    }

    /// `iptables-nft-save` & co.
    pub fn nft() -> IptablesTools {
        Self::with_infix("-nft")
    }

    /// `iptables-legacy-save` & co.
    pub fn legacy() -> IptablesTools {
        Self::with_infix("-legacy")
    }

    fn save(&self, family: Family) -> &str {
        match family {
            Family::Ipv4 => &self.save4,
            Family::Ipv6 => &self.save6,
        }
    }

    fn restore(&self, family: Family) -> &str {
        match family {
            Family::Ipv4 => &self.restore4,
            Family::Ipv6 => &self.restore6,
        }
    }
}

impl Default for IptablesTools {
    fn default() -> Self {
        Self::system()
    }
}

#[derive(Debug, Clone, Default)]
pub struct IptablesBackend {
    pub tools: IptablesTools,
}

impl IptablesBackend {
    pub fn new(tools: IptablesTools) -> IptablesBackend {
        IptablesBackend { tools }
    }

    fn observe_family(&self, family: Family, chain: &str) -> FamilyObserved {
        let ran = exec::run(
            self.tools.save(family),
            &["-t", "nat"],
            None,
            Package::Iptables,
        )
        .and_then(|r| r.ok());
        match ran {
            Ok(text) => {
                let seen = parse_save(chain, &text);
                if is_absent(&seen) {
                    FamilyObserved::Absent
                } else {
                    FamilyObserved::Iptables(seen)
                }
            }
            Err(e) => FamilyObserved::Unavailable {
                reason: e.to_string(),
            },
        }
    }

    fn restore(&self, family: Family, input: &str) -> Result<(), NatError> {
        // -w: wait for the xtables lock (legacy flavour) instead of failing
        // when kube-proxy or firewalld holds it.
        exec::run(
            self.tools.restore(family),
            &["-w", "5", "--noflush"],
            Some(input),
            Package::Iptables,
        )?
        .ok()
        .map(drop)
    }
}

impl NatBackend for IptablesBackend {
    fn kind(&self) -> NatBackendKind {
        NatBackendKind::Iptables
    }

    fn observe(&self, spec: &NatSpec) -> NatObserved {
        NatObserved {
            backend: Some(NatBackendKind::Iptables),
            name: spec.iptables_chain.clone(),
            ipv4: self.observe_family(Family::Ipv4, &spec.iptables_chain),
            ipv6: self.observe_family(Family::Ipv6, &spec.iptables_chain),
        }
    }

    fn apply(&self, op: &NatOp) -> Result<(), NatError> {
        match op {
            NatOp::Iptables {
                family, restore, ..
            } => self.restore(*family, restore),
            NatOp::Nftables { .. } => Err(NatError::WrongBackend {
                op: "nftables",
                backend: "iptables",
            }),
        }
    }

    fn cleanup(&self, spec: &NatSpec) -> Result<Vec<String>, NatError> {
        let chain = &spec.iptables_chain;
        let mut removed = Vec::new();
        let mut errors = Vec::new();
        for family in [Family::Ipv4, Family::Ipv6] {
            match self.observe_family(family, chain) {
                FamilyObserved::Iptables(seen) => {
                    match self.restore(family, &restore_remove(chain, &seen)) {
                        Ok(()) => {
                            if seen.chain {
                                removed.push(chain_label(family, chain));
                            }
                            if !seen.jumps.is_empty() {
                                removed.push(format!(
                                    "{} jump(s) from {family} POSTROUTING to {chain}",
                                    seen.jumps.len()
                                ));
                            }
                        }
                        Err(e) => errors.push(e),
                    }
                }
                FamilyObserved::Unavailable { reason } => {
                    // A family we were never configured for may simply be
                    // unsupported here (no IPv6 nat); nothing of ours there.
                    if super::rules::family_spec(spec, family).is_some() {
                        errors.push(NatError::Unreadable { reason });
                    }
                }
                FamilyObserved::Absent
                | FamilyObserved::NotObserved
                | FamilyObserved::Nftables(_) => {}
            }
        }
        NatError::collect(errors).map(|()| removed)
    }

    fn check(&self, spec: &NatSpec) -> Result<(), NatError> {
        let mut tools = Vec::new();
        for family in [Family::Ipv4, Family::Ipv6] {
            if super::rules::family_spec(spec, family).is_some() {
                tools.push(self.tools.save(family));
                tools.push(self.tools.restore(family));
            }
        }
        exec::require(&tools, Package::Iptables)
    }
}

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
    fn parse_keeps_only_ours() {
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
        let seen = parse_save("OURS", save);
        assert!(seen.chain);
        assert_eq!(seen.rules, ["-A OURS -s 198.18.1.0/24 -j RETURN"]);
        assert_eq!(
            seen.jumps,
            [r#"-A POSTROUTING -m comment --comment "netconverge masq" -j OURS"#]
        );
        assert!(is_absent(&parse_save("NONE", save)));
    }
}
