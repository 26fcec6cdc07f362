//! Log output: human text on a terminal, syslog-priority-prefixed lines
//! without timestamps under journald (which adds its own), or JSON.
//!
//! Invariant: logs go to stderr only; stdout is reserved for command output
//! (diffs, `show`), so scripts can parse it. Logging never fails and never
//! panics: a log line that cannot be written (journald's stream closed, a
//! full disk behind a redirect) is dropped, and the daemon keeps working.

use std::fmt;
use std::io::IsTerminal as _;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Text; journald style (`<3>` priority prefixes, no timestamps) when
    /// JOURNAL_STREAM is set.
    Text,
    /// One JSON object per line.
    Json,
}

/// `<N>` syslog priority prefixes that journald turns into log levels.
struct JournalFormat;

impl<S, N> FormatEvent<S, N> for JournalFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let prio = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        write!(w, "<{prio}>")?;
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// stderr, with every write error swallowed: a broken log stream must not
/// stop (or, through tracing's own error reporting to stderr, panic) the
/// daemon that keeps the overlay up.
pub struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // Pretend it was written: a retry would only fail again.
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Install the global subscriber. `verbosity` raises the default level
/// (0 = info, 1 = debug, 2+ = trace); `RUST_LOG` overrides it.
pub fn init(format: LogFormat, verbosity: u8) {
    let level = match verbosity {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("netconverge={level},warn")));
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LossyStderr)
        // its fallback for a failed write is `eprintln!`, which panics
        .log_internal_errors(false)
        // Colours only for a person at a terminal: a log file or a pipe to
        // another supervisor must not fill up with escape sequences.
        .with_ansi(std::io::stderr().is_terminal());
    // A second init (tests) is harmless: ignore the error.
    let _ = match (format, journald) {
        (LogFormat::Json, _) => builder.json().flatten_event(true).try_init(),
        (LogFormat::Text, true) => builder.event_format(JournalFormat).try_init(),
        (LogFormat::Text, false) => builder.with_target(false).try_init(),
    };
}
