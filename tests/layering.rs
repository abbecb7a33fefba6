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
/// layers freely; a `//` right after `:` is a URL, not a comment), and
/// `crate::{a, b::{c, d}}` groups spelled out as `crate::a crate::b::c
/// crate::b::d`, so a grouped import is seen like a plain one.
fn code_of(text: &str) -> String {
    let mut code = String::new();
    for line in text.lines() {
        let cut = line
            .match_indices("//")
            .find(|(i, _)| !line[..*i].ends_with(':'))
            .map(|(i, _)| i);
        code.push_str(&line[..cut.unwrap_or(line.len())]);
        code.push('\n');
    }
    let mut out = String::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::{") {
        out.push_str(&rest[..i]);
        let after = &rest[i + "crate::".len()..];
        let (paths, used) = group(after);
        for p in paths {
            out.push_str(" crate::");
            out.push_str(&p);
        }
        rest = &after[used..];
    }
    out.push_str(rest);
    out
}

/// The paths of a `{...}` group at the start of `s`, nested groups
/// expanded, and how many bytes the group took.
fn group(s: &str) -> (Vec<String>, usize) {
    let mut paths = Vec::new();
    let mut item = String::new();
    let mut i = 1; // past '{'
    let bytes = s.as_bytes();
    while i < bytes.len() {
        match bytes[i] {
            b'{' => {
                let (inner, used) = group(&s[i..]);
                let prefix = item.trim().to_string();
                paths.extend(inner.into_iter().map(|p| format!("{prefix}{p}")));
                item.clear();
                i += used;
                continue;
            }
            b',' => {
                if !item.trim().is_empty() {
                    paths.push(item.trim().to_string());
                }
                item.clear();
            }
            b'}' => {
                if !item.trim().is_empty() {
                    paths.push(item.trim().to_string());
                }
                return (paths, i + 1);
            }
            c => item.push(c as char),
        }
        i += 1;
    }
    (paths, s.len())
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
    // The service bundle and the server entry point are ingress's and lib's.
    let bundle = [
        "crate::Gateway",
        "crate::ServeError",
        "crate::run",
        "crate::SHUTDOWN_GRACE",
    ];
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
        let bundle_rule: &[&str] = if layer == "ingress" { &[] } else { &bundle };
        for what in forbidden.iter().chain(bundle_rule) {
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
    let nested = code_of("use crate::{policy::{decision, review}, ingress::ApiError};");
    assert!(names(&nested, "crate::ingress"), "{nested}");
    assert!(names(&nested, "crate::policy::review"), "{nested}");
    let url = code_of("let u = \"http://x\"; let g = crate::Gateway::new();");
    assert!(
        names(&url, "crate::Gateway"),
        "a URL is not a comment: {url}"
    );
}
