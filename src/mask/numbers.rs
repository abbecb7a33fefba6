//! Detectors for values made of digit groups: payment cards, US SSNs, phone
//! numbers, IPv4 addresses and IBANs.
//!
//! One pass cuts the text into runs of digit groups joined by short
//! separators (`4111 1111 1111 1111`, `(415) 555-0123`, `10.0.0.1`). Most runs
//! in ordinary text are years, prices and counts, dropped by a length check;
//! the rules below look at group lengths and separators of the few runs left,
//! so the shape checks are exact and need no regex.

use super::detectors::{
    card_issuer_known, iban_length, iban_mod97_valid, ipv4_valid, is_word, luhn_valid, nanp_valid,
    ssn_valid,
};
use super::scan::{Hit, Kind};
use super::{Builtin, Enabled};

/// Longer chains are cut; nothing we detect has more than 8 groups.
const MAX_GROUPS: usize = 16;

pub(crate) fn find(text: &[u8], enabled: Enabled, hits: &mut Vec<Hit>) {
    let mut i = 0;
    while let Some(next) = next_digit(text, i) {
        i = next;
        if enabled.has(Builtin::Iban) {
            find_iban(text, i, hits);
        }
        let (mut end, mut digits, mut count) = (i, 0, 0);
        for (start, stop) in groups(text, i) {
            (end, digits, count) = (stop, digits + stop - start, count + 1);
        }
        // Every value here has 8+ digits except an IPv4 (4 groups); most runs
        // in text (years, prices, times) stop here without building a `Run`.
        if digits >= 8 || count >= 4 {
            Run::parse(text, i).detect(enabled, hits);
        }
        i = end;
    }
}

/// Position of the first ASCII digit at or after `from`. Skips 8 bytes at a
/// time while a word has no digit (SWAR "has byte between" test), since
/// this skip is most of the cost of scanning clean text.
fn next_digit(text: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_digit = |x: u64| {
        // Sets a byte's high bit when b'0' - 1 < byte < b'9' + 1 (bytes >= 0x80 excluded by !x).
        let low = x & (ONES * 0x7f);
        (ONES * (0x7f + u64::from(b'9' + 1)) - low)
            & !x
            & (low + ONES * (0x7f - u64::from(b'0' - 1)))
            & HIGH
            != 0
    };
    let mut i = from;
    while let Some(chunk) = text.get(i..i + 8) {
        let word = u64::from_le_bytes([
            chunk[0], chunk[1], chunk[2], chunk[3], chunk[4], chunk[5], chunk[6], chunk[7],
        ]);
        if has_digit(word) {
            break;
        }
        i += 8;
    }
    text[i..]
        .iter()
        .position(u8::is_ascii_digit)
        .map(|off| i + off)
}

/// The digit groups, (start, end) each, of the run starting at the digit at
/// `start`: groups joined by separators, cut after `MAX_GROUPS`.
fn groups(text: &[u8], start: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut next = Some(start);
    std::iter::from_fn(move || {
        let group_start = next?;
        let mut i = group_start;
        while text.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let sep = separator_len(text, i);
        next = (sep > 0).then_some(i + sep);
        Some((group_start, i))
    })
    .take(MAX_GROUPS)
}

/// Digit groups, each (start, end), joined by separators of one or two bytes.
struct Run<'t> {
    text: &'t [u8],
    groups: [(usize, usize); MAX_GROUPS],
    len: usize,
}

impl<'t> Run<'t> {
    fn parse(text: &'t [u8], start: usize) -> Run<'t> {
        let mut run = Run {
            text,
            groups: [(0, 0); MAX_GROUPS],
            len: 0,
        };
        for (k, group) in groups(text, start).enumerate() {
            run.groups[k] = group;
            run.len = k + 1;
        }
        run
    }

    fn group(&self, k: usize) -> &'t [u8] {
        &self.text[self.groups[k].0..self.groups[k].1]
    }

    /// The separator after group `k`.
    fn sep(&self, k: usize) -> &'t [u8] {
        &self.text[self.groups[k].1..self.groups[k + 1].0]
    }

    fn digits(&self, i: usize, j: usize) -> usize {
        (i..=j).map(|k| self.group(k).len()).sum()
    }

    /// Whether a value may start at `pos` (in group `i` or just before it):
    /// inside a run, only after a separator with a space; at the run's start,
    /// only if not glued to a word (`BUILD-555`, `v10.0`).
    fn free_start(&self, i: usize, pos: usize) -> bool {
        if i == 0 {
            free_before(self.text, pos)
        } else {
            self.text[self.groups[i - 1].1..pos].contains(&b' ')
        }
    }

    /// Whether a value may end after group `j`; mirror of `free_start`.
    fn free_end(&self, j: usize) -> bool {
        if j + 1 == self.len {
            free_after(self.text, self.groups[j].1)
        } else {
            self.sep(j).contains(&b' ')
        }
    }

    fn detect(&self, enabled: Enabled, hits: &mut Vec<Hit>) {
        if enabled.has(Builtin::CreditCard) {
            self.find_cards(hits);
        }
        if enabled.has(Builtin::UsSsn) {
            self.find_ssns(hits);
        }
        if enabled.has(Builtin::Phone) {
            self.find_phones(hits);
        }
        if enabled.has(Builtin::IpAddress) {
            self.find_ipv4(hits);
        }
    }

    fn push(&self, hits: &mut Vec<Hit>, start: usize, j: usize, b: Builtin) {
        hits.push(Hit {
            start,
            end: self.groups[j].1,
            kind: Kind::Builtin(b),
        });
    }

    /// 13-19 digits: one bare group, or groups of 3-6 joined by the same
    /// single space or dash; Luhn-valid with a known issuer prefix. The
    /// longest candidate from each start wins.
    fn find_cards(&self, hits: &mut Vec<Hit>) {
        let mut i = 0;
        'start: while i < self.len {
            for j in (i..self.len).rev() {
                let n = self.digits(i, j);
                if n > 19 {
                    continue;
                }
                if n < 13 {
                    break;
                }
                if self.is_card(i, j) {
                    self.push(hits, self.groups[i].0, j, Builtin::CreditCard);
                    i = j + 1;
                    continue 'start;
                }
            }
            i += 1;
        }
    }

    fn is_card(&self, i: usize, j: usize) -> bool {
        if i < j {
            let sep = self.sep(i);
            let grouped = (i..=j).all(|k| (3..=6).contains(&self.group(k).len()));
            if !(sep == b" " || sep == b"-") || !grouped || (i..j).any(|k| self.sep(k) != sep) {
                return false;
            }
        }
        if !self.free_start(i, self.groups[i].0) || !self.free_end(j) {
            return false;
        }
        let mut buf = [0u8; 19];
        let mut n = 0;
        for k in i..=j {
            for &d in self.group(k) {
                buf[n] = d;
                n += 1;
            }
        }
        luhn_valid(&buf[..n]) && card_issuer_known(&buf[..n])
    }

    /// AAA-GG-SSSS with one separator kind (dash, space or dot) in valid ranges.
    fn find_ssns(&self, hits: &mut Vec<Hit>) {
        for i in 0..self.len.saturating_sub(2) {
            let (a, g, s) = (self.group(i), self.group(i + 1), self.group(i + 2));
            let sep = self.sep(i);
            if (a.len(), g.len(), s.len()) == (3, 2, 4)
                && matches!(sep, b"-" | b" " | b".")
                && self.sep(i + 1) == sep
                && self.free_start(i, self.groups[i].0)
                && self.free_end(i + 2)
                && ssn_valid(a, g, s)
            {
                self.push(hits, self.groups[i].0, i + 2, Builtin::UsSsn);
            }
        }
    }

    /// `+` and 8-15 digits (E.164, any grouping), or a North American number:
    /// `415-555-0123`, `415.555.0123`, `415 555 0123`, `(415) 555-0123`,
    /// optionally after a `1 ` / `1-` trunk prefix.
    fn find_phones(&self, hits: &mut Vec<Hit>) {
        let first = self.groups[0].0;
        let plus = first.checked_sub(1).filter(|&p| self.text[p] == b'+');
        if let Some(plus) = plus.filter(|&p| free_before(self.text, p) && self.text[first] != b'0')
        {
            for j in (0..self.len).rev() {
                let n = self.digits(0, j);
                if n > 15 {
                    continue;
                }
                if n >= 8 && self.free_end(j) {
                    self.push(hits, plus, j, Builtin::Phone);
                }
                break;
            }
        }
        for i in 0..self.len.saturating_sub(2) {
            let (area, exchange, line) = (self.group(i), self.group(i + 1), self.group(i + 2));
            if (area.len(), exchange.len(), line.len()) != (3, 3, 4) || !nanp_valid(area, exchange)
            {
                continue;
            }
            let area_start = self.groups[i].0;
            let paren = matches!(self.sep(i), b")" | b") ")
                && area_start > 0
                && self.text[area_start - 1] == b'(';
            if !(paren || matches!(self.sep(i), b"-" | b"." | b" "))
                || !matches!(self.sep(i + 1), b"-" | b"." | b" ")
            {
                continue;
            }
            let mut start = if paren { area_start - 1 } else { area_start };
            let mut first_group = i;
            // A trunk prefix "1 " / "1-" / "1 (" belongs to the number (unless that 1 ends an IP).
            let trunk = i > 0
                && self.group(i - 1) == b"1"
                && matches!(&self.text[self.groups[i - 1].1..start], b" " | b"-" | b".")
                && self.free_start(i - 1, self.groups[i - 1].0);
            if trunk {
                first_group = i - 1;
                start = self.groups[i - 1].0;
            }
            if self.free_start(first_group, start) && self.free_end(i + 2) {
                self.push(hits, start, i + 2, Builtin::Phone);
            }
        }
    }

    /// Four groups of 1-3 digits joined by dots, each octet 0-255; a fifth
    /// dotted group makes it a version string, not an address.
    fn find_ipv4(&self, hits: &mut Vec<Hit>) {
        for i in 0..self.len.saturating_sub(3) {
            let dotted = (i..i + 3).all(|k| self.sep(k) == b".");
            let short = (i..i + 4).all(|k| self.group(k).len() <= 3);
            let (start, end) = (self.groups[i].0, self.groups[i + 3].1);
            if dotted
                && short
                && self.free_start(i, start)
                && self.free_end(i + 3)
                && ipv4_valid(&self.text[start..end])
            {
                self.push(hits, start, i + 3, Builtin::IpAddress);
            }
        }
    }
}

/// Length of the separator at `at`: one or two of ` -.()` followed by a digit.
fn separator_len(text: &[u8], at: usize) -> usize {
    let joins = |len: usize| {
        text.get(at..at + len)
            .is_some_and(|s| s.iter().all(|b| b" -.()".contains(b)))
            && text.get(at + len).is_some_and(u8::is_ascii_digit)
    };
    if joins(1) {
        1
    } else if joins(2) {
        2
    } else {
        0
    }
}

/// A value may start at `pos` unless it continues a word: directly
/// (`ID4111...`) or through a dash or dot (`BUILD-555-1234`, `v1.2.3.4`).
pub(crate) fn free_before(text: &[u8], pos: usize) -> bool {
    match pos.checked_sub(1).map(|p| text[p]) {
        None => true,
        Some(b) if is_word(b) => false,
        Some(b'-' | b'.') => !(pos >= 2 && is_word(text[pos - 2])),
        Some(_) => true,
    }
}

/// A value may end at `pos` unless a word continues it (`...0123-ext`);
/// a sentence's final dot is fine.
pub(crate) fn free_after(text: &[u8], pos: usize) -> bool {
    match text.get(pos) {
        None => true,
        Some(&b) if is_word(b) => false,
        Some(b'-' | b'.') => !text.get(pos + 1).is_some_and(|&b| is_word(b)),
        Some(_) => true,
    }
}

/// An IBAN starts with a country code right before the run's first digit:
/// `DE89 3704 0044 0532 0130 00`, `GB82WEST12345698765432`. The country's
/// length decides where it ends; single spaces may sit between characters.
fn find_iban(text: &[u8], digits_start: usize, hits: &mut Vec<Hit>) {
    let Some(start) = digits_start.checked_sub(2) else {
        return;
    };
    let country = &text[start..digits_start];
    if !country.iter().all(u8::is_ascii_uppercase) || !free_before(text, start) {
        return;
    }
    let Some(want) = iban_length(country) else {
        return;
    };
    let mut compact = [0u8; 34];
    let mut n = 0;
    let mut i = start;
    let alnum = |b: &u8| b.is_ascii_uppercase() || b.is_ascii_digit();
    while n < want {
        match text.get(i) {
            Some(&b) if alnum(&b) => {
                compact[n] = b;
                n += 1;
            }
            Some(b' ') if text.get(i + 1).is_some_and(alnum) => {}
            _ => return,
        }
        i += 1;
    }
    if free_after(text, i) && iban_mod97_valid(&compact[..n]) {
        hits.push(Hit {
            start,
            end: i,
            kind: Kind::Builtin(Builtin::Iban),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_digit_matches_the_plain_scan() {
        for byte in 0..=255u8 {
            for pos in 0..20 {
                let mut text = vec![b'a'; 24];
                text[pos] = byte;
                let want = text.iter().position(u8::is_ascii_digit);
                assert_eq!(next_digit(&text, 0), want, "byte {byte:#x} at {pos}");
                assert_eq!(next_digit(&text, pos + 1), None);
            }
        }
        assert_eq!(next_digit(b"", 0), None);
        assert_eq!(next_digit(b"\xff\x80\x7f/:9", 0), Some(5));
    }

    #[test]
    fn runs() {
        let text = b"tel (415) 555-0123, 10.0.0.1 and 2024";
        let run = Run::parse(text, 5);
        let cut: Vec<&[u8]> = (0..run.len).map(|k| run.group(k)).collect();
        assert_eq!(cut, [&b"415"[..], b"555", b"0123"]);
        assert_eq!((run.sep(0), run.sep(1)), (&b") "[..], &b"-"[..]));
        assert_eq!(groups(text, 20).count(), 4);
        assert_eq!(groups(b"1-".repeat(40).as_slice(), 0).count(), MAX_GROUPS);
    }
}
