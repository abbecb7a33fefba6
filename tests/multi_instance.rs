//! Many instances, as Cloud Run runs them: two `custody serve` processes on
//! one GCS emulator bucket, behind a small round-robin TCP balancer, so a
//! client's requests land on either. What a client can touch from two
//! connections (reviews, revocations) must agree whichever instance it hits.

mod support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

/// Round robin over `backends`, one TCP connection at a time.
fn balancer(backends: Vec<SocketAddr>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let to = backends[next.fetch_add(1, Ordering::Relaxed) % backends.len()];
            std::thread::spawn(move || {
                let Ok(up) = TcpStream::connect(to) else {
                    return;
                };
                let (mut c2, mut u2) = (client.try_clone().unwrap(), up.try_clone().unwrap());
                let (mut c1, mut u1) = (client, up);
                let a = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c1, &mut u1);
                    let _ = u1.shutdown(std::net::Shutdown::Write);
                });
                let _ = std::io::copy(&mut u2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Write);
                let _ = a.join();
            });
        }
    });
    addr
}

fn held_conn(name: &str, more: &str) -> String {
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
{more}
"#,
        port = pg().port
    )
}

struct Cluster {
    _a: Gateway,
    _b: Gateway,
    url: String,
    bucket: String,
}

fn cluster() -> Cluster {
    let endpoint = gcs();
    let bucket = gcs_bucket(endpoint);
    let extra = format!(
        "{}{}",
        held_conn("pg-held", ""),
        held_conn("pg-two", "approvals_required = 2")
    );
    let start = || {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("unused");
        let text = config(&store, &extra)
            .replace(
                &format!("store = \"file://{}\"", store.display()),
                &format!("store = \"gs://{bucket}/custody\"\nendpoint = \"{endpoint}\""),
            )
            .replace(
                "[identity]\n",
                "[identity]\nadmins = [\"user:sec@example.com\"]\n",
            );
        Gateway::start_with(dir, &text, store)
    };
    let (a, b) = (start(), start());
    let lb = balancer(vec![a.addr, b.addr]);
    Cluster {
        _a: a,
        _b: b,
        url: format!("http://{lb}"),
        bucket,
    }
}

fn held(url: &str, conn: &str, sql: &str) -> String {
    let (code, _, err) = custody_cli(url, &token("alice@example.com"), &["exec", conn, "--", sql]);
    assert_eq!(code, 3, "held for approval exits 3: {err}");
    err.split("custody review approve ")
        .nth(1)
        .and_then(|r| r.split(|c: char| c == '`' || c.is_whitespace()).next())
        .unwrap_or_else(|| panic!("no review id in: {err}"))
        .to_string()
}

/// Two approvers at once, each (through the balancer) on its own instance.
fn race(url: &str, id: &str) -> Vec<(String, i32, String)> {
    let racers: Vec<_> = ["bob", "dave"]
        .into_iter()
        .map(|who| {
            let (url, id) = (url.to_string(), id.to_string());
            std::thread::spawn(move || {
                let t = token_with(&format!("{who}@example.com"), &["dba@example.com"]);
                let (code, _, err) = custody_cli(&url, &t, &["review", "approve", &id]);
                (format!("user:{who}@example.com"), code, err)
            })
        })
        .collect();
    racers.into_iter().map(|r| r.join().unwrap()).collect()
}

fn decision_by(url: &str, id: &str) -> Vec<String> {
    let bob = token_with("bob@example.com", &["dba@example.com"]);
    let (code, out, err) = custody_cli(url, &bob, &["review", "show", id]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let mut by: Vec<String> = v["decision"]["by"]
        .as_array()
        .unwrap_or_else(|| panic!("no decision: {v}"))
        .iter()
        .map(|b| b.as_str().unwrap().to_string())
        .collect();
    by.sort();
    by
}

#[test]
fn approvers_racing_on_two_instances_get_answers_the_store_agrees_with() {
    let c = cluster();
    for round in 0..3 {
        // One approval required: one wins, the other is told it was decided,
        // and the decision names the winner only.
        let id = held(
            &c.url,
            "pg-held",
            &format!("delete from nothing_here where id = {round}"),
        );
        let outcomes = race(&c.url, &id);
        let winners: Vec<&String> = outcomes.iter().filter(|o| o.1 == 0).map(|o| &o.0).collect();
        assert_eq!(
            winners.len(),
            1,
            "exactly one approver decides: {outcomes:#?}"
        );
        let loser = outcomes.iter().find(|o| o.1 != 0).unwrap();
        assert!(loser.2.contains("already"), "{outcomes:#?}");
        assert_eq!(
            decision_by(&c.url, &id),
            vec![winners[0].clone()],
            "{outcomes:#?}"
        );

        // Two required: both votes are stored and needed, so neither
        // approver is refused (the first may still see it pending), the
        // last sees it approved, and the decision names both.
        let id = held(
            &c.url,
            "pg-two",
            &format!("delete from nothing_here where id = {round}"),
        );
        let outcomes = race(&c.url, &id);
        assert!(
            outcomes.iter().all(|o| o.1 == 0),
            "every recorded vote gets 200: {outcomes:#?}"
        );
        assert!(
            outcomes.iter().any(|o| o.2.contains("is approved")),
            "{outcomes:#?}"
        );
        assert_eq!(
            decision_by(&c.url, &id),
            vec![
                "user:bob@example.com".to_string(),
                "user:dave@example.com".to_string()
            ]
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_through_either_instance_ends_tunnels_on_both() {
    let c = cluster();
    // Tunnels opened through the balancer land on both instances.
    let mut tunnels = Vec::new();
    for _ in 0..2 {
        let mut cmd = Command::new(bin());
        cmd.args([
            "connect",
            "pg",
            "--listen",
            "127.0.0.1:0",
            "--gateway",
            &c.url,
        ]);
        cmd.env("CUSTODY_TOKEN", token("alice@example.com"));
        let (proc, rest) = Proc::spawn(cmd, "listening on ");
        let addr: SocketAddr = rest.split_whitespace().next().unwrap().parse().unwrap();
        let client = pg_client(addr).await;
        client.simple_query("select 1").await.unwrap();
        tunnels.push((proc, client));
    }
    let (code, out, err) = custody_cli(
        &c.url,
        &token("sec@example.com"),
        &[
            "revoke",
            "--principal",
            "user:alice@example.com",
            "--reason",
            "multi-instance test",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let revoked = Instant::now();
    for (_proc, client) in &tunnels {
        let deadline = Instant::now() + Duration::from_secs(15);
        let err = loop {
            match client.simple_query("select 1").await {
                Err(e) => break e,
                Ok(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Ok(_) => panic!("a tunnel still runs queries 15 s after the revocation"),
            }
        };
        let text = err
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or(err.to_string());
        assert!(
            text.contains("revoked") || err.is_closed(),
            "told why: {text}"
        );
    }
    eprintln!(
        "both tunnels ended within {:?} of the revocation",
        revoked.elapsed()
    );
}

/// A CancelRequest comes on a connection of its own, which the balancer
/// puts on the next instance: of two cancels in a row, one lands on the
/// instance that does not hold the session, and both must work.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_reaches_its_query_whichever_instance_it_lands_on() {
    let c = cluster();
    let mut cmd = Command::new(bin());
    cmd.args([
        "connect",
        "pg",
        "--listen",
        "127.0.0.1:0",
        "--gateway",
        &c.url,
    ]);
    cmd.env("CUSTODY_TOKEN", token("alice@example.com"));
    let (_proc, rest) = Proc::spawn(cmd, "listening on ");
    let addr: SocketAddr = rest.split_whitespace().next().unwrap().parse().unwrap();
    let client = pg_client(addr).await;
    for round in 0..2 {
        let cancel = client.cancel_token();
        let canceller = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            cancel.cancel_query(tokio_postgres::NoTls).await
        });
        let started = Instant::now();
        let err = client
            .simple_query("select pg_sleep(30)")
            .await
            .expect_err("cancelled");
        assert_eq!(
            err.code().map(|c| c.code()),
            Some("57014"),
            "round {round}: {err}"
        );
        canceller.await.unwrap().unwrap();
        assert!(started.elapsed() < Duration::from_secs(20), "round {round}");
    }
    let one: i32 = client.query_one("select 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1, "the session goes on");
}

/// A legacy MCP client (an `initialize` handshake, then a session id) whose
/// requests each open a new connection, so the balancer spreads them: the
/// instance that did not see `initialize` restores the session from the
/// store, and the recording still names the agent.
#[test]
fn a_legacy_mcp_session_survives_landing_on_the_other_instance() {
    let c = cluster();
    let args = r#"{"connection": "pg", "sql": "select 7 as n"}"#;
    let out = Command::new("python3")
        .args(["tests/mcp/agent.py", "http", &format!("{}/mcp", c.url)])
        .args([
            "--mode",
            "legacy",
            "--name",
            "roaming-agent",
            "--no-keepalive",
        ])
        .args(["call", "query", args])
        .env("MCP_TOKEN", token("alice@example.com"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["structured"]["rows"][0][0], "7", "{v}");
    let audit = v["structured"]["audit_id"].as_str().unwrap().to_string();
    let host = gcs().trim_start_matches("http://");
    let out = Command::new(bin())
        .args([
            "replay",
            &audit,
            "--store",
            &format!("gs://{}/custody", c.bucket),
        ])
        .env("STORAGE_EMULATOR_HOST", host)
        .output()
        .unwrap();
    let replay = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{replay}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        replay.contains("mcp tool query called by roaming-agent 1.2.3"),
        "{replay}"
    );
}
