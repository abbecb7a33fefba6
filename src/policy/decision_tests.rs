//! `decide` for every rule kind on every path it applies to.

use std::collections::HashSet;
use std::sync::Arc;

use super::decision::*;
use super::guardrails::{Guardrails, DEFAULT_MAX_INSPECTED, RULES};
use super::review::statement_hash;
use crate::config::GuardrailsConfig;

/// A statement each SQL rule kind catches.
fn sample(rule: &str) -> &'static str {
    match rule {
        "drop" => "drop table t",
        "truncate" => "truncate t",
        "alter" => "alter table t add column c int",
        "grant" => "grant select on t to bob",
        "revoke" => "revoke select on t from bob",
        "create_role" => "create role bob",
        "copy_program" => "copy t to program 'cat'",
        "ddl" => "create table t2 (a int)",
        "delete" => "delete from t where id = 1",
        "update" => "update t set a = 1 where id = 1",
        "insert" => "insert into t values (1)",
        "delete_without_where" => "delete from t",
        "update_without_where" => "update t set a = 1",
        "write_function" => "select setval('s', 1)",
        other => panic!("no sample statement for rule {other}: add one"),
    }
}

fn rules(toml_text: &str) -> Rules {
    let cfg: GuardrailsConfig = toml::from_str(toml_text).expect("guardrails config");
    let approvable = !cfg.approvers.is_empty();
    let command_patterns = !cfg.deny_patterns.is_empty() || !cfg.approval_patterns.is_empty();
    let g = Guardrails::new(&cfg)
        .expect("guardrails")
        .with_limit(DEFAULT_MAX_INSPECTED);
    Rules {
        guardrails: Some(Arc::new(g)),
        approvable,
        masked: false,
        max_inspected: DEFAULT_MAX_INSPECTED,
        command_patterns,
    }
}

fn sql(text: &str) -> Input<'_> {
    Input::Sql {
        text,
        raw: text.as_bytes(),
    }
}

fn command(text: &str, terminal: bool) -> Input<'_> {
    Input::Command { text, terminal }
}

const SQL_PATHS: [Path; 2] = [Path::PgTunnel, Path::PgExec];
const SSH_PATHS: [Path; 2] = [Path::SshTunnel, Path::SshExec];

fn refused(d: &Decision) -> Option<(&str, Cause)> {
    match d {
        Decision::Refuse(r) => Some((r.rule.as_str(), r.cause)),
        _ => None,
    }
}

#[test]
fn every_sql_rule_denies_on_every_sql_path() {
    for rule in RULES {
        let r = rules(&format!("deny = [\"{rule}\"]"));
        for path in SQL_PATHS {
            for grant in [Grant::None, Grant::Window, Grant::Named("r1")] {
                let d = decide(path, &r, grant, sql(sample(rule)));
                // A denial is never lifted by an approval.
                assert_eq!(
                    refused(&d),
                    Some((*rule, Cause::Denied)),
                    "{rule} on {path:?}: {d:?}"
                );
            }
        }
    }
}

#[test]
fn every_sql_rule_holds_on_every_sql_path_when_approvers_exist() {
    for rule in RULES {
        let r = rules(&format!(
            "require_approval = [\"{rule}\"]\napprovers = [\"group:dba@example.com\"]"
        ));
        let stmt = sample(rule);
        for path in SQL_PATHS {
            let d = decide(path, &r, Grant::None, sql(stmt));
            assert_eq!(
                d,
                Decision::Hold {
                    rule: rule.to_string()
                },
                "{rule} on {path:?}"
            );
            let d = decide(path, &r, Grant::Window, sql(stmt));
            assert_eq!(
                d,
                Decision::RunApproved {
                    rule: rule.to_string(),
                    hash: None
                },
                "{rule} on {path:?} in a window"
            );
            let d = decide(path, &r, Grant::Named("r1"), sql(stmt));
            assert_eq!(
                d,
                Decision::UseReview {
                    rule: rule.to_string(),
                    review_id: "r1".into()
                },
                "{rule} on {path:?} naming a review"
            );
        }
    }
}

#[test]
fn a_statement_approval_covers_that_statement_only() {
    let r = rules("require_approval = [\"delete\"]\napprovers = [\"user:bob@example.com\"]");
    let approved: HashSet<String> = [statement_hash("delete from t where id = 1")].into();
    let d = decide(
        Path::PgTunnel,
        &r,
        Grant::Statements(&approved),
        sql("delete from t where id = 1"),
    );
    assert_eq!(
        d,
        Decision::RunApproved {
            rule: "delete".into(),
            hash: Some(statement_hash("delete from t where id = 1"))
        }
    );
    let d = decide(
        Path::PgTunnel,
        &r,
        Grant::Statements(&approved),
        sql("delete from t where id = 2"),
    );
    assert_eq!(
        d,
        Decision::Hold {
            rule: "delete".into()
        }
    );
}

#[test]
fn without_approvers_a_hold_is_a_refusal_on_every_path() {
    for rule in RULES {
        let r = rules(&format!("require_approval = [\"{rule}\"]"));
        for path in SQL_PATHS {
            for grant in [Grant::None, Grant::Window, Grant::Named("r1")] {
                let d = decide(path, &r, grant, sql(sample(rule)));
                assert_eq!(
                    refused(&d),
                    Some((*rule, Cause::NoApprovers)),
                    "{rule} on {path:?}"
                );
            }
        }
    }
    let r = rules("approval_patterns = ['^rm ']");
    let d = decide(
        Path::SshExec,
        &r,
        Grant::None,
        command("rm -rf /tmp/x", false),
    );
    assert_eq!(refused(&d).map(|x| x.1), Some(Cause::NoApprovers));
}

#[test]
fn statements_no_rule_names_run_on_every_path() {
    let r = rules(&format!(
        "deny = [{}]",
        RULES
            .iter()
            .map(|r| format!("\"{r}\""))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    for path in SQL_PATHS {
        assert_eq!(
            decide(path, &r, Grant::None, sql("select 1")),
            Decision::Run
        );
        assert_eq!(decide(path, &r, Grant::None, sql("")), Decision::Run);
    }
    for path in SSH_PATHS {
        assert_eq!(
            decide(path, &r, Grant::None, command("ls -l", false)),
            Decision::Run
        );
    }
}

#[test]
fn command_patterns_deny_on_every_ssh_path() {
    let r = rules("deny_patterns = ['shutdown']");
    for path in SSH_PATHS {
        for terminal in [false, true] {
            // Quoting does not hide a word from the pattern.
            for cmd in [
                "shutdown -h now",
                "shut''down -h now",
                "\"shutdown\" -h now",
            ] {
                let d = decide(path, &r, Grant::Window, command(cmd, terminal));
                assert_eq!(
                    refused(&d).map(|x| x.1),
                    Some(Cause::Denied),
                    "{cmd} on {path:?}"
                );
            }
        }
    }
}

#[test]
fn command_approvals_hold_on_exec_and_ask_for_exec_in_a_shell() {
    let r =
        rules("approval_patterns = ['^systemctl restart']\napprovers = [\"user:bob@example.com\"]");
    let restart = command("systemctl restart nginx", false);
    assert_eq!(
        decide(Path::SshExec, &r, Grant::None, restart),
        Decision::Hold {
            rule: "pattern ^systemctl restart".into()
        }
    );
    assert!(matches!(
        decide(Path::SshExec, &r, Grant::Named("r9"), restart),
        Decision::UseReview { review_id, .. } if review_id == "r9"
    ));
    let typed = command("systemctl restart nginx", true);
    let d = decide(Path::SshTunnel, &r, Grant::None, typed);
    assert_eq!(refused(&d).map(|x| x.1), Some(Cause::ApprovalElsewhere));
    assert!(matches!(
        decide(Path::SshTunnel, &r, Grant::Window, typed),
        Decision::RunApproved { .. }
    ));
}

#[test]
fn commands_the_shell_would_expand_are_refused_under_patterns() {
    let r = rules("deny_patterns = ['shutdown']");
    for path in SSH_PATHS {
        let d = decide(path, &r, Grant::None, command("$(echo shut)down", false));
        assert_eq!(
            refused(&d),
            Some(("shell_syntax", Cause::Denied)),
            "{path:?}"
        );
    }
}

#[test]
fn overlong_commands_are_refused_with_or_without_guardrails() {
    let long = "x".repeat(super::command::MAX_COMMAND + 1);
    for r in [Rules::default(), rules("deny = [\"drop\"]")] {
        for path in SSH_PATHS {
            let d = decide(path, &r, Grant::None, command(&long, false));
            assert_eq!(
                refused(&d),
                Some(("command_length", Cause::Denied)),
                "{path:?}"
            );
        }
    }
}

#[test]
fn masking_alone_applies_the_size_and_encoding_limits_to_sql() {
    let r = Rules {
        masked: true,
        max_inspected: 1024,
        ..Rules::default()
    };
    let big = format!("select '{}'", "x".repeat(2048));
    for path in SQL_PATHS {
        let d = decide(path, &r, Grant::None, sql(&big));
        assert_eq!(
            refused(&d),
            Some(("statement_size", Cause::Denied)),
            "{path:?}"
        );
        let d = decide(path, &r, Grant::None, sql("set client_encoding = 'SJIS'"));
        assert_eq!(refused(&d).map(|x| x.1), Some(Cause::Denied), "{path:?}");
        assert_eq!(
            decide(path, &r, Grant::None, sql("select 1")),
            Decision::Run
        );
    }
    assert!(r.inspects());
    assert!(!Rules::default().inspects());
}

#[test]
fn the_multibyte_reading_of_the_bytes_is_checked_too() {
    let r = rules("deny = [\"drop\"]");
    // What the gateway reads as text and what the bytes say in a
    // client-only multibyte encoding differ: a denial in either wins.
    let d = decide(
        Path::PgTunnel,
        &r,
        Grant::None,
        Input::Sql {
            text: "select 1",
            raw: b"select '\x81A'; drop table t",
        },
    );
    assert_eq!(refused(&d), Some(("drop", Cause::Denied)));
}
