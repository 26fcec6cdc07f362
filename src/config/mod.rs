//! TOML → validated [`Desired`] state.
//!
//! Invariant: either every check passed and a `Desired` is returned, or every
//! problem found is returned, each with file:line:col and what to do. Nothing
//! here touches the kernel.
//!
//! STUB: implemented in the core engine issue.

use std::fmt;
use std::path::Path;

use crate::model::Desired;

/// One problem in the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
    pub help: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: error: {}",
            self.file, self.line, self.col, self.message
        )?;
        if let Some(h) = &self.help {
            write!(f, "\n  help: {h}")?;
        }
        Ok(())
    }
}

/// All problems found, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.0 {
            writeln!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Parse and validate `source` (named `file` in messages).
pub fn parse(source: &str, file: &str) -> Result<Desired, ConfigErrors> {
    let _ = (source, file);
    Ok(Desired::default())
}

/// Read and validate a file.
pub fn load(path: &Path) -> Result<Desired, ConfigErrors> {
    let name = path.display().to_string();
    let source = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: name.clone(),
            line: 0,
            col: 0,
            message: format!("cannot read config: {e}"),
            help: Some("pass the file with -c/--config".into()),
        }])
    })?;
    parse(&source, &name)
}
