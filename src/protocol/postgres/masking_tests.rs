//! Tests of the wire masking: frame rewrites, DETAIL, COPY plans, well-formed frames under proptest.

use super::*;
use crate::mask::EngineConfig;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn engine() -> Engine {
    let detectors: Vec<String> = ["email", "credit_card", "us_ssn", "phone"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let columns: BTreeMap<String, String> =
        [("ssn", "redact"), ("age", "null"), ("*.email", "partial")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
    let custom = BTreeMap::new();
    Engine::new(&EngineConfig {
        detectors: &detectors,
        custom: &custom,
        columns: &columns,
        detector_strategy: None,
        hash_key: None,
    })
    .unwrap()
}

fn row(values: &[Option<&[u8]>]) -> Vec<u8> {
    let mut b = (values.len() as i16).to_be_bytes().to_vec();
    for v in values {
        match v {
            Some(v) => {
                b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                b.extend_from_slice(v);
            }
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    b
}

/// Splits a 'D' frame back into values, checking every length.
fn values(frame: &[u8]) -> Vec<Option<Vec<u8>>> {
    assert_eq!(frame[0], b'D');
    let len = i32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
    assert_eq!(len + 1, frame.len(), "frame length field matches the bytes");
    let mut rest = &frame[5..];
    let n = rest.get_i16();
    let mut out = Vec::new();
    for _ in 0..n {
        let l = rest.get_i32();
        if l < 0 {
            out.push(None);
        } else {
            out.push(Some(rest[..l as usize].to_vec()));
            rest = &rest[l as usize..];
        }
    }
    assert!(rest.is_empty());
    out
}

#[test]
fn data_row_masks_by_column_and_detector() {
    let e = engine();
    let cat = Catalog::default();
    let cols = vec![
        Col {
            name: "ssn".into(),
            table_oid: 0,
            attnum: 0,
            type_oid: 25,
            format: 0,
        },
        Col {
            name: "note".into(),
            table_oid: 0,
            attnum: 0,
            type_oid: 25,
            format: 0,
        },
        Col {
            name: "age".into(),
            table_oid: 0,
            attnum: 0,
            type_oid: 23,
            format: 1,
        },
        Col {
            name: "id".into(),
            table_oid: 0,
            attnum: 0,
            type_oid: 23,
            format: 1,
        },
    ];
    let masks = resolve(&cols, &e, &cat);
    let body = row(&[
        Some(b"123-45-6789"),
        Some(b"mail ada@example.com"),
        Some(&[0, 0, 0, 7]),
        Some(&[0, 0, 0, 9]),
    ]);
    let mut out = BytesMut::new();
    let mut counts = Counts::default();
    data_row(&body, Some(&masks), &e, &mut counts, &mut out).unwrap();
    let v = values(&out);
    assert_eq!(v[0].as_deref(), Some(&b"[REDACTED]"[..]));
    assert_eq!(v[1].as_deref(), Some(&b"mail [EMAIL]"[..]));
    assert_eq!(v[2], None, "binary int under a rule becomes NULL");
    assert_eq!(
        v[3].as_deref(),
        Some(&[0u8, 0, 0, 9][..]),
        "other binary values pass untouched"
    );
    assert_eq!(counts.0.get("email"), Some(&1));
}

#[test]
fn unique_violation_detail_loses_its_values() {
    let e = engine();
    let mut body = Vec::new();
    for (f, v) in [
        (b'S', "ERROR"),
        (b'C', "23505"),
        (b'M', "duplicate key"),
        (b'D', "Key (email)=(someone) already exists."),
    ] {
        body.push(f);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = BytesMut::new();
    notice(b'E', &body, &e, &mut Counts::default(), &mut out);
    let (code, _) = super::super::codec::error_fields(&out[5..]);
    assert_eq!(code, "23505");
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.contains("Key (email)=([REDACTED]) already exists.") && !text.contains("someone"),
        "{text}"
    );
}

proptest! {
    #[test]
    fn masked_rows_are_well_formed(vals in proptest::collection::vec(proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)), 0..8), text in "[a-z0-9@. -]{0,40}") {
        let e = engine();
        let mut vals = vals;
        vals.push(Some(text.into_bytes()));
        let refs: Vec<Option<&[u8]>> = vals.iter().map(|v| v.as_deref()).collect();
        let body = row(&refs);
        let mut out = BytesMut::new();
        data_row(&body, None, &e, &mut Counts::default(), &mut out).unwrap();
        prop_assert_eq!(values(&out).len(), vals.len());
    }

    /// Copying a row whole and rebuilding from its first changed value
    /// gives the bytes that rebuilding every row gave (the old way).
    #[test]
    fn rows_copied_whole_match_rows_rebuilt(vals in proptest::collection::vec(proptest::option::of("[a-z0-9@. ()-]{0,30}"), 0..6), tail in proptest::collection::vec(any::<u8>(), 0..3), ruled in any::<bool>(), odd_null in proptest::option::of(0usize..6)) {
        let e = engine();
        let refs: Vec<Option<&[u8]>> = vals.iter().map(|v| v.as_deref().map(str::as_bytes)).collect();
        let mut body = row(&refs);
        // A NULL spelled with another negative length (-5): PostgreSQL never
        // sends one; it must reach the client as -1, as a rebuilt row had it.
        if let Some(k) = odd_null.filter(|k| *k < vals.len() && vals[*k].is_none()) {
            let at = 2 + vals[..k].iter().map(|v| 4 + v.as_ref().map_or(0, |s| s.len())).sum::<usize>();
            body[at..at + 4].copy_from_slice(&(-5i32).to_be_bytes());
        }
        body.extend_from_slice(&tail);
        let col = |name: &str| Col { name: name.into(), table_oid: 0, attnum: 0, type_oid: 25, format: 0 };
        let cols: Vec<Col> = (0..vals.len()).map(|i| col(if ruled && i == 1 { "ssn" } else { "note" })).collect();
        let masks = resolve(&cols, &e, &Catalog::default());
        let mut ours = BytesMut::new();
        data_row(&body, Some(&masks), &e, &mut Counts::default(), &mut ours).unwrap();
        prop_assert_eq!(&ours[..], &rebuilt(&body, &masks, &e)[..]);
    }

    #[test]
    fn garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..200)) {
        let e = engine();
        let mut out = BytesMut::new();
        let _ = data_row(&body, None, &e, &mut Counts::default(), &mut out);
        let mut out = BytesMut::new();
        copy_row(&body, None, &e, &mut Counts::default(), &mut out);
        let len = i32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
        prop_assert_eq!(len + 1, out.len());
        let mut out = BytesMut::new();
        notice(b'N', &body, &e, &mut Counts::default(), &mut out);
        let len = i32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
        prop_assert_eq!(len + 1, out.len());
    }
}

/// A row cut short is an error that leaves nothing of it in `out`: the
/// whole-frame copy is taken back, so no unmasked value can follow.
#[test]
fn a_malformed_row_leaves_out_as_it_was() {
    let e = engine();
    let mut body = row(&[Some(b"ada@example.com"), Some(b"x")]);
    body.truncate(body.len() - 3);
    let mut out = BytesMut::from(&b"before"[..]);
    assert!(data_row(&body, None, &e, &mut Counts::default(), &mut out).is_err());
    assert_eq!(&out[..], b"before");
}

/// Every value rewritten into a new frame: what `data_row` did before it
/// copied unchanged rows whole.
fn rebuilt(body: &[u8], masks: &[ColMask], e: &Engine) -> BytesMut {
    let mut rest = body;
    let n = rest.get_i16();
    let mut out = BytesMut::new();
    out.put_u8(b'D');
    out.put_i32(0);
    out.put_i16(n);
    for i in 0..n.max(0) as usize {
        let len = rest.get_i32();
        if len < 0 {
            out.put_i32(-1);
            continue;
        }
        let (v, tail) = rest.split_at(len as usize);
        rest = tail;
        match mask_one(v, masks.get(i), e, &mut Counts::default()) {
            None => {
                out.put_i32(len);
                out.put_slice(v);
            }
            Some(None) => out.put_i32(-1),
            Some(Some(m)) => {
                out.put_i32(m.len() as i32);
                out.put_slice(&m);
            }
        }
    }
    let total = (out.len() - 1) as i32;
    out[1..5].copy_from_slice(&total.to_be_bytes());
    out
}

#[test]
fn masked_values_stay_values_of_their_type_or_become_null() {
    let e = engine();
    let col = |name: &str, type_oid: u32| Col {
        name: name.into(),
        table_oid: 0,
        attnum: 0,
        type_oid,
        format: 0,
    };
    // inet (869), uuid (2950), text[] (1009), json (114), text (25), int (23) under a rule.
    let cols = vec![
        col("addr", 869),
        col("tags", 1009),
        col("doc", 114),
        col("doc_bad", 114),
        col("note", 25),
        col("ssn", 23),
    ];
    let masks = resolve(&cols, &e, &Catalog::default());
    let body = row(&[
        Some(b"ada@example.com"),
        Some(b"{ada@example.com,x}"),
        Some(br#"{"to": "ada@example.com"}"#),
        Some(br#"{"ada@example.com": 1}"#),
        Some(b"mail ada@example.com"),
        Some(b"123456789"),
    ]);
    let mut out = BytesMut::new();
    let mut counts = Counts::default();
    data_row(&body, Some(&masks), &e, &mut counts, &mut out).unwrap();
    let v = values(&out);
    assert_eq!(
        v[0], None,
        "a non-text value a detector matched becomes NULL"
    );
    assert_eq!(
        v[1], None,
        "an array of text too: its masked text may not parse"
    );
    let doc: serde_json::Value = serde_json::from_slice(v[2].as_deref().unwrap()).unwrap();
    assert_eq!(doc["to"], "[EMAIL]", "json stays json");
    assert!(
        v[3].as_deref()
            .is_none_or(|d| serde_json::from_slice::<serde_json::Value>(d).is_ok()),
        "json is valid or NULL"
    );
    assert_eq!(v[4].as_deref(), Some(&b"mail [EMAIL]"[..]));
    assert_eq!(
        v[5], None,
        "a ruled int column is NULL, not text its parser rejects"
    );
}

#[test]
fn blank_sql_masks_to_itself() {
    let e = engine();
    for blank in ["", "   ", "\n\t"] {
        assert_eq!(sql(&e, blank, &mut Counts::default()), blank);
    }
}

fn binary(type_oid: u32) -> ColMask {
    ColMask {
        rule: None,
        binary: true,
        type_oid,
    }
}

/// Drivers that ask for binary results (asyncpg) get arrays, records and
/// inet masked as text format masks them: a detector match makes the
/// value NULL; fixed-format scalars are never touched.
#[test]
fn binary_arrays_records_and_inet_are_seen_by_detectors() {
    let detectors: Vec<String> = ["email", "ip_address", "credit_card"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let (columns, custom) = (BTreeMap::new(), BTreeMap::new());
    let e = Engine::new(&EngineConfig {
        detectors: &detectors,
        custom: &custom,
        columns: &columns,
        detector_strategy: None,
        hash_key: None,
    })
    .unwrap();
    let mut c = Counts::default();
    // text[] {'a@example.com'}: header, element oid 25, one element.
    let mut arr = vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 25, 0, 0, 0, 1, 0, 0, 0, 1];
    arr.extend_from_slice(&13i32.to_be_bytes());
    arr.extend_from_slice(b"a@example.com");
    assert_eq!(mask_one(&arr, Some(&binary(1009)), &e, &mut c), Some(None));
    // record ('a@example.com', 1): two fields.
    let mut rec = 2i32.to_be_bytes().to_vec();
    rec.extend_from_slice(&25u32.to_be_bytes());
    rec.extend_from_slice(&13i32.to_be_bytes());
    rec.extend_from_slice(b"a@example.com");
    rec.extend_from_slice(&23u32.to_be_bytes());
    rec.extend_from_slice(&4i32.to_be_bytes());
    rec.extend_from_slice(&1i32.to_be_bytes());
    assert_eq!(mask_one(&rec, Some(&binary(2249)), &e, &mut c), Some(None));
    // inet 10.11.12.13/32 in binary.
    let inet = [2u8, 32, 0, 4, 10, 11, 12, 13];
    assert_eq!(mask_one(&inet, Some(&binary(869)), &e, &mut c), Some(None));
    // A card number in a bigint, as asyncpg and pgjdbc read it in binary.
    let card = 4111111111111111i64.to_be_bytes();
    assert_eq!(mask_one(&card, Some(&binary(20)), &e, &mut c), Some(None));
    // A value whose width is not its described type's is scanned as bytes.
    assert_eq!(
        mask_one(b"a@example.com", Some(&binary(16)), &e, &mut c),
        Some(None)
    );
    // Text under a stale or re-bound description, exactly as wide as the
    // type it is said to be: still seen by the detectors.
    for (oid, v) in [
        (2950u32, &b"alice@example.co"[..]),
        (20, b"b@cd.efg"),
        (1114, b"b@cd.efg"),
        (1186, b"alice@example.co"),
    ] {
        assert_eq!(
            mask_one(v, Some(&binary(oid)), &e, &mut c),
            Some(None),
            "oid {oid}"
        );
    }
    // An array without a match, and fixed-format scalars, pass untouched.
    let mut clean = arr[..20].to_vec();
    clean.extend_from_slice(&13i32.to_be_bytes());
    clean.extend_from_slice(b"nothing here!");
    assert_eq!(mask_one(&clean, Some(&binary(1009)), &e, &mut c), None);
    for (oid, v) in [(23u32, &[10u8, 11, 12, 13][..]), (2950, &[0x61; 16][..])] {
        assert_eq!(
            mask_one(v, Some(&binary(oid)), &e, &mut c),
            None,
            "oid {oid}"
        );
    }
}
