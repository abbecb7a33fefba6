//! Log lines in Cloud Logging's structured JSON: `severity` (which Cloud
//! Logging reads; a plain `level` field is ignored and every line shows as
//! DEFAULT), `message`, `time`, the event's fields, and the trace and span
//! of the request when it has one, so Logs Explorer groups a session's lines
//! under its trace.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The audit id of a session span, kept so every log line inside the
/// session can name it.
struct AuditId(String);

/// Remembers `custody.audit_id` of each span as it is created.
pub struct AuditIdLayer;

impl<S> Layer<S> for AuditIdLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut fields = Map::new();
        attrs.record(&mut Fields(&mut fields));
        if let (Some(Value::String(a)), Some(span)) =
            (fields.remove("custody.audit_id"), ctx.span(id))
        {
            span.extensions_mut().insert(AuditId(a));
        }
    }
}

pub struct CloudLogging {
    /// GCP project for `logging.googleapis.com/trace`; without it the trace
    /// field is left out (Cloud Logging needs the full resource name).
    pub project: Option<String>,
}

fn severity(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG | Level::TRACE => "DEBUG",
    }
}

struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_string(), Value::from(format!("{value:?}")));
    }
}

impl<S, N> FormatEvent<S, N> for CloudLogging
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut map = Map::new();
        event.record(&mut Fields(&mut map));
        map.insert("severity".into(), Value::from(severity(meta.level())));
        map.insert(
            "time".into(),
            Value::from(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        );
        map.insert("target".into(), Value::from(meta.target()));
        let audit = map.get("audit_id").cloned().or_else(|| {
            ctx.lookup_current()?.scope().find_map(|s| {
                s.extensions()
                    .get::<AuditId>()
                    .map(|a| Value::from(a.0.clone()))
            })
        });
        if let Some(a) = audit {
            map.insert("custody.audit_id".into(), a);
        }
        if let Some((trace, span)) = super::current_trace() {
            if let Some(p) = &self.project {
                map.insert(
                    "logging.googleapis.com/trace".into(),
                    Value::from(format!("projects/{p}/traces/{trace}")),
                );
            }
            map.insert("trace_id".into(), Value::from(trace));
            map.insert("logging.googleapis.com/spanId".into(), Value::from(span));
        }
        let line = serde_json::to_string(&Value::Object(map)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}
