//! Issue 13, items 2 and 5: what crosses a tunnel whatever its size or
//! encoding. Rows larger than the CLI's WebSocket message limit, masked or
//! not; sessions in a non-UTF-8 client_encoding (LATIN1, KOI8-R), COPY
//! included: what a client gets through Custody is what it gets directly.

mod support;

use std::os::unix::ffi::OsStrExt;
use std::process::{Command, Stdio};

use support::*;

fn masked_gateway() -> Gateway {
    let key = signing_key().display().to_string();
    let extra =
        format!("\n[connections.masking]\ndetectors = [\"email\"]\nhash_key = \"file:{key}\"\n");
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("recordings");
    // Room for 50 MB rows: the gateway's own limit, not the tunnel's.
    let text = config(&store, &extra).replace(
        "max_message_bytes = 1048576",
        "max_message_bytes = 67108864",
    );
    Gateway::start_with(dir, &text, store)
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_larger_than_a_websocket_message_cross_masked_and_unmasked() {
    let gw = masked_gateway();
    let (_cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let c = pg_client(addr).await;
    for mb in [1usize, 5, 20, 50] {
        let n = mb * 1_000_000;
        let rows = c
            .query(
                &format!("select repeat('x', {n}) || ' bob@example.com'"),
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("{mb} MB row: {e}"));
        let v: String = rows[0].get(0);
        assert_eq!(v.len() - v.trim_start_matches('x').len(), n, "{mb} MB of x");
        assert!(!v.contains("bob@example.com"), "masked at {mb} MB");
    }
    // The session is still good afterwards.
    let one: i32 = c.query_one("select 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

/// psql with `client_encoding` set and raw bytes in that encoding on the
/// command line; stdout as bytes.
fn psql_bytes(addr: std::net::SocketAddr, encoding: &str, sql: &[u8]) -> (bool, Vec<u8>, String) {
    let conninfo = format!(
        "host={} port={} dbname=app user=anything",
        addr.ip(),
        addr.port()
    );
    let out = Command::new("psql")
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", &conninfo, "-c"])
        .arg(std::ffi::OsStr::from_bytes(sql))
        .env("PGCLIENTENCODING", encoding)
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn direct_bytes(encoding: &str, sql: &[u8]) -> Vec<u8> {
    let pg = pg();
    let out = Command::new("psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            &pg.direct_url(),
            "-c",
        ])
        .arg(std::ffi::OsStr::from_bytes(sql))
        .env("PGCLIENTENCODING", encoding)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "direct: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn non_utf8_client_encodings_work_as_they_do_directly() {
    let gw = Gateway::start("");
    let (_cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let cases: [(&str, &[u8]); 4] = [
        ("LATIN1", b"select 'caf\xe9', length('caf\xe9')"),
        ("LATIN1", b"copy (select 'na\xefve' as w) to stdout"),
        ("KOI8R", b"select '\xd0\xd2\xc9\xd7\xc5\xd4'"),
        (
            "KOI8R",
            b"copy (select '\xd0\xd2\xc9\xd7\xc5\xd4' as w) to stdout with (format csv)",
        ),
    ];
    for (enc, sql) in cases {
        let (ok, out, err) = psql_bytes(addr, enc, sql);
        assert!(ok, "{enc} {:?}: {err}", String::from_utf8_lossy(sql));
        assert_eq!(out, direct_bytes(enc, sql), "{enc}: same bytes as directly");
    }
    // And the session survives a switch mid-way (SET, then a query).
    let conninfo = format!(
        "host={} port={} dbname=app user=anything",
        addr.ip(),
        addr.port()
    );
    let out = Command::new("psql")
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", &conninfo])
        .args(["-c", "set client_encoding = 'LATIN1'", "-c"])
        .arg(std::ffi::OsStr::from_bytes(b"select 'caf\xe9'"))
        .env("PGCLIENTENCODING", "UTF8")
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout.windows(4).any(|w| w == b"caf\xe9"),
        "{:?}",
        out.stdout
    );
    let rec = gw.wait_recordings("session_end");
    assert!(rec.contains("\"type\":\"statement\""), "recorded");
}

/// Item 4: under masking a value of a non-text type stays a valid value of
/// its type or becomes NULL, never text its parser rejects (`inet`
/// `10.0.0.1/24` was sent as `[IP_ADDRESS]/24`).
#[tokio::test(flavor = "multi_thread")]
async fn masked_values_of_typed_columns_parse_or_are_null() {
    let key = signing_key().display().to_string();
    let extra = format!(
        "\n[connections.masking]\ndetectors = [\"email\", \"ip_address\"]\nhash_key = \"file:{key}\"\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("recordings");
    let gw = Gateway::start_with(dir, &config(&store, &extra), store);
    let (_cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let sql = "select '10.0.0.1/24'::inet::text, '10.0.0.1/24'::inet, \
               '{\"to\": \"ada@example.com\"}'::jsonb, array['ada@example.com']::text[], 1";
    let (ok, out, err) = psql(addr, &["-A", "-t", "-F", "|", "-c", sql], None);
    assert!(ok, "{err}");
    let cols: Vec<&str> = out.trim_end().split('|').collect();
    assert_eq!(cols.len(), 5, "{out}");
    assert_eq!(cols[0], "[IP_ADDRESS]/24", "text is masked as text");
    assert_eq!(cols[1], "", "an inet a detector matched is NULL: {out}");
    let doc: serde_json::Value =
        serde_json::from_str(cols[2]).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(doc["to"], "[EMAIL]", "jsonb stays JSON");
    assert_eq!(cols[3], "", "a text[] a detector matched is NULL: {out}");
    assert_eq!(cols[4], "1");
    // Text format (psql): the inet column is NULL, not "[IP_ADDRESS]/24".
    let (ok, out, err) = psql(
        addr,
        &[
            "-A",
            "-t",
            "-c",
            "select '10.0.0.1/24'::inet is null, '10.0.0.1/24'::inet",
        ],
        None,
    );
    assert!(ok, "{err}");
    assert!(
        !out.contains("[IP_ADDRESS]"),
        "an inet never carries a placeholder: {out}"
    );
}
