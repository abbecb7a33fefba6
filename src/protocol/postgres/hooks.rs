//! The relay's filters, one per direction. Client → upstream: statements
//! are tracked and checked by guardrails; a refused one never reaches the
//! upstream. Upstream → client: outcomes are paired with statements, and the
//! gateway's own refusals are slotted in where the client expects them.

use std::sync::Mutex;

use bytes::{Bytes, BytesMut};

use super::codec::{self, put_frame};
use super::scanner::Inspect;
use super::tracker::Tracker;
use super::PgError;
use crate::policy::guardrails::{Guardrails, Verdict};
use crate::recording::EventBody;

fn lock(t: &Mutex<Tracker>) -> Result<std::sync::MutexGuard<'_, Tracker>, PgError> {
    t.lock()
        .map_err(|_| PgError::Protocol("statement tracker poisoned".into()))
}

pub struct ClientHook<'a> {
    pub tracker: &'a Mutex<Tracker>,
    pub rails: Option<&'a Guardrails>,
    pub audit_id: &'a str,
    pub terminated: bool,
    /// A refusal was queued: the upstream side must look at the queue.
    pub blocked: bool,
    /// Guardrail decisions to record.
    pub events: Vec<EventBody>,
    /// After a refused Parse: the refusal, and everything up to Sync is dropped.
    skipping: Option<Bytes>,
    /// Whether this pipeline segment (since the last Sync) reached the upstream.
    segment_forwarded: bool,
}

impl<'a> ClientHook<'a> {
    pub fn new(
        tracker: &'a Mutex<Tracker>,
        rails: Option<&'a Guardrails>,
        audit_id: &'a str,
    ) -> Self {
        ClientHook {
            tracker,
            rails,
            audit_id,
            terminated: false,
            blocked: false,
            events: Vec::new(),
            skipping: None,
            segment_forwarded: false,
        }
    }

    /// The ErrorResponse for a refused statement, or None when it may run.
    fn refuse(&mut self, sql: &str, protocol: &str) -> Option<BytesMut> {
        let (event, message) = refusal(self.rails?, sql, protocol, self.audit_id)?;
        let mut err = BytesMut::new();
        codec::error_response(&mut err, "ERROR", "42501", &message, None);
        self.events.push(event);
        Some(err)
    }
}

/// Checks `sql`; on refusal, the audit event and the message the client gets
/// (SQLSTATE 42501), naming the rule and the audit id.
pub fn refusal(
    rails: &Guardrails,
    sql: &str,
    protocol: &str,
    audit_id: &str,
) -> Option<(EventBody, String)> {
    let (rule, outcome, message) = match rails.check(sql) {
        Verdict::Allow => return None,
        Verdict::Deny { rule, reason } => {
            let m = format!("custody: statement refused by guardrail \"{rule}\": {reason} (audit id {audit_id})");
            (rule, "denied", m)
        }
        Verdict::NeedsApproval { rule } => {
            let m = format!(
                "custody: this statement requires approval (guardrail \"{rule}\"); approvals are not available yet, so it is refused (audit id {audit_id})"
            );
            (rule, "approval_required", m)
        }
    };
    let event = EventBody::Guardrail {
        sql: sql.to_string(),
        protocol: protocol.into(),
        rule,
        outcome: outcome.into(),
    };
    Some((event, message))
}

impl Inspect for ClientHook<'_> {
    fn wants(&self, tag: u8) -> bool {
        self.skipping.is_some()
            || matches!(
                tag,
                b'Q' | b'P' | b'B' | b'E' | b'C' | b'D' | b'H' | b'S' | b'X' | b'F'
            )
    }

    fn frame(&mut self, tag: u8, body: &[u8], out: &mut BytesMut) -> Result<(), PgError> {
        if let Some(refusal) = self.skipping.clone() {
            if tag == b'S' {
                self.skipping = None;
                let mut t = lock(self.tracker)?;
                if self.segment_forwarded {
                    // Earlier messages of this segment are upstream: their
                    // answers come first, the refusal just before ReadyForQuery.
                    t.on_sync_with(refusal);
                    put_frame(out, tag, body);
                } else {
                    let mut b = BytesMut::from(&refusal[..]);
                    codec::ready_for_query(&mut b, t.status);
                    t.push_blocked(b.freeze());
                    self.blocked = true;
                }
                self.segment_forwarded = false;
            }
            return Ok(());
        }
        match tag {
            b'Q' => {
                let sql = codec::query_sql(body)?;
                if let Some(mut refusal) = self.refuse(sql, "simple") {
                    let mut t = lock(self.tracker)?;
                    codec::ready_for_query(&mut refusal, t.status);
                    t.push_blocked(refusal.freeze());
                    self.blocked = true;
                    return Ok(());
                }
                lock(self.tracker)?.on_query(sql);
            }
            b'P' => {
                let (name, sql) = codec::parse_msg(body)?;
                if let Some(refusal) = self.refuse(sql, "extended") {
                    self.skipping = Some(refusal.freeze());
                    return Ok(());
                }
                lock(self.tracker)?.on_parse(name, sql);
            }
            // A function call by OID cannot be checked: refused when guardrails are on.
            b'F' if self.rails.is_some() => {
                let msg = format!("custody: function calls by OID are refused when guardrails are on (audit id {})", self.audit_id);
                let mut b = BytesMut::new();
                codec::error_response(&mut b, "ERROR", "42501", &msg, None);
                let mut t = lock(self.tracker)?;
                codec::ready_for_query(&mut b, t.status);
                t.push_blocked(b.freeze());
                self.blocked = true;
                return Ok(());
            }
            b'B' => {
                let (portal, stmt) = codec::bind_msg(body)?;
                lock(self.tracker)?.on_bind(portal, stmt);
            }
            b'E' => lock(self.tracker)?.on_execute(codec::execute_portal(body)?),
            b'C' => {
                let (kind, name) = codec::close_msg(body)?;
                lock(self.tracker)?.on_close(kind, name);
            }
            b'S' => {
                lock(self.tracker)?.on_sync();
                self.segment_forwarded = false;
                put_frame(out, tag, body);
                return Ok(());
            }
            b'X' => self.terminated = true,
            _ => {}
        }
        if tag != b'Q' {
            self.segment_forwarded = true;
        }
        put_frame(out, tag, body);
        Ok(())
    }
}

/// Upstream → client: pairs outcomes with statements.
pub struct ServerHook<'a> {
    pub tracker: &'a Mutex<Tracker>,
    pub done: &'a mut Vec<EventBody>,
}

impl Inspect for ServerHook<'_> {
    fn wants(&self, tag: u8) -> bool {
        matches!(tag, b'C' | b'E' | b'I' | b's' | b'Z')
    }

    fn frame(&mut self, tag: u8, body: &[u8], out: &mut BytesMut) -> Result<(), PgError> {
        let mut t = lock(self.tracker)?;
        let ev = match tag {
            b'C' => {
                let mut rest = body;
                t.on_complete(codec::cstr(&mut rest)?)
            }
            b'I' | b's' => t.on_complete(""),
            b'E' => {
                let (code, message) = codec::error_fields(body);
                t.on_error(code, message)
            }
            b'Z' => {
                let (ev, inject) = t.on_ready(body.first().copied().unwrap_or(b'I'));
                if let Some(b) = inject {
                    out.extend_from_slice(&b);
                }
                ev
            }
            _ => None,
        };
        self.done.extend(ev);
        put_frame(out, tag, body);
        while let Some(b) = t.take_blocked() {
            out.extend_from_slice(&b);
        }
        Ok(())
    }
}

/// Refusals whose turn came while the upstream was idle.
pub fn drain_blocked(tracker: &Mutex<Tracker>, out: &mut BytesMut) -> Result<(), PgError> {
    let mut t = lock(tracker)?;
    while let Some(b) = t.take_blocked() {
        out.extend_from_slice(&b);
    }
    Ok(())
}
