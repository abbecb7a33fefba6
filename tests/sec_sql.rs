//! The security review's SQL attacks, each against the real binary and a
//! real PostgreSQL: client encodings, DML inside COPY, role statements,
//! quoted names past patterns, a stale Describe past masking, one huge
//! statement, and SQL hidden from the recording by a detector.

mod support;

use std::net::SocketAddr;

use support::raw::*;
use support::*;

const RULES: &str = r#"
[connections.guardrails]
deny = ["drop", "create_role", "delete_without_where"]
require_approval = ["delete"]
deny_patterns = ['pg_sleep\(', 'from payroll']
[connections.masking]
detectors = ["email", "private_key"]
columns = { "sec_people.ssn" = "redact" }
"#;

fn setup() -> Gateway {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        pg().admin(
            "create table if not exists victim (id int); alter table victim owner to app; \
             insert into victim select generate_series(1, 3) where not exists (select 1 from victim); \
             create table if not exists payroll (id int); alter table payroll owner to app; \
             create table if not exists sec_people (id int, name text, ssn text); alter table sec_people owner to app; \
             insert into sec_people select 1, 'ada', '123-45-6789' where not exists (select 1 from sec_people);",
        );
    });
    Gateway::start(RULES)
}

fn count(sql: &str) -> String {
    let out = pg().admin(sql);
    out.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_digit()))
        .unwrap_or("?")
        .to_string()
}

fn victims() -> String {
    count("select count(*) from victim")
}

#[test]
fn sjis_cannot_hide_a_drop_in_a_literal() {
    let gw = setup();
    let (_cli, addr) = gw.connect("pg", &token("alice@example.com"));
    // At startup: refused with a clear error before any statement runs.
    let (_raw, hello) = Raw::connect(addr, &[("client_encoding", "SJIS")]);
    let e = errors(&hello);
    assert!(e.contains("client_encoding SJIS is refused"), "{e}");
    // Through SET, SET NAMES and set_config: refused, the session stays UTF8.
    let (mut raw, _) = Raw::connect(addr, &[]);
    for set in [
        &b"set client_encoding = 'SJIS'"[..],
        b"set names 'sjis'",
        b"select set_config('client_encoding', 'SJIS', false)",
    ] {
        let e = errors(&raw.query(set));
        assert!(e.contains("client_encoding"), "{e}");
    }
    // The attack's bytes, in a UTF8 session: PostgreSQL rejects them.
    let mut attack = b"select E'".to_vec();
    attack.extend_from_slice(&[0xC2, 0x81, 0x5C]);
    attack.extend_from_slice(b"'; drop table victim; --'");
    let _ = raw.query(&attack);
    assert_eq!(victims(), "3", "the DROP ran");
    // Latin-1 (ASCII-safe) works and is read byte for byte.
    let (mut latin, hello) = Raw::connect(addr, &[("client_encoding", "LATIN1")]);
    assert!(errors(&hello).is_empty(), "{}", errors(&hello));
    let rows = latin.query(b"select 'caf\xe9'");
    assert!(errors(&rows).is_empty(), "{}", errors(&rows));
}

#[tokio::test(flavor = "multi_thread")]
async fn dml_in_copy_role_spellings_and_quoted_names_are_seen() {
    let gw = setup();
    let (_cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let c = pg_client(addr).await;
    for (sql, rule) in [
        (
            "copy (delete from victim returning *) to stdout",
            "delete_without_where",
        ),
        ("create user mallory", "create_role"),
        ("CREATE GROUP admins", "create_role"),
        ("alter user app with superuser", "create_role"),
        (r#"select "pg_sleep"(0.1)"#, "pattern pg_sleep"),
        (r#"select U&"pg\005fsleep"(0.1)"#, "pattern pg_sleep"),
        ("select * from public.payroll", "from payroll"),
        (r#"select * from "payroll""#, "from payroll"),
        ("do $$ begin delete from victim; end $$", "drop"),
    ] {
        let e = c.batch_execute(sql).await.unwrap_err();
        let m = e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_default();
        assert!(m.contains(rule), "{sql}: {m}");
    }
    // The gateway logs at debug level in tests: no literal reaches the log.
    c.batch_execute("select 'literal-7f3a9c' where false")
        .await
        .unwrap();
    assert!(
        !gw.proc.log().contains("literal-7f3a9c"),
        "a literal reached the log"
    );
    assert_eq!(victims(), "3");
    assert_eq!(
        count("select count(*) from pg_roles where rolname = 'mallory'"),
        "0"
    );
}

#[test]
fn a_stale_describe_never_unmasks_a_column() {
    let gw = setup();
    let (_cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let (mut raw, _) = Raw::connect(addr, &[]);
    // Parse s as a harmless query and Describe it.
    raw.send(&[
        Raw::frame(
            b'P',
            &[
                &cstr(&[b"s", b"select name from sec_people where id = 1"])[..],
                &[0, 0],
            ]
            .concat(),
        ),
        Raw::frame(b'D', &[b"S".as_slice(), b"s\0"].concat()),
        Raw::frame(b'S', b""),
    ]);
    let described = raw.until_ready();
    assert!(errors(&described).is_empty(), "{}", errors(&described));
    // Swap s behind the gateway's back at SQL level.
    let swapped = raw.query(b"deallocate s; prepare s as select ssn from sec_people where id = 1");
    assert!(errors(&swapped).is_empty(), "{}", errors(&swapped));
    // Bind and Execute s: the SSN must not come back in clear.
    raw.send(&[
        Raw::frame(
            b'B',
            &[&cstr(&[b"", b"s"])[..], &[0, 0, 0, 0, 0, 0]].concat(),
        ),
        Raw::frame(b'E', &[b"\0".as_slice(), &[0, 0, 0, 0]].concat()),
        Raw::frame(b'S', b""),
    ]);
    let rows = raw.until_ready();
    let shown = data_rows(&rows);
    assert!(!shown.contains("123-45-6789"), "clear SSN: {shown}");
    assert!(shown.contains("[REDACTED]"), "{shown} {}", errors(&rows));
    // The client sees no RowDescription it did not ask for.
    assert!(
        !rows.iter().any(|(t, _)| *t == b'T'),
        "unexpected RowDescription"
    );
}

#[test]
fn a_huge_statement_is_refused_and_costs_little() {
    setup();
    // Messages up to 8 MiB reach the gateway, so a 4 MiB statement does.
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("recordings");
    let text =
        config(&store, RULES).replace("max_message_bytes = 1048576", "max_message_bytes = 8388608");
    let gw = Gateway::start_with(dir, &text, store);
    let (_cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let (mut raw, _) = Raw::connect(addr, &[]);
    let pid = gw.proc.child.id();
    let rss = || {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmHWM"))
            .and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .map(|v| v.parse::<u64>().unwrap_or(0))
            })
            .unwrap_or(0)
    };
    let before = rss();
    let huge = format!("select {}1", "1,".repeat(2 << 20));
    let e = errors(&raw.query(huge.as_bytes()));
    assert!(e.contains("max_inspected_statement_bytes"), "{e}");
    // Just under the byte limit but dense: refused by its token count.
    let dense = format!("select {}1", "1,".repeat(100_000));
    let e = errors(&raw.query(dense.as_bytes()));
    assert!(e.contains("tokens"), "{e}");
    let after = rss();
    eprintln!("custody serve peak RSS: {before} kB before, {after} kB after a 4 MiB and a 200 kB statement");
    assert!(
        after < before + 64 * 1024,
        "peak grew from {before} kB to {after} kB"
    );
    // The session still works.
    assert!(errors(&raw.query(b"select 1")).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn detectors_never_hide_sql_structure_in_the_recording() {
    let gw = setup();
    let (_cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let c = pg_client(addr).await;
    let _ = c
        .batch_execute("select 1 /*-----BEGIN PRIVATE KEY-----*/; select count(*) from victim where id > 0; /*-----END PRIVATE KEY-----*/")
        .await;
    drop(c);
    let rec = gw.wait_recordings("count(*) from victim where id > 0");
    assert!(rec.contains("[PRIVATE_KEY]"), "{rec}");
}

#[tokio::test(flavor = "multi_thread")]
async fn read_only_is_enforced_by_postgresql_too() {
    setup();
    pg().admin(
        "create or replace function sec_writer() returns int language sql as 'insert into victim values (99) returning 1'; \
         alter function sec_writer() owner to app;",
    );
    let gw = Gateway::start("[connections.guardrails]\nread_only = true\n");
    let (_cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let c = pg_client(addr).await;
    // A write the guardrails cannot see: PostgreSQL refuses it itself.
    let e = c.batch_execute("select sec_writer()").await.unwrap_err();
    let db = e.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "25006", "{}", db.message());
    // Turning read-only off is refused by the guardrails.
    for sql in [
        "begin read write",
        "set default_transaction_read_only = off",
    ] {
        let e = c.batch_execute(sql).await.unwrap_err();
        let m = e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_default();
        assert!(m.contains("read-only"), "{sql}: {m}");
    }
    assert_eq!(count("select count(*) from victim where id = 99"), "0");
    c.batch_execute("select count(*) from victim")
        .await
        .unwrap();
}

/// Calls a function that switches the session to SJIS and, pipelined
/// behind it, a COPY of a ruled column that only SJIS reads as one: in UTF8
/// `\'` escapes the quote, in SJIS 0x81 0x5C is one character. The COPY
/// is long enough to arrive over several reads, before the switch is
/// reported at ReadyForQuery.
fn hidden_copy_after_hidden_switch(addr: SocketAddr, extended: bool) -> Vec<(u8, Vec<u8>)> {
    let (mut raw, _) = Raw::connect(addr, &[]);
    let switch = b"select sec_switch_to_sjis()";
    let hidden_text = |before: &[u8], after: &[u8]| [before, &[0xC2, 0x81, 0x5C], after].concat();
    let frames = if extended {
        // In UTF8 the literal never ends: a statement that does not parse.
        let copy = hidden_text(
            b"copy (select ssn, E'",
            b"' from sec_people, generate_series(1, 20000) g) to stdout",
        );
        let run = |sql: &[u8]| {
            vec![
                Raw::frame(b'P', &[&cstr(&[b"", sql])[..], &[0, 0]].concat()),
                Raw::frame(
                    b'B',
                    &[&cstr(&[b"", b""])[..], &[0, 0, 0, 0, 0, 0]].concat(),
                ),
                Raw::frame(b'E', &[b"\0".as_slice(), &[0, 0, 0, 0]].concat()),
            ]
        };
        [run(switch), run(&copy), vec![Raw::frame(b'S', b"")]].concat()
    } else {
        let copy = hidden_text(
            b"select E'",
            b"'; copy (select ssn from sec_people, generate_series(1, 20000) g) to stdout; --'",
        );
        vec![
            Raw::frame(b'Q', &cstr(&[switch])),
            Raw::frame(b'Q', &cstr(&[&copy])),
        ]
    };
    raw.send(&frames);
    let mut got = raw.until_ready();
    got.extend(raw.until_ready());
    got
}

#[test]
fn a_hidden_encoding_switch_never_unmasks_a_copy() {
    let guarded = setup();
    // What guardrails cannot see: a function computes the setting's name.
    pg().admin(
        "create or replace function sec_switch_to_sjis() returns text language sql \
         as $$ select set_config('client_' || 'encoding', 'SJIS', false) $$",
    );
    let masking_only = Gateway::start(
        r#"
[connections.masking]
columns = { "sec_people.ssn" = "redact" }
"#,
    );
    for (gw, extended) in [
        (&masking_only, false),
        (&masking_only, true),
        (&guarded, false),
        (&guarded, true),
    ] {
        let (_cli, addr) = gw.connect("pg", &token("alice@example.com"));
        let frames = hidden_copy_after_hidden_switch(addr, extended);
        let all: Vec<u8> = frames.iter().flat_map(|(_, b)| b.clone()).collect();
        assert!(
            !String::from_utf8_lossy(&all).contains("123-45-6789"),
            "clear SSN through a hidden COPY (extended {extended}): {frames:?}"
        );
        // The session ends with an error that says why, never silently.
        let e = errors(&frames);
        assert!(
            e.contains("client_encoding") || e.contains("COPY TO STDOUT") || e.contains("refused"),
            "no error tells the client why (extended {extended}): {e} {frames:?}"
        );
        assert!(e.contains("0A000") || e.contains("42501"), "{e}");
    }
    // The recording says why each session ended, and keeps the statements
    // answered in the same read as the refused frame.
    let log = masking_only.wait_recordings("did not read as one");
    assert!(log.contains("switched client_encoding to SJIS"), "{log}");
    assert!(!log.contains("123-45-6789"), "clear SSN in the recording");
    let switched = statements(&log)
        .into_iter()
        .filter(|s| s.0.starts_with("select sec_switch_to_sjis()"))
        .count();
    assert_eq!(switched, 2, "{log}");
}

#[test]
fn a_query_inside_an_unsynced_extended_segment_ends_the_session() {
    let gw = setup();
    let (_cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let (mut raw, _) = Raw::connect(addr, &[]);
    // A Bind that fails makes PostgreSQL skip both Queries up to the Sync;
    // the gateway could not tell which message the error answered.
    raw.send(&[
        Raw::frame(
            b'B',
            &[&cstr(&[b"", b"nope"])[..], &[0, 0, 0, 0, 0, 0]].concat(),
        ),
        Raw::frame(b'Q', &cstr(&[b"select 1"])),
        Raw::frame(b'Q', &cstr(&[b"select 2"])),
        Raw::frame(b'S', b""),
    ]);
    let got = raw.until_ready();
    let e = errors(&got);
    assert!(e.contains("send Sync first"), "{e} {got:?}");
    // The session is over: the connection is closed.
    assert!(raw.query(b"select ssn from sec_people").is_empty());
    // A Query once everything before it is answered is unambiguous, and
    // runs (asyncpg prepares with Flush, then sends COPY as a Query).
    let (mut raw, _) = Raw::connect(addr, &[]);
    raw.send(&[
        Raw::frame(b'P', &[&cstr(&[b"s1", b"select 1"])[..], &[0, 0]].concat()),
        Raw::frame(b'D', b"Ss1\0"),
        Raw::frame(b'H', b""),
    ]);
    assert_eq!(raw.tags_until(b"TnE"), b"1tT".to_vec());
    let rows = raw.query(b"select ssn from sec_people");
    assert!(data_rows(&rows).contains("[REDACTED]"), "{rows:?}");
    raw.send(&[Raw::frame(b'S', b"")]);
    assert_eq!(raw.until_ready().len(), 1);
}

#[test]
fn messages_skipped_after_a_pipeline_error_are_not_answers() {
    setup();
    let gw = Gateway::start(
        r#"
[connections.masking]
columns = { "sec_people.ssn" = "redact" }
"#,
    );
    let (_cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let (mut raw, _) = Raw::connect(addr, &[]);
    let run = |sql: &[u8]| {
        vec![
            Raw::frame(b'P', &[&cstr(&[b"", sql])[..], &[0, 0]].concat()),
            Raw::frame(
                b'B',
                &[&cstr(&[b"", b""])[..], &[0, 0, 0, 0, 0, 0]].concat(),
            ),
            Raw::frame(b'E', &[b"\0".as_slice(), &[0, 0, 0, 0]].concat()),
        ]
    };
    // An error, flushed before the client has sent its Sync (asyncpg's
    // executemany does this): PostgreSQL now skips everything up to Sync.
    raw.send(&[run(b"select 1/0"), vec![Raw::frame(b'H', b"")]].concat());
    raw.tags_until(b"E");
    // Sent after the error: skipped by the server, answered only by Sync.
    raw.send(&[run(b"select 'skipped'"), vec![Raw::frame(b'S', b"")]].concat());
    let skipped = raw.until_ready();
    let tags: Vec<u8> = skipped.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, vec![b'Z'], "{skipped:?}");
    // What follows is answered and recorded as itself, and masked.
    let rows = raw.query(b"select ssn from sec_people");
    let tags: Vec<u8> = rows.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, b"TDCZ".to_vec(), "{rows:?}");
    assert!(data_rows(&rows).contains("[REDACTED]"), "{rows:?}");
    let answer = raw.query(b"select 42 as answer");
    assert!(data_rows(&answer).contains("42"), "{answer:?}");
    raw.send(&[Raw::frame(b'X', b"")]);
    let log = gw.wait_recordings("\"type\":\"session_end\"");
    let stmts = statements(&log);
    let find = |sql: &str| stmts.iter().find(|s| s.0.starts_with(sql)).cloned();
    assert!(
        find("select 1/0").is_some_and(|s| s.2.contains("division by zero")),
        "{stmts:?}"
    );
    assert!(
        find("select 'skipped'").is_none(),
        "a skipped statement was recorded as run: {stmts:?}"
    );
    assert_eq!(
        find("select ssn").map(|s| (s.1, s.2)),
        Some((1, String::new())),
        "{stmts:?}"
    );
    assert_eq!(
        find("select 42").map(|s| (s.1, s.2)),
        Some((1, String::new())),
        "{stmts:?}"
    );
}

#[test]
fn a_portal_rebound_before_its_rows_arrive_never_unmasks_them() {
    setup();
    let gw = Gateway::start(
        r#"
[connections.masking]
detectors = ["email", "credit_card"]
"#,
    );
    // (statement the portal is re-bound to, statement whose rows leak):
    // an email exactly as wide as a binary timestamp (8 bytes); an email
    // read as a binary bytea (which detectors skip); a card number in a
    // binary numeric read as text (its base-10000 digits are not text).
    let cases: [(&[u8], &[u8], &[u8]); 3] = [
        (
            b"select localtimestamp(0)",
            b"select 'b@cd.efg'::text",
            b"[EMAIL]",
        ),
        (
            b"select '\\x01'::bytea",
            b"select 'someone@example.org'::text",
            b"[EMAIL]",
        ),
        (
            b"select 'x'::text",
            b"select 4111111111111111::numeric",
            b"",
        ),
    ];
    for (stale, leak, masked) in cases {
        let (_cli, addr) = gw.connect("pg", &token("alice@example.com"));
        let (mut raw, _) = Raw::connect(addr, &[]);
        let rows = rebound_rows(&mut raw, stale, leak);
        let bodies: Vec<&Vec<u8>> = rows
            .iter()
            .filter(|(t, _)| *t == b'D')
            .map(|(_, b)| b)
            .collect();
        assert_eq!(bodies.len(), 2, "{rows:?}");
        // The leaking row's one value: a text value's replacement, or NULL
        // (a binary value a detector matched).
        let want = match masked.len() {
            0 => vec![0, 1, 0xff, 0xff, 0xff, 0xff],
            n => [&[0, 1][..], &(n as u32).to_be_bytes(), masked].concat(),
        };
        assert_eq!(
            bodies[0],
            &want,
            "{}: not masked: {rows:?}",
            String::from_utf8_lossy(leak)
        );
    }
}

/// Describes `stale` and `leak`, then binds the unnamed portal to `leak`,
/// executes it, re-binds it to `stale` and executes again before any
/// answer, all with binary results: the rows of both Executes.
fn rebound_rows(raw: &mut Raw, stale: &[u8], leak: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let parse =
        |name: &[u8], sql: &[u8]| Raw::frame(b'P', &[&cstr(&[name, sql])[..], &[0, 0]].concat());
    let describe = |name: &[u8]| Raw::frame(b'D', &[b"S".as_slice(), name, b"\0"].concat());
    // Results in binary (one format code, 1).
    let bind = |stmt: &[u8]| {
        Raw::frame(
            b'B',
            &[&cstr(&[b"", stmt])[..], &[0, 0, 0, 0, 0, 1, 0, 1]].concat(),
        )
    };
    let execute = Raw::frame(b'E', &[b"\0".as_slice(), &[0, 0, 0, 0]].concat());
    raw.send(&[
        parse(b"stale", stale),
        parse(b"leak", leak),
        describe(b"stale"),
        describe(b"leak"),
        Raw::frame(b'S', b""),
    ]);
    let described = raw.until_ready();
    assert!(errors(&described).is_empty(), "{}", errors(&described));
    raw.send(&[
        bind(b"leak"),
        execute.clone(),
        bind(b"stale"),
        execute,
        Raw::frame(b'S', b""),
    ]);
    let rows = raw.until_ready();
    assert!(errors(&rows).is_empty(), "{}", errors(&rows));
    rows
}
