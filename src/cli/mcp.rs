//! `custody mcp [CONNECTION…]`: an MCP server on stdio for agents that only
//! speak stdio, forwarding each tool call to the gateway's `/mcp` with the
//! CLI's token discovery. The gateway decides, masks and records; this side
//! only narrows which connections the agent is shown, and passes the
//! agent's own name on, so the recording names it rather than this proxy.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ErrorCode, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler, ServiceExt};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use super::args::McpArgs;
use super::client::{ClientError, Target};
use super::CliError;
use crate::wire::DELEGATION_HEADER;

/// The revision the gateway is spoken to in: stateless, each request
/// carrying who the agent is in `_meta`.
const PROTOCOL: &str = "2026-07-28";
/// The most an answer from the gateway may hold before it is refused.
const MAX_ANSWER: usize = 64 * 1024 * 1024;

pub async fn run(args: McpArgs) -> Result<ExitCode, CliError> {
    let explicit = args.gw.token.is_some();
    let target = Target::resolve(args.gw.gateway.clone(), args.gw.token.clone()).await?;
    let proxy = Proxy {
        target: Mutex::new(target),
        refresh: (!explicit).then_some(args.gw.gateway),
        only: args.connections,
        http: reqwest::Client::new(),
        next_id: AtomicU64::new(1),
    };
    let service = proxy
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| ClientError::Usage(format!("MCP on stdio: {e}")))?;
    service
        .waiting()
        .await
        .map_err(|e| ClientError::Usage(format!("MCP on stdio: {e}")))?;
    Ok(ExitCode::SUCCESS)
}

struct Proxy {
    target: Mutex<Target>,
    /// Where to discover a fresh token when the gateway refuses an expired
    /// one; None when the token was given (`--token`, CUSTODY_TOKEN).
    refresh: Option<Option<String>>,
    only: Vec<String>,
    http: reqwest::Client,
    next_id: AtomicU64,
}

fn failure(message: String) -> McpError {
    McpError::new(ErrorCode::INTERNAL_ERROR, message, None)
}

impl Proxy {
    /// One JSON-RPC request to the gateway; the token is rediscovered once
    /// if it was refused (ID tokens last an hour, agents longer).
    async fn forward(
        &self,
        method: &str,
        name: Option<&str>,
        params: Value,
    ) -> Result<Value, McpError> {
        match self.send(method, name, &params).await {
            Err(Refused401(why)) => {
                let Some(gateway) = &self.refresh else {
                    return Err(failure(why));
                };
                let fresh = Target::resolve(gateway.clone(), None)
                    .await
                    .map_err(|e| failure(format!("{why}; a new token: {e}")))?;
                *self.target.lock().await = fresh;
                self.send(method, name, &params)
                    .await
                    .map_err(|Refused401(why)| failure(why))?
            }
            Ok(answer) => answer,
        }
    }

    async fn send(
        &self,
        method: &str,
        name: Option<&str>,
        params: &Value,
    ) -> Result<Result<Value, McpError>, Refused401> {
        let target = self.target.lock().await.clone();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let url = format!("{}/mcp", target.gateway);
        let mut req = self
            .http
            .post(&url)
            .bearer_auth(&target.token)
            // Cloud Run's IAM check reads this one (docs/deploy.md).
            .header(
                "x-serverless-authorization",
                format!("Bearer {}", target.token),
            )
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", PROTOCOL)
            .header("mcp-method", method)
            .json(&body);
        if let Some(n) = name {
            req = req.header("mcp-name", n);
        }
        if let Some(d) = &target.delegation {
            req = req.header(DELEGATION_HEADER, d.trim());
        }
        if let Some(tp) = &target.traceparent {
            req = req.header("traceparent", tp);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                return Ok(Err(failure(format!(
                    "cannot reach the gateway at {url}: {e}"
                ))))
            }
        };
        let status = resp.status().as_u16();
        let event_stream = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("text/event-stream"));
        let text = match read_bounded(resp).await {
            Ok(t) => t,
            Err(why) => return Ok(Err(failure(why))),
        };
        let msg = match event_stream {
            true => answer_in_stream(&text, id),
            false => serde_json::from_str(&text).ok(),
        };
        let Some(msg) = msg else {
            let why = format!("the gateway answered HTTP {status} without a JSON-RPC answer");
            return Ok(Err(failure(why)));
        };
        if let Some(err) = msg.get("error") {
            let message = err["message"].as_str().unwrap_or("error").to_string();
            if status == 401 {
                return Err(Refused401(message));
            }
            let code = err["code"].as_i64().unwrap_or(-32603) as i32;
            return Ok(Err(McpError::new(
                ErrorCode(code),
                message,
                err.get("data").cloned(),
            )));
        }
        Ok(Ok(msg.get("result").cloned().unwrap_or(Value::Null)))
    }

    /// `_meta` as the 2026-07-28 revision wants it on each request, naming
    /// the agent that asked this proxy.
    fn meta(context: &RequestContext<RoleServer>) -> Value {
        let client = context
            .client_info()
            .unwrap_or_else(|| Implementation::new("custody-mcp", env!("CARGO_PKG_VERSION")));
        json!({
            "io.modelcontextprotocol/protocolVersion": PROTOCOL,
            "io.modelcontextprotocol/clientInfo": client,
            "io.modelcontextprotocol/clientCapabilities": {},
        })
    }

    fn allowed(&self, connection: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|c| c == connection)
    }
}

struct Refused401(String);

async fn read_bounded(mut resp: reqwest::Response) -> Result<String, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("reading the gateway's answer: {e}"))?
    {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(format!("the gateway's answer is over {MAX_ANSWER} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).map_err(|_| "the gateway's answer is not UTF-8".to_string())
}

/// The JSON-RPC answer to request `id` among an SSE stream's `data:` lines.
fn answer_in_stream(text: &str, id: u64) -> Option<Value> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find(|m| m.get("id").and_then(Value::as_u64) == Some(id))
}

impl ServerHandler for Proxy {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("custody", env!("CARGO_PKG_VERSION")))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let params = json!({"_meta": Proxy::meta(&context)});
        let v = self.forward("tools/list", None, params).await?;
        serde_json::from_value(v).map_err(|e| failure(format!("the gateway's tool list: {e}")))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let args = request.arguments.clone().unwrap_or_default();
        if let Some(conn) = args.get("connection").and_then(Value::as_str) {
            if !self.allowed(conn) {
                let why = format!(
                    "this custody mcp serves only {}; {conn:?} is not one of them",
                    self.only.join(", ")
                );
                let mut r = CallToolResult::structured_error(
                    json!({"error": "unknown_connection", "reason": why}),
                );
                r.content = vec![rmcp::model::ContentBlock::text(why)];
                return Ok(r.into());
            }
        }
        let name = request.name.to_string();
        let params = json!({"name": name, "arguments": args, "_meta": Proxy::meta(&context)});
        let v = self.forward("tools/call", Some(&name), params).await?;
        let mut result: CallToolResult = serde_json::from_value(v)
            .map_err(|e| failure(format!("the gateway's tool result: {e}")))?;
        if name == "list_connections" && !self.only.is_empty() {
            self.narrow(&mut result);
        }
        Ok(result.into())
    }
}

impl Proxy {
    /// Shows the agent only the connections this proxy was started for.
    fn narrow(&self, result: &mut CallToolResult) {
        let Some(list) = result
            .structured_content
            .as_mut()
            .and_then(|s| s.get_mut("connections"))
            .and_then(Value::as_array_mut)
        else {
            return;
        };
        list.retain(|c| c["name"].as_str().is_some_and(|n| self.allowed(n)));
        let text: Vec<String> = list
            .iter()
            .map(|c| {
                format!(
                    "{} ({})",
                    c["name"].as_str().unwrap_or(""),
                    c["kind"].as_str().unwrap_or("")
                )
            })
            .collect();
        result.content = vec![rmcp::model::ContentBlock::text(text.join("\n"))];
    }
}
