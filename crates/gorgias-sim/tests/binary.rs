//! The `gorgias-sim` program as scripts and compose run it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// Kills the program when the test ends, pass or fail.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_simulator_binary_announces_its_address_and_checks_credentials() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gorgias-sim"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--username",
            "u@example.com",
            "--api-key",
            "k",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _running = Running(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();

    let http = reqwest::Client::new();
    let denied = http
        .get(format!("{url}/api/account/settings"))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 401);
    let body: Value = denied.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"error": {"msg": "Unauthorized."}}));
    let ok = http
        .get(format!("{url}/api/account/settings"))
        .basic_auth("u@example.com", Some("k"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["x-gorgias-account-api-call-limit"], "1/40");
    let stats: Value = http
        .get(format!("{url}/_sim/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["requests_total"], 2);
    assert_eq!(stats["requests"]["GET /api/account/settings"], 2);
}

#[test]
fn bad_flags_are_refused_with_the_reason() {
    let err = gorgias_sim::cli::Args::from_flags(["gorgias-sim", "--rate-limit", "fast"])
        .unwrap()
        .config()
        .unwrap_err();
    assert!(err.contains("40/20s"), "{err}");
}
