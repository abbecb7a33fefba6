//! `custody ui` in front of the real gateway: the embedded console is
//! served on loopback and its `/v1` calls reach the gateway with the CLI's
//! token; calls that are not the console's own (another Host, another
//! origin, no console header) are refused before any token is added.

mod support;

use std::process::Command;

use serde_json::Value;
use support::*;

fn gateway() -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("recordings");
    let text = config(&store, "").replace(
        "[identity]\n",
        "[identity]\nauditors = [\"group:security@example.com\"]\n",
    );
    Gateway::start_with(dir, &text, store)
}

/// `custody ui --no-browser` for `gw` as `token`'s owner: (process, base URL).
fn console(gw: &Gateway, token: &str) -> (Proc, String) {
    let mut cmd = Command::new(bin());
    cmd.args([
        "ui",
        "--listen",
        "127.0.0.1:0",
        "--no-browser",
        "--gateway",
        &gw.url,
    ])
    .env("CUSTODY_TOKEN", token);
    let (proc, rest) = Proc::spawn(cmd, "console at ");
    let url = rest
        .split_whitespace()
        .next()
        .unwrap()
        .trim_end_matches("/ui/")
        .to_string();
    (proc, url)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_local_console_forwards_only_its_own_calls() {
    let gw = gateway();
    let alice = token("alice@example.com");
    let (_ui, url) = console(
        &gw,
        &token_with("sam@example.com", &["security@example.com"]),
    );
    let http = reqwest::Client::new();

    let page = http.get(format!("{url}/ui/")).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.text().await.unwrap().contains("app.js"));

    let done = http
        .post(format!("{}/v1/exec/pg", gw.url))
        .bearer_auth(&alice)
        .json(&serde_json::json!({"input": "select 1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status().as_u16(), 200);

    let list = http
        .get(format!("{url}/v1/sessions?mode=exec"))
        .header("x-custody-console", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(list.status().as_u16(), 200);
    assert!(list.headers().contains_key("x-custody-audit-id"));
    let body: Value = list.json().await.unwrap();
    assert_eq!(
        body["all"], true,
        "the console's token is the auditor's: {body}"
    );

    for (what, req) in [
        ("no console header", http.get(format!("{url}/v1/sessions"))),
        (
            "another origin",
            http.get(format!("{url}/v1/sessions"))
                .header("x-custody-console", "1")
                .header("origin", "https://evil.example"),
        ),
        (
            "another host",
            http.get(format!("{url}/v1/sessions"))
                .header("x-custody-console", "1")
                .header("host", "evil.example"),
        ),
    ] {
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), 403, "{what}");
    }
}
