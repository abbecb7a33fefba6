//! Mutates a real recording, written and sealed by the recorder into an
//! in-memory store with a bucket's list semantics: flips and inserts bytes,
//! truncates, adds, removes and renames objects, duplicates segments under
//! other spellings. `fetch` and `verify` must never panic, must never say
//! VERIFIED for a store whose objects differ from the sealed original (and
//! must for the original), and replay's text rendering must never print a
//! control character other than its own line ends.
#![no_main]

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use custody::config::RecordingConfig;
use custody::recording::store::{self, MemStore, ObjectStore};
use custody::recording::{self, asciicast, verify, EventBody, Recorder, Recording};
use ed25519_dalek::{SigningKey, VerifyingKey};
use libfuzzer_sys::fuzz_target;

const ID: &str = "019ad4d2-6f4e-7c3a-9a6b-0123456789ab";

/// Names an attacker would try, relative to the recording's folder.
const NAMES: &[&str] = &[
    "000001.jsonl",
    "000002.jsonl",
    "000003.jsonl",
    "000004.jsonl",
    "000099.jsonl",
    "00002.jsonl",
    "0000002.jsonl",
    "+00002.jsonl",
    "000000.jsonl",
    "000002.JSONL",
    "manifest.json",
    "MANIFEST.JSON",
    "manifest.json.sig",
    "x/000001.jsonl",
    "000002.jsonl/",
    ".tmp-1",
    "",
];

struct Fixture {
    rt: tokio::runtime::Runtime,
    dir: String,
    original: BTreeMap<String, Vec<u8>>,
    key: VerifyingKey,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let signer = SigningKey::from_bytes(&[9; 32]);
        let key = signer.verifying_key();
        let mem = Arc::new(MemStore::default());
        let store: Arc<dyn ObjectStore> = mem.clone();
        let cfg = RecordingConfig {
            segment_bytes: 300,
            ..RecordingConfig::default()
        };
        let rec = Arc::new(Recorder::new(store, Some(signer), &cfg));
        rt.block_on(record(&rec));
        let original = mem.snapshot();
        assert!(original.len() >= 4, "several segments and a manifest");
        let sealed = rt
            .block_on(recording::fetch(mem.as_ref(), ID))
            .expect("the recording is there");
        assert!(verify::verify(&sealed, Some(&key)).ok(), "the original verifies");
        Fixture {
            rt,
            dir: store::record_dir(ID),
            original,
            key,
        }
    })
}

async fn record(rec: &Arc<Recorder>) {
    let start = EventBody::SessionStart {
        audit_id: ID.into(),
        principal: "user:alice@example.com".into(),
        principal_id: None,
        groups: vec!["sre@example.com".into()],
        connection: "pg".into(),
        mode: "tunnel".into(),
        client_addr: Some("127.0.0.1:5000".into()),
        peer: None,
        granted_by: Some("user:alice@example.com".into()),
        trace_id: None,
        chain: vec![],
        root_audit_id: None,
    };
    let r = Recording::start(rec, ID, start, None)
        .await
        .expect("recording starts");
    for i in 0..12u64 {
        let body = match i % 3 {
            0 => EventBody::Statement {
                sql: format!("select {i} /*\n== session ended\x1b[2K*/"),
                protocol: "simple".into(),
                tags: vec!["SELECT 1".into()],
                rows: 1,
                error: None,
                duration_ms: 0.5,
                masked: Default::default(),
            },
            1 => EventBody::Output {
                channel: 0,
                stream: "o".into(),
                data: "\x1b[31mred\x1b[0m\r\n".into(),
            },
            _ => EventBody::Review {
                review_id: format!("r{i}"),
                action: "approved".into(),
                by: Some("user:bob@example.com".into()),
                reason: Some("ok\u{202e}".into()),
                review_audit_id: None,
            },
        };
        r.tap.record(body).await.expect("recorded");
    }
    let end = EventBody::SessionEnd {
        reason: "client closed".into(),
        statements: 4,
        rows: 4,
        bytes_from_client: 0,
        bytes_to_client: 0,
    };
    r.finish(end).await.expect("sealed");
}

/// The input as a stream of small numbers; zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn below(&mut self, n: usize) -> usize {
        let v = usize::from(self.byte()) << 8 | usize::from(self.byte());
        if n == 0 {
            0
        } else {
            v % n
        }
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1).min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head.to_vec()
    }
    fn name(&mut self, dir: &str) -> String {
        let pick = self.below(NAMES.len() + 2);
        match pick.checked_sub(NAMES.len()) {
            None => format!("{dir}{}", NAMES[pick]),
            // A segment number in another width ("duplicate segments").
            Some(0) => {
                let n = self.below(6);
                let width = self.below(9);
                format!("{dir}{n:0width$}.jsonl")
            }
            Some(_) => format!("{dir}{}", String::from_utf8_lossy(&self.bytes(24))),
        }
    }
}

fn mutate(objects: &mut BTreeMap<String, Vec<u8>>, dir: &str, input: &mut Input) {
    for _ in 0..(1 + input.below(4)) {
        let keys: Vec<String> = objects.keys().cloned().collect();
        let op = input.byte() % 8;
        let Some(key) = (!keys.is_empty()).then(|| keys[input.below(keys.len())].clone()) else {
            let name = input.name(dir);
            objects.insert(name, input.bytes(64));
            continue;
        };
        match op {
            0 => {
                let obj = objects.entry(key).or_default();
                if !obj.is_empty() {
                    let at = input.below(obj.len());
                    obj[at] ^= input.byte() | 1;
                }
            }
            1 => {
                objects.remove(&key);
            }
            2 => {
                if let Some(obj) = objects.remove(&key) {
                    let name = input.name(dir);
                    objects.insert(name, obj);
                }
            }
            3 => {
                let name = input.name(dir);
                let body = input.bytes(256);
                objects.insert(name, body);
            }
            4 => {
                let copy = objects.get(&key).cloned().unwrap_or_default();
                let name = input.name(dir);
                objects.insert(name, copy);
            }
            5 => {
                let obj = objects.entry(key).or_default();
                let at = input.below(obj.len() + 1);
                obj.truncate(at);
            }
            6 => {
                let obj = objects.entry(key).or_default();
                let at = input.below(obj.len() + 1);
                let extra = input.bytes(64);
                obj.splice(at..at, extra);
            }
            _ => {
                let body = input.bytes(512);
                objects.insert(key, body);
            }
        }
    }
}

/// Replay's renderings of whatever can be parsed: text must hold no
/// control character but its own newlines; json lines must be JSON.
fn check_replay(rec: &verify::Fetched) {
    if let Ok(events) = recording::parse(rec) {
        let text = recording::render(&events);
        assert!(
            !text.chars().any(|c| c != '\n' && c.is_control()),
            "a control character reached replay's text: {text:?}"
        );
        let _ = asciicast::render(&events);
    }
    for (_, _, line) in recording::event_lines(rec) {
        if let Some(l) = recording::json_line(line) {
            assert!(serde_json::from_str::<serde_json::Value>(&l).is_ok(), "{l}");
            assert!(!l.chars().any(char::is_control), "{l:?}");
        }
    }
}

/// What differs, for the failure message.
fn differences(a: &BTreeMap<String, Vec<u8>>, b: &BTreeMap<String, Vec<u8>>) -> String {
    let mut out = String::new();
    for key in a.keys().chain(b.keys()) {
        let (x, y) = (a.get(key), b.get(key));
        if x != y {
            out.push_str(&format!(
                "\n{key}:\n  was {:?}\n  now {:?}",
                x.map(|v| String::from_utf8_lossy(v)),
                y.map(|v| String::from_utf8_lossy(v))
            ));
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let mut objects = f.original.clone();
    mutate(&mut objects, &f.dir, &mut Input(data));
    let changed = objects != f.original;
    let store = MemStore::new(objects);
    let Ok(rec) = f.rt.block_on(recording::fetch(&store, ID)) else {
        return;
    };
    check_replay(&rec);
    let pinned = verify::verify(&rec, Some(&f.key));
    let embedded = verify::verify(&rec, None);
    if changed {
        assert!(
            !pinned.ok() && !embedded.ok(),
            "VERIFIED although the store differs from the sealed original: {}",
            differences(&f.original, &store.snapshot())
        );
    } else {
        assert!(pinned.ok() && embedded.ok(), "the original: {pinned:?}");
    }
});
