//! Differential test of the guardrails against PostgreSQL itself: a corpus
//! of generated statements (many spellings, wrappers and quoting tricks,
//! plus the review's attacks) is classified by a read-only guardrail, and
//! each is run directly on the test PostgreSQL inside a rolled-back
//! transaction. PostgreSQL's own answer is whether the statement got a
//! transaction id (it wrote something). Every statement that wrote must be
//! refused; the share of reads refused is reported.

mod support;

use custody::config::GuardrailsConfig;
use custody::policy::guardrails::{Guardrails, Verdict};
use support::*;

fn writes() -> Vec<String> {
    vec![
        "insert into d_t values (100, 'x')".into(),
        "INSERT INTO d_t (id, v) SELECT 101, 'y'".into(),
        "update d_t set v = 'z' where id = 1".into(),
        "update d_t set v = 'z'".into(),
        "delete from d_t where id = 1".into(),
        "delete from d_t".into(),
        "merge into d_t t using (select 1 as id) s on t.id = s.id when matched then update set v = 'm'".into(),
        "truncate d_t".into(),
        "create table d_new (a int)".into(),
        "create index on d_t (v)".into(),
        "create view d_v as select 1".into(),
        "alter table d_t add column c int".into(),
        "drop table d_t".into(),
        "create user d_mallory".into(),
        "create role d_r login".into(),
        "create group d_g".into(),
        "alter role app set work_mem = '8MB'".into(),
        "grant select on d_t to public".into(),
        "revoke select on d_t from public".into(),
        "comment on table d_t is 'x'".into(),
        "select * into d_copy from d_t".into(),
        "create table d_as as select * from d_t".into(),
        "copy d_t from program 'true'".into(),
        "create rule d_rule as on insert to d_t do also delete from d_t".into(),
        "create function d_f() returns int language sql as 'select 1'".into(),
        "create schema d_s create table d_s_t (a int)".into(),
        "lock table d_t".into(),
        "do $$ begin delete from d_t; end $$".into(),
        "select lo_create(0)".into(),
        "insert into d_t select id + 100, v from d_t".into(),
        "update d_t set v = v || 'x' where id > 0".into(),
        "delete from d_t where v like 'a%'".into(),
        "alter table d_t rename column v to w".into(),
        "create sequence d_seq".into(),
        "create temp table d_tmp (a int)".into(),
        "grant all on d_t to app".into(),
        "select * from d_t for update".into(),
        "select * from d_t for share".into(),
        "insert into d_t values (7, 'q') on conflict (id) do update set v = 'r'".into(),
        "create materialized view d_mv as select 1".into(),
        "copy (select 1) to '/tmp/custody-d-copy'".into(),
        "select pg_catalog.lo_create(0)".into(),
    ]
}

fn reads() -> Vec<String> {
    vec![
        "select * from d_t".into(),
        "select count(*) from d_t where v = 'a'".into(),
        "with x as (select 1) select * from x".into(),
        "show search_path".into(),
        "explain select * from d_t".into(),
        "explain delete from d_t".into(),
        "values (1), (2)".into(),
        "select lower(v), length(v) from d_t".into(),
        "select 'delete from d_t'".into(),
        "select $$drop table d_t$$".into(),
        "select 1 /* ; drop table d_t */".into(),
        "select E'\\'; drop table d_t; --'".into(),
        "copy d_t to stdout".into(),
        "copy (select * from d_t) to stdout".into(),
        "set search_path = public".into(),
        "select set_config('search_path', 'public', true)".into(),
    ]
}

/// Spellings PostgreSQL treats the same: case, comments, quoting, space.
fn respell(sql: &str) -> Vec<String> {
    let mut out = vec![
        sql.to_string(),
        sql.to_uppercase().replace("'X'", "'x'"),
        sql.replace(' ', "/**/ "),
        sql.replace(' ', "\n\t "),
        sql.replace(' ', " /* a /* nested */ comment */ "),
        sql.replace("d_t", "\"d_t\""),
        sql.replace("d_t", "public.d_t"),
        sql.replace("d_t", "\"public\".\"d_t\""),
        format!("{sql};"),
        format!("select 1; {sql}"),
        format!("{sql}; select 1"),
        format!("-- leading comment\n{sql}"),
        format!("/* leading */ {sql} -- trailing"),
        sql.replace(' ', "  "),
        sql.replace("select", "SeLeCt").replace("delete", "DeLeTe"),
        sql.replace(' ', "\r\n"),
        format!("/* {} */ {sql}", "x".repeat(10)),
        format!("{sql} /* trailing ; drop table d_t */"),
        format!("select 'a;b'; {sql}"),
        format!("select $q$ ; $q$; {sql}"),
        sql.replace("d_t", "\"D_T\"").replace("\"D_T\"", "d_t"),
    ];
    out.dedup();
    out
}

/// Places PostgreSQL runs a statement from without it being the top level.
fn wrap(sql: &str) -> Vec<String> {
    let mut out = vec![sql.to_string()];
    let lower = sql.to_lowercase();
    let dml = ["insert", "update", "delete", "merge"]
        .iter()
        .any(|k| lower.starts_with(k));
    if dml && !lower.starts_with("merge") {
        out.push(format!(
            "with w as ({sql} returning 1) select count(*) from w"
        ));
        out.push(format!("copy ({sql} returning *) to stdout"));
        out.push(format!("explain analyze {sql}"));
        out.push(format!("explain (analyze, costs off) {sql}"));
        out.push(format!("prepare d_p as {sql}; execute d_p"));
        out.push(format!("explain (analyze true, format json) {sql}"));
    }
    out
}

fn corpus() -> Vec<(String, bool)> {
    let mut all = Vec::new();
    for (base, write) in writes()
        .into_iter()
        .map(|s| (s, true))
        .chain(reads().into_iter().map(|s| (s, false)))
    {
        for w in wrap(&base) {
            for s in respell(&w) {
                all.push((s, write));
            }
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread")]
async fn guardrails_agree_with_postgresql_on_what_writes() {
    let pg = pg();
    pg.admin("drop table if exists d_t; create table d_t (id int primary key, v text); insert into d_t values (1, 'a'), (2, 'b'); alter table d_t owner to app; alter role app createrole; grant pg_execute_server_program to app;");
    let (client, conn) = tokio_postgres::connect(&pg.direct_url(), tokio_postgres::NoTls)
        .await
        .expect("direct connection");
    tokio::spawn(conn);
    let ro = Guardrails::new(&GuardrailsConfig {
        read_only: true,
        ..Default::default()
    })
    .unwrap();
    let corpus = corpus();
    let (mut ran, mut wrote, mut reads_refused, mut reads) = (0, 0, 0, 0);
    let mut misses = Vec::new();
    for (sql, _) in &corpus {
        let verdict = ro.check(sql);
        client.batch_execute("begin").await.unwrap();
        let ok = client.batch_execute(sql).await.is_ok();
        let xid = if ok {
            client
                .query_one("select pg_current_xact_id_if_assigned() is not null", &[])
                .await
                .map(|r| r.get::<_, bool>(0))
                .unwrap_or(false)
        } else {
            false
        };
        let _ = client.batch_execute("rollback").await;
        if !ok {
            continue;
        }
        ran += 1;
        let refused = matches!(verdict, Verdict::Deny { .. });
        if xid {
            wrote += 1;
            if !refused {
                misses.push(sql.clone());
            }
        } else {
            reads += 1;
            if refused {
                reads_refused += 1;
            }
        }
    }
    eprintln!(
        "differential: {} statements, {ran} ran on PostgreSQL, {wrote} wrote, {} writes allowed by read_only, {reads_refused} of {reads} non-writing refused",
        corpus.len(),
        misses.len()
    );
    assert!(corpus.len() > 2000, "corpus too small: {}", corpus.len());
    assert!(wrote > 300, "too few writing statements ran: {wrote}");
    assert!(
        misses.is_empty(),
        "read_only allowed statements that wrote:\n{}",
        misses.join("\n")
    );
}
