//! A FunctionCall (the fastpath: a function called by OID, as libpq's
//! `PQfn` and its large-object calls do) runs SQL the client never wrote
//! as text. With recording alone it passes and is recorded by its OID
//! and argument count, never its values; under guardrails or masking it
//! is refused, and the refusal is recorded.

mod support;

use support::raw::*;
use support::*;

/// FunctionCall body: `oid`, text arguments, a text result.
fn function_call(oid: u32, args: &[&[u8]]) -> Vec<u8> {
    let mut b = oid.to_be_bytes().to_vec();
    b.extend_from_slice(&[0, 1, 0, 0]);
    b.extend_from_slice(&(args.len() as u16).to_be_bytes());
    for a in args {
        b.extend_from_slice(&(a.len() as u32).to_be_bytes());
        b.extend_from_slice(a);
    }
    b.extend_from_slice(&[0, 0]);
    Raw::frame(b'F', &b)
}

fn md5_oid(raw: &mut Raw) -> u32 {
    let rows = raw.query(b"select 'md5(text)'::regprocedure::oid");
    let text = data_rows(&rows);
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no oid in {rows:?}"))
}

#[test]
fn a_function_call_is_recorded_by_its_oid_and_answers_stay_paired() {
    let gw = Gateway::start("");
    let (_cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let (mut raw, _) = Raw::connect(addr, &[]);
    let oid = md5_oid(&mut raw);
    // Pipelined: the call, a call of no function, then a query.
    raw.send(&[
        function_call(oid, &[b"secret-arg"]),
        function_call(1, &[]),
        Raw::frame(b'Q', b"select 7 as seven\0"),
    ]);
    let called = raw.until_ready();
    assert_eq!(
        called.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
        b"VZ",
        "{}",
        errors(&called)
    );
    // Computed directly, not through the gateway (it is not recorded).
    let md5 = pg().admin("select md5('secret-arg')");
    let md5 = md5
        .split_whitespace()
        .find(|w| w.len() == 32)
        .unwrap_or("?")
        .to_string();
    assert!(
        String::from_utf8_lossy(&called[0].1).contains(&md5),
        "{called:?}"
    );
    let missing = raw.until_ready();
    assert!(errors(&missing).contains("42883"), "{missing:?}");
    let seven = raw.until_ready();
    assert!(data_rows(&seven).contains('7'), "{seven:?}");
    raw.send(&[Raw::frame(b'X', b"")]);
    let log = gw.wait_recordings("\"type\":\"session_end\"");
    assert!(
        !log.to_lowercase().contains("secret-arg"),
        "argument recorded"
    );
    let stmts = statements(&log);
    let call = format!("function call by OID {oid} (1 argument; values not recorded)");
    assert!(
        stmts.iter().any(|s| s.0 == call && s.2.is_empty()),
        "{stmts:?}"
    );
    assert!(
        stmts
            .iter()
            .any(|s| s.0.starts_with("function call by OID 1 (0 arguments") && !s.2.is_empty()),
        "{stmts:?}"
    );
    assert!(
        stmts
            .iter()
            .any(|s| s.0.starts_with("select 7 as seven") && s.1 == 1),
        "{stmts:?}"
    );
    assert!(log.contains("\"protocol\":\"function_call\""), "{log}");
}

#[test]
fn a_function_call_under_guardrails_is_refused_and_recorded() {
    let gw = Gateway::start(
        r#"
[connections.guardrails]
deny = ["drop"]
"#,
    );
    let (_cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let (mut raw, _) = Raw::connect(addr, &[]);
    let oid = md5_oid(&mut raw);
    raw.send(&[function_call(oid, &[b"secret-arg"])]);
    let refused = raw.until_ready();
    assert!(
        errors(&refused).contains("function calls by OID are refused"),
        "{refused:?}"
    );
    assert!(!data_rows(&raw.query(b"select 8")).is_empty());
    raw.send(&[Raw::frame(b'X', b"")]);
    let log = gw.wait_recordings("\"type\":\"session_end\"");
    assert!(
        !log.to_lowercase().contains("secret-arg"),
        "argument recorded"
    );
    assert!(
        log.contains(&format!(
            "\"sql\":\"function call by OID {oid} (1 argument; values not recorded)\""
        )) && log.contains("\"rule\":\"function_call\""),
        "{log}"
    );
}
