//! The command line as clap types: every subcommand, flag and help text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Custody: OIDC-authenticated, recorded access to PostgreSQL through a gateway.
///
/// Run the gateway with `custody serve`; reach a database through it with
/// `custody connect` (then psql) or `custody exec`. The CLI finds the gateway
/// in --gateway / CUSTODY_GATEWAY and your identity token in --token /
/// CUSTODY_TOKEN, else asks the GCP metadata server or gcloud.
#[derive(Parser)]
#[command(name = "custody", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone)]
pub struct GatewayArgs {
    /// Gateway URL, e.g. https://custody-abc-uc.a.run.app
    #[arg(long, env = "CUSTODY_GATEWAY")]
    pub gateway: Option<String>,
    /// OIDC ID token whose audience is the gateway URL
    #[arg(long, env = "CUSTODY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the gateway (listens on 0.0.0.0:$PORT, default 8080)
    Serve(ServeArgs),
    /// Open a local endpoint that tunnels to CONNECTION through the gateway
    ///
    /// Example: custody connect pg-prod --listen 127.0.0.1:6432
    ///          psql "host=127.0.0.1 port=6432 dbname=app user=me"
    Connect(ConnectArgs),
    /// Run one statement through the gateway and print the result
    ///
    /// Exit codes: 0 success, 1 query or upstream error, 2 refused (auth, policy),
    /// 3 held for approval (the review id is printed; see `custody review`).
    Exec(ExecArgs),
    /// Serve Custody's MCP tools on stdio, for agents that only speak stdio MCP
    ///
    /// Each tool call (list_connections, query, run_command, review_status) is
    /// forwarded to the gateway's /mcp with this CLI's identity (--token,
    /// CUSTODY_TOKEN, the metadata server or gcloud) and CUSTODY_DELEGATION,
    /// and decided, masked and recorded there. Naming connections shows the
    /// agent only those. Logs go to stderr; stdout is the MCP stream.
    ///
    /// Example (an agent's MCP configuration):
    ///   {"mcpServers": {"custody": {"command": "custody", "args": ["mcp", "pg-prod"],
    ///    "env": {"CUSTODY_GATEWAY": "https://custody-abc-uc.a.run.app"}}}}
    Mcp(McpArgs),
    /// Pass custody to a child: print a delegation token naming it as the next actor
    ///
    /// The child sets CUSTODY_DELEGATION to the printed token; its own identity
    /// token still authenticates it. Inside a delegated job, delegating again
    /// adds a hop (the chain is kept: originator → each hop → caller).
    /// Example: export CUSTODY_DELEGATION=$(custody delegate --to serviceAccount:job@p.iam.gserviceaccount.com --connections pg-prod --ttl 1h)
    Delegate(DelegateArgs),
    /// Reviews of statements held for approval: list, show, approve, deny
    Review {
        #[command(subcommand)]
        command: ReviewCommand,
    },
    /// Revoke a principal: every instance refuses chains that include it and ends their live sessions (admins only)
    ///
    /// The revocation is stored (PREFIX/_revocations/) and read by every
    /// instance within 5 s: new sessions, execs and delegations whose chain
    /// includes the principal are refused, and live PostgreSQL and SSH
    /// tunnels end (PostgreSQL with a FATAL 57P01 naming the principal), with
    /// the reason in their recordings. A revocation is permanent (the store is
    /// create-only). Groups and domains are refused: their membership is
    /// whatever the next token says. Also accepted: subject:SUB and
    /// principal://ISSUER/subject/SUB.
    ///
    /// Example: custody revoke --principal user:alice@example.com --reason "laptop lost"
    Revoke(RevokeArgs),
    /// Print a session's recording readably
    ///
    /// The recording is verified first (as `custody verify` does); one that
    /// does not verify is not printed (exit 1) unless --unverified is given.
    /// Text output escapes control characters, so recorded text cannot
    /// forge lines.
    Replay(ReplayArgs),
    /// List recorded sessions from the store, newest first
    ///
    /// Example: custody sessions --store gs://audit-bucket/custody --since 7d --principal user:alice@example.com
    Sessions(SessionsArgs),
    /// Check a recording is complete and untouched: signature, chain, order
    ///
    /// Exit codes: 0 verified, 1 something is wrong (each problem is printed).
    /// Example: custody verify 0193... --store gs://audit-bucket/custody --public-key custody-signing.pub
    Verify(VerifyArgs),
    /// The reviewers' console on loopback, calling the gateway with your token (like kubectl proxy)
    Ui(super::ui::UiArgs),
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

#[derive(Args)]
pub struct ServeArgs {
    /// Config file (TOML); see README "Configuration"
    #[arg(long, env = "CUSTODY_CONFIG")]
    pub config: PathBuf,
    /// Listen address; overrides [server] listen and PORT
    #[arg(long)]
    pub listen: Option<String>,
}

#[derive(Args)]
pub struct ConnectArgs {
    pub connection: String,
    /// Local address to accept clients on (one tunnel per client)
    #[arg(long, conflicts_with = "stdio")]
    pub listen: Option<String>,
    /// Use stdin/stdout for one session (OpenSSH ProxyCommand)
    #[arg(long)]
    pub stdio: bool,
    #[command(flatten)]
    pub gw: GatewayArgs,
}

#[derive(Args)]
pub struct ExecArgs {
    pub connection: String,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Run a statement a guardrail holds, under this approved review
    #[arg(long, env = "CUSTODY_REVIEW")]
    pub review: Option<String>,
    /// When the statement is held for approval, wait for the decision, then run it
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub gw: GatewayArgs,
    /// The SQL to run (after --)
    #[arg(last = true, required = true)]
    pub input: Vec<String>,
}

#[derive(Args)]
pub struct McpArgs {
    /// Offer only these connections (default: every one the gateway offers you over MCP)
    pub connections: Vec<String>,
    #[command(flatten)]
    pub gw: GatewayArgs,
}

#[derive(Args)]
pub struct DelegateArgs {
    /// The next actor: user:EMAIL or serviceAccount:EMAIL
    #[arg(long)]
    pub to: String,
    /// Limit the delegation to these connections (comma-separated); at most the parent's
    #[arg(long, value_delimiter = ',')]
    pub connections: Vec<String>,
    /// Lifetime, e.g. 30m or 1h; never beyond the parent's expiry
    #[arg(long, default_value = "1h")]
    pub ttl: String,
    #[command(flatten)]
    pub gw: GatewayArgs,
}

#[derive(Args)]
pub struct RevokeArgs {
    /// user:EMAIL, serviceAccount:EMAIL, subject:SUB or principal://ISSUER/subject/SUB
    #[arg(long)]
    pub principal: String,
    /// Why, kept with the revocation and in the recordings of the sessions it ends
    #[arg(long, default_value = "")]
    pub reason: String,
    #[command(flatten)]
    pub gw: GatewayArgs,
}

#[derive(Args)]
pub struct ReplayArgs {
    pub audit_id: String,
    /// Recording store: file://DIR or gs://BUCKET/PREFIX (STORAGE_EMULATOR_HOST is honoured)
    #[arg(long, env = "CUSTODY_STORE")]
    pub store: String,
    /// auto (asciicast for SSH terminal sessions, else text), text, json
    /// (one event per line) or asciicast (v2, for `asciinema play`)
    #[arg(long, value_enum, default_value = "auto")]
    pub format: ReplayFormat,
    /// Same as --format json
    #[arg(long, hide = true)]
    pub json: bool,
    /// The gateway's Ed25519 public key (PEM), as for `custody verify`
    #[arg(long)]
    pub public_key: Option<PathBuf>,
    /// Print a recording that does not verify (unsealed, altered or with
    /// objects added), under a warning; only its named segments are read
    #[arg(long)]
    pub unverified: bool,
}

#[derive(Args)]
pub struct SessionsArgs {
    /// Recording store: file://DIR or gs://BUCKET/PREFIX
    #[arg(long, env = "CUSTODY_STORE")]
    pub store: String,
    /// How far back: a duration ("24h", "7d") or a date/time ("2026-11-30", RFC 3339)
    #[arg(long, default_value = "24h")]
    pub since: String,
    /// Only this principal, as recorded (e.g. user:alice@example.com)
    #[arg(long)]
    pub principal: Option<String>,
    /// Only this connection
    #[arg(long)]
    pub connection: Option<String>,
    /// Only this mode (tunnel, exec, refused, read, review, ...)
    #[arg(long)]
    pub mode: Option<String>,
    /// Only this outcome, as listed (completed, "not sealed", ...)
    #[arg(long)]
    pub outcome: Option<String>,
    /// At most this many sessions
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    #[arg(long, value_enum, default_value = "text")]
    pub format: ListFormat,
}

#[derive(Args)]
pub struct VerifyArgs {
    pub audit_id: String,
    /// Recording store: file://DIR or gs://BUCKET/PREFIX
    #[arg(long, env = "CUSTODY_STORE")]
    pub store: String,
    /// The gateway's Ed25519 public key (PEM; a private key PEM works too).
    /// Without it the key embedded in the manifest is used, which proves
    /// integrity but not who signed.
    #[arg(long)]
    pub public_key: Option<PathBuf>,
}

/// How `custody exec` prints its answer.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ListFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum ReplayFormat {
    Auto,
    Text,
    Json,
    Asciicast,
}

#[derive(Subcommand)]
pub enum ReviewCommand {
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
pub enum ConfigCommand {
    /// Validate a config file offline; errors name FILE:LINE:COLUMN
    Check { file: PathBuf },
}

#[derive(Subcommand)]
pub enum DevCommand {
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
    Token(DevTokenArgs),
}

#[derive(Args)]
pub struct DevTokenArgs {
    #[arg(long)]
    pub key_dir: PathBuf,
    /// Issuer URL, as configured in [[identity.issuers]]
    #[arg(long, default_value = "http://127.0.0.1:9000")]
    pub issuer: String,
    /// Audience: the gateway URL
    #[arg(long)]
    pub audience: String,
    #[arg(long)]
    pub email: String,
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// Lifetime in seconds
    #[arg(long, default_value_t = 3600)]
    pub ttl: i64,
    /// RS256 or ES256
    #[arg(long, default_value = "RS256")]
    pub alg: String,
}
