//! Logging: one line per send or refusal, as text or JSON, on stderr.

use clap::ValueEnum;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Log lines go to stderr from a background thread that batches writes, so a
/// send never waits on the terminal or a pipe. Not lossy: under a flood the
/// writer applies back-pressure rather than dropping a send's line. Hold the
/// guard to the end so the last lines are flushed.
pub fn init(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("log-writer")
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        // Fields as `name=value`, written directly: the default field
        // formatter styles every name and `=` even when styles are off,
        // which was a third of a send's log line.
        LogFormat::Text if !ansi => builder.fmt_fields(plain_fields()).init(),
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    guard
}

/// `name=value` fields separated by spaces; the message bare. Values are
/// written as `Debug`, so strings are quoted and control characters escaped,
/// as the default formatter writes them.
fn plain_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + 'static {
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(|writer, field, value| match field.name() {
        "message" => write!(writer, "{value:?}"),
        name => write!(writer, "{name}={value:?}"),
    })
    .delimited(" ")
}
