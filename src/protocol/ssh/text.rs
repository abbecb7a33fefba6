//! Turns an SSH output byte stream into text for masking and recording.
//! Chunks split anywhere, including inside a UTF-8 character or inside a
//! value a detector should catch, so both are carried to the next chunk.

/// Longest unfinished line held back for masking; a longer one is released
/// (masked) so a stream without newlines cannot grow the buffer.
pub const MAX_HELD: usize = 4096;

#[derive(Default)]
pub struct StreamText {
    /// Bytes of a UTF-8 character cut by the chunk boundary (at most 3).
    partial: Vec<u8>,
    /// Text after the last newline, held until the line ends (masking only).
    held: String,
}

impl StreamText {
    /// Text that is ready. With `hold_lines`, the unfinished last line is
    /// kept back (up to `MAX_HELD`) so a value split across chunks is seen
    /// whole; `flush` releases it.
    pub fn push(&mut self, bytes: &[u8], hold_lines: bool) -> String {
        let joined;
        let bytes = if self.partial.is_empty() {
            bytes
        } else {
            let mut b = std::mem::take(&mut self.partial);
            b.extend_from_slice(bytes);
            joined = b;
            &joined[..]
        };
        let (ready, cut) = bytes.split_at(complete_utf8(bytes));
        self.partial = cut.to_vec();
        let mut out = std::mem::take(&mut self.held);
        // Valid UTF-8 (nearly all output) is checked a word at a time;
        // the lossy path walks byte by byte, 7 instructions each.
        match std::str::from_utf8(ready) {
            Ok(s) => out.push_str(s),
            Err(_) => out.push_str(&String::from_utf8_lossy(ready)),
        }
        if hold_lines {
            let keep_from = out.rfind('\n').map(|i| i + 1).unwrap_or(0);
            if out.len() - keep_from <= MAX_HELD {
                self.held = out.split_off(keep_from);
            }
        }
        out
    }

    /// Releases whatever is held (idle output such as a shell prompt, or the end).
    pub fn flush(&mut self) -> String {
        let mut out = std::mem::take(&mut self.held);
        if !self.partial.is_empty() {
            out.push_str(&String::from_utf8_lossy(&std::mem::take(&mut self.partial)));
        }
        out
    }

    pub fn holding(&self) -> bool {
        !self.held.is_empty() || !self.partial.is_empty()
    }
}

/// Length of the longest prefix that does not end inside a UTF-8 character.
fn complete_utf8(buf: &[u8]) -> usize {
    let n = buf.len();
    // A character is at most 4 bytes: look at the last 3 for an unfinished lead byte.
    for back in 1..=3.min(n) {
        let b = buf[n - back];
        if b & 0xC0 == 0x80 {
            continue; // continuation byte: keep looking for its lead
        }
        let need = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        };
        return if need > back { n - back } else { n };
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_split_anywhere_comes_out_whole() {
        let s = "héllo wörld — ✓ 🎉 end\n";
        for cut in 0..=s.len() {
            let mut t = StreamText::default();
            let mut out = t.push(&s.as_bytes()[..cut], false);
            out.push_str(&t.push(&s.as_bytes()[cut..], false));
            out.push_str(&t.flush());
            assert_eq!(out, s, "cut at {cut}");
        }
    }

    #[test]
    fn lines_are_held_until_they_end() {
        let mut t = StreamText::default();
        assert_eq!(t.push(b"alice@exa", true), "");
        assert!(t.holding());
        assert_eq!(t.push(b"mple.com\nnext", true), "alice@example.com\n");
        assert_eq!(t.flush(), "next");
        assert!(!t.holding());
    }

    #[test]
    fn long_lines_are_not_held_forever() {
        let mut t = StreamText::default();
        let long = vec![b'x'; MAX_HELD + 1];
        assert_eq!(t.push(&long, true).len(), MAX_HELD + 1);
        assert!(!t.holding());
    }

    #[test]
    fn invalid_utf8_is_replaced_not_dropped() {
        let mut t = StreamText::default();
        let out = t.push(&[b'a', 0xFF, b'b'], false);
        assert_eq!(out, "a\u{FFFD}b");
    }
}
