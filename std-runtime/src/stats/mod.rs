//! Live statistics: the counters the workers keep, the snapshot [`Stats`] that
//! [`Pipeline::stats`](crate::Pipeline::stats) returns, and the final [`Report`]; per stage
//! ([`StageStats`], its [`Accounting`] and [`TimeShares`]) and per sink ([`SinkStats`]); and
//! a snapshot written for other tools: [`Stats::to_prometheus`] (the Prometheus text format)
//! and [`Stats::to_dot`] (the pipeline's graph for Graphviz).
//!
//! ```
//! use backflow::Pipeline;
//! use backflow::stats::StageStats;
//!
//! let pipeline = Pipeline::<u8>::builder().stage("id", || |x: u8| x).sink(|_| {}).build()?;
//! pipeline.input().push(1)?;
//! let report = pipeline.drain()?;
//! let id: &StageStats = report.stage("id").unwrap();
//! assert_eq!(id.accounting.received, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Workers add to the counters once per batch, never once per item; timings are taken for
//! one item in `sample_every` (see [`Source::sample_every`](crate::Source::sample_every)).

use std::fmt;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use backflow_core::breaker::BreakerState;
use backflow_core::metrics::{Counter, Histogram, Percentiles};

mod dot;
mod graph;
mod prometheus;

pub(crate) use graph::Graph;
use graph::Vertex;
pub use prometheus::exposition;

use crate::sync::{AtomicU8, Mutex, Ordering};
use crate::workers::Workers;

/// The atomic counters of one stage.
#[derive(Debug, Default)]
pub(crate) struct StageCounters {
    /// Items that entered the stage's queue (or were dropped trying to).
    pub(crate) received: Counter,
    /// Inputs the stage processed successfully.
    pub(crate) emitted_inputs: Counter,
    /// Outputs the stage emitted.
    pub(crate) emitted_outputs: Counter,
    pub(crate) dropped_oldest: Counter,
    pub(crate) dropped_newest: Counter,
    /// Inputs whose processing returned an error or panicked.
    pub(crate) errored: Counter,
    /// Of `errored`, the panics.
    pub(crate) panicked: Counter,
    /// Inputs that failed for good and went to the dead-letter handler.
    pub(crate) dead_lettered: Counter,
    /// Attempts made again after a failure.
    pub(crate) retried: Counter,
    /// Worker time spent processing batches, in ns (all workers together).
    pub(crate) busy_ns: Counter,
    /// Worker time spent handing outputs downstream: waiting for room in the next queue, or
    /// in the sink, in ns.
    pub(crate) backpressured_ns: Counter,
    /// Inputs never processed because the pipeline stopped first.
    pub(crate) abandoned: Counter,
}

/// A circuit breaker's state as stats read it: written by the stage's gate on each
/// transition, read by any thread without a lock.
#[derive(Debug)]
pub(crate) struct CircuitGauge(AtomicU8);

/// The gauge's value for a stage without a breaker.
const NO_BREAKER: u8 = u8::MAX;

impl CircuitGauge {
    /// A gauge for a breaker in `state`, or for a stage without one (`None`).
    pub(crate) fn new(state: Option<BreakerState>) -> Self {
        Self(AtomicU8::new(state.map_or(NO_BREAKER, Self::code)))
    }

    fn code(state: BreakerState) -> u8 {
        match state {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }

    /// Records a transition to `state`.
    pub(crate) fn set(&self, state: BreakerState) {
        self.0.store(Self::code(state), Ordering::Relaxed);
    }

    /// The breaker's state, if the stage has one.
    pub(crate) fn get(&self) -> Option<BreakerState> {
        match self.0.load(Ordering::Relaxed) {
            0 => Some(BreakerState::Closed),
            1 => Some(BreakerState::Open),
            2 => Some(BreakerState::HalfOpen),
            _ => None,
        }
    }
}

/// Everything one stage shares with its workers and with `stats()`.
#[derive(Debug)]
pub(crate) struct StageShared {
    pub(crate) name: Arc<str>,
    pub(crate) workers: Arc<Workers>,
    pub(crate) counters: Arc<StageCounters>,
    pub(crate) process_time: Histogram,
    pub(crate) queue_wait: Histogram,
    /// The state of the stage's circuit breaker, which its gate keeps up to date.
    pub(crate) circuit: Arc<CircuitGauge>,
    window: Mutex<Window>,
}

impl StageShared {
    pub(crate) fn new(
        name: Arc<str>,
        workers: Arc<Workers>,
        start: Instant,
        circuit: Arc<CircuitGauge>,
    ) -> Self {
        Self {
            name,
            workers,
            counters: Arc::default(),
            process_time: Histogram::new(),
            queue_wait: Histogram::new(),
            circuit,
            window: Mutex::new(Window::new(start)),
        }
    }

    /// Inputs the stage has finished with, whichever way.
    pub(crate) fn finished(&self) -> u64 {
        let c = &self.counters;
        c.emitted_inputs.get() + c.errored.get() + c.dead_lettered.get()
    }
}

/// The sink's counters: items handed to the sink closure or the output handle.
#[derive(Debug)]
pub(crate) struct SinkShared {
    pub(crate) counters: Arc<StageCounters>,
    /// Items the sink closure took, or the output handle yielded.
    pub(crate) delivered: Counter,
    pub(crate) latency: Histogram,
    window: Mutex<Window>,
}

impl SinkShared {
    pub(crate) fn new(start: Instant) -> Self {
        Self {
            counters: Arc::default(),
            delivered: Counter::new(),
            latency: Histogram::new(),
            window: Mutex::new(Window::new(start)),
        }
    }
}

/// The shortest window for the recent throughput: snapshots closer together than this report
/// the previous window's rate instead of a noisy one.
const MIN_WINDOW: Duration = Duration::from_millis(200);

/// The recent-throughput window of one counter: the rate between the last two snapshots at
/// least [`MIN_WINDOW`] apart.
#[derive(Debug)]
struct Window {
    mark: Instant,
    count_at_mark: u64,
    rate: Option<f64>,
}

impl Window {
    fn new(start: Instant) -> Self {
        Self { mark: start, count_at_mark: 0, rate: None }
    }

    /// The recent rate of a counter now at `count`.
    fn rate(&mut self, now: Instant, count: u64) -> f64 {
        let elapsed = now.saturating_duration_since(self.mark);
        match self.rate {
            Some(rate) if elapsed < MIN_WINDOW => rate,
            _ => {
                let rate = per_second(count.saturating_sub(self.count_at_mark), elapsed);
                *self = Self { mark: now, count_at_mark: count, rate: Some(rate) };
                rate
            }
        }
    }
}

fn per_second(count: u64, elapsed: Duration) -> f64 {
    if elapsed.is_zero() { 0.0 } else { count as f64 / elapsed.as_secs_f64() }
}

/// Where every item a stage received has gone. The identity
/// `received = emitted_inputs + dropped + errored + dead_lettered + abandoned + in_flight`
/// always holds (`in_flight` is what is left), and after `drain()` `in_flight` is zero.
///
/// # Examples
///
/// ```
/// use backflow::Pipeline;
///
/// let pipeline = Pipeline::<u32>::builder()
///     .stage("evens", || backflow::stage::filter(|x: &u32| x % 2 == 0))
///     .sink(|_| {})
///     .build()?;
/// let input = pipeline.input();
/// for x in 0..10 {
///     input.push(x)?;
/// }
/// let report = pipeline.drain()?;
/// let evens = report.stage("evens").unwrap().accounting;
/// assert_eq!((evens.received, evens.emitted_inputs, evens.in_flight), (10, 10, 0));
/// assert!(evens.is_balanced());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Accounting {
    /// Items that entered the stage (queued, or dropped by its overflow policy).
    pub received: u64,
    /// Inputs processed successfully (whatever number of outputs they produced).
    pub emitted_inputs: u64,
    /// Inputs dropped by the overflow policy (see [`StageStats::dropped_oldest`] and
    /// [`StageStats::dropped_newest`]).
    pub dropped: u64,
    /// Inputs whose processing failed (an error or a panic).
    pub errored: u64,
    /// Inputs that failed for good and went to the stage's dead-letter handler.
    pub dead_lettered: u64,
    /// Inputs never processed because the pipeline was cancelled or shut down first.
    pub abandoned: u64,
    /// Inputs queued or being processed: received and not yet anything else.
    pub in_flight: u64,
}

impl Accounting {
    /// Whether the counts add up: everything but `in_flight` is at most `received`, and
    /// `in_flight` is exactly the rest.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow::Accounting;
    ///
    /// let ok = Accounting { received: 5, emitted_inputs: 3, dropped: 1, in_flight: 1, ..Default::default() };
    /// assert!(ok.is_balanced());
    /// assert!(!Accounting { received: 1, emitted_inputs: 2, ..Default::default() }.is_balanced());
    /// ```
    pub fn is_balanced(&self) -> bool {
        // In u128: counts whose sum passes `u64::MAX` are not balanced, not wrapped.
        self.settled() + u128::from(self.in_flight) == u128::from(self.received)
    }

    /// Everything but `in_flight`, summed without overflow.
    fn settled(&self) -> u128 {
        [self.emitted_inputs, self.dropped, self.errored, self.dead_lettered, self.abandoned]
            .into_iter()
            .map(u128::from)
            .sum()
    }

    fn from_counters(counters: &StageCounters) -> Self {
        // Read the settled counts before `received`: every settled item was received first,
        // so a snapshot taken while workers run never shows more settled than received.
        let emitted_inputs = counters.emitted_inputs.get();
        let dropped = counters.dropped_oldest.get() + counters.dropped_newest.get();
        let errored = counters.errored.get();
        let dead_lettered = counters.dead_lettered.get();
        let abandoned = counters.abandoned.get();
        Self { emitted_inputs, dropped, errored, dead_lettered, abandoned, ..Self::default() }
    }

    /// Completes the accounting with `received`, counted on its own. A final one (every
    /// thread joined) keeps both sides as counted, so that `is_balanced` catches an item
    /// counted twice as surely as one lost. A live snapshot races with the workers (an item
    /// may be settled a moment before its arrival is added): it shows `received` as at least
    /// what is settled, and in flight as the rest.
    fn with_received(mut self, received: u64, exact: bool) -> Self {
        let settled = u64::try_from(self.settled()).unwrap_or(u64::MAX);
        self.received = if exact { received } else { received.max(settled) };
        self.in_flight = self.received.saturating_sub(settled);
        self
    }
}

/// A histogram's quantiles, in nanoseconds.
pub type Latency = Percentiles;

/// A snapshot of one stage.
///
/// # Examples
///
/// ```
/// use backflow::Pipeline;
///
/// let pipeline = Pipeline::<u8>::builder().stage("id", || |x: u8| x).capacity(8).sink(|_| {}).build()?;
/// let stats = pipeline.stats();
/// let id = stats.stage("id").unwrap();
/// assert_eq!((id.queue_capacity, id.workers, id.pressure_on), (8, 1, false));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct StageStats {
    /// The stage's name.
    pub name: String,
    /// Its worker threads now.
    pub workers: usize,
    /// The fewest and the most worker threads it may have: both `workers` unless it has a
    /// [`workers_range`](crate::Builder::workers_range).
    pub workers_min: usize,
    /// See [`workers_min`](Self::workers_min).
    pub workers_max: usize,
    /// Where its items have gone.
    pub accounting: Accounting,
    /// Outputs emitted (a stage may emit any number per input).
    pub emitted_outputs: u64,
    /// Items evicted from its full queue under `DropOldest`.
    pub dropped_oldest: u64,
    /// Items refused by its full queue under `DropNewest`.
    pub dropped_newest: u64,
    /// Of the failed attempts, the panics (each also recreated the worker's stage); and the
    /// flushes that failed (with an error or a panic), which carry no item of their own.
    pub panics: u64,
    /// Attempts made again after a failure (see [`Builder::retry`](crate::Builder::retry)).
    pub retries: u64,
    /// The circuit breaker's state, if the stage has one.
    pub circuit: Option<BreakerState>,
    /// Items in its input queue.
    pub queue_len: usize,
    /// Its input queue's capacity.
    pub queue_capacity: usize,
    /// The weight of the items in its input queue, as its byte budget counts it (`0` without
    /// one; see [`Builder::capacity_bytes`](crate::Builder::capacity_bytes)).
    pub queue_bytes: usize,
    /// Its input queue's byte budget, if it has one.
    pub queue_capacity_bytes: Option<usize>,
    /// Whether pressure is on in front of it.
    pub pressure_on: bool,
    /// Pressure transitions (on and off) so far.
    pub pressure_transitions: u64,
    /// Time to process one input (sampled), nanoseconds.
    pub process_time: Latency,
    /// Time an input waited in the queue (sampled), nanoseconds.
    pub queue_wait: Latency,
    /// Inputs processed per second over the recent window (at least 200 ms, between calls to
    /// `stats()`).
    pub throughput_recent: f64,
    /// Inputs processed per second since the pipeline started.
    pub throughput_total: f64,
    /// How the stage's workers have spent their time since the pipeline started.
    pub time: TimeShares,
}

/// How a stage's workers have spent their time since the pipeline started, as fractions of
/// their wall time (workers × elapsed, as the number of workers changed) that add up to 1.
///
/// # Examples
///
/// ```
/// let pipeline = backflow::Pipeline::<u8>::builder().stage("id", || |x: u8| x).sink(|_| {}).build()?;
/// let time = pipeline.stats().stages()[0].time;
/// assert!((time.busy + time.backpressured + time.idle - 1.0).abs() < 1e-9);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct TimeShares {
    /// Processing items.
    pub busy: f64,
    /// Handing outputs downstream: waiting for room in the next stage's queue, or in the sink.
    pub backpressured: f64,
    /// Waiting for items (or not started, or finished).
    pub idle: f64,
}

impl TimeShares {
    fn new(busy_ns: u64, backpressured_ns: u64, wall_ns: u128) -> Self {
        let wall = wall_ns as f64;
        if wall == 0.0 {
            return Self { idle: 1.0, ..Self::default() };
        }
        let busy = (busy_ns as f64 / wall).min(1.0);
        let backpressured = (backpressured_ns as f64 / wall).min(1.0 - busy);
        Self { busy, backpressured, idle: 1.0 - busy - backpressured }
    }
}

/// The part of a pipeline that limits its throughput, and why; see [`Stats::bottleneck`].
///
/// # Examples
///
/// ```
/// let pipeline = backflow::Pipeline::<u8>::builder().stage("id", || |x: u8| x).sink(|_| {}).build()?;
/// if let Some(bottleneck) = pipeline.stats().bottleneck() {
///     println!("bottleneck: {bottleneck}");
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Bottleneck {
    /// A stage is busy most of the time, and a stage feeding it (if any) waits for it.
    Stage {
        /// The stage.
        name: String,
        /// Its busy share.
        busy: f64,
        /// The stage feeding it and that stage's backpressured share, when it waits.
        upstream: Option<(String, f64)>,
    },
    /// A stage that hands items to a sink (the last stage of a line, or of a branch) spends
    /// most of its time doing so.
    Sink {
        /// That stage.
        last: String,
        /// Its backpressured share.
        backpressured: f64,
    },
    /// Every stage is idle most of the time: items do not arrive faster.
    Input {
        /// The busiest stage's busy share.
        busiest: f64,
    },
}

fn percent(share: f64) -> String {
    format!("{:.0} %", share * 100.0)
}

impl fmt::Display for Bottleneck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stage { name, busy, upstream } => {
                write!(f, "{name}: busy {}", percent(*busy))?;
                if let Some((up, share)) = upstream {
                    write!(f, ", upstream `{up}` backpressured {}", percent(*share))?;
                }
                Ok(())
            }
            Self::Sink { last, backpressured } => {
                write!(f, "sink: `{last}` waits on it {}", percent(*backpressured))
            }
            Self::Input { busiest } => write!(
                f,
                "input: every stage is mostly idle (the busiest {}); items arrive no faster",
                percent(*busiest)
            ),
        }
    }
}

/// Below this busy share, no stage counts as limiting.
const IDLE_BELOW: f64 = 0.5;

impl StageStats {
    /// Queue fill as a fraction of capacity, `0.0..=1.0`.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow::Pipeline;
    ///
    /// let pipeline = Pipeline::<u8>::builder().stage("id", || |x: u8| x).sink(|_| {}).build()?;
    /// assert_eq!(pipeline.stats().stages()[0].utilization(), 0.0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn utilization(&self) -> f64 {
        self.queue_len as f64 / self.queue_capacity.max(1) as f64
    }
}

/// A snapshot of the sink: the end of the pipeline.
///
/// # Examples
///
/// ```
/// use backflow::Pipeline;
///
/// let pipeline = Pipeline::<u8>::builder().stage("id", || |x: u8| x).sink(|_| {}).build()?;
/// let input = pipeline.input();
/// input.push(1)?;
/// let report = pipeline.drain()?;
/// assert_eq!(report.sink().delivered, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SinkStats {
    /// `"sink"` for the pipeline's sink or output, the branch's name for a branch's sink.
    pub name: String,
    /// Items that reached the sink.
    pub received: u64,
    /// Items the sink closure took (or the output handle yielded).
    pub delivered: u64,
    /// Items that reached the sink after a cancel, or were left in a dropped output handle.
    pub abandoned: u64,
    /// Items waiting in the output handle's queue.
    pub in_flight: u64,
    /// End-to-end latency from `push` to the sink (sampled), nanoseconds.
    pub latency: Latency,
    /// Items delivered per second over the recent window.
    pub throughput_recent: f64,
    /// Items delivered per second since the pipeline started.
    pub throughput_total: f64,
}

/// A snapshot of a whole pipeline: one [`StageStats`] per stage, in order, and the sink.
/// `Display` renders an aligned table.
///
/// # Examples
///
/// ```
/// use backflow::Pipeline;
///
/// let pipeline = Pipeline::<u8>::builder().stage("parse", || |x: u8| x).sink(|_| {}).build()?;
/// let table = pipeline.stats().to_string();
/// assert!(table.contains("parse"));
/// assert!(table.contains("sink"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    stages: Vec<StageStats>,
    sinks: Vec<SinkStats>,
    elapsed: Duration,
    flows: Vec<FlowCheck>,
    /// Shared: snapshots of one pipeline have the same shape.
    graph: Arc<Graph>,
}

/// A node of the graph, what it received and what the nodes feeding it sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FlowCheck {
    pub(crate) node: String,
    pub(crate) received: u64,
    pub(crate) supplied: u64,
}

impl Stats {
    /// Every stage, in pipeline order.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pipeline = backflow::Pipeline::<u8>::builder().stage("a", || |x: u8| x).sink(|_| {}).build()?;
    /// assert_eq!(pipeline.stats().stages()[0].name, "a");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stages(&self) -> &[StageStats] {
        &self.stages
    }

    /// The stage with this name.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pipeline = backflow::Pipeline::<u8>::builder().stage("a", || |x: u8| x).sink(|_| {}).build()?;
    /// assert!(pipeline.stats().stage("a").is_some());
    /// assert!(pipeline.stats().stage("b").is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stage(&self, name: &str) -> Option<&StageStats> {
        self.stages.iter().find(|stage| stage.name == name)
    }

    /// The sink.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pipeline = backflow::Pipeline::<u8>::builder().stage("a", || |x: u8| x).sink(|_| {}).build()?;
    /// assert_eq!(pipeline.stats().sink().delivered, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn sink(&self) -> &SinkStats {
        &self.sinks[0]
    }

    /// Every sink: the pipeline's first, then each branch's, in the order they were defined.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pipeline = backflow::Pipeline::<u8>::builder()
    /// #     .stage("a", || |x: u8| x)
    /// #     .broadcast("audit", |b| b.sink(|_| {}))
    /// #     .sink(|_| {})
    /// #     .build()?;
    /// let names: Vec<_> = pipeline.stats().sinks().iter().map(|s| s.name.clone()).collect();
    /// assert_eq!(names, ["sink", "audit"]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn sinks(&self) -> &[SinkStats] {
        &self.sinks
    }

    /// The part of the pipeline that limits its throughput, judged from the time shares
    /// since the start: a sink, if a stage that hands it items spends more time doing so
    /// than any stage spends working; otherwise the busiest stage, if it is busy at least
    /// half the time (with the stage feeding it that waits on it most, if one does);
    /// otherwise the input. Which stage feeds which follows the pipeline's flows, through
    /// branches and merges. `None` before any stage has done anything.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow::{Bottleneck, Pipeline};
    ///
    /// let pipeline = Pipeline::<u64>::builder()
    ///     .stage("spin", || |x: u64| (0..20_000).fold(x, |a, i| std::hint::black_box(a ^ i)))
    ///     .sink(|_| {})
    ///     .build()?;
    /// pipeline.input().push_iter(0..2_000)?;
    /// let report = pipeline.drain()?;
    /// let Some(Bottleneck::Stage { name, .. }) = report.stats().bottleneck() else { panic!() };
    /// assert_eq!(name, "spin");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn bottleneck(&self) -> Option<Bottleneck> {
        let busiest = self
            .stages
            .iter()
            .enumerate()
            .max_by(|(_, a), (_, b)| a.time.busy.total_cmp(&b.time.busy))?;
        let (index, stage) = busiest;
        let (feeding_sinks, feeding_it) = if self.graph.is_empty() {
            // No flows known: the stages are a line.
            (vec![self.stages.len() - 1], index.checked_sub(1).into_iter().collect())
        } else {
            (self.graph.stages_feeding_sinks(), self.graph.stages_feeding(Vertex::Stage(index)))
        };
        let most_backpressured = |indices: Vec<usize>| {
            indices
                .into_iter()
                .filter_map(|index| self.stages.get(index))
                .max_by(|a, b| a.time.backpressured.total_cmp(&b.time.backpressured))
        };
        if let Some(last) = most_backpressured(feeding_sinks) {
            if last.time.backpressured > stage.time.busy && last.time.backpressured >= IDLE_BELOW {
                return Some(Bottleneck::Sink {
                    last: last.name.clone(),
                    backpressured: last.time.backpressured,
                });
            }
        }
        if stage.time.busy < IDLE_BELOW {
            if stage.time.busy == 0.0 {
                return None;
            }
            return Some(Bottleneck::Input { busiest: stage.time.busy });
        }
        let upstream = most_backpressured(feeding_it)
            .filter(|up| up.time.backpressured > 0.1)
            .map(|up| (up.name.clone(), up.time.backpressured));
        Some(Bottleneck::Stage { name: stage.name.clone(), busy: stage.time.busy, upstream })
    }

    pub(crate) fn set_flows(&mut self, flows: Vec<FlowCheck>) {
        self.flows = flows;
    }

    pub(crate) fn set_graph(&mut self, graph: Arc<Graph>) {
        self.graph = graph;
    }

    /// Time since the pipeline started.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pipeline = backflow::Pipeline::<u8>::builder().stage("a", || |x: u8| x).sink(|_| {}).build()?;
    /// assert!(pipeline.stats().elapsed() < std::time::Duration::from_secs(60));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }
}

/// Collects a snapshot from the shared state.
pub(crate) struct Collector<'a> {
    /// Every thread has been joined: the counts are final, each side taken as counted (see
    /// [`Accounting::with_received`]).
    pub(crate) exact: bool,
    pub(crate) now: Instant,
    pub(crate) start: Instant,
    pub(crate) stages: Vec<StageSource<'a>>,
    pub(crate) sinks: Vec<(&'a SinkShared, &'a str)>,
}

/// One stage's shared state and the live facts about its queue.
pub(crate) struct StageSource<'a> {
    pub(crate) shared: &'a StageShared,
    /// Items received through input handles (first stage) on top of the counter.
    pub(crate) handle_received: u64,
    pub(crate) queue_len: usize,
    pub(crate) queue_capacity: usize,
    /// The weight queued and the byte budget, if the queue has one.
    pub(crate) bytes: Option<(usize, usize)>,
    pub(crate) pressure: (bool, u64),
}

impl Collector<'_> {
    pub(crate) fn collect(self) -> Stats {
        let elapsed = self.now.saturating_duration_since(self.start);
        let stages = self
            .stages
            .iter()
            .map(|source| {
                let shared = source.shared;
                let c = &shared.counters;
                let accounting = Accounting::from_counters(c)
                    .with_received(c.received.get() + source.handle_received, self.exact);
                let done = accounting.emitted_inputs;
                let mut window = shared.window.lock().unwrap_or_else(PoisonError::into_inner);
                StageStats {
                    name: shared.name.to_string(),
                    workers: shared.workers.count(),
                    workers_min: shared.workers.min(),
                    workers_max: shared.workers.max(),
                    accounting,
                    emitted_outputs: c.emitted_outputs.get(),
                    dropped_oldest: c.dropped_oldest.get(),
                    dropped_newest: c.dropped_newest.get(),
                    panics: c.panicked.get(),
                    retries: c.retried.get(),
                    circuit: shared.circuit.get(),
                    queue_len: source.queue_len,
                    queue_capacity: source.queue_capacity,
                    queue_bytes: source.bytes.map_or(0, |(used, _)| used),
                    queue_capacity_bytes: source.bytes.map(|(_, limit)| limit),
                    pressure_on: source.pressure.0,
                    pressure_transitions: source.pressure.1,
                    process_time: shared.process_time.snapshot().percentiles(),
                    queue_wait: shared.queue_wait.snapshot().percentiles(),
                    throughput_recent: window.rate(self.now, done),
                    throughput_total: per_second(done, elapsed),
                    time: TimeShares::new(
                        c.busy_ns.get(),
                        c.backpressured_ns.get(),
                        shared.workers.time_ns(self.now),
                    ),
                }
            })
            .collect();
        let sinks = self.sinks.iter().map(|&(sink, name)| self.sink(sink, name, elapsed)).collect();
        Stats { stages, sinks, elapsed, flows: Vec::new(), graph: Arc::default() }
    }

    fn sink(&self, sink: &SinkShared, name: &str, elapsed: Duration) -> SinkStats {
        // As for the stages: settled counts first, then `received`, and in flight is the rest
        // (an output handle may be taking items while this runs).
        let delivered = sink.delivered.get();
        let abandoned = sink.counters.abandoned.get();
        let received = sink.counters.received.get();
        let settled = delivered.saturating_add(abandoned);
        let received = if self.exact { received } else { received.max(settled) };
        let mut window = sink.window.lock().unwrap_or_else(PoisonError::into_inner);
        SinkStats {
            name: name.to_string(),
            received,
            delivered,
            abandoned,
            in_flight: received.saturating_sub(settled),
            latency: sink.latency.snapshot().percentiles(),
            throughput_recent: window.rate(self.now, delivered),
            throughput_total: per_second(delivered, elapsed),
        }
    }
}

/// Nanoseconds as a short human string: `850ns`, `12.5µs`, `3.2ms`, `1.5s`.
fn nanos(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns}ns"),
        1_000..1_000_000 => format!("{:.1}µs", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}ms", ns as f64 / 1e6),
        _ => format!("{:.1}s", ns as f64 / 1e9),
    }
}

/// A number of bytes as a short human string: `512B`, `3.5KiB`, `64.0MiB`, `1.2GiB`.
fn bytes(n: usize) -> String {
    match n {
        0..1024 => format!("{n}B"),
        1024..0x10_0000 => format!("{:.1}KiB", n as f64 / 1024.0),
        0x10_0000..0x4000_0000 => format!("{:.1}MiB", n as f64 / f64::from(0x10_0000)),
        _ => format!("{:.1}GiB", n as f64 / f64::from(0x4000_0000)),
    }
}

/// A stage's queue fill: `items/capacity`, and with a byte budget `weight/budget` beside it.
fn queue(s: &StageStats) -> String {
    match s.queue_capacity_bytes {
        None => format!("{}/{}", s.queue_len, s.queue_capacity),
        Some(limit) => format!(
            "{}/{} {}/{}",
            s.queue_len,
            s.queue_capacity,
            bytes(s.queue_bytes),
            bytes(limit)
        ),
    }
}

/// A count per second as a short human string: `950/s`, `12.3k/s`, `4.5M/s`.
fn rate(per_second: f64) -> String {
    if per_second >= 1e6 {
        format!("{:.1}M/s", per_second / 1e6)
    } else if per_second >= 1e3 {
        format!("{:.1}k/s", per_second / 1e3)
    } else {
        format!("{per_second:.0}/s")
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header = [
            "stage",
            "workers",
            "received",
            "emitted",
            "dropped",
            "errors",
            "abandoned",
            "queue",
            "pressure",
            "proc p50",
            "proc p99",
            "wait p99",
            "busy",
            "blocked",
            "items/s",
        ];
        let mut rows: Vec<[String; 15]> = Vec::with_capacity(self.stages.len() + 1);
        for s in &self.stages {
            let a = &s.accounting;
            rows.push([
                s.name.clone(),
                if s.workers_min < s.workers_max {
                    format!("{} ({}-{})", s.workers, s.workers_min, s.workers_max)
                } else {
                    s.workers.to_string()
                },
                a.received.to_string(),
                a.emitted_inputs.to_string(),
                a.dropped.to_string(),
                a.errored.to_string(),
                a.abandoned.to_string(),
                queue(s),
                format!(
                    "{} ({})",
                    if s.pressure_on { "on" } else { "off" },
                    s.pressure_transitions
                ),
                nanos(s.process_time.p50),
                nanos(s.process_time.p99),
                nanos(s.queue_wait.p99),
                percent(s.time.busy),
                percent(s.time.backpressured),
                rate(s.throughput_recent),
            ]);
        }
        for k in &self.sinks {
            rows.push([
                k.name.clone(),
                String::new(),
                k.received.to_string(),
                k.delivered.to_string(),
                String::new(),
                String::new(),
                k.abandoned.to_string(),
                k.in_flight.to_string(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                rate(k.throughput_recent),
            ]);
        }
        let k = self.sink();
        let mut widths = header.map(str::len);
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |f: &mut fmt::Formatter<'_>, cells: &[&str]| -> fmt::Result {
            for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
                let pad = width - cell.chars().count();
                if i == 0 {
                    write!(f, "{cell}{}", " ".repeat(pad))?;
                } else {
                    write!(f, "  {}{cell}", " ".repeat(pad))?;
                }
            }
            writeln!(f)
        };
        line(f, &header)?;
        for row in &rows {
            line(f, &row.each_ref().map(String::as_str))?;
        }
        write!(
            f,
            "end-to-end latency p50 {} p99 {} max {}; {:.1}s elapsed",
            nanos(k.latency.p50),
            nanos(k.latency.p99),
            nanos(k.latency.max),
            self.elapsed.as_secs_f64()
        )?;
        match self.bottleneck() {
            Some(bottleneck) => write!(f, "\nbottleneck: {bottleneck}"),
            None => Ok(()),
        }
    }
}

/// What `drain()` (or `shutdown`) returns: the final stats, in which every stage's
/// [`Accounting`] is balanced and nothing is in flight.
///
/// # Examples
///
/// ```
/// use backflow::Pipeline;
///
/// let pipeline = Pipeline::<u8>::builder().stage("id", || |x: u8| x).sink(|_| {}).build()?;
/// let input = pipeline.input();
/// input.push(7)?;
/// let report = pipeline.drain()?;
/// assert!(report.is_balanced());
/// assert_eq!(report.stage("id").unwrap().accounting.emitted_inputs, 1);
/// println!("{report}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    stats: Stats,
}

impl Report {
    pub(crate) fn new(stats: Stats) -> Self {
        Self { stats }
    }

    /// The final stats.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pipeline = backflow::Pipeline::<u8>::builder().stage("a", || |x: u8| x).sink(|_| {}).build()?;
    /// let report = pipeline.drain()?;
    /// assert_eq!(report.stats().stages().len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Every stage's final stats, in order.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pipeline = backflow::Pipeline::<u8>::builder().stage("a", || |x: u8| x).sink(|_| {}).build()?;
    /// assert_eq!(pipeline.drain()?.stages()[0].name, "a");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stages(&self) -> &[StageStats] {
        self.stats.stages()
    }

    /// The stage with this name.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pipeline = backflow::Pipeline::<u8>::builder().stage("a", || |x: u8| x).sink(|_| {}).build()?;
    /// assert!(pipeline.drain()?.stage("a").is_some());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stage(&self, name: &str) -> Option<&StageStats> {
        self.stats.stage(name)
    }

    /// The sink's final stats.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pipeline = backflow::Pipeline::<u8>::builder().stage("a", || |x: u8| x).sink(|_| {}).build()?;
    /// assert_eq!(pipeline.drain()?.sink().abandoned, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn sink(&self) -> &SinkStats {
        self.stats.sink()
    }

    /// Every sink's final stats: the pipeline's first, then each branch's.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pipeline = backflow::Pipeline::<u8>::builder().stage("a", || |x: u8| x).sink(|_| {}).build()?;
    /// assert_eq!(pipeline.drain()?.sinks().len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn sinks(&self) -> &[SinkStats] {
        self.stats.sinks()
    }

    /// Items abandoned across all stages and sinks.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pipeline = backflow::Pipeline::<u8>::builder().stage("a", || |x: u8| x).sink(|_| {}).build()?;
    /// assert_eq!(pipeline.drain()?.abandoned(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn abandoned(&self) -> u64 {
        let sinks = self.stats.sinks().iter().map(|s| s.abandoned).sum::<u64>();
        self.stages().iter().map(|s| s.accounting.abandoned).sum::<u64>() + sinks
    }

    /// Whether every stage's and every sink's accounting is balanced, and every stage, sink
    /// and fan-out point received exactly what the nodes feeding it sent: nothing vanished
    /// between nodes.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pipeline = backflow::Pipeline::<u8>::builder().stage("a", || |x: u8| x).sink(|_| {}).build()?;
    /// assert!(pipeline.drain()?.is_balanced());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_balanced(&self) -> bool {
        self.unbalanced().is_empty()
    }

    /// The nodes whose counts do not add up, each with what is wrong; empty when
    /// [`is_balanced`](Self::is_balanced).
    ///
    /// # Examples
    ///
    /// ```
    /// # let pipeline = backflow::Pipeline::<u8>::builder().stage("a", || |x: u8| x).sink(|_| {}).build()?;
    /// assert_eq!(pipeline.drain()?.unbalanced(), Vec::<String>::new());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn unbalanced(&self) -> Vec<String> {
        // In a final report nothing is left in a stage: an item "in flight" was lost.
        let stages = self
            .stages()
            .iter()
            .filter(|s| !s.accounting.is_balanced() || s.accounting.in_flight != 0);
        let stages = stages.map(|s| format!("{}: {:?}", s.name, s.accounting));
        let sinks = self
            .stats
            .sinks()
            .iter()
            .filter(|k| {
                let settled = u128::from(k.delivered) + u128::from(k.abandoned);
                u128::from(k.received) != settled + u128::from(k.in_flight)
            })
            .map(|k| format!("{}: {k:?}", k.name));
        let flows = self
            .stats
            .flows
            .iter()
            .filter(|c| c.received != c.supplied)
            .map(|c| format!("{}: received {}, sent to it {}", c.node, c.received, c.supplied));
        stages.chain(sinks).chain(flows).collect()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.stats.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A final report over one stage and the main sink, with the counts `count` sets.
    fn report(count: impl FnOnce(&StageCounters, &SinkShared)) -> Report {
        let start = Instant::now();
        let name: Arc<str> = "parse".into();
        let workers = Arc::new(Workers::new(1, 1, 1, start));
        let stage = StageShared::new(name, workers, start, Arc::new(CircuitGauge::new(None)));
        let sink = SinkShared::new(start);
        count(&stage.counters, &sink);
        let source = StageSource {
            shared: &stage,
            handle_received: 0,
            queue_len: 0,
            queue_capacity: 8,
            bytes: None,
            pressure: (false, 0),
        };
        let collector = Collector {
            exact: true,
            now: start,
            start,
            stages: vec![source],
            sinks: vec![(&sink, "sink")],
        };
        Report::new(collector.collect())
    }

    #[test]
    fn a_report_whose_counts_add_up_is_balanced() {
        let report = report(|stage, sink| {
            stage.received.add(5);
            stage.emitted_inputs.add(4);
            stage.abandoned.add(1);
            sink.counters.received.add(4);
            sink.delivered.add(4);
        });
        assert_eq!(report.unbalanced(), Vec::<String>::new());
    }

    #[test]
    fn an_item_counted_twice_in_a_stage_is_reported_naming_the_stage() {
        let report = report(|stage, _| {
            stage.received.add(5);
            stage.emitted_inputs.add(5);
            stage.errored.add(1);
        });
        let unbalanced = report.unbalanced();
        assert_eq!(unbalanced.len(), 1, "{unbalanced:?}");
        assert!(unbalanced[0].starts_with("parse: "), "{unbalanced:?}");
        let parse = report.stage("parse").unwrap().accounting;
        assert_eq!((parse.received, parse.in_flight), (5, 0));
        assert!(!parse.is_balanced());
    }

    #[test]
    fn an_item_counted_twice_at_the_sink_is_reported_naming_the_sink() {
        let report = report(|_, sink| {
            sink.counters.received.add(3);
            sink.delivered.add(3);
            sink.counters.abandoned.add(1);
        });
        let unbalanced = report.unbalanced();
        assert_eq!(unbalanced.len(), 1, "{unbalanced:?}");
        assert!(unbalanced[0].starts_with("sink: "), "{unbalanced:?}");
    }

    #[test]
    fn an_item_lost_in_a_stage_is_reported_as_in_flight() {
        let report = report(|stage, _| {
            stage.received.add(5);
            stage.emitted_inputs.add(4);
        });
        assert_eq!(report.stage("parse").unwrap().accounting.in_flight, 1);
        assert!(!report.is_balanced());
    }
}
