//! The text forms of a statement that `deny_patterns` and
//! `approval_patterns` see, built from PostgreSQL's own scanner so that
//! quoting cannot hide a name: identifiers unquoted, `U&` escapes decoded,
//! comments dropped, whitespace collapsed, lower case; and the same again
//! with schema qualifiers removed (`public.payroll` is also `payroll`).
//! Where the statement parses, it is first printed by PostgreSQL's deparser,
//! so spacing is canonical (`pg_sleep (1)` reads `pg_sleep(1)`).

use pg_query::protobuf::{self, KeywordKind, ScanToken, Token};
use pg_query::ParserOptions;

/// PostgreSQL's tokens of `sql`. pg_query's own `scan_tokens` builds a
/// slice from the scanner's NULL pointer when there are no tokens
/// (undefined behaviour, an abort in debug builds), which only text of
/// nothing but whitespace produces (comments are tokens): answered here.
pub fn scan_tokens(sql: &str) -> Result<Vec<ScanToken>, pg_query::Error> {
    let blank = sql
        .bytes()
        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c));
    if blank {
        return Ok(Vec::new());
    }
    pg_query::scan_tokens(sql)
}

/// The forms patterns are matched against, for one statement's text.
pub fn pattern_forms(text: &str, options: ParserOptions) -> Vec<String> {
    let canonical = pg_query::parse(text, options)
        .ok()
        .and_then(|t| t.protobuf.deparse(Default::default()).ok());
    let source = canonical.as_deref().unwrap_or(text);
    match scan_tokens(source) {
        Ok(tokens) => forms(source, &tokens),
        Err(_) => vec![crate::policy::guardrails::normalize(text)],
    }
}

/// A statement that might change `client_encoding`: only these are parsed
/// on connections with masking but no guardrails. Escapes (`U&`, `\`) could
/// spell any name, so they count too.
pub fn may_change_encoding(sql: &str) -> bool {
    // One pass keyed on the first letter: this runs on every statement.
    let b = sql.as_bytes();
    (0..b.len()).any(|i| {
        let starts = |needle: &[u8]| {
            b.get(i..i + needle.len())
                .is_some_and(|w| w.eq_ignore_ascii_case(needle))
        };
        match b[i].to_ascii_lowercase() {
            b'\\' => true,
            b'e' => starts(b"encoding"),
            b'n' => starts(b"names"),
            b's' => starts(b"set_config") || starts(b"settings"),
            b'u' => starts(b"u&"),
            _ => false,
        }
    })
}

struct Piece {
    text: String,
    space_before: bool,
    word: bool,
    dot: bool,
}

fn forms(src: &str, tokens: &[ScanToken]) -> Vec<String> {
    let mut pieces: Vec<Piece> = Vec::with_capacity(tokens.len());
    let mut last_end = 0usize;
    for t in tokens {
        let (start, end) = (t.start as usize, t.end as usize);
        let Some(raw) = src.get(start..end) else {
            continue;
        };
        let kind = t.token;
        if kind == Token::SqlComment as i32 || kind == Token::CComment as i32 {
            continue;
        }
        let space_before = !pieces.is_empty() && start > last_end;
        last_end = end;
        let (text, word) = if kind == Token::Ident as i32 {
            (unquote(raw), true)
        } else if kind == Token::Uident as i32 {
            (decode_uident(raw), true)
        } else if t.keyword_kind != KeywordKind::NoKeyword as i32 {
            (raw.to_string(), true)
        } else {
            (raw.to_string(), false)
        };
        pieces.push(Piece {
            text: text.to_lowercase(),
            space_before,
            word,
            dot: raw == ".",
        });
    }
    let render = |skip_qualifiers: bool| {
        let mut out = String::new();
        let mut i = 0;
        while i < pieces.len() {
            let p = &pieces[i];
            let qualifier = skip_qualifiers
                && p.word
                && pieces.get(i + 1).is_some_and(|n| n.dot && !n.space_before)
                && pieces.get(i + 2).is_some_and(|n| n.word || n.text == "*");
            if qualifier {
                // Keep the space that preceded the qualified name.
                if p.space_before && !out.is_empty() {
                    out.push(' ');
                }
                i += 2;
                // The name after the dot follows with no space.
                if let Some(n) = pieces.get(i) {
                    out.push_str(&n.text);
                }
                i += 1;
                continue;
            }
            if p.space_before {
                out.push(' ');
            }
            out.push_str(&p.text);
            i += 1;
        }
        out
    };
    let qualified = render(false);
    let bare = render(true);
    if bare == qualified {
        vec![qualified]
    } else {
        vec![qualified, bare]
    }
}

/// `"My ""odd"" name"` → `My "odd" name`; unquoted names as they are.
fn unquote(raw: &str) -> String {
    match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => raw.to_string(),
    }
}

/// `U&"pg\005fsleep"` → `pg_sleep` (default escape character; a UESCAPE
/// clause is rare, and the deparsed form already has it resolved).
fn decode_uident(raw: &str) -> String {
    let inner = raw.get(2..).map(unquote).unwrap_or_else(|| raw.to_string());
    let mut out = String::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let hex = |n: usize, chars: &mut std::iter::Peekable<std::str::Chars>| {
            let digits: String = (0..n).filter_map(|_| chars.next()).collect();
            u32::from_str_radix(&digits, 16)
                .ok()
                .and_then(char::from_u32)
        };
        match chars.peek() {
            Some('\\') => {
                chars.next();
                out.push('\\');
            }
            Some('+') => {
                chars.next();
                out.extend(hex(6, &mut chars));
            }
            _ => out.extend(hex(4, &mut chars)),
        }
    }
    out
}

/// The forms of one statement PostgreSQL already parsed: it is deparsed
/// from its tree (no second parse), `text` being its source as a fallback.
pub fn statement_forms(raw: protobuf::RawStmt, version: i32, text: &str) -> Vec<String> {
    let single = protobuf::ParseResult {
        version,
        stmts: vec![raw],
    };
    let canonical = single.deparse(Default::default()).ok();
    let source = canonical.as_deref().unwrap_or(text);
    match scan_tokens(source) {
        Ok(tokens) => forms(source, &tokens),
        Err(_) => vec![crate::policy::guardrails::normalize(text)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(sql: &str) -> Vec<String> {
        pattern_forms(sql, ParserOptions::DEFAULT)
    }

    /// Empty and blank statements (asyncpg's `execute('')`, an error with no
    /// statement) once reached pg_query's NULL-slice and aborted the gateway.
    #[test]
    fn blank_text_has_no_tokens_and_comments_do() {
        for blank in ["", " ", " \t\n\r\x0b\x0c "] {
            assert_eq!(scan_tokens(blank).unwrap().len(), 0, "{blank:?}");
            let _ = f(blank);
        }
        assert_eq!(scan_tokens("-- just a comment").unwrap().len(), 1);
        assert_eq!(scan_tokens("/* c */").unwrap().len(), 1);
    }

    #[test]
    fn quoting_and_qualifiers_do_not_hide_names() {
        assert!(f(r#"select "pg_sleep"(0.1)"#).contains(&"select pg_sleep(0.1)".into()));
        assert!(f(r#"select U&"pg\005fsleep"(0.1)"#)
            .iter()
            .any(|s| s.contains("pg_sleep(")));
        assert!(f("select * from public.payroll").contains(&"select * from payroll".to_string()));
        assert!(f(r#"select * from "payroll""#).contains(&"select * from payroll".to_string()));
        assert!(f("SELECT   PG_SLEEP (10) /* x */").contains(&"select pg_sleep(10)".into()));
        assert!(f(r#"select * from "public"."payroll" p"#)
            .iter()
            .any(|s| s.contains("from payroll")));
    }

    #[test]
    fn unparsable_text_still_normalizes() {
        let forms = f(r#"selec "pg_sleep"(1) from"#);
        assert!(forms.iter().any(|s| s.contains("pg_sleep(1)")), "{forms:?}");
    }

    #[test]
    fn encoding_prefilter() {
        assert!(may_change_encoding("SET CLIENT_ENCODING TO 'sjis'"));
        assert!(may_change_encoding("set names sjis"));
        assert!(may_change_encoding(
            r"select set_config(E'client\x5fencoding', 'x', false)"
        ));
        assert!(may_change_encoding(
            r#"select U&"set\005fconfig"('a','b',false)"#
        ));
        assert!(!may_change_encoding("select * from t where id = $1"));
    }

    proptest::proptest! {
        /// The one-pass prefilter flags exactly what a search for each
        /// needle (the way it was written first) flags.
        #[test]
        fn encoding_prefilter_matches_a_search_per_needle(sql in "([a-zA-Z_&\\\\ ]|encoding|NAMES|Set_Config|u&|settings|é){0,40}") {
            let b = sql.as_bytes();
            let search = b.contains(&b'\\')
                || ["encoding", "names", "set_config", "u&", "settings"].iter().any(|n| {
                    b.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n.as_bytes()))
                });
            proptest::prop_assert_eq!(may_change_encoding(&sql), search);
        }
    }
}
