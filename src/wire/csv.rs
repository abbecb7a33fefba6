//! CSV answers (`Accept: text/csv`, `custody exec --format csv`), safe to
//! open in a spreadsheet.

/// CSV for spreadsheets. A cell a spreadsheet would run as a formula (it
/// starts with `=`, `+`, `-`, `@`, tab or carriage return) gets a leading
/// `'`, as OWASP's CSV injection guidance says, so `=HYPERLINK(...)` from a
/// table is shown, not followed. Plain numbers such as `-12.5` are left alone:
/// a spreadsheet reads them as numbers, never as formulas.
pub fn to_csv(columns: &[String], rows: &[Vec<Option<String>>]) -> String {
    fn field(out: &mut String, v: &str) {
        let neutral;
        let v = if formula_like(v) {
            neutral = format!("'{v}");
            neutral.as_str()
        } else {
            v
        };
        if v.contains([',', '"', '\n', '\r']) {
            out.push('"');
            out.push_str(&v.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(v);
        }
    }
    let mut out = String::new();
    for (i, c) in columns.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        field(&mut out, c);
    }
    out.push('\n');
    for row in rows {
        for (i, v) in row.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            field(&mut out, v.as_deref().unwrap_or(""));
        }
        out.push('\n');
    }
    out
}

/// Would a spreadsheet treat this cell as a formula?
fn formula_like(v: &str) -> bool {
    v.starts_with(['=', '+', '-', '@', '\t', '\r']) && !plain_number(v)
}

/// `-12`, `+3.5`, `-1e-9`: a sign, digits, at most one point, an optional exponent.
fn plain_number(v: &str) -> bool {
    let body = v.strip_prefix(['+', '-']).unwrap_or(v);
    let (mantissa, exponent) = match body.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e.strip_prefix(['+', '-']).unwrap_or(e))),
        None => (body, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some((i, f)) => {
            (digits(i) || i.is_empty())
                && (digits(f) || f.is_empty())
                && !(i.is_empty() && f.is_empty())
        }
        None => digits(mantissa),
    };
    mantissa_ok && exponent.is_none_or(digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_neutralises_formulas() {
        let cols = vec!["=cmd".to_string(), "b".to_string()];
        let rows = vec![
            vec![
                Some("=HYPERLINK(\"http://evil.example\",\"x\")".to_string()),
                Some("+1+1".to_string()),
            ],
            vec![
                Some("-2+3+cmd|' /C calc'!A0".to_string()),
                Some("@SUM(A1)".to_string()),
            ],
            vec![Some("\t=1".to_string()), Some("\r=1".to_string())],
            vec![Some("-12.5".to_string()), Some("+3e-7".to_string())],
            vec![Some("a=b".to_string()), None],
            vec![Some("-".to_string()), Some("-.".to_string())],
        ];
        assert_eq!(
            to_csv(&cols, &rows),
            "'=cmd,b\n\
             \"'=HYPERLINK(\"\"http://evil.example\"\",\"\"x\"\")\",'+1+1\n\
             '-2+3+cmd|' /C calc'!A0,'@SUM(A1)\n\
             '\t=1,\"'\r=1\"\n\
             -12.5,+3e-7\n\
             a=b,\n\
             '-,'-.\n"
        );
        for n in ["1", "-1", "+1.", "-.5", "1e5", "-1E+5"] {
            assert!(plain_number(n), "{n}");
        }
        for n in [
            "", "-", ".", "1e", "1..2", "-1e5x", "--1", "0x10", "inf", "-inf", "NaN",
        ] {
            assert!(!plain_number(n), "{n}");
        }
    }
}
