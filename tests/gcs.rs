//! Recordings streamed to GCS (the real fake-gcs-server, through Google's
//! official client): segments appear while the session runs, the sealed
//! recording verifies from the bucket, and a GCS that fails ends sessions
//! with a reason and refuses new ones.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

fn gcs_gateway(endpoint: &str, bucket: &str, extra_recording: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("unused");
    let text = config(&store, "").replace(
        &format!("store = \"file://{}\"", store.display()),
        &format!("store = \"gs://{bucket}/custody\"\nendpoint = \"{endpoint}\"\n{extra_recording}"),
    );
    Gateway::start_with(dir, &text, store)
}

fn opened(cli: &Proc) -> String {
    cli.wait_log("opened")
        .split("session ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_string()
}

fn wait_objects(
    endpoint: &str,
    bucket: &str,
    prefix: &str,
    pred: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let names = gcs_objects(endpoint, bucket, prefix);
        if pred(&names) || Instant::now() > deadline {
            return names;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn custody(args: &[&str]) -> (bool, String) {
    let out = Command::new(bin())
        .args(args)
        .env("STORAGE_EMULATOR_HOST", "127.0.0.3:80")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn segments_stream_to_gcs_and_the_sealed_recording_verifies() {
    let ep = gcs();
    let bucket = gcs_bucket(ep);
    let gw = gcs_gateway(ep, &bucket, "");
    let (cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let c = pg_client(addr).await;
    c.simple_query("select 'streamed while running'")
        .await
        .unwrap();
    let audit = opened(&cli);
    let dir = format!("custody/{}", custody::recording::store::record_dir(&audit));

    // While the session is open, its statements are already in the bucket
    // (flush_interval is 1s in the test config); no manifest yet.
    let names = wait_objects(ep, &bucket, &dir, |n| n.len() >= 2);
    assert_eq!(
        names,
        vec![format!("{dir}000001.jsonl"), format!("{dir}000002.jsonl")]
    );
    // Not sealed yet, so it does not verify: printed only when asked.
    assert!(custody(&[
        "replay",
        &audit,
        "--store",
        &format!("gs://{bucket}/custody"),
        "--unverified"
    ])
    .1
    .contains("streamed while running"));

    drop(c);
    let names = wait_objects(ep, &bucket, &dir, |n| {
        n.iter().any(|x| x.ends_with("manifest.json"))
    });
    assert!(
        names.iter().any(|x| x.ends_with("manifest.json")),
        "{names:?}"
    );
    let public = signing_key().with_file_name("signing.pub");
    let (ok, report) = custody(&[
        "verify",
        &audit,
        "--store",
        &format!("gs://{bucket}/custody"),
        "--public-key",
        public.to_str().unwrap(),
    ]);
    assert!(ok && report.contains("VERIFIED"), "{report}");
    let (ok, listed) = custody(&["sessions", "--store", &format!("gs://{bucket}/custody")]);
    assert!(
        ok && listed.contains(&audit) && listed.contains("user:alice@example.com"),
        "{listed}"
    );
    // The readiness probe wrote its own object, once, under the prefix.
    assert_eq!(gcs_objects(ep, &bucket, "custody/_probes/").len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_gcs_ends_sessions_with_a_reason_and_refuses_new_ones() {
    // A private emulator this test can stop.
    let mut emulator = start_fake_gcs("127.0.0.4");
    let ep = "http://127.0.0.4";
    let bucket = gcs_bucket(ep);
    let gw = gcs_gateway(ep, &bucket, "failure_grace = \"2s\"");
    let (cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let c = pg_client(addr).await;
    c.simple_query("select 1").await.unwrap();
    let audit = opened(&cli);

    emulator.kill().unwrap();
    emulator.wait().unwrap();
    // The next flush fails; after the grace the session ends and says why,
    // as the error of the statement in flight.
    let started = Instant::now();
    let err = loop {
        match c.simple_query("select pg_sleep(0.5)").await {
            Err(e) => break e,
            Ok(_) => {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "session outlived a dead store"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    // The reason arrives as the in-flight statement's error; when it lands
    // between two statements the driver only sees the close, and the close
    // frame's reason (printed by custody connect) says the same.
    match err.as_db_error() {
        Some(d) => {
            assert_eq!(d.code().code(), "58000", "{}", d.message());
            assert!(d.message().contains("recording failed"), "{}", d.message());
        }
        None => {
            let log = cli.wait_log("recording failed");
            assert!(
                log.contains("recording failed"),
                "no reason given: {err}; connect said: {log}"
            );
        }
    }

    // New sessions are refused with a clear error, and readiness says why.
    let out = Command::new(bin())
        .args(["exec", "pg", "--gateway", &gw.url, "--", "select 3"])
        .env("CUSTODY_TOKEN", token("alice@example.com"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("cannot be recorded"), "{stderr}");
    let (status, body) = http_get(&format!("{}/readyz", gw.url)).unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("recording write failed"), "{body}");
    assert!(
        gw.proc.log().contains(&audit),
        "the failure is logged with the audit id"
    );
}
