//! The semantic checks of a loaded config, each located for the person
//! fixing it: what the type system cannot express.

use super::*;

impl Config {
    /// Semantic checks the type system cannot express, each with the span to blame.
    pub(super) fn problems(&self) -> Vec<(std::ops::Range<usize>, String)> {
        let mut out = Vec::new();
        let every_issuer_has_audiences =
            self.identity.issuers.iter().all(|i| i.audiences.is_some());
        if self.identity.audiences.is_empty()
            && (!every_issuer_has_audiences || self.identity.signing_key.is_some())
        {
            out.push((0..0, "identity.audiences is empty: list the gateway's URL (the audience of the ID tokens callers present; delegation tokens name its first entry as their issuer)".into()));
        }
        if self.identity.issuers.is_empty() {
            out.push((0..0, "identity.issuers is empty: add [[identity.issuers]] with issuer = \"https://accounts.google.com\" or your IdP".into()));
        }
        for iss in &self.identity.issuers {
            if let Err(m) = check_issuer_url(iss.issuer.get_ref()) {
                out.push((iss.issuer.span(), format!("issuer {m}")));
            }
            if let Some(j) = &iss.jwks_uri {
                if let Err(m) = check_issuer_url(j.get_ref()) {
                    out.push((j.span(), format!("jwks_uri {m}")));
                }
            }
            out.extend(issuer_problems(iss));
        }
        out.extend(pool_problems(&self.identity.issuers));
        out.extend(self.google_groups_problems());
        for p in &self.server.trusted_proxies {
            if let Err(e) = p.get_ref().parse::<pins::Cidr>() {
                out.push((p.span(), format!("server.{e}")));
            }
        }
        for (key, d) in [
            ("startup_timeout", self.server.startup_timeout),
            ("header_read_timeout", self.server.header_read_timeout),
        ] {
            if d.is_zero() {
                out.push((
                    0..0,
                    format!("server.{key} must be above zero, e.g. \"10s\""),
                ));
            }
        }
        let store = self.recording.store.get_ref();
        if !(store.starts_with("file://") || store.starts_with("gs://")) {
            out.push((
                self.recording.store.span(),
                format!("recording.store {store:?} must be file://DIR or gs://BUCKET/PREFIX"),
            ));
        }
        if let Some(k) = &self.recording.signing_key {
            if let Err(e) = k.get_ref().parse::<SecretRef>() {
                out.push((k.span(), format!("recording.signing_key: {e}")));
            }
        }
        for m in self.identity.admins.iter().chain(&self.identity.auditors) {
            if let Err(e) = m.get_ref().parse::<Member>() {
                out.push((m.span(), e.to_string()));
            }
        }
        if let Some(k) = &self.ssh.host_key {
            if let Err(e) = k.get_ref().parse::<SecretRef>() {
                out.push((k.span(), format!("ssh.host_key: {e}")));
            }
        }
        if let Some(k) = &self.identity.signing_key {
            if let Err(e) = k.get_ref().parse::<SecretRef>() {
                out.push((k.span(), format!("identity.signing_key: {e}")));
            }
        }
        let r = &self.recording;
        if r.segment_bytes == 0 || r.segment_bytes > r.memory_budget {
            out.push((0..0, format!("recording.segment_bytes ({}) must be between 1 and recording.memory_budget ({})", r.segment_bytes, r.memory_budget)));
        }
        if r.flush_interval.is_zero() {
            out.push((
                0..0,
                "recording.flush_interval must be above zero, e.g. \"5s\"".into(),
            ));
        }
        if let Some(p) = &self.telemetry.otlp_protocol {
            if p != "grpc" && p != "http/protobuf" {
                out.push((
                    0..0,
                    format!("telemetry.otlp_protocol {p:?}: use \"grpc\" or \"http/protobuf\""),
                ));
            }
        }
        let admin = &self.cloud_sql.admin_endpoint;
        if let Err(m) = check_issuer_url(admin.get_ref()) {
            out.push((admin.span(), format!("cloud_sql.admin_endpoint {m}")));
        }
        let mut names = HashSet::new();
        for c in &self.connections {
            out.extend(cloud_sql_problems(c));
            let name = c.name.get_ref();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
            {
                out.push((
                    c.name.span(),
                    format!(
                        "connection name {name:?} may only use letters, digits, '-', '_' and '.'"
                    ),
                ));
            }
            if !names.insert(name.clone()) {
                out.push((
                    c.name.span(),
                    format!("connection {name:?} is defined twice"),
                ));
            }
            for m in &c.allow {
                if let Err(e) = m.get_ref().parse::<Member>() {
                    out.push((m.span(), e.to_string()));
                }
            }
            if let Some(mask) = &c.masking {
                for m in &mask.exempt {
                    if let Err(e) = m.get_ref().parse::<Member>() {
                        out.push((m.span(), e.to_string()));
                    }
                }
            }
            if let Some(d) = &c.delegation {
                for m in d.originators.iter().chain(&d.via) {
                    if let Err(e) = m.get_ref().parse::<Member>() {
                        out.push((m.span(), e.to_string()));
                    }
                }
                if let Some(a) = &d.max_age {
                    if let Err(e) = parse_duration(a.get_ref()) {
                        out.push((a.span(), e));
                    }
                }
            }
            if let Some(g) = &c.guardrails {
                for m in &g.approvers {
                    if let Err(e) = m.get_ref().parse::<Member>() {
                        out.push((m.span(), e.to_string()));
                    }
                }
                if let Some(w) = &g.approval_window {
                    if let Err(e) = parse_duration(w.get_ref()) {
                        out.push((w.span(), e));
                    }
                }
            }
            if let Some(g) = &c.guardrails {
                if let Err(e) = crate::policy::guardrails::Guardrails::new(g) {
                    out.push((c.name.span(), format!("connection {name:?}: {e}")));
                }
            }
            if let Some(m) = &c.masking {
                let key = m.hash_key.as_ref().map(|_| b"config-check".as_slice());
                if let Err(e) = crate::mask::Engine::new(&m.engine_config(key)) {
                    out.push((c.name.span(), format!("connection {name:?} masking: {e}")));
                }
            }
            let hash_key = c.masking.as_ref().and_then(|m| m.hash_key.as_ref());
            for secret in [c.password.as_ref(), c.private_key.as_ref(), hash_key]
                .into_iter()
                .flatten()
            {
                if let Err(e) = secret.get_ref().parse::<SecretRef>() {
                    out.push((secret.span(), e.to_string()));
                }
            }
            if c.allow.is_empty() {
                out.push((c.name.span(), format!("connection {name:?} has an empty allow list, so nobody can use it; add members such as \"group:sre@example.com\"")));
            }
            let misplaced: &[(&str, bool)] = match c.kind {
                Kind::Postgres => &[
                    ("private_key", c.private_key.is_some()),
                    ("host_key", c.host_key.is_some()),
                ],
                Kind::Ssh => &[
                    ("password", c.password.is_some()),
                    ("allow_replication", c.allow_replication),
                    ("database", c.database.is_some()),
                    (
                        "[connections.masking] columns",
                        c.masking.as_ref().is_some_and(|m| !m.columns.is_empty()),
                    ),
                    (
                        "[connections.guardrails] deny, require_approval, read_only or allow_unparsed (SSH commands are checked by deny_patterns and approval_patterns)",
                        c.guardrails.as_ref().is_some_and(|g| {
                            !g.deny.is_empty() || !g.require_approval.is_empty() || g.read_only || g.allow_unparsed
                        }),
                    ),
                ],
            };
            for (field, present) in misplaced {
                if *present {
                    out.push((
                        c.name.span(),
                        format!(
                            "connection {name:?} is kind = \"{}\", which never uses {field}",
                            match c.kind {
                                Kind::Postgres => "postgres",
                                Kind::Ssh => "ssh",
                            }
                        ),
                    ));
                }
            }
            if c.kind == Kind::Ssh {
                if c.user.is_none() {
                    out.push((c.name.span(), format!("ssh connection {name:?} needs `user`: the upstream account the gateway logs in as")));
                }
                if c.private_key.is_none() {
                    out.push((c.name.span(), format!("ssh connection {name:?} needs `private_key` (a secret reference to an OpenSSH or PEM key)")));
                }
                match c.host_key.as_deref().map(pins::HostKeyPin::parse) {
                    None => out.push((c.name.span(), format!("ssh connection {name:?} needs `host_key`: the upstream's key as a known_hosts line (`ssh-keyscan HOST`) or its SHA256: fingerprint"))),
                    Some(Err(e)) => out.push((c.name.span(), format!("connection {name:?} host_key: {e}"))),
                    Some(Ok(_)) => {}
                }
                for sub in &c.subsystems {
                    if sub.is_empty()
                        || sub.len() > 64
                        || !sub.chars().all(|ch| ch.is_ascii_graphic())
                    {
                        out.push((
                            c.name.span(),
                            format!("connection {name:?} subsystems entry {sub:?} is not a subsystem name (printable ASCII without spaces, as in sshd's `Subsystem NAME ...`)"),
                        ));
                    } else if sub == "sftp" {
                        out.push((
                            c.name.span(),
                            format!("connection {name:?} lists \"sftp\" in subsystems, but sftp is always allowed (and recorded); remove it"),
                        ));
                    }
                }
                for dest in &c.local_forwarding {
                    if pins::parse_destination(dest).is_none() {
                        out.push((
                            c.name.span(),
                            format!(
                                "connection {name:?} local_forwarding {dest:?} is not host:port"
                            ),
                        ));
                    }
                }
            } else {
                for (field, set) in [
                    ("users", !c.users.is_empty()),
                    ("allow_env", c.allow_env.is_some()),
                    ("record_input", c.record_input),
                    ("local_forwarding", !c.local_forwarding.is_empty()),
                    ("subsystems", !c.subsystems.is_empty()),
                ] {
                    if set {
                        out.push((c.name.span(), format!("connection {name:?} is kind = \"postgres\", which never uses {field}")));
                    }
                }
            }
            if c.kind == Kind::Postgres {
                let iam = c.iam_auth();
                for (field, v) in [("database", &c.database), ("user", &c.user)] {
                    if v.is_none() && !(iam && field == "user") {
                        out.push((
                            c.name.span(),
                            format!("postgres connection {name:?} needs `{field}`"),
                        ));
                    }
                }
                if c.allow_replication && (c.guardrails.is_some() || c.masking.is_some()) {
                    out.push((c.name.span(), format!("connection {name:?} sets allow_replication with guardrails or masking: a replication stream (WAL) can be neither checked nor masked; use a separate connection for replication")));
                }
                if c.password.is_none() && !c.iam_auth() {
                    out.push((c.name.span(), format!("postgres connection {name:?} needs `password` (a secret reference: sm://PROJECT/SECRET, env:NAME or file:PATH)")));
                }
            }
        }
        out
    }
}

impl Config {
    /// `[identity.google_groups]`: a checked endpoint, and issuers that are configured.
    fn google_groups_problems(&self) -> Vec<(std::ops::Range<usize>, String)> {
        let Some(g) = &self.identity.google_groups else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if let Err(m) = check_issuer_url(g.endpoint.get_ref()) {
            out.push((
                g.endpoint.span(),
                format!("identity.google_groups.endpoint {m}"),
            ));
        }
        let known = |i: &str| {
            self.identity
                .issuers
                .iter()
                .any(|c| c.issuer.get_ref().trim_end_matches('/') == i.trim_end_matches('/'))
        };
        for i in &g.issuers {
            if !known(i.get_ref()) {
                out.push((i.span(), format!("identity.google_groups.issuers: {:?} is not an [[identity.issuers]] issuer, so no token of it is ever verified", i.get_ref())));
            }
        }
        out
    }
}

/// `instance`, `ip_type` and `iam_auth`: a Cloud SQL connection names its
/// instance instead of an address, and IAM login replaces the password.
fn cloud_sql_problems(c: &ConnectionConfig) -> Vec<(std::ops::Range<usize>, String)> {
    let mut out = Vec::new();
    let name = c.name.get_ref();
    let Some(instance) = &c.instance else {
        if c.host.is_empty() {
            out.push((c.name.span(), format!("connection {name:?} needs `host` (or, for Cloud SQL, `instance = \"PROJECT:REGION:INSTANCE\"`)")));
        }
        if let Some(iam) = &c.iam_auth {
            out.push((iam.span(), format!("connection {name:?} sets iam_auth without `instance`: IAM database login is for Cloud SQL instances")));
        }
        if c.ip_type != IpType::Private {
            out.push((c.name.span(), format!("connection {name:?} sets ip_type without `instance`: ip_type picks a Cloud SQL instance's address")));
        }
        return out;
    };
    let at = instance.span();
    if c.kind != Kind::Postgres {
        out.push((at.clone(), format!("connection {name:?} is kind = \"ssh\", which never uses instance (Cloud SQL is PostgreSQL)")));
    }
    if let Err(e) = instance.get_ref().parse::<InstanceName>() {
        out.push((at.clone(), e));
    }
    for (field, set) in [
        ("host", !c.host.is_empty()),
        ("port", c.port.is_some()),
        ("tls", c.tls.is_some()),
        ("ca_file", c.ca_file.is_some()),
    ] {
        if set {
            out.push((at.clone(), format!("connection {name:?} sets instance together with {field}: a Cloud SQL connection gets its address, port (3307), TLS and server CA from the Cloud SQL Admin API; remove {field}")));
        }
    }
    if c.iam_auth() {
        if let Some(p) = &c.password {
            out.push((p.span(), format!("connection {name:?} sets iam_auth together with password: with IAM database login the password is a fresh access token; remove password")));
        }
        if c.user.is_some() {
            out.push((at, format!("connection {name:?} sets iam_auth together with user: with IAM database login the user is the gateway's service account (its email without .gserviceaccount.com); remove user")));
        }
    }
    out
}

/// Plain http is accepted only on loopback, where a developer's local issuer lives.
pub fn check_issuer_url(url: &str) -> Result<(), String> {
    if url.starts_with("https://") {
        return Ok(());
    }
    if url.starts_with("http://") {
        if crate::secrets::is_loopback_http(url) {
            return Ok(());
        }
        return Err(format!(
            "{url:?} uses plain http on a host that is not a loopback address (127.0.0.0/8, [::1] or localhost, without user@): use https"
        ));
    }
    Err(format!("{url:?} must be an https:// URL"))
}

/// An issuer's own audiences and its workload identity pool and mapping.
fn issuer_problems(iss: &IssuerConfig) -> Vec<(std::ops::Range<usize>, String)> {
    use crate::identity::workload;
    let mut out = Vec::new();
    let at = iss.issuer.span();
    if iss
        .audiences
        .as_ref()
        .is_some_and(|a| a.is_empty() || a.iter().any(|x| x.trim().is_empty()))
    {
        out.push((at.clone(), format!("issuer {:?}: audiences must list at least one non-empty audience (or be left out to use identity.audiences)", iss.issuer.get_ref())));
    }
    match &iss.workload_identity_pool {
        Some(pool) => {
            if let Err(e) = workload::check_pool(pool.get_ref()) {
                out.push((pool.span(), e.to_string()));
            }
            if let Err(e) = workload::Mapping::parse(&iss.attribute_mapping) {
                out.push((pool.span(), format!("issuer {:?}: {e}", iss.issuer.get_ref())));
            }
            if let Err(e) = workload::parse_required(&iss.required_claims) {
                out.push((pool.span(), format!("issuer {:?}: required_claims: {e}", iss.issuer.get_ref())));
            }
        }
        None if !iss.required_claims.is_empty() => out.push((
            at.clone(),
            format!("issuer {:?}: required_claims needs workload_identity_pool", iss.issuer.get_ref()),
        )),
        None if !iss.attribute_mapping.is_empty() => out.push((
            at,
            format!("issuer {:?}: attribute_mapping needs workload_identity_pool (the pool whose principals the mapping makes)", iss.issuer.get_ref()),
        )),
        None => {}
    }
    out
}

/// Pools across issuers: a pool's principals are named by pool and
/// subject only, so two issuers on one pool could mint each other's
/// principals; and an issuer on iam.googleapis.com would name its
/// principals like a pool's.
fn pool_problems(issuers: &[IssuerConfig]) -> Vec<(std::ops::Range<usize>, String)> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for iss in issuers {
        if let Some(pool) = &iss.workload_identity_pool {
            if !seen.insert(pool.get_ref().clone()) {
                out.push((pool.span(), format!("workload_identity_pool {:?} is used by two issuers: their subjects would name the same principals; give each provider its own pool", pool.get_ref())));
            }
        }
        let key = crate::identity::issuer_key(iss.issuer.get_ref());
        if key.starts_with(crate::identity::workload::IAM) {
            out.push((iss.issuer.span(), format!("issuer {:?} is on {}, whose principal:// names are Workload Identity pools'; configure a pool's provider by its own issuer URL and workload_identity_pool", iss.issuer.get_ref(), crate::identity::workload::IAM)));
        }
    }
    out
}
