//! A session: the permit that allowed it, its audit id and its recording.

pub mod tunnel;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::config::ConnectionConfig;
use crate::policy::Permit;
use crate::recording::{EventBody, RecordError, Recorder, Recording, Tap};

pub struct Session {
    pub audit_id: String,
    pub permit: Permit,
    pub client_addr: Option<String>,
    /// The session's span: a child of the caller's trace, parent of its statements.
    pub span: tracing::Span,
    /// W3C traceparent of the session, for the sqlcommenter comment.
    pub traceparent: Option<String>,
    /// The approved review this session runs a held statement under.
    pub approval: Option<crate::policy::review::Review>,
    recording: Recording,
}

impl Session {
    /// Starts the recording first: a session that cannot be recorded does not run.
    pub async fn start(
        recorder: &Arc<Recorder>,
        audit_id: String,
        permit: Permit,
        mode: &str,
        origin: &crate::ingress::forwarded::Origin,
        trace_id: Option<String>,
        span: tracing::Span,
    ) -> Result<Session, RecordError> {
        span.record("enduser.id", permit.principal.member());
        span.record("custody.granted_by", permit.granted_by.as_str());
        let client_addr = Some(origin.client.to_string());
        span.record("client.address", origin.client.to_string());
        span.record("network.peer.address", origin.peer.ip().to_string());
        span.record("network.peer.port", origin.peer.port());
        let first = EventBody::SessionStart {
            audit_id: audit_id.clone(),
            principal: permit.principal.member(),
            groups: permit.principal.groups.clone(),
            connection: permit.connection.name().to_string(),
            mode: mode.to_string(),
            client_addr: client_addr.clone(),
            peer: Some(origin.peer.to_string()),
            granted_by: Some(permit.granted_by.clone()),
            trace_id,
            chain: if permit.chain.delegated() {
                permit.chain.members()
            } else {
                Vec::new()
            },
            root_audit_id: permit.chain.root_audit_id.clone(),
        };
        if permit.chain.delegated() {
            span.record("custody.chain", permit.chain.render());
            span.record("custody.originator", permit.chain.originator.member());
            if let Some(root) = &permit.chain.root_audit_id {
                span.record("custody.root_audit_id", root.as_str());
            }
        }
        let trace = crate::telemetry::SessionTrace::of(&span, &audit_id);
        let recording = Recording::start(recorder, &audit_id, first, trace).await?;
        tracing::info!(
            target: "custody::audit",
            audit_id = %audit_id,
            principal = %permit.principal.member(),
            connection = %permit.connection.name(),
            mode,
            "session started"
        );
        Ok(Session {
            audit_id,
            permit,
            client_addr,
            span,
            traceparent: None,
            approval: None,
            recording,
        })
    }

    pub fn tap(&self) -> &Tap {
        &self.recording.tap
    }

    /// Seals the recording; Err when it could not be completed (callers that
    /// still hold results must not release them).
    pub async fn finish(self, end: EventBody) -> Result<(), RecordError> {
        if let EventBody::SessionEnd {
            reason,
            statements,
            rows,
            ..
        } = &end
        {
            tracing::info!(target: "custody::audit", audit_id = %self.audit_id, reason = %reason, statements, rows, "session ended");
            self.span.record("custody.reason", reason.as_str());
            self.span.record("custody.statements", statements);
            self.span.record("custody.rows", rows);
        }
        let sealed = self.recording.finish(end).await;
        let outcome = if sealed.is_ok() {
            "completed"
        } else {
            "recording_failed"
        };
        self.span.record("custody.outcome", outcome);
        if let Err(e) = &sealed {
            self.span.record("otel.status_code", "ERROR");
            tracing::error!(target: "custody::audit", audit_id = %self.audit_id, error = %e, "recording could not be completed");
        }
        sealed
    }
}

/// Counts live tunnel sessions so shutdown can wait for them to seal.
#[derive(Default)]
pub struct LiveSessions {
    count: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

/// Held for the life of one tunnel session.
pub struct LiveGuard(Arc<LiveSessions>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if self
            .0
            .count
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            == 1
        {
            self.0.idle.notify_waiters();
        }
    }
}

impl LiveSessions {
    pub fn enter(self: &Arc<Self>) -> LiveGuard {
        self.count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        LiveGuard(self.clone())
    }

    pub fn count(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Waits until no session is live, or `limit` passes; returns how many remain.
    pub async fn wait_idle(&self, limit: std::time::Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            // Registered before the check, so a last guard dropping in between is not missed.
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.count() == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.count();
            }
        }
    }
}

/// Where a client's CancelRequest must go. Keys are the ones the gateway
/// handed the client; the upstream's own key never leaves the gateway.
#[derive(Clone)]
pub struct CancelTarget {
    pub connection: Arc<ConnectionConfig>,
    pub pid: i32,
    pub key: i32,
    pub principal: String,
    pub audit_id: String,
}

#[derive(Default)]
pub struct CancelRegistry {
    map: Mutex<HashMap<(i32, i32), CancelTarget>>,
}

/// Removes its entry when the session ends.
pub struct CancelKey {
    registry: Arc<CancelRegistry>,
    pub pid: i32,
    pub key: i32,
}

impl Drop for CancelKey {
    fn drop(&mut self) {
        if let Ok(mut m) = self.registry.map.lock() {
            m.remove(&(self.pid, self.key));
        }
    }
}

impl CancelRegistry {
    pub fn register(self: &Arc<Self>, target: CancelTarget) -> CancelKey {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let (pid, key) = (rand::random::<i32>() & 0x7fff_ffff, rand::random::<i32>());
            if let std::collections::hash_map::Entry::Vacant(v) = map.entry((pid, key)) {
                v.insert(target);
                return CancelKey {
                    registry: self.clone(),
                    pid,
                    key,
                };
            }
        }
    }

    pub fn lookup(&self, pid: i32, key: i32) -> Option<CancelTarget> {
        self.map.lock().ok()?.get(&(pid, key)).cloned()
    }
}
