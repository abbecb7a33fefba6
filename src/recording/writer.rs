//! The recorder: one writer task per session drains the session's bounded
//! queue into segments. Unwritten bytes of all sessions share one memory
//! budget; when the store is slow or failing, sessions wait on the budget
//! (back-pressure), new sessions are refused, and a session that waits past
//! the grace period is ended because its recording failed. Nothing is
//! dropped silently.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use ed25519_dalek::SigningKey;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::seal::{self, ManifestBody, SegmentEntry, SegmentHeader};
use super::store::{self, ObjectStore};
use super::{encode, Event, EventBody, RecordError};
use crate::config::RecordingConfig;
use crate::telemetry::SessionTrace;

/// Shared by every session of a gateway.
pub struct Recorder {
    pub store: Arc<dyn ObjectStore>,
    signer: Option<SigningKey>,
    budget: Arc<Semaphore>,
    budget_total: usize,
    flush_interval: Duration,
    segment_bytes: usize,
    failure_grace: Duration,
    queue_events: usize,
    /// One probe object per process: the bucket is write-once, so readiness
    /// cannot rewrite a fixed object on every check.
    probed: tokio::sync::OnceCell<()>,
    /// The last write that failed for good, cleared by the next success.
    health: std::sync::Mutex<Option<String>>,
}

impl Recorder {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        signer: Option<SigningKey>,
        cfg: &RecordingConfig,
    ) -> Recorder {
        let total = cfg.memory_budget.clamp(1, Semaphore::MAX_PERMITS);
        Recorder {
            store,
            signer,
            budget: Arc::new(Semaphore::new(total)),
            budget_total: total,
            flush_interval: cfg.flush_interval,
            segment_bytes: cfg.segment_bytes.clamp(1, total),
            failure_grace: cfg.failure_grace,
            queue_events: cfg.queue_events.max(1),
            probed: tokio::sync::OnceCell::new(),
            health: std::sync::Mutex::new(None),
        }
    }

    /// Ready when a probe object could be created once and no write has
    /// failed for good since the last success.
    pub async fn probe(&self) -> Result<(), String> {
        self.probed
            .get_or_try_init(|| async {
                let key = format!("_probes/{}", uuid::Uuid::now_v7());
                let body = Bytes::from_static(b"custody readiness probe\n");
                self.store
                    .create(&key, body)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await?;
        if let Some(e) = self.health.lock().ok().and_then(|h| h.clone()) {
            return Err(format!("last recording write failed: {e}"));
        }
        if self.budget.available_permits() < self.segment_bytes.min(self.budget_total / 4) {
            return Err(RecordError::Backlog(self.buffered() >> 20).to_string());
        }
        Ok(())
    }

    fn set_health(&self, failure: Option<String>) {
        if let Ok(mut h) = self.health.lock() {
            *h = failure;
        }
    }

    /// Unwritten recording bytes held by all sessions right now.
    pub fn buffered(&self) -> usize {
        self.budget_total - self.budget.available_permits()
    }

    /// The public half of the key recordings are sealed with.
    pub fn verifying_key(&self) -> Option<ed25519_dalek::VerifyingKey> {
        self.signer.as_ref().map(SigningKey::verifying_key)
    }

    pub fn signer_id(&self) -> Option<String> {
        self.signer
            .as_ref()
            .map(|k| seal::key_id(&k.verifying_key()))
    }

    /// Creates an object, retrying transient failures until `deadline`. A
    /// retry that finds the object already there means an earlier attempt
    /// landed without its answer reaching us.
    async fn put(&self, key: &str, data: Bytes, deadline: Instant) -> Result<(), RecordError> {
        let mut pause = Duration::from_millis(100);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.store.create(key, data.clone()).await {
                Ok(()) => {
                    self.set_health(None);
                    return Ok(());
                }
                Err(RecordError::Exists(_)) if attempt > 1 => return Ok(()),
                Err(e @ RecordError::Exists(_)) => return Err(e),
                Err(e) if Instant::now() + pause >= deadline => {
                    self.set_health(Some(e.to_string()));
                    return Err(e);
                }
                Err(e) => {
                    tracing::warn!(key, attempt, error = %e, "recording write failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// The relay's handle: cheap to clone, waits (back-pressure) when the queue is full.
#[derive(Clone)]
pub struct Tap {
    tx: mpsc::Sender<(DateTime<Utc>, EventBody)>,
    /// Wakes the writer early (queue half full, or the session ending);
    /// otherwise events wait for the flush clock without a wake-up each.
    drain: Arc<tokio::sync::Notify>,
    /// Estimated bytes queued but not yet in the budget; past `drain_at`
    /// the writer is woken, so memory outside the budget stays small.
    queued: Arc<AtomicUsize>,
    drain_at: usize,
    failed: watch::Receiver<Option<String>>,
    /// Statement spans, when spans are exported.
    trace: Option<SessionTrace>,
}

impl Tap {
    pub async fn record(&self, body: EventBody) -> Result<(), RecordError> {
        let now = Utc::now();
        if let Some(t) = &self.trace {
            t.event(now, &body);
        }
        let body_size = queued_size(&body);
        self.tx
            .send((now, body))
            .await
            .map_err(|_| RecordError::Stopped(self.failed.borrow().clone().unwrap_or_default()))?;
        let queued = self.queued.fetch_add(body_size, Relaxed) + body_size;
        if queued >= self.drain_at || self.tx.capacity() < self.tx.max_capacity() / 2 {
            self.drain.notify_one();
        }
        Ok(())
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
    /// Writes segment 1 (the first event) before returning, so a caller
    /// refused here never reaches the upstream.
    pub async fn start(
        rec: &Arc<Recorder>,
        audit_id: &str,
        first: EventBody,
        trace: Option<SessionTrace>,
    ) -> Result<Recording, RecordError> {
        store::check_id(audit_id)?;
        // Leave room for one full segment: below that, the store is not
        // keeping up and a new session would only add to the backlog.
        let reserve = rec.segment_bytes.min(rec.budget_total / 4);
        if rec.budget.available_permits() < reserve {
            return Err(RecordError::Backlog(rec.buffered() >> 20));
        }
        let mut log = SegmentLog::new(audit_id);
        let mut buf = Vec::with_capacity(512);
        let ts = Utc::now();
        log.observe(0, ts, &first);
        encode(&mut buf, 0, ts, &first);
        log.next_seq = 1;
        let deadline = Instant::now() + rec.failure_grace.min(Duration::from_secs(10));
        log.write_segment(rec, &buf, 1, deadline).await?;
        let (tx, rx) = mpsc::channel(rec.queue_events);
        let (fail_tx, fail_rx) = watch::channel(None);
        let drain = Arc::new(tokio::sync::Notify::new());
        let queued = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(write_loop(
            rec.clone(),
            log,
            (rx, drain.clone(), queued.clone()),
            fail_tx,
        ));
        Ok(Recording {
            tap: Tap {
                tx,
                drain,
                queued,
                drain_at: (rec.budget_total / 64).clamp(256, 16 << 10),
                failed: fail_rx,
                trace,
            },
            task,
        })
    }

    /// Records the final event, writes the last segment and the signed manifest.
    pub async fn finish(self, last: EventBody) -> Result<(), RecordError> {
        let sent = self.tap.record(last).await;
        let drain = self.tap.drain.clone();
        drop(self.tap);
        drain.notify_one();
        let done = self
            .task
            .await
            .map_err(|e| RecordError::Stopped(e.to_string()))?;
        sent.and(done)
    }
}

/// The chain so far: what the next segment and the manifest need.
struct SegmentLog {
    audit_id: String,
    next_segment: u32,
    prev: Option<String>,
    entries: Vec<SegmentEntry>,
    next_seq: u64,
    /// seq of the first event not yet in a written segment.
    unwritten_from: u64,
    start: Option<Event>,
    end: Option<Event>,
}

impl SegmentLog {
    fn new(audit_id: &str) -> SegmentLog {
        SegmentLog {
            audit_id: audit_id.to_string(),
            next_segment: 1,
            prev: None,
            entries: Vec::new(),
            next_seq: 0,
            unwritten_from: 0,
            start: None,
            end: None,
        }
    }

    /// Keeps the summary events for the manifest.
    fn observe(&mut self, seq: u64, ts: DateTime<Utc>, body: &EventBody) {
        let keep = || {
            Some(Event {
                seq,
                ts,
                body: body.clone(),
            })
        };
        match body {
            EventBody::SessionStart { .. } => self.start = keep(),
            EventBody::SessionEnd { .. } => self.end = keep(),
            _ => {}
        }
    }

    async fn write_segment(
        &mut self,
        rec: &Recorder,
        events: &[u8],
        count: u64,
        deadline: Instant,
    ) -> Result<(), RecordError> {
        let n = self.next_segment;
        let header = SegmentHeader {
            format: seal::FORMAT.into(),
            audit_id: self.audit_id.clone(),
            segment: n,
            first_seq: self.unwritten_from,
            prev_sha256: self.prev.clone(),
        };
        let mut object = seal::header_line(&header);
        object.extend_from_slice(events);
        let hash = seal::sha256_hex(&object);
        let len = object.len() as u64;
        rec.put(
            &store::segment_key(&self.audit_id, n),
            Bytes::from(object),
            deadline,
        )
        .await?;
        self.entries.push(SegmentEntry {
            segment: n,
            sha256: hash.clone(),
            bytes: len,
            events: count,
        });
        self.prev = Some(hash);
        self.next_segment += 1;
        self.unwritten_from += count;
        Ok(())
    }

    async fn seal(&self, rec: &Recorder, deadline: Instant) -> Result<(), RecordError> {
        let body = ManifestBody {
            format: seal::FORMAT.into(),
            audit_id: self.audit_id.clone(),
            segments: self.entries.clone(),
            events: self.next_seq,
            sealed_at: Utc::now(),
            start: self.start.clone(),
            end: self.end.clone(),
        };
        let bytes = seal::manifest(&body, rec.signer.as_ref());
        rec.put(
            &store::manifest_key(&self.audit_id),
            Bytes::from(bytes),
            deadline,
        )
        .await
    }
}

/// Events encoded but not yet written, with the budget they hold.
struct Pending {
    buf: Vec<u8>,
    events: u64,
    held: Option<OwnedSemaphorePermit>,
    due: Option<Instant>,
}

async fn write_loop(
    rec: Arc<Recorder>,
    mut log: SegmentLog,
    (mut rx, drain, queued): (Queue, Arc<tokio::sync::Notify>, Arc<AtomicUsize>),
    failed: watch::Sender<Option<String>>,
) -> Result<(), RecordError> {
    let mut p = Pending {
        buf: Vec::new(),
        events: 0,
        held: None,
        due: None,
    };
    let result = run(&rec, &mut log, (&mut rx, &drain, &queued), &mut p).await;
    if let Err(e) = &result {
        tracing::error!(target: "custody::audit", audit_id = %log.audit_id, error = %e, "recording failed; the session is ended");
        let _ = failed.send(Some(e.to_string()));
    }
    result
}

type Queue = mpsc::Receiver<(DateTime<Utc>, EventBody)>;

async fn run(
    rec: &Recorder,
    log: &mut SegmentLog,
    (rx, drain, queued): (&mut Queue, &tokio::sync::Notify, &AtomicUsize),
    p: &mut Pending,
) -> Result<(), RecordError> {
    loop {
        let Some(due) = p.due else {
            // Idle: the first event wakes us and starts the flush clock.
            match rx.recv().await {
                Some(ev) => take(rec, log, p, queued, ev).await?,
                None => return close(rec, log, p).await,
            }
            continue;
        };
        // Events arriving now queue up without waking us one by one (a
        // wake-up per statement costs the relay latency on shared cores);
        // they are taken when the flush is due or a tap says to.
        let due_now = tokio::select! {
            _ = tokio::time::sleep_until(due) => true,
            _ = drain.notified() => false,
        };
        loop {
            match rx.try_recv() {
                Ok(ev) => take(rec, log, p, queued, ev).await?,
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return close(rec, log, p).await,
            }
        }
        if due_now {
            flush(rec, log, p).await?;
        }
    }
}

async fn take(
    rec: &Recorder,
    log: &mut SegmentLog,
    p: &mut Pending,
    queued: &AtomicUsize,
    (ts, body): (DateTime<Utc>, EventBody),
) -> Result<(), RecordError> {
    queued.fetch_sub(queued_size(&body), Relaxed);
    let before = p.buf.len();
    let seq = log.next_seq;
    log.observe(seq, ts, &body);
    encode(&mut p.buf, seq, ts, &body);
    log.next_seq += 1;
    p.events += 1;
    p.due
        .get_or_insert_with(|| Instant::now() + rec.flush_interval);
    reserve(rec, log, p, p.buf.len() - before).await?;
    if p.buf.len() >= rec.segment_bytes {
        flush(rec, log, p).await?;
    }
    Ok(())
}

/// A cheap estimate of an event's encoded size (no encoding on the relay's path).
fn queued_size(body: &EventBody) -> usize {
    match body {
        EventBody::Output { data, .. } | EventBody::Input { data, .. } => data.len() + 96,
        EventBody::Statement { sql, .. } | EventBody::Guardrail { sql, .. } => sql.len() + 192,
        _ => 256,
    }
}

async fn close(rec: &Recorder, log: &mut SegmentLog, p: &mut Pending) -> Result<(), RecordError> {
    flush(rec, log, p).await?;
    log.seal(rec, Instant::now() + rec.failure_grace).await
}

/// Takes `n` bytes of the shared budget. When the budget is short this
/// session writes what it holds instead of waiting on others, so sessions
/// never wait on each other's buffers; only the store's pace holds them back.
async fn reserve(
    rec: &Recorder,
    log: &mut SegmentLog,
    p: &mut Pending,
    n: usize,
) -> Result<(), RecordError> {
    let n = u32::try_from(n.min(rec.budget_total)).unwrap_or(u32::MAX);
    match rec.budget.clone().try_acquire_many_owned(n) {
        Ok(permit) => {
            match &mut p.held {
                Some(held) => held.merge(permit),
                None => p.held = Some(permit),
            }
            Ok(())
        }
        Err(_) => flush(rec, log, p).await,
    }
}

async fn flush(rec: &Recorder, log: &mut SegmentLog, p: &mut Pending) -> Result<(), RecordError> {
    if p.events == 0 {
        return Ok(());
    }
    let deadline = Instant::now() + rec.failure_grace;
    log.write_segment(rec, &p.buf, p.events, deadline).await?;
    p.buf = Vec::new();
    p.events = 0;
    p.held = None;
    p.due = None;
    Ok(())
}

/// As [`fetch`], for a reader that may not be entitled to it and must not
/// make the gateway hold an unbounded recording: the lowest segment is read
/// first and `entitled` decides from it whether to read on (else NotFound),
/// and past `limit` bytes of manifest and segments it is TooLarge.
pub async fn fetch_for(
    store: &dyn ObjectStore,
    audit_id: &str,
    limit: usize,
    entitled: impl Fn(&super::verify::Fetched) -> bool,
) -> Result<super::verify::Fetched, RecordError> {
    use super::verify::{object_kind, ObjectKind};
    store::check_id(audit_id)?;
    let dir = store::record_dir(audit_id);
    let mut rec = super::verify::Fetched {
        audit_id: audit_id.to_string(),
        ..Default::default()
    };
    let not_found =
        || RecordError::NotFound(format!("{audit_id} (looked in {}/{dir})", store.url()));
    let keys = store.list_all(&dir).await?;
    let mut segments: Vec<(u32, &String)> = Vec::new();
    let mut manifest = None;
    for key in &keys {
        let name = key.strip_prefix(dir.as_str()).unwrap_or(key);
        match object_kind(name) {
            ObjectKind::Manifest => manifest = Some(key),
            ObjectKind::Segment(n) => segments.push((n, key)),
            ObjectKind::Foreign => rec.foreign.push(name.to_string()),
        }
    }
    segments.sort_by_key(|(n, _)| *n);
    if keys.is_empty() {
        return Err(not_found());
    }
    let mut total = 0usize;
    let too_large = || RecordError::TooLarge(audit_id.to_string(), limit >> 20);
    for (i, (n, key)) in segments.iter().enumerate() {
        let data = store.get(key).await?;
        total += data.len();
        rec.segments.push((*n, data));
        // Whose it is comes first: a stranger learns not even its size.
        if i == 0 && !entitled(&rec) {
            return Err(not_found());
        }
        if total > limit {
            return Err(too_large());
        }
    }
    if segments.is_empty() && !entitled(&rec) {
        return Err(not_found());
    }
    if let Some(key) = manifest {
        let data = store.get(key).await?;
        if total + data.len() > limit {
            return Err(too_large());
        }
        rec.manifest = Some(data);
    }
    Ok(rec)
}

/// Everything stored for one audit id, for replay and verify: the manifest
/// and canonically named segments are read; every other object under the
/// recording's prefix, at any depth, is only named (see `verify`).
pub async fn fetch(
    store: &dyn ObjectStore,
    audit_id: &str,
) -> Result<super::verify::Fetched, RecordError> {
    fetch_for(store, audit_id, usize::MAX, |_| true).await
}
