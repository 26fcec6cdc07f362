//! nftables backend: tables `ip <name>` / `ip6 <name>`, each with one base
//! chain `postrouting` (type nat, hook postrouting, priority srcnat),
//! created with the comment [`TABLE_COMMENT`].
//!
//! Invariant: every write is one `nft -f -` script (one kernel
//! transaction) that recreates or flushes our chain *and* adds all its
//! rules, so no packet or reader ever sees the chain without them. A table
//! is netconverge's only when it carries [`TABLE_COMMENT`] (or is an older
//! netconverge's unmarked table holding nothing but our rules); a table of
//! our name that is not ours, or objects in ours we did not create, are a
//! conflict and never wiped unless `adopt = true`.

use std::collections::HashSet;

use nftables::expr::{BinaryOperation, Expression, Meta, MetaKey, NamedExpression, Payload};
use nftables::schema::{self, Chain};
use nftables::stmt::{NATFlag, Operator, Statement};
use serde_json::Value;

use super::diff::rule_differences;
use super::rules::{AddrMatch, COMMENT, MarkMatch, Rule, TABLE_COMMENT, Verdict};
use crate::model::Family;
use crate::model::nat::NatOp;
pub use crate::model::nat::{NftFamily, family_word, table_label};
use crate::plan::ChangeKind;

/// Our base chain in each of our tables.
pub const CHAIN: &str = "postrouting";
/// `srcnat`: where NAT source rewriting hooks in postrouting.
pub const PRIORITY: i32 = 100;

/// Tables iptables-nft keeps its rules in (and kube-proxy's): never ours,
/// never listed in full.
pub const RESERVED: [&str; 6] = ["nat", "filter", "mangle", "raw", "security", "kube-proxy"];
impl NftFamily {
    /// An unmarked table that holds nothing but a `postrouting` chain of
    /// rules carrying our rule comment: made by a netconverge from before
    /// table markers.
    pub fn made_by_older_netconverge(&self) -> bool {
        let ours = format!("comment {COMMENT:?}");
        !self.marker
            && self.foreign.is_empty()
            && self.chain.is_some()
            && !self.rules.is_empty()
            && self.rules.iter().all(|r| r.ends_with(&ours))
    }

    pub fn is_ours(&self) -> bool {
        self.marker || self.made_by_older_netconverge()
    }

    /// Short description of the content, for conflicts.
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(c) = &self.chain {
            let first = self
                .rules
                .first()
                .map(|r| format!(", the first `{r}`"))
                .unwrap_or_default();
            parts.push(format!(
                "chain {CHAIN} `{c}` with {} rule(s){first}",
                self.rules.len()
            ));
        }
        parts.extend(self.foreign.iter().cloned());
        if parts.is_empty() {
            "nothing: an empty table".to_string()
        } else {
            parts.join(", ")
        }
    }
}

fn want_chain_text() -> String {
    format!("type nat hook postrouting priority {PRIORITY}; policy accept")
}

// ------------------------------------------------------------- rendering --

/// Canonical one-line form of a rule, nft syntax: what observed and
/// desired rules are compared by, what reasons print, and (with our
/// comment) exactly what the scripts feed to `nft`.
pub fn rule_text(family: Family, rule: &Rule, comment: Option<&str>) -> String {
    let mut parts = Vec::new();
    if let Some(m) = rule.mark {
        if m.mask == u32::MAX {
            parts.push(format!("meta mark {:#010x}", m.value));
        } else {
            parts.push(format!("meta mark & {:#010x} == {:#010x}", m.mask, m.value));
        }
    }
    for (field, m) in [("saddr", rule.src), ("daddr", rule.dst)] {
        if let Some(m) = m {
            let neg = if m.negated { "!= " } else { "" };
            parts.push(format!("{} {field} {neg}{}", family_word(family), m.net));
        }
    }
    parts.push(rule.verdict.to_string());
    if let Some(c) = comment {
        parts.push(format!("comment {c:?}"));
    }
    parts.join(" ")
}

/// One script that leaves exactly `rules` in our chain of a marked table.
/// `recreate` replaces the whole table (needed to mark an unmarked one, when
/// the chain's hook/priority/policy is wrong, the table is dormant, or
/// adopted foreign objects live in it); otherwise the table and chain are
/// kept and only the chain's rules are replaced.
pub fn script_apply(family: Family, table: &str, rules: &[Rule], recreate: bool) -> String {
    let t = format!("{} {table}", family_word(family));
    let mut out = Vec::new();
    // `add` of an existing table/chain is a no-op (the comment of an
    // existing table is not changed), so the script works either way.
    if recreate {
        out.push(format!("add table {t}"));
        out.push(format!("delete table {t}"));
    }
    out.push(format!("add table {t} {{ comment {TABLE_COMMENT:?}; }}"));
    out.push(format!(
        "add chain {t} {CHAIN} {{ type nat hook postrouting priority {PRIORITY}; policy accept; }}"
    ));
    if !recreate {
        out.push(format!("flush chain {t} {CHAIN}"));
    }
    for rule in rules {
        out.push(format!(
            "add rule {t} {CHAIN} {}",
            rule_text(family, rule, Some(COMMENT))
        ));
    }
    out.join("\n") + "\n"
}

/// Delete a table; succeeds whether or not it exists (add-then-delete in
/// one transaction).
pub fn script_delete(family: Family, table: &str) -> String {
    let t = format!("{} {table}", family_word(family));
    format!("add table {t}\ndelete table {t}\n")
}

// --------------------------------------------------------------- parsing --

/// nft ≥ 1.0 prints a single NAT flag as a string, which nftables-rs 0.6
/// only accepts as a list; normalise before handing objects to it.
fn normalize_nat_flags(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (key, inner) in map.iter_mut() {
                if matches!(key.as_str(), "masquerade" | "snat" | "dnat" | "redirect") {
                    if let Some(flags) = inner.get_mut("flags") {
                        if flags.is_string() {
                            *flags = Value::Array(vec![flags.take()]);
                        }
                    }
                }
                normalize_nat_flags(inner);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize_nat_flags),
        _ => {}
    }
}

fn parse_addr(family: Family, e: &Expression<'_>) -> Option<ipnet::IpNet> {
    let (addr, len) = match e {
        Expression::String(s) => (s.as_ref(), None),
        Expression::Named(NamedExpression::Prefix(p)) => match p.addr.as_ref() {
            Expression::String(s) => (s.as_ref(), Some(p.len)),
            _ => return None,
        },
        _ => return None,
    };
    let ip: std::net::IpAddr = addr.parse().ok()?;
    if Family::of(&ip) != family {
        return None;
    }
    let len = match len {
        Some(l) => u8::try_from(l).ok()?,
        None => match family {
            Family::Ipv4 => 32,
            Family::Ipv6 => 128,
        },
    };
    ipnet::IpNet::new(ip, len).ok()
}

fn parse_number(e: &Expression<'_>) -> Option<u32> {
    match e {
        Expression::Number(n) => Some(*n),
        _ => None,
    }
}

fn is_meta_mark(e: &Expression<'_>) -> bool {
    matches!(
        e,
        Expression::Named(NamedExpression::Meta(Meta { key: MetaKey::Mark }))
    )
}

/// The typed rule these statements express, if they are in the vocabulary
/// netconverge renders (anything else is drift, shown verbatim).
pub fn parse_rule(family: Family, stmts: &[Statement<'_>]) -> Option<Rule> {
    let (last, matches) = stmts.split_last()?;
    let verdict = match last {
        Statement::Return(_) => Verdict::Return,
        Statement::Masquerade(None) => Verdict::Masquerade {
            random_fully: false,
        },
        Statement::Masquerade(Some(nat)) => {
            if nat.addr.is_some() || nat.port.is_some() || nat.family.is_some() {
                return None;
            }
            let flags = nat.flags.clone().unwrap_or_default();
            if flags.is_empty() {
                Verdict::Masquerade {
                    random_fully: false,
                }
            } else if flags == HashSet::from([NATFlag::FullyRandom]) {
                Verdict::Masquerade { random_fully: true }
            } else {
                return None;
            }
        }
        _ => return None,
    };
    let mut rule = Rule {
        mark: None,
        src: None,
        dst: None,
        verdict,
    };
    for s in matches {
        let Statement::Match(m) = s else { return None };
        if is_meta_mark(&m.left) && m.op == Operator::EQ && rule.mark.is_none() {
            rule.mark = Some(MarkMatch {
                value: parse_number(&m.right)?,
                mask: u32::MAX,
            });
            continue;
        }
        if let Expression::BinaryOperation(b) = &m.left {
            if let BinaryOperation::AND(l, r) = b.as_ref() {
                if is_meta_mark(l) && m.op == Operator::EQ && rule.mark.is_none() {
                    rule.mark = Some(MarkMatch {
                        value: parse_number(&m.right)?,
                        mask: parse_number(r)?,
                    });
                    continue;
                }
            }
            return None;
        }
        let Expression::Named(NamedExpression::Payload(Payload::PayloadField(p))) = &m.left else {
            return None;
        };
        if p.protocol != family_word(family) {
            return None;
        }
        let negated = match m.op {
            Operator::EQ => false,
            Operator::NEQ => true,
            _ => return None,
        };
        let am = Some(AddrMatch {
            net: parse_addr(family, &m.right)?,
            negated,
        });
        match p.field.as_ref() {
            "saddr" if rule.src.is_none() => rule.src = am,
            "daddr" if rule.dst.is_none() => rule.dst = am,
            _ => return None,
        }
    }
    Some(rule)
}

fn observed_rule_text(family: Family, raw: &Value) -> String {
    let mut raw = raw.clone();
    normalize_nat_flags(&mut raw);
    let comment = raw
        .get("comment")
        .and_then(Value::as_str)
        .map(str::to_string);
    let parsed = serde_json::from_value::<schema::Rule>(raw.clone())
        .ok()
        .and_then(|r| parse_rule(family, &r.expr));
    match parsed {
        Some(rule) => rule_text(family, &rule, comment.as_deref()),
        None => {
            let expr = raw.get("expr").map(Value::to_string).unwrap_or_default();
            match comment {
                Some(c) => format!("unrecognized {expr} comment {c:?}"),
                None => format!("unrecognized {expr}"),
            }
        }
    }
}

fn chain_text(raw: &Value) -> String {
    match serde_json::from_value::<Chain<'_>>(raw.clone()) {
        Ok(c) => {
            let word = |v: Option<String>| v.unwrap_or_else(|| "none".to_string());
            format!(
                "type {} hook {} priority {}; policy {}",
                word(c._type.map(|t| format!("{t:?}").to_lowercase())),
                word(c.hook.map(|h| format!("{h:?}").to_lowercase())),
                word(c.prio.map(|p| p.to_string())),
                word(c.policy.map(|p| format!("{p:?}").to_lowercase())),
            )
        }
        Err(_) => format!("unrecognized {raw}"),
    }
}

/// Parse `nft -j list table <family> <table>` output.
pub fn parse_table(family: Family, json: &str) -> Result<NftFamily, String> {
    let doc: Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let objects = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or("no `nftables` array")?;
    let mut out = NftFamily::default();
    for obj in objects {
        let Some((kind, body)) = obj.as_object().and_then(|m| m.iter().next()) else {
            continue;
        };
        let name = body.get("name").and_then(Value::as_str).unwrap_or("");
        match kind.as_str() {
            "metainfo" => {}
            "table" => {
                // The flags' text is unreliable in nft 1.0.6 JSON; presence is.
                let flags = body.get("flags");
                out.table_flags = flags
                    .is_some_and(|f| !(f.is_null() || f.as_array().is_some_and(Vec::is_empty)));
            }
            "chain" if name == CHAIN => out.chain = Some(chain_text(body)),
            "rule" => {
                let chain = body.get("chain").and_then(Value::as_str).unwrap_or("");
                if chain == CHAIN {
                    out.rules.push(observed_rule_text(family, body));
                }
                // Rules of foreign chains go with their chain.
            }
            other => out.foreign.push(format!("{other} `{name}`")),
        }
    }
    Ok(out)
}

/// The comment of a table, from the text of `nft -t list table` (nft 1.0.6
/// does not carry table comments in its JSON).
pub fn parse_table_comment(text: &str) -> Option<String> {
    let mut lines = text.lines();
    lines.next()?.strip_prefix("table ")?;
    let first = lines.find(|l| !l.trim().is_empty())?;
    let quoted = first.strip_prefix("\tcomment ")?;
    let inner = quoted.strip_prefix('"')?.strip_suffix('"')?;
    Some(inner.replace("\\\"", "\""))
}

// -------------------------------------------------------------- planning --

/// What the plan for one family's table is; `Err` is a conflict.
pub type FamilyPlan = Result<Option<(ChangeKind, String, NatOp)>, String>;

/// The change (if any) that makes table `table` of `family` hold `want`.
/// `seen == None`: the table does not exist.
pub fn plan_family(
    family: Family,
    table: &str,
    want: &[Rule],
    seen: Option<&NftFamily>,
    adopt: bool,
) -> FamilyPlan {
    let op = |recreate: bool| NatOp::Nftables {
        family,
        table: table.to_string(),
        script: script_apply(family, table, want, recreate),
    };
    let Some(seen) = seen else {
        let reason = format!("missing (chain {CHAIN} with {} rules)", want.len());
        return Ok(Some((ChangeKind::Add, reason, op(false))));
    };
    let label = table_label(family, table);
    let mut reasons = Vec::new();
    let mut recreate = false;
    if !seen.is_ours() {
        if !adopt {
            return Err(format!(
                "conflict: {label} exists and was not created by netconverge (no comment \
                 {TABLE_COMMENT:?}); it holds {}; it is left alone: delete or rename it, \
                 choose another `[nat] table`, or set `[nat] adopt = true` to replace it",
                seen.describe()
            ));
        }
        reasons.push(format!(
            "adopting (adopt = true) a table netconverge did not create: replacing {}",
            seen.describe()
        ));
        recreate = true;
    } else if !seen.marker {
        reasons.push(format!(
            "made by an older netconverge without the table comment {TABLE_COMMENT:?}: \
             recreated with it"
        ));
        recreate = true;
    }
    if !seen.foreign.is_empty() && !recreate {
        if !adopt {
            return Err(format!(
                "conflict: {label} is netconverge's but holds objects netconverge did not \
                 create: {}; they are left alone: move them to a table of your own (or \
                 delete them), or set `[nat] adopt = true` to drop them",
                seen.foreign.join(", ")
            ));
        }
        reasons.push(format!(
            "adopt = true: dropping objects netconverge did not create: {}",
            seen.foreign.join(", ")
        ));
        recreate = true;
    }
    if seen.table_flags {
        reasons.push("table has flags set (dormant: its rules do nothing)".to_string());
        recreate = true;
    }
    let want_chain = want_chain_text();
    match &seen.chain {
        None => reasons.push(format!("chain {CHAIN} missing (want {} rules)", want.len())),
        Some(c) if *c != want_chain => {
            reasons.push(format!("chain {CHAIN} is `{c}`, want `{want_chain}`"));
            recreate = true;
        }
        Some(_) => {}
    }
    // A missing chain has no rules; listing each as missing adds nothing.
    if seen.chain.is_some() {
        let want_text: Vec<String> = want
            .iter()
            .map(|r| rule_text(family, r, Some(COMMENT)))
            .collect();
        reasons.extend(rule_differences(&want_text, &seen.rules));
    }
    if reasons.is_empty() {
        Ok(None)
    } else {
        Ok(Some((ChangeKind::Modify, reasons.join("; "), op(recreate))))
    }
}

/// The op removing table `table` of `family`.
pub fn remove_op(family: Family, table: &str) -> NatOp {
    NatOp::Nftables {
        family,
        table: table.to_string(),
        script: script_delete(family, table),
    }
}

// ------------------------------------------------------------------- I/O --
