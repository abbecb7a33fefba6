//! Recordings as text for a terminal: the human-readable replay, the JSON
//! lines of `replay --format json`, and the escaping both rely on so that
//! recorded text can never move the cursor or start a line of its own.

use std::fmt::{self, Display, Write as _};

use super::{Event, EventBody};
// Short, because every recorded string in a rendered line goes through it.
use self::escape as e;

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
    let ts = ev.ts.format("%Y-%m-%d %H:%M:%S%.3f");
    let b = &ev.body;
    let _ = match b {
        EventBody::SessionStart { .. } => session_start(out, &ts, b),
        EventBody::Delegation { .. }
        | EventBody::Review { .. }
        | EventBody::Revocation { .. }
        | EventBody::RecordingRead { .. } => access(out, &ts, b),
        EventBody::Statement { .. }
        | EventBody::Cancel { .. }
        | EventBody::Guardrail { .. }
        | EventBody::Refused { .. } => database(out, &ts, b),
        EventBody::SshRequest { .. }
        | EventBody::Pty { .. }
        | EventBody::Resize { .. }
        | EventBody::Exit { .. } => ssh_channel(out, &ts, b),
        EventBody::Output { .. } | EventBody::Input { .. } | EventBody::File { .. } => {
            ssh_data(out, &ts, b)
        }
        EventBody::Error { message } => writeln!(out, "{ts}  error: {}", e(message)),
        EventBody::UpstreamLogin { method, user, .. } => {
            writeln!(out, "{ts}  upstream login: {} as {}", e(method), e(user))
        }
        EventBody::Mcp {
            tool,
            client,
            client_version,
            ..
        } => {
            let client = client.as_deref().unwrap_or("an unnamed client");
            let version = client_version.as_deref().unwrap_or("?");
            writeln!(out, "{ts}  mcp tool {} called by {} {}", e(tool), e(client), e(version))
        }
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

fn opt(o: &Option<String>, default: &'static str) -> String {
    o.as_deref()
        .map(|s| e(s).into_owned())
        .unwrap_or_else(|| default.into())
}

fn list(v: &[String], sep: &str) -> String {
    v.iter()
        .map(|s| e(s).into_owned())
        .collect::<Vec<_>>()
        .join(sep)
}

fn session_start(out: &mut String, ts: &impl Display, body: &EventBody) -> fmt::Result {
    let EventBody::SessionStart {
        audit_id,
        principal,
        connection,
        mode,
        client_addr,
        granted_by,
        chain,
        root_audit_id,
        ..
    } = body
    else {
        return Ok(());
    };
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

/// Delegations, reviews and revocations; `render_event` routes only these here.
fn access(out: &mut String, ts: &impl Display, body: &EventBody) -> fmt::Result {
    match body {
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
        EventBody::RecordingRead {
            read_audit_id,
            view,
        } => writeln!(
            out,
            "{ts}  read recording {} ({})",
            e(read_audit_id),
            e(view)
        ),
        _ => Ok(()),
    }
}

/// Statements, cancels, guardrail blocks and refusals; `render_event` routes
/// only these here.
fn database(out: &mut String, ts: &impl Display, body: &EventBody) -> fmt::Result {
    match body {
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
                let m: Vec<String> = masked
                    .iter()
                    .map(|(k, v)| format!("{}={v}", e(k)))
                    .collect();
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
        _ => Ok(()),
    }
}

/// SSH requests, terminals and exits; `render_event` routes only these here.
fn ssh_channel(out: &mut String, ts: &impl Display, body: &EventBody) -> fmt::Result {
    match body {
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
        } => writeln!(
            out,
            "{ts}  [ssh ch{channel}] pty {} {width}x{height}",
            e(term)
        ),
        EventBody::Resize {
            channel,
            width,
            height,
        } => writeln!(out, "{ts}  [ssh ch{channel}] resize {width}x{height}"),
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
        _ => Ok(()),
    }
}

/// SSH output, input and file transfers; `render_event` routes only these here.
fn ssh_data(out: &mut String, ts: &impl Display, body: &EventBody) -> fmt::Result {
    match body {
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
        _ => Ok(()),
    }
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
