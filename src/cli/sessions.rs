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
        mode,
        outcome,
        limit,
        format,
    } = args;
    let filter = recording::sessions::Filter {
        since: recording::sessions::parse_since(&since, chrono::Utc::now())
            .ok_or_else(|| CliError::Since(since.clone()))?,
        principal: principal.as_deref(),
        connection: connection.as_deref(),
        mode: mode.as_deref(),
        outcome: outcome.as_deref(),
        limit,
        ..Default::default()
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
