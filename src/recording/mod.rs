//! Session recording: the relay taps events into a bounded queue; one writer
//! task per session turns them into hash-chained segments in a write-once
//! store and seals them with a signed manifest. A session whose recording
//! cannot start does not run, and one whose recording fails is ended.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub mod asciicast;
pub mod detail;
pub mod gcs;
mod json;
mod render;
pub mod seal;
pub mod sessions;
pub mod store;
pub mod verify;
mod writer;

pub use render::{escape, json_line, render};
pub use store::{open_store, ObjectStore};
pub use writer::{fetch, fetch_for, Recorder, Recording, Tap};

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
    #[error("recording {0} is over {1} MiB, more than is served over HTTP; read it with `custody replay {0} --store URL`")]
    TooLarge(String, usize),
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
        /// `Principal::id()`: who this is whatever its token named it, so
        /// a principal can be shown its own sessions (`GET /v1/sessions`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        principal_id: Option<String>,
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
    /// A recording was read through the API (`GET /v1/sessions/{audit_id}`):
    /// which one, and as what (`events` or `asciicast`).
    RecordingRead {
        read_audit_id: String,
        view: String,
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
    /// How the gateway logged in upstream when not with the configured user
    /// and password: `cloud_sql_iam` (Cloud SQL IAM database login).
    UpstreamLogin {
        method: String,
        user: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        instance: Option<String>,
    },
    /// The MCP tool call this session is (mode "mcp"): which tool, and the
    /// agent as it named itself (`initialize`, or the request's `_meta`).
    Mcp {
        tool: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_version: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        protocol_version: Option<String>,
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
    match body {
        // Most of a terminal session's bytes: written without serde.
        EventBody::Output {
            channel,
            stream,
            data,
        } => json::output(buf, seq, ts, *channel, stream, data),
        EventBody::Input { channel, data } => json::input(buf, seq, ts, *channel, data),
        _ => {
            let ev = EventRef { seq, ts, body };
            // Serializing our own enum into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *buf, &ev);
        }
    }
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

#[cfg(test)]
mod tests;
