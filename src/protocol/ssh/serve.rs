//! One SSH tunnel session: reach the upstream, run the SSH server over the
//! tunnel, end on close, login timeout or an interrupt (shutdown, deadline,
//! revocation, recording failure), then seal.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use russh::server::{self};
use russh::MethodSet;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::channel::Shared;
use super::front::Front;
use super::upstream::{self};
use super::{Services, SshError};
use crate::config::ConnectionConfig;
use crate::recording::EventBody;
use crate::session::tunnel::{TunnelRx, TunnelTx};
use crate::session::{Masker, SessionContext};
use crate::wire;

const CLIENT_WINDOW: u32 = 2 << 20;
const CLIENT_PACKET: u32 = 32 << 10;

/// Why a tunnel session ended, for the close frame and the recording.
struct End {
    code: u16,
    reason: String,
}

impl End {
    fn new(code: u16, reason: impl Into<String>) -> End {
        End {
            code,
            reason: reason.into(),
        }
    }
}

type Counted = Arc<(AtomicU64, AtomicU64)>;

/// Runs one SSH session over the tunnel, then seals its recording.
pub async fn serve(ctx: SessionContext, ssh: &Services, mut tx: TunnelTx, mut rx: TunnelRx) {
    let (end_tx, mut end_rx) = watch::channel(None);
    let shared = shared(&ctx, end_tx);
    let (key, up, refusal) = prepare(&ctx).await;
    let bytes: Counted = Arc::default();
    let front = Front {
        shared: shared.clone(),
        upstream: up,
        key,
        refusal: refusal.clone(),
        channels: HashMap::new(),
        bytes: bytes.clone(),
    };
    let config = server_config(ssh, &ctx.session.permit.connection);
    let (ours, theirs) = tokio::io::duplex(256 << 10);
    let mut running = tokio::spawn(async move {
        match server::run_stream(config, theirs, front).await {
            Ok(s) => s.await,
            Err(e) => Err(e),
        }
    });
    let (mut rd, mut wr) = tokio::io::split(ours);
    let tunnel_bytes: Counted = Arc::default();
    let end = tokio::select! {
        e = ssh_to_client(&mut rd, &mut tx, &tunnel_bytes, ctx.limits.ping_interval) => e,
        e = client_to_ssh(&mut rx, &mut wr, &tunnel_bytes) => Some(e),
        why = login_deadline(&shared, ctx.limits.ssh_login_timeout) => Some(End::new(wire::CLOSE_POLICY, why)),
        i = ctx.interrupted() => Some(End::new(i.close_code(), i.reason())),
        _ = end_rx.wait_for(|e| e.is_some()) => None,
    };
    // Closing our end of the pipe ends the SSH session loop, which drops
    // the handler (and its recorder tap) when it returns.
    drop((rd, wr));
    let outcome = match tokio::time::timeout(Duration::from_secs(2), &mut running).await {
        Ok(r) => r,
        Err(_) => {
            running.abort();
            (&mut running).await
        }
    };
    let set_reason = end_rx.borrow().clone();
    let end = match (end, set_reason, refusal) {
        (Some(e), _, _) => e,
        (None, Some(why), _) | (None, None, Some(why)) => End::new(wire::CLOSE_ERROR, why),
        (None, None, None) => match outcome {
            Ok(Err(e)) => End::new(wire::CLOSE_PROTOCOL, format!("ssh protocol error: {e}")),
            _ => End::new(wire::CLOSE_NORMAL, wire::SSH_ENDED),
        },
    };
    tx.close(end.code, &end.reason).await;
    let statements = stop_pumps(shared).await;
    let _ = ctx
        .session
        .finish(EventBody::SessionEnd {
            reason: end.reason,
            statements,
            rows: 0,
            bytes_from_client: bytes.0.load(Relaxed),
            bytes_to_client: bytes.1.load(Relaxed),
        })
        .await;
}

/// What the session's channels share.
fn shared(ctx: &SessionContext, end: watch::Sender<Option<String>>) -> Arc<Shared> {
    let session = &ctx.session;
    Arc::new(Shared {
        audit_id: session.audit_id.clone(),
        traceparent: session.traceparent.clone(),
        conn: session.permit.connection.clone(),
        tap: session.tap().clone(),
        mask: ctx.masker.engine().cloned(),
        rules: ctx.rules.clone(),
        // Only a time-boxed (JIT) approval covers arbitrary held commands;
        // a single-statement approval is used by `custody exec` instead.
        approved: session
            .approval
            .as_ref()
            .is_some_and(|r| r.request.window_secs.is_some()),
        authed: AtomicBool::new(false),
        commands: AtomicU64::new(0),
        end,
        pumps: Mutex::default(),
    })
}

/// Reaches the upstream first: if it is down, its host key is wrong, or the
/// session's masking cannot be set up, the client's SSH login shows why
/// (banner) and fails.
async fn prepare(
    ctx: &SessionContext,
) -> (
    Option<russh::keys::PrivateKey>,
    Option<russh::client::Handle<upstream::Upstream>>,
    Option<String>,
) {
    let conn = &ctx.session.permit.connection;
    let prepared = async {
        if let Masker::Failed(why) = &ctx.masker {
            return Err(SshError::Protocol(format!(
                "masking for {}: {why}",
                conn.name()
            )));
        }
        let key = upstream::private_key(&ctx.credentials, conn).await?;
        let handle = upstream::connect(conn).await?;
        Ok::<_, SshError>((key, handle))
    }
    .await;
    match prepared {
        Ok((k, h)) => (Some(k), Some(h), None),
        Err(e) => {
            tracing::warn!(target: "custody::audit", audit_id = %ctx.session.audit_id, error = %e, "ssh upstream unavailable");
            let _ = ctx
                .session
                .tap()
                .record(EventBody::Error {
                    message: e.to_string(),
                })
                .await;
            (None, None, Some(e.to_string()))
        }
    }
}

async fn client_to_ssh(
    rx: &mut TunnelRx,
    wr: &mut (impl AsyncWrite + Unpin),
    bytes: &Counted,
) -> End {
    loop {
        match rx.recv().await {
            Ok(Some(b)) => {
                bytes.0.fetch_add(b.len() as u64, Relaxed);
                if wr.write_all(&b).await.is_err() {
                    return End::new(wire::CLOSE_NORMAL, wire::SSH_ENDED);
                }
            }
            Ok(None) => return End::new(wire::CLOSE_NORMAL, wire::CLIENT_CLOSED),
            Err(e) => return End::new(wire::CLOSE_PROTOCOL, format!("client tunnel error: {e}")),
        }
    }
}

async fn ssh_to_client(
    rd: &mut (impl AsyncRead + Unpin),
    tx: &mut TunnelTx,
    bytes: &Counted,
    every: Duration,
) -> Option<End> {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut buf = BytesMut::with_capacity(64 << 10);
    loop {
        buf.reserve(64 << 10);
        tokio::select! {
            n = rd.read_buf(&mut buf) => {
                match n {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => {
                        bytes.1.fetch_add(n as u64, Relaxed);
                        if let Err(e) = tx.send(buf.split().freeze()).await {
                            return Some(End::new(wire::CLOSE_PROTOCOL, format!("client tunnel error: {e}")));
                        }
                    }
                }
            }
            _ = ping.tick() => {
                if tx.ping().await.is_err() {
                    return Some(End::new(wire::CLOSE_PROTOCOL, "client tunnel gone"));
                }
            }
        }
    }
}

async fn login_deadline(shared: &Shared, by: Duration) -> String {
    tokio::time::sleep(by).await;
    if !shared.authed.load(Relaxed) {
        return format!(
            "the client did not finish the SSH handshake and login within {}s",
            by.as_secs()
        );
    }
    std::future::pending().await
}

/// Stops the channel pumps; returns the command count. The last tap clone
/// goes with `shared`: the recording can then be sealed.
async fn stop_pumps(shared: Arc<Shared>) -> u64 {
    let pumps = shared
        .pumps
        .lock()
        .map(|mut p| std::mem::take(&mut *p))
        .unwrap_or_default();
    for p in pumps {
        p.abort();
        let _ = p.await;
    }
    shared.commands.load(Relaxed)
}

fn server_config(ssh: &Services, conn: &ConnectionConfig) -> Arc<server::Config> {
    Arc::new(server::Config {
        keys: ssh.host_key.iter().cloned().collect(),
        methods: MethodSet::from(
            &[
                russh::MethodKind::None,
                russh::MethodKind::PublicKey,
                russh::MethodKind::Password,
            ][..],
        ),
        // Nothing secret is checked here (OIDC already was): no need to slow rejections.
        auth_rejection_time: Duration::from_millis(50),
        auth_rejection_time_initial: Some(Duration::ZERO),
        inactivity_timeout: Some(conn.idle_timeout),
        // OpenSSH's own session window and packet size: a larger window
        // only makes the ssh client buffer (and memmove) more, measured
        // 0.26 of direct scp with 16 MiB.
        window_size: CLIENT_WINDOW,
        maximum_packet_size: CLIENT_PACKET,
        preferred: upstream::tuned_preferred(),
        ..Default::default()
    })
}
