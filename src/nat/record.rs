//! The NAT adoption record: the one fact about netconverge's NAT objects
//! that the kernel cannot carry. An adopted chain (flannel's
//! FLANNEL-POSTRTG, taken over as it is) keeps its owner's rule comments,
//! so nothing in the kernel says it is now netconverge's; this file does.
//!
//! Invariant: an entry makes a chain netconverge's only while the chain
//! holds exactly the rules recorded at adoption (anything else is somebody
//! else's chain again). One file per network namespace (named by its
//! inode), so namespaces sharing a state directory never see, or race on,
//! each other's entries; within a namespace the one-writer lock serialises
//! processes, and a mutex this process's threads. Reads never fail a pass
//! (an unreadable record is an empty one); writes are atomic (temp file +
//! rename).

use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::sync::{Mutex, RwLock};

use serde::{Deserialize, Serialize};

use super::NatError;
use super::iptables::Flavour;
use crate::model::Family;

/// File name prefix inside the state directory (`nat-adopted-<netns>.json`).
pub const FILE_PREFIX: &str = "nat-adopted-";

static DIR_OVERRIDE: RwLock<Option<PathBuf>> = RwLock::new(None);
/// Serialises this process's writers (the one-writer lock, processes).
static WRITE: Mutex<()> = Mutex::new(());

/// Use `dir` as the state directory from now on (tests; embedders).
pub fn set_dir(dir: PathBuf) {
    if let Ok(mut d) = DIR_OVERRIDE.write() {
        *d = Some(dir);
    }
}

/// The state directory: [`set_dir`], else `NETCONVERGE_STATE_DIR`, else
/// systemd's `STATE_DIRECTORY` (first entry), else `/var/lib/netconverge`.
pub fn dir() -> PathBuf {
    if let Some(d) = DIR_OVERRIDE.read().ok().and_then(|d| d.clone()) {
        return d;
    }
    if let Some(d) = std::env::var_os("NETCONVERGE_STATE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(first) = std::env::var("STATE_DIRECTORY")
        .ok()
        .and_then(|d| d.split(':').next().map(str::to_string))
        .filter(|d| !d.is_empty())
    {
        return PathBuf::from(first);
    }
    PathBuf::from("/var/lib/netconverge")
}

/// The record of the calling thread's network namespace.
pub fn path() -> PathBuf {
    dir().join(format!("{FILE_PREFIX}{}.json", netns()))
}

/// One adopted chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Inode of the network namespace the chain lives in.
    pub netns: u64,
    pub flavour: Flavour,
    pub family: Family,
    pub chain: String,
    /// The chain's rules (iptables-save lines) when it was adopted.
    pub rules: Vec<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    adopted: Vec<Entry>,
}

/// The calling thread's network namespace (children inherit it).
fn netns() -> u64 {
    std::fs::metadata("/proc/thread-self/ns/net").map_or(0, |m| m.ino())
}

fn read_all() -> File {
    match std::fs::read_to_string(path()) {
        Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
            tracing::warn!("ignoring unreadable {}: {e}", path().display());
            File::default()
        }),
        Err(_) => File::default(),
    }
}

/// The entries of this namespace.
pub fn load() -> Vec<Entry> {
    let here = netns();
    read_all()
        .adopted
        .into_iter()
        .filter(|e| e.netns == here)
        .collect()
}

/// The rules recorded for `chain`, if it was adopted here.
pub fn recorded<'a>(
    entries: &'a [Entry],
    flavour: Flavour,
    family: Family,
    chain: &str,
) -> Option<&'a [String]> {
    entries
        .iter()
        .find(|e| e.flavour == flavour && e.family == family && e.chain == chain)
        .map(|e| e.rules.as_slice())
}

fn io_error(what: &str, e: std::io::Error) -> NatError {
    NatError::Record {
        path: path().display().to_string(),
        detail: format!("{what}: {e}"),
    }
}

/// Replace this namespace's entry for (flavour, family, chain) with
/// `rules` (`None`: remove it).
fn update(
    flavour: Flavour,
    family: Family,
    chain: &str,
    rules: Option<&[String]>,
) -> Result<(), NatError> {
    let _guard = WRITE.lock();
    let dir = dir();
    std::fs::create_dir_all(&dir).map_err(|e| io_error("create directory", e))?;
    let here = netns();
    let mut file = read_all();
    file.adopted.retain(|e| {
        !(e.netns == here && e.flavour == flavour && e.family == family && e.chain == chain)
    });
    if let Some(rules) = rules {
        file.adopted.push(Entry {
            netns: here,
            flavour,
            family,
            chain: chain.to_string(),
            rules: rules.to_vec(),
        });
    }
    let text = serde_json::to_string_pretty(&file).map_err(|e| NatError::Record {
        path: path().display().to_string(),
        detail: e.to_string(),
    })?;
    let tmp = path().with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| io_error("create", e))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| io_error("write", e))?;
    std::fs::rename(&tmp, path()).map_err(|e| io_error("rename", e))
}

/// Record `chain` as adopted with `rules`.
pub fn adopt(
    flavour: Flavour,
    family: Family,
    chain: &str,
    rules: &[String],
) -> Result<(), NatError> {
    update(flavour, family, chain, Some(rules))
}

/// Forget an adoption (the chain was removed). A missing record is fine.
pub fn forget(flavour: Flavour, family: Family, chain: &str) -> Result<(), NatError> {
    if recorded(&load(), flavour, family, chain).is_none() {
        return Ok(());
    }
    update(flavour, family, chain, None)
}
