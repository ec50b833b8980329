//! The two programs as a user starts them.

use std::process::Command;

use crate::helpers::start;

use serde_json::Value;

fn empty_dir() -> std::path::PathBuf {
    // A directory without a `.env`, so a developer's local settings cannot leak into the test.
    let dir = std::env::temp_dir().join(format!("gorgias-proxy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn the_sandbox_binary_answers_the_example_with_201() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gorgias-proxy"));
    cmd.args(["--sandbox", "--listen", "127.0.0.1:0"])
        .env("LOG_FORMAT", "json")
        .env_remove("RUST_LOG")
        .current_dir(empty_dir());
    let (_proc, addr) = start(cmd, |line| {
        let v: Value = serde_json::from_str(line).ok()?;
        (v["fields"]["message"] == "gorgias-proxy listening")
            .then(|| v["fields"]["addr"].as_str().map(str::to_owned))?
    });
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/ticket"))
        .header("content-type", "application/json")
        .body(crate::helpers::EXAMPLE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    assert!(crate::model::problems(&body).is_empty());
}

#[tokio::test]
async fn the_simulator_binary_announces_its_address_and_checks_credentials() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gorgias-sim"));
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--username",
        "u@example.com",
        "--api-key",
        "k",
    ]);
    let (_proc, url) = start(cmd, |line| {
        line.strip_prefix("listening on ").map(str::to_owned)
    });
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
fn without_gorgias_settings_the_service_refuses_to_start_naming_each_one() {
    let out = Command::new(env!("CARGO_BIN_EXE_gorgias-proxy"))
        .env_clear()
        .current_dir(empty_dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines,
        [
            "Error: missing settings: GORGIAS_DOMAIN (or GORGIAS_BASE_URL), GORGIAS_USERNAME, GORGIAS_API_KEY (or GORGIAS_ACCESS_TOKEN)"
        ],
        "one line naming each missing variable"
    );
}
