//! Multi-stage pipelines of `u64` items, [`CAPACITY`] slots per stage: backflow's std runtime
//! against a thread per stage on crossbeam-channel's `bounded` and on crossbeam's `ArrayQueue`
//! with `Backoff` (spin, then yield).
//!
//! Three workloads:
//!
//! - **Throughput** ([`THROUGHPUT`]): a producer pushes `0..items` through 1 or 3 stages that
//!   each apply [`step`]; the sink (backflow's sink closure, the peers' last stage thread) sums
//!   what arrives, and the sum must equal [`checksum`]. The clock runs from the first push
//!   until the sink has seen every item (for backflow, until `drain()` has joined the workers,
//!   which happens right after the last item).
//! - **Paced latency** ([`LATENCY`]): one stage, a producer pushing one item every
//!   `1 / rate` seconds (busy-waiting on [`Instant`], not sleeping), each item carrying its
//!   send time; the sink records `now - sent` in a histogram.
//! - **Slow consumer** ([`SLOW_CONSUMER`]): one stage, the sink taking [`SINK_DELAY`] per item
//!   (sleeping, or busy-waiting: `thread::sleep` overshoots short sleeps by tens of
//!   microseconds), so the producer spends the run blocked by backpressure; memory is bounded
//!   by the queues' capacity, and the rate should be close to what the delay alone allows.
//!
//! Every worker thread is started before the clock starts: backflow's stage factories (which
//! run on the worker threads) and the peers' threads wait at a [`Barrier`] with the producer.

use std::convert::identity;
use std::hint::spin_loop;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use backflow::{Pipeline, WaitStrategy};
use backflow_core::metrics::Histogram;
use crossbeam_channel::{Receiver, Sender};
use crossbeam_queue::ArrayQueue;
use crossbeam_utils::Backoff;

use crate::lmax;
use crate::report::Latency;
use crate::{CAPACITY, timed_sum};

/// The stage counts of the throughput workload.
pub const STAGES: &[usize] = &[1, 3];

/// Items per second the paced-latency producer sends.
pub const RATE: u64 = 100_000;

/// How long the slow consumer's sink takes per item: at most 10 000 items per second.
pub const SINK_DELAY: Duration = Duration::from_micros(100);

/// What the sink does per item besides summing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkDelay {
    /// Nothing.
    None,
    /// `thread::sleep` this long (which takes longer: the timer's slack and the wake-up).
    Sleep(Duration),
    /// Busy-wait this long on [`Instant`].
    Spin(Duration),
}

impl SinkDelay {
    /// Spends the delay.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    ///
    /// use backflow_benches::pipeline::SinkDelay;
    ///
    /// let start = Instant::now();
    /// SinkDelay::Spin(Duration::from_micros(50)).apply();
    /// assert!(start.elapsed() >= Duration::from_micros(50));
    /// ```
    #[inline]
    pub fn apply(self) {
        match self {
            Self::None => {}
            Self::Sleep(delay) => thread::sleep(delay),
            Self::Spin(delay) => {
                let until = Instant::now() + delay;
                while Instant::now() < until {
                    spin_loop();
                }
            }
        }
    }
}

/// What every stage does to an item in the throughput workloads: next to nothing, but the
/// sink's checksum depends on it, so it cannot be skipped.
#[inline]
pub fn step(x: u64) -> u64 {
    x ^ 1
}

/// The sum of `0..items` after `stages` applications of [`step`] each.
///
/// # Examples
///
/// ```
/// use backflow_benches::pipeline::{checksum, step};
///
/// let by_hand: u64 = (0..7).map(|x| step(step(step(x)))).sum();
/// assert_eq!(checksum(7, 3), by_hand);
/// ```
pub fn checksum(items: u64, stages: usize) -> u64 {
    // `x ^ 1` swaps 2k and 2k + 1, which keeps the sum, except for an unpaired last item
    // (items odd), which goes up by one after an odd number of steps.
    let plain = items * items.saturating_sub(1) / 2;
    plain + u64::from(stages % 2 == 1 && items % 2 == 1)
}

/// One run of a throughput or slow-consumer workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    /// Items pushed, `0..items`.
    pub items: u64,
    /// Stages between the producer and the sink, each applying [`step`].
    pub stages: usize,
    /// What the sink spends per item.
    pub sink_delay: SinkDelay,
}

impl Workload {
    /// Threads that take part: the producer and one per stage.
    pub fn threads(&self) -> usize {
        self.stages + 1
    }
}

/// A pipeline contender of the throughput and slow-consumer workloads.
#[derive(Debug, Clone, Copy)]
pub struct PipelineContender {
    /// The row label.
    pub name: &'static str,
    /// Runs the workload once and returns the time from the first push until the sink has
    /// seen every item; `None` if the contender does not apply to it.
    pub run: fn(Workload) -> Option<Duration>,
}

/// A contender of the paced-latency workload.
#[derive(Debug, Clone, Copy)]
pub struct LatencyContender {
    /// The row label.
    pub name: &'static str,
    /// Sends `items` items through `stages` stages at `rate` items per second and returns the
    /// end-to-end latency's p50 and p99; `None` if the contender does not apply.
    pub run: fn(items: u64, rate: u64, stages: usize) -> Option<Latency>,
}

/// The name of the crossbeam-channel contender, a baseline of the throughput table.
pub const CHANNEL: &str = "crossbeam-channel bounded";

/// The name of the disruptor contender fed in batches, a baseline of the throughput table.
pub const DISRUPTOR: &str = "disruptor batch_publish (spin, yield)";

/// The name of the `ArrayQueue` + `Backoff` contender, a baseline of the throughput table.
pub const ARRAY_QUEUE: &str = "ArrayQueue + Backoff";

/// The name of the slow consumer's reference row: the sink's delays alone, no pipeline.
pub const DELAY_ALONE: &str = "the delay alone (no pipeline)";

/// Every throughput contender, backflow first.
pub const THROUGHPUT: &[PipelineContender] = &[
    PipelineContender { name: "backflow push_iter (Park)", run: backflow_batch },
    PipelineContender { name: "backflow push (Park)", run: backflow_single },
    PipelineContender { name: "backflow push_iter (BusySpin)", run: backflow_busy_spin },
    PipelineContender { name: CHANNEL, run: channel },
    PipelineContender { name: "std sync_channel", run: std_channel },
    PipelineContender { name: "kanal bounded", run: kanal_channel },
    PipelineContender { name: ARRAY_QUEUE, run: array_queue },
    PipelineContender { name: DISRUPTOR, run: lmax::disruptor_batch },
    PipelineContender { name: "disruptor publish (spin, yield)", run: lmax::disruptor_single },
];

/// Timings on (the default) against off, same pipeline.
pub const METRICS: &[PipelineContender] = &[
    PipelineContender { name: "backflow, timings on", run: backflow_batch },
    PipelineContender { name: "backflow, timings off", run: backflow_no_timings },
];

/// Every slow-consumer contender, backflow first, and the delay on its own.
pub const SLOW_CONSUMER: &[PipelineContender] = &[
    PipelineContender { name: "backflow push_iter (Park)", run: backflow_batch },
    PipelineContender { name: "backflow push_iter (BusySpin)", run: backflow_busy_spin },
    PipelineContender { name: CHANNEL, run: channel },
    PipelineContender { name: ARRAY_QUEUE, run: array_queue },
    PipelineContender { name: DELAY_ALONE, run: delay_alone },
];

/// Every paced-latency contender, backflow first. Items are pushed one at a time, as they come.
pub const LATENCY: &[LatencyContender] = &[
    LatencyContender { name: "backflow push (Park)", run: backflow_latency_park },
    LatencyContender { name: "backflow push (BusySpin)", run: backflow_latency_busy_spin },
    LatencyContender { name: CHANNEL, run: channel_latency },
    LatencyContender { name: ARRAY_QUEUE, run: array_queue_latency },
    LatencyContender { name: "disruptor publish (spin, yield)", run: lmax::disruptor_latency },
];

/// The stage counts of the paced-latency workload.
pub const LATENCY_STAGES: &[usize] = &[1, 3];

/// How the backflow producer feeds the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feed {
    /// `Input::push_iter(0..items)`.
    Batch,
    /// `Input::push(x)` per item.
    Single,
}

/// Builds a pipeline of `stages` stages applying `map`, [`CAPACITY`] slots each, ending in
/// `sink`. Each stage's factory waits at `ready` on its worker thread.
fn build(
    stages: usize,
    strategy: WaitStrategy,
    timings: bool,
    map: fn(u64) -> u64,
    ready: &Arc<Barrier>,
    sink: impl FnMut(u64) + Send + 'static,
) -> Pipeline<u64> {
    let factory = |ready: &Arc<Barrier>| {
        let ready = Arc::clone(ready);
        move || {
            ready.wait();
            map
        }
    };
    let mut builder = Pipeline::<u64>::builder()
        .wait_strategy(strategy)
        .timings(timings)
        .stage("stage 1", factory(ready))
        .capacity(CAPACITY);
    for i in 2..=stages {
        builder = builder.stage(format!("stage {i}"), factory(ready)).capacity(CAPACITY);
    }
    builder.sink(sink).build().expect("a valid pipeline")
}

/// backflow: pushes `0..items`, the sink sums them (spending `sink_delay` each) and publishes
/// the sum with the last item.
fn backflow(workload: Workload, strategy: WaitStrategy, feed: Feed, timings: bool) -> Duration {
    let Workload { items, stages, sink_delay } = workload;
    let ready = Arc::new(Barrier::new(stages + 1));
    let total = Arc::new(AtomicU64::new(0));
    let published = Arc::clone(&total);
    let (mut sum, mut seen) = (0u64, 0u64);
    let sink = move |x: u64| {
        sink_delay.apply();
        sum += x;
        seen += 1;
        if seen == items {
            published.store(sum, Ordering::Release);
        }
    };
    let pipeline = build(stages, strategy, timings, step, &ready, sink);
    let input = pipeline.input();
    ready.wait();
    let start = Instant::now();
    match feed {
        Feed::Batch => input.push_iter(0..items).expect("the pipeline is open"),
        Feed::Single => {
            for x in 0..items {
                input.push(x).expect("the pipeline is open");
            }
        }
    }
    let report = pipeline.drain().expect("the pipeline drains");
    let elapsed = start.elapsed();
    assert_eq!(report.sink().delivered, items, "items lost");
    assert!(report.is_balanced(), "accounting does not balance");
    assert_eq!(total.load(Ordering::Acquire), checksum(items, stages), "items lost or corrupted");
    elapsed
}

/// backflow, default wait strategy (park), `push_iter`.
pub fn backflow_batch(workload: Workload) -> Option<Duration> {
    Some(backflow(workload, WaitStrategy::Park, Feed::Batch, true))
}

/// backflow, default wait strategy (park), `push_iter`, nothing timed
/// ([`Source::timings(false)`](backflow::Source::timings)): only the counters.
pub fn backflow_no_timings(workload: Workload) -> Option<Duration> {
    Some(backflow(workload, WaitStrategy::Park, Feed::Batch, false))
}

/// backflow, default wait strategy (park), one `push` per item.
pub fn backflow_single(workload: Workload) -> Option<Duration> {
    Some(backflow(workload, WaitStrategy::Park, Feed::Single, true))
}

/// backflow, busy-spinning workers and producer, `push_iter`.
pub fn backflow_busy_spin(workload: Workload) -> Option<Duration> {
    Some(backflow(workload, WaitStrategy::BusySpin, Feed::Batch, true))
}

/// A thread per stage over `queues` (one per stage, in order): the producer pushes `0..items`
/// into the first, each middle stage pops, applies [`step`] and pushes into the next, and the
/// last stage pops, applies [`step`], spends `sink_delay` and sums.
fn thread_per_stage<Q: Sync>(
    workload: Workload,
    queues: &[Q],
    push: impl Fn(&Q, u64) + Sync,
    pop: impl Fn(&Q) -> u64 + Sync,
) -> Duration {
    let Workload { items, stages, sink_delay } = workload;
    assert_eq!(queues.len(), stages, "one queue per stage");
    let (push, pop) = (&push, &pop);
    let mut threads: Vec<Box<dyn FnOnce() + Send + '_>> =
        vec![Box::new(move || (0..items).for_each(|x| push(&queues[0], x)))];
    for pair in queues.windows(2) {
        threads.push(Box::new(move || {
            for _ in 0..items {
                push(&pair[1], step(pop(&pair[0])));
            }
        }));
    }
    let last = &queues[stages - 1];
    let sink = move || {
        let mut sum = 0;
        for _ in 0..items {
            let x = step(pop(last));
            sink_delay.apply();
            sum += x;
        }
        sum
    };
    timed_sum(checksum(items, stages), threads, vec![sink])
}

/// Waits as the seed design does: crossbeam's `Backoff` until it is completed, then
/// `yield_now`.
fn back_off(backoff: &Backoff) {
    if backoff.is_completed() {
        thread::yield_now();
    } else {
        backoff.snooze();
    }
}

/// Pushes into an `ArrayQueue`, backing off while it is full.
fn push_backoff(queue: &ArrayQueue<u64>, x: u64) {
    let backoff = Backoff::new();
    let mut item = x;
    while let Err(back) = queue.push(item) {
        item = back;
        back_off(&backoff);
    }
}

/// Pops from an `ArrayQueue`, backing off while it is empty.
fn pop_backoff(queue: &ArrayQueue<u64>) -> u64 {
    let backoff = Backoff::new();
    loop {
        if let Some(x) = queue.pop() {
            return x;
        }
        back_off(&backoff);
    }
}

fn channels(stages: usize) -> Vec<(Sender<u64>, Receiver<u64>)> {
    (0..stages).map(|_| crossbeam_channel::bounded(CAPACITY)).collect()
}

fn send(channel: &(Sender<u64>, Receiver<u64>), x: u64) {
    channel.0.send(x).expect("the receiver lives until the end");
}

fn recv(channel: &(Sender<u64>, Receiver<u64>)) -> u64 {
    channel.1.recv().expect("the sender lives until the end")
}

/// A thread per stage on crossbeam-channel `bounded`, blocking `send` / `recv`.
pub fn channel(workload: Workload) -> Option<Duration> {
    Some(thread_per_stage(workload, &channels(workload.stages), send, recv))
}

/// A thread per stage on std's `sync_channel`, blocking `send` / `recv`. Its receiver is not
/// `Sync`, so each thread is given its own ends rather than sharing the queues.
pub fn std_channel(workload: Workload) -> Option<Duration> {
    let Workload { items, stages, sink_delay } = workload;
    let (mut senders, mut receivers): (Vec<_>, Vec<_>) =
        (0..stages).map(|_| mpsc::sync_channel::<u64>(CAPACITY)).unzip();
    let mut threads: Vec<Box<dyn FnOnce() + Send>> = Vec::new();
    let first = senders.remove(0);
    threads.push(Box::new(move || {
        (0..items).for_each(|x| first.send(x).expect("the receiver lives until the end"));
    }));
    let last = receivers.pop().expect("one queue per stage");
    for (rx, tx) in receivers.into_iter().zip(senders) {
        threads.push(Box::new(move || {
            for _ in 0..items {
                let x = rx.recv().expect("the sender lives until the end");
                tx.send(step(x)).expect("the receiver lives until the end");
            }
        }));
    }
    let sink = move || {
        let mut sum = 0;
        for _ in 0..items {
            let x = step(last.recv().expect("the sender lives until the end"));
            sink_delay.apply();
            sum += x;
        }
        sum
    };
    Some(timed_sum(checksum(items, stages), threads, vec![sink]))
}

/// A thread per stage on kanal's `bounded`, blocking `send` / `recv`.
pub fn kanal_channel(workload: Workload) -> Option<Duration> {
    let queues: Vec<_> = (0..workload.stages).map(|_| kanal::bounded(CAPACITY)).collect();
    let send = |q: &(kanal::Sender<u64>, kanal::Receiver<u64>), x| {
        q.0.send(x).expect("the receiver lives until the end");
    };
    let recv = |q: &(kanal::Sender<u64>, kanal::Receiver<u64>)| {
        q.1.recv().expect("the sender lives until the end")
    };
    Some(thread_per_stage(workload, &queues, send, recv))
}

/// A thread per stage on crossbeam's `ArrayQueue`, waiting with `Backoff` then `yield_now`.
pub fn array_queue(workload: Workload) -> Option<Duration> {
    let queues: Vec<_> = (0..workload.stages).map(|_| ArrayQueue::new(CAPACITY)).collect();
    Some(thread_per_stage(workload, &queues, push_backoff, pop_backoff))
}

/// The slow consumer's delays on their own: the rate no pipeline can beat on this machine.
pub fn delay_alone(workload: Workload) -> Option<Duration> {
    let start = Instant::now();
    for _ in 0..workload.items {
        workload.sink_delay.apply();
    }
    Some(start.elapsed())
}

/// Nanoseconds since `epoch`.
pub fn nanos_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Calls `send` with the time since `epoch` `items` times, at `rate` items per second on
/// average. Between items the producer sleeps until the next one is due (it does not hold a
/// core by busy-waiting); `thread::sleep` overshoots by tens of microseconds, so when it wakes
/// it sends every item that has come due, each stamped when it is sent.
pub fn paced(items: u64, rate: u64, epoch: Instant, mut send: impl FnMut(u64)) {
    let start = Instant::now();
    for i in 0..items {
        let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        send(nanos_since(epoch));
    }
}

/// The p50 and p99 of `histogram`, which must hold `items` values.
pub fn latency(histogram: &Histogram, items: u64) -> Latency {
    let snapshot = histogram.snapshot();
    assert_eq!(snapshot.count(), items, "items lost");
    let percentiles = snapshot.percentiles();
    Latency { p50: percentiles.p50, p99: percentiles.p99 }
}

/// backflow, `stages` stages: `push` per item, the sink records each item's latency.
fn backflow_latency(items: u64, rate: u64, stages: usize, strategy: WaitStrategy) -> Latency {
    let ready = Arc::new(Barrier::new(stages + 1));
    let histogram = Arc::new(Histogram::new());
    let recorder = Arc::clone(&histogram);
    let epoch = Instant::now();
    let sink = move |sent: u64| recorder.record(nanos_since(epoch).saturating_sub(sent));
    let pipeline = build(stages, strategy, true, identity, &ready, sink);
    let input = pipeline.input();
    ready.wait();
    paced(items, rate, epoch, |sent| input.push(sent).expect("the pipeline is open"));
    let report = pipeline.drain().expect("the pipeline drains");
    assert!(report.is_balanced(), "accounting does not balance");
    latency(&histogram, items)
}

/// backflow, default wait strategy (park).
pub fn backflow_latency_park(items: u64, rate: u64, stages: usize) -> Option<Latency> {
    Some(backflow_latency(items, rate, stages, WaitStrategy::Park))
}

/// backflow, busy-spinning workers.
pub fn backflow_latency_busy_spin(items: u64, rate: u64, stages: usize) -> Option<Latency> {
    Some(backflow_latency(items, rate, stages, WaitStrategy::BusySpin))
}

/// A paced producer and a consumer thread recording each item's latency, over one queue
/// (one stage only: the latency rows of the peers are for the 1-stage table).
fn thread_latency<Q: Sync>(
    items: u64,
    rate: u64,
    stages: usize,
    queue: &Q,
    push: impl Fn(&Q, u64),
    pop: impl Fn(&Q) -> u64 + Sync,
) -> Option<Latency> {
    if stages != 1 {
        return None;
    }
    let histogram = Histogram::new();
    let barrier = Barrier::new(2);
    let epoch = Instant::now();
    thread::scope(|s| {
        s.spawn(|| {
            barrier.wait();
            for _ in 0..items {
                let sent = pop(queue);
                histogram.record(nanos_since(epoch).saturating_sub(sent));
            }
        });
        barrier.wait();
        paced(items, rate, epoch, |sent| push(queue, sent));
    });
    Some(latency(&histogram, items))
}

/// crossbeam-channel `bounded`, blocking `send` / `recv`.
pub fn channel_latency(items: u64, rate: u64, stages: usize) -> Option<Latency> {
    thread_latency(items, rate, stages, &crossbeam_channel::bounded(CAPACITY), send, recv)
}

/// crossbeam's `ArrayQueue`, waiting with `Backoff` then `yield_now`.
pub fn array_queue_latency(items: u64, rate: u64, stages: usize) -> Option<Latency> {
    thread_latency(items, rate, stages, &ArrayQueue::new(CAPACITY), push_backoff, pop_backoff)
}
