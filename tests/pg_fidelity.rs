//! PostgreSQL fidelity through the tunnel (issue 13): what a client sees at
//! startup (the real backend pid, replication and `options`) and how
//! refusals read.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw frontend: enough of the protocol to see what drivers hide.
struct Raw {
    s: TcpStream,
    buf: BytesMut,
}

impl Raw {
    /// Startup as `app`; returns the client and the BackendKeyData (pid, key).
    async fn connect(addr: SocketAddr) -> (Raw, i32, i32) {
        let s = TcpStream::connect(addr).await.unwrap();
        let mut raw = Raw {
            s,
            buf: BytesMut::new(),
        };
        let mut body = BytesMut::new();
        body.put_i32(196608);
        for (k, v) in [("user", "app"), ("database", "app")] {
            body.put_slice(k.as_bytes());
            body.put_u8(0);
            body.put_slice(v.as_bytes());
            body.put_u8(0);
        }
        body.put_u8(0);
        let mut msg = BytesMut::new();
        msg.put_i32(body.len() as i32 + 4);
        msg.put_slice(&body);
        raw.s.write_all(&msg).await.unwrap();
        let (mut pid, mut key) = (0, 0);
        loop {
            let (tag, mut body) = raw.frame().await;
            match tag {
                b'K' => {
                    pid = body.get_i32();
                    key = body.get_i32();
                }
                b'Z' => return (raw, pid, key),
                b'E' => panic!("startup refused: {:?}", String::from_utf8_lossy(&body)),
                _ => {}
            }
        }
    }

    async fn frame(&mut self) -> (u8, BytesMut) {
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
                let len = len as usize - 4;
                if self.buf.len() >= 5 + len {
                    let tag = self.buf[0];
                    self.buf.advance(5);
                    return (tag, self.buf.split_to(len));
                }
            }
            let n = tokio::time::timeout(Duration::from_secs(20), self.s.read_buf(&mut self.buf))
                .await
                .expect("frame within 20 s")
                .unwrap();
            assert!(n > 0, "connection closed");
        }
    }

    /// A simple query; every frame up to ReadyForQuery.
    async fn query(&mut self, sql: &str) -> Vec<(u8, BytesMut)> {
        let mut msg = BytesMut::new();
        msg.put_u8(b'Q');
        msg.put_i32(sql.len() as i32 + 5);
        msg.put_slice(sql.as_bytes());
        msg.put_u8(0);
        self.s.write_all(&msg).await.unwrap();
        let mut frames = Vec::new();
        loop {
            let f = self.frame().await;
            let done = f.0 == b'Z';
            frames.push(f);
            if done {
                return frames;
            }
        }
    }
}

/// The first column of the first DataRow.
fn first_value(frames: &[(u8, BytesMut)]) -> String {
    let (_, row) = frames.iter().find(|(t, _)| *t == b'D').expect("a row");
    let mut row = row.clone();
    assert!(row.get_i16() >= 1);
    let len = row.get_i32() as usize;
    String::from_utf8(row[..len].to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn backend_pid_is_the_upstreams() {
    let gw = Gateway::start("");
    let (_cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let (mut raw, pid, _key) = Raw::connect(addr).await;
    let frames = raw.query("select pg_backend_pid()").await;
    assert_eq!(first_value(&frames), pid.to_string());

    // The session recognises its own notification by its pid.
    let frames = raw.query("listen fidelity; notify fidelity, 'hello'").await;
    let (_, mut n) = frames
        .iter()
        .find(|(t, _)| *t == b'A')
        .cloned()
        .expect("a NotificationResponse");
    assert_eq!(n.get_i32(), pid);
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_still_reaches_the_upstream_with_the_real_pid() {
    let gw = Gateway::start("");
    let (_cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let c = pg_client(addr).await;
    let cancel = c.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        cancel.cancel_query(tokio_postgres::NoTls).await
    });
    let started = std::time::Instant::now();
    let err = c.simple_query("select pg_sleep(30)").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "57014", "{err}");
    canceller.await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(25));

    // A raw cancel with the real pid and a wrong key does nothing.
    let (mut raw, pid, key) = Raw::connect(addr).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut msg = BytesMut::new();
    msg.put_i32(16);
    msg.put_i32(80877102);
    msg.put_i32(pid);
    msg.put_i32(key.wrapping_add(1));
    s.write_all(&msg).await.unwrap();
    let frames = raw.query("select pg_sleep(1), 'survived'").await;
    assert!(frames.iter().all(|(t, _)| *t != b'E'));
    gw.wait_recordings("unknown cancel key");
}

fn guarded_gateway() -> Gateway {
    Gateway::start(
        r#"
[connections.guardrails]
deny = ["drop"]

[connections.masking]
detectors = ["email"]
"#,
    )
}

#[test]
fn refusals_carry_no_context_from_the_mechanism() {
    let gw = guarded_gateway();
    let (_cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let (_, _, err) = psql(
        addr,
        &[
            "-v",
            "VERBOSITY=verbose",
            "-c",
            "drop table if exists nothing_here",
        ],
        None,
    );
    assert!(err.contains("refused by guardrail"), "{err}");
    assert!(!err.contains("CONTEXT"), "{err}");
    assert!(!err.contains("inline_code_block"), "{err}");
    assert!(!err.contains("pl_exec"), "{err}");
    // Still a real error in a transaction: the transaction is aborted.
    let (_, out, err) = psql(
        addr,
        &[],
        Some("begin;\ncreate temp table kept (n int);\ndrop table kept;\ncommit;\n"),
    );
    assert!(out.contains("ROLLBACK"), "{out}\n{err}");
    assert!(!err.contains("CONTEXT"), "{err}");
}

#[test]
fn binary_copy_refusal_advises_what_works() {
    let gw = Gateway::start(
        r#"
[connections.masking]
columns = { "*.email" = "partial" }
"#,
    );
    let (_cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let (ok, _, err) = psql(
        addr,
        &["-c", "copy (select 1) to stdout (format binary)"],
        None,
    );
    assert!(!ok);
    assert!(
        err.contains("binary COPY TO STDOUT cannot be masked"),
        "{err}"
    );
    assert!(!err.contains("csv"), "{err}");
    assert!(err.contains("use text format"), "{err}");
    assert!(!err.contains("CONTEXT"), "{err}");
}

/// psql against a local endpoint with extra conninfo and PGOPTIONS.
fn psql_with(addr: SocketAddr, conninfo: &str, pgoptions: &str, sql: &str) -> (bool, String) {
    let out = std::process::Command::new("psql")
        .arg("-X")
        .arg(format!(
            "host={} port={} dbname=app user=anything {conninfo}",
            addr.ip(),
            addr.port()
        ))
        .args(["-A", "-t", "-c", sql])
        .env("PGOPTIONS", pgoptions)
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn options_pass_allowed_settings_and_refuse_the_rest() {
    let gw = Gateway::start("");
    let (_cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let (ok, out) = psql_with(
        addr,
        "",
        "-c statement_timeout=1234",
        "show statement_timeout",
    );
    assert!(ok && out.trim() == "1234ms", "{out}");
    let (ok, out) = psql_with(addr, "", "--DateStyle=SQL,DMY", "show datestyle");
    assert!(ok && out.trim() == "SQL, DMY", "{out}");
    let (ok, out) = psql_with(addr, "", "-c work_mem=1MB", "select 1");
    assert!(!ok, "{out}");
    assert!(out.contains("FATAL") && out.contains("work_mem"), "{out}");
    assert!(out.contains("not available through Custody"), "{out}");
    let (ok, out) = psql_with(addr, "", "", "show application_name");
    assert!(ok && out.trim().starts_with("custody/"), "{out}");
}

#[test]
fn guardrails_hold_under_standard_conforming_strings_off() {
    let gw = guarded_gateway();
    let (_cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let scs = "-c standard_conforming_strings=off";
    let (ok, out) = psql_with(addr, "", scs, "show standard_conforming_strings");
    assert!(ok && out.trim() == "off", "{out}");
    let (ok, out) = psql_with(addr, "", scs, r"select 'a\', ' ; drop table users; --'");
    assert!(!ok, "{out}");
    assert!(out.contains("refused by guardrail \"drop\""), "{out}");
}

#[test]
fn replication_is_refused_unless_the_connection_allows_it() {
    let gw = Gateway::start("");
    let (_cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let (ok, out) = psql_with(addr, "replication=database", "", "IDENTIFY_SYSTEM;");
    assert!(!ok, "{out}");
    assert!(
        out.contains("FATAL") && out.contains("replication is not available through Custody"),
        "{out}"
    );

    pg().admin("alter role app replication");
    let gw = Gateway::start("allow_replication = true");
    let (_cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let (ok, out) = psql_with(addr, "replication=database", "", "IDENTIFY_SYSTEM;");
    assert!(ok, "{out}");
    // systemid|timeline|xlogpos|dbname
    assert!(out.trim().ends_with("|app"), "{out}");
    let rec = gw.wait_recordings("IDENTIFY_SYSTEM");
    assert!(
        rec.contains(r#""protocol":"replication""#),
        "recorded as a replication command: {rec}"
    );
}
