//! The pipeline workloads on the disruptor crate: one shared ring, a handler per stage behind
//! the previous stage's sequence barrier, each updating the event in place, the last one
//! summing. This is the layout the disruptor is built for, and its fastest.
//!
//! Waiting: the crate's `BusySpin` strategies never give the core away, so with more threads
//! than cores (3 stages and a producer on 2 cores) a spinning handler can hold the core its
//! upstream needs for a whole time slice. The contenders here wait as [`SpinThenYield`] does:
//! spin a little, then `yield_now`. The producer publishes with `try_batch_publish` /
//! `try_publish` and waits the same way when the ring is full (the crate's `publish` spins
//! without yielding).

use std::cell::Cell;
use std::hint::spin_loop;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use disruptor::wait_strategies::WaitStrategy;
use disruptor::{Producer, Sequence};

use crate::CAPACITY;
use backflow_core::metrics::Histogram;

use crate::pipeline::{Workload, checksum, latency, nanos_since, paced, step};
use crate::report::Latency;

/// Events published per `try_batch_publish` when feeding in batches: the size of backflow's
/// `push_iter` runs.
const BATCH: usize = 128;

/// Spins this many times before each `yield_now`.
const SPINS: u32 = 64;

/// A disruptor wait strategy: spin 64 times, then yield the core once, and again.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpinThenYield;

thread_local! {
    static SPUN: Cell<u32> = const { Cell::new(0) };
}

/// Spins, yielding the core every [`SPINS`] calls on this thread.
fn spin_then_yield() {
    SPUN.with(|spun| {
        let n = spun.get() + 1;
        if n >= SPINS {
            spun.set(0);
            thread::yield_now();
        } else {
            spun.set(n);
            spin_loop();
        }
    });
}

impl WaitStrategy for SpinThenYield {
    #[inline]
    fn wait_for(&self, _sequence: Sequence) {
        spin_then_yield();
    }
}

/// One slot of the ring: the item, updated in place by each stage.
#[derive(Debug, Default)]
struct Event {
    value: AtomicU64,
}

/// The sum of what the last handler saw, published with the last item.
struct Sum {
    sum: u64,
    seen: u64,
    items: u64,
    total: Arc<AtomicU64>,
}

/// How the producer feeds the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feed {
    Batch,
    Single,
}

fn run(workload: Workload, feed: Feed) -> Duration {
    let Workload { items, stages, sink_delay } = workload;
    let total = Arc::new(AtomicU64::new(0));
    let published = Arc::clone(&total);
    let stage = |e: &Event, _: Sequence, _: bool| {
        e.value.store(step(e.value.load(Ordering::Relaxed)), Ordering::Relaxed);
    };
    let last = move |s: &mut Sum, e: &Event, _: Sequence, _: bool| {
        let x = step(e.value.load(Ordering::Relaxed));
        sink_delay.apply();
        s.sum += x;
        s.seen += 1;
        if s.seen == s.items {
            s.total.store(s.sum, Ordering::Release);
        }
    };
    let state = move || Sum { sum: 0, seen: 0, items, total: Arc::clone(&published) };
    let builder = disruptor::build_single_producer(CAPACITY, Event::default, SpinThenYield);
    // The stage count is a run-time value and each `and_then` changes the builder's type:
    // the chains the workloads use are spelled out.
    let mut producer: Box<dyn FnMut(u64, usize)> = match stages {
        1 => boxed(builder.handle_events_and_state_with(last, state).build()),
        2 => boxed(
            builder
                .handle_events_with(stage)
                .and_then()
                .handle_events_and_state_with(last, state)
                .build(),
        ),
        3 => boxed(
            builder
                .handle_events_with(stage)
                .and_then()
                .handle_events_with(stage)
                .and_then()
                .handle_events_and_state_with(last, state)
                .build(),
        ),
        _ => unimplemented!("the disruptor contender runs 1 to 3 stages"),
    };
    let start = Instant::now();
    let run = match feed {
        Feed::Single => 1,
        Feed::Batch => BATCH,
    };
    let mut next = 0;
    while next < items {
        let n = (items - next).min(run as u64);
        producer(next, n as usize);
        next += n;
    }
    // Dropping the producer waits for every handler to finish the ring.
    drop(producer);
    let elapsed = start.elapsed();
    assert_eq!(total.load(Ordering::Acquire), checksum(items, stages), "items lost or corrupted");
    elapsed
}

/// The producer as a closure: `(first, n)` publishes `first..first + n` (`n == 1`: with
/// `try_publish`), waiting while the ring has no room for them.
fn boxed<P: Producer<Event> + 'static>(mut producer: P) -> Box<dyn FnMut(u64, usize)> {
    Box::new(move |first, n| {
        if n == 1 {
            while producer.try_publish(|e| e.value.store(first, Ordering::Relaxed)).is_err() {
                spin_then_yield();
            }
            return;
        }
        while producer
            .try_batch_publish(n, |events| {
                for (x, e) in (first..).zip(events) {
                    e.value.store(x, Ordering::Relaxed);
                }
            })
            .is_err()
        {
            spin_then_yield();
        }
    })
}

/// The disruptor, batches of 128 (`try_batch_publish`), handlers spinning then yielding.
pub fn disruptor_batch(workload: Workload) -> Option<Duration> {
    (workload.stages <= 3).then(|| run(workload, Feed::Batch))
}

/// The disruptor, one `try_publish` per item, handlers spinning then yielding.
pub fn disruptor_single(workload: Workload) -> Option<Duration> {
    (workload.stages <= 3).then(|| run(workload, Feed::Single))
}

/// The disruptor, `stages` handlers (the first ones pass the event on, the last records its
/// latency), one `try_publish` per item from a paced producer.
pub fn disruptor_latency(items: u64, rate: u64, stages: usize) -> Option<Latency> {
    if !(1..=3).contains(&stages) {
        return None;
    }
    let histogram = Arc::new(Histogram::new());
    let recorder = Arc::clone(&histogram);
    let epoch = Instant::now();
    let pass = |_: &Event, _: Sequence, _: bool| {};
    let last = move |e: &Event, _: Sequence, _: bool| {
        let sent = e.value.load(Ordering::Relaxed);
        recorder.record(nanos_since(epoch).saturating_sub(sent));
    };
    let builder = disruptor::build_single_producer(CAPACITY, Event::default, SpinThenYield);
    let mut producer: Box<dyn FnMut(u64, usize)> = match stages {
        1 => boxed(builder.handle_events_with(last).build()),
        2 => boxed(builder.handle_events_with(pass).and_then().handle_events_with(last).build()),
        _ => boxed(
            builder
                .handle_events_with(pass)
                .and_then()
                .handle_events_with(pass)
                .and_then()
                .handle_events_with(last)
                .build(),
        ),
    };
    paced(items, rate, epoch, |sent| producer(sent, 1));
    drop(producer);
    Some(latency(&histogram, items))
}
