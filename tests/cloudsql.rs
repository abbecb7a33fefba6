//! Cloud SQL instance connections end to end: the gateway's connector
//! against a stand-in Admin API and server-side proxy (tests/support/cloudsql.rs)
//! in front of the real PostgreSQL.

mod support;

use std::time::Duration;

use support::cloudsql::*;
use support::*;

fn connection(sql: &CloudSql, auth: &str) -> String {
    format!(
        r#"
[[connections]]
name = "sql"
kind = "postgres"
instance = "{name}"
database = "app"
{auth}
allow = ["user:alice@example.com"]

[cloud_sql]
admin_endpoint = "{admin}"
"#,
        name = sql.name(),
        admin = sql.admin_url,
    )
}

fn password_auth() -> String {
    format!("user = \"app\"\npassword = \"env:{PASSWORD_ENV}\"")
}

fn start(sql: &CloudSql) -> Gateway {
    Gateway::start(&connection(sql, &password_auth()))
}

fn query(gw: &Gateway, conn: &str, sql: &str) -> (bool, String, String) {
    let (_cli, addr) = gw.connect(conn, &token("alice@example.com"));
    psql(addr, &["-At", "-c", sql], None)
}

#[test]
fn psql_reaches_an_instance_by_its_connection_name() {
    let sql = CloudSql::start("test-project:prod-db");
    let gw = start(&sql);
    let (ok, out, err) = query(&gw, "sql", "select current_user, 40 + 2");
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "app|42");
    let (ok, _, err) = query(&gw, "sql", "select 1");
    assert!(ok, "{err}");
    // One certificate serves both sessions; each is its own mTLS handshake.
    assert_eq!(sql.cert_calls(), 1);
    assert_eq!(*sql.handshakes.lock().unwrap(), 2);
    // Host/port connections are unchanged beside it.
    let (ok, out, err) = query(&gw, "pg", "select 'direct'");
    assert!(ok && out.trim() == "direct", "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn short_lived_certificates_are_refreshed_during_and_across_sessions() {
    let sql = CloudSql::start("test-project:prod-db");
    sql.set(|b| b.cert_life = Duration::from_secs(10));
    let gw = start(&sql);
    let one = |c: tokio_postgres::Client| async move {
        let row = c.query_one("select 1::int", &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 1);
        c
    };
    let (_cli1, addr1) = gw.connect("sql", &token("alice@example.com"));
    let long = one(pg_client(addr1).await).await;
    assert_eq!(sql.cert_calls(), 1);
    // Past half the certificate's life: the next session refreshes it.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (_cli2, addr2) = gw.connect("sql", &token("alice@example.com"));
    drop(one(pg_client(addr2).await).await);
    assert_eq!(sql.cert_calls(), 2);
    let long = one(long).await;
    // Past the second certificate's expiry: a new one again; the long session lives on.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let (_cli3, addr3) = gw.connect("sql", &token("alice@example.com"));
    drop(one(pg_client(addr3).await).await);
    assert_eq!(sql.cert_calls(), 3);
    drop(one(long).await);
}

#[test]
fn a_failed_refresh_keeps_a_certificate_that_is_still_valid() {
    let sql = CloudSql::start("test-project:prod-db");
    sql.set(|b| b.cert_life = Duration::from_secs(20));
    let gw = start(&sql);
    assert!(query(&gw, "sql", "select 1").0);
    // Past the refresh point (half of 20 s), the Admin API starts refusing.
    std::thread::sleep(Duration::from_secs(11));
    sql.set(|b| b.status = 403);
    let (ok, _, err) = query(&gw, "sql", "select 1");
    assert!(ok, "the first certificate is still valid: {err}");
    assert_eq!(sql.behaviour.lock().unwrap().settings_calls, 2);
    gw.proc
        .wait_log("the current certificate is still valid and stays in use");
    // Once it is about to expire, the refusal reaches the client.
    std::thread::sleep(Duration::from_secs(5));
    let (ok, _, err) = query(&gw, "sql", "select 1");
    assert!(!ok);
    assert!(err.contains("roles/cloudsql.client"), "{err}");
}

#[test]
fn a_server_without_the_instance_identity_is_refused() {
    let sql = CloudSql::start("test-project:other-db");
    let gw = start(&sql);
    let (ok, _, err) = query(&gw, "sql", "select 1");
    assert!(!ok);
    assert!(
        err.contains("\"test-project:other-db\" instead of the instance \"test-project:prod-db\""),
        "{err}"
    );
    gw.wait_recordings("instead of the instance");
}

#[test]
fn ca_service_certificates_are_checked_by_dns_name() {
    let dns = "abc123.us-central1.sql.goog";
    let sql = CloudSql::start_cas(&format!("{dns}."), dns);
    let gw = start(&sql);
    let (ok, out, err) = query(&gw, "sql", "select 'cas'");
    assert!(ok && out.trim() == "cas", "{err}");
    let other = CloudSql::start_cas(&format!("{dns}."), "other.us-central1.sql.goog");
    let gw = start(&other);
    let (ok, _, err) = query(&gw, "sql", "select 1");
    assert!(!ok);
    assert!(
        err.contains("expected the server to present DNS name \"abc123.us-central1.sql.goog\""),
        "{err}"
    );
}

#[test]
fn admin_api_refusals_name_their_fix() {
    let sql = CloudSql::start("test-project:prod-db");
    let gw = start(&sql);
    type Change<'a> = &'a dyn Fn(&mut Behaviour);
    let cases: [(Change, &str); 4] = [
        (&|b| b.status = 403, "grant roles/cloudsql.client"),
        (
            &|b| b.status = 404,
            "does not exist (the Admin API answered 404)",
        ),
        (
            &|b| {
                b.status = 200;
                b.region = "europe-west1".into();
            },
            "set instance = \"test-project:europe-west1:prod-db\"",
        ),
        (
            &|b| {
                b.region = REGION.into();
                b.private = false;
            },
            "has no private address (it has: public)",
        ),
    ];
    for (change, want) in cases {
        sql.set(change);
        // A failure is answered from memory for 2 s before the API is asked again.
        std::thread::sleep(Duration::from_millis(2100));
        let (ok, _, err) = query(&gw, "sql", "select 1");
        assert!(!ok);
        assert!(err.contains(want), "want {want:?} in {err}");
        gw.wait_recordings(want.split('"').next().unwrap());
    }
}

#[test]
fn iam_login_uses_the_service_accounts_token() {
    let sql = CloudSql::start("test-project:prod-db");
    pg().admin(&format!(
        "do $$ begin if not exists (select from pg_roles where rolname = '{IAM_USER}') then create role \"{IAM_USER}\" login password '{IAM_TOKEN}'; end if; end $$"
    ));
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("recordings");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let text = config(&store, &connection(&sql, "iam_auth = true"));
    let gw = Gateway::start_env(
        dir,
        &text,
        store,
        &[
            ("GCE_METADATA_HOST", sql.metadata_host.as_str()),
            ("HOME", home.to_str().unwrap()),
        ],
    );
    let (ok, out, err) = query(&gw, "sql", "select current_user");
    assert!(ok, "{err}\n{}", gw.proc.log());
    assert_eq!(out.trim(), IAM_USER);
    // The certificate request carried the same token.
    assert_eq!(
        sql.behaviour.lock().unwrap().last_access_token.as_deref(),
        Some(IAM_TOKEN)
    );
    gw.proc.wait_log("Cloud SQL IAM database login");
    gw.wait_recordings(&format!(
        r#""type":"upstream_login","method":"cloud_sql_iam","user":"{IAM_USER}""#
    ));
}
