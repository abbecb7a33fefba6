//! The gateway as a PostgreSQL client: TCP, optional TLS, login with the
//! credential from the secret store, and the cancel side channel.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::codec::{self, cstr};
use super::{cloudsql, PgError};
use crate::config::{ConnectionConfig, TlsMode};
use crate::secrets::Secret;

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames during login are small; anything bigger is not PostgreSQL.
const MAX_LOGIN_FRAME: usize = 1 << 20;

/// Startup parameters a client may set on the upstream session. Everything
/// else is the gateway's decision: user, database and application_name;
/// `replication` only where the connection allows it, `options` only as
/// the allowed settings (`client_options`).
const PASSTHROUGH_PARAMS: &[&str] = &[
    "client_encoding",
    "DateStyle",
    "datestyle",
    "TimeZone",
    "timezone",
    "extra_float_digits",
    "IntervalStyle",
    "intervalstyle",
    "search_path",
];

/// Settings a client may pass in `options` (`-c name=value`), matched
/// case-insensitively. Everything else there is refused at startup.
pub const OPTIONS_ALLOWED: &[&str] = &[
    "standard_conforming_strings",
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "search_path",
    "statement_timeout",
    "lock_timeout",
];

/// The `-c` settings of a client's `options`, or the first argument that is
/// not an allowed setting (named in the refusal). Arguments split as libpq
/// and the server split them: on whitespace, a backslash escaping the next
/// character; `-c name=value`, `-cname=value` and `--name=value` are settings.
pub fn client_options(options: &str) -> Result<Vec<(String, String)>, String> {
    let mut args = split_options(options).into_iter();
    let mut out = Vec::new();
    while let Some(arg) = args.next() {
        let setting = if arg == "-c" {
            args.next().unwrap_or_default()
        } else if let Some(s) = arg.strip_prefix("--") {
            s.replace('-', "_")
        } else if let Some(s) = arg.strip_prefix("-c") {
            s.to_string()
        } else {
            return Err(arg);
        };
        let Some((name, value)) = setting.split_once('=') else {
            return Err(setting);
        };
        if !OPTIONS_ALLOWED.iter().any(|a| a.eq_ignore_ascii_case(name)) {
            return Err(name.to_string());
        }
        out.push((name.to_string(), value.to_string()));
    }
    Ok(out)
}

fn split_options(options: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut cur = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.extend(chars.next()),
            c if c.is_ascii_whitespace() => {
                if !cur.is_empty() {
                    args.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        args.push(cur);
    }
    args
}

/// The `options` the gateway sends: the client's allowed settings, escaped
/// again, and `default_transaction_read_only` on a read_only connection.
fn upstream_options(conn: &ConnectionConfig, client_params: &[(String, String)]) -> String {
    let mut settings: Vec<(String, String)> = client_params
        .iter()
        .filter(|(k, _)| k == "options")
        .flat_map(|(_, v)| client_options(v).unwrap_or_default())
        .collect();
    // A read_only connection is read-only in PostgreSQL too, so a write the
    // guardrails cannot see (a user function) still fails; guardrails refuse
    // turning it off.
    if conn.guardrails.as_ref().is_some_and(|g| g.read_only) {
        settings.push(("default_transaction_read_only".into(), "on".into()));
    }
    let escape = |s: &str| {
        s.chars().fold(String::new(), |mut o, c| {
            if c == '\\' || c.is_ascii_whitespace() {
                o.push('\\');
            }
            o.push(c);
            o
        })
    };
    settings
        .iter()
        .map(|(k, v)| format!("-c {}={}", escape(k), escape(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether a `replication` startup parameter asks for a walsender
/// (`true`/`on`/`yes`/`1` physical, `database` logical), as PostgreSQL reads it.
pub fn wants_replication(client_params: &[(String, String)]) -> bool {
    client_params.iter().any(|(k, v)| {
        k == "replication"
            && !matches!(
                v.to_ascii_lowercase().as_str(),
                "false" | "off" | "no" | "0" | ""
            )
    })
}

pub struct Upstream {
    pub stream: Box<dyn Io>,
    /// Bytes read past ReadyForQuery (none in practice, kept to lose nothing).
    pub leftover: BytesMut,
    pub params: Vec<(String, String)>,
    pub pid: i32,
    pub key: i32,
    /// The database user the gateway logged in as.
    pub user: String,
}

fn target(conn: &ConnectionConfig) -> String {
    format!("{} ({}:{})", conn.name(), conn.host, conn.port())
}

/// TCP plus the TLS negotiation the connection's `tls` mode asks for.
pub async fn open_stream(conn: &ConnectionConfig) -> Result<Box<dyn Io>, PgError> {
    if conn.instance.is_some() {
        return Ok(Box::new(cloudsql::dial(conn).await?));
    }
    let addr = (conn.host.as_str(), conn.port());
    let unreachable = |why: String| PgError::Unreachable {
        target: target(conn),
        why,
    };
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| unreachable("connect timed out after 10s".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    tcp.set_nodelay(true)?;
    if conn.tls() == TlsMode::Disable {
        return Ok(Box::new(tcp));
    }
    let mut tcp = tcp;
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await?;
    let answer = tcp.read_u8().await?;
    let tls_err = |why: String| PgError::Tls {
        target: target(conn),
        why,
    };
    if answer != b'S' {
        return Err(tls_err(format!(
            "the server does not offer TLS but tls = {:?}; enable ssl on the server or set tls = \"disable\"",
            conn.tls()
        )));
    }
    let config = client_config(conn).map_err(tls_err)?;
    let name = ServerName::try_from(conn.host.clone()).map_err(|e| tls_err(e.to_string()))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| tls_err(e.to_string()))?;
    Ok(Box::new(tls))
}

fn client_config(conn: &ConnectionConfig) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    if conn.tls() == TlsMode::Require {
        // `require` means encrypted but unauthenticated, as in libpq.
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    match &conn.ca_file {
        Some(path) => {
            let pem =
                std::fs::read(path).map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| format!("ca_file {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Reads one tagged frame of at most `max` bytes from the upstream.
pub async fn read_frame(
    stream: &mut Box<dyn Io>,
    buf: &mut BytesMut,
    max: usize,
) -> Result<(u8, BytesMut), PgError> {
    loop {
        if buf.len() >= 5 {
            let len = codec::frame_len(buf[0], [buf[1], buf[2], buf[3], buf[4]], max)?;
            if buf.len() >= 5 + len {
                let tag = buf[0];
                buf.advance(5);
                return Ok((tag, buf.split_to(len)));
            }
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(PgError::Protocol(
                "upstream closed the connection during login".into(),
            ));
        }
    }
}

/// Login with a deadline: a stalled upstream (TLS, auth) never holds a session.
pub async fn connect(
    conn: &ConnectionConfig,
    password: &Secret<String>,
    application_name: &str,
    client_params: &[(String, String)],
) -> Result<Upstream, PgError> {
    tokio::time::timeout(
        LOGIN_TIMEOUT,
        login(conn, password, application_name, client_params),
    )
    .await
    .map_err(|_| PgError::Timeout(LOGIN_TIMEOUT.as_secs()))?
}

pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

async fn login(
    conn: &ConnectionConfig,
    password: &Secret<String>,
    application_name: &str,
    client_params: &[(String, String)],
) -> Result<Upstream, PgError> {
    let stream = open_stream(conn).await?;
    let user = login_user(conn).await?;
    let user = user.as_str();
    let options = upstream_options(conn, client_params);
    let params = startup_params(conn, user, application_name, client_params, &options);
    let mut out = BytesMut::new();
    codec::startup_message(&mut out, &params);
    let mut up = Upstream {
        stream,
        leftover: BytesMut::new(),
        params: Vec::new(),
        pid: 0,
        key: 0,
        user: user.to_string(),
    };
    up.stream.write_all(&out).await?;

    let mut buf = BytesMut::with_capacity(4096);
    let mut auth = Auth {
        tls: conn.tls(),
        user,
        password,
        scram: None,
        scram_done: false,
    };
    loop {
        let (tag, mut body) = read_frame(&mut up.stream, &mut buf, MAX_LOGIN_FRAME).await?;
        out.clear();
        match tag {
            b'R' => {
                auth.respond(&mut body, &mut out)?;
                if !out.is_empty() {
                    up.stream.write_all(&out).await?;
                }
            }
            b'E' => {
                let (code, message) = codec::error_fields(&body);
                return Err(PgError::Rejected { code, message });
            }
            b'S' => {
                let mut rest: &[u8] = &body;
                let name = cstr(&mut rest)?.to_string();
                let value = cstr(&mut rest)?.to_string();
                up.params.push((name, value));
            }
            b'K' if body.len() >= 8 => {
                up.pid = body.get_i32();
                up.key = body.get_i32();
            }
            b'Z' => {
                up.leftover = buf;
                return Ok(up);
            }
            // NoticeResponse and NegotiateProtocolVersion during login are informational.
            _ => {}
        }
    }
}

/// The database user: the connection's `user`, or with IAM database login
/// the gateway's service account.
async fn login_user(conn: &ConnectionConfig) -> Result<String, PgError> {
    if !conn.iam_auth() {
        return Ok(conn.user.clone().unwrap_or_default());
    }
    Ok(cloudsql::auth::database_user(conn).await?)
}

/// The startup parameters the gateway sends: its own choice of user and
/// database, and the client's settings that may pass through.
fn startup_params<'a>(
    conn: &'a ConnectionConfig,
    user: &'a str,
    application_name: &'a str,
    client_params: &'a [(String, String)],
    options: &'a str,
) -> Vec<(&'a str, &'a str)> {
    let mut params: Vec<(&str, &str)> = vec![
        ("user", user),
        ("database", conn.database.as_deref().unwrap_or_default()),
        ("application_name", application_name),
    ];
    for (k, v) in client_params {
        let replication = k == "replication" && conn.allow_replication;
        if replication || PASSTHROUGH_PARAMS.contains(&k.as_str()) {
            params.push((k, v));
        }
    }
    if !options.is_empty() {
        params.push(("options", options));
    }
    params
}

/// The client side of PostgreSQL authentication, one request at a time.
struct Auth<'a> {
    tls: TlsMode,
    user: &'a str,
    password: &'a Secret<String>,
    scram: Option<ScramSha256>,
    scram_done: bool,
}

impl Auth<'_> {
    /// Answers one AuthenticationRequest into `out` (left empty when no
    /// answer is due).
    fn respond(&mut self, body: &mut BytesMut, out: &mut BytesMut) -> Result<(), PgError> {
        if body.len() < 4 {
            return Err(PgError::Protocol("short authentication request".into()));
        }
        let secret = self.password;
        let password = secret.expose().as_bytes();
        match body.get_i32() {
            // A server that started SCRAM must prove itself before it may say OK.
            0 if self.scram.is_some() && !self.scram_done => {
                return Err(PgError::Auth("server skipped SCRAM's final step".into()))
            }
            0 => {}
            // Never send the password in clear over an unencrypted connection.
            3 if self.tls == TlsMode::Disable => {
                return Err(PgError::Auth(
                    "server asks for a cleartext password on an unencrypted connection; use SCRAM or tls = \"verify-full\"".into(),
                ))
            }
            3 => frontend::password_message(password, out)?,
            5 if body.len() >= 4 => {
                let salt = [body[0], body[1], body[2], body[3]];
                let hash = md5_hash(self.user.as_bytes(), password, salt);
                frontend::password_message(hash.as_bytes(), out)?;
            }
            10 => self.sasl_start(body, out)?,
            11 => {
                let s = self
                    .scram
                    .as_mut()
                    .ok_or_else(|| PgError::Auth("SASL continue without start".into()))?;
                s.update(body).map_err(|e| PgError::Auth(e.to_string()))?;
                frontend::sasl_response(s.message(), out)?;
            }
            12 => {
                let s = self
                    .scram
                    .as_mut()
                    .ok_or_else(|| PgError::Auth("SASL final without start".into()))?;
                s.finish(body)
                    .map_err(|e| PgError::Auth(format!("server signature check failed: {e}")))?;
                self.scram_done = true;
            }
            n => {
                return Err(PgError::Auth(format!(
                    "unsupported authentication method {n} requested by the server"
                )))
            }
        }
        Ok(())
    }

    /// AuthenticationSASL: the server lists its mechanisms; only
    /// SCRAM-SHA-256 is spoken.
    fn sasl_start(&mut self, body: &[u8], out: &mut BytesMut) -> Result<(), PgError> {
        let mut rest: &[u8] = body;
        let mut offered = Vec::new();
        while let Ok(m) = cstr(&mut rest) {
            if m.is_empty() {
                break;
            }
            offered.push(m.to_string());
        }
        if !offered.iter().any(|m| m == SCRAM_SHA_256) {
            return Err(PgError::Auth(format!(
                "server offers only {offered:?}; the gateway supports SCRAM-SHA-256, md5 and password"
            )));
        }
        let s = ScramSha256::new(
            self.password.expose().as_bytes(),
            ChannelBinding::unsupported(),
        );
        frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), out)?;
        self.scram = Some(s);
        Ok(())
    }
}

/// Sends a CancelRequest for the upstream backend; PostgreSQL answers by closing.
pub async fn cancel(conn: &ConnectionConfig, pid: i32, key: i32) -> Result<(), PgError> {
    let mut stream = open_stream(conn).await?;
    stream.write_all(&codec::cancel_request(pid, key)).await?;
    stream.flush().await?;
    let mut sink = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut sink)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_pass_only_allowed_settings() {
        let got = client_options(r"-c statement_timeout=1234 --DateStyle=ISO -csearch_path=a,\ b");
        assert_eq!(
            got.unwrap(),
            vec![
                ("statement_timeout".into(), "1234".into()),
                ("DateStyle".into(), "ISO".into()),
                ("search_path".into(), "a, b".into()),
            ]
        );
        assert_eq!(
            client_options("--lock-timeout=5s").unwrap()[0].0,
            "lock_timeout"
        );
        assert_eq!(client_options("-c work_mem=1MB").unwrap_err(), "work_mem");
        assert_eq!(
            client_options("-c statement_timeout=1 -B 10").unwrap_err(),
            "-B"
        );
        assert_eq!(
            client_options("-c statement_timeout").unwrap_err(),
            "statement_timeout"
        );
        assert!(client_options("").unwrap().is_empty());
    }

    #[test]
    fn replication_reads_as_postgresql_reads_it() {
        let p = |v: &str| vec![("replication".to_string(), v.to_string())];
        assert!(wants_replication(&p("database")));
        assert!(wants_replication(&p("true")));
        assert!(!wants_replication(&p("off")));
        assert!(!wants_replication(&[]));
    }
}
