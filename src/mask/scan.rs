//! Finds built-in detector hits in text.
//!
//! Clean text must cost little, so nothing runs a regex over the whole text.
//! Each detector has a cheap trigger and only its candidates get the exact
//! check:
//! - `@` (memchr) for email, then an anchored regex on the word around it;
//! - the literals `AIza`, `AKIA`/`ASIA`/`ABIA`/`ACCA`, `-----BEGIN`, `eyJ`
//!   (one SIMD aho-corasick pass) for API keys, private keys and JWTs;
//! - `:` between hex digits (memchr) for IPv6, checked by std's parser;
//! - digit runs (one byte loop, `numbers.rs`) for cards, SSNs, phones,
//!   IPv4 and IBANs.

use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, MatchKind};
use memchr::{memchr, memchr_iter, memmem};
use regex::bytes::Regex;

use super::detectors::{ipv6_valid, is_b64url, is_word, jwt_header_valid};
use super::{numbers, Builtin, Enabled};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    Builtin(Builtin),
    /// Index into the engine's custom detectors.
    Custom(usize),
}

/// A detected value at `text[start..end]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hit {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) kind: Kind,
}

/// Trigger literals, in the order `literal_kind` maps them.
const LITERALS: [&str; 7] = ["AIza", "AKIA", "ASIA", "ABIA", "ACCA", "-----BEGIN", "eyJ"];

fn literal_kind(pattern: usize) -> Builtin {
    match pattern {
        0 => Builtin::GcpApiKey,
        1..=4 => Builtin::AwsAccessKey,
        5 => Builtin::PrivateKey,
        _ => Builtin::Jwt,
    }
}

// Static patterns: a failure here is a bug caught by every test run, not input.
// Leftmost-first lets aho-corasick use its SIMD (Teddy) prefilter; with the
// standard match kind it falls back to scanning for start bytes like `e`,
// which ordinary text is full of.
static LITERAL_FINDER: LazyLock<AhoCorasick> = LazyLock::new(|| {
    AhoCorasick::builder()
        .match_kind(MatchKind::LeftmostFirst)
        .build(LITERALS)
        .expect("static literals build")
});

/// Email anchored at the start of the word around an `@`. The domain needs
/// a dot and an alphabetic TLD; labels do not start or end with a dash.
static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?-u)^[A-Za-z0-9._%+\-]+@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}")
        .expect("static email regex")
});

/// A whole PEM private key block: optional RFC 1421 headers, then base64
/// lines (16-76 characters, the last may be shorter) between its markers.
/// Line breaks may be real or the literal `\n` of a key embedded in JSON
/// (GCP service-account files). Nothing else may sit between the markers,
/// so two markers can never hide the text between them.
static PEM_BLOCK: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?-u)^-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----(?:\r?\n|(?:\\r)?\\n)(?:[A-Za-z-]{1,32}: [A-Za-z0-9,\-]{1,128}(?:\r?\n|(?:\\r)?\\n)){0,4}(?:\r?\n|(?:\\r)?\\n)?(?:[A-Za-z0-9+/=]{16,76}(?:\r?\n|(?:\\r)?\\n))*(?:[A-Za-z0-9+/=]{1,76}(?:\r?\n|(?:\\r)?\\n))?-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----",
    )
    .expect("static pem regex")
});

/// A truncated block (no END line): the header and the base64 body that follows.
static PEM_HEAD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?-u)^-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----(?:(?:\r?\n|(?:\\r)?\\n)[A-Za-z0-9+/=]{8,76})*",
    )
    .expect("static pem head regex")
});

/// Longest key block; real keys are under 8 KiB.
const PEM_WINDOW: usize = 64 * 1024;
/// Longest JWT header segment decoded.
const JWT_HEADER_MAX: usize = 4096;

pub(crate) fn find_builtin(text: &[u8], enabled: Enabled, hits: &mut Vec<Hit>) {
    if enabled.has(Builtin::Email) {
        for at in memchr_iter(b'@', text) {
            if let Some((start, end)) = email_at(text, at) {
                hits.push(Hit {
                    start,
                    end,
                    kind: Kind::Builtin(Builtin::Email),
                });
            }
        }
    }
    let literal_on = [
        Builtin::GcpApiKey,
        Builtin::AwsAccessKey,
        Builtin::PrivateKey,
        Builtin::Jwt,
    ];
    if literal_on.iter().any(|&b| enabled.has(b)) {
        let mut end_lines = EndLines::default();
        // End of the last literal hit: a trigger inside it (a BEGIN or `AIza`
        // within a key block) would lose the overlap anyway, so skip its check.
        let mut covered = 0;
        for m in LITERAL_FINDER.find_iter(text) {
            let kind = literal_kind(m.pattern().as_usize());
            if !enabled.has(kind) || m.start() < covered {
                continue;
            }
            let end = match kind {
                Builtin::GcpApiKey => gcp_key_at(text, m.start()),
                Builtin::AwsAccessKey => aws_key_at(text, m.start()),
                Builtin::PrivateKey => private_key_at(text, m.start(), &mut end_lines),
                _ => jwt_at(text, m.start()),
            };
            if let Some(end) = end {
                hits.push(Hit {
                    start: m.start(),
                    end,
                    kind: Kind::Builtin(kind),
                });
                covered = end;
            }
        }
    }
    if enabled.has(Builtin::IpAddress) {
        find_ipv6(text, hits);
    }
    let numeric = [
        Builtin::CreditCard,
        Builtin::UsSsn,
        Builtin::Iban,
        Builtin::Phone,
        Builtin::IpAddress,
    ];
    if numeric.iter().any(|&b| enabled.has(b)) {
        numbers::find(text, enabled, hits);
    }
}

fn is_email_local(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"._%+-".contains(&b)
}

/// The email around the `@` at `at`. The local part runs left to the first
/// byte that cannot be in it, so `?email=jo@x.com` in a URL yields `jo@x.com`.
fn email_at(text: &[u8], at: usize) -> Option<(usize, usize)> {
    let mut start = at;
    while start > 0 && is_email_local(text[start - 1]) {
        start -= 1;
    }
    while start < at && text[start] == b'.' {
        start += 1;
    }
    if start == at {
        return None;
    }
    let window = &text[start..text.len().min(at + 256)];
    let end = start + EMAIL.find(window)?.end();
    // `jo@x.comx1` or `jo@x.com-y` is some other token, not an email.
    let glued = text.get(end).is_some_and(|&b| is_word(b) || b == b'-');
    (!glued).then_some((start, end))
}

/// `AIza` + 35 base64url characters, not part of a longer token.
fn gcp_key_at(text: &[u8], start: usize) -> Option<usize> {
    let end = start + 39;
    let body = text.get(start + 4..end)?;
    let alone = start == 0 || !is_b64url(text[start - 1]);
    let ends = !text.get(end).is_some_and(|&b| is_b64url(b));
    (alone && ends && body.iter().all(|&b| is_b64url(b))).then_some(end)
}

/// `AKIA`/`ASIA`/`ABIA`/`ACCA` + 16 of `[0-9A-Z]`, not part of a longer word.
fn aws_key_at(text: &[u8], start: usize) -> Option<usize> {
    let end = start + 20;
    let body = text.get(start + 4..end)?;
    let alone = start == 0 || !is_word(text[start - 1]);
    let ends = !text.get(end).is_some_and(|&b| is_word(b));
    let upper = body
        .iter()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    (alone && ends && upper).then_some(end)
}

/// Where the next `-----END` line is, remembered across BEGINs so that text
/// full of BEGIN lines costs one forward search, not one per BEGIN.
#[derive(Default)]
struct EndLines {
    /// None: not searched yet; Some(None): no END after an earlier BEGIN.
    next: Option<Option<usize>>,
}

impl EndLines {
    fn after(&mut self, text: &[u8], start: usize) -> Option<usize> {
        match self.next {
            Some(Some(end)) if end >= start => return Some(end),
            Some(None) => return None,
            _ => {}
        }
        let found = memmem::find(&text[start..], b"-----END").map(|off| start + off);
        self.next = Some(found);
        found
    }
}

/// A PEM private key block; a key cut short (no END line) still hides its header and body.
fn private_key_at(text: &[u8], start: usize, end_lines: &mut EndLines) -> Option<usize> {
    let block = end_lines
        .after(text, start)
        .filter(|&end| end - start <= PEM_WINDOW)
        .and_then(|end| PEM_BLOCK.find(&text[start..text.len().min(end + 64)]));
    let m = block.or_else(|| PEM_HEAD.find(&text[start..]))?;
    Some(start + m.end())
}

/// Three base64url segments joined by dots; the first decodes to JSON with "alg".
fn jwt_at(text: &[u8], start: usize) -> Option<usize> {
    if start > 0 && is_b64url(text[start - 1]) {
        return None;
    }
    let segment_end =
        |from: usize| from + text[from..].iter().take_while(|&&b| is_b64url(b)).count();
    let header_end = segment_end(start);
    if text.get(header_end) != Some(&b'.') || header_end - start > JWT_HEADER_MAX {
        return None;
    }
    let payload_end = segment_end(header_end + 1);
    if payload_end == header_end + 1 || text.get(payload_end) != Some(&b'.') {
        return None;
    }
    let end = segment_end(payload_end + 1); // an unsigned JWT has an empty signature
    jwt_header_valid(&text[start..header_end]).then_some(end)
}

fn is_hex_or_colon(b: u8) -> bool {
    b.is_ascii_hexdigit() || b == b':'
}

/// IPv6 candidates around colons that sit next to hex digits; times
/// (`10:23:45`), MACs and `std::` paths fail the parse or the word check.
fn find_ipv6(text: &[u8], hits: &mut Vec<Hit>) {
    let mut from = 0;
    while let Some(off) = memchr(b':', &text[from..]) {
        let colon = from + off;
        from = colon + 1;
        let next_ok = text.get(colon + 1).is_some_and(|&b| is_hex_or_colon(b));
        let prev_ok = colon == 0 || is_hex_or_colon(text[colon - 1]) || !is_word(text[colon - 1]);
        if !next_ok || !prev_ok {
            continue;
        }
        let mut start = colon;
        while start > 0 && is_hex_or_colon(text[start - 1]) {
            start -= 1;
        }
        let mut end = colon + 1;
        while end < text.len() && (is_hex_or_colon(text[end]) || text[end] == b'.') {
            end += 1;
        }
        from = end;
        // A sentence's dot or a trailing `:` (`at fe80::1: refused`) is not part of it.
        let mut candidate = &text[start..end];
        if let Some(shorter) = candidate.strip_suffix(b".") {
            candidate = shorter;
        }
        if candidate.ends_with(b":") && !candidate.ends_with(b"::") {
            candidate = &candidate[..candidate.len() - 1];
        }
        end = start + candidate.len();
        let alone = (start == 0 || !is_word(text[start - 1]))
            && !text.get(end).is_some_and(|&b| is_word(b));
        if alone && candidate.len() <= 45 && ipv6_valid(candidate) {
            hits.push(Hit {
                start,
                end,
                kind: Kind::Builtin(Builtin::IpAddress),
            });
        }
    }
}
