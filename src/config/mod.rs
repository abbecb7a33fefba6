//! Typed configuration, validated at load so that a bad file fails with a
//! line and column instead of a surprise at the first request.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::policy::Member;
use crate::secrets::SecretRef;

mod check;
pub mod cloudsql;
pub mod pins;
#[cfg(test)]
mod tests;
mod units;

pub use check::check_issuer_url;
pub use cloudsql::{CloudSqlConfig, InstanceName, IpType};
use units::{duration, size};
pub use units::{parse_duration, parse_size};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{}", render(.0))]
    Invalid(Vec<Diagnostic>),
}

/// One problem found in a config file, located for the person fixing it.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

fn render(diags: &[Diagnostic]) -> String {
    diags
        .iter()
        .map(|d| format!("{}:{}:{}: {}", d.file, d.line, d.col, d.message))
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    pub identity: IdentityConfig,
    #[serde(default)]
    pub recording: RecordingConfig,
    #[serde(default)]
    pub secrets: SecretsConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub approvals: ApprovalsConfig,
    #[serde(default)]
    pub ssh: SshConfig,
    #[serde(default)]
    pub cloud_sql: CloudSqlConfig,
    #[serde(default)]
    pub connections: Vec<ConnectionConfig>,
}

/// Span export and log correlation. The standard OTEL_* variables win over
/// these, so a Cloud Run service can switch collectors without a new config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP endpoint (OTEL_EXPORTER_OTLP_ENDPOINT): a collector sidecar such as
    /// "http://localhost:4318", or "https://telemetry.googleapis.com". Unset: no spans.
    pub otlp_endpoint: Option<String>,
    /// "http/protobuf" (default) or "grpc" (OTEL_EXPORTER_OTLP_PROTOCOL).
    pub otlp_protocol: Option<String>,
    /// service.name of exported spans (OTEL_SERVICE_NAME); default "custody".
    pub service_name: Option<String>,
    /// Send Google credentials with exports; default: only to telemetry.googleapis.com.
    pub google_auth: Option<bool>,
    /// Project for Cloud Logging trace links (GOOGLE_CLOUD_PROJECT).
    pub project_id: Option<String>,
    /// Spans waiting for export at most; beyond it spans are dropped and counted.
    #[serde(default = "default_span_queue")]
    pub span_queue: usize,
    /// Append `/*traceparent='…',custody_audit_id='…'*/` to every statement
    /// sent upstream (Cloud SQL Query Insights, server logs).
    #[serde(default = "default_true")]
    pub sqlcommenter: bool,
}

fn default_true() -> bool {
    true
}

fn default_one() -> usize {
    1
}

fn default_review_expiry() -> Duration {
    Duration::from_secs(3600)
}

/// Announcements of new reviews and decisions.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// URL that receives a JSON POST for each new review and decision.
    pub webhook: Option<String>,
    /// "json" (default) or "slack" ({"text": ...}, for Slack incoming webhooks).
    pub webhook_format: Option<String>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            otlp_protocol: None,
            service_name: None,
            google_auth: None,
            project_id: None,
            span_queue: default_span_queue(),
            sqlcommenter: true,
        }
    }
}

fn default_span_queue() -> usize {
    2048
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Largest PostgreSQL message a client may send (bytes); larger ends the session.
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    /// Rows returned by one `POST /v1/exec` at most; the answer says when it was cut.
    #[serde(default = "default_exec_max_rows")]
    pub exec_max_rows: usize,
    /// How often the gateway pings an idle tunnel so Google's front end keeps it open.
    #[serde(default = "default_ping", with = "duration")]
    pub ping_interval: Duration,
    /// Largest statement guardrails or masking parse (bytes; also bounds its
    /// tokens to one per 32 bytes); larger ones are refused on such connections.
    #[serde(default = "default_max_inspected")]
    pub max_inspected_statement_bytes: usize,
    /// A PostgreSQL tunnel whose client has not sent a complete startup packet
    /// by then is closed (idle tunnels would otherwise hold sockets forever).
    #[serde(default = "default_startup_timeout", with = "duration")]
    pub startup_timeout: Duration,
    /// An HTTP client must finish sending a request's headers within this.
    #[serde(default = "default_header_read_timeout", with = "duration")]
    pub header_read_timeout: Duration,
    /// Peers (IPs or CIDRs) whose `X-Forwarded-For` is believed; from any
    /// other peer the header is ignored and the peer is the client.
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            max_message_bytes: default_max_message(),
            exec_max_rows: default_exec_max_rows(),
            ping_interval: default_ping(),
            max_inspected_statement_bytes: default_max_inspected(),
            startup_timeout: default_startup_timeout(),
            header_read_timeout: default_header_read_timeout(),
            trusted_proxies: Vec::new(),
        }
    }
}

fn default_listen() -> String {
    "0.0.0.0:8080".into()
}
fn default_max_message() -> usize {
    64 << 20
}
fn default_exec_max_rows() -> usize {
    10_000
}
fn default_max_inspected() -> usize {
    crate::policy::guardrails::DEFAULT_MAX_INSPECTED
}
fn default_ping() -> Duration {
    Duration::from_secs(30)
}
fn default_startup_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Audiences every issuer's tokens may carry, unless it lists its own.
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    /// Clock skew tolerated on exp/nbf/iat.
    #[serde(default = "default_leeway", with = "duration")]
    pub leeway: Duration,
    /// Ed25519 private key (PKCS#8 PEM, a secret reference) that signs
    /// delegation tokens; its public half is served at /.well-known/jwks.json.
    pub signing_key: Option<Spanned<String>>,
    /// Principals who may revoke (`custody revoke`).
    #[serde(default)]
    pub admins: Vec<Spanned<String>>,
    /// Principals who may read every recording (`GET /v1/sessions`); admins too.
    #[serde(default)]
    pub auditors: Vec<Spanned<String>>,
    /// Longest lifetime a delegation token may ask for.
    #[serde(default = "default_delegation_ttl", with = "duration")]
    pub delegation_max_ttl: Duration,
    /// Resolve `group:` members through Cloud Identity for these issuers.
    pub google_groups: Option<GoogleGroupsConfig>,
}

/// `[identity.google_groups]`: groups of principals whose tokens carry none.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoogleGroupsConfig {
    /// Cloud Identity API root; plain-http loopback endpoints get no token (tests).
    #[serde(default = "default_ci_endpoint")]
    pub endpoint: Spanned<String>,
    /// How long a principal's looked-up groups are reused.
    #[serde(default = "default_groups_ttl", with = "duration")]
    pub cache_ttl: Duration,
    /// Issuers whose tokens get a lookup.
    #[serde(default = "default_groups_issuers")]
    pub issuers: Vec<Spanned<String>>,
}

fn default_ci_endpoint() -> Spanned<String> {
    Spanned::new(0..0, "https://cloudidentity.googleapis.com".into())
}
fn default_groups_ttl() -> Duration {
    Duration::from_secs(300)
}
fn default_groups_issuers() -> Vec<Spanned<String>> {
    vec![Spanned::new(0..0, "https://accounts.google.com".into())]
}

fn default_delegation_ttl() -> Duration {
    Duration::from_secs(12 * 3600)
}

fn default_leeway() -> Duration {
    Duration::from_secs(60)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    pub issuer: Spanned<String>,
    pub jwks_uri: Option<Spanned<String>>,
    pub groups_claim: Option<String>,
    /// Email domains this issuer may vouch for; others' emails are ignored
    /// (the principal falls back to the subject). Empty: any domain.
    #[serde(default)]
    pub email_domains: Vec<String>,
    /// Audiences this issuer's tokens may carry, instead of [identity] audiences.
    pub audiences: Option<Vec<String>>,
    /// `projects/N/locations/global/workloadIdentityPools/POOL`: this
    /// issuer's tokens are federated workloads of that pool
    /// (`principal://iam.googleapis.com/POOL/subject/S`).
    pub workload_identity_pool: Option<Spanned<String>>,
    /// IAM's attribute mapping, `assertion.CLAIM` paths only
    /// (`google.subject`, `google.groups`, `attribute.NAME`).
    #[serde(default)]
    pub attribute_mapping: std::collections::BTreeMap<String, String>,
    /// Claims a pool issuer's tokens must carry with exactly these values
    /// (`"assertion.repository_owner_id" = "1234"`): IAM's attribute condition.
    #[serde(default)]
    pub required_claims: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingConfig {
    #[serde(default = "default_store")]
    pub store: Spanned<String>,
    /// Events buffered per session before the relay waits for the writer.
    #[serde(default = "default_queue")]
    pub queue_events: usize,
    /// GCS API root for gs:// stores (an emulator); else STORAGE_EMULATOR_HOST, else Google.
    pub endpoint: Option<String>,
    /// Ed25519 private key (PKCS#8 PEM, a secret reference) that signs each manifest.
    pub signing_key: Option<Spanned<String>>,
    /// Longest a recorded event waits in memory before its segment is written:
    /// what a crash or SIGKILL can lose.
    #[serde(default = "default_flush", with = "duration")]
    pub flush_interval: Duration,
    /// A segment is written early once this much is buffered.
    #[serde(default = "default_segment_bytes", with = "size")]
    pub segment_bytes: usize,
    /// Unwritten recording data of all sessions together; beyond it sessions
    /// wait (back-pressure), and new sessions are refused.
    #[serde(default = "default_budget", with = "size")]
    pub memory_budget: usize,
    /// How long a running session may wait on a failing or slow store before
    /// it is ended because its recording failed.
    #[serde(default = "default_failure_grace", with = "duration")]
    pub failure_grace: Duration,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        RecordingConfig {
            store: default_store(),
            queue_events: default_queue(),
            endpoint: None,
            signing_key: None,
            flush_interval: default_flush(),
            segment_bytes: default_segment_bytes(),
            memory_budget: default_budget(),
            failure_grace: default_failure_grace(),
        }
    }
}

fn default_flush() -> Duration {
    Duration::from_secs(5)
}
fn default_segment_bytes() -> usize {
    1 << 20
}
fn default_budget() -> usize {
    64 << 20
}
fn default_failure_grace() -> Duration {
    Duration::from_secs(30)
}

fn default_store() -> Spanned<String> {
    Spanned::new(0..0, "file:///var/lib/custody".into())
}
fn default_queue() -> usize {
    1024
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    /// How long a fetched secret is reused; rotation is picked up after this.
    #[serde(default = "default_secret_ttl", with = "duration")]
    pub cache_ttl: Duration,
    /// Secret Manager API root; plain-http loopback endpoints get no token (tests, emulators).
    #[serde(default = "default_sm_endpoint")]
    pub secret_manager_endpoint: String,
}

impl Default for SecretsConfig {
    fn default() -> Self {
        SecretsConfig {
            cache_ttl: default_secret_ttl(),
            secret_manager_endpoint: default_sm_endpoint(),
        }
    }
}

fn default_secret_ttl() -> Duration {
    Duration::from_secs(300)
}
fn default_sm_endpoint() -> String {
    "https://secretmanager.googleapis.com".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Postgres,
    Ssh,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    Disable,
    Require,
    #[default]
    VerifyFull,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    pub name: Spanned<String>,
    pub kind: Kind,
    /// Required, except on a postgres connection that names a Cloud SQL `instance`.
    #[serde(default)]
    pub host: String,
    pub port: Option<u16>,
    pub database: Option<String>,
    pub user: Option<String>,
    pub password: Option<Spanned<String>>,
    /// Unset: verify-full (see `tls()`); kept optional so `instance` can refuse it.
    pub tls: Option<TlsMode>,
    /// PEM bundle that signs the upstream's certificate (verify-full); else the web PKI roots.
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    pub private_key: Option<Spanned<String>>,
    pub host_key: Option<String>,
    pub masking: Option<MaskingConfig>,
    pub guardrails: Option<GuardrailsConfig>,
    pub delegation: Option<DelegationPolicy>,
    /// SSH: upstream accounts the client's SSH user name may select
    /// (`ssh deploy@web-1`); any other name gets `user`.
    #[serde(default)]
    pub users: Vec<String>,
    /// SSH: environment variables a client may set (`*` globs); default LANG, LC_*.
    pub allow_env: Option<Vec<String>>,
    /// SSH: also record what the client types ("i" events); off by default,
    /// since passwords typed at prompts would land in the recording.
    #[serde(default)]
    pub record_input: bool,
    /// SSH: destinations ("host:port") the client may reach with `ssh -L`.
    #[serde(default)]
    pub local_forwarding: Vec<String>,
    /// SSH: subsystems besides sftp the client may start (`ssh -s HOST NAME`);
    /// they are relayed as opaque bytes, so none is allowed by default.
    #[serde(default)]
    pub subsystems: Vec<String>,
    /// SSH: end a session after this long without traffic (default "30m").
    #[serde(default = "default_ssh_idle", with = "duration")]
    pub idle_timeout: Duration,
    /// End a tunnel session (PostgreSQL or SSH) after this long (default "60m", Cloud Run's request limit).
    #[serde(default = "default_ssh_max", with = "duration")]
    pub max_duration: Duration,
    /// PostgreSQL: pass a client's `replication` startup parameter upstream
    /// (walsender sessions, relayed and recorded); off: such connections are
    /// refused. Not with guardrails or masking, which cannot read WAL.
    #[serde(default)]
    pub allow_replication: bool,
    /// PostgreSQL on Cloud SQL: the instance connection name
    /// (`project:region:instance`) instead of host/port/tls/ca_file.
    pub instance: Option<Spanned<String>>,
    /// Which address of the instance to dial (default private).
    #[serde(default)]
    pub ip_type: IpType,
    /// Cloud SQL IAM database login: the gateway's service account logs in
    /// with an access token instead of a password.
    pub iam_auth: Option<Spanned<bool>>,
    /// Offered to agents over MCP (`/mcp`, `custody mcp`); false hides the
    /// connection from MCP's tools, while the tunnel and exec still serve it.
    #[serde(default = "default_true")]
    pub mcp: bool,
    /// `[cloud_sql] admin_endpoint`, copied here at load so the connector
    /// needs nothing but the connection.
    #[serde(skip)]
    pub cloud_sql_admin: String,
}

fn default_ssh_idle() -> Duration {
    Duration::from_secs(30 * 60)
}
fn default_ssh_max() -> Duration {
    Duration::from_secs(60 * 60)
}

/// The gateway's own SSH server side (the end `ssh` talks to inside the tunnel).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshConfig {
    /// The gateway's SSH host key (OpenSSH or PEM private key), a secret
    /// reference. Unset: a new Ed25519 key per process, which clients cannot pin.
    pub host_key: Option<Spanned<String>>,
    /// A client must finish the SSH handshake and login within this (default "30s").
    #[serde(default = "default_login_timeout", with = "duration")]
    pub login_timeout: Duration,
}

impl Default for SshConfig {
    fn default() -> Self {
        SshConfig {
            host_key: None,
            login_timeout: default_login_timeout(),
        }
    }
}

fn default_login_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Which chains of custody may use a connection. When present, every
/// request must satisfy it, including a caller acting for itself (a chain
/// of one), so skipping the delegation cannot skip the rules.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DelegationPolicy {
    /// Who may originate work on this connection (IAM members; groups match
    /// the originator's groups as verified at the first exchange).
    #[serde(default)]
    pub originators: Vec<Spanned<String>>,
    /// Most hands the work may pass through after the originator.
    pub max_depth: Option<usize>,
    /// Oldest the original delegation may be, e.g. "24h".
    pub max_age: Option<Spanned<String>>,
    /// Principals the chain must pass through (user: or serviceAccount:).
    #[serde(default)]
    pub via: Vec<Spanned<String>>,
}

impl DelegationPolicy {
    pub fn originator_members(&self) -> Vec<Member> {
        self.originators
            .iter()
            .filter_map(|m| m.get_ref().parse().ok())
            .collect()
    }

    pub fn max_age(&self) -> Option<Duration> {
        self.max_age
            .as_ref()
            .and_then(|a| parse_duration(a.get_ref()).ok())
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MaskingConfig {
    /// Built-in detectors applied to every text value: email, credit_card, us_ssn,
    /// iban, phone, ip_address, gcp_api_key, private_key, jwt, aws_access_key.
    #[serde(default)]
    pub detectors: Vec<String>,
    /// Extra detectors: name -> regex; matches become `[NAME]`.
    #[serde(default)]
    pub custom: BTreeMap<String, String>,
    /// Strategy for detector matches: redact (default), partial, hash, null.
    pub detector_strategy: Option<String>,
    /// Column rules: "schema.table.column" | "table.column" | "column" glob -> strategy.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    /// HMAC key for the hash strategy (a secret reference).
    pub hash_key: Option<Spanned<String>>,
    /// Principals who see clear values.
    #[serde(default)]
    pub exempt: Vec<Spanned<String>>,
}

impl MaskingConfig {
    pub fn engine_config<'a>(
        &'a self,
        hash_key: Option<&'a [u8]>,
    ) -> crate::mask::EngineConfig<'a> {
        crate::mask::EngineConfig {
            detectors: &self.detectors,
            custom: &self.custom,
            columns: &self.columns,
            detector_strategy: self.detector_strategy.as_deref(),
            hash_key,
        }
    }

    pub fn exempt_members(&self) -> Vec<Member> {
        self.exempt
            .iter()
            .filter_map(|m| m.get_ref().parse().ok())
            .collect()
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct GuardrailsConfig {
    /// Rule names (see `policy::guardrails::RULES`) whose statements are refused.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Rule names whose statements are held for approval (refused with a
    /// review id; see `approvers`). Without approvers they are refused.
    #[serde(default)]
    pub require_approval: Vec<String>,
    /// Who may approve held statements (IAM members); never the requester
    /// or anyone in the requesting chain.
    #[serde(default)]
    pub approvers: Vec<Spanned<String>>,
    /// Approvals a held statement needs.
    #[serde(default = "default_one")]
    pub approvals_required: usize,
    /// An unanswered review expires after this.
    #[serde(default = "default_review_expiry", with = "duration")]
    pub approval_expires: Duration,
    /// JIT access: an approval opens the connection to the requesting chain
    /// for this long (e.g. "30m") instead of allowing one statement once.
    pub approval_window: Option<Spanned<String>>,
    /// Only reads (SELECT, SHOW, EXPLAIN without ANALYZE of writes, COPY TO, ...).
    #[serde(default)]
    pub read_only: bool,
    /// Regexes matched against the normalized statement (lowercase, single spaces).
    #[serde(default)]
    pub deny_patterns: Vec<String>,
    /// Let statements PostgreSQL's parser rejects through (checked by patterns only).
    #[serde(default)]
    pub allow_unparsed: bool,
    /// Regexes (over the normalized statement) whose matches are held for approval.
    #[serde(default)]
    pub approval_patterns: Vec<String>,
}

impl ConnectionConfig {
    pub fn name(&self) -> &str {
        self.name.get_ref()
    }

    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.kind {
            Kind::Postgres => 5432,
            Kind::Ssh => 22,
        })
    }

    /// Parsed allow list; validation at load guarantees every entry parses.
    pub fn members(&self) -> Vec<Member> {
        self.allow
            .iter()
            .filter_map(|m| m.get_ref().parse().ok())
            .collect()
    }

    pub fn tls(&self) -> TlsMode {
        self.tls.unwrap_or_default()
    }

    /// The Cloud SQL instance, when the connection names one (validated at load).
    pub fn cloud_sql(&self) -> Option<InstanceName> {
        self.instance
            .as_ref()
            .and_then(|i| i.get_ref().parse().ok())
    }

    pub fn iam_auth(&self) -> bool {
        self.iam_auth.as_ref().is_some_and(|b| *b.get_ref())
    }

    pub fn password_ref(&self) -> Option<SecretRef> {
        self.password
            .as_ref()
            .and_then(|p| p.get_ref().parse().ok())
    }
}

impl Config {
    /// Loads and validates a file; `CUSTODY_*`-free, so tests and `config check` share it.
    pub fn load(path: &str) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_string(),
            source,
        })?;
        Config::parse(path, &text)
    }

    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        let at = |span: std::ops::Range<usize>, message: String| {
            let (line, col) = line_col(text, span.start);
            Diagnostic {
                file: file.to_string(),
                line,
                col,
                message,
            }
        };
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            ConfigError::Invalid(vec![at(span, e.message().trim().to_string())])
        })?;
        let problems = config.problems();
        let admin = config.cloud_sql.admin_endpoint.get_ref();
        let admin = admin.trim_end_matches('/').to_string();
        for c in &mut config.connections {
            c.cloud_sql_admin = admin.clone();
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(
                problems.into_iter().map(|(s, m)| at(s, m)).collect(),
            ))
        }
    }

    pub fn connection(&self, name: &str) -> Option<&ConnectionConfig> {
        self.connections.iter().find(|c| c.name() == name)
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, col)
}
