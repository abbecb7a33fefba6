//! sqlcommenter: every statement forwarded upstream ends with
//! `/*traceparent='…',custody_audit_id='…'*/`, so Cloud SQL Query Insights
//! and the server's own logs tie it to the trace and the recording. Pure
//! functions over bytes; the client's text is recorded without it.

use bytes::{BufMut, BytesMut};

/// The comment for a session (values URL-encoded, as sqlcommenter specifies).
pub fn sqlcommenter(traceparent: Option<&str>, audit_id: &str) -> String {
    let mut parts = Vec::new();
    if let Some(tp) = traceparent {
        parts.push(format!("traceparent='{}'", encode(tp)));
    }
    parts.push(format!("custody_audit_id='{}'", encode(audit_id)));
    format!("/*{}*/", parts.join(","))
}

/// Percent-encodes everything but unreserved characters, so no value can
/// close the comment or the quote.
fn encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether the statement already ends with a comment: a block comment, or a
/// line comment on its last line (where ours would be swallowed).
pub fn ends_with_comment(sql: &str) -> bool {
    let t = sql.trim_end();
    if t.ends_with("*/") {
        return true;
    }
    let last = t.rsplit('\n').next().unwrap_or(t);
    // A "--" inside a string literal on the last line counts too: skipping a
    // comment is always safe, appending one after an open line comment is not.
    last.contains("--")
}

/// A Query frame for `sql` with `comment` appended.
pub fn put_query(out: &mut BytesMut, sql: &str, comment: &str) {
    let len = 4 + sql.len() + 1 + comment.len() + 1;
    out.reserve(1 + len);
    out.put_u8(b'Q');
    out.put_i32(len as i32);
    out.put_slice(sql.as_bytes());
    out.put_u8(b' ');
    out.put_slice(comment.as_bytes());
    out.put_u8(0);
}

/// A Parse frame with `comment` appended to its SQL; `body` is the original
/// Parse body whose name and SQL are `name` and `sql`.
pub fn put_parse(out: &mut BytesMut, body: &[u8], name: &str, sql: &str, comment: &str) {
    let rest = body
        .get(name.len() + 1 + sql.len() + 1..)
        .unwrap_or_default();
    let len = 4 + name.len() + 1 + sql.len() + 1 + comment.len() + 1 + rest.len();
    out.reserve(1 + len);
    out.put_u8(b'P');
    out.put_i32(len as i32);
    out.put_slice(name.as_bytes());
    out.put_u8(0);
    out.put_slice(sql.as_bytes());
    out.put_u8(b' ');
    out.put_slice(comment.as_bytes());
    out.put_u8(0);
    out.put_slice(rest);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::postgres::codec;

    #[test]
    fn comment_shape_and_encoding() {
        let c = sqlcommenter(Some("00-4bf9-00f0-01"), "a'b*/c");
        assert_eq!(
            c,
            "/*traceparent='00-4bf9-00f0-01',custody_audit_id='a%27b%2A%2Fc'*/"
        );
        assert_eq!(sqlcommenter(None, "x"), "/*custody_audit_id='x'*/");
    }

    #[test]
    fn existing_comments_are_left_alone() {
        assert!(ends_with_comment("select 1 /* mine */ "));
        assert!(ends_with_comment("select 1 -- trailing"));
        assert!(!ends_with_comment("select 1 -- first\nfrom t"));
        assert!(!ends_with_comment("select '/*'"));
    }

    #[test]
    fn frames_stay_well_formed() {
        let mut out = BytesMut::new();
        put_query(&mut out, "select 1", "/*c*/");
        assert_eq!(codec::query_sql(&out[5..]).unwrap(), "select 1 /*c*/");
        let mut body = Vec::new();
        body.extend_from_slice(b"s1\0select $1\0\x00\x01\x00\x00\x00\x17");
        let mut out = BytesMut::new();
        put_parse(&mut out, &body, "s1", "select $1", "/*c*/");
        let len = i32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
        assert_eq!(len + 1, out.len());
        let (name, sql) = codec::parse_msg(&out[5..]).unwrap();
        assert_eq!((name.as_ref(), sql.as_ref()), ("s1", "select $1 /*c*/"));
        assert!(out.ends_with(b"\x00\x01\x00\x00\x00\x17"));
    }
}
