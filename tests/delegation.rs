//! Chain of custody end to end with the real binary: a person delegates to a
//! CI service account, which delegates to a job account, which queries
//! PostgreSQL; the recording names the whole chain. Then the originator is
//! revoked and the same run is refused. Forged, expired, re-targeted and
//! widened delegations are refused.

mod support;

use std::process::Command;

use support::*;

const CI: &str = "ci@p.iam.gserviceaccount.com";
const JOB: &str = "job@p.iam.gserviceaccount.com";

fn gateway() -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("recordings");
    let key = signing_key().display().to_string();
    let text = config(
        &store,
        &format!(
            r#"
[[connections]]
name = "pg-nightly"
kind = "postgres"
host = "127.0.0.1"
port = {port}
database = "app"
user = "app"
password = "env:{PASSWORD_ENV}"
tls = "disable"
allow = ["serviceAccount:{JOB}", "group:eng@example.com"]

[connections.delegation]
originators = ["group:eng@example.com"]
max_depth = 3
max_age = "24h"
via = ["serviceAccount:{CI}"]
"#,
            port = pg().port
        ),
    )
    .replace(
        "[identity]\n",
        &format!("[identity]\nsigning_key = \"file:{key}\"\nadmins = [\"user:sec@example.com\"]\n"),
    );
    Gateway::start_with(dir, &text, store)
}

/// Runs the CLI as `token`'s owner, holding `delegation` if any: (ok, stdout, stderr).
fn cli(
    gw: &Gateway,
    token: &str,
    delegation: Option<&str>,
    args: &[&str],
) -> (bool, String, String) {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env("CUSTODY_GATEWAY", &gw.url)
        .env("CUSTODY_TOKEN", token)
        .env_remove("CUSTODY_DELEGATION");
    if let Some(d) = delegation {
        cmd.env("CUSTODY_DELEGATION", d);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn delegate(
    gw: &Gateway,
    token: &str,
    holding: Option<&str>,
    to: &str,
    extra: &[&str],
) -> (bool, String, String) {
    let mut args = vec!["delegate", "--to", to];
    args.extend_from_slice(extra);
    cli(gw, token, holding, &args)
}

fn audit_of(stderr: &str) -> String {
    stderr
        .split("audit id ")
        .last()
        .and_then(|r| r.split(|c: char| c.is_whitespace() || c == ')').next())
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_nightly_run_keeps_its_originator_until_revoked() {
    let gw = gateway();
    let alice = token_with("alice@example.com", &["eng@example.com"]);
    let ci = token(CI);
    let job = token(JOB);

    // alice → ci (limited to pg-nightly), ci → job.
    let (ok, t1, err) = delegate(
        &gw,
        &alice,
        None,
        &format!("serviceAccount:{CI}"),
        &["--connections", "pg-nightly", "--ttl", "1h"],
    );
    assert!(ok, "{err}");
    let (ok, t2, err) = delegate(&gw, &ci, Some(&t1), &format!("serviceAccount:{JOB}"), &[]);
    assert!(ok, "{err}");

    // The job queries with its own identity plus the delegation.
    let (ok, out, err) = cli(
        &gw,
        &job,
        Some(&t2),
        &["exec", "pg-nightly", "--", "select 'nightly' as run"],
    );
    assert!(ok, "{err}");
    assert!(out.contains("nightly"), "{out}");
    let audit = audit_of(&err);
    let chain = format!("user:alice@example.com → serviceAccount:{CI} → serviceAccount:{JOB}");
    let replay = Command::new(bin())
        .args(["replay", &audit, "--store"])
        .arg(format!("file://{}", gw.store.display()))
        .output()
        .unwrap();
    let replay = String::from_utf8_lossy(&replay.stdout);
    assert!(
        replay.contains(&format!("chain of custody: {chain}")),
        "{replay}"
    );
    let rec = gw.wait_recordings("\"chain\":[");
    assert!(rec.contains(&format!("\"chain\":[\"user:alice@example.com\",\"serviceAccount:{CI}\",\"serviceAccount:{JOB}\"]")), "{rec}");

    // Skipping the delegation does not skip the policy: the job alone is no originator.
    let (ok, _, err) = cli(&gw, &job, None, &["exec", "pg-nightly", "--", "select 1"]);
    assert!(
        !ok && err.contains("originator serviceAccount:job"),
        "{err}"
    );
    // Straight from alice to the job, not through ci: refused by `via`.
    let (ok, direct, err) = delegate(&gw, &alice, None, &format!("serviceAccount:{JOB}"), &[]);
    assert!(ok, "{err}");
    let (ok, _, err) = cli(
        &gw,
        &job,
        Some(&direct),
        &["exec", "pg-nightly", "--", "select 1"],
    );
    assert!(
        !ok && err.contains(&format!("must pass through serviceAccount:{CI}")),
        "{err}"
    );

    // Only admins revoke; then the same nightly run is refused, naming alice.
    let (ok, _, err) = cli(
        &gw,
        &job,
        None,
        &["revoke", "--principal", "user:alice@example.com"],
    );
    assert!(!ok && err.contains("not in [identity] admins"), "{err}");
    let sec = token("sec@example.com");
    let (ok, _, err) = cli(
        &gw,
        &sec,
        None,
        &[
            "revoke",
            "--principal",
            "user:alice@example.com",
            "--reason",
            "contract ended",
        ],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = cli(
        &gw,
        &job,
        Some(&t2),
        &["exec", "pg-nightly", "--", "select 'nightly' as run"],
    );
    assert!(!ok, "{err}");
    assert!(err.contains("user:alice@example.com is revoked"), "{err}");
    // Nor can the revoked chain delegate further.
    let (ok, _, err) = delegate(&gw, &ci, Some(&t1), &format!("serviceAccount:{JOB}"), &[]);
    assert!(!ok && err.contains("revoked"), "{err}");
}

#[test]
fn forged_expired_retargeted_and_widened_delegations_are_refused() {
    let gw = gateway();
    let alice = token_with("alice@example.com", &["eng@example.com"]);
    let ci = token(CI);
    let (ok, t1, err) = delegate(
        &gw,
        &alice,
        None,
        &format!("serviceAccount:{CI}"),
        &["--connections", "pg-nightly"],
    );
    assert!(ok, "{err}");

    // Re-targeted: mallory holds ci's delegation.
    let mallory = token_with("mallory@example.com", &["eng@example.com"]);
    let (ok, _, err) = cli(
        &gw,
        &mallory,
        Some(&t1),
        &["exec", "pg-nightly", "--", "select 1"],
    );
    assert!(
        !ok && err.contains(&format!(
            "for serviceAccount:{CI}, not for user:mallory@example.com"
        )),
        "{err}"
    );

    // Forged: claims edited, signature kept.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = t1.split('.').collect();
    let claims = String::from_utf8(b64.decode(parts[1]).unwrap()).unwrap();
    let widened = claims.replace(
        "\"connections\":[\"pg-nightly\"]",
        "\"connections\":[\"pg-nightly\",\"pg\"]",
    );
    assert_ne!(claims, widened);
    let forged = format!("{}.{}.{}", parts[0], b64.encode(widened), parts[2]);
    let (ok, _, err) = cli(&gw, &ci, Some(&forged), &["exec", "pg", "--", "select 1"]);
    assert!(!ok && err.contains("signature is not valid"), "{err}");

    // Widened: ci asks for more connections than alice gave.
    let (ok, _, err) = delegate(
        &gw,
        &ci,
        Some(&t1),
        &format!("serviceAccount:{JOB}"),
        &["--connections", "pg-nightly,pg"],
    );
    assert!(!ok && err.contains("cannot widen"), "{err}");
    // And a delegation for pg-nightly does not open pg.
    let (ok, _, err) = cli(&gw, &ci, Some(&t1), &["exec", "pg", "--", "select 1"]);
    assert!(!ok && err.contains("covers only pg-nightly"), "{err}");

    // Expired.
    let (ok, short, err) = delegate(
        &gw,
        &alice,
        None,
        &format!("serviceAccount:{CI}"),
        &["--ttl", "1s"],
    );
    assert!(ok, "{err}");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (ok, _, err) = cli(
        &gw,
        &ci,
        Some(&short),
        &["exec", "pg-nightly", "--", "select 1"],
    );
    assert!(!ok && err.contains("expired"), "{err}");

    // The public key is published for anyone who wants to check a token.
    let (status, body) = http_get(&format!("{}/.well-known/jwks.json", gw.url)).unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains("\"kty\":\"OKP\"") && body.contains("\"crv\":\"Ed25519\""),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tunnel_ends_when_its_delegation_expires() {
    let gw = gateway();
    let alice = token_with("alice@example.com", &["eng@example.com"]);
    let ci = token_with(CI, &["eng@example.com"]);
    let (ok, t, err) = delegate(
        &gw,
        &alice,
        None,
        &format!("serviceAccount:{CI}"),
        &["--ttl", "3s"],
    );
    assert!(ok, "{err}");
    let mut cmd = Command::new(bin());
    cmd.args([
        "connect",
        "pg-nightly",
        "--listen",
        "127.0.0.1:0",
        "--gateway",
        &gw.url,
    ])
    .env("CUSTODY_TOKEN", &ci)
    .env("CUSTODY_DELEGATION", &t);
    let (_cli, rest) = Proc::spawn(cmd, "listening on ");
    let addr: std::net::SocketAddr = rest.split_whitespace().next().unwrap().parse().unwrap();
    let c = pg_client(addr).await;
    c.simple_query("select 1").await.unwrap();
    let err = c.simple_query("select pg_sleep(10)").await.unwrap_err();
    let db = err.as_db_error().expect("told why, not just cut off");
    assert_eq!(db.code().code(), "57P01", "{}", db.message());
    assert!(db.message().contains("delegation"), "{}", db.message());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delegated_tunnel_ends_when_its_originator_is_revoked() {
    let gw = gateway();
    let alice = token_with("alice@example.com", &["eng@example.com"]);
    let ci = token_with(CI, &["eng@example.com"]);
    let (ok, t, err) = delegate(&gw, &alice, None, &format!("serviceAccount:{CI}"), &[]);
    assert!(ok, "{err}");
    let mut cmd = Command::new(bin());
    cmd.args([
        "connect",
        "pg-nightly",
        "--listen",
        "127.0.0.1:0",
        "--gateway",
        &gw.url,
    ])
    .env("CUSTODY_TOKEN", &ci)
    .env("CUSTODY_DELEGATION", &t);
    let (_cli, rest) = Proc::spawn(cmd, "listening on ");
    let addr: std::net::SocketAddr = rest.split_whitespace().next().unwrap().parse().unwrap();
    let c = pg_client(addr).await;
    c.simple_query("select 1").await.unwrap();
    // A query in flight when the revocation lands is answered with the reason.
    let running = tokio::spawn(async move { c.simple_query("select pg_sleep(20)").await });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    // The originator is revoked by identity, not by the name the chain shows.
    let alice_id = format!(
        "principal://{}/subject/dev|alice@example.com",
        issuer().url.trim_start_matches("http://")
    );
    let (ok, _, err) = cli(
        &gw,
        &token("sec@example.com"),
        None,
        &["revoke", "--principal", &alice_id],
    );
    assert!(ok, "{err}");
    let started = std::time::Instant::now();
    let err = running.await.unwrap().unwrap_err();
    let db = err.as_db_error().expect("told why, not just cut off");
    assert_eq!(db.code().code(), "57P01", "{}", db.message());
    assert!(
        db.message().contains("user:alice@example.com was revoked"),
        "{}",
        db.message()
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(6));
    // And the chain can be handed on no further.
    let (ok, _, err) = delegate(&gw, &ci, Some(&t), &format!("serviceAccount:{JOB}"), &[]);
    assert!(!ok && err.contains("revoked"), "{err}");
}
