//! Masking engine: hides sensitive values before they leave the gateway.
//!
//! Protocol independent. A relay asks [`Engine::column_rule`] once per result
//! column, then per value either applies [`Engine::mask_value`] (column rules)
//! or [`Engine::mask_text`] (detectors over free text). Both count what they
//! masked into [`Counts`] for the statement's audit record.
//!
//! Detectors are validated (Luhn, mod-97, SSN ranges, JSON headers, std::net
//! parsing), not loose regexes, and sit behind cheap prefilters so clean text
//! costs a few linear passes; see `scan.rs`.

mod columns;
#[cfg(test)]
mod detector_tests;
mod detectors;
mod numbers;
mod scan;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use columns::ColumnRule;
use scan::{Hit, Kind};

const STRATEGIES: &str = "redact, partial, hash, null";
const DETECTORS: &str =
    "email, credit_card, us_ssn, iban, phone, ip_address, gcp_api_key, private_key, jwt, aws_access_key";

#[derive(Debug, thiserror::Error)]
pub enum MaskError {
    #[error("unknown masking detector {name:?} (valid: {DETECTORS}, or a name from `custom`)")]
    UnknownDetector { name: String },
    #[error("unknown masking strategy {value:?} (valid: {STRATEGIES})")]
    UnknownStrategy { value: String },
    #[error("masking column {pattern:?}: unknown strategy {value:?} (valid: {STRATEGIES})")]
    ColumnStrategy { pattern: String, value: String },
    #[error(
        "masking column pattern {pattern:?} is invalid: {reason} \
         (valid: \"column\", \"table.column\" or \"schema.table.column\", parts may use * and ?)"
    )]
    BadColumnPattern {
        pattern: String,
        reason: &'static str,
    },
    #[error("custom masking detector {name:?} is invalid: {reason} (valid: letters, digits and _, not a built-in name)")]
    BadCustomName { name: String, reason: &'static str },
    #[error("custom masking detector {name:?} has an unusable regex: {reason}")]
    BadCustomRegex { name: String, reason: String },
    #[error("masking strategy \"hash\" is used by {used_by} but no hash key is configured or it is empty (set `hash_key`, or use redact, partial or null)")]
    MissingHashKey { used_by: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Redact,
    Partial,
    Hash,
    Null,
}

impl std::str::FromStr for Strategy {
    type Err = MaskError;

    fn from_str(s: &str) -> Result<Self, MaskError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "redact" => Ok(Strategy::Redact),
            "partial" => Ok(Strategy::Partial),
            "hash" => Ok(Strategy::Hash),
            "null" => Ok(Strategy::Null),
            _ => Err(MaskError::UnknownStrategy {
                value: s.to_owned(),
            }),
        }
    }
}

/// Per-statement counts of masked values, keyed by detector name ("email", ...) or "column:<pattern>".
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Counts(pub BTreeMap<String, u64>);

impl Counts {
    pub fn add(&mut self, key: &str, n: u64) {
        // Look up by &str first: the key usually exists, so no String is built.
        match self.0.get_mut(key) {
            Some(v) => *v += n,
            None => {
                self.0.insert(key.to_owned(), n);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn merge(&mut self, other: &Counts) {
        for (k, v) in &other.0 {
            self.add(k, *v);
        }
    }

    /// Adds every count to `to` and zeroes it here, keeping the keys: a
    /// stream of rows builds its key strings once, not once per row.
    pub fn move_into(&mut self, to: &mut Counts) {
        for (k, v) in self.0.iter_mut().filter(|(_, v)| **v > 0) {
            to.add(k, *v);
            *v = 0;
        }
    }
}

pub struct EngineConfig<'a> {
    /// Built-in detector names (see `DETECTORS`); custom names are accepted too.
    pub detectors: &'a [String],
    /// Custom detectors, name -> regex; always active; matches become `[NAME_UPPER]`.
    pub custom: &'a BTreeMap<String, String>,
    /// Column pattern -> strategy name.
    pub columns: &'a BTreeMap<String, String>,
    /// Strategy for detector hits, default "redact".
    pub detector_strategy: Option<&'a str>,
    /// HMAC key, required if any strategy is hash.
    pub hash_key: Option<&'a [u8]>,
}

/// (name, redact marker) per built-in detector, in `Builtin` order.
const LABELS: [(&str, &str); 10] = [
    ("email", "[EMAIL]"),
    ("credit_card", "[CREDIT_CARD]"),
    ("us_ssn", "[US_SSN]"),
    ("iban", "[IBAN]"),
    ("phone", "[PHONE]"),
    ("ip_address", "[IP_ADDRESS]"),
    ("gcp_api_key", "[GCP_API_KEY]"),
    ("private_key", "[PRIVATE_KEY]"),
    ("jwt", "[JWT]"),
    ("aws_access_key", "[AWS_ACCESS_KEY]"),
];

/// A built-in detector. The order is the index into `Enabled` and `LABELS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Builtin {
    Email,
    CreditCard,
    UsSsn,
    Iban,
    Phone,
    IpAddress,
    GcpApiKey,
    PrivateKey,
    Jwt,
    AwsAccessKey,
}

impl Builtin {
    const ALL: [Builtin; 10] = [
        Builtin::Email,
        Builtin::CreditCard,
        Builtin::UsSsn,
        Builtin::Iban,
        Builtin::Phone,
        Builtin::IpAddress,
        Builtin::GcpApiKey,
        Builtin::PrivateKey,
        Builtin::Jwt,
        Builtin::AwsAccessKey,
    ];

    pub(crate) fn name(self) -> &'static str {
        LABELS[self as usize].0
    }

    fn marker(self) -> &'static str {
        LABELS[self as usize].1
    }
}

/// The set of enabled built-in detectors, one bit per `Builtin`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Enabled(u16);

impl Enabled {
    pub(crate) fn with(self, b: Builtin) -> Enabled {
        Enabled(self.0 | 1 << b as u16)
    }

    pub(crate) fn has(self, b: Builtin) -> bool {
        self.0 & (1 << b as u16) != 0
    }

    fn is_empty(self) -> bool {
        self.0 == 0
    }
}

struct Custom {
    name: String,
    marker: String,
    regex: regex::Regex,
}

pub struct Engine {
    enabled: Enabled,
    customs: Vec<Custom>,
    detector_strategy: Strategy,
    /// Keyed once; cloning the keyed state per value is cheaper than re-keying.
    hmac: Option<Hmac<Sha256>>,
    /// Most specific first, so the first match wins.
    rules: Vec<ColumnRule>,
}

/// `s` with every detector applied, as text (SSH output, commands, error
/// messages: anything that is not a typed value or SQL).
pub fn text(engine: &Engine, s: &str, counts: &mut Counts) -> String {
    match engine.mask_text(s.as_bytes(), counts) {
        Some(m) => String::from_utf8_lossy(&m).into_owned(),
        None => s.to_string(),
    }
}

impl Engine {
    pub fn new(cfg: &EngineConfig) -> Result<Engine, MaskError> {
        let mut customs = Vec::new();
        for (name, re) in cfg.custom {
            customs.push(custom_detector(name, re)?);
        }
        let mut enabled = Enabled::default();
        for name in cfg.detectors {
            match Builtin::ALL.iter().find(|b| b.name() == name.as_str()) {
                Some(&b) => enabled = enabled.with(b),
                None if cfg.custom.contains_key(name) => {}
                None => return Err(MaskError::UnknownDetector { name: name.clone() }),
            }
        }
        let detector_strategy = match cfg.detector_strategy {
            Some(s) => s.parse()?,
            None => Strategy::Redact,
        };
        let mut rules = Vec::new();
        for (pattern, strategy) in cfg.columns {
            let strategy = strategy.parse().map_err(|_| MaskError::ColumnStrategy {
                pattern: pattern.clone(),
                value: strategy.clone(),
            })?;
            rules.push(ColumnRule::parse(pattern, strategy)?);
        }
        rules.sort_by(ColumnRule::precedence);

        let has_detectors = !enabled.is_empty() || !customs.is_empty();
        let hash_users: Vec<&str> = rules
            .iter()
            .filter(|r| r.strategy == Strategy::Hash)
            .map(|r| r.pattern.as_str())
            .chain(
                (has_detectors && detector_strategy == Strategy::Hash)
                    .then_some("detector_strategy"),
            )
            .collect();
        let hmac = match cfg.hash_key {
            Some(key) if !key.is_empty() => Hmac::<Sha256>::new_from_slice(key).ok(),
            _ => None,
        };
        if hmac.is_none() && !hash_users.is_empty() {
            return Err(MaskError::MissingHashKey {
                used_by: hash_users.join(", "),
            });
        }
        Ok(Engine {
            enabled,
            customs,
            detector_strategy,
            hmac,
            rules,
        })
    }

    pub fn has_detectors(&self) -> bool {
        !self.enabled.is_empty() || !self.customs.is_empty()
    }

    pub fn has_column_rules(&self) -> bool {
        !self.rules.is_empty()
    }

    /// Column rule for a result column. `qualified` is (schema, table) when the
    /// column comes straight from a table, else None. Most specific pattern wins
    /// (3 parts > 2 > 1, then fewer wildcards, then pattern text order).
    pub fn column_rule(
        &self,
        qualified: Option<(&str, &str)>,
        column: &str,
    ) -> Option<(Strategy, &str)> {
        self.rules
            .iter()
            .find(|r| r.matches(qualified, column))
            .map(|r| (r.strategy, r.pattern.as_str()))
    }

    /// All column patterns, for the caller's catalog lookup.
    pub fn column_patterns(&self) -> Vec<&str> {
        self.rules.iter().map(|r| r.pattern.as_str()).collect()
    }

    /// Masks one value under a column rule. Returns None for NULL (Strategy::Null).
    /// Counts under "column:<pattern>".
    pub fn mask_value(
        &self,
        value: &[u8],
        strategy: Strategy,
        pattern: &str,
        counts: &mut Counts,
    ) -> Option<Vec<u8>> {
        match self.rules.iter().find(|r| r.pattern == pattern) {
            Some(rule) => counts.add(&rule.count_key, 1),
            None => counts.add(&format!("column:{pattern}"), 1),
        }
        let mut out = Vec::with_capacity(value.len().max(16));
        match strategy {
            Strategy::Null => return None,
            Strategy::Redact => out.extend_from_slice(b"[REDACTED]"),
            Strategy::Partial => push_partial(&mut out, value, looks_like_email(value)),
            Strategy::Hash => self.push_hash(&mut out, value, b"[REDACTED]"),
        }
        Some(out)
    }

    /// Scans text with the configured detectors; None when nothing matched,
    /// else the masked bytes. Counts per detector name. Only valid UTF-8 runs
    /// are scanned, so invalid bytes pass through untouched and no invalid
    /// UTF-8 is created.
    pub fn mask_text(&self, text: &[u8], counts: &mut Counts) -> Option<Vec<u8>> {
        if !self.has_detectors() {
            return None;
        }
        let mut hits = Vec::new(); // no allocation until the first hit
        match std::str::from_utf8(text) {
            Ok(s) => self.scan(s, 0, &mut hits),
            Err(_) => {
                let mut offset = 0;
                for chunk in text.utf8_chunks() {
                    self.scan(chunk.valid(), offset, &mut hits);
                    offset += chunk.valid().len() + chunk.invalid().len();
                }
            }
        }
        if hits.is_empty() {
            return None;
        }
        Some(self.replace(text, hits, counts))
    }

    fn scan(&self, text: &str, offset: usize, hits: &mut Vec<Hit>) {
        let first = hits.len();
        scan::find_builtin(text.as_bytes(), self.enabled, hits);
        for (i, custom) in self.customs.iter().enumerate() {
            for m in custom.regex.find_iter(text).filter(|m| !m.is_empty()) {
                hits.push(Hit {
                    start: m.start(),
                    end: m.end(),
                    kind: Kind::Custom(i),
                });
            }
        }
        for hit in &mut hits[first..] {
            hit.start += offset;
            hit.end += offset;
        }
    }

    /// Rewrites `text` with every hit replaced. Overlapping hits keep the one
    /// that starts first, then the longest (a private key block beats the
    /// `AIza` that happens to sit inside its base64).
    fn replace(&self, text: &[u8], mut hits: Vec<Hit>, counts: &mut Counts) -> Vec<u8> {
        hits.sort_unstable_by_key(|h| (h.start, std::cmp::Reverse(h.end), h.kind));
        let mut out = Vec::with_capacity(text.len() + 16 * hits.len());
        let mut done = 0;
        for hit in hits {
            if hit.start < done {
                continue;
            }
            out.extend_from_slice(&text[done..hit.start]);
            let (name, marker) = match hit.kind {
                Kind::Builtin(b) => (b.name(), b.marker()),
                Kind::Custom(i) => (
                    self.customs[i].name.as_str(),
                    self.customs[i].marker.as_str(),
                ),
            };
            let value = &text[hit.start..hit.end];
            match self.detector_strategy {
                Strategy::Redact | Strategy::Null => out.extend_from_slice(marker.as_bytes()),
                Strategy::Partial => {
                    push_partial(&mut out, value, hit.kind == Kind::Builtin(Builtin::Email))
                }
                Strategy::Hash => self.push_hash(&mut out, value, marker.as_bytes()),
            }
            counts.add(name, 1);
            done = hit.end;
        }
        out.extend_from_slice(&text[done..]);
        out
    }

    /// `hmac:` + the first 16 hex digits of HMAC-SHA256(key, value). Without a
    /// key (a caller passing Hash that the config never validated) it fails
    /// closed to `fallback`.
    fn push_hash(&self, out: &mut Vec<u8>, value: &[u8], fallback: &[u8]) {
        let Some(mac) = &self.hmac else {
            out.extend_from_slice(fallback);
            return;
        };
        let mut mac = mac.clone();
        mac.update(value);
        let tag = mac.finalize().into_bytes();
        let mut hex = [0u8; 16];
        // Cannot fail: 8 bytes always fit 16 hex digits.
        if hex::encode_to_slice(&tag[..8], &mut hex).is_ok() {
            out.extend_from_slice(b"hmac:");
            out.extend_from_slice(&hex);
        } else {
            out.extend_from_slice(fallback);
        }
    }
}

fn custom_detector(name: &str, re: &str) -> Result<Custom, MaskError> {
    let bad_name = |reason| MaskError::BadCustomName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(bad_name("the name is empty"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(bad_name(
            "the name has characters other than letters, digits and _",
        ));
    }
    if Builtin::ALL.iter().any(|b| b.name() == name) {
        return Err(bad_name("the name is a built-in detector"));
    }
    let bad_regex = |reason: String| MaskError::BadCustomRegex {
        name: name.to_owned(),
        reason,
    };
    let regex = regex::Regex::new(re).map_err(|e| bad_regex(e.to_string()))?;
    // A regex matching "" would hit between every character: surely a config mistake.
    if regex.is_match("") {
        return Err(bad_regex(format!("{re:?} matches the empty string")));
    }
    Ok(Custom {
        name: name.to_owned(),
        marker: format!("[{}]", name.to_ascii_uppercase()),
        regex,
    })
}

/// A column value that is an email gets the email form of `partial` (keep the domain).
fn looks_like_email(value: &[u8]) -> bool {
    match value.iter().rposition(|&b| b == b'@') {
        Some(at) => {
            at > 0 && value[at..].contains(&b'.') && !value.iter().any(u8::is_ascii_whitespace)
        }
        None => false,
    }
}

/// Keeps the last 4 characters (or an email's `@domain`) and stars the rest,
/// one `*` per character; values of 4 characters or less become all stars.
/// Works on characters, not bytes, so multi-byte text stays valid UTF-8.
fn push_partial(out: &mut Vec<u8>, value: &[u8], keep_domain: bool) {
    // ASCII (nearly every card number, phone, email): one byte a character.
    if value.is_ascii() {
        let split = match value.iter().rposition(|b| *b == b'@') {
            Some(at) if keep_domain => at,
            _ if value.len() > 4 => value.len() - 4,
            _ => value.len(),
        };
        out.resize(out.len() + split, b'*');
        out.extend_from_slice(&value[split..]);
        return;
    }
    let value = String::from_utf8_lossy(value);
    let (hidden, kept) = match value.rfind('@') {
        Some(at) if keep_domain => value.split_at(at),
        _ => {
            let n = value.chars().count();
            let keep = if n > 4 { 4 } else { 0 };
            let split = value
                .char_indices()
                .nth(n - keep)
                .map_or(value.len(), |(i, _)| i);
            value.split_at(split)
        }
    };
    out.extend(std::iter::repeat_n(b'*', hidden.chars().count()));
    out.extend_from_slice(kept.as_bytes());
}
