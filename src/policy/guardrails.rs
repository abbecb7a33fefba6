//! SQL guardrails: a pure decision over the statements of one Query or
//! Parse. Statements are parsed by PostgreSQL's own grammar (pg_query wraps
//! libpg_query), and classified from every node of the tree, so a statement
//! hidden in COPY, a CTE, PREPARE, a rule or EXPLAIN ANALYZE is seen as what
//! PostgreSQL will run. A statement that cannot be parsed is refused unless
//! the connection allows it.

use pg_query::protobuf::{self, node::Node as N};
use pg_query::ParserOptions;
use regex::Regex;

use super::kinds::{k, kind_of, Kind, EVERYTHING};
use super::sqltext;
use super::sqltree::{self, Found};
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
    "write_function",
];

/// Statements larger than this are refused when guardrails or masking must
/// read them: parsing costs memory in proportion to the statement.
pub const DEFAULT_MAX_INSPECTED: usize = 256 * 1024;

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
    max_bytes: usize,
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
            max_bytes: DEFAULT_MAX_INSPECTED,
        })
    }

    /// `[server] max_inspected_statement_bytes`.
    pub fn with_limit(mut self, max_bytes: usize) -> Guardrails {
        self.max_bytes = max_bytes;
        self
    }

    /// Decides on every statement of `sql`; the first refusal wins, so a
    /// multi-statement Query runs entirely or not at all.
    pub fn check(&self, sql: &str) -> Verdict {
        if let Some(v) = inspect_limit(sql, self.max_bytes) {
            return v;
        }
        if sql.trim().trim_matches(';').trim().is_empty() {
            return Verdict::Allow;
        }
        // With standard_conforming_strings off, PostgreSQL reads \' as a quote
        // inside a string: every reading that parses must be allowed, or a
        // DROP hides in a literal.
        let standard = self.check_with(sql, ParserOptions::DEFAULT);
        if !sql.contains('\\') {
            return match standard {
                Verdict::Deny { rule, reason } if rule == LEXICAL => unparsed_denial(reason),
                v => v,
            };
        }
        let escaped = self.check_with(sql, ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS);
        // A reading that fails only because its scanner runs off the end of
        // a literal cannot be what PostgreSQL runs; any other failure
        // (grammar, nesting depth) might be, and is a denial.
        let lexical = |v: &Verdict| matches!(v, Verdict::Deny { rule, .. } if rule == LEXICAL);
        match (standard, escaped) {
            (s, e) if lexical(&s) && lexical(&e) => unparsed_denial("unterminated literal".into()),
            (s, e) if lexical(&s) => e,
            (s, e) if lexical(&e) => s,
            (v @ Verdict::Deny { .. }, _) | (_, v @ Verdict::Deny { .. }) => v,
            (v @ Verdict::NeedsApproval { .. }, _) | (_, v @ Verdict::NeedsApproval { .. }) => v,
            (Verdict::Allow, Verdict::Allow) => Verdict::Allow,
        }
    }

    /// The same bytes as a client-only multibyte encoding (SJIS, BIG5, GBK,
    /// UHC, GB18030, JOHAB) would read them: a byte >= 0x81 takes the next
    /// byte with it when that byte is ASCII 0x30-0x7E (a backslash among
    /// them). Those encodings are refused, but a session could still be
    /// switched to one unseen (a function, a role default set mid-session,
    /// a pipelined SET racing the check), so that reading must pass too:
    /// a denial or a hold there counts; a reading that does not parse does not.
    pub fn check_multibyte_view(&self, raw: &[u8]) -> Verdict {
        let pair = |w: &[u8]| w[0] >= 0x81 && (0x30..=0x7e).contains(&w[1]);
        if !raw.windows(2).any(pair) {
            return Verdict::Allow;
        }
        let mut view = String::with_capacity(raw.len());
        let mut i = 0;
        while i < raw.len() {
            let b = raw[i];
            if b < 0x80 {
                view.push(b as char);
                i += 1;
                continue;
            }
            // One letter per multibyte character: it stays inside the
            // identifier or literal it belongs to.
            view.push('x');
            i += if b >= 0x81 && raw.get(i + 1).is_some_and(|n| (0x30..=0x7e).contains(n)) {
                2
            } else {
                1
            };
        }
        match self.check(&view) {
            Verdict::Deny { rule, .. } if rule == "unparsed" || rule == "statement_size" => {
                Verdict::Allow
            }
            Verdict::Deny { rule, reason } => Verdict::Deny {
                reason: format!("{reason} (read as a multibyte client encoding would read it)"),
                rule,
            },
            v => v,
        }
    }

    /// An SSH command or typed shell line: only the patterns apply (the SQL
    /// rules have nothing to parse). The reason names the pattern, never the command.
    pub fn check_command(&self, command: &str) -> Verdict {
        match self.check_patterns(&[normalize(command)]) {
            Verdict::Deny { rule, .. } => Verdict::Deny {
                reason: format!("the command matches the {rule}"),
                rule,
            },
            v => v,
        }
    }

    fn check_with(&self, sql: &str, options: ParserOptions) -> Verdict {
        let tree = match pg_query::parse(sql, options) {
            Ok(t) => t,
            Err(e) => {
                let why = parse_error(&e);
                if why.contains("unterminated") {
                    return Verdict::Deny {
                        rule: LEXICAL.into(),
                        reason: why,
                    };
                }
                if !self.allow_unparsed {
                    return unparsed_denial(why);
                }
                // PostgreSQL's grammar here is newer than some servers', so
                // "unparsed" is not "rejected upstream": such a statement
                // may do anything, and only passes where no rule applies.
                let v = self.check_patterns(&sqltext::pattern_forms(sql, options));
                if v != Verdict::Allow {
                    return v;
                }
                return self.check_kinds(&[k(
                    "ddl",
                    EVERYTHING,
                    "unparsed (guardrails cannot tell what it does)",
                    true,
                )]);
            }
        };
        // A denial anywhere wins over a hold anywhere: an approval must never
        // carry a statement that a deny rule or pattern refuses.
        let mut held = None;
        let has_patterns = !self.patterns.is_empty() || !self.approval_patterns.is_empty();
        let version = tree.protobuf.version;
        for raw in tree.protobuf.stmts {
            let by_rules = self.check_statement(&raw);
            let by_patterns = if has_patterns {
                let text = statement_text(sql, &raw);
                self.check_patterns(&sqltext::statement_forms(raw, version, text))
            } else {
                Verdict::Allow
            };
            for v in [by_rules, by_patterns] {
                match v {
                    Verdict::Deny { .. } => return v,
                    Verdict::NeedsApproval { .. } if held.is_none() => held = Some(v),
                    _ => {}
                }
            }
        }
        held.unwrap_or(Verdict::Allow)
    }

    fn check_patterns(&self, forms: &[String]) -> Verdict {
        for (p, re) in &self.patterns {
            if forms.iter().any(|f| re.is_match(f)) {
                return Verdict::Deny {
                    rule: format!("pattern {p}"),
                    reason: format!("the statement matches the deny pattern {p:?}"),
                };
            }
        }
        for (p, re) in &self.approval_patterns {
            if forms.iter().any(|f| re.is_match(f)) {
                return Verdict::NeedsApproval {
                    rule: format!("pattern {p}"),
                };
            }
        }
        Verdict::Allow
    }

    fn check_statement(&self, raw: &protobuf::RawStmt) -> Verdict {
        let found = found_in(raw);
        if let Some(v) = encoding_change(&found) {
            return v;
        }
        if self.read_only {
            if let Some(v) = read_write_request(raw, &found) {
                return v;
            }
        }
        let kinds: Vec<Kind> = found.iter().filter_map(kind_of).collect();
        self.check_kinds(&kinds)
    }

    fn check_kinds(&self, kinds: &[Kind]) -> Verdict {
        for k in kinds {
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
        for k in kinds {
            if let Some(rule) = k.rules().find(|r| self.approval.contains(r)) {
                return Verdict::NeedsApproval { rule: rule.into() };
            }
        }
        Verdict::Allow
    }
}

/// Parse trees cost several hundred bytes per token, so the number of
/// tokens is bounded too (one per 32 bytes of the byte limit); the scanner
/// that counts them costs tens of bytes per token.
pub fn inspect_limit(sql: &str, max: usize) -> Option<Verdict> {
    let deny = |what: String| {
        Verdict::Deny {
        rule: "statement_size".into(),
        reason: format!("{what}: larger statements cannot be inspected by guardrails or masking (raise [server] max_inspected_statement_bytes, or send smaller statements)"),
    }
    };
    if sql.len() > max {
        return Some(deny(format!(
            "the statement is {} bytes, over the limit of {max}",
            sql.len()
        )));
    }
    let max_tokens = (max / 32).max(64);
    // Only a statement that could reach the token limit is counted.
    if sql.len() <= max_tokens {
        return None;
    }
    match crate::policy::sqltext::scan_tokens(sql) {
        Ok(tokens) if tokens.len() > max_tokens => Some(deny(format!(
            "the statement has {} tokens, over the limit of {max_tokens}",
            tokens.len()
        ))),
        _ => None,
    }
}

/// Internal marker for a reading whose scanner ran off a literal.
const LEXICAL: &str = "unparsed_lexical";

fn unparsed_denial(why: String) -> Verdict {
    Verdict::Deny {
        rule: "unparsed".into(),
        reason: format!(
            "the statement could not be parsed, and guardrails refuse what they cannot check ({why})"
        ),
    }
}

/// The parser's message without the statement text it may quote.
fn parse_error(e: &pg_query::Error) -> String {
    let m = e.to_string();
    match m.find(" at or near") {
        Some(i) => m[..i].to_string(),
        None => m,
    }
}

/// The source text of one statement of a multi-statement string.
fn statement_text<'a>(sql: &'a str, raw: &protobuf::RawStmt) -> &'a str {
    let start = usize::try_from(raw.stmt_location)
        .unwrap_or(0)
        .min(sql.len());
    let end = match usize::try_from(raw.stmt_len) {
        Ok(0) | Err(_) => sql.len(),
        Ok(n) => (start + n).min(sql.len()),
    };
    sql.get(start..end).unwrap_or(sql)
}

/// What one statement contains. Plain EXPLAIN runs nothing, so its query
/// is not walked; EXPLAIN ANALYZE runs it, so it is. (EXPLAIN only exists
/// at the top level of PostgreSQL's grammar.)
fn found_in(raw: &protobuf::RawStmt) -> Vec<Found> {
    let Some(node) = raw.stmt.as_ref().and_then(|s| s.node.as_ref()) else {
        return Vec::new();
    };
    if let N::ExplainStmt(e) = node {
        if !explain_runs(&e.options) {
            return vec![Found::Stmt("ExplainStmt")];
        }
        let mut f = vec![Found::Stmt("ExplainAnalyze")];
        f.extend(sqltree::walk(&e.query));
        return f;
    }
    sqltree::walk(node)
}

fn explain_runs(options: &[protobuf::Node]) -> bool {
    options.iter().any(|o| match &o.node {
        Some(N::DefElem(d)) if d.defname.eq_ignore_ascii_case("analyze") => {
            match d.arg.as_ref().and_then(|a| a.node.as_ref()) {
                None => true,
                Some(N::String(s)) => !matches!(
                    s.sval.to_ascii_lowercase().as_str(),
                    "false" | "off" | "0" | "no"
                ),
                Some(N::Boolean(b)) => b.boolval,
                Some(N::Integer(i)) => i.ival != 0,
                // Anything else: assume it runs (fail closed).
                Some(_) => true,
            }
        }
        _ => false,
    })
}

const READ_ONLY_SETTINGS: [&str; 2] = ["default_transaction_read_only", "transaction_read_only"];

/// On a read_only connection the upstream session starts with
/// default_transaction_read_only on; any statement that could turn it off
/// (`SET … = off`, `BEGIN READ WRITE`, `SET SESSION CHARACTERISTICS AS
/// TRANSACTION READ WRITE`, `set_config`) is refused. RESET returns to the
/// session's startup value, which is on.
fn read_write_request(raw: &protobuf::RawStmt, found: &[Found]) -> Option<Verdict> {
    let deny = || {
        Some(Verdict::Deny {
            rule: "read_only".into(),
            reason: "the connection is read-only and this statement would make the transaction read-write".into(),
        })
    };
    for f in found {
        if let Found::Call { name, first_arg } = f {
            let named = first_arg.as_deref().map(|a| a.trim().to_ascii_lowercase());
            let touches = named
                .as_deref()
                .is_none_or(|a| READ_ONLY_SETTINGS.contains(&a));
            if name.rsplit('.').next() == Some("set_config") && touches {
                return deny();
            }
        }
    }
    let (options, named) = match raw.stmt.as_ref().and_then(|s| s.node.as_ref()) {
        Some(N::TransactionStmt(t)) => (&t.options, None),
        Some(N::VariableSetStmt(v)) => (&v.args, Some(v.name.to_ascii_lowercase())),
        _ => return None,
    };
    let truthy = |n: &protobuf::Node| match &n.node {
        Some(N::AConst(c)) => match &c.val {
            Some(protobuf::a_const::Val::Ival(i)) => Some(i.ival != 0),
            Some(protobuf::a_const::Val::Boolval(b)) => Some(b.boolval),
            Some(protobuf::a_const::Val::Sval(s)) => match s.sval.to_ascii_lowercase().as_str() {
                "on" | "true" | "yes" | "1" => Some(true),
                "off" | "false" | "no" | "0" => Some(false),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    };
    if named.is_some_and(|n| READ_ONLY_SETTINGS.contains(&n.as_str())) {
        let on = options.len() == 1 && truthy(&options[0]) == Some(true);
        // SET x TO DEFAULT has no arguments and returns to the startup value.
        if !on && !options.is_empty() {
            return deny();
        }
        return None;
    }
    for o in options {
        if let Some(N::DefElem(d)) = &o.node {
            if d.defname == "transaction_read_only" {
                let on = d.arg.as_deref().and_then(truthy);
                if on != Some(true) {
                    return deny();
                }
            }
        }
    }
    None
}

/// Client encodings in which a multibyte character can contain an ASCII
/// byte such as `\` or `'`: the gateway and PostgreSQL would read the same
/// bytes differently, so they are refused wherever statements are inspected.
pub fn unsafe_encoding(name: &str) -> bool {
    let clean: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase();
    matches!(
        clean.as_str(),
        "sjis"
            | "shiftjis"
            | "mskanji"
            | "win932"
            | "windows932"
            | "shiftjis2004"
            | "big5"
            | "win950"
            | "windows950"
            | "gbk"
            | "win936"
            | "windows936"
            | "cp936"
            | "uhc"
            | "win949"
            | "windows949"
            | "gb18030"
            | "johab"
    )
}

/// A statement that would switch the session to an unsafe client encoding.
/// `set_config` on client_encoding (or on a computed name) is refused
/// outright: its value can be computed, so it cannot be checked.
fn encoding_change(found: &[Found]) -> Option<Verdict> {
    let deny = |reason: String| {
        Some(Verdict::Deny {
            rule: "client_encoding".into(),
            reason,
        })
    };
    // UPDATE pg_settings calls set_config through a rule.
    let writes = found.iter().any(|f| {
        matches!(
            f,
            Found::Dml { .. } | Found::Stmt("InsertStmt" | "MergeStmt")
        )
    });
    if writes && found.contains(&Found::SettingsTable) {
        return deny("writing pg_settings is refused while guardrails or masking inspect statements: it can switch client_encoding unseen; use SET".into());
    }
    for f in found {
        match f {
            Found::Set {
                name,
                first_arg: Some(v),
                reset: false,
            } if name == "client_encoding" && unsafe_encoding(v) => {
                return deny(format!("client_encoding {v} is refused while guardrails or masking inspect statements: in it a multibyte character can hide a quote or backslash; use UTF8"));
            }
            Found::Call { name, first_arg } if name.rsplit('.').next() == Some("set_config") => {
                let settable = first_arg
                    .as_deref()
                    .is_some_and(|a| !a.trim().eq_ignore_ascii_case("client_encoding"));
                if !settable {
                    return deny("set_config on client_encoding (or on a setting name computed at run time) is refused while guardrails or masking inspect statements; use SET client_encoding".into());
                }
            }
            _ => {}
        }
    }
    None
}

/// For connections with masking but no guardrails: the encoding check alone,
/// parsing only statements that could change the encoding.
pub fn encoding_refusal(sql: &str, max_bytes: usize) -> Option<Verdict> {
    if let Some(v) = inspect_limit(sql, max_bytes) {
        return Some(v);
    }
    if !sqltext::may_change_encoding(sql) {
        return None;
    }
    let mut verdict = None;
    for options in [
        ParserOptions::DEFAULT,
        ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS,
    ] {
        if let Ok(tree) = pg_query::parse(sql, options) {
            for raw in &tree.protobuf.stmts {
                if let Some(v) = encoding_change(&found_in(raw)) {
                    verdict = Some(v);
                }
            }
        }
    }
    verdict
}

/// Lowercase with whitespace collapsed: what `deny_patterns` match against
/// for SSH commands.
pub fn normalize(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

#[cfg(test)]
#[path = "guardrails_tests.rs"]
mod guardrails_tests;
