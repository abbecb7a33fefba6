//! Identity attacks from the security review (issue 11, items 4, 5, 7, 8 and
//! part of 13), each against the real binary: an issuer limited to
//! partner.com asserting example.com groups; two tokens of one person (one
//! without an email) approving their own request or voting twice; a revoked
//! approver; revocations of groups, domains, subjects and a path; tunnels
//! (PostgreSQL and SSH) open when their principal is revoked; review answers
//! that told a non-approver whether a review exists.

mod support;

use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use custody::identity::devissuer::DevIssuer;
use support::sshd::{run, ssh_client, sshd};
use support::*;

/// The partner issuer: real keys, JWKS on loopback; it may vouch for partner.com only.
struct Partner {
    dev: DevIssuer,
    jwks: String,
}

const PARTNER_ISSUER: &str = "http://127.0.0.1:9/partner";

fn partner() -> &'static Partner {
    static P: OnceLock<Partner> = OnceLock::new();
    P.get_or_init(|| {
        let dev = DevIssuer::generate(PARTNER_ISSUER).unwrap();
        let addr = serve_router(dev.router().unwrap());
        Partner {
            dev,
            jwks: format!("http://{addr}/jwks.json"),
        }
    })
}

fn partner_token(email: &str, groups: &[&str]) -> String {
    let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    partner()
        .dev
        .token(
            email,
            &groups,
            AUDIENCE,
            600,
            jsonwebtoken::Algorithm::RS256,
        )
        .unwrap()
}

/// A token of the same person as `token_with(email, ..)` (same iss and
/// sub) that carries no email claim: its member name is `subject:…`.
fn emailless_token(email: &str, groups: &[&str]) -> String {
    let now = chrono::Utc::now().timestamp();
    let iss = issuer();
    iss.dev
        .sign(
            &serde_json::json!({
                "iss": iss.url, "sub": format!("dev|{email}"), "aud": AUDIENCE,
                "groups": groups, "iat": now, "nbf": now, "exp": now + 600,
            }),
            jsonwebtoken::Algorithm::RS256,
        )
        .unwrap()
}

fn pg_conn(name: &str, allow: &str, more: &str) -> String {
    format!(
        r#"
[[connections]]
name = "{name}"
kind = "postgres"
host = "127.0.0.1"
port = {port}
database = "app"
user = "app"
password = "env:{PASSWORD_ENV}"
tls = "disable"
allow = [{allow}]
{more}
"#,
        port = pg().port
    )
}

fn config_text(store: &std::path::Path, ssh: bool) -> String {
    let held = "[connections.guardrails]\nrequire_approval = [\"delete\"]\napprovers = [\"group:dba@example.com\"]\n";
    let people = r#""user:alice@example.com", "user:carol@example.com", "domain:partner.com""#;
    let mut extra = format!(
        r#"
[[identity.issuers]]
issuer = "{PARTNER_ISSUER}"
jwks_uri = "{jwks}"
email_domains = ["partner.com"]
{masked}{held}{two}{eng}"#,
        jwks = partner().jwks,
        masked = pg_conn(
            "pg-masked",
            &format!(
                r#""user:alice@example.com", "domain:partner.com", "group:dpo@example.com", "{fay}""#,
                fay = principal_of("fay@example.com")
            ),
            &format!(
                "[connections.masking]\ndetectors = [\"us_ssn\", \"credit_card\"]\nexempt = [\"group:dpo@example.com\", \"{fay}\"]\n",
                fay = principal_of("fay@example.com")
            ),
        ),
        held = pg_conn("pg-held", people, held),
        two = pg_conn(
            "pg-two",
            people,
            &format!("{held}approvals_required = 2\n")
        ),
        eng = pg_conn(
            "pg-eng",
            r#""domain:partner.com", "group:eng@example.com""#,
            "[connections.delegation]\noriginators = [\"group:eng@example.com\"]\n",
        ),
    );
    if ssh {
        extra.push_str(&sshd().connection("web-1", ""));
    }
    let key = signing_key().display().to_string();
    config(store, &extra).replace(
        "[identity]\n",
        &format!("[identity]\nsigning_key = \"file:{key}\"\nadmins = [\"user:sec@example.com\"]\n"),
    )
}

fn gateway() -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("recordings");
    let text = config_text(&store, false);
    Gateway::start_with(dir, &text, store)
}

/// Runs the CLI as `token`'s owner: (exit code, stdout, stderr).
fn cli(gw: &Gateway, token: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .env("CUSTODY_GATEWAY", &gw.url)
        .env("CUSTODY_TOKEN", token)
        .env_remove("CUSTODY_REVIEW")
        .env_remove("CUSTODY_DELEGATION")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn held(gw: &Gateway, who: &str, conn: &str, sql: &str) -> String {
    let (code, _, err) = cli(gw, who, &["exec", conn, "--", sql]);
    assert_eq!(code, 3, "held for approval exits 3: {err}");
    err.split("custody review approve ")
        .nth(1)
        .and_then(|r| r.split(|c: char| c == '`' || c.is_whitespace()).next())
        .unwrap_or_else(|| panic!("no review id in: {err}"))
        .to_string()
}

fn admin() -> String {
    token("sec@example.com")
}

fn revoke(gw: &Gateway, principal: &str) -> (i32, String) {
    let (code, out, err) = cli(
        gw,
        &admin(),
        &[
            "revoke",
            "--principal",
            principal,
            "--reason",
            "security test",
        ],
    );
    (code, format!("{out}{err}"))
}

fn table(gw: &Gateway, name: &str) {
    let sql = format!("drop table if exists {name}; create table {name} (id int); insert into {name} values (1), (2), (3)");
    let (code, _, err) = cli(gw, &token("alice@example.com"), &["exec", "pg", "--", &sql]);
    assert_eq!(code, 0, "{err}");
}

fn count(name: &str) -> String {
    let out = pg().admin(&format!("select count(*) from {name}"));
    out.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or_default()
        .to_string()
}

fn principal_of(email: &str) -> String {
    let iss = issuer().url.clone();
    format!(
        "principal://{}/subject/dev|{email}",
        iss.trim_start_matches("http://")
    )
}

#[test]
fn groups_outside_an_issuers_domains_are_dropped() {
    let gw = gateway();
    let all = ["dpo@example.com", "dba@example.com", "eng@example.com"];
    let mallory = partner_token("mallory@partner.com", &all);
    let pii = "select '123-45-6789' as ssn, '4111 1111 1111 1111' as card";

    // The exemption: the real DPO sees clear values, mallory does not.
    let dpo = token_with("dora@example.com", &["dpo@example.com"]);
    let (code, out, err) = cli(
        &gw,
        &dpo,
        &["exec", "pg-masked", "--format", "json", "--", pii],
    );
    assert!(code == 0 && out.contains("123-45-6789"), "{out}{err}");
    let (code, out, err) = cli(
        &gw,
        &mallory,
        &["exec", "pg-masked", "--format", "json", "--", pii],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains("123-45-6789") && !out.contains("4111 1111 1111 1111"),
        "an issuer for partner.com made mallory a DPO: {out}"
    );
    // An exemption can name one identity; it holds for its tokens without an email.
    let fay = emailless_token("fay@example.com", &[]);
    let (code, out, err) = cli(
        &gw,
        &fay,
        &["exec", "pg-masked", "--format", "json", "--", pii],
    );
    assert!(code == 0 && out.contains("123-45-6789"), "{out}{err}");
    let other_fay = partner_token("fay@partner.com", &[]);
    let (code, out, err) = cli(
        &gw,
        &other_fay,
        &["exec", "pg-masked", "--format", "json", "--", pii],
    );
    assert!(code == 0 && !out.contains("123-45-6789"), "{out}{err}");

    // Approvals: mallory is no dba; the review stays pending for a real one.
    table(&gw, "sec_groups_t");
    let id = held(
        &gw,
        &token("alice@example.com"),
        "pg-held",
        "delete from sec_groups_t where id = 1",
    );
    let (code, _, err) = cli(&gw, &mallory, &["review", "approve", &id]);
    assert_eq!(code, 2, "mallory approved as dba: {err}");
    let bob = token_with("bob@example.com", &["dba@example.com"]);
    let (code, _, err) = cli(&gw, &bob, &["review", "approve", &id]);
    assert!(code == 0 && err.contains("is approved"), "{err}");

    // Delegation: mallory cannot originate work as group:eng@example.com.
    let (code, _, err) = cli(&gw, &mallory, &["exec", "pg-eng", "--", "select 1"]);
    assert!(
        code != 0 && err.contains("not among its originators"),
        "{err}"
    );
    let eng = token_with("erin@example.com", &["eng@example.com"]);
    let (code, _, err) = cli(&gw, &eng, &["exec", "pg-eng", "--", "select 1"]);
    assert_eq!(code, 0, "{err}");

    // The drop is on record, by group name only.
    let log = gw
        .proc
        .wait_log("groups outside the issuer's email_domains dropped");
    let line = log
        .lines()
        .find(|l| l.contains("email_domains dropped"))
        .unwrap();
    assert!(line.contains("dpo@example.com"), "{line}");
    assert!(
        !line.contains("mallory"),
        "no PII beyond group names: {line}"
    );
}

#[test]
fn two_tokens_of_one_person_are_one_identity() {
    let gw = gateway();
    table(&gw, "sec_self_t");
    // Alice is a dba too; her request is still not hers to approve, under any name.
    let alice = token_with("alice@example.com", &["dba@example.com"]);
    let alice_bare = emailless_token("alice@example.com", &["dba@example.com"]);
    let id = held(
        &gw,
        &alice,
        "pg-held",
        "delete from sec_self_t where id = 1",
    );
    let (code, _, err) = cli(&gw, &alice_bare, &["review", "approve", &id]);
    assert_eq!(code, 2, "self-approval under subject:… was accepted: {err}");
    assert!(err.contains("their own request"), "{err}");

    // Two approvals required: bob's two tokens are one vote.
    let carol = token("carol@example.com");
    let id = held(&gw, &carol, "pg-two", "delete from sec_self_t where id = 2");
    let bob = token_with("bob@example.com", &["dba@example.com"]);
    let bob_bare = emailless_token("bob@example.com", &["dba@example.com"]);
    let (code, _, err) = cli(&gw, &bob, &["review", "approve", &id]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli(&gw, &bob_bare, &["review", "approve", &id]);
    assert_ne!(code, 0, "a second token counted as a second vote: {err}");
    assert!(err.contains("already approved"), "{err}");
    let (code, out, _) = cli(&gw, &bob, &["review", "show", &id]);
    assert!(code == 0 && out.contains("pending"), "{out}");
    let (code, _, err) = cli(
        &gw,
        &carol,
        &[
            "exec",
            "pg-two",
            "--review",
            &id,
            "--",
            "delete from sec_self_t where id = 2",
        ],
    );
    assert_ne!(code, 0, "ran on one person's vote: {err}");
    assert_eq!(count("sec_self_t"), "3");
    let dave = token_with("dave@example.com", &["dba@example.com"]);
    let (code, _, err) = cli(&gw, &dave, &["review", "approve", &id]);
    assert!(code == 0 && err.contains("is approved"), "{err}");
}

#[test]
fn a_revoked_approver_cannot_approve_and_voids_its_approval() {
    let gw = gateway();
    table(&gw, "sec_revoked_t");
    let alice = token("alice@example.com");
    let bob = token_with("bob@example.com", &["dba@example.com"]);
    let dave = token_with("dave@example.com", &["dba@example.com"]);
    let sql = "delete from sec_revoked_t where id = 1";
    let id = held(&gw, &alice, "pg-held", sql);
    // Revoked as an identity: under every token, with or without the email.
    assert_eq!(revoke(&gw, &principal_of("bob@example.com")).0, 0);
    let bob_bare = emailless_token("bob@example.com", &["dba@example.com"]);
    for t in [&bob, &bob_bare] {
        let (code, _, err) = cli(&gw, t, &["review", "approve", &id]);
        assert!(
            code == 2 && err.contains("revoked"),
            "a revoked approver approved: {err}"
        );
        let (code, _, err) = cli(&gw, t, &["review", "deny", &id, "--reason", "no"]);
        assert!(
            code == 2 && err.contains("revoked"),
            "a revoked approver denied: {err}"
        );
    }

    // Approved, then the approver is revoked: the held statement does not run.
    let (code, _, err) = cli(&gw, &dave, &["review", "approve", &id]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(revoke(&gw, "user:dave@example.com").0, 0);
    let (code, _, err) = cli(
        &gw,
        &alice,
        &["exec", "pg-held", "--review", &id, "--", sql],
    );
    assert!(code != 0 && err.contains("revoked"), "{err}");
    assert_eq!(count("sec_revoked_t"), "3");

    // A revoked admin revokes nobody.
    let sec_bare = emailless_token("sec@example.com", &[]);
    assert_eq!(revoke(&gw, "subject:dev|sec@example.com").0, 0);
    let (code, _, err) = cli(
        &gw,
        &token("sec@example.com"),
        &["revoke", "--principal", "user:carol@example.com"],
    );
    assert!(code != 0 && err.contains("revoked"), "{err}");
    let (code, _, _) = cli(
        &gw,
        &sec_bare,
        &["revoke", "--principal", "user:carol@example.com"],
    );
    assert_ne!(code, 0);
}

#[test]
fn revocation_accepts_only_what_it_enforces() {
    let gw = gateway();
    for p in [
        "group:sre@example.com",
        "domain:example.com",
        "allAuthenticatedUsers",
    ] {
        let (code, out) = revoke(&gw, p);
        assert!(
            code != 0 && out.contains("cannot be revoked") && out.contains("400"),
            "{p}: {out}"
        );
    }
    let (code, out) = revoke(&gw, "principal://unknown.example/subject/x");
    assert!(code != 0 && out.contains("no configured issuer"), "{out}");

    // subject: and principal:// are enforced, for every token of the identity.
    let sre = ["sre@example.com"];
    let (code, out) = revoke(&gw, "subject:dev|carol@example.com");
    assert_eq!(code, 0, "{out}");
    let (code, _, err) = cli(
        &gw,
        &token_with("carol@example.com", &sre),
        &["exec", "pg", "--", "select 1"],
    );
    assert!(code != 0 && err.contains("revoked"), "{err}");
    let (code, out) = revoke(&gw, &principal_of("erin@example.com"));
    assert_eq!(code, 0, "{out}");
    for t in [
        token_with("erin@example.com", &sre),
        emailless_token("erin@example.com", &sre),
    ] {
        let (code, _, err) = cli(&gw, &t, &["exec", "pg", "--", "select 1"]);
        assert!(code != 0 && err.contains("revoked"), "{err}");
    }
    // The partner's own erin is another identity.
    let (code, _, err) = cli(
        &gw,
        &partner_token("erin@partner.com", &[]),
        &["exec", "pg-eng", "--", "select 1"],
    );
    assert!(!err.contains("revoked"), "{code} {err}");

    // A principal never names a path.
    let escape = format!(
        "custody-sec-{}-{}",
        std::process::id(),
        uuid::Uuid::now_v7().simple()
    );
    let p = format!("user:a/../../../../../../../../../../tmp/{escape}@y.com");
    let (code, out) = revoke(&gw, &p);
    assert_eq!(code, 0, "{out}");
    assert!(
        !std::path::Path::new(&format!("/tmp/{escape}@y.com")).exists(),
        "wrote outside the store"
    );
    let names: Vec<String> = std::fs::read_dir(gw.store.join("_revocations"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names
            .iter()
            .any(|n| n.contains(&escape) && !n.contains('/')),
        "{names:?}"
    );
    // And it is still enforced under that name.
    let (code, _, err) = cli(
        &gw,
        &token_with(
            &format!("a/../../../../../../../../../../tmp/{escape}@y.com"),
            &sre,
        ),
        &["exec", "pg", "--", "select 1"],
    );
    assert!(code != 0 && err.contains("revoked"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_psql_tunnel_ends_when_its_principal_is_revoked_on_another_instance() {
    // Two instances on one store: the revocation is written by the other one.
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("recordings");
    let text = config_text(&store, false);
    let a = Gateway::start_with(dir, &text, store.clone());
    let b = Gateway::start_with(tempfile::tempdir().unwrap(), &text, store);
    let (_cli, addr) = a.connect("pg", &token("alice@example.com"));
    let c = pg_client(addr).await;
    c.simple_query("select 1").await.unwrap();
    // A query in flight gets the reason (an idle client sees it on its next one).
    let running = tokio::spawn(async move { c.simple_query("select pg_sleep(20)").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(revoke(&b, "user:alice@example.com").0, 0);
    let revoked = Instant::now();
    let err = running.await.unwrap().unwrap_err();
    let took = revoked.elapsed();
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("told why, not just cut off: {err}"));
    assert_eq!(db.code().code(), "57P01", "{}", db.message());
    assert!(db.message().contains("revoked"), "{}", db.message());
    assert!(
        took < Duration::from_millis(6500),
        "ended {took:?} after the revocation"
    );
    eprintln!("tunnel ended {took:?} after a revocation on another instance");
}

#[test]
fn an_ssh_session_ends_when_its_principal_is_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("recordings");
    let text = config_text(&store, true);
    let gw = Gateway::start_with(dir, &text, store);
    let mut cmd = ssh_client("ssh", &gw, &token("alice@example.com"));
    cmd.args(["web-1", "echo started; sleep 60"]);
    let session = std::thread::spawn(move || run(cmd, None, Duration::from_secs(30)));
    gw.wait_recordings("sleep 60");
    assert_eq!(revoke(&gw, "user:alice@example.com").0, 0);
    let revoked = Instant::now();
    let (code, out, err) = session.join().unwrap();
    let took = revoked.elapsed();
    assert!(out.contains("started"), "{out}");
    assert_ne!(code, 0);
    assert!(err.contains("revoked"), "the client is told why: {err}");
    assert!(
        took < Duration::from_secs(6),
        "ended {took:?} after the revocation"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn review_answers_tell_outsiders_nothing_and_reasons_are_text() {
    let gw = gateway();
    table(&gw, "sec_probe_t");
    let id = held(
        &gw,
        &token("alice@example.com"),
        "pg-held",
        "delete from sec_probe_t where id = 1",
    );
    let unknown = uuid::Uuid::now_v7().to_string();
    let http = reqwest::Client::new();
    let post = |who: String, id: String, action: &'static str, body: serde_json::Value| {
        let req = http
            .post(format!("{}/v1/reviews/{id}/{action}", gw.url))
            .bearer_auth(who)
            .json(&body);
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let mut v: serde_json::Value = r.json().await.unwrap();
            v["audit_id"] = serde_json::Value::Null;
            let reason = v["reason"].as_str().unwrap_or_default().replace(&id, "ID");
            v["reason"] = reason.into();
            (status, v)
        }
    };
    let carol = token("carol@example.com");
    for action in ["approve", "deny"] {
        let body = serde_json::json!({"reason": "probe"});
        let real = post(carol.clone(), id.clone(), action, body.clone()).await;
        let none = post(carol.clone(), unknown.clone(), action, body).await;
        assert_eq!(
            real, none,
            "{action} tells a non-approver the review exists"
        );
        assert_eq!(real.0, 404);
    }
    let bob = token_with("bob@example.com", &["dba@example.com"]);
    for (action, reason) in [
        ("deny", "\u{1}\u{7}\u{1b}"),
        ("deny", "  "),
        ("deny", ""),
        ("approve", "\n"),
        ("approve", "ok\u{1b}[2K"),
    ] {
        let (status, v) = post(
            bob.clone(),
            id.clone(),
            action,
            serde_json::json!({"reason": reason}),
        )
        .await;
        assert_eq!(status, 400, "{action} {reason:?}: {v}");
    }
    let (code, out, _) = cli(&gw, &bob, &["review", "show", &id]);
    assert!(code == 0 && out.contains("pending"), "{out}");
    let (status, v) = post(
        bob.clone(),
        id.clone(),
        "deny",
        serde_json::json!({"reason": "not today"}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
}

/// Issue 13, item 7: an exec already running when its principal is revoked
/// stops (the statement is cancelled upstream, the command's channel
/// closed), answers 403 with the reason, and its recording says why.
#[test]
fn running_execs_end_when_their_principal_is_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("recordings");
    let text = config_text(&store, true);
    let gw = Arc::new(Gateway::start_with(dir, &text, store));
    let runs: Vec<_> = [
        ("pg", "select pg_sleep(60)"),
        ("web-1", "echo wrote-before-revoke; sleep 60"),
    ]
    .into_iter()
    .map(|(conn, input)| {
        let gw = gw.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let r = cli(
                &gw,
                &token("alice@example.com"),
                &["exec", conn, "--", input],
            );
            (conn, r, started.elapsed())
        })
    })
    .collect();
    gw.wait_recordings("pg_sleep(60)");
    gw.wait_recordings("sleep 60");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(revoke(&gw, "user:alice@example.com").0, 0);
    for run in runs {
        let (conn, (code, out, err), took) = run.join().unwrap();
        assert_ne!(code, 0, "{conn}: {out}{err}");
        assert!(err.contains("revoked"), "{conn}: told why: {err}");
        assert!(
            took < Duration::from_secs(30),
            "{conn}: ended after {took:?}"
        );
    }
    // The statement really stopped upstream, not just its answer.
    let left = pg().admin("select count(*) from pg_stat_activity where query = 'select pg_sleep(60)' and state = 'active'");
    assert!(left.contains(" 0"), "{left}");
    gw.wait_recordings("interrupted");
    // What the command wrote before it was stopped is in its recording.
    gw.wait_recordings("wrote-before-revoke\\n");
}
