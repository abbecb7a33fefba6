//! A model of the extended-query protocol for the masking tracker: a
//! program of client messages (Parse/Bind/Describe/Execute/Close/Sync and
//! simple-query PREPARE/DEALLOCATE/DISCARD) goes through the gateway's real
//! client hook, a tiny simulated server answers exactly what the hook sent
//! (including the gateway's own Describe), and the answer goes through the
//! real server hook. The invariant: no DataRow the client gets ever carries
//! the ruled column's clear value. Shared by tests/tracker_sim.rs and the
//! `tracker` fuzz target.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use bytes::{Buf, BufMut, BytesMut};
use custody::mask::{Engine, EngineConfig, Strategy};
use custody::protocol::postgres::catalog::Catalog;
use custody::protocol::postgres::hooks::{ClientHook, MaskCtx, ServerHook};
use custody::protocol::postgres::scanner::Scanner;
use custody::protocol::postgres::tracker::Tracker;

pub const SECRET: &str = "SECRET-123-45-6789";
const TABLE: u32 = 50_000;
const NAMES: [&str; 3] = ["", "s1", "s2"];
/// (query text, returns the ruled column)
const QUERIES: [(&str, bool); 3] = [
    ("select name from t", false),
    ("select ssn from t", true),
    ("select 1", false),
];

pub fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut f = vec![tag];
    f.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    f.extend_from_slice(body);
    f
}

pub fn cstrs(parts: &[&str]) -> Vec<u8> {
    let mut b = Vec::new();
    for p in parts {
        b.extend_from_slice(p.as_bytes());
        b.push(0);
    }
    b
}

/// Turns fuzz bytes into client frames.
pub fn program(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for pair in data.chunks(2) {
        let op = pair[0] % 9;
        let arg = *pair.get(1).unwrap_or(&0) as usize;
        let name = NAMES[arg % 3];
        let other = NAMES[(arg / 3) % 3];
        let query = QUERIES[(arg / 9) % 3].0;
        // Simple-query variants name s1 or s2 by bit 0 of arg / 27.
        let sql_name = NAMES[1 + (arg / 27) % 2];
        let f = match op {
            0 => frame(b'P', &[&cstrs(&[name, query])[..], &[0, 0]].concat()),
            1 => frame(
                b'B',
                &[&cstrs(&[other, name])[..], &[0, 0, 0, 0, 0, 0]].concat(),
            ),
            2 => frame(b'D', &[b"S".as_slice(), &cstrs(&[name])].concat()),
            3 => frame(b'D', &[b"P".as_slice(), &cstrs(&[other])].concat()),
            4 => frame(b'E', &[&cstrs(&[other])[..], &[0, 0, 0, 0]].concat()),
            5 => frame(
                b'C',
                &[
                    if arg % 2 == 0 { b"S".as_slice() } else { b"P" },
                    &cstrs(&[name]),
                ]
                .concat(),
            ),
            6 => frame(b'S', b""),
            7 => {
                let sql = match arg % 4 {
                    0 => format!("prepare {sql_name} as {query}"),
                    1 => format!("deallocate {sql_name}"),
                    2 => "discard all".to_string(),
                    _ => format!("deallocate {sql_name}; prepare {sql_name} as {query}"),
                };
                frame(b'Q', &cstrs(&[&sql]))
            }
            _ => frame(b'H', b""),
        };
        out.extend(f);
    }
    out.extend(frame(b'S', b""));
    out
}

/// The simulated PostgreSQL: prepared statements and portals by name.
#[derive(Default)]
struct Server {
    prepared: HashMap<String, bool>,
    portals: HashMap<String, bool>,
    failed: bool,
}

fn row_description(ruled: bool) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_i16(1);
    b.put_slice(if ruled { b"ssn\0" } else { b"name\0" });
    b.put_u32(TABLE);
    b.put_i16(if ruled { 3 } else { 2 });
    b.put_u32(25);
    b.put_i16(-1);
    b.put_i32(-1);
    b.put_i16(0);
    frame(b'T', &b)
}

fn data_row(ruled: bool) -> Vec<u8> {
    let v = if ruled { SECRET } else { "Ada" };
    let mut b = BytesMut::new();
    b.put_i16(1);
    b.put_i32(v.len() as i32);
    b.put_slice(v.as_bytes());
    frame(b'D', &b)
}

fn error(msg: &str) -> Vec<u8> {
    frame(b'E', &cstrs(&["SERROR", "C26000", &format!("M{msg}"), ""]))
}

fn cstr(b: &mut &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    let s = String::from_utf8_lossy(&b[..end]).to_string();
    *b = &b[(end + 1).min(b.len())..];
    s
}

impl Server {
    fn answer(&mut self, mut input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        while input.len() >= 5 {
            let tag = input[0];
            let len = (&input[1..5]).get_u32() as usize;
            let body = &input[5..(1 + len).min(input.len())];
            input = &input[(1 + len).min(input.len())..];
            let mut b = body;
            if self.failed && !matches!(tag, b'S' | b'Q') {
                continue;
            }
            match tag {
                b'P' => {
                    let name = cstr(&mut b);
                    let sql = cstr(&mut b);
                    let ruled = sql.contains("ssn");
                    if !name.is_empty() && self.prepared.contains_key(&name) {
                        out.extend(error("prepared statement already exists"));
                        self.failed = true;
                    } else {
                        self.prepared.insert(name, ruled);
                        out.extend(frame(b'1', b""));
                    }
                }
                b'B' => {
                    let portal = cstr(&mut b);
                    let stmt = cstr(&mut b);
                    match self.prepared.get(&stmt) {
                        Some(r) => {
                            self.portals.insert(portal, *r);
                            out.extend(frame(b'2', b""));
                        }
                        None => {
                            out.extend(error("prepared statement does not exist"));
                            self.failed = true;
                        }
                    }
                }
                b'D' => {
                    let kind = b.first().copied().unwrap_or(b'S');
                    b = &b[1.min(b.len())..];
                    let name = cstr(&mut b);
                    let found = if kind == b'S' {
                        self.prepared.get(&name)
                    } else {
                        self.portals.get(&name)
                    };
                    match found {
                        Some(r) => {
                            if kind == b'S' {
                                out.extend(frame(b't', &[0, 0]));
                            }
                            out.extend(row_description(*r));
                        }
                        None => {
                            out.extend(error("does not exist"));
                            self.failed = true;
                        }
                    }
                }
                b'E' => {
                    let portal = cstr(&mut b);
                    match self.portals.get(&portal) {
                        Some(r) => {
                            out.extend(data_row(*r));
                            out.extend(frame(b'C', b"SELECT 1\0"));
                        }
                        None => {
                            out.extend(error("portal does not exist"));
                            self.failed = true;
                        }
                    }
                }
                b'C' => {
                    let kind = b.first().copied().unwrap_or(b'S');
                    b = &b[1.min(b.len())..];
                    let name = cstr(&mut b);
                    if kind == b'S' {
                        self.prepared.remove(&name);
                    } else {
                        self.portals.remove(&name);
                    }
                    out.extend(frame(b'3', b""));
                }
                b'S' => {
                    self.failed = false;
                    self.portals.remove("");
                    out.extend(frame(b'Z', b"I"));
                }
                b'Q' => {
                    self.failed = false;
                    let sql = cstr(&mut b);
                    for part in sql.split(';').map(str::trim) {
                        let words: Vec<&str> = part.split_whitespace().collect();
                        match words.as_slice() {
                            ["prepare", n, "as", ..] => {
                                self.prepared.insert(n.to_string(), part.contains("ssn"));
                            }
                            ["deallocate", n] => {
                                self.prepared.remove(*n);
                            }
                            ["discard", "all"] => {
                                self.prepared.clear();
                                self.portals.clear();
                            }
                            // The gateway's refusal of a statement.
                            ["do", ..] => out.extend(error("refused")),
                            _ => {}
                        }
                        out.extend(frame(b'C', b"OK\0"));
                    }
                    out.extend(frame(b'Z', b"I"));
                }
                _ => {}
            }
        }
        out
    }
}

fn engine() -> Engine {
    let columns = BTreeMap::from([("t.ssn".to_string(), "redact".to_string())]);
    Engine::new(&EngineConfig {
        detectors: &[],
        custom: &BTreeMap::new(),
        columns: &columns,
        detector_strategy: None,
        hash_key: None,
    })
    .expect("engine")
}

/// Runs one program; returns what the client received.
pub fn run(data: &[u8]) -> Vec<u8> {
    run_frames(&program(data))
}

/// Runs client frames as they are; returns what the client received.
pub fn run_frames(input: &[u8]) -> Vec<u8> {
    let engine = engine();
    let mut catalog = Catalog::default();
    catalog
        .columns
        .insert((TABLE, 3), (Strategy::Redact, "t.ssn".into()));
    let mask = MaskCtx {
        engine: &engine,
        catalog: &catalog,
    };
    let tracker = Mutex::new(Tracker::default());
    let mut server = Server::default();
    let mut client_scan = Scanner::new(1 << 20);
    let mut server_scan = Scanner::collect_limited(1 << 20);
    let mut done = Vec::new();
    let mut to_client = BytesMut::new();
    let rules = custody::policy::decision::Rules {
        masked: true,
        max_inspected: custody::policy::guardrails::DEFAULT_MAX_INSPECTED,
        ..Default::default()
    };
    let mut client = ClientHook::new(&tracker, &rules, Some(mask), "audit");
    let mut counts = custody::mask::Counts::default();
    // Feed the program in a few reads, as a real pipeline arrives.
    for chunk in input.chunks(64) {
        let mut upstream = BytesMut::new();
        if client_scan.feed(chunk, &mut client, &mut upstream).is_err() {
            return to_client.to_vec();
        }
        let answer = server.answer(&upstream);
        let mut hook = ServerHook {
            tracker: &tracker,
            done: &mut done,
            mask: Some(mask),
            guarded: true,
            counts: &mut counts,
        };
        if server_scan
            .feed(&answer, &mut hook, &mut to_client)
            .is_err()
        {
            return to_client.to_vec();
        }
        let _ = custody::protocol::postgres::hooks::drain_blocked(&tracker, &mut to_client);
    }
    to_client.to_vec()
}

/// The invariant: no clear value of the ruled column reaches the client.
pub fn check(data: &[u8]) {
    let out = run(data);
    let leaked = out.windows(SECRET.len()).any(|w| w == SECRET.as_bytes());
    assert!(!leaked, "ruled column leaked for program {data:?}");
}
