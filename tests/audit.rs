//! The audit trail end to end: a real session's recording verifies with
//! `custody verify`, tampering and a SIGKILL are named, and the gateway's
//! signing key is the one that signed.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

fn opened_audit_id(cli: &Proc) -> String {
    cli.wait_log("opened")
        .split("session ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("custody connect prints the session's audit id")
        .to_string()
}

fn wait_for(path: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_verifies_and_tampering_is_named() {
    let gw = Gateway::start("");
    let (cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let (ok, out, err) = psql(addr, &["-c", "select 'audited' as word"], None);
    assert!(ok, "{out}{err}");
    let audit = opened_audit_id(&cli);
    let dir = gw.store.join(custody::recording::store::record_dir(&audit));
    wait_for(&dir.join("manifest.json"));

    let (ok, report) = gw.verify(&audit);
    assert!(ok, "{report}");
    assert!(
        report.contains("VERIFIED") && report.contains("the key you gave"),
        "{report}"
    );
    let replay = Command::new(bin())
        .args(["replay", &audit, "--store"])
        .arg(format!("file://{}", gw.store.display()))
        .output()
        .unwrap();
    let replay = String::from_utf8_lossy(&replay.stdout);
    assert!(replay.contains("select 'audited' as word"), "{replay}");

    // Someone with write access to the bucket edits a statement.
    let seg = dir.join("000002.jsonl");
    let text = std::fs::read_to_string(&seg).unwrap();
    std::fs::write(&seg, text.replace("audited", "innocent")).unwrap();
    let (ok, report) = gw.verify(&audit);
    assert!(!ok, "{report}");
    assert!(report.contains("FAILED"), "{report}");
    assert!(
        report.contains("segment 000002 was altered after sealing"),
        "{report}"
    );

    // A recording that does not exist is a failure, not a crash.
    let (ok, report) = gw.verify("019ad4d2-6f4e-7c3a-9a6b-000000000000");
    assert!(!ok && report.contains("no recording"), "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_loses_at_most_the_flush_window() {
    let mut gw = Gateway::start("");
    let (cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let c = pg_client(addr).await;
    c.simple_query("select 'before the kill'").await.unwrap();
    let audit = opened_audit_id(&cli);
    // flush_interval is 1s in the test config: wait past it, then kill -9.
    std::thread::sleep(Duration::from_millis(2500));
    gw.proc.child.kill().unwrap();
    gw.proc.child.wait().unwrap();

    let rec = gw.recording(&audit);
    assert!(
        rec.contains("before the kill"),
        "flushed before the kill: {rec}"
    );
    let (ok, report) = gw.verify(&audit);
    assert!(!ok, "{report}");
    assert!(report.contains("never sealed"), "{report}");
    assert!(
        !report.contains("altered"),
        "what was written is intact: {report}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn statements_reach_postgres_with_the_trace_and_audit_id() {
    let gw = Gateway::start("");
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let sql = "select query, application_name from pg_stat_activity where pid = pg_backend_pid()";
    let out = Command::new(bin())
        .args([
            "exec",
            "pg",
            "--gateway",
            &gw.url,
            "--format",
            "json",
            "--",
            sql,
        ])
        .env("CUSTODY_TOKEN", token("alice@example.com"))
        .env("TRACEPARENT", tp)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let audit = v["audit_id"].as_str().unwrap().to_string();
    let row = &v["rows"][0];
    let seen = row[0]
        .as_str()
        .or(row["query"].as_str())
        .unwrap_or_default()
        .to_string();
    assert!(
        seen.ends_with(&format!(
            "/*traceparent='{tp}',custody_audit_id='{audit}'*/"
        )),
        "PostgreSQL saw: {seen}"
    );
    let app = row[1]
        .as_str()
        .or(row["application_name"].as_str())
        .unwrap_or_default();
    assert_eq!(app, format!("custody/{audit}"));
    // The recording keeps the client's statement as sent.
    assert!(!gw.wait_recordings(&audit).contains("custody_audit_id='"));

    // Through a tunnel, extended protocol (tokio-postgres prepares), no caller trace.
    let (cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let c = pg_client(addr).await;
    let row = c.query_one(sql, &[]).await.unwrap();
    let seen: String = row.get(0);
    let audit = opened_audit_id(&cli);
    assert!(
        seen.ends_with(&format!("/*custody_audit_id='{audit}'*/")),
        "{seen}"
    );
    // A statement that ends with its own comment is left alone.
    let row = c
        .query_one(&format!("{sql} /* mine */"), &[])
        .await
        .unwrap();
    let seen: String = row.get(0);
    assert!(seen.ends_with("/* mine */"), "{seen}");
}

#[test]
fn sessions_are_listed_and_filtered_from_the_store() {
    let gw = Gateway::start("");
    let run = |email: &str| {
        Command::new(bin())
            .args(["exec", "pg", "--gateway", &gw.url, "--", "select 1"])
            .env("CUSTODY_TOKEN", token(email))
            .output()
            .unwrap()
    };
    assert!(run("alice@example.com").status.success());
    assert!(
        !run("mallory@example.com").status.success(),
        "not in the allow list"
    );
    let store = format!("file://{}", gw.store.display());
    let list = |extra: &[&str]| -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = Command::new(bin())
                .args(["sessions", "--store", &store, "--format", "json"])
                .args(extra)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let sealed = v.as_array().unwrap().iter().all(|s| s["sealed"] == true);
            if (sealed && !v.as_array().unwrap().is_empty()) || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let all = list(&["--since", "1h"]);
    assert_eq!(all.as_array().unwrap().len(), 2, "{all:#}");
    let alice = list(&["--principal", "user:alice@example.com"]);
    let a = &alice.as_array().unwrap()[0];
    assert_eq!(alice.as_array().unwrap().len(), 1, "{alice:#}");
    assert_eq!(a["connection"], "pg");
    assert_eq!(a["mode"], "exec");
    assert_eq!(a["statements"], 1);
    assert_eq!(a["outcome"], "completed");
    let refused = list(&["--principal", "user:mallory@example.com"]);
    assert_eq!(refused[0]["mode"], "refused", "{refused:#}");

    // The text table and replay's JSON form.
    let out = Command::new(bin())
        .args(["sessions", "--store", &store, "--connection", "pg"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("AUDIT ID") && text.contains("user:alice@example.com"),
        "{text}"
    );
    let id = a["audit_id"].as_str().unwrap();
    let out = Command::new(bin())
        .args(["replay", id, "--store", &store, "--format", "json"])
        .output()
        .unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.first().unwrap()["type"], "session_start");
    assert_eq!(lines.last().unwrap()["type"], "session_end");
}
