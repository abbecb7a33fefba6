//! Behind Identity-Aware Proxy: a browser (the console at /ui/) sends no
//! bearer token; IAP's signed `x-goog-iap-jwt-assertion` identifies the
//! user, verified like any ID token once IAP's issuer is configured. A
//! stand-in IAP signs with real EC keys (ES256, as IAP does) and serves its
//! JWKS as https://www.gstatic.com/iap/verify/public_key-jwk does.

mod support;

use std::sync::OnceLock;

use custody::identity::devissuer::DevIssuer;
use support::*;

const IAP: &str = "https://cloud.google.com/iap";
const IAP_AUD: &str = "/projects/123456789/locations/us-central1/services/custody";

fn iap() -> &'static (String, DevIssuer) {
    static IAP_KEYS: OnceLock<(String, DevIssuer)> = OnceLock::new();
    IAP_KEYS.get_or_init(|| {
        let dev = DevIssuer::generate(IAP).unwrap();
        let addr = serve_router(dev.router().unwrap());
        (format!("http://{addr}/jwks.json"), dev)
    })
}

fn assertion(signer: &DevIssuer, email: &str, aud: &str) -> String {
    let now = chrono::Utc::now().timestamp();
    let claims = serde_json::json!({
        "iss": IAP, "aud": aud, "sub": format!("accounts.google.com:{}", email.len()),
        "email": email, "hd": "example.com", "iat": now, "exp": now + 600,
    });
    signer
        .sign(&claims, jsonwebtoken::Algorithm::ES256)
        .unwrap()
}

fn gateway() -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("recordings");
    let issuer = format!(
        "[[identity.issuers]]\nissuer = \"{IAP}\"\njwks_uri = \"{}\"\naudiences = [\"{IAP_AUD}\"]\n\n[recording]\n",
        iap().0
    );
    let text = config(&store, "").replacen("[recording]\n", &issuer, 1);
    Gateway::start_with(dir, &text, store)
}

fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-s", "-w", "\n%{http_code}", &format!("{}{path}", gw.url)]);
    for (k, v) in headers {
        cmd.args(["-H", &format!("{k}: {v}")]);
    }
    let out = String::from_utf8_lossy(&cmd.output().unwrap().stdout).into_owned();
    let (body, code) = out.rsplit_once('\n').unwrap_or((&out, "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn iaps_signed_header_identifies_the_browser_user() {
    let gw = gateway();
    let good = assertion(&iap().1, "alice@example.com", IAP_AUD);
    let (code, body) = get(
        &gw,
        "/v1/connections",
        &[("x-goog-iap-jwt-assertion", &good)],
    );
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("\"principal\":\"user:alice@example.com\""),
        "{body}"
    );
    assert!(body.contains("\"pg\""), "{body}");
    // The console's own read API answers the same user.
    let (code, body) = get(&gw, "/v1/sessions", &[("x-goog-iap-jwt-assertion", &good)]);
    assert_eq!(code, 200, "{body}");

    // Not IAP's key, not this service's audience, or not IAP at all: refused.
    let forged = assertion(&issuer().dev, "alice@example.com", IAP_AUD);
    let other_aud = assertion(&iap().1, "alice@example.com", "/projects/1/apps/other");
    for bad in [forged.as_str(), other_aud.as_str(), "not-a-jwt"] {
        let (code, body) = get(&gw, "/v1/connections", &[("x-goog-iap-jwt-assertion", bad)]);
        assert_eq!(code, 401, "{body}");
    }
    // A bearer token, when sent, is what counts.
    let (code, _) = get(
        &gw,
        "/v1/connections",
        &[
            ("authorization", "Bearer nonsense"),
            ("x-goog-iap-jwt-assertion", &good),
        ],
    );
    assert_eq!(code, 401);

    // Another site's page cannot use the browser's sign-in to act.
    let post = |site: &str| {
        let out = std::process::Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "-X", "POST"])
            .arg(format!(
                "{}/v1/reviews/01a2330c-0000-7000-8000-000000000000/approve",
                gw.url
            ))
            .args(["-H", &format!("x-goog-iap-jwt-assertion: {good}")])
            .args(["-H", &format!("sec-fetch-site: {site}")])
            .args(["-H", "content-type: text/plain", "-d", "{}"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = post("cross-site");
    assert!(out.ends_with("403") && out.contains("cross_site"), "{out}");
    let out = post("same-origin");
    assert!(
        !out.contains("cross_site"),
        "the console's own calls pass: {out}"
    );
}
