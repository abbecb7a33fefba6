//! `custody sessions`: recordings listed from the store by day, newest
//! first, summarised from their manifests (or first segment when unsealed).

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use super::seal;
use super::store::{self, ObjectStore};
use super::{Event, EventBody, RecordError};

#[derive(Debug, Clone, Serialize)]
pub struct SessionSummary {
    pub audit_id: String,
    pub started: Option<DateTime<Utc>>,
    pub principal: String,
    /// Who it was (`Principal::id()`), when recorded: not in the JSON of
    /// `custody sessions`, whose output stays as it was.
    #[serde(skip_serializing)]
    pub principal_id: Option<String>,
    pub connection: String,
    pub mode: String,
    pub statements: Option<u64>,
    pub rows: Option<u64>,
    /// The end reason, or "not sealed" (running, or its gateway stopped abruptly).
    pub outcome: String,
    pub sealed: bool,
}

#[derive(Default)]
pub struct Filter<'a> {
    pub since: DateTime<Utc>,
    pub principal: Option<&'a str>,
    pub connection: Option<&'a str>,
    pub mode: Option<&'a str>,
    pub outcome: Option<&'a str>,
    /// Only this principal identity's sessions (`Principal::id()`).
    pub owner: Option<&'a str>,
    /// Only sessions older than this audit id: the page token of the page before.
    pub before: Option<&'a str>,
    pub limit: usize,
}

impl Filter<'_> {
    /// Narrowed by what a session's summary says (not only by its id).
    fn narrowed(&self) -> bool {
        self.principal.is_some()
            || self.connection.is_some()
            || self.mode.is_some()
            || self.outcome.is_some()
            || self.owner.is_some()
    }

    fn admits(&self, s: &SessionSummary) -> bool {
        let is = |want: Option<&str>, have: &str| want.is_none_or(|w| w == have);
        is(self.principal, &s.principal)
            && is(self.connection, &s.connection)
            && is(self.mode, &s.mode)
            && is(self.outcome, &s.outcome)
            && self
                .owner
                .is_none_or(|o| s.principal_id.as_deref() == Some(o))
    }
}

/// "24h" / "7d" back from `now`, or a date or RFC 3339 time.
pub fn parse_since(s: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if let Ok(d) = crate::config::parse_duration(s) {
        return Some(now - Duration::from_std(d).ok()?);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    let d = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    Some(d.and_hms_opt(0, 0, 0)?.and_utc())
}

fn started_at(audit_id: &str) -> Option<DateTime<Utc>> {
    let ts = uuid::Uuid::parse_str(audit_id).ok()?.get_timestamp()?;
    let (secs, nanos) = ts.to_unix();
    DateTime::from_timestamp(i64::try_from(secs).ok()?, nanos)
}

pub(super) fn summarise(
    audit_id: &str,
    start: Option<&Event>,
    end: Option<&Event>,
    sealed: bool,
) -> SessionSummary {
    let mut s = SessionSummary {
        audit_id: audit_id.to_string(),
        started: start.map(|e| e.ts).or_else(|| started_at(audit_id)),
        principal: String::new(),
        principal_id: None,
        connection: String::new(),
        mode: String::new(),
        statements: None,
        rows: None,
        outcome: "not sealed".into(),
        sealed,
    };
    if let Some(EventBody::SessionStart {
        principal,
        principal_id,
        connection,
        mode,
        ..
    }) = start.map(|e| &e.body)
    {
        s.principal = principal.clone();
        s.principal_id = principal_id.clone();
        s.connection = connection.clone();
        s.mode = mode.clone();
    }
    match end.map(|e| &e.body) {
        Some(EventBody::SessionEnd {
            reason,
            statements,
            rows,
            ..
        }) => {
            s.outcome = reason.clone();
            s.statements = Some(*statements);
            s.rows = Some(*rows);
        }
        _ if sealed => s.outcome = "sealed".into(),
        _ => {}
    }
    s
}

async fn summary(store: &dyn ObjectStore, audit_id: &str) -> Result<SessionSummary, RecordError> {
    match store.get(&store::manifest_key(audit_id)).await {
        Ok(bytes) => {
            if let Ok((_, body, _)) = seal::parse_manifest(&bytes) {
                return Ok(summarise(
                    audit_id,
                    body.start.as_ref(),
                    body.end.as_ref(),
                    true,
                ));
            }
        }
        Err(RecordError::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    let first = match store.get(&store::segment_key(audit_id, 1)).await {
        Ok(first) => first,
        // Being written right now (its folder exists before its first
        // segment does): listed as not sealed, not an error.
        Err(RecordError::NotFound(_)) => return Ok(summarise(audit_id, None, None, false)),
        Err(e) => return Err(e),
    };
    let start: Option<Event> = first
        .split(|b| *b == b'\n')
        .nth(1)
        .and_then(|l| serde_json::from_slice(l).ok());
    // Refusals are sealed at once; a 403 shows as "refused" even unsealed.
    Ok(summarise(audit_id, start.as_ref(), None, false))
}

/// What `list` found: the sessions shown, and whether `limit` cut the list.
#[derive(Debug, Default)]
pub struct Listing {
    pub sessions: Vec<SessionSummary>,
    pub cut: Option<Cut>,
}

/// How much the limit left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Sessions in the period in all (exact: no principal or connection filter).
    Of(usize),
    /// At least one more session matches the filter (counting them all
    /// would read every one's manifest).
    More,
}

impl Listing {
    /// Where the next page starts (`Filter::before`), when this one was cut.
    pub fn next_page(&self) -> Option<&str> {
        self.cut?;
        self.sessions.last().map(|s| s.audit_id.as_str())
    }

    /// The stderr line that says the list is not everything, if it is not.
    pub fn notice(&self) -> Option<String> {
        let shown = self.sessions.len();
        match self.cut? {
            Cut::Of(total) => Some(format!(
                "custody: showing {shown} of {total} sessions; use --limit to see more"
            )),
            Cut::More => Some(format!(
                "custody: showing the newest {shown} matching sessions; more match, use --limit to see more"
            )),
        }
    }
}

/// Audit ids of recordings started since `since` (and before `before`,
/// when given), newest first: every day's folder from `before`'s day (or
/// today) back, each listed in full (the GCS lister follows pageToken).
async fn ids_since(
    store: &dyn ObjectStore,
    since: DateTime<Utc>,
    before: Option<&str>,
) -> Result<Vec<String>, RecordError> {
    let mut out = Vec::new();
    // A page token starts the walk at its own day: later pages stay cheap.
    let mut day = before
        .and_then(started_at)
        .unwrap_or_else(Utc::now)
        .date_naive();
    while day >= since.date_naive() {
        let dir = format!("{}/", day.format("%Y/%m/%d"));
        let mut ids: Vec<String> = store
            .list_dirs(&dir)
            .await?
            .into_iter()
            .filter_map(|d| {
                d.trim_end_matches('/')
                    .rsplit('/')
                    .next()
                    .map(str::to_string)
            })
            .filter(|id| started_at(id).is_some_and(|t| t >= since))
            // Audit ids are UUIDv7 in lowercase hex: text order is time order.
            .filter(|id| before.is_none_or(|b| id.as_str() < b))
            .collect();
        ids.sort();
        out.extend(ids.into_iter().rev());
        day -= Duration::days(1);
    }
    Ok(out)
}

/// Recordings started since `filter.since`, newest first, at most
/// `filter.limit` of them; says when the limit left some out.
pub async fn list(store: &dyn ObjectStore, filter: &Filter<'_>) -> Result<Listing, RecordError> {
    let ids = ids_since(store, filter.since, filter.before).await?;
    if !filter.narrowed() && ids.len() > filter.limit {
        let mut sessions = Vec::with_capacity(filter.limit);
        for id in &ids[..filter.limit] {
            sessions.push(summary(store, id).await?);
        }
        let cut = Some(Cut::Of(ids.len()));
        return Ok(Listing { sessions, cut });
    }
    let mut out = Listing::default();
    for id in &ids {
        let s = summary(store, id).await?;
        if !filter.admits(&s) {
            continue;
        }
        if out.sessions.len() >= filter.limit {
            out.cut = Some(Cut::More);
            break;
        }
        out.sessions.push(s);
    }
    Ok(out)
}

pub fn render(list: &[SessionSummary]) -> String {
    let mut out = format!(
        "{:<23}  {:<36}  {:<32}  {:<14}  {:<7}  {:>5}  {}\n",
        "STARTED (UTC)", "AUDIT ID", "PRINCIPAL", "CONNECTION", "MODE", "STMTS", "OUTCOME"
    );
    for s in list {
        out.push_str(&format!(
            "{:<23}  {:<36}  {:<32}  {:<14}  {:<7}  {:>5}  {}\n",
            s.started
                .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
                .unwrap_or_default(),
            super::escape(&s.audit_id),
            super::escape(&s.principal),
            super::escape(&s.connection),
            super::escape(&s.mode),
            s.statements
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
            super::escape(&s.outcome)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(principal: &str, id: Option<&str>, mode: &str, outcome: &str) -> SessionSummary {
        SessionSummary {
            audit_id: "01900000-0000-7000-8000-000000000000".into(),
            started: None,
            principal: principal.into(),
            principal_id: id.map(str::to_string),
            connection: "pg".into(),
            mode: mode.into(),
            statements: None,
            rows: None,
            outcome: outcome.into(),
            sealed: true,
        }
    }

    #[test]
    fn filters_match_exactly_and_owners_by_identity() {
        let s = summary(
            "user:alice@example.com",
            Some("principal://i/subject/a"),
            "exec",
            "completed",
        );
        assert!(Filter::default().admits(&s));
        let f = Filter {
            mode: Some("exec"),
            outcome: Some("completed"),
            connection: Some("pg"),
            ..Default::default()
        };
        assert!(f.admits(&s) && f.narrowed());
        assert!(!Filter {
            mode: Some("tunnel"),
            ..Default::default()
        }
        .admits(&s));
        assert!(!Filter {
            outcome: Some("complete"),
            ..Default::default()
        }
        .admits(&s));
        let mine = Filter {
            owner: Some("principal://i/subject/a"),
            ..Default::default()
        };
        assert!(mine.admits(&s));
        // The same name under another identity, or no identity recorded, is not the owner's.
        let other = summary(
            "user:alice@example.com",
            Some("principal://j/subject/a"),
            "exec",
            "completed",
        );
        assert!(!mine.admits(&other));
        let old = summary("user:alice@example.com", None, "exec", "completed");
        assert!(!mine.admits(&old));
    }

    #[test]
    fn since_is_a_duration_a_date_or_a_time() {
        let now = DateTime::parse_from_rfc3339("2026-12-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_since("24h", now), Some(now - Duration::hours(24)));
        assert_eq!(parse_since("7d", now), Some(now - Duration::days(7)));
        let day = parse_since("2026-11-30", now).unwrap();
        assert_eq!(day.to_rfc3339(), "2026-11-30T00:00:00+00:00");
        assert!(parse_since("2026-11-30T10:00:00+01:00", now).is_some());
        assert_eq!(parse_since("yesterday", now), None);
    }

    /// A file store makes a recording's folder before its first segment:
    /// a lister that looks in between sees a session starting, not an error.
    #[tokio::test]
    async fn a_recording_being_written_is_listed_unsealed() {
        let id = uuid::Uuid::now_v7().to_string();
        let mut objects = std::collections::BTreeMap::new();
        objects.insert(format!("{}partial.tmp", store::record_dir(&id)), Vec::new());
        let mem = store::MemStore::new(objects);
        let filter = Filter {
            since: Utc::now() - chrono::Duration::hours(1),
            limit: 10,
            ..Default::default()
        };
        let found = list(&mem, &filter).await.expect("listed");
        assert_eq!(found.sessions.len(), 1);
        assert_eq!(found.sessions[0].audit_id, id);
        assert!(!found.sessions[0].sealed);
    }
}
