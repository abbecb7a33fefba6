//! The hot event lines of a recording (terminal output and input) written
//! without serde: serde_json escapes a string one byte at a time through a
//! table, which callgrind showed as 10 instructions per byte of SSH output,
//! a tenth of the gateway's cost. The bytes are exactly what serde_json
//! writes for the same event (tests compare them), so readers, the hash
//! chain and `verify` see no difference.

use std::io::Write;

use chrono::{DateTime, Utc};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Whether `b` needs escaping in a JSON string, as serde_json decides.
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// The high bit of each of 8 bytes (little-endian) that may need escaping
/// (SWAR: control bytes, `"`, `\\`). The lowest set bit is exact; bits
/// above it may be false (a borrow), so only the first is used.
fn escape_bits(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_in = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    // Below 0x20: the high bit of (b - 0x20) set while b's own is clear.
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    below_space | zero_in(w ^ (ONES * u64::from(b'"'))) | zero_in(w ^ (ONES * u64::from(b'\\')))
}

/// Appends `s` as a quoted JSON string, byte for byte as serde_json would.
pub fn string(buf: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    buf.reserve(bytes.len() + 2);
    buf.push(b'"');
    let mut start = 0;
    let mut i = 0;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let bits = escape_bits(u64::from_le_bytes(w));
        if bits == 0 {
            i += 8;
            continue;
        }
        let at = i + (bits.trailing_zeros() / 8) as usize;
        buf.extend_from_slice(&bytes[start..at]);
        escape(buf, bytes[at]);
        start = at + 1;
        i = at + 1;
    }
    for (at, b) in bytes.iter().enumerate().skip(i) {
        if needs_escape(*b) {
            buf.extend_from_slice(&bytes[start..at]);
            escape(buf, *b);
            start = at + 1;
        }
    }
    buf.extend_from_slice(&bytes[start..]);
    buf.push(b'"');
}

fn escape(buf: &mut Vec<u8>, b: u8) {
    let short = match b {
        b'"' => b'"',
        b'\\' => b'\\',
        0x08 => b'b',
        0x0c => b'f',
        b'\n' => b'n',
        b'\r' => b'r',
        b'\t' => b't',
        _ => {
            buf.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
            return;
        }
    };
    buf.extend_from_slice(&[b'\\', short]);
}

/// `{"seq":..,"ts":..,"type":"output","channel":..,"stream":..,"data":..}`.
pub fn output(
    buf: &mut Vec<u8>,
    seq: u64,
    ts: DateTime<Utc>,
    channel: u32,
    stream: &str,
    data: &str,
) {
    head(buf, seq, ts, "output", channel);
    buf.extend_from_slice(b",\"stream\":");
    string(buf, stream);
    buf.extend_from_slice(b",\"data\":");
    string(buf, data);
    buf.push(b'}');
}

/// `{"seq":..,"ts":..,"type":"input","channel":..,"data":..}`.
pub fn input(buf: &mut Vec<u8>, seq: u64, ts: DateTime<Utc>, channel: u32, data: &str) {
    head(buf, seq, ts, "input", channel);
    buf.extend_from_slice(b",\"data\":");
    string(buf, data);
    buf.push(b'}');
}

fn head(buf: &mut Vec<u8>, seq: u64, ts: DateTime<Utc>, kind: &str, channel: u32) {
    // Writing into a Vec cannot fail; `write!` formats without a String.
    let _ = write!(buf, "{{\"seq\":{seq}");
    buf.extend_from_slice(b",\"ts\":");
    // A timestamp serializes infallibly; serde writes it exactly as before.
    let _ = serde_json::to_writer(&mut *buf, &ts);
    buf.extend_from_slice(b",\"type\":\"");
    buf.extend_from_slice(kind.as_bytes());
    let _ = write!(buf, "\",\"channel\":{channel}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serde(s: &str) -> Vec<u8> {
        serde_json::to_vec(s).unwrap()
    }

    #[test]
    fn strings_match_serde_json_byte_for_byte() {
        let mut cases: Vec<String> = vec![
            String::new(),
            "plain ascii text".into(),
            "quote \" backslash \\ slash / del \u{7f}".into(),
            "héllo wörld — ✓ 🎉\u{2028}\u{2029}".into(),
            "\n\r\t\u{8}\u{c}\u{0}\u{1f}\u{1b}[0m".into(),
            "exactly8".into(),
            "1234567\"".into(),
            "\"1234567".into(),
        ];
        // Every byte value below 0x80 at every offset of a 17-byte string,
        // so each lands in the word path, the byte path and the tail.
        for b in 0u8..0x80 {
            for at in 0..17 {
                let mut s = vec![b'x'; 17];
                s[at] = b;
                cases.push(String::from_utf8(s).unwrap());
            }
        }
        for s in &cases {
            let mut ours = Vec::new();
            string(&mut ours, s);
            assert_eq!(ours, serde(s), "{s:?}");
        }
    }

    #[test]
    fn words_find_the_first_byte_serde_escapes() {
        for b in 0u8..=255 {
            for at in 0..8 {
                let mut w = [b'a'; 8];
                w[at] = b;
                let bits = escape_bits(u64::from_le_bytes(w));
                assert_eq!(bits != 0, needs_escape(b), "byte {b:#x} at {at}");
            }
        }
        // Mixed words: high bytes of UTF-8 next to the bytes that matter.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let first = x.to_le_bytes().iter().position(|b| needs_escape(*b));
            let bits = escape_bits(x);
            let ours = (bits != 0).then(|| (bits.trailing_zeros() / 8) as usize);
            assert_eq!(ours, first, "{x:#x}");
        }
    }

    #[test]
    fn output_and_input_lines_match_serde() {
        use crate::recording::{EventBody, EventRef};
        let ts = Utc::now();
        for data in ["", "ls -la\r\n", "a\"b\\c\u{1}é🎉\n"] {
            for body in [
                EventBody::Output {
                    channel: 3,
                    stream: "e".into(),
                    data: data.into(),
                },
                EventBody::Input {
                    channel: 0,
                    data: data.into(),
                },
            ] {
                let mut ours = Vec::new();
                crate::recording::encode(&mut ours, 42, ts, &body);
                let mut theirs = serde_json::to_vec(&EventRef {
                    seq: 42,
                    ts,
                    body: &body,
                })
                .unwrap();
                theirs.push(b'\n');
                assert_eq!(
                    String::from_utf8(ours).unwrap(),
                    String::from_utf8(theirs).unwrap()
                );
            }
        }
    }
}
