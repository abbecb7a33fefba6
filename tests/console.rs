//! `custody ui` in front of the real gateway: the embedded console is
//! served on loopback and its `/v1` calls reach the gateway with the CLI's
//! token; calls that are not the console's own (another Host, another
//! origin, no console header) are refused before any token is added.

mod support;

use std::process::Command;

use serde_json::Value;
use support::*;

fn gateway() -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("recordings");
    let text = config(&store, "").replace(
        "[identity]\n",
        "[identity]\nauditors = [\"group:security@example.com\"]\n",
    );
    Gateway::start_with(dir, &text, store)
}

/// `custody ui --no-browser` for `gw` as `token`'s owner: (process, base URL).
fn console(gw: &Gateway, token: &str) -> (Proc, String) {
    let mut cmd = Command::new(bin());
    cmd.args([
        "ui",
        "--listen",
        "127.0.0.1:0",
        "--no-browser",
        "--gateway",
        &gw.url,
    ])
    .env("CUSTODY_TOKEN", token);
    let (proc, rest) = Proc::spawn(cmd, "console at ");
    let url = rest
        .split_whitespace()
        .next()
        .unwrap()
        .trim_end_matches("/ui/")
        .to_string();
    (proc, url)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_local_console_forwards_only_its_own_calls() {
    let gw = gateway();
    let alice = token("alice@example.com");
    let (_ui, url) = console(
        &gw,
        &token_with("sam@example.com", &["security@example.com"]),
    );
    let http = reqwest::Client::new();

    let page = http.get(format!("{url}/")).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.text().await.unwrap().contains("app.js"));

    let done = http
        .post(format!("{}/v1/exec/pg", gw.url))
        .bearer_auth(&alice)
        .json(&serde_json::json!({"input": "select 1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status().as_u16(), 200);

    let list = http
        .get(format!("{url}/v1/sessions?mode=exec"))
        .header("x-custody-console", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(list.status().as_u16(), 200);
    assert!(list.headers().contains_key("x-custody-audit-id"));
    let body: Value = list.json().await.unwrap();
    assert_eq!(
        body["all"], true,
        "the console's token is the auditor's: {body}"
    );

    for (what, req) in [
        ("no console header", http.get(format!("{url}/v1/sessions"))),
        (
            "another origin",
            http.get(format!("{url}/v1/sessions"))
                .header("x-custody-console", "1")
                .header("origin", "https://evil.example"),
        ),
        (
            "another host",
            http.get(format!("{url}/v1/sessions"))
                .header("x-custody-console", "1")
                .header("host", "evil.example"),
        ),
    ] {
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), 403, "{what}");
    }
}

const CI: &str = "ci@p.iam.gserviceaccount.com";
const SECRET: &str = "carol.secret@example.com";
const HELD: &str = "delete from console_t where id = 1";

/// A gateway with a masked, a held, a delegable and an SSH connection.
fn e2e_gateway() -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("recordings");
    let key = signing_key().display().to_string();
    let conn = |name: &str, allow: &str, more: &str| {
        format!(
            "\n[[connections]]\nname = \"{name}\"\nkind = \"postgres\"\nhost = \"127.0.0.1\"\nport = {port}\ndatabase = \"app\"\nuser = \"app\"\npassword = \"env:{PASSWORD_ENV}\"\ntls = \"disable\"\nallow = [{allow}]\n{more}\n",
            port = pg().port
        )
    };
    let extra = [
        conn(
            "pg-masked",
            "\"user:alice@example.com\"",
            "[connections.masking]\ndetectors = [\"email\"]",
        ),
        conn(
            "pg-held",
            "\"user:alice@example.com\"",
            "[connections.guardrails]\nrequire_approval = [\"delete\"]\napprovers = [\"group:dba@example.com\"]",
        ),
        conn(
            "pg-nightly",
            &format!("\"serviceAccount:{CI}\""),
            "[connections.delegation]\noriginators = [\"group:eng@example.com\"]\nmax_depth = 2\nmax_age = \"24h\"",
        ),
        support::sshd::sshd().connection("web-1", ""),
    ]
    .concat();
    let text = config(&store, &extra).replace(
        "[identity]\n",
        &format!("[identity]\nsigning_key = \"file:{key}\"\nauditors = [\"group:security@example.com\"]\n"),
    );
    Gateway::start_with(dir, &text, store)
}

/// Runs the CLI; (exit code, stdout, stderr, audit id from stderr).
fn cli(
    gw: &Gateway,
    token: &str,
    delegation: Option<&str>,
    args: &[&str],
) -> (i32, String, String, String) {
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
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let audit = err
        .split("audit id ")
        .nth(1)
        .and_then(|r| r.split(|c: char| c.is_whitespace() || c == ')').next())
        .unwrap_or_default()
        .to_string();
    let code = out.status.code().unwrap_or(-1);
    (
        code,
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        err,
        audit,
    )
}

fn sealed(gw: &Gateway, audit: &str) {
    let manifest = gw
        .store
        .join(custody::recording::store::manifest_key(audit));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !manifest.exists() {
        assert!(std::time::Instant::now() < deadline, "{audit} never sealed");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Alters the segment holding `needle`, as someone with write access to the bucket could.
fn tamper(gw: &Gateway, audit: &str, needle: &str) {
    let seg = (1..=3)
        .map(|n| {
            gw.store
                .join(custody::recording::store::segment_key(audit, n))
        })
        .find(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains(needle)))
        .expect("a segment holding the statement");
    let text = std::fs::read_to_string(&seg).unwrap();
    let mut perms = std::fs::metadata(&seg).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&seg, perms).unwrap();
    std::fs::write(&seg, text.replace(needle, "forged")).unwrap();
}

/// `sql` through `custody exec` as `token`'s owner, which must succeed: its audit id.
fn exec_ok(gw: &Gateway, token: &str, delegation: Option<&str>, conn: &str, sql: &str) -> String {
    let (code, out, err, audit) = cli(gw, token, delegation, &["exec", conn, "--", sql]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains(SECRET), "masked: {out}");
    audit
}

/// A PTY session on web-1 that prints a marker: its audit id.
fn ssh_session(gw: &Gateway, token: &str) -> String {
    let mut ssh = support::sshd::ssh_client("ssh", gw, token);
    ssh.args(["-tt", "web-1"]);
    let (code, _, err) = support::sshd::run(
        ssh,
        Some("echo marker-$((6*7))\nexit 0\n"),
        std::time::Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{err}");
    support::sshd::audit_of(&err)
}

/// alice's delete held for approval on pg-held: the review id.
fn held(gw: &Gateway, alice: &str) -> String {
    let (code, _, err, _) = cli(gw, alice, None, &["exec", "pg-held", "--", HELD]);
    assert_eq!(code, 3, "held for approval: {err}");
    err.split("custody review approve ")
        .nth(1)
        .and_then(|r| r.split(|c: char| c == '`' || c.is_whitespace()).next())
        .unwrap_or_else(|| panic!("no review id in {err}"))
        .to_string()
}

/// The recorded sessions the browser is to find, by name, and the review id.
fn record_sessions(gw: &Gateway) -> (serde_json::Value, String) {
    let alice = token_with("alice@example.com", &["eng@example.com"]);
    let pg = exec_ok(
        gw,
        &alice,
        None,
        "pg-masked",
        &format!("select '{SECRET}' as contact"),
    );
    let ssh = ssh_session(gw, &alice);
    let ssh_exec = exec_ok(gw, &alice, None, "web-1", "echo exec-out-$((2*21))");
    let to = format!("serviceAccount:{CI}");
    let args = ["delegate", "--to", &to, "--connections", "pg-nightly"];
    let (code, delegation, err, _) = cli(gw, &alice, None, &args);
    assert_eq!(code, 0, "{err}");
    let delegated = exec_ok(
        gw,
        &token(CI),
        Some(&delegation),
        "pg-nightly",
        "select 'nightly' as run",
    );
    let tampered = exec_ok(gw, &alice, None, "pg", "select 'intact' as v");
    let bob = token_with("bob@example.com", &["sre@example.com"]);
    let table =
        "create table if not exists console_t (id int); insert into console_t values (1), (2)";
    let bobs = exec_ok(gw, &bob, None, "pg", table);
    let review = held(gw, &alice);
    for id in [&pg, &ssh, &ssh_exec, &delegated, &tampered, &bobs] {
        sealed(gw, id);
    }
    tamper(gw, &tampered, "intact");
    let ids = serde_json::json!({
        "pg": pg, "ssh": ssh, "ssh_exec": ssh_exec, "delegated": delegated, "tampered": tampered, "bob": bobs,
        "chain": ["user:alice@example.com", to],
        "secret": SECRET, "review": review,
    });
    (ids, review)
}

#[test]
fn the_console_in_a_real_browser() {
    let root = env!("CARGO_MANIFEST_DIR");
    let modules = format!("{root}/target/npm/node_modules");
    assert!(
        std::path::Path::new(&format!("{modules}/playwright-core")).exists()
            && std::path::Path::new("/usr/bin/chromium").exists(),
        "playwright-core (target/npm) and Debian's chromium are missing: scripts/test.sh installs them"
    );
    let gw = e2e_gateway();
    let (mut ids, review) = record_sessions(&gw);
    let (_auditor, auditor_url) = console(
        &gw,
        &token_with(
            "sam@example.com",
            &["security@example.com", "dba@example.com"],
        ),
    );
    let (_bob, bob_url) = console(&gw, &token_with("bob@example.com", &["sre@example.com"]));
    let shots = format!("{root}/docs/screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    ids["auditor"] = auditor_url.into();
    ids["own"] = bob_url.into();
    ids["shots"] = shots.into();
    let out = Command::new("node")
        .arg(format!("{root}/tests/node/console.js"))
        .env("NODE_PATH", &modules)
        .env("CONSOLE_E2E", ids.to_string())
        .output()
        .expect("node");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "browser checks failed:\n{stdout}\n{stderr}"
    );
    println!("{stdout}");

    // Approved on the page, the held statement now runs, once.
    let alice = token_with("alice@example.com", &["eng@example.com"]);
    let (code, _, err, _) = cli(
        &gw,
        &alice,
        None,
        &["exec", "pg-held", "--review", &review, "--", HELD],
    );
    assert_eq!(code, 0, "the approved statement runs: {err}");
    let left = pg().admin("select 'left:' || string_agg(id::text, ',') from console_t");
    assert!(left.contains("left:2"), "row 1 was deleted: {left}");
    let (code, _, err, _) = cli(
        &gw,
        &alice,
        None,
        &["exec", "pg-held", "--review", &review, "--", HELD],
    );
    assert_eq!(code, 2, "an approval runs its statement once: {err}");
    let rec = gw.wait_recordings("\"action\":\"approved\"");
    assert!(
        rec.contains("checked with the on-call DBA"),
        "the approval and its reason are recorded"
    );
}
