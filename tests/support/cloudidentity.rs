//! A Cloud Identity stand-in: `GET /v1/groups/-/memberships:searchTransitiveGroups`
//! answered in the documented shape (`memberships[]` of GroupRelation with
//! `group`, `groupKey.id`, `displayName`, `roles`, `relationType`, `labels`;
//! `nextPageToken`), paged, with a 403 and a slow mode, counting its hits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

pub const LABEL: &str = "cloudidentity.googleapis.com/groups.discussion_forum";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Ok,
    /// 403 PERMISSION_DENIED, as for a service account without Groups Reader.
    Forbidden,
    /// Answers after 8 s, past the gateway's 5 s lookup timeout.
    Slow,
    /// 200 with a body that is not JSON.
    Garbage,
}

#[derive(Default)]
struct Inner {
    groups: Mutex<HashMap<String, Vec<String>>>,
    mode: Mutex<Option<Mode>>,
    /// Every request, pages included.
    requests: AtomicUsize,
    /// First-page requests per email: one per lookup.
    lookups: Mutex<HashMap<String, usize>>,
    page_size: usize,
    /// Added to every answer (concurrent lookups overlap within it).
    latency: Mutex<Duration>,
}

#[derive(Clone)]
pub struct CloudIdentity {
    pub url: String,
    inner: Arc<Inner>,
}

impl CloudIdentity {
    /// Serves a stand-in answering `page_size` memberships per page.
    pub fn start(page_size: usize) -> CloudIdentity {
        let inner = Arc::new(Inner {
            page_size,
            ..Default::default()
        });
        let router = Router::new()
            .route(
                "/v1/groups/-/memberships:searchTransitiveGroups",
                get(search),
            )
            .with_state(inner.clone());
        let url = format!("http://{}", super::serve_router(router));
        CloudIdentity { url, inner }
    }

    /// `email` is (transitively) in `groups`.
    pub fn member(&self, email: &str, groups: &[&str]) {
        self.inner.groups.lock().unwrap().insert(
            email.to_ascii_lowercase(),
            groups.iter().map(|g| g.to_string()).collect(),
        );
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.inner.mode.lock().unwrap() = Some(mode);
    }

    pub fn set_latency(&self, latency: Duration) {
        *self.inner.latency.lock().unwrap() = latency;
    }

    pub fn requests(&self) -> usize {
        self.inner.requests.load(Ordering::SeqCst)
    }

    /// How many lookups (first pages) were made for `email`.
    pub fn lookups(&self, email: &str) -> usize {
        let map = self.inner.lookups.lock().unwrap();
        map.get(&email.to_ascii_lowercase()).copied().unwrap_or(0)
    }
}

/// The email in `member_key_id == 'EMAIL' && 'LABEL' in labels`, unescaped;
/// None when the query is not exactly that shape.
pub fn member_of_query(q: &str) -> Option<String> {
    let rest = q.strip_prefix("member_key_id == '")?;
    let mut email = String::new();
    let mut chars = rest.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => email.push(chars.next()?.1),
            '\'' => {
                let tail = &rest[i..];
                return (tail == format!("' && '{LABEL}' in labels")).then_some(email);
            }
            c => email.push(c),
        }
    }
    None
}

fn google_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"error": {
        "code": status.as_u16(), "message": message, "status": code,
    }});
    (status, Json(body)).into_response()
}

async fn search(State(s): State<Arc<Inner>>, RawQuery(raw): RawQuery) -> Response {
    s.requests.fetch_add(1, Ordering::SeqCst);
    let params: HashMap<String, String> =
        url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let Some(email) = params.get("query").and_then(|q| member_of_query(q)) else {
        return google_error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "Request contains an invalid argument.",
        );
    };
    let offset: usize = match params.get("pageToken") {
        None => {
            *s.lookups
                .lock()
                .unwrap()
                .entry(email.to_ascii_lowercase())
                .or_default() += 1;
            0
        }
        Some(t) => t
            .strip_prefix("page-")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
    };
    let latency = *s.latency.lock().unwrap();
    tokio::time::sleep(latency).await;
    let mode = s.mode.lock().unwrap().unwrap_or(Mode::Ok);
    match mode {
        Mode::Forbidden => {
            return google_error(
                StatusCode::FORBIDDEN,
                "PERMISSION_DENIED",
                "Error(2028): Permission denied for resource groups (or it may not exist).",
            )
        }
        Mode::Slow => tokio::time::sleep(Duration::from_secs(8)).await,
        Mode::Garbage => return (StatusCode::OK, "<html>oops</html>").into_response(),
        Mode::Ok => {}
    }
    let all = s
        .groups
        .lock()
        .unwrap()
        .get(&email.to_ascii_lowercase())
        .cloned()
        .unwrap_or_default();
    let page: Vec<serde_json::Value> = all
        .iter()
        .enumerate()
        .skip(offset)
        .take(s.page_size)
        .map(|(i, g)| {
            serde_json::json!({
                "group": format!("groups/0{i:08x}"),
                "groupKey": {"id": g},
                "displayName": g.split('@').next().unwrap_or_default(),
                "roles": [{"role": "MEMBER"}],
                "relationType": if i % 2 == 0 { "DIRECT" } else { "INDIRECT" },
                "labels": {LABEL: ""},
            })
        })
        .collect();
    let mut body = serde_json::json!({ "memberships": page });
    if offset + s.page_size < all.len() {
        body["nextPageToken"] = format!("page-{}", offset + s.page_size).into();
    }
    Json(body).into_response()
}
