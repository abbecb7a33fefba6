//! Guardrails for one SSH command (exec or typed line), read as the shell
//! will read it.

use super::guardrails::{Guardrails, Verdict};
use super::shell;
use crate::config::ConnectionConfig;

/// The longest command (exec request or typed line) the gateway reads.
pub const MAX_COMMAND: usize = 64 << 10;

/// Whether the connection has deny or approval patterns for commands.
pub fn has_patterns(conn: &ConnectionConfig) -> bool {
    conn.guardrails
        .as_ref()
        .is_some_and(|g| !g.deny_patterns.is_empty() || !g.approval_patterns.is_empty())
}

/// Commands are refused above MAX_COMMAND, with or without guardrails.
pub fn check_length(command: &str) -> Verdict {
    if command.len() <= MAX_COMMAND {
        return Verdict::Allow;
    }
    Verdict::Deny {
        rule: "command_length".into(),
        reason: format!(
            "the command is {} bytes; at most {MAX_COMMAND} are accepted",
            command.len()
        ),
    }
}

/// Guardrails for one command. Patterns see the words with quoting removed (`top''secret` is
/// `topsecret`), and a command whose words are only known when it runs
/// (`$X`, `$(…)`, globs, …) is refused rather than guessed at. The raw text
/// is checked too, so a pattern written for the spelling still applies.
/// `terminal`: a PTY follows, whose typed lines are checked themselves.
pub fn check(rails: &Guardrails, patterns: bool, command: &str, terminal: bool) -> Verdict {
    if let v @ Verdict::Deny { .. } = check_length(command) {
        return v;
    }
    if !patterns {
        return rails.check_command(command);
    }
    let lexed = if terminal {
        shell::normalize_nested_terminal(command)
    } else {
        shell::normalize_nested(command)
    };
    let normalized = match lexed {
        Ok(n) => n,
        Err(e) => {
            return Verdict::Deny {
                rule: "shell_syntax".into(),
                reason: format!("the command cannot be checked against this connection's patterns: {e}; write it with fixed words (quote special characters), or run a script that lives on the server"),
            }
        }
    };
    let (a, b) = (
        rails.check_command(&normalized),
        rails.check_command(command),
    );
    match (a, b) {
        (d @ Verdict::Deny { .. }, _) | (_, d @ Verdict::Deny { .. }) => d,
        (h @ Verdict::NeedsApproval { .. }, _) | (_, h @ Verdict::NeedsApproval { .. }) => h,
        _ => Verdict::Allow,
    }
}
