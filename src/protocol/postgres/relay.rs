//! One tunnelled PostgreSQL session: startup and login (`startup`), then
//! raw frames relayed both ways, batching each read into one write and
//! tapping statements to the recorder, until either side ends or the
//! session is interrupted (shutdown, deadline, revocation, recording).

use std::sync::Mutex;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::cancel::CancelTarget;
use super::codec;
use super::comment;
use super::hooks::{self, ClientHook, MaskCtx, ServerHook};
use super::scanner::Scanner;
use super::startup::{self, Login, Opening};
use super::tracker::Tracker;
use super::{PgError, Services};
use crate::recording::EventBody;
use crate::session::tunnel::{TunnelRx, TunnelTx};
use crate::session::{Interrupt, SessionContext};
use crate::wire;

/// Upstream reads grow to one tunnel message (the tunnel's unit is 64 KiB)
/// while results stream; a session of short answers keeps 8 KiB per buffer,
/// so a thousand idle sessions do not hold 64 MiB of buffers each way.
const READ_CHUNK: usize = 64 * 1024;
const FIRST_CHUNK: usize = 8 * 1024;

/// How a session ended, for the record and the close frame.
pub(super) struct End {
    code: u16,
    reason: String,
    /// A PostgreSQL error to send the client first, when the stream allows it.
    client_error: Option<(String, String)>,
}

impl End {
    pub(super) fn normal(reason: &str) -> End {
        End {
            code: wire::CLOSE_NORMAL,
            reason: reason.into(),
            client_error: None,
        }
    }

    pub(super) fn failed(code: u16, sqlstate: &str, reason: String) -> End {
        End {
            code,
            reason: reason.clone(),
            client_error: Some((sqlstate.into(), reason)),
        }
    }

    /// Drops the client-facing error when the stream is mid-frame, where an
    /// injected frame would corrupt what the client sees; the close says why.
    fn only_if(mut self, at_boundary: bool) -> End {
        if !at_boundary {
            self.client_error = None;
        }
        self
    }
}

#[derive(Default)]
pub(super) struct Counters {
    pub from_client: u64,
    pub to_client: u64,
}

pub async fn serve(ctx: SessionContext, pg: &Services, mut tx: TunnelTx, mut rx: TunnelRx) {
    let mut counters = Counters::default();
    let tracker = Mutex::new(Tracker::default());
    let end = run(&ctx, pg, &mut tx, &mut rx, &tracker, &mut counters).await;
    if let Some((code, msg)) = &end.client_error {
        let mut out = BytesMut::new();
        codec::error_response(
            &mut out,
            "FATAL",
            code,
            &format!("custody: {msg}"),
            Some(&format!("audit id {}", ctx.session.audit_id)),
        );
        let _ = tx.send(out.freeze()).await;
    }
    tx.close(end.code, &end.reason).await;
    let (statements, rows) = tracker
        .lock()
        .map(|t| (t.statements, t.rows))
        .unwrap_or_default();
    let _ = ctx
        .session
        .finish(EventBody::SessionEnd {
            reason: end.reason,
            statements,
            rows,
            bytes_from_client: counters.from_client,
            bytes_to_client: counters.to_client,
        })
        .await;
}

async fn run(
    ctx: &SessionContext,
    pg: &Services,
    tx: &mut TunnelTx,
    rx: &mut TunnelRx,
    tracker: &Mutex<Tracker>,
    counters: &mut Counters,
) -> End {
    let (minor, params, pending) = match startup::opening(ctx, tx, rx, counters).await {
        Ok(Opening::Session {
            minor,
            params,
            pending,
        }) => (minor, params, pending),
        Ok(Opening::Cancel { pid, key }) => return startup::cancel(ctx, pg, pid, key).await,
        Err(end) => return end,
    };
    let login = match startup::login(ctx, pg, &params).await {
        Ok(l) => l,
        Err(end) => return end,
    };
    let session = &ctx.session;
    let cancel_key = pg.cancels.register(
        CancelTarget {
            connection: session.permit.connection.clone(),
            pid: login.up.pid,
            key: login.up.key,
            principal: session.permit.principal.id(),
            audit_id: session.audit_id.clone(),
        },
        ctx.watch.store.clone(),
    );
    let hello = startup::hello(minor, &params, &login.up, (cancel_key.pid, cancel_key.key));
    counters.to_client += hello.len() as u64;
    if tx.send(hello).await.is_err() {
        return End::normal("client went away during startup");
    }
    let end = relay(ctx, login, pending, tx, rx, tracker, counters).await;
    drop(cancel_key);
    end
}

/// Why the relay stopped.
enum RelayEnd {
    Interrupted(Interrupt),
    Client(String),
    ClientProtocol(PgError),
    Upstream(PgError),
    Recording(String),
    /// The upstream's answer was refused; `clean` when the client had
    /// received only whole frames, so the refusal can reach it.
    Refused {
        why: String,
        clean: bool,
    },
}

impl From<PgError> for RelayEnd {
    fn from(e: PgError) -> Self {
        match e {
            PgError::Io(_) => RelayEnd::Upstream(e),
            other => RelayEnd::ClientProtocol(other),
        }
    }
}

impl From<std::io::Error> for RelayEnd {
    fn from(e: std::io::Error) -> Self {
        RelayEnd::Upstream(PgError::Io(e))
    }
}

impl RelayEnd {
    fn into_end(self, at_boundary: bool) -> End {
        let end = match self {
            RelayEnd::Client(why) => {
                return End {
                    code: wire::CLOSE_PROTOCOL,
                    reason: format!("client tunnel error: {why}"),
                    client_error: None,
                }
            }
            RelayEnd::Interrupted(i) => End::failed(i.close_code(), i.sqlstate(), i.reason()),
            RelayEnd::ClientProtocol(e) => End::failed(
                wire::CLOSE_PROTOCOL,
                e.sqlstate(),
                format!("malformed message from client: {e}"),
            ),
            RelayEnd::Upstream(e) => End::failed(
                wire::CLOSE_ERROR,
                "08006",
                format!("upstream connection lost: {e}"),
            ),
            RelayEnd::Recording(why) => {
                let i = Interrupt::Recording(why);
                End::failed(i.close_code(), i.sqlstate(), i.reason())
            }
            RelayEnd::Refused { why, clean } => {
                return End::failed(wire::CLOSE_POLICY, "0A000", why).only_if(clean)
            }
        };
        end.only_if(at_boundary)
    }
}

/// What both directions share while the relay runs.
struct Relay<'a> {
    ctx: &'a SessionContext,
    tracker: &'a Mutex<Tracker>,
    mask: Option<MaskCtx<'a>>,
    /// Wakes the upstream side when a refusal is queued while it is idle.
    refusals: tokio::sync::Notify,
    replication: bool,
}

impl Relay<'_> {
    /// Records events, masked like everything else in the recording.
    async fn record(&self, events: impl Iterator<Item = EventBody>) -> Result<(), RelayEnd> {
        for mut ev in events {
            hooks::scrub(self.mask, &mut ev);
            // A walsender session's commands are replication commands.
            if let (true, EventBody::Statement { protocol, .. }) = (self.replication, &mut ev) {
                *protocol = "replication".into();
            }
            self.ctx
                .session
                .tap()
                .record(ev)
                .await
                .map_err(|e| RelayEnd::Recording(e.to_string()))?;
        }
        Ok(())
    }
}

async fn relay(
    ctx: &SessionContext,
    login: Login,
    pending: BytesMut,
    tx: &mut TunnelTx,
    rx: &mut TunnelRx,
    tracker: &Mutex<Tracker>,
    counters: &mut Counters,
) -> End {
    let Login {
        up,
        engine,
        catalog,
        replication,
    } = login;
    let mask = engine.as_deref().map(|engine| MaskCtx {
        engine,
        catalog: &catalog,
    });
    let relay = Relay {
        ctx,
        tracker,
        mask,
        refusals: tokio::sync::Notify::new(),
        replication,
    };
    let (up_r, up_w) = tokio::io::split(up.stream);
    let max = ctx.limits.max_message_bytes;
    let mut server_scan = Scanner::collect_limited(max);
    let Counters {
        from_client,
        to_client,
    } = counters;
    let result = tokio::select! {
        i = ctx.interrupted() => Err(RelayEnd::Interrupted(i)),
        r = client_to_upstream(&relay, pending, rx, up_w, from_client) => r,
        r = upstream_to_client(&relay, up.leftover, up_r, tx, &mut server_scan, to_client) => r,
    };
    let unanswered = tracker
        .lock()
        .map(|mut t| t.drain_unanswered())
        .unwrap_or_default();
    let _ = relay.record(unanswered.into_iter()).await;
    match result {
        Ok(end) => end,
        Err(e) => e.into_end(server_scan.at_boundary()),
    }
}

/// The client's frames, checked and tracked, go upstream.
async fn client_to_upstream(
    relay: &Relay<'_>,
    pending: BytesMut,
    rx: &mut TunnelRx,
    mut up_w: impl AsyncWrite + Unpin,
    from_client: &mut u64,
) -> Result<End, RelayEnd> {
    let ctx = relay.ctx;
    let session = &ctx.session;
    let comment = (ctx.sqlcommenter && !relay.replication)
        .then(|| comment::sqlcommenter(session.traceparent.as_deref(), &session.audit_id));
    let mut hook = ClientHook::new(relay.tracker, &ctx.rules, relay.mask, &session.audit_id);
    hook.comment = comment.as_deref();
    if let Some(r) = &session.approval {
        hook.approved.review_id = r.request.id.clone();
        hook.approved.review_audit_id = r.request.audit_id.clone();
        hook.approved.window = r.request.window_secs.is_some();
        hook.approved
            .hashes
            .insert(r.request.statement_sha256.clone());
    }
    let mut client_scan = Scanner::new(ctx.limits.max_message_bytes);
    let mut out = BytesMut::with_capacity(FIRST_CHUNK);
    if !pending.is_empty() {
        client_scan.feed(&pending, &mut hook, &mut out)?;
    }
    loop {
        // A held statement's review is stored before anything goes
        // upstream: the refusal naming it comes back from there and
        // must not reach the client before the review exists.
        if !out.is_empty() && hook.holds.is_empty() {
            up_w.write_all(&out).await?;
            out.clear();
        }
        relay.record(hook.events.drain(..)).await?;
        for h in std::mem::take(&mut hook.holds) {
            store_hold(relay, &h).await;
        }
        if !out.is_empty() {
            up_w.write_all(&out).await?;
            out.clear();
        }
        if std::mem::take(&mut hook.blocked) {
            relay.refusals.notify_one();
        }
        if hook.terminated {
            return Ok(End::normal("client terminated the session"));
        }
        let chunk = match rx.recv().await {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(End::normal(wire::CLIENT_CLOSED)),
            Err(e) => return Err(RelayEnd::Client(e.to_string())),
        };
        *from_client += chunk.len() as u64;
        client_scan.feed(&chunk, &mut hook, &mut out)?;
    }
}

/// Stores the review of a statement the hook held (masked as reviewers see it).
async fn store_hold(relay: &Relay<'_>, h: &hooks::Hold) {
    let shown = match relay.mask {
        Some(m) => super::masking::sql(m.engine, &h.statement, &mut Default::default()),
        None => h.statement.clone(),
    };
    let session = &relay.ctx.session;
    let stored = relay
        .ctx
        .approvals
        .hold(session, &h.review_id, &h.statement, &shown, &h.rule)
        .await;
    if let Err(e) = stored {
        tracing::error!(target: "custody::audit", audit_id = %session.audit_id, review_id = %h.review_id, "review could not be stored: {e}");
    }
}

/// The upstream's frames, masked and paired with statements, go to the
/// client, with the gateway's own refusals slotted in where they belong.
async fn upstream_to_client(
    relay: &Relay<'_>,
    leftover: BytesMut,
    mut up_r: impl AsyncRead + Unpin,
    tx: &mut TunnelTx,
    server_scan: &mut Scanner,
    to_client: &mut u64,
) -> Result<End, RelayEnd> {
    let ctx = relay.ctx;
    let mut chunk = FIRST_CHUNK;
    let mut buf = BytesMut::with_capacity(chunk);
    buf.extend_from_slice(&leftover);
    let mut out = BytesMut::with_capacity(chunk);
    let mut done = Vec::new();
    let mut counts = crate::mask::Counts::default();
    let every = ctx.limits.ping_interval;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut drain_later = false;
    let client = |e: crate::session::tunnel::TunnelError| RelayEnd::Client(e.to_string());
    loop {
        if buf.is_empty() {
            buf.reserve(chunk);
            tokio::select! {
                n = up_r.read_buf(&mut buf) => {
                    let n = n?;
                    if n == 0 {
                        return Ok(End::normal("upstream closed the connection"));
                    }
                    // A full read: more is coming, read more at a time.
                    if n >= chunk {
                        chunk = (chunk * 2).min(READ_CHUNK);
                    }
                }
                _ = ping.tick() => {
                    tx.ping().await.map_err(client)?;
                    continue;
                }
                _ = relay.refusals.notified() => {
                    // Mid-frame, the refusal waits for the frame's end.
                    drain_later = !server_scan.at_boundary();
                    if !drain_later {
                        hooks::drain_blocked(relay.tracker, &mut out).map_err(RelayEnd::Upstream)?;
                        if !out.is_empty() {
                            *to_client += out.len() as u64;
                            tx.send(out.split().freeze()).await.map_err(client)?;
                        }
                    }
                    continue;
                }
            }
        }
        let mut hook = ServerHook {
            tracker: relay.tracker,
            done: &mut done,
            mask: relay.mask,
            guarded: ctx.rules.inspects(),
            counts: &mut counts,
        };
        // Nothing of this read reaches the client if a frame in it is
        // refused: the client then stands where the last read left it.
        let clean = server_scan.at_boundary();
        let fed = server_scan.feed(&buf, &mut hook, &mut out);
        if let Err(e) = fed {
            // Statements this read finished before the refused frame ran.
            relay.record(done.drain(..)).await?;
            return Err(match e {
                PgError::Refused(why) => RelayEnd::Refused { why, clean },
                e => RelayEnd::Upstream(e),
            });
        }
        buf.clear();
        // A refusal that arrived mid-frame goes out once that frame has
        // streamed through (checked only then: no lock per read).
        if drain_later && server_scan.at_boundary() {
            drain_later = false;
            hooks::drain_blocked(relay.tracker, &mut out).map_err(RelayEnd::Upstream)?;
        }
        *to_client += out.len() as u64;
        tx.send(out.split().freeze()).await.map_err(client)?;
        relay.record(done.drain(..)).await?;
    }
}
