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
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

pub fn verify(rec: &Fetched, pinned: Option<&VerifyingKey>) -> Report {
    let mut r = Report::default();
    let mut segs = rec.segments.clone();
    segs.sort_by_key(|(n, _)| *n);
    for name in &rec.foreign {
        r.problems.push(format!(
            "object \"{name}\" in the recording's folder is not part of the sealed recording (Custody writes only {} and segments named like {}): someone else added it; it was not read",
            store::MANIFEST_NAME,
            store::segment_name(1)
        ));
    }
    for w in segs.windows(2) {
        if w[0].0 == w[1].0 {
            r.problems
                .push(format!("segment {:06} is in the store twice", w[0].0));
        }
    }
    segs.dedup_by_key(|(n, _)| *n);
    if segs.is_empty() && rec.manifest.is_none() {
        r.problems
            .push(format!("no recording {} in the store", rec.audit_id));
        return r;
    }

    // Chain, numbering and event order, segment by segment.
    let mut expected_seq = 0u64;
    let mut last_ts: Option<chrono::DateTime<chrono::Utc>> = None;
    let mut prev_hash: Option<String> = None;
    let mut hashes = Vec::new();
    for (i, (n, bytes)) in segs.iter().enumerate() {
        let from = if i == 0 { 1 } else { segs[i - 1].0 + 1 };
        if *n > from {
            let (s, are) = if *n - from > 1 {
                ("s", "are")
            } else {
                ("", "is")
            };
            r.problems
                .push(format!("segment{s} {} {are} missing", range(from, *n - 1)));
        }
        let hash = seal::sha256_hex(bytes);
        hashes.push((*n, hash.clone(), bytes.len() as u64, 0u64));
        let mut lines = bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty());
        let header: Option<SegmentHeader> =
            lines.next().and_then(|l| serde_json::from_slice(l).ok());
        let Some(header) = header else {
            r.problems
                .push(format!("segment {n:06} has no valid header line: altered"));
            prev_hash = Some(hash);
            continue;
        };
        if header.audit_id != rec.audit_id {
            r.problems.push(format!(
                "segment {n:06} belongs to recording {}, not {}",
                header.audit_id, rec.audit_id
            ));
        }
        if header.segment != *n {
            r.problems.push(format!(
                "object {n:06}.jsonl holds segment {}: segments were renamed or reordered",
                header.segment
            ));
        }
        let contiguous = i > 0 && segs[i - 1].0 + 1 == *n;
        if *n == 1 && header.prev_sha256.is_some() {
            r.problems
                .push("segment 000001 claims a predecessor: altered".to_string());
        } else if contiguous && header.prev_sha256 != prev_hash {
            r.problems.push(format!(
                "segment {n:06} does not chain to segment {:06}: one of them was altered or replaced",
                n - 1
            ));
        }
        if header.first_seq != expected_seq && (i == 0 || contiguous) {
            r.problems.push(format!(
                "segment {n:06} starts at event {} but event {expected_seq} was expected",
                header.first_seq
            ));
        }
        expected_seq = header.first_seq;
        for (ln, line) in lines.enumerate() {
            match serde_json::from_slice::<Event>(line) {
                Ok(ev) => {
                    if ev.seq != expected_seq {
                        r.problems.push(format!(
                            "segment {n:06} line {}: event {} where {expected_seq} was expected: events reordered, removed or inserted",
                            ln + 2,
                            ev.seq
                        ));
                    }
                    if last_ts.is_some_and(|t| ev.ts < t) {
                        r.problems.push(format!(
                            "segment {n:06} line {}: event {} is timestamped before its predecessor",
                            ln + 2,
                            ev.seq
                        ));
                    }
                    last_ts = Some(ev.ts);
                    expected_seq = ev.seq + 1;
                    if let Some(h) = hashes.last_mut() {
                        h.3 += 1;
                    }
                }
                Err(e) => r.problems.push(format!(
                    "segment {n:06} line {}: not a valid event ({e}): altered",
                    ln + 2
                )),
            }
        }
        prev_hash = Some(hash);
    }
    r.facts.push(format!(
        "{} segment(s), {expected_seq} event(s){}",
        segs.len(),
        last_ts
            .map(|t| format!(", last at {}", t.format("%Y-%m-%d %H:%M:%S%.3f UTC")))
            .unwrap_or_default()
    ));

    let Some(manifest) = &rec.manifest else {
        r.problems.push(format!(
            "no manifest: the recording was never sealed (the gateway crashed, was killed, or the session is still running); what is here ends at event {}",
            expected_seq.saturating_sub(1)
        ));
        return r;
    };
    let (signed, body, sig) = match seal::parse_manifest(manifest) {
        Ok(m) => m,
        Err(e) => {
            r.problems.push(format!("manifest: {e}"));
            return r;
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
    match (sig.alg.as_str(), sig.signature.as_deref()) {
        ("Ed25519", Some(s)) => {
            let embedded = seal::embedded_key(&sig);
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
        _ => r.problems.push(
            "the manifest is not signed: set [recording] signing_key on the gateway".to_string(),
        ),
    }
    for entry in &body.segments {
        match hashes.iter().find(|(n, _, _, _)| *n == entry.segment) {
            None => r.problems.push(format!(
                "segment {:06} is listed in the manifest but missing from the store",
                entry.segment
            )),
            Some((_, h, len, _)) if *h != entry.sha256 || *len != entry.bytes => {
                r.problems.push(format!(
                "segment {:06} was altered after sealing: its SHA-256 is {h}, the manifest says {}",
                entry.segment, entry.sha256
            ))
            }
            Some((_, _, _, events)) if *events != entry.events => r.problems.push(format!(
                "segment {:06} holds {events} valid event(s), the manifest says {}",
                entry.segment, entry.events
            )),
            Some(_) => {}
        }
    }
    for (n, _, _, _) in &hashes {
        if !body.segments.iter().any(|e| e.segment == *n) {
            r.problems.push(format!(
                "segment {n:06} is in the store but not in the manifest: added after sealing"
            ));
        }
    }
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
    r
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
