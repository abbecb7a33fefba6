use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use custody::client::{self, ClientError, Format, Target};
use custody::config::Config;
use custody::identity::devissuer::DevIssuer;
use custody::recording;

/// Custody: OIDC-authenticated, recorded access to PostgreSQL through a gateway.
///
/// Run the gateway with `custody serve`; reach a database through it with
/// `custody connect` (then psql) or `custody exec`. The CLI finds the gateway
/// in --gateway / CUSTODY_GATEWAY and your identity token in --token /
/// CUSTODY_TOKEN, else asks the GCP metadata server or gcloud.
#[derive(Parser)]
#[command(name = "custody", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct GatewayArgs {
    /// Gateway URL, e.g. https://custody-abc-uc.a.run.app
    #[arg(long, env = "CUSTODY_GATEWAY")]
    gateway: Option<String>,
    /// OIDC ID token whose audience is the gateway URL
    #[arg(long, env = "CUSTODY_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (listens on 0.0.0.0:$PORT, default 8080)
    Serve {
        /// Config file (TOML); see README "Configuration"
        #[arg(long, env = "CUSTODY_CONFIG")]
        config: PathBuf,
        /// Listen address; overrides [server] listen and PORT
        #[arg(long)]
        listen: Option<String>,
    },
    /// Open a local endpoint that tunnels to CONNECTION through the gateway
    ///
    /// Example: custody connect pg-prod --listen 127.0.0.1:6432
    ///          psql "host=127.0.0.1 port=6432 dbname=app user=me"
    Connect {
        connection: String,
        /// Local address to accept clients on (one tunnel per client)
        #[arg(long, conflicts_with = "stdio")]
        listen: Option<String>,
        /// Use stdin/stdout for one session (OpenSSH ProxyCommand)
        #[arg(long)]
        stdio: bool,
        #[command(flatten)]
        gw: GatewayArgs,
    },
    /// Run one statement through the gateway and print the result
    ///
    /// Exit codes: 0 success, 1 query or upstream error, 2 refused (auth, policy),
    /// 3 held for approval (the review id is printed; see `custody review`).
    Exec {
        connection: String,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// Run a statement a guardrail holds, under this approved review
        #[arg(long, env = "CUSTODY_REVIEW")]
        review: Option<String>,
        /// When the statement is held for approval, wait for the decision, then run it
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        gw: GatewayArgs,
        /// The SQL to run (after --)
        #[arg(last = true, required = true)]
        input: Vec<String>,
    },
    /// Pass custody to a child: print a delegation token naming it as the next actor
    ///
    /// The child sets CUSTODY_DELEGATION to the printed token; its own identity
    /// token still authenticates it. Inside a delegated job, delegating again
    /// adds a hop (the chain is kept: originator → each hop → caller).
    /// Example: export CUSTODY_DELEGATION=$(custody delegate --to serviceAccount:job@p.iam.gserviceaccount.com --connections pg-prod --ttl 1h)
    Delegate {
        /// The next actor: user:EMAIL or serviceAccount:EMAIL
        #[arg(long)]
        to: String,
        /// Limit the delegation to these connections (comma-separated); at most the parent's
        #[arg(long, value_delimiter = ',')]
        connections: Vec<String>,
        /// Lifetime, e.g. 30m or 1h; never beyond the parent's expiry
        #[arg(long, default_value = "1h")]
        ttl: String,
        #[command(flatten)]
        gw: GatewayArgs,
    },
    /// Reviews of statements held for approval: list, show, approve, deny
    Review {
        #[command(subcommand)]
        command: ReviewCommand,
    },
    /// Revoke a principal: every instance refuses chains that include it (admins only)
    Revoke {
        /// user:EMAIL or serviceAccount:EMAIL
        #[arg(long)]
        principal: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        gw: GatewayArgs,
    },
    /// Print a session's recording readably
    ///
    /// The recording is verified first (as `custody verify` does); one that
    /// does not verify is not printed (exit 1) unless --unverified is given.
    /// Text output escapes control characters, so recorded text cannot
    /// forge lines.
    Replay {
        audit_id: String,
        /// Recording store: file://DIR or gs://BUCKET/PREFIX (STORAGE_EMULATOR_HOST is honoured)
        #[arg(long, env = "CUSTODY_STORE")]
        store: String,
        /// auto (asciicast for SSH terminal sessions, else text), text, json
        /// (one event per line) or asciicast (v2, for `asciinema play`)
        #[arg(long, value_enum, default_value = "auto")]
        format: ReplayFormat,
        /// Same as --format json
        #[arg(long, hide = true)]
        json: bool,
        /// The gateway's Ed25519 public key (PEM), as for `custody verify`
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// Print a recording that does not verify (unsealed, altered or with
        /// objects added), under a warning; only its named segments are read
        #[arg(long)]
        unverified: bool,
    },
    /// List recorded sessions from the store, newest first
    ///
    /// Example: custody sessions --store gs://audit-bucket/custody --since 7d --principal user:alice@example.com
    Sessions {
        /// Recording store: file://DIR or gs://BUCKET/PREFIX
        #[arg(long, env = "CUSTODY_STORE")]
        store: String,
        /// How far back: a duration ("24h", "7d") or a date/time ("2026-11-30", RFC 3339)
        #[arg(long, default_value = "24h")]
        since: String,
        /// Only this principal, as recorded (e.g. user:alice@example.com)
        #[arg(long)]
        principal: Option<String>,
        /// Only this connection
        #[arg(long)]
        connection: Option<String>,
        /// At most this many sessions
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long, value_enum, default_value = "text")]
        format: ListFormat,
    },
    /// Check a recording is complete and untouched: signature, chain, order
    ///
    /// Exit codes: 0 verified, 1 something is wrong (each problem is printed).
    /// Example: custody verify 0193... --store gs://audit-bucket/custody --public-key custody-signing.pub
    Verify {
        audit_id: String,
        /// Recording store: file://DIR or gs://BUCKET/PREFIX
        #[arg(long, env = "CUSTODY_STORE")]
        store: String,
        /// The gateway's Ed25519 public key (PEM; a private key PEM works too).
        /// Without it the key embedded in the manifest is used, which proves
        /// integrity but not who signed.
        #[arg(long)]
        public_key: Option<PathBuf>,
    },
    /// Configuration tools
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Development helpers: a local OIDC issuer and its tokens (loopback only)
    Dev {
        #[command(subcommand)]
        command: DevCommand,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ListFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
enum ReplayFormat {
    Auto,
    Text,
    Json,
    Asciicast,
}

/// "24h" / "7d" back from now, or a date or RFC 3339 time.
fn parse_since(s: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(d) = custody::config::parse_duration(s) {
        let d = chrono::Duration::from_std(d)?;
        return Ok(chrono::Utc::now() - d);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        if let Some(t) = d.and_hms_opt(0, 0, 0) {
            return Ok(t.and_utc());
        }
    }
    bail!(
        "--since {s:?}: use a duration (\"24h\", \"7d\"), a date (2026-11-30) or an RFC 3339 time"
    )
}

#[derive(Subcommand)]
enum ReviewCommand {
    /// Reviews you requested or may decide, newest first
    List {
        #[arg(long, value_enum, default_value = "text")]
        format: ListFormat,
        #[command(flatten)]
        gw: GatewayArgs,
    },
    /// One review with its votes and decision (JSON)
    Show {
        id: String,
        #[command(flatten)]
        gw: GatewayArgs,
    },
    /// Approve a held statement (approvers only; never your own request)
    Approve {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        gw: GatewayArgs,
    },
    /// Deny a held statement
    Deny {
        id: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        gw: GatewayArgs,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config file offline; errors name FILE:LINE:COLUMN
    Check { file: PathBuf },
}

#[derive(Subcommand)]
enum DevCommand {
    /// Make an Ed25519 key for [recording] signing_key (PKCS#8 PEM, mode 0600)
    /// and print its public half for `custody verify --public-key`
    Keygen {
        /// Where to write the private key
        #[arg(long)]
        out: PathBuf,
    },
    /// Serve discovery and JWKS for a local issuer (keys kept in --key-dir)
    Issuer {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: String,
        #[arg(long)]
        key_dir: PathBuf,
    },
    /// Mint an ID token signed by the local issuer's key
    Token {
        #[arg(long)]
        key_dir: PathBuf,
        /// Issuer URL, as configured in [[identity.issuers]]
        #[arg(long, default_value = "http://127.0.0.1:9000")]
        issuer: String,
        /// Audience: the gateway URL
        #[arg(long)]
        audience: String,
        #[arg(long)]
        email: String,
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Lifetime in seconds
        #[arg(long, default_value_t = 3600)]
        ttl: i64,
        /// RS256 or ES256
        #[arg(long, default_value = "RS256")]
        alg: String,
    },
}

/// `--public-key` for verify and replay: a PEM file, read and parsed.
fn pinned_key(path: Option<PathBuf>) -> anyhow::Result<Option<ed25519_dalek::VerifyingKey>> {
    let Some(p) = path else {
        return Ok(None);
    };
    let pem =
        std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
    Ok(Some(recording::seal::verifying_key_from_pem(&pem)?))
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    // The gateway spreads sessions over every core; the CLI's sessions are
    // cheap byte pumps, cheaper still without cross-thread wakeups.
    let rt = match cli.command {
        Command::Serve { .. } => tokio::runtime::Runtime::new(),
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("custody: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => match e.downcast_ref::<ClientError>() {
            Some(ClientError::RemoteExit { status }) => ExitCode::from(*status),
            Some(ce) => {
                let audit = ce
                    .audit_id()
                    .map(|a| format!(" (audit id {a})"))
                    .unwrap_or_default();
                eprintln!("custody: error: {ce}{audit}");
                ExitCode::from(ce.exit_code() as u8)
            }
            None => {
                eprintln!("custody: error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

async fn dispatch(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Serve { config, listen } => serve(config, listen).await,
        Command::Connect {
            connection,
            listen,
            stdio,
            gw,
        } => {
            let target = Target::resolve(gw.gateway, gw.token).await?;
            if stdio {
                let why = client::stdio(target, connection).await?;
                if !why.is_empty() && why != "client closed the tunnel" {
                    eprintln!("custody: session ended: {why}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            let addr = listen.unwrap_or_else(|| "127.0.0.1:6432".into());
            let listener = tokio::net::TcpListener::bind(&addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            eprintln!(
                "custody: listening on {} for {connection} via {}",
                listener.local_addr()?,
                target.gateway
            );
            tokio::select! {
                r = client::listen(target, connection, listener) => r?,
                _ = shutdown_signal() => {}
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Exec {
            connection,
            format,
            review,
            wait,
            gw,
            input,
        } => {
            let target = Target::resolve(gw.gateway, gw.token).await?;
            let sql = input.join(" ");
            match client::exec(&target, &connection, &sql, format, review.as_deref()).await {
                Err(ClientError::Held {
                    review_id, reason, ..
                }) if wait => {
                    eprintln!("custody: held for approval: {reason}");
                    eprintln!("custody: waiting for a decision on review {review_id} (an approver runs `custody review approve {review_id}`)");
                    loop {
                        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                        let r = client::review_get(&target, Some(&review_id)).await?;
                        match r["state"].as_str().unwrap_or_default() {
                            "pending" => continue,
                            "approved" => break,
                            other => {
                                let why = r["decision"]["reason"].as_str().unwrap_or_default();
                                return Err(ClientError::Refused {
                                    status: 403,
                                    reason: format!("review {review_id} was {other} {why}")
                                        .trim()
                                        .to_string(),
                                    audit_id: None,
                                }
                                .into());
                            }
                        }
                    }
                    eprintln!("custody: review {review_id} approved; running the statement");
                    client::exec(&target, &connection, &sql, format, Some(&review_id)).await?;
                }
                other => other?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Review { command } => {
            match command {
                ReviewCommand::List { format, gw } => {
                    let target = Target::resolve(gw.gateway, gw.token).await?;
                    let v = client::review_get(&target, None).await?;
                    let list = v["reviews"].as_array().cloned().unwrap_or_default();
                    match format {
                        ListFormat::Json => println!("{}", serde_json::to_string_pretty(&list)?),
                        ListFormat::Text => print!("{}", client::render_reviews(&list)),
                    }
                }
                ReviewCommand::Show { id, gw } => {
                    let target = Target::resolve(gw.gateway, gw.token).await?;
                    let v = client::review_get(&target, Some(&id)).await?;
                    println!("{}", serde_json::to_string_pretty(&v)?);
                }
                ReviewCommand::Approve { id, reason, gw } => {
                    let target = Target::resolve(gw.gateway, gw.token).await?;
                    let v = client::review_decide(&target, &id, "approve", &reason).await?;
                    eprintln!(
                        "custody: review {id} is {}",
                        v["state"].as_str().unwrap_or("?")
                    );
                }
                ReviewCommand::Deny { id, reason, gw } => {
                    let target = Target::resolve(gw.gateway, gw.token).await?;
                    let v = client::review_decide(&target, &id, "deny", &reason).await?;
                    eprintln!(
                        "custody: review {id} is {}",
                        v["state"].as_str().unwrap_or("?")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Delegate {
            to,
            connections,
            ttl,
            gw,
        } => {
            let target = Target::resolve(gw.gateway, gw.token).await?;
            let answer = client::delegate(&target, &to, &connections, &ttl).await?;
            eprintln!(
                "custody: delegated to {to} for {}s (root audit id {})",
                answer["expires_in"],
                answer["root_audit_id"].as_str().unwrap_or("?")
            );
            println!("{}", answer["access_token"].as_str().unwrap_or_default());
            Ok(ExitCode::SUCCESS)
        }
        Command::Revoke {
            principal,
            reason,
            gw,
        } => {
            let target = Target::resolve(gw.gateway, gw.token).await?;
            let answer = client::revoke(&target, &principal, &reason).await?;
            let already = answer["already"].as_bool().unwrap_or(false);
            eprintln!(
                "custody: {principal} {}; every instance refuses it within 5 s",
                if already {
                    "was already revoked"
                } else {
                    "is revoked"
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Sessions {
            store,
            since,
            principal,
            connection,
            limit,
            format,
        } => {
            let filter = recording::sessions::Filter {
                since: parse_since(&since)?,
                principal: principal.as_deref(),
                connection: connection.as_deref(),
                limit,
            };
            let store = recording::open_store(&store, None).await?;
            let list = recording::sessions::list(store.as_ref(), &filter).await?;
            match format {
                ListFormat::Json => println!("{}", serde_json::to_string_pretty(&list)?),
                ListFormat::Text => print!("{}", recording::sessions::render(&list)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay {
            audit_id,
            store,
            format,
            json,
            public_key,
            unverified,
        } => {
            let json = json || matches!(format, ReplayFormat::Json);
            let pinned = pinned_key(public_key)?;
            let store = recording::open_store(&store, None).await?;
            let rec = recording::fetch(store.as_ref(), &audit_id).await?;
            let report = recording::verify::verify(&rec, pinned.as_ref());
            if !report.ok() {
                let fix = if unverified {
                    "printed anyway (--unverified): what follows may be forged or incomplete"
                } else {
                    "not printed; check it with `custody verify`, or pass --unverified to print what is there under a warning"
                };
                eprintln!("custody: recording {audit_id} does not verify, {fix}:");
                for p in &report.problems {
                    eprintln!("  problem: {}", recording::escape(p));
                }
                if !unverified {
                    return Ok(ExitCode::FAILURE);
                }
            }
            let warning = (!report.ok()).then(|| {
                format!(
                    "WARNING: recording {audit_id} does not verify ({} problem(s), listed on stderr); it may be forged or incomplete\n",
                    report.problems.len()
                )
            });
            let events = if json {
                Vec::new()
            } else {
                recording::parse(&rec)?
            };
            let cast = match format {
                ReplayFormat::Asciicast => true,
                ReplayFormat::Auto => recording::asciicast::has_terminal(&events),
                _ => false,
            };
            if cast {
                print!("{}", recording::asciicast::render(&events));
            } else if json {
                let mut out = String::new();
                for (n, line, bytes) in recording::event_lines(&rec) {
                    match recording::json_line(bytes) {
                        Some(l) => {
                            out.push_str(&l);
                            out.push('\n');
                        }
                        None => {
                            eprintln!("custody: segment {n:06} line {line} is not JSON; left out")
                        }
                    }
                }
                print!("{out}");
            } else {
                // Text has room for the warning on stdout, before and after;
                // json and asciicast stay valid and carry it on stderr only.
                let w = warning.as_deref().unwrap_or_default();
                print!("{w}{}{w}", recording::render(&events));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            audit_id,
            store,
            public_key,
        } => {
            let pinned = pinned_key(public_key)?;
            let store = recording::open_store(&store, None).await?;
            let rec = match recording::fetch(store.as_ref(), &audit_id).await {
                Ok(r) => r,
                Err(recording::RecordError::NotFound(what)) => {
                    println!("recording {audit_id}: FAILED\n  problem: no recording {what}");
                    return Ok(ExitCode::FAILURE);
                }
                Err(e) => return Err(e.into()),
            };
            let report = recording::verify::verify(&rec, pinned.as_ref());
            let verdict = if report.ok() { "VERIFIED" } else { "FAILED" };
            println!("recording {audit_id}: {verdict}");
            // Facts and problems quote recorded and stored names: escaped.
            for f in &report.facts {
                println!("  {}", recording::escape(f));
            }
            for p in &report.problems {
                println!("  problem: {}", recording::escape(p));
            }
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            let path = file.display().to_string();
            match Config::load(&path) {
                Ok(c) => {
                    println!("{path}: OK ({} connections)", c.connections.len());
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Dev { command } => dev(command).await,
    }
}

async fn serve(config: PathBuf, listen: Option<String>) -> anyhow::Result<ExitCode> {
    let config = Config::load(&config.display().to_string())?;
    let telemetry = custody::telemetry::init(&config.telemetry).await?;
    let addr = match (listen, std::env::var("PORT").ok()) {
        (Some(l), _) => l,
        (None, Some(port)) => {
            let host = config
                .server
                .listen
                .rsplit_once(':')
                .map(|(h, _)| h)
                .unwrap_or("0.0.0.0");
            format!("{host}:{port}")
        }
        (None, None) => config.server.listen.clone(),
    };
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    eprintln!("custody: listening on http://{local}");
    tracing::info!(%local, connections = config.connections.len(), "custody serving");
    let served = custody::run(config, listener, shutdown_signal()).await;
    // Cloud Run's 10 s: sessions had 8, queued spans get what is left.
    telemetry
        .shutdown(std::time::Duration::from_millis(1500))
        .await;
    served?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

async fn dev(cmd: DevCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DevCommand::Keygen { out } => {
            use ed25519_dalek::pkcs8::{
                spki::der::pem::LineEnding, EncodePrivateKey, EncodePublicKey,
            };
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let key = ed25519_dalek::SigningKey::from_bytes(&rand::random::<[u8; 32]>());
            // PKCS#8 v1 (no embedded public key), which OpenSSL also reads.
            let pem = ed25519_dalek::pkcs8::KeypairBytes {
                secret_key: key.to_bytes(),
                public_key: None,
            }
            .to_pkcs8_pem(LineEnding::LF)
            .context("cannot encode the key")?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&out)
                .with_context(|| {
                    format!("cannot create {} (it must not exist yet)", out.display())
                })?;
            f.write_all(pem.as_bytes())?;
            let public = key
                .verifying_key()
                .to_public_key_pem(LineEnding::LF)
                .context("cannot encode the public key")?;
            eprintln!(
                "custody: wrote {} ({}); its public key, for `custody verify --public-key`:",
                out.display(),
                recording::seal::key_id(&key.verifying_key())
            );
            print!("{public}");
            Ok(ExitCode::SUCCESS)
        }
        DevCommand::Issuer { listen, key_dir } => {
            let listener = tokio::net::TcpListener::bind(&listen).await?;
            let local = listener.local_addr()?;
            if !local.ip().is_loopback() {
                bail!("the development issuer only listens on loopback, not {local}");
            }
            let issuer = DevIssuer::load_or_create(&key_dir, &format!("http://{local}"))?;
            eprintln!("custody: development issuer {} serving JWKS", issuer.issuer);
            axum::serve(listener, issuer.router()?)
                .with_graceful_shutdown(shutdown_signal())
                .await?;
            Ok(ExitCode::SUCCESS)
        }
        DevCommand::Token {
            key_dir,
            issuer,
            audience,
            email,
            groups,
            ttl,
            alg,
        } => {
            let alg = match alg.as_str() {
                "RS256" => jsonwebtoken::Algorithm::RS256,
                "ES256" => jsonwebtoken::Algorithm::ES256,
                other => bail!("--alg {other}: use RS256 or ES256"),
            };
            let iss = DevIssuer::load_or_create(&key_dir, &issuer)?;
            println!("{}", iss.token(&email, &groups, &audience, ttl, alg)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}
