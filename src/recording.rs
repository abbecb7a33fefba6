//! Session recording: the relay taps events into a bounded queue; one writer
//! task per session drains it into a `Store`. A session whose recording
//! cannot start does not run, and one whose writer fails is ended.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("recording store {0:?} is not supported: use file://DIR")]
    Unsupported(String),
    #[error("recording store I/O on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("no recording {0} in the store")]
    NotFound(String),
    #[error("recording {0} has a malformed line {1}: {2}")]
    Corrupt(String, usize, String),
    #[error("the recording writer stopped: {0}")]
    Stopped(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub ts: DateTime<Utc>,
    #[serde(flatten)]
    pub body: EventBody,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatementError {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventBody {
    SessionStart {
        audit_id: String,
        principal: String,
        #[serde(default)]
        groups: Vec<String>,
        connection: String,
        mode: String,
        client_addr: Option<String>,
        granted_by: Option<String>,
        /// W3C trace id of the caller's trace (traceparent / X-Cloud-Trace-Context).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trace_id: Option<String>,
    },
    Statement {
        sql: String,
        protocol: String,
        tags: Vec<String>,
        rows: u64,
        error: Option<StatementError>,
        duration_ms: f64,
        /// Values masked on the way to the client, per detector or column rule.
        #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        masked: std::collections::BTreeMap<String, u64>,
    },
    Cancel {
        outcome: String,
    },
    /// A statement guardrails refused; it never reached the upstream.
    Guardrail {
        sql: String,
        protocol: String,
        rule: String,
        outcome: String,
    },
    Refused {
        reason: String,
    },
    Error {
        message: String,
    },
    SessionEnd {
        reason: String,
        statements: u64,
        rows: u64,
        bytes_from_client: u64,
        bytes_to_client: u64,
    },
}

/// Where recordings live. New sinks (GCS) implement this; the relay never changes.
pub trait Store: Send + Sync {
    fn open<'a>(&'a self, audit_id: &'a str)
        -> BoxFuture<'a, Result<Box<dyn Writer>, RecordError>>;
    fn read<'a>(&'a self, audit_id: &'a str) -> BoxFuture<'a, Result<Vec<u8>, RecordError>>;
    /// A cheap write that proves the store accepts data (readiness).
    fn probe(&self) -> BoxFuture<'_, Result<(), RecordError>>;
}

pub trait Writer: Send {
    fn append<'a>(&'a mut self, bytes: &'a [u8]) -> BoxFuture<'a, Result<(), RecordError>>;
    fn close(self: Box<Self>) -> BoxFuture<'static, Result<(), RecordError>>;
}

pub fn open_store(url: &str) -> Result<Arc<dyn Store>, RecordError> {
    match url.strip_prefix("file://") {
        Some(dir) if !dir.is_empty() => Ok(Arc::new(FileStore {
            dir: PathBuf::from(dir),
        })),
        _ => Err(RecordError::Unsupported(url.to_string())),
    }
}

/// One JSON Lines file per audit id under a directory.
pub struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    fn path(&self, audit_id: &str) -> PathBuf {
        self.dir.join(format!("{audit_id}.jsonl"))
    }
    fn io(&self, source: std::io::Error) -> RecordError {
        RecordError::Io {
            path: self.dir.display().to_string(),
            source,
        }
    }
}

/// Appends go straight to the page cache with a plain write: a few
/// microseconds, cheaper than a blocking-pool round trip per batch.
struct FileWriter {
    file: std::fs::File,
    path: String,
}

impl Store for FileStore {
    fn open<'a>(
        &'a self,
        audit_id: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn Writer>, RecordError>> {
        Box::pin(async move {
            tokio::fs::create_dir_all(&self.dir)
                .await
                .map_err(|e| self.io(e))?;
            let path = self.path(audit_id);
            let file = std::fs::OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)
                .map_err(|e| self.io(e))?;
            Ok(Box::new(FileWriter {
                file,
                path: path.display().to_string(),
            }) as Box<dyn Writer>)
        })
    }

    fn read<'a>(&'a self, audit_id: &'a str) -> BoxFuture<'a, Result<Vec<u8>, RecordError>> {
        Box::pin(async move {
            match tokio::fs::read(self.path(audit_id)).await {
                Ok(b) => Ok(b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(RecordError::NotFound(audit_id.to_string()))
                }
                Err(e) => Err(self.io(e)),
            }
        })
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), RecordError>> {
        Box::pin(async move {
            tokio::fs::create_dir_all(&self.dir)
                .await
                .map_err(|e| self.io(e))?;
            let p = self.dir.join(".custody-probe");
            tokio::fs::write(&p, b"ok").await.map_err(|e| self.io(e))
        })
    }
}

impl Writer for FileWriter {
    fn append<'a>(&'a mut self, bytes: &'a [u8]) -> BoxFuture<'a, Result<(), RecordError>> {
        Box::pin(async move {
            std::io::Write::write_all(&mut self.file, bytes).map_err(|source| RecordError::Io {
                path: self.path.clone(),
                source,
            })
        })
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, Result<(), RecordError>> {
        Box::pin(async move {
            let path = self.path.clone();
            tokio::task::spawn_blocking(move || self.file.sync_all())
                .await
                .map_err(|e| RecordError::Stopped(e.to_string()))?
                .map_err(|source| RecordError::Io { path, source })
        })
    }
}

/// The relay's handle: cheap to clone, waits (back-pressure) when the queue is full.
#[derive(Clone)]
pub struct Tap {
    tx: mpsc::Sender<(DateTime<Utc>, EventBody)>,
    failed: watch::Receiver<Option<String>>,
}

impl Tap {
    pub async fn record(&self, body: EventBody) -> Result<(), RecordError> {
        self.tx
            .send((Utc::now(), body))
            .await
            .map_err(|_| RecordError::Stopped(self.failed.borrow().clone().unwrap_or_default()))
    }

    /// Resolves when the writer fails, so the relay can end the session.
    pub async fn failure(&self) -> String {
        let mut rx = self.failed.clone();
        loop {
            if let Some(why) = rx.borrow_and_update().clone() {
                return why;
            }
            if rx.changed().await.is_err() {
                // Writer finished normally; park forever.
                std::future::pending::<()>().await;
            }
        }
    }
}

pub struct Recording {
    pub tap: Tap,
    task: tokio::task::JoinHandle<Result<(), RecordError>>,
}

impl Recording {
    /// Opens the record and durably writes its first event before returning,
    /// so a caller refused here never reaches the upstream.
    pub async fn start(
        store: &Arc<dyn Store>,
        audit_id: &str,
        first: EventBody,
        queue: usize,
    ) -> Result<Recording, RecordError> {
        let mut writer = store.open(audit_id).await?;
        let mut line = Vec::with_capacity(256);
        encode(&mut line, 0, Utc::now(), &first);
        writer.append(&line).await?;
        let (tx, rx) = mpsc::channel(queue.max(1));
        let (fail_tx, fail_rx) = watch::channel(None);
        let task = tokio::spawn(write_loop(writer, rx, fail_tx));
        Ok(Recording {
            tap: Tap {
                tx,
                failed: fail_rx,
            },
            task,
        })
    }

    /// Records the final event, flushes and closes the record.
    pub async fn finish(self, last: EventBody) -> Result<(), RecordError> {
        let sent = self.tap.record(last).await;
        drop(self.tap);
        let done = self
            .task
            .await
            .map_err(|e| RecordError::Stopped(e.to_string()))?;
        sent.and(done)
    }
}

const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(5);

async fn write_loop(
    mut writer: Box<dyn Writer>,
    mut rx: mpsc::Receiver<(DateTime<Utc>, EventBody)>,
    failed: watch::Sender<Option<String>>,
) -> Result<(), RecordError> {
    let mut seq = 1;
    let mut buf = Vec::with_capacity(8192);
    while let Some((ts, body)) = rx.recv().await {
        buf.clear();
        encode(&mut buf, seq, ts, &body);
        seq += 1;
        // Batch whatever else is already queued into the same write.
        while buf.len() < 256 * 1024 {
            match rx.try_recv() {
                Ok((ts, body)) => {
                    encode(&mut buf, seq, ts, &body);
                    seq += 1;
                }
                Err(_) => break,
            }
        }
        if let Err(e) = writer.append(&buf).await {
            let _ = failed.send(Some(e.to_string()));
            return Err(e);
        }
        // Let a busy session's events pile up into the next write: one write
        // per window instead of one per statement. A crash loses at most this.
        tokio::time::sleep(BATCH_WINDOW).await;
    }
    let closed = writer.close().await;
    if let Err(e) = &closed {
        let _ = failed.send(Some(e.to_string()));
    }
    closed
}

/// `Event` by reference, so encoding never clones a statement's SQL.
#[derive(Serialize)]
struct EventRef<'a> {
    seq: u64,
    ts: DateTime<Utc>,
    #[serde(flatten)]
    body: &'a EventBody,
}

fn encode(buf: &mut Vec<u8>, seq: u64, ts: DateTime<Utc>, body: &EventBody) {
    let ev = EventRef { seq, ts, body };
    // Serializing our own enum into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, &ev);
    buf.push(b'\n');
}

pub fn parse(audit_id: &str, bytes: &[u8]) -> Result<Vec<Event>, RecordError> {
    bytes
        .split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
        .map(|(i, l)| {
            serde_json::from_slice(l)
                .map_err(|e| RecordError::Corrupt(audit_id.to_string(), i + 1, e.to_string()))
        })
        .collect()
}

/// Human-readable replay of one record.
pub fn render(events: &[Event]) -> String {
    let mut out = String::new();
    for ev in events {
        let ts = ev.ts.format("%Y-%m-%d %H:%M:%S%.3f");
        let _ = match &ev.body {
            EventBody::SessionStart {
                audit_id,
                principal,
                connection,
                mode,
                client_addr,
                granted_by,
                ..
            } => writeln!(
                out,
                "{ts}  session {audit_id}: {principal} → {connection} ({mode}) from {} granted by {}",
                client_addr.as_deref().unwrap_or("?"),
                granted_by.as_deref().unwrap_or("-")
            ),
            EventBody::Statement {
                sql,
                protocol,
                tags,
                rows,
                error,
                duration_ms,
                masked,
            } => {
                let mut outcome = match error {
                    Some(e) => format!("ERROR {} {}", e.code, e.message),
                    None => format!("{} ({rows} rows)", tags.join(", ")),
                };
                if !masked.is_empty() {
                    let m: Vec<String> = masked.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    outcome.push_str(&format!(" masked {}", m.join(" ")));
                }
                writeln!(
                    out,
                    "{ts}  [{protocol}] {}\n{:25}→ {outcome}  {duration_ms:.1} ms",
                    sql.trim(),
                    ""
                )
            }
            EventBody::Cancel { outcome } => writeln!(out, "{ts}  cancel request: {outcome}"),
            EventBody::Guardrail {
                sql,
                protocol,
                rule,
                outcome,
            } => writeln!(
                out,
                "{ts}  [{protocol}] {}\n{:25}→ BLOCKED by guardrail {rule} ({outcome})",
                sql.trim(),
                ""
            ),
            EventBody::Refused { reason } => writeln!(out, "{ts}  REFUSED: {reason}"),
            EventBody::Error { message } => writeln!(out, "{ts}  error: {message}"),
            EventBody::SessionEnd {
                reason,
                statements,
                rows,
                bytes_from_client,
                bytes_to_client,
            } => writeln!(
                out,
                "{ts}  session ended: {reason}; {statements} statements, {rows} rows, {bytes_from_client} bytes in, {bytes_to_client} bytes out"
            ),
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_in_order_and_replays() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(&format!("file://{}", dir.path().display())).unwrap();
        let start = EventBody::SessionStart {
            audit_id: "a1".into(),
            principal: "user:alice@example.com".into(),
            groups: vec![],
            connection: "pg".into(),
            mode: "tunnel".into(),
            client_addr: None,
            granted_by: None,
            trace_id: None,
        };
        let rec = Recording::start(&store, "a1", start, 2).await.unwrap();
        for i in 0..10 {
            rec.tap
                .record(EventBody::Error {
                    message: format!("e{i}"),
                })
                .await
                .unwrap();
        }
        rec.finish(EventBody::Refused {
            reason: "end".into(),
        })
        .await
        .unwrap();
        let events = parse("a1", &store.read("a1").await.unwrap()).unwrap();
        assert_eq!(events.len(), 12);
        assert!(events.iter().enumerate().all(|(i, e)| e.seq == i as u64));
        assert!(render(&events).contains("session a1: user:alice@example.com"));
    }

    #[tokio::test]
    async fn unwritable_store_refuses_start() {
        let store = open_store("file:///proc/custody-cannot-write").unwrap();
        let start = EventBody::Refused { reason: "x".into() };
        assert!(Recording::start(&store, "a", start, 1).await.is_err());
    }
}
