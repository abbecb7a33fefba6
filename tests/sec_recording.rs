//! Issue 11, items 10 and 12: a sealed recording cannot be extended by
//! creating objects beside its segments (what a bucket's objectCreator role
//! allows), `replay` refuses what does not verify, and nothing a client
//! sends can forge lines in `replay`'s output.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

fn exec(gw: &Gateway, sql: &str) -> String {
    let out = Command::new(bin())
        .args(["exec", "pg", "--gateway", &gw.url, "--", sql])
        .env("CUSTODY_TOKEN", token("alice@example.com"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{err}");
    err.split("audit id ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("custody exec names the audit id: {err}"))
        .to_string()
}

/// The recording's folder, once its manifest is there.
fn sealed_dir(gw: &Gateway, audit: &str) -> PathBuf {
    let dir = gw.store.join(custody::recording::store::record_dir(audit));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !dir.join("manifest.json").exists() {
        assert!(Instant::now() < deadline, "{audit} was never sealed");
        std::thread::sleep(Duration::from_millis(50));
    }
    dir
}

/// `custody replay` with extra arguments: (exit code, stdout, stderr).
fn replay(gw: &Gateway, audit: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(["replay", audit, "--store"])
        .arg(format!("file://{}", gw.store.display()))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Forged events `1..events` that continue after the recording's last one,
/// as the attacker wrote them: a second segment 2 that starts at event 1.
fn forged_segment(audit: &str, events: u64) -> String {
    let mut out = format!(
        "{{\"format\":\"custody-recording/1\",\"audit_id\":\"{audit}\",\"segment\":2,\"first_seq\":1,\"prev_sha256\":null}}\n"
    );
    let ts = (chrono::Utc::now() + chrono::Duration::seconds(5)).to_rfc3339();
    for seq in 1..events {
        let sql = if seq == 1 {
            "delete from payroll"
        } else {
            "select 'forged'"
        };
        out.push_str(&format!(
            "{{\"seq\":{seq},\"ts\":\"{ts}\",\"type\":\"statement\",\"sql\":\"{sql}\",\"protocol\":\"simple\",\"tags\":[\"DELETE 9\"],\"rows\":9,\"error\":null,\"duration_ms\":1.0}}\n"
        ));
    }
    out
}

fn manifest_events(dir: &Path) -> u64 {
    let text = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    let body: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    body["events"].as_u64().unwrap()
}

#[test]
fn an_object_beside_the_segments_fails_verify_and_replay_refuses() {
    let gw = Gateway::start("");
    let audit = exec(&gw, "select 'genuine' as word");
    let dir = sealed_dir(&gw, &audit);
    let (ok, report) = gw.verify(&audit);
    assert!(ok && report.contains("VERIFIED"), "{report}");

    // The attack: one new object, a second spelling of segment 2.
    let events = manifest_events(&dir);
    std::fs::write(dir.join("00002.jsonl"), forged_segment(&audit, events)).unwrap();
    let (ok, report) = gw.verify(&audit);
    assert!(!ok && report.contains("FAILED"), "{report}");
    assert!(
        report.contains("00002.jsonl") && report.contains("not part of the sealed recording"),
        "the extra object is named: {report}"
    );

    let (code, out, err) = replay(&gw, &audit, &[]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(!out.contains("payroll"), "nothing printed: {out}");
    assert!(
        err.contains("does not verify")
            && err.contains("00002.jsonl")
            && err.contains("--unverified"),
        "{err}"
    );
    for format in ["json", "asciicast", "text"] {
        let (code, out, _) = replay(&gw, &audit, &["--format", format]);
        assert!(code != 0 && out.is_empty(), "{format}: {out}");
    }

    // Asked for explicitly, it prints what is there under a warning.
    let (code, out, err) = replay(&gw, &audit, &["--unverified"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("WARNING: recording"), "{out}");
    assert!(
        out.contains("does not verify") && err.contains("00002.jsonl"),
        "{out}{err}"
    );
    assert!(out.contains("genuine"), "{out}");
    assert!(
        !out.contains("payroll"),
        "objects outside the recording are never read: {out}"
    );
}

#[test]
fn other_spellings_and_strays_are_named() {
    let gw = Gateway::start("");
    let audit = exec(&gw, "select 'genuine' as word");
    let dir = sealed_dir(&gw, &audit);
    let events = manifest_events(&dir);
    let forged = forged_segment(&audit, events);
    for name in ["+00002.jsonl", "0000002.jsonl", "000002.JSONL", ".tmp-x"] {
        std::fs::write(dir.join(name), &forged).unwrap();
        let (ok, report) = gw.verify(&audit);
        assert!(!ok && report.contains(name), "{name}: {report}");
        std::fs::remove_file(dir.join(name)).unwrap();
    }
    // A name that would print a verdict line of its own.
    let name = format!("x\nrecording {audit}: VERIFIED");
    std::fs::write(dir.join(&name), &forged).unwrap();
    let (ok, report) = gw.verify(&audit);
    assert!(!ok && report.contains("x\\nrecording"), "{report}");
    assert_eq!(
        report
            .lines()
            .filter(|l| l.starts_with("recording "))
            .count(),
        1,
        "one verdict line: {report}"
    );
    std::fs::remove_file(dir.join(&name)).unwrap();
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/000001.jsonl"), &forged).unwrap();
    let (ok, report) = gw.verify(&audit);
    assert!(!ok && report.contains("sub/000001.jsonl"), "{report}");
    std::fs::remove_dir_all(dir.join("sub")).unwrap();

    // A line appended to the manifest after its signature.
    let manifest = dir.join("manifest.json");
    let original = std::fs::read(&manifest).unwrap();
    let mut padded = original.clone();
    padded.extend_from_slice(b"{\"note\":\"forged\"}\n");
    std::fs::write(&manifest, &padded).unwrap();
    let (ok, report) = gw.verify(&audit);
    assert!(!ok && report.contains("manifest"), "{report}");
    std::fs::write(&manifest, &original).unwrap();
    let (ok, report) = gw.verify(&audit);
    assert!(ok, "restored: {report}");
}

#[test]
fn replay_escapes_what_a_client_sent() {
    let gw = Gateway::start("");
    let fake = "2026-12-01 10:00:00.000  session ended: completed; 0 statements";
    let sql = format!("select 1 /*\n{fake}\r\n== session ended\x1b[2K\x07*/");
    let audit = exec(&gw, &sql);
    sealed_dir(&gw, &audit);

    let (code, out, err) = replay(&gw, &audit, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains('\x1b') && !out.contains('\x07') && !out.contains('\r'),
        "no raw control characters: {out:?}"
    );
    assert!(
        out.lines()
            .all(|l| !l.starts_with("2026-12-01 10:00:00.000") && !l.starts_with("==")),
        "no forged line: {out}"
    );
    assert!(
        out.contains("select 1 /*\\n2026-12-01 10:00:00.000  session ended")
            && out.contains("\\r\\n== session ended\\u{1b}[2K\\u{7}*/"),
        "escaped where it stood: {out}"
    );
    assert_eq!(
        out.lines().filter(|l| l.contains("session ended:")).count(),
        2,
        "the escaped statement and the real end: {out}"
    );

    // JSON stays JSON, with the statement exactly as sent.
    let (code, out, err) = replay(&gw, &audit, &["--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let sqls: Vec<String> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("one JSON event per line"))
        .filter_map(|v| v["sql"].as_str().map(str::to_string))
        .collect();
    assert_eq!(sqls, vec![sql]);
}

/// The same attack on a gs:// store (the GCS emulator): the bucket lists
/// names its own way, and the same canonical-name check applies.
#[test]
fn gcs_objects_beside_the_segments_are_named_too() {
    let ep = gcs();
    let bucket = gcs_bucket(ep);
    let dir = tempfile::tempdir().unwrap();
    let unused = dir.path().join("unused");
    let text = config(&unused, "").replace(
        &format!("store = \"file://{}\"", unused.display()),
        &format!("store = \"gs://{bucket}/custody\"\nendpoint = \"{ep}\""),
    );
    let gw = Gateway::start_with(dir, &text, unused);
    let audit = exec(&gw, "select 'genuine' as word");
    let prefix = format!("custody/{}", custody::recording::store::record_dir(&audit));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !gcs_objects(ep, &bucket, &prefix)
        .iter()
        .any(|n| n.ends_with("manifest.json"))
    {
        assert!(Instant::now() < deadline, "{audit} was never sealed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let public = signing_key().with_file_name("signing.pub");
    let run = |args: &[&str]| {
        let out = Command::new(bin())
            .args(args)
            .args(["--store", &format!("gs://{bucket}/custody")])
            .env("STORAGE_EMULATOR_HOST", ep)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let key = public.to_str().unwrap();
    let (ok, report, _) = run(&["verify", &audit, "--public-key", key]);
    assert!(ok && report.contains("VERIFIED"), "{report}");

    // objectCreator is enough: create two objects under the recording's prefix.
    for name in ["00002.jsonl", "x/000001.jsonl"] {
        let (status, body) = http_request(
            &format!("{ep}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={prefix}{name}"),
            "POST",
            &forged_segment(&audit, 3),
        );
        assert_eq!(status, 200, "{body}");
    }
    let (ok, report, _) = run(&["verify", &audit, "--public-key", key]);
    assert!(!ok, "{report}");
    assert!(
        report.contains("\"00002.jsonl\"") && report.contains("\"x/000001.jsonl\""),
        "{report}"
    );
    let (ok, out, err) = run(&["replay", &audit, "--public-key", key]);
    assert!(
        !ok && out.is_empty() && err.contains("00002.jsonl"),
        "{out}{err}"
    );
}
