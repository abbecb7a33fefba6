//! The reviewers' console at `/ui/`: static pages embedded in the binary,
//! clients of `/v1/sessions` and `/v1/reviews`. No server-side state: each
//! call the console makes is authenticated on its own, by whatever stands
//! in front of it adding the bearer token (`custody ui` on a laptop, or a
//! proxy such as IAP); the pages never hold a token.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

/// name, content type, bytes. Third-party files are pinned (ui/vendor/README.md).
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("index.html", HTML, include_bytes!("../../ui/index.html")),
    ("app.js", JS, include_bytes!("../../ui/app.js")),
    ("sessions.js", JS, include_bytes!("../../ui/sessions.js")),
    ("session.js", JS, include_bytes!("../../ui/session.js")),
    ("reviews.js", JS, include_bytes!("../../ui/reviews.js")),
    ("style.css", CSS, include_bytes!("../../ui/style.css")),
    (
        "vendor/asciinema-player.min.js",
        JS,
        include_bytes!("../../ui/vendor/asciinema-player.min.js"),
    ),
    (
        "vendor/asciinema-player.css",
        CSS,
        include_bytes!("../../ui/vendor/asciinema-player.css"),
    ),
];

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Only this origin's own files and calls; the player compiles its
/// terminal emulator from WebAssembly (hence `wasm-unsafe-eval`, which
/// allows no JavaScript eval) and sets inline styles on its elements.
const CSP: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; font-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The embedded file at `path` under `/ui/` ("" is the index).
pub fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    let path = if path.is_empty() { "index.html" } else { path };
    ASSETS
        .iter()
        .find(|(name, _, _)| *name == path)
        .map(|(_, kind, bytes)| (*kind, *bytes))
}

fn serve(path: &str) -> Response {
    let Some((kind, bytes)) = asset(path) else {
        return (StatusCode::NOT_FOUND, "no such page\n").into_response();
    };
    let mut resp = bytes.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// `/ui`, `/ui/` and `/ui/{file}`: mounted by the gateway and by `custody ui`.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(|| async { serve("") }))
        .route(
            "/ui/{*path}",
            get(|Path(p): Path<String>| async move { serve(&p) }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_is_embedded_and_nothing_else_is_served() {
        assert_eq!(asset("").map(|a| a.0), Some(HTML));
        assert_eq!(asset("app.js").map(|a| a.0), Some(JS));
        assert!(asset("vendor/asciinema-player.min.js").is_some_and(|a| a.1.len() > 100_000));
        assert!(asset("../Cargo.toml").is_none());
        assert!(asset("vendor/").is_none());
    }
}
