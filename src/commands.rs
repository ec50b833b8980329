//! One-shot subcommands of the binary (`healthcheck`, `check`), kept out of `main.rs`.

use std::net::SocketAddr;
use std::time::Duration;

use gorgias::{
    Auth, CallLimit, GorgiasError, LimitHeader, ListAnswer, ListShape, PROBE_MAX_CALLS, Probe,
    ProbeError,
};
use serde::Serialize;

use crate::config::Config;
use crate::ticketing::MessageChannel;

/// Probes `GET /healthz` and returns the process exit code: 0 when it answers 200.
pub async fn healthcheck(url: Option<url::Url>, listen: SocketAddr) -> i32 {
    let url = match url {
        Some(u) => u.to_string(),
        None => format!("http://127.0.0.1:{}/healthz", listen.port()),
    };
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
    {
        Ok(c) => c,
        Err(_) => return 1,
    };
    match client.get(&url).send().await {
        Ok(r) if r.status().is_success() => 0,
        Ok(r) => {
            eprintln!("healthcheck: {url} answered {}", r.status());
            1
        }
        Err(e) => {
            eprintln!("healthcheck: {url}: {e}");
            1
        }
    }
}

// ---------------------------------------------------------------------------------------------
// `check`: the read-only preflight
// ---------------------------------------------------------------------------------------------

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CheckStatus {
    /// What the service relies on holds.
    Pass,
    /// The service will work, but not as well as it could (said why).
    Warn,
    /// The service would fail or misbehave against this account, or the check could not tell.
    Fail,
}

impl CheckStatus {
    /// `PASS`, `WARN` or `FAIL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Warn => "WARN",
            Self::Fail => "FAIL",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckLine {
    /// A stable name for scripts (`credentials`, `rate-limit`, ...).
    pub name: &'static str,
    /// The verdict.
    pub status: CheckStatus,
    /// Why, in words an operator can act on. Never holds a secret or a customer's data.
    pub detail: String,
}

/// What `gorgias-proxy check` found: pure data, so tests assert on it without a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// The account's origin (`https://acme.gorgias.com`), without path or user info.
    pub target: String,
    /// One line per check, in the order they ran.
    pub checks: Vec<CheckLine>,
    /// Gorgias calls sent (at most [`PROBE_MAX_CALLS`]).
    pub calls_spent: u32,
}

/// The names of the checks, in report order.
pub const CHECKS: [&str; 7] = [
    "credentials",
    "ticket-channel",
    "message-channel",
    "rate-limit",
    "customer-email-filter",
    "phone-search",
    "ticket-external-id-filter",
];

impl CheckReport {
    /// True when any check failed.
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.status == CheckStatus::Fail)
    }

    /// The process exit code: 0 when nothing failed (warnings allowed), else 1.
    pub fn exit_code(&self) -> i32 {
        i32::from(self.failed())
    }

    /// The line named `name`, if it ran.
    pub fn get(&self, name: &str) -> Option<&CheckLine> {
        self.checks.iter().find(|c| c.name == name)
    }

    fn count(&self, status: CheckStatus) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }

    /// One line per check, then a summary line.
    pub fn render_text(&self) -> String {
        let width = CHECKS.iter().map(|n| n.len()).max().unwrap_or(0);
        let mut out = format!("gorgias-proxy check against {}\n", self.target);
        for c in &self.checks {
            out.push_str(&format!(
                "{}  {:width$}  {}\n",
                c.status.as_str(),
                c.name,
                c.detail
            ));
        }
        out.push_str(&format!(
            "{}: {} passed, {} warned, {} failed; Gorgias calls spent: {} (at most {}); nothing written\n",
            if self.failed() { "FAILED" } else { "OK" },
            self.count(CheckStatus::Pass),
            self.count(CheckStatus::Warn),
            self.count(CheckStatus::Fail),
            self.calls_spent,
            PROBE_MAX_CALLS,
        ));
        out
    }

    /// One JSON document: `{ok, target, calls_spent, max_calls, writes, checks: [{name, status,
    /// detail}]}`.
    pub fn render_json(&self) -> String {
        serde_json::json!({
            "ok": !self.failed(),
            "target": self.target,
            "calls_spent": self.calls_spent,
            "max_calls": PROBE_MAX_CALLS,
            "writes": 0,
            "checks": self.checks,
        })
        .to_string()
    }
}

/// `gorgias-proxy check`: runs the preflight, prints the report (lines, or one JSON document
/// with `json`) on stdout, and returns the exit code (0 when nothing failed, else 1).
pub async fn check(config: &Config, json: bool) -> i32 {
    let report = check_report(config).await;
    if json {
        println!("{}", report.render_json());
    } else {
        print!("{}", report.render_text());
    }
    report.exit_code()
}

/// What `check` prints when the settings themselves are unusable; returns exit code 2, so CI
/// can tell "this deployment's configuration is broken" from "the account is".
pub fn check_config_error(problem: &str, json: bool) -> i32 {
    if json {
        println!(
            "{}",
            serde_json::json!({"ok": false, "error": problem, "calls_spent": 0, "checks": []})
        );
    } else {
        eprintln!("Error: {problem}");
    }
    2
}

/// Runs every check against the account `config` names, spending at most [`PROBE_MAX_CALLS`]
/// calls (four, as written) and writing nothing. The values looked up are random, so nothing
/// the account holds can match them: any hit means a filter was ignored.
pub async fn check_report(config: &Config) -> CheckReport {
    check_account(&config.gorgias, &config.ticketing).await
}

/// The preflight of one account: its client settings and the use case's (the channels).
/// `check` runs it on the default account, `POST /connections/{id}/check` on a stored one.
pub async fn check_account(
    client: &gorgias::ClientSettings,
    ticketing: &crate::ticketing::TicketingSettings,
) -> CheckReport {
    let target = client.base_url.origin().ascii_serialization();
    let mut probe = match Probe::new(client) {
        Ok(p) => p,
        Err(e) => {
            return CheckReport {
                target,
                checks: vec![line(
                    "credentials",
                    CheckStatus::Fail,
                    format!("no HTTP client: {}", chain(&e)),
                )],
                calls_spent: 0,
            };
        }
    };
    let mut checks = Vec::with_capacity(CHECKS.len());

    let settings = probe.assignment_channels().await;
    checks.push(credentials_line(client, ticketing, &target, &settings));
    checks.push(ticket_channel_line(ticketing, &settings));
    checks.push(message_channel_line(ticketing.message_channel));

    // When the key is refused or Gorgias cannot be reached, the other calls would fail the
    // same way: they are not spent, and their checks say why they did not run.
    let skip = match &settings {
        Err(ProbeError::Call(e)) => match e {
            GorgiasError::Rejected { status: 401, .. } => Some("the credentials were refused"),
            GorgiasError::Unreachable { .. }
            | GorgiasError::Timeout { .. }
            | GorgiasError::ConnectionLost { .. } => Some("Gorgias could not be reached"),
            _ => None,
        },
        _ => None,
    };
    let lookups = match skip {
        Some(why) => {
            let not_run = |name| line(name, CheckStatus::Fail, format!("not checked: {why}"));
            vec![
                not_run("customer-email-filter"),
                not_run("phone-search"),
                not_run("ticket-external-id-filter"),
            ]
        }
        None => {
            let email = format!("gorgias-proxy-check-{}@example.com", uuid::Uuid::new_v4());
            let digits: String = std::iter::repeat_with(|| fastrand::digit(10))
                .take(15)
                .collect();
            let external_id = format!("gorgias-proxy-check-{}", uuid::Uuid::new_v4());
            vec![
                email_filter_line(probe.customers_by_email(&email).await),
                phone_search_line(probe.search_phone(&digits).await),
                external_id_filter_line(probe.tickets_by_external_id(&external_id).await),
            ]
        }
    };
    // The rate-limit line reads the headers of every answer, so it is judged last and listed
    // in its place.
    checks.push(rate_limit_line(
        client.rate_limit,
        probe.limit_headers(),
        skip,
    ));
    checks.extend(lookups);
    CheckReport {
        target,
        checks,
        calls_spent: probe.calls_spent(),
    }
}

fn line(name: &'static str, status: CheckStatus, detail: String) -> CheckLine {
    CheckLine {
        name,
        status,
        detail,
    }
}

/// An error and its causes on one line (transport errors say what failed only in the causes).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A failed probe call in words: the status and Gorgias's message, or what happened instead.
fn describe(e: &ProbeError) -> String {
    let ProbeError::Call(e) = e else {
        return e.to_string();
    };
    match e {
        GorgiasError::Rejected {
            status,
            msg: Some(m),
            ..
        } => format!("{} answered {status} \"{m}\"", e.endpoint()),
        GorgiasError::Rejected { status, .. } if (300..400).contains(status) => format!(
            "{} answered a redirect ({status}): is the base URL the account's \
             https://<subdomain>.gorgias.com/?",
            e.endpoint()
        ),
        GorgiasError::Rejected { status, .. } => format!("{} answered {status}", e.endpoint()),
        GorgiasError::RateLimited { retry_after, .. } => format!(
            "{} answered 429: the account's call budget is spent right now (other integrations \
             or a running service); run the check again{}",
            e.endpoint(),
            retry_after.map_or(String::new(), |d| format!(" in {} s", d.as_secs().max(1)))
        ),
        GorgiasError::Timeout { .. } => {
            format!("{} did not answer within GORGIAS_TIMEOUT_MS", e.endpoint())
        }
        GorgiasError::Unreachable { source, .. } | GorgiasError::ConnectionLost { source, .. } => {
            format!("{}: {}", e.endpoint(), chain(source.as_ref()))
        }
        _ => chain(e),
    }
}

fn credentials_line(
    client: &gorgias::ClientSettings,
    ticketing: &crate::ticketing::TicketingSettings,
    target: &str,
    settings: &Result<Vec<String>, ProbeError>,
) -> CheckLine {
    let (who, fix) = match &client.auth {
        Auth::Basic { username, .. } => (
            format!("the API key of {username}"),
            "check GORGIAS_USERNAME (the email of the Gorgias user who owns the key) and \
             GORGIAS_API_KEY (Settings > REST API)",
        ),
        Auth::Bearer(_) => (
            "the OAuth2 access token".to_owned(),
            "check GORGIAS_ACCESS_TOKEN (access tokens expire)",
        ),
    };
    let Err(err) = settings else {
        return line(
            "credentials",
            CheckStatus::Pass,
            format!("{target} accepts {who}: account settings are readable"),
        );
    };
    let detail = describe(err);
    match err {
        ProbeError::Call(GorgiasError::Rejected { status: 401, .. }) => line(
            "credentials",
            CheckStatus::Fail,
            format!("{target} refused {who} ({detail}): {fix}"),
        ),
        ProbeError::Call(GorgiasError::Rejected { status: 403, .. })
            if ticketing.channel_override.is_some() =>
        {
            line(
                "credentials",
                CheckStatus::Warn,
                format!(
                    "{target} accepts {who} but will not show the account settings ({detail}); \
                     TICKET_CHANNEL is set, so the service does not need them"
                ),
            )
        }
        ProbeError::Call(GorgiasError::Rejected { status: 403, .. }) => line(
            "credentials",
            CheckStatus::Fail,
            format!(
                "{target} accepts {who} but will not show the account settings ({detail}): the \
                 service reads them to choose the ticket channel; give the key's user access \
                 (OAuth2: the account:read scope) or set TICKET_CHANNEL"
            ),
        ),
        ProbeError::Call(GorgiasError::Rejected { status: 404, .. }) => line(
            "credentials",
            CheckStatus::Fail,
            format!("{target} is not a Gorgias account ({detail}): check GORGIAS_DOMAIN"),
        ),
        ProbeError::Call(
            GorgiasError::Unreachable { .. }
            | GorgiasError::Timeout { .. }
            | GorgiasError::ConnectionLost { .. },
        ) => line(
            "credentials",
            CheckStatus::Fail,
            format!(
                "cannot reach {target} ({detail}): check GORGIAS_DOMAIN or GORGIAS_BASE_URL \
                 and the network"
            ),
        ),
        _ => line(
            "credentials",
            CheckStatus::Fail,
            format!("account settings could not be read: {detail}"),
        ),
    }
}

/// The service's rule (`ticketing`): `TICKET_CHANNEL`, else `phone` when the account
/// auto-assigns SMS tickets, else `email`.
fn ticket_channel_line(
    ticketing: &crate::ticketing::TicketingSettings,
    settings: &Result<Vec<String>, ProbeError>,
) -> CheckLine {
    let name = "ticket-channel";
    let from_account = settings.as_ref().ok().map(|channels| {
        let channel = crate::ticketing::channel_for(channels);
        let why = if channel == "phone" {
            "the account auto-assigns SMS tickets (ticket-assignment.assignment_channels \
             contains sms)"
        } else {
            "the account does not auto-assign SMS tickets (no sms in \
             ticket-assignment.assignment_channels)"
        };
        (channel, why)
    });
    match (&ticketing.channel_override, from_account) {
        (Some(fixed), Some((rule, _))) => line(
            name,
            CheckStatus::Pass,
            format!("{fixed}: TICKET_CHANNEL is set (the account's settings would give {rule})"),
        ),
        (Some(fixed), None) => line(
            name,
            CheckStatus::Pass,
            format!("{fixed}: TICKET_CHANNEL is set"),
        ),
        (None, Some((channel, why))) => line(
            name,
            CheckStatus::Pass,
            format!("{channel}: {why}; TICKET_CHANNEL would override it"),
        ),
        (None, None) => line(
            name,
            CheckStatus::Fail,
            "not known: the account settings could not be read and TICKET_CHANNEL is not set, \
             so no ticket could be opened"
                .to_owned(),
        ),
    }
}

fn message_channel_line(channel: MessageChannel) -> CheckLine {
    let detail = match channel {
        MessageChannel::Phone => {
            "phone (MESSAGE_CHANNEL unset or phone): Gorgias stores phone messages without a \
             source envelope; email is never used, it would need one"
        }
        MessageChannel::Api => {
            "api (MESSAGE_CHANNEL=api): incoming API messages; Gorgias's auto-reply rules do not \
             fire on them"
        }
    };
    line("message-channel", CheckStatus::Pass, detail.to_owned())
}

/// `GORGIAS_RATE_LIMIT` as written (`40/20s`).
fn pacing(calls: u32, window: Duration) -> String {
    format!("{calls}/{}s", window.as_secs_f64())
}

/// The header against the configured pacing. A missing header is a warning, not a failure:
/// tickets are still created and paced by `GORGIAS_RATE_LIMIT`; what is lost is the check of
/// that setting and the service's signal of calls other integrations spend (a proxy between us
/// and Gorgias may strip it).
/// `skip` says why the account's answers were not expected to carry it (a refused key is
/// answered before any account is known).
fn rate_limit_line(
    configured: Option<(u32, Duration)>,
    headers: &[LimitHeader],
    skip: Option<&str>,
) -> CheckLine {
    let name = "rate-limit";
    let header = "X-Gorgias-Account-Api-Call-Limit";
    let read = headers.iter().rev().find_map(|h| match h {
        LimitHeader::Read(l) => Some(*l),
        _ => None,
    });
    let unreadable = headers.iter().find_map(|h| match h {
        LimitHeader::Unreadable(text) => Some(text.as_str()),
        _ => None,
    });
    let pacing_text = configured.map_or_else(|| "off".to_owned(), |(c, w)| pacing(c, w));
    let Some(CallLimit { used, limit }) = read else {
        return match unreadable {
            Some(text) => line(
                name,
                CheckStatus::Warn,
                format!(
                    "{header} is present but not used/limit (\"{text}\"): the configured pacing \
                     ({pacing_text}) cannot be checked against the account's limit"
                ),
            ),
            None if skip.is_some() || headers.is_empty() => line(
                name,
                CheckStatus::Fail,
                format!(
                    "not checked: {}",
                    skip.unwrap_or("Gorgias gave no readable answer")
                ),
            ),
            None => line(
                name,
                CheckStatus::Warn,
                format!(
                    "no {header} header on {} answer(s): the account's limit (40 or 80 per 20 s) \
                     cannot be checked against the configured pacing ({pacing_text}), and the \
                     service will not see what other integrations spend (a proxy in between may \
                     strip the header)",
                    headers.len()
                ),
            ),
        };
    };
    let busy = if u64::from(used) * 10 >= u64::from(limit) * 9 {
        "; the bucket is nearly full right now: something else spends from it"
    } else {
        ""
    };
    let Some((calls, window)) = configured else {
        return line(
            name,
            CheckStatus::Warn,
            format!(
                "the account allows {limit} calls per 20 s ({used}/{limit} now) but pacing is off \
                 (GORGIAS_RATE_LIMIT=off): bursts will meet 429s; set GORGIAS_RATE_LIMIT={limit}/20s{busy}"
            ),
        );
    };
    // Gorgias documents a 20 s window; the header gives only the count.
    let per_window = f64::from(calls) * 20.0 / window.as_secs_f64();
    if per_window > f64::from(limit) + 1e-9 {
        return line(
            name,
            CheckStatus::Warn,
            format!(
                "GORGIAS_RATE_LIMIT {} is above the {limit} calls per 20 s the account reports \
                 ({used}/{limit} now): expect 429s under load; set GORGIAS_RATE_LIMIT={limit}/20s{busy}",
                pacing(calls, window)
            ),
        );
    }
    let unused = if per_window < f64::from(limit) * 0.75 {
        format!(" (it leaves part unused: GORGIAS_RATE_LIMIT={limit}/20s would use all of it)")
    } else {
        String::new()
    };
    line(
        name,
        CheckStatus::Pass,
        format!(
            "the account allows {limit} calls per 20 s ({used}/{limit} now); pacing {} fits{unused}{busy}",
            pacing(calls, window)
        ),
    )
}

fn email_filter_line(answer: Result<ListAnswer, ProbeError>) -> CheckLine {
    let name = "customer-email-filter";
    match answer {
        Err(e) => line(name, CheckStatus::Fail, describe(&e)),
        Ok(a) if a.shape == ListShape::Unreadable => line(
            name,
            CheckStatus::Fail,
            "GET /api/customers?email= answered something other than a list: the service would \
             read it as \"no such customer\" and create duplicates"
                .to_owned(),
        ),
        Ok(a) if a.items == 0 => line(
            name,
            CheckStatus::Pass,
            "GET /api/customers?email=<a random address> answered an empty list: the email \
             filter works"
                .to_owned(),
        ),
        Ok(a) => line(
            name,
            CheckStatus::Fail,
            format!(
                "GET /api/customers?email=<a random address> answered {} customer(s): the email \
                 filter is ignored, so the service would open tickets for the wrong customer",
                a.items
            ),
        ),
    }
}

fn phone_search_line(answer: Result<ListAnswer, ProbeError>) -> CheckLine {
    let name = "phone-search";
    let what = "POST /api/search (customer_channel_phone, random digits)";
    match answer {
        Err(e) => line(
            name,
            CheckStatus::Fail,
            format!(
                "{}: the service could not find customers by phone",
                describe(&e)
            ),
        ),
        Ok(a) if a.shape == ListShape::Unreadable => line(
            name,
            CheckStatus::Fail,
            format!(
                "{what} answered neither {{data:[...]}} nor an array: the service would never \
                 find a customer by phone and would create one for every phone-only caller"
            ),
        ),
        Ok(a) if a.matching < a.items => line(
            name,
            CheckStatus::Warn,
            format!(
                "{what} answered {} item(s), {} of them not readable as a phone channel: \
                 customers may not be found by phone",
                a.items,
                a.items - a.matching
            ),
        ),
        Ok(a) => {
            let shape = if a.shape == ListShape::Envelope {
                "{data:[...]}"
            } else {
                "a bare array"
            };
            line(
                name,
                CheckStatus::Pass,
                format!(
                    "{what} answered {shape} with {} hit(s), a shape the client reads",
                    a.items
                ),
            )
        }
    }
}

fn external_id_filter_line(answer: Result<ListAnswer, ProbeError>) -> CheckLine {
    let name = "ticket-external-id-filter";
    let what = "GET /api/tickets?external_id=<a random id>";
    match answer {
        Err(e) => line(
            name,
            CheckStatus::Fail,
            format!(
                "{}: reconciliation (finding a ticket by external_id after a create of unknown \
                 outcome) would fail",
                describe(&e)
            ),
        ),
        Ok(a) if a.shape == ListShape::Unreadable => line(
            name,
            CheckStatus::Fail,
            format!(
                "{what} answered something other than a list: reconciliation could never find a \
                 ticket after an ambiguous failure, and retries could create duplicates"
            ),
        ),
        Ok(a) if a.items == 0 => line(
            name,
            CheckStatus::Pass,
            format!(
                "{what} answered no ticket: the filter works, so reconciliation can find a ticket \
                 whose create had an unknown outcome"
            ),
        ),
        Ok(a) if a.matching < a.items => line(
            name,
            CheckStatus::Fail,
            format!(
                "THE external_id FILTER IS IGNORED: {what} answered {} ticket(s) carrying another \
                 external_id. Reconciliation could never find a ticket after an ambiguous failure \
                 (timeout, 5xx, lost connection), so retried requests would create duplicate \
                 tickets. Do not serve from this account until this passes",
                a.items - a.matching
            ),
        ),
        Ok(a) => line(
            name,
            CheckStatus::Warn,
            format!(
                "{what} answered {} ticket(s) carrying that random id: the filter works, but \
                 something already uses ids of this form",
                a.items
            ),
        ),
    }
}

/// `gorgias-proxy connections rekey`: every secret sealed again under `CONNECTIONS_KEY`.
/// Prints what it did; returns the exit code (0 done, 1 failed, 2 unusable settings).
pub async fn rekey(config: &Config) -> i32 {
    let Some(key) = &config.connections_key else {
        eprintln!("Error: CONNECTIONS_KEY: is required to rekey (the key to seal with)");
        return 2;
    };
    let keys = match crate::secrets::Keyring::new(key, config.connections_key_previous.as_ref()) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("Error: CONNECTIONS_KEY: {e}");
            return 2;
        }
    };
    let Some(target) = &config.outbox else {
        eprintln!("Error: OUTBOX_URL: is off; there are no stored connections to rekey");
        return 2;
    };
    let store = match crate::store::Store::open(
        target,
        crate::store::OpenOptions {
            settle: config.ticketing.settle,
        },
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("Error: the database (DATA_DIR / OUTBOX_URL) cannot be used: {e}");
            return 1;
        }
    };
    match crate::connections::Connections::new(store)
        .rekey(&keys)
        .await
    {
        Ok((rewritten, current)) => {
            println!(
                "rekeyed {rewritten} connection(s) under key {}; {current} already were",
                keys.current_id()
            );
            0
        }
        Err(e) => {
            eprintln!("Error: {e}");
            1
        }
    }
}
