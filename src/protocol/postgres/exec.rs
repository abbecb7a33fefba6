//! `POST /v1/exec`: one simple-protocol query on a fresh upstream session,
//! answered as columns and text rows.

use bytes::{Buf, BytesMut};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::codec::{self, cstr};
use super::comment;
use super::hooks::{self, MaskCtx};
use super::masking::{self, ColMask};
use super::tracker::Tracker;
use super::{upstream, PgError};
use crate::mask::Counts;
use crate::session::{Masker, SessionContext};

#[derive(Debug, Serialize, Default)]
pub struct ExecResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
    pub command_tag: String,
    /// True when more rows came back than `server.exec_max_rows`.
    pub truncated: bool,
}

pub enum ExecOutcome {
    Done(ExecResult),
    QueryError {
        sqlstate: String,
        message: String,
    },
    /// Revoked, past its deadline, or the instance is stopping; the
    /// statement was cancelled upstream. `policy` as in `Interrupt`.
    Interrupted {
        policy: bool,
        reason: String,
    },
}

/// Runs `sql`; the statement and its outcome are recorded on the session.
pub async fn run(
    ctx: &SessionContext,
    catalogs: &super::catalog::Cache,
    sql: &str,
) -> Result<ExecOutcome, PgError> {
    let session = &ctx.session;
    let conn = &session.permit.connection;
    let password = super::credential(conn, &ctx.credentials).await?;
    let app = format!("custody/{}", session.audit_id);
    let mut up = upstream::connect(conn, &password, &app, &[]).await?;
    drop(password);
    let engine = match &ctx.masker {
        Masker::Failed(why) => return Err(PgError::Protocol(format!("masking: {why}"))),
        m => m.engine(),
    };
    let catalog = match engine {
        Some(e) => {
            catalogs
                .get(conn.name(), e, &mut up.stream, &mut up.leftover)
                .await?
        }
        None => Default::default(),
    };
    let mask = engine.map(|engine| MaskCtx {
        engine,
        catalog: &catalog,
    });
    let mut out = BytesMut::new();
    put_statement(&mut out, ctx, sql);
    up.stream.write_all(&out).await?;
    let mut answer = Answer::new(mask, ctx.limits.exec_max_rows, ctx.limits.max_message_bytes);
    answer.tracker.on_query(sql.to_string());
    let mut buf = std::mem::take(&mut up.leftover);
    let (pid, key) = (up.pid, up.key);
    // A revocation, the deadline or a shutdown stops a running exec too.
    let interrupted = tokio::select! {
        r = read_answer(&mut up.stream, &mut buf, &mut answer) => { r?; None }
        i = ctx.interrupted() => Some(i),
    };
    let stopped = interrupted.map(|i| {
        answer.tracker.on_error(i.sqlstate().into(), i.reason());
        (i.close_code() == crate::wire::CLOSE_POLICY, i.reason())
    });
    if stopped.is_some() {
        // The statement may still be running upstream: stop it, not abandon it.
        let _ = upstream::cancel(conn, pid, key).await;
    }
    answer.tracker.add_masked(&mut answer.counts);
    if let Some(mut ev) = answer.tracker.on_ready(b'I').0 {
        hooks::scrub(mask, &mut ev);
        // The statement ran: without its record, its result is not released.
        session
            .tap()
            .record(ev)
            .await
            .map_err(|e| PgError::Recording(e.to_string()))?;
    }
    out.clear();
    codec::put_frame(&mut out, b'X', b"");
    let _ = up.stream.write_all(&out).await;
    Ok(match (stopped, answer.error) {
        (Some((policy, reason)), _) => ExecOutcome::Interrupted { policy, reason },
        (None, Some((sqlstate, message))) => ExecOutcome::QueryError { sqlstate, message },
        (None, None) => ExecOutcome::Done(answer.result),
    })
}

/// Reads the upstream's answer up to its ReadyForQuery into `answer`.
async fn read_answer(
    stream: &mut Box<dyn upstream::Io>,
    buf: &mut BytesMut,
    answer: &mut Answer<'_>,
) -> Result<(), PgError> {
    let mut out = BytesMut::new();
    loop {
        let (tag, frame) = next_frame(stream, buf, answer.max_message).await?;
        match tag {
            b'Z' => return Ok(()),
            // COPY cannot run over exec: answer CopyFail so the server moves on.
            b'G' => {
                out.clear();
                codec::put_frame(
                    &mut out,
                    b'f',
                    b"COPY FROM STDIN is not supported by exec; use custody connect\0",
                );
                stream.write_all(&out).await?;
            }
            _ => answer.on_frame(tag, &frame)?,
        }
    }
}

/// The next whole frame from the upstream: its tag and body.
async fn next_frame(
    stream: &mut Box<dyn upstream::Io>,
    buf: &mut BytesMut,
    max_message: usize,
) -> Result<(u8, BytesMut), PgError> {
    loop {
        if buf.len() >= 5 {
            let len = codec::frame_len(buf[0], [buf[1], buf[2], buf[3], buf[4]], max_message)?;
            if buf.len() >= 5 + len {
                let tag = buf[0];
                buf.advance(5);
                return Ok((tag, buf.split_to(len)));
            }
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(PgError::Protocol("upstream closed during the query".into()));
        }
    }
}

/// The answer being collected: columns, masked text rows, the outcome.
struct Answer<'a> {
    mask: Option<MaskCtx<'a>>,
    masks: Vec<ColMask>,
    counts: Counts,
    /// Row bytes kept so far.
    held: usize,
    max_rows: usize,
    max_message: usize,
    in_rows: bool,
    tracker: Tracker,
    result: ExecResult,
    error: Option<(String, String)>,
}

impl<'a> Answer<'a> {
    fn new(mask: Option<MaskCtx<'a>>, max_rows: usize, max_message: usize) -> Answer<'a> {
        Answer {
            mask,
            masks: Vec::new(),
            counts: Counts::default(),
            held: 0,
            max_rows,
            max_message,
            in_rows: false,
            tracker: Tracker::default(),
            result: ExecResult::default(),
            error: None,
        }
    }

    fn on_frame(&mut self, tag: u8, frame: &[u8]) -> Result<(), PgError> {
        match tag {
            b'T' => {
                let cols = masking::row_description(frame)?;
                if let Some(m) = self.mask {
                    self.masks = masking::resolve(&cols, m.engine, m.catalog);
                }
                self.result.columns = cols.into_iter().map(|c| c.name).collect();
                self.result.rows.clear();
                self.result.truncated = false;
                self.in_rows = true;
            }
            b'D' => self.row(frame)?,
            b'C' => {
                let mut rest: &[u8] = frame;
                let tag = cstr(&mut rest)?.to_string();
                if !self.in_rows {
                    self.result.columns.clear();
                    self.result.rows.clear();
                }
                self.in_rows = false;
                self.tracker
                    .on_complete(&tag)
                    .map_err(|d| PgError::Protocol(d.0))?;
                self.result.command_tag = tag;
            }
            b'E' => {
                let (code, mut message) = codec::error_fields(frame);
                if let Some(m) = self.mask {
                    message = crate::mask::text(m.engine, &message, &mut self.counts);
                }
                self.tracker.on_error(code.clone(), message.clone());
                self.error = Some((code, message));
            }
            _ => {}
        }
        Ok(())
    }

    /// Rows and bytes are both bounded: one answer cannot exhaust memory.
    fn row(&mut self, frame: &[u8]) -> Result<(), PgError> {
        self.held += frame.len();
        if self.result.rows.len() >= self.max_rows || self.held > self.max_message {
            self.result.truncated = true;
            return Ok(());
        }
        let mut row = codec::text_row(frame)?;
        if let Some(m) = self.mask {
            for (i, v) in row.iter_mut().enumerate() {
                let Some(text) = v.as_deref() else { continue };
                match masking::mask_one(
                    text.as_bytes(),
                    self.masks.get(i),
                    m.engine,
                    &mut self.counts,
                ) {
                    None => {}
                    Some(None) => *v = None,
                    Some(Some(b)) => *v = Some(String::from_utf8_lossy(&b).into_owned()),
                }
            }
        }
        self.result.rows.push(row);
        Ok(())
    }
}

/// The statement as one Query, with the sqlcommenter comment when enabled.
fn put_statement(out: &mut BytesMut, ctx: &SessionContext, sql: &str) {
    let clean = sql.replace('\0', "");
    if ctx.sqlcommenter && !comment::ends_with_comment(&clean) {
        let s = &ctx.session;
        let c = comment::sqlcommenter(s.traceparent.as_deref(), &s.audit_id);
        comment::put_query(out, &clean, &c);
    } else {
        let mut body = Vec::with_capacity(clean.len() + 1);
        body.extend_from_slice(clean.as_bytes());
        body.push(0);
        codec::put_frame(out, b'Q', &body);
    }
}
