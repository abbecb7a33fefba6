//! SIGTERM (what Cloud Run sends 10 s before SIGKILL): the gateway stops
//! accepting, tells live sessions why, seals their recordings and exits.

mod support;

use std::time::{Duration, Instant};

use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_sessions_with_a_reason_and_seals_recordings() {
    let mut gw = Gateway::start("");
    let (cli, addr) = gw.connect("pg", &token("alice@example.com"));
    let c = pg_client(addr).await;
    let v: i32 = c.query_one("select 1", &[]).await.unwrap().get(0);
    assert_eq!(v, 1);
    let audit = cli
        .wait_log("opened")
        .split("session ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();

    let pid = gw.proc.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let started = Instant::now();
    let status = loop {
        if let Some(st) = gw.proc.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "gateway still running 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "clean exit: {status:?}");

    // The client learns why (an ErrorResponse before the close), not a bare reset.
    let err = c.query_one("select 2", &[]).await.unwrap_err();
    let why = err
        .as_db_error()
        .map(|d| (d.code().code().to_string(), d.message().to_string()));
    if let Some((code, message)) = &why {
        assert_eq!(code, "57P01", "{message}");
        assert!(message.contains("shutting down"), "{message}");
    }
    let rec = gw.recording(&audit);
    assert!(
        rec.contains("\"type\":\"session_end\"") && rec.contains("shutting down"),
        "sealed with the reason: {rec}"
    );
    let (verified, report) = gw.verify(&audit);
    assert!(verified, "sealed and signed before exit: {report}");
    assert!(
        cli.wait_log("ended").contains("shutting down"),
        "{}",
        cli.log()
    );
}
