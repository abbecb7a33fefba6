//! Issue 14: Workload Identity Federation principals and per-issuer
//! audiences. A GitHub-style issuer configured with a
//! `workload_identity_pool` makes `principal://iam.googleapis.com/POOL/
//! subject/S` principals whose attributes come from its
//! `attribute_mapping`; allow lists match them with IAM's principalSet
//! syntax. Each issuer may list its own audiences (gcloud's client id on
//! the Google issuer only).

mod support;

use std::net::TcpListener;
use std::process::Command;
use std::sync::OnceLock;

use custody::identity::devissuer::DevIssuer;
use support::*;

const POOL: &str = "projects/123456789/locations/global/workloadIdentityPools/github";
const GCLOUD: &str = "32555940559.apps.googleusercontent.com";

/// A second issuer, as GitHub Actions' would be: no email, repository claims.
fn github() -> &'static (String, DevIssuer) {
    static GH: OnceLock<(String, DevIssuer)> = OnceLock::new();
    GH.get_or_init(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let dev = DevIssuer::generate(&url).unwrap();
        let router = dev.router().unwrap();
        // The issuer's URL is inside its discovery document: bind first.
        serve_on(listener, router);
        (url, dev)
    })
}

fn github_token(repository: &str, audience: &str) -> String {
    let (url, dev) = github();
    let now = chrono::Utc::now().timestamp();
    dev.sign(
        &serde_json::json!({
            "iss": url, "aud": audience,
            "sub": format!("repo:{repository}:ref:refs/heads/main"),
            "repository": repository, "ref": "refs/heads/main",
            "repository_owner": repository.split('/').next().unwrap(),
            "iat": now, "nbf": now, "exp": now + 600,
        }),
        jsonwebtoken::Algorithm::RS256,
    )
    .unwrap()
}

fn google_token(email: &str, audience: &str) -> String {
    issuer()
        .dev
        .token(email, &[], audience, 600, jsonwebtoken::Algorithm::RS256)
        .unwrap()
}

fn gateway() -> Gateway {
    let (gh, _) = github();
    let extra = format!(
        r#"
[[identity.issuers]]
issuer = "{gh}"
audiences = ["{AUDIENCE}"]
workload_identity_pool = "{POOL}"
attribute_mapping = {{ "google.subject" = "assertion.sub", "attribute.repository" = "assertion.repository", "attribute.ref" = "assertion.ref" }}
required_claims = {{ "assertion.repository_owner" = "my-org" }}

[[connections]]
name = "pg-ci"
kind = "postgres"
host = "127.0.0.1"
port = {port}
database = "app"
user = "app"
password = "env:{PASSWORD_ENV}"
tls = "disable"
allow = ["principalSet://iam.googleapis.com/{POOL}/attribute.repository/my-org/app", "principal://iam.googleapis.com/{POOL}/subject/repo:my-org/ops:ref:refs/heads/main"]

[[connections]]
name = "pg-pool"
kind = "postgres"
host = "127.0.0.1"
port = {port}
database = "app"
user = "app"
password = "env:{PASSWORD_ENV}"
tls = "disable"
allow = ["principalSet://iam.googleapis.com/{POOL}/*"]
"#,
        port = pg().port
    );
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("recordings");
    // The test issuer stands for Google's: gcloud's audience on it only.
    let text = config(&store, &extra).replacen(
        &format!("issuer = \"{}\"\n", issuer().url),
        &format!(
            "issuer = \"{}\"\naudiences = [\"{AUDIENCE}\", \"{GCLOUD}\"]\n",
            issuer().url
        ),
        1,
    );
    Gateway::start_with(dir, &text, store)
}

fn exec(gw: &Gateway, token: &str, conn: &str) -> (i32, String) {
    let (code, out, err) =
        custody_cli(&gw.url, token, &["exec", conn, "--", "select current_user"]);
    (code, format!("{out}{err}"))
}

#[test]
fn a_repository_principal_set_admits_that_repository_only() {
    let gw = gateway();
    let (code, out) = exec(&gw, &github_token("my-org/app", AUDIENCE), "pg-ci");
    assert_eq!(code, 0, "{out}");
    let (code, out) = exec(&gw, &github_token("my-org/other", AUDIENCE), "pg-ci");
    assert_ne!(code, 0, "{out}");
    let who = format!(
        "principal://iam.googleapis.com/{POOL}/subject/repo:my-org/other:ref:refs/heads/main"
    );
    assert!(
        out.contains(&who) && out.contains("not in the allow list"),
        "{out}"
    );
    // One subject by its principal:// name.
    let (code, out) = exec(&gw, &github_token("my-org/ops", AUDIENCE), "pg-ci");
    assert_eq!(code, 0, "{out}");
    // The whole pool, and nobody outside it; another owner's repository
    // is not even a workload of the pool (required_claims).
    let (code, out) = exec(&gw, &github_token("my-org/tools", AUDIENCE), "pg-pool");
    assert_eq!(code, 0, "{out}");
    let (code, out) = exec(&gw, &github_token("someone/else", AUDIENCE), "pg-pool");
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("assertion.repository_owner"), "{out}");
    let (code, out) = exec(&gw, &token("alice@example.com"), "pg-pool");
    assert_ne!(
        code, 0,
        "a Google user is not a workload of the pool: {out}"
    );
    // The recording names the workload as IAM does.
    gw.wait_recordings("principal://iam.googleapis.com/projects/123456789/locations/global/workloadIdentityPools/github/subject/repo:my-org/app:ref:refs/heads/main");
}

#[test]
fn audiences_are_per_issuer() {
    let gw = gateway();
    // gcloud's token: its audience is gcloud's client id, listed on the Google issuer.
    let (code, out) = exec(&gw, &google_token("alice@example.com", GCLOUD), "pg");
    assert_eq!(code, 0, "{out}");
    // The same audience from another issuer is refused.
    let (code, out) = exec(&gw, &github_token("my-org/app", GCLOUD), "pg-ci");
    assert_ne!(code, 0, "{out}");
    assert!(
        out.to_lowercase().contains("audience") || out.contains("InvalidAudience"),
        "{out}"
    );
    let (code, out) = exec(
        &gw,
        &google_token("alice@example.com", "https://elsewhere.example"),
        "pg",
    );
    assert_ne!(code, 0, "{out}");
}

#[test]
fn malformed_workload_members_fail_config_check_with_their_position() {
    let dir = tempfile::tempdir().unwrap();
    for (member, pool) in [
        (format!("principalSet://iam.googleapis.com/{POOL}/attribute.Repo/x"), POOL.to_string()),
        (format!("principalSet://iam.googleapis.com/{POOL}/attribute.repository/"), POOL.to_string()),
        ("principalSet://iam.googleapis.com/projects/x/locations/global/workloadIdentityPools/github/*".to_string(), POOL.to_string()),
        ("principal://iam.googleapis.com/projects/1/locations/eu/workloadIdentityPools/github/subject/s".to_string(), POOL.to_string()),
        (format!("principalSet://iam.googleapis.com/{POOL}/*"), "projects/1/locations/global/workloadIdentityPools/GH".to_string()),
    ] {
        let store = dir.path().join("r");
        let text = config(
            &store,
            &format!("\n[[identity.issuers]]\nissuer = \"https://token.actions.githubusercontent.com\"\nworkload_identity_pool = \"{pool}\"\n"),
        )
        .replace(
            "allow = [\"group:sre@example.com\", \"user:alice@example.com\"]",
            &format!("allow = [\"{member}\"]"),
        );
        let path = dir.path().join("custody.toml");
        std::fs::write(&path, &text).unwrap();
        let out = Command::new(bin())
            .args(["config", "check"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{member} / {pool} passed");
        assert!(err.contains("custody.toml:"), "file:line:col in {err}");
    }
}

#[test]
fn two_issuers_on_one_pool_and_issuers_on_iam_fail_config_check() {
    let dir = tempfile::tempdir().unwrap();
    for extra in [
        format!("\n[[identity.issuers]]\nissuer = \"https://a.example\"\nworkload_identity_pool = \"{POOL}\"\n\n[[identity.issuers]]\nissuer = \"https://b.example\"\nworkload_identity_pool = \"{POOL}\"\n"),
        format!("\n[[identity.issuers]]\nissuer = \"https://iam.googleapis.com/{POOL}\"\n"),
        "\n[[identity.issuers]]\nissuer = \"https://a.example\"\nrequired_claims = { \"assertion.x\" = \"y\" }\n".to_string(),
    ] {
        let text = config(&dir.path().join("r"), &extra);
        let path = dir.path().join("custody.toml");
        std::fs::write(&path, &text).unwrap();
        let out = Command::new(bin()).args(["config", "check"]).arg(&path).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("custody.toml:"), "{extra}: {err}");
    }
}
