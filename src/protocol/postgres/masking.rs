//! Masking applied to PostgreSQL frames: pure functions that rewrite a
//! DataRow, a COPY data row or an error/notice, recomputing lengths so the
//! client never sees a broken frame.

use bytes::{Buf, BufMut, BytesMut};

use super::catalog::{Catalog, Rule};
use super::codec::cstr;
use super::PgError;
use crate::mask::{text, Counts, Engine};

/// One result column as RowDescription (and Bind's result formats) describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Col {
    pub name: String,
    pub table_oid: u32,
    pub attnum: i16,
    pub type_oid: u32,
    pub format: i16,
}

/// What to do with one column's values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColMask {
    pub rule: Rule,
    pub binary: bool,
    pub type_oid: u32,
}

const JSON: u32 = 114;
const JSONB: u32 = 3802;

/// Types whose binary form is their text (jsonb: a version byte, then text).
fn text_like(type_oid: u32) -> bool {
    matches!(
        type_oid,
        25 | 1043 | 1042 | 19 | 18 | JSON | 142 | 705 | JSONB
    )
}

pub fn row_description(mut body: &[u8]) -> Result<Vec<Col>, PgError> {
    let short = || PgError::Protocol("short RowDescription".into());
    if body.len() < 2 {
        return Err(short());
    }
    let n = body.get_i16().max(0) as usize;
    let mut cols = Vec::with_capacity(n.min(1664));
    for _ in 0..n {
        let name = cstr(&mut body)?.to_string();
        if body.len() < 18 {
            return Err(short());
        }
        let table_oid = body.get_u32();
        let attnum = body.get_i16();
        let type_oid = body.get_u32();
        body.advance(6);
        let format = body.get_i16();
        cols.push(Col {
            name,
            table_oid,
            attnum,
            type_oid,
            format,
        });
    }
    Ok(cols)
}

/// Applies Bind's result-format codes (none: all text; one: all; else per column).
pub fn with_formats(cols: &[Col], formats: &[i16]) -> Vec<Col> {
    cols.iter()
        .enumerate()
        .map(|(i, c)| {
            let format = match formats.len() {
                0 => 0,
                1 => formats[0],
                _ => formats.get(i).copied().unwrap_or(0),
            };
            Col {
                format,
                ..c.clone()
            }
        })
        .collect()
}

/// Rules for each column: the catalog's `schema.table.column` match first,
/// else the result column name.
pub fn resolve(cols: &[Col], engine: &Engine, catalog: &Catalog) -> Vec<ColMask> {
    cols.iter()
        .map(|c| {
            let rule = catalog.rule(c.table_oid, c.attnum).cloned().or_else(|| {
                engine
                    .column_rule(None, &c.name)
                    .map(|(s, p)| (s, p.to_string()))
            });
            ColMask {
                rule,
                binary: c.format == 1,
                type_oid: c.type_oid,
            }
        })
        .collect()
}

/// Masks for rows whose columns were never described while column rules
/// exist: every value becomes NULL rather than risk a ruled column.
pub fn undescribed(row: &[u8]) -> Vec<ColMask> {
    let n = row
        .get(..2)
        .map(|b| i16::from_be_bytes([b[0], b[1]]))
        .unwrap_or(0)
        .max(0) as usize;
    let rule = Some((crate::mask::Strategy::Null, "undescribed".to_string()));
    vec![
        ColMask {
            rule,
            binary: true,
            type_oid: 0
        };
        n
    ]
}

/// NotificationResponse: the payload passes through the detectors.
pub fn notification(
    body: &[u8],
    engine: &Engine,
    counts: &mut Counts,
    out: &mut BytesMut,
) -> Result<(), PgError> {
    if body.len() < 4 {
        return Err(PgError::Protocol("short NotificationResponse".into()));
    }
    let (pid, mut rest) = body.split_at(4);
    let channel = cstr(&mut rest)?;
    let payload = cstr(&mut rest)?;
    let payload = text(engine, payload, counts);
    let mut b = pid.to_vec();
    for s in [channel, payload.as_str()] {
        b.extend(s.bytes().filter(|c| *c != 0));
        b.push(0);
    }
    super::codec::put_frame(out, b'A', &b);
    Ok(())
}

/// Masks one value: None when unchanged, Some(None) for NULL.
pub fn mask_one(
    v: &[u8],
    m: Option<&ColMask>,
    engine: &Engine,
    counts: &mut Counts,
) -> Option<Option<Vec<u8>>> {
    let (binary, type_oid, rule) = match m {
        Some(m) => (m.binary, m.type_oid, m.rule.as_ref()),
        // Unknown context: only detectors, and only on what is valid text.
        None => (std::str::from_utf8(v).is_err(), 0, None),
    };
    let jsonb_binary = binary && type_oid == JSONB;
    let (prefix, text) = if jsonb_binary && !v.is_empty() {
        v.split_at(1)
    } else {
        (&v[..0], v)
    };
    if let Some((strategy, pattern)) = rule {
        // A masked value must stay a value of its type: text types take
        // the masked text, json a JSON string; any other type (int, inet,
        // uuid, arrays, composites, binary) becomes NULL.
        if !string_type(type_oid) && !matches!(type_oid, JSON | JSONB) {
            counts.add(&format!("column:{pattern}"), 1);
            return Some(None);
        }
        // The null strategy (mask_value's None) is SQL NULL, not "unchanged".
        let Some(masked) = engine.mask_value(text, *strategy, pattern, counts) else {
            return Some(None);
        };
        let masked = if matches!(type_oid, JSON | JSONB) {
            json_string(&masked)
        } else {
            masked
        };
        return Some(Some(prefixed(prefix, masked)));
    }
    if !engine.has_detectors() {
        return None;
    }
    if binary && !text_like(type_oid) {
        return binary_detected(v, type_oid, engine, counts);
    }
    let masked = engine.mask_text(text, counts)?;
    if !still_valid(type_oid, &masked) {
        return Some(None);
    }
    Some(Some(prefixed(prefix, masked)))
}

/// `prefix` (jsonb's version byte, else empty) before `masked`, with no
/// copy when there is none.
fn prefixed(prefix: &[u8], masked: Vec<u8>) -> Vec<u8> {
    if prefix.is_empty() {
        masked
    } else {
        [prefix, &masked].concat()
    }
}

/// Binary formats that cannot carry text, with their width: booleans,
/// dates and times, oids and transaction ids. A value of another width is
/// not what its description says, so it is scanned like an unknown type.
fn fixed_width(type_oid: u32) -> Option<usize> {
    Some(match type_oid {
        16 => 1,
        26 | 28 | 29 | 1082 => 4,
        27 => 6,
        1083 | 1114 | 1184 | 3220 => 8,
        1266 => 12,
        1186 => 16,
        _ => return None,
    })
}

/// Detectors over a binary value of a non-text type, as text format would
/// show it to them: numbers, uuid and inet/cidr are decoded to their text,
/// arrays and records element by element, and anything else is scanned as
/// the bytes it carries. bytea passes (text format shows it as hex, where
/// detectors see no text either). A match makes the value NULL: a
/// rewritten binary value would not parse.
///
/// Under detectors alone the type comes from a description the gateway
/// cached, which a pipeline can make stale (a portal re-bound before its
/// rows arrive, a statement swapped at SQL level): then a text value of
/// exactly 4, 8 or 16 bytes would be read as a number, a date or a uuid.
/// So bytes that could be text (UTF-8 without NUL, which a real binary
/// number, date or uuid almost never is) are also scanned as themselves.
fn binary_detected(
    v: &[u8],
    type_oid: u32,
    engine: &Engine,
    counts: &mut Counts,
) -> Option<Option<Vec<u8>>> {
    if type_oid == BYTEA {
        return None;
    }
    let maybe_text = !v.is_empty() && !v.contains(&0) && std::str::from_utf8(v).is_ok();
    if maybe_text && engine.mask_text(v, counts).is_some() {
        return Some(None);
    }
    if fixed_width(type_oid) == Some(v.len()) {
        return None;
    }
    let view = super::binview::text_view(v, type_oid);
    engine.mask_text(view.as_bytes(), counts).map(|_| None)
}

const BYTEA: u32 = 17;

/// Types whose values are free text: a detector's replacement is a valid
/// value of them. 0: a value whose type is not known (COPY text, a row
/// never described), masked as text as before.
fn string_type(type_oid: u32) -> bool {
    matches!(type_oid, 0 | 25 | 1043 | 1042 | 19 | 18 | 705)
}

/// Whether text a detector changed is still a value of its type: any text
/// for text types, JSON for json; never for other types (inet, uuid,
/// arrays, composites, ...), which become NULL rather than a string their
/// parser rejects.
fn still_valid(type_oid: u32, masked: &[u8]) -> bool {
    match type_oid {
        JSON | JSONB => serde_json::from_slice::<serde_json::Value>(masked).is_ok(),
        t => string_type(t),
    }
}

/// A masked value inside a json column must stay JSON: quote it.
fn json_string(v: &[u8]) -> Vec<u8> {
    let s = String::from_utf8_lossy(v);
    serde_json::to_vec(&s).unwrap_or_else(|_| b"null".to_vec())
}

/// Writes a DataRow body into `out` as a whole 'D' frame, masked. A row
/// nothing changes (most rows, in practice) goes out as it came: the frame
/// is copied whole, and rebuilt only from the first value that changes.
/// On an error `out` is left as it was: no unmasked copy stays behind.
pub fn data_row(
    body: &[u8],
    masks: Option<&[ColMask]>,
    engine: &Engine,
    counts: &mut Counts,
    out: &mut BytesMut,
) -> Result<(), PgError> {
    let frame = out.len();
    let written = copy_masked_row(body, masks, engine, counts, out);
    if written.is_err() {
        out.truncate(frame);
    }
    written
}

fn copy_masked_row(
    body: &[u8],
    masks: Option<&[ColMask]>,
    engine: &Engine,
    counts: &mut Counts,
    out: &mut BytesMut,
) -> Result<(), PgError> {
    let short = || PgError::Protocol("malformed DataRow from upstream".into());
    let n = match body {
        [a, b, ..] => i16::from_be_bytes([*a, *b]),
        _ => return Err(short()),
    };
    let frame = out.len();
    super::codec::put_frame(out, b'D', body);
    // Offsets into `body`; `out` holds body[..at] verbatim until rebuilt.
    let mut at = 2;
    let mut rebuilt = false;
    for i in 0..n.max(0) as usize {
        let head = body.get(at..at + 4).ok_or_else(short)?;
        let len = i32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let value_at = at;
        at += 4;
        // None: passes as it came; Some(None): NULL; Some(Some(v)): v.
        let masked = match len {
            -1 => None,
            // Only -1 is NULL on the wire; any other negative length is
            // rewritten to it, so the client parses the row as we did.
            ..-1 => Some(None),
            _ => {
                let v = body.get(at..at + len as usize).ok_or_else(short)?;
                at += v.len();
                mask_one(v, masks.and_then(|m| m.get(i)), engine, counts)
            }
        };
        let Some(m) = masked else {
            if rebuilt {
                out.put_slice(&body[value_at..at]);
            }
            continue;
        };
        if !rebuilt {
            out.truncate(frame + 5 + value_at);
            rebuilt = true;
        }
        put_value(out, m);
    }
    // Bytes after the last value are not the row's: they are dropped, as
    // a rebuilt row always dropped them.
    if at < body.len() && !rebuilt {
        out.truncate(frame + 5 + at);
        rebuilt = true;
    }
    if rebuilt {
        let total = (out.len() - frame - 1) as i32;
        out[frame + 1..frame + 5].copy_from_slice(&total.to_be_bytes());
    }
    Ok(())
}

fn put_value(out: &mut BytesMut, v: Option<Vec<u8>>) {
    match v {
        None => out.put_i32(-1),
        Some(v) => {
            out.put_i32(v.len() as i32);
            out.put_slice(&v);
        }
    }
}

/// Rewrites one text-format COPY row ('d' body): column rules by position
/// when known, detectors over each field. Unplanned rows under column rules
/// (a COPY the gateway could not analyze) become all NULL: never leaked.
pub fn copy_row(
    body: &[u8],
    rules: Option<&[Rule]>,
    engine: &Engine,
    counts: &mut Counts,
    out: &mut BytesMut,
) {
    let line = body.strip_suffix(b"\n").unwrap_or(body);
    if rules.is_none() && engine.has_column_rules() {
        let fields = line.split(|b| *b == b'\t').count();
        counts.add("column:unplanned-copy", fields as u64);
        let mut nulls = vec![&b"\\N"[..]; fields].join(&b'\t');
        nulls.push(b'\n');
        super::codec::put_frame(out, b'd', &nulls);
        return;
    }
    let mut masked = Vec::with_capacity(body.len());
    for (i, field) in line.split(|b| *b == b'\t').enumerate() {
        if i > 0 {
            masked.push(b'\t');
        }
        if field == b"\\N" {
            masked.extend_from_slice(field);
            continue;
        }
        let rule = rules.and_then(|r| r.get(i)).and_then(|r| r.as_ref());
        let v = match rule {
            Some((strategy, pattern)) => match engine.mask_value(field, *strategy, pattern, counts)
            {
                Some(v) => v,
                None => b"\\N".to_vec(),
            },
            None => engine
                .mask_text(field, counts)
                .unwrap_or_else(|| field.to_vec()),
        };
        masked.extend_from_slice(&v);
    }
    if line.len() < body.len() {
        masked.push(b'\n');
    }
    super::codec::put_frame(out, b'd', &masked);
}

/// ErrorResponse/NoticeResponse: detectors over every text field, and a
/// DETAIL like `Key (email)=(a@b.c) already exists.` loses its values when
/// a named column has a rule.
pub fn notice(tag: u8, body: &[u8], engine: &Engine, counts: &mut Counts, out: &mut BytesMut) {
    let mut fields = Vec::with_capacity(body.len() + 16);
    let mut rest = body;
    while let Some((&f, tail)) = rest.split_first() {
        if f == 0 {
            break;
        }
        let end = tail.iter().position(|b| *b == 0).unwrap_or(tail.len());
        let value = &tail[..end];
        rest = tail.get(end + 1..).unwrap_or(&[]);
        let keep_plain = matches!(f, b'S' | b'V' | b'C' | b'P' | b'p' | b'F' | b'L' | b'R');
        let mut v = if keep_plain {
            value.to_vec()
        } else {
            engine
                .mask_text(value, counts)
                .unwrap_or_else(|| value.to_vec())
        };
        if f == b'D' {
            v = key_detail(&v, engine, counts);
        }
        fields.push(f);
        fields.extend(v.iter().filter(|b| **b != 0));
        fields.push(0);
    }
    fields.push(0);
    super::codec::put_frame(out, tag, &fields);
}

fn key_detail(detail: &[u8], engine: &Engine, counts: &mut Counts) -> Vec<u8> {
    let Ok(text) = std::str::from_utf8(detail) else {
        return detail.to_vec();
    };
    let Some(open) = text.find("Key (") else {
        return detail.to_vec();
    };
    let Some(mid) = text[open..].find(")=(").map(|m| open + m) else {
        return detail.to_vec();
    };
    let Some(close) = text[mid + 3..].find(')').map(|c| mid + 3 + c) else {
        return detail.to_vec();
    };
    // The key's table is not named here, so any column rule redacts key values.
    if !engine.has_column_rules() {
        return detail.to_vec();
    }
    counts.add("column:key-detail", 1);
    format!("{}[REDACTED]{}", &text[..mid + 3], &text[close..]).into_bytes()
}

const SQL_SCAN_MAX: usize = 512 * 1024;

/// SQL text as recordings, reviews, webhooks and spans show it: detectors
/// run over each literal and comment on its own (PostgreSQL's scanner cuts
/// the tokens), so a match can never swallow SQL structure between two
/// literals. Keywords, names and operators are kept as they are. Text the
/// scanner rejects (PostgreSQL rejects it too) is masked as plain text.
pub fn sql(engine: &Engine, s: &str, counts: &mut Counts) -> String {
    use pg_query::protobuf::Token;
    if !engine.has_detectors() {
        return s.to_string();
    }
    // The scanner costs tens of bytes per token; a text this large (only on
    // connections that do not refuse it) is masked as plain text.
    if s.len() > SQL_SCAN_MAX {
        return text(engine, s, counts);
    }
    let Ok(tokens) = crate::policy::sqltext::scan_tokens(s) else {
        return text(engine, s, counts);
    };
    let valued = [
        Token::Sconst,
        Token::Usconst,
        Token::Xconst,
        Token::Bconst,
        Token::Iconst,
        Token::Fconst,
        Token::SqlComment,
        Token::CComment,
        Token::Ident,
        Token::Uident,
    ]
    .map(|t| t as i32);
    let mut out = String::with_capacity(s.len());
    let mut at = 0usize;
    for t in &tokens {
        let (start, end) = (t.start as usize, t.end as usize);
        let (Some(gap), Some(tok)) = (s.get(at..start), s.get(start..end)) else {
            continue;
        };
        out.push_str(gap);
        if valued.contains(&t.token) {
            out.push_str(&text(engine, tok, counts));
        } else {
            out.push_str(tok);
        }
        at = end;
    }
    out.push_str(s.get(at..).unwrap_or(""));
    out
}

/// How a `COPY ... TO STDOUT` is masked when column rules exist.
#[derive(Debug, PartialEq)]
pub enum CopyPlan {
    /// Not a COPY out: nothing to plan.
    NotCopyOut,
    /// Column rules by position.
    Rules(Vec<Rule>),
    /// The COPY cannot be masked by column rules: refuse it rather than leak.
    Refuse(String),
}

/// Plans masking for COPY TO STDOUT. With column rules: text format only,
/// one COPY per query, from a table the catalog resolves or with an explicit
/// column list. With detectors only: anything but binary format.
pub fn copy_plan(sql: &str, engine: &Engine, catalog: &Catalog) -> CopyPlan {
    // COPY is a keyword, and keywords cannot be escaped: no "copy", no COPY.
    if !sql
        .as_bytes()
        .windows(4)
        .any(|w| w.eq_ignore_ascii_case(b"copy"))
    {
        return CopyPlan::NotCopyOut;
    }
    let standard = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT)
        .map(|t| plan_of(&t, engine, catalog));
    if !sql.contains('\\') {
        // Unparsable: PostgreSQL cannot run it either.
        return standard.unwrap_or(CopyPlan::NotCopyOut);
    }
    // With standard_conforming_strings off the same text can hold another
    // COPY: a refusal under either reading wins.
    let escaped = pg_query::parse(
        sql,
        pg_query::ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS,
    )
    .map(|t| plan_of(&t, engine, catalog));
    match (standard, escaped) {
        (Ok(r @ CopyPlan::Refuse(_)), _) | (_, Ok(r @ CopyPlan::Refuse(_))) => r,
        (Ok(CopyPlan::NotCopyOut), Ok(p)) | (Ok(p), _) | (Err(_), Ok(p)) => p,
        (Err(_), Err(_)) => CopyPlan::NotCopyOut,
    }
}

fn plan_of(tree: &pg_query::ParseResult, engine: &Engine, catalog: &Catalog) -> CopyPlan {
    use pg_query::protobuf::node::Node as N;
    let mut plan = CopyPlan::NotCopyOut;
    for raw in &tree.protobuf.stmts {
        let Some(N::CopyStmt(c)) = raw.stmt.as_ref().and_then(|s| s.node.as_ref()) else {
            continue;
        };
        if c.is_from || c.is_program || !c.filename.is_empty() {
            continue;
        }
        if plan != CopyPlan::NotCopyOut {
            return CopyPlan::Refuse("only one COPY TO STDOUT per query can be masked".into());
        }
        plan = copy_out_plan(c, engine, catalog);
        if matches!(plan, CopyPlan::Refuse(_)) {
            return plan;
        }
    }
    plan
}

/// The plan for one COPY TO STDOUT: Rules or Refuse, never NotCopyOut.
fn copy_out_plan(c: &pg_query::protobuf::CopyStmt, engine: &Engine, catalog: &Catalog) -> CopyPlan {
    use pg_query::protobuf::node::Node as N;
    let format = copy_option(c, "format");
    if format.as_deref() == Some("binary") {
        // Column rules mask only plain text-format COPY: advise what works.
        let advice = if engine.has_column_rules() {
            "use text format (the default) without options, or SELECT"
        } else {
            "use text or csv format"
        };
        return CopyPlan::Refuse(format!("binary COPY TO STDOUT cannot be masked; {advice}"));
    }
    if !engine.has_column_rules() {
        return CopyPlan::Rules(Vec::new());
    }
    let plain = c.options.len() == usize::from(format.is_some())
        && format.as_deref().is_none_or(|f| f == "text");
    if !plain {
        return CopyPlan::Refuse("only text-format COPY TO STDOUT without options can be masked by column rules; use SELECT".into());
    }
    let Some(rel) = c.relation.as_ref().filter(|_| c.query.is_none()) else {
        return CopyPlan::Refuse(
            "COPY (query) TO STDOUT cannot be masked by column rules; run the query with SELECT"
                .into(),
        );
    };
    let (schema, table) = match copied_table(rel, catalog) {
        Ok(t) => t,
        Err(refuse) => return refuse,
    };
    let columns: Vec<&str> = c
        .attlist
        .iter()
        .filter_map(|n| match &n.node {
            Some(N::String(s)) => Some(s.sval.as_str()),
            _ => None,
        })
        .collect();
    if !columns.is_empty() {
        CopyPlan::Rules(
            columns
                .iter()
                .map(|c| {
                    engine
                        .column_rule(Some((&schema, &table)), c)
                        .map(|(s, p)| (s, p.to_string()))
                })
                .collect(),
        )
    } else {
        // A table the catalog does not list has no column a rule names.
        CopyPlan::Rules(
            catalog
                .tables
                .get(&(schema, table))
                .cloned()
                .unwrap_or_default(),
        )
    }
}

/// A COPY option's value in lower case ("" when it has no string value).
fn copy_option(c: &pg_query::protobuf::CopyStmt, name: &str) -> Option<String> {
    use pg_query::protobuf::node::Node as N;
    c.options.iter().find_map(|o| match &o.node {
        Some(N::DefElem(d)) if d.defname.eq_ignore_ascii_case(name) => {
            Some(match d.arg.as_ref().and_then(|a| a.node.as_ref()) {
                Some(N::String(v)) => v.sval.to_ascii_lowercase(),
                _ => String::new(),
            })
        }
        _ => None,
    })
}

/// The copied table as (schema, table); an unqualified name must be in at
/// most one schema of the catalog.
fn copied_table(
    rel: &pg_query::protobuf::RangeVar,
    catalog: &Catalog,
) -> Result<(String, String), CopyPlan> {
    // The parser already folded unquoted names to lower case.
    let t = rel.relname.clone();
    if !rel.schemaname.is_empty() {
        return Ok((rel.schemaname.clone(), t));
    }
    let found: Vec<&String> = catalog
        .tables
        .keys()
        .filter(|(_, tb)| *tb == t)
        .map(|(sc, _)| sc)
        .collect();
    match found.as_slice() {
        [] => Ok(("public".to_string(), t)),
        [one] => Ok(((*one).clone(), t)),
        _ => Err(CopyPlan::Refuse(format!(
            "table {t} exists in several schemas; qualify it as schema.{t}"
        ))),
    }
}

#[cfg(test)]
#[path = "masking_tests.rs"]
mod tests;

#[cfg(test)]
mod sql_text_tests {
    use super::*;
    use crate::mask::EngineConfig;
    use std::collections::BTreeMap;

    fn engine() -> Engine {
        let detectors: Vec<String> = vec!["private_key".into(), "email".into()];
        Engine::new(&EngineConfig {
            detectors: &detectors,
            custom: &BTreeMap::new(),
            columns: &BTreeMap::new(),
            detector_strategy: None,
            hash_key: None,
        })
        .unwrap()
    }

    #[test]
    fn what_the_approver_sees_keeps_the_structure() {
        // The review's attack: two markers around `or id > 0` hid it.
        let sql = "delete from orders where note = '-----BEGIN PRIVATE KEY-----' or id > 0 or note = '-----END PRIVATE KEY-----'";
        let shown = sql_masked(sql);
        assert!(shown.contains("' or id > 0 or note = '"), "{shown}");
        let tunnel = "select 1 /*-----BEGIN PRIVATE KEY-----*/; copy (delete from t returning *) to stdout; /*-----END PRIVATE KEY-----*/";
        let shown = sql_masked(tunnel);
        assert!(
            shown.contains("copy (delete from t returning *) to stdout"),
            "{shown}"
        );
        // Values inside literals and comments are still masked.
        let shown = sql_masked("select 'bob@example.com' /* alice@example.com */ from t");
        assert_eq!(shown, "select '[EMAIL]' /* [EMAIL] */ from t");
    }

    fn sql_masked(s: &str) -> String {
        sql(&engine(), s, &mut Counts::default())
    }
}
