//! Masking engine on realistic DataRow streams (one core):
//! - `column_rules/no_flagged_columns`: the per-row path when the
//!   RowDescription has no masked column: check the precomputed rule per
//!   column, copy values, rebuild the frame;
//! - `detectors/clean_*`: detector scanning of PII-free text values
//!   (log lines, names, addresses, product descriptions), per value as the
//!   relay calls it and as one 1 MiB blob;
//! - `detectors/pii_5pct_values`: the same with ~5% of values holding PII.
//!
//! Run: cargo bench --bench mask -- --warm-up-time 1 --measurement-time 3

use std::collections::BTreeMap;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use custody::mask::{Counts, Engine, EngineConfig, Strategy};

const TARGET_BYTES: usize = 1 << 20;

const DETECTORS: [&str; 10] = [
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

/// Deterministic xorshift, so every run scans the same text.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const FIRST: &[&str] = &[
    "Olivia", "Liam", "Emma", "Noah", "Ava", "Mateo", "Sofia", "Lucas", "Amelia", "Hiroshi", "Zoë",
    "José",
];
const LAST: &[&str] = &[
    "Smith", "García", "Nguyen", "Müller", "Johnson", "Okafor", "Rossi", "Kowalski", "Brown",
    "Tanaka",
];
const STREETS: &[&str] = &[
    "Maple",
    "Oak",
    "Cedar",
    "Elm",
    "Pine",
    "Lakeview",
    "Hillcrest",
    "Sunset",
    "Main",
    "Washington",
];
const SUFFIX: &[&str] = &[
    "Street",
    "Avenue",
    "Road",
    "Lane",
    "Boulevard",
    "Drive",
    "Court",
];
const CITIES: &[&str] = &[
    "Springfield, IL",
    "Portland, OR",
    "Austin, TX",
    "Denver, CO",
    "Madison, WI",
    "Raleigh, NC",
];
const PRODUCTS: &[&str] = &[
    "water bottle",
    "trail backpack",
    "desk lamp",
    "wool sweater",
    "coffee grinder",
    "yoga mat",
];
const ADJ: &[&str] = &[
    "Stainless steel",
    "Lightweight",
    "Hand-crafted",
    "Ergonomic",
    "Recycled",
    "Premium",
];
const SERVICES: &[&str] = &[
    "orders-api",
    "billing-worker",
    "auth-gateway",
    "search-indexer",
    "cart-service",
];
const PATHS: &[&str] = &[
    "/api/v1/orders",
    "/api/v1/cart/items",
    "/healthz",
    "/api/v2/search",
    "/api/v1/users/me",
];

fn log_line(r: &mut Rng) -> String {
    format!(
        "2024-03-{:02}T{:02}:{:02}:{:02}.{:03}Z INFO {} pod={}-7d9f8b6c5-x2k4q request_id={:08x}-{:04x}-4{:03x}-a{:03x}-{:012x} \
         method=GET path={}/{} status={} duration_ms={}.{} version=1.{}.{}",
        r.below(28) + 1,
        r.below(24),
        r.below(60),
        r.below(60),
        r.below(1000),
        r.pick(SERVICES),
        r.pick(SERVICES),
        r.next() as u32,
        r.next() as u16,
        r.below(0x1000),
        r.below(0x1000),
        r.next() & 0xffff_ffff_ffff,
        r.pick(PATHS),
        r.below(100_000),
        r.pick(&["200", "201", "204", "404", "500"]),
        r.below(900),
        r.below(100),
        r.below(40),
        r.below(20),
    )
}

fn clean_value(r: &mut Rng) -> String {
    match r.below(4) {
        0 => log_line(r),
        1 => format!("{} {}", r.pick(FIRST), r.pick(LAST)),
        2 => format!(
            "{} {} {}, Apt {}, {} {:05}",
            r.below(9000) + 100,
            r.pick(STREETS),
            r.pick(SUFFIX),
            r.below(400),
            r.pick(CITIES),
            r.below(99_999)
        ),
        _ => format!(
            "{} {}, {} ml, keeps drinks cold for {} hours. Rated {}.{} by {} customers; ships in {}-{} days. SKU AB-{}-XL.",
            r.pick(ADJ),
            r.pick(PRODUCTS),
            r.below(1000) + 100,
            r.below(48),
            r.below(5),
            r.below(10),
            r.below(5000),
            r.below(3) + 1,
            r.below(4) + 4,
            r.below(100_000)
        ),
    }
}

fn pii_value(r: &mut Rng) -> String {
    let name = format!("{} {}", r.pick(FIRST), r.pick(LAST));
    let pii = match r.below(8) {
        0 => format!("{}.{}@example.com", r.pick(STREETS).to_lowercase(), r.below(1000)),
        1 => "4111 1111 1111 1111".to_owned(),
        2 => format!("(415) 555-{:04}", r.below(10_000)),
        3 => format!("{:03}-{:02}-{:04}", r.below(600) + 100, r.below(90) + 10, r.below(9000) + 1000),
        4 => format!("10.{}.{}.{}", r.below(256), r.below(256), r.below(256)),
        5 => "DE89 3704 0044 0532 0130 00".to_owned(),
        6 => "AKIAIOSFODNN7EXAMPLE".to_owned(),
        _ => "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
            .to_owned(),
    };
    format!("{name} contact {pii} noted by support")
}

/// About 1 MiB of text values; `pii_percent` of them hold one PII value.
fn values(pii_percent: u64) -> Vec<Vec<u8>> {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let mut out = Vec::new();
    let mut total = 0;
    while total < TARGET_BYTES {
        let v = if r.below(100) < pii_percent {
            pii_value(&mut r)
        } else {
            clean_value(&mut r)
        };
        total += v.len();
        out.push(v.into_bytes());
    }
    out
}

fn engine(columns: &BTreeMap<String, String>) -> Engine {
    let detectors: Vec<String> = DETECTORS.iter().map(|d| d.to_string()).collect();
    let custom = BTreeMap::new();
    Engine::new(&EngineConfig {
        detectors: &detectors,
        custom: &custom,
        columns,
        detector_strategy: None,
        hash_key: Some(b"bench-key"),
    })
    .expect("valid bench config")
}

/// DataRow frames ('D', i32 length, i16 column count, per column i32 length + bytes) for `orders` rows.
fn data_rows() -> Vec<u8> {
    let mut r = Rng(42);
    let mut buf = Vec::new();
    while buf.len() < TARGET_BYTES {
        let cols = [
            format!("{}", r.below(10_000_000)),
            format!("{}", r.below(100_000)),
            r.pick(&["pending", "paid", "shipped", "delivered", "refunded"])
                .to_owned(),
            format!("{}.{:02}", r.below(2000), r.below(100)),
            "USD".to_owned(),
            format!(
                "2024-03-{:02} {:02}:{:02}:{:02}.{:06}+00",
                r.below(28) + 1,
                r.below(24),
                r.below(60),
                r.below(60),
                r.below(1_000_000)
            ),
            format!(
                "{} {} {}, {}",
                r.below(9000) + 100,
                r.pick(STREETS),
                r.pick(SUFFIX),
                r.pick(CITIES)
            ),
            clean_value(&mut r),
        ];
        let body_len: usize = 4 + 2 + cols.iter().map(|c| 4 + c.len()).sum::<usize>();
        buf.push(b'D');
        buf.extend_from_slice(&(body_len as i32).to_be_bytes());
        buf.extend_from_slice(&(cols.len() as i16).to_be_bytes());
        for c in &cols {
            buf.extend_from_slice(&(c.len() as i32).to_be_bytes());
            buf.extend_from_slice(c.as_bytes());
        }
    }
    buf
}

fn read_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The relay's per-row work: walk the columns, mask those with a rule, copy the
/// rest, write the frame with its recomputed length.
fn relay_rows(
    engine: &Engine,
    rules: &[Option<(Strategy, &str)>],
    input: &[u8],
    out: &mut Vec<u8>,
    counts: &mut Counts,
) {
    let mut at = 0;
    while at < input.len() {
        let frame_len = read_i32(input, at + 1) as usize;
        let ncols = i16::from_be_bytes([input[at + 5], input[at + 6]]) as usize;
        let frame_start = out.len();
        out.push(b'D');
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&input[at + 5..at + 7]);
        let mut p = at + 7;
        for rule in rules.iter().take(ncols) {
            let len = read_i32(input, p);
            p += 4;
            let value = (len >= 0).then(|| &input[p..p + len as usize]);
            p += len.max(0) as usize;
            let masked;
            let value = match (rule, value) {
                (Some((strategy, pattern)), Some(v)) => {
                    masked = engine.mask_value(v, *strategy, pattern, counts);
                    masked.as_deref()
                }
                (_, v) => v,
            };
            match value {
                Some(v) => {
                    out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    out.extend_from_slice(v);
                }
                None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        let len = (out.len() - frame_start - 1) as i32;
        out[frame_start + 1..frame_start + 5].copy_from_slice(&len.to_be_bytes());
        at += 1 + frame_len;
    }
}

fn column_rules(c: &mut Criterion) {
    let columns: BTreeMap<String, String> = [
        ("public.users.ssn", "redact"),
        ("*.email", "partial"),
        ("public.payments.card_number", "hash"),
        ("*.*.password", "null"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let engine = engine(&columns);
    let names = [
        "id",
        "customer_id",
        "status",
        "total",
        "currency",
        "created_at",
        "shipping_address",
        "notes",
    ];
    // Once per RowDescription.
    let rules: Vec<Option<(Strategy, &str)>> = names
        .iter()
        .map(|n| engine.column_rule(Some(("public", "orders")), n))
        .collect();
    assert!(rules.iter().all(Option::is_none));
    let input = data_rows();
    let mut out = Vec::with_capacity(input.len());
    relay_rows(&engine, &rules, &input, &mut out, &mut Counts::default());
    assert!(out == input, "unflagged rows must pass through unchanged");
    let mut g = c.benchmark_group("column_rules");
    g.throughput(Throughput::Bytes(input.len() as u64));
    g.bench_function("no_flagged_columns", |b| {
        b.iter(|| {
            out.clear();
            let mut counts = Counts::default();
            relay_rows(&engine, &rules, black_box(&input), &mut out, &mut counts);
            black_box(out.len())
        })
    });
    g.finish();
}

fn detectors(c: &mut Criterion) {
    let engine = engine(&BTreeMap::new());
    let mut g = c.benchmark_group("detectors");
    for (name, pii_percent) in [("clean_values", 0), ("pii_5pct_values", 5)] {
        let vals = values(pii_percent);
        // The corpus is what it claims: no hit in clean text, ~5% of values otherwise.
        let masked = vals
            .iter()
            .filter(|v| engine.mask_text(v, &mut Counts::default()).is_some());
        let share = masked.count() * 100 / vals.len();
        assert!(
            share.abs_diff(pii_percent as usize) <= 1,
            "{name}: {share}% masked"
        );
        g.throughput(Throughput::Bytes(vals.iter().map(|v| v.len() as u64).sum()));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut counts = Counts::default();
                let mut masked = 0;
                for v in &vals {
                    masked += usize::from(engine.mask_text(black_box(v), &mut counts).is_some());
                }
                black_box(masked)
            })
        });
    }
    let blob = values(0).join(&b'\n');
    g.throughput(Throughput::Bytes(blob.len() as u64));
    g.bench_function("clean_blob_1mib", |b| {
        b.iter(|| {
            let mut counts = Counts::default();
            black_box(engine.mask_text(black_box(&blob), &mut counts).is_some())
        })
    });
    g.finish();
}

criterion_group!(benches, column_rules, detectors);
criterion_main!(benches);
