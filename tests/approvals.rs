//! Just-in-time approvals with the real binary: a held statement gets a
//! review id (exit 3), approvers decide, the approval runs that statement
//! once for that requester; self-approval, non-approvers, denial, expiry,
//! reuse, N approvals and two approvers racing are all covered.

mod support;

use std::process::Command;

use support::*;

fn conn(name: &str, guardrails: &str) -> String {
    format!(
        r#"
[[connections]]
name = "{name}"
kind = "postgres"
host = "127.0.0.1"
port = {port}
database = "app"
user = "app"
password = "env:{PASSWORD_ENV}"
tls = "disable"
allow = ["group:sre@example.com", "user:alice@example.com"]

[connections.guardrails]
require_approval = ["delete"]
approvers = ["group:dba@example.com"]
{guardrails}
"#,
        port = pg().port
    )
}

fn gateway() -> Gateway {
    gateway_with("")
}

fn gateway_with(more: &str) -> Gateway {
    let extra = format!(
        "{}{}{}{more}",
        conn("pg-held", ""),
        conn("pg-two", "approvals_required = 2"),
        conn("pg-quick", "approval_expires = \"2s\""),
    );
    // The harness's `pg` connection comes first; ours follow it.
    Gateway::start(&extra)
}

fn cli(gw: &Gateway, token: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .env("CUSTODY_GATEWAY", &gw.url)
        .env("CUSTODY_TOKEN", token)
        .env_remove("CUSTODY_REVIEW")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn review_id(stderr: &str) -> String {
    stderr
        .split("custody review approve ")
        .nth(1)
        .and_then(|r| r.split(|c: char| c == '`' || c.is_whitespace()).next())
        .unwrap_or_else(|| panic!("no review id in: {stderr}"))
        .to_string()
}

fn held(gw: &Gateway, conn: &str, sql: &str) -> String {
    let (code, _, err) = cli(gw, &token("alice@example.com"), &["exec", conn, "--", sql]);
    assert_eq!(code, 3, "held for approval exits 3: {err}");
    review_id(&err)
}

#[test]
fn a_held_statement_runs_once_after_approval() {
    let gw = gateway();
    let alice = token("alice@example.com");
    let bob = token_with("bob@example.com", &["dba@example.com"]);
    let carol = token_with("carol@example.com", &["sre@example.com"]);
    let (code, _, err) = cli(
        &gw,
        &alice,
        &[
            "exec",
            "pg",
            "--",
            "create table if not exists held_t (id int); insert into held_t values (1), (2), (3)",
        ],
    );
    assert_eq!(code, 0, "{err}");

    let id = held(&gw, "pg-held", "delete from held_t where id = 1");
    // Nobody approves their own request; only approvers approve.
    let (code, _, err) = cli(&gw, &alice, &["review", "approve", &id]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("their own request"), "{err}");
    // A non-approver is told no more than for an id that does not exist.
    let (code, _, err) = cli(&gw, &carol, &["review", "approve", &id]);
    assert!(
        code == 2 && err.contains(&format!("no review {id}")),
        "{err}"
    );
    // The approver sees it pending, approves it.
    let (code, out, err) = cli(&gw, &bob, &["review", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&id) && out.contains("pending") && out.contains("delete from held_t"),
        "{out}"
    );
    let (code, _, err) = cli(
        &gw,
        &bob,
        &["review", "approve", &id, "--reason", "ticket 42"],
    );
    assert!(code == 0 && err.contains("is approved"), "{err}");

    // Bound to the statement: another one is refused under this review.
    let (code, _, err) = cli(
        &gw,
        &alice,
        &[
            "exec",
            "pg-held",
            "--review",
            &id,
            "--",
            "delete from held_t where id = 2",
        ],
    );
    assert!(code == 2 && err.contains("different statement"), "{err}");
    // The approved one runs, once.
    let (code, out, err) = cli(
        &gw,
        &alice,
        &[
            "exec",
            "pg-held",
            "--review",
            &id,
            "--",
            "delete from held_t where id = 1",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("DELETE 1"), "{out}");
    let (code, _, err) = cli(
        &gw,
        &alice,
        &[
            "exec",
            "pg-held",
            "--review",
            &id,
            "--",
            "delete from held_t where id = 1",
        ],
    );
    assert!(code == 2 && err.contains("has been used"), "{err}");

    // Denied.
    let id = held(&gw, "pg-held", "delete from held_t where id = 3");
    let (code, _, err) = cli(
        &gw,
        &bob,
        &[
            "review",
            "deny",
            &id,
            "--reason",
            "not during business hours",
        ],
    );
    assert!(code == 0 && err.contains("is denied"), "{err}");
    let (code, _, err) = cli(
        &gw,
        &alice,
        &[
            "exec",
            "pg-held",
            "--review",
            &id,
            "--",
            "delete from held_t where id = 3",
        ],
    );
    assert!(code == 2 && err.contains("it is denied"), "{err}");

    // --wait: held, then approved while the CLI waits, then run.
    let url = gw.url.clone();
    let waiting = std::thread::spawn(move || {
        Command::new(bin())
            .args([
                "exec",
                "pg-held",
                "--wait",
                "--gateway",
                &url,
                "--",
                "delete from held_t where id = 2",
            ])
            .env("CUSTODY_TOKEN", token("alice@example.com"))
            .output()
            .unwrap()
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let id = loop {
        let (_, out, _) = cli(&gw, &bob, &["review", "list", "--format", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        let pending = v.as_array().and_then(|a| {
            a.iter()
                .find(|r| {
                    r["state"] == "pending"
                        && r["request"]["statement"]
                            .as_str()
                            .unwrap_or_default()
                            .contains("id = 2")
                })
                .and_then(|r| r["request"]["id"].as_str().map(String::from))
        });
        if let Some(id) = pending {
            break id;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the waiting exec never created a review"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let (code, _, err) = cli(&gw, &bob, &["review", "approve", &id]);
    assert_eq!(code, 0, "{err}");
    let out = waiting.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("DELETE 1"));

    // The trail: the held request, the approval (tied to the held request) and the use.
    let rec = gw.wait_recordings("\"action\":\"used\"");
    assert!(
        rec.contains("\"action\":\"requested\"") && rec.contains("\"action\":\"approved\""),
        "{rec}"
    );
    assert!(rec.contains("\"review_audit_id\""), "{rec}");
}

#[test]
fn approvals_count_expire_and_race() {
    let gw = gateway();
    let bob = token_with("bob@example.com", &["dba@example.com"]);
    let dave = token_with("dave@example.com", &["dba@example.com"]);

    // Two approvals required.
    let id = held(&gw, "pg-two", "delete from nothing_here where id = 1");
    let (code, _, err) = cli(&gw, &bob, &["review", "approve", &id]);
    assert!(code == 0 && err.contains("is pending"), "{err}");
    let (code, _, err) = cli(&gw, &bob, &["review", "approve", &id]);
    assert!(code == 2 && err.contains("already approved"), "{err}");
    let (code, _, err) = cli(&gw, &dave, &["review", "approve", &id]);
    assert!(code == 0 && err.contains("is approved"), "{err}");

    // Unanswered reviews expire.
    let id = held(&gw, "pg-quick", "delete from nothing_here where id = 2");
    std::thread::sleep(std::time::Duration::from_millis(3100));
    let (code, _, err) = cli(&gw, &bob, &["review", "approve", &id]);
    assert!(code == 2 && err.contains("expired"), "{err}");

    // An approval not used in time expires too.
    let stmt = "delete from nothing_here where id = 4";
    let id = held(&gw, "pg-quick", stmt);
    let (code, _, err) = cli(&gw, &bob, &["review", "approve", &id]);
    assert_eq!(code, 0, "{err}");
    std::thread::sleep(std::time::Duration::from_millis(3100));
    let (code, _, err) = cli(
        &gw,
        &token("alice@example.com"),
        &["exec", "pg-quick", "--review", &id, "--", stmt],
    );
    assert!(code == 2 && err.contains("it is expired"), "{err}");

    // Two approvers racing on one review: exactly one decides.
    for _ in 0..3 {
        let id = held(&gw, "pg-held", "delete from nothing_here where id = 3");
        let racers: Vec<_> = [bob.clone(), dave.clone()]
            .into_iter()
            .map(|t| {
                let (url, id) = (gw.url.clone(), id.clone());
                std::thread::spawn(move || {
                    Command::new(bin())
                        .args(["review", "approve", &id, "--gateway", &url])
                        .env("CUSTODY_TOKEN", t)
                        .output()
                        .unwrap()
                })
            })
            .collect();
        let outcomes: Vec<_> = racers.into_iter().map(|r| r.join().unwrap()).collect();
        let wins = outcomes.iter().filter(|o| o.status.success()).count();
        let msgs: Vec<String> = outcomes
            .iter()
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .collect();
        assert_eq!(wins, 1, "exactly one approver decides: {msgs:#?}");
        assert!(
            msgs.iter()
                .any(|m| m.contains("already approved") || m.contains("already")),
            "{msgs:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn psql_gets_a_review_id_and_runs_the_statement_after_approval() {
    let gw = gateway();
    let bob = token_with("bob@example.com", &["dba@example.com"]);
    let (code, _, err) = cli(
        &gw,
        &token("alice@example.com"),
        &[
            "exec",
            "pg",
            "--",
            "create table if not exists wire_t (id int); insert into wire_t values (7)",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let (_cli, addr) = gw.connect("pg-held", &token("alice@example.com"));
    let (ok, out, err) = psql(addr, &["-c", "delete from wire_t where id = 7"], None);
    assert!(!ok, "{out}");
    assert!(err.contains("requires approval"), "{err}");
    let id = review_id(&err);
    let (code, _, err2) = cli(&gw, &bob, &["review", "approve", &id]);
    assert_eq!(code, 0, "{err2}");

    // Reconnect with CUSTODY_REVIEW: the approved statement runs, once.
    let mut cmd = Command::new(bin());
    cmd.args([
        "connect",
        "pg-held",
        "--listen",
        "127.0.0.1:0",
        "--gateway",
        &gw.url,
    ])
    .env("CUSTODY_TOKEN", token("alice@example.com"))
    .env("CUSTODY_REVIEW", &id);
    let (_approved, rest) = Proc::spawn(cmd, "listening on ");
    let addr: std::net::SocketAddr = rest.split_whitespace().next().unwrap().parse().unwrap();
    let (ok, out, err) = psql(addr, &["-c", "delete from wire_t where id = 7"], None);
    assert!(ok, "{out}{err}");
    assert!(out.contains("DELETE 1"), "{out}");
    // A second tunnel under the same single-use review is refused.
    let (ok, _, err) = psql(addr, &["-c", "select 1"], None);
    assert!(!ok && err.contains("has been used"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_webhook_announces_reviews_and_decisions() {
    use std::sync::{Arc, Mutex};
    let got: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<serde_json::Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(v);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let gw = gateway_with(&format!("\n[approvals]\nwebhook = \"{hook}\"\n"));
    let id = held(&gw, "pg-held", "delete from nothing_here where id = 9");
    let (code, _, err) = cli(
        &gw,
        &token_with("bob@example.com", &["dba@example.com"]),
        &["review", "approve", &id, "--reason", "ok"],
    );
    assert_eq!(code, 0, "{err}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let events: Vec<String> = got
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["review_id"] == id.as_str())
            .map(|v| v["event"].as_str().unwrap_or_default().to_string())
            .collect();
        if events.contains(&"requested".to_string()) && events.contains(&"approved".to_string()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "webhook saw {events:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let approved = got
        .lock()
        .unwrap()
        .iter()
        .find(|v| v["event"] == "approved")
        .cloned()
        .unwrap();
    assert_eq!(approved["by"], "user:bob@example.com");
    assert_eq!(approved["connection"], "pg-held");
}
