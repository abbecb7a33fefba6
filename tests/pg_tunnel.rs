//! tokio-postgres through `custody connect` → gateway → real PostgreSQL.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::*;

fn setup() -> Gateway {
    Gateway::start("")
}

#[tokio::test(flavor = "multi_thread")]
async fn simple_extended_prepared_and_transactions() {
    let gw = setup();
    let (cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let c = pg_client(addr).await;

    // Simple protocol, several statements in one Query.
    c.batch_execute("create temp table t (n int); insert into t values (1),(2),(3);")
        .await
        .unwrap();
    let rows = c.simple_query("select sum(n) from t").await.unwrap();
    assert!(
        matches!(&rows[1], tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("6"))
    );

    // Extended protocol with a prepared statement and parameters.
    let stmt = c
        .prepare("select n * $1::int from t where n >= $2::int order by n")
        .await
        .unwrap();
    let got: Vec<i32> = c
        .query(&stmt, &[&10i32, &2i32])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(got, vec![20, 30]);

    // An error leaves the session usable; transactions roll back.
    let err = c
        .simple_query("select * from no_such_table")
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42P01");
    c.batch_execute("begin; insert into t values (100);")
        .await
        .unwrap();
    assert!(c.batch_execute("select 1/0").await.is_err());
    c.batch_execute("rollback").await.unwrap();
    let n: i64 = c
        .query_one("select count(*) from t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);

    // The session is recorded with its statements and outcomes.
    drop(c);
    let log = cli.wait_log("ended");
    let audit = log
        .split("session ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let mut rec = String::new();
    for _ in 0..200 {
        rec = gw.recording(&audit);
        if rec.contains("\"type\":\"session_end\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rec.contains("\"type\":\"session_start\""), "{rec}");
    assert!(rec.contains("user:alice@example.com"));
    assert!(
        rec.contains("select n * $1::int from t where n >= $2::int order by n"),
        "{rec}"
    );
    assert!(rec.contains("\"code\":\"42P01\""));
    assert!(rec.contains("\"type\":\"session_end\""), "{rec}");
    assert!(!rec.contains(PG_PASSWORD));
    // application_name carries the audit id to the upstream's pg_stat_activity.
    assert!(!gw.proc.log().contains(PG_PASSWORD));
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_in_and_out() {
    let gw = setup();
    let (_cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let c = pg_client(addr).await;
    c.batch_execute("create temp table c (id int, v text)")
        .await
        .unwrap();
    let sink = c.copy_in("copy c from stdin").await.unwrap();
    futures_util::pin_mut!(sink);
    let mut data = String::new();
    for i in 0..20_000 {
        data.push_str(&format!("{i}\tvalue-{i}\n"));
    }
    sink.send(bytes::Bytes::from(data.clone())).await.unwrap();
    let n = sink.finish().await.unwrap();
    assert_eq!(n, 20_000);
    let stream = c.copy_out("copy c to stdout").await.unwrap();
    futures_util::pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(String::from_utf8(out).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_reaches_the_upstream_query() {
    let gw = setup();
    let (_cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let c = pg_client(addr).await;
    let cancel = c.cancel_token();
    let started = std::time::Instant::now();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        cancel.cancel_query(tokio_postgres::NoTls).await
    });
    let err = c.simple_query("select pg_sleep(30)").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "57014", "{err}");
    canceller.await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(25));
    // Still usable after the cancel.
    let v: i32 = c.query_one("select 7", &[]).await.unwrap().get(0);
    assert_eq!(v, 7);
    let rec = gw.wait_recordings("forwarded to the upstream of session");
    assert!(
        rec.contains("forwarded to the upstream of session"),
        "{rec}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn many_concurrent_tunnels() {
    let gw = setup();
    let (cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let mut tasks = Vec::new();
    for i in 0..12i32 {
        tasks.push(tokio::spawn(async move {
            let c = pg_client(addr).await;
            let mut sum = 0i64;
            for j in 0..20i32 {
                let v: i32 = c
                    .query_one("select $1::int + $2::int", &[&i, &j])
                    .await
                    .unwrap()
                    .get(0);
                sum += v as i64;
            }
            let pid: i32 = c
                .query_one("select pg_backend_pid()", &[])
                .await
                .unwrap()
                .get(0);
            (sum, pid)
        }));
    }
    let mut pids = std::collections::HashSet::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let (sum, pid) = t.await.unwrap();
        assert_eq!(sum, 20 * i as i64 + 190);
        pids.insert(pid);
    }
    assert_eq!(
        pids.len(),
        12,
        "each local connection has its own upstream session"
    );
    let mut log = cli.wait_log("opened");
    for _ in 0..100 {
        if log.matches("opened").count() >= 12 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        log = cli.log();
    }
    assert!(
        log.matches("opened").count() >= 12,
        "one line per session: {log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_upstream_modes() {
    let pg = pg();
    let extra = format!(
        r#"
[[connections]]
name = "pg-verify"
kind = "postgres"
host = "localhost"
port = {port}
database = "app"
user = "app"
password = "env:{PASSWORD_ENV}"
tls = "verify-full"
ca_file = "{ca}"
allow = ["allAuthenticatedUsers"]

[[connections]]
name = "pg-require"
kind = "postgres"
host = "127.0.0.1"
port = {port}
database = "app"
user = "app"
password = "env:{PASSWORD_ENV}"
tls = "require"
allow = ["allAuthenticatedUsers"]

[[connections]]
name = "pg-wrong-ca"
kind = "postgres"
host = "localhost"
port = {port}
database = "app"
user = "app"
password = "env:{PASSWORD_ENV}"
tls = "verify-full"
allow = ["allAuthenticatedUsers"]
"#,
        port = pg.port,
        ca = pg.ca_file.display()
    );
    let gw = Gateway::start(&extra);
    let tok = token("bob@example.com");
    for name in ["pg-verify", "pg-require"] {
        let (_cli, addr) = gw.connect(name, &tok);
        let c = pg_client(addr).await;
        let ssl: bool = c
            .query_one(
                "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(ssl, "{name} must reach the upstream over TLS");
    }
    // The web PKI does not know the test CA: verify-full refuses, clearly.
    let (_cli, addr) = gw.connect("pg-wrong-ca", &tok);
    let url = format!(
        "host=127.0.0.1 port={} user=x dbname=app sslmode=disable",
        addr.port()
    );
    let err = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .err()
        .expect("must fail");
    let db = err
        .as_db_error()
        .expect("a PostgreSQL ErrorResponse, not a dropped socket");
    assert_eq!(db.code().code(), "08001");
    assert!(db.message().contains("TLS"), "{}", db.message());
}
