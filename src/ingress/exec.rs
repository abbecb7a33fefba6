//! `POST /v1/exec/{connection}`: one SQL statement or shell command. It is
//! admitted like a tunnel, decided by the same policy (run, hold for
//! review, use a named review, refuse), run by its protocol, and answered
//! as JSON (or CSV).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tracing::Instrument;

use super::admit::{self, end_event, end_unrun, Request};
use super::gateway::Gateway;
use super::{new_audit_id, refused, to_csv, with_audit, ApiError};
use crate::config::Kind;
use crate::policy::decision::{self, Decision, Grant, Input, Path as Via, Refusal};
use crate::protocol::postgres::{self, exec::ExecOutcome, PgError};
use crate::protocol::ssh::{self, SshError};
use crate::recording::EventBody;
use crate::session::{Session, SessionContext};
use crate::telemetry;

#[derive(serde::Deserialize)]
struct ExecRequest {
    input: String,
}

/// What an exec came to, before it is rendered: JSON or CSV here, a tool
/// result for MCP (`ingress::mcp`).
pub(crate) enum Answer {
    Rows {
        audit_id: String,
        result: postgres::exec::ExecResult,
    },
    Output {
        audit_id: String,
        result: ssh::exec::ExecResult,
    },
    /// Held for review; the body of the 202.
    Held(serde_json::Value),
}

pub async fn handler(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let audit_id = new_audit_id();
    let kind = gw.connection(&name).map(|c| c.kind);
    let span = telemetry::session_span(&headers, &audit_id, &name, "exec", kind);
    let req = Request {
        headers: &headers,
        peer,
        connection: &name,
        mode: "exec",
        audit_id: &audit_id,
        span: &span,
    };
    let csv = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/csv"));
    match exec(&gw, &req, &body).instrument(span.clone()).await {
        Ok(a) => with_audit(&audit_id, render(a, csv)),
        Err(e) => refused(&span, e.at(&audit_id)),
    }
}

fn render(answer: Answer, csv: bool) -> Response {
    match answer {
        Answer::Rows { result: r, .. } if csv => {
            let body = to_csv(&r.columns, &r.rows);
            ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response()
        }
        Answer::Rows { audit_id, result: r } => Json(json!({"audit_id": audit_id, "columns": r.columns, "rows": r.rows, "command_tag": r.command_tag, "truncated": r.truncated})).into_response(),
        Answer::Output { audit_id, result: r } => Json(json!({
            "audit_id": audit_id,
            "stdout": r.stdout,
            "stderr": r.stderr,
            "exit_status": r.exit_status,
            "signal": r.signal,
            "truncated": r.truncated,
        }))
        .into_response(),
        Answer::Held(body) => (StatusCode::ACCEPTED, Json(body)).into_response(),
    }
}

async fn exec(gw: &Gateway, req: &Request<'_>, body: &[u8]) -> Result<Answer, ApiError> {
    let who = admit::identify(gw, req).await?;
    let session = admit::session(gw, req, who).await?;
    let input = match serde_json::from_slice::<ExecRequest>(body) {
        Ok(r) => r.input,
        Err(e) => {
            let reason = format!("body must be JSON {{\"input\": \"SQL\"}}: {e}");
            end_unrun(session, &reason).await;
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                reason,
                req.audit_id,
            ));
        }
    };
    run(gw, session, input, req.review()).await
}

/// Decides and runs one statement or command in an admitted session: the
/// path `POST /v1/exec` and MCP's tools share. `review` names an approved
/// review to run under (`X-Custody-Review`, or a tool's `review_id`).
pub(crate) async fn run(
    gw: &Gateway,
    session: Session,
    input: String,
    review: Option<&str>,
) -> Result<Answer, ApiError> {
    let ctx = gw.context(session).await;
    // Masking that cannot be set up would leave held statements, refusals
    // and results unmasked: nothing runs, nothing is held.
    if let crate::session::Masker::Failed(why) = &ctx.masker {
        let why = format!("masking: {why}");
        return Err(upstream_failed(ctx, why).await);
    }
    let kind = ctx.session.permit.connection.kind;
    // What is checked is exactly what the upstream will get.
    let input = match kind {
        Kind::Postgres => input.replace('\0', ""),
        Kind::Ssh => input,
    };
    let (via, subject) = match kind {
        Kind::Postgres => (
            Via::PgExec,
            Input::Sql {
                text: &input,
                raw: input.as_bytes(),
            },
        ),
        Kind::Ssh => (
            Via::SshExec,
            Input::Command {
                text: &input,
                terminal: false,
            },
        ),
    };
    let grant = review.map_or(Grant::None, Grant::Named);
    match decision::decide(via, &ctx.rules, grant, subject) {
        Decision::Run | Decision::RunApproved { .. } => {}
        Decision::UseReview { review_id, .. } => {
            if let Err(e) = ctx
                .approvals
                .use_for(&ctx.session, &review_id, &input)
                .await
            {
                end_unrun(ctx.session, "approval not usable").await;
                return Err(e.into());
            }
        }
        Decision::Hold { rule } => return hold(ctx, &input, &rule).await,
        Decision::Refuse(r) => return Err(refuse(ctx, &input, r).await),
    }
    match kind {
        Kind::Postgres => run_sql(gw, ctx, &input).await,
        Kind::Ssh => run_command(ctx, &input).await,
    }
}

/// The request as reviewers and recordings see it: masked like output.
fn shown(ctx: &SessionContext, input: &str) -> String {
    let Some(engine) = ctx.masker.engine() else {
        return input.to_string();
    };
    let mut counts = Default::default();
    match ctx.session.permit.connection.kind {
        Kind::Postgres => postgres::masking::sql(engine, input, &mut counts),
        Kind::Ssh => crate::mask::text(engine, input, &mut counts),
    }
}

/// Held for review: 202 with the review's id; the session ends here.
async fn hold(ctx: SessionContext, input: &str, rule: &str) -> Result<Answer, ApiError> {
    let id = uuid::Uuid::now_v7().to_string();
    let held = ctx
        .approvals
        .hold(&ctx.session, &id, input, &shown(&ctx, input), rule)
        .await;
    let audit_id = ctx.session.audit_id.clone();
    end_unrun(ctx.session, "held for approval").await;
    let req = held?;
    Ok(Answer::Held(json!({
        "state": "pending",
        "review_id": req.id,
        "audit_id": audit_id,
        "reason": format!("this statement requires approval (guardrail \"{rule}\"): review {} waits for {} of {}", req.id, req.required, req.approvers.join(", ")),
        "approve": format!("custody review approve {}", req.id),
        "expires": req.expires,
    })))
}

/// Refused by a guardrail: recorded (masked), then 403 with the reason.
async fn refuse(ctx: SessionContext, input: &str, r: Refusal) -> ApiError {
    let audit_id = ctx.session.audit_id.clone();
    let (event, message, sqlstate) = match ctx.session.permit.connection.kind {
        Kind::Postgres => {
            let (mut event, message) = postgres::hooks::refusal_event(&r, input, "exec", &audit_id);
            if let Some(engine) = ctx.masker.engine() {
                let catalog = Default::default();
                let m = postgres::hooks::MaskCtx {
                    engine,
                    catalog: &catalog,
                };
                postgres::hooks::scrub(Some(m), &mut event);
            }
            (event, message, Some("42501"))
        }
        Kind::Ssh => {
            let event = EventBody::Guardrail {
                sql: shown(&ctx, input),
                protocol: "ssh-exec".into(),
                rule: r.rule.clone(),
                outcome: "refused".into(),
            };
            (event, ssh::exec::refusal_message(&r), None)
        }
    };
    let _ = ctx.session.tap().record(event).await;
    end_unrun(ctx.session, "refused by guardrail").await;
    let e = ApiError::new(StatusCode::FORBIDDEN, "guardrail", message, &audit_id);
    match sqlstate {
        Some(s) => e.with_sqlstate(s),
        None => e,
    }
}

async fn run_sql(gw: &Gateway, ctx: SessionContext, input: &str) -> Result<Answer, ApiError> {
    let outcome = postgres::exec::run(&ctx, &gw.postgres.catalogs, input).await;
    let audit_id = ctx.session.audit_id.clone();
    match outcome {
        Ok(ExecOutcome::Done(result)) => {
            let rows = result.rows.len() as u64;
            ctx.session.finish(end_event("completed", 1, rows)).await?;
            Ok(Answer::Rows { audit_id, result })
        }
        Ok(ExecOutcome::QueryError { sqlstate, message }) => {
            let _ = ctx.session.finish(end_event("query failed", 1, 0)).await;
            let e = ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "query_failed",
                message,
                &audit_id,
            );
            Err(e.with_sqlstate(&sqlstate))
        }
        Ok(ExecOutcome::Interrupted { policy, reason }) => {
            Err(interrupted(ctx, policy, reason).await)
        }
        Err(e @ PgError::Recording(_)) => Err(recording_failed(ctx, e.to_string()).await),
        Err(e) => Err(upstream_failed(ctx, e.to_string()).await),
    }
}

async fn run_command(ctx: SessionContext, command: &str) -> Result<Answer, ApiError> {
    let _ = ctx
        .session
        .tap()
        .record(EventBody::SshRequest {
            channel: 0,
            request: "exec".into(),
            detail: Some(shown(&ctx, command)),
            outcome: "allowed".into(),
        })
        .await;
    let audit_id = ctx.session.audit_id.clone();
    match ssh::exec::run(&ctx, command).await {
        Ok(result) => {
            ctx.session.finish(end_event("completed", 1, 0)).await?;
            Ok(Answer::Output { audit_id, result })
        }
        Err(SshError::Recording(why)) => Err(recording_failed(ctx, why).await),
        Err(SshError::Interrupted { policy, reason }) => {
            Err(interrupted(ctx, policy, reason).await)
        }
        Err(e) => Err(upstream_failed(ctx, e.to_string()).await),
    }
}

/// An exec stopped mid-way (revoked, past its deadline, shutdown): the
/// recording says why, and so does the answer.
async fn interrupted(ctx: SessionContext, policy: bool, reason: String) -> ApiError {
    let _ = ctx
        .session
        .tap()
        .record(EventBody::Error {
            message: reason.clone(),
        })
        .await;
    let _ = ctx.session.finish(end_event("interrupted", 1, 0)).await;
    let status = match policy {
        true => StatusCode::FORBIDDEN,
        false => StatusCode::SERVICE_UNAVAILABLE,
    };
    ApiError::of(status, "session_ended", reason)
}

async fn recording_failed(ctx: SessionContext, why: String) -> ApiError {
    let _ = ctx
        .session
        .finish(end_event("recording failed", 0, 0))
        .await;
    ApiError::of(
        StatusCode::SERVICE_UNAVAILABLE,
        "recording_unavailable",
        format!("the result is withheld because the session could not be recorded: {why}"),
    )
}

async fn upstream_failed(ctx: SessionContext, why: String) -> ApiError {
    let audit_id = ctx.session.audit_id.clone();
    let _ = ctx
        .session
        .tap()
        .record(EventBody::Error {
            message: why.clone(),
        })
        .await;
    let _ = ctx.session.finish(end_event("upstream failed", 0, 0)).await;
    ApiError::new(StatusCode::BAD_GATEWAY, "upstream_failed", why, &audit_id)
}
