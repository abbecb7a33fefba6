//! Tests of the tracker: pairing answers with statements, pipelines,
//! errors that make PostgreSQL skip to Sync, and COPY in either direction.

use super::*;

fn sql_of(e: &EventBody) -> (&str, u64, bool) {
    match e {
        EventBody::Statement {
            sql, rows, error, ..
        } => (sql.as_str(), *rows, error.is_some()),
        _ => panic!(),
    }
}

/// A client that ends the COPY before PostgreSQL's CopyInResponse
/// reaches the gateway: only the Sync inside the copy is ignored, the
/// one after CopyDone gets its ReadyForQuery.
#[test]
fn a_copy_ended_before_its_answer_is_placed_by_sequence() {
    let mut t = Tracker::default();
    t.on_parse("", "copy t from stdin");
    t.on_bind("", "", None);
    t.on_execute("");
    t.on_sync();
    t.on_copy_end().unwrap();
    t.on_sync();
    t.on_copy_in();
    assert!(t.check_client(b'P').is_ok(), "the copy is over");
    assert!(t.on_complete("COPY 0").unwrap().is_some());
    assert!(t.on_ready(b'I').0.is_none());
    assert!(t.pending.is_empty(), "the honoured Sync was answered");
}

/// The review's attack: statements pipelined into copy-in mode, where
/// PostgreSQL would honour a Sync the gateway counts as ignored.
#[test]
fn only_copy_messages_may_follow_copy_in() {
    let mut t = Tracker::default();
    t.on_query("copy t from stdin".into());
    t.on_copy_in();
    for tag in [b'Q', b'P', b'B', b'E', b'D', b'C', b'F'] {
        assert!(t.check_client(tag).is_err(), "{}", tag as char);
    }
    for tag in [b'd', b'c', b'f', b'H', b'S', b'X'] {
        assert!(t.check_client(tag).is_ok(), "{}", tag as char);
    }
    t.on_copy_end().unwrap();
    assert!(t.check_client(b'Q').is_ok());
    // Stray CopyDones are noted, bounded, and placed before later COPYs.
    let mut t = Tracker::default();
    t.on_copy_end().unwrap();
    t.on_query("copy t from stdin".into());
    t.on_copy_in();
    assert!(
        t.check_client(b'Q').is_err(),
        "the stray CopyDone does not end it"
    );
    let mut t = Tracker::default();
    let overflow = (0..=MAX_COPY_ENDS)
        .map(|_| t.on_copy_end())
        .any(|r| r.is_err());
    assert!(overflow);
    // An answer to nothing queued is ignored (not yet a desync).
    assert!(Tracker::default()
        .on_complete("UPDATE 1")
        .unwrap()
        .is_none());
}

/// asyncpg's prepare of a bad statement: Parse, Describe, Sync; the
/// error answers the Parse and is recorded with its SQL, not blank.
#[test]
fn an_error_before_any_execute_is_recorded_with_its_parse() {
    let mut t = Tracker::default();
    t.on_parse("s1", "select no_such_column");
    t.on_describe(b'S', "s1");
    t.on_sync();
    let ev = t
        .on_error("42703".into(), "column does not exist".into())
        .unwrap();
    assert_eq!(sql_of(&ev), ("select no_such_column", 0, true));
    assert!(t.on_ready(b'I').0.is_none());
    assert!(t.pending.is_empty());
    // The next segment's error names its own Parse.
    t.on_parse("", "select 1/0");
    t.on_bind("", "", None);
    t.on_execute("");
    t.on_sync();
    let ev = t
        .on_error("22012".into(), "division by zero".into())
        .unwrap();
    assert_eq!(sql_of(&ev), ("select 1/0", 0, true));
}

/// pg8000's COPY FROM: Execute, Sync, CopyData, CopyDone, Sync; the
/// server answers one ReadyForQuery, for the last Sync.
#[test]
fn syncs_in_copy_in_mode_get_no_ready_for_query() {
    let mut t = Tracker::default();
    t.on_parse("", "copy t from stdin");
    t.on_bind("", "", None);
    t.on_execute("");
    t.on_sync();
    t.on_copy_in();
    t.on_sync();
    t.on_copy_end().unwrap();
    t.on_sync();
    let ev = t.on_complete("COPY 2").unwrap().unwrap();
    assert_eq!(sql_of(&ev), ("copy t from stdin", 2, false));
    assert!(t.on_ready(b'I').0.is_none());
    // The next statement pairs with its own answers.
    t.on_query("select 1".into());
    assert!(t.on_complete("SELECT 1").unwrap().is_none());
    let (ev, _) = t.on_ready(b'I');
    assert_eq!(sql_of(&ev.unwrap()), ("select 1", 1, false));
    assert!(t.pending.is_empty());
}

/// asyncpg's executemany: an error flushed before the Sync, then more
/// Executes PostgreSQL skips; only the Sync is answered.
#[test]
fn messages_after_an_unsynced_error_are_not_queued() {
    let mut t = Tracker::default();
    t.on_parse("a", "insert into t values (1/0)");
    t.on_bind("", "a", None);
    t.on_execute("");
    let ev = t
        .on_error("22012".into(), "division by zero".into())
        .unwrap();
    assert_eq!(sql_of(&ev), ("insert into t values (1/0)", 0, true));
    // Skipped by the server: no answer, and no new meaning for "a".
    t.on_parse("a", "select 'skipped'");
    t.on_bind("", "a", None);
    t.on_internal_describe("");
    t.on_execute("");
    t.on_describe(b'S', "a");
    t.on_close(b'S', "a");
    t.on_copy_end().unwrap();
    t.on_query("select 'skipped too'".into());
    t.on_sync();
    assert!(t.on_ready(b'I').0.is_none());
    assert!(t.pending.is_empty());
    assert_eq!(
        t.prepared.get("a").map(|p| p.0.as_str()),
        Some("insert into t values (1/0)")
    );
    // After the Sync, messages are answered again.
    t.on_bind("", "a", None);
    t.on_execute("");
    t.on_sync();
    let ev = t.on_complete("INSERT 0 1").unwrap().unwrap();
    assert_eq!(sql_of(&ev), ("insert into t values (1/0)", 1, false));
    assert!(t.on_ready(b'I').0.is_none());
    assert!(t.pending.is_empty());
}

/// An error answering no extended message (a FunctionCall's, or one
/// with nothing pending) makes PostgreSQL skip nothing; a Sync that
/// carries a gateway refusal ends the skipping like any other.
#[test]
fn only_extended_errors_start_discarding_and_every_sync_ends_it() {
    let mut t = Tracker::default();
    assert!(t.on_error("42883".into(), "no function".into()).is_some());
    t.on_query("select 1".into());
    assert!(t.on_complete("SELECT 1").unwrap().is_none());
    assert_eq!(sql_of(&t.on_ready(b'I').0.unwrap()), ("select 1", 1, false));
    t.on_parse("", "select 1/0");
    t.on_bind("", "", None);
    t.on_execute("");
    t.on_error("22012".into(), "division by zero".into())
        .unwrap();
    assert!(t.extended_open());
    t.on_sync_with(Bytes::from_static(b"refusal"));
    assert!(!t.extended_open());
    let (_, inject) = t.on_ready(b'I');
    assert!(inject.is_some());
    t.on_query("select 2".into());
    assert!(t.on_complete("SELECT 1").unwrap().is_none());
    assert_eq!(sql_of(&t.on_ready(b'I').0.unwrap()), ("select 2", 1, false));
}

/// With the Sync already queued, what follows it is the next segment.
#[test]
fn an_error_with_its_sync_queued_skips_only_its_segment() {
    let mut t = Tracker::default();
    t.on_parse("", "select 1/0");
    t.on_bind("", "", None);
    t.on_execute("");
    t.on_sync();
    t.on_error("22012".into(), "division by zero".into())
        .unwrap();
    t.on_query("select 2".into());
    assert!(t.on_ready(b'E').0.is_none());
    assert!(t.on_complete("SELECT 1").unwrap().is_none());
    let (ev, _) = t.on_ready(b'I');
    assert_eq!(sql_of(&ev.unwrap()), ("select 2", 1, false));
}

#[test]
fn simple_multi_statement_is_one_event() {
    let mut t = Tracker::default();
    t.on_query("insert into t values (1); select * from t".into());
    assert!(t.on_complete("INSERT 0 1").unwrap().is_none());
    assert!(t.on_complete("SELECT 4").unwrap().is_none());
    let e = t.on_ready(b'I').0.unwrap();
    assert_eq!(
        sql_of(&e),
        ("insert into t values (1); select * from t", 5, false)
    );
    assert_eq!((t.statements, t.rows), (1, 5));
}

#[test]
fn extended_error_skips_to_sync() {
    let mut t = Tracker::default();
    t.on_parse("s1", "select $1");
    t.on_bind("", "s1", None);
    t.on_execute("");
    t.on_parse("", "select 1/0");
    t.on_bind("", "", None);
    t.on_execute("");
    t.on_execute("");
    t.on_sync();
    assert_eq!(
        sql_of(&t.on_complete("SELECT 1").unwrap().unwrap()),
        ("select $1", 1, false)
    );
    let e = t
        .on_error("22012".into(), "division by zero".into())
        .unwrap();
    assert_eq!(sql_of(&e), ("select 1/0", 0, true));
    assert!(t.on_ready(b'I').0.is_none());
    assert!(t.pending.is_empty());
}

fn col(type_oid: u32) -> Vec<Col> {
    vec![Col {
        name: "v".into(),
        table_oid: 0,
        attnum: 0,
        type_oid,
        format: 0,
    }]
}

fn exec_types(t: &Tracker) -> Option<Vec<(u32, i16)>> {
    t.exec_columns()
        .map(|c| c.iter().map(|c| (c.type_oid, c.format)).collect())
}

/// A statement parsed again, or a portal bound again, before the rows of
/// an Execute arrive never lends those rows its columns.
#[test]
fn rows_are_read_by_the_bind_their_execute_ran() {
    let mut t = Tracker::default();
    t.on_parse("", "select 'a@b.co'::text");
    t.on_describe(b'S', "");
    t.on_sync();
    assert!(matches!(t.on_row_description(col(25)), RowDesc::Described));
    t.on_ready(b'I');
    // Bind/Execute the text statement, then parse, describe, bind and
    // execute a numeric one on the same names, all before any answer.
    t.on_bind("", "", Some(vec![1]));
    t.on_execute("");
    t.on_parse("", "select 4111111111111111::numeric");
    t.on_describe(b'S', "");
    t.on_bind("", "", Some(vec![1]));
    t.on_describe(b'P', "");
    t.on_execute("");
    t.on_bind("", "", Some(vec![0]));
    t.on_execute("");
    t.on_sync();
    assert_eq!(exec_types(&t), Some(vec![(25, 1)]));
    t.on_complete("SELECT 1").unwrap();
    assert!(matches!(
        t.on_row_description(col(1700)),
        RowDesc::Described
    ));
    let mut portal = col(1700);
    portal[0].format = 1;
    assert!(matches!(t.on_row_description(portal), RowDesc::Described));
    assert_eq!(
        exec_types(&t),
        Some(vec![(1700, 1)]),
        "the portal's Describe"
    );
    t.on_complete("SELECT 1").unwrap();
    // Bound again (text results): its statement's Describe with its formats.
    assert_eq!(exec_types(&t), Some(vec![(1700, 0)]));
    t.on_complete("SELECT 1").unwrap();
    t.on_ready(b'I');
    assert!(t.pending.is_empty());
    // A statement parsed again but not described yet: never described.
    t.on_parse("", "select 'again'");
    t.on_bind("", "", Some(vec![1]));
    t.on_execute("");
    assert_eq!(exec_types(&t), None);
}
