//! One recording as the read API shows it (`GET /v1/sessions/{audit_id}`):
//! its summary, chain of custody, verify result and events. Pure over the
//! fetched bytes, like `verify`.

use ed25519_dalek::VerifyingKey;
use serde::Serialize;

use super::sessions::{summarise, SessionSummary};
use super::verify::{self, Fetched, Report};
use super::{Event, EventBody};

/// `verify`'s answer in three words: verified, unsigned (sound but not
/// signed: the gateway has no signing key) or failed, with what it found.
#[derive(Debug, Serialize)]
pub struct Verdict {
    pub status: &'static str,
    pub facts: Vec<String>,
    pub problems: Vec<String>,
}

impl Verdict {
    pub fn of(report: Report) -> Verdict {
        let status = if report.ok() {
            "verified"
        } else if report.unsigned && report.problems.len() == 1 {
            "unsigned"
        } else {
            "failed"
        };
        Verdict {
            status,
            facts: report.facts,
            problems: report.problems,
        }
    }
}

/// `verify`'s words for a pinned key are the CLI's (`--public-key`); here
/// the pinned key is always the gateway's own.
fn gateway_words(report: Report) -> Verdict {
    let mut v = Verdict::of(report);
    for f in v.facts.iter_mut().chain(v.problems.iter_mut()) {
        *f = f
            .replace("(the key you gave)", "(the gateway's own key)")
            .replace("the key you gave", "the gateway's own key");
    }
    v
}

/// `verify` with the key the gateway signs with, if it has one. With a key,
/// an unsigned manifest is a failure: anyone who can create objects could
/// have written it. Without one, nothing is "verified": a manifest's own
/// embedded key proves only that someone signed it.
pub fn verdict(rec: &Fetched, gateway_key: Option<&VerifyingKey>) -> Verdict {
    judged(verify::verify(rec, gateway_key), gateway_key.is_some())
}

fn judged(report: Report, gateway_signs: bool) -> Verdict {
    match gateway_signs {
        true => {
            let mut v = gateway_words(report);
            if v.status == "unsigned" {
                v.status = "failed";
                v.problems
                    .push("the gateway signs its recordings, and this one is not signed".into());
            }
            v
        }
        false => {
            let mut v = Verdict::of(report);
            if v.status == "verified" {
                v.status = "unsigned";
                v.problems.push("the gateway has no signing key, so no signature here is the gateway's: intact as stored, not proven".into());
            }
            v
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Detail {
    pub summary: SessionSummary,
    /// originator → hops → caller; the principal alone when not delegated.
    pub chain: Vec<String>,
    pub root_audit_id: Option<String>,
    /// Whether `GET /v1/sessions/{audit_id}/asciicast` has a terminal to play.
    pub terminal: bool,
    pub verify: Verdict,
    /// Every line that is an event; lines that are not are the verdict's problems.
    pub events: Vec<Event>,
}

/// The events of a recording, leaving out lines that do not parse (a
/// tampered recording is still shown, next to its failed verdict).
pub fn events(rec: &Fetched) -> Vec<Event> {
    super::event_lines(rec)
        .filter_map(|(_, _, l)| serde_json::from_slice(l).ok())
        .collect()
}

/// The principal identity (`Principal::id()`) a recording started under, if recorded.
pub fn owner(events: &[Event]) -> Option<&str> {
    events.iter().find_map(|e| match &e.body {
        EventBody::SessionStart { principal_id, .. } => principal_id.as_deref(),
        _ => None,
    })
}

pub fn detail(rec: &Fetched, gateway_key: Option<&VerifyingKey>, events: Vec<Event>) -> Detail {
    let start = events
        .iter()
        .find(|e| matches!(e.body, EventBody::SessionStart { .. }));
    let end = events
        .iter()
        .rev()
        .find(|e| matches!(e.body, EventBody::SessionEnd { .. }));
    let summary = summarise(&rec.audit_id, start, end, rec.manifest.is_some());
    let (chain, root_audit_id) = match start.map(|e| &e.body) {
        Some(EventBody::SessionStart {
            chain,
            root_audit_id,
            ..
        }) if !chain.is_empty() => (chain.clone(), root_audit_id.clone()),
        _ => (vec![summary.principal.clone()], None),
    };
    Detail {
        chain,
        root_audit_id,
        terminal: super::asciicast::has_terminal(&events),
        verify: verdict(rec, gateway_key),
        summary,
        events,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(problems: &[&str], unsigned: bool) -> Report {
        Report {
            facts: vec!["1 segment(s)".into()],
            problems: problems.iter().map(|p| p.to_string()).collect(),
            unsigned,
        }
    }

    #[test]
    fn verdicts_in_three_words() {
        assert_eq!(Verdict::of(report(&[], false)).status, "verified");
        assert_eq!(
            Verdict::of(report(&["not signed"], true)).status,
            "unsigned"
        );
        // Unsigned and also altered is failed, not merely unsigned.
        let both = Verdict::of(report(&["not signed", "segment 000001 was altered"], true));
        assert_eq!(both.status, "failed");
        assert_eq!(both.problems.len(), 2);
        assert_eq!(Verdict::of(report(&["missing"], false)).status, "failed");
    }

    #[test]
    fn only_the_gateways_own_key_verifies() {
        // A gateway that signs: an unsigned manifest could be anyone's.
        assert_eq!(judged(report(&["not signed"], true), true).status, "failed");
        assert_eq!(judged(report(&[], false), true).status, "verified");
        // A gateway without a key: a signature proves nothing of it.
        let v = judged(report(&[], false), false);
        assert_eq!(v.status, "unsigned");
        assert!(v.problems[0].contains("no signing key"), "{:?}", v.problems);
        assert_eq!(
            judged(report(&["not signed"], true), false).status,
            "unsigned"
        );
    }
}
