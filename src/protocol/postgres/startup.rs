//! The first moments of a tunnelled PostgreSQL session: the client's
//! startup packet (or CancelRequest), the gateway's own login upstream with
//! a credential the client never sees, and the hello the client gets back.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::catalog::Catalog;
use super::codec::{self, Startup};
use super::relay::{Counters, End};
use super::{upstream, PgError, Services};
use crate::mask::Engine;
use crate::policy::guardrails::unsafe_encoding;
use crate::recording::EventBody;
use crate::session::tunnel::{TunnelRx, TunnelTx};
use crate::session::{Masker, SessionContext};
use crate::wire;

/// What the client asked for.
pub(super) enum Opening {
    Session {
        minor: u16,
        params: Vec<(String, String)>,
        /// Bytes that came after the startup packet.
        pending: BytesMut,
    },
    Cancel {
        pid: i32,
        key: i32,
    },
}

/// Reads the client's startup: SSL/GSSENC requests are answered 'N' (the
/// tunnel is already TLS on Cloud Run). Until the startup packet is in, a
/// tunnel costs a socket and a task and proves nothing, so how long a
/// client may take is bounded (`[server] startup_timeout`).
pub(super) async fn opening(
    ctx: &SessionContext,
    tx: &mut TunnelTx,
    rx: &mut TunnelRx,
    counters: &mut Counters,
) -> Result<Opening, End> {
    let mut pending = BytesMut::new();
    let timeout = ctx.limits.startup_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let protocol = |why: String| End::failed(wire::CLOSE_PROTOCOL, "08P01", why);
    loop {
        match codec::decode_startup(&mut pending) {
            Ok(Some(Startup::Ssl | Startup::GssEnc)) => {
                if tx.send(Bytes::from_static(b"N")).await.is_err() {
                    return Err(End::normal("client went away during startup"));
                }
            }
            Ok(Some(Startup::Cancel { pid, key })) => return Ok(Opening::Cancel { pid, key }),
            Ok(Some(Startup::Startup { minor, params })) => {
                return Ok(Opening::Session {
                    minor,
                    params,
                    pending,
                })
            }
            Ok(None) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                Err(_elapsed) => {
                    return Err(End::failed(
                        wire::CLOSE_POLICY,
                        "08P01",
                        format!("no startup packet within {timeout:?} ([server] startup_timeout)"),
                    ))
                }
                Ok(Ok(Some(b))) => {
                    counters.from_client += b.len() as u64;
                    if pending.len() + b.len() > codec::MAX_STARTUP {
                        return Err(protocol("startup packet too large".into()));
                    }
                    pending.extend_from_slice(&b);
                }
                Ok(Ok(None)) => return Err(End::normal("client closed before startup")),
                Ok(Err(e)) => return Err(protocol(e.to_string())),
            },
            Err(e) => return Err(protocol(format!("invalid startup from client: {e}"))),
        }
    }
}

/// The upstream session the gateway logged into for the client.
pub(super) struct Login {
    pub up: upstream::Upstream,
    pub engine: Option<Arc<Engine>>,
    pub catalog: Arc<Catalog>,
    /// A walsender session (`allow_replication`): its commands have their
    /// own grammar, which a sqlcommenter comment would break.
    pub replication: bool,
}

/// Logs in upstream as the connection's user, with the session's masker
/// and column-rule catalog ready before the client's first statement.
pub(super) async fn login(
    ctx: &SessionContext,
    pg: &Services,
    params: &[(String, String)],
) -> Result<Login, End> {
    let conn = &ctx.session.permit.connection;
    refuse_startup_params(ctx, params).await?;
    let failed = |sqlstate: &str, why: String| End::failed(wire::CLOSE_ERROR, sqlstate, why);
    let password = super::credential(conn, &ctx.credentials)
        .await
        .map_err(|e| failed(e.sqlstate(), e.to_string()))?;
    let app = format!("custody/{}", ctx.session.audit_id);
    let mut up = match upstream::connect(conn, &password, &app, params).await {
        Ok(up) => up,
        Err(e) => {
            record_error(ctx, e.to_string()).await;
            return Err(failed(e.sqlstate(), e.to_string()));
        }
    };
    drop(password);
    if conn.iam_auth() {
        let login = EventBody::UpstreamLogin {
            method: "cloud_sql_iam".into(),
            user: up.user.clone(),
            instance: conn.instance.as_ref().map(|i| i.get_ref().clone()),
        };
        let _ = ctx.session.tap().record(login).await;
    }
    let engine = match &ctx.masker {
        Masker::Failed(why) => {
            return Err(failed(
                "08001",
                format!("masking for {}: {why}", conn.name()),
            ))
        }
        m => m.engine().cloned(),
    };
    let catalog = match &engine {
        Some(e) => {
            let got = pg
                .catalogs
                .get(conn.name(), e, &mut up.stream, &mut up.leftover);
            got.await
                .map_err(|e: PgError| failed(e.sqlstate(), e.to_string()))?
        }
        None => Default::default(),
    };
    refuse_unsafe_encoding(ctx, params, &up.params).await?;
    Ok(Login {
        up,
        engine,
        catalog,
        replication: upstream::wants_replication(params),
    })
}

/// A replication connection (unless the connection allows it) and an
/// `options` setting off the allow list are refused, never silently
/// turned into something else (SQLSTATE 0A000, feature not supported).
async fn refuse_startup_params(
    ctx: &SessionContext,
    params: &[(String, String)],
) -> Result<(), End> {
    let conn = &ctx.session.permit.connection;
    let name = conn.name();
    let audit = &ctx.session.audit_id;
    let why = if upstream::wants_replication(params) && !conn.allow_replication {
        format!("replication is not available through Custody on connection {name} (allow_replication is off) (audit id {audit})")
    } else {
        let refused = params
            .iter()
            .filter(|(k, _)| k == "options")
            .find_map(|(_, v)| upstream::client_options(v).err());
        match refused {
            None => return Ok(()),
            Some(s) => format!("the startup option {s:?} is not available through Custody; options may set only {} (audit id {audit})", upstream::OPTIONS_ALLOWED.join(", ")),
        }
    };
    record_error(ctx, why.clone()).await;
    Err(End::failed(wire::CLOSE_POLICY, "0A000", why))
}

/// Guardrails and masking read statements in the session's encoding; in
/// the client-only encodings a multibyte character can hide a quote, so
/// the two readers would disagree. Refused at startup (the client's own
/// parameter, or a role/database default the upstream reports).
async fn refuse_unsafe_encoding(
    ctx: &SessionContext,
    params: &[(String, String)],
    reported: &[(String, String)],
) -> Result<(), End> {
    if !ctx.rules.inspects() {
        return Ok(());
    }
    let found = params
        .iter()
        .chain(reported.iter())
        .find(|(k, v)| k.eq_ignore_ascii_case("client_encoding") && unsafe_encoding(v));
    let Some((_, v)) = found else {
        return Ok(());
    };
    let name = ctx.session.permit.connection.name();
    let why = format!("client_encoding {v} is refused on connection {name}: guardrails or masking read statements, and in this encoding a multibyte character can hide a quote or backslash; use UTF8 (audit id {})", ctx.session.audit_id);
    record_error(ctx, why.clone()).await;
    Err(End::failed(wire::CLOSE_POLICY, "0A000", why))
}

async fn record_error(ctx: &SessionContext, message: String) {
    let _ = ctx.session.tap().record(EventBody::Error { message }).await;
}

/// AuthenticationOk, the upstream's parameters, the gateway's own cancel
/// key and ReadyForQuery: what the client sees of the login.
pub(super) fn hello(
    minor: u16,
    params: &[(String, String)],
    up: &upstream::Upstream,
    cancel: (i32, i32),
) -> Bytes {
    let mut hello = BytesMut::new();
    if minor > 0 {
        let unsupported: Vec<&str> = params
            .iter()
            .filter(|(k, _)| k.starts_with("_pq_."))
            .map(|(k, _)| k.as_str())
            .collect();
        codec::negotiate_protocol_version(&mut hello, &unsupported);
    }
    codec::auth_ok(&mut hello);
    for (k, v) in &up.params {
        codec::parameter_status(&mut hello, k, v);
    }
    codec::backend_key_data(&mut hello, cancel.0, cancel.1);
    codec::ready_for_query(&mut hello, b'I');
    hello.freeze()
}

/// A CancelRequest arrives on its own tunnel, on whichever instance: forward
/// it if the key is one of ours (this instance's or the store's) and the
/// caller is the principal who owns the session being cancelled. Anything
/// else is dropped without a word to the client, as PostgreSQL does.
pub(super) async fn cancel(ctx: &SessionContext, pg: &Services, pid: i32, key: i32) -> End {
    use super::cancel::Found;
    let session = &ctx.session;
    let me = session.permit.principal.id();
    let found = pg
        .cancels
        .lookup(
            ctx.watch.store.as_ref(),
            &session.permit.connection,
            pid,
            key,
        )
        .await;
    let outcome = match found {
        Err(e) => format!("failed: the cancel key store cannot be read: {e}"),
        Ok(Found::Unknown) => {
            "refused: unknown cancel key (no such session, or it has ended)".to_string()
        }
        Ok(Found::OtherConnection) => {
            "refused: the cancel key belongs to another connection".to_string()
        }
        Ok(Found::Target(t)) if t.principal != me => {
            "refused: the cancel key belongs to another principal".to_string()
        }
        Ok(Found::Target(t)) => match upstream::cancel(&t.connection, t.pid, t.key).await {
            Ok(()) => format!("forwarded to the upstream of session {}", t.audit_id),
            Err(e) => format!("failed: {e}"),
        },
    };
    let _ = session.tap().record(EventBody::Cancel { outcome }).await;
    // The client learns nothing about other sessions (as from PostgreSQL,
    // which answers a cancel with nothing): the outcome is the recording's.
    End::normal("cancel request received")
}
