//! Validators that turn a shape match into a confident hit: checksums (Luhn,
//! mod-97), issuer and range tables, and the parsing checks for IPs and JWTs.
//! Pure functions over ASCII bytes; the scanners in `scan.rs`/`numbers.rs`
//! decide where to call them.

use std::net::{Ipv4Addr, Ipv6Addr};

use base64::Engine as _;

/// A byte that continues a word: touching one means a value is part of a
/// longer identifier (`order_4111...`, `v10.0`).
pub(crate) fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The base64url alphabet used by JWTs and Google API keys.
pub(crate) fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Value of a short run of ASCII digits (callers pass at most 6).
fn number(digits: &[u8]) -> u32 {
    digits
        .iter()
        .fold(0, |acc, d| acc * 10 + u32::from(d.wrapping_sub(b'0')))
}

/// Luhn checksum over ASCII digits, as printed on payment cards.
pub(crate) fn luhn_valid(digits: &[u8]) -> bool {
    let mut sum = 0;
    for (i, &d) in digits.iter().rev().enumerate() {
        if !d.is_ascii_digit() {
            return false;
        }
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    !digits.is_empty() && sum % 10 == 0
}

/// Whether the number starts with a known issuer prefix (IIN) and has a length
/// that issuer uses. Cuts Luhn's 1-in-10 false positives on ordinary numbers.
pub(crate) fn card_issuer_known(digits: &[u8]) -> bool {
    let len = digits.len();
    if !(13..=19).contains(&len) || !digits.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let p = |n: usize| number(&digits[..n]);
    let (p2, p3, p4, p6) = (p(2), p(3), p(4), p(6));
    let long = (16..=19).contains(&len);
    let visa = digits[0] == b'4' && matches!(len, 13 | 16 | 19);
    let mastercard = ((51..=55).contains(&p2) || (2221..=2720).contains(&p4)) && len == 16;
    let amex = (p2 == 34 || p2 == 37) && len == 15;
    let discover =
        (p4 == 6011 || (644..=649).contains(&p3) || p2 == 65 || (622126..=622925).contains(&p6))
            && long;
    let diners =
        ((300..=305).contains(&p3) || p2 == 36 || p2 == 38 || p2 == 39) && (14..=19).contains(&len);
    let jcb = (3528..=3589).contains(&p4) && long;
    let unionpay = p2 == 62 && long;
    let maestro = matches!(p2, 50 | 56..=58 | 63 | 67);
    visa || mastercard || amex || discover || diners || jcb || unionpay || maestro
}

/// US SSN ranges the SSA never issues: area 000, 666 and 900-999, group 00,
/// serial 0000. Takes the three digit groups (3, 2 and 4 digits).
pub(crate) fn ssn_valid(area: &[u8], group: &[u8], serial: &[u8]) -> bool {
    let area = number(area);
    area != 0 && area != 666 && area < 900 && number(group) != 0 && number(serial) != 0
}

/// North American numbering plan: area code and exchange start with 2-9.
pub(crate) fn nanp_valid(area: &[u8], exchange: &[u8]) -> bool {
    matches!(area.first(), Some(b'2'..=b'9')) && matches!(exchange.first(), Some(b'2'..=b'9'))
}

/// IBAN length per country for the countries in the SWIFT registry that
/// customers are likely to hold; unknown countries are not detected.
pub(crate) fn iban_length(country: &[u8]) -> Option<usize> {
    let len = match country {
        b"NO" => 15,
        b"BE" => 16,
        b"DK" | b"FI" | b"FO" | b"GL" | b"NL" => 18,
        b"MK" | b"SI" => 19,
        b"AT" | b"BA" | b"EE" | b"KZ" | b"LT" | b"LU" | b"XK" => 20,
        b"CH" | b"HR" | b"LI" | b"LV" => 21,
        b"BG" | b"BH" | b"CR" | b"DE" | b"GB" | b"GE" | b"IE" | b"ME" | b"RS" => 22,
        b"AE" | b"GI" | b"IL" => 23,
        b"AD" | b"CZ" | b"ES" | b"MD" | b"PK" | b"RO" | b"SA" | b"SE" | b"SK" | b"TN" | b"VG" => 24,
        b"PT" => 25,
        b"IS" | b"TR" => 26,
        b"FR" | b"GR" | b"IT" | b"MC" | b"MR" | b"SM" => 27,
        b"AL" | b"AZ" | b"CY" | b"DO" | b"GT" | b"HU" | b"LB" | b"PL" => 28,
        b"BR" | b"EG" | b"PS" | b"QA" | b"UA" => 29,
        b"JO" | b"KW" | b"MU" => 30,
        b"MT" => 31,
        _ => return None,
    };
    Some(len)
}

/// ISO 13616 check: move the first four characters to the end, read letters
/// as 10..35, and the number mod 97 must be 1. Takes the compact form
/// (no spaces, upper case).
pub(crate) fn iban_mod97_valid(iban: &[u8]) -> bool {
    if iban.len() < 5 {
        return false;
    }
    let mut rem = 0u32;
    for &c in iban[4..].iter().chain(&iban[..4]) {
        rem = match c {
            b'0'..=b'9' => (rem * 10 + u32::from(c - b'0')) % 97,
            b'A'..=b'Z' => (rem * 100 + u32::from(c - b'A') + 10) % 97,
            _ => return false,
        };
    }
    rem == 1
}

fn parse_ascii<T: std::str::FromStr>(s: &[u8]) -> Option<T> {
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// Dotted-quad IPv4; std rejects octets over 255 and leading zeros.
pub(crate) fn ipv4_valid(s: &[u8]) -> bool {
    parse_ascii::<Ipv4Addr>(s).is_some()
}

/// IPv6 by std's parser, minus the forms that read as code rather than an
/// address: a bare `::`, or one hex word with no digit (`add::`, `Face::`).
pub(crate) fn ipv6_valid(s: &[u8]) -> bool {
    if s.iter().filter(|&&b| b == b':').count() < 2 || parse_ascii::<Ipv6Addr>(s).is_none() {
        return false;
    }
    let words = s.split(|&b| b == b':').filter(|w| !w.is_empty()).count();
    words >= 2 || (words == 1 && s.iter().any(u8::is_ascii_digit))
}

/// A JWT's first segment is base64url JSON naming its algorithm.
pub(crate) fn jwt_header_valid(segment: &[u8]) -> bool {
    let Ok(json) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(segment) else {
        return false;
    };
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&json)
        .is_ok_and(|header| header.contains_key("alg"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn() {
        for ok in [
            "4111111111111111",
            "5555555555554444",
            "378282246310005",
            "6011111111111117",
            "0",
        ] {
            assert!(luhn_valid(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "4111111111111112",
            "1234567812345678",
            "",
            "41111111111a1111",
        ] {
            assert!(!luhn_valid(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn issuers() {
        for ok in [
            "4111111111111111", // Visa 16
            "4222222222222",    // Visa 13
            "5555555555554444", // Mastercard
            "2223000048400011", // Mastercard 2-series
            "378282246310005",  // Amex
            "6011111111111117", // Discover
            "3530111333300000", // JCB
            "30569309025904",   // Diners 14
            "6200000000000005", // UnionPay
            "6759649826438453", // Maestro
        ] {
            assert!(card_issuer_known(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "1234567812345670", // no issuer starts with 1
            "9111111111111111",
            "41111111111111", // Visa never has 14 digits
            "37828224631000", // Amex is 15
            "411111111111",   // too short for any
            "72000000000000000",
        ] {
            assert!(!card_issuer_known(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn ssn_ranges() {
        let ok = |a: &str, g: &str, s: &str| ssn_valid(a.as_bytes(), g.as_bytes(), s.as_bytes());
        assert!(ok("078", "05", "1120"));
        assert!(ok("899", "99", "9999"));
        assert!(!ok("000", "12", "3456"));
        assert!(!ok("666", "12", "3456"));
        assert!(!ok("900", "12", "3456"));
        assert!(!ok("999", "12", "3456"));
        assert!(!ok("123", "00", "4567"));
        assert!(!ok("123", "45", "0000"));
    }

    #[test]
    fn nanp() {
        assert!(nanp_valid(b"415", b"555"));
        assert!(!nanp_valid(b"015", b"555"));
        assert!(!nanp_valid(b"415", b"155"));
    }

    #[test]
    fn iban() {
        for ok in [
            "DE89370400440532013000",
            "GB82WEST12345698765432",
            "FR1420041010050500013M02606",
            "NL91ABNA0417164300",
            "BE68539007547034",
            "CH9300762011623852957",
            "NO9386011117947",
        ] {
            assert!(iban_mod97_valid(ok.as_bytes()), "{ok}");
            assert_eq!(iban_length(&ok.as_bytes()[..2]), Some(ok.len()), "{ok}");
        }
        assert!(!iban_mod97_valid(b"DE89370400440532013001"));
        assert!(!iban_mod97_valid(b"GB82WEST1234569876543a"));
        assert!(!iban_mod97_valid(b"DE8"));
        assert_eq!(iban_length(b"ZZ"), None);
    }

    #[test]
    fn ips() {
        assert!(ipv4_valid(b"192.168.1.20"));
        assert!(ipv4_valid(b"0.0.0.0"));
        assert!(!ipv4_valid(b"256.1.1.1"));
        assert!(!ipv4_valid(b"10.0.19045.2965"));
        assert!(!ipv4_valid(b"01.2.3.4"));
        for ok in [
            "2001:db8::1",
            "::1",
            "fe80::1ff:fe23:4567:890a",
            "::ffff:10.0.0.1",
            "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
            "dead::beef",
        ] {
            assert!(ipv6_valid(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "::",
            "add::",
            "10:23:45",
            "00:1a:2b:3c:4d:5e",
            "1::2::3",
            "12345::1",
        ] {
            assert!(!ipv6_valid(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn jwt_header() {
        assert!(jwt_header_valid(b"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"));
        assert!(!jwt_header_valid(b"eyJ0eXAiOiJKV1QifQ")); // {"typ":"JWT"}: no alg
        assert!(!jwt_header_valid(b"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ")); // truncated JSON
        assert!(!jwt_header_valid(b"eyJ!!!"));
    }
}
