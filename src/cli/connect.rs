//! `custody connect`: a local listener (one tunnel per client) or stdio
//! (OpenSSH ProxyCommand) carried to a connection through the gateway.

use std::process::ExitCode;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use super::args::ConnectArgs;
use super::client::{ClientError, Target};
use super::tunnel::{open_tunnel, pump};
use super::{shutdown_signal, CliError};
use crate::protocol::postgres::codec::{self, Startup};

use crate::wire::{CLIENT_CLOSED, SSH_ENDED};

pub async fn run(args: ConnectArgs) -> Result<ExitCode, CliError> {
    let ConnectArgs {
        connection,
        listen,
        stdio,
        gw,
    } = args;
    let target = Target::resolve(gw.gateway, gw.token).await?;
    if stdio {
        let why = self::stdio(target, connection).await?;
        if !why.is_empty() && why != CLIENT_CLOSED && why != SSH_ENDED {
            eprintln!("custody: session ended: {why}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let addr = listen.unwrap_or_else(|| "127.0.0.1:6432".into());
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|source| CliError::Listen { addr, source })?;
    eprintln!(
        "custody: listening on {} for {connection} via {}",
        listener.local_addr()?,
        target.gateway
    );
    // On a signal, every open tunnel closes its WebSocket before we exit.
    // Each tunnel task holds a clone of `open`: when `closed` yields None,
    // they have all ended (bounded: a close never takes long).
    let (stop, stopped) = watch::channel(false);
    let (open, mut closed) = mpsc::channel::<()>(1);
    tokio::select! {
        r = self::listen(target, connection, listener, &stopped, open) => r?,
        _ = shutdown_signal() => {}
    }
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), closed.recv()).await;
    Ok(ExitCode::SUCCESS)
}

/// Resolves once `stopped` turns true.
async fn stopping(mut stopped: watch::Receiver<bool>) {
    if stopped.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// `custody connect --listen`: one tunnel per accepted local connection.
async fn listen(
    target: Target,
    connection: String,
    listener: TcpListener,
    stopped: &watch::Receiver<bool>,
    open: mpsc::Sender<()>,
) -> Result<(), ClientError> {
    loop {
        let (sock, peer) = listener.accept().await?;
        let _ = sock.set_nodelay(true);
        let (target, connection) = (target.clone(), connection.clone());
        let (stopped, open) = (stopped.clone(), open.clone());
        tokio::spawn(async move {
            let _open = open;
            match open_tunnel(&target, &connection).await {
                Ok((ws, audit)) => {
                    eprintln!("custody: session {audit} opened: {peer} → {connection}");
                    let (r, w) = sock.into_split();
                    let opened = std::time::Instant::now();
                    let why = pump(ws, r, w, stopping(stopped))
                        .await
                        .unwrap_or_else(|e| e.to_string());
                    let why = if why.is_empty() {
                        "closed".to_string()
                    } else {
                        why
                    };
                    eprintln!(
                        "custody: session {audit} ended: {why}{}",
                        cloud_run_hint(&why, opened.elapsed())
                    );
                }
                Err(e) => {
                    eprintln!(
                        "custody: {peer} → {connection} refused: {e}{}",
                        audit_suffix(&e)
                    );
                    pg_refuse(sock, &format!("custody: {e}{}", audit_suffix(&e))).await;
                }
            }
        });
    }
}

/// `custody connect --stdio`: the tunnel on stdin/stdout (OpenSSH ProxyCommand).
async fn stdio(target: Target, connection: String) -> Result<String, ClientError> {
    let stop = hangup();
    let (ws, audit) = open_tunnel(&target, &connection).await?;
    eprintln!("custody: session {audit} opened → {connection}");
    // OpenSSH sends its ProxyCommand SIGHUP as it exits: close, then go.
    let why = pump(ws, stdin_reader(), stdout_writer(), stop).await?;
    Ok(why)
}

/// SIGHUP, SIGTERM or Ctrl-C. SIGHUP is caught from the call on, so it
/// is registered before the tunnel opens.
fn hangup() -> impl std::future::Future<Output = ()> {
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    async move {
        let hup = async {
            match hup {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = hup => {}
            _ = shutdown_signal() => {}
        }
    }
}

/// Under ProxyCommand stdin and stdout are pipes: read and write them on the
/// reactor (non-blocking) instead of tokio's blocking-thread stdio, which
/// hands every chunk to another thread. Anything else (a terminal, a file)
/// keeps the portable path.
fn stdin_reader() -> Box<dyn tokio::io::AsyncRead + Unpin + Send> {
    use std::os::fd::AsFd;
    let pipe = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .and_then(|fd| tokio::net::unix::pipe::Receiver::from_owned_fd(fd).ok());
    match pipe {
        Some(p) => Box::new(p),
        None => Box::new(tokio::io::stdin()),
    }
}

fn stdout_writer() -> Box<dyn tokio::io::AsyncWrite + Unpin + Send> {
    use std::os::fd::AsFd;
    let pipe = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .and_then(|fd| tokio::net::unix::pipe::Sender::from_owned_fd(fd).ok());
    match pipe {
        Some(p) => Box::new(p),
        None => Box::new(tokio::io::stdout()),
    }
}

fn audit_suffix(e: &ClientError) -> String {
    e.audit_id()
        .map(|a| format!(" (audit id {a})"))
        .unwrap_or_default()
}

/// Cloud Run ends any request after 60 minutes; when a tunnel that old
/// breaks, say so rather than look broken. A younger one broke for another
/// reason, which the error itself names.
fn cloud_run_hint(why: &str, lasted: Duration) -> &'static str {
    if why.contains("tunnel error") && lasted >= Duration::from_secs(55 * 60) {
        " (Cloud Run ends a request after at most 60 minutes; reconnect to continue)"
    } else {
        ""
    }
}

/// A refused tunnel still owes a PostgreSQL client a real error, not a reset:
/// answer its startup as a server would, with a FATAL ErrorResponse.
async fn pg_refuse(mut sock: TcpStream, message: &str) {
    let mut buf = BytesMut::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match codec::decode_startup(&mut buf) {
            Ok(Some(Startup::Ssl | Startup::GssEnc)) => {
                if sock.write_all(b"N").await.is_err() {
                    return;
                }
            }
            Ok(Some(Startup::Startup { .. })) => {
                let mut out = BytesMut::new();
                codec::error_response(&mut out, "FATAL", "28000", message, None);
                let _ = sock.write_all(&out).await;
                return;
            }
            Ok(None) => match tokio::time::timeout_at(deadline, sock.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            },
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cloud_run_hint_comes_only_near_its_60_minutes() {
        let broke = "tunnel error: WebSocket protocol error: Space limit exceeded";
        assert_eq!(cloud_run_hint(broke, Duration::from_secs(30)), "");
        assert!(cloud_run_hint(broke, Duration::from_secs(3600)).contains("60 minutes"));
        assert_eq!(cloud_run_hint("closed", Duration::from_secs(3600)), "");
    }
}
