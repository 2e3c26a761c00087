//! The pipeline's two per-batch decisions, without I/O: a limiter grant for one of 10,000 Pages
//! (each with its rps, media and daily-budget buckets, on a fake clock so every grant is real
//! arithmetic rather than a refusal), and lane scheduling — filling a 50-operation batch from a
//! lane whose recipients repeat, then releasing them as the batch settles.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use governor::clock::FakeRelativeClock;
use pagerelay::config::{LimitSettings, LoadOptions, Settings};
use pagerelay::pipeline::batcher::{LaneItem, LaneQueue};
use pagerelay::pipeline::limiter::{BudgetPlan, Ceilings, Grant, PageLimiter};
use tokio::time::Instant;

const PAGES: usize = 10_000;

/// 10,000 Pages with full buckets, sharing one fake clock.
fn pages(limits: &LimitSettings) -> (FakeRelativeClock, Vec<PageLimiter<FakeRelativeClock>>) {
    let clock = FakeRelativeClock::default();
    let ceilings = Ceilings {
        rps: NonZeroU32::new(250).unwrap(),
        rps_burst: NonZeroU32::new(50).unwrap(),
        media_rps: NonZeroU32::new(10).unwrap(),
        media_burst: NonZeroU32::new(10).unwrap(),
    };
    let pages: Vec<PageLimiter<FakeRelativeClock>> = (0..PAGES)
        .map(|i| {
            PageLimiter::new(
                BudgetPlan::for_audience(100_000 + i as u64, limits),
                ceilings,
                clock.clone(),
            )
        })
        .collect();
    (clock, pages)
}

fn limiter(c: &mut Criterion) {
    let limits = Settings::load(&LoadOptions::default())
        .expect("default settings")
        .limits;
    let mut group = c.benchmark_group("limiter");
    group.throughput(Throughput::Elements(1));
    // Each round over the 10,000 Pages advances the fake clock far enough for every Page to earn
    // back what the round spends (10 tokens per round at 250/s), so every grant is a real one.
    for (n, round) in [
        (1, Duration::from_millis(40)),
        (50, Duration::from_millis(400)),
    ] {
        // Fresh Pages and clock per benchmark: the previous one leaves its Pages part-spent,
        // and criterion's test mode (`cargo test --benches`) runs each routine only once.
        // The cursor lives outside the routine, which criterion calls once per sample: restarting
        // at Page 0 each time would meet Pages still spent from the previous sample.
        let (clock, pages) = pages(&limits);
        let mut next = 0;
        group.bench_function(format!("acquire_{n}_of_10000_pages"), |b| {
            b.iter(|| {
                let page = &pages[next];
                next += 1;
                if next == PAGES {
                    next = 0;
                    clock.advance(round);
                }
                let grant = page.acquire(black_box(n));
                debug_assert_eq!(grant, Grant::Granted(n));
                grant
            })
        });
    }
    group.finish();
}

struct Job {
    recipient: String,
    media: bool,
}

impl LaneItem for Job {
    fn recipient(&self) -> &str {
        &self.recipient
    }

    fn is_media(&self) -> bool {
        self.media
    }
}

/// A lane of `n` jobs for `recipients` distinct recipients, every tenth one a video.
fn lane(n: usize, recipients: usize) -> LaneQueue<Job> {
    let now = Instant::now();
    let mut lane = LaneQueue::default();
    for i in 0..n {
        lane.push(
            Job {
                recipient: format!("{}", 6_543_210_000_000_000u64 + (i % recipients) as u64),
                media: i % 10 == 0,
            },
            now,
        );
    }
    lane
}

fn scheduling(c: &mut Criterion) {
    let mut group = c.benchmark_group("lane");
    // A full lane (the hold limit's order of size) where every recipient has 4 messages queued:
    // the batch must skip the repeats to stay one-per-recipient, and cap media at 10.
    for (n, recipients) in [(50, 50), (200, 50), (1_000, 250)] {
        group.throughput(Throughput::Elements(50.min(recipients) as u64));
        group.bench_function(
            format!("take_batch_50_of_{n}_jobs_{recipients}_recipients"),
            |b| {
                b.iter_batched(
                    || lane(n, recipients),
                    |mut lane| {
                        let batch = lane.take_batch(black_box(50), black_box(10));
                        let recipients = lane.recipients(&batch);
                        lane.release(recipients);
                        (lane, batch)
                    },
                    BatchSize::SmallInput,
                )
            },
        );
    }
    group.finish();
}

criterion_group!(benches, limiter, scheduling);
criterion_main!(benches);
