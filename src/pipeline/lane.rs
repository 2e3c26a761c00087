//! Per-Page lanes: one task per Page with work, created on demand and dropped when idle.
//!
//! A lane holds its Page's jobs in a [`LaneQueue`], asks the Page's [`Admission`] whether it may
//! send, asks its limiter how much, and hands batches to [`super::dispatch`]. What it cannot send
//! soon it parks: it keeps only what the Page can send within `max_hold` (and at most
//! `lane_capacity`, or `blocked_lane_capacity` while the Page is paused, cooling down, out of
//! budget or behind an open circuit). So a slow or blocked Page never holds more than a bounded
//! share of the prefetch window, no delivery stays unacked for long, and other Pages never wait.
//!
//! Parked jobs are not published one by one: a lane gathers what it sheds for up to
//! [`PARK_LINGER`] (or until `retry.park_bundle` are waiting) and hands them to [`super::park`]
//! together, which sends them as one message per delay tier.
//!
//! The consumer only ever pushes into a lane's unbounded [`Inbox`] (its size is bounded by the
//! prefetch window), so routing never blocks on a busy Page.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use crossbeam_utils::CachePadded;
use tokio::sync::{AcquireError, Notify, OwnedSemaphorePermit};
use tokio::time::{Instant, sleep_until};

use super::batcher::{LaneItem, LaneQueue, ParkPlanner, Recipients, hold_limit};
use super::limiter::Grant;
use super::outcome::{Outcome, ParkReason};
use super::park::{self, ParkJob};
use super::registry::{Admission, PageState};
use super::{Envelope, Shared, dispatch};
use crate::amqp::headers::DeadLetterReason;
use crate::telemetry;

/// Messages a lane receives.
pub enum LaneMsg {
    /// A job for this Page (boxed: an envelope is large and most messages are small).
    Job(Box<Envelope>),
    /// A batch finished and settled; its recipients may receive their next message.
    Done { recipients: Recipients },
    /// The session `generation` replaced older ones: jobs from those are void.
    Forget { generation: u64 },
}

/// A lane's inbox: what the consumer, the batches it sent and the supervisor tell it.
///
/// A vector under a lock rather than a channel: a lane takes everything that arrived with one
/// swap per pass, and with thousands of lanes a channel's blocks were a cache miss per message
/// (`mpsc::list::Rx::pop` alone was 4.8 % of the cost run's samples).
///
/// A settled batch wakes its lane only if the lane has jobs queued, which the release may let
/// go, or is shutting down. Otherwise its [`LaneMsg::Done`] waits for the lane's next pass: when
/// Pages are many, a lane sends its one job and has nothing left, and waking it to release that
/// job's recipient was a third of all lane passes.
#[derive(Default)]
pub struct Inbox {
    pending: Mutex<Pending>,
    arrived: Notify,
}

#[derive(Default)]
struct Pending {
    msgs: Vec<LaneMsg>,
    /// The lane was woken since it last took its messages: it will take the newer ones too.
    woken: bool,
    /// The lane wants to hear of settled batches at once.
    wants_done: bool,
}

impl Pending {
    fn wake(&mut self, arrived: &Notify) {
        if !self.woken {
            self.woken = true;
            arrived.notify_one();
        }
    }
}

impl Inbox {
    pub fn send(&self, msg: LaneMsg) {
        let mut pending = self.pending.lock().expect("not poisoned");
        let urgent = !matches!(msg, LaneMsg::Done { .. }) || pending.wants_done;
        pending.msgs.push(msg);
        if urgent {
            pending.wake(&self.arrived);
        }
    }

    /// Swaps what arrived into `into`, which must be empty, so that the two buffers keep their
    /// room and a pass allocates nothing.
    fn take(&self, into: &mut Vec<LaneMsg>) {
        debug_assert!(into.is_empty());
        let mut pending = self.pending.lock().expect("not poisoned");
        std::mem::swap(&mut pending.msgs, into);
        pending.woken = false;
    }

    /// Says, before the lane waits, whether it wants settled batches to wake it. Under the
    /// lock, so a batch settled before this call is not left waiting: a `Done` already here
    /// wakes the lane at once.
    fn wants_done(&self, wanted: bool) {
        let mut pending = self.pending.lock().expect("not poisoned");
        pending.wants_done = wanted;
        if wanted && !pending.msgs.is_empty() {
            pending.wake(&self.arrived);
        }
    }

    fn is_empty(&self) -> bool {
        self.pending.lock().expect("not poisoned").msgs.is_empty()
    }

    /// Wakes the lane with no message: it makes a pass and looks at what changed.
    fn wake(&self) {
        self.pending
            .lock()
            .expect("not poisoned")
            .wake(&self.arrived);
    }
}

/// The lanes of the process, by Page id.
#[derive(Default)]
pub struct Lanes {
    map: Mutex<foldhash::HashMap<Arc<str>, Arc<Inbox>>>,
    /// Set on shutdown: lanes start no batches, hand their jobs back and end. On a cache line
    /// of its own: every lane reads it on every pass, and the map's lock beside it is taken
    /// for every job routed.
    stopping: CachePadded<AtomicBool>,
}

impl Lanes {
    /// Hands `envelope` to its Page's lane, starting the lane if there is none.
    ///
    /// Under the map's lock, as a lane's removal is: an inbox in the map always has its lane.
    pub fn route(&self, shared: &Arc<Shared>, page: Arc<PageState>, envelope: Envelope) {
        let mut map = self.map.lock().expect("not poisoned");
        let msg = LaneMsg::Job(Box::new(envelope));
        if let Some(inbox) = map.get(&page.id) {
            inbox.send(msg);
            return;
        }
        let inbox = Arc::new(Inbox::default());
        inbox.send(msg);
        page.limiter().drain_rps();
        map.insert(page.id.clone(), inbox.clone());
        metrics::gauge!(telemetry::LANES).set(map.len() as f64);
        let lane = Lane::new(shared.clone(), page, inbox);
        tokio::spawn(lane.run());
    }

    /// Sends `msg()` to every lane.
    pub fn broadcast(&self, msg: impl Fn() -> LaneMsg) {
        for inbox in self.map.lock().expect("not poisoned").values() {
            inbox.send(msg());
        }
    }

    /// Stops every lane: each hands its queued jobs back and ends once its batches have
    /// settled. A lane started later sees the flag on its first pass.
    ///
    /// Each lane is woken once, rather than each waiting on a cancellation: a lane that waits
    /// polls the cancellation's shared lock every time, and an idle lane would otherwise hear
    /// of the stop only at its next timer.
    pub fn stop(&self) {
        let map = self.map.lock().expect("not poisoned");
        // Set before the wakes, so a lane woken by one sees it after taking its inbox.
        self.stopping.store(true, Ordering::Release);
        for inbox in map.values() {
            inbox.wake();
        }
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    pub fn len(&self) -> usize {
        self.map.lock().expect("not poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes the lane of `page` if nothing is waiting in its inbox; checked under the map's
    /// lock so that the consumer cannot route a job to a lane that is about to end.
    fn remove_if_idle(&self, page: &Arc<str>, inbox: &Inbox) -> bool {
        let mut map = self.map.lock().expect("not poisoned");
        if !inbox.is_empty() {
            return false;
        }
        map.remove(page);
        metrics::gauge!(telemetry::LANES).set(map.len() as f64);
        true
    }

    /// Forgets the lane of `page` if `inbox` is still its inbox: a lane that ended without
    /// removing itself (it panicked) must not take the Page's jobs with it.
    fn forget(&self, page: &Arc<str>, inbox: &Arc<Inbox>) {
        let mut map = self.map.lock().expect("not poisoned");
        if map.get(page).is_some_and(|i| Arc::ptr_eq(i, inbox)) {
            map.remove(page);
            metrics::gauge!(telemetry::LANES).set(map.len() as f64);
        }
    }
}

type PermitFuture =
    Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// Longest pause between two looks at a lane with jobs, so that its gauge and its jobs'
/// expiries stay fresh. A lane with none waits for a message or for its idle time to run out.
const TICK: Duration = Duration::from_secs(1);

/// How long a lane gathers the jobs it sheds before parking them together. A Page that sheds
/// sheds a few jobs per pass, one pass per arriving burst; 10 ms turns those into bundles of a
/// hundred or more, and holds a parked job's prefetch slot no longer than a batch's linger.
pub const PARK_LINGER: Duration = Duration::from_millis(10);

struct Lane {
    shared: Arc<Shared>,
    page: Arc<PageState>,
    queue: LaneQueue<Box<Envelope>>,
    inbox: Arc<Inbox>,
    /// The inbox's other buffer: a pass swaps it in and handles what it holds.
    arrived: Vec<LaneMsg>,
    batches_in_flight: usize,
    planner: ParkPlanner,
    /// Shed jobs waiting to be parked together, and since when the oldest has waited.
    parking: Vec<ParkJob>,
    parking_since: Option<Instant>,
    /// The newest session generation seen; older envelopes are void.
    generation: u64,
    wake_at: Option<Instant>,
    permit: Option<OwnedSemaphorePermit>,
    waiting_permit: Option<PermitFuture>,
    idle_since: Instant,
    /// When the lane started waiting for the per-second ceiling, for the limiter wait metric.
    limited_since: Option<Instant>,
}

impl Lane {
    fn new(shared: Arc<Shared>, page: Arc<PageState>, inbox: Arc<Inbox>) -> Self {
        Lane {
            shared,
            page,
            queue: LaneQueue::default(),
            inbox,
            arrived: Vec::new(),
            batches_in_flight: 0,
            planner: ParkPlanner::default(),
            parking: Vec::new(),
            parking_since: None,
            generation: 0,
            wake_at: None,
            permit: None,
            waiting_permit: None,
            idle_since: Instant::now(),
            limited_since: None,
        }
    }

    async fn run(mut self) {
        let idle_ttl = self.shared.settings.pipeline.idle_lane_ttl;
        // Armed once and moved only when an earlier wake is wanted: a lane wakes for nearly
        // every job, and a new timer per pass is a timer-wheel update per job. A wake that is
        // no longer wanted is one spare pass.
        let mut now = Instant::now();
        let timer = sleep_until(now + TICK);
        tokio::pin!(timer);
        loop {
            // `now` is the reading of the pass just made, which did not wait: a wake set from it
            // is at most that pass early, and an early wake is one spare pass.
            let wake = if !self.holds_jobs() {
                // Nothing to send, shed or expire: a message wakes the lane, or its idle time
                // running out. With thousands of Pages a tick each was thousands of passes a
                // second for nothing.
                self.idle_since + idle_ttl
            } else {
                self.wake_at.unwrap_or(now + TICK).min(now + TICK)
            }
            .max(now);
            if wake < timer.deadline() || timer.is_elapsed() {
                timer.as_mut().reset(wake);
            }
            // A lane with nothing queued learns of its settled batches on its next pass; a
            // stopping one at once, as it may end only when they are all settled.
            let stopping = self.shared.lanes.stopping();
            self.inbox.wants_done(!self.queue.is_empty() || stopping);
            tokio::select! {
                biased;
                () = self.inbox.arrived.notified() => {}
                permit = wait_permit(&mut self.waiting_permit) => {
                    self.waiting_permit = None;
                    self.permit = permit.ok();
                }
                () = &mut timer => {}
            }
            // One reading of the clock for the whole pass: the pass does not wait, and a lane
            // makes a pass for nearly every job.
            now = Instant::now();
            // Whatever woke the lane, it takes everything that arrived before deciding, so a
            // burst becomes one batch.
            self.inbox.take(&mut self.arrived);
            let mut arrived = std::mem::take(&mut self.arrived);
            for msg in arrived.drain(..) {
                self.handle(msg, now);
            }
            self.arrived = arrived;
            if self.shared.lanes.stopping() {
                // Boxed: a lane's task holds its largest await point inline for its whole life,
                // and the hand-back's parking future is large; every lane would pay for the one
                // shutdown.
                Box::pin(self.hand_back()).await;
                if self.batches_in_flight == 0
                    && self.shared.lanes.remove_if_idle(&self.page.id, &self.inbox)
                {
                    break;
                }
                // The hand-back waited for its parks.
                now = Instant::now();
                continue;
            }
            self.step(now);
            self.flush_parking();
            self.page
                .lane_depth
                .store(self.queue.len(), Ordering::Relaxed);
            if !self.holds_jobs() && self.batches_in_flight == 0 {
                if now.saturating_duration_since(self.idle_since) >= idle_ttl
                    && self.shared.lanes.remove_if_idle(&self.page.id, &self.inbox)
                {
                    break;
                }
            } else {
                self.idle_since = now;
            }
        }
        self.page.lane_depth.store(0, Ordering::Relaxed);
    }

    /// Whether the lane has jobs of its own: queued, or shed and waiting to be parked.
    fn holds_jobs(&self) -> bool {
        !self.queue.is_empty() || !self.parking.is_empty()
    }

    fn handle(&mut self, msg: LaneMsg, now: Instant) {
        match msg {
            LaneMsg::Job(envelope) => {
                self.generation = self.generation.max(envelope.origin.generation);
                if envelope.origin.generation == self.generation {
                    self.queue.push(envelope, now);
                }
            }
            LaneMsg::Done { recipients } => {
                self.batches_in_flight -= 1;
                self.queue.release(recipients);
            }
            LaneMsg::Forget { generation } => {
                self.generation = self.generation.max(generation);
                let current = self.generation;
                // Their delivery tags died with their channel; the broker redelivers them.
                let dropped = self.queue.remove_where(|e| e.origin.generation < current);
                self.parking
                    .retain(|p| p.envelope.origin.generation >= current);
                if self.parking.is_empty() {
                    self.parking_since = None;
                }
                if !dropped.is_empty() {
                    tracing::debug!(page = %self.page.id, dropped = dropped.len(), "dropped jobs of a lost connection");
                }
            }
        }
    }

    /// Parks what does not fit and starts the batches that may go.
    fn step(&mut self, now: Instant) {
        self.wake_at = None;
        if self.queue.is_empty() {
            // A lost connection's jobs were dropped while the lane waited for the ceiling or a
            // permit: with nothing to send, an in-flight permit goes back to the Pages that
            // have something.
            self.permit = None;
            self.waiting_permit = None;
            return;
        }
        let shared = self.shared.clone();
        let pipeline = &shared.settings.pipeline;
        let probe = match self.page.admission(now) {
            Admission::Blocked { reason, until } => {
                let rate = self.blocked_rate(reason);
                let blocked_for = until.saturating_duration_since(now);
                let keep = hold_limit(
                    pipeline.blocked_lane_capacity,
                    rate,
                    pipeline.max_hold,
                    blocked_for,
                );
                self.shed(keep, reason, blocked_for, rate);
                self.wake_at = Some(until);
                return;
            }
            Admission::Probe => true,
            Admission::Open => false,
        };
        let rate = f64::from(self.page.config().ceilings.rps.get());
        let keep = hold_limit(
            pipeline.lane_capacity,
            rate,
            pipeline.max_hold,
            Duration::ZERO,
        );
        self.shed(keep, ParkReason::LaneFull, Duration::ZERO, rate);
        self.dispatch(now, probe);
    }

    /// The rate at which a blocked Page will drain once it may send: its budget's refill for a
    /// spent budget (so parked jobs come back one refill apart), else its ceiling.
    fn blocked_rate(&self, reason: ParkReason) -> f64 {
        match reason {
            ParkReason::Budget => 1.0 / self.page.limiter().plan().period.as_secs_f64(),
            _ => f64::from(self.page.config().ceilings.rps.get()),
        }
    }

    /// Parks the jobs beyond `keep`. Each waits `blocked_for` (the rest of a block) plus its
    /// place in the Page's schedule at `rate`.
    fn shed(&mut self, keep: usize, reason: ParkReason, blocked_for: Duration, rate: f64) {
        let overflow = self.queue.shed(keep);
        if overflow.is_empty() {
            return;
        }
        let now = Instant::now();
        let now_ms = Utc::now().timestamp_millis();
        let queued = self.queue.len();
        for envelope in overflow {
            let remaining = envelope
                .state
                .park_due_ms
                .filter(|due| *due > now_ms)
                .map(|due| Duration::from_millis((due - now_ms) as u64));
            let delay = if envelope.state.parked > 0 {
                // Back from an earlier park: it keeps its reservation rather than taking a new
                // one, or every return would push the whole schedule back.
                blocked_for.max(self.planner.returning(remaining, queued, rate))
            } else {
                match reason {
                    ParkReason::LaneFull | ParkReason::Budget => {
                        blocked_for.max(self.planner.reserve(now, queued, rate))
                    }
                    _ => blocked_for.max(self.shared.settings.retry.tiers[0]),
                }
            };
            self.parking.push(ParkJob {
                envelope,
                reason,
                delay,
            });
        }
        self.parking_since.get_or_insert(now);
    }

    /// Parks the shed jobs once a bundle's worth is waiting or the oldest has waited
    /// [`PARK_LINGER`]; until then, wakes the lane when it will have.
    fn flush_parking(&mut self) {
        let Some(since) = self.parking_since else {
            return;
        };
        let due = since + PARK_LINGER;
        if self.parking.len() < self.shared.settings.retry.park_bundle && Instant::now() < due {
            self.wake(due);
            return;
        }
        self.parking_since = None;
        park::spawn(&self.shared, std::mem::take(&mut self.parking));
    }

    fn dispatch(&mut self, now: Instant, probe: bool) {
        let shared = self.shared.clone();
        let graph = &shared.settings.graph;
        while self.batches_in_flight < graph.max_in_flight_per_page && !self.queue.is_empty() {
            let max = if probe { 1 } else { graph.batch_size };
            let sendable = self.queue.sendable(max);
            if sendable == 0 {
                break;
            }
            if sendable < max && !probe {
                let due = self.queue.oldest().unwrap_or(now) + graph.linger;
                if now < due {
                    self.wake(due);
                    break;
                }
            }
            let Some(permit) = self.take_permit() else {
                break;
            };
            let limiter = self.page.limiter();
            let granted = match limiter.acquire(sendable as u32) {
                Grant::Granted(k) => k as usize,
                Grant::Wait(wait) => {
                    self.limited_since.get_or_insert(now);
                    self.permit = Some(permit);
                    self.wake(now + wait);
                    break;
                }
                Grant::BudgetSpent(wait) => {
                    self.permit = Some(permit);
                    self.page.with_control(|c| c.budget_spent(now + wait));
                    tracing::info!(page = %self.page.id, next_call_in_ms = wait.as_millis() as u64, "budget spent; parking the Page's overflow");
                    // Re-run the step: the Page is now blocked and its overflow is parked.
                    self.wake(now);
                    break;
                }
            };
            // Every batch records its wait, zero included, so the histogram's count is the
            // batch count and its low buckets show how often the ceiling held nothing back.
            let waited = self
                .limited_since
                .take()
                .map_or(0.0, |s| s.elapsed().as_secs_f64());
            self.shared.meters.limiter_wait.record(waited);
            let media = self.queue.media_in(granted);
            let media_allowed = match limiter.acquire_media(media as u32) {
                Ok(()) => media,
                Err(wait) => {
                    self.wake(now + wait);
                    0
                }
            };
            let batch = self.queue.take_batch(granted, media_allowed);
            if batch.is_empty() {
                self.permit = Some(permit);
                break;
            }
            let (batch, expired) = split_expired(batch);
            for envelope in expired {
                self.queue.release_recipient(envelope.recipient());
                let shared = self.shared.clone();
                tokio::spawn(async move {
                    let outcome = Shared::rejection(
                        DeadLetterReason::Expired,
                        format!(
                            "expires_at {} passed before the job could be sent",
                            envelope
                                .job
                                .expires_at
                                .map(|t| t.to_rfc3339())
                                .unwrap_or_default()
                        ),
                    );
                    shared.settle_envelope(envelope, outcome).await;
                });
            }
            if batch.is_empty() {
                self.permit = Some(permit);
                continue;
            }
            if probe {
                self.page.with_control(|c| c.probe_sent());
            }
            self.batches_in_flight += 1;
            self.shared.combiner.submit(dispatch::Part {
                page: self.page.clone(),
                recipients: self.queue.recipients(&batch),
                batch,
                permit,
                lane: self.inbox.clone(),
                alone: probe,
            });
            if probe {
                break;
            }
        }
    }

    fn wake(&mut self, at: Instant) {
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }

    /// A global in-flight permit, if one is free; otherwise queue for one (fairly, in order)
    /// and wake when it is granted.
    fn take_permit(&mut self) -> Option<OwnedSemaphorePermit> {
        if let Some(permit) = self.permit.take() {
            return Some(permit);
        }
        if self.waiting_permit.is_some() {
            return None;
        }
        match self.shared.in_flight.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                self.waiting_permit = Some(Box::pin(self.shared.in_flight.clone().acquire_owned()));
                None
            }
        }
    }

    /// Shutdown: nothing new starts; queued jobs go back to the broker, and the jobs shed or
    /// taken from a park bundle are parked.
    async fn hand_back(&mut self) {
        let mut parks = std::mem::take(&mut self.parking);
        self.parking_since = None;
        let mut requeues = Vec::new();
        for envelope in self.queue.drain() {
            if envelope.is_bundled() {
                // Handing back one job of a bundle hands back the whole bundle, jobs already
                // delivered included; a park of its own sends back only this one.
                parks.push(ParkJob {
                    envelope,
                    reason: ParkReason::LaneFull,
                    delay: self.shared.settings.retry.tiers[0],
                });
            } else {
                requeues.push(envelope);
            }
        }
        if parks.is_empty() && requeues.is_empty() {
            return;
        }
        let requeued = requeues
            .into_iter()
            .map(|e| self.shared.settle_envelope(e, Outcome::Requeue));
        futures_util::future::join(
            futures_util::future::join_all(requeued),
            self.shared.park(parks),
        )
        .await;
        self.page.lane_depth.store(0, Ordering::Relaxed);
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        self.shared.lanes.forget(&self.page.id, &self.inbox);
    }
}

async fn wait_permit(fut: &mut Option<PermitFuture>) -> Result<OwnedSemaphorePermit, AcquireError> {
    match fut {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

#[allow(clippy::vec_box)] // see dispatch::send
fn split_expired(batch: Vec<Box<Envelope>>) -> (Vec<Box<Envelope>>, Vec<Box<Envelope>>) {
    let now = Utc::now();
    batch.into_iter().partition(|e| !e.job.is_expired(now))
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    /// Whether the lane would wake now (and consumes the wake, as the lane's pass does).
    fn woken(inbox: &Inbox) -> bool {
        inbox.arrived.notified().now_or_never().is_some()
    }

    fn taken(inbox: &Inbox) -> usize {
        let mut msgs = Vec::new();
        inbox.take(&mut msgs);
        msgs.len()
    }

    fn done() -> LaneMsg {
        LaneMsg::Done {
            recipients: Recipients::default(),
        }
    }

    #[test]
    fn a_settled_batch_wakes_its_lane_only_when_the_lane_wants_it() {
        let inbox = Inbox::default();
        // Nothing queued: the settled batch waits for the lane's next pass.
        inbox.wants_done(false);
        inbox.send(done());
        assert!(!woken(&inbox));
        assert!(!inbox.is_empty(), "kept for the next pass");
        // The lane queued jobs before it waited: the batch already here wakes it.
        inbox.wants_done(true);
        assert!(woken(&inbox));
        assert_eq!(taken(&inbox), 1);
        assert!(inbox.is_empty());
        // While it wants them, each settled batch wakes it.
        inbox.send(done());
        assert!(woken(&inbox));
        assert_eq!(taken(&inbox), 1);
    }

    #[test]
    fn stopping_wakes_every_lane_once_without_a_message() {
        let lanes = Lanes::default();
        let inboxes: Vec<Arc<Inbox>> = (0..3).map(|_| Arc::new(Inbox::default())).collect();
        for (i, inbox) in inboxes.iter().enumerate() {
            inbox.wants_done(false);
            lanes
                .map
                .lock()
                .unwrap()
                .insert(format!("page-{i}").into(), inbox.clone());
        }
        assert!(!lanes.stopping());
        assert!(inboxes.iter().all(|i| !woken(i)), "idle lanes sleep");
        lanes.stop();
        assert!(lanes.stopping());
        for inbox in &inboxes {
            assert!(woken(inbox), "every lane hears of the stop");
            assert!(!woken(inbox), "once");
            assert_eq!(
                taken(inbox),
                0,
                "no message to take: the lane reads the flag"
            );
        }
    }

    #[test]
    fn other_messages_always_wake_the_lane_once_until_it_takes_them() {
        let inbox = Inbox::default();
        inbox.wants_done(false);
        inbox.send(done());
        inbox.send(LaneMsg::Forget { generation: 2 });
        inbox.send(LaneMsg::Forget { generation: 3 });
        assert!(woken(&inbox));
        assert!(!woken(&inbox), "one wake for what arrived before the pass");
        assert_eq!(taken(&inbox), 3, "the quiet settled batch comes with them");
        inbox.send(LaneMsg::Forget { generation: 4 });
        assert!(woken(&inbox), "a new wake after the pass took the rest");
    }
}
