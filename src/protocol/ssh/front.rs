//! The SSH server end inside the tunnel, bridged channel by channel to the
//! upstream. Requests (pty, shell, exec, subsystem) are answered with the
//! upstream's own reply; guardrails, env and forwarding policy apply before
//! anything reaches the upstream; output is masked and recorded on its way
//! back (a tap per channel, the recorder's bounded queue behind it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use russh::client;
use russh::keys::PrivateKey;
use russh::server::{self, Auth, Msg, Session as SshSession};
use russh::{Channel, ChannelId, ChannelWriteHalf, MethodSet, Pty, Sig};
use tokio::sync::mpsc;

use super::channel::{write_up, Kind, Shared, Upward, UPWARD_QUEUE};
use super::pump::pump;
use super::sftp::SftpTap;
use super::sftp_gate::SftpGate;
use super::upstream::{self, Upstream};
use crate::recording::EventBody;

use crate::policy::command::MAX_COMMAND;
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) struct Chan {
    pub(super) number: u32,
    pub(super) up: Arc<ChannelWriteHalf<client::Msg>>,
    /// Client data, EOF and close for the upstream, in order, written by a
    /// task of their own so decrypting the next packet overlaps encrypting
    /// this one (the session loop would otherwise wait on each write).
    pub(super) to_up: mpsc::Sender<Upward>,
    pub(super) replies: mpsc::Receiver<bool>,
    pub(super) kind: Arc<Mutex<Kind>>,
    pub(super) pty: bool,
    /// The line being typed, for guardrails on shell lines.
    pub(super) line: Vec<u8>,
    /// SFTP: requests the recording could not name are answered here.
    pub(super) gate: Option<SftpGate>,
    /// Answers for the client, slipped in between whole server packets by the pump.
    pub(super) inject: mpsc::Sender<Bytes>,
}

pub struct Front {
    pub(super) shared: Arc<Shared>,
    pub(super) upstream: Option<client::Handle<Upstream>>,
    pub(super) key: Option<PrivateKey>,
    /// Why the session cannot run (shown as the SSH banner, then auth fails).
    pub(super) refusal: Option<String>,
    pub(super) channels: HashMap<ChannelId, Chan>,
    pub(super) bytes: Arc<(AtomicU64, AtomicU64)>,
}

impl Front {
    async fn login(&mut self, client_user: &str) -> Result<Auth, russh::Error> {
        if self.shared.authed.load(Relaxed) {
            return Ok(Auth::Accept);
        }
        let refuse = Auth::Reject {
            proceed_with_methods: Some(MethodSet::empty()),
            partial_success: false,
        };
        if self.refusal.is_some() {
            return Ok(refuse);
        }
        let conn = &self.shared.conn;
        // The SSH user name picks the upstream account only where config allows it.
        let user = if conn.users.iter().any(|u| u == client_user) {
            client_user.to_string()
        } else {
            conn.user.clone().unwrap_or_else(|| client_user.to_string())
        };
        let (Some(up), Some(key)) = (self.upstream.as_mut(), self.key.take()) else {
            return Ok(refuse);
        };
        let outcome = upstream::authenticate(up, &user, key).await;
        self.shared
            .record(EventBody::SshRequest {
                channel: 0,
                request: "login".into(),
                detail: Some(format!("ssh user {client_user:?} → upstream user {user:?}")),
                outcome: match &outcome {
                    Ok(()) => "allowed".into(),
                    Err(e) => format!("failed: {e}"),
                },
            })
            .await;
        if let Err(e) = outcome {
            tracing::warn!(target: "custody::audit", audit_id = %self.shared.audit_id, error = %e, "ssh upstream login failed");
            self.shared.end_with(e.to_string());
            return Ok(refuse);
        }
        self.shared.authed.store(true, Relaxed);
        Ok(Auth::Accept)
    }

    async fn note(&self, channel: u32, request: &str, detail: Option<String>, outcome: &str) {
        self.shared
            .record(EventBody::SshRequest {
                channel,
                request: request.into(),
                detail,
                outcome: outcome.into(),
            })
            .await;
    }

    /// Forwards a request that wants the upstream's answer and relays it.
    async fn answer(
        &mut self,
        channel: ChannelId,
        session: &mut SshSession,
    ) -> Result<(), russh::Error> {
        let ok = match self.channels.get_mut(&channel) {
            Some(ch) => matches!(
                tokio::time::timeout(REPLY_TIMEOUT, ch.replies.recv()).await,
                Ok(Some(true))
            ),
            None => false,
        };
        if ok {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    /// Opens the upstream twin of a client channel and starts its pump.
    async fn bridge(
        &mut self,
        channel: Channel<Msg>,
        upstream: Channel<client::Msg>,
        kind: Kind,
        session: &mut SshSession,
    ) -> u32 {
        let id = channel.id();
        let number = u32::from(id);
        let (up_rd, up_wr) = upstream.split();
        // The client-side read half is unused: requests and data arrive as
        // handler calls. Its write half respects the client's window.
        let (_unused, client_wr) = channel.split();
        let (reply_tx, reply_rx) = mpsc::channel(16);
        let up_wr = Arc::new(up_wr);
        let (to_up, from_client) = mpsc::channel(UPWARD_QUEUE);
        let writer = tokio::spawn(write_up(up_wr.clone(), from_client));
        let kind = Arc::new(Mutex::new(kind));
        let (inject, injected) = mpsc::channel(UPWARD_QUEUE);
        let task = tokio::spawn(pump(
            self.shared.clone(),
            self.bytes.clone(),
            up_rd,
            client_wr,
            session.handle(),
            id,
            kind.clone(),
            reply_tx,
            injected,
        ));
        if let Ok(mut pumps) = self.shared.pumps.lock() {
            pumps.retain(|p| !p.is_finished());
            pumps.push(task);
            pumps.push(writer);
        }
        self.channels.insert(
            id,
            Chan {
                number,
                up: up_wr,
                to_up,
                replies: reply_rx,
                kind,
                pty: false,
                line: Vec::new(),
                gate: None,
                inject,
            },
        );
        number
    }

    /// Ends a shell or exec request with `message` on stderr and status 126.
    /// OpenSSH drops stderr that precedes a failed request reply, so the
    /// request "succeeds" and the refusal arrives as output.
    async fn refuse(
        &mut self,
        channel: ChannelId,
        session: &mut SshSession,
        message: &str,
    ) -> Result<(), russh::Error> {
        let msg = format!("custody: {message} (audit id {})\r\n", self.shared.audit_id);
        session.channel_success(channel)?;
        session.extended_data(channel, 1, Bytes::from(msg))?;
        session.exit_status_request(channel, 126)?;
        session.eof(channel)?;
        if let Some(ch) = self.channels.remove(&channel) {
            let _ = ch.up.close().await;
        }
        session.close(channel)
    }

    pub(super) fn set_kind(&self, channel: ChannelId, kind: Kind) {
        if let Some(ch) = self.channels.get(&channel) {
            if let Ok(mut k) = ch.kind.lock() {
                *k = kind;
            }
        }
    }

    pub(super) fn number(&self, channel: ChannelId) -> u32 {
        u32::from(channel)
    }
}

impl server::Handler for Front {
    type Error = russh::Error;

    async fn authentication_banner(&mut self) -> Result<Option<String>, Self::Error> {
        Ok(self
            .refusal
            .as_ref()
            .map(|r| format!("custody: {r} (audit id {})\r\n", self.shared.audit_id)))
    }

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        self.login(user).await
    }

    async fn auth_password(&mut self, user: &str, _password: &str) -> Result<Auth, Self::Error> {
        self.login(user).await
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        _key: server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        self.login(user).await
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: server::ChannelOpenHandle,
        session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        let Some(up) = self.upstream.as_ref() else {
            reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
            return Ok(());
        };
        let upch = match up.channel_open_session().await {
            Ok(c) => c,
            Err(e) => {
                self.note(
                    u32::from(channel.id()),
                    "session",
                    None,
                    &format!("upstream refused: {e}"),
                )
                .await;
                reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
                return Ok(());
            }
        };
        // The upstream's environment learns the audit id and trace (its sshd
        // needs `AcceptEnv CUSTODY_AUDIT_ID TRACEPARENT`).
        let _ = upch
            .set_env(false, "CUSTODY_AUDIT_ID", self.shared.audit_id.clone())
            .await;
        if let Some(tp) = &self.shared.traceparent {
            let _ = upch.set_env(false, "TRACEPARENT", tp.clone()).await;
        }
        self.bridge(channel, upch, Kind::Pending, session).await;
        reply.accept().await;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        origin: &str,
        origin_port: u32,
        reply: server::ChannelOpenHandle,
        session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        let number = u32::from(channel.id());
        let dest = format!("{host}:{port}");
        let allowed = self.shared.conn.local_forwarding.iter().any(|d| {
            super::parse_destination(d).is_some_and(|(h, p)| h == host && u32::from(p) == port)
        });
        if !allowed {
            self.note(
                number,
                "direct-tcpip",
                Some(dest),
                "refused: local forwarding to this destination is not enabled (local_forwarding)",
            )
            .await;
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        let Some(up) = self.upstream.as_ref() else {
            reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
            return Ok(());
        };
        match up
            .channel_open_direct_tcpip(host, port, origin, origin_port)
            .await
        {
            Ok(upch) => {
                self.note(number, "direct-tcpip", Some(dest), "allowed")
                    .await;
                self.bridge(channel, upch, Kind::Raw, session).await;
                reply.accept().await;
            }
            Err(e) => {
                self.note(
                    number,
                    "direct-tcpip",
                    Some(dest),
                    &format!("upstream refused: {e}"),
                )
                .await;
                reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        width: u32,
        height: u32,
        pix_width: u32,
        pix_height: u32,
        modes: &[(Pty, u32)],
        session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        let Some(ch) = self.channels.get_mut(&channel) else {
            return session.channel_failure(channel);
        };
        ch.pty = true;
        let sent = ch
            .up
            .request_pty(true, term, width, height, pix_width, pix_height, modes)
            .await;
        self.shared
            .record(EventBody::Pty {
                channel: self.number(channel),
                term: term.to_string(),
                width,
                height,
            })
            .await;
        if sent.is_err() {
            return session.channel_failure(channel);
        }
        self.answer(channel, session).await
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        width: u32,
        height: u32,
        pix_width: u32,
        pix_height: u32,
        _session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        if let Some(ch) = self.channels.get(&channel) {
            let _ = ch
                .up
                .window_change(width, height, pix_width, pix_height)
                .await;
            self.shared
                .record(EventBody::Resize {
                    channel: ch.number,
                    width,
                    height,
                })
                .await;
        }
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        let globs = self
            .shared
            .conn
            .allow_env
            .clone()
            .unwrap_or_else(super::default_env);
        // The gateway sets these itself; a client must not forge them.
        let reserved = name == "CUSTODY_AUDIT_ID" || name == "TRACEPARENT";
        let allowed = !reserved && super::env_allowed(&globs, name);
        let number = self.number(channel);
        // Values are not recorded: they may hold secrets.
        self.note(
            number,
            "env",
            Some(name.to_string()),
            if allowed {
                "allowed"
            } else {
                "refused: not in allow_env"
            },
        )
        .await;
        match self.channels.get(&channel) {
            Some(ch) if allowed => {
                let _ = ch.up.set_env(false, name, value).await;
                session.channel_success(channel)
            }
            _ => session.channel_failure(channel),
        }
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        let number = self.number(channel);
        let pty = self.channels.get(&channel).is_some_and(|c| c.pty);
        // Without a PTY a shell reads commands from stdin in any chunking and
        // with its own line editing out of sight: nothing here could check
        // them against the patterns, so such a shell does not start.
        if !pty && self.shared.rules.guardrails.is_some() && self.shared.rules.command_patterns {
            let reason = "a shell without a terminal (ssh -T, or input from a pipe) cannot be checked against this connection's deny and approval patterns; run the command as `ssh HOST COMMAND`, or use an interactive terminal (ssh -t)";
            self.shared
                .record(EventBody::Guardrail {
                    sql: "shell".into(),
                    protocol: "ssh-shell".into(),
                    rule: "shell_without_pty".into(),
                    outcome: "refused".into(),
                })
                .await;
            self.note(number, "shell", None, &format!("refused: {reason}"))
                .await;
            return self
                .refuse(channel, session, &format!("refused: {reason}"))
                .await;
        }
        self.set_kind(channel, Kind::Terminal);
        self.note(number, "shell", None, "allowed").await;
        self.shared.commands.fetch_add(1, Relaxed);
        let Some(ch) = self.channels.get(&channel) else {
            return session.channel_failure(channel);
        };
        if ch.up.request_shell(true).await.is_err() {
            return session.channel_failure(channel);
        }
        self.answer(channel, session).await
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        let number = self.number(channel);
        let command = String::from_utf8_lossy(data).into_owned();
        let shown = self.shared.shown(&command);
        let refusal = if data.len() > MAX_COMMAND {
            Some((
                "command_length".to_string(),
                format!(
                    "the command is {} bytes; at most {MAX_COMMAND} are accepted",
                    data.len()
                ),
            ))
        } else {
            let pty = self.channels.get(&channel).is_some_and(|c| c.pty);
            self.shared.refusal(&command, pty)
        };
        if let Some((rule, reason)) = refusal {
            self.shared
                .record(EventBody::Guardrail {
                    sql: shown,
                    protocol: "ssh-exec".into(),
                    rule: rule.clone(),
                    outcome: "refused".into(),
                })
                .await;
            return self
                .refuse(
                    channel,
                    session,
                    &format!("refused by guardrail {rule}: {reason}"),
                )
                .await;
        }
        // Legacy scp moves files over the exec channel: record them as files.
        let kind = super::scp::scp_mode(&command).map_or(Kind::Terminal, Kind::Scp);
        self.set_kind(channel, kind);
        self.note(number, "exec", Some(shown), "allowed").await;
        self.shared.commands.fetch_add(1, Relaxed);
        let Some(ch) = self.channels.get(&channel) else {
            return session.channel_failure(channel);
        };
        if ch.up.exec(true, data.to_vec()).await.is_err() {
            return session.channel_failure(channel);
        }
        self.answer(channel, session).await
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        let number = self.number(channel);
        // Only sftp is understood (and recorded file by file); any other
        // subsystem is an opaque byte stream, so it runs only where listed.
        if name != "sftp" && !self.shared.conn.subsystems.iter().any(|s| s == name) {
            self.note(
                number,
                "subsystem",
                Some(name.to_string()),
                "refused: this connection does not list it in `subsystems`",
            )
            .await;
            return session.channel_failure(channel);
        }
        let kind = if name == "sftp" {
            if let Some(ch) = self.channels.get_mut(&channel) {
                ch.gate = Some(SftpGate::default());
            }
            Kind::Sftp(SftpTap::new())
        } else {
            Kind::Raw
        };
        self.set_kind(channel, kind);
        self.note(number, "subsystem", Some(name.to_string()), "allowed")
            .await;
        self.shared.commands.fetch_add(1, Relaxed);
        let Some(ch) = self.channels.get(&channel) else {
            return session.channel_failure(channel);
        };
        if ch.up.request_subsystem(true, name).await.is_err() {
            return session.channel_failure(channel);
        }
        self.answer(channel, session).await
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single: bool,
        _proto: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        self.note(
            self.number(channel),
            "x11",
            None,
            "refused: X11 forwarding is not supported",
        )
        .await;
        session.channel_failure(channel)
    }

    async fn agent_request(
        &mut self,
        channel: ChannelId,
        _session: &mut SshSession,
    ) -> Result<bool, Self::Error> {
        self.note(
            self.number(channel),
            "agent",
            None,
            "refused: agent forwarding is not enabled",
        )
        .await;
        Ok(false)
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut SshSession,
    ) -> Result<bool, Self::Error> {
        self.note(
            0,
            "tcpip-forward",
            Some(format!("{address}:{port}")),
            "refused: remote forwarding is not supported",
        )
        .await;
        Ok(false)
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: Sig,
        _session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        if let Some(ch) = self.channels.get(&channel) {
            let _ = ch.up.signal(signal).await;
        }
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        self.client_data(channel, data, session).await
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        if let Some(ch) = self.channels.get(&channel) {
            let _ = ch.to_up.send(Upward::Eof).await;
        }
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        if let Some(ch) = self.channels.remove(&channel) {
            let _ = ch.to_up.send(Upward::Close).await;
        }
        Ok(())
    }
}
