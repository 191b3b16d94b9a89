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

/// `name=value` fields separated by spaces; the message bare; the `log.*`
/// fields of lines bridged from the `log` crate left out, as the default
/// formatter does. Every value goes through [`Escaped`], so no value (a
/// Graph error's text, say) can break a line or send terminal escapes.
fn plain_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + 'static {
    use std::fmt::Write as _;
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(|writer, field, value| match field.name() {
        "message" => write!(Escaped(writer), "{value:?}"),
        name if name.starts_with("log.") => Ok(()),
        name => write!(Escaped(writer), "{name}={value:?}"),
    })
    .delimited(" ")
}

/// Writes control characters as `\u{…}` escapes, everything else as is.
struct Escaped<W>(W);

impl<W: std::fmt::Write> std::fmt::Write for Escaped<W> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let mut rest = s;
        while let Some(at) = rest.find(char::is_control) {
            self.0.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().expect("found a char at `at`");
            write!(self.0, "{}", c.escape_unicode())?;
            rest = &rest[at + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    /// A log writer tests can read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_value_cannot_forge_a_line_or_send_terminal_escapes() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .fmt_fields(super::plain_fields())
            .with_writer(move || writer.clone())
            .finish();
        let from_graph = "bad\nINFO messenger_gateway: sent forged=1 \u{1b}[31mred";
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(kind = "message", error = %from_graph, "send failed");
        });
        let out = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(!out.contains('\u{1b}'), "{out}");
        assert!(
            out.contains(r#"send failed kind="message" error=bad\u{a}INFO"#),
            "{out}"
        );
    }
}
