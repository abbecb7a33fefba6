//! When a session must end: the earliest of its delegation's expiry, its
//! approval window's end, and the connection's `max_duration`. A pure
//! function, so both protocols end sessions alike.

use std::time::Duration;

/// What sets the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    Delegation,
    ApprovalWindow,
    MaxDuration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    /// Unix seconds.
    pub at: i64,
    pub cause: Cause,
    /// The connection's `max_duration`, for the message.
    pub max: Duration,
}

/// The deadline of a session starting at `now` (Unix seconds). A
/// delegation or window that ends exactly with `max_duration` is named,
/// since it is the one that cannot be extended by reconnecting.
pub fn compute(
    now: i64,
    delegation_exp: Option<i64>,
    window_end: Option<i64>,
    max: Duration,
) -> Deadline {
    let by_max = now.saturating_add(i64::try_from(max.as_secs()).unwrap_or(i64::MAX));
    let mut best = Deadline {
        at: by_max,
        cause: Cause::MaxDuration,
        max,
    };
    for (at, cause) in [
        (window_end, Cause::ApprovalWindow),
        (delegation_exp, Cause::Delegation),
    ] {
        if let Some(at) = at {
            if at <= best.at {
                best = Deadline { at, cause, max };
            }
        }
    }
    best
}

impl Deadline {
    /// How long from `now` (Unix seconds) until it passes.
    pub fn left(&self, now: i64) -> Duration {
        Duration::from_secs(u64::try_from(self.at.saturating_sub(now)).unwrap_or(0))
    }

    /// Why a session that reached it ended.
    pub fn reason(&self) -> String {
        match self.cause {
            Cause::Delegation | Cause::ApprovalWindow => "the delegation or approval window this session runs under has expired; ask for a new one (custody delegate, or a new review) and reconnect".into(),
            Cause::MaxDuration => format!("the session reached its maximum duration ({}s); Cloud Run also ends requests at 60 minutes; reconnect to continue", self.max.as_secs()),
        }
    }
}

/// When a time-boxed approval stops covering the session, if it is one.
pub fn window_end(approval: Option<&crate::policy::review::Review>) -> Option<i64> {
    let r = approval?;
    let w = i64::try_from(r.request.window_secs?).ok()?;
    Some(r.decision.as_ref()?.at.saturating_add(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn max_duration_when_nothing_else_ends_the_session() {
        let d = compute(1000, None, None, HOUR);
        assert_eq!((d.at, d.cause), (4600, Cause::MaxDuration));
        assert_eq!(d.left(1000), HOUR);
        assert!(
            d.reason().contains("maximum duration (3600s)"),
            "{}",
            d.reason()
        );
    }

    #[test]
    fn the_earliest_wins() {
        let d = compute(1000, Some(2000), Some(1500), HOUR);
        assert_eq!((d.at, d.cause), (1500, Cause::ApprovalWindow));
        let d = compute(1000, Some(1200), Some(1500), HOUR);
        assert_eq!((d.at, d.cause), (1200, Cause::Delegation));
        let d = compute(1000, Some(9000), Some(8000), HOUR);
        assert_eq!((d.at, d.cause), (4600, Cause::MaxDuration));
        assert!(d.reason().contains("maximum duration"));
    }

    #[test]
    fn a_grant_ending_with_max_duration_is_named() {
        let d = compute(1000, Some(4600), None, HOUR);
        assert_eq!(d.cause, Cause::Delegation);
        assert!(d.reason().contains("delegation or approval window"));
    }

    #[test]
    fn a_deadline_already_past_leaves_nothing() {
        let d = compute(1000, Some(900), None, HOUR);
        assert_eq!(d.left(1000), Duration::ZERO);
        assert_eq!(d.left(800), Duration::from_secs(100));
    }

    #[test]
    fn huge_values_do_not_overflow() {
        let d = compute(i64::MAX - 5, None, None, Duration::from_secs(u64::MAX));
        assert_eq!((d.at, d.cause), (i64::MAX, Cause::MaxDuration));
        assert_eq!(d.left(i64::MIN), Duration::from_secs(i64::MAX as u64));
        assert_eq!(d.left(i64::MAX), Duration::ZERO);
    }
}
