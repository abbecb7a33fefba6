//! `custody replay`: a session's recording, verified first, printed as
//! text, JSON lines or an asciicast.

use std::process::ExitCode;

use super::args::{ReplayArgs, ReplayFormat};
use super::verify::pinned_key;
use super::CliError;
use crate::recording;

pub async fn run(args: ReplayArgs) -> Result<ExitCode, CliError> {
    let ReplayArgs {
        audit_id,
        store,
        format,
        json,
        public_key,
        unverified,
    } = args;
    let json = json || matches!(format, ReplayFormat::Json);
    let pinned = pinned_key(public_key)?;
    let store = recording::open_store(&store, None).await?;
    let rec = recording::fetch(store.as_ref(), &audit_id).await?;
    let report = recording::verify::verify(&rec, pinned.as_ref());
    if !report.ok() {
        report_problems(&audit_id, &report.problems, unverified);
        if !unverified {
            return Ok(ExitCode::FAILURE);
        }
    }
    let warning = (!report.ok()).then(|| {
        format!(
            "WARNING: recording {audit_id} does not verify ({} problem(s), listed on stderr); it may be forged or incomplete\n",
            report.problems.len()
        )
    });
    let events = if json {
        Vec::new()
    } else {
        recording::parse(&rec)?
    };
    let cast = match format {
        ReplayFormat::Asciicast => true,
        ReplayFormat::Auto => recording::asciicast::has_terminal(&events),
        _ => false,
    };
    if cast {
        print!("{}", recording::asciicast::render(&events));
    } else if json {
        print_json(&rec);
    } else {
        // Text has room for the warning on stdout, before and after;
        // json and asciicast stay valid and carry it on stderr only.
        let w = warning.as_deref().unwrap_or_default();
        print!("{w}{}{w}", recording::render(&events));
    }
    Ok(ExitCode::SUCCESS)
}

/// On stderr: why the recording does not verify, and whether it is printed.
fn report_problems(audit_id: &str, problems: &[String], unverified: bool) {
    let fix = if unverified {
        "printed anyway (--unverified): what follows may be forged or incomplete"
    } else {
        "not printed; check it with `custody verify`, or pass --unverified to print what is there under a warning"
    };
    eprintln!("custody: recording {audit_id} does not verify, {fix}:");
    for p in problems {
        eprintln!("  problem: {}", recording::escape(p));
    }
}

/// One JSON event per line; a line that is not JSON is left out, on stderr.
fn print_json(rec: &recording::verify::Fetched) {
    let mut out = String::new();
    for (n, line, bytes) in recording::event_lines(rec) {
        match recording::json_line(bytes) {
            Some(l) => {
                out.push_str(&l);
                out.push('\n');
            }
            None => {
                eprintln!("custody: segment {n:06} line {line} is not JSON; left out")
            }
        }
    }
    print!("{out}");
}
