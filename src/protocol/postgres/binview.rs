//! What detectors see of a binary-format value: the text PostgreSQL's
//! text format would have shown for the types that can hide PII in binary
//! (integers and numerics holding card or phone numbers, uuid, inet/cidr),
//! element by element for arrays and records, and the raw bytes besides,
//! so a value is never scanned less than its bytes. Pure and bounded: a
//! view is at most a few times the value's size.

const INT2: u32 = 21;
const INT4: u32 = 23;
const INT8: u32 = 20;
const MONEY: u32 = 790;
const FLOAT4: u32 = 700;
const FLOAT8: u32 = 701;
const NUMERIC: u32 = 1700;
const UUID: u32 = 2950;
const INET: u32 = 869;
const CIDR: u32 = 650;
/// Nesting of arrays of records of arrays… followed at most.
const MAX_DEPTH: usize = 4;

/// The text detectors scan for a binary value of `type_oid`.
pub fn text_view(v: &[u8], type_oid: u32) -> String {
    let mut out = String::new();
    decoded(v, type_oid, 0, &mut out);
    out.push('\n');
    out.push_str(&String::from_utf8_lossy(v));
    out
}

/// Appends the decoded text of `v` (nothing when it has no text form here).
fn decoded(v: &[u8], type_oid: u32, depth: usize, out: &mut String) {
    if let Some(t) = scalar(v, type_oid) {
        out.push_str(&t);
        return;
    }
    if depth >= MAX_DEPTH {
        return;
    }
    if let Some(items) = array(v).or_else(|| record(v)) {
        for (oid, item) in items {
            decoded(item, oid, depth + 1, out);
            out.push(',');
        }
        return;
    }
    // Text inside a composite or an array of text: as it is.
    if let Ok(t) = std::str::from_utf8(v) {
        out.push_str(t);
    }
}

fn scalar(v: &[u8], type_oid: u32) -> Option<String> {
    Some(match (type_oid, v.len()) {
        (INT2, 2) => i16::from_be_bytes(v.try_into().ok()?).to_string(),
        (INT4, 4) => i32::from_be_bytes(v.try_into().ok()?).to_string(),
        (INT8 | MONEY, 8) => i64::from_be_bytes(v.try_into().ok()?).to_string(),
        (FLOAT4, 4) => f32::from_be_bytes(v.try_into().ok()?).to_string(),
        (FLOAT8, 8) => f64::from_be_bytes(v.try_into().ok()?).to_string(),
        (NUMERIC, _) => numeric(v)?,
        (UUID, 16) => uuid::Uuid::from_slice(v).ok()?.hyphenated().to_string(),
        (INET | CIDR, _) => inet(v)?,
        _ => return None,
    })
}

/// PostgreSQL's binary inet/cidr (family, bits, is_cidr, length, address)
/// as `ADDRESS/BITS`.
fn inet(v: &[u8]) -> Option<String> {
    let (head, addr) = (v.get(..4)?, v.get(4..)?);
    let ip: std::net::IpAddr = match (head[0], addr.len()) {
        (2, 4) => std::net::Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]).into(),
        (3, 16) => {
            let mut b = [0u8; 16];
            b.copy_from_slice(addr);
            std::net::Ipv6Addr::from(b).into()
        }
        _ => return None,
    };
    Some(format!("{ip}/{}", head[1]))
}

fn be_i16(v: &[u8], at: usize) -> Option<i16> {
    Some(i16::from_be_bytes(v.get(at..at + 2)?.try_into().ok()?))
}

fn be_i32(v: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(v.get(at..at + 4)?.try_into().ok()?))
}

/// Binary numeric: digit count, weight, sign, scale, then base-10000 digits.
fn numeric(v: &[u8]) -> Option<String> {
    let ndigits = usize::try_from(be_i16(v, 0)?).ok()?;
    let weight = be_i16(v, 2)?;
    let sign = be_i16(v, 4)? as u16;
    if v.len() != 8 + 2 * ndigits || !matches!(sign, 0x0000 | 0x4000) {
        return None;
    }
    let digit = |i: usize| be_i16(v, 8 + 2 * i).unwrap_or(0);
    let mut s = String::from(if sign == 0x4000 { "-" } else { "" });
    if weight < 0 {
        s.push_str("0.");
        for _ in 0..(-(weight as i32) - 1).min(64) {
            s.push_str("0000");
        }
        for i in 0..ndigits {
            s.push_str(&format!("{:04}", digit(i)));
        }
        return Some(s);
    }
    let int_groups = weight as usize + 1;
    for i in 0..int_groups.min(ndigits.max(int_groups)).min(1024) {
        let d = if i < ndigits { digit(i) } else { 0 };
        if i == 0 {
            s.push_str(&d.to_string());
        } else {
            s.push_str(&format!("{d:04}"));
        }
    }
    if ndigits > int_groups {
        s.push('.');
        for i in int_groups..ndigits {
            s.push_str(&format!("{:04}", digit(i)));
        }
    }
    Some(s)
}

/// A binary array's elements with their type, when `v` is exactly one:
/// dimensions, a null flag, the element type, each dimension's size and
/// lower bound, then each element's length (-1: NULL) and bytes.
fn array(v: &[u8]) -> Option<Vec<(u32, &[u8])>> {
    let ndim = usize::try_from(be_i32(v, 0)?).ok()?;
    let flags = be_i32(v, 4)?;
    let elem = be_i32(v, 8)? as u32;
    if ndim > 6 || !matches!(flags, 0 | 1) {
        return None;
    }
    let mut at = 12;
    let mut count: usize = if ndim == 0 { 0 } else { 1 };
    for _ in 0..ndim {
        let n = usize::try_from(be_i32(v, at)?).ok()?;
        count = count.checked_mul(n)?;
        at += 8;
    }
    if count > v.len() {
        return None;
    }
    elements(v, at, count, |_| Some(elem))
}

/// A binary record's fields with their types: the field count, then for
/// each its type, length (-1: NULL) and bytes.
fn record(v: &[u8]) -> Option<Vec<(u32, &[u8])>> {
    let n = usize::try_from(be_i32(v, 0)?).ok()?;
    if n > v.len() {
        return None;
    }
    let mut items = Vec::with_capacity(n.min(1664));
    let mut at = 4;
    for _ in 0..n {
        let oid = be_i32(v, at)? as u32;
        let (item, next) = element(v, at + 4)?;
        items.extend(item.map(|i| (oid, i)));
        at = next;
    }
    (at == v.len()).then_some(items)
}

fn elements(
    v: &[u8],
    mut at: usize,
    count: usize,
    oid: impl Fn(usize) -> Option<u32>,
) -> Option<Vec<(u32, &[u8])>> {
    let mut items = Vec::with_capacity(count.min(4096));
    for i in 0..count {
        let (item, next) = element(v, at)?;
        items.extend(item.map(|x| (oid(i).unwrap_or(0), x)));
        at = next;
    }
    (at == v.len()).then_some(items)
}

/// One length-prefixed element at `at`: its bytes (None for NULL) and
/// where the next one starts.
fn element(v: &[u8], at: usize) -> Option<(Option<&[u8]>, usize)> {
    let len = be_i32(v, at)?;
    if len < 0 {
        return Some((None, at + 4));
    }
    let end = (at + 4).checked_add(len as usize)?;
    Some((Some(v.get(at + 4..end)?), end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_as_text_format_writes_them() {
        assert_eq!(
            scalar(&4111111111111111i64.to_be_bytes(), INT8).unwrap(),
            "4111111111111111"
        );
        assert_eq!(scalar(&(-42i32).to_be_bytes(), INT4).unwrap(), "-42");
        // numeric 4111111111111111: weight 3, digits 4111 1111 1111 1111.
        let mut n = vec![0, 4, 0, 3, 0, 0, 0, 0];
        for d in [4111i16, 1111, 1111, 1111] {
            n.extend_from_slice(&d.to_be_bytes());
        }
        assert_eq!(numeric(&n).unwrap(), "4111111111111111");
        // numeric 12.0034: weight 0, digits 12, 34 (scale 4).
        let n = [0, 2, 0, 0, 0, 0, 0, 4, 0, 12, 0, 34];
        assert_eq!(numeric(&n).unwrap(), "12.0034");
        // numeric 0.0005: weight -1, digit 5.
        let n = [0, 1, 0xff, 0xff, 0, 0, 0, 4, 0, 5];
        assert_eq!(numeric(&n).unwrap(), "0.0005");
        assert_eq!(inet(&[2, 24, 1, 4, 10, 1, 2, 0]).unwrap(), "10.1.2.0/24");
    }

    #[test]
    fn arrays_and_records_are_read_element_by_element() {
        // inet[] {10.1.2.3/32}
        let mut a = vec![0, 0, 0, 1, 0, 0, 0, 0];
        a.extend_from_slice(&INET.to_be_bytes());
        a.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]);
        a.extend_from_slice(&8i32.to_be_bytes());
        a.extend_from_slice(&[2, 32, 0, 4, 10, 1, 2, 3]);
        assert!(text_view(&a, 1041).contains("10.1.2.3/32"));
        // record (int8 4111111111111111, NULL)
        let mut r = 2i32.to_be_bytes().to_vec();
        r.extend_from_slice(&INT8.to_be_bytes());
        r.extend_from_slice(&8i32.to_be_bytes());
        r.extend_from_slice(&4111111111111111i64.to_be_bytes());
        r.extend_from_slice(&25u32.to_be_bytes());
        r.extend_from_slice(&(-1i32).to_be_bytes());
        assert!(text_view(&r, 2249).contains("4111111111111111"));
        // Garbage is not an array or a record, and is scanned as bytes.
        assert_eq!(array(b"not an array at all"), None);
        assert_eq!(record(&[0, 0, 0, 9]), None);
        assert!(text_view(b"a@example.com", 99999).contains("a@example.com"));
    }
}
