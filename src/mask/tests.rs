//! Engine-level tests and the helpers `detector_tests.rs` shares: strategies,
//! column rules, config errors, non-UTF-8 input, and property tests over
//! arbitrary input.

use std::collections::BTreeMap;

use proptest::prelude::{any, prop_assert, prop_assert_eq, proptest};

use super::*;

const ALL: [&str; 10] = [
    "email",
    "credit_card",
    "us_ssn",
    "iban",
    "phone",
    "ip_address",
    "gcp_api_key",
    "private_key",
    "jwt",
    "aws_access_key",
];

pub(super) const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
pub(super) const GCP_KEY: &str = "AIzaSyBOti4mM-6x9WDnZIjIeyEU21OpBXqWBgw";

pub(super) struct Setup<'a> {
    pub(super) detectors: &'a [&'a str],
    pub(super) custom: &'a [(&'a str, &'a str)],
    pub(super) columns: &'a [(&'a str, &'a str)],
    pub(super) strategy: Option<&'a str>,
    pub(super) key: Option<&'a [u8]>,
}

pub(super) const DEFAULT: Setup = Setup {
    detectors: &ALL,
    custom: &[],
    columns: &[],
    strategy: None,
    key: None,
};

fn build(s: Setup) -> Result<Engine, MaskError> {
    let detectors: Vec<String> = s.detectors.iter().map(|d| d.to_string()).collect();
    let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let (custom, columns) = (map(s.custom), map(s.columns));
    Engine::new(&EngineConfig {
        detectors: &detectors,
        custom: &custom,
        columns: &columns,
        detector_strategy: s.strategy,
        hash_key: s.key,
    })
}

pub(super) fn engine(s: Setup) -> Engine {
    build(s).expect("valid config")
}

/// Masked text (the input itself when nothing matched) and the counts.
pub(super) fn mask_with(e: &Engine, text: &str) -> (String, Counts) {
    let mut counts = Counts::default();
    let out = e
        .mask_text(text.as_bytes(), &mut counts)
        .map_or_else(|| text.to_owned(), |o| String::from_utf8(o).expect("utf-8"));
    (out, counts)
}

pub(super) fn mask(text: &str) -> String {
    mask_with(&engine(DEFAULT), text).0
}

/// Each input, alone and inside a sentence, becomes exactly `marker`.
pub(super) fn assert_masks(marker: &str, inputs: &[&str]) {
    for input in inputs {
        assert_eq!(mask(input), marker, "alone: {input:?}");
        let framed = format!("see: {input}, ok");
        assert_eq!(
            mask(&framed),
            format!("see: {marker}, ok"),
            "framed: {input:?}"
        );
    }
}

/// None of the inputs match anything.
pub(super) fn assert_clean(inputs: &[&str]) {
    for input in inputs {
        assert_eq!(mask(input), *input, "{input:?}");
    }
}

#[test]
fn custom_detectors() {
    let e = engine(Setup {
        detectors: &["email"],
        custom: &[("employee_id", r"\bEMP-\d{6}\b")],
        ..DEFAULT
    });
    let (out, counts) = mask_with(&e, "EMP-004211 and jo@x.io");
    assert_eq!(out, "[EMPLOYEE_ID] and [EMAIL]");
    assert_eq!(
        counts.0,
        BTreeMap::from([("email".into(), 1), ("employee_id".into(), 1)])
    );
    // Naming a custom detector in `detectors` is accepted, and it runs alone too.
    let e = engine(Setup {
        detectors: &["badge"],
        custom: &[("badge", "B-[0-9]+")],
        ..DEFAULT
    });
    assert!(e.has_detectors());
    assert_eq!(mask_with(&e, "x B-12 y").0, "x [BADGE] y");
}

#[test]
fn detector_strategies() {
    let text = "mail jane.doe@example.com card 4111 1111 1111 1111";
    let partial = engine(Setup {
        strategy: Some("partial"),
        ..DEFAULT
    });
    assert_eq!(
        mask_with(&partial, text).0,
        "mail ********@example.com card ***************1111"
    );
    let null = engine(Setup {
        strategy: Some("null"),
        ..DEFAULT
    });
    assert_eq!(mask_with(&null, text).0, "mail [EMAIL] card [CREDIT_CARD]");
    let hashed = engine(Setup {
        strategy: Some("hash"),
        key: Some(b"k1"),
        ..DEFAULT
    });
    let (a, _) = mask_with(&hashed, text);
    let (b, _) = mask_with(&hashed, "other jane.doe@example.com");
    let tag = |s: &str| s.split("hmac:").nth(1).map(|t| t[..16].to_owned());
    assert_eq!(
        tag(&a),
        tag(&b),
        "same value, same key: same tag, so joins still work"
    );
    assert!(a.starts_with("mail hmac:") && !a.contains("jane"));
    let other_key = engine(Setup {
        strategy: Some("hash"),
        key: Some(b"k2"),
        ..DEFAULT
    });
    assert_ne!(tag(&mask_with(&other_key, text).0), tag(&a));
}

#[test]
fn value_strategies() {
    let e = engine(Setup {
        columns: &[("ssn", "redact")],
        key: Some(b"secret"),
        ..DEFAULT
    });
    let mut counts = Counts::default();
    let mut run = |v: &str, s| {
        e.mask_value(v.as_bytes(), s, "ssn", &mut counts)
            .map(|o| String::from_utf8(o).expect("utf-8"))
    };
    assert_eq!(
        run("078-05-1120", Strategy::Redact).as_deref(),
        Some("[REDACTED]")
    );
    assert_eq!(
        run("078-05-1120", Strategy::Partial).as_deref(),
        Some("*******1120")
    );
    assert_eq!(
        run("jo@example.com", Strategy::Partial).as_deref(),
        Some("**@example.com")
    );
    assert_eq!(run("abcd", Strategy::Partial).as_deref(), Some("****"));
    assert_eq!(run("", Strategy::Partial).as_deref(), Some(""));
    assert_eq!(
        run("Zoë Müller", Strategy::Partial).as_deref(),
        Some("******ller")
    );
    assert_eq!(run("anything", Strategy::Null), None);
    let h1 = run("078-05-1120", Strategy::Hash);
    assert_eq!(h1, run("078-05-1120", Strategy::Hash));
    assert_ne!(h1, run("078-05-1121", Strategy::Hash));
    let h1 = h1.unwrap_or_default();
    assert!(
        h1.len() == 21 && h1.starts_with("hmac:") && h1[5..].bytes().all(|b| b.is_ascii_hexdigit()),
        "{h1}"
    );
    assert_eq!(counts.0, BTreeMap::from([("column:ssn".into(), 10)]));

    // Hash without a key (the caller bypassed config validation) fails closed.
    let no_key = engine(Setup {
        columns: &[("ssn", "redact")],
        ..DEFAULT
    });
    let out = no_key.mask_value(b"078-05-1120", Strategy::Hash, "ssn", &mut counts);
    assert_eq!(out.as_deref(), Some(&b"[REDACTED]"[..]));
}

#[test]
fn column_rule_precedence() {
    let e = engine(Setup {
        detectors: &[],
        columns: &[
            ("email", "redact"),
            ("*.email", "partial"),
            ("users.email", "null"),
            ("public.users.email", "hash"),
            ("*.*.ssn", "redact"),
        ],
        key: Some(b"k"),
        ..DEFAULT
    });
    assert!(e.has_column_rules() && !e.has_detectors());
    let users = Some(("public", "users"));
    assert_eq!(
        e.column_rule(users, "email"),
        Some((Strategy::Hash, "public.users.email"))
    );
    assert_eq!(
        e.column_rule(Some(("PUBLIC", "USERS")), "Email"),
        Some((Strategy::Hash, "public.users.email"))
    );
    assert_eq!(
        e.column_rule(Some(("crm", "users")), "email"),
        Some((Strategy::Null, "users.email"))
    );
    assert_eq!(
        e.column_rule(Some(("crm", "leads")), "email"),
        Some((Strategy::Partial, "*.email"))
    );
    // Without a table only the name-only forms apply, most specific first.
    assert_eq!(
        e.column_rule(None, "EMAIL"),
        Some((Strategy::Partial, "*.email"))
    );
    assert_eq!(
        e.column_rule(None, "ssn"),
        Some((Strategy::Redact, "*.*.ssn"))
    );
    assert_eq!(e.column_rule(users, "name"), None);
    let mut patterns = e.column_patterns();
    patterns.sort_unstable();
    assert_eq!(
        patterns,
        [
            "*.*.ssn",
            "*.email",
            "email",
            "public.users.email",
            "users.email"
        ]
    );
}

#[test]
fn config_errors_name_the_value_and_choices() {
    let err = |s: Setup| build(s).err().map(|e| e.to_string()).unwrap_or_default();
    let e = err(Setup {
        detectors: &["emial"],
        ..DEFAULT
    });
    assert!(e.contains("\"emial\"") && e.contains("credit_card"), "{e}");
    let e = err(Setup {
        strategy: Some("shred"),
        ..DEFAULT
    });
    assert!(
        e.contains("\"shred\"") && e.contains("redact, partial, hash, null"),
        "{e}"
    );
    let e = err(Setup {
        columns: &[("users.ssn", "blank")],
        ..DEFAULT
    });
    assert!(
        e.contains("\"users.ssn\"") && e.contains("\"blank\"") && e.contains("partial"),
        "{e}"
    );
    let e = err(Setup {
        columns: &[("a.b.c.d", "redact")],
        ..DEFAULT
    });
    assert!(
        e.contains("\"a.b.c.d\"") && e.contains("schema.table.column"),
        "{e}"
    );
    let e = err(Setup {
        custom: &[("badge", "B-[0-9")],
        ..DEFAULT
    });
    assert!(e.contains("\"badge\"") && e.contains("unclosed"), "{e}");
    let e = err(Setup {
        custom: &[("badge", "x*")],
        ..DEFAULT
    });
    assert!(e.contains("empty string"), "{e}");
    let e = err(Setup {
        custom: &[("email", "x+")],
        ..DEFAULT
    });
    assert!(e.contains("\"email\"") && e.contains("built-in"), "{e}");
    let e = err(Setup {
        custom: &[("my badge", "x+")],
        ..DEFAULT
    });
    assert!(e.contains("\"my badge\""), "{e}");
    let e = err(Setup {
        columns: &[("users.ssn", "hash")],
        ..DEFAULT
    });
    assert!(e.contains("users.ssn") && e.contains("hash_key"), "{e}");
    let e = err(Setup {
        strategy: Some("hash"),
        ..DEFAULT
    });
    assert!(e.contains("detector_strategy"), "{e}");
    // Hash with no detectors at all needs no key.
    assert!(build(Setup {
        detectors: &[],
        strategy: Some("hash"),
        ..DEFAULT
    })
    .is_ok());
    assert_eq!("Partial".parse::<Strategy>().ok(), Some(Strategy::Partial));
}

#[test]
fn invalid_utf8_is_kept_and_valid_runs_are_scanned() {
    let e = engine(DEFAULT);
    let mut counts = Counts::default();
    let out = e.mask_text(b"\xff\xfejo@example.com \xc3 ok", &mut counts);
    assert_eq!(out.as_deref(), Some(&b"\xff\xfe[EMAIL] \xc3 ok"[..]));
    assert_eq!(e.mask_text(b"\xff plain \xfe", &mut counts), None);
}

#[test]
fn engine_is_shareable() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Engine>();
}

#[test]
fn counts_merge() {
    let mut a = Counts::default();
    assert!(a.is_empty());
    a.add("email", 2);
    let mut b = Counts::default();
    b.add("email", 1);
    b.add("column:ssn", 3);
    a.merge(&b);
    assert_eq!(
        a.0,
        BTreeMap::from([("column:ssn".into(), 3), ("email".into(), 3)])
    );
}

/// A Luhn-valid 16-digit Visa number built from 15 random digits.
fn visa(body: &[u8]) -> String {
    let mut digits: Vec<u8> = std::iter::once(4)
        .chain(body.iter().map(|d| d % 10))
        .take(15)
        .collect();
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 0 {
                if d * 2 > 9 {
                    d * 2 - 9
                } else {
                    d * 2
                }
            } else {
                d
            }
        })
        .sum();
    digits.push(((10 - sum % 10) % 10) as u8);
    digits.iter().map(|d| char::from(b'0' + d)).collect()
}

fn invalid_parts(bytes: &[u8]) -> Vec<&[u8]> {
    bytes
        .utf8_chunks()
        .map(|c| c.invalid())
        .filter(|i| !i.is_empty())
        .collect()
}

proptest! {
    #[test]
    fn never_panics_and_keeps_invalid_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut counts = Counts::default();
        if let Some(out) = engine(DEFAULT).mask_text(&bytes, &mut counts) {
            prop_assert_eq!(invalid_parts(&out), invalid_parts(&bytes));
            prop_assert!(!counts.is_empty());
        }
    }

    #[test]
    fn valid_utf8_stays_valid(text in any::<String>()) {
        let mut counts = Counts::default();
        if let Some(out) = engine(DEFAULT).mask_text(text.as_bytes(), &mut counts) {
            prop_assert!(std::str::from_utf8(&out).is_ok());
        }
    }

    /// The ASCII shortcut of the partial strategy stars what the
    /// character walk stars: compared through a non-ASCII twin of the value.
    #[test]
    fn partial_ascii_matches_the_character_walk(v in "[a-z0-9@. -]{0,24}", keep_domain in any::<bool>()) {
        let mut ascii = Vec::new();
        push_partial(&mut ascii, v.as_bytes(), keep_domain);
        // 'é' for 'e' keeps the character count and forces the general path.
        let twin = v.replace('e', "é");
        let mut walked = Vec::new();
        push_partial(&mut walked, twin.as_bytes(), keep_domain);
        prop_assert_eq!(String::from_utf8(ascii).unwrap().replace('e', "é"), String::from_utf8(walked).unwrap());
    }

    #[test]
    fn trigger_heavy_text_is_safe(text in "[a-zA-Z0-9@.:+ ()\\-_/=]{0,300}", partial in any::<bool>()) {
        let strategy = Some(if partial { "partial" } else { "redact" });
        let mut counts = Counts::default();
        if let Some(out) = engine(Setup { strategy, ..DEFAULT }).mask_text(text.as_bytes(), &mut counts) {
            prop_assert!(std::str::from_utf8(&out).is_ok());
            prop_assert!(out != text.as_bytes());
        }
    }

    #[test]
    fn clean_letters_are_untouched(text in "[a-zA-Z ]{0,300}") {
        let mut counts = Counts::default();
        prop_assert_eq!(engine(DEFAULT).mask_text(text.as_bytes(), &mut counts), None);
        prop_assert!(counts.is_empty());
    }

    #[test]
    fn embedded_cards_are_hidden(words in "[a-z ]{0,40}", body in proptest::collection::vec(0u8..10, 15)) {
        let card = visa(&body);
        let text = format!("{words} {card} {words}");
        prop_assert_eq!(mask(&text), format!("{words} [CREDIT_CARD] {words}"));
    }
}

#[test]
fn adversarial_input_stays_linear() {
    // Each would be quadratic with a naive per-trigger search; 256 KiB of it
    // finishing at all (in a debug build) is the assertion.
    let e = engine(DEFAULT);
    for unit in [
        "-----BEGIN PRIVATE KEY-----",
        "a@",
        "a:",
        "eyJ.",
        "1-",
        "DE89 ",
        "AKIA",
        "1.1.",
    ] {
        let text = unit.repeat((256 << 10) / unit.len());
        let mut counts = Counts::default();
        let _ = e.mask_text(text.as_bytes(), &mut counts);
    }
    let many_begins = format!(
        "{}\n-----END PRIVATE KEY-----",
        "-----BEGIN PRIVATE KEY-----\n".repeat(2000)
    );
    // No base64 between the markers: each header is hidden on its own.
    assert!(!mask(&many_begins).contains("BEGIN PRIVATE KEY"));
    let long_local = format!("{}@example.com", "a".repeat(256 << 10));
    assert_eq!(mask(&long_local), "[EMAIL]");
}

#[test]
fn counts_move_into_zeroes_and_keeps_keys() {
    let mut rows = Counts::default();
    rows.add("email", 2);
    rows.add("column:t.ssn", 1);
    let mut first = Counts::default();
    rows.move_into(&mut first);
    assert_eq!(
        first.0,
        BTreeMap::from([("column:t.ssn".into(), 1), ("email".into(), 2)])
    );
    // Keys stay (no new strings for the next rows); only non-zero counts move.
    assert_eq!(rows.0.len(), 2);
    rows.add("email", 1);
    let mut second = Counts::default();
    rows.move_into(&mut second);
    assert_eq!(second.0, BTreeMap::from([("email".into(), 1)]));
}
