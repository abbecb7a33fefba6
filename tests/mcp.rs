//! MCP end to end: the official MCP Python SDK (`mcp` from PyPI, installed
//! by scripts/test.sh) as the agent, over Streamable HTTP with a bearer
//! token from the test issuer, against the real gateway with PostgreSQL,
//! sshd, masking, guardrails, approvals and delegation; and through
//! `custody mcp` on stdio.

mod support;

use std::process::Command;

use serde_json::{json, Value};
use support::sshd::sshd;
use support::*;

const CI: &str = "ci@p.iam.gserviceaccount.com";
const AGENT: &str = "tests/mcp/agent.py";

fn gateway() -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("recordings");
    let hash_key = dir.path().join("hash.key");
    std::fs::write(&hash_key, "0123456789abcdef0123456789abcdef").unwrap();
    let key = signing_key().display().to_string();
    let extra = format!(
        r#"
[connections.masking]
detectors = ["email"]
columns = {{ "*.ssn" = "redact" }}
hash_key = "file:{hash}"

[connections.guardrails]
deny = ["drop"]
require_approval = ["delete"]
approvers = ["group:dba@example.com"]

{ci}{hidden}{ssh}"#,
        hash = hash_key.display(),
        ci = pg_connection(
            "pg-ci",
            &format!("\"serviceAccount:{CI}\""),
            "[connections.delegation]\noriginators = [\"user:alice@example.com\"]",
        ),
        hidden = pg_connection("pg-hidden", "\"user:alice@example.com\"", "mcp = false"),
        ssh = sshd().connection("box", ""),
    );
    let text = config(&store, &extra).replace(
        "[identity]\n",
        &format!("[identity]\nsigning_key = \"file:{key}\"\nadmins = [\"user:sec@example.com\"]\n"),
    );
    Gateway::start_with(dir, &text, store)
}

/// Runs the agent; `env` adds MCP_TOKEN / MCP_DELEGATION: (ok, JSON, stderr).
fn agent(env: &[(&str, &str)], args: &[&str]) -> (bool, Value, String) {
    let out = Command::new("python3")
        .arg(AGENT)
        .args(args)
        .envs(env.iter().copied())
        .env("CUSTODY_BIN", bin())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let v = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (out.status.success(), v, stderr)
}

fn call(gw: &Gateway, token: &str, tool: &str, args: Value) -> Value {
    let url = format!("{}/mcp", gw.url);
    let (ok, v, err) = agent(
        &[("MCP_TOKEN", token)],
        &["http", &url, "call", tool, &args.to_string()],
    );
    assert!(ok, "agent failed: {err}");
    v
}

fn audit_of(v: &Value) -> String {
    v["structured"]["audit_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no audit id in {v}"))
        .to_string()
}

#[test]
fn an_agent_lists_tools_and_connections_and_queries_masked() {
    let gw = gateway();
    let alice = token("alice@example.com");
    let url = format!("{}/mcp", gw.url);
    let (ok, v, err) = agent(&[("MCP_TOKEN", &alice)], &["http", &url, "tools"]);
    assert!(ok, "{err}");
    let names: Vec<&str> = v["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["list_connections", "query", "run_command", "review_status"]
    );

    let v = call(&gw, &alice, "list_connections", json!({}));
    assert_eq!(v["is_error"], false, "{v}");
    let conns: Vec<&str> = v["structured"]["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(conns, ["pg", "box"], "mcp = false hides pg-hidden: {v}");

    let sql = "select 'ann@example.com' as email, '123-45-6789' as ssn, 42 as n";
    let v = call(
        &gw,
        &alice,
        "query",
        json!({"connection": "pg", "sql": sql}),
    );
    assert_eq!(v["is_error"], false, "{v}");
    let row = &v["structured"]["rows"][0];
    assert_eq!(v["structured"]["columns"], json!(["email", "ssn", "n"]));
    assert_eq!(row[2], "42");
    assert!(!v.to_string().contains("ann@example.com"), "{v}");
    assert!(!v.to_string().contains("123-45-6789"), "{v}");
    assert!(v["text"].as_str().unwrap().contains("SELECT 1"), "{v}");
    let audit = audit_of(&v);
    let rec = gw.recording(&audit);
    assert!(rec.contains("\"mode\":\"mcp\""), "{rec}");
    assert!(
        rec.contains(
            "\"type\":\"mcp\",\"tool\":\"query\",\"client\":\"custody-test-agent\",\"client_version\":\"1.2.3\""
        ),
        "{rec}"
    );
    assert!(!rec.contains("ann@example.com"), "{rec}");
    let store = format!("file://{}", gw.store.display());
    let out = Command::new(bin())
        .args(["sessions", "--store", &store, "--format", "json"])
        .output()
        .unwrap();
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mine = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["audit_id"] == audit.as_str());
    assert_eq!(
        mine.map(|s| s["mode"].clone()),
        Some(json!("mcp")),
        "{list}"
    );
    let out = Command::new(bin())
        .args(["replay", &audit, "--store", &store])
        .output()
        .unwrap();
    let replay = String::from_utf8_lossy(&out.stdout);
    assert!(
        replay.contains("mcp tool query called by custody-test-agent 1.2.3"),
        "{replay}"
    );

    // The hidden connection is refused by name, before any session.
    let v = call(
        &gw,
        &alice,
        "query",
        json!({"connection": "pg-hidden", "sql": "select 1"}),
    );
    assert_eq!(v["is_error"], true, "{v}");
    assert!(
        v["text"].as_str().unwrap().contains("is offered over MCP"),
        "{v}"
    );
}

#[test]
fn refusals_and_holds_are_tool_results_and_an_approved_hold_runs() {
    let gw = gateway();
    let alice = token("alice@example.com");
    let bob = token_with("bob@example.com", &["dba@example.com"]);
    let v = call(
        &gw,
        &alice,
        "query",
        json!({"connection": "pg", "sql": "drop table if exists nothing_here"}),
    );
    assert_eq!(v["is_error"], true, "{v}");
    assert_eq!(v["structured"]["error"], "guardrail", "{v}");
    let refused = audit_of(&v);
    let rec = gw.recording(&refused);
    assert!(rec.contains("\"outcome\":\"denied\""), "{rec}");
    // Bad arguments: a clear error result, and a record of the call.
    let v = call(
        &gw,
        &alice,
        "query",
        json!({"connection": "pg", "sql": "select 1", "timeout": 5}),
    );
    assert_eq!(v["is_error"], true, "{v}");
    assert_eq!(v["structured"]["error"], "bad_request", "{v}");
    assert!(v["text"].as_str().unwrap().contains("timeout"), "{v}");
    let rec = gw.recording(&audit_of(&v));
    assert!(
        rec.contains("bad arguments") && rec.contains("\"mode\":\"refused\""),
        "{rec}"
    );
    assert!(
        rec.contains("alice@example.com") && rec.contains("\"connection\":\"pg\""),
        "{rec}"
    );

    call(
        &gw,
        &alice,
        "query",
        json!({"connection": "pg", "sql": "create table if not exists mcp_held (id int); insert into mcp_held values (1), (2)"}),
    );
    let sql = "delete from mcp_held where id = 1";
    let v = call(
        &gw,
        &alice,
        "query",
        json!({"connection": "pg", "sql": sql}),
    );
    assert_eq!(v["is_error"], true, "{v}");
    let id = v["structured"]["review_id"].as_str().unwrap().to_string();
    assert!(
        v["text"]
            .as_str()
            .unwrap()
            .contains(&format!("custody review approve {id}")),
        "{v}"
    );
    let v = call(&gw, &alice, "review_status", json!({"review_id": id}));
    assert_eq!(v["structured"]["state"], "pending", "{v}");
    // Someone else learns nothing of it.
    let carol = token_with("carol@example.com", &["sre@example.com"]);
    let v = call(&gw, &carol, "review_status", json!({"review_id": id}));
    assert_eq!(v["is_error"], true, "{v}");

    let (code, _, err) = custody_cli(
        &gw.url,
        &bob,
        &["review", "approve", &id, "--reason", "ticket 7"],
    );
    assert_eq!(code, 0, "{err}");
    let v = call(&gw, &alice, "review_status", json!({"review_id": id}));
    assert_eq!(v["structured"]["state"], "approved", "{v}");
    let v = call(
        &gw,
        &alice,
        "query",
        json!({"connection": "pg", "sql": sql, "review_id": id}),
    );
    assert_eq!(v["is_error"], false, "{v}");
    assert_eq!(v["structured"]["command_tag"], "DELETE 1", "{v}");
    let v = call(
        &gw,
        &alice,
        "query",
        json!({"connection": "pg", "sql": "select count(*) from mcp_held"}),
    );
    assert_eq!(v["structured"]["rows"][0][0], "1", "{v}");
    // Used once: a second run under the same review is refused.
    let v = call(
        &gw,
        &alice,
        "query",
        json!({"connection": "pg", "sql": sql, "review_id": id}),
    );
    assert_eq!(v["is_error"], true, "{v}");
}

#[test]
fn run_command_runs_on_the_ssh_connection() {
    let gw = gateway();
    let alice = token("alice@example.com");
    let v = call(
        &gw,
        &alice,
        "run_command",
        json!({"connection": "box", "command": "echo hello; echo oops >&2; exit 3"}),
    );
    assert_eq!(v["is_error"], false, "{v}");
    assert_eq!(v["structured"]["stdout"], "hello\n", "{v}");
    assert_eq!(v["structured"]["stderr"], "oops\n", "{v}");
    assert_eq!(v["structured"]["exit_status"], 3, "{v}");
    let rec = gw.recording(&audit_of(&v));
    assert!(rec.contains("\"tool\":\"run_command\""), "{rec}");
    // A tool of the wrong kind names the right one.
    let v = call(
        &gw,
        &alice,
        "query",
        json!({"connection": "box", "sql": "select 1"}),
    );
    assert_eq!(v["is_error"], true, "{v}");
    assert!(v["text"].as_str().unwrap().contains("run_command"), "{v}");
}

#[test]
fn a_delegated_agent_is_recorded_with_the_whole_chain() {
    let gw = gateway();
    let alice = token("alice@example.com");
    let ci = token(CI);
    let (code, delegation, err) = custody_cli(
        &gw.url,
        &alice,
        &[
            "delegate",
            "--to",
            &format!("serviceAccount:{CI}"),
            "--connections",
            "pg-ci",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let url = format!("{}/mcp", gw.url);
    let args = json!({"connection": "pg-ci", "sql": "select current_user"}).to_string();
    let (ok, v, err) = agent(
        &[("MCP_TOKEN", &ci), ("MCP_DELEGATION", delegation.trim())],
        &["http", &url, "call", "query", &args],
    );
    assert!(ok, "{err}");
    assert_eq!(v["is_error"], false, "{v}");
    let rec = gw.recording(&audit_of(&v));
    assert!(
        rec.contains(&format!(
            "\"chain\":[\"user:alice@example.com\",\"serviceAccount:{CI}\"]"
        )),
        "{rec}"
    );
    // It is shown only what the delegation covers.
    let (ok, v, err) = agent(
        &[("MCP_TOKEN", &ci), ("MCP_DELEGATION", delegation.trim())],
        &["http", &url, "call", "list_connections", "{}"],
    );
    assert!(ok, "{err}");
    assert_eq!(v["structured"]["connections"][0]["name"], "pg-ci", "{v}");
    assert_eq!(
        v["structured"]["connections"].as_array().map(Vec::len),
        Some(1),
        "{v}"
    );
    // Without the delegation the service account is no originator.
    let v = call(
        &gw,
        &ci,
        "query",
        json!({"connection": "pg-ci", "sql": "select 1"}),
    );
    assert_eq!(v["is_error"], true, "{v}");
    assert_eq!(v["structured"]["error"], "forbidden", "{v}");
}

#[test]
fn missing_and_bad_tokens_get_401_with_a_challenge() {
    let gw = gateway();
    let url = format!("{}/mcp", gw.url);
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}"#;
    for auth in ["", "Bearer not-a-token"] {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-s",
            "-i",
            "-X",
            "POST",
            &url,
            "-H",
            "content-type: application/json",
        ])
        .args([
            "-H",
            "accept: application/json, text/event-stream",
            "-d",
            body,
        ]);
        if !auth.is_empty() {
            cmd.args(["-H", &format!("authorization: {auth}")]);
        }
        let out = String::from_utf8_lossy(&cmd.output().unwrap().stdout).into_owned();
        assert!(out.starts_with("HTTP/1.1 401"), "{out}");
        assert!(
            out.to_lowercase()
                .contains("www-authenticate: bearer realm=\"custody\""),
            "{out}"
        );
    }
    // The SDK sees the refusal too. Under load the SDK (mcp 2.3.0) can tear
    // down its other request first and report only that one's ReadError,
    // so it gets three tries to show the reason; every try is refused.
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (ok, v, _) = agent(&[], &["http", &url, "tools"]);
        assert!(!ok, "an agent without a token is refused: {v}");
        let why = v["error"].as_str().unwrap_or_default().to_string();
        if why.contains("unauthenticated: ") {
            break;
        }
        seen.push(why);
    }
    assert!(seen.len() < 3, "the agent is never told why: {seen:?}");
}

#[test]
fn a_legacy_client_names_itself_in_initialize() {
    let gw = gateway();
    let alice = token("alice@example.com");
    let url = format!("{}/mcp", gw.url);
    let args = json!({"connection": "pg", "sql": "select 1 as one"}).to_string();
    let (ok, v, err) = agent(
        &[("MCP_TOKEN", &alice)],
        &[
            "http",
            &url,
            "--mode",
            "legacy",
            "--name",
            "old-agent",
            "call",
            "query",
            &args,
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(v["structured"]["rows"][0][0], "1", "{v}");
    let rec = gw.recording(&audit_of(&v));
    assert!(rec.contains("\"client\":\"old-agent\""), "{rec}");
    assert!(rec.contains("\"protocol_version\":\"2025-11-25\""), "{rec}");
}

#[test]
fn custody_mcp_serves_the_tools_on_stdio() {
    let gw = gateway();
    let alice = token("alice@example.com");
    let stdio = format!("{} mcp pg", bin());
    let env = [
        ("CUSTODY_GATEWAY", gw.url.as_str()),
        ("CUSTODY_TOKEN", alice.as_str()),
    ];
    let (ok, v, err) = agent(&env, &["stdio", &stdio, "call", "list_connections", "{}"]);
    assert!(ok, "{err}");
    let names: Vec<&str> = v["structured"]["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["pg"], "only the connection named: {v}");

    let args = json!({"connection": "pg", "sql": "select 'bo@example.com' as email"}).to_string();
    let (ok, v, err) = agent(
        &env,
        &[
            "stdio",
            &stdio,
            "--name",
            "stdio-agent",
            "call",
            "query",
            &args,
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(v["is_error"], false, "{v}");
    assert!(!v.to_string().contains("bo@example.com"), "masked: {v}");
    let rec = gw.recording(&audit_of(&v));
    assert!(rec.contains("\"mode\":\"mcp\""), "{rec}");
    assert!(
        rec.contains("\"client\":\"stdio-agent\""),
        "the agent, not the proxy: {rec}"
    );

    let args = json!({"connection": "box", "command": "id"}).to_string();
    let (ok, v, err) = agent(&env, &["stdio", &stdio, "call", "run_command", &args]);
    assert!(ok, "{err}");
    assert_eq!(v["is_error"], true, "{v}");
    assert!(
        v["text"].as_str().unwrap().contains("serves only pg"),
        "{v}"
    );
}

/// A raw JSON-RPC POST (or GET/DELETE) to /mcp: (status line and headers, body).
fn raw(
    gw: &Gateway,
    method: &str,
    token: &str,
    session: Option<&str>,
    body: &str,
) -> (String, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-i", "-X", method, &format!("{}/mcp", gw.url)])
        .args(["-H", "content-type: application/json"])
        .args(["-H", "accept: application/json, text/event-stream"])
        .args(["-H", "mcp-protocol-version: 2025-11-25"])
        .args(["-H", &format!("authorization: Bearer {token}")])
        .args(["--max-time", "5"]);
    if let Some(s) = session {
        cmd.args(["-H", &format!("mcp-session-id: {s}")]);
    }
    if !body.is_empty() {
        cmd.args(["-d", body]);
    }
    let out = String::from_utf8_lossy(&cmd.output().unwrap().stdout).into_owned();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (head.to_string(), body.to_string())
}

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{"experimental":{"big":{"pad":"xxxxxxxx"}}},"clientInfo":{"name":"raw-agent","version":"9"}}}"#;

#[test]
fn a_legacy_session_serves_only_the_principal_that_opened_it() {
    let gw = gateway();
    let alice = token("alice@example.com");
    let mallory = token("mallory@example.com");
    let (head, body) = raw(&gw, "POST", &alice, None, INITIALIZE);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{body}");
    let sid = head
        .lines()
        .find_map(|l| {
            l.to_lowercase()
                .strip_prefix("mcp-session-id: ")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no session id: {head}"));
    let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{}}"#;
    let (head, body) = raw(&gw, "POST", &alice, Some(&sid), list);
    assert!(
        head.starts_with("HTTP/1.1 200") && body.contains("list_connections"),
        "{head}\n{body}"
    );
    // Mallory holds a valid token and the id: it is not hers.
    for method in ["POST", "GET", "DELETE"] {
        let body_in = if method == "POST" { list } else { "" };
        let (head, body) = raw(&gw, method, &mallory, Some(&sid), body_in);
        assert!(head.starts_with("HTTP/1.1 404"), "{method}: {head}\n{body}");
        assert!(body.contains("no such MCP session"), "{body}");
    }
    let (head, _) = raw(&gw, "POST", &alice, Some(&sid), list);
    assert!(head.starts_with("HTTP/1.1 200"), "still alice's: {head}");
    // What the store keeps of the handshake: no free-form capabilities.
    let state =
        std::fs::read_to_string(gw.store.join(format!("_mcp/sessions/{sid}.json"))).unwrap();
    assert!(
        state.contains("raw-agent") && !state.contains("xxxxxxxx"),
        "{state}"
    );
    // Unknown ids write nothing.
    let stranger = "0192e7a0-0000-7000-8000-000000000000";
    let (head, _) = raw(&gw, "DELETE", &mallory, Some(stranger), "");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert!(!gw
        .store
        .join(format!("_mcp/sessions/{stranger}.closed"))
        .exists());
}

#[test]
fn a_revoked_principal_is_refused_on_every_request() {
    let gw = gateway();
    let sec = token("sec@example.com");
    let (code, _, err) = custody_cli(
        &gw.url,
        &sec,
        &[
            "revoke",
            "--principal",
            "user:carol@example.com",
            "--reason",
            "left",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let carol = token_with("carol@example.com", &["sre@example.com"]);
    let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{}}"#;
    let (head, body) = raw(&gw, "POST", &carol, None, list);
    assert!(head.starts_with("HTTP/1.1 403"), "{head}\n{body}");
    assert!(body.contains("is revoked"), "{body}");
}

fn session_id(head: &str) -> Option<String> {
    head.lines().find_map(|l| {
        l.to_lowercase()
            .strip_prefix("mcp-session-id: ")
            .map(|v| v.trim().to_string())
    })
}

#[test]
fn a_principal_holds_a_bounded_number_of_legacy_sessions() {
    let gw = gateway();
    let alice = token("alice@example.com");
    let mut open = Vec::new();
    for _ in 0..16 {
        let (head, body) = raw(&gw, "POST", &alice, None, INITIALIZE);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{body}");
        open.push(session_id(&head).expect("a session id"));
    }
    // The 17th is refused with what to do, and no session is handed out.
    let (head, body) = raw(&gw, "POST", &alice, None, INITIALIZE);
    assert!(head.starts_with("HTTP/1.1 429"), "{head}\n{body}");
    assert!(session_id(&head).is_none(), "{head}");
    assert!(
        body.contains("too_many_sessions") && body.contains("DELETE /mcp"),
        "{body}"
    );
    // Those open still serve; another principal is not affected.
    let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{}}"#;
    let (head, _) = raw(&gw, "POST", &alice, Some(&open[0]), list);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let bob = token("bob@example.com");
    let (head, _) = raw(&gw, "POST", &bob, None, INITIALIZE);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Ending one frees its seat.
    let (head, _) = raw(&gw, "DELETE", &alice, Some(&open[1]), "");
    assert!(head.starts_with("HTTP/1.1 2"), "{head}");
    let (head, body) = raw(&gw, "POST", &alice, None, INITIALIZE);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{body}");
}
