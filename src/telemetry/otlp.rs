//! OTLP span export (gRPC or http/protobuf) through a bounded batch queue
//! whose drops are counted. Exporting never blocks the data path.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::tonic_types::transport::ClientTlsConfig;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, Span, SpanData, SpanExporter,
    SpanProcessor,
};
use opentelemetry_sdk::Resource;

use super::TelemetryError;
use crate::config::TelemetryConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

#[derive(Clone, Debug)]
pub struct OtlpConfig {
    /// Base URL: `http://host:4317` (grpc) or `http://host:4318` (http; `/v1/traces` is appended).
    pub endpoint: String,
    pub protocol: Protocol,
    pub service_name: String,
    /// `gcp.project_id` on the resource: telemetry.googleapis.com refuses spans without it.
    pub project_id: Option<String>,
    pub max_queue_size: usize,
    pub scheduled_delay: Duration,
    /// Per-export deadline, retries included (OTLP default 10 s).
    pub export_timeout: Duration,
    /// `authorization: Bearer ...` on every export (e.g. from [`gcp_bearer`]).
    pub bearer: Option<BearerToken>,
}

impl OtlpConfig {
    /// The standard OTEL_* variables, else `[telemetry]` in the config file;
    /// None when neither names an endpoint (no export, no exporter thread).
    pub fn resolve(file: &TelemetryConfig) -> Result<Option<Self>, TelemetryError> {
        Self::from_lookup(|k| std::env::var(k).ok(), file)
    }

    pub fn from_lookup(
        get: impl Fn(&str) -> Option<String>,
        file: &TelemetryConfig,
    ) -> Result<Option<Self>, TelemetryError> {
        let get = |k: &str| {
            get(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let Some(endpoint) = get("OTEL_EXPORTER_OTLP_ENDPOINT").or(file.otlp_endpoint.clone())
        else {
            return Ok(None);
        };
        let protocol = get("OTEL_EXPORTER_OTLP_PROTOCOL").or(file.otlp_protocol.clone());
        let protocol = match protocol.as_deref() {
            None | Some("http/protobuf") => Protocol::HttpProtobuf, // the spec's default
            Some("grpc") => Protocol::Grpc,
            Some(other) => {
                return Err(TelemetryError::Config(format!(
                    "OTLP protocol {other:?} is not supported: use grpc or http/protobuf"
                )))
            }
        };
        let num = |k: &str, d: u64| -> Result<u64, TelemetryError> {
            get(k).map_or(Ok(d), |v| {
                v.parse()
                    .map_err(|_| TelemetryError::Config(format!("{k}={v:?} is not a number")))
            })
        };
        Ok(Some(OtlpConfig {
            endpoint,
            protocol,
            project_id: get("GOOGLE_CLOUD_PROJECT").or(file.project_id.clone()),
            service_name: get("OTEL_SERVICE_NAME")
                .or(file.service_name.clone())
                .unwrap_or_else(|| "custody".into()),
            max_queue_size: num("OTEL_BSP_MAX_QUEUE_SIZE", file.span_queue as u64)? as usize,
            scheduled_delay: Duration::from_millis(num("OTEL_BSP_SCHEDULE_DELAY", 5000)?),
            export_timeout: Duration::from_millis(num("OTEL_EXPORTER_OTLP_TIMEOUT", 10_000)?),
            bearer: None,
        }))
    }
}

pub fn provider(
    cfg: &OtlpConfig,
    stats: Arc<ExportStats>,
) -> Result<SdkTracerProvider, TelemetryError> {
    let b = opentelemetry_otlp::SpanExporter::builder();
    let exporter = match cfg.protocol {
        Protocol::Grpc => {
            let mut b = b
                .with_tonic()
                .with_endpoint(cfg.endpoint.clone())
                .with_timeout(cfg.export_timeout);
            if cfg.endpoint.starts_with("https://") {
                // ClientTlsConfig::new() alone has NO trust roots.
                b = b.with_tls_config(ClientTlsConfig::new().with_webpki_roots());
            }
            if let Some(token) = cfg.bearer.clone() {
                b = b.with_interceptor(move |mut req: tonic::Request<()>| {
                    let v = token
                        .header_value()
                        .parse()
                        .map_err(|_| tonic::Status::internal("token"))?;
                    req.metadata_mut().insert("authorization", v);
                    Ok(req)
                });
            }
            b.build()
                .map_err(|e| TelemetryError::Exporter(e.to_string()))?
        }
        Protocol::HttpProtobuf => b
            .with_http()
            // Explicit: otherwise OTEL_EXPORTER_OTLP_PROTOCOL=grpc in the env makes build() fail.
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            // A programmatic endpoint is used verbatim: append the signal path ourselves.
            .with_endpoint(format!("{}/v1/traces", cfg.endpoint.trim_end_matches('/')))
            .with_timeout(cfg.export_timeout)
            .with_http_client(TokioReqwest {
                client: reqwest::Client::builder()
                    .timeout(cfg.export_timeout)
                    .build()
                    .map_err(|e| TelemetryError::Exporter(e.to_string()))?,
                rt: tokio::runtime::Handle::try_current().map_err(|_| {
                    TelemetryError::Config("telemetry needs a tokio runtime".into())
                })?,
                bearer: cfg.bearer.clone(),
            })
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?,
    };
    let batch = BatchSpanProcessor::builder(CountingExporter {
        inner: exporter,
        stats: stats.clone(),
    })
    .with_batch_config(
        BatchConfigBuilder::default() // also reads OTEL_BSP_*; overridden below
            .with_max_queue_size(cfg.max_queue_size)
            .with_max_export_batch_size(512.min(cfg.max_queue_size))
            .with_scheduled_delay(cfg.scheduled_delay)
            .build(),
    )
    .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(DropCounter {
            inner: batch,
            stats,
            cap: cfg.max_queue_size,
        })
        .with_resource(
            Resource::builder()
                .with_service_name(cfg.service_name.clone())
                .with_attributes(
                    cfg.project_id
                        .iter()
                        .map(|p| opentelemetry::KeyValue::new("gcp.project_id", p.clone())),
                )
                .build(),
        )
        .build())
}

// ---------------------------------------------------------------- drop counting

/// The SDK's BatchSpanProcessor counts drops in a private field (only a one-time
/// warn log + a count in a warn log at shutdown), so we gate admission ourselves:
/// `queued` over-approximates the SDK queue, so the SDK itself never drops.
#[derive(Debug, Default)]
pub struct ExportStats {
    pub queued: AtomicUsize,
    pub dropped: AtomicU64,
    pub exported: AtomicU64,
    pub failed: AtomicU64,
}

#[derive(Debug)]
struct DropCounter<P> {
    inner: P,
    stats: Arc<ExportStats>,
    cap: usize,
}

impl<P: SpanProcessor> SpanProcessor for DropCounter<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx)
    }
    fn on_end(&self, span: SpanData) {
        if self.stats.queued.fetch_add(1, Ordering::AcqRel) >= self.cap {
            self.stats.queued.fetch_sub(1, Ordering::AcqRel);
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.inner.on_end(span)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn set_resource(&mut self, r: &Resource) {
        self.inner.set_resource(r)
    }
}

#[derive(Debug)]
struct CountingExporter<E> {
    inner: E,
    stats: Arc<ExportStats>,
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        let n = batch.len();
        self.stats.queued.fetch_sub(n, Ordering::AcqRel);
        let fut = self.inner.export(batch);
        async move {
            let r = fut.await;
            let c = if r.is_ok() {
                &self.stats.exported
            } else {
                &self.stats.failed
            };
            c.fetch_add(n as u64, Ordering::Relaxed);
            r
        }
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }
    fn set_resource(&mut self, r: &Resource) {
        self.inner.set_resource(r) // must forward, or service.name is lost
    }
}

// ---------------------------------------------------------------- HTTP client

/// The batch processor runs exports on its own std thread via `block_on`, where
/// an async reqwest client has no reactor. Run the request on the app's runtime
/// instead (also keeps us on reqwest 0.12 + ring; otel-otlp's own clients are reqwest 0.13).
#[derive(Debug, Clone)]
struct TokioReqwest {
    client: reqwest::Client,
    rt: tokio::runtime::Handle,
    bearer: Option<BearerToken>,
}

#[async_trait::async_trait]
impl HttpClient for TokioReqwest {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (client, bearer) = (self.client.clone(), self.bearer.clone());
        self.rt
            .spawn(async move {
                let mut req = reqwest::Request::try_from(request)?;
                if let Some(b) = bearer {
                    req.headers_mut()
                        .insert(reqwest::header::AUTHORIZATION, b.header_value().parse()?);
                }
                let resp = client.execute(req).await?;
                let (status, headers) = (resp.status(), resp.headers().clone());
                let mut out = Response::new(resp.bytes().await?);
                *out.status_mut() = status;
                *out.headers_mut() = headers;
                Ok::<_, HttpError>(out)
            })
            .await?
    }
}

// ---------------------------------------------------------------- bearer token

/// A refreshable bearer token shared by the exporter (read per export).
#[derive(Clone)]
pub struct BearerToken(Arc<RwLock<Arc<str>>>);

impl BearerToken {
    pub fn fixed(token: &str) -> Self {
        BearerToken(Arc::new(RwLock::new(token.into())))
    }
    pub fn set(&self, token: &str) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = token.into();
    }
    fn header_value(&self) -> String {
        format!(
            "Bearer {}",
            self.0.read().unwrap_or_else(|p| p.into_inner())
        )
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

/// Google ADC token for `telemetry.googleapis.com`, refreshed in the background
/// (gcp_auth caches and renews near expiry, so polling it is cheap).
pub async fn gcp_bearer() -> Result<BearerToken, TelemetryError> {
    const SCOPES: &[&str] = &["https://www.googleapis.com/auth/trace.append"];
    let auth =
        |e: gcp_auth::Error| TelemetryError::Exporter(format!("Google credentials for OTLP: {e}"));
    let provider = gcp_auth::provider().await.map_err(auth)?;
    let token = BearerToken::fixed(provider.token(SCOPES).await.map_err(auth)?.as_str());
    let shared = token.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            match provider.token(SCOPES).await {
                Ok(t) => shared.set(t.as_str()),
                Err(e) => tracing::warn!(error = %e, "OTLP bearer token refresh failed"),
            }
        }
    });
    Ok(token)
}
