//! A raw PostgreSQL wire client for tests that send what psql and drivers
//! never do, and readers of what came back and what was recorded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A raw PostgreSQL wire client: what psql and drivers never send.
pub struct Raw(pub TcpStream);

impl Raw {
    pub fn connect(addr: SocketAddr, params: &[(&str, &str)]) -> (Raw, Vec<(u8, Vec<u8>)>) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut body = 196608u32.to_be_bytes().to_vec();
        for (k, v) in [("user", "app"), ("database", "app")].iter().chain(params) {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut pkt = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        pkt.extend(body);
        s.write_all(&pkt).unwrap();
        let mut raw = Raw(s);
        let hello = raw.until_ready();
        (raw, hello)
    }

    pub fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut f = vec![tag];
        f.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        f.extend_from_slice(body);
        f
    }

    pub fn send(&mut self, frames: &[Vec<u8>]) {
        let all: Vec<u8> = frames.concat();
        self.0.write_all(&all).unwrap();
    }

    /// Frames up to and including ReadyForQuery (or the end of the stream).
    pub fn until_ready(&mut self) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            let mut head = [0u8; 5];
            if self.0.read_exact(&mut head).is_err() {
                return out;
            }
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize - 4;
            let mut body = vec![0u8; len];
            if self.0.read_exact(&mut body).is_err() {
                return out;
            }
            let done = head[0] == b'Z';
            out.push((head[0], body));
            if done {
                return out;
            }
        }
    }

    /// The tags of frames read up to one of `stop` (for a client that has
    /// sent Flush, not Sync).
    pub fn tags_until(&mut self, stop: &[u8]) -> Vec<u8> {
        let mut tags = Vec::new();
        while !tags.last().is_some_and(|t| stop.contains(t)) {
            let mut head = [0u8; 5];
            self.0.read_exact(&mut head).unwrap();
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize - 4;
            let mut body = vec![0u8; len];
            self.0.read_exact(&mut body).unwrap();
            tags.push(head[0]);
        }
        tags
    }

    pub fn query(&mut self, sql: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut b = sql.to_vec();
        b.push(0);
        self.send(&[Raw::frame(b'Q', &b)]);
        self.until_ready()
    }
}

pub fn cstr(parts: &[&[u8]]) -> Vec<u8> {
    let mut b = Vec::new();
    for p in parts {
        b.extend_from_slice(p);
        b.push(0);
    }
    b
}

pub fn errors(frames: &[(u8, Vec<u8>)]) -> String {
    frames
        .iter()
        .filter(|(t, _)| *t == b'E')
        .map(|(_, b)| String::from_utf8_lossy(b).replace('\0', " "))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn data_rows(frames: &[(u8, Vec<u8>)]) -> String {
    frames
        .iter()
        .filter(|(t, _)| *t == b'D')
        .map(|(_, b)| String::from_utf8_lossy(b).to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The statements a recording holds, as (sql, rows, error message).
pub fn statements(recording: &str) -> Vec<(String, u64, String)> {
    recording
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "statement")
        .map(|v| {
            (
                v["sql"].as_str().unwrap_or("").to_string(),
                v["rows"].as_u64().unwrap_or(0),
                v["error"]["message"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}
