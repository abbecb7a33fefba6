//! The relay's filters, one per direction. Client → upstream: statements
//! are tracked and checked by guardrails; a refused one never reaches the
//! upstream. Upstream → client: outcomes are paired with statements, and the
//! gateway's own refusals are slotted in where the client expects them.

use std::sync::Mutex;

use bytes::{Bytes, BytesMut};

use super::catalog::Catalog;
use super::codec::{self, put_frame};
use super::comment;
use super::masking::{self, CopyPlan};
use super::scanner::Inspect;
use super::tracker::{RowDesc, Tracker};
use super::PgError;
use crate::mask::{Counts, Engine};
use crate::policy::decision::{self, Cause, Decision, Grant, Input, Path, Refusal, Rules};
use crate::policy::guardrails;
use crate::recording::EventBody;

/// What masking needs in the relay: the engine and the column-rule catalog.
#[derive(Clone, Copy)]
pub struct MaskCtx<'a> {
    pub engine: &'a Engine,
    pub catalog: &'a Catalog,
}

fn lock(t: &Mutex<Tracker>) -> Result<std::sync::MutexGuard<'_, Tracker>, PgError> {
    t.lock()
        .map_err(|_| PgError::Protocol("statement tracker poisoned".into()))
}

pub struct ClientHook<'a> {
    pub tracker: &'a Mutex<Tracker>,
    /// Guardrails, approvals and limits of this connection.
    pub rules: &'a Rules,
    pub mask: Option<MaskCtx<'a>>,
    pub audit_id: &'a str,
    pub terminated: bool,
    /// A refusal was queued: the upstream side must look at the queue.
    pub blocked: bool,
    /// Guardrail decisions to record.
    pub events: Vec<EventBody>,
    /// sqlcommenter comment appended to every statement sent upstream.
    pub comment: Option<&'a str>,
    /// What an approved review lets this session run: statement hashes
    /// (each once), or any held statement within a window grant.
    pub approved: Approved,
    /// Statements held for review: the relay stores each review.
    pub holds: Vec<Hold>,
    /// After a refused Parse: everything up to Sync is dropped.
    skipping: Option<Skipping>,
    /// Whether this pipeline segment (since the last Sync) reached the upstream.
    segment_forwarded: bool,
}

impl<'a> ClientHook<'a> {
    pub fn new(
        tracker: &'a Mutex<Tracker>,
        rules: &'a Rules,
        mask: Option<MaskCtx<'a>>,
        audit_id: &'a str,
    ) -> Self {
        ClientHook {
            tracker,
            rules,
            mask,
            audit_id,
            terminated: false,
            blocked: false,
            events: Vec::new(),
            comment: None,
            approved: Approved::default(),
            holds: Vec::new(),
            skipping: None,
            segment_forwarded: false,
        }
    }

    /// Guardrails or masking read this session's statements.
    fn inspecting(&self) -> bool {
        self.rules.inspects() || self.mask.is_some()
    }

    /// The refusal message for a statement, or None when it may run.
    fn refuse(&mut self, sql: &str, raw: &[u8], protocol: &str) -> Option<String> {
        if !self.rules.inspects() && self.mask.is_none() {
            return None;
        }
        let grant = if self.approved.window {
            Grant::Window
        } else {
            Grant::Statements(&self.approved.hashes)
        };
        let input = Input::Sql { text: sql, raw };
        let decision = decision::decide(Path::PgTunnel, self.rules, grant, input);
        // A guardrail's denial names the real reason; then masking's own
        // refusal of a COPY it cannot cover; only then a hold.
        let (event, message) = match decision {
            Decision::Refuse(r) if r.cause == Cause::Denied => {
                refusal_event(&r, sql, protocol, self.audit_id)
            }
            d => match self.copy_refusal(sql, protocol == "extended") {
                Some(refused) => refused,
                None => match d {
                    Decision::Run => return None,
                    Decision::RunApproved { hash, .. } => return self.run_approved(hash),
                    Decision::Hold { rule } | Decision::UseReview { rule, .. } => {
                        return Some(self.hold(sql, protocol, rule))
                    }
                    Decision::Refuse(r) => refusal_event(&r, sql, protocol, self.audit_id),
                },
            },
        };
        self.events.push(event);
        Some(message)
    }

    /// A held statement the session's approval covers: it runs, once if
    /// it was approved by hash.
    fn run_approved(&mut self, hash: Option<String>) -> Option<String> {
        if let Some(h) = hash {
            self.approved.hashes.remove(&h);
        }
        self.events.push(EventBody::Review {
            review_id: self.approved.review_id.clone(),
            action: "used".into(),
            by: None,
            reason: None,
            review_audit_id: Some(self.approved.review_audit_id.clone()),
        });
        None
    }

    /// A statement a guardrail holds: refused with a new review id (the
    /// relay stores the review before the refusal can reach the client).
    fn hold(&mut self, sql: &str, protocol: &str, rule: String) -> String {
        let id = uuid::Uuid::now_v7().to_string();
        self.events.push(EventBody::Guardrail {
            sql: sql.to_string(),
            protocol: protocol.into(),
            rule: rule.clone(),
            outcome: "approval_requested".into(),
        });
        self.holds.push(Hold {
            review_id: id.clone(),
            statement: sql.to_string(),
            rule: rule.clone(),
        });
        format!(
            "custody: this statement requires approval (guardrail \"{rule}\"): review {id} is waiting; an approver runs `custody review approve {id}`, then reconnect with CUSTODY_REVIEW={id} and run it again (audit id {})",
            self.audit_id
        )
    }
}

/// A statement held for review on the wire.
pub struct Hold {
    pub review_id: String,
    pub statement: String,
    pub rule: String,
}

/// What the session's approved review (CUSTODY_REVIEW) allows.
#[derive(Default)]
pub struct Approved {
    pub review_id: String,
    /// The audit id of the request the review held.
    pub review_audit_id: String,
    pub hashes: std::collections::HashSet<String>,
    pub window: bool,
}

fn error_bytes(message: &str) -> Bytes {
    let mut err = BytesMut::new();
    codec::error_response(&mut err, "ERROR", "42501", message, None);
    err.freeze()
}

/// A Query that makes the upstream itself raise the refusal: the client gets
/// it in order, and an open transaction is aborted exactly as PostgreSQL
/// would abort it, so a later COMMIT cannot commit half of the work. The
/// ErrorResponse that comes back loses the DO block's CONTEXT and source
/// fields on its way to the client (`codec::error_without_mechanism`).
fn raise_query(message: &str) -> Vec<u8> {
    // Quotes doubled; '$' and '\\' dropped so nothing can end the literal early.
    let m: String = message
        .chars()
        .filter(|c| *c != '$' && *c != '\\')
        .collect::<String>()
        .replace('\'', "''");
    format!("DO $custody$ BEGIN RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = '{m}'; END $custody$\0").into_bytes()
}

/// A Parse was refused: the rest of its pipeline segment is dropped.
#[derive(Clone)]
struct Skipping {
    error: Bytes,
    /// Already sent (the client asked for a Flush before its Sync).
    sent: bool,
}

/// The first KiB of an oversized statement, and its size: what recordings
/// keep of a statement refused for its size (masking a multi-MiB text for
/// the record would cost what refusing it saved).
pub(super) fn head(sql: &str) -> String {
    let mut end = sql.len().min(1024);
    while !sql.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [{} bytes]", &sql[..end], sql.len())
}

/// The audit event and the message (SQLSTATE 42501) for a refused
/// statement, naming the rule and the audit id.
pub fn refusal_event(
    r: &Refusal,
    sql: &str,
    protocol: &str,
    audit_id: &str,
) -> (EventBody, String) {
    let rule = &r.rule;
    let (outcome, message) = match r.cause {
        Cause::Denied => (
            "denied",
            format!(
                "custody: statement refused by guardrail \"{rule}\": {} (audit id {audit_id})",
                r.reason
            ),
        ),
        Cause::NoApprovers | Cause::ApprovalElsewhere => (
            "approval_required",
            format!("custody: this statement requires approval (guardrail \"{rule}\"); approvals are not available yet, so it is refused (audit id {audit_id})"),
        ),
    };
    // An oversized statement is recorded by its head only.
    let sql = if rule == "statement_size" {
        head(sql)
    } else {
        sql.to_string()
    };
    let event = EventBody::Guardrail {
        sql,
        protocol: protocol.into(),
        rule: rule.clone(),
        outcome: outcome.into(),
    };
    (event, message)
}

impl ClientHook<'_> {
    /// A COPY out that masking cannot cover is refused rather than leaked.
    fn copy_refusal(&self, sql: &str, extended: bool) -> Option<(EventBody, String)> {
        let m = self.mask?;
        let why = match masking::copy_plan(sql, m.engine, m.catalog) {
            CopyPlan::NotCopyOut => return None,
            CopyPlan::Refuse(why) => why,
            // The masking plan rides on simple queries only.
            CopyPlan::Rules(_) if extended => "COPY TO STDOUT through the extended protocol cannot be masked; send it as a simple query".into(),
            CopyPlan::Rules(_) => return None,
        };
        let event = EventBody::Guardrail {
            sql: masking::sql(m.engine, sql, &mut Counts::default()),
            protocol: "simple".into(),
            rule: "masking".into(),
            outcome: "denied".into(),
        };
        Some((
            event,
            format!("custody: {why} (audit id {})", self.audit_id),
        ))
    }
}

impl Inspect for ClientHook<'_> {
    fn wants(&self, tag: u8) -> bool {
        self.skipping.is_some()
            || matches!(
                tag,
                b'Q' | b'P' | b'B' | b'E' | b'C' | b'D' | b'H' | b'S' | b'X' | b'F' | b'c' | b'f'
            )
    }

    fn frame(&mut self, tag: u8, body: &[u8], out: &mut BytesMut) -> Result<(), PgError> {
        lock(self.tracker)?
            .check_client(tag)
            .map_err(|d| PgError::Protocol(d.0))?;
        if let Some(skip) = self.skipping.clone() {
            return self.while_skipping(skip, tag, body, out);
        }
        let handled = match tag {
            b'Q' => return self.query(body, out),
            b'P' => self.parse(body, out)?,
            // A function call by OID cannot be checked or masked: refused under either.
            b'F' => {
                let (oid, nargs) = codec::function_call(body)?;
                let mut t = lock(self.tracker)?;
                if !self.inspecting() {
                    t.on_function_call(oid, nargs);
                    put_frame(out, tag, body);
                    return Ok(());
                }
                let msg = format!("custody: function calls by OID are refused when guardrails or masking are on (audit id {})", self.audit_id);
                self.events.push(EventBody::Guardrail {
                    sql: super::tracker::function_call_sql(oid, nargs),
                    protocol: "function_call".into(),
                    rule: "function_call".into(),
                    outcome: "denied".into(),
                });
                t.push_blocked(error_bytes(&msg), true);
                self.blocked = true;
                true
            }
            b'B' => {
                let (portal, stmt) = codec::bind_msg(body)?;
                let formats = match self.mask {
                    Some(_) => Some(codec::bind_result_formats(body)?),
                    None => None,
                };
                let mut t = lock(self.tracker)?;
                t.on_bind(portal, stmt, formats);
                if self.inspecting() {
                    t.on_ack_expected();
                }
                false
            }
            b'E' => self.execute(body, out)?,
            b'D' if self.mask.is_some() => {
                let (kind, name) = codec::describe_msg(body)?;
                lock(self.tracker)?.on_describe(kind, name);
                false
            }
            b'C' => {
                let (kind, name) = codec::close_msg(body)?;
                let mut t = lock(self.tracker)?;
                t.on_close(kind, name);
                if self.inspecting() {
                    t.on_ack_expected();
                }
                false
            }
            b'S' => {
                lock(self.tracker)?.on_sync();
                self.segment_forwarded = false;
                put_frame(out, tag, body);
                true
            }
            b'X' => {
                self.terminated = true;
                false
            }
            b'c' | b'f' => {
                lock(self.tracker)?
                    .on_copy_end()
                    .map_err(|d| PgError::Protocol(d.0))?;
                false
            }
            _ => false,
        };
        if !handled {
            self.segment_forwarded = true;
            put_frame(out, tag, body);
        }
        Ok(())
    }
}

impl ClientHook<'_> {
    /// After a refused Parse: everything up to Sync is dropped, and the
    /// refusal goes out where the client waits for it.
    fn while_skipping(
        &mut self,
        skip: Skipping,
        tag: u8,
        body: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), PgError> {
        let mut t = lock(self.tracker)?;
        match tag {
            // The client waits for an answer before its Sync: give the refusal now.
            b'H' if !skip.sent => {
                t.push_blocked(skip.error.clone(), false);
                self.blocked = true;
                self.skipping = Some(Skipping { sent: true, ..skip });
            }
            b'S' => {
                self.skipping = None;
                let pending_error = if skip.sent { Bytes::new() } else { skip.error };
                if self.segment_forwarded {
                    // Earlier messages of this segment are upstream: their
                    // answers come first, the refusal just before ReadyForQuery.
                    t.on_sync_with(pending_error);
                    put_frame(out, tag, body);
                } else {
                    t.push_blocked(pending_error, true);
                    self.blocked = true;
                }
                self.segment_forwarded = false;
            }
            _ => {}
        }
        Ok(())
    }

    /// A simple Query: checked, tracked, and forwarded (with the
    /// sqlcommenter comment), or replaced by the refusal.
    fn query(&mut self, body: &[u8], out: &mut BytesMut) -> Result<(), PgError> {
        // After an error PostgreSQL skips a Query sent inside an unsynced
        // extended segment, and an error that arrives while messages before
        // the Query are unanswered cannot be told apart from the Query's
        // own: the tracker would pair later answers (and COPY plans) with
        // the wrong statements. A Query after their answers (asyncpg's
        // prepare, then COPY) is unambiguous.
        let pipelined = {
            let t = lock(self.tracker)?;
            t.extended_open() && t.extended_unanswered()
        };
        if self.inspecting() && pipelined {
            return Err(PgError::Protocol("a simple Query pipelined inside an extended-protocol segment (behind a Parse, Bind or Execute not yet answered, and before Sync) is refused while guardrails or masking inspect statements; send Sync first".into()));
        }
        let text = codec::query_sql(body)?;
        let sql = text.as_ref();
        let raw = body.strip_suffix(&[0]).unwrap_or(body);
        let refused = self.refuse(sql, raw, "simple");
        let mut t = lock(self.tracker)?;
        let oversized =
            (self.rules.inspects() || self.mask.is_some()) && sql.len() > self.rules.max_inspected;
        t.on_query(if oversized {
            head(sql)
        } else {
            sql.to_string()
        });
        if let Some(message) = refused {
            t.mark_refused();
            put_frame(out, b'Q', &raise_query(&message));
            return Ok(());
        }
        if let Some(m) = self.mask {
            if let CopyPlan::Rules(rules) = masking::copy_plan(sql, m.engine, m.catalog) {
                t.set_copy_rules(rules);
            }
        }
        // Text that is not UTF-8 is forwarded as the client's own bytes.
        let utf8 = matches!(text, std::borrow::Cow::Borrowed(_));
        match self
            .comment
            .filter(|_| utf8 && !comment::ends_with_comment(sql))
        {
            Some(c) => comment::put_query(out, sql, c),
            None => put_frame(out, b'Q', body),
        }
        Ok(())
    }

    /// A Parse: checked (a refusal skips the segment) and tracked. True
    /// when it was handled here rather than forwarded as it is.
    fn parse(&mut self, body: &[u8], out: &mut BytesMut) -> Result<bool, PgError> {
        let (name, text) = codec::parse_msg(body)?;
        let (name, sql) = (name.as_ref(), text.as_ref());
        let raw = {
            let mut rest = body;
            codec::cbytes(&mut rest)?;
            codec::cbytes(&mut rest)?
        };
        if let Some(message) = self.refuse(sql, raw, "extended") {
            self.skipping = Some(Skipping {
                error: error_bytes(&message),
                sent: false,
            });
            return Ok(true);
        }
        {
            let mut t = lock(self.tracker)?;
            t.on_parse(name, sql);
            if self.inspecting() {
                t.on_ack_expected();
            }
        }
        let utf8 = matches!(text, std::borrow::Cow::Borrowed(_));
        if let Some(c) = self
            .comment
            .filter(|_| utf8 && !comment::ends_with_comment(sql))
        {
            comment::put_parse(out, body, name, sql, c);
            self.segment_forwarded = true;
            return Ok(true);
        }
        Ok(false)
    }

    /// An Execute. Under column rules, rows are masked by what the upstream
    /// says this portal returns now, never by a cached Describe: the
    /// gateway sends its own Describe first.
    fn execute(&mut self, body: &[u8], out: &mut BytesMut) -> Result<bool, PgError> {
        let portal = codec::execute_portal(body)?;
        let mut t = lock(self.tracker)?;
        if self.mask.is_some_and(|m| m.engine.has_column_rules()) {
            t.on_internal_describe(portal);
            let mut d = Vec::with_capacity(portal.len() + 2);
            d.push(b'P');
            d.extend_from_slice(portal.as_bytes());
            d.push(0);
            put_frame(out, b'D', &d);
        }
        t.on_execute(portal);
        Ok(false)
    }
}

/// Upstream → client: pairs outcomes with statements.
pub struct ServerHook<'a> {
    pub tracker: &'a Mutex<Tracker>,
    pub done: &'a mut Vec<EventBody>,
    pub mask: Option<MaskCtx<'a>>,
    /// Guardrails or masking inspect this session's statements.
    pub guarded: bool,
    /// What masking counted in rows not yet added to their statement.
    pub counts: &'a mut Counts,
}

impl Inspect for ServerHook<'_> {
    fn wants(&self, tag: u8) -> bool {
        matches!(tag, b'C' | b'E' | b'G' | b'I' | b's' | b'Z')
            || (self.guarded && tag == b'S')
            || ((self.guarded || self.mask.is_some()) && matches!(tag, b'1' | b'2' | b'3'))
            || (self.mask.is_some()
                && matches!(tag, b'T' | b'n' | b'D' | b'd' | b'N' | b'A' | b'H'))
    }

    fn frame(&mut self, tag: u8, body: &[u8], out: &mut BytesMut) -> Result<(), PgError> {
        if tag == b'S' {
            return encoding_guard(body, out);
        }
        if matches!(tag, b'1' | b'2' | b'3') {
            lock(self.tracker)?.on_ack();
            put_frame(out, tag, body);
            return Ok(());
        }
        let mut t = lock(self.tracker)?;
        // The refusal reads as the gateway's, not as the DO block's.
        let stripped;
        let body = if tag == b'E' && t.answering_refusal() {
            stripped = codec::error_without_mechanism(body);
            &stripped[..]
        } else {
            body
        };
        if let Some(m) = self.mask {
            // Rows add up their counts; any other frame may move on to the
            // next statement, so what came before it is added first.
            if tag != b'D' {
                t.add_masked(self.counts);
            }
            let masked = masked_frame(&mut t, m, tag, body, self.counts, out)?;
            if tag != b'D' {
                t.add_masked(self.counts);
            }
            if masked != Masked::Pass {
                return Ok(());
            }
        }
        let ev = match tag {
            b'C' => {
                let mut rest = body;
                t.on_complete(codec::cstr(&mut rest)?)
                    .map_err(|d| PgError::Protocol(d.0))?
            }
            b'I' | b's' => t.on_complete("").map_err(|d| PgError::Protocol(d.0))?,
            b'G' => {
                t.on_copy_in();
                None
            }
            b'E' => {
                let (code, message) = codec::error_fields(body);
                let message = match self.mask {
                    Some(m) => crate::mask::text(m.engine, &message, &mut Counts::default()),
                    None => message,
                };
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
        // A masked ErrorResponse was already written above.
        if !(tag == b'E' && self.mask.is_some()) {
            put_frame(out, tag, body);
        }
        while let Some(b) = t.take_blocked() {
            out.extend_from_slice(&b);
        }
        Ok(())
    }
}

/// What masking did with a frame from the upstream.
#[derive(PartialEq, Eq)]
enum Masked {
    /// Written (masked) to the client: nothing more to do.
    Written,
    /// The gateway's own business: the client never sees it.
    Swallowed,
    /// Goes on to the outcome tracking (an ErrorResponse is written already).
    Pass,
}

/// Whatever path switched the session to an unsafe encoding (a function, a
/// role default), statements after it could be read differently by the
/// gateway and PostgreSQL: the session ends.
fn encoding_guard(body: &[u8], out: &mut BytesMut) -> Result<(), PgError> {
    let mut rest = body;
    let name = codec::cbytes(&mut rest)?;
    let value = codec::client_text(codec::cbytes(&mut rest)?);
    if name.eq_ignore_ascii_case(b"client_encoding") && guardrails::unsafe_encoding(&value) {
        return Err(PgError::Refused(format!(
            "the upstream session switched client_encoding to {value} (a function, a DO block or a role default did it), which is refused while guardrails or masking inspect statements: the session ends; use UTF8"
        )));
    }
    put_frame(out, b'S', body);
    Ok(())
}

fn masked_frame(
    t: &mut Tracker,
    m: MaskCtx,
    tag: u8,
    body: &[u8],
    counts: &mut Counts,
    out: &mut BytesMut,
) -> Result<Masked, PgError> {
    Ok(match tag {
        b'T' => {
            let cols = masking::row_description(body)?;
            match t.on_row_description(cols) {
                RowDesc::Rows(cols) => {
                    t.active = Some(masking::resolve(&cols, m.engine, m.catalog))
                }
                RowDesc::Described => {}
                // The gateway's own Describe: the client never asked.
                RowDesc::Internal => return Ok(Masked::Swallowed),
            }
            Masked::Pass
        }
        b'n' if t.on_no_data() => Masked::Swallowed,
        b'D' => {
            if t.active.is_none() {
                // Extended protocol: rows come without a RowDescription;
                // an empty mask list means "never described" (detectors only).
                t.active = Some(match t.exec_columns() {
                    Some(cols) => masking::resolve(&cols, m.engine, m.catalog),
                    // Column rules cannot be checked without a description: fail closed.
                    None if m.engine.has_column_rules() => masking::undescribed(body),
                    None => Vec::new(),
                });
            }
            masking::data_row(body, t.active.as_deref(), m.engine, counts, out)?;
            Masked::Written
        }
        // Column rules reach COPY rows only through the plan made from the
        // statement's text; a COPY the gateway did not read as one (hidden
        // by an encoding switch, or parsed differently than the server
        // did) has none, and its rows would pass in clear.
        b'H' if m.engine.has_column_rules() && t.copy_rules().is_none() => {
            return Err(PgError::Refused(
                "the upstream started a COPY TO STDOUT that the gateway did not read as one, so column rules cannot cover its rows: the session ends; send COPY as a simple query of its own".into(),
            ))
        }
        b'd' => {
            masking::copy_row(body, t.copy_rules(), m.engine, counts, out);
            Masked::Written
        }
        b'A' => {
            masking::notification(body, m.engine, counts, out)?;
            Masked::Written
        }
        b'N' => {
            masking::notice(tag, body, m.engine, counts, out);
            Masked::Written
        }
        b'E' => {
            masking::notice(tag, body, m.engine, counts, out);
            Masked::Pass
        }
        _ => Masked::Pass,
    })
}

/// Refusals whose turn came while the upstream was idle.
pub fn drain_blocked(tracker: &Mutex<Tracker>, out: &mut BytesMut) -> Result<(), PgError> {
    let mut t = lock(tracker)?;
    while let Some(b) = t.take_blocked() {
        out.extend_from_slice(&b);
    }
    Ok(())
}

/// Recordings hold only masked values: SQL text and error messages of an
/// event pass through the detectors before they are written.
pub fn scrub(mask: Option<MaskCtx>, ev: &mut EventBody) {
    let Some(m) = mask else { return };
    let mut counts = Counts::default();
    match ev {
        EventBody::Statement { sql, error, .. } => {
            *sql = masking::sql(m.engine, sql, &mut counts);
            if let Some(e) = error {
                e.message = crate::mask::text(m.engine, &e.message, &mut counts);
            }
        }
        EventBody::Guardrail { sql, .. } => *sql = masking::sql(m.engine, sql, &mut counts),
        _ => {}
    }
}
