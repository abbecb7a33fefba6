//! asciicast v2 from an SSH recording, so `asciinema play` replays a PTY
//! session: a header line, then `[time, "o"|"i"|"r", data]` lines.
//! Output and input stay raw (they are the terminal stream the user saw);
//! JSON encoding keeps every line valid, and the title is escaped because
//! players print it outside the terminal stream.

use serde_json::json;

use super::{Event, EventBody};

/// Whether the recording holds a terminal (PTY) session.
pub fn has_terminal(events: &[Event]) -> bool {
    events
        .iter()
        .any(|e| matches!(e.body, EventBody::Pty { .. }))
}

pub fn render(events: &[Event]) -> String {
    let Some(first) = events.first() else {
        return String::new();
    };
    let start = first.ts;
    let (mut width, mut height, mut term) = (80, 24, "xterm".to_string());
    if let Some((w, h, t)) = events.iter().find_map(|e| match &e.body {
        EventBody::Pty {
            width,
            height,
            term,
            ..
        } => Some((*width, *height, term.clone())),
        _ => None,
    }) {
        (width, height, term) = (w, h, t);
    }
    let title = match &first.body {
        EventBody::SessionStart {
            audit_id,
            principal,
            connection,
            ..
        } => format!(
            "custody {}: {} → {}",
            super::escape(audit_id),
            super::escape(principal),
            super::escape(connection)
        ),
        _ => "custody".to_string(),
    };
    let header = json!({
        "version": 2,
        "width": width.max(1),
        "height": height.max(1),
        "timestamp": start.timestamp(),
        "title": title,
        "env": {"TERM": term, "SHELL": "/bin/sh"},
    });
    let mut out = header.to_string();
    out.push('\n');
    for ev in events {
        let t = (ev.ts - start).num_microseconds().unwrap_or(0) as f64 / 1e6;
        let line = match &ev.body {
            EventBody::Output { data, .. } => json!([t, "o", data]),
            EventBody::Input { data, .. } => json!([t, "i", data]),
            EventBody::Resize { width, height, .. } => json!([t, "r", format!("{width}x{height}")]),
            _ => continue,
        };
        out.push_str(&line.to_string());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, Utc};

    fn ev(seq: u64, ms: i64, body: EventBody) -> Event {
        Event {
            seq,
            ts: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_else(Utc::now)
                + Duration::milliseconds(ms),
            body,
        }
    }

    #[test]
    fn pty_session_becomes_asciicast_v2() {
        let events = vec![
            ev(
                1,
                0,
                EventBody::SessionStart {
                    audit_id: "a1".into(),
                    principal: "user:ana@example.com".into(),
                    principal_id: None,
                    groups: vec![],
                    connection: "web-1".into(),
                    mode: "tunnel".into(),
                    client_addr: None,
                    peer: None,
                    granted_by: None,
                    trace_id: None,
                    chain: vec![],
                    root_audit_id: None,
                },
            ),
            ev(
                2,
                10,
                EventBody::Pty {
                    channel: 0,
                    term: "xterm-256color".into(),
                    width: 120,
                    height: 40,
                },
            ),
            ev(
                3,
                1500,
                EventBody::Output {
                    channel: 0,
                    stream: "o".into(),
                    data: "$ ".into(),
                },
            ),
            ev(
                4,
                2000,
                EventBody::Resize {
                    channel: 0,
                    width: 100,
                    height: 30,
                },
            ),
        ];
        assert!(has_terminal(&events));
        let cast = render(&events);
        let lines: Vec<serde_json::Value> = cast
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["version"], 2);
        assert_eq!(lines[0]["width"], 120);
        assert_eq!(lines[0]["height"], 40);
        assert_eq!(lines[0]["timestamp"], 1_700_000_000);
        assert_eq!(lines[0]["env"]["TERM"], "xterm-256color");
        assert_eq!(lines[1], json!([1.5, "o", "$ "]));
        assert_eq!(lines[2], json!([2.0, "r", "100x30"]));
        assert_eq!(lines.len(), 3);
    }
}
