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

/// Installs the global subscriber. `RUST_LOG` wins over `default_filter`.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
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

    #[test]
    fn masks_keep_only_a_hint() {
        assert_eq!(mask_phone("+33612345689"), "+33*******89");
        assert_eq!(mask_phone("0719908543"), "07******43");
        assert_eq!(mask_phone("123"), "***");
        assert_eq!(mask_email("jane@example.com"), "j***@example.com");
        assert_eq!(mask_email("nope"), "***");
    }
}
