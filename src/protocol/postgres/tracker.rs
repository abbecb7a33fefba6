//! Pairs what the client asked (Query, Parse/Bind/Execute) with what the
//! server answered (CommandComplete, ErrorResponse, ReadyForQuery), so each
//! statement becomes one audit event with its outcome. No I/O.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::mask::Counts;
use crate::recording::{EventBody, StatementError};

use super::catalog::Rule;
use super::codec::tag_rows;
use super::masking::{with_formats, Col, ColMask};

/// Named prepared statements kept per session at most; PostgreSQL holds them too.
const MAX_NAMED: usize = 10_000;
/// Parses of one pipeline segment kept for an error's record.
const MAX_SEGMENT_PARSES: usize = 4;
/// CopyDone/CopyFail messages outside copy-in mode kept for placing.
const MAX_COPY_ENDS: usize = 16;

enum Pending {
    Simple(Stmt),
    Exec(Stmt),
    /// A Sync sent upstream; the bytes, if any, go to the client just before
    /// its ReadyForQuery (a guardrail refusal inside a pipeline). With it, the
    /// SQL of its segment's Parses: what an error before any Execute (a
    /// failed Parse or Bind) is recorded with.
    Sync(Option<Bytes>, Vec<String>, u64),
    /// A refusal the gateway answers itself once everything before it is
    /// answered; `true` when a ReadyForQuery follows it.
    Blocked(Bytes, bool),
    /// A Describe awaiting its RowDescription or NoData (tracked only when masking).
    Describe(Described),
    /// A Parse, Bind or Close awaiting its ParseComplete, BindComplete or
    /// CloseComplete (tracked only under guardrails or masking), so that an
    /// error is known to answer it and not a later message.
    Ack,
}

/// What a Describe asked about. A statement's or portal's description is
/// kept with the generation of the Parse or Bind it was asked after, and
/// an Execute uses it only for that same generation: a name parsed or
/// bound again before the rows arrive never lends them its columns.
enum Described {
    Statement(String, Option<u64>),
    Portal(String, Option<u64>),
    /// The gateway's own Describe of the portal about to execute: its answer
    /// is consumed, never forwarded.
    Internal(String),
}

/// What a RowDescription was.
pub enum RowDesc {
    /// Rows of a simple query follow: mask them by these columns.
    Rows(Vec<Col>),
    /// The answer to the client's Describe: forward it.
    Described,
    /// The answer to the gateway's own Describe: swallow it.
    Internal,
}

struct Stmt {
    sql: String,
    portal: String,
    start: Instant,
    tags: Vec<String>,
    rows: u64,
    error: Option<StatementError>,
    masked: Counts,
    /// Column rules by position for a `COPY ... TO STDOUT` in this query.
    copy_rules: Option<Vec<Rule>>,
    /// Replaced by the gateway's refusal (a DO block that raises it).
    refused: bool,
    /// Its place among the client's messages (see `Tracker::seq`).
    seq: u64,
    /// The Bind its portal had when the Execute was sent (when masking).
    bound: Option<Arc<Bound>>,
    /// A FunctionCall, answered as a Query is (its result, ReadyForQuery).
    function_call: bool,
}

/// A Bind as masking needs it.
struct Bound {
    stmt: String,
    /// Generation of the statement's Parse (None: not tracked).
    stmt_gen: Option<u64>,
    /// Result-format codes.
    formats: Vec<i16>,
    gen: u64,
}

impl Stmt {
    fn new(sql: String) -> Stmt {
        Stmt {
            sql,
            portal: String::new(),
            start: Instant::now(),
            tags: Vec::new(),
            rows: 0,
            error: None,
            masked: Counts::default(),
            copy_rules: None,
            refused: false,
            seq: 0,
            bound: None,
            function_call: false,
        }
    }

    fn done(self, protocol: &str) -> EventBody {
        EventBody::Statement {
            sql: self.sql,
            protocol: protocol.into(),
            tags: self.tags,
            rows: self.rows,
            error: self.error,
            duration_ms: self.start.elapsed().as_secs_f64() * 1000.0,
            masked: self.masked.0,
        }
    }
}

pub struct Tracker {
    /// Statement name → (SQL, generation of its Parse).
    prepared: HashMap<String, (String, u64)>,
    portals: HashMap<String, String>,
    pending: VecDeque<Pending>,
    /// Result columns of prepared statements and portals, from Describe.
    /// Each with the generation it describes (see `Described`).
    stmt_desc: HashMap<String, (u64, Arc<Vec<Col>>)>,
    portal_desc: HashMap<String, (u64, Arc<Vec<Col>>)>,
    /// Portal → its Bind, when masking.
    binds: HashMap<String, Arc<Bound>>,
    /// Numbers Parses and Binds.
    gen: u64,
    /// Columns of the portal about to execute, from the gateway's own
    /// Describe (None: NoData). Under column rules this is the only source:
    /// cached descriptions can be stale (SQL-level PREPARE, DEALLOCATE, a
    /// function doing either) and names past MAX_NAMED are not tracked.
    internal: Option<(String, Option<Arc<Vec<Col>>>)>,
    /// Masks for the rows now streaming, set at their RowDescription or first DataRow.
    pub active: Option<Vec<ColMask>>,
    pub statements: u64,
    pub rows: u64,
    /// Transaction status from the last ReadyForQuery ('I', 'T' or 'E').
    pub status: u8,
    /// In COPY FROM STDIN: the server ignores Sync until CopyDone/CopyFail.
    copy_in: bool,
    /// SQL of the Parses since the last Sync (the first few, heads only).
    segment_parses: Vec<String>,
    /// Counts the client's statements, Syncs and COPY ends, in order.
    seq: u64,
    /// Sequence numbers of CopyDone/CopyFail seen outside copy-in mode.
    copy_ends: VecDeque<u64>,
    /// After an extended-protocol error whose Sync the client has not sent
    /// yet: PostgreSQL skips every message until that Sync, so none of
    /// them is queued for an answer (or changes what names mean).
    discarding: bool,
    /// The client has sent an extended-protocol message since its last Sync.
    extended_open: bool,
}

/// How a FunctionCall reads in the recording: `select OID::regprocedure`
/// names the function.
pub fn function_call_sql(oid: u32, nargs: u16) -> String {
    let plural = if nargs == 1 { "" } else { "s" };
    format!("function call by OID {oid} ({nargs} argument{plural}; values not recorded)")
}

/// The client and the gateway's view of the protocol state disagree: the
/// session ends rather than pair answers with the wrong requests.
#[derive(Debug)]
pub struct Desync(pub String);

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            prepared: HashMap::new(),
            portals: HashMap::new(),
            pending: VecDeque::new(),
            stmt_desc: HashMap::new(),
            portal_desc: HashMap::new(),
            binds: HashMap::new(),
            gen: 0,
            internal: None,
            active: None,
            statements: 0,
            rows: 0,
            status: b'I',
            copy_in: false,
            segment_parses: Vec::new(),
            seq: 0,
            copy_ends: VecDeque::new(),
            discarding: false,
            extended_open: false,
        }
    }
}

impl Tracker {
    /// Queues a refusal answered by the gateway (ErrorResponse, then a
    /// ReadyForQuery when `ready`).
    pub fn push_blocked(&mut self, bytes: Bytes, ready: bool) {
        self.pending.push_back(Pending::Blocked(bytes, ready));
    }

    /// A refusal whose turn has come: everything sent before it is answered.
    /// Its ReadyForQuery carries the transaction status as of now.
    pub fn take_blocked(&mut self) -> Option<Bytes> {
        if !matches!(self.pending.front(), Some(Pending::Blocked(..))) {
            return None;
        }
        let Some(Pending::Blocked(b, ready)) = self.pending.pop_front() else {
            return None;
        };
        let mut out = bytes::BytesMut::from(&b[..]);
        if ready {
            super::codec::ready_for_query(&mut out, self.status);
        }
        Some(out.freeze())
    }

    /// A Sync that also carries a refusal for its pipeline segment.
    pub fn on_sync_with(&mut self, inject: Bytes) {
        self.discarding = false;
        self.extended_open = false;
        let parsed = std::mem::take(&mut self.segment_parses);
        let seq = self.next_seq();
        self.pending
            .push_back(Pending::Sync(Some(inject), parsed, seq));
    }

    pub fn on_query(&mut self, sql: String) {
        if self.discarding {
            return;
        }
        let mut stmt = Stmt::new(sql);
        stmt.seq = self.next_seq();
        self.pending.push_back(Pending::Simple(stmt));
    }

    /// A FunctionCall (by OID, fastpath): recorded by its OID and the
    /// number of its arguments, whose values are never recorded.
    pub fn on_function_call(&mut self, oid: u32, nargs: u16) {
        if self.discarding {
            return;
        }
        let mut stmt = Stmt::new(function_call_sql(oid, nargs));
        stmt.function_call = true;
        stmt.seq = self.next_seq();
        self.pending.push_back(Pending::Simple(stmt));
    }

    pub fn on_parse(&mut self, name: &str, sql: &str) {
        self.extended_open = true;
        if self.discarding {
            return;
        }
        if self.segment_parses.len() < MAX_SEGMENT_PARSES {
            let kept = match sql.len() > 1024 {
                true => super::hooks::head(sql),
                false => sql.to_string(),
            };
            self.segment_parses.push(kept);
        }
        // A re-parsed name keeps the old statement's columns (rows of an
        // Execute bound to it may still arrive), under the old generation.
        if self.prepared.len() < MAX_NAMED || name.is_empty() || self.prepared.contains_key(name) {
            self.gen += 1;
            self.prepared
                .insert(name.to_string(), (sql.to_string(), self.gen));
        }
    }

    /// Bind; `formats` are its result-format codes (parsed only when masking).
    pub fn on_bind(&mut self, portal: &str, stmt: &str, formats: Option<Vec<i16>>) {
        self.extended_open = true;
        if self.discarding {
            return;
        }
        let prepared = self.prepared.get(stmt);
        let sql = prepared.map(|p| p.0.clone()).unwrap_or_default();
        let stmt_gen = prepared.map(|p| p.1);
        if self.portals.len() < MAX_NAMED || portal.is_empty() {
            self.portals.insert(portal.to_string(), sql);
            if let Some(formats) = formats {
                self.gen += 1;
                let bound = Bound {
                    stmt: stmt.to_string(),
                    stmt_gen,
                    formats,
                    gen: self.gen,
                };
                self.binds.insert(portal.to_string(), Arc::new(bound));
            }
        } else {
            self.binds.remove(portal);
        }
    }

    pub fn on_execute(&mut self, portal: &str) {
        self.extended_open = true;
        if self.discarding {
            return;
        }
        let sql = self.portals.get(portal).cloned().unwrap_or_default();
        let mut stmt = Stmt::new(sql);
        stmt.portal = portal.to_string();
        stmt.bound = self.binds.get(portal).cloned();
        stmt.seq = self.next_seq();
        self.pending.push_back(Pending::Exec(stmt));
    }

    pub fn on_describe(&mut self, kind: u8, name: &str) {
        self.extended_open = true;
        if self.discarding {
            return;
        }
        let d = match kind {
            b'S' => Described::Statement(name.to_string(), self.prepared.get(name).map(|p| p.1)),
            _ => Described::Portal(name.to_string(), self.binds.get(name).map(|b| b.gen)),
        };
        self.pending.push_back(Pending::Describe(d));
    }

    /// The gateway describes `portal` itself before executing it.
    pub fn on_internal_describe(&mut self, portal: &str) {
        if self.discarding {
            return;
        }
        self.internal = None;
        self.pending
            .push_back(Pending::Describe(Described::Internal(portal.to_string())));
    }

    pub fn on_close(&mut self, kind: u8, name: &str) {
        self.extended_open = true;
        if self.discarding {
            return;
        }
        if kind == b'S' {
            self.prepared.remove(name);
            self.stmt_desc.remove(name);
        } else {
            self.portals.remove(name);
            self.portal_desc.remove(name);
            self.binds.remove(name);
        }
    }

    /// The query just queued was replaced by the gateway's refusal.
    pub fn mark_refused(&mut self) {
        if self.discarding {
            return;
        }
        if let Some(Pending::Simple(s)) = self.pending.back_mut() {
            s.refused = true;
        }
    }

    /// A Parse, Bind or Close went upstream and will be acknowledged.
    pub fn on_ack_expected(&mut self) {
        if !self.discarding {
            self.pending.push_back(Pending::Ack);
        }
    }

    /// ParseComplete, BindComplete or CloseComplete.
    pub fn on_ack(&mut self) {
        if matches!(self.pending.front(), Some(Pending::Ack)) {
            self.pending.pop_front();
        }
    }

    /// Whether extended-protocol messages sent upstream are still unanswered.
    pub fn extended_unanswered(&self) -> bool {
        self.pending
            .iter()
            .any(|p| matches!(p, Pending::Ack | Pending::Exec(_) | Pending::Describe(_)))
    }

    /// Whether an extended-protocol segment is open (no Sync since its
    /// last Parse, Bind, Describe, Execute or Close).
    pub fn extended_open(&self) -> bool {
        self.extended_open
    }

    /// Whether the answer now arriving is the gateway's own refusal.
    pub fn answering_refusal(&self) -> bool {
        matches!(self.pending.front(), Some(Pending::Simple(s)) if s.refused)
    }

    /// Attaches COPY column rules to the query just queued.
    pub fn set_copy_rules(&mut self, rules: Vec<Rule>) {
        if self.discarding {
            return;
        }
        if let Some(Pending::Simple(s)) = self.pending.back_mut() {
            s.copy_rules = Some(rules);
        }
    }

    /// RowDescription: answers a Describe (stored, returns None) or starts
    /// a simple query's rows (returns the columns to mask them by).
    pub fn on_row_description(&mut self, cols: Vec<Col>) -> RowDesc {
        match self.pending.front() {
            Some(Pending::Describe(Described::Internal(_))) => {
                if let Some(Pending::Describe(Described::Internal(p))) = self.pending.pop_front() {
                    self.internal = Some((p, Some(Arc::new(cols))));
                }
                RowDesc::Internal
            }
            Some(Pending::Describe(_)) => {
                if let Some(Pending::Describe(d)) = self.pending.pop_front() {
                    match d {
                        Described::Statement(n, Some(g))
                            if self.stmt_desc.len() < MAX_NAMED || n.is_empty() =>
                        {
                            self.stmt_desc.insert(n, (g, Arc::new(cols)));
                        }
                        Described::Portal(n, Some(g))
                            if self.portal_desc.len() < MAX_NAMED || n.is_empty() =>
                        {
                            self.portal_desc.insert(n, (g, Arc::new(cols)));
                        }
                        _ => {}
                    }
                }
                RowDesc::Described
            }
            _ => RowDesc::Rows(cols),
        }
    }

    /// NoData answers a Describe; true when it answers the gateway's own.
    pub fn on_no_data(&mut self) -> bool {
        match self.pending.front() {
            Some(Pending::Describe(Described::Internal(_))) => {
                if let Some(Pending::Describe(Described::Internal(p))) = self.pending.pop_front() {
                    self.internal = Some((p, None));
                }
                true
            }
            Some(Pending::Describe(_)) => {
                self.pending.pop_front();
                false
            }
            _ => false,
        }
    }

    /// Columns of the Execute now returning rows, from its portal's Describe
    /// or its statement's Describe and Bind's formats, each only if it
    /// describes the Bind the Execute ran. None when never described.
    pub fn exec_columns(&self) -> Option<Vec<Col>> {
        let Some(Pending::Exec(s)) = self.pending.front() else {
            return None;
        };
        if let Some((portal, cols)) = &self.internal {
            return match cols {
                Some(c) if *portal == s.portal => Some(c.as_ref().clone()),
                _ => None,
            };
        }
        let bound = s.bound.as_ref()?;
        match self.portal_desc.get(&s.portal) {
            Some((g, cols)) if *g == bound.gen => return Some(cols.as_ref().clone()),
            _ => {}
        }
        match self.stmt_desc.get(&bound.stmt) {
            Some((g, cols)) if Some(*g) == bound.stmt_gen => {
                Some(with_formats(cols, &bound.formats))
            }
            _ => None,
        }
    }

    pub fn copy_rules(&self) -> Option<&[Rule]> {
        match self.pending.front() {
            Some(Pending::Simple(s)) => s.copy_rules.as_deref(),
            _ => None,
        }
    }

    /// Adds masking counts to the statement now answering (and clears them).
    pub fn add_masked(&mut self, counts: &mut Counts) {
        match self.pending.front_mut() {
            Some(Pending::Simple(s) | Pending::Exec(s)) => counts.move_into(&mut s.masked),
            // Nothing is answering: the counts belong to no statement.
            _ => counts.0.values_mut().for_each(|v| *v = 0),
        }
    }

    /// A Sync gets a ReadyForQuery, except during COPY FROM STDIN.
    pub fn on_sync(&mut self) {
        self.discarding = false;
        self.extended_open = false;
        if !self.copy_in {
            let parsed = std::mem::take(&mut self.segment_parses);
            let seq = self.next_seq();
            self.pending.push_back(Pending::Sync(None, parsed, seq));
        }
    }
    /// CopyInResponse. PostgreSQL ignores every Sync it reads in copy-in
    /// mode, which lasts from the COPY to the client's first CopyDone or
    /// CopyFail after it. Syncs the client sent in that span (pg8000 sends
    /// one right after its Execute) get no ReadyForQuery: waiting for one
    /// would pair every later answer with the wrong request. A client may
    /// even have ended the copy before this answer arrived; its CopyDone,
    /// noted in `copy_ends`, is placed by sequence.
    pub fn on_copy_in(&mut self) {
        let start = self
            .pending
            .iter()
            .find_map(|p| match p {
                Pending::Simple(s) | Pending::Exec(s) => Some(s.seq),
                _ => None,
            })
            .unwrap_or(0);
        while self.copy_ends.front().is_some_and(|&e| e < start) {
            self.copy_ends.pop_front();
        }
        let end = self.copy_ends.pop_front();
        self.pending.retain(|p| match p {
            Pending::Sync(None, _, seq) => *seq < start || end.is_some_and(|e| *seq > e),
            _ => true,
        });
        self.copy_in = end.is_none();
    }

    /// The client's CopyDone or CopyFail. In copy-in mode it ends it;
    /// otherwise it is noted, for a COPY whose CopyInResponse is still on
    /// its way (or ignored, as PostgreSQL ignores a stray one).
    pub fn on_copy_end(&mut self) -> Result<(), Desync> {
        if self.discarding {
            return Ok(());
        }
        if self.copy_in {
            self.copy_in = false;
            return Ok(());
        }
        if self.copy_ends.len() >= MAX_COPY_ENDS {
            return Err(Desync(
                "more CopyDone/CopyFail messages outside COPY than a client sends".into(),
            ));
        }
        let seq = self.next_seq();
        self.copy_ends.push_back(seq);
        Ok(())
    }

    /// In copy-in mode PostgreSQL reads only COPY data, its end, Flush and
    /// Sync; anything else aborts the COPY and makes PostgreSQL honour a
    /// Sync the gateway would have counted as ignored. Refused instead.
    pub fn check_client(&self, tag: u8) -> Result<(), Desync> {
        if self.copy_in && !matches!(tag, b'd' | b'c' | b'f' | b'H' | b'S' | b'X') {
            return Err(Desync(format!(
                "message {:?} during COPY FROM STDIN: only CopyData, CopyDone and CopyFail may follow until the COPY ends",
                tag as char
            )));
        }
        Ok(())
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// CommandComplete, EmptyQueryResponse ("") or PortalSuspended.
    // An answer to nothing queued is not yet treated as a desync: asyncpg's
    // executemany after an error sends Executes PostgreSQL skips, which the
    // tracker still queues (see the closing note of issue 13).
    pub fn on_complete(&mut self, tag: &str) -> Result<Option<EventBody>, Desync> {
        self.active = None;
        let rows = tag_rows(tag);
        match self.pending.front_mut() {
            Some(Pending::Simple(s)) => {
                s.rows += rows;
                s.tags.push(tag.to_string());
                Ok(None)
            }
            Some(Pending::Exec(_)) => {
                let Some(Pending::Exec(mut s)) = self.pending.pop_front() else {
                    return Ok(None);
                };
                s.rows += rows;
                s.tags.push(tag.to_string());
                Ok(Some(self.finish(s, "extended")))
            }
            _ => Ok(None),
        }
    }

    pub fn on_error(&mut self, code: String, message: String) -> Option<EventBody> {
        self.active = None;
        self.copy_in = false;
        let error = Some(StatementError { code, message });
        match self.pending.front_mut() {
            Some(Pending::Simple(s)) => {
                s.error = error;
                None
            }
            Some(Pending::Exec(_)) => {
                let Some(Pending::Exec(mut s)) = self.pending.pop_front() else {
                    return None;
                };
                s.error = error;
                self.skip_to_sync();
                Some(self.finish(s, "extended"))
            }
            // An error before any Execute (Parse, Bind or Describe failed):
            // recorded on its own, with the SQL its segment parsed.
            Some(
                Pending::Describe(_) | Pending::Ack | Pending::Sync(..) | Pending::Blocked(..),
            )
            | None => {
                self.skip_to_sync();
                let mut s = Stmt::new(self.segment_sql());
                s.error = error;
                Some(s.done("extended"))
            }
        }
    }

    /// ReadyForQuery: returns the finished statement, if any, and bytes the
    /// client must get before this ReadyForQuery.
    pub fn on_ready(&mut self, status: u8) -> (Option<EventBody>, Option<Bytes>) {
        self.status = status;
        self.active = None;
        match self.pending.pop_front() {
            Some(Pending::Simple(s)) => {
                let protocol = if s.function_call {
                    "function_call"
                } else {
                    "simple"
                };
                (Some(self.finish(s, protocol)), None)
            }
            Some(Pending::Sync(inject, ..)) => (None, inject.filter(|b| !b.is_empty())),
            // Unreachable in a well-formed exchange; keep the record rather than drop it.
            Some(Pending::Exec(s)) => (Some(self.finish(s, "extended")), None),
            Some(Pending::Blocked(b, r)) => {
                // Cannot be at the front here (drained eagerly); keep order anyway.
                self.pending.push_front(Pending::Blocked(b, r));
                (None, None)
            }
            // A Describe left unanswered cannot outlive its Sync.
            Some(Pending::Describe(_) | Pending::Ack) => self.on_ready(status),
            None => (None, None),
        }
    }

    /// Statements sent upstream whose answer never came (the session ended
    /// first): the upstream may still have run them, so they are recorded.
    pub fn drain_unanswered(&mut self) -> Vec<EventBody> {
        let mut out = Vec::new();
        while let Some(p) = self.pending.pop_front() {
            let (mut s, protocol) = match p {
                Pending::Simple(s) => (s, "simple"),
                Pending::Exec(s) => (s, "extended"),
                _ => continue,
            };
            s.error = Some(StatementError {
                code: String::new(),
                message: "no answer: the session ended before the upstream replied; the statement may have run".into(),
            });
            out.push(self.finish(s, protocol));
        }
        out
    }

    /// The Parses of the segment now answering (its Sync is the first in
    /// the queue, or not sent yet).
    fn segment_sql(&self) -> String {
        let parsed = self
            .pending
            .iter()
            .find_map(|p| match p {
                Pending::Sync(_, parsed, _) => Some(parsed),
                _ => None,
            })
            .unwrap_or(&self.segment_parses);
        parsed.join("; ")
    }

    /// After an error the server skips every message up to the next Sync:
    /// those queued already are dropped, and while the client has not sent
    /// that Sync, those still to come are not queued.
    fn skip_to_sync(&mut self) {
        while matches!(
            self.pending.front(),
            Some(Pending::Exec(_) | Pending::Describe(_) | Pending::Ack)
        ) {
            self.pending.pop_front();
        }
        // Only an extended message's error makes PostgreSQL skip (not a
        // FunctionCall's, nor one with nothing of the client's pending).
        self.discarding =
            self.extended_open && !self.pending.iter().any(|p| matches!(p, Pending::Sync(..)));
    }

    fn finish(&mut self, s: Stmt, protocol: &str) -> EventBody {
        self.statements += 1;
        self.rows += s.rows;
        s.done(protocol)
    }
}

#[cfg(test)]
#[path = "tracker_tests.rs"]
mod tests;
