//! Logging setup shared by every binary: `RUST_LOG`-style filtering and a choice of human or
//! JSON output.

#[cfg(feature = "telemetry")]
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum LogFormat {
    /// Human-readable lines with `key=value` fields.
    #[default]
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

#[cfg(feature = "telemetry")]
/// The filter of [`init_command_tracing`] when `RUST_LOG` is unset: Warren's own lines, not
/// lapin's.
const COMMAND_FILTER: &str = "info,lapin=off";

#[cfg(feature = "telemetry")]
/// Installs the global tracing subscriber writing to stderr. The filter comes from
/// `RUST_LOG` (default `info`). Calling it twice is harmless (the second call does nothing).
pub fn init_tracing(format: LogFormat) {
    install(format, "info");
}

#[cfg(feature = "telemetry")]
/// Like [`init_tracing`], for one-shot commands: unless `RUST_LOG` is set, lapin's own lines
/// are left out. lapin logs every channel the broker closes at `ERROR` (a passive declare of
/// a missing queue, say), which in a command's output reads like a failure of its own, while
/// the command's message already says what happened.
pub fn init_command_tracing(format: LogFormat) {
    install(format, COMMAND_FILTER);
}

#[cfg(feature = "telemetry")]
fn install(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Colours only for a person at a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
}
