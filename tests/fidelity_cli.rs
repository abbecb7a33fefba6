//! Issue 13, items 9 and 10 with the real binary: SSH through
//! `custody connect --stdio` ends with a proper WebSocket close, SSH spans
//! say ssh (not postgresql), a direct principal is shown once, and
//! `custody sessions` says when its limit cut the list.

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use support::sshd::{audit_of, run, ssh_client, sshd};
use support::*;

const LIMIT: Duration = Duration::from_secs(60);

fn ssh_gateway(dir: tempfile::TempDir, env: &[(&str, &str)]) -> Gateway {
    let store = dir.path().join("recordings");
    let conns = sshd().connection("web-1", "");
    let text = config(&store, &format!("[ssh]\nlogin_timeout = \"3s\"\n{conns}"));
    Gateway::start_env(dir, &text, store, env)
}

/// The recording's session_end reason, once it is written (bounded wait).
fn end_reason(gw: &Gateway, audit: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let rec = gw.recording(audit);
        let end = rec
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["type"] == "session_end");
        if let Some(v) = end {
            return v["reason"].as_str().unwrap_or_default().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no session_end for {audit}: {rec}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn ssh_through_stdio_ends_with_a_websocket_close_not_a_reset() {
    let gw = ssh_gateway(tempfile::tempdir().unwrap(), &[]);
    let t = token("alice@example.com");
    for args in [&["web-1", "echo hi"][..], &["-tt", "web-1"][..]] {
        let mut cmd = ssh_client("ssh", &gw, &t);
        cmd.args(args);
        let stdin = (args[0] == "-tt").then_some("echo hi\nexit 0\n");
        let (code, out, err) = run(cmd, stdin, LIMIT);
        assert_eq!(code, 0, "stdout {out:?} stderr {err:?}");
        assert!(out.contains("hi"), "{out:?}");
        let reason = end_reason(&gw, &audit_of(&err));
        // Whichever end noticed first, a normal end, never a transport error.
        assert!(
            ["client closed the tunnel", "ssh session ended"].contains(&reason.as_str()),
            "{args:?}: {reason}"
        );
        assert!(!err.contains("session ended"), "{err}");
    }
}

/// A span as received: its name and attributes (values as text).
type Got = (String, HashMap<String, String>);

#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<Got>>>);

#[tonic::async_trait]
impl TraceService for Spans {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut out = self.0.lock().unwrap();
        let spans = req
            .into_inner()
            .resource_spans
            .into_iter()
            .flat_map(|rs| rs.scope_spans)
            .flat_map(|ss| ss.spans);
        for s in spans {
            let attrs = s.attributes.iter().map(|kv| {
                let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(Value::StringValue(s)) => s.clone(),
                    other => format!("{other:?}"),
                };
                (kv.key.clone(), v)
            });
            out.push((s.name, attrs.collect()));
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Spans {
    fn session(&self, audit: &str) -> HashMap<String, String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = self.0.lock().unwrap().iter().find_map(|(name, a)| {
                (name == "custody.session"
                    && a.get("custody.audit_id").map(String::as_str) == Some(audit))
                .then(|| a.clone())
            });
            if let Some(a) = found {
                return a;
            }
            assert!(Instant::now() < deadline, "no session span for {audit}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_session_spans_say_ssh_not_postgresql() {
    let got = Spans::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(got.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let gw = ssh_gateway(tempfile::tempdir().unwrap(), &env);
    let t = token("alice@example.com");
    let mut cmd = ssh_client("ssh", &gw, &t);
    cmd.args(["web-1", "true"]);
    let (code, _, err) = tokio::task::spawn_blocking(move || run(cmd, None, LIMIT))
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    let ssh = got.session(&audit_of(&err));
    assert_eq!(ssh["custody.connection"], "web-1");
    assert_eq!(
        ssh.get("network.protocol.name").map(String::as_str),
        Some("ssh")
    );
    assert!(!ssh.contains_key("db.system"), "{ssh:?}");

    // The harness's PostgreSQL connection still says postgresql.
    let gw_url = gw.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin())
            .args(["exec", "pg", "--gateway", &gw_url, "--", "select 1"])
            .env("CUSTODY_TOKEN", token("alice@example.com"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    let audit = stderr
        .split("audit id ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("exec prints the audit id");
    let pg = got.session(audit);
    assert_eq!(pg.get("db.system").map(String::as_str), Some("postgresql"));
    assert!(!pg.contains_key("network.protocol.name"), "{pg:?}");
}

#[test]
fn a_direct_principal_is_shown_once_in_reviews() {
    let held = format!(
        r#"
[[connections]]
name = "pg-held"
kind = "postgres"
host = "127.0.0.1"
port = {port}
database = "app"
user = "app"
password = "env:{PASSWORD_ENV}"
tls = "disable"
allow = ["user:alice@example.com"]

[connections.guardrails]
require_approval = ["delete"]
approvers = ["group:dba@example.com"]
"#,
        port = pg().port
    );
    let gw = Gateway::start(&held);
    let alice = token("alice@example.com");
    let bob = token_with("bob@example.com", &["dba@example.com"]);
    let (code, _, err) = custody_cli(
        &gw.url,
        &alice,
        &["exec", "pg-held", "--", "delete from nowhere_t"],
    );
    assert_eq!(code, 3, "held for approval: {err}");
    let id = err
        .split("custody review approve ")
        .nth(1)
        .and_then(|r| r.split(|c: char| c == '`' || c.is_whitespace()).next())
        .unwrap_or_else(|| panic!("no review id in: {err}"))
        .to_string();
    let me = "user:alice@example.com";
    let (code, out, err) = custody_cli(&gw.url, &bob, &["review", "list", "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let all: serde_json::Value = serde_json::from_str(&out).unwrap();
    let review = all
        .as_array()
        .and_then(|a| a.iter().find(|r| r["request"]["id"] == id.as_str()))
        .unwrap_or_else(|| panic!("{id} not listed: {out}"));
    assert_eq!(review["request"]["chain"], serde_json::json!([me]), "{out}");
    let (_, text, _) = custody_cli(&gw.url, &bob, &["review", "list"]);
    let line = text.lines().find(|l| l.contains(&id)).unwrap();
    assert!(line.contains(me) && !line.contains('→'), "{line}");
    // Refusing her own approval names her once too.
    let (code, _, err) = custody_cli(&gw.url, &alice, &["review", "approve", &id]);
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains(me) && !err.contains(&format!("{me} → {me}")),
        "{err}"
    );
}

/// A copy of recording `from` under `count` fresh audit ids.
fn clone_recording(store: &std::path::Path, from: &str, count: usize) {
    use custody::recording::store::record_dir;
    let src = store.join(record_dir(from));
    for _ in 0..count {
        let id = uuid::Uuid::now_v7().to_string();
        let dst = store.join(record_dir(&id));
        std::fs::create_dir_all(&dst).unwrap();
        for e in std::fs::read_dir(&src).unwrap().flatten() {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn sessions_say_on_stderr_when_the_limit_cuts_the_list() {
    let gw = Gateway::start("");
    let (code, _, err) = custody_cli(
        &gw.url,
        &token("alice@example.com"),
        &["exec", "pg", "--", "select 1"],
    );
    assert_eq!(code, 0, "{err}");
    let audit = err
        .split("audit id ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("exec prints the audit id")
        .to_string();
    let (ok, report) = {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (ok, report) = gw.verify(&audit);
            if ok || Instant::now() > deadline {
                break (ok, report);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert!(ok, "{report}");
    clone_recording(&gw.store, &audit, 149);
    let store = format!("file://{}", gw.store.display());
    let sessions = |args: &[&str]| {
        let out = Command::new(bin())
            .args(["sessions", "--store", &store])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success());
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The default limit is 100: the listing says how many it left out.
    let (out, err) = sessions(&[]);
    assert_eq!(out.lines().count(), 1 + 100, "header and 100 rows");
    assert!(
        err.contains("showing 100 of 150 sessions; use --limit to see more"),
        "{err}"
    );
    let (out, err) = sessions(&["--limit", "500"]);
    assert_eq!(out.lines().count(), 1 + 150);
    assert!(err.is_empty(), "nothing cut, nothing said: {err}");
    let (out, err) = sessions(&["--format", "json", "--limit", "150"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(150));
    assert!(err.is_empty(), "{err}");
    // Filtered: at least one more matches.
    let (out, err) = sessions(&["--connection", "pg", "--limit", "7"]);
    assert_eq!(out.lines().count(), 1 + 7);
    assert!(
        err.contains("newest 7 matching sessions; more match"),
        "{err}"
    );
    let (out, err) = sessions(&["--connection", "none", "--limit", "7"]);
    assert_eq!(out.lines().count(), 1);
    assert!(err.is_empty(), "{err}");
}
