//! The duplicate guard: a bounded, in-process memory of job ids this process delivered.
//!
//! The broker redelivers every delivery it did not see acked — after a lost connection, say —
//! including jobs whose Graph reply arrived but whose ack did not. Checking the guard before
//! sending turns those redeliveries into plain acks. It is per process and bounded by count and
//! age, so it narrows the duplicate window without closing it: a crash between Graph's reply and
//! the ack still sends the job again from another process (see the README).
//!
//! It does not decide what a job id is (see `job`) or when to consult it (see the router).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Remembers up to `capacity` job ids, each for `ttl`.
pub struct DuplicateGuard {
    capacity: usize,
    ttl: Duration,
    inner: Mutex<Inner>,
}

// Job ids come from publishers: foldhash is seeded per process, so ids cannot be chosen to collide.
#[derive(Default)]
struct Inner {
    ids: foldhash::HashSet<Arc<str>>,
    /// Insertion order, oldest first; insertion time order is expiry order.
    order: VecDeque<(Instant, Arc<str>)>,
}

impl DuplicateGuard {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        DuplicateGuard {
            capacity,
            ttl,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Records that `job_id` was delivered.
    pub fn record(&self, job_id: &str) {
        self.record_all([job_id]);
    }

    /// Records that each of `job_ids` was delivered (one batch's: one lock for all).
    pub fn record_all<'a>(&self, job_ids: impl IntoIterator<Item = &'a str>) {
        if self.capacity == 0 || self.ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut inner = self.inner.lock().expect("not poisoned");
        inner.evict(now, self.ttl);
        for job_id in job_ids {
            // One lookup: inserted first, the oldest evicted after, so that recording an id
            // again evicts nothing.
            let id: Arc<str> = job_id.into();
            if !inner.ids.insert(id.clone()) {
                continue;
            }
            if inner.order.len() >= self.capacity
                && let Some((_, oldest)) = inner.order.pop_front()
            {
                inner.ids.remove(&oldest);
            }
            inner.order.push_back((now, id));
        }
    }

    /// True if `job_id` was delivered by this process within the guard's memory.
    pub fn contains(&self, job_id: &str) -> bool {
        let now = Instant::now();
        let mut inner = self.inner.lock().expect("not poisoned");
        inner.evict(now, self.ttl);
        inner.ids.contains(job_id)
    }

    /// Ids currently remembered.
    pub fn len(&self) -> usize {
        self.inner.lock().expect("not poisoned").order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn evict(&mut self, now: Instant, ttl: Duration) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < ttl {
                break;
            }
            let (_, id) = self.order.pop_front().expect("front exists");
            self.ids.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn remembers_delivered_ids_until_they_age_out() {
        let guard = DuplicateGuard::new(10, Duration::from_secs(60));
        guard.record("job-1");
        tokio::time::advance(Duration::from_secs(30)).await;
        guard.record("job-2");
        assert!(guard.contains("job-1"));
        assert!(guard.contains("job-2"));
        assert!(!guard.contains("job-3"));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(!guard.contains("job-1"), "job-1 is 60 s old");
        assert!(guard.contains("job-2"));
        assert_eq!(guard.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn forgets_the_oldest_beyond_capacity() {
        let guard = DuplicateGuard::new(3, Duration::from_secs(3600));
        for i in 0..5 {
            guard.record(&format!("job-{i}"));
        }
        assert_eq!(guard.len(), 3);
        assert!(!guard.contains("job-0"));
        assert!(!guard.contains("job-1"));
        assert!(guard.contains("job-2") && guard.contains("job-4"));
        // Recording an id twice keeps one entry and evicts nothing.
        guard.record("job-4");
        assert_eq!(guard.len(), 3);
        assert!(guard.contains("job-2") && guard.contains("job-3"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_capacity_guard_remembers_nothing() {
        let guard = DuplicateGuard::new(0, Duration::from_secs(3600));
        guard.record("job-1");
        assert!(!guard.contains("job-1"));
        assert!(guard.is_empty());
    }
}
