//! The NAT backends' observations and rendered transactions, as plain data
//! (what `nft`/`iptables-save` showed, where our rules live, the ops that
//! change them). Invariant: no I/O and no interpretation here; parsing,
//! rendering and planning live in [`crate::plan::nat`], running the tools
//! in [`crate::nat`].

use serde::{Deserialize, Serialize};

use super::{Family, NatSpec};

/// The two implementations of the iptables command set. Their rules live
/// in different kernel tables and are invisible to each other's tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavour {
    /// iptables-nft: rules in nftables tables `ip nat` / `ip6 nat`.
    Nft,
    /// iptables-legacy: the x_tables `nat` table.
    Legacy,
}

impl Flavour {
    pub const ALL: [Flavour; 2] = [Flavour::Nft, Flavour::Legacy];

    pub fn word(self) -> &'static str {
        match self {
            Flavour::Nft => "nft",
            Flavour::Legacy => "legacy",
        }
    }

    /// `iptables-nft`, `ip6tables-legacy`, …
    pub fn cli(self, family: Family) -> String {
        format!("{}-{}", base(family), self.word())
    }

    pub fn save(self, family: Family) -> String {
        format!("{}-save", self.cli(family))
    }

    pub fn restore(self, family: Family) -> String {
        format!("{}-restore", self.cli(family))
    }
}

impl std::fmt::Display for Flavour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "iptables-{}", self.word())
    }
}

fn base(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => "iptables",
        Family::Ipv6 => "ip6tables",
    }
}

/// Printable name of a chain: `iptables-nft chain NETCONVERGE-POSTRTG`.
pub fn chain_label(flavour: Flavour, family: Family, chain: &str) -> String {
    format!("{} chain {chain}", flavour.cli(family))
}

pub fn family_word(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => "ip",
        Family::Ipv6 => "ip6",
    }
}

/// Printable name of a table: `nftables table ip netconverge`.
pub fn table_label(family: Family, table: &str) -> String {
    format!("nftables table {} {table}", family_word(family))
}

/// The flavour in use and why (shown by `show`, `--check` and the logs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlavourChoice {
    pub flavour: Flavour,
    pub reason: String,
}

/// What `nft list table <family> <name>` showed for a table of our name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NftFamily {
    /// The table carries [`crate::nat::TABLE_COMMENT`]: netconverge created it.
    pub marker: bool,
    /// Properties of chain `postrouting` (`type nat hook postrouting
    /// priority 100; policy accept`), `None` when the chain is missing.
    pub chain: Option<String>,
    /// The table carries flags (`dormant` disables all its rules).
    pub table_flags: bool,
    /// Objects in the table other than our chain and its rules.
    pub foreign: Vec<String>,
    /// Rules of our chain in order, canonical text ([`crate::nat::nftables::rule_text`]).
    pub rules: Vec<String>,
}

/// What one flavour's nat table holds at our chain's name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IptFamily {
    /// The chain is declared in the nat table.
    pub chain: bool,
    /// Rules of the chain, as `iptables-save` prints them (`-A CHAIN …`).
    pub rules: Vec<String>,
    /// POSTROUTING rules whose target is the chain.
    pub jumps: Vec<String>,
    /// Their positions in POSTROUTING (1-based), same order.
    pub jump_positions: Vec<usize>,
    /// The adoption record names this chain with exactly these rules.
    pub recorded: bool,
}

/// What one family holds at the place the file names, in the terms of the
/// backend that place belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Seen<T> {
    /// The backend could not be read (tool missing, permission, parse error).
    Unavailable { reason: String },
    /// Nothing exists there.
    Absent,
    /// A table of our name exists (ours or not: see [`NftFamily::is_ours`]),
    /// or a chain of our name and/or a jump to it (see [`IptFamily::ownership`]).
    Present(T),
}

/// The backend `[nat]` selects (chosen once, by `crate::nat::observe`, from
/// the file and, for iptables, the host's flavour) and what each family
/// holds at its place. The place and its state are one value, so the
/// planner can never read one backend's rules as the other's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
pub enum Named {
    /// The null backend: no `[nat]` (or nothing observed). Nothing is
    /// planned at a named place; leftovers of ours are still found.
    #[default]
    Null,
    Nftables {
        table: String,
        ipv4: Seen<NftFamily>,
        ipv6: Seen<NftFamily>,
    },
    Iptables {
        /// The flavour in use and why.
        choice: FlavourChoice,
        chain: String,
        ipv4: Seen<IptFamily>,
        ipv6: Seen<IptFamily>,
    },
}

impl Named {
    /// Where the rules live (`None` for the null backend).
    pub fn place(&self) -> Option<Place> {
        match self {
            Named::Null => None,
            Named::Nftables { table, .. } => Some(Place::Nftables {
                table: table.clone(),
            }),
            Named::Iptables { choice, chain, .. } => Some(Place::Iptables {
                flavour: choice.flavour,
                chain: chain.clone(),
            }),
        }
    }

    /// The iptables flavour choice, when the backend is iptables.
    pub fn flavour_choice(&self) -> Option<&FlavourChoice> {
        match self {
            Named::Iptables { choice, .. } => Some(choice),
            _ => None,
        }
    }
}

/// Where one family's rules can live.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
pub enum Place {
    Nftables { table: String },
    Iptables { flavour: Flavour, chain: String },
}

impl Place {
    /// `nftables table ip netconverge`, `iptables-legacy chain X`.
    pub fn label(&self, family: Family) -> String {
        match self {
            Place::Nftables { table } => table_label(family, table),
            Place::Iptables { flavour, chain } => chain_label(*flavour, family, chain),
        }
    }
}

/// A NAT object of netconverge's at a place the file does not name (an
/// old table/chain name, the other backend or iptables flavour, a family
/// no longer configured): removed once the new place is in place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Found {
    pub family: Family,
    pub place: Place,
    /// What makes it netconverge's (its kernel marker, or the record).
    pub why: String,
    /// What removing it removes, printable.
    pub items: Vec<String>,
    #[serde(skip)]
    pub removal: NatOp,
}

/// What the NAT backends found on the system.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NatObserved {
    /// The place the file names and what it holds.
    pub named: Named,
    /// netconverge's objects elsewhere (leftovers of earlier files).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub found: Vec<Found>,
}

/// The place a removal may only happen after: `spec`'s `family` in sync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Guard {
    pub spec: NatSpec,
    pub family: Family,
}

/// One atomic NAT transaction, fully rendered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
pub enum NatOp {
    /// One `nft -f -` script.
    Nftables {
        family: Family,
        table: String,
        script: String,
    },
    /// One `ip[6]tables-<flavour>-restore --noflush` input (`None`: no
    /// kernel change), recording an adoption first / forgetting it after.
    Iptables {
        flavour: Flavour,
        family: Family,
        chain: String,
        restore: Option<String>,
        /// Record the chain as adopted with these rules (before the restore).
        adopted: Option<Vec<String>>,
        /// Forget an adoption of the chain (after the restore).
        forget: bool,
    },
    /// Remove something of ours at a place the file no longer names; with
    /// `replaced_by`, only once that family is in sync at its new place
    /// (checked right before), so masquerade never lapses.
    Stale {
        remove: Box<NatOp>,
        replaced_by: Option<Box<Guard>>,
    },
}

impl NatOp {
    /// Runs after every install/repair (its own plan stage).
    pub fn is_stale_removal(&self) -> bool {
        matches!(self, NatOp::Stale { .. })
    }
}
