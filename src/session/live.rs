//! Live tunnel sessions, counted so shutdown can wait for them to seal.

use std::sync::Arc;

/// Counts live tunnel sessions so shutdown can wait for them to seal.
#[derive(Default)]
pub struct LiveSessions {
    count: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

/// Held for the life of one tunnel session.
pub struct LiveGuard(Arc<LiveSessions>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if self
            .0
            .count
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            == 1
        {
            self.0.idle.notify_waiters();
        }
    }
}

impl LiveSessions {
    pub fn enter(self: &Arc<Self>) -> LiveGuard {
        self.count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        LiveGuard(self.clone())
    }

    pub fn count(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Waits until no session is live, or `limit` passes; returns how many remain.
    pub async fn wait_idle(&self, limit: std::time::Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            // Registered before the check, so a last guard dropping in between is not missed.
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.count() == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.count();
            }
        }
    }
}
