//! MCP's tools. `query` and `run_command` are `POST /v1/exec` under
//! another name: the same admission, decision, masking and recording
//! (`exec::run`), in a session whose mode is "mcp" and whose first event
//! names the tool and the agent. Refusals and holds are tool results marked
//! as errors, so the agent can read and relay them; protocol errors are
//! kept for calls that name no tool.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ConnectInfo;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::{json, Value};
use tracing::Instrument;

use super::clip;
use crate::config::Kind;
use crate::identity::delegation::Chain;
use crate::identity::Principal;
use crate::ingress::admit::{self, Request};
use crate::ingress::exec::{self, Answer};
use crate::ingress::gateway::Gateway;
use crate::ingress::{new_audit_id, reviews, ApiError};
use crate::policy;
use crate::recording::EventBody;
use crate::telemetry;

#[derive(Clone)]
pub struct Tools {
    gw: Arc<Gateway>,
}

impl Tools {
    pub fn new(gw: Arc<Gateway>) -> Tools {
        Tools { gw }
    }
}

fn schema(v: Value) -> Arc<JsonObject> {
    match v {
        Value::Object(m) => Arc::new(m),
        _ => Arc::new(JsonObject::new()),
    }
}

fn string(description: &str) -> Value {
    json!({"type": "string", "description": description})
}

const REVIEW_ARG: &str = "An approved review's id (from a held call's result): runs the same statement under that approval, once.";

/// The tools, as `tools/list` gives them and the README documents them.
pub fn list() -> Vec<Tool> {
    vec![
        Tool::new(
            "list_connections",
            "The connections you may use through Custody: name, kind (postgres or ssh) and database.",
            schema(json!({"type": "object", "properties": {}, "additionalProperties": false})),
        ),
        Tool::new(
            "query",
            "Run one SQL statement on a postgres connection through Custody: guardrails may refuse it or hold it for a human's approval; results are masked and the call is recorded under your identity and delegation chain.",
            schema(json!({
                "type": "object",
                "properties": {
                    "connection": string("A postgres connection's name (see list_connections)."),
                    "sql": string("One SQL statement."),
                    "review_id": string(REVIEW_ARG),
                },
                "required": ["connection", "sql"],
                "additionalProperties": false,
            })),
        ),
        Tool::new(
            "run_command",
            "Run one shell command on an ssh connection through Custody: stdout, stderr and exit status; guarded, masked and recorded like query.",
            schema(json!({
                "type": "object",
                "properties": {
                    "connection": string("An ssh connection's name (see list_connections)."),
                    "command": string("The command line, run by the remote user's shell."),
                    "review_id": string(REVIEW_ARG),
                },
                "required": ["connection", "command"],
                "additionalProperties": false,
            })),
        ),
        Tool::new(
            "review_status",
            "The state of a review that holds one of your statements: pending, approved, denied, expired or used.",
            schema(json!({
                "type": "object",
                "properties": {"review_id": string("The review's id, from the held call's result.")},
                "required": ["review_id"],
                "additionalProperties": false,
            })),
        ),
    ]
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryArgs {
    connection: String,
    sql: String,
    review_id: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandArgs {
    connection: String,
    command: String,
    review_id: Option<String>,
}

/// What `query` and `run_command` both come to.
struct RunArgs {
    connection: String,
    input: String,
    review_id: Option<String>,
}

fn run_args(kind: Kind, args: JsonObject, audit_id: &str) -> Result<RunArgs, ApiError> {
    Ok(match kind {
        Kind::Postgres => {
            let a: QueryArgs = parse(args, audit_id)?;
            RunArgs {
                connection: a.connection,
                input: a.sql,
                review_id: a.review_id,
            }
        }
        Kind::Ssh => {
            let a: CommandArgs = parse(args, audit_id)?;
            RunArgs {
                connection: a.connection,
                input: a.command,
                review_id: a.review_id,
            }
        }
    })
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReviewArgs {
    review_id: String,
}

/// The agent as it named itself, for the recording.
struct Agent {
    client: Option<Implementation>,
    protocol: Option<String>,
}

impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("custody", env!("CARGO_PKG_VERSION")))
            .with_instructions("Custody runs SQL and shell commands on your behalf, as you, under guardrails, approvals, masking and recording. Call list_connections first. A call held for approval returns a review id: give a human the approve command it names, then call again with review_id.")
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(list()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let Some(parts) = context.extensions.get::<Parts>() else {
            return Err(McpError::internal_error("no HTTP request", None));
        };
        let agent = Agent {
            client: context.client_info(),
            protocol: context.protocol_version().map(|v| v.to_string()),
        };
        let headers = with_trace(&parts.headers, &context);
        let peer = match parts.extensions.get::<ConnectInfo<SocketAddr>>() {
            Some(ConnectInfo(p)) => *p,
            None => return Err(McpError::internal_error("no peer address", None)),
        };
        let args = request.arguments.unwrap_or_default();
        let tool = request.name.as_ref();
        let call = Call {
            gw: &self.gw,
            headers: &headers,
            peer,
            agent: &agent,
        };
        let result = match tool {
            "list_connections" => call.list_connections().await,
            "query" => call.run(tool, Kind::Postgres, args).await,
            "run_command" => call.run(tool, Kind::Ssh, args).await,
            "review_status" => call.review_status(args).await,
            _ => {
                let msg = format!("no tool named {tool:?}; tools/list names Custody's tools");
                return Err(McpError::invalid_params(msg, None));
            }
        };
        Ok(result.unwrap_or_else(failed).into())
    }
}

/// The call's trace context: a `traceparent` in the request's `_meta`
/// (SEP-414) when the HTTP request carries none, so the tool's spans join
/// the agent's trace either way.
fn with_trace(headers: &HeaderMap, context: &RequestContext<RoleServer>) -> HeaderMap {
    let mut headers = headers.clone();
    if !headers.contains_key("traceparent") {
        let meta = context.meta.get("traceparent").and_then(Value::as_str);
        if let Some(v) = meta.and_then(|t| HeaderValue::from_str(t).ok()) {
            headers.insert("traceparent", v);
        }
    }
    headers
}

struct Call<'a> {
    gw: &'a Gateway,
    headers: &'a HeaderMap,
    peer: SocketAddr,
    agent: &'a Agent,
}

impl Call<'_> {
    /// The caller, with its chain verified and checked against revocations.
    async fn identify(&self, audit_id: &str) -> Result<(Principal, Chain), ApiError> {
        let span = tracing::Span::current();
        let req = Request {
            headers: self.headers,
            peer: self.peer,
            connection: "-",
            mode: "mcp",
            audit_id,
            span: &span,
        };
        admit::identify(self.gw, &req).await
    }

    async fn list_connections(&self) -> Result<CallToolResult, ApiError> {
        let audit_id = new_audit_id();
        let (who, chain) = self.identify(&audit_id).await?;
        let now = chrono::Utc::now().timestamp();
        let list: Vec<Value> = self
            .gw
            .connections
            .iter()
            .filter(|c| c.mcp && policy::authorize(&who, &chain, c, now).is_ok())
            .map(|c| json!({"name": c.name(), "kind": c.kind, "database": c.database}))
            .collect();
        let text = match list.is_empty() {
            true => "no connections are offered to you over MCP".to_string(),
            false => list
                .iter()
                .map(|c| {
                    format!(
                        "{} ({})",
                        c["name"].as_str().unwrap_or(""),
                        c["kind"].as_str().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"),
        };
        let body = json!({"principal": who.member(), "connections": list});
        Ok(ok(body, text))
    }

    async fn review_status(&self, args: JsonObject) -> Result<CallToolResult, ApiError> {
        let audit_id = new_audit_id();
        let (who, _) = self.identify(&audit_id).await?;
        let args: ReviewArgs = parse(args, &audit_id)?;
        let r = self.gw.approvals.load(&args.review_id).await?;
        if !reviews::reviewable_by(&r, &who) {
            let e = crate::policy::review::ReviewError::NotFound(args.review_id);
            return Err(ApiError::from(e).at(&audit_id));
        }
        let text = format!("review {} is {}", r.request.id, r.state);
        let body = json!({"review_id": r.request.id, "state": r.state, "review": r});
        Ok(ok(body, text))
    }

    /// `query` or `run_command`: one admitted, recorded session of mode "mcp".
    async fn run(
        &self,
        tool: &str,
        kind: Kind,
        args: JsonObject,
    ) -> Result<CallToolResult, ApiError> {
        let audit_id = new_audit_id();
        // Named before the arguments are checked, so that a bad call is
        // recorded against the connection it meant.
        let named = match args.get("connection") {
            Some(Value::String(c)) => clip(c),
            _ => String::new(),
        };
        let name = named.as_str();
        let span = telemetry::session_span(self.headers, &audit_id, name, "mcp", Some(kind));
        span.record("custody.mcp.tool", tool);
        let req = Request {
            headers: self.headers,
            peer: self.peer,
            connection: name,
            mode: "mcp",
            audit_id: &audit_id,
            span: &span,
        };
        let done = async {
            let who = admit::identify(self.gw, &req).await?;
            let args = match run_args(kind, args, &audit_id) {
                Ok(a) => a,
                Err(e) => {
                    admit::record_bad_request(self.gw, &req, &who.0, &e.reason).await;
                    return Err(e);
                }
            };
            offered(self.gw, &args.connection, kind, tool, &audit_id)?;
            let session = admit::session(self.gw, &req, who).await?;
            let client = self.agent.client.as_ref();
            let event = EventBody::Mcp {
                tool: tool.to_string(),
                client: client.map(|c| clip(&c.name)),
                client_version: client.map(|c| clip(&c.version)),
                protocol_version: self.agent.protocol.clone(),
            };
            if let Err(e) = session.tap().record(event).await {
                admit::end_unrun(session, "recording failed").await;
                return Err(ApiError::from(e));
            }
            exec::run(self.gw, session, args.input, args.review_id.as_deref()).await
        };
        match done.instrument(span.clone()).await {
            Ok(answer) => Ok(answered(answer)),
            Err(e) => {
                let e = e.at(&audit_id);
                span.record("custody.outcome", e.error);
                span.record("otel.status_code", "ERROR");
                Err(e)
            }
        }
    }
}

/// Hidden (`mcp = false`), unknown, or of the other kind: refused before
/// any session, with the tool to use instead.
fn offered(
    gw: &Gateway,
    name: &str,
    kind: Kind,
    tool: &str,
    audit_id: &str,
) -> Result<(), ApiError> {
    use axum::http::StatusCode;
    let conn = gw.connection(name).filter(|c| c.mcp);
    let Some(conn) = conn else {
        let reason = format!(
            "no connection named {name:?} is offered over MCP; list_connections lists yours"
        );
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_connection",
            reason,
            audit_id,
        ));
    };
    if conn.kind != kind {
        let other = match conn.kind {
            Kind::Postgres => "query",
            Kind::Ssh => "run_command",
        };
        let reason = format!(
            "{name:?} is a {:?} connection: use the {other} tool, not {tool}",
            conn.kind
        )
        .to_lowercase();
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            reason,
            audit_id,
        ));
    }
    Ok(())
}

fn parse<T: serde::de::DeserializeOwned>(args: JsonObject, audit_id: &str) -> Result<T, ApiError> {
    serde_json::from_value(Value::Object(args)).map_err(|e| {
        let reason = format!("bad arguments: {e} (tools/list gives each tool's schema)");
        ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "bad_request",
            reason,
            audit_id,
        )
    })
}

fn ok(body: Value, text: String) -> CallToolResult {
    let mut r = CallToolResult::structured(body);
    r.content = vec![ContentBlock::text(text)];
    r
}

/// A refusal, a failure or a bad call: an error result the agent can read,
/// with the same JSON `/v1/exec` answers.
fn failed(e: ApiError) -> CallToolResult {
    let text = format!("{}: {} (audit id {})", e.error, e.reason, e.audit_id);
    let mut body = json!({"error": e.error, "reason": e.reason, "audit_id": e.audit_id});
    if let (Some(b), Some(extra)) = (body.as_object_mut(), e.extra.as_object()) {
        b.extend(extra.clone());
    }
    let mut r = CallToolResult::structured_error(body);
    r.content = vec![ContentBlock::text(text)];
    r
}

/// The most rows the text rendering shows; the structured result has all.
const TEXT_ROWS: usize = 50;

fn answered(answer: Answer) -> CallToolResult {
    match answer {
        Answer::Rows {
            audit_id,
            result: r,
        } => {
            let mut text = r.columns.join("\t");
            for row in r.rows.iter().take(TEXT_ROWS) {
                let cells: Vec<&str> = row.iter().map(|c| c.as_deref().unwrap_or("NULL")).collect();
                text.push('\n');
                text.push_str(&cells.join("\t"));
            }
            if r.rows.len() > TEXT_ROWS {
                text.push_str(&format!(
                    "\n… {} more rows in the structured result",
                    r.rows.len() - TEXT_ROWS
                ));
            }
            text.push_str(&format!("\n({}; audit id {audit_id})", r.command_tag));
            let body = json!({"audit_id": audit_id, "columns": r.columns, "rows": r.rows, "command_tag": r.command_tag, "truncated": r.truncated});
            ok(body, text)
        }
        Answer::Output {
            audit_id,
            result: r,
        } => {
            let status = match (&r.exit_status, &r.signal) {
                (Some(s), _) => format!("exit status {s}"),
                (None, Some(sig)) => format!("killed by signal {sig}"),
                (None, None) => "no exit status".to_string(),
            };
            let text = format!("{}{}\n({status}; audit id {audit_id})", r.stdout, r.stderr);
            let body = json!({"audit_id": audit_id, "stdout": r.stdout, "stderr": r.stderr, "exit_status": r.exit_status, "signal": r.signal, "truncated": r.truncated});
            ok(body, text)
        }
        Answer::Held(body) => {
            let text = format!(
                "held for approval: {}. Ask an approver to run `{}`, then call this tool again with review_id {:?}.",
                body["reason"].as_str().unwrap_or(""),
                body["approve"].as_str().unwrap_or(""),
                body["review_id"].as_str().unwrap_or("")
            );
            let mut r = CallToolResult::structured_error(body);
            r.content = vec![ContentBlock::text(text)];
            r
        }
    }
}
