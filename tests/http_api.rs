//! The HTTP surface against the real binary: token verification, policy,
//! connections listing, exec in JSON and CSV, health and readiness.

mod support;

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::*;

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn claims(email: &str) -> Value {
    json!({
        "iss": issuer().url, "sub": format!("sub-{email}"), "aud": AUDIENCE,
        "email": email, "email_verified": true,
        "iat": now(), "nbf": now(), "exp": now() + 600,
    })
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

async fn get(gw: &Gateway, path: &str, token: Option<&str>) -> (u16, Option<String>, Value) {
    let mut req = reqwest::Client::new().get(format!("{}{path}", gw.url));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let audit = resp
        .headers()
        .get("x-custody-audit-id")
        .map(|v| v.to_str().unwrap().to_string());
    (status, audit, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tokens_are_refused_with_401() {
    let gw = Gateway::start("");
    let iss = issuer();
    let valid = iss
        .dev
        .sign(&claims("alice@example.com"), Algorithm::RS256)
        .unwrap();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims("alice@example.com");
        f(&mut c);
        iss.dev.sign(&c, Algorithm::RS256).unwrap()
    };
    let parts: Vec<&str> = valid.split('.').collect();
    let mut forged = claims("alice@example.com");
    forged["email"] = json!("root@example.com");
    let jwks = serde_json::to_vec(&iss.dev.jwks().unwrap()).unwrap();
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("dev-rsa-1".into());

    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing token", None),
        ("expired", Some(with(&|c| c["exp"] = json!(now() - 3600)))),
        (
            "not yet valid",
            Some(with(&|c| c["nbf"] = json!(now() + 3600))),
        ),
        (
            "issued in the future",
            Some(with(&|c| c["iat"] = json!(now() + 3600))),
        ),
        (
            "wrong audience",
            Some(with(&|c| c["aud"] = json!("https://elsewhere.example"))),
        ),
        (
            "wrong issuer",
            Some(with(&|c| c["iss"] = json!("https://accounts.example.com"))),
        ),
        (
            "alg none",
            Some(format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                b64(&claims("alice@example.com"))
            )),
        ),
        (
            "HS256 signed with the public key",
            Some(
                jsonwebtoken::encode(
                    &hs,
                    &claims("alice@example.com"),
                    &EncodingKey::from_secret(&jwks),
                )
                .unwrap(),
            ),
        ),
        (
            "unknown kid",
            Some(
                iss.dev
                    .sign_with_kid(
                        &claims("alice@example.com"),
                        Algorithm::RS256,
                        "no-such-key",
                    )
                    .unwrap(),
            ),
        ),
        (
            "tampered payload",
            Some(format!("{}.{}.{}", parts[0], b64(&forged), parts[2])),
        ),
        ("garbage", Some("not-a-jwt".into())),
    ];
    for (name, token) in cases {
        let (status, audit, body) = get(&gw, "/v1/connections", token.as_deref()).await;
        assert_eq!(status, 401, "{name}: {body}");
        assert!(audit.is_some(), "{name}: audit id header");
        assert_eq!(body["error"], "unauthenticated", "{name}");
        assert!(
            body["reason"].as_str().unwrap().len() > 10,
            "{name}: {body}"
        );
        assert_eq!(body["audit_id"].as_str(), audit.as_deref());
    }
    // The tunnel refuses before upgrading, with the same JSON.
    let (status, _, body) = get(&gw, "/v1/tunnel/pg", Some("not-a-jwt")).await;
    assert_eq!(status, 401, "{body}");
    let log = gw.proc.log();
    assert!(
        log.contains("unauthenticated"),
        "audit events are logged: {log}"
    );

    // Both key types verify.
    for alg in [Algorithm::RS256, Algorithm::ES256] {
        let t = iss.dev.sign(&claims("alice@example.com"), alg).unwrap();
        let (status, _, body) = get(&gw, "/v1/connections", Some(&t)).await;
        assert_eq!(status, 200, "{alg:?}: {body}");
        assert_eq!(body["principal"], "user:alice@example.com");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_allows_by_member_and_refuses_with_403() {
    let gw = Gateway::start("");
    let (s, _, body) = get(
        &gw,
        "/v1/connections",
        Some(&token_with("carol@example.com", &["sre@example.com"])),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(body["connections"][0]["name"], "pg", "{body}");
    let (s, _, body) = get(&gw, "/v1/connections", Some(&token("mallory@example.com"))).await;
    assert_eq!(s, 200);
    assert_eq!(body["connections"], json!([]));

    let resp = reqwest::Client::new()
        .post(format!("{}/v1/exec/pg", gw.url))
        .bearer_auth(token("mallory@example.com"))
        .json(&json!({"input": "select 1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    let audit = resp.headers()["x-custody-audit-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("user:mallory@example.com is not in the allow list"),
        "{body}"
    );
    // The refusal is an audit record, replayable by its id.
    let mut rec = String::new();
    for _ in 0..50 {
        rec = gw.recording(&audit);
        if rec.contains("\"type\":\"refused\"") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(rec.contains("\"type\":\"refused\""), "{rec}");

    let (s, _, body) = get(&gw, "/v1/tunnel/nope", Some(&token("alice@example.com"))).await;
    assert_eq!(s, 400, "not a websocket request: {body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_answers_json_and_csv() {
    let gw = Gateway::start("");
    let http = reqwest::Client::new();
    let url = format!("{}/v1/exec/pg", gw.url);
    let tok = token("alice@example.com");
    let resp = http
        .post(&url)
        .bearer_auth(&tok)
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .json(&json!({"input": "select 1 as a, 'x,y' as b, null as c union all select 2, 'q\"r', 'z' order by a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let audit = resp.headers()["x-custody-audit-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["audit_id"], audit.as_str());
    assert_eq!(body["columns"], json!(["a", "b", "c"]));
    assert_eq!(
        body["rows"],
        json!([["1", "x,y", null], ["2", "q\"r", "z"]])
    );
    assert_eq!(body["command_tag"], "SELECT 2");

    let csv = http
        .post(&url)
        .bearer_auth(&tok)
        .header("accept", "text/csv")
        .json(&json!({"input": "select 1 as a, 'x,y' as b"}))
        .send()
        .await
        .unwrap();
    assert!(csv.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    assert_eq!(csv.text().await.unwrap(), "a,b\n1,\"x,y\"\n");

    let err = http
        .post(&url)
        .bearer_auth(&tok)
        .json(&json!({"input": "select * from missing_table"}))
        .send()
        .await
        .unwrap();
    assert_eq!(err.status().as_u16(), 422);
    let body: Value = err.json().await.unwrap();
    assert_eq!(body["sqlstate"], "42P01");

    let bad = http
        .post(&url)
        .bearer_auth(&tok)
        .body("select 1")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);

    // The statement and its row count are in the exec's audit record.
    let rec = gw.recording(&audit);
    assert!(
        rec.contains("\"mode\":\"exec\"") && rec.contains("\"rows\":2"),
        "{rec}"
    );
    assert!(
        rec.contains("\"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\""),
        "the caller's trace is in the record: {rec}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_readiness() {
    let gw = Gateway::start("");
    assert!(http_ok(&format!("{}/healthz", gw.url)));
    let (status, body) = http_get(&format!("{}/readyz", gw.url)).unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("\"recording_store\":\"writable\""), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unwritable_store_is_not_ready_and_refuses_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::path::PathBuf::from("/proc/custody-no-store");
    let text = config(&store, "");
    // The gateway starts (so /healthz works) but is not ready and runs nothing.
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, &text).unwrap();
    let mut cmd = std::process::Command::new(bin());
    cmd.args(["serve", "--config"])
        .arg(&cfg)
        .env(PASSWORD_ENV, PG_PASSWORD);
    let (proc, rest) = Proc::spawn(cmd, "listening on http://");
    let url = format!("http://{}", rest.trim());
    assert!(http_ok(&format!("{url}/healthz")));
    let (status, body) = http_get(&format!("{url}/readyz")).unwrap();
    assert_eq!(status, 503, "{body}");
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/exec/pg"))
        .bearer_auth(token("alice@example.com"))
        .json(&json!({"input": "select 1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("cannot be recorded"),
        "{body}"
    );
    drop(proc);
}

#[tokio::test(flavor = "multi_thread")]
async fn issuer_vouches_only_for_its_domains() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("rec");
    let text = config(&store, "").replace(
        &format!("issuer = \"{}\"", issuer().url),
        &format!(
            "issuer = \"{}\"\nemail_domains = [\"corp.example\"]",
            issuer().url
        ),
    );
    let gw = Gateway::start_with(dir, &text, store);
    // alice@example.com is on the allow list, but this issuer only vouches for corp.example.
    let (status, _, body) = get(&gw, "/v1/connections", Some(&token("alice@example.com"))).await;
    assert_eq!(status, 200);
    assert_eq!(body["principal"], "subject:dev|alice@example.com", "{body}");
    assert_eq!(body["connections"], json!([]));
}
