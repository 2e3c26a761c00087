//! Which jobs of a Page's lane go into the next batch, and where the overflow goes.
//!
//! [`LaneQueue`] is the lane's FIFO. A batch takes jobs in order, skipping any whose recipient
//! already has a message in flight or earlier in the same batch — and every later job of that
//! recipient too — so that each recipient hears its messages one at a time, in publish order,
//! even though the Graph API runs a batch's operations in parallel. Media jobs beyond what the
//! media ceiling allows are skipped the same way.
//!
//! [`ParkPlanner`] decides how long a job that does not fit in the lane stays out: it reserves
//! the Page's future sending slots in order, so parked jobs come back about when they can be
//! sent rather than all at once.
//!
//! Both are pure: time is passed in, nothing is sent.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::time::Duration;

use foldhash::{HashSet, HashSetExt};
use smallvec::SmallVec;
use tokio::time::Instant;

/// What the batcher needs to know about a queued job.
pub trait LaneItem {
    /// The recipient key: at most one message per recipient is in flight.
    fn recipient(&self) -> &str;
    /// Audio and video attachments are charged to the media ceiling.
    fn is_media(&self) -> bool;
}

impl<T: LaneItem + ?Sized> LaneItem for Box<T> {
    fn recipient(&self) -> &str {
        (**self).recipient()
    }

    fn is_media(&self) -> bool {
        (**self).is_media()
    }
}

/// A Page's queued jobs and the recipients that have a message in flight.
///
/// Recipients are known by a 64-bit hash of their id, not by the id: a batch marks and releases
/// them without copying a string per job. Two recipients whose hashes collide only wait for each
/// other, as if they were one; order is never broken.
#[derive(Debug)]
pub struct LaneQueue<T> {
    items: VecDeque<Queued<T>>,
    busy: HashSet<u64>,
    keys: foldhash::fast::RandomState,
}

/// The recipients of a batch in flight, as its lane's queue knows them: what the batch hands
/// back to [`LaneQueue::release`] once it is settled. When Pages are many a batch is mostly one
/// job, so one recipient is kept without an allocation.
#[derive(Debug, Default)]
pub struct Recipients(SmallVec<[u64; 1]>);

#[derive(Debug)]
struct Queued<T> {
    item: T,
    since: Instant,
}

impl<T> Default for LaneQueue<T> {
    fn default() -> Self {
        LaneQueue {
            items: VecDeque::new(),
            busy: HashSet::new(),
            keys: foldhash::fast::RandomState::default(),
        }
    }
}

impl<T: LaneItem> LaneQueue<T> {
    pub fn push(&mut self, item: T, now: Instant) {
        self.items.push_back(Queued { item, since: now });
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Recipients with a message in flight.
    pub fn in_flight(&self) -> usize {
        self.busy.len()
    }

    /// When the oldest queued job arrived.
    pub fn oldest(&self) -> Option<Instant> {
        self.items.front().map(|q| q.since)
    }

    /// How many jobs a batch of at most `max` could take now (media not limited).
    pub fn sendable(&self, max: usize) -> usize {
        self.select(max, usize::MAX, |_| {})
    }

    /// How many media jobs the next batch of at most `max` would carry if media were not
    /// limited: what to ask the media ceiling for.
    pub fn media_in(&self, max: usize) -> usize {
        let mut media = 0;
        self.select(max, usize::MAX, |i| {
            media += usize::from(self.items[i].item.is_media());
        });
        media
    }

    /// Removes and returns the next batch: at most `max` jobs, at most `media` of them media,
    /// one per recipient, and none for a recipient in flight. Their recipients become busy
    /// until [`LaneQueue::release`] or [`LaneQueue::release_recipient`].
    pub fn take_batch(&mut self, max: usize, media: usize) -> Vec<T> {
        let mut picked = Vec::with_capacity(max.min(self.items.len()));
        self.select(max, media, |i| picked.push(i));
        let batch = match picked.last() {
            None => return Vec::new(),
            // The front of the queue, as when every queued recipient is distinct: no rebuild.
            Some(&last) if last + 1 == picked.len() => {
                self.items.drain(..picked.len()).map(|q| q.item).collect()
            }
            Some(_) => self.take_picked(&picked),
        };
        for item in &batch {
            self.busy.insert(self.key(item.recipient()));
        }
        batch
    }

    /// Removes the jobs at `picked` (ascending positions), keeping the others in order.
    fn take_picked(&mut self, picked: &[usize]) -> Vec<T> {
        let mut batch = Vec::with_capacity(picked.len());
        let mut rest = VecDeque::with_capacity(self.items.len() - picked.len());
        let mut next = picked.iter().copied().peekable();
        for (i, queued) in self.items.drain(..).enumerate() {
            if next.peek() == Some(&i) {
                next.next();
                batch.push(queued.item);
            } else {
                rest.push_back(queued);
            }
        }
        self.items = rest;
        batch
    }

    /// The recipients of `batch`, taken by [`LaneQueue::take_batch`], to release once it is
    /// settled.
    pub fn recipients(&self, batch: &[T]) -> Recipients {
        Recipients(
            batch
                .iter()
                .map(|item| self.key(item.recipient()))
                .collect(),
        )
    }

    /// A batch's messages are settled; its recipients' next ones may go.
    pub fn release(&mut self, recipients: Recipients) {
        for key in recipients.0 {
            self.busy.remove(&key);
        }
    }

    /// One taken job will not be sent after all (it expired); its recipient's next may go.
    pub fn release_recipient(&mut self, recipient: &str) {
        self.busy.remove(&self.key(recipient));
    }

    fn key(&self, recipient: &str) -> u64 {
        self.keys.hash_one(recipient)
    }

    /// Removes and returns the newest jobs beyond the first `keep`, oldest of them first.
    pub fn shed(&mut self, keep: usize) -> Vec<T> {
        if self.items.len() <= keep {
            return Vec::new();
        }
        self.items.drain(keep..).map(|q| q.item).collect()
    }

    /// Removes and returns every job.
    pub fn drain(&mut self) -> Vec<T> {
        self.items.drain(..).map(|q| q.item).collect()
    }

    /// Removes and returns the jobs `pred` selects.
    pub fn remove_where(&mut self, mut pred: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut removed = Vec::new();
        let mut kept = VecDeque::with_capacity(self.items.len());
        for queued in self.items.drain(..) {
            if pred(&queued.item) {
                removed.push(queued.item);
            } else {
                kept.push_back(queued);
            }
        }
        self.items = kept;
        removed
    }

    /// Calls `pick` with the position of each job of the next batch, in queue order, and returns
    /// how many there are. Each caller collects only what it needs: counting allocates nothing.
    fn select(&self, max: usize, media: usize, mut pick: impl FnMut(usize)) -> usize {
        let mut picked = 0;
        // Recipients whose earliest queued job cannot go in this batch: their later jobs wait
        // behind it. Picked recipients are held back the same way.
        // Only the jobs behind a recipient's first can be held back, so a lane of one job (most
        // lanes, when Pages are many) never allocates the set.
        let mut held: HashSet<u64> = HashSet::new();
        let mut media_left = media;
        let last = self.items.len().saturating_sub(1);
        for (i, queued) in self.items.iter().enumerate() {
            if picked == max {
                break;
            }
            let recipient = self.key(queued.item.recipient());
            if self.busy.contains(&recipient) || held.contains(&recipient) {
                continue;
            }
            if i < last {
                if held.is_empty() {
                    held.reserve(max.min(self.items.len() - i));
                }
                held.insert(recipient);
            }
            if queued.item.is_media() {
                if media_left == 0 {
                    continue;
                }
                media_left -= 1;
            }
            picked += 1;
            pick(i);
        }
        picked
    }
}

/// How many jobs a lane keeps: what its Page can send within `horizon` at `rate` operations per
/// second once it may send again (`blocked_for` from now), at least one while it may send at
/// all, and never more than `capacity`.
pub fn hold_limit(capacity: usize, rate: f64, horizon: Duration, blocked_for: Duration) -> usize {
    if blocked_for > horizon {
        return 0;
    }
    let sendable = ((horizon - blocked_for).as_secs_f64() * rate).floor() as usize;
    sendable.clamp(1, capacity.max(1)).min(capacity)
}

/// Reserves a Page's future sending slots for the jobs parked outside its lane.
#[derive(Debug, Default, Clone)]
pub struct ParkPlanner {
    reserved_until: Option<Instant>,
}

impl ParkPlanner {
    /// How long a new overflow job should stay parked: until the lane (`queued` jobs) and the
    /// jobs parked before it have drained at `rate` operations per second.
    pub fn reserve(&mut self, now: Instant, queued: usize, rate: f64) -> Duration {
        let rate = rate.max(0.001);
        let drained = now + Duration::from_secs_f64(queued as f64 / rate);
        let start = self
            .reserved_until
            .filter(|r| *r > drained)
            .unwrap_or(drained);
        self.reserved_until = Some(start + Duration::from_secs_f64(1.0 / rate));
        start - now
    }

    /// How long a job that was parked before and came back to a full lane should stay out: the
    /// rest of its reservation if it came back early, else until the lane drains. It does not
    /// reserve again, or every return would push the whole schedule back.
    pub fn returning(&self, remaining: Option<Duration>, queued: usize, rate: f64) -> Duration {
        let drain = Duration::from_secs_f64(queued as f64 / rate.max(0.001));
        match remaining {
            Some(left) if !left.is_zero() => left,
            _ => drain,
        }
    }

    /// Forgets the reservations (the Page was blocked and its schedule no longer holds).
    pub fn reset(&mut self) {
        self.reserved_until = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct Job {
        id: u32,
        to: &'static str,
        media: bool,
    }

    impl LaneItem for Job {
        fn recipient(&self) -> &str {
            self.to
        }
        fn is_media(&self) -> bool {
            self.media
        }
    }

    fn job(id: u32, to: &'static str) -> Job {
        Job {
            id,
            to,
            media: false,
        }
    }

    fn ids(batch: &[Job]) -> Vec<u32> {
        batch.iter().map(|j| j.id).collect()
    }

    fn queue(jobs: &[Job]) -> LaneQueue<Job> {
        let mut q = LaneQueue::default();
        let now = Instant::now();
        for j in jobs {
            q.push(j.clone(), now);
        }
        q
    }

    #[tokio::test]
    async fn a_batch_takes_one_job_per_recipient_in_order() {
        let mut q = queue(&[
            job(1, "a"),
            job(2, "a"),
            job(3, "b"),
            job(4, "c"),
            job(5, "b"),
        ]);
        assert_eq!(q.sendable(50), 3);
        assert_eq!(ids(&q.take_batch(50, 10)), [1, 3, 4]);
        assert_eq!(q.len(), 2);
        // a, b and c are in flight: nothing may go.
        assert_eq!(q.sendable(50), 0);
        assert!(q.take_batch(50, 10).is_empty());
        q.release_recipient("b");
        let batch = q.take_batch(50, 10);
        assert_eq!(ids(&batch), [5]);
        // b again, from the batch's own record, then a and c one by one.
        let recipients = q.recipients(&batch);
        q.release(recipients);
        assert_eq!(q.in_flight(), 2);
        q.release_recipient("a");
        q.release_recipient("c");
        assert_eq!(ids(&q.take_batch(50, 10)), [2]);
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn a_batch_stops_at_its_size() {
        let jobs: Vec<Job> = (0..120)
            .map(|i| Job {
                id: i,
                to: Box::leak(format!("r{i}").into_boxed_str()),
                media: false,
            })
            .collect();
        let mut q = queue(&jobs);
        assert_eq!(ids(&q.take_batch(50, 0)), (0..50).collect::<Vec<_>>());
        assert_eq!(q.take_batch(50, 0).len(), 50);
        assert_eq!(q.take_batch(50, 0).len(), 20);
    }

    #[tokio::test]
    async fn media_beyond_the_allowance_waits_and_holds_its_recipient() {
        let media = |id, to| Job {
            id,
            to,
            media: true,
        };
        let mut q = queue(&[
            media(1, "a"),
            media(2, "b"),
            job(3, "b"),
            job(4, "c"),
            media(5, "d"),
        ]);
        assert_eq!(q.media_in(50), 3);
        assert_eq!(q.media_in(1), 1);
        // One media slot: job 1 goes, job 2 waits and so does job 3 behind it.
        assert_eq!(ids(&q.take_batch(50, 1)), [1, 4]);
        q.release_recipient("a");
        q.release_recipient("c");
        assert_eq!(ids(&q.take_batch(50, 5)), [2, 5]);
    }

    #[tokio::test]
    async fn shedding_removes_the_newest() {
        let mut q = queue(&[job(1, "a"), job(2, "b"), job(3, "c"), job(4, "d")]);
        assert_eq!(ids(&q.shed(2)), [3, 4]);
        assert!(q.shed(2).is_empty());
        assert_eq!(ids(&q.drain()), [1, 2]);
    }

    #[tokio::test]
    async fn one_recipients_messages_go_strictly_one_at_a_time_in_order() {
        let jobs: Vec<Job> = (0..200).map(|i| job(i, "same")).collect();
        let mut q = queue(&jobs);
        let mut sent = Vec::new();
        while !q.is_empty() {
            let batch = q.take_batch(50, 0);
            assert_eq!(batch.len(), 1, "only one in flight per recipient");
            sent.extend(ids(&batch));
            let recipients = q.recipients(&batch);
            q.release(recipients);
        }
        assert_eq!(sent, (0..200).collect::<Vec<_>>());
    }

    #[test]
    fn a_lane_holds_what_its_page_can_send_soon() {
        let s = Duration::from_secs;
        // Healthy, 250/s for 2 s: the capacity (500) is the limit.
        assert_eq!(hold_limit(500, 250.0, s(2), Duration::ZERO), 500);
        assert_eq!(hold_limit(400, 250.0, s(2), Duration::ZERO), 400);
        // A slow Page keeps less, but always one.
        assert_eq!(hold_limit(500, 5.0, s(2), Duration::ZERO), 10);
        assert_eq!(hold_limit(500, 0.001, s(2), Duration::ZERO), 1);
        // Blocked for longer than the horizon: keep nothing.
        assert_eq!(hold_limit(50, 250.0, s(2), s(30)), 0);
        // Blocked briefly, refilling at 8/s: what goes out in the rest of the horizon.
        assert_eq!(hold_limit(50, 8.0, s(2), Duration::from_millis(500)), 12);
        assert_eq!(hold_limit(0, 250.0, s(2), Duration::ZERO), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn parked_jobs_are_scheduled_one_slot_each_after_the_lane() {
        let mut planner = ParkPlanner::default();
        let now = Instant::now();
        // 500 queued at 250/s: the lane drains in 2 s, then one slot every 4 ms.
        assert_eq!(planner.reserve(now, 500, 250.0), Duration::from_secs(2));
        assert_eq!(
            planner.reserve(now, 500, 250.0),
            Duration::from_millis(2004)
        );
        for _ in 0..248 {
            planner.reserve(now, 500, 250.0);
        }
        assert_eq!(planner.reserve(now, 500, 250.0), Duration::from_secs(3));
        // A job back early waits out the rest of its reservation; one due finds the lane.
        assert_eq!(
            planner.returning(Some(Duration::from_secs(7)), 500, 250.0),
            Duration::from_secs(7)
        );
        assert_eq!(planner.returning(None, 250, 250.0), Duration::from_secs(1));
        // Later, with the lane empty and the reservations past, the schedule restarts at now.
        let later = now + Duration::from_secs(60);
        assert_eq!(planner.reserve(later, 0, 250.0), Duration::ZERO);
        planner.reset();
        assert_eq!(
            planner.reserve(later, 25, 250.0),
            Duration::from_millis(100)
        );
    }
}
