//! Session recording: the relay taps events into a bounded queue; one writer
//! task per session turns them into hash-chained segments in a write-once
//! store and seals them with a signed manifest. A session whose recording
//! cannot start does not run, and one whose recording fails is ended.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub mod asciicast;
pub mod gcs;
pub mod seal;
pub mod sessions;
pub mod store;
pub mod verify;
mod writer;

pub use store::{open_store, ObjectStore};
pub use writer::{fetch, Recorder, Recording, Tap};

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("recording store {0:?} is not supported: use file://DIR or gs://BUCKET/PREFIX")]
    Unsupported(String),
    #[error("recording store I/O on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("recording store: {0}")]
    Gcs(String),
    #[error("no recording {0} in the store")]
    NotFound(String),
    #[error("object {0} already exists in the recording store")]
    Exists(String),
    #[error("{0:?} is not an audit id")]
    BadId(String),
    #[error("recording {0} has a malformed line {1}: {2}")]
    Corrupt(String, usize, String),
    #[error("recording signing key: {0}")]
    Key(String),
    #[error("the recording store is not keeping up ({0} MiB of recordings wait to be written); new sessions are refused until it catches up")]
    Backlog(usize),
    #[error("the recording writer stopped: {0}")]
    Stopped(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub ts: DateTime<Utc>,
    #[serde(flatten)]
    pub body: EventBody,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatementError {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventBody {
    SessionStart {
        audit_id: String,
        principal: String,
        #[serde(default)]
        groups: Vec<String>,
        connection: String,
        mode: String,
        /// The client's IP: the TCP peer's, or from `X-Forwarded-For` when
        /// the peer is a trusted proxy (`[server] trusted_proxies`).
        client_addr: Option<String>,
        /// The TCP peer (ip:port) the request came from, whatever headers say.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        peer: Option<String>,
        granted_by: Option<String>,
        /// W3C trace id of the caller's trace (traceparent / X-Cloud-Trace-Context).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trace_id: Option<String>,
        /// Chain of custody when delegated: originator → hops → caller.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        chain: Vec<String>,
        /// Audit id of the exchange that started the chain.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        root_audit_id: Option<String>,
    },
    /// A delegation token was issued (POST /v1/token).
    Delegation {
        chain: Vec<String>,
        to: String,
        connections: Option<Vec<String>>,
        expires: i64,
        root_audit_id: String,
    },
    /// A held statement's review: requested, approved, approval_recorded, denied or used.
    Review {
        review_id: String,
        action: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// The audit id of the held request, when this record is another one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        review_audit_id: Option<String>,
    },
    /// An admin revoked a principal (POST /v1/revocations).
    Revocation {
        principal: String,
        reason: String,
    },
    Statement {
        sql: String,
        protocol: String,
        tags: Vec<String>,
        rows: u64,
        error: Option<StatementError>,
        duration_ms: f64,
        /// Values masked on the way to the client, per detector or column rule.
        #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        masked: std::collections::BTreeMap<String, u64>,
    },
    Cancel {
        outcome: String,
    },
    /// A statement guardrails refused; it never reached the upstream.
    Guardrail {
        sql: String,
        protocol: String,
        rule: String,
        outcome: String,
    },
    Refused {
        reason: String,
    },
    /// An SSH channel request (shell, exec, subsystem, env, pty, forwarding,
    /// x11, agent) and what the gateway did with it.
    SshRequest {
        channel: u32,
        request: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
        outcome: String,
    },
    /// A PTY was granted: the asciicast header's size and TERM.
    Pty {
        channel: u32,
        term: String,
        width: u32,
        height: u32,
    },
    Resize {
        channel: u32,
        width: u32,
        height: u32,
    },
    /// Output as the client received it (masked): stream "o" stdout, "e" stderr.
    Output {
        channel: u32,
        stream: String,
        data: String,
    },
    /// What the client typed (only with `record_input`).
    Input {
        channel: u32,
        data: String,
    },
    Exit {
        channel: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<String>,
    },
    /// A file touched over SFTP (scp uses SFTP too): names and sizes, never contents.
    File {
        channel: u32,
        op: String,
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
        #[serde(default)]
        bytes_written: u64,
        #[serde(default)]
        bytes_read: u64,
    },
    Error {
        message: String,
    },
    SessionEnd {
        reason: String,
        statements: u64,
        rows: u64,
        bytes_from_client: u64,
        bytes_to_client: u64,
    },
}

/// `Event` by reference, so encoding never clones a statement's SQL.
#[derive(Serialize)]
struct EventRef<'a> {
    seq: u64,
    ts: DateTime<Utc>,
    #[serde(flatten)]
    body: &'a EventBody,
}

fn encode(buf: &mut Vec<u8>, seq: u64, ts: DateTime<Utc>, body: &EventBody) {
    let ev = EventRef { seq, ts, body };
    // Serializing our own enum into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, &ev);
    buf.push(b'\n');
}

/// The event lines of a recording's segments, in order, without headers.
pub fn event_lines(rec: &verify::Fetched) -> impl Iterator<Item = (u32, usize, &[u8])> {
    rec.segments.iter().flat_map(|(n, bytes)| {
        bytes
            .split(|b| *b == b'\n')
            .enumerate()
            .skip(1)
            .filter(|(_, l)| !l.is_empty())
            .map(move |(i, l)| (*n, i + 1, l))
    })
}

pub fn parse(rec: &verify::Fetched) -> Result<Vec<Event>, RecordError> {
    event_lines(rec)
        .map(|(n, line, l)| {
            serde_json::from_slice(l).map_err(|e| {
                RecordError::Corrupt(
                    format!("{} segment {n:06}", rec.audit_id),
                    line,
                    e.to_string(),
                )
            })
        })
        .collect()
}

/// Text from a recording made safe to print on a terminal: control
/// characters (C0, DEL, C1), line and paragraph separators, bidi and
/// zero-width format characters become visible escapes, and a backslash is
/// doubled so an escape cannot be faked. A client's SQL, claims or output
/// can then never start a line of its own or move the cursor.
pub fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c == '\\'
        || c.is_control()
        || matches!(c,
            '\u{061c}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2069}' | '\u{feff}' | '\u{fff9}'..='\u{fffb}')
}

/// Human-readable replay of one record; every recorded string is escaped.
pub fn render(events: &[Event]) -> String {
    let mut out = String::new();
    for ev in events {
        render_event(&mut out, ev);
    }
    out
}

fn render_event(out: &mut String, ev: &Event) {
    use escape as e;
    let ts = ev.ts.format("%Y-%m-%d %H:%M:%S%.3f");
    let opt = |o: &Option<String>, default: &'static str| -> String {
        o.as_deref()
            .map(|s| e(s).into_owned())
            .unwrap_or_else(|| default.into())
    };
    let list = |v: &[String], sep: &str| -> String {
        v.iter()
            .map(|s| e(s).into_owned())
            .collect::<Vec<_>>()
            .join(sep)
    };
    let _ = match &ev.body {
        EventBody::SessionStart {
            audit_id,
            principal,
            connection,
            mode,
            client_addr,
            granted_by,
            chain,
            root_audit_id,
            ..
        } => {
            let behalf = match (chain.len(), root_audit_id) {
                (n, Some(root)) if n > 1 => format!(
                    "\n{:25}chain of custody: {} (root audit id {})",
                    "",
                    list(chain, " → "),
                    e(root)
                ),
                _ => String::new(),
            };
            writeln!(
                out,
                "{ts}  session {}: {} → {} ({}) from {} granted by {}{behalf}",
                e(audit_id),
                e(principal),
                e(connection),
                e(mode),
                opt(client_addr, "?"),
                opt(granted_by, "-")
            )
        }
        EventBody::Delegation {
            chain,
            to,
            connections,
            expires,
            root_audit_id,
        } => writeln!(
            out,
            "{ts}  delegated by {} to {} for {} until {} (root audit id {})",
            list(chain, " → "),
            e(to),
            connections
                .as_ref()
                .map(|c| list(c, ", "))
                .unwrap_or_else(|| "any allowed connection".into()),
            chrono::DateTime::from_timestamp(*expires, 0)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default(),
            e(root_audit_id)
        ),
        EventBody::Review {
            review_id,
            action,
            by,
            reason,
            review_audit_id,
        } => writeln!(
            out,
            "{ts}  review {} {}{}{}{}",
            e(review_id),
            e(action),
            by.as_ref()
                .map(|b| format!(" by {}", e(b)))
                .unwrap_or_default(),
            reason
                .as_ref()
                .filter(|r| !r.is_empty())
                .map(|r| format!(": {}", e(r)))
                .unwrap_or_default(),
            review_audit_id
                .as_ref()
                .map(|a| format!(" (held request {})", e(a)))
                .unwrap_or_default()
        ),
        EventBody::Revocation { principal, reason } => {
            writeln!(out, "{ts}  REVOKED {}: {}", e(principal), e(reason))
        }
        EventBody::Statement {
            sql,
            protocol,
            tags,
            rows,
            error,
            duration_ms,
            masked,
        } => {
            let mut outcome = match error {
                Some(er) => format!("ERROR {} {}", e(&er.code), e(&er.message)),
                None => format!("{} ({rows} rows)", list(tags, ", ")),
            };
            if !masked.is_empty() {
                let m: Vec<String> = masked.iter().map(|(k, v)| format!("{}={v}", e(k))).collect();
                outcome.push_str(&format!(" masked {}", m.join(" ")));
            }
            writeln!(
                out,
                "{ts}  [{}] {}\n{:25}→ {outcome}  {duration_ms:.1} ms",
                e(protocol),
                e(sql.trim()),
                ""
            )
        }
        EventBody::Cancel { outcome } => writeln!(out, "{ts}  cancel request: {}", e(outcome)),
        EventBody::Guardrail {
            sql,
            protocol,
            rule,
            outcome,
        } => writeln!(
            out,
            "{ts}  [{}] {}\n{:25}→ BLOCKED by guardrail {} ({})",
            e(protocol),
            e(sql.trim()),
            "",
            e(rule),
            e(outcome)
        ),
        EventBody::Refused { reason } => writeln!(out, "{ts}  REFUSED: {}", e(reason)),
        EventBody::SshRequest {
            channel,
            request,
            detail,
            outcome,
        } => writeln!(
            out,
            "{ts}  [ssh ch{channel}] {}{} → {}",
            e(request),
            detail
                .as_ref()
                .map(|d| format!(" {}", e(d)))
                .unwrap_or_default(),
            e(outcome)
        ),
        EventBody::Pty {
            channel,
            term,
            width,
            height,
        } => writeln!(out, "{ts}  [ssh ch{channel}] pty {} {width}x{height}", e(term)),
        EventBody::Resize {
            channel,
            width,
            height,
        } => writeln!(out, "{ts}  [ssh ch{channel}] resize {width}x{height}"),
        EventBody::Output {
            channel,
            stream,
            data,
        } => writeln!(
            out,
            "{ts}  [ssh ch{channel}] {}: {}",
            if stream == "e" { "stderr" } else { "stdout" },
            e(data)
        ),
        EventBody::Input { channel, data } => {
            writeln!(out, "{ts}  [ssh ch{channel}] input: {}", e(data))
        }
        EventBody::Exit {
            channel,
            status,
            signal,
        } => writeln!(
            out,
            "{ts}  [ssh ch{channel}] exit {}",
            match (status, signal) {
                (Some(s), _) => format!("status {s}"),
                (None, Some(sig)) => format!("signal {}", e(sig)),
                _ => "unknown".into(),
            }
        ),
        EventBody::File {
            channel,
            op,
            path,
            to,
            bytes_written,
            bytes_read,
        } => writeln!(
            out,
            "{ts}  [ssh ch{channel}] file {} {}{} ({bytes_written} bytes written, {bytes_read} bytes read)",
            e(op),
            e(path),
            to.as_ref().map(|t| format!(" → {}", e(t))).unwrap_or_default()
        ),
        EventBody::Error { message } => writeln!(out, "{ts}  error: {}", e(message)),
        EventBody::SessionEnd {
            reason,
            statements,
            rows,
            bytes_from_client,
            bytes_to_client,
        } => writeln!(
            out,
            "{ts}  session ended: {}; {statements} statements, {rows} rows, {bytes_from_client} bytes in, {bytes_to_client} bytes out",
            e(reason)
        ),
    };
}

/// One event line for `replay --format json`: valid JSON on one line with
/// no raw control character (DEL and C1 become `\u00XX` escapes, which
/// only strings can hold in valid JSON); None when the line is not JSON.
pub fn json_line(line: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(line).ok()?;
    let text = match std::str::from_utf8(line) {
        // The gateway's own compact lines are kept byte for byte.
        Ok(t) if !t.bytes().any(|b| b < 0x20) => t.to_string(),
        _ => serde_json::to_string(&value).ok()?,
    };
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c != '\\' && needs_escape(c) {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests;
