//! Attacks on the SSH guardrails and recording (issue 11, items 12 and 13),
//! each with real OpenSSH on both ends through `custody connect --stdio`.

mod support;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::sshd::{audit_of, run, ssh_client, sshd, SSH_USER};
use support::*;

const LIMIT: Duration = Duration::from_secs(60);

/// `web-open` has no patterns; `web-guarded` denies `topsecret` and `pii.txt`;
/// `web-sub` lists the extra subsystem the test sshd offers.
fn gateway() -> Gateway {
    let s = sshd();
    let conns = format!(
        "{}{}{}",
        s.connection("web-open", ""),
        s.connection(
            "web-guarded",
            "[connections.guardrails]\ndeny_patterns = [\"topsecret\", \"pii\\\\.txt\"]\n"
        ),
        s.connection("web-sub", "subsystems = [\"custody-echo\"]\n"),
    );
    Gateway::start(&format!("[ssh]\nlogin_timeout = \"3s\"\n{conns}"))
}

/// A file only the upstream account can read, holding `marker`.
fn upstream_file(name: &str, marker: &str) -> String {
    let path = format!("/home/{SSH_USER}/{name}");
    std::fs::write(&path, format!("{marker}\n")).unwrap();
    let _ = Command::new("chown").args([SSH_USER, &path]).status();
    path
}

#[test]
fn shell_without_pty_is_refused_where_patterns_apply() {
    let gw = gateway();
    let t = token("alice@example.com");
    upstream_file("pii.txt", "SSN-111-22-3333");
    let mut cmd = ssh_client("ssh", &gw, &t);
    cmd.args(["-T", "web-guarded"]);
    let (code, out, err) = run(cmd, Some("cat ~/pii.txt\n"), LIMIT);
    assert!(!out.contains("SSN-111"), "the shell ran: {out:?}");
    assert_eq!(code, 126, "stdout {out:?} stderr {err:?}");
    assert!(err.contains("shell without a terminal"), "{err}");
    let audit = audit_of(&err);
    let rec = gw.wait_recordings("shell_without_pty");
    assert!(rec.contains(&audit), "{rec}");
    assert!(rec.contains("\"type\":\"guardrail\""), "{rec}");

    // Without patterns a pipe into a shell works as before.
    let mut cmd = ssh_client("ssh", &gw, &t);
    cmd.args(["-T", "web-open"]);
    let (code, out, err) = run(cmd, Some("echo piped-$((6*7))\n"), LIMIT);
    assert_eq!((code, out.as_str()), (0, "piped-42\n"), "{err}");
}

#[test]
fn exec_patterns_see_through_shell_quoting() {
    let gw = gateway();
    let t = token("alice@example.com");
    let secret = upstream_file("topsecret", "CLASSIFIED-42");
    let home = format!("/home/{SSH_USER}");
    for (command, rule) in [
        (format!("cat {home}/top''secret"), "pattern topsecret"),
        (format!("cat {home}/top\\secret"), "pattern topsecret"),
        (format!("cat {home}/\"top\"secret"), "pattern topsecret"),
        (format!("cat {home}/top\\\nsecret"), "pattern topsecret"),
        (format!("cat {home}/$(printf top)secret"), "shell_syntax"),
        (format!("cat {home}/`printf top`secret"), "shell_syntax"),
        (format!("cat {home}/top*"), "shell_syntax"),
        (format!("cat {home}/top{{s,}}ecret"), "shell_syntax"),
        ("cat ~/pii''.txt".to_string(), "pattern pii"),
        // A second shell level is lexed too, and a shell reading stdin is refused.
        (
            format!("sh -c \"cat {home}/top''secret\""),
            "pattern topsecret",
        ),
        (
            format!("eval cat {home}/top\\\\secret"),
            "pattern topsecret",
        ),
        ("bash".to_string(), "shell_syntax"),
    ] {
        let mut cmd = ssh_client("ssh", &gw, &t);
        cmd.args(["web-guarded", &command]);
        let (code, out, err) = run(cmd, None, LIMIT);
        assert!(!out.contains("CLASSIFIED"), "{command:?} ran: {out:?}");
        assert_eq!(code, 126, "{command:?}: stdout {out:?} stderr {err:?}");
        assert!(
            err.contains(&format!("refused by guardrail {rule}")),
            "{command:?}: {err}"
        );
    }
    // Commands with fixed words still run.
    let mut cmd = ssh_client("ssh", &gw, &t);
    cmd.args(["web-guarded", "echo 'plain' \"words\" | tr a-z A-Z"]);
    let (code, out, err) = run(cmd, None, LIMIT);
    assert_eq!((code, out.as_str()), (0, "PLAIN WORDS\n"), "{err}");

    // Lines typed at a terminal are lexed the same way.
    let mut cmd = ssh_client("ssh", &gw, &t);
    cmd.args(["-tt", "web-guarded"]);
    // Input typed ahead in the refused line's packet is dropped with it: a
    // second `exit` ends the shell even when the first shared that packet.
    let (_, out, _) = run(cmd, Some("cat ~/top''secret\nexit 0\nexit 0\n"), LIMIT);
    assert!(!out.contains("CLASSIFIED"), "{out}");
    assert!(
        out.contains("refused by guardrail pattern topsecret"),
        "{out}"
    );

    // With a terminal, a shell that reads stdin runs: its typed lines are checked.
    let mut cmd = ssh_client("ssh", &gw, &t);
    cmd.args(["-tt", "web-guarded", "bash"]);
    let (_, out, err) = run(cmd, Some("echo in-bash-ok\nexit 0\n"), LIMIT);
    assert!(out.contains("in-bash-ok"), "stdout {out:?} stderr {err:?}");

    // POST /v1/exec goes through the same lexer.
    let exec = Command::new(bin())
        .args(["exec", "web-guarded", "--gateway", &gw.url, "--"])
        .arg(format!("cat {home}/top''secret"))
        .env("CUSTODY_TOKEN", &t)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&exec.stdout);
    assert!(!stdout.contains("CLASSIFIED"), "{stdout}");
    assert_eq!(exec.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&exec.stderr).contains("refused by guardrail pattern topsecret")
    );
    let _ = std::fs::remove_file(secret);
}

#[test]
fn subsystems_other_than_sftp_need_listing() {
    let gw = gateway();
    let t = token("alice@example.com");
    let mut cmd = ssh_client("ssh", &gw, &t);
    cmd.args(["-s", "web-open", "custody-echo"]);
    let (code, out, err) = run(cmd, Some("echoed\n"), LIMIT);
    assert_ne!(code, 0, "stdout {out:?} stderr {err:?}");
    assert!(!out.contains("echoed"), "{out:?}");
    let rec = gw.wait_recordings("does not list it in `subsystems`");
    assert!(rec.contains("custody-echo"), "{rec}");

    let mut cmd = ssh_client("ssh", &gw, &t);
    cmd.args(["-s", "web-sub", "custody-echo"]);
    let (code, out, err) = run(cmd, Some("echoed\n"), LIMIT);
    assert_eq!((code, out.as_str()), (0, "echoed\n"), "{err}");
}

#[test]
fn sftp_links_setstat_and_server_side_copies_are_recorded() {
    let gw = gateway();
    let t = token("alice@example.com");
    let dir = format!("/tmp/custody-secsftp-{}", std::process::id());
    let local = gw.dir.path().join("f.bin");
    std::fs::write(&local, vec![5u8; 4321]).unwrap();
    let mut cmd = ssh_client("sftp", &gw, &t);
    cmd.args(["-b", "-", "web-open"]);
    let script = format!(
        "mkdir {dir}\nput -p {} {dir}/f\nln {dir}/f {dir}/hard\nchmod -h 600 {dir}/f\ncp {dir}/f {dir}/copy\n",
        local.display()
    );
    let (code, out, err) = run(cmd, Some(&script), LIMIT);
    assert_eq!(code, 0, "stdout {out:?} stderr {err:?}");
    assert_eq!(std::fs::read(format!("{dir}/copy")).unwrap().len(), 4321);
    let rec = gw.wait_recordings("\"op\":\"copy\"");
    let events: Vec<serde_json::Value> = rec
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["type"] == "file")
        .collect();
    let has = |op: &str, path: &str| {
        events
            .iter()
            .find(|e| e["op"] == op && e["path"] == path)
            .cloned()
    };
    // put -p: FSETSTAT on the upload's handle; chmod -h: lsetstat@openssh.com.
    let setstats = events
        .iter()
        .filter(|e| e["op"] == "setstat" && e["path"] == format!("{dir}/f"))
        .count();
    assert_eq!(setstats, 2, "{rec}");
    let hard = has("hardlink", &format!("{dir}/hard")).expect("hardlink recorded");
    assert_eq!(hard["to"], format!("{dir}/f"));
    let copy = has("copy", &format!("{dir}/f")).expect("copy recorded");
    assert_eq!(copy["to"], format!("{dir}/copy"), "{copy}");
    assert_eq!(copy["bytes_written"], 4321, "{copy}");
    let written = has("write", &format!("{dir}/copy")).expect("copy target recorded");
    assert_eq!(written["bytes_written"], 4321, "{written}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// SFTP packets for a hand-driven subsystem channel.
fn pkt(ty: u8, body: &[u8]) -> Vec<u8> {
    [&(body.len() as u32 + 1).to_be_bytes()[..], &[ty], body].concat()
}
fn s(x: &[u8]) -> Vec<u8> {
    [&(x.len() as u32).to_be_bytes()[..], x].concat()
}

/// The types of the whole packets in `stream`.
fn types(mut stream: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while stream.len() >= 5 {
        let len = u32::from_be_bytes([stream[0], stream[1], stream[2], stream[3]]) as usize;
        if stream.len() < 4 + len {
            break;
        }
        out.push(stream[4]);
        stream = &stream[4 + len..];
    }
    out
}

#[test]
fn unknown_sftp_extensions_and_types_are_answered_unsupported_not_forwarded() {
    let gw = gateway();
    let t = token("alice@example.com");
    let mut cmd = ssh_client("ssh", &gw, &t);
    cmd.args(["-s", "web-open", "sftp"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut sin = child.stdin.take().unwrap();
    let requests = [
        pkt(1, &3u32.to_be_bytes()),
        pkt(
            200,
            &[&7u32.to_be_bytes()[..], &s(b"evil@example.com"), &s(b"/x")].concat(),
        ),
        pkt(25, &8u32.to_be_bytes()),
        // Still a working channel afterwards: REALPATH "." answers NAME.
        pkt(16, &[&9u32.to_be_bytes()[..], &s(b".")].concat()),
    ]
    .concat();
    sin.write_all(&requests).unwrap();
    sin.flush().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(30);
        // VERSION, two STATUS, one NAME: stop once the NAME (type 104) is in.
        while Instant::now() < deadline && !types(&got).contains(&104) {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        got
    });
    let got = reader.join().unwrap();
    drop(sin);
    let _ = child.wait();
    assert_eq!(types(&got), vec![2, 101, 101, 104], "{got:?}");
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.contains("custody: extension \"evil@example.com\" is not allowed"),
        "{text:?}"
    );
    assert!(
        text.contains("custody: request type 25 is not allowed"),
        "{text:?}"
    );
    // Each answer is STATUS (101) for its id with SSH_FX_OP_UNSUPPORTED (8).
    for id in [7u32, 8] {
        let want = [&[101u8][..], &id.to_be_bytes(), &8u32.to_be_bytes()].concat();
        assert!(
            got.windows(want.len()).any(|w| w == want),
            "id {id}: {got:?}"
        );
    }
    let rec = gw.wait_recordings("request type 25");
    assert!(rec.contains("evil@example.com"), "{rec}");
}

#[test]
fn legacy_scp_transfers_are_recorded_as_files() {
    let gw = gateway();
    let t = token("alice@example.com");
    let local = gw.dir.path().join("legacy.bin");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 13 % 251) as u8).collect();
    std::fs::write(&local, &data).unwrap();
    let remote = format!("/tmp/custody-scp-O-{}.bin", std::process::id());
    let mut up = ssh_client("scp", &gw, &t);
    up.arg("-O").arg(&local).arg(format!("web-open:{remote}"));
    let (code, _, err) = run(up, None, LIMIT);
    assert_eq!(code, 0, "{err}");
    let back = gw.dir.path().join("legacy-back.bin");
    let mut down = ssh_client("scp", &gw, &t);
    down.arg("-O").arg(format!("web-open:{remote}")).arg(&back);
    let (code, _, err) = run(down, None, LIMIT);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(&back).unwrap(), data, "bytes pass untouched");
    let rec = gw.wait_recordings("\"bytes_read\":200000");
    let files: Vec<serde_json::Value> = rec
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["type"] == "file" && v["path"] == remote.as_str())
        .collect();
    assert!(
        files
            .iter()
            .any(|f| f["op"] == "write" && f["bytes_written"] == 200_000),
        "{rec}"
    );
    assert!(
        files
            .iter()
            .any(|f| f["op"] == "read" && f["bytes_read"] == 200_000),
        "{rec}"
    );
    // File contents are not recorded as terminal output (acks are).
    let output: usize = rec
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "output")
        .map(|v| v["data"].as_str().unwrap_or_default().len())
        .sum();
    assert!(output < 1000, "scp data recorded as output: {output} bytes");

    // A program that only calls itself scp is not trusted with raw output.
    let fake = format!("/home/{SSH_USER}/scp");
    std::fs::write(&fake, "#!/bin/sh\necho not-scp-output\n").unwrap();
    let _ = Command::new("chmod").args(["755", &fake]).status();
    let mut cmd = ssh_client("ssh", &gw, &t);
    cmd.args(["web-open", &format!("{fake} -f /etc/hostname")]);
    let (code, out, err) = run(cmd, None, LIMIT);
    assert_eq!((code, out.as_str()), (0, "not-scp-output\n"), "{err}");
    let rec = gw.wait_recordings("not-scp-output\n\"");
    assert!(rec.contains("\"type\":\"output\""), "{rec}");
    let _ = std::fs::remove_file(&fake);
    let _ = std::fs::remove_file(&remote);
}

/// Span names an OTLP http/protobuf receiver got, with their attribute values.
type NamedSpan = (String, Vec<String>);

#[derive(Clone, Default)]
struct Spans(std::sync::Arc<std::sync::Mutex<Vec<NamedSpan>>>);

async fn span_receiver() -> (String, Spans) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    async fn traces(
        axum::extract::State(got): axum::extract::State<Spans>,
        body: axum::body::Bytes,
    ) -> axum::http::StatusCode {
        let Ok(req) = ExportTraceServiceRequest::decode(body) else {
            return axum::http::StatusCode::BAD_REQUEST;
        };
        let mut out = got.0.lock().unwrap();
        for s in req
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans)
        {
            let values = s
                .attributes
                .iter()
                .map(|kv| format!("{:?}", kv.value))
                .collect();
            out.push((s.name, values));
        }
        axum::http::StatusCode::OK
    }
    let got = Spans::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(traces))
        .with_state(got.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_spans_never_carry_the_command() {
    let (endpoint, spans) = span_receiver().await;
    let s = sshd();
    let conns = s.connection(
        "web-guarded",
        "[connections.guardrails]\ndeny_patterns = [\"topsecret\"]\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("recordings");
    let gw = Gateway::start_env(
        dir,
        &config(&store, &format!("[ssh]\nlogin_timeout = \"3s\"\n{conns}")),
        store,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let t = token("alice@example.com");
    let mut cmd = ssh_client("ssh", &gw, &t);
    cmd.args(["web-guarded", "hunterstwo --token topsecret"]);
    let (code, _, err) = tokio::task::spawn_blocking(move || run(cmd, None, LIMIT))
        .await
        .unwrap();
    assert_eq!(code, 126, "{err}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = spans.0.lock().unwrap().clone();
        for (name, values) in &got {
            assert!(
                !name.to_lowercase().contains("hunterstwo"),
                "span named {name:?}"
            );
            let leaked = values.iter().any(|v| v.contains("hunterstwo"));
            assert!(!leaked, "{name}: {values:?}");
        }
        if got.iter().any(|(name, _)| name == "ssh exec") {
            break;
        }
        assert!(Instant::now() < deadline, "no \"ssh exec\" span: {got:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn an_sftp_request_the_tap_cannot_read_ends_the_channel() {
    let gw = gateway();
    let t = token("alice@example.com");
    let path = format!("/tmp/custody-padded-{}", std::process::id());
    let mut cmd = ssh_client("ssh", &gw, &t);
    cmd.args(["-s", "web-open", "sftp"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut sin = child.stdin.take().unwrap();
    sin.write_all(&pkt(1, &3u32.to_be_bytes())).unwrap();
    sin.flush().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    // OPEN(write, create) padded past the tap's 64 KiB: sftp-server ignores
    // trailing bytes, so without the gate the file would be created unrecorded.
    let open = [
        &1u32.to_be_bytes()[..],
        &s(path.as_bytes()),
        &(0x2u32 | 0x8 | 0x10).to_be_bytes(),
        &0u32.to_be_bytes(),
        &vec![0u8; 70_000],
    ]
    .concat();
    let _ = sin.write_all(&pkt(3, &open));
    let _ = sin.flush();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let _ = stdout.read_to_end(&mut got);
        got
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reader.is_finished() {
        assert!(Instant::now() < deadline, "the channel stayed open");
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = reader.join().unwrap();
    drop(sin);
    let _ = child.wait();
    assert_eq!(types(&got), vec![2], "only VERSION came back: {got:?}");
    assert!(!std::path::Path::new(&path).exists(), "{path} was created");
    let rec = gw.wait_recordings("the channel was closed");
    assert!(rec.contains("cannot read"), "{rec}");
}
