//! Upstream and secret failures reach the client as clear errors, and no
//! secret value shows up in a log line, a response or a recording.

mod support;

use axum::http::{StatusCode, Uri};
use base64::Engine;
use serde_json::json;
use support::*;

/// A Secret Manager stand-in answering the documented `:access` shape.
fn secret_manager() -> String {
    let app = axum::Router::new().fallback(|uri: Uri| async move {
        let path = uri.path().to_string();
        let (data, crc) = match path.as_str() {
            "/v1/projects/proj/secrets/pg-pass/versions/latest:access" => (
                PG_PASSWORD.as_bytes().to_vec(),
                crc32c::crc32c(PG_PASSWORD.as_bytes()),
            ),
            "/v1/projects/proj/secrets/corrupt/versions/latest:access" => {
                (PG_PASSWORD.as_bytes().to_vec(), 12345)
            }
            _ => {
                return (
                    StatusCode::NOT_FOUND,
                    axum::Json(json!({"error": {"code": 404}})),
                )
            }
        };
        let body = json!({
            "name": path.trim_start_matches("/v1/").trim_end_matches(":access"),
            "payload": {
                "data": base64::engine::general_purpose::STANDARD.encode(data),
                "dataCrc32c": crc.to_string(),
            }
        });
        (StatusCode::OK, axum::Json(body))
    });
    let url = format!("http://{}", serve_router(app));
    url
}

fn conn(name: &str, port: u16, password: &str) -> String {
    format!(
        "[[connections]]\nname = \"{name}\"\nkind = \"postgres\"\nhost = \"127.0.0.1\"\nport = {port}\ndatabase = \"app\"\nuser = \"app\"\npassword = \"{password}\"\ntls = \"disable\"\nallow = [\"allAuthenticatedUsers\"]\n"
    )
}

async fn connect_err(gw: &Gateway, name: &str) -> (String, String) {
    let (_cli, addr) = gw.connect(name, &token("alice@example.com"));
    let url = format!(
        "host=127.0.0.1 port={} user=x dbname=app sslmode=disable",
        addr.port()
    );
    match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
        Ok(_) => panic!("{name}: connected but should have failed"),
        Err(e) => {
            let db = e
                .as_db_error()
                .unwrap_or_else(|| panic!("{name}: not an ErrorResponse: {e}"));
            (db.code().code().to_string(), db.message().to_string())
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_and_secret_failures_are_clear() {
    let pg = pg();
    let sm = secret_manager();
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong-password");
    std::fs::write(&wrong, "definitely-wrong-pw\n").unwrap();
    let extra = format!(
        "{}{}{}{}{}\n[secrets]\nsecret_manager_endpoint = \"{sm}\"\ncache_ttl = \"1s\"\n",
        conn("pg-sm", pg.port, "sm://proj/pg-pass"),
        conn("pg-corrupt", pg.port, "sm://proj/corrupt"),
        conn("pg-missing", pg.port, "sm://proj/absent#3"),
        conn("pg-wrongpw", pg.port, &format!("file:{}", wrong.display())),
        conn("pg-down", free_port(), "sm://proj/pg-pass"),
    );
    let gw = Gateway::start(&extra);

    // sm:// resolves through the Secret Manager API and logs in.
    let (_cli, addr) = gw.connect("pg-sm", &token("alice@example.com"));
    let c = pg_client(addr).await;
    let who: String = c
        .query_one("select current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, "app");

    let (code, msg) = connect_err(&gw, "pg-corrupt").await;
    assert_eq!(code, "08001");
    assert!(msg.contains("checksum"), "{msg}");
    let (code, msg) = connect_err(&gw, "pg-missing").await;
    assert_eq!(code, "08001");
    assert!(
        msg.contains("sm://proj/absent#3") && msg.contains("404"),
        "{msg}"
    );
    let (code, msg) = connect_err(&gw, "pg-wrongpw").await;
    assert_eq!(code, "28P01", "{msg}");
    assert!(msg.contains("password authentication failed"), "{msg}");
    let (code, msg) = connect_err(&gw, "pg-down").await;
    assert_eq!(code, "08001");
    assert!(msg.contains("cannot reach upstream pg-down"), "{msg}");

    // exec reports the same failures as 502 with a reason.
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/exec/pg-down", gw.url))
        .bearer_auth(token("alice@example.com"))
        .json(&json!({"input": "select 1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 502);
    let body = resp.text().await.unwrap();
    assert!(body.contains("cannot reach upstream"), "{body}");

    drop(c);
    gw.wait_recordings("password authentication failed");
    for (what, text) in [
        ("log", gw.proc.log()),
        ("recordings", gw.recordings()),
        ("exec response", body),
    ] {
        assert!(
            !text.contains(PG_PASSWORD),
            "the password leaked into the {what}"
        );
        assert!(
            !text.contains("definitely-wrong-pw"),
            "a secret leaked into the {what}"
        );
    }
    assert!(gw.recordings().contains("password authentication failed"));
}
