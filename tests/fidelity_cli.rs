//! Issue 13, items 9 and 10 with the real binary: SSH through
//! `custody connect --stdio` ends with a proper WebSocket close, SSH spans
//! say ssh (not postgresql), a direct principal is shown once, and
//! `custody sessions` says when its limit cut the list.

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use support::sshd::{audit_of, run, ssh_client, sshd};
use support::*;

const LIMIT: Duration = Duration::from_secs(60);

fn ssh_gateway(dir: tempfile::TempDir, env: &[(&str, &str)]) -> Gateway {
    let store = dir.path().join("recordings");
    let conns = sshd().connection("web-1", "");
    let text = config(&store, &format!("[ssh]\nlogin_timeout = \"3s\"\n{conns}"));
    Gateway::start_env(dir, &text, store, env)
}

/// The recording's session_end reason, once it is written (bounded wait).
fn end_reason(gw: &Gateway, audit: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let rec = gw.recording(audit);
        let end = rec
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["type"] == "session_end");
        if let Some(v) = end {
            return v["reason"].as_str().unwrap_or_default().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no session_end for {audit}: {rec}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn ssh_through_stdio_ends_with_a_websocket_close_not_a_reset() {
    let gw = ssh_gateway(tempfile::tempdir().unwrap(), &[]);
    let t = token("alice@example.com");
    for args in [&["web-1", "echo hi"][..], &["-tt", "web-1"][..]] {
        let mut cmd = ssh_client("ssh", &gw, &t);
        cmd.args(args);
        let stdin = (args[0] == "-tt").then_some("echo hi\nexit 0\n");
        let (code, out, err) = run(cmd, stdin, LIMIT);
        assert_eq!(code, 0, "stdout {out:?} stderr {err:?}");
        assert!(out.contains("hi"), "{out:?}");
        let reason = end_reason(&gw, &audit_of(&err));
        // Whichever end noticed first, a normal end, never a transport error.
        assert!(
            ["client closed the tunnel", "ssh session ended"].contains(&reason.as_str()),
            "{args:?}: {reason}"
        );
        assert!(!err.contains("session ended"), "{err}");
    }
}

