//! A session: the permit that allowed it, its audit id and its recording;
//! and what a protocol is handed to run it (`context`).

pub mod approvals;
pub mod context;
pub mod deadline;
pub mod live;
pub mod tunnel;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::policy::Permit;
use crate::recording::{EventBody, RecordError, Recorder, Recording, Tap};

pub use context::{Interrupt, Limits, Masker, SessionContext};

/// The two addresses every session records.
#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    /// The TCP peer, as the socket reports it.
    pub peer: SocketAddr,
    /// The client: the peer's IP, or the first untrusted hop of a trusted
    /// proxy chain.
    pub client: IpAddr,
}

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
        origin: &Origin,
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
            principal_id: Some(permit.principal.id()),
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
