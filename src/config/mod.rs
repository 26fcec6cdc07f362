//! TOML → validated [`Desired`] state.
//!
//! Invariant: either every check passed and a `Desired` is returned, or every
//! problem found is returned (in file order), each with file:line:col and a
//! `help:` saying what to do. Nothing here touches the kernel or other files.
//!
//! Pipeline: [`fast::parse`] for the plain subset of TOML generated files
//! use, else `toml_span::parse` (syntax, first error only) → [`schema`]
//! (typed, spanned values; type errors and unknown keys) → [`validate`]
//! (cross-object checks, then mapping into the model).

mod cni;
mod fast;
mod fleet;
pub mod kube;
mod kube_schema;
mod schema;
mod validate;

pub use fleet::NodeSelect;
pub use kube::{KubeSpec, NodeView, Selection};

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::Path;

use toml_span::{ErrorKind, Span};

use crate::model::Desired;

/// One problem in the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based; 0 only when the problem has no position (unreadable file).
    pub line: usize,
    /// 1-based, in characters.
    pub col: usize,
    pub message: String,
    pub help: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: error: {}", self.file, self.message)?;
        } else {
            write!(
                f,
                "{}:{}:{}: error: {}",
                self.file, self.line, self.col, self.message
            )?;
        }
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

/// Parse and validate `source` (named `file` in messages). A `[fleet]` is
/// expanded for the node its `node_name` names.
pub fn parse(source: &str, file: &str) -> Result<Desired, ConfigErrors> {
    parse_as(source, file, &NodeSelect::default())
}

/// What a configuration is loaded for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Purpose {
    /// Converge to it (converge, run, reload, validate): a file that
    /// declares nothing is refused, since converging it would remove every
    /// owned object.
    #[default]
    Converge,
    /// `cleanup`: removes everything netconverge owns anyway, so a file
    /// that declares nothing (only its settings: `state_dir`, `[engine]`)
    /// is what it is for.
    Cleanup,
}

/// [`parse`] for the node `node` selects out of a `[fleet]`.
pub fn parse_as(source: &str, file: &str, node: &NodeSelect) -> Result<Desired, ConfigErrors> {
    parse_for(source, file, node, Purpose::Converge)
}

/// [`parse_as`] for `purpose`.
pub fn parse_for(
    source: &str,
    file: &str,
    node: &NodeSelect,
    purpose: Purpose,
) -> Result<Desired, ConfigErrors> {
    parse_cluster(source, file, node, purpose, None)
}

/// The `[fleet] source = "kubernetes"` settings of `source`, if it has
/// them (`Ok(None)`: another source). Every error of the file is reported,
/// as [`parse_for`] would.
pub fn kube_source(
    source: &str,
    file: &str,
    node: &NodeSelect,
) -> Result<Option<KubeSpec>, ConfigErrors> {
    let mut d = Diags::new(source);
    let mut root = match toml_span::parse(source) {
        Ok(v) => v,
        Err(e) => {
            syntax_error(&mut d, &e);
            return Err(d.finish(file));
        }
    };
    let raw = schema::read(&mut root, &mut d);
    let spec = raw
        .fleet
        .as_ref()
        .and_then(|f| f.kube_spec(raw.node_name.as_ref(), node));
    if let (Some(f), None, true) = (
        raw.fleet.as_ref().filter(|f| f.kubernetes.is_some()),
        &spec,
        d.is_empty(),
    ) {
        d.error(
            f.header_span(),
            "cannot tell which Node this node is",
            "pass --node NAME, set NETCONVERGE_NODE, or set `node_name` at the top of the file",
        );
    }
    if !d.is_empty() {
        return Err(d.finish(file));
    }
    Ok(spec)
}

/// [`kube_source`] of the file at `path`.
pub fn load_kube_source(path: &Path, node: &NodeSelect) -> Result<Option<KubeSpec>, ConfigErrors> {
    let (source, name) = read_source(path)?;
    kube_source(&source, &name, node)
}

/// [`parse_for`] with the Nodes of a `source = "kubernetes"` fleet (see
/// [`kube::select`]). Without them such a fleet expands to nothing and
/// only the file is checked (validate, cleanup): never converge that.
pub fn parse_cluster(
    source: &str,
    file: &str,
    node: &NodeSelect,
    purpose: Purpose,
    cluster: Option<&Selection>,
) -> Result<Desired, ConfigErrors> {
    let mut d = Diags::new(source);
    // The plain subset goes the fast way; everything else, and every
    // syntax error, through toml_span (the same tree either way).
    let parsed = fast::parse(source).map_or_else(|| toml_span::parse(source), Ok);
    let mut root = match parsed {
        Ok(v) => v,
        Err(e) => {
            syntax_error(&mut d, &e);
            return Err(d.finish(file));
        }
    };
    let mut raw = schema::read(&mut root, &mut d);
    let offline_kube =
        cluster.is_none() && raw.fleet.as_ref().is_some_and(|f| f.kubernetes.is_some());
    // A `[fleet]` written in the file (the kubernetes source reports its own state).
    let from_fleet = raw.fleet.as_ref().is_some_and(|f| f.kubernetes.is_none());
    let underlay_by_local = fleet::expand(&mut raw, node, cluster, &mut d);
    validate::check(&raw, &mut d, purpose == Purpose::Cleanup || offline_kube);
    if !d.is_empty() {
        return Err(d.finish(file));
    }
    match validate::build(&raw) {
        Some(mut desired) => {
            desired.underlay_by_local = underlay_by_local;
            desired.fleet = from_fleet;
            Ok(desired)
        }
        // Unreachable when every missing/invalid value was reported; kept as an
        // error instead of a panic so a schema bug can never crash the daemon.
        None => {
            d.error(
                Span::new(0, 0),
                "internal error: the configuration passed validation but is incomplete",
                "please report this with the config file attached",
            );
            Err(d.finish(file))
        }
    }
}

/// The largest config file accepted (64 MiB): a config for 20 000 peers is
/// a few MiB; anything bigger is a mistake (or `/dev/zero` behind a
/// symlink) and must not be read into memory.
pub const MAX_CONFIG_BYTES: u64 = 64 << 20;

/// Read and validate a file; a `[fleet]` is expanded for this host
/// (`NETCONVERGE_NODE`, `node_name`, the hostname: see [`NodeSelect`]).
pub fn load(path: &Path) -> Result<Desired, ConfigErrors> {
    load_as(path, &NodeSelect::from_system(None))
}

/// [`load`] for the node `node` selects (`--node` goes in `node.flag`).
pub fn load_as(path: &Path, node: &NodeSelect) -> Result<Desired, ConfigErrors> {
    load_for(path, node, Purpose::Converge)
}

/// [`load_as`] for `purpose`.
pub fn load_for(path: &Path, node: &NodeSelect, purpose: Purpose) -> Result<Desired, ConfigErrors> {
    load_cluster(path, node, purpose, None)
}

/// [`load_for`] with the Nodes of a `source = "kubernetes"` fleet.
pub fn load_cluster(
    path: &Path,
    node: &NodeSelect,
    purpose: Purpose,
    cluster: Option<&Selection>,
) -> Result<Desired, ConfigErrors> {
    let (source, name) = read_source(path)?;
    parse_cluster(&source, &name, node, purpose, cluster)
}

/// The file's text and its name for messages.
fn read_source(path: &Path) -> Result<(String, String), ConfigErrors> {
    let name = path.display().to_string();
    let bytes = read_config(path).map_err(|(message, help)| {
        ConfigErrors(vec![ConfigError {
            file: name.clone(),
            line: 0,
            col: 0,
            message,
            help: Some(help),
        }])
    })?;
    let source = String::from_utf8(bytes)
        .map_err(|e| ConfigErrors(vec![utf8_error(&name, e.as_bytes(), e.utf8_error())]))?;
    Ok((source, name))
}

/// The file's bytes, or (message, help). Only a regular file (symlinks are
/// followed) of at most [`MAX_CONFIG_BYTES`] is read: the daemon reloads
/// through here, and a FIFO would block `open()` forever, a device would
/// be read until memory runs out.
fn read_config(path: &Path) -> Result<Vec<u8>, (String, String)> {
    use std::io::Read as _;
    use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};

    let cannot = |e: std::io::Error| {
        let help = match e.kind() {
            std::io::ErrorKind::NotFound => "pass the file with -c/--config",
            std::io::ErrorKind::PermissionDenied => {
                "make the file readable by this user, or run as root"
            }
            _ => "check the path given with -c/--config",
        };
        (format!("cannot read config: {e}"), help.to_string())
    };
    // O_NONBLOCK: opening a FIFO for reading must not wait for a writer
    // (it is refused below); regular files ignore the flag.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(cannot)?;
    // The opened file is what counts (no check-then-open race).
    let meta = file.metadata().map_err(cannot)?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let what = if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO (named pipe)"
        } else if ft.is_socket() {
            "a socket"
        } else if ft.is_char_device() {
            "a character device"
        } else if ft.is_block_device() {
            "a block device"
        } else {
            "not a regular file"
        };
        return Err((
            format!("cannot read config: it is {what}, not a regular file"),
            "pass a regular TOML file (a symlink to one is fine) with -c/--config".to_string(),
        ));
    }
    let too_big = |size: u64| {
        (
            format!(
                "cannot read config: it is {size} bytes, more than the {} MiB limit",
                MAX_CONFIG_BYTES >> 20
            ),
            "a config is a few MiB even for 20 000 peers; check that -c/--config names the right file"
                .to_string(),
        )
    };
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(too_big(meta.len()));
    }
    // `take`: the file may grow between fstat and read.
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or_default());
    (&mut file)
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    let read = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if read > MAX_CONFIG_BYTES {
        return Err(too_big(read));
    }
    Ok(bytes)
}

/// Invalid UTF-8 at file:line:col (column in characters of the valid text
/// before it), naming the offending byte.
fn utf8_error(file: &str, bytes: &[u8], e: std::str::Utf8Error) -> ConfigError {
    let at = e.valid_up_to();
    let valid = bytes.get(..at).unwrap_or_default();
    let line_start = valid.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
    // `valid` is valid UTF-8 by definition of valid_up_to
    let col = std::str::from_utf8(valid.get(line_start..).unwrap_or_default())
        .map_or(0, |s| s.chars().count())
        + 1;
    let byte = bytes
        .get(at)
        .map_or_else(String::new, |b| format!(" (byte 0x{b:02X})"));
    ConfigError {
        file: file.to_string(),
        line,
        col,
        message: format!("the file is not valid UTF-8{byte}"),
        help: Some(
            "TOML files are UTF-8: re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`), \
             or write the character as a \\u escape inside a string"
                .to_string(),
        ),
    }
}

// ------------------------------------------------------------ diagnostics --

/// One problem, still positioned by byte span.
struct Diag {
    span: Span,
    message: String,
    help: String,
}

/// Collects problems from every stage; positions are resolved once at the end.
pub(crate) struct Diags<'s> {
    src: &'s str,
    /// Byte offset where each line starts (line 1 at index 0).
    line_starts: Vec<usize>,
    list: Vec<Diag>,
}

impl<'s> Diags<'s> {
    fn new(src: &'s str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(src.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Diags {
            src,
            line_starts,
            list: Vec::new(),
        }
    }

    pub(crate) fn error(
        &mut self,
        span: Span,
        message: impl Into<String>,
        help: impl Into<String>,
    ) {
        self.list.push(Diag {
            span,
            message: message.into(),
            help: help.into(),
        });
    }

    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// 1-based line of a byte offset.
    pub(crate) fn line(&self, span: Span) -> usize {
        self.line_starts
            .partition_point(|&s| s <= span.start)
            .max(1)
    }

    /// 1-based (line, column in characters) of a byte offset.
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        let start = self.line_starts.get(line - 1).copied().unwrap_or_default();
        let col = match self.src.get(start..offset) {
            Some(s) => s.chars().count(),
            None => offset.saturating_sub(start),
        };
        (line, col + 1)
    }

    fn finish(mut self, file: &str) -> ConfigErrors {
        // Stable: problems at the same position keep the order they were found.
        self.list.sort_by_key(|e| e.span.start);
        ConfigErrors(
            self.list
                .iter()
                .map(|e| {
                    let (line, col) = self.line_col(e.span.start);
                    ConfigError {
                        file: file.to_string(),
                        line,
                        col,
                        message: e.message.clone(),
                        help: Some(e.help.clone()),
                    }
                })
                .collect(),
        )
    }
}

/// Turns the parser's (single) syntax error into a message with a remedy.
fn syntax_error(d: &mut Diags<'_>, e: &toml_span::Error) {
    let (message, help) = match &e.kind {
        ErrorKind::UnexpectedEof => (
            "unexpected end of file".to_string(),
            "finish the last `key = value` line or [table] header".to_string(),
        ),
        ErrorKind::InvalidCharInString('\n') => (
            "string is not closed before the end of the line".to_string(),
            "add the closing quote; use '''…''' for multi-line strings".to_string(),
        ),
        ErrorKind::InvalidCharInString(c) => (
            format!("invalid character {c:?} in string"),
            "write control characters as escapes such as \\t or \\u0001".to_string(),
        ),
        ErrorKind::InvalidEscape(c) => (
            format!("invalid escape `\\{c}` in string"),
            "write a backslash as \\\\ or use a 'literal string'".to_string(),
        ),
        ErrorKind::InvalidHexEscape(c) => (
            format!("invalid character {c:?} in a \\u escape"),
            "\\u takes 4 and \\U takes 8 hex digits".to_string(),
        ),
        ErrorKind::InvalidEscapeValue(v) => (
            format!("escape value {v:#x} is not a unicode scalar value"),
            "use a valid code point".to_string(),
        ),
        ErrorKind::Unexpected(c) => (
            format!("unexpected character {c:?}"),
            "each line is `key = value`, a [table] header, or a # comment".to_string(),
        ),
        ErrorKind::UnterminatedString => (
            "unterminated string".to_string(),
            "add the closing quote".to_string(),
        ),
        ErrorKind::InvalidNumber => (
            "invalid number".to_string(),
            "write integers like 8472 or 0x4000, and quote strings and addresses".to_string(),
        ),
        ErrorKind::OutOfRange(_) => (
            "number out of range".to_string(),
            "integers must fit in 64 bits".to_string(),
        ),
        ErrorKind::Wanted { expected, found } => (
            format!("expected {expected}, found {found}"),
            "each line is `key = value`, a [table] header, or a # comment".to_string(),
        ),
        ErrorKind::DuplicateTable { name, first } => (
            format!("table [{name}] is defined twice"),
            format!(
                "first defined at line {}; merge the two, or use [[{name}]] for a list",
                d.line(*first)
            ),
        ),
        ErrorKind::DuplicateKey { key, first } => (
            format!("key `{key}` is set twice"),
            format!("first set at line {}; keep only one", d.line(*first)),
        ),
        ErrorKind::RedefineAsArray => (
            "table redefined as an array of tables".to_string(),
            "use either [name] or [[name]] for one name, not both".to_string(),
        ),
        ErrorKind::MultilineStringKey => (
            "a multi-line string cannot be a key".to_string(),
            "write the key bare or in single-line quotes".to_string(),
        ),
        ErrorKind::DottedKeyInvalidType { first } => (
            "dotted key extends a value that is not a table".to_string(),
            format!("the value was set at line {}", d.line(*first)),
        ),
        ErrorKind::UnquotedString => (
            "bare words are not values".to_string(),
            "quote strings and addresses: `name = \"flannel.1\"`".to_string(),
        ),
        ErrorKind::ExceededDepthLimit => (
            "tables or arrays are nested too deeply".to_string(),
            "this configuration never nests more than two levels".to_string(),
        ),
        other => (
            format!("invalid TOML ({other})"),
            "check the syntax near here".to_string(),
        ),
    };
    d.error(e.span, format!("syntax: {message}"), help);
}
