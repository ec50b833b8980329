//! Logging: JSON lines (or pretty text for a terminal), filtered by `RUST_LOG`, and the helpers
//! that mask customer data before anything personal could reach a log line.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, with the request's span fields (`request_id`).
    Json,
    /// Human-readable, for a terminal.
    Pretty,
}

impl LogFormat {
    /// `json` or `pretty`; anything else (or nothing) picks JSON unless stdout is a terminal.
    pub fn from_setting(setting: Option<&str>) -> Self {
        match setting.map(str::to_ascii_lowercase).as_deref() {
            Some("json") => Self::Json,
            Some("pretty") => Self::Pretty,
            _ if std::io::stdout().is_terminal() => Self::Pretty,
            _ => Self::Json,
        }
    }
}

/// Database drivers whose debug lines carry statement parameters (customer data): at
/// `debug`, tokio-postgres logs each statement with its parameters. They are capped at `info`
/// whatever `RUST_LOG` asks.
const DRIVER_CAPS: &[&str] = &["tokio_postgres=info", "postgres=info", "rusqlite=info"];

/// `RUST_LOG` (else `default_filter`), with the database drivers capped (see
/// [`DRIVER_CAPS`]). The spans and events meant for traces
/// ([`crate::traces::TRACE_TARGET`]) are never log lines.
pub fn filter(rust_log: Option<&str>, default_filter: &str) -> EnvFilter {
    let mut filter = rust_log
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(default_filter));
    for cap in DRIVER_CAPS {
        if let Ok(directive) = cap.parse() {
            filter = filter.add_directive(directive);
        }
    }
    if let Ok(directive) = format!("{}=off", crate::traces::TRACE_TARGET).parse() {
        filter = filter.add_directive(directive);
    }
    filter
}

/// Installs the global subscriber. `RUST_LOG` wins over `default_filter`.
///
/// Without traces this is the log layer alone, with its filter global, exactly as before traces
/// existed: trace-only spans are disabled at their call site. With traces, the log layer keeps
/// that filter as its own, and the OpenTelemetry layer sees only the spans and events meant for
/// traces ([`crate::traces::TRACE_TARGET`]), whatever `RUST_LOG` says.
pub fn init(format: LogFormat, default_filter: &str, traces: Option<&crate::traces::Pipeline>) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = filter(rust_log.as_deref(), default_filter);
    let Some(pipeline) = traces else {
        let builder = tracing_subscriber::fmt().with_env_filter(filter);
        let _ = match format {
            LogFormat::Json => builder
                .json()
                .with_current_span(true)
                .with_span_list(false)
                .try_init(),
            LogFormat::Pretty => builder.try_init(),
        };
        return;
    };
    let logs = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_filter(filter)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer().with_filter(filter).boxed(),
    };
    // No busy/idle timing and no OTel context activation on each enter: both read clocks or
    // thread-locals on every poll of every span, and nothing here reads them (parents come
    // from the span tree; `traceparent`s from the span itself).
    let spans = tracing_opentelemetry::layer()
        .with_tracer(pipeline.tracer())
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_level(false)
        .with_filter(
            tracing_subscriber::filter::Targets::new()
                // INFO, the level every trace span and event is made at: TRACE here would raise
                // the subscriber's maximum level, and with it the `log` crate's, so every
                // `log::trace!` of a dependency (tokio-postgres logs several per poll) would
                // reach the dispatcher to be filtered out.
                .with_target(crate::traces::TRACE_TARGET, tracing::Level::INFO),
        );
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init();
}

/// `+33612345689` → `+33******89`: enough to tell numbers apart in an incident, not to call.
pub fn mask_phone(phone: &str) -> String {
    let chars: Vec<char> = phone.chars().collect();
    let n = chars.len();
    if n <= 4 {
        return "*".repeat(n);
    }
    let head = if chars[0] == '+' { 3 } else { 2 }.min(n - 2);
    chars
        .iter()
        .enumerate()
        .map(|(i, c)| if i < head || i >= n - 2 { *c } else { '*' })
        .collect()
}

/// `jane@example.com` → `j***@example.com`.
pub fn mask_email(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a subscriber with [`filter`] lets through, for one debug line of a database driver
    /// carrying a parameter and one of ours.
    fn written_under(rust_log: &str) -> String {
        use std::sync::{Arc, Mutex};
        let buf = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter(Some(rust_log), "info"))
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(target: "tokio_postgres::query", "executing with parameters: [\"+15550001111\"]");
            tracing::trace!(target: "tokio_postgres", "row: +15550002222");
            tracing::debug!(target: "gorgias_proxy::delivery", "ours at debug");
        });
        let bytes = buf.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn database_drivers_never_log_parameters_whatever_rust_log_says() {
        for rust_log in [
            "debug",
            "trace",
            "tokio_postgres=trace,debug",
            "info,tokio_postgres=debug",
        ] {
            let written = written_under(rust_log);
            assert!(!written.contains("+1555000"), "{rust_log}: {written}");
        }
        assert!(written_under("debug").contains("ours at debug"));
    }

    #[test]
    fn masks_keep_only_a_hint() {
        assert_eq!(mask_phone("+33612345689"), "+33*******89");
        assert_eq!(mask_phone("0719908543"), "07******43");
        assert_eq!(mask_phone("123"), "***");
        assert_eq!(mask_email("jane@example.com"), "j***@example.com");
        assert_eq!(mask_email("nope"), "***");
    }
}
