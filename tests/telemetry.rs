//! Spans reach a real OTLP receiver (gRPC and http/protobuf) as children of
//! the caller's trace, one per session and one per statement, with no SQL
//! literals in them; Cloud Logging JSON lines carry severity and trace id.

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::{body::Bytes, extract::State, routing::post, Router};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use support::*;

#[derive(Debug, Clone)]
struct Got {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attrs: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Got>>>);

impl Received {
    fn record(&self, req: ExportTraceServiceRequest) {
        let text = |v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match v
            .as_ref()
            .and_then(|v| v.value.as_ref())
        {
            Some(Value::StringValue(s)) => s.clone(),
            Some(Value::IntValue(i)) => i.to_string(),
            Some(Value::BoolValue(b)) => b.to_string(),
            Some(Value::DoubleValue(d)) => d.to_string(),
            other => format!("{other:?}"),
        };
        let mut out = self.0.lock().unwrap();
        for rs in req.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .map(|kv| text(&kv.value))
                .unwrap_or_default();
            for s in rs.scope_spans.into_iter().flat_map(|ss| ss.spans) {
                out.push(Got {
                    service: service.clone(),
                    name: s.name,
                    trace_id: hex::encode(&s.trace_id),
                    span_id: hex::encode(&s.span_id),
                    parent_span_id: hex::encode(&s.parent_span_id),
                    attrs: s
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(&kv.value)))
                        .collect(),
                });
            }
        }
    }

    /// Waits (bounded) until a span named `name` with `custody.audit_id = audit` arrived.
    fn wait(&self, name: &str, audit: &str) -> Vec<Got> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let all = self.0.lock().unwrap().clone();
            let found = all.iter().any(|s| {
                s.name == name && s.attrs.get("custody.audit_id").map(String::as_str) == Some(audit)
            });
            if found || Instant::now() > deadline {
                return all;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.record(req.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

async fn grpc_receiver() -> (String, Received) {
    let got = Received::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(got.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (url, got)
}

async fn http_receiver() -> (String, Received) {
    async fn traces(State(got): State<Received>, body: Bytes) -> axum::http::StatusCode {
        match ExportTraceServiceRequest::decode(body) {
            Ok(req) => {
                got.record(req);
                axum::http::StatusCode::OK
            }
            Err(_) => axum::http::StatusCode::BAD_REQUEST,
        }
    }
    let got = Received::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/v1/traces", post(traces))
        .with_state(got.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn gateway(endpoint: &str, protocol: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("recordings");
    Gateway::start_env(
        dir,
        &config(&store, ""),
        store,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ("OTEL_SERVICE_NAME", "custody-test"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("CUSTODY_LOG_FORMAT", "json"),
            ("GOOGLE_CLOUD_PROJECT", "demo-project"),
        ],
    )
}

fn exec_traced(gw: &Gateway, sql: &str) -> String {
    let out = Command::new(bin())
        .args(["exec", "pg", "--gateway", &gw.url, "--", sql])
        .env("CUSTODY_TOKEN", token("alice@example.com"))
        .env("TRACEPARENT", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    stderr
        .split("audit id ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("exec prints the audit id")
        .to_string()
}

fn check_session_and_statement(spans: &[Got], audit: &str) {
    let session = spans
        .iter()
        .find(|s| s.name == "custody.session" && s.attrs["custody.audit_id"] == audit)
        .unwrap_or_else(|| panic!("no session span for {audit}: {spans:#?}"));
    assert_eq!(session.service, "custody-test");
    assert_eq!(
        session.trace_id, CALLER_TRACE,
        "child of the caller's trace"
    );
    assert_eq!(session.parent_span_id, CALLER_SPAN);
    assert_eq!(session.attrs["enduser.id"], "user:alice@example.com");
    assert_eq!(session.attrs["custody.connection"], "pg");
    assert_eq!(session.attrs["db.system"], "postgresql");
    assert_eq!(session.attrs["custody.outcome"], "completed");
    let stmt = spans
        .iter()
        .find(|s| s.name == "SELECT" && s.attrs["custody.audit_id"] == audit)
        .unwrap_or_else(|| panic!("no statement span for {audit}: {spans:#?}"));
    assert_eq!(stmt.trace_id, CALLER_TRACE);
    assert_eq!(
        stmt.parent_span_id, session.span_id,
        "statement under its session"
    );
    assert_eq!(stmt.attrs["db.response.returned_rows"], "1");
    assert_eq!(stmt.attrs["db.operation.name"], "SELECT");
    for s in spans {
        for (k, v) in &s.attrs {
            assert!(
                !v.contains("s3cret-literal"),
                "a SQL literal in span {} attribute {k}",
                s.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_over_grpc_follow_the_callers_trace() {
    let (url, got) = grpc_receiver().await;
    let gw = gateway(&url, "grpc");
    let audit = exec_traced(&gw, "select 's3cret-literal' as v");
    let spans = got.wait("custody.session", &audit);
    check_session_and_statement(&spans, &audit);

    // Cloud Logging JSON: severity, and the trace of the session the line belongs to.
    let log = gw.proc.wait_log(CALLER_TRACE);
    let line = log
        .lines()
        .find(|l| l.contains("session started") && l.contains(&audit))
        .unwrap_or_else(|| panic!("no session log line: {log}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["severity"], "INFO", "{line}");
    assert_eq!(v["custody.audit_id"], audit.as_str(), "{line}");
    assert!(v["logging.googleapis.com/spanId"].is_string(), "{line}");
    assert_eq!(
        v["logging.googleapis.com/trace"],
        format!("projects/demo-project/traces/{CALLER_TRACE}"),
        "{line}"
    );
    assert!(!log.contains("s3cret-literal"), "no SQL literal in logs");
    // The recording names the same trace.
    assert!(gw.wait_recordings(CALLER_TRACE).contains(&audit));
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_over_http_protobuf_for_a_psql_session() {
    let (url, got) = http_receiver().await;
    let gw = gateway(&url, "http/protobuf");
    let mut cmd = Command::new(bin());
    cmd.args([
        "connect",
        "pg",
        "--listen",
        "127.0.0.1:0",
        "--gateway",
        &gw.url,
    ])
    .env("CUSTODY_TOKEN", token("alice@example.com"))
    .env("TRACEPARENT", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"));
    let (cli, rest) = Proc::spawn(cmd, "listening on ");
    let addr: std::net::SocketAddr = rest.split_whitespace().next().unwrap().parse().unwrap();
    let (ok, out, err) = psql(addr, &["-c", "select 's3cret-literal' as v"], None);
    assert!(ok, "{out}{err}");
    let audit = cli
        .wait_log("opened")
        .split("session ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_string();
    let spans = got.wait("custody.session", &audit);
    check_session_and_statement(&spans, &audit);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delegated_session_span_carries_the_chain() {
    let (url, got) = grpc_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("recordings");
    let text = config(&store, "").replace(
        "[identity]\n",
        &format!(
            "[identity]\nsigning_key = \"file:{}\"\n",
            signing_key().display()
        ),
    );
    let gw = Gateway::start_env(
        dir,
        &text,
        store,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let ci = "ci@p.iam.gserviceaccount.com";
    let out = Command::new(bin())
        .args([
            "delegate",
            "--to",
            &format!("serviceAccount:{ci}"),
            "--gateway",
            &gw.url,
        ])
        .env("CUSTODY_TOKEN", token("alice@example.com"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let delegation = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = Command::new(bin())
        .args(["exec", "pg", "--gateway", &gw.url, "--", "select 1"])
        .env("CUSTODY_TOKEN", token_with(ci, &["sre@example.com"]))
        .env("CUSTODY_DELEGATION", &delegation)
        .env("TRACEPARENT", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let audit = stderr
        .split("audit id ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_string();
    let spans = got.wait("custody.session", &audit);
    let s = spans
        .iter()
        .find(|s| s.name == "custody.session" && s.attrs["custody.audit_id"] == audit)
        .unwrap();
    assert_eq!(
        s.attrs["custody.chain"],
        format!("user:alice@example.com → serviceAccount:{ci}")
    );
    assert_eq!(s.attrs["custody.originator"], "user:alice@example.com");
    assert_eq!(s.trace_id, CALLER_TRACE);
}
