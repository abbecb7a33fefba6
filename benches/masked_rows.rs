//! The gateway's real DataRow masking (`masking::data_row`) per row, on the
//! rows of `scripts/bench.sh pg`'s masked script and on rows masking leaves
//! alone:
//! - `masked_script`: `select id, email, card, note from pii` with the
//!   bench's connection config (detectors email, credit_card, phone; column
//!   rule `pii.card = partial`): every row has three values to rewrite;
//! - `clean_rows`: the same columns and detectors, text no detector
//!   matches and no column rule: rows pass unchanged.
//!
//! Run: cargo bench --bench masked_rows -- --warm-up-time 1 --measurement-time 3
//! Criterion prints time per row (throughput in rows).

use std::collections::BTreeMap;

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use custody::mask::{Counts, Engine, EngineConfig, Strategy};
use custody::protocol::postgres::masking::{data_row, ColMask};

const ROWS: usize = 1000;

fn engine() -> Engine {
    let detectors: Vec<String> = ["email", "credit_card", "phone"]
        .iter()
        .map(|d| d.to_string())
        .collect();
    let columns: BTreeMap<String, String> = [("pii.card".to_string(), "partial".to_string())]
        .into_iter()
        .collect();
    Engine::new(&EngineConfig {
        detectors: &detectors,
        custom: &BTreeMap::new(),
        columns: &columns,
        detector_strategy: None,
        hash_key: None,
    })
    .expect("valid bench config")
}

/// DataRow bodies (column count, then length + bytes per value).
fn body(values: &[String]) -> Vec<u8> {
    let mut b = (values.len() as i16).to_be_bytes().to_vec();
    for v in values {
        b.extend_from_slice(&(v.len() as i32).to_be_bytes());
        b.extend_from_slice(v.as_bytes());
    }
    b
}

/// What the masked script's query returns (bench.sh's `pii` table).
fn script_rows() -> Vec<Vec<u8>> {
    (1..=ROWS)
        .map(|i| {
            body(&[
                i.to_string(),
                format!("user{i}@example.com"),
                "4111-1111-1111-1111".into(),
                format!("call (415) 555-0{:03} after 5pm", i % 1000),
            ])
        })
        .collect()
}

fn clean_rows() -> Vec<Vec<u8>> {
    (1..=ROWS)
        .map(|i| {
            body(&[
                i.to_string(),
                format!("customer {i} of the west region"),
                "shipped".into(),
                format!("left at the door after {} minutes", i % 60),
            ])
        })
        .collect()
}

fn col(type_oid: u32, rule: Option<(Strategy, &str)>) -> ColMask {
    ColMask {
        rule: rule.map(|(s, p)| (s, p.to_string())),
        binary: false,
        type_oid,
    }
}

fn rows(c: &mut Criterion) {
    let engine = engine();
    let text = 25;
    let script = vec![
        col(23, None),
        col(text, None),
        col(text, Some((Strategy::Partial, "pii.card"))),
        col(text, None),
    ];
    let clean = vec![
        col(23, None),
        col(text, None),
        col(text, None),
        col(text, None),
    ];
    let mut g = c.benchmark_group("masked_rows");
    g.throughput(Throughput::Elements(ROWS as u64));
    for (name, input, masks, changed) in [
        ("masked_script", script_rows(), script, true),
        ("clean_rows", clean_rows(), clean, false),
    ] {
        let mut out = BytesMut::with_capacity(1 << 20);
        // The rows are what they claim: all rewritten, or all passed as they were.
        for r in &input {
            out.clear();
            data_row(r, Some(&masks), &engine, &mut Counts::default(), &mut out).expect("a row");
            assert_eq!(out[5..] != r[..], changed, "{name}");
        }
        g.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                let mut counts = Counts::default();
                for r in &input {
                    let _ = data_row(black_box(r), Some(&masks), &engine, &mut counts, &mut out);
                }
                black_box(out.len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, rows);
criterion_main!(benches);
