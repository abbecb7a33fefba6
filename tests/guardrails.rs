//! Guardrails on the real PostgreSQL path: refused statements never reach
//! the upstream, the client gets SQLSTATE 42501 naming the rule and the
//! audit id, the session stays usable, and the refusal is recorded.

mod support;

use support::*;

const GUARDED: &str = r#"
[connections.guardrails]
deny = ["drop", "truncate", "delete_without_where", "update_without_where"]
require_approval = ["grant"]
deny_patterns = ['pg_sleep\(']
"#;

fn setup() -> Gateway {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        pg().admin("create table if not exists g_items (id int primary key, v text); alter table g_items owner to app; insert into g_items values (1, 'a'), (2, 'b') on conflict do nothing;");
    });
    Gateway::start(GUARDED)
}

fn refused(e: &tokio_postgres::Error) -> String {
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not an ErrorResponse: {e}"));
    assert_eq!(db.code().code(), "42501", "{}", db.message());
    assert!(db.message().contains("audit id "), "{}", db.message());
    db.message().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_on_both_protocols_keep_the_session() {
    let gw = setup();
    let (_cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let c = pg_client(addr).await;

    // Simple protocol; every statement of a multi-statement query is checked.
    let m = refused(&c.batch_execute("delete from g_items").await.unwrap_err());
    assert!(m.contains("delete_without_where"), "{m}");
    let m = refused(
        &c.batch_execute("select 1; drop table g_items")
            .await
            .unwrap_err(),
    );
    assert!(m.contains("\"drop\""), "{m}");
    refused(
        &c.batch_execute("with d as (update g_items set v = 'x' returning 1) select * from d")
            .await
            .unwrap_err(),
    );
    let m = refused(&c.batch_execute("select pg_sleep(0)").await.unwrap_err());
    assert!(m.contains("pattern"), "{m}");
    let m = refused(
        &c.batch_execute("grant select on g_items to public")
            .await
            .unwrap_err(),
    );
    assert!(m.contains("requires approval"), "{m}");

    // Extended protocol: Parse refused, then a normal prepared statement works.
    refused(&c.prepare("truncate g_items").await.unwrap_err());
    let n: i64 = c
        .query_one("select count(*) from g_items where id >= $1", &[&0i32])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2, "nothing was deleted or truncated");

    // Pipelined: an allowed query and a refused one in flight together, answered in order.
    let q1 = c.query_one("select $1::int + 1", &[&41i32]);
    let q2 = c.execute("update g_items set v = 'all'", &[]);
    let q3 = c.query_one("select $1::text", &[&"after"]);
    let (r1, r2, r3) = tokio::join!(q1, q2, q3);
    assert_eq!(r1.unwrap().get::<_, i32>(0), 42);
    refused(&r2.unwrap_err());
    assert_eq!(r3.unwrap().get::<_, String>(0), "after");

    // Inside a transaction a refusal aborts it, as a PostgreSQL error would:
    // the COMMIT that follows cannot commit half of the work.
    c.batch_execute("begin; update g_items set v = 'half' where id = 2")
        .await
        .unwrap();
    refused(&c.batch_execute("delete from g_items").await.unwrap_err());
    let err = c
        .batch_execute("update g_items set v = 'more' where id = 1")
        .await
        .unwrap_err();
    assert_eq!(
        err.code().unwrap().code(),
        "25P02",
        "the transaction is aborted"
    );
    c.batch_execute("commit").await.unwrap();
    let v: String = c
        .query_one("select v from g_items where id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "b", "nothing of the aborted transaction was committed");
    assert!(pg().admin("select count(*) from g_items").contains(" 2\n"));

    // PREPARE ... AS is judged by what it prepares.
    refused(
        &c.batch_execute("prepare p as delete from g_items")
            .await
            .unwrap_err(),
    );

    drop(c);
    let rec = gw.wait_recordings("approval_required");
    assert!(rec.contains("\"type\":\"guardrail\""), "{rec}");
    assert!(
        rec.contains("\"rule\":\"delete_without_where\"")
            && rec.contains("\"outcome\":\"approval_required\""),
        "{rec}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn psql_and_exec_see_the_refusal() {
    let gw = setup();
    let (_cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let (ok, out, err) = psql(
        addr,
        &["-v", "ON_ERROR_STOP=0"],
        Some("drop table g_items;\nselect 'usable' as s;\n"),
    );
    assert!(ok, "{err}");
    assert!(
        err.contains("ERROR:  custody: statement refused by guardrail \"drop\""),
        "{err}"
    );
    assert!(out.contains("usable"), "{out}");

    let out = std::process::Command::new(bin())
        .args(["exec", "pg", "--gateway", &gw.url, "--", "truncate g_items"])
        .env("CUSTODY_TOKEN", token("alice@example.com"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "a guardrail refusal is a policy refusal"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("truncate") && err.contains("audit id"),
        "{err}"
    );
    assert!(pg().admin("select count(*) from g_items").contains(" 2\n"));
}
