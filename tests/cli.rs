//! The real `psql` through `custody connect`, and the `custody exec`,
//! `replay` and `config check` commands, as a user runs them.

mod support;

use std::process::Command;

use support::*;

fn exec(gw: &Gateway, token: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(["exec", "pg", "--gateway", &gw.url])
        .args(args)
        .env("CUSTODY_TOKEN", token)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn psql_through_connect() {
    let gw = Gateway::start("");
    let (cli, addr) = gw.connect("pg", &token("alice@example.com"));
    // psql's default sslmode=prefer: the gateway answers SSLRequest with 'N'.
    let script = r#"
create temp table p (id int, name text);
\copy p from stdin
1	one
2	two
\.
select count(*) as n from p; select name from p order by id desc limit 1;
do $$ begin raise notice 'hello from plpgsql'; end $$;
begin;
insert into p values (3, 'three');
select 1/0;
rollback;
select 'still usable' as s;
\copy p to stdout
"#;
    let (ok, out, err) = psql(addr, &["-v", "ON_ERROR_STOP=0"], Some(script));
    assert!(ok, "psql failed: {err}");
    assert!(out.contains(" n \n---\n 2\n"), "{out}");
    assert!(out.contains(" two\n"), "{out}");
    assert!(err.contains("NOTICE:  hello from plpgsql"), "{err}");
    assert!(err.contains("division by zero"), "{err}");
    assert!(out.contains("still usable"), "{out}");
    assert!(out.contains("1\tone\n2\ttwo\n"), "{out}");
    let log = cli.wait_log("ended");
    assert!(
        log.contains("custody: session "),
        "one line per session with its audit id: {log}"
    );
}

#[test]
fn psql_refused_gets_a_real_error() {
    let gw = Gateway::start("");
    let (_cli, addr) = gw.connect("pg", &token("mallory@example.com"));
    let (ok, _, err) = psql(addr, &["-c", "select 1"], None);
    assert!(!ok);
    assert!(
        err.contains("not in the allow list"),
        "psql shows the reason: {err}"
    );
    assert!(err.contains("audit id"), "{err}");
}

#[test]
fn exec_formats_and_exit_codes() {
    let gw = Gateway::start("");
    let tok = token("alice@example.com");
    let (code, out, err) = exec(
        &gw,
        &tok,
        &[
            "--",
            "select 1 as id, 'ann' as name union all select 22, 'bo' order by id",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        " id | name\n----+------\n 1  | ann\n 22 | bo\n(2 rows)\n"
    );
    assert!(err.contains("custody: audit id "), "{err}");

    let (code, out, _) = exec(&gw, &tok, &["--format", "csv", "--", "select 1 as id"]);
    assert_eq!((code, out.as_str()), (0, "id\n1\n"));
    let (code, out, _) = exec(&gw, &tok, &["--format", "json", "--", "select 1 as id"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["rows"][0][0], "1");

    let (code, _, err) = exec(&gw, &tok, &["--", "select * from nope"]);
    assert_eq!(code, 1, "query error exits 1: {err}");
    assert!(err.contains("42P01") && err.contains("audit id"), "{err}");

    let (code, _, err) = exec(&gw, &token("mallory@example.com"), &["--", "select 1"]);
    assert_eq!(code, 2, "refusal exits 2: {err}");
    assert!(
        err.contains("HTTP 403") && err.contains("audit id"),
        "{err}"
    );
    let (code, _, err) = exec(&gw, "garbage", &["--", "select 1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("HTTP 401"), "{err}");
}

#[test]
fn replay_prints_the_session() {
    let gw = Gateway::start("");
    let (_, _, err) = exec(
        &gw,
        &token("alice@example.com"),
        &["--", "select 42 as answer"],
    );
    let audit = err.split("audit id ").nth(1).unwrap().trim().to_string();
    let out = Command::new(bin())
        .args([
            "replay",
            &audit,
            "--store",
            &format!("file://{}", gw.store.display()),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains(&format!(
            "session {audit}: user:alice@example.com → pg (exec)"
        )),
        "{text}"
    );
    assert!(text.contains("select 42 as answer"), "{text}");
    assert!(text.contains("SELECT 1 (1 rows)"), "{text}");
    assert!(text.contains("session ended: completed"), "{text}");

    let missing = Command::new(bin())
        .args([
            "replay",
            "0190aaaa-0000-7000-8000-000000000000",
            "--store",
            &format!("file://{}", gw.store.display()),
        ])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no recording"));
}

#[test]
fn config_check_locates_problems() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, config(&dir.path().join("rec"), "")).unwrap();
    let out = Command::new(bin())
        .args(["config", "check"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = dir.path().join("bad.toml");
    let text =
        config(&dir.path().join("rec"), "").replace(&format!("env:{PASSWORD_ENV}"), "s3cret-plain");
    std::fs::write(&bad, &text).unwrap();
    let out = Command::new(bin())
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let line = text
        .lines()
        .position(|l| l.contains("s3cret-plain"))
        .unwrap()
        + 1;
    assert!(err.contains(&format!("bad.toml:{line}:12: ")), "{err}");
    assert!(
        err.contains("plain secret") && !err.contains("s3cret-plain"),
        "{err}"
    );

    // serve refuses the same file.
    let out = Command::new(bin())
        .args(["serve", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("plain secret"));
}

#[test]
fn shipped_configs_pass_check() {
    for file in [
        "examples/custody.toml",
        "terraform/examples/complete/custody.toml",
    ] {
        let path = format!("{}/{file}", env!("CARGO_MANIFEST_DIR"));
        let out = Command::new(bin())
            .args(["config", "check", &path])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A metadata server stand-in: answers the identity endpoint only with the
/// Metadata-Flavor header, minting a token for the audience it is asked for.
fn metadata_server(gateway_url: &str) -> String {
    let expected = gateway_url.to_string();
    use axum::extract::Query;
    use axum::http::HeaderMap;
    let app = axum::Router::new().route(
        "/computeMetadata/v1/instance/service-accounts/default/identity",
        axum::routing::get(
            move |headers: HeaderMap,
                  Query(q): Query<std::collections::HashMap<String, String>>| async move {
                if headers.get("metadata-flavor").map(|v| v.as_bytes()) != Some(b"Google") {
                    return (axum::http::StatusCode::FORBIDDEN, String::new());
                }
                // The CLI must ask for the gateway URL as audience; the test gateway
                // is configured with AUDIENCE, so that is what the token carries.
                if q.get("audience") != Some(&expected) {
                    return (axum::http::StatusCode::BAD_REQUEST, String::new());
                }
                let tok = issuer()
                    .dev
                    .token(
                        "alice@example.com",
                        &[],
                        AUDIENCE,
                        600,
                        jsonwebtoken::Algorithm::ES256,
                    )
                    .unwrap();
                (axum::http::StatusCode::OK, tok)
            },
        ),
    );
    serve_router(app)
}

#[test]
fn token_from_metadata_server_or_a_clear_error() {
    let gw = Gateway::start("");
    let host = metadata_server(&gw.url);
    let out = Command::new(bin())
        .args([
            "exec",
            "pg",
            "--gateway",
            &gw.url,
            "--",
            "select 'via metadata' as s",
        ])
        .env_remove("CUSTODY_TOKEN")
        .env("GCE_METADATA_HOST", &host)
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("via metadata"));

    let out = Command::new(bin())
        .args(["exec", "pg", "--gateway", &gw.url, "--", "select 1"])
        .env_remove("CUSTODY_TOKEN")
        .env("GCE_METADATA_HOST", format!("127.0.0.1:{}", free_port()))
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no identity token") && err.contains("--token"),
        "{err}"
    );
}

/// Issue 14: with no token and no metadata server, `custody exec` asks
/// gcloud for a service account's token (`--audiences=URL`), then for a
/// person's (plain `print-identity-token`); when everything fails, one
/// message names each attempt and what it answered.
#[test]
fn without_a_token_gcloud_is_tried_for_service_accounts_then_users() {
    let gw = Gateway::start("");
    let dir = tempfile::tempdir().unwrap();
    let gcloud = dir.path().join("gcloud");
    // A person's gcloud: --audiences needs a service account, as with the real one.
    std::fs::write(
        &gcloud,
        "#!/bin/sh\ncase \"$*\" in *--audiences=*) echo 'ERROR: (gcloud.auth.print-identity-token) Invalid account type for `--audiences`. Requires valid service account.' >&2; exit 1;; esac\n[ -n \"$FAKE_TOKEN\" ] || { echo 'ERROR: (gcloud.auth.print-identity-token) You do not currently have an active account selected.' >&2; exit 1; }\necho \"$FAKE_TOKEN\"\n",
    )
    .unwrap();
    std::process::Command::new("chmod")
        .args(["+x"])
        .arg(&gcloud)
        .status()
        .unwrap();
    let path = format!("{}:/usr/bin:/bin", dir.path().display());
    let run = |fake: Option<String>| {
        let mut cmd = Command::new(bin());
        cmd.args([
            "exec",
            "pg",
            "--gateway",
            &gw.url,
            "--",
            "select 'via gcloud' as s",
        ])
        .env_remove("CUSTODY_TOKEN")
        .env("GCE_METADATA_HOST", format!("127.0.0.1:{}", free_port()))
        .env("PATH", &path);
        match fake {
            Some(t) => cmd.env("FAKE_TOKEN", t),
            None => cmd.env_remove("FAKE_TOKEN"),
        };
        cmd.output().unwrap()
    };
    let out = run(Some(token("alice@example.com")));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("via gcloud"));

    let out = run(None);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for attempt in [
        "metadata server: 127.0.0.1:",
        "gcloud auth print-identity-token --audiences=",
        "Requires valid service account",
        "gcloud auth print-identity-token: ERROR",
        "active account selected",
    ] {
        assert!(err.contains(attempt), "{attempt:?} in {err}");
    }
}
