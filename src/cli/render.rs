//! An exec answer (`columns`, `rows`, `command_tag`) as a psql-style table
//! or as CSV.

/// The exec answer's columns and rows as CSV (see [`crate::wire::csv::to_csv`]).
pub(crate) fn csv_from_json(v: &serde_json::Value) -> String {
    let cell = |c: &serde_json::Value| match c {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    };
    let columns: Vec<String> = v["columns"]
        .as_array()
        .map(|a| a.iter().filter_map(cell).collect())
        .unwrap_or_default();
    let rows: Vec<Vec<Option<String>>> = v["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    r.as_array()
                        .map(|r| r.iter().map(cell).collect())
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default();
    crate::wire::csv::to_csv(&columns, &rows)
}

/// psql-style aligned output.
pub(crate) fn render_table(v: &serde_json::Value) -> String {
    let columns: Vec<String> = v["columns"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| c.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default();
    let tag = v["command_tag"].as_str().unwrap_or_default();
    if columns.is_empty() {
        return format!("{tag}\n");
    }
    let rows: Vec<Vec<String>> = v["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    r.as_array()
                        .map(|cells| {
                            cells
                                .iter()
                                .map(|c| c.as_str().unwrap_or("").to_string())
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default();
    let width = |i: usize| {
        rows.iter()
            .filter_map(|r| r.get(i))
            .map(|c| c.chars().count())
            .chain([columns[i].chars().count()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..columns.len()).map(width).collect();
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!(" {c:<w$} "))
            .collect::<Vec<_>>()
            .join("|")
            .trim_end()
            .to_string()
    };
    let mut out = String::new();
    out.push_str(&line(&columns));
    out.push('\n');
    out.push_str(
        &widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("+"),
    );
    out.push('\n');
    for r in &rows {
        out.push_str(&line(r));
        out.push('\n');
    }
    let n = rows.len();
    let more = if v["truncated"].as_bool() == Some(true) {
        ", truncated"
    } else {
        ""
    };
    out.push_str(&format!(
        "({n} row{}{more})\n",
        if n == 1 { "" } else { "s" }
    ));
    out
}
