//! Issue 13, item 12 and the "what already works" list: real drivers that
//! no other test drives. pg8000 speaks only the extended protocol, COPY
//! included: every message it sends gets its answer, masked or not.

mod support;

use std::process::Command;

use support::*;

/// Runs a pg8000 script against `host:port` (as `user`/`password`); the
/// script's stdout, or its error. A hang is a failure, not a stalled run.
fn pg8000(port: u16, user: &str, password: &str, body: &str) -> Result<String, String> {
    let script = format!(
        "import io, pg8000.native\nc = pg8000.native.Connection({user:?}, host='127.0.0.1', port={port}, database='app', password={password:?}, timeout=20)\n{body}\n"
    );
    let child = Command::new("timeout")
        .args(["60", "python3", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with pg8000 (scripts/test.sh installs it)");
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "exit {:?}: {}{}",
            out.status.code(),
            stdout,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

const COPY_BOTH: &str = r#"
c.run("create temporary table t (id int, email text)")
c.run("copy t from stdin", stream=io.StringIO("1\tann@example.com\n2\tbob@example.com\n"))
out = io.StringIO()
try:
    c.run("copy t to stdout", stream=out)
    print("copied:", out.getvalue().replace("\n", ";"))
except Exception as e:
    print("refused:", e)
print("after:", c.run("select count(*) from t")[0][0])
"#;

#[test]
fn pg8000_copy_from_then_copy_to_gets_an_answer_under_masking() {
    let direct = pg8000(pg().port, "app", PG_PASSWORD, COPY_BOTH).unwrap();
    assert!(
        direct.contains("copied: 1\tann@example.com;2\tbob@example.com;"),
        "{direct}"
    );
    let key = signing_key().display().to_string();
    let gw = Gateway::start(&format!(
        "\n[connections.masking]\ndetectors = [\"email\"]\nhash_key = \"file:{key}\"\n"
    ));
    let (_cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let through = pg8000(addr.port(), "anything", "unused", COPY_BOTH)
        .unwrap_or_else(|e| panic!("through custody: {e}"));
    // Either the rows arrive masked, or a clear refusal does; then the session goes on.
    assert!(
        through.contains("copied: 1\t[EMAIL];2\t[EMAIL];") || through.contains("refused:"),
        "{through}"
    );
    assert!(!through.contains("ann@example.com"), "{through}");
    assert!(through.contains("after: 2"), "{through}");
}

/// node-postgres (and pg-cursor), installed by scripts/test.sh under target/npm.
fn node_cursor(host: &str, port: u16, user: &str, password: &str) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("node")
        .arg(format!("{root}/tests/node/cursor.js"))
        .env("NODE_PATH", format!("{root}/target/npm/node_modules"))
        .env("PGHOST", host)
        .env("PGPORT", port.to_string())
        .env("PGUSER", user)
        .env("PGPASSWORD", password)
        .env("PGDATABASE", "app")
        .output()
        .expect("node (scripts/test.sh installs pg and pg-cursor under target/npm)");
    assert!(
        out.status.success(),
        "node-postgres via {host}:{port}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn node_postgres_with_pg_cursor_reads_as_directly() {
    let direct = node_cursor("127.0.0.1", pg().port, "app", PG_PASSWORD);
    assert!(
        direct.contains("notify: node_chan ping own=true"),
        "{direct}"
    );
    let gw = Gateway::start("");
    let (_cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let through = node_cursor(&addr.ip().to_string(), addr.port(), "anything", "unused");
    assert_eq!(through, direct);
}
