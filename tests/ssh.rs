//! SSH through Custody with real OpenSSH on both ends: sshd upstream, ssh and
//! scp as clients through `custody connect --stdio`.

mod support;

use std::process::Command;
use std::time::Duration;

use support::sshd::{audit_of, run, ssh_client, sshd, SSH_USER};
use support::*;

const LIMIT: Duration = Duration::from_secs(60);

fn gateway(extra: &str) -> Gateway {
    let s = sshd();
    let conns = format!(
        "{}{}{}",
        s.connection("web-1", ""),
        s.connection(
            "web-guarded",
            "[connections.guardrails]\ndeny_patterns = [\"rm -rf\"]\n[connections.masking]\ndetectors = [\"email\"]\n"
        ),
        extra
    );
    Gateway::start(&format!("[ssh]\nlogin_timeout = \"3s\"\n{conns}"))
}

#[test]
fn exec_status_stdout_stderr_and_audit_env() {
    let gw = gateway("");
    let t = token("alice@example.com");
    let mut cmd = ssh_client("ssh", &gw, &t);
    cmd.args([
        "web-1",
        "echo out; echo err >&2; echo \"id=$CUSTODY_AUDIT_ID\"; whoami; exit 3",
    ]);
    let (code, out, err) = run(cmd, None, LIMIT);
    assert_eq!(code, 3, "stdout {out:?} stderr {err:?}");
    let audit = audit_of(&err);
    assert!(out.starts_with("out\n"), "{out:?}");
    assert!(
        out.contains(&format!("id={audit}")),
        "upstream sees the audit id: {out:?}"
    );
    assert!(out.contains(SSH_USER), "{out:?}");
    assert!(err.contains("err\n"), "{err:?}");
    assert!(!out.contains("err\n"), "stderr stays separate");
    let rec = gw.wait_recordings("\"type\":\"exit\"");
    assert!(
        rec.contains("\"type\":\"exit\"") && rec.contains("\"status\":3"),
        "{rec}"
    );
    assert!(
        rec.contains("echo out; echo err"),
        "the command is recorded"
    );
    // Every session ends when its channel closes, and its recording verifies.
    let (ok, report) = wait_sealed(&gw, &audit);
    assert!(ok, "{report}");
    // The upstream key never leaves the gateway.
    let key = std::fs::read_to_string(&sshd().gw_key).unwrap();
    let secret_line = key.lines().nth(2).unwrap();
    for (what, text) in [
        ("log", gw.proc.log()),
        ("recordings", gw.recordings()),
        ("stdout", out),
        ("stderr", err),
    ] {
        assert!(!text.contains(secret_line), "key material in {what}");
    }
}

#[test]
fn pty_session_replays_as_asciicast() {
    let gw = gateway("");
    let t = token("alice@example.com");
    let mut cmd = ssh_client("ssh", &gw, &t);
    cmd.args(["-tt", "web-1"]);
    let (code, out, err) = run(cmd, Some("echo marker-$((6*7))\nexit 0\n"), LIMIT);
    assert_eq!(code, 0, "stdout {out:?} stderr {err:?}");
    assert!(out.contains("marker-42"), "{out:?}");
    let audit = audit_of(&err);
    let (ok, report) = wait_sealed(&gw, &audit);
    assert!(ok, "{report}");
    let replay = Command::new(bin())
        .args(["replay", &audit, "--store"])
        .arg(format!("file://{}", gw.store.display()))
        .output()
        .unwrap();
    assert!(replay.status.success());
    let cast = String::from_utf8_lossy(&replay.stdout).to_string();
    let header: serde_json::Value = serde_json::from_str(cast.lines().next().unwrap()).unwrap();
    assert_eq!(header["version"], 2, "{cast}");
    assert!(header["width"].as_u64().unwrap() > 0);
    let file = gw.dir.path().join("session.cast");
    std::fs::write(&file, &cast).unwrap();
    let cat = Command::new("asciinema").arg("cat").arg(&file).output();
    match cat {
        Ok(o) => {
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            assert!(String::from_utf8_lossy(&o.stdout).contains("marker-42"));
        }
        // scripts/test.sh installs asciinema; a bare `cargo test` may lack it.
        Err(_) => assert!(cast.contains("marker-42"), "{cast}"),
    }
}

#[test]
fn scp_both_ways_records_file_names_and_sizes() {
    let gw = gateway("");
    let t = token("alice@example.com");
    let local = gw.dir.path().join("payload.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&local, &data).unwrap();
    let remote = format!("/tmp/custody-scp-{}.bin", std::process::id());
    let mut up = ssh_client("scp", &gw, &t);
    up.arg(&local).arg(format!("web-1:{remote}"));
    let (code, _, err) = run(up, None, LIMIT);
    assert_eq!(code, 0, "{err}");
    let back = gw.dir.path().join("back.bin");
    let mut down = ssh_client("scp", &gw, &t);
    down.arg(format!("web-1:{remote}")).arg(&back);
    let (code, _, err) = run(down, None, LIMIT);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(&back).unwrap(), data);
    let rec = gw.wait_recordings("\"bytes_read\":300000");
    assert!(rec.contains(&remote), "{rec}");
    assert!(rec.contains("\"bytes_written\":300000"), "{rec}");
    assert!(rec.contains("\"bytes_read\":300000"), "{rec}");
    let _ = std::fs::remove_file(&remote);
}

#[test]
fn guardrails_refuse_exec_and_masking_applies() {
    let gw = gateway("");
    let t = token("alice@example.com");
    let mut cmd = ssh_client("ssh", &gw, &t);
    cmd.args(["web-guarded", "rm -rf /tmp/custody-nothing"]);
    let (code, out, err) = run(cmd, None, LIMIT);
    assert_ne!(code, 0, "{out} {err}");
    assert!(err.contains("refused by guardrail"), "{err}");
    let rec = gw.wait_recordings("ssh-exec");
    assert!(rec.contains("\"type\":\"guardrail\""), "{rec}");

    let exec = Command::new(bin())
        .args([
            "exec",
            "web-guarded",
            "--gateway",
            &gw.url,
            "--",
            "rm -rf /tmp/x",
        ])
        .env("CUSTODY_TOKEN", &t)
        .output()
        .unwrap();
    assert_eq!(exec.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&exec.stderr).contains("refused by guardrail"));

    let mut cmd = ssh_client("ssh", &gw, &t);
    cmd.args(["web-guarded", "echo contact bob@example.com now"]);
    let (code, out, err) = run(cmd, None, LIMIT);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("bob@example.com"), "{out}");
    assert!(out.contains("contact"), "{out}");
}

#[test]
fn custody_exec_returns_stdout_stderr_and_status() {
    let gw = gateway("");
    let t = token("alice@example.com");
    let out = Command::new(bin())
        .args([
            "exec",
            "web-1",
            "--gateway",
            &gw.url,
            "--",
            "uname -s; echo oops >&2; exit 4",
        ])
        .env("CUSTODY_TOKEN", &t)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Linux\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("oops"), "{err}");
    assert!(err.contains("audit id"), "{err}");
    let (status, body) = http_request_auth(&gw, "web-1", "echo hi", &t);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["stdout"], "hi\n");
    assert_eq!(v["exit_status"], 0);
    assert!(v["audit_id"].as_str().is_some());
}

/// Sessions seal shortly after the client leaves: verify until they do (bounded).
fn wait_sealed(gw: &Gateway, audit: &str) -> (bool, String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (ok, report) = gw.verify(audit);
        if ok || std::time::Instant::now() > deadline {
            return (ok, report);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn http_request_auth(gw: &Gateway, conn: &str, input: &str, token: &str) -> (u16, String) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/exec/{conn}", gw.url))
            .bearer_auth(token)
            .json(&serde_json::json!({ "input": input }))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    })
}

#[test]
fn wrong_host_key_down_upstream_and_forwarding_are_refused() {
    let s = sshd();
    let other = gateway_dir_key();
    let extra = format!(
        "\n[[connections]]\nname = \"web-bad\"\nkind = \"ssh\"\nhost = \"127.0.0.1\"\nport = {}\nuser = \"{SSH_USER}\"\nprivate_key = \"file:{}\"\nhost_key = \"{}\"\nallow = [\"user:alice@example.com\"]\n\n[[connections]]\nname = \"web-down\"\nkind = \"ssh\"\nhost = \"127.0.0.1\"\nport = {}\nuser = \"{SSH_USER}\"\nprivate_key = \"file:{}\"\nhost_key = \"{}\"\nallow = [\"user:alice@example.com\"]\n",
        s.port,
        s.gw_key.display(),
        other,
        free_port(),
        s.gw_key.display(),
        s.host_pub,
    );
    let gw = gateway(&extra);
    let t = token("alice@example.com");

    let mut cmd = ssh_client("ssh", &gw, &t);
    cmd.args(["web-bad", "true"]);
    let (code, _, err) = run(cmd, None, LIMIT);
    assert_eq!(code, 255, "{err}");
    assert!(err.contains("host key mismatch"), "{err}");

    let mut cmd = ssh_client("ssh", &gw, &t);
    cmd.args(["web-down", "true"]);
    let (code, _, err) = run(cmd, None, LIMIT);
    assert_eq!(code, 255, "{err}");
    assert!(err.contains("unreachable"), "{err}");

    let mut cmd = ssh_client("ssh", &gw, &t);
    cmd.args(["-W", &format!("127.0.0.1:{}", pg().port), "web-1"]);
    let (code, _, err) = run(cmd, None, LIMIT);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("prohibited"), "{err}");
    let rec = gw.wait_recordings("direct-tcpip");
    assert!(
        rec.contains("local forwarding to this destination is not enabled"),
        "{rec}"
    );
    // The gateway still serves.
    let mut cmd = ssh_client("ssh", &gw, &t);
    cmd.args(["web-1", "echo still-here"]);
    let (code, out, _) = run(cmd, None, LIMIT);
    assert_eq!((code, out.as_str()), (0, "still-here\n"));
}

/// A host key that is not the test sshd's.
fn gateway_dir_key() -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other");
    support::sshd::keygen(&path);
    std::fs::read_to_string(path.with_extension("pub"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn garbage_and_silent_clients_end_with_a_reason() {
    let gw = gateway("");
    let t = token("alice@example.com");
    let mut garbage = Command::new("sh");
    garbage
        .args(["-c", &format!("(printf 'SSH-2.0-x\\r\\n'; head -c 4096 /dev/urandom; sleep 5) | {} connect web-1 --stdio --gateway {}", bin(), gw.url)])
        .env("CUSTODY_TOKEN", &t);
    let (_, _, err) = run(garbage, None, LIMIT);
    assert!(
        err.contains("session ended: ssh"),
        "the reason names the failure: {err}"
    );

    let mut silent = Command::new("sh");
    silent
        .args([
            "-c",
            &format!(
                "sleep 8 | {} connect web-1 --stdio --gateway {}",
                bin(),
                gw.url
            ),
        ])
        .env("CUSTODY_TOKEN", &t);
    let (_, _, err) = run(silent, None, LIMIT);
    assert!(err.contains("did not finish the SSH handshake"), "{err}");

    let mut cmd = ssh_client("ssh", &gw, &t);
    cmd.args(["web-1", "echo alive"]);
    let (code, out, _) = run(cmd, None, LIMIT);
    assert_eq!((code, out.as_str()), (0, "alive\n"));
}

#[test]
fn env_listen_sftp_and_huge_commands() {
    let gw = gateway("");
    let t = token("alice@example.com");
    // Environment requests: LANG is allowed by default, others are refused,
    // and a client cannot forge the audit id.
    let mut cmd = ssh_client("ssh", &gw, &t);
    cmd.args([
        "-o",
        "SetEnv=LANG=C.UTF-8 FOO=bar CUSTODY_AUDIT_ID=forged",
        "web-1",
        "echo \"$LANG/$FOO/$CUSTODY_AUDIT_ID\"",
    ]);
    let (code, out, err) = run(cmd, None, LIMIT);
    assert_eq!(code, 0, "{err}");
    let audit = audit_of(&err);
    assert_eq!(out, format!("C.UTF-8//{audit}\n"));

    // `custody connect --listen` for plain `ssh -p`.
    let (_conn, addr) = gw.connect("web-1", &t);
    let mut cmd = Command::new("ssh");
    cmd.args([
        "-F",
        "/dev/null",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-p",
        &addr.port().to_string(),
        "127.0.0.1",
        "echo via-listen",
    ]);
    let (code, out, err) = run(cmd, None, LIMIT);
    assert_eq!((code, out.as_str()), (0, "via-listen\n"), "{err}");

    // sftp: file operations are recorded by name.
    let dir = format!("/tmp/custody-sftp-{}", std::process::id());
    let mut cmd = ssh_client("sftp", &gw, &t);
    cmd.args(["-b", "-", "web-1"]);
    let script = format!("mkdir {dir}\nrename {dir} {dir}-moved\nrmdir {dir}-moved\n");
    let (code, _, err) = run(cmd, Some(&script), LIMIT);
    assert_eq!(code, 0, "{err}");
    let rec = gw.wait_recordings("\"op\":\"rmdir\"");
    for op in ["mkdir", "rename", "rmdir"] {
        assert!(rec.contains(&format!("\"op\":\"{op}\"")), "{op}: {rec}");
    }
    assert!(rec.contains(&format!("{dir}-moved")), "{rec}");

    // A command over 64 KiB is refused before it reaches the upstream.
    let huge = format!("echo {}", "a".repeat(100_000));
    let mut cmd = ssh_client("ssh", &gw, &t);
    cmd.args(["web-1", &huge]);
    let (code, _, err) = run(cmd, None, LIMIT);
    assert_eq!(code, 126, "{err}");
    assert!(err.contains("at most 65536"), "{err}");
}
