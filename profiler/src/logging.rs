//! The one logging facade: every diagnostic of the library goes through
//! `tracing`, and the front ends decide here how it looks.
//!
//! On a terminal (the recorder, `report`, `symbolize`) a log line reads
//! like the rest of our output: `warning: ...`, `error: ...`, plain text
//! for info, so that a user sees no timestamps or module paths they did
//! not ask for. The agent runs under a supervisor that collects its
//! stderr, so it can log JSON lines instead (`--log-format json`).
//! `RUST_LOG` overrides the level filter, e.g. `RUST_LOG=rprof_bpf=debug`.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `warning: message`, as the rest of the command's output.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Installs the global subscriber. `default_level` applies unless
/// `RUST_LOG` says otherwise. Calling it twice keeps the first (tests).
pub fn init(format: LogFormat, default_level: Level) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(default_level.as_str().to_ascii_lowercase()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.event_format(Plain).try_init(),
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
    };
}

/// `warning: ...`-style lines with the event's fields after its message.
struct Plain;

impl<S, N> FormatEvent<S, N> for Plain
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let prefix = match *event.metadata().level() {
            Level::ERROR => "error: ",
            Level::WARN => "warning: ",
            Level::INFO => "",
            Level::DEBUG => "debug: ",
            Level::TRACE => "trace: ",
        };
        write!(writer, "{prefix}")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
