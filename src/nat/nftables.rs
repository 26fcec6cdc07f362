//! nftables backend: tables `ip <name>` / `ip6 <name>`, each with one base
//! chain `postrouting` (type nat, hook postrouting, priority srcnat).
//!
//! Invariant: every write is one `nft -j -f -` batch (one kernel
//! transaction) that recreates or flushes our chain *and* adds all its rules,
//! so no packet or reader ever sees the chain without them; only tables
//! named by the spec are ever listed or changed.

use std::borrow::Cow;
use std::collections::HashSet;

use nftables::expr::{
    BinaryOperation, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix,
};
use nftables::schema::{self, Chain, FlushObject, NfCmd, NfListObject, NfObject, Nftables, Table};
use nftables::stmt::{Match, NAT, NATFlag, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use serde::Serialize;
use serde_json::Value;

use super::diff::rule_differences;
use super::exec::{self, Package};
use super::rules::{AddrMatch, COMMENT, MarkMatch, Rule, Verdict};
use super::{FamilyObserved, NatBackend, NatError, NatObserved, NatOp};
use crate::model::{Family, NatBackendKind, NatSpec};
use crate::plan::ChangeKind;

/// Our base chain in each of our tables.
pub const CHAIN: &str = "postrouting";
/// `srcnat`: where NAT source rewriting hooks in postrouting.
pub const PRIORITY: i32 = 100;

/// What `nft -j list table <family> <name>` showed for one of our tables.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NftFamily {
    /// Properties of chain `postrouting` (`type nat hook postrouting
    /// priority 100; policy accept`), `None` when the chain is missing.
    pub chain: Option<String>,
    /// The table carries flags (`dormant` disables all its rules).
    pub table_flags: bool,
    /// Objects in our table other than our chain and its rules.
    pub foreign: Vec<String>,
    /// Rules of our chain in order, canonical text ([`rule_text`]).
    pub rules: Vec<String>,
}

pub fn nf_family(family: Family) -> NfFamily {
    match family {
        Family::Ipv4 => NfFamily::IP,
        Family::Ipv6 => NfFamily::IP6,
    }
}

fn family_word(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => "ip",
        Family::Ipv6 => "ip6",
    }
}

/// Printable name of our table: `nftables table ip netconverge`.
pub fn table_label(family: Family, table: &str) -> String {
    format!("nftables table {} {table}", family_word(family))
}

fn want_chain_text() -> String {
    format!("type nat hook postrouting priority {PRIORITY}; policy accept")
}

// ------------------------------------------------------------- rendering --

/// Canonical one-line form of a rule, nft syntax; what observed and desired
/// rules are compared by, and what reasons print.
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

fn payload(family: Family, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed(family_word(family)),
            field: Cow::Borrowed(field),
        },
    )))
}

fn meta_mark() -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key: MetaKey::Mark }))
}

/// Statements of one rule, in the order nft lists them back.
pub fn rule_statements(family: Family, rule: &Rule) -> Vec<Statement<'static>> {
    let mut out = Vec::new();
    if let Some(m) = rule.mark {
        let left = if m.mask == u32::MAX {
            meta_mark()
        } else {
            Expression::BinaryOperation(Box::new(BinaryOperation::AND(
                meta_mark(),
                Expression::Number(m.mask),
            )))
        };
        out.push(Statement::Match(Match {
            left,
            right: Expression::Number(m.value),
            op: Operator::EQ,
        }));
    }
    for (field, m) in [("saddr", rule.src), ("daddr", rule.dst)] {
        if let Some(m) = m {
            let net = m.net;
            let right = Expression::Named(NamedExpression::Prefix(Prefix {
                addr: Box::new(Expression::String(Cow::Owned(net.network().to_string()))),
                len: u32::from(net.prefix_len()),
            }));
            out.push(Statement::Match(Match {
                left: payload(family, field),
                right,
                op: if m.negated {
                    Operator::NEQ
                } else {
                    Operator::EQ
                },
            }));
        }
    }
    out.push(match rule.verdict {
        Verdict::Return => Statement::Return(None),
        Verdict::Masquerade { random_fully } => Statement::Masquerade(random_fully.then(|| NAT {
            addr: None,
            family: None,
            port: None,
            flags: Some(HashSet::from([NATFlag::FullyRandom])),
        })),
    });
    out
}

fn table_obj(family: Family, table: &str) -> Table<'static> {
    Table {
        family: nf_family(family),
        name: Cow::Owned(table.to_string()),
        handle: None,
    }
}

fn chain_obj(family: Family, table: &str) -> Chain<'static> {
    Chain {
        family: nf_family(family),
        table: Cow::Owned(table.to_string()),
        name: Cow::Borrowed(CHAIN),
        _type: Some(NfChainType::NAT),
        hook: Some(NfHook::Postrouting),
        prio: Some(PRIORITY),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    }
}

fn cmd(c: NfCmd<'static>) -> NfObject<'static> {
    NfObject::CmdObject(c)
}

/// One transaction that leaves exactly `rules` in our chain. `recreate`
/// replaces the whole table (needed when the chain's hook/priority/policy is
/// wrong, the table is dormant, or foreign objects live in it); otherwise the
/// table and chain are kept and only the chain's rules are replaced.
pub fn batch_apply(
    family: Family,
    table: &str,
    rules: &[Rule],
    recreate: bool,
) -> Nftables<'static> {
    // `add` of an existing table/chain is a no-op, so the same batch works
    // whether or not they exist.
    let mut objects = vec![cmd(NfCmd::Add(NfListObject::Table(table_obj(
        family, table,
    ))))];
    if recreate {
        objects.push(cmd(NfCmd::Delete(NfListObject::Table(table_obj(
            family, table,
        )))));
        objects.push(cmd(NfCmd::Add(NfListObject::Table(table_obj(
            family, table,
        )))));
    }
    objects.push(cmd(NfCmd::Add(NfListObject::Chain(chain_obj(
        family, table,
    )))));
    if !recreate {
        objects.push(cmd(NfCmd::Flush(FlushObject::Chain(Chain {
            family: nf_family(family),
            table: Cow::Owned(table.to_string()),
            name: Cow::Borrowed(CHAIN),
            ..Chain::default()
        }))));
    }
    for rule in rules {
        objects.push(cmd(NfCmd::Add(NfListObject::Rule(schema::Rule {
            family: nf_family(family),
            table: Cow::Owned(table.to_string()),
            chain: Cow::Borrowed(CHAIN),
            expr: Cow::Owned(rule_statements(family, rule)),
            comment: Some(Cow::Borrowed(COMMENT)),
            ..schema::Rule::default()
        }))));
    }
    Nftables {
        objects: Cow::Owned(objects),
    }
}

/// Delete our table; succeeds whether or not it exists (add-then-delete in
/// one transaction).
pub fn batch_delete(family: Family, table: &str) -> Nftables<'static> {
    Nftables {
        objects: Cow::Owned(vec![
            cmd(NfCmd::Add(NfListObject::Table(table_obj(family, table)))),
            cmd(NfCmd::Delete(NfListObject::Table(table_obj(family, table)))),
        ]),
    }
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

// -------------------------------------------------------------- planning --

/// The change (if any) that makes our table of `family` hold `want`.
/// `seen == None`: the table does not exist.
pub fn plan_family(
    family: Family,
    table: &str,
    want: &[Rule],
    seen: Option<&NftFamily>,
) -> Option<(ChangeKind, String, NatOp)> {
    let op = |recreate: bool| NatOp::Nftables {
        family,
        table: table.to_string(),
        batch: batch_apply(family, table, want, recreate),
    };
    let Some(seen) = seen else {
        let reason = format!("missing (chain {CHAIN} with {} rules)", want.len());
        return Some((ChangeKind::Add, reason, op(false)));
    };
    let mut reasons = Vec::new();
    let mut recreate = false;
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
    for f in &seen.foreign {
        reasons.push(format!("foreign {f} in our table"));
        recreate = true;
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
        None
    } else {
        Some((ChangeKind::Modify, reasons.join("; "), op(recreate)))
    }
}

/// The op removing our table of `family`.
pub fn remove_op(family: Family, table: &str) -> NatOp {
    NatOp::Nftables {
        family,
        table: table.to_string(),
        batch: batch_delete(family, table),
    }
}

// ------------------------------------------------------------------- I/O --

/// Runs `nft` (configurable for tests and odd installs).
#[derive(Debug, Clone)]
pub struct NftBackend {
    pub nft: String,
}

impl Default for NftBackend {
    fn default() -> Self {
        NftBackend {
            nft: "nft".to_string(),
        }
    }
}

impl NftBackend {
    fn observe_family(&self, family: Family, table: &str) -> FamilyObserved {
        let args = ["-j", "list", "table", family_word(family), table];
        let ran = match exec::run(&self.nft, &args, None, Package::Nftables) {
            Ok(r) => r,
            Err(e) => {
                return FamilyObserved::Unavailable {
                    reason: e.to_string(),
                };
            }
        };
        if !ran.success {
            if ran.stderr.contains("No such file or directory") {
                return FamilyObserved::Absent;
            }
            return FamilyObserved::Unavailable {
                reason: ran.failed().to_string(),
            };
        }
        match parse_table(family, &ran.stdout) {
            Ok(t) => FamilyObserved::Nftables(t),
            Err(detail) => FamilyObserved::Unavailable {
                reason: NatError::Parse {
                    command: ran.command,
                    detail,
                }
                .to_string(),
            },
        }
    }

    fn run_batch(&self, batch: &Nftables<'_>) -> Result<(), NatError> {
        let json = serde_json::to_string(batch).map_err(|e| NatError::Parse {
            command: format!("{} -j -f -", self.nft),
            detail: e.to_string(),
        })?;
        // Not nftables::helper::apply_ruleset: it lets nft's stderr go to
        // ours, so its error would not say why the transaction failed.
        exec::run(
            &self.nft,
            &["-j", "-f", "-"],
            Some(&json),
            Package::Nftables,
        )?
        .ok()
        .map(drop)
    }
}

impl NatBackend for NftBackend {
    fn kind(&self) -> NatBackendKind {
        NatBackendKind::Nftables
    }

    fn observe(&self, spec: &NatSpec) -> NatObserved {
        NatObserved {
            backend: Some(NatBackendKind::Nftables),
            name: spec.nft_table.clone(),
            ipv4: self.observe_family(Family::Ipv4, &spec.nft_table),
            ipv6: self.observe_family(Family::Ipv6, &spec.nft_table),
        }
    }

    fn apply(&self, op: &NatOp) -> Result<(), NatError> {
        match op {
            NatOp::Nftables { batch, .. } => self.run_batch(batch),
            NatOp::Iptables { .. } => Err(NatError::WrongBackend {
                op: "iptables",
                backend: "nftables",
            }),
        }
    }

    fn cleanup(&self, spec: &NatSpec) -> Result<Vec<String>, NatError> {
        let mut removed = Vec::new();
        let mut errors = Vec::new();
        for family in [Family::Ipv4, Family::Ipv6] {
            match self.observe_family(family, &spec.nft_table) {
                FamilyObserved::Absent | FamilyObserved::NotObserved => {}
                FamilyObserved::Unavailable { reason } => {
                    errors.push(NatError::Unreadable { reason })
                }
                FamilyObserved::Nftables(_) | FamilyObserved::Iptables(_) => {
                    match self.run_batch(&batch_delete(family, &spec.nft_table)) {
                        Ok(()) => removed.push(table_label(family, &spec.nft_table)),
                        Err(e) => errors.push(e),
                    }
                }
            }
        }
        NatError::collect(errors).map(|()| removed)
    }

    fn check(&self, spec: &NatSpec) -> Result<(), NatError> {
        let _ = spec;
        exec::require(&[&self.nft], Package::Nftables)
    }
}
