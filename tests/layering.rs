//! The layering of docs/ARCHITECTURE.md, checked on the source: a module
//! that reaches up the data path (a protocol importing ingress or HTTP
//! types, policy or mask importing protocol code, …) fails this test.

use std::path::{Path, PathBuf};

/// (layer, what its code must never name). Names are matched as paths in
/// code (comments are skipped): `crate::ingress` also covers
/// `crate::ingress::…` and `use crate::{ingress, …}`.
const RULES: &[(&str, &[&str])] = &[
    (
        "protocol",
        &[
            "crate::ingress",
            "crate::cli",
            "crate::client",
            "crate::Gateway",
            "axum",
            "http::",
            "HeaderMap",
        ],
    ),
    (
        "session",
        &[
            "crate::ingress",
            "crate::protocol",
            "crate::Gateway",
            "axum",
        ],
    ),
    (
        "policy",
        &[
            "crate::ingress",
            "crate::protocol",
            "crate::session",
            "crate::mask",
            "axum",
        ],
    ),
    (
        "mask",
        &[
            "crate::ingress",
            "crate::protocol",
            "crate::session",
            "crate::policy",
            "axum",
        ],
    ),
    // The dev issuer is an HTTP server of its own (axum), not part of ingress.
    (
        "identity",
        &["crate::ingress", "crate::protocol", "crate::session"],
    ),
    (
        "tap",
        &[
            "crate::ingress",
            "crate::protocol",
            "crate::session",
            "crate::policy",
        ],
    ),
    (
        "base",
        &[
            "crate::ingress",
            "crate::protocol",
            "crate::session",
            "crate::cli",
            "crate::client",
        ],
    ),
    ("ingress", &["crate::cli", "crate::client"]),
];

fn layer_of(rel: &Path) -> Option<&'static str> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    Some(match first {
        "protocol" => "protocol",
        "session" => "session",
        "policy" => "policy",
        "mask" => "mask",
        "identity" => "identity",
        "recording" | "telemetry" => "tap",
        "config" | "wire" | "secrets.rs" => "base",
        "ingress" => "ingress",
        _ => return None,
    })
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's code with line comments removed (doc comments name other
/// layers freely), and `crate::{a, b::c}` groups spelled out as
/// `crate::a crate::b::c`, so a grouped import is seen like a plain one.
fn code_of(text: &str) -> String {
    let mut code = String::new();
    for line in text.lines() {
        let line = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        code.push_str(line);
        code.push('\n');
    }
    let mut out = String::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::{") {
        out.push_str(&rest[..i]);
        let after = &rest[i + "crate::{".len()..];
        let end = after.find('}').unwrap_or(after.len());
        for item in after[..end].split(',') {
            out.push_str(" crate::");
            out.push_str(item.trim());
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Whether `code` names `what` as a path (not as part of a longer name).
fn names(code: &str, what: &str) -> bool {
    code.match_indices(what).any(|(i, _)| {
        let before = code[..i].chars().next_back();
        let after = code[i + what.len()..].chars().next();
        let starts = !before.is_some_and(|c| c.is_alphanumeric() || c == '_');
        let ends = what.ends_with("::") || !after.is_some_and(|c| c.is_alphanumeric() || c == '_');
        starts && ends
    })
}

#[test]
fn layers_only_import_down_the_data_path() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(
        files.len() > 40,
        "expected the crate's sources under {}",
        src.display()
    );
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src");
        let Some(layer) = layer_of(rel) else { continue };
        checked += 1;
        let code = code_of(&std::fs::read_to_string(file).expect("read source"));
        let forbidden = RULES
            .iter()
            .find(|(l, _)| *l == layer)
            .map(|(_, f)| *f)
            .unwrap_or(&[]);
        for what in forbidden {
            if names(&code, what) {
                broken.push(format!("{} ({layer}) names {what}", rel.display()));
            }
        }
    }
    assert!(checked > 40, "only {checked} files were checked");
    assert!(
        broken.is_empty(),
        "layering broken (see docs/ARCHITECTURE.md, 'Rules for each layer'):\n  {}",
        broken.join("\n  ")
    );
}

#[test]
fn the_checker_sees_grouped_and_plain_imports() {
    let code = code_of("use crate::{config, ingress::ApiError};\n// crate::protocol in a comment\nlet x = crate::Gateway::new();");
    assert!(names(&code, "crate::ingress"));
    assert!(names(&code, "crate::Gateway"));
    assert!(!names(&code, "crate::protocol"), "comments are not code");
    assert!(!names("crate::ingresses", "crate::ingress"));
    assert!(names("use axum::http::HeaderMap;", "axum"));
    assert!(!names("let maxum = 1;", "axum"));
}
