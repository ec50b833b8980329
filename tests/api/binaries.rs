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
