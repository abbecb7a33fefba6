//! `gs://BUCKET/PREFIX` through Google's official client. Objects are
//! created with `ifGenerationMatch=0` (never replaced) and a stated CRC32C,
//! so GCS rejects a corrupted upload. Listing uses the JSON API directly:
//! the crate's list call is gRPC-only and emulators do not speak it.

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use google_cloud_auth::credentials::{self, CacheableResource, Credentials};
use google_cloud_gax::exponential_backoff::ExponentialBackoffBuilder;
use google_cloud_gax::retry_policy::RetryPolicyExt as _;
use google_cloud_storage::client::Storage;
use google_cloud_storage::retry_policy::RetryableErrors;

use super::store::ObjectStore;
use super::RecordError;

const GOOGLE: &str = "https://storage.googleapis.com";
/// The client's own retries stop here; the recorder retries until its grace.
const CALL_LIMIT: Duration = Duration::from_secs(20);
/// Store calls in flight at once (each holds an HTTP connection and the
/// client's request state). Waiting for a slot does not count against a
/// call's limit.
const IN_FLIGHT: usize = 32;

pub struct GcsStore {
    client: Storage,
    http: reqwest::Client,
    credentials: Credentials,
    endpoint: String,
    bucket: String,
    prefix: String,
    in_flight: tokio::sync::Semaphore,
}

/// `[recording] endpoint`, else `STORAGE_EMULATOR_HOST` (as Google's other
/// client libraries read it: `host:port` or a URL), else Google.
fn resolve_endpoint(configured: Option<&str>) -> String {
    let chosen = configured
        .map(str::to_string)
        .or_else(|| std::env::var("STORAGE_EMULATOR_HOST").ok())
        .filter(|s| !s.trim().is_empty());
    match chosen {
        Some(e) if e.contains("://") => e.trim_end_matches('/').to_string(),
        Some(e) => format!("http://{}", e.trim_end_matches('/')),
        None => GOOGLE.to_string(),
    }
}

fn gcs_err(op: &str, what: &str, e: impl std::fmt::Display) -> RecordError {
    RecordError::Gcs(format!("{op} {what}: {e}"))
}

/// Waits for one of the `IN_FLIGHT` slots.
async fn slot<'s>(
    slots: &'s tokio::sync::Semaphore,
    op: &str,
    what: &str,
) -> Result<tokio::sync::SemaphorePermit<'s>, RecordError> {
    slots.acquire().await.map_err(|e| gcs_err(op, what, e))
}

/// Runs one store call in a free slot, within `CALL_LIMIT`. The call's
/// future (the client's whole request state, about 64 KiB) is built and
/// boxed only once the slot is free: 1000 sessions flushing together held
/// 64 MiB while they waited.
async fn bounded<'a, T, F>(
    slots: &tokio::sync::Semaphore,
    op: &str,
    what: &str,
    call: impl FnOnce() -> F,
) -> Result<T, RecordError>
where
    F: std::future::Future<Output = Result<T, RecordError>> + Send + 'a,
{
    let _slot = slot(slots, op, what).await?;
    let fut: BoxFuture<'a, Result<T, RecordError>> = Box::pin(call());
    tokio::time::timeout(CALL_LIMIT, fut)
        .await
        .unwrap_or_else(|_| Err(gcs_err(op, what, format!("no answer in {CALL_LIMIT:?}"))))
}

impl GcsStore {
    pub async fn new(
        bucket: &str,
        prefix: &str,
        endpoint: Option<&str>,
    ) -> Result<GcsStore, RecordError> {
        let endpoint = resolve_endpoint(endpoint);
        // Plain http is only ever an emulator: no credentials to send it.
        let credentials = if endpoint.starts_with("http://") {
            credentials::anonymous::Builder::new().build()
        } else {
            credentials::Builder::default()
                .build()
                .map_err(|e| gcs_err("credentials for", &format!("gs://{bucket}"), e))?
        };
        let backoff = ExponentialBackoffBuilder::new()
            .with_initial_delay(Duration::from_millis(100))
            .with_maximum_delay(Duration::from_secs(2))
            .with_scaling(2.0)
            .build()
            .map_err(|e| gcs_err("backoff for", bucket, e))?;
        let client = Storage::builder()
            .with_endpoint(&endpoint)
            .with_credentials(credentials.clone())
            .with_retry_policy(
                RetryableErrors
                    .with_attempt_limit(3)
                    .with_time_limit(Duration::from_secs(10)),
            )
            .with_backoff_policy(backoff)
            .build()
            .await
            .map_err(|e| gcs_err("client for", &format!("gs://{bucket}"), e))?;
        Ok(GcsStore {
            client,
            http: reqwest::Client::builder()
                .timeout(CALL_LIMIT)
                .build()
                .map_err(|e| gcs_err("HTTP client for", bucket, e))?,
            credentials,
            endpoint,
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            in_flight: tokio::sync::Semaphore::new(IN_FLIGHT),
        })
    }

    fn name(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    fn bucket_path(&self) -> String {
        format!("projects/_/buckets/{}", self.bucket)
    }

    async fn auth_headers(&self) -> Result<reqwest::header::HeaderMap, RecordError> {
        match self.credentials.headers(http::Extensions::new()).await {
            Ok(CacheableResource::New { data, .. }) => Ok(data),
            Ok(CacheableResource::NotModified) => Ok(Default::default()),
            Err(e) => Err(gcs_err("credentials for", &self.bucket, e)),
        }
    }
}

impl GcsStore {
    /// Objects and sub-folders directly under `dir`, as keys relative to the
    /// prefix; with `nested`, every object under `dir` at any depth (no folders).
    async fn list_json(
        &self,
        dir: &str,
        nested: bool,
    ) -> Result<(Vec<String>, Vec<String>), RecordError> {
        let full = self.name(dir);
        let what = format!("gs://{}/{full}", self.bucket);
        let _slot = slot(&self.in_flight, "list", &what).await?;
        let strip = self.name("");
        let rel = |n: String| n.strip_prefix(&strip).map(str::to_string);
        let (mut keys, mut dirs) = (Vec::new(), Vec::new());
        let mut page: Option<String> = None;
        loop {
            let mut query = vec![
                ("prefix", full.clone()),
                ("fields", "items(name),prefixes,nextPageToken".to_string()),
            ];
            if !nested {
                query.push(("delimiter", "/".to_string()));
            }
            if let Some(t) = &page {
                query.push(("pageToken", t.clone()));
            }
            let url = format!("{}/storage/v1/b/{}/o", self.endpoint, self.bucket);
            let resp = self
                .http
                .get(url)
                .headers(self.auth_headers().await?)
                .query(&query)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|e| gcs_err("list", &what, e))?;
            let body: ListPage = resp.json().await.map_err(|e| gcs_err("list", &what, e))?;
            keys.extend(body.items.into_iter().filter_map(|i| rel(i.name)));
            dirs.extend(body.prefixes.into_iter().filter_map(rel));
            match body.next_page_token {
                Some(t) if !t.is_empty() => page = Some(t),
                _ => break,
            }
        }
        keys.sort();
        dirs.sort();
        Ok((keys, dirs))
    }
}

#[derive(serde::Deserialize)]
struct ListPage {
    #[serde(default)]
    items: Vec<ListItem>,
    #[serde(default)]
    prefixes: Vec<String>,
    #[serde(rename = "nextPageToken")]
    next_page_token: Option<String>,
}

#[derive(serde::Deserialize)]
struct ListItem {
    name: String,
}

impl ObjectStore for GcsStore {
    fn create<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFuture<'a, Result<(), RecordError>> {
        Box::pin(async move {
            let name = self.name(key);
            let what = format!("gs://{}/{name}", self.bucket);
            bounded(&self.in_flight, "write", &what, || async {
                let crc = crc32c::crc32c(&data);
                let res = self
                    .client
                    .write_object(self.bucket_path(), &name, data)
                    .with_known_crc32c(crc)
                    .set_if_generation_match(0_i64)
                    .send_unbuffered()
                    .await;
                match res {
                    Ok(_) => Ok(()),
                    Err(e) if e.http_status_code() == Some(412) => {
                        Err(RecordError::Exists(key.to_string()))
                    }
                    Err(e) => Err(gcs_err("write", &what, e)),
                }
            })
            .await
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Vec<u8>, RecordError>> {
        Box::pin(async move {
            let name = self.name(key);
            let what = format!("gs://{}/{name}", self.bucket);
            bounded(&self.in_flight, "read", &what, || async {
                let mut resp = match self
                    .client
                    .read_object(self.bucket_path(), &name)
                    .send()
                    .await
                {
                    Ok(r) => r,
                    Err(e) if e.http_status_code() == Some(404) => {
                        return Err(RecordError::NotFound(what.clone()))
                    }
                    Err(e) => return Err(gcs_err("read", &what, e)),
                };
                let mut buf = Vec::new();
                while let Some(chunk) = resp.next().await {
                    let chunk = chunk.map_err(|e| gcs_err("read", &what, e))?;
                    buf.extend_from_slice(&chunk);
                }
                Ok(buf)
            })
            .await
        })
    }

    fn list<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, Result<Vec<String>, RecordError>> {
        Box::pin(async move { Ok(self.list_json(dir, false).await?.0) })
    }

    fn list_dirs<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, Result<Vec<String>, RecordError>> {
        Box::pin(async move { Ok(self.list_json(dir, false).await?.1) })
    }

    fn list_all<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, Result<Vec<String>, RecordError>> {
        Box::pin(async move { Ok(self.list_json(dir, true).await?.0) })
    }

    fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("gs://{}", self.bucket)
        } else {
            format!("gs://{}/{}", self.bucket, self.prefix)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emulator_host_as_other_google_libraries_read_it() {
        assert_eq!(
            resolve_endpoint(Some("http://127.0.0.3/")),
            "http://127.0.0.3"
        );
        assert_eq!(
            resolve_endpoint(Some("127.0.0.3:80")),
            "http://127.0.0.3:80"
        );
    }
}
