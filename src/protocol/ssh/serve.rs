//! One SSH tunnel session: reach the upstream, run the SSH server over the
//! WebSocket, end on close, shutdown, expiry or recording failure, then seal.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use russh::server::{self};
use russh::MethodSet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::channel::Shared;
use super::front::Front;
use super::upstream::{self};
use crate::config::ConnectionConfig;
use crate::recording::EventBody;
use crate::session::tunnel::{self, TunnelRx, TunnelTx};
use crate::session::Session;
use crate::Gateway;

const CLIENT_WINDOW: u32 = 2 << 20;
const CLIENT_PACKET: u32 = 32 << 10;

/// Why a tunnel session ended, for the close frame and the recording.
struct End {
    code: u16,
    reason: String,
}

/// Runs one SSH session over the tunnel, then seals its recording.
pub async fn serve(gw: Arc<Gateway>, session: Session, mut tx: TunnelTx, mut rx: TunnelRx) {
    let conn = session.permit.connection.clone();
    let audit_id = session.audit_id.clone();
    let mask = gw
        .masking_for(&conn, &session.permit.principal)
        .await
        .ok()
        .flatten();
    let (end_tx, mut end_rx) = watch::channel(None);
    let shared = Arc::new(Shared {
        audit_id: audit_id.clone(),
        traceparent: session.traceparent.clone(),
        conn: conn.clone(),
        tap: session.tap().clone(),
        mask,
        rails: gw.rails.get(conn.name()).cloned(),
        // Only a time-boxed (JIT) approval covers arbitrary held commands;
        // a single-statement approval is used by `custody exec` instead.
        approved: session
            .approval
            .as_ref()
            .is_some_and(|r| r.request.window_secs.is_some()),
        authed: AtomicBool::new(false),
        commands: AtomicU64::new(0),
        end: end_tx,
        pumps: Mutex::default(),
    });
    // Reach the upstream first: if it is down or its host key is wrong, the
    // client's SSH login shows why (banner) and fails.
    let prepared = async {
        let key = upstream::private_key(&gw, &conn).await?;
        let handle = upstream::connect(&conn).await?;
        Ok::<_, super::SshError>((key, handle))
    }
    .await;
    let (key, up, refusal) = match prepared {
        Ok((k, h)) => (Some(k), Some(h), None),
        Err(e) => {
            tracing::warn!(target: "custody::audit", audit_id = %audit_id, error = %e, "ssh upstream unavailable");
            let _ = session
                .tap()
                .record(EventBody::Error {
                    message: e.to_string(),
                })
                .await;
            (None, None, Some(e.to_string()))
        }
    };
    let bytes = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let front = Front {
        shared: shared.clone(),
        upstream: up,
        key,
        refusal: refusal.clone(),
        channels: HashMap::new(),
        bytes: bytes.clone(),
    };
    let config = server_config(&gw, &conn);
    let (ours, theirs) = tokio::io::duplex(256 << 10);
    let mut running = tokio::spawn(async move {
        match server::run_stream(config, theirs, front).await {
            Ok(s) => s.await,
            Err(e) => Err(e),
        }
    });
    let (mut rd, mut wr) = tokio::io::split(ours);
    let tunnel_bytes = (AtomicU64::new(0), AtomicU64::new(0));
    let client_to_ssh = async {
        loop {
            match rx.recv().await {
                Ok(Some(b)) => {
                    tunnel_bytes.0.fetch_add(b.len() as u64, Relaxed);
                    if wr.write_all(&b).await.is_err() {
                        return End {
                            code: tunnel::CLOSE_NORMAL,
                            reason: "ssh session ended".into(),
                        };
                    }
                }
                Ok(None) => {
                    return End {
                        code: tunnel::CLOSE_NORMAL,
                        reason: "client closed the tunnel".into(),
                    }
                }
                Err(e) => {
                    return End {
                        code: tunnel::CLOSE_PROTOCOL,
                        reason: format!("client tunnel error: {e}"),
                    }
                }
            }
        }
    };
    let every = gw.config.server.ping_interval;
    let ssh_to_client = async {
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let mut buf = BytesMut::with_capacity(64 << 10);
        loop {
            buf.reserve(64 << 10);
            tokio::select! {
                n = rd.read_buf(&mut buf) => {
                    match n {
                        Ok(0) | Err(_) => return None,
                        Ok(n) => {
                            tunnel_bytes.1.fetch_add(n as u64, Relaxed);
                            if let Err(e) = tx.send(buf.split().freeze()).await {
                                return Some(End { code: tunnel::CLOSE_PROTOCOL, reason: format!("client tunnel error: {e}") });
                            }
                        }
                    }
                }
                _ = ping.tick() => {
                    if tx.ping().await.is_err() {
                        return Some(End { code: tunnel::CLOSE_PROTOCOL, reason: "client tunnel gone".into() });
                    }
                }
            }
        }
    };
    let login_by = gw.config.ssh.login_timeout;
    let login_deadline = async {
        tokio::time::sleep(login_by).await;
        if !shared.authed.load(Relaxed) {
            return format!(
                "the client did not finish the SSH handshake and login within {}s",
                login_by.as_secs()
            );
        }
        std::future::pending().await
    };
    let mut shutdown = gw.shutdown.subscribe();
    // Like PostgreSQL tunnels: a session under a delegation or a JIT window ends with it.
    let window_end = session.approval.as_ref().and_then(|r| {
        let w = r.request.window_secs?;
        Some(r.decision.as_ref()?.at + w as i64)
    });
    let expiry = match (session.permit.chain.exp, window_end) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let left = expiry.map(|e| (e - chrono::Utc::now().timestamp()).max(0) as u64);
    let max = match left {
        Some(l) if l < conn.max_duration.as_secs() => Duration::from_secs(l),
        _ => conn.max_duration,
    };
    let max_reason = if max < conn.max_duration {
        "the delegation or approval window this session runs under has expired".to_string()
    } else {
        format!("the session reached its maximum duration ({}s); Cloud Run also ends requests at 60 minutes; reconnect to continue", max.as_secs())
    };
    let end = tokio::select! {
        e = ssh_to_client => e,
        e = client_to_ssh => Some(e),
        why = login_deadline => Some(End { code: tunnel::CLOSE_POLICY, reason: why }),
        _ = shutdown.wait_for(|d| *d) => Some(End {
            code: tunnel::CLOSE_GOING_AWAY,
            reason: "the gateway is shutting down (the instance is being stopped); reconnect to continue".into(),
        }),
        _ = tokio::time::sleep(max) => Some(End {
            code: tunnel::CLOSE_POLICY,
            reason: max_reason,
        }),
        why = gw.revocations.until_revoked(gw.recorder.store.as_ref(), &session.permit.chain) => Some(End {
            code: tunnel::CLOSE_POLICY,
            reason: why,
        }),
        why = session.tap().failure() => Some(End {
            code: tunnel::CLOSE_ERROR,
            reason: format!("session ended because recording failed: {why}"),
        }),
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
        (None, Some(why), _) | (None, None, Some(why)) => End {
            code: tunnel::CLOSE_ERROR,
            reason: why,
        },
        (None, None, None) => match outcome {
            Ok(Err(e)) => End {
                code: tunnel::CLOSE_PROTOCOL,
                reason: format!("ssh protocol error: {e}"),
            },
            _ => End {
                code: tunnel::CLOSE_NORMAL,
                reason: "ssh session ended".into(),
            },
        },
    };
    tx.close(end.code, &end.reason).await;
    let pumps = shared
        .pumps
        .lock()
        .map(|mut p| std::mem::take(&mut *p))
        .unwrap_or_default();
    for p in pumps {
        p.abort();
        let _ = p.await;
    }
    let statements = shared.commands.load(Relaxed);
    // The last tap clone goes with it: the recording can now be sealed.
    drop(shared);
    let _ = session
        .finish(EventBody::SessionEnd {
            reason: end.reason,
            statements,
            rows: 0,
            bytes_from_client: bytes.0.load(Relaxed),
            bytes_to_client: bytes.1.load(Relaxed),
        })
        .await;
}

fn server_config(gw: &Gateway, conn: &ConnectionConfig) -> Arc<server::Config> {
    Arc::new(server::Config {
        keys: gw.ssh_host_key.iter().cloned().collect(),
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
