//! Running the nftables tools: reading what is there, applying one rendered
//! transaction. The rendering and parsing are pure, in [`crate::plan::nat::nftables`]
//! (re-exported here).

use super::NatError;
use super::exec::{self, Package};
use super::rules::TABLE_COMMENT;
use crate::model::Family;
use serde_json::Value;

pub use crate::plan::nat::nftables::*;

/// The `nft` binary (tests and odd installs may point elsewhere).
const NFT: &str = "nft";

pub fn installed() -> bool {
    exec::which(NFT).is_some()
}

/// Every table of the namespace: `(family word, name)`.
pub fn list_tables() -> Result<Vec<(String, String)>, NatError> {
    let ran = exec::run(NFT, &["-j", "list", "tables"], None, Package::Nftables)?;
    let command = ran.command.clone();
    let doc: Value = serde_json::from_str(&ran.ok()?).map_err(|e| NatError::Parse {
        command: command.clone(),
        detail: e.to_string(),
    })?;
    let objects = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| NatError::Parse {
            command,
            detail: "no `nftables` array".to_string(),
        })?;
    Ok(objects
        .iter()
        .filter_map(|o| o.get("table"))
        .filter_map(|t| {
            let family = t.get("family")?.as_str()?;
            let name = t.get("name")?.as_str()?;
            Some((family.to_string(), name.to_string()))
        })
        .collect())
}

/// Does table `word name` carry our marker?
pub fn is_marked(word: &str, name: &str) -> Result<bool, NatError> {
    let text = exec::run(
        NFT,
        &["-t", "list", "table", word, name],
        None,
        Package::Nftables,
    )?
    .ok()?;
    Ok(parse_table_comment(&text).as_deref() == Some(TABLE_COMMENT))
}

/// Read table `table` of `family`; `None` when it does not exist.
pub fn read_table(family: Family, table: &str) -> Result<Option<NftFamily>, NatError> {
    let word = family_word(family);
    let ran = exec::run(
        NFT,
        &["-j", "list", "table", word, table],
        None,
        Package::Nftables,
    )?;
    if !ran.success {
        if ran.stderr.contains("No such file or directory") {
            return Ok(None);
        }
        return Err(ran.failed());
    }
    let mut seen = parse_table(family, &ran.stdout).map_err(|detail| NatError::Parse {
        command: ran.command.clone(),
        detail,
    })?;
    seen.marker = is_marked(word, table)?;
    Ok(Some(seen))
}

/// Run one script (one transaction).
pub fn run_script(script: &str) -> Result<(), NatError> {
    exec::run(NFT, &["-f", "-"], Some(script), Package::Nftables)?
        .ok()
        .map(drop)
}

pub fn require() -> Result<(), NatError> {
    exec::require(&[NFT], Package::Nftables)
}
