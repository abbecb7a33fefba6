//! `custody verify`: checks a recording's signature, chain, order and
//! completeness, and says exactly what is wrong. Pure over the fetched bytes.
//!
//! A recording is exactly what its signed manifest names: the manifest and
//! canonically named segments. Any other object in the recording's folder
//! fails verification by name and is never read, so an object-creator on the
//! bucket cannot add a second spelling of a segment and be replayed.

use ed25519_dalek::VerifyingKey;

use super::seal::{self, SegmentHeader};
use super::store;
use super::Event;

/// One fetched recording: segment objects by number, the manifest if any,
/// and the names (relative to the recording's folder) of every other object
/// found there, unread.
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    pub audit_id: String,
    pub segments: Vec<(u32, Vec<u8>)>,
    pub manifest: Option<Vec<u8>>,
    pub foreign: Vec<String>,
}

/// What an object in a recording's folder is, by its name alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Manifest,
    Segment(u32),
    /// Not a name Custody writes: not part of any recording.
    Foreign,
}

/// `name` is relative to the recording's folder; a nested name is foreign.
pub fn object_kind(name: &str) -> ObjectKind {
    if name == store::MANIFEST_NAME {
        return ObjectKind::Manifest;
    }
    match store::parse_segment_name(name) {
        Some(n) => ObjectKind::Segment(n),
        None => ObjectKind::Foreign,
    }
}

#[derive(Debug, Default)]
pub struct Report {
    /// Facts a reviewer wants either way (segments, events, signer).
    pub facts: Vec<String>,
    /// Everything wrong; empty means verified.
    pub problems: Vec<String>,
    /// The manifest carries no signature (one of the problems).
    pub unsigned: bool,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

pub fn verify(rec: &Fetched, pinned: Option<&VerifyingKey>) -> Report {
    let mut r = Report::default();
    let segs = distinct_segments(rec, &mut r.problems);
    if segs.is_empty() && rec.manifest.is_none() {
        r.problems
            .push(format!("no recording {} in the store", rec.audit_id));
        return r;
    }
    let chain = Chain::walk(&rec.audit_id, &segs, &mut r.problems);
    r.facts.push(chain.summary(segs.len()));
    let Some(manifest) = &rec.manifest else {
        r.problems.push(format!(
            "no manifest: the recording was never sealed (the gateway crashed, was killed, or the session is still running); what is here ends at event {}",
            chain.expected_seq.saturating_sub(1)
        ));
        return r;
    };
    check_manifest(rec, manifest, pinned, &chain, &mut r);
    r
}

/// The segments sorted by number, one per number. Foreign objects and
/// duplicates are problems; only the first copy of a duplicate is kept.
fn distinct_segments(rec: &Fetched, problems: &mut Vec<String>) -> Vec<(u32, Vec<u8>)> {
    let mut segs = rec.segments.clone();
    segs.sort_by_key(|(n, _)| *n);
    for name in &rec.foreign {
        problems.push(format!(
            "object \"{name}\" in the recording's folder is not part of the sealed recording (Custody writes only {} and segments named like {}): someone else added it; it was not read",
            store::MANIFEST_NAME,
            store::segment_name(1)
        ));
    }
    for w in segs.windows(2) {
        if w[0].0 == w[1].0 {
            problems.push(format!("segment {:06} is in the store twice", w[0].0));
        }
    }
    segs.dedup_by_key(|(n, _)| *n);
    segs
}

/// What the store holds of one segment, to compare with the manifest.
struct Stored {
    segment: u32,
    sha256: String,
    bytes: u64,
    /// Lines that parsed as events.
    events: u64,
}

/// Chain, numbering and event order, checked segment by segment.
#[derive(Default)]
struct Chain {
    expected_seq: u64,
    last_ts: Option<chrono::DateTime<chrono::Utc>>,
    prev_hash: Option<String>,
    stored: Vec<Stored>,
}

impl Chain {
    fn walk(audit_id: &str, segs: &[(u32, Vec<u8>)], problems: &mut Vec<String>) -> Chain {
        let mut chain = Chain::default();
        for (i, (n, bytes)) in segs.iter().enumerate() {
            let prev = i.checked_sub(1).map(|p| segs[p].0);
            chain.segment(audit_id, prev, *n, bytes, problems);
        }
        chain
    }

    /// `prev` is the number of the segment before this one in the store.
    fn segment(
        &mut self,
        audit_id: &str,
        prev: Option<u32>,
        n: u32,
        bytes: &[u8],
        problems: &mut Vec<String>,
    ) {
        let from = prev.map_or(1, |p| p + 1);
        if n > from {
            let (s, are) = if n - from > 1 {
                ("s", "are")
            } else {
                ("", "is")
            };
            problems.push(format!("segment{s} {} {are} missing", range(from, n - 1)));
        }
        let hash = seal::sha256_hex(bytes);
        self.stored.push(Stored {
            segment: n,
            sha256: hash.clone(),
            bytes: bytes.len() as u64,
            events: 0,
        });
        let mut lines = bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty());
        let header: Option<SegmentHeader> =
            lines.next().and_then(|l| serde_json::from_slice(l).ok());
        let Some(header) = header else {
            problems.push(format!("segment {n:06} has no valid header line: altered"));
            self.prev_hash = Some(hash);
            return;
        };
        self.check_header(audit_id, prev, n, &header, problems);
        self.expected_seq = header.first_seq;
        for (ln, line) in lines.enumerate() {
            self.event(n, ln, line, problems);
        }
        self.prev_hash = Some(hash);
    }

    fn check_header(
        &self,
        audit_id: &str,
        prev: Option<u32>,
        n: u32,
        header: &SegmentHeader,
        problems: &mut Vec<String>,
    ) {
        if header.audit_id != audit_id {
            problems.push(format!(
                "segment {n:06} belongs to recording {}, not {}",
                header.audit_id, audit_id
            ));
        }
        if header.segment != n {
            problems.push(format!(
                "object {n:06}.jsonl holds segment {}: segments were renamed or reordered",
                header.segment
            ));
        }
        let contiguous = prev.is_some_and(|p| p + 1 == n);
        if n == 1 && header.prev_sha256.is_some() {
            problems.push("segment 000001 claims a predecessor: altered".to_string());
        } else if contiguous && header.prev_sha256 != self.prev_hash {
            problems.push(format!(
                "segment {n:06} does not chain to segment {:06}: one of them was altered or replaced",
                n - 1
            ));
        }
        if header.first_seq != self.expected_seq && (prev.is_none() || contiguous) {
            problems.push(format!(
                "segment {n:06} starts at event {} but event {} was expected",
                header.first_seq, self.expected_seq
            ));
        }
    }

    /// `ln` counts event lines from 0; the file line is `ln + 2`.
    fn event(&mut self, n: u32, ln: usize, line: &[u8], problems: &mut Vec<String>) {
        let expected_seq = self.expected_seq;
        match serde_json::from_slice::<Event>(line) {
            Ok(ev) => {
                if ev.seq != expected_seq {
                    problems.push(format!(
                        "segment {n:06} line {}: event {} where {expected_seq} was expected: events reordered, removed or inserted",
                        ln + 2,
                        ev.seq
                    ));
                }
                if self.last_ts.is_some_and(|t| ev.ts < t) {
                    problems.push(format!(
                        "segment {n:06} line {}: event {} is timestamped before its predecessor",
                        ln + 2,
                        ev.seq
                    ));
                }
                self.last_ts = Some(ev.ts);
                self.expected_seq = ev.seq + 1;
                if let Some(s) = self.stored.last_mut() {
                    s.events += 1;
                }
            }
            Err(e) => problems.push(format!(
                "segment {n:06} line {}: not a valid event ({e}): altered",
                ln + 2
            )),
        }
    }

    fn summary(&self, segments: usize) -> String {
        format!(
            "{segments} segment(s), {} event(s){}",
            self.expected_seq,
            self.last_ts
                .map(|t| format!(", last at {}", t.format("%Y-%m-%d %H:%M:%S%.3f UTC")))
                .unwrap_or_default()
        )
    }
}

fn check_manifest(
    rec: &Fetched,
    manifest: &[u8],
    pinned: Option<&VerifyingKey>,
    chain: &Chain,
    r: &mut Report,
) {
    let (signed, body, sig) = match seal::parse_manifest(manifest) {
        Ok(m) => m,
        Err(e) => {
            r.problems.push(format!("manifest: {e}"));
            return;
        }
    };
    if let Err(e) = seal::check_manifest_bytes(manifest, signed, &sig) {
        r.problems.push(format!("manifest: {e}"));
    }
    if let Some(e) = manifest_listing_problem(&body.segments) {
        r.problems.push(format!("manifest: {e}"));
    }
    if body.audit_id != rec.audit_id {
        r.problems.push(format!(
            "the manifest is for recording {}, not {}",
            body.audit_id, rec.audit_id
        ));
    }
    check_signature(&sig, signed, pinned, r);
    compare_segments(&body.segments, &chain.stored, &mut r.problems);
    let expected_seq = chain.expected_seq;
    if body.events != expected_seq {
        r.problems.push(format!(
            "the manifest counts {} events, the segments hold {expected_seq}: truncated or padded",
            body.events
        ));
    }
    r.facts.push(format!(
        "sealed at {}",
        body.sealed_at.format("%Y-%m-%d %H:%M:%S%.3f UTC")
    ));
}

fn check_signature(
    sig: &seal::SignatureLine,
    signed: &[u8],
    pinned: Option<&VerifyingKey>,
    r: &mut Report,
) {
    match (sig.alg.as_str(), sig.signature.as_deref()) {
        ("Ed25519", Some(s)) => {
            let embedded = seal::embedded_key(sig);
            let key = pinned.or(embedded.as_ref());
            match key {
                Some(k) => match seal::verify_signature(k, signed, s) {
                    Ok(()) => r.facts.push(format!(
                        "manifest signed by {}{}",
                        seal::key_id(k),
                        if pinned.is_some() {
                            " (the key you gave)"
                        } else {
                            " (the key embedded in the manifest: pass --public-key to pin the gateway's key)"
                        }
                    )),
                    Err(e) => r.problems.push(e),
                },
                None => r
                    .problems
                    .push("the manifest names no usable public key".to_string()),
            }
            if let (Some(p), Some(e)) = (pinned, embedded) {
                if p != &e {
                    r.problems.push(format!(
                        "the manifest was signed by {}, not by the key you gave ({})",
                        seal::key_id(&e),
                        seal::key_id(p)
                    ));
                }
            }
        }
        _ => {
            r.unsigned = true;
            r.problems.push(
                "the manifest is not signed: set [recording] signing_key on the gateway"
                    .to_string(),
            )
        }
    }
}

/// Each listed segment must be in the store as sealed, and nothing else may be.
fn compare_segments(listed: &[seal::SegmentEntry], stored: &[Stored], problems: &mut Vec<String>) {
    for entry in listed {
        match stored.iter().find(|s| s.segment == entry.segment) {
            None => problems.push(format!(
                "segment {:06} is listed in the manifest but missing from the store",
                entry.segment
            )),
            Some(s) if s.sha256 != entry.sha256 || s.bytes != entry.bytes => {
                problems.push(format!(
                "segment {:06} was altered after sealing: its SHA-256 is {}, the manifest says {}",
                entry.segment, s.sha256, entry.sha256
            ))
            }
            Some(s) if s.events != entry.events => problems.push(format!(
                "segment {:06} holds {} valid event(s), the manifest says {}",
                entry.segment, s.events, entry.events
            )),
            Some(_) => {}
        }
    }
    for s in stored {
        if !listed.iter().any(|e| e.segment == s.segment) {
            problems.push(format!(
                "segment {:06} is in the store but not in the manifest: added after sealing",
                s.segment
            ));
        }
    }
}

/// The manifest must list segments 1..=N once each, in order.
fn manifest_listing_problem(entries: &[seal::SegmentEntry]) -> Option<String> {
    for (i, e) in entries.iter().enumerate() {
        let want = u32::try_from(i + 1).unwrap_or(u32::MAX);
        if e.segment != want {
            return Some(format!(
                "it lists segment {:06} where segment {want:06} belongs: segments listed twice, out of order or with a gap",
                e.segment
            ));
        }
    }
    None
}

fn range(a: u32, b: u32) -> String {
    if a >= b {
        format!("{a:06}")
    } else {
        format!("{a:06}..{b:06}")
    }
}
