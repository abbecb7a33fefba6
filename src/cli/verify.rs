//! `custody verify`: checks a recording's signature, chain and order.

use std::path::PathBuf;
use std::process::ExitCode;

use super::args::VerifyArgs;
use super::CliError;
use crate::recording;

pub async fn run(args: VerifyArgs) -> Result<ExitCode, CliError> {
    let VerifyArgs {
        audit_id,
        store,
        public_key,
    } = args;
    let pinned = pinned_key(public_key)?;
    let store = recording::open_store(&store, None).await?;
    let rec = match recording::fetch(store.as_ref(), &audit_id).await {
        Ok(r) => r,
        Err(recording::RecordError::NotFound(what)) => {
            println!("recording {audit_id}: FAILED\n  problem: no recording {what}");
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e.into()),
    };
    let report = recording::verify::verify(&rec, pinned.as_ref());
    let verdict = if report.ok() { "VERIFIED" } else { "FAILED" };
    println!("recording {audit_id}: {verdict}");
    // Facts and problems quote recorded and stored names: escaped.
    for f in &report.facts {
        println!("  {}", recording::escape(f));
    }
    for p in &report.problems {
        println!("  problem: {}", recording::escape(p));
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `--public-key` for verify and replay: a PEM file, read and parsed.
pub(crate) fn pinned_key(
    path: Option<PathBuf>,
) -> Result<Option<ed25519_dalek::VerifyingKey>, CliError> {
    let Some(p) = path else {
        return Ok(None);
    };
    let pem = std::fs::read_to_string(&p).map_err(|source| CliError::Read {
        path: p.display().to_string(),
        source,
    })?;
    Ok(Some(recording::seal::verifying_key_from_pem(&pem)?))
}
