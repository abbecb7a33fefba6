//! Logs and spans. Logs: human-readable on a terminal, Cloud Logging JSON on
//! Cloud Run. Spans: one per session and one per statement, children of the
//! caller's W3C trace, exported over OTLP when an endpoint is configured.
//! Span attributes never carry SQL text, row values or error messages (which
//! can quote values): only ids, names, counts and SQLSTATE codes.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::KeyValue;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{Kind, TelemetryConfig};
use crate::recording::EventBody;

mod cloud_logging;
pub mod otlp;

pub use otlp::{ExportStats, OtlpConfig, Protocol};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry configuration: {0}")]
    Config(String),
    #[error("OTLP exporter: {0}")]
    Exporter(String),
}

static STATS: OnceLock<Arc<ExportStats>> = OnceLock::new();

/// Span export counters (exported, failed, dropped because the queue was full).
pub fn stats() -> Option<Arc<ExportStats>> {
    STATS.get().cloned()
}

/// Keep for the life of the process; `shutdown` flushes queued spans, bounded.
#[must_use]
pub struct Guard {
    provider: Option<SdkTracerProvider>,
}

impl Guard {
    /// Exports what is queued and stops; never waits past `timeout` for a
    /// collector that is down.
    pub async fn shutdown(mut self, timeout: Duration) {
        let Some(p) = self.provider.take() else {
            return;
        };
        match tokio::task::spawn_blocking(move || p.shutdown_with_timeout(timeout)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "spans not all exported at shutdown"),
            Err(e) => tracing::warn!(error = %e, "span exporter shutdown failed"),
        }
        if let Some(s) = stats() {
            let dropped = s.dropped.load(Ordering::Relaxed);
            if dropped > 0 {
                tracing::warn!(dropped, "spans dropped because the export queue was full");
            }
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown_with_timeout(Duration::from_secs(1));
        }
    }
}

/// Logs and (when configured) span export, for `custody serve`. Must run
/// inside the tokio runtime: the exporters use it.
pub async fn init(file: &TelemetryConfig) -> Result<Guard, TelemetryError> {
    let project = std::env::var("GOOGLE_CLOUD_PROJECT")
        .ok()
        .or(file.project_id.clone());
    let Some(mut cfg) = OtlpConfig::resolve(file)? else {
        let _ = tracing_subscriber::registry()
            .with(env_filter())
            .with(fmt_layer(project))
            .try_init();
        return Ok(Guard { provider: None });
    };
    let google = cfg.endpoint.contains("telemetry.googleapis.com");
    if file.google_auth.unwrap_or(google) {
        cfg.bearer = Some(otlp::gcp_bearer().await?);
    }
    let stats = STATS.get_or_init(Arc::default).clone();
    let provider = otlp::provider(&cfg, stats)?;
    opentelemetry::global::set_tracer_provider(provider.clone());
    // Only Custody's own spans: the exporter's HTTP and gRPC spans would feed back.
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("custody"))
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_filter(Targets::new().with_target("custody", LevelFilter::INFO));
    let _ = tracing_subscriber::registry()
        .with(env_filter())
        .with(fmt_layer(project))
        .with(layer)
        .try_init();
    tracing::info!(
        endpoint = %cfg.endpoint,
        protocol = ?cfg.protocol,
        service = %cfg.service_name,
        "exporting spans over OTLP"
    );
    Ok(Guard {
        provider: Some(provider),
    })
}

fn env_filter() -> EnvFilter {
    let filter = std::env::var("CUSTODY_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    // Libraries that print protocol payloads at debug or trace level stay at
    // info whatever the level asked for: logs never carry statements, rows or keys.
    [
        "russh=info",
        "tungstenite=info",
        "tokio_tungstenite=info",
        "hyper=info",
        "h2=info",
        "tokio_postgres=info",
        "reqwest=info",
    ]
    .iter()
    .filter_map(|d| d.parse().ok())
    .fold(filter, |f, d| f.add_directive(d))
}

/// `CUSTODY_LOG_FORMAT=json`, or running on Cloud Run (`K_SERVICE` set),
/// selects Cloud Logging JSON on stdout; otherwise readable text on stderr.
fn fmt_layer<S>(project: Option<String>) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let json = std::env::var("CUSTODY_LOG_FORMAT").is_ok_and(|f| f == "json")
        || std::env::var_os("K_SERVICE").is_some();
    if json {
        // Cloud Run reads structured JSON from stdout.
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stdout)
            .event_format(cloud_logging::CloudLogging { project })
            .and_then(cloud_logging::AuditIdLayer)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed()
    }
}

/// The trace and span ids of the span a log line is in, when spans are exported.
fn current_trace() -> Option<(String, String)> {
    stats()?;
    let cx = tracing::Span::current().context();
    let sc = cx.span().span_context().clone();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

/// The caller's trace context: W3C `traceparent`, else Google's
/// `X-Cloud-Trace-Context: TRACE/SPAN;o=1` (span id in decimal).
fn caller_context(headers: &axum::http::HeaderMap) -> Option<opentelemetry::Context> {
    let mut carrier = HashMap::new();
    let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    if let Some(tp) = header("traceparent") {
        carrier.insert("traceparent".to_string(), tp.to_string());
        if let Some(ts) = header("tracestate") {
            carrier.insert("tracestate".to_string(), ts.to_string());
        }
    } else if let Some(cloud) = header("x-cloud-trace-context") {
        let (trace, rest) = cloud.split_once('/')?;
        let span: u64 = rest.split(';').next()?.parse().ok()?;
        let sampled = if rest.contains("o=0") { "00" } else { "01" };
        carrier.insert(
            "traceparent".to_string(),
            format!("00-{}-{span:016x}-{sampled}", trace.to_ascii_lowercase()),
        );
    }
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// The span of one session (tunnel, exec or refused request), a child of
/// the caller's trace. Fields filled in later are declared empty here.
/// `kind` is the connection's (None when no such connection): PostgreSQL
/// sessions say `db.system = "postgresql"`, SSH ones
/// `network.protocol.name = "ssh"` (SSH is no database system).
pub fn session_span(
    headers: &axum::http::HeaderMap,
    audit_id: &str,
    connection: &str,
    mode: &str,
    kind: Option<Kind>,
) -> tracing::Span {
    let span = tracing::info_span!(
        target: "custody::session",
        "custody.session",
        otel.kind = "server",
        custody.audit_id = %audit_id,
        custody.connection = %connection,
        custody.mode = %mode,
        custody.mcp.tool = tracing::field::Empty,
        db.system = tracing::field::Empty,
        network.protocol.name = tracing::field::Empty,
        enduser.id = tracing::field::Empty,
        custody.chain = tracing::field::Empty,
        custody.originator = tracing::field::Empty,
        custody.root_audit_id = tracing::field::Empty,
        custody.granted_by = tracing::field::Empty,
        client.address = tracing::field::Empty,
        network.peer.address = tracing::field::Empty,
        network.peer.port = tracing::field::Empty,
        custody.outcome = tracing::field::Empty,
        custody.reason = tracing::field::Empty,
        custody.statements = tracing::field::Empty,
        custody.rows = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    match kind {
        Some(Kind::Postgres) => {
            span.record("db.system", "postgresql");
        }
        Some(Kind::Ssh) => {
            span.record("network.protocol.name", "ssh");
        }
        None => {}
    }
    if let Some(cx) = caller_context(headers) {
        let _ = span.set_parent(cx);
    }
    span
}

/// The trace id of a span, when spans are exported (otherwise spans have none).
pub fn span_trace_id(span: &tracing::Span) -> Option<String> {
    stats()?;
    let id = span.context().span().span_context().trace_id();
    (id != opentelemetry::trace::TraceId::INVALID).then(|| id.to_string())
}

/// The session's W3C traceparent: its own span when spans are exported,
/// else the caller's.
pub fn traceparent(span: &tracing::Span, headers: &axum::http::HeaderMap) -> Option<String> {
    let own = span.context().span().span_context().clone();
    let sc = if own.is_valid() {
        own
    } else {
        caller_context(headers)?.span().span_context().clone()
    };
    Some(format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    ))
}

/// Turns recorded events into statement spans under the session's span.
/// Built after the fact with explicit start and end times, so the relay
/// never holds a span open across frames.
#[derive(Clone)]
pub struct SessionTrace {
    cx: opentelemetry::Context,
    audit_id: Arc<str>,
}

impl SessionTrace {
    /// None when spans are not exported: nothing to do per statement.
    pub fn of(span: &tracing::Span, audit_id: &str) -> Option<SessionTrace> {
        stats()?;
        let cx = span.context();
        cx.span().span_context().is_valid().then(|| SessionTrace {
            cx,
            audit_id: audit_id.into(),
        })
    }

    pub fn event(&self, at: chrono::DateTime<chrono::Utc>, body: &EventBody) {
        let end = SystemTime::from(at);
        let (name, start, mut attrs, status) = match body {
            EventBody::Statement {
                sql,
                protocol,
                tags,
                rows,
                error,
                duration_ms,
                masked,
            } => {
                let op = tags
                    .first()
                    .and_then(|t| t.split_whitespace().next())
                    .map(str::to_string)
                    .unwrap_or_else(|| operation(sql));
                let took = Duration::from_secs_f64((duration_ms / 1000.0).max(0.0));
                let mut a = vec![
                    KeyValue::new("db.operation.name", op.clone()),
                    KeyValue::new("custody.protocol", protocol.clone()),
                    KeyValue::new("db.response.returned_rows", *rows as i64),
                    KeyValue::new("custody.masked_values", masked.values().sum::<u64>() as i64),
                ];
                for (rule, n) in masked {
                    a.push(KeyValue::new(format!("custody.masked.{rule}"), *n as i64));
                }
                let status = match error {
                    Some(e) => {
                        a.push(KeyValue::new("db.response.status_code", e.code.clone()));
                        Status::error(format!("SQLSTATE {}", e.code))
                    }
                    None => Status::Ok,
                };
                (op, end.checked_sub(took).unwrap_or(end), a, status)
            }
            EventBody::Guardrail {
                sql,
                protocol,
                rule,
                outcome,
            } => (
                // An SSH command's first word is user text (a path, a secret
                // passed as argv[0]): SSH spans get fixed names.
                match protocol.as_str() {
                    "ssh-exec" => "ssh exec".to_string(),
                    "ssh-shell" => "ssh shell".to_string(),
                    _ => operation(sql),
                },
                end,
                vec![
                    KeyValue::new("custody.protocol", protocol.clone()),
                    KeyValue::new("custody.guardrail.rule", rule.clone()),
                    KeyValue::new("custody.guardrail.outcome", outcome.clone()),
                ],
                Status::error(format!("refused by guardrail {rule}")),
            ),
            _ => return,
        };
        attrs.push(match body {
            EventBody::Guardrail { protocol, .. } if protocol.starts_with("ssh") => {
                KeyValue::new("network.protocol.name", "ssh")
            }
            _ => KeyValue::new("db.system", "postgresql"),
        });
        attrs.push(KeyValue::new("custody.audit_id", self.audit_id.to_string()));
        let tracer = opentelemetry::global::tracer("custody");
        let mut span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_start_time(start)
            .with_attributes(attrs)
            .start_with_context(&tracer, &self.cx);
        span.set_status(status);
        span.end_with_timestamp(end);
    }
}

/// Statement keywords a span may be named after.
const OPERATIONS: &[&str] = &[
    "ABORT",
    "ALTER",
    "ANALYZE",
    "BEGIN",
    "CALL",
    "CHECKPOINT",
    "CLOSE",
    "CLUSTER",
    "COMMENT",
    "COMMIT",
    "COPY",
    "CREATE",
    "DEALLOCATE",
    "DECLARE",
    "DELETE",
    "DISCARD",
    "DO",
    "DROP",
    "END",
    "EXECUTE",
    "EXPLAIN",
    "FETCH",
    "GRANT",
    "IMPORT",
    "INSERT",
    "LISTEN",
    "LOAD",
    "LOCK",
    "MERGE",
    "MOVE",
    "NOTIFY",
    "PREPARE",
    "REASSIGN",
    "REFRESH",
    "REINDEX",
    "RELEASE",
    "RESET",
    "REVOKE",
    "ROLLBACK",
    "SAVEPOINT",
    "SECURITY",
    "SELECT",
    "SET",
    "SHOW",
    "START",
    "TABLE",
    "TRUNCATE",
    "UNLISTEN",
    "UPDATE",
    "VACUUM",
    "VALUES",
    "WITH",
];

/// The statement's first keyword (SELECT, UPDATE, …), only when it is one:
/// a client's own word never names a span.
fn operation(sql: &str) -> String {
    let word: String = sql
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .take(24)
        .collect::<String>()
        .to_ascii_uppercase();
    if OPERATIONS.contains(&word.as_str()) {
        word
    } else {
        "statement".into()
    }
}

#[cfg(test)]
mod operation_tests {
    #[test]
    fn spans_are_named_by_keywords_only() {
        assert_eq!(super::operation("  select 1"), "SELECT");
        assert_eq!(super::operation("with x as (select 1) select 1"), "WITH");
        assert_eq!(super::operation("alicesecret from t"), "statement");
        assert_eq!(super::operation("/* a@b.c */ select 1"), "statement");
    }
}
