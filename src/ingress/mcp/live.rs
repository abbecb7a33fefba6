//! How many legacy MCP sessions each principal holds on this instance.
//! Each one is a worker task and its channels in rmcp's session manager,
//! so one caller must not be able to open them without end. A session
//! counts while it is used; after `idle` without a request rmcp's worker has
//! stopped, and its handle is closed here (rmcp keeps idle handles until
//! then).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Live {
    by_owner: Mutex<HashMap<String, HashMap<String, Instant>>>,
    idle: Duration,
    max: usize,
}

/// What a request may do with its session.
#[derive(Debug, PartialEq, Eq)]
pub enum Seat {
    /// Served; `stale` are sessions of this owner that idled out.
    Ok { stale: Vec<String> },
    /// The owner already holds `max` live sessions here.
    Full { stale: Vec<String> },
}

impl Live {
    pub fn new(idle: Duration, max: usize) -> Live {
        Live {
            by_owner: Mutex::default(),
            idle,
            max,
        }
    }

    /// A request naming session `id`, or (None) one that may open a
    /// session, which is seated once its id is known. A session already
    /// counted is seen again; a new one (just opened, or restored from the
    /// store on this instance) needs a free seat.
    pub fn seat(&self, owner: &str, id: Option<&str>, now: Instant) -> Seat {
        let Ok(mut all) = self.by_owner.lock() else {
            return Seat::Full { stale: Vec::new() };
        };
        let mine = all.entry(owner.to_string()).or_default();
        let idle = self.idle;
        let stale: Vec<String> = mine
            .iter()
            .filter(|(_, seen)| now.saturating_duration_since(**seen) >= idle)
            .map(|(id, _)| id.clone())
            .collect();
        for s in &stale {
            mine.remove(s);
        }
        let seat = match id {
            None => Seat::Ok { stale },
            Some(id) if !mine.contains_key(id) && mine.len() >= self.max => Seat::Full { stale },
            Some(id) => {
                mine.insert(id.to_string(), now);
                Seat::Ok { stale }
            }
        };
        if mine.is_empty() {
            all.remove(owner);
        }
        seat
    }

    /// A session the client closed (DELETE).
    pub fn closed(&self, owner: &str, id: &str) {
        if let Ok(mut all) = self.by_owner.lock() {
            if let Some(mine) = all.get_mut(owner) {
                mine.remove(id);
                if mine.is_empty() {
                    all.remove(owner);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_principal_holds_at_most_max_live_sessions() {
        let live = Live::new(Duration::from_secs(300), 2);
        let t0 = Instant::now();
        assert_eq!(live.seat("a", None, t0), Seat::Ok { stale: vec![] });
        assert_eq!(live.seat("a", Some("s1"), t0), Seat::Ok { stale: vec![] });
        assert_eq!(live.seat("a", Some("s2"), t0), Seat::Ok { stale: vec![] });
        // Full for a third, new or restored; the two in use still serve,
        // and so do requests that open none (stateless clients).
        assert_eq!(live.seat("a", None, t0), Seat::Ok { stale: vec![] });
        assert_eq!(live.seat("a", Some("s3"), t0), Seat::Full { stale: vec![] });
        assert_eq!(live.seat("a", Some("s1"), t0), Seat::Ok { stale: vec![] });
        // Another principal is not affected.
        assert_eq!(live.seat("b", None, t0), Seat::Ok { stale: vec![] });
        // Closing one frees its seat.
        live.closed("a", "s2");
        assert_eq!(live.seat("a", Some("s3"), t0), Seat::Ok { stale: vec![] });
    }

    #[test]
    fn idle_sessions_free_their_seats_and_are_named_for_closing() {
        let live = Live::new(Duration::from_secs(300), 2);
        let t0 = Instant::now();
        live.seat("a", Some("s1"), t0);
        live.seat("a", Some("s2"), t0);
        let later = t0 + Duration::from_secs(200);
        assert_eq!(
            live.seat("a", Some("s2"), later),
            Seat::Ok { stale: vec![] }
        );
        let much_later = t0 + Duration::from_secs(301);
        // s1 idled out; s2 was used at 200 s and still counts.
        assert_eq!(
            live.seat("a", Some("s2"), much_later),
            Seat::Ok {
                stale: vec!["s1".into()]
            }
        );
        assert_eq!(
            live.seat("a", Some("s3"), much_later),
            Seat::Ok { stale: vec![] }
        );
        assert_eq!(
            live.seat("a", Some("s4"), much_later),
            Seat::Full { stale: vec![] }
        );
    }
}
