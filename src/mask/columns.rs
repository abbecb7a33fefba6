//! Column rules: `schema.table.column`, `table.column` or `column` globs,
//! matched case-insensitively (PostgreSQL folds unquoted names to lower case,
//! and config authors should not have to care about quoting).

use std::cmp::Ordering;

use super::{MaskError, Strategy};

pub(crate) struct ColumnRule {
    /// As configured; reported back to the caller and in counts.
    pub(crate) pattern: String,
    /// "column:<pattern>", built once so counting a value does not allocate.
    pub(crate) count_key: String,
    pub(crate) strategy: Strategy,
    /// 1 to 3 lower-cased glob parts.
    parts: Vec<Vec<char>>,
}

impl ColumnRule {
    pub(crate) fn parse(pattern: &str, strategy: Strategy) -> Result<ColumnRule, MaskError> {
        let bad = |reason| MaskError::BadColumnPattern {
            pattern: pattern.to_owned(),
            reason,
        };
        let parts: Vec<Vec<char>> = pattern
            .trim()
            .split('.')
            .map(|p| p.chars().flat_map(char::to_lowercase).collect())
            .collect();
        if parts.len() > 3 {
            return Err(bad("it has more than 3 dot-separated parts"));
        }
        if parts.iter().any(Vec::is_empty) {
            return Err(bad("it has an empty part"));
        }
        if parts.iter().flatten().any(|c| c.is_whitespace()) {
            return Err(bad("it contains whitespace"));
        }
        Ok(ColumnRule {
            pattern: pattern.to_owned(),
            count_key: format!("column:{pattern}"),
            strategy,
            parts,
        })
    }

    /// Sort order that puts the rule to apply first: more parts, then more
    /// literal (non-wildcard) characters, then pattern text for determinism.
    pub(crate) fn precedence(a: &ColumnRule, b: &ColumnRule) -> Ordering {
        let literal = |r: &ColumnRule| {
            r.parts
                .iter()
                .flatten()
                .filter(|&&c| c != '*' && c != '?')
                .count()
        };
        b.parts
            .len()
            .cmp(&a.parts.len())
            .then(literal(b).cmp(&literal(a)))
            .then(a.pattern.cmp(&b.pattern))
    }

    /// `qualified` is (schema, table) for a column read straight from a table.
    /// Without it only the column name is known, so only patterns whose
    /// leading parts are all `*` can apply (`email`, `*.email`, `*.*.email`).
    pub(crate) fn matches(&self, qualified: Option<(&str, &str)>, column: &str) -> bool {
        let p = &self.parts;
        match (qualified, p.len()) {
            (Some((schema, table)), 3) => {
                glob(&p[0], schema) && glob(&p[1], table) && glob(&p[2], column)
            }
            (Some((_, table)), 2) => glob(&p[0], table) && glob(&p[1], column),
            (Some(_), _) => glob(&p[0], column),
            (None, n) => p[..n - 1].iter().all(|part| part[..] == ['*']) && glob(&p[n - 1], column),
        }
    }
}

fn same_char(pattern: char, c: char) -> bool {
    pattern == c || c.to_lowercase().eq(std::iter::once(pattern))
}

/// `*` matches any run of characters, `?` exactly one; `pattern` is lower case.
/// Iterative with one backtrack point, so it is linear-ish and never recurses.
fn glob(pattern: &[char], text: &str) -> bool {
    let mut p = 0;
    let mut t = text.chars();
    // After a `*`: the pattern index past it and the text position it last resumed from.
    let mut star: Option<(usize, std::str::Chars)> = None;
    loop {
        let mut next = t.clone();
        match (pattern.get(p), next.next()) {
            (Some('*'), _) => {
                p += 1;
                star = Some((p, t.clone()));
            }
            (Some(&pc), Some(c)) if pc == '?' || same_char(pc, c) => {
                p += 1;
                t = next;
            }
            (None, None) => return true,
            _ => {
                // Let the last `*` swallow one more character and retry.
                let Some((resume, from)) = &mut star else {
                    return false;
                };
                if from.next().is_none() {
                    return false;
                }
                p = *resume;
                t = from.clone();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(pattern: &str, text: &str) -> bool {
        glob(&pattern.chars().collect::<Vec<_>>(), text)
    }

    #[test]
    fn glob_matching() {
        assert!(g("email", "email"));
        assert!(g("email", "EMAIL"));
        assert!(g("*", ""));
        assert!(g("*", "anything"));
        assert!(g("*_email", "work_email"));
        assert!(g("e?ail", "eMail"));
        assert!(g("*mail*", "emails"));
        assert!(g("a*b*c", "aXXbYYbZc"));
        assert!(g("straße", "STRAßE"));
        assert!(!g("email", "emails"));
        assert!(!g("e?ail", "eail"));
        assert!(!g("a*b*c", "aXXbYY"));
        assert!(!g("?", ""));
    }

    fn rule(p: &str) -> ColumnRule {
        ColumnRule::parse(p, Strategy::Redact).expect("valid pattern")
    }

    #[test]
    fn qualified_matching() {
        let users = Some(("public", "users"));
        assert!(rule("public.users.ssn").matches(users, "ssn"));
        assert!(rule("PUBLIC.Users.SSN").matches(users, "Ssn"));
        assert!(rule("*.users.ssn").matches(users, "ssn"));
        assert!(rule("users.ssn").matches(users, "ssn"));
        assert!(rule("*.ssn").matches(users, "ssn"));
        assert!(rule("ssn").matches(users, "ssn"));
        assert!(rule("pub*.u?ers.s*").matches(users, "ssn"));
        assert!(!rule("billing.users.ssn").matches(users, "ssn"));
        assert!(!rule("orders.ssn").matches(users, "ssn"));
        assert!(!rule("public.users.ssn").matches(users, "email"));
    }

    #[test]
    fn unqualified_matching() {
        // A computed column (`select lower(email) as email`) has only its name.
        assert!(rule("email").matches(None, "email"));
        assert!(rule("*.email").matches(None, "EMAIL"));
        assert!(rule("*.*.email").matches(None, "email"));
        assert!(rule("*.e*").matches(None, "email"));
        assert!(!rule("users.email").matches(None, "email"));
        assert!(!rule("public.*.email").matches(None, "email"));
    }

    #[test]
    fn bad_patterns() {
        for p in ["", "a..b", ".a", "a.b.c.d", "my column"] {
            let err = ColumnRule::parse(p, Strategy::Redact)
                .err()
                .map(|e| e.to_string());
            assert!(
                err.as_deref()
                    .is_some_and(|e| e.contains(&format!("{p:?}"))),
                "{p}: {err:?}"
            );
        }
    }

    #[test]
    fn precedence_order() {
        let mut rules: Vec<ColumnRule> = [
            "*",
            "email",
            "*.email",
            "users.email",
            "public.users.email",
            "*.*.email",
        ]
        .map(rule)
        .into();
        rules.sort_by(ColumnRule::precedence);
        let order: Vec<&str> = rules.iter().map(|r| r.pattern.as_str()).collect();
        assert_eq!(
            order,
            [
                "public.users.email",
                "*.*.email",
                "users.email",
                "*.email",
                "email",
                "*"
            ]
        );
    }
}
