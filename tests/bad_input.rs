//! Malformed PostgreSQL traffic straight into the tunnel: each bad session
//! ends with an ErrorResponse and a close reason; the gateway keeps serving.

mod support;

use bytes::{BufMut, BytesMut};
use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(gw: &Gateway) -> Ws {
    let mut req = format!("ws://{}/v1/tunnel/pg", gw.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token("alice@example.com"))
            .parse()
            .unwrap(),
    );
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

fn startup() -> Vec<u8> {
    let mut b = BytesMut::new();
    let body = b"user\0x\0database\0app\0\0";
    b.put_i32(8 + body.len() as i32);
    b.put_i32(196608);
    b.put_slice(body);
    b.to_vec()
}

/// Reads until the gateway closes; returns all bytes and the close reason.
async fn drain(ws: &mut Ws) -> (Vec<u8>, String) {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => got.extend_from_slice(&b),
            Ok(Some(Ok(Message::Close(f)))) => {
                return (got, f.map(|f| f.reason.to_string()).unwrap_or_default())
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_))) | Ok(None) => return (got, String::new()),
            Err(_) => panic!("gateway neither answered nor closed (a hang)"),
        }
    }
}

/// Reads messages until the bytes include ReadyForQuery.
async fn until_ready(ws: &mut Ws) {
    let mut got = Vec::new();
    while !got.ends_with(&[b'Z', 0, 0, 0, 5, b'I']) {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => got.extend_from_slice(&b),
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn error_in(bytes: &[u8]) -> Option<(String, String)> {
    let at = bytes.iter().position(|b| *b == b'E')?;
    let body = &bytes[at + 5..];
    let mut code = String::new();
    let mut msg = String::new();
    let mut rest = body;
    while let Some((&f, tail)) = rest.split_first() {
        if f == 0 {
            break;
        }
        let end = tail.iter().position(|b| *b == 0)?;
        let v = String::from_utf8_lossy(&tail[..end]).to_string();
        match f {
            b'C' => code = v,
            b'M' => msg = v,
            _ => {}
        }
        rest = &tail[end + 1..];
    }
    Some((code, msg))
}

async fn still_serving(gw: &Gateway) {
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/exec/pg", gw.url))
        .bearer_auth(token("alice@example.com"))
        .json(&serde_json::json!({"input": "select 1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_frames_end_only_their_session() {
    let gw = Gateway::start("");
    let startup_cases: Vec<(&str, Vec<u8>)> = vec![
        ("unknown startup code", vec![0, 0, 0, 8, 0, 9, 9, 9]),
        ("startup length below 8", vec![0, 0, 0, 2, 0, 3, 0, 0]),
        ("startup length huge", vec![0x7f, 0, 0, 0, 0, 3, 0, 0]),
    ];
    for (name, bytes) in startup_cases {
        let mut ws = open(&gw).await;
        ws.send(Message::Binary(bytes.into())).await.unwrap();
        let (got, reason) = drain(&mut ws).await;
        let (code, msg) = error_in(&got).unwrap_or_else(|| panic!("{name}: no ErrorResponse"));
        assert_eq!(code, "08P01", "{name}: {msg}");
        assert!(
            reason.contains("startup"),
            "{name}: close reason {reason:?}"
        );
    }

    let mut q_huge = vec![b'Q'];
    q_huge.extend_from_slice(&(4i32 << 20).to_be_bytes());
    let mut garbage_after_valid = Vec::new();
    garbage_after_valid.extend_from_slice(b"Q\0\0\0\x0eselect 1;\0");
    garbage_after_valid.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0xff]);
    let frame_cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("length below 4", vec![b'Q', 0, 0, 0, 2], "invalid length"),
        (
            "length above the configured maximum",
            q_huge,
            "exceeds the limit",
        ),
        (
            "garbage after a valid message",
            garbage_after_valid,
            "invalid length",
        ),
    ];
    for (name, bytes, expect) in frame_cases {
        let mut ws = open(&gw).await;
        ws.send(Message::Binary(startup().into())).await.unwrap();
        until_ready(&mut ws).await;
        ws.send(Message::Binary(bytes.into())).await.unwrap();
        let (got, reason) = drain(&mut ws).await;
        let (code, msg) =
            error_in(&got).unwrap_or_else(|| panic!("{name}: no ErrorResponse in {got:?}"));
        assert_eq!(code, "08P01", "{name}");
        assert!(msg.contains(expect), "{name}: {msg}");
        assert!(reason.contains("malformed"), "{name}: {reason}");
    }

    // Truncated: half a frame, then the client vanishes. The session ends and is recorded.
    let mut ws = open(&gw).await;
    ws.send(Message::Binary(startup().into())).await.unwrap();
    until_ready(&mut ws).await;
    ws.send(Message::Binary(b"Q\0\0\0\x20sel".to_vec().into()))
        .await
        .unwrap();
    drop(ws);

    // Text frames are not tunnel traffic.
    let mut ws = open(&gw).await;
    ws.send(Message::Text("hello".into())).await.unwrap();
    let (_, reason) = drain(&mut ws).await;
    assert!(reason.contains("binary"), "{reason}");

    // A statement followed at once by Terminate: the upstream may run it, so
    // it is recorded even though the session ends before the answer.
    let mut ws = open(&gw).await;
    ws.send(Message::Binary(startup().into())).await.unwrap();
    until_ready(&mut ws).await;
    let mut q = b"Q\0\0\0\x17select 11223344556\0".to_vec();
    q.extend_from_slice(b"X\0\0\0\x04");
    ws.send(Message::Binary(q.into())).await.unwrap();
    let _ = drain(&mut ws).await;

    still_serving(&gw).await;
    let mut rec = gw.wait_recordings("select 11223344556");
    for _ in 0..100 {
        if rec.matches("\"type\":\"session_end\"").count() >= 8 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        rec = gw.recordings();
    }
    assert!(
        rec.matches("\"type\":\"session_end\"").count() >= 8,
        "{rec}"
    );
    assert!(rec.contains("malformed message from client"), "{rec}");
    assert!(
        rec.contains("select 11223344556"),
        "a statement sent before Terminate is recorded: {rec}"
    );
}
