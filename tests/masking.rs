//! Inline masking on the real PostgreSQL path, against a table of realistic
//! fake PII generated here: simple and extended protocol, text and binary
//! results, COPY TO STDOUT, error DETAIL, exec, exemptions, recordings.

mod support;

use support::*;

fn masked_config() -> String {
    let key = std::env::temp_dir().join("custody-test-mask-key");
    std::fs::write(&key, "test-hmac-key-5b1f").unwrap();
    format!(
        r#"
[connections.masking]
detectors = ["email", "credit_card", "us_ssn", "phone"]
columns = {{ "public.customers.ssn" = "redact", "*.email" = "partial", "customers.age" = "null", "customers.name" = "hash" }}
hash_key = "file:{}"
exempt = ["group:dpo@example.com"]
"#,
        key.display()
    )
}

/// A Luhn-valid 16-digit Visa-like number derived from `i`.
fn card(i: usize) -> String {
    let mut digits: Vec<u32> = format!("4111{:011}", i * 7919)
        .chars()
        .map(|c| c.to_digit(10).unwrap())
        .collect();
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(k, d)| {
            if k % 2 == 0 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                *d
            }
        })
        .sum();
    digits.push((10 - sum % 10) % 10);
    let s: String = digits
        .iter()
        .map(|d| char::from_digit(*d, 10).unwrap())
        .collect();
    format!("{}-{}-{}-{}", &s[0..4], &s[4..8], &s[8..12], &s[12..16])
}

struct Person {
    name: String,
    email: String,
    ssn: String,
    card: String,
    phone: String,
}

fn people() -> Vec<Person> {
    let first = [
        "ada", "alan", "grace", "edsger", "barbara", "donald", "frances", "ken",
    ];
    let last = [
        "lovelace", "turing", "hopper", "dijkstra", "liskov", "knuth", "allen", "thompson",
    ];
    (0..40)
        .map(|i| Person {
            name: format!("{} {}", first[i % 8], last[(i / 8) % 8]),
            email: format!("{}.{}{}@example.com", first[i % 8], last[(i / 8) % 8], i),
            ssn: format!("{:03}-{:02}-{:04}", 123 + i, 45 + i % 40, 6789 + i),
            card: card(i + 1),
            phone: format!("(415) 555-{:04}", 100 + i),
        })
        .collect()
}

fn setup() -> Gateway {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut sql = String::from(
            "create table customers (id int primary key, name text, email text unique, ssn text, card text, note text, age int); ",
        );
        for (i, p) in people().iter().enumerate() {
            sql.push_str(&format!(
                "insert into customers values ({i}, '{}', '{}', '{}', '{}', 'call me at {} or mail {}', {});",
                p.name,
                p.email,
                p.ssn,
                p.card,
                p.phone,
                p.email,
                20 + i
            ));
        }
        sql.push_str("alter table customers owner to app;");
        pg().admin(&sql);
    });
    Gateway::start(&masked_config())
}

/// No clear value of any person appears in `text`.
fn assert_clean(what: &str, text: &str) {
    for p in people() {
        for v in [&p.email, &p.ssn, &p.card] {
            assert!(!text.contains(v.as_str()), "{what} leaks {v}:\n{text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn simple_protocol_text_results() {
    let gw = setup();
    let (_cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let c = pg_client(addr).await;
    let msgs = c
        .simple_query(
            "select id, name, email, ssn, card, note, age from customers order by id limit 5",
        )
        .await
        .unwrap();
    let mut seen = 0;
    for m in &msgs {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            seen += 1;
            let email = r.get(2).unwrap();
            assert!(
                email.ends_with("@example.com") && email.starts_with('*'),
                "partial email: {email}"
            );
            assert_eq!(r.get(3), Some("[REDACTED]"));
            assert_eq!(
                r.get(4),
                Some("[CREDIT_CARD]"),
                "detector on an unruled column"
            );
            let note = r.get(5).unwrap();
            assert!(
                note.contains("[PHONE]") && note.contains("[EMAIL]"),
                "{note}"
            );
            assert_eq!(r.get(6), None, "age has the null rule");
            assert!(
                r.get(1).unwrap().starts_with("hmac:"),
                "hash strategy: {:?}",
                r.get(1)
            );
        }
    }
    assert_eq!(seen, 5);
    // An alias does not hide a catalog column; an expression is caught by detectors.
    let msgs = c
        .simple_query("select ssn as x, email || '' as e from customers limit 1")
        .await
        .unwrap();
    let tokio_postgres::SimpleQueryMessage::Row(r) = &msgs[1] else {
        panic!()
    };
    assert_eq!(r.get(0), Some("[REDACTED]"));
    assert_eq!(r.get(1), Some("[EMAIL]"));
    // Hashing is keyed and deterministic: the same value hashes alike, so joins still work.
    let msgs = c
        .simple_query("select name, name as again from customers where id = 0")
        .await
        .unwrap();
    let tokio_postgres::SimpleQueryMessage::Row(r) = &msgs[1] else {
        panic!()
    };
    assert_eq!(r.get(0), r.get(1));
    assert_ne!(r.get(0), Some(people()[0].name.as_str()));
}

/// Each recorded statement counts its own rows (a Query of two SELECTs is
/// one statement with both tags), none of the one before.
#[tokio::test(flavor = "multi_thread")]
async fn masked_counts_belong_to_their_statement() {
    let gw = setup();
    let (cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let c = pg_client(addr).await;
    c.simple_query("select ssn from customers order by id limit 3; select ssn, 1 as two from customers order by id limit 2")
        .await
        .unwrap();
    c.simple_query("select ssn, 'third' as t from customers order by id limit 4")
        .await
        .unwrap();
    drop(c);
    cli.wait_log("ended");
    let rec = gw.wait_recordings("'third'");
    let counts: Vec<&str> = rec
        .lines()
        .filter(|l| l.contains("\"type\":\"statement\"") && l.contains("ssn"))
        .map(|l| {
            let at = l
                .find("\"masked\":")
                .expect("statement without masked counts");
            let rest = &l[at..];
            &rest[..rest.find('}').unwrap() + 1]
        })
        .collect();
    assert_eq!(
        counts,
        [
            "\"masked\":{\"column:public.customers.ssn\":5}",
            "\"masked\":{\"column:public.customers.ssn\":4}",
        ],
        "{rec}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn extended_protocol_binary_results() {
    let gw = setup();
    let (_cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let c = pg_client(addr).await;
    let st = c
        .prepare("select email, ssn, card, age, id from customers where id < $1 order by id")
        .await
        .unwrap();
    for _ in 0..2 {
        let rows = c.query(&st, &[&3i32]).await.unwrap();
        assert_eq!(rows.len(), 3);
        for r in &rows {
            let email: String = r.get(0);
            assert!(
                email.ends_with("@example.com") && email.starts_with('*'),
                "{email}"
            );
            assert_eq!(r.get::<_, String>(1), "[REDACTED]");
            assert_eq!(r.get::<_, String>(2), "[CREDIT_CARD]");
            assert_eq!(
                r.get::<_, Option<i32>>(3),
                None,
                "binary int with a rule becomes NULL"
            );
            let _: i32 = r.get(4);
        }
    }
    // Unique violation: the DETAIL echoes the key, which must not leak.
    let p = &people()[0];
    let err = c
        .execute(
            "insert into customers (id, email) values (1000, $1)",
            &[&p.email],
        )
        .await
        .unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "23505");
    let detail = db.detail().unwrap_or_default();
    assert!(!detail.contains(&p.email), "{detail}");
    assert!(detail.contains("Key (email)"), "{detail}");
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_out_psql_exec_and_recording() {
    let gw = setup();
    let (cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let (ok, out, err) = psql(
        addr,
        &[
            "-c",
            "copy customers to stdout",
            "-c",
            "select email, ssn from customers order by id limit 2",
        ],
        None,
    );
    assert!(ok, "{err}");
    assert_clean("COPY/psql output", &out);
    assert!(out.contains("[REDACTED]") && out.contains("\\N"), "{out}");
    let (ok, _, err) = psql(
        addr,
        &["-c", "copy (select * from customers) to stdout"],
        None,
    );
    assert!(!ok);
    assert!(err.contains("cannot be masked by column rules"), "{err}");

    let out = std::process::Command::new(bin())
        .args([
            "exec",
            "pg",
            "--format",
            "json",
            "--gateway",
            &gw.url,
            "--",
            "select email, ssn, note from customers",
        ])
        .env("CUSTODY_TOKEN", token("alice@example.com"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let json = String::from_utf8_lossy(&out.stdout);
    assert_clean("exec", &json);
    assert!(json.contains("[REDACTED]"), "{json}");

    // Literal PII in the SQL itself is masked in the recording too.
    let p = &people()[3];
    let c = pg_client(addr).await;
    c.simple_query(&format!(
        "select count(*) from customers where email = '{}'",
        p.email
    ))
    .await
    .unwrap();
    drop(c);
    cli.wait_log("ended");
    let rec = gw.wait_recordings("column:public.customers.ssn");
    assert_clean("recordings", &rec);
    assert!(
        rec.contains("\"masked\":{"),
        "per-statement masked counts: {rec}"
    );
    assert!(rec.contains("column:public.customers.ssn"), "{rec}");
}

#[tokio::test(flavor = "multi_thread")]
async fn exempt_principals_see_clear_values() {
    let gw = setup();
    let (_cli, addr) = gw.connect(
        "pg",
        &token_with("dpo@example.com", &["dpo@example.com", "sre@example.com"]),
    );
    let c = pg_client(addr).await;
    let email: String = c
        .query_one("select email from customers where id = 0", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(email, people()[0].email);
}
