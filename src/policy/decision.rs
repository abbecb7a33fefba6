//! The one decision every way in makes about one statement or command: a
//! pure function of the path it came by, the connection's rules, what the
//! session's approval covers, and the statement itself. Carrying a decision
//! out (storing a hold, using up an approval) is `session::approvals`.

use std::collections::HashSet;
use std::sync::Arc;

use super::guardrails::{self, Guardrails, Verdict};
use super::review::statement_hash;
use crate::config::ConnectionConfig;

/// The way a statement or command arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    PgTunnel,
    PgExec,
    SshTunnel,
    SshExec,
}

impl Path {
    /// Whether a held request can wait for a review on this path. An
    /// interactive SSH session cannot: its commands are asked for with exec.
    fn can_hold(self) -> bool {
        self != Path::SshTunnel
    }
}

/// What one connection's rules are, compiled once per connection.
#[derive(Clone, Default)]
pub struct Rules {
    pub guardrails: Option<Arc<Guardrails>>,
    /// Held statements can be approved: the connection names approvers.
    pub approvable: bool,
    /// Masking reads this connection's statements, so the size and
    /// encoding limits apply even without guardrails.
    pub masked: bool,
    /// `[server] max_inspected_statement_bytes`.
    pub max_inspected: usize,
    /// The connection has deny or approval patterns for commands.
    pub command_patterns: bool,
}

impl Rules {
    pub fn for_connection(
        conn: &ConnectionConfig,
        guardrails: Option<Arc<Guardrails>>,
        masked: bool,
        max_inspected: usize,
    ) -> Rules {
        Rules {
            guardrails,
            approvable: conn
                .guardrails
                .as_ref()
                .is_some_and(|g| !g.approvers.is_empty()),
            masked,
            max_inspected,
            command_patterns: super::command::has_patterns(conn),
        }
    }

    /// Whether statements are read at all (guardrails or masking).
    pub fn inspects(&self) -> bool {
        self.guardrails.is_some() || self.masked
    }
}

/// One statement or command.
#[derive(Clone, Copy)]
pub enum Input<'a> {
    /// SQL as the gateway reads it, and its bytes as sent (a multibyte
    /// client encoding reads those differently).
    Sql { text: &'a str, raw: &'a [u8] },
    /// A shell command; `terminal`: a PTY follows (typed lines are checked).
    Command { text: &'a str, terminal: bool },
}

impl Input<'_> {
    pub fn text(&self) -> &str {
        match self {
            Input::Sql { text, .. } | Input::Command { text, .. } => text,
        }
    }
}

/// What the session's approval covers, as far as the decision needs it.
#[derive(Clone, Copy)]
pub enum Grant<'a> {
    None,
    /// A time-boxed (JIT) approval: any held statement may run.
    Window,
    /// Statements approved one by one, by hash, each once.
    Statements(&'a HashSet<String>),
    /// The request names review `id` (CUSTODY_REVIEW on exec): it runs if
    /// that review covers it, which only the store can say.
    Named(&'a str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Run,
    /// Held by `rule`, and covered by the session's approval; `hash` is the
    /// approved statement's, to be used up.
    RunApproved {
        rule: String,
        hash: Option<String>,
    },
    /// Held by `rule`; the named review must cover it and is used up.
    UseReview {
        rule: String,
        review_id: String,
    },
    /// Held by `rule`: a review is created and the request waits for it.
    Hold {
        rule: String,
    },
    Refuse(Refusal),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub rule: String,
    /// Safe to show the client: names no literal.
    pub reason: String,
    pub cause: Cause,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A `deny` rule or pattern, a size or encoding limit, unparsable input.
    Denied,
    /// It needs approval, and the connection names no approvers.
    NoApprovers,
    /// It needs approval, which this path cannot wait for (ask with exec).
    ApprovalElsewhere,
}

/// Decides one statement or command.
pub fn decide(path: Path, rules: &Rules, grant: Grant, input: Input) -> Decision {
    match verdict(rules, input) {
        Verdict::Allow => Decision::Run,
        Verdict::Deny { rule, reason } => Decision::Refuse(Refusal {
            rule,
            reason,
            cause: Cause::Denied,
        }),
        Verdict::NeedsApproval { rule } => approval(path, rules, grant, input, rule),
    }
}

fn approval(path: Path, rules: &Rules, grant: Grant, input: Input, rule: String) -> Decision {
    let refuse = |cause, reason: &str| {
        Decision::Refuse(Refusal {
            rule: rule.clone(),
            reason: reason.to_string(),
            cause,
        })
    };
    if !rules.approvable && path.can_hold() {
        return refuse(
            Cause::NoApprovers,
            "approval is required and this connection names no approvers",
        );
    }
    match grant {
        Grant::Window => Decision::RunApproved { rule, hash: None },
        Grant::Statements(hashes) => {
            let hash = statement_hash(input.text());
            if hashes.contains(&hash) {
                Decision::RunApproved {
                    rule,
                    hash: Some(hash),
                }
            } else if path.can_hold() {
                Decision::Hold { rule }
            } else {
                refuse(Cause::ApprovalElsewhere, "approval is required")
            }
        }
        Grant::Named(id) if path.can_hold() => Decision::UseReview {
            rule,
            review_id: id.to_string(),
        },
        _ if path.can_hold() => Decision::Hold { rule },
        _ => refuse(Cause::ApprovalElsewhere, "approval is required"),
    }
}

/// What the connection's guardrails say, before any approval is looked at.
pub fn verdict(rules: &Rules, input: Input) -> Verdict {
    match (input, &rules.guardrails) {
        (Input::Sql { text, raw }, Some(g)) => both_readings(g, text, raw),
        // Masking alone: the size, then a switch to an unsafe encoding.
        (Input::Sql { text, .. }, None) if rules.masked => {
            guardrails::encoding_refusal(text, rules.max_inspected).unwrap_or(Verdict::Allow)
        }
        (Input::Command { text, terminal }, Some(g)) => {
            super::command::check(g, rules.command_patterns, text, terminal)
        }
        (Input::Command { text, .. }, None) => super::command::check_length(text),
        _ => Verdict::Allow,
    }
}

/// The statement as the gateway reads it, and its bytes as a multibyte
/// client encoding would read them: a denial in either wins, then a hold.
fn both_readings(rails: &Guardrails, sql: &str, raw: &[u8]) -> Verdict {
    match rails.check(sql) {
        v @ Verdict::Deny { .. } => v,
        v => match rails.check_multibyte_view(raw) {
            d @ Verdict::Deny { .. } => d,
            Verdict::Allow => v,
            hold => match v {
                Verdict::Allow => hold,
                v => v,
            },
        },
    }
}
