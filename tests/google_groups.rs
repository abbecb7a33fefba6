//! Google Groups through Cloud Identity (issue 14), with the real binary:
//! the test issuer plays Google's (tokens with no groups claim) and a
//! Cloud Identity stand-in answers `searchTransitiveGroups`. `group:` members
//! in allow, approvers, originators and exempt match through the lookup; the
//! lookup is cached and shared; a failed lookup refuses only group-based
//! access, saying why; `domain:` matches the `hd` claim.

mod support;

use std::process::Command;
use std::time::Duration;

use support::cloudidentity::{CloudIdentity, Mode};
use support::*;

/// An ID token as Google issues it: no groups claim, `hd` for Workspace users.
fn google_token(email: &str, hd: Option<&str>) -> String {
    let iss = issuer();
    let now = chrono::Utc::now().timestamp();
    let mut claims = serde_json::json!({
        "iss": iss.url, "sub": format!("dev|{email}"), "aud": AUDIENCE,
        "email": email, "email_verified": true,
        "iat": now, "nbf": now, "exp": now + 600,
    });
    if let Some(hd) = hd {
        claims["hd"] = hd.into();
    }
    iss.dev
        .sign(&claims, jsonwebtoken::Algorithm::RS256)
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

/// A gateway resolving the test issuer's groups through `ci`.
fn gateway(ci: &CloudIdentity) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("recordings");
    let people = r#""user:alice@example.com", "group:sre@example.com""#;
    let extra = [
        pg_conn(
            "pg-held",
            people,
            "[connections.guardrails]\nrequire_approval = [\"delete\"]\napprovers = [\"group:dba@example.com\"]\n",
        ),
        pg_conn(
            "pg-masked",
            people,
            "[connections.masking]\ndetectors = [\"us_ssn\"]\nexempt = [\"group:dpo@example.com\"]\n",
        ),
        pg_conn(
            "pg-eng",
            r#""group:eng@example.com", "serviceAccount:ci@p.iam.gserviceaccount.com""#,
            "[connections.delegation]\noriginators = [\"group:eng@example.com\"]\n",
        ),
        pg_conn("pg-domain", r#""domain:corp.example""#, ""),
    ]
    .concat();
    let key = signing_key().display().to_string();
    let text = config(&store, &extra)
        .replace(
            "[identity]\n",
            &format!("[identity]\nsigning_key = \"file:{key}\"\nadmins = [\"group:security@example.com\"]\n"),
        )
        .replace(
            "[recording]\n",
            &format!(
                "[identity.google_groups]\nendpoint = \"{}\"\ncache_ttl = \"5m\"\nissuers = [\"{}\"]\n\n[recording]\n",
                ci.url,
                issuer().url
            ),
        );
    Gateway::start_with(dir, &text, store)
}

fn cli(
    gw: &Gateway,
    token: &str,
    delegation: Option<&str>,
    args: &[&str],
) -> (i32, String, String) {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env("CUSTODY_GATEWAY", &gw.url)
        .env("CUSTODY_TOKEN", token)
        .env_remove("CUSTODY_REVIEW")
        .env_remove("CUSTODY_DELEGATION");
    if let Some(d) = delegation {
        cmd.env("CUSTODY_DELEGATION", d);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn exec(gw: &Gateway, token: &str, conn: &str, sql: &str) -> (i32, String, String) {
    cli(gw, token, None, &["exec", conn, "--", sql])
}

#[test]
fn group_members_match_through_the_lookup_with_paging_and_a_cache() {
    // Two memberships a page: sre@ is on the third page.
    let ci = CloudIdentity::start(2);
    let groups = [
        "a@example.com",
        "b@example.com",
        "c@example.com",
        "d@example.com",
    ];
    ci.member(
        "greg@example.com",
        &[&groups[..], &["SRE@example.com"]].concat(),
    );
    let gw = gateway(&ci);
    let greg = google_token("greg@example.com", None);

    let (code, out, err) = exec(&gw, &greg, "pg", "select 'via-group' as how");
    assert!(code == 0 && out.contains("via-group"), "{out}{err}");
    assert_eq!(ci.lookups("greg@example.com"), 1);
    assert_eq!(
        ci.requests(),
        3,
        "three pages, each followed by nextPageToken"
    );
    let rec = gw.wait_recordings("\"granted_by\":\"group:sre@example.com\"");
    assert!(
        rec.contains("\"granted_by\":\"group:sre@example.com\""),
        "{rec}"
    );

    // Within cache_ttl the groups are reused: a tunnel and another exec.
    let (_proxy, addr) = gw.connect("pg", &greg);
    let (ok, out, err) = psql(addr, &["-tAc", "select 'tunnel-ok'"], None);
    assert!(ok && out.contains("tunnel-ok"), "{out}{err}");
    let (code, _, err) = exec(&gw, &greg, "pg", "select 1");
    assert_eq!(code, 0, "{err}");
    assert_eq!(ci.lookups("greg@example.com"), 1, "cached for cache_ttl");

    // Concurrent first requests of one principal share one lookup.
    ci.member("cora@example.com", &["sre@example.com"]);
    ci.set_latency(Duration::from_millis(1500));
    let cora = google_token("cora@example.com", None);
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..5)
            .map(|_| s.spawn(|| exec(&gw, &cora, "pg", "select 1")))
            .collect();
        for r in runs {
            let (code, _, err) = r.join().unwrap();
            assert_eq!(code, 0, "{err}");
        }
    });
    assert_eq!(ci.lookups("cora@example.com"), 1, "single-flight");
    ci.set_latency(Duration::ZERO);

    // Someone in none of the allowed groups is refused, without a lookup error.
    let (code, _, err) = exec(
        &gw,
        &google_token("nina@example.com", None),
        "pg",
        "select 1",
    );
    assert!(
        code != 0 && err.contains("is not in the allow list of connection pg"),
        "{err}"
    );
    assert!(!err.contains("could not be resolved"), "{err}");
}

#[test]
fn approvers_originators_and_exempt_match_looked_up_groups() {
    let ci = CloudIdentity::start(100);
    ci.member("bob@example.com", &["dba@example.com"]);
    ci.member("erin@example.com", &["eng@example.com"]);
    ci.member("sam@example.com", &["security@example.com"]);
    let gw = gateway(&ci);
    let alice = google_token("alice@example.com", None);

    // exempt: the DPO by group sees clear values; alice does not.
    let pii = "select '123-45-6789' as ssn";
    let dora = google_token("dora@example.com", None);
    ci.member("dora@example.com", &["dpo@example.com", "sre@example.com"]);
    let (code, out, err) = cli(
        &gw,
        &dora,
        None,
        &["exec", "pg-masked", "--format", "json", "--", pii],
    );
    assert!(code == 0 && out.contains("123-45-6789"), "{out}{err}");
    let (code, out, err) = cli(
        &gw,
        &alice,
        None,
        &["exec", "pg-masked", "--format", "json", "--", pii],
    );
    assert!(code == 0 && !out.contains("123-45-6789"), "{out}{err}");

    // approvers: bob is a dba by lookup, mallory is not.
    let sql =
        "drop table if exists gg_t; create table gg_t (id int); insert into gg_t values (1), (2)";
    let (code, _, err) = exec(&gw, &alice, "pg", sql);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = exec(&gw, &alice, "pg-held", "delete from gg_t where id = 1");
    assert_eq!(code, 3, "held for approval: {err}");
    let id = err
        .split("custody review approve ")
        .nth(1)
        .and_then(|r| r.split(|c: char| c == '`' || c.is_whitespace()).next())
        .unwrap_or_else(|| panic!("no review id in: {err}"))
        .to_string();
    let mallory = google_token("mallory@example.com", None);
    let (code, _, err) = cli(&gw, &mallory, None, &["review", "approve", &id]);
    assert_eq!(code, 2, "mallory approved as a dba: {err}");
    let bob = google_token("bob@example.com", None);
    let (code, _, err) = cli(&gw, &bob, None, &["review", "approve", &id]);
    assert!(code == 0 && err.contains("is approved"), "{err}");

    // originators: erin (eng by lookup) delegates to CI; mallory cannot.
    let ci_token = google_token("ci@p.iam.gserviceaccount.com", None);
    let to = "serviceAccount:ci@p.iam.gserviceaccount.com";
    let (code, erins, err) = cli(
        &gw,
        &google_token("erin@example.com", None),
        None,
        &["delegate", "--to", to],
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli(
        &gw,
        &ci_token,
        Some(erins.trim()),
        &["exec", "pg-eng", "--", "select 1"],
    );
    assert_eq!(code, 0, "erin's delegation: {err}");
    let (code, mallorys, err) = cli(&gw, &mallory, None, &["delegate", "--to", to]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli(
        &gw,
        &ci_token,
        Some(mallorys.trim()),
        &["exec", "pg-eng", "--", "select 1"],
    );
    assert!(
        code != 0 && err.contains("not among its originators"),
        "{err}"
    );

    // admins: sam may revoke as a member of group:security@example.com.
    let (code, _, err) = revoke(&gw, &google_token("sam@example.com", None));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = revoke(&gw, &mallory);
    assert!(
        code != 0 && err.contains("is not in [identity] admins"),
        "{err}"
    );
}

fn revoke(gw: &Gateway, token: &str) -> (i32, String, String) {
    let args = [
        "revoke",
        "--principal",
        "user:zed@example.com",
        "--reason",
        "test",
    ];
    cli(gw, token, None, &args)
}

#[test]
fn a_failed_lookup_refuses_only_group_access_and_says_why() {
    let ci = CloudIdentity::start(100);
    ci.member("greg@example.com", &["sre@example.com"]);
    ci.set_mode(Mode::Forbidden);
    let gw = gateway(&ci);
    let greg = google_token("greg@example.com", None);

    let (code, _, err) = exec(&gw, &greg, "pg", "select 1");
    assert!(code != 0, "{err}");
    assert!(
        err.contains("user:greg@example.com is not in the allow list of connection pg; group membership could not be resolved: Cloud Identity answered 403 PERMISSION_DENIED"),
        "{err}"
    );
    // user: rules still admit while Cloud Identity refuses.
    let (code, _, err) = exec(
        &gw,
        &google_token("alice@example.com", None),
        "pg",
        "select 1",
    );
    assert_eq!(code, 0, "{err}");
    // The audit log and the refusal's recording carry the reason.
    let log = gw.proc.wait_log("group membership could not be resolved");
    assert!(log.contains("custody::audit"), "{log}");
    let rec = gw.wait_recordings("could not be resolved: Cloud Identity answered 403");
    assert!(
        rec.contains("could not be resolved: Cloud Identity answered 403"),
        "{rec}"
    );

    // So are admins who are admins by group only.
    let (code, _, err) = revoke(&gw, &google_token("sam@example.com", None));
    assert!(
        code != 0 && err.contains("is not in [identity] admins; group membership could not be resolved: Cloud Identity answered 403"),
        "{err}"
    );

    // A malformed answer fails closed the same way.
    ci.set_mode(Mode::Garbage);
    let (code, _, err) = exec(
        &gw,
        &google_token("gail@example.com", None),
        "pg",
        "select 1",
    );
    assert!(
        code != 0 && err.contains("could not be resolved: Cloud Identity's answer is malformed"),
        "{err}"
    );

    // A failure is cached only a few seconds.
    ci.set_mode(Mode::Ok);
    std::thread::sleep(Duration::from_millis(5500));
    let (code, _, err) = exec(&gw, &greg, "pg", "select 1");
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_slow_lookup_times_out_and_refuses_only_group_access() {
    let ci = CloudIdentity::start(100);
    ci.member("greg@example.com", &["sre@example.com"]);
    ci.set_mode(Mode::Slow);
    let gw = gateway(&ci);
    let greg = google_token("greg@example.com", None);
    let alice = google_token("alice@example.com", None);
    std::thread::scope(|s| {
        let by_user = s.spawn(|| exec(&gw, &alice, "pg", "select 1"));
        let (code, _, err) = exec(&gw, &greg, "pg", "select 1");
        assert!(
            code != 0
                && err.contains("could not be resolved: Cloud Identity did not answer within 5s"),
            "{err}"
        );
        let (code, _, err) = by_user.join().unwrap();
        assert_eq!(code, 0, "{err}");
    });
}

#[test]
fn domain_members_match_the_hd_claim() {
    let ci = CloudIdentity::start(100);
    let gw = gateway(&ci);
    let workspace = google_token("hank@example.com", Some("corp.example"));
    let (code, _, err) = exec(&gw, &workspace, "pg-domain", "select 1");
    assert_eq!(code, 0, "{err}");
    let consumer = google_token("hank@gmail.com", None);
    let (code, _, err) = exec(&gw, &consumer, "pg-domain", "select 1");
    assert!(code != 0 && err.contains("not in the allow list"), "{err}");
}

#[test]
fn config_check_validates_google_groups() {
    let dir = tempfile::tempdir().unwrap();
    let check = |section: &str| {
        let path = dir.path().join("c.toml");
        let text = config(&dir.path().join("rec"), "")
            .replace("[recording]\n", &format!("{section}\n[recording]\n"));
        std::fs::write(&path, text).unwrap();
        let out = Command::new(bin())
            .args(["config", "check"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let ok = format!(
        "[identity.google_groups]\nendpoint = \"http://127.0.0.1:9\"\nissuers = [\"{}\"]\n",
        issuer().url
    );
    let (passed, err) = check(&ok);
    assert!(passed, "{err}");
    let (passed, err) = check(&ok.replace("127.0.0.1:9", "ci.example"));
    assert!(
        !passed && err.contains("identity.google_groups.endpoint") && err.contains("plain http"),
        "{err}"
    );
    // The default issuer is Google's, which this config does not trust.
    let (passed, err) = check("[identity.google_groups]\n");
    assert!(
        !passed
            && err
                .contains("\"https://accounts.google.com\" is not an [[identity.issuers]] issuer"),
        "{err}"
    );
    let (passed, err) = check(&format!("{ok}cache = \"1m\"\n"));
    assert!(!passed && err.contains("unknown field"), "{err}");
}
