//! Test harness: the real router served on 127.0.0.1:0 against a per-test Gorgias simulator
//! (or a wiremock server for one scripted exchange).

use std::net::SocketAddr;
use std::time::Duration;

use gorgias::{Auth, RetryPolicy};
use gorgias_proxy::app::Application;
use gorgias_proxy::config::Config;
use gorgias_sim::{SimConfig, Simulator, Stats};
use secrecy::SecretString;
use serde_json::Value;
use url::Url;

pub const EXAMPLE: &str = include_str!("../fixtures/ticket-request.example.json");

pub fn example() -> Value {
    serde_json::from_str(EXAMPLE).unwrap()
}

/// A running service and the simulator behind it.
pub struct TestApp {
    pub address: String,
    pub http: reqwest::Client,
    pub sim: Simulator,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Simulator defaults for tests: the sandbox credentials, no rate limit.
pub fn sim_config() -> SimConfig {
    SimConfig {
        rate_limit: None,
        ..SimConfig::default()
    }
}

/// A config for `base_url` with fast retries and short timeouts, so failure tests stay quick.
pub fn test_config(base_url: Url) -> Config {
    let mut c = Config::with_gorgias(
        base_url,
        Auth::Basic {
            username: "sandbox@example.com".into(),
            api_key: SecretString::from("sandbox-key"),
        },
    );
    c.gorgias.attempt_timeout = Duration::from_secs(2);
    c.gorgias.retry = RetryPolicy {
        max_retries: 3,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        max_retry_after: Duration::from_secs(5),
    };
    c.gorgias.rate_limit = None;
    c.request_deadline = Duration::from_secs(8);
    // The simulator's ticket list does not lag its writes unless a test says so: a short
    // settle window keeps the tests that lose creates quick (the lag tests size their own).
    c.ticketing.settle = Duration::from_millis(200);
    c.allow_unauthenticated = true;
    c.outbox = Some(gorgias_proxy::outbox::OutboxTarget::Sqlite(
        temp_data_dir().join("outbox.db"),
    ));
    c
}

/// A port nothing listens on and nothing else can take: a socket bound to it, never listening.
/// Connecting is refused at once, as with a host that is down. Dropping the socket frees the
/// port for a server that then comes up there.
///
/// Binding a listener to port 0 and dropping it is not enough: while the port sits free, the
/// OS may give it to another test's server, and "Gorgias" then answers with that server's 404.
pub fn closed_port() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

/// A fresh directory for one service's data (its outbox), under the system's temp dir.
pub fn temp_data_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(unique("gorgias-proxy-data"))
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(sim_config(), |_| {}).await
}

pub async fn spawn_app_with(sim: SimConfig, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let sim = Simulator::spawn(sim, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let mut config = test_config(sim.url());
    tweak(&mut config);
    let (address, stop) = serve(config).await;
    TestApp {
        address,
        http: reqwest::Client::new(),
        sim,
        _stop: stop,
    }
}

/// Serves `config` in the background; returns its base address and a stop handle.
pub async fn serve(config: Config) -> (String, tokio::sync::oneshot::Sender<()>) {
    let app = Application::build(config).await.unwrap();
    let address = format!("http://{}", app.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    (address, stop)
}

impl TestApp {
    pub async fn post_ticket(&self, body: &Value) -> reqwest::Response {
        post_ticket(&self.http, &self.address, body).await
    }

    pub async fn post_raw(
        &self,
        body: impl Into<reqwest::Body>,
        content_type: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .post(format!("{}/ticket", self.address))
            .body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        req.send().await.unwrap()
    }

    pub fn stats(&self) -> Stats {
        self.sim.stats()
    }
}

pub async fn post_ticket(http: &reqwest::Client, address: &str, body: &Value) -> reqwest::Response {
    http.post(format!("{address}/ticket"))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Gorgias calls made between two stats snapshots.
pub fn calls_between(before: &Stats, after: &Stats) -> u64 {
    after.requests_total - before.requests_total
}

/// A body for `phone` (and `email`), one message with a unique id.
pub fn ticket_for(phone: &str, email: Option<&str>) -> Value {
    let mut customer = serde_json::json!({ "phone_number": phone });
    if let Some(e) = email {
        customer["email"] = e.into();
    }
    serde_json::json!({
        "customer": customer,
        "ticket": {"messages": [{"id": "m1", "body_text": "hello", "body_html": "<p>hello</p>",
                                  "attachments": []}]}
    })
}

/// Waits until the service has fetched the account settings at start-up, so call counts in a
/// test measure the ticket alone. Polls the simulator's counters (no fixed sleep).
pub async fn settings_warmed(sim: &Simulator) {
    for _ in 0..500 {
        if sim
            .stats()
            .requests
            .get("GET /api/account/settings")
            .copied()
            .unwrap_or(0)
            > 0
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the service never fetched the account settings");
}

/// A fresh, empty PostgreSQL schema to test against, as an `OUTBOX_URL`: `POSTGRES_URL` with
/// its `search_path` set to a new schema. Unset, the test skips with a note, except in CI
/// (`CI` set), where it must run.
pub async fn postgres_outbox_url() -> Option<String> {
    let base = match std::env::var("POSTGRES_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ if std::env::var_os("CI").is_some() => {
            panic!("CI is set but POSTGRES_URL is not: .ci/run must start PostgreSQL")
        }
        _ => {
            eprintln!(
                "skipped: POSTGRES_URL is not set (start PostgreSQL and set it to run this test)"
            );
            return None;
        }
    };
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let (client, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(format!("{base}{sep}options=-csearch_path%3D{schema}"))
}

/// The Redis to test against: `REDIS_URL`. Unset, Redis tests skip with a note, except in CI
/// (`CI` set), where they must run: a Redis test never silently skips there.
pub fn redis_url() -> Option<String> {
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!("CI is set but REDIS_URL is not: .ci/run must start redis-server")
        }
        _ => {
            eprintln!(
                "skipped: REDIS_URL is not set (start redis-server and set it to run this test)"
            );
            None
        }
    }
}

/// Polls `cond` on the simulator's counters until it holds (no fixed sleeps), or panics.
pub async fn until_stats(sim: &Simulator, what: &str, cond: impl Fn(&Stats) -> bool) {
    for _ in 0..2_000 {
        if cond(&sim.stats()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// A unique string per call, for keys and emails that must not collide across tests.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4())
}

/// Kills the child when the test ends, pass or fail.
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines a program printed (stdout and stderr), collected while it runs.
pub type Captured = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// Runs `cmd`, reading stdout lines until `find` extracts an address from one.
pub fn start(
    cmd: std::process::Command,
    find: impl Fn(&str) -> Option<String>,
) -> (Running, String) {
    let (running, addr, _) = start_capturing(cmd, find);
    (running, addr)
}

/// Like [`start`], and keeps every line the program prints on stdout and stderr (the readers
/// keep draining, so the program never writes into a closed pipe).
pub fn start_capturing(
    mut cmd: std::process::Command,
    find: impl Fn(&str) -> Option<String>,
) -> (Running, String, Captured) {
    let captured: Captured = Default::default();
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let running = Running(child);
    let keep = |captured: Captured, reader: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            for line in
                std::io::BufRead::lines(std::io::BufReader::new(reader)).map_while(Result::ok)
            {
                captured.lock().unwrap().push(line);
            }
        })
    };
    keep(captured.clone(), Box::new(stderr));
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    while let Some(Ok(line)) = lines.next() {
        captured.lock().unwrap().push(line.clone());
        if let Some(addr) = find(&line) {
            let rest = captured.clone();
            std::thread::spawn(move || {
                for line in lines.map_while(Result::ok) {
                    rest.lock().unwrap().push(line);
                }
            });
            return (running, addr, captured);
        }
    }
    panic!("the program exited without announcing its address");
}

/// A simulator on its own thread and runtime, as if it were another process; stops when dropped.
pub struct SimThread(#[allow(dead_code)] tokio::sync::oneshot::Sender<()>);

/// Starts a simulator with the program's flags (`args`) on a free port, on its own runtime so
/// the test's runtime cannot starve it; returns it and its base URL.
pub fn start_sim(args: &[&str]) -> (SimThread, String) {
    let flags = std::iter::once("gorgias-sim").chain(args.iter().copied());
    let config = gorgias_sim::cli::Args::from_flags(flags)
        .unwrap()
        .config()
        .unwrap();
    let (url_tx, url_rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let sim = Simulator::spawn(config, SocketAddr::from(([127, 0, 0, 1], 0)))
                .await
                .unwrap();
            url_tx.send(format!("http://{}", sim.addr())).unwrap();
            let _ = stopped.await;
        });
    });
    (SimThread(stop), url_rx.recv().unwrap())
}

/// Starts `gorgias-proxy` against `sim_url` with extra `env`; returns it and its address.
pub fn start_proxy(sim_url: &str, env: &[(&str, &str)]) -> (Running, String) {
    let (running, addr, _) = start_proxy_capturing(sim_url, env);
    (running, addr)
}

/// Like [`start_proxy`], keeping its log lines.
pub fn start_proxy_capturing(sim_url: &str, env: &[(&str, &str)]) -> (Running, String, Captured) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_gorgias-proxy"));
    cmd.args(["--listen", "127.0.0.1:0"])
        .env("GORGIAS_BASE_URL", sim_url)
        .env("GORGIAS_USERNAME", "sandbox@example.com")
        .env("GORGIAS_API_KEY", "sandbox-key")
        .env("LOG_FORMAT", "json")
        .env("ALLOW_UNAUTHENTICATED", "true")
        .env("DATA_DIR", temp_data_dir())
        .env_remove("RUST_LOG")
        .env_remove("API_TOKENS")
        .env_remove("REDIS_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    start_capturing(cmd, |line| {
        let v: Value = serde_json::from_str(line).ok()?;
        (v["fields"]["message"] == "gorgias-proxy listening")
            .then(|| v["fields"]["addr"].as_str().map(|a| format!("http://{a}")))?
    })
}

/// A simulator's counters over HTTP (for simulators running as programs).
pub async fn sim_stats(http: &reqwest::Client, sim_url: &str) -> Stats {
    get_json(http, &format!("{sim_url}/_sim/stats")).await
}

/// `GET url`, its body read as JSON.
pub async fn get_json<T: serde::de::DeserializeOwned>(http: &reqwest::Client, url: &str) -> T {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

/// Sends SIGTERM to a child process.
pub fn sigterm(child: &std::process::Child) {
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
}
