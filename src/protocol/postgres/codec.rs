//! Pure functions over PostgreSQL wire bytes for the server role: the
//! startup packets a client sends, the few frames the gateway inspects, and
//! the messages it writes itself. No I/O here.

use std::borrow::Cow;

use bytes::{Buf, BufMut, BytesMut};

use super::PgError;

pub const SSL_REQUEST: i32 = 80_877_103;
pub const GSSENC_REQUEST: i32 = 80_877_104;
pub const CANCEL_REQUEST: i32 = 80_877_102;
pub const PROTOCOL_3_0: i32 = 196_608;
/// Startup packets are small; libpq caps its own at 10000 bytes.
pub const MAX_STARTUP: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    Ssl,
    GssEnc,
    Cancel {
        pid: i32,
        key: i32,
    },
    Startup {
        minor: u16,
        params: Vec<(String, String)>,
    },
}

/// Decodes one untagged startup-phase packet. `Ok(None)`: need more bytes.
pub fn decode_startup(buf: &mut BytesMut) -> Result<Option<Startup>, PgError> {
    if buf.len() < 8 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 8 || len as usize > MAX_STARTUP {
        return Err(PgError::Protocol(format!(
            "invalid startup packet length {len}"
        )));
    }
    let len = len as usize;
    if buf.len() < len {
        return Ok(None);
    }
    let mut pkt = buf.split_to(len);
    pkt.advance(4);
    let code = pkt.get_i32();
    let msg = match code {
        SSL_REQUEST if len == 8 => Startup::Ssl,
        GSSENC_REQUEST if len == 8 => Startup::GssEnc,
        CANCEL_REQUEST if len == 16 => Startup::Cancel {
            pid: pkt.get_i32(),
            key: pkt.get_i32(),
        },
        c if c >> 16 == 3 => Startup::Startup {
            minor: (c & 0xffff) as u16,
            params: parse_params(&pkt)?,
        },
        c => {
            return Err(PgError::Protocol(format!(
                "unsupported startup code {c} (protocol {}.{})",
                c >> 16,
                c & 0xffff
            )))
        }
    };
    Ok(Some(msg))
}

fn parse_params(mut body: &[u8]) -> Result<Vec<(String, String)>, PgError> {
    let mut out = Vec::new();
    loop {
        let key = cstr(&mut body)?;
        if key.is_empty() {
            return Ok(out);
        }
        let value = cstr(&mut body)?;
        out.push((key.to_string(), value.to_string()));
    }
}

/// Reads a NUL-terminated UTF-8 string and advances past it.
pub fn cstr<'a>(body: &mut &'a [u8]) -> Result<&'a str, PgError> {
    let end = body
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| PgError::Protocol("unterminated string in message".into()))?;
    let s = std::str::from_utf8(&body[..end])
        .map_err(|_| PgError::Protocol("string in message is not UTF-8".into()))?;
    *body = &body[end + 1..];
    Ok(s)
}

/// Validates a tagged frame header; returns the body length.
pub fn frame_len(tag: u8, len_field: [u8; 4], max: usize) -> Result<usize, PgError> {
    let len = i32::from_be_bytes(len_field);
    if len < 4 {
        return Err(PgError::Protocol(format!(
            "message {:?} has invalid length {len}",
            tag as char
        )));
    }
    let body = len as usize - 4;
    if body > max {
        return Err(PgError::TooLarge {
            tag: tag as char,
            len: body,
            max,
        });
    }
    Ok(body)
}

pub fn put_frame(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.reserve(5 + body.len());
    out.put_u8(tag);
    out.put_i32(body.len() as i32 + 4);
    out.put_slice(body);
}

/// Writes a frame whose body is produced by `f`, patching the length after.
fn put_with(out: &mut BytesMut, tag: u8, f: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let at = out.len();
    out.put_i32(0);
    f(out);
    let len = (out.len() - at) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(out: &mut BytesMut, s: &str) {
    // A NUL inside would end the field early on the client; drop it.
    out.extend(s.bytes().filter(|b| *b != 0));
    out.put_u8(0);
}

pub fn error_response(
    out: &mut BytesMut,
    severity: &str,
    code: &str,
    message: &str,
    hint: Option<&str>,
) {
    put_with(out, b'E', |o| {
        o.put_u8(b'S');
        put_cstr(o, severity);
        o.put_u8(b'V');
        put_cstr(o, severity);
        o.put_u8(b'C');
        put_cstr(o, code);
        o.put_u8(b'M');
        put_cstr(o, message);
        if let Some(h) = hint {
            o.put_u8(b'H');
            put_cstr(o, h);
        }
        o.put_u8(0);
    });
}

pub fn auth_ok(out: &mut BytesMut) {
    put_frame(out, b'R', &0i32.to_be_bytes());
}

pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    put_with(out, b'S', |o| {
        put_cstr(o, name);
        put_cstr(o, value);
    });
}

pub fn backend_key_data(out: &mut BytesMut, pid: i32, key: i32) {
    put_with(out, b'K', |o| {
        o.put_i32(pid);
        o.put_i32(key);
    });
}

pub fn ready_for_query(out: &mut BytesMut, status: u8) {
    put_frame(out, b'Z', &[status]);
}

/// Tells a client asking for 3.x (x > 0) that we speak 3.0.
pub fn negotiate_protocol_version(out: &mut BytesMut, unsupported: &[&str]) {
    put_with(out, b'v', |o| {
        o.put_i32(PROTOCOL_3_0);
        o.put_i32(unsupported.len() as i32);
        for u in unsupported {
            put_cstr(o, u);
        }
    });
}

pub fn startup_message(out: &mut BytesMut, params: &[(&str, &str)]) {
    let at = out.len();
    out.put_i32(0);
    out.put_i32(PROTOCOL_3_0);
    for (k, v) in params {
        put_cstr(out, k);
        put_cstr(out, v);
    }
    out.put_u8(0);
    let len = (out.len() - at) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

pub fn cancel_request(pid: i32, key: i32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&16i32.to_be_bytes());
    b[4..8].copy_from_slice(&CANCEL_REQUEST.to_be_bytes());
    b[8..12].copy_from_slice(&pid.to_be_bytes());
    b[12..].copy_from_slice(&key.to_be_bytes());
    b
}

/// Query ('Q') body → SQL text.
pub fn query_sql(mut body: &[u8]) -> Result<Cow<'_, str>, PgError> {
    Ok(client_text(cbytes(&mut body)?))
}

/// Parse ('P') body → (statement name, SQL).
pub fn parse_msg(mut body: &[u8]) -> Result<(Cow<'_, str>, Cow<'_, str>), PgError> {
    let name = client_text(cbytes(&mut body)?);
    let sql = client_text(cbytes(&mut body)?);
    Ok((name, sql))
}

/// A NUL-terminated byte string, in whatever encoding the client uses.
pub fn cbytes<'a>(body: &mut &'a [u8]) -> Result<&'a [u8], PgError> {
    let end = body
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| PgError::Protocol("unterminated string in message".into()))?;
    let s = &body[..end];
    *body = &body[end + 1..];
    Ok(s)
}

/// Client text as the gateway reads it. Every encoding PostgreSQL accepts
/// while statements are inspected is ASCII-safe (the others are refused at
/// startup and on SET): ASCII bytes are themselves, and bytes >= 0x80 only
/// ever form non-ASCII characters. So text that is not UTF-8 is read byte
/// by byte as Latin-1, which keeps every quote, backslash and keyword
/// exactly where PostgreSQL sees it (non-ASCII letters may print oddly).
pub fn client_text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(bytes.iter().map(|&b| b as char).collect()),
    }
}

/// Bind ('B') body → (portal, statement).
pub fn bind_msg(mut body: &[u8]) -> Result<(&str, &str), PgError> {
    let portal = cstr(&mut body)?;
    let stmt = cstr(&mut body)?;
    Ok((portal, stmt))
}

/// Bind ('B') body → its result-format codes (after parameters).
pub fn bind_result_formats(body: &[u8]) -> Result<Vec<i16>, PgError> {
    let short = || PgError::Protocol("malformed Bind message".into());
    let mut rest = body;
    cstr(&mut rest)?;
    cstr(&mut rest)?;
    let take_i16 = |r: &mut &[u8]| -> Result<i16, PgError> {
        if r.len() < 2 {
            return Err(short());
        }
        let v = i16::from_be_bytes([r[0], r[1]]);
        *r = &r[2..];
        Ok(v)
    };
    let nfmt = take_i16(&mut rest)?.max(0) as usize;
    if rest.len() < nfmt * 2 {
        return Err(short());
    }
    rest = &rest[nfmt * 2..];
    let nparams = take_i16(&mut rest)?.max(0);
    for _ in 0..nparams {
        if rest.len() < 4 {
            return Err(short());
        }
        let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        rest = &rest[4..];
        if len > 0 {
            let len = len as usize;
            if rest.len() < len {
                return Err(short());
            }
            rest = &rest[len..];
        }
    }
    let nres = take_i16(&mut rest)?.max(0) as usize;
    (0..nres).map(|_| take_i16(&mut rest)).collect()
}

/// Describe ('D', client side) body → (b'S' | b'P', name).
pub fn describe_msg(body: &[u8]) -> Result<(u8, &str), PgError> {
    close_msg(body)
}

/// Execute ('E') body → portal.
pub fn execute_portal(mut body: &[u8]) -> Result<&str, PgError> {
    cstr(&mut body)
}

/// Close ('C', client side) body → (b'S' | b'P', name).
pub fn close_msg(body: &[u8]) -> Result<(u8, &str), PgError> {
    let (&kind, mut rest) = body
        .split_first()
        .ok_or_else(|| PgError::Protocol("empty Close message".into()))?;
    Ok((kind, cstr(&mut rest)?))
}

/// FunctionCall ('F') body → (function OID, number of arguments). The
/// argument values are payload: never read here.
pub fn function_call(body: &[u8]) -> Result<(u32, u16), PgError> {
    let bad = || PgError::Protocol("malformed FunctionCall message".into());
    let oid = body.get(..4).ok_or_else(bad)?;
    let oid = u32::from_be_bytes([oid[0], oid[1], oid[2], oid[3]]);
    let nfmt = body.get(4..6).ok_or_else(bad)?;
    let nfmt = usize::from(u16::from_be_bytes([nfmt[0], nfmt[1]]));
    let at = 6 + 2 * nfmt;
    let nargs = body.get(at..at + 2).ok_or_else(bad)?;
    Ok((oid, u16::from_be_bytes([nargs[0], nargs[1]])))
}

/// Fields of an ErrorResponse/NoticeResponse that are safe to record:
/// severity, SQLSTATE and primary message (DETAIL may echo row values).
pub fn error_fields(body: &[u8]) -> (String, String) {
    let (mut code, mut message) = (String::new(), String::new());
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        rest = tail;
        let Ok(v) = cstr(&mut rest) else { break };
        match field {
            b'C' => code = v.to_string(),
            b'M' => message = v.to_string(),
            _ => {}
        }
    }
    (code, message)
}

/// An ErrorResponse body with only the fields that describe the error
/// itself (severity, code, message, detail, hint). What the gateway's
/// refusal mechanism adds (CONTEXT, position, internal query, source file,
/// line and routine) points into a DO block the client never sent.
pub fn error_without_mechanism(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let Some(end) = tail.iter().position(|&b| b == 0) else {
            break;
        };
        if matches!(field, b'S' | b'V' | b'C' | b'M' | b'D' | b'H') {
            out.push(field);
            out.extend_from_slice(&tail[..=end]);
        }
        rest = &tail[end + 1..];
    }
    out.push(0);
    out
}

/// A DataRow body → its values as text (lossy UTF-8), None for NULL.
pub fn text_row(mut body: &[u8]) -> Result<Vec<Option<String>>, PgError> {
    let short = || PgError::Protocol("short DataRow".into());
    if body.len() < 2 {
        return Err(short());
    }
    let n = body.get_i16().max(0) as usize;
    let mut row = Vec::with_capacity(n.min(1664));
    for _ in 0..n {
        if body.len() < 4 {
            return Err(short());
        }
        let len = body.get_i32();
        if len < 0 {
            row.push(None);
            continue;
        }
        let len = len as usize;
        if body.len() < len {
            return Err(short());
        }
        let (v, rest) = body.split_at(len);
        row.push(Some(String::from_utf8_lossy(v).into_owned()));
        body = rest;
    }
    Ok(row)
}

/// CommandComplete tag → rows affected or returned, when the tag says.
pub fn tag_rows(tag: &str) -> u64 {
    let mut words = tag.split(' ');
    match words.next() {
        Some("SELECT" | "UPDATE" | "DELETE" | "FETCH" | "MOVE" | "COPY" | "MERGE") => {
            words.next_back().and_then(|n| n.parse().ok()).unwrap_or(0)
        }
        Some("INSERT") => words.nth(1).and_then(|n| n.parse().ok()).unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_calls_read_their_oid_and_argument_count_only() {
        let call = [0, 0, 3, 103, 0, 2, 0, 0, 0, 1, 0, 1, 0, 0, 0, 1, b'x', 0, 0];
        assert_eq!(function_call(&call).ok(), Some((871, 1)));
        for cut in [0, 3, 5, 9, 11] {
            assert!(function_call(&call[..cut]).is_err(), "cut at {cut}");
        }
        // A format count past the body is an error, not an allocation.
        assert!(function_call(&[0, 0, 0, 1, 0xff, 0xff]).is_err());
    }

    #[test]
    fn refusal_errors_lose_the_mechanisms_fields() {
        let body = b"SERROR\0VERROR\0C42501\0Mcustody: no\0WPL/pgSQL function inline_code_block line 1 at RAISE\0Fpl_exec.c\0L3911\0Rexec_stmt_raise\0\0";
        let got = error_without_mechanism(body);
        assert_eq!(&got[..], b"SERROR\0VERROR\0C42501\0Mcustody: no\0\0");
    }

    fn packet(code: i32, rest: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_i32(8 + rest.len() as i32);
        b.put_i32(code);
        b.put_slice(rest);
        b
    }

    #[test]
    fn startup_packets() {
        assert_eq!(
            decode_startup(&mut packet(SSL_REQUEST, b"")).unwrap(),
            Some(Startup::Ssl)
        );
        assert_eq!(
            decode_startup(&mut packet(GSSENC_REQUEST, b"")).unwrap(),
            Some(Startup::GssEnc)
        );
        let mut c = packet(CANCEL_REQUEST, &[0, 0, 0, 7, 0, 0, 0, 9]);
        assert_eq!(
            decode_startup(&mut c).unwrap(),
            Some(Startup::Cancel { pid: 7, key: 9 })
        );
        let mut s = packet(PROTOCOL_3_0, b"user\0bob\0database\0app\0\0");
        let Some(Startup::Startup { minor: 0, params }) = decode_startup(&mut s).unwrap() else {
            panic!()
        };
        assert_eq!(params[1], ("database".into(), "app".into()));
    }

    #[test]
    fn startup_needs_more_and_rejects_garbage() {
        let full = packet(PROTOCOL_3_0, b"user\0bob\0\0");
        let mut half = BytesMut::from(&full[..10]);
        assert_eq!(decode_startup(&mut half).unwrap(), None);
        assert!(decode_startup(&mut packet(1234, b"")).is_err());
        let mut short = BytesMut::from(&[0u8, 0, 0, 2, 0, 0, 0, 0][..]);
        assert!(decode_startup(&mut short).is_err());
        let mut huge = BytesMut::from(&[0x7fu8, 0, 0, 0, 0, 3, 0, 0][..]);
        assert!(decode_startup(&mut huge).is_err());
        let mut unterminated = packet(PROTOCOL_3_0, b"user\0bob");
        assert!(decode_startup(&mut unterminated).is_err());
    }

    #[test]
    fn frames_and_fields() {
        assert!(frame_len(b'Q', 3i32.to_be_bytes(), 100).is_err());
        assert!(frame_len(b'Q', 200i32.to_be_bytes(), 100).is_err());
        assert_eq!(frame_len(b'Q', 9i32.to_be_bytes(), 100).unwrap(), 5);
        let mut e = BytesMut::new();
        error_response(&mut e, "ERROR", "42P01", "no such table", None);
        assert_eq!(e[0], b'E');
        assert_eq!(
            error_fields(&e[5..]),
            ("42P01".to_string(), "no such table".to_string())
        );
        assert_eq!(tag_rows("SELECT 12"), 12);
        assert_eq!(tag_rows("INSERT 0 3"), 3);
        assert_eq!(tag_rows("CREATE TABLE"), 0);
    }
}
