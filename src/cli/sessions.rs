//! `custody sessions`: recorded sessions from the store, newest first.

use std::process::ExitCode;

use super::args::{ListFormat, SessionsArgs};
use super::CliError;
use crate::recording;

pub async fn run(args: SessionsArgs) -> Result<ExitCode, CliError> {
    let SessionsArgs {
        store,
        since,
        principal,
        connection,
        limit,
        format,
    } = args;
    let filter = recording::sessions::Filter {
        since: parse_since(&since)?,
        principal: principal.as_deref(),
        connection: connection.as_deref(),
        limit,
    };
    let store = recording::open_store(&store, None).await?;
    let listing = recording::sessions::list(store.as_ref(), &filter).await?;
    let list = &listing.sessions;
    match format {
        ListFormat::Json => println!("{}", serde_json::to_string_pretty(list)?),
        ListFormat::Text => print!("{}", recording::sessions::render(list)),
    }
    // On stderr, so JSON on stdout stays one document.
    if let Some(notice) = listing.notice() {
        eprintln!("{notice}");
    }
    Ok(ExitCode::SUCCESS)
}

/// "24h" / "7d" back from now, or a date or RFC 3339 time.
fn parse_since(s: &str) -> Result<chrono::DateTime<chrono::Utc>, CliError> {
    if let Ok(d) = crate::config::parse_duration(s) {
        let d = chrono::Duration::from_std(d)?;
        return Ok(chrono::Utc::now() - d);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        if let Some(t) = d.and_hms_opt(0, 0, 0) {
            return Ok(t.and_utc());
        }
    }
    Err(CliError::Since(s.to_string()))
}
