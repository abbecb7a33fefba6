//! Issue 13's "what already works through the gateway and must keep
//! working": PostgreSQL's own tools through `custody connect` (recording
//! on, no guardrails), each compared with what it does directly. pg_dump
//! in plain, custom and directory format with `-j 2`, pg_restore `-j 2`,
//! pgbench in every query mode and a pipeline, vacuumdb and reindexdb with
//! `-j 2`, psql's meta-commands, `\watch` and savepoints.

mod support;

use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::*;

/// A tool run through the tunnel at `addr` (or directly when `addr` is None).
fn tool(addr: Option<SocketAddr>, program: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).env("PGDATABASE", "app");
    match addr {
        Some(a) => cmd
            .env("PGHOST", a.ip().to_string())
            .env("PGPORT", a.port().to_string())
            .env("PGUSER", "anything")
            .env_remove("PGPASSWORD"),
        None => cmd
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", pg().port.to_string())
            .env("PGUSER", "app")
            .env("PGPASSWORD", PG_PASSWORD)
            .env("PGSSLMODE", "disable"),
    };
    cmd.output().unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sql(addr: Option<SocketAddr>, q: &str) -> String {
    ok(
        tool(
            addr,
            "psql",
            &["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", q],
        ),
        q,
    )
}

#[test]
fn pg_dump_and_pg_restore_in_every_format_with_two_jobs() {
    let gw = Gateway::start("");
    let (_cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let a = Some(addr);
    sql(a, "drop schema if exists dumped cascade; create schema dumped; create table dumped.t1 (id int primary key, v text); create table dumped.t2 (id int references dumped.t1, n numeric); insert into dumped.t1 select g, 'v' || g from generate_series(1, 500) g; insert into dumped.t2 select g % 500 + 1, g / 7.0 from generate_series(1, 2000) g; create index on dumped.t2 (n);");
    let sums = |a| {
        sql(a, "select (select count(*) || ':' || sum(length(v)) from dumped.t1) || '/' || (select count(*) || ':' || sum(n) from dumped.t2)")
    };
    let before = sums(a);
    let dir = tempfile::tempdir().unwrap();
    // pg_dump's \restrict key is random per run; everything else must match.
    let dump = |a| {
        let out = ok(tool(a, "pg_dump", &["-n", "dumped"]), "pg_dump plain");
        out.lines()
            .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let (plain, plain_direct) = (dump(a), dump(None));
    assert_eq!(plain.len(), plain_direct.len(), "as many lines as directly");
    if let Some((i, (t, d))) = plain
        .iter()
        .zip(&plain_direct)
        .enumerate()
        .find(|(_, (t, d))| t != d)
    {
        panic!("plain dump line {i}: {t:?} through Custody, {d:?} directly");
    }
    let custom = dir.path().join("d.custom");
    let dirfmt = dir.path().join("d.dir");
    ok(
        tool(
            a,
            "pg_dump",
            &["-n", "dumped", "-Fc", "-f", custom.to_str().unwrap()],
        ),
        "pg_dump -Fc",
    );
    ok(
        tool(
            a,
            "pg_dump",
            &[
                "-n",
                "dumped",
                "-Fd",
                "-j",
                "2",
                "-f",
                dirfmt.to_str().unwrap(),
            ],
        ),
        "pg_dump -Fd -j 2",
    );
    for archive in [&custom, &dirfmt] {
        ok(
            tool(
                a,
                "pg_restore",
                &[
                    "-c",
                    "--if-exists",
                    "-j",
                    "2",
                    "-d",
                    "app",
                    archive.to_str().unwrap(),
                ],
            ),
            "pg_restore -j 2",
        );
        assert_eq!(sums(a), before, "restored from {}", archive.display());
    }
    assert_eq!(sums(None), before, "as PostgreSQL itself sees it");
}

#[test]
fn pgbench_in_simple_extended_prepared_and_pipeline_modes() {
    let gw = Gateway::start("");
    let (_cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let a = Some(addr);
    ok(tool(a, "pgbench", &["-i", "-s", "1", "-q"]), "pgbench -i");
    for mode in ["simple", "extended", "prepared"] {
        let out = ok(
            tool(
                a,
                "pgbench",
                &["-c", "2", "-j", "2", "-t", "25", "-M", mode],
            ),
            mode,
        );
        assert!(
            out.contains("number of failed transactions: 0"),
            "{mode}: {out}"
        );
        assert!(
            out.contains("number of transactions actually processed: 50/50"),
            "{mode}: {out}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("pipeline.sql");
    std::fs::write(&script, "\\set aid random(1, 100000)\n\\startpipeline\nselect abalance from pgbench_accounts where aid = :aid;\nupdate pgbench_accounts set abalance = abalance + 1 where aid = :aid;\nselect abalance from pgbench_accounts where aid = :aid;\n\\endpipeline\n").unwrap();
    let out = ok(
        tool(
            a,
            "pgbench",
            &[
                "-c",
                "2",
                "-t",
                "20",
                "-M",
                "extended",
                "-f",
                script.to_str().unwrap(),
            ],
        ),
        "pipeline",
    );
    assert!(
        out.contains("number of transactions actually processed: 40/40"),
        "{out}"
    );
    let through = sql(a, "select sum(abalance) from pgbench_accounts");
    assert_eq!(
        through,
        sql(None, "select sum(abalance) from pgbench_accounts")
    );
}

#[test]
fn vacuumdb_and_reindexdb_with_two_jobs() {
    let gw = Gateway::start("");
    let (_cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let a = Some(addr);
    sql(a, "drop table if exists maint_t; create table maint_t (id int primary key, v text); insert into maint_t select g, md5(g::text) from generate_series(1, 5000) g; delete from maint_t where id % 2 = 0;");
    let out = ok(
        tool(
            a,
            "vacuumdb",
            &["-j", "2", "-z", "-t", "maint_t", "-d", "app"],
        ),
        "vacuumdb -j 2",
    );
    assert!(out.contains("vacuuming database \"app\""), "{out}");
    let vacuumed = sql(None, "select vacuum_count + autovacuum_count > 0 and analyze_count + autoanalyze_count > 0 from pg_stat_user_tables where relname = 'maint_t'");
    assert_eq!(vacuumed.trim(), "t");
    ok(
        tool(a, "reindexdb", &["-j", "2", "-t", "maint_t", "-d", "app"]),
        "reindexdb -j 2",
    );
    assert_eq!(sql(a, "select count(*) from maint_t").trim(), "2500");
}

#[test]
fn psql_meta_commands_watch_and_savepoints_read_as_directly() {
    let gw = Gateway::start("");
    let (_cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let a = Some(addr);
    sql(a, "drop table if exists meta_t; create table meta_t (id int primary key, note text default 'n'); comment on table meta_t is 'meta';");
    for meta in [
        "\\dt meta_t",
        "\\d meta_t",
        "\\d+ meta_t",
        "\\dn public",
        "\\df pg_sleep",
        "\\dx",
        "\\l app",
        "\\conninfo",
    ] {
        let run = |a| ok(tool(a, "psql", &["-X", "-c", meta]), meta);
        let (through, direct) = (run(a), run(None));
        if meta == "\\conninfo" {
            assert!(through.contains("database \"app\""), "{through}");
            continue;
        }
        assert_eq!(through, direct, "{meta}");
    }
    let tx = "begin; insert into meta_t values (1); savepoint s1; insert into meta_t values (1); rollback to savepoint s1; insert into meta_t values (2); release savepoint s1; commit; select string_agg(id::text, ',' order by id) from meta_t;";
    let script = tx.replace("; ", ";\n");
    let mut child = Command::new("psql")
        .args(["-X", "-A", "-t"])
        .env("PGHOST", addr.ip().to_string())
        .env("PGPORT", addr.port().to_string())
        .env("PGUSER", "anything")
        .env("PGDATABASE", "app")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l == "1,2"),
        "savepoints: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // \watch repeats until stopped, through Custody as directly.
    let ticks = |a: Option<SocketAddr>| {
        let mut cmd = Command::new("psql");
        cmd.args(["-X", "-A", "-t"]).env("PGDATABASE", "app");
        match a {
            Some(a) => cmd
                .env("PGHOST", a.ip().to_string())
                .env("PGPORT", a.port().to_string())
                .env("PGUSER", "anything"),
            None => cmd
                .env("PGHOST", "127.0.0.1")
                .env("PGPORT", pg().port.to_string())
                .env("PGUSER", "app")
                .env("PGPASSWORD", PG_PASSWORD),
        };
        let mut watch = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = watch.stdin.as_mut().unwrap();
        std::io::Write::write_all(stdin, b"select 'tick' \\watch 0.2\n").unwrap();
        std::thread::sleep(Duration::from_millis(2000));
        let _ = watch.kill();
        let out = watch.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).matches("tick").count()
    };
    let (through, direct) = (ticks(a), ticks(None));
    assert!(
        through >= 3 && direct >= 3,
        "\\watch ran {through} times through Custody, {direct} directly, in 2 s"
    );
}
