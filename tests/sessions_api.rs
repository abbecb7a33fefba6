//! The read API for reviewers (`/v1/sessions`) against the real binary:
//! auditors and admins read every recording, anyone else only its own (403
//! for the rest); filters and paging; verify with the gateway's own key
//! (verified, unsigned, failed when tampered); SSH terminals as asciicast;
//! and every read is itself recorded.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::sshd::{audit_of, run, ssh_client, sshd};
use support::*;

const AUDITORS: &str =
    "auditors = [\"group:security@example.com\"]\nadmins = [\"user:root@example.com\"]\n";

/// The harness's gateway with `[identity] auditors` and `admins` set.
fn gateway_with(extra: &str, signed: bool) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("recordings");
    let mut text =
        config(&store, extra).replace("[identity]\n", &format!("[identity]\n{AUDITORS}"));
    if !signed {
        text = text
            .lines()
            .filter(|l| !l.starts_with("signing_key"))
            .collect::<Vec<_>>()
            .join("\n");
    }
    Gateway::start_with(dir, &text, store)
}

fn gateway() -> Gateway {
    gateway_with("", true)
}

fn auditor() -> String {
    token_with("sam@example.com", &["security@example.com"])
}

fn bob() -> String {
    token_with("bob@example.com", &["sre@example.com"])
}

async fn get(gw: &Gateway, path: &str, token: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(format!("{}{path}", gw.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Runs `sql` through `POST /v1/exec/pg`; returns the audit id once sealed.
async fn exec(gw: &Gateway, token: &str, sql: &str) -> String {
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/exec/pg", gw.url))
        .bearer_auth(token)
        .json(&json!({ "input": sql }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{:?}", resp.text().await);
    let audit = resp.headers()["x-custody-audit-id"]
        .to_str()
        .unwrap()
        .to_string();
    wait_sealed(gw, &audit);
    audit
}

fn wait_sealed(gw: &Gateway, audit: &str) {
    let manifest = gw
        .store
        .join(custody::recording::store::manifest_key(audit));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !manifest.exists() {
        assert!(Instant::now() < deadline, "{audit} never sealed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ids(list: &Value) -> Vec<String> {
    list["sessions"]
        .as_array()
        .unwrap_or_else(|| panic!("no sessions in {list}"))
        .iter()
        .map(|s| s["audit_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn auditors_read_all_others_only_their_own() {
    let gw = gateway();
    let alice = token("alice@example.com");
    let a = exec(&gw, &alice, "select 1").await;
    let b = exec(&gw, &bob(), "select 2").await;

    for reader in [auditor(), token("root@example.com")] {
        let (s, list) = get(&gw, "/v1/sessions?mode=exec", &reader).await;
        assert_eq!(s, 200, "{list}");
        assert_eq!(ids(&list), [b.clone(), a.clone()], "newest first: {list}");
        assert_eq!(list["all"], true);
        let (s, one) = get(&gw, &format!("/v1/sessions/{b}"), &reader).await;
        assert_eq!(s, 200, "{one}");
    }

    let (s, list) = get(&gw, "/v1/sessions", &alice).await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(ids(&list), vec![a.clone()], "only her own: {list}");
    assert_eq!(list["all"], false);
    // Listing is audited: who listed, with what filter, how many came back.
    let mut listed = gw.proc.log();
    while let Some(i) = listed.find('\x1b') {
        let end = listed[i..].find('m').map_or(listed.len(), |e| i + e + 1);
        listed.replace_range(i..end, "");
    }
    assert!(
        listed.lines().any(|l| l.contains("recordings listed")
            && l.contains("principal=user:alice@example.com")
            && l.contains("listed=1")),
        "{listed}"
    );
    let (s, denied) = get(&gw, &format!("/v1/sessions/{b}"), &alice).await;
    assert_eq!(s, 403, "{denied}");
    assert!(
        denied["reason"]
            .as_str()
            .unwrap()
            .contains("may read only its own sessions"),
        "{denied}"
    );
    let (s, _) = get(&gw, &format!("/v1/sessions/{b}/asciicast"), &alice).await;
    assert_eq!(s, 403);
    // Whether a recording exists is not told to those who may not read it.
    let missing = "01900000-0000-7000-8000-000000000000";
    let (s, _) = get(&gw, &format!("/v1/sessions/{missing}"), &alice).await;
    assert_eq!(s, 403);
    let (s, _) = get(&gw, &format!("/v1/sessions/{missing}"), &auditor()).await;
    assert_eq!(s, 404);
    let (s, _) = get(&gw, "/v1/sessions/not.an.id", &auditor()).await;
    assert_eq!(s, 400);
    let (s, _) = get(&gw, "/v1/sessions", "not-a-token").await;
    assert_eq!(s, 401);

    let (s, own) = get(&gw, &format!("/v1/sessions/{a}"), &alice).await;
    assert_eq!(s, 200, "{own}");
    assert_eq!(own["summary"]["principal"], "user:alice@example.com");
    assert_eq!(own["chain"], json!(["user:alice@example.com"]));
    assert_eq!(own["verify"]["status"], "verified", "{own}");
    let facts = own["verify"]["facts"].to_string();
    assert!(facts.contains("(the gateway's own key)"), "{facts}");
    assert_eq!(own["terminal"], false);
    let events = own["events"].as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "statement" && e["sql"] == "select 1"),
        "{own}"
    );
    // The read is an audit record of its own, by the reader, naming what was read.
    let rec = gw.wait_recordings(&format!("\"read_audit_id\":\"{a}\""));
    assert!(rec.contains(&format!("\"read_audit_id\":\"{a}\"")), "{rec}");
    let (_, reads) = get(&gw, "/v1/sessions?mode=read", &auditor()).await;
    let readers: Vec<&str> = reads["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["principal"].as_str().unwrap())
        .collect();
    assert!(readers.contains(&"user:alice@example.com"), "{reads}");
    assert!(readers.contains(&"user:sam@example.com"), "{reads}");
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_and_paging() {
    let gw = gateway();
    let alice = token("alice@example.com");
    let mut mine = Vec::new();
    for n in 0..3 {
        mine.push(exec(&gw, &alice, &format!("select {n}")).await);
    }
    let theirs = exec(&gw, &bob(), "select 9").await;
    mine.reverse();
    let sam = auditor();

    let (_, list) = get(&gw, "/v1/sessions?principal=user:alice@example.com", &sam).await;
    assert_eq!(ids(&list), mine, "{list}");
    let (_, list) = get(
        &gw,
        "/v1/sessions?principal=user:bob@example.com&connection=pg&mode=exec",
        &sam,
    )
    .await;
    assert_eq!(ids(&list), vec![theirs.clone()], "{list}");
    let outcome = list["sessions"][0]["outcome"].as_str().unwrap().to_string();
    let (_, list) = get(
        &gw,
        &format!("/v1/sessions?mode=exec&outcome={outcome}"),
        &sam,
    )
    .await;
    assert_eq!(ids(&list).len(), 4, "{list}");
    let (_, list) = get(&gw, "/v1/sessions?outcome=nothing-like-it", &sam).await;
    assert_eq!(ids(&list).len(), 0, "{list}");
    let (_, list) = get(&gw, "/v1/sessions?connection=other", &sam).await;
    assert_eq!(ids(&list).len(), 0, "{list}");
    let (_, list) = get(&gw, "/v1/sessions?since=2099-01-01", &sam).await;
    assert_eq!(ids(&list).len(), 0, "{list}");

    // Pages of two, each starting where the last one ended.
    let mut seen = Vec::new();
    let mut path = "/v1/sessions?mode=exec&limit=2".to_string();
    loop {
        let (s, page) = get(&gw, &path, &sam).await;
        assert_eq!(s, 200, "{page}");
        let got = ids(&page);
        assert!(got.len() <= 2, "{page}");
        seen.extend(got);
        match page["next_page_token"].as_str() {
            Some(t) => path = format!("/v1/sessions?mode=exec&limit=2&page_token={t}"),
            None => break,
        }
    }
    let mut all = vec![theirs.clone()];
    all.extend(mine.iter().cloned());
    assert_eq!(seen, all);
    // Unfiltered, the page knows how many there are in all.
    let (_, page) = get(&gw, "/v1/sessions?limit=1", &sam).await;
    assert!(page["total"].as_u64().unwrap() >= 4, "{page}");
    // A non-auditor pages through its own only.
    let (_, page) = get(&gw, "/v1/sessions?mode=exec&limit=2", &alice).await;
    assert_eq!(ids(&page), mine[..2]);
    let t = page["next_page_token"].as_str().unwrap();
    let (_, page) = get(
        &gw,
        &format!("/v1/sessions?mode=exec&limit=2&page_token={t}"),
        &alice,
    )
    .await;
    assert_eq!(ids(&page), mine[2..]);

    // `custody sessions` filters the same way, straight from the store.
    let out = std::process::Command::new(bin())
        .args([
            "sessions",
            "--format",
            "json",
            "--mode",
            "exec",
            "--outcome",
            &outcome,
        ])
        .args(["--principal", "user:bob@example.com", "--store"])
        .arg(format!("file://{}", gw.store.display()))
        .output()
        .unwrap();
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["audit_id"], theirs.as_str());

    for bad in [
        "since=yesterday",
        "since=2001-01-01",
        "page_token=../x",
        "limit=many",
    ] {
        let (s, body) = get(&gw, &format!("/v1/sessions?{bad}"), &sam).await;
        assert_eq!(s, 400, "{bad}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_recordings_fail_and_unsigned_ones_say_so() {
    let gw = gateway();
    let a = exec(&gw, &token("alice@example.com"), "select 'intact'").await;
    // The statement is in whichever segment holds it: alter that one.
    let seg = (1..=3)
        .map(|n| gw.store.join(custody::recording::store::segment_key(&a, n)))
        .find(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains("intact")))
        .expect("a segment with the statement");
    let text = std::fs::read_to_string(&seg).unwrap();
    let mut perms = std::fs::metadata(&seg).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&seg, perms).unwrap();
    std::fs::write(&seg, text.replace("intact", "forged")).unwrap();
    let (s, rec) = get(&gw, &format!("/v1/sessions/{a}"), &auditor()).await;
    assert_eq!(s, 200, "{rec}");
    assert_eq!(rec["verify"]["status"], "failed", "{rec}");
    let problems = rec["verify"]["problems"].to_string();
    assert!(problems.contains("altered after sealing"), "{problems}");

    let plain = gateway_with("", false);
    let u = exec(&plain, &token("alice@example.com"), "select 1").await;
    let (_, rec) = get(&plain, &format!("/v1/sessions/{u}"), &auditor()).await;
    assert_eq!(rec["verify"]["status"], "unsigned", "{rec}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_terminal_sessions_replay_as_asciicast() {
    let s = sshd();
    let gw = gateway_with(&s.connection("web-1", ""), true);
    let mut cmd = ssh_client("ssh", &gw, &token("alice@example.com"));
    cmd.args(["-tt", "web-1"]);
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        run(
            cmd,
            Some("echo marker-$((6*7))\nexit 0\n"),
            Duration::from_secs(60),
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "stdout {out:?} stderr {err:?}");
    let audit = audit_of(&err);
    wait_sealed(&gw, &audit);

    let resp = reqwest::Client::new()
        .get(format!("{}/v1/sessions/{audit}/asciicast", gw.url))
        .bearer_auth(auditor())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-asciicast");
    assert_eq!(resp.headers()["x-custody-verify"], "verified");
    let cast = resp.text().await.unwrap();
    let header: Value = serde_json::from_str(cast.lines().next().unwrap()).unwrap();
    assert_eq!(header["version"], 2, "{cast}");
    assert!(cast.contains("marker-42"), "{cast}");
    let (_, rec) = get(&gw, &format!("/v1/sessions/{audit}"), &auditor()).await;
    assert_eq!(rec["terminal"], true, "{rec}");
    gw.wait_recordings("\"view\":\"asciicast\"");
    assert!(gw.recordings().contains("\"view\":\"asciicast\""));

    let pg = exec(&gw, &token("alice@example.com"), "select 1").await;
    let (s, body) = get(&gw, &format!("/v1/sessions/{pg}/asciicast"), &auditor()).await;
    assert_eq!(s, 404, "{body}");
    assert_eq!(body["error"], "not_terminal");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_is_served_from_the_binary() {
    let gw = gateway();
    let http = reqwest::Client::new();
    let page = http.get(format!("{}/ui/", gw.url)).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    assert!(page.text().await.unwrap().contains("app.js"));
    for (path, kind) in [
        ("/ui/app.js", "text/javascript"),
        ("/ui/vendor/asciinema-player.min.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
    ] {
        let r = http.get(format!("{}{path}", gw.url)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with(kind));
    }
    let r = http
        .get(format!("{}/ui/nothing.js", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
}
