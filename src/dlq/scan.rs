//! Reading the whole dead-letter queue without taking anything out of it.
//!
//! A scan counts the queue (a passive declare gives the number of ready messages) and consumes
//! it with manual acknowledgement until it has seen that many messages. It acks only what its
//! caller moved elsewhere; everything else it holds unacked until it ends, and hands back by
//! closing its channels, which makes the broker requeue every delivery that was not acked.
//! Nothing is ever only in this process: if it dies, the broker requeues the same way when the
//! connection drops.
//!
//! A consumer can hold only so many unacked messages: its prefetch count (at most 65,535), and on
//! RabbitMQ 3.10 a quorum queue treats "no limit" as a credit of 2,000 — a scan that held on to
//! everything with one consumer would stall there (checked on 3.10.8). So a scan reads in
//! *rounds* of [`CHUNK`] held messages: when a round's consumer holds that many, it is cancelled
//! (its channel stays open, so the messages stay held and the ones the caller moves can still be
//! acked) and a new round starts on a channel of its own. Nothing is handed back before the scan
//! ends, so no round is ever given a message the scan has already seen.
//!
//! What RabbitMQ 3.10 does with the order (checked on 3.10.8 with a quorum queue):
//!
//! - Messages handed back when a channel closes go to the **back** of a quorum queue, in the
//!   order they were delivered. A scan that reads the *whole* queue and closes its rounds in order
//!   therefore leaves it in the order it found it. A scan that stopped halfway would rotate the
//!   queue — what it read would end up behind what it did not — so every scan reads to the end,
//!   even `peek -n 1`, and a replay with `--limit` keeps scanning (moving nothing more) after the
//!   limit is reached. An interrupted scan rotates the queue; it loses nothing.
//! - A message dead-lettered while a scan runs joins the back of the queue; the scan stops after
//!   as many messages as it counted, and what it hands back ends up behind the newcomer.
//! - Deliveries on their way to a consumer when it is cancelled are given back to the **end** of
//!   the queue. So a round is stopped only when it can have nothing on its way: when it holds a
//!   whole chunk and every ack owed to it has been sent (no credit left; see
//!   [`Scan::wants_new_round`]), and at the end of the scan, when all that is left to deliver is
//!   what arrived after the count.
//! - The queue takes handed-back messages back asynchronously: for a moment after a channel
//!   closed it counts fewer ready messages than it holds. [`Scan::close`] waits until each round
//!   is back before closing the next (so rounds come back in order), and until the count is
//!   whole, so that the next command counts the whole queue.
//! - Every hand-back counts as a redelivery: the quorum queue's `x-delivery-count` goes up by one
//!   per scan. The dead-letter queue has no delivery limit on 3.10, so that is harmless there;
//!   see the README on RabbitMQ 4.x, whose quorum queues default to a limit of 20.
//!
//! A scan wants the queue to itself: while one runs, the queue counts fewer ready messages, and a
//! second scan (another operator's `dlq stats`, a concurrent replay) would miscount or split the
//! queue with the first. So a scan refuses to start when the queue has a consumer, and asks for
//! exclusive consumers too (RabbitMQ 3.10's quorum queues accept a second consumer regardless,
//! hence the count).
//!
//! It does not interpret messages (see `letter`).

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection, Consumer, Queue};

use super::DlqError;

/// Messages a round holds before the scan starts the next (its prefetch count). With the
/// broker's default of 2,047 channels per connection, a scan can hold about 20 million.
pub const CHUNK: u16 = 10_000;

/// How long a scan waits for the next delivery before concluding that the queue holds fewer
/// messages than it counted (another client took some between the count and the consume).
const IDLE: Duration = Duration::from_secs(5);

/// How long closing a scan waits for the queue to count the messages of one round again.
pub const RETURN_WAIT: Duration = Duration::from_secs(10);

/// How long a scan that acked messages waits before closing its channels.
///
/// A quorum queue's channel-side client stashes acks instead of sending them while more than 32
/// of its commands await the queue, and sends the stash only when the queue catches up. If the
/// channel closes first, the stashed acks are forgotten and their messages return to the queue
/// (RabbitMQ issue #10327, seen here on 3.10.8 when a replay acked a burst and closed at once).
/// For a replay that means a letter both republished and back in the dead-letter queue. The
/// replay keeps fewer publishes in flight than that limit, and the scan waits this long after
/// the last ack so that any stash is flushed; a replay is rare enough for the pause not to matter.
pub const SETTLE_GRACE: Duration = Duration::from_millis(500);

/// One pass over a queue.
pub struct Scan<'c> {
    connection: &'c Connection,
    queue: String,
    chunk: u16,
    /// Every round so far, oldest first; the last one is the one consuming.
    rounds: Vec<Round>,
    /// Deliveries that reached a round's consumer while it was being cancelled, in order.
    pending: VecDeque<Scanned>,
    depth: u32,
    seen: u32,
}

/// One delivery of a scan, with the round (channel) it belongs to: acks go to that channel.
pub struct Scanned {
    pub delivery: Delivery,
    pub round: usize,
}

/// One channel's worth of a scan.
struct Round {
    channel: Channel,
    consumer: Consumer,
    consuming: bool,
    /// Deliveries taken from this round's consumer, and how many of them the caller acked.
    delivered: u64,
    acked: u64,
}

impl<'c> Scan<'c> {
    /// Counts `queue` and starts consuming it, holding at most `chunk` messages per round.
    pub async fn open(
        connection: &'c Connection,
        queue: &str,
        chunk: u16,
    ) -> Result<Scan<'c>, DlqError> {
        let channel = connection
            .create_channel()
            .await
            .map_err(DlqError::Channel)?;
        let counted = count(&channel, queue).await?;
        if counted.consumer_count() > 0 {
            let _ = channel.close(200, "busy".into()).await;
            return Err(DlqError::Busy {
                queue: queue.to_string(),
                consumers: counted.consumer_count(),
            });
        }
        let chunk = chunk.max(1);
        let first = Round::start(channel, queue, chunk).await?;
        let mut scan = Scan {
            connection,
            queue: queue.to_string(),
            chunk,
            rounds: vec![first],
            pending: VecDeque::new(),
            depth: counted.message_count(),
            seen: 0,
        };
        // Two scans that counted at the same moment both saw no consumer; both see two now.
        let consumers = count(&scan.rounds[0].channel, queue)
            .await?
            .consumer_count();
        if consumers > 1 {
            for round in scan.rounds.drain(..) {
                let _ = round.channel.close(200, "busy".into()).await;
            }
            return Err(DlqError::Busy {
                queue: queue.to_string(),
                consumers: consumers - 1,
            });
        }
        Ok(scan)
    }

    /// Ready messages in the queue when the scan started.
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// Messages delivered so far.
    pub fn seen(&self) -> u32 {
        self.seen
    }

    /// Records that the caller acked one delivery of `round`.
    pub fn acked(&mut self, round: usize) {
        if let Some(round) = self.rounds.get_mut(round) {
            round.acked += 1;
        }
    }

    /// The next message, or `None` once the scan has seen as many as were counted (or the queue
    /// ran dry first). Cancel-safe once [`Scan::ensure_round`] has returned: a caller that
    /// polls this in a `select!` calls that first.
    pub async fn next(&mut self) -> Result<Option<Scanned>, DlqError> {
        self.ensure_round().await?;
        if self.seen >= self.depth {
            return Ok(None);
        }
        if let Some(scanned) = self.pending.pop_front() {
            self.seen += 1;
            return Ok(Some(scanned));
        }
        let index = self.rounds.len() - 1;
        let round = self.current();
        match tokio::time::timeout(IDLE, round.consumer.next()).await {
            Ok(Some(Ok(delivery))) => {
                round.delivered += 1;
                self.seen += 1;
                Ok(Some(Scanned {
                    delivery,
                    round: index,
                }))
            }
            Ok(Some(Err(source))) => Err(DlqError::Lost(source)),
            Ok(None) => Err(DlqError::Cancelled(self.queue.clone())),
            Err(_) => Ok(None),
        }
    }

    /// True when the current round holds a whole chunk, so that the next read starts a new one.
    ///
    /// A caller that acks must first send every ack it owes the current round (and report it
    /// with [`Scan::acked`]): an ack still to come would let the broker hand the round more
    /// messages while it is being stopped, and RabbitMQ gives such messages back to the *end*
    /// of the queue, out of order (seen on 3.10.8). With every ack sent, a round holding a whole
    /// chunk has no credit left, so nothing is on its way to it.
    pub fn wants_new_round(&self) -> bool {
        self.seen < self.depth
            && self.pending.is_empty()
            && self
                .rounds
                .last()
                .is_some_and(|r| r.held() >= u64::from(self.chunk))
    }

    /// Starts a new round when [`Scan::wants_new_round`].
    pub async fn ensure_round(&mut self) -> Result<(), DlqError> {
        if self.wants_new_round() {
            self.next_round().await?;
        }
        Ok(())
    }

    fn current(&mut self) -> &mut Round {
        self.rounds.last_mut().expect("a scan has a round")
    }

    /// Stops the current round's consumer (keeping its channel, and so its messages) and starts
    /// a new round.
    async fn next_round(&mut self) -> Result<(), DlqError> {
        let index = self.rounds.len() - 1;
        let round = self.rounds.last_mut().expect("a scan has a round");
        round.cancel().await?;
        // Nothing should reach a round with no credit left, but whatever did before the
        // cancel comes before anything the next round gets.
        while let Ok(Some(Ok(delivery))) = tokio::time::timeout(IDLE, round.consumer.next()).await {
            round.delivered += 1;
            self.pending.push_back(Scanned {
                delivery,
                round: index,
            });
        }
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(DlqError::Channel)?;
        let next = Round::start(channel, &self.queue, self.chunk).await?;
        self.rounds.push(next);
        Ok(())
    }

    /// Ends the scan: hands every delivery that was not acked back to the queue, one round at a
    /// time in order, waiting (up to [`RETURN_WAIT`] each) until the queue counts them again, so
    /// that rounds come back in order and a command run right after this one (`dlq stats` then
    /// `replay`) counts — and scans — the whole queue.
    pub async fn close(self) {
        if self.rounds.iter().any(|r| r.acked > 0) {
            // See SETTLE_GRACE: let the queue apply the last acks before the channels go.
            tokio::time::sleep(SETTLE_GRACE).await;
        }
        let counter = self.connection.create_channel().await.ok();
        let mut expected = match &counter {
            Some(channel) => count(channel, &self.queue)
                .await
                .map_or(0, |q| u64::from(q.message_count())),
            None => 0,
        };
        let mut rounds = self.rounds;
        // Every consumer stops before any channel closes: a consumer still running would be
        // handed the first messages an earlier round gives back, and give them back last.
        for round in &mut rounds {
            if round.channel.status().connected() {
                let _ = round.cancel().await;
            }
        }
        for round in rounds {
            if !round.channel.status().connected() {
                // Gone with its connection: the broker hands everything back on its own time.
                continue;
            }
            let _ = round.channel.close(200, "scan done".into()).await;
            let held = round.held();
            if held == 0 {
                continue;
            }
            expected += held;
            let Some(channel) = &counter else { continue };
            let deadline = tokio::time::Instant::now() + RETURN_WAIT;
            while let Ok(q) = count(channel, &self.queue).await
                && u64::from(q.message_count()) < expected
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if let Some(channel) = counter
            && channel.status().connected()
        {
            let _ = channel.close(200, "scan done".into()).await;
        }
    }
}

impl Round {
    async fn start(channel: Channel, queue: &str, chunk: u16) -> Result<Round, DlqError> {
        channel
            .basic_qos(chunk, BasicQosOptions { global: false })
            .await
            .map_err(DlqError::Channel)?;
        let consumer = channel
            .basic_consume(
                ShortString::from(queue),
                ShortString::from(""),
                BasicConsumeOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|source| DlqError::Consume {
                queue: queue.to_string(),
                source,
            })?;
        Ok(Round {
            channel,
            consumer,
            consuming: true,
            delivered: 0,
            acked: 0,
        })
    }

    /// Messages of this round the scan still holds.
    fn held(&self) -> u64 {
        self.delivered - self.acked
    }

    /// Stops the round's consumer. Cancelled explicitly (not by dropping it) so that the
    /// cancel is done before anything that depends on it, and a later drop does not try to
    /// cancel it on a closed channel.
    async fn cancel(&mut self) -> Result<(), DlqError> {
        if !self.consuming {
            return Ok(());
        }
        self.consuming = false;
        self.channel
            .basic_cancel(self.consumer.tag(), BasicCancelOptions::default())
            .await
            .map_err(DlqError::Lost)
    }
}

/// A passive declare: the queue's ready messages and consumers, or why it cannot be read.
async fn count(channel: &Channel, queue: &str) -> Result<Queue, DlqError> {
    channel
        .queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|source| DlqError::NoQueue {
            queue: queue.to_string(),
            source,
        })
}
