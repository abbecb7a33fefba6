//! What a protocol is handed to run one session: the admitted session
//! (permit, chain, recording), its deadline, limits and rules, the masker,
//! where credentials come from, the approvals desk, and what may interrupt
//! it. Protocols take this and bytes; they never see HTTP or the service.

use std::sync::Arc;
use std::time::Duration;

use super::approvals::Approvals;
use super::deadline::Deadline;
use super::Session;
use crate::identity::revocation::Revocations;
use crate::mask::Engine;
use crate::policy::decision::Rules;
use crate::recording::ObjectStore;
use crate::secrets::SecretStore;
use crate::wire;

/// `[server]` and `[ssh]` limits a protocol applies.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_inspected: usize,
    pub startup_timeout: Duration,
    pub ping_interval: Duration,
    pub exec_max_rows: usize,
    pub ssh_login_timeout: Duration,
}

/// The masking engine for this principal on this connection.
#[derive(Clone)]
pub enum Masker {
    /// The connection masks nothing, or the principal is exempt.
    Off,
    On(Arc<Engine>),
    /// Masking is configured but could not be set up (its hash key could
    /// not be read): the session must not run unmasked.
    Failed(String),
}

impl Masker {
    pub fn engine(&self) -> Option<&Arc<Engine>> {
        match self {
            Masker::On(e) => Some(e),
            _ => None,
        }
    }
}

/// What ends a running session from outside it.
pub struct Watch {
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    pub revocations: Arc<Revocations>,
    pub store: Arc<dyn ObjectStore>,
}

/// Why a running session was interrupted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interrupt {
    Shutdown,
    Deadline(Deadline),
    Revoked(String),
    Recording(String),
}

impl Interrupt {
    pub fn close_code(&self) -> u16 {
        match self {
            Interrupt::Shutdown => wire::CLOSE_GOING_AWAY,
            Interrupt::Deadline(_) | Interrupt::Revoked(_) => wire::CLOSE_POLICY,
            Interrupt::Recording(_) => wire::CLOSE_ERROR,
        }
    }

    /// The SQLSTATE a PostgreSQL client is told.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Interrupt::Recording(_) => "58000",
            _ => "57P01",
        }
    }

    pub fn reason(&self) -> String {
        match self {
            Interrupt::Shutdown => "the gateway is shutting down (the instance is being stopped); reconnect to continue".into(),
            Interrupt::Deadline(d) => d.reason(),
            Interrupt::Revoked(why) => why.clone(),
            Interrupt::Recording(why) => format!("session ended because recording failed: {why}"),
        }
    }
}

pub struct SessionContext {
    pub session: Session,
    pub deadline: Deadline,
    pub limits: Limits,
    pub rules: Rules,
    pub masker: Masker,
    pub credentials: Arc<SecretStore>,
    pub approvals: Arc<Approvals>,
    pub watch: Watch,
    /// `[telemetry] sqlcommenter`: statements carry the trace context.
    pub sqlcommenter: bool,
}

impl SessionContext {
    /// Resolves when the session must end: shutdown, its deadline, a
    /// revoked hand of its chain, or a recording that failed.
    pub async fn interrupted(&self) -> Interrupt {
        let mut shutdown = self.watch.shutdown.clone();
        let left = self.deadline.left(chrono::Utc::now().timestamp());
        let chain = &self.session.permit.chain;
        tokio::select! {
            _ = shutdown.wait_for(|down| *down) => Interrupt::Shutdown,
            _ = tokio::time::sleep(left) => Interrupt::Deadline(self.deadline),
            why = self.watch.revocations.until_revoked(self.watch.store.as_ref(), chain) => Interrupt::Revoked(why),
            why = self.session.tap().failure() => Interrupt::Recording(why),
        }
    }

    pub fn audit_id(&self) -> &str {
        &self.session.audit_id
    }
}
