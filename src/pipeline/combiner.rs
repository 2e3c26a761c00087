//! The combiner: packs the batches lanes release — each one Page's jobs — into Graph batch
//! requests of up to 50 operations.
//!
//! A lane only ever batches its own Page's jobs, and a quiet Page has one or two at a time: on
//! their own, a thousand quiet Pages make a thousand one-operation requests, and the HTTP request
//! costs far more than the operation. Graph lets each operation of a batch carry its own Page's
//! token, so the combiner lets parts released within `graph.combine_linger` of each other share
//! one request. Each part keeps everything that is its Page's: its permit, its limiter charge
//! (already taken by the lane), its health signals and its settlement (see `dispatch`). A probe
//! (a Page whose circuit is open, or that is paused) shares with no one: its Page is the one
//! most likely to have its request refused as a whole.
//!
//! [`Packer`] is the pure packing decision; [`Combiner`] is the task around it. It does not choose
//! what a Page may send (the lane and its limiter do) or classify replies (`dispatch`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::dispatch::{self, Part};

/// Parts waiting to share a request: up to `max_ops` operations, held at most `linger` after
/// the first arrived.
#[derive(Debug)]
pub struct Packer<T> {
    items: Vec<T>,
    ops: usize,
    first_at: Option<Instant>,
    max_ops: usize,
    linger: Duration,
}

impl<T> Packer<T> {
    pub fn new(max_ops: usize, linger: Duration) -> Self {
        Packer {
            items: Vec::new(),
            ops: 0,
            first_at: None,
            max_ops,
            linger,
        }
    }

    /// Adds `item` of `ops` operations. Returns the packs ready to go: the waiting one when
    /// `item` does not fit beside it, and the new one once it is full. An item `alone` goes at
    /// once in a pack of its own, and the waiting pack keeps waiting.
    pub fn push(&mut self, item: T, ops: usize, alone: bool, now: Instant) -> Vec<Vec<T>> {
        if alone {
            return vec![vec![item]];
        }
        let mut ready = Vec::new();
        if self.ops + ops > self.max_ops
            && let Some(pack) = self.take()
        {
            ready.push(pack);
        }
        self.first_at.get_or_insert(now);
        self.items.push(item);
        self.ops += ops;
        if self.ops >= self.max_ops
            && let Some(pack) = self.take()
        {
            ready.push(pack);
        }
        ready
    }

    /// When the waiting pack must go, if there is one.
    pub fn due(&self) -> Option<Instant> {
        self.first_at.map(|first| first + self.linger)
    }

    /// The waiting pack, if any.
    pub fn take(&mut self) -> Option<Vec<T>> {
        self.first_at = None;
        self.ops = 0;
        (!self.items.is_empty()).then(|| std::mem::take(&mut self.items))
    }
}

/// Where lanes hand their batches.
#[derive(Debug)]
pub struct Combiner {
    tx: mpsc::UnboundedSender<Part>,
}

impl Combiner {
    /// A combiner and the receiving end for [`run`].
    pub fn new() -> (Combiner, mpsc::UnboundedReceiver<Part>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Combiner { tx }, rx)
    }

    /// Queues one Page's batch for sending.
    pub fn submit(&self, part: Part) {
        // The receiver lives as long as the process's pipeline; should it be gone, dropping the
        // part drops its deliveries unacknowledged, and the broker redelivers them.
        let _ = self.tx.send(part);
    }
}

/// Packs submitted parts into requests and sends each on its own task, until `stop`; then sends
/// whatever is waiting.
pub async fn run(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Part>,
    stop: CancellationToken,
) {
    let graph = &shared.settings.graph;
    // Validated to at most the 50 operations Graph accepts.
    let mut packer = Packer::new(graph.batch_size, graph.combine_linger);
    let send = |parts: Vec<Part>| {
        tokio::spawn(dispatch::send(shared.clone(), parts));
    };
    let add = |packer: &mut Packer<Part>, part: Part| {
        let (ops, alone) = (part.batch.len(), part.alone);
        packer
            .push(part, ops, alone, Instant::now())
            .into_iter()
            .for_each(send);
    };
    loop {
        let due = packer.due();
        tokio::select! {
            biased;
            part = rx.recv() => match part {
                Some(part) => add(&mut packer, part),
                None => break,
            },
            _ = sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                packer.take().into_iter().for_each(send);
                continue;
            }
            _ = stop.cancelled() => break,
        }
        // Whatever else is queued joins now, so a burst becomes full requests at once.
        while let Ok(part) = rx.try_recv() {
            add(&mut packer, part);
        }
        if packer.due().is_some_and(|due| due <= Instant::now()) {
            packer.take().into_iter().for_each(send);
        }
    }
    while let Ok(part) = rx.try_recv() {
        add(&mut packer, part);
    }
    packer.take().into_iter().for_each(send);
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINGER: Duration = Duration::from_millis(2);

    #[test]
    fn parts_share_a_pack_until_it_is_full() {
        let t0 = Instant::now();
        let mut p = Packer::new(50, LINGER);
        assert!(p.push("a", 20, false, t0).is_empty());
        assert!(p.push("b", 20, false, t0).is_empty());
        assert_eq!(p.due(), Some(t0 + LINGER));
        assert_eq!(p.push("c", 10, false, t0), vec![vec!["a", "b", "c"]]);
        assert_eq!(p.due(), None);
        assert_eq!(p.take(), None);
    }

    #[test]
    fn a_part_that_does_not_fit_sends_the_waiting_pack_first() {
        let t0 = Instant::now();
        let mut p = Packer::new(50, LINGER);
        assert!(p.push("a", 30, false, t0).is_empty());
        let later = t0 + Duration::from_millis(1);
        assert_eq!(p.push("b", 30, false, later), vec![vec!["a"]]);
        // The linger restarts with the part that now waits.
        assert_eq!(p.due(), Some(later + LINGER));
        assert_eq!(p.take(), Some(vec!["b"]));
    }

    #[test]
    fn a_full_part_goes_alone_and_at_once() {
        let t0 = Instant::now();
        let mut p = Packer::new(50, LINGER);
        assert!(p.push("a", 1, false, t0).is_empty());
        assert_eq!(p.push("b", 50, false, t0), vec![vec!["a"], vec!["b"]]);
        assert_eq!(p.due(), None);
    }

    #[test]
    fn without_a_linger_the_pack_is_due_at_once() {
        let t0 = Instant::now();
        let mut p = Packer::new(50, Duration::ZERO);
        assert!(p.push("a", 1, false, t0).is_empty());
        assert_eq!(p.due(), Some(t0));
    }

    #[test]
    fn a_part_alone_goes_at_once_and_the_waiting_pack_keeps_waiting() {
        let t0 = Instant::now();
        let mut p = Packer::new(50, LINGER);
        assert!(p.push("a", 10, false, t0).is_empty());
        assert_eq!(p.push("probe", 1, true, t0), vec![vec!["probe"]]);
        assert_eq!(p.due(), Some(t0 + LINGER));
        assert_eq!(p.take(), Some(vec!["a"]));
    }
}
