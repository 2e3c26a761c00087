//! Acknowledging deliveries in bulk: one `basic.ack` with `multiple` for a run of settled
//! deliveries instead of a frame each.
//!
//! An ack frame costs the consumer about as much CPU as everything else it does for a job, so
//! pagerelay sends as few as it can without ever acknowledging a delivery early. [`AckWindow`] is
//! the pure bookkeeping of one consumer channel: every delivery tag from the oldest unsettled one
//! on, and whether its outcome is durable yet. [`Acks`] shares a window between the tasks that
//! settle deliveries and the flusher task that turns it into frames on the channel.
//!
//! The rule that keeps it safe: a `multiple` ack for tag T acknowledges every unacknowledged
//! delivery up to T on the channel, so it is sent only when every tag up to T is settled, and T
//! itself is one still to be acknowledged (an ack naming a tag the broker has already settled is a
//! channel error). A delivery whose outcome is durable but that sits behind an unsettled one waits
//! at most `hold` for it, then is acknowledged on its own: a slow job never holds up the acks of
//! the jobs behind it, nor the prefetch window they occupy.
//!
//! It does not decide outcomes or publish copies (see `pipeline::outcome`), and it does not own the
//! channel's lifecycle (see `pipeline::supervisor`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::telemetry;

/// Where one delivery tag stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Not received yet, though a later tag was: the consumers of one channel hand their
    /// deliveries over in their own order. It may be ours, so no run may step over it.
    Missing,
    /// Received; its outcome is not durable yet.
    Unsettled,
    /// A park bundle, settled once each of its `left` jobs is; handed back if any of them is.
    Shared { left: u32, requeue: bool },
    /// Its outcome is durable since this instant: to be acknowledged.
    Ack(Instant),
    /// To be handed back to the broker (nack with requeue).
    Requeue,
    /// A frame covering it has been handed to the channel.
    Sent,
}

/// The frames one flush sends, in this order: requeues first, so that a `multiple` ack sent after
/// them can never cover a delivery meant to go back to the queue.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Frames {
    /// `basic.nack` with `requeue`, one per tag.
    pub requeues: Vec<u64>,
    /// `basic.ack` with `multiple` for this tag: every tag up to it is settled.
    pub ack_through: Option<u64>,
    /// How many deliveries `ack_through` acknowledges.
    pub through_count: usize,
    /// `basic.ack` for one tag each.
    pub acks: Vec<u64>,
    /// Settled deliveries left waiting behind an unsettled one: a later flush sends them once
    /// their hold runs out, whether or not anything else is settled meanwhile.
    pub held: usize,
}

impl Frames {
    pub fn is_empty(&self) -> bool {
        self.requeues.is_empty() && self.ack_through.is_none() && self.acks.is_empty()
    }
}

/// The delivery tags of one consumer channel from the oldest not yet acknowledged on.
#[derive(Debug)]
pub struct AckWindow {
    /// The tag of `slots[0]`. A channel numbers its deliveries from 1.
    base: u64,
    slots: VecDeque<Slot>,
    /// Settlements of tags outside the window, acknowledged one by one.
    strays: Vec<(u64, bool)>,
    hold: Duration,
}

impl AckWindow {
    pub fn new(hold: Duration) -> Self {
        AckWindow {
            base: 1,
            slots: VecDeque::new(),
            strays: Vec::new(),
            hold,
        }
    }

    fn slot(&mut self, tag: u64) -> Option<&mut Slot> {
        let index = usize::try_from(tag.checked_sub(self.base)?).ok()?;
        self.slots.get_mut(index)
    }

    /// A delivery arrived with `tag`. Tags need not arrive in order: the channel's consumers
    /// (one per shard queue) each hand over their own deliveries.
    pub fn received(&mut self, tag: u64) {
        self.receive(tag, Slot::Unsettled);
    }

    /// A delivery carrying `jobs` jobs (a park bundle) arrived with `tag`: it is settled once
    /// each job is, so that it is acknowledged only when every job's outcome is durable.
    pub fn received_shared(&mut self, tag: u64, jobs: u32) {
        let slot = match jobs {
            0 => Slot::Unsettled,
            left => Slot::Shared {
                left,
                requeue: false,
            },
        };
        self.receive(tag, slot);
    }

    fn receive(&mut self, tag: u64, fresh: Slot) {
        let next = self.base + self.slots.len() as u64;
        if tag >= next {
            let gap = usize::try_from(tag - next).unwrap_or(usize::MAX);
            self.slots.extend(std::iter::repeat_n(Slot::Missing, gap));
            self.slots.push_back(fresh);
        } else if let Some(slot @ Slot::Missing) = self.slot(tag) {
            *slot = fresh;
        }
        // Anything else was received already, or is below the window: [`settled`] acknowledges
        // it on its own.
    }

    /// The outcome of `tag` is durable: acknowledge it (`ack`) or hand it back (`!ack`).
    pub fn settled(&mut self, tag: u64, ack: bool, now: Instant) {
        match self.slot(tag) {
            Some(slot @ (Slot::Unsettled | Slot::Missing)) => {
                *slot = if ack { Slot::Ack(now) } else { Slot::Requeue };
            }
            Some(slot) => {
                if let Slot::Shared { left, requeue } = *slot {
                    let requeue = requeue || !ack;
                    *slot = match left {
                        0 | 1 if requeue => Slot::Requeue,
                        0 | 1 => Slot::Ack(now),
                        left => Slot::Shared {
                            left: left - 1,
                            requeue,
                        },
                    };
                }
                // Anything else was settled twice: the first settlement stands.
            }
            None => self.strays.push((tag, ack)),
        }
    }

    /// Deliveries received and not yet covered by a frame.
    pub fn outstanding(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| !matches!(s, Slot::Sent | Slot::Missing))
            .count()
    }

    /// The frames to send now. `force` sends every settled delivery whatever its age (shutdown).
    pub fn flush(&mut self, now: Instant, force: bool) -> Frames {
        let mut frames = Frames::default();
        for (tag, ack) in self.strays.drain(..) {
            if ack {
                frames.acks.push(tag);
            } else {
                frames.requeues.push(tag);
            }
        }
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if *slot == Slot::Requeue {
                frames.requeues.push(self.base + i as u64);
                *slot = Slot::Sent;
            }
        }

        // The run of settled tags at the front, and the last one in it still to acknowledge.
        let mut run_end = None;
        let mut run_acks = 0;
        for (i, slot) in self.slots.iter().enumerate() {
            match slot {
                Slot::Ack(_) => {
                    run_end = Some(i);
                    run_acks += 1;
                }
                Slot::Sent => {}
                Slot::Missing | Slot::Unsettled | Slot::Shared { .. } | Slot::Requeue => break,
            }
        }
        if let Some(end) = run_end {
            if run_acks > 1 {
                frames.ack_through = Some(self.base + end as u64);
                frames.through_count = run_acks;
            } else {
                frames.acks.push(self.base + end as u64);
            }
            for slot in self.slots.range_mut(..=end) {
                *slot = Slot::Sent;
            }
        }

        // Behind an unsettled delivery: alone, once they have waited long enough.
        let hold = if force { Duration::ZERO } else { self.hold };
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if let Slot::Ack(since) = *slot {
                if now.saturating_duration_since(since) >= hold {
                    frames.acks.push(self.base + i as u64);
                    *slot = Slot::Sent;
                } else {
                    frames.held += 1;
                }
            }
        }

        while self.slots.front() == Some(&Slot::Sent) {
            self.slots.pop_front();
            self.base += 1;
        }
        frames
    }
}

/// The acknowledgements of one consumer channel, shared by everything that settles its
/// deliveries. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Acks {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    window: Mutex<AckWindow>,
    /// False once the channel failed or was finished: settlements are void, the broker
    /// redelivers whatever was not acknowledged.
    open: AtomicBool,
    /// Set by the flusher, under the window's lock, when a tick found nothing to send and nothing
    /// held: it then sleeps until the next settlement instead of ticking, where an idle channel
    /// would wake a worker 100 to 1,000 times a second. Cleared, under the same lock, by the
    /// settlement that wakes it.
    asleep: AtomicBool,
    settled: Notify,
}

/// The task that sends a channel's frames; [`Flusher::finish`] sends the last ones.
#[derive(Debug)]
pub struct Flusher {
    stop: CancellationToken,
    /// Returns when it last handed a frame to the channel.
    task: JoinHandle<Option<Instant>>,
}

impl Acks {
    /// Starts the flusher of `channel`: every `hold / 4` (1 to 10 ms) it sends what the window
    /// allows, and after a tick with nothing to send or hold it sleeps until the next
    /// settlement.
    pub fn start(channel: Channel, hold: Duration) -> (Acks, Flusher) {
        let acks = Acks {
            inner: Arc::new(Inner {
                window: Mutex::new(AckWindow::new(hold)),
                open: AtomicBool::new(true),
                asleep: AtomicBool::new(false),
                settled: Notify::new(),
            }),
        };
        let stop = CancellationToken::new();
        let tick = (hold / 4).clamp(Duration::from_millis(1), Duration::from_millis(10));
        let task = tokio::spawn(flush_loop(acks.clone(), channel, tick, stop.clone()));
        (acks, Flusher { stop, task })
    }

    fn window(&self) -> MutexGuard<'_, AckWindow> {
        // The window's methods do not panic; a poisoned lock still holds a consistent window.
        self.inner
            .window
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a delivery; every delivery of the channel passes here, in the order received.
    pub fn received(&self, tag: u64) {
        self.window().received(tag);
    }

    /// Records a delivery that carries `jobs` jobs, each settled on its own with the delivery's
    /// tag (see [`AckWindow::received_shared`]).
    pub fn received_shared(&self, tag: u64, jobs: u32) {
        self.window().received_shared(tag, jobs);
    }

    /// The outcome of `tag` is durable: acknowledge it. False if the channel is gone, and with it
    /// the delivery (the broker redelivers it).
    pub fn ack(&self, tag: u64) -> bool {
        self.settle(tag, true)
    }

    /// Hands `tag` back to the broker. False if the channel is gone (which hands it back too).
    pub fn requeue(&self, tag: u64) -> bool {
        self.settle(tag, false)
    }

    /// True while acknowledgements can still reach the broker.
    pub fn is_open(&self) -> bool {
        self.inner.open.load(Ordering::Acquire)
    }

    fn settle(&self, tag: u64, ack: bool) -> bool {
        // Checked under the window's lock, which the last flush holds while it closes: a
        // settlement either makes the last flush or is told the channel is gone.
        let mut window = self.window();
        if !self.is_open() {
            return false;
        }
        window.settled(tag, ack, Instant::now());
        // Relaxed: the flag is only read and written under the window's lock. A load, not a
        // swap: on a busy channel it is always false, and a read costs no locked instruction.
        if self.inner.asleep.load(Ordering::Relaxed) {
            self.inner.asleep.store(false, Ordering::Relaxed);
            self.inner.settled.notify_one();
        }
        true
    }

    fn close(&self) {
        self.inner.open.store(false, Ordering::Release);
    }
}

impl Flusher {
    /// Sends every settled delivery's frame now and stops. Deliveries still unsettled stay
    /// unacknowledged: closing the channel hands them back.
    ///
    /// Returns when the last frame was handed to the channel, if one ever was; a flusher that
    /// panicked counts as having sent one just now.
    pub async fn finish(mut self) -> Option<Instant> {
        self.stop.cancel();
        (&mut self.task)
            .await
            .unwrap_or_else(|_| Some(Instant::now()))
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        // A session dropped without `finish` (its connection is lost): nothing more can be sent.
        self.stop.cancel();
    }
}

async fn flush_loop(
    acks: Acks,
    channel: Channel,
    tick: Duration,
    stop: CancellationToken,
) -> Option<Instant> {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sent = None;
    let mut asleep = false;
    loop {
        let force = tokio::select! {
            biased;
            _ = stop.cancelled() => true,
            _ = acks.inner.settled.notified(), if asleep => {
                // Flush a tick from now, so that the settlements around this one share its
                // frame, rather than at the stale tick the interval would fire at once.
                asleep = false;
                interval.reset();
                continue;
            }
            _ = interval.tick(), if !asleep => false,
        };
        let frames = {
            let mut window = acks.window();
            if force {
                acks.close();
            }
            let frames = window.flush(Instant::now(), force);
            // A tick that found nothing to send and nothing held: nothing will be due before the
            // next settlement, which wakes us. A busy channel sends something every tick and so
            // keeps ticking, its settlements never paying for a wake.
            asleep = frames.is_empty() && frames.held == 0;
            acks.inner.asleep.store(asleep, Ordering::Relaxed);
            frames
        };
        if let Err(e) = send(&channel, &frames).await {
            tracing::debug!(error = %e, "acknowledgements failed; the broker redelivers the jobs");
            let lost = frames.requeues.len() + frames.through_count + frames.acks.len();
            metrics::counter!(telemetry::SETTLE_FAILURES, "step" => "ack").increment(lost as u64);
            acks.close();
            return last_sent;
        }
        if !frames.is_empty() {
            last_sent = Some(Instant::now());
        }
        if force {
            return last_sent;
        }
    }
}

async fn send(channel: &Channel, frames: &Frames) -> Result<(), lapin::Error> {
    if frames.is_empty() {
        return Ok(());
    }
    let requeue = BasicNackOptions {
        multiple: false,
        requeue: true,
    };
    // Frames on a channel reach the broker in the order they are handed over, so they are sent
    // in the order listed, each awaited only in the join.
    let requeues = frames
        .requeues
        .iter()
        .map(|tag| channel.basic_nack(*tag, requeue));
    futures_util::future::try_join_all(requeues).await?;
    if let Some(tag) = frames.ack_through {
        channel
            .basic_ack(tag, BasicAckOptions { multiple: true })
            .await?;
        metrics::counter!(telemetry::ACK_FRAMES, "kind" => "multiple").increment(1);
    }
    let acks = frames
        .acks
        .iter()
        .map(|tag| channel.basic_ack(*tag, BasicAckOptions::default()));
    futures_util::future::try_join_all(acks).await?;
    metrics::counter!(telemetry::ACK_FRAMES, "kind" => "single")
        .increment(frames.acks.len() as u64);
    metrics::counter!(telemetry::ACK_FRAMES, "kind" => "requeue")
        .increment(frames.requeues.len() as u64);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOLD: Duration = Duration::from_millis(20);

    fn window(tags: std::ops::RangeInclusive<u64>) -> AckWindow {
        let mut w = AckWindow::new(HOLD);
        for tag in tags {
            w.received(tag);
        }
        w
    }

    fn ms(start: Instant, n: u64) -> Instant {
        start + Duration::from_millis(n)
    }

    #[test]
    fn a_bundle_is_acknowledged_once_every_job_in_it_is_settled() {
        let t0 = Instant::now();
        let mut w = AckWindow::new(HOLD);
        w.received(1);
        w.received_shared(2, 3);
        w.received(3);
        for tag in [1, 3, 2, 2] {
            w.settled(tag, true, t0);
        }
        let frames = w.flush(ms(t0, 100), false);
        assert_eq!(frames.ack_through, None);
        assert_eq!(frames.acks, vec![1, 3], "the bundle still has a job out");
        assert_eq!(w.outstanding(), 1);
        w.settled(2, true, ms(t0, 100));
        let frames = w.flush(ms(t0, 100), false);
        assert_eq!(frames.acks, vec![2]);
        assert_eq!(w.outstanding(), 0);
    }

    #[test]
    fn a_bundle_with_one_job_handed_back_goes_back_whole() {
        let t0 = Instant::now();
        let mut w = AckWindow::new(HOLD);
        w.received_shared(1, 2);
        w.settled(1, false, t0);
        assert!(w.flush(t0, true).is_empty(), "one job is still out");
        w.settled(1, true, t0);
        let frames = w.flush(t0, false);
        assert_eq!(frames.requeues, vec![1]);
        assert_eq!(frames.ack_through, None);
        assert!(frames.acks.is_empty());
    }

    #[test]
    fn a_settled_run_from_the_oldest_delivery_is_one_multiple_ack() {
        let t0 = Instant::now();
        let mut w = window(1..=5);
        for tag in [3, 1, 2] {
            w.settled(tag, true, t0);
        }
        let frames = w.flush(t0, false);
        assert_eq!(frames.ack_through, Some(3));
        assert_eq!(frames.through_count, 3);
        assert!(frames.acks.is_empty() && frames.requeues.is_empty());
        assert_eq!(w.outstanding(), 2);
        // Nothing new settled: nothing to send.
        assert!(w.flush(ms(t0, 100), false).is_empty());
    }

    #[test]
    fn settled_deliveries_behind_an_unsettled_one_wait_at_most_the_hold() {
        let t0 = Instant::now();
        let mut w = window(1..=4);
        w.settled(2, true, t0);
        w.settled(4, true, ms(t0, 5));
        let frames = w.flush(ms(t0, 19), false);
        assert!(frames.is_empty(), "tag 1 may still settle");
        assert_eq!(frames.held, 2, "2 and 4 wait for their hold");
        // Tag 2 has waited the hold; tag 4 has not.
        let frames = w.flush(ms(t0, 20), false);
        assert_eq!(frames.acks, vec![2]);
        assert_eq!(frames.ack_through, None);
        assert_eq!(frames.held, 1, "4 still waits");
        // Tag 1 settles: 1 is the whole run (2 is sent), so a single ack, then 3 and 4 can run.
        w.settled(1, true, ms(t0, 21));
        w.settled(3, true, ms(t0, 21));
        let frames = w.flush(ms(t0, 22), false);
        assert_eq!(frames.ack_through, Some(4));
        assert_eq!(frames.through_count, 3, "1, 3 and 4; 2 was acked alone");
        assert_eq!(frames.held, 0);
        assert_eq!(w.outstanding(), 0);
    }

    #[test]
    fn a_window_of_unsettled_deliveries_holds_nothing_for_a_later_flush() {
        // What lets the flusher sleep until the next settlement: nothing is due before one.
        let t0 = Instant::now();
        let mut w = window(1..=3);
        let frames = w.flush(ms(t0, 100), false);
        assert!(frames.is_empty());
        assert_eq!(frames.held, 0);
        assert_eq!(w.outstanding(), 3);
    }

    #[test]
    fn a_run_never_ends_on_a_tag_already_acknowledged() {
        let t0 = Instant::now();
        let mut w = window(1..=3);
        w.settled(3, true, t0);
        assert_eq!(w.flush(ms(t0, 20), false).acks, vec![3]);
        w.settled(1, true, ms(t0, 21));
        w.settled(2, true, ms(t0, 21));
        let frames = w.flush(ms(t0, 21), false);
        // Through 2, not 3: the broker no longer knows tag 3.
        assert_eq!(frames.ack_through, Some(2));
        assert_eq!(frames.through_count, 2);
    }

    #[test]
    fn requeues_go_first_so_a_run_may_step_over_them() {
        let t0 = Instant::now();
        let mut w = window(1..=4);
        w.settled(1, true, t0);
        w.settled(2, false, t0);
        w.settled(3, true, t0);
        let frames = w.flush(t0, false);
        assert_eq!(frames.requeues, vec![2]);
        // The nack of 2 is sent before the ack, so the run may step over it.
        assert_eq!(frames.ack_through, Some(3));
        assert_eq!(frames.through_count, 2);
        assert!(frames.acks.is_empty());
        assert_eq!(w.outstanding(), 1);
    }

    #[test]
    fn force_sends_everything_settled_and_nothing_unsettled() {
        let t0 = Instant::now();
        let mut w = window(1..=4);
        w.settled(2, true, t0);
        w.settled(3, true, t0);
        let frames = w.flush(t0, true);
        assert_eq!(frames.acks, vec![2, 3]);
        assert_eq!(frames.ack_through, None);
        assert_eq!(w.outstanding(), 2, "1 and 4 stay unacknowledged");
    }

    #[test]
    fn tags_may_arrive_out_of_order_and_a_run_never_steps_over_a_missing_one() {
        let t0 = Instant::now();
        // Two shard consumers on one channel: tag 3 is still in the other consumer's buffer.
        let mut w = AckWindow::new(HOLD);
        for tag in [1, 2, 4] {
            w.received(tag);
            w.settled(tag, true, t0);
        }
        let frames = w.flush(t0, false);
        assert_eq!(
            frames.ack_through,
            Some(2),
            "not through 4: that would ack 3 unseen"
        );
        assert!(frames.acks.is_empty(), "4 may wait for 3");
        w.received(3);
        w.settled(3, true, ms(t0, 1));
        let frames = w.flush(ms(t0, 1), false);
        assert_eq!(frames.ack_through, Some(4));
        assert_eq!(frames.through_count, 2);
        assert_eq!(w.outstanding(), 0);
    }

    #[test]
    fn a_tag_that_never_arrives_only_delays_the_ones_after_it() {
        let t0 = Instant::now();
        let mut w = AckWindow::new(HOLD);
        w.received(2);
        w.settled(2, true, t0);
        assert!(w.flush(ms(t0, 19), false).is_empty());
        let frames = w.flush(ms(t0, 20), false);
        assert_eq!(frames.acks, vec![2]);
        assert_eq!(frames.ack_through, None);
        // Tag 1 never came; it is never acknowledged, and nothing else is either.
        assert!(w.flush(ms(t0, 1000), true).is_empty());
    }

    #[test]
    fn settling_twice_or_outside_the_window_is_harmless() {
        let t0 = Instant::now();
        let mut w = window(1..=2);
        w.settled(1, true, t0);
        w.settled(1, false, t0);
        w.settled(9, true, t0);
        let frames = w.flush(t0, false);
        assert!(frames.requeues.is_empty(), "the first settlement stands");
        assert_eq!(frames.acks, vec![9, 1]);
    }

    #[test]
    fn the_window_slides_and_keeps_its_numbering() {
        let t0 = Instant::now();
        let mut w = AckWindow::new(HOLD);
        for tag in 1..=10_000u64 {
            w.received(tag);
            w.settled(tag, true, t0);
            if tag % 1000 == 0 {
                let frames = w.flush(t0, false);
                assert_eq!(frames.ack_through, Some(tag));
                assert_eq!(frames.through_count, 1000);
            }
        }
        assert_eq!(w.outstanding(), 0);
        assert!(w.slots.is_empty());
    }
}
