//! The typed builder: [`Source`] → [`Builder`] → [`WithSink`] / [`WithOutput`] →
//! `build()`, with [`Branch`]es off the main line. [`Pipeline::builder`] starts one; these are
//! the types its calls go through, rarely named in code.
//!
//! ```
//! use backflow::Pipeline;
//! use backflow::builder::{Builder, Trunk};
//!
//! let line: Builder<u32, u32, u64, Trunk> =
//!     Pipeline::<u32>::builder().stage("widen", || |x: u32| u64::from(x));
//! let pipeline = line.capacity(backflow::builder::DEFAULT_CAPACITY).sink(|_| {}).build()?;
//! pipeline.drain()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Each `stage` call checks at compile time that the stage takes what the previous one emits;
//! the settings that follow it (`workers`, `capacity`, `water_marks`, `overflow`, ordering,
//! error policy, …) apply to that stage. Nothing is checked or started until `build()`, which
//! validates every setting and returns a [`ConfigError`] naming the stage and field, or starts
//! the threads.
//!
//! Internally the builder composes one closure per stage, from the last stage back to the
//! first: given where its outputs go, each creates its stage's input queue, starts the
//! stage's workers and hands the queue to the closure of the stage before it. Besides, it
//! records the graph's shape (which nodes feed which) for worker counts and the report's flow
//! check.

mod spec;
mod validate;

use std::fmt;
use std::marker::PhantomData;
use std::mem;
use std::num::{NonZeroU32, NonZeroUsize};
use std::ops::RangeInclusive;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use backflow_core::breaker::BreakerConfig;
use backflow_core::scaler::ScalerConfig;
use backflow_core::{Overflow, RetrySchedule, Stage};

use self::spec::{Chain, Marks, Settings, SinkSpec, StageSettings};
use self::validate::validate;
use crate::control::Control;
use crate::error::ConfigError;
use crate::event::Event;
use crate::hooks::{DeadLetter, DropHook, Dropped, ErrorPolicy};
use crate::launch::{self, Attach, Terminal, Wiring, attach_stage};
use crate::link::LinkView;
use crate::output::Output;
use crate::pipeline::{Pipeline, Running};
use crate::plan::{Order, Supply};
use crate::policy::{OnFailure, TypedSettings};
use crate::route::{Downstream, Split};
use crate::wait::WaitStrategy;

/// The queue capacity of a stage that does not set one.
pub const DEFAULT_CAPACITY: usize = 1024;

/// The most workers a stage may start with: a stage's threads, and with
/// [`key_ordered`](Builder::key_ordered) its queues, are set up for each of them before the
/// first thread starts.
///
/// # Examples
///
/// ```
/// use std::num::NonZeroUsize;
/// use backflow::{ConfigError, Pipeline, builder::MAX_WORKERS};
///
/// let too_many = NonZeroUsize::new(MAX_WORKERS + 1).unwrap();
/// let err = Pipeline::<u8>::builder().stage("wide", || |x: u8| x).workers(too_many).sink(|_| {}).build();
/// assert!(matches!(err, Err(ConfigError::TooManyWorkers { max: MAX_WORKERS, .. })));
/// ```
pub const MAX_WORKERS: usize = 65_536;

/// One item in this many carries timestamps, unless [`Source::sample_every`] says otherwise.
pub const DEFAULT_SAMPLE_EVERY: u32 = 256;

/// How often the stages with a workers range are measured and their workers moved, unless
/// [`Source::scale_interval`] says otherwise.
pub const DEFAULT_SCALE_INTERVAL: Duration = Duration::from_millis(200);

// The builder sits above the pipeline: the pipeline does not name it, and its entry point is
// defined here.
impl<In: Send + 'static> Pipeline<In> {
    /// Starts a pipeline definition that takes `In` items.
    ///
    /// # Examples
    ///
    /// ```
    /// let pipeline = backflow::Pipeline::<u8>::builder().stage("id", || |x: u8| x).sink(|_| {}).build()?;
    /// # Ok::<(), backflow::ConfigError>(())
    /// ```
    pub fn builder() -> Source<In> {
        Source::new()
    }
}

/// Marks a [`Builder`] that defines the pipeline's main line, which ends in the pipeline's
/// sink or output.
///
/// # Examples
///
/// ```
/// let _: backflow::Builder<u8, u8, u8, backflow::Trunk> =
///     backflow::Pipeline::<u8>::builder().stage("id", || |x: u8| x);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Trunk;

/// Marks a [`Builder`] that defines a branch, which ends in its own sink or merges back.
///
/// # Examples
///
/// ```
/// let builder = backflow::Pipeline::<u8>::builder()
///     .stage("id", || |x: u8| x)
///     .broadcast("copy", |branch| branch.stage("double", || |x: u8| x * 2).sink(|_| {}));
/// # drop(builder);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Side;

/// The start of a pipeline definition: pipeline-wide settings, then the first `stage`.
///
/// # Examples
///
/// ```
/// use backflow::{Pipeline, WaitStrategy};
///
/// let pipeline = Pipeline::<u64>::builder()
///     .wait_strategy(WaitStrategy::Park)
///     .stage("inc", || |x: u64| x + 1)
///     .sink(|_| {})
///     .build()?;
/// pipeline.drain()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Source<In> {
    settings: Settings,
    _input: PhantomData<fn(In)>,
}

impl<In: Send + 'static> Source<In> {
    pub(crate) fn new() -> Self {
        Self { settings: Settings::default(), _input: PhantomData }
    }

    /// Calls `handler` with every [`Event`]: start, pressure on and off, drops, errors,
    /// retries, dead letters, circuit changes, stalls, and the final report.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow::{Event, Pipeline};
    ///
    /// let source = Pipeline::<u8>::builder().on_event(|event| {
    ///     if let Event::Error { stage, error, .. } = event {
    ///         eprintln!("{stage}: {error}");
    ///     }
    /// });
    /// # drop(source);
    /// ```
    pub fn on_event<H>(mut self, handler: H) -> Self
    where
        H: Fn(&Event<'_>) + Send + Sync + 'static,
    {
        self.settings.events = Some(Arc::new(handler));
        self
    }

    /// How idle workers and blocked producers wait (default [`WaitStrategy::Park`]).
    ///
    /// # Examples
    ///
    /// ```
    /// # use backflow::{Pipeline, WaitStrategy};
    /// let source = Pipeline::<u8>::builder().wait_strategy(WaitStrategy::BusySpin);
    /// # drop(source);
    /// ```
    pub fn wait_strategy(mut self, strategy: WaitStrategy) -> Self {
        self.settings.strategy = strategy;
        self
    }

    /// Time one item in `n` (queue wait, processing time, end-to-end latency); default
    /// [`DEFAULT_SAMPLE_EVERY`]. `1` times every item, at the cost of a few clock reads each.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::num::NonZeroU32;
    /// let source = backflow::Pipeline::<u8>::builder().sample_every(NonZeroU32::MIN);
    /// # drop(source);
    /// ```
    pub fn sample_every(mut self, n: NonZeroU32) -> Self {
        self.settings.sample_every = n;
        self
    }

    /// Whether the pipeline times anything (default `true`): sampled queue waits, processing
    /// times and end-to-end latency, and the workers' time shares behind
    /// [`Stats::bottleneck`](crate::Stats::bottleneck). Off, stats keep every count (the
    /// accounting needs them) and report zero times; it saves a few clock reads per batch
    /// (`benches/README.md`, "Metrics on and off").
    ///
    /// # Examples
    ///
    /// ```
    /// let pipeline = backflow::Pipeline::<u8>::builder()
    ///     .timings(false)
    ///     .stage("id", || |x: u8| x)
    ///     .sink(|_| {})
    ///     .build()?;
    /// pipeline.input().push(1)?;
    /// let report = pipeline.drain()?;
    /// assert_eq!((report.sink().delivered, report.stages()[0].time.busy), (1, 0.0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn timings(mut self, on: bool) -> Self {
        self.settings.timings = on;
        self
    }

    /// At most `budget` worker threads for all stages together: the stages with a
    /// [`workers_range`](Builder::workers_range) start at their minimum, and every
    /// [`scale_interval`](Self::scale_interval) a controller measures each stage and moves
    /// workers to the one that limits the pipeline, the core's
    /// [`Scaler`](crate::core::scaler::Scaler) deciding: one more for a stage busy most of
    /// the time while the stage feeding it waits for room in its queue (while the budget
    /// allows), one fewer for a stage that would still keep up without it (never below its
    /// minimum), and, with the budget full, one from the latter to the former. Each change is
    /// an [`Event::Scaled`]; the stats show every stage's workers and range.
    ///
    /// Without a budget, the stages with a range scale within their range only. Stages with a
    /// fixed number of [`workers`](Builder::workers) count against the budget and never
    /// change. An added worker runs a new stage value from the factory; a worker that leaves
    /// finishes its batch, then flushes and drops its stage value as at the end of the stream.
    /// The budget holds for running threads too: a worker moving from one stage to another
    /// starts once the one it replaces has left (at a later interval, if that one is still
    /// finishing its batch; after four intervals it starts anyway, and one thread more runs
    /// until the other leaves: a worker that holds items in flight, as an async stage's
    /// does, leaves only once it holds none).
    ///
    /// # Errors
    ///
    /// `build()` returns [`ConfigError::ThreadBudget`] when `budget` is below the workers the
    /// stages start with.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow::{Event, Pipeline};
    ///
    /// let pipeline = Pipeline::<u64>::builder()
    ///     .threads(4)
    ///     .on_event(|event| {
    ///         if let Event::Scaled { stage, from, to, reason } = event {
    ///             eprintln!("{stage}: {from} → {to} workers ({reason})");
    ///         }
    ///     })
    ///     .stage("parse", || |x: u64| x + 1)
    ///     .workers_range(1..=2)
    ///     .stage("score", || |x: u64| x * 3)
    ///     .workers_range(1..=3)
    ///     .sink(|_| {})
    ///     .build()?;
    /// assert_eq!(pipeline.stats().stage("score").unwrap().workers_max, 3);
    /// pipeline.drain()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn threads(mut self, budget: usize) -> Self {
        self.settings.threads = Some(budget);
        self
    }

    /// How often the stages with a [`workers_range`](Builder::workers_range) are measured and
    /// their workers moved (default [`DEFAULT_SCALE_INTERVAL`]). Shorter reacts sooner and
    /// measures less steadily: a stage's busy time is counted per batch.
    ///
    /// # Errors
    ///
    /// `build()` returns [`ConfigError::Scaling`] naming `scale_interval` if it is zero and a
    /// stage has a range.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let source = backflow::Pipeline::<u8>::builder().scale_interval(Duration::from_millis(50));
    /// # drop(source);
    /// ```
    pub fn scale_interval(mut self, interval: Duration) -> Self {
        self.settings.scale_interval = interval;
        self
    }

    /// The thresholds of the [`Scaler`](crate::core::scaler::Scaler) behind
    /// [`threads`](Self::threads): when a stage counts as the bottleneck or as having a worker
    /// to spare, for how many intervals in a row, and how many intervals nothing moves after
    /// a move.
    ///
    /// # Errors
    ///
    /// `build()` returns [`ConfigError::Scaling`] naming the field out of range, if a stage
    /// has a range.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow::core::scaler::ScalerConfig;
    ///
    /// let source = backflow::Pipeline::<u8>::builder()
    ///     .scaler(ScalerConfig { samples: 5, ..ScalerConfig::default() });
    /// # drop(source);
    /// ```
    pub fn scaler(mut self, config: ScalerConfig) -> Self {
        self.settings.scaler = config;
        self
    }

    /// Adds the first stage. `factory` makes one stage value per worker, inside the worker's
    /// thread, so stages can keep state without a lock; a closure `|x| …` is a stage.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow::{Pipeline, stage};
    ///
    /// let builder = Pipeline::<&'static str>::builder()
    ///     .stage("parse", || stage::filter_map(|s: &str| s.parse::<u32>().ok()));
    /// # drop(builder);
    /// ```
    pub fn stage<S, F>(self, name: impl Into<String>, factory: F) -> Builder<In, In, S::Out>
    where
        F: Fn() -> S + Send + Sync + 'static,
        S: Stage<In> + 'static,
        S::Out: Send + 'static,
        S::Error: fmt::Display,
    {
        let chain = Chain::new(self.settings);
        let identity: Attach<In, In> = Box::new(|downstream, _| Ok(downstream));
        Builder::<In, In, In, Trunk> { chain, attach: identity, _types: PhantomData }
            .stage(name, factory)
    }
}

impl<In> fmt::Debug for Source<In> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source").field("settings", &self.settings).finish()
    }
}

/// A pipeline definition with at least one stage: `In` is what the pipeline (or branch)
/// takes, `Last` what its last stage takes and `Out` what that stage emits; `P` is [`Trunk`]
/// for the main line and [`Side`] for a branch. Settings apply to the last stage added.
///
/// # Examples
///
/// ```
/// use std::num::NonZeroUsize;
/// use backflow::{Overflow, Pipeline};
///
/// let pipeline = Pipeline::<u32>::builder()
///     .stage("parse", || |x: u32| x.to_string())
///     .capacity(256)
///     .stage("measure", || |s: String| s.len())
///     .workers(NonZeroUsize::new(2).unwrap())
///     .overflow(Overflow::DropOldest)
///     .sink(|_len| {})
///     .build()?;
/// pipeline.drain()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Builder<In, Last, Out, P = Trunk> {
    chain: Chain,
    attach: Attach<In, Out>,
    _types: PhantomData<fn(Last) -> P>,
}

impl<In, Last, Out, P> Builder<In, Last, Out, P>
where
    In: Send + 'static,
    Last: Send + 'static,
    Out: Send + 'static,
{
    /// Adds a stage that takes this stage's outputs.
    ///
    /// # Examples
    ///
    /// ```
    /// let builder = backflow::Pipeline::<u8>::builder()
    ///     .stage("widen", || |x: u8| u32::from(x))
    ///     .stage("square", || |x: u32| x * x);
    /// # drop(builder);
    /// ```
    pub fn stage<S, F>(mut self, name: impl Into<String>, factory: F) -> Builder<In, Out, S::Out, P>
    where
        F: Fn() -> S + Send + Sync + 'static,
        S: Stage<Out> + 'static,
        S::Out: Send + 'static,
        S::Error: fmt::Display,
    {
        let index = self.chain.add_stage(name.into());
        let factory = Arc::new(factory);
        let previous = self.attach;
        let attach: Attach<In, S::Out> = Box::new(move |downstream, wiring| {
            let head = attach_stage(index, &factory, downstream, wiring)?;
            previous(head, wiring)
        });
        Builder { chain: self.chain, attach, _types: PhantomData }
    }

    fn last(&mut self) -> &mut StageSettings {
        &mut self.chain.stages[self.chain.current]
    }

    fn typed(&mut self) -> &mut TypedSettings<Last, Out> {
        self.last()
            .typed
            .get_or_insert_with(|| Box::new(TypedSettings::<Last, Out>::default()))
            .downcast_mut()
            .expect("a stage's typed settings match its types")
    }

    /// Worker threads for this stage (default 1). Workers share the stage's queue; each has
    /// its own stage value from the factory.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::num::NonZeroUsize;
    /// let builder = backflow::Pipeline::<u8>::builder()
    ///     .stage("slow", || |x: u8| x)
    ///     .workers(NonZeroUsize::new(4).unwrap());
    /// # drop(builder);
    /// ```
    pub fn workers(mut self, workers: NonZeroUsize) -> Self {
        self.last().workers = workers;
        self.last().range = None;
        self
    }

    /// Lets this stage run between `min` and `max` workers, starting with `min`, moved by the
    /// pipeline's controller within its [`threads`](Source::threads) budget (see there).
    /// Replaces [`workers`](Self::workers), and the other way round.
    ///
    /// An [`ordered`](Self::ordered) stage keeps its items' order as workers come and go: a
    /// worker leaves between two batches, when it holds no batch's turn (what its stage value
    /// emits when flushed on the way out goes downstream at once, as at the end of the
    /// stream). A
    /// [`key_ordered`](Self::key_ordered) stage cannot have a range (each of its workers has
    /// its own queue, and keys are spread over a number of queues fixed when the pipeline is
    /// built): its workers stay fixed, counted against the budget.
    ///
    /// # Errors
    ///
    /// `build()` returns [`ConfigError::WorkersRange`] if `min` is zero or above `max`, and
    /// [`ConfigError::KeyOrderedScaled`] on a key-ordered stage with `min < max`.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow::{ConfigError, Pipeline};
    ///
    /// let err = Pipeline::<u8>::builder()
    ///     .stage("slow", || |x: u8| x)
    ///     .workers_range(0..=4)
    ///     .sink(|_| {})
    ///     .build()
    ///     .unwrap_err();
    /// assert_eq!(err, ConfigError::WorkersRange { stage: "slow".into(), min: 0, max: 4 });
    /// ```
    pub fn workers_range(mut self, workers: RangeInclusive<usize>) -> Self {
        self.last().range = Some((*workers.start(), *workers.end()));
        self
    }

    /// The capacity of this stage's input queue (default [`DEFAULT_CAPACITY`]). Allocated once,
    /// when the pipeline is built.
    ///
    /// # Examples
    ///
    /// ```
    /// let builder = backflow::Pipeline::<u8>::builder().stage("id", || |x: u8| x).capacity(64);
    /// # drop(builder);
    /// ```
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.last().capacity = capacity;
        self
    }

    /// Bounds this stage's input queue by the total weight of its items as well as by their
    /// number: at most `bytes`, each item weighing what `weigh` says (e.g. `Vec::len`,
    /// `String::len`). The weight is whatever unit `weigh` counts in; bytes, usually.
    ///
    /// - An item is weighed once, as it is pushed (on the pushing thread), and its weight is
    ///   counted out when it leaves the queue, whichever way it leaves.
    /// - The water marks ([`water_marks`](Self::water_marks), default 80 % / 40 %) are
    ///   percentages of `bytes`, and apply to the fuller of the two bounds: pressure turns on
    ///   when the weight or the item count reaches its high mark, and off when both are back
    ///   at their low marks. Marks as counts ([`water_mark_counts`](Self::water_mark_counts))
    ///   are an error.
    /// - An item that does not fit gets the [`overflow`](Self::overflow) policy: `Block`
    ///   waits until enough weight has left, `DropOldest` evicts the oldest items until it
    ///   fits, `DropNewest` drops it, `Fail` hands it back.
    /// - An item heavier than the whole budget is admitted alone, into a queue that holds no
    ///   weight, and nothing joins it until it has left: it waits for the queue to empty
    ///   rather than forever.
    /// - A worker stops taking items from the queue for its batch once they weigh a
    ///   [`BATCH`](crate::stage::BATCH)th of `bytes` (it always takes one), so a stage holds at
    ///   most its budget, plus that much and one item per worker.
    /// - A key-ordered stage has a budget of `bytes` per worker, as it has a capacity per
    ///   worker. The [`Output`]'s queue after the last stage is bounded by count only.
    ///
    /// If `weigh` panics, the pipeline is cancelled and `drain()` returns
    /// [`PipelineError::WeighPanicked`](crate::PipelineError::WeighPanicked); the item is
    /// handed back to the pushing [`Input`](crate::Input), or abandoned and counted.
    ///
    /// `build()` returns [`ConfigError::Invalid`] naming `capacity_bytes` if `bytes` is zero.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow::{Overflow, Pipeline};
    ///
    /// let pipeline = Pipeline::<Vec<u8>>::builder()
    ///     .stage("checksum", || |chunk: Vec<u8>| chunk.iter().map(|&b| u64::from(b)).sum::<u64>())
    ///     .capacity_bytes(64 << 20, Vec::len) // at most 64 MiB of chunks queued
    ///     .overflow(Overflow::Block)
    ///     .sink(|_| {})
    ///     .build()?;
    /// pipeline.input().push(vec![1; 4096])?;
    /// let report = pipeline.drain()?;
    /// let checksum = report.stage("checksum").unwrap();
    /// assert_eq!((checksum.queue_bytes, checksum.queue_capacity_bytes), (0, Some(64 << 20)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn capacity_bytes<W>(mut self, bytes: usize, weigh: W) -> Self
    where
        W: Fn(&Last) -> usize + Send + Sync + 'static,
    {
        self.last().capacity_bytes = Some(bytes);
        self.typed().weigh = Some(Arc::new(weigh));
        self
    }

    /// Water marks as percentages of the capacity (default 80 % / 40 %): pressure turns on at
    /// `high` and off at `low`. With [`capacity_bytes`](Self::capacity_bytes), percentages of
    /// the byte budget too.
    ///
    /// # Examples
    ///
    /// ```
    /// let builder = backflow::Pipeline::<u8>::builder().stage("id", || |x: u8| x).water_marks(90, 10);
    /// # drop(builder);
    /// ```
    pub fn water_marks(mut self, high_percent: u8, low_percent: u8) -> Self {
        self.last().marks = Marks::Percent { high: high_percent, low: low_percent };
        self
    }

    /// Water marks as item counts. Not with [`capacity_bytes`](Self::capacity_bytes), whose
    /// marks are percentages (`build()` returns [`ConfigError::Invalid`] naming
    /// `water_mark_counts`).
    ///
    /// # Examples
    ///
    /// ```
    /// let builder = backflow::Pipeline::<u8>::builder()
    ///     .stage("id", || |x: u8| x)
    ///     .capacity(10)
    ///     .water_mark_counts(8, 2);
    /// # drop(builder);
    /// ```
    pub fn water_mark_counts(mut self, high: usize, low: usize) -> Self {
        self.last().marks = Marks::Counts { high, low };
        self
    }

    /// What a push into this stage's full queue does (default [`Overflow::Block`]).
    /// [`Overflow::Fail`] is only allowed on the first stage. On the first stage of a branch
    /// it decides whether a slow branch holds the main line back (`Block`) or loses items
    /// (the drop policies).
    ///
    /// # Examples
    ///
    /// ```
    /// # use backflow::Overflow;
    /// let builder = backflow::Pipeline::<u8>::builder()
    ///     .stage("id", || |x: u8| x)
    ///     .overflow(Overflow::DropNewest);
    /// # drop(builder);
    /// ```
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.last().overflow = overflow;
        self
    }

    /// Called with every item this stage drops (overflow) or abandons (cancel, shutdown), so
    /// it can be logged, counted or kept.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow::{Overflow, Pipeline};
    ///
    /// let builder = Pipeline::<u8>::builder()
    ///     .stage("id", || |x: u8| x)
    ///     .overflow(Overflow::DropOldest)
    ///     .on_drop(|dropped| eprintln!("{}: {} ({})", dropped.stage, dropped.item, dropped.reason));
    /// # drop(builder);
    /// ```
    pub fn on_drop<H>(mut self, hook: H) -> Self
    where
        H: Fn(Dropped<'_, Last>) + Send + Sync + 'static,
    {
        self.typed().on_drop = Some(Arc::new(hook));
        self
    }

    /// Keeps this stage's outputs in the order of its inputs, with any number of workers:
    /// workers take batches in queue order, and a bounded reorder window releases their
    /// outputs in sequence (a worker that gets too far ahead waits). The default is
    /// unordered: with several workers, outputs of different batches may interleave.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::num::NonZeroUsize;
    /// use backflow::Pipeline;
    ///
    /// let (pipeline, output) = Pipeline::<u32>::builder()
    ///     .stage("square", || |x: u32| x * x)
    ///     .workers(NonZeroUsize::new(2).unwrap())
    ///     .ordered()
    ///     .output()
    ///     .build()?;
    /// // Fewer items than the output's high water mark: nothing reads it before `drain`.
    /// pipeline.input().push_iter(0..500)?;
    /// pipeline.drain()?;
    /// assert!(output.collect::<Vec<_>>().windows(2).all(|w| w[0] < w[1]));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn ordered(mut self) -> Self {
        self.last().order = Order::Ordered;
        self
    }

    /// Sends items with equal keys to the same worker, so each key's items are processed (and
    /// emitted) in order, and a stateful stage sees all of a key's items. Each worker gets a
    /// queue of this stage's capacity. Not allowed on the first stage, which input handles
    /// feed from any thread.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::num::NonZeroUsize;
    /// use backflow::Pipeline;
    ///
    /// let builder = Pipeline::<(u32, String)>::builder()
    ///     .stage("parse", || |(user, event): (u32, String)| (user, event.len()))
    ///     .stage("per user", || |(user, n): (u32, usize)| (user, n * 2))
    ///     .workers(NonZeroUsize::new(4).unwrap())
    ///     .key_ordered(|(user, _): &(u32, usize)| u64::from(*user));
    /// # drop(builder);
    /// ```
    pub fn key_ordered<K>(mut self, key: K) -> Self
    where
        K: Fn(&Last) -> u64 + Send + Sync + 'static,
    {
        self.last().order = Order::KeyOrdered;
        self.typed().key = Some(Arc::new(key));
        self
    }

    /// What this stage does with an item that failed for good: count it and go on
    /// ([`ErrorPolicy::Skip`], the default) or cancel the pipeline
    /// ([`ErrorPolicy::FailFast`]). Replaces a [`dead_letter`](Self::dead_letter) handler.
    /// A panic in the stage counts as an error (and the worker rebuilds its stage).
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow::{ErrorPolicy, Pipeline};
    ///
    /// let builder = Pipeline::<String>::builder()
    ///     .stage("parse", || backflow::stage::try_map(|s: String| s.parse::<u32>()))
    ///     .on_error(ErrorPolicy::FailFast);
    /// # drop(builder);
    /// ```
    pub fn on_error(mut self, policy: ErrorPolicy) -> Self {
        self.typed().on_failure = match policy {
            ErrorPolicy::Skip => OnFailure::Skip,
            ErrorPolicy::FailFast => OnFailure::FailFast,
        };
        self
    }

    /// Hands every item that failed for good to `handler`, with the error, the stage and the
    /// number of attempts; counted as dead-lettered. Items are copied before each attempt
    /// (hence `Clone`), since a stage consumes what it processes.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use backflow::Pipeline;
    ///
    /// let dlq = Arc::new(Mutex::new(Vec::new()));
    /// let keep = Arc::clone(&dlq);
    /// let pipeline = Pipeline::<String>::builder()
    ///     .stage("parse", || backflow::stage::try_map(|s: String| s.parse::<u32>()))
    ///     .dead_letter(move |letter| keep.lock().unwrap().push((letter.item, letter.error)))
    ///     .sink(|_| {})
    ///     .build()?;
    /// pipeline.input().push_iter(["1".to_string(), "x".to_string()])?;
    /// let report = pipeline.drain()?;
    /// assert_eq!(report.stage("parse").unwrap().accounting.dead_lettered, 1);
    /// assert_eq!(dlq.lock().unwrap()[0].0, "x");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn dead_letter<H>(mut self, handler: H) -> Self
    where
        Last: Clone,
        H: Fn(DeadLetter<'_, Last>) + Send + Sync + 'static,
    {
        let typed = self.typed();
        typed.on_failure = OnFailure::DeadLetter(Arc::new(handler));
        typed.clone = Some(Last::clone);
        self
    }

    /// Tries a failed item again (an error or a panic), waiting between attempts as
    /// `schedule` says; after its last retry the item goes to the error policy. Items are
    /// copied before each attempt (hence `Clone`). Outputs of a failed attempt have already
    /// gone downstream.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use backflow::{Pipeline, core::RetrySchedule};
    ///
    /// let schedule = RetrySchedule::new(Duration::from_millis(1), Duration::from_millis(50), 3)?;
    /// let builder = Pipeline::<String>::builder()
    ///     .stage("fetch", || backflow::stage::try_map(|url: String| if url.is_empty() { Err("empty") } else { Ok(url) }))
    ///     .retry(schedule);
    /// # drop(builder);
    /// # Ok::<(), backflow::core::ConfigError>(())
    /// ```
    pub fn retry(mut self, schedule: RetrySchedule) -> Self
    where
        Last: Clone,
    {
        self.last().retry = Some(schedule);
        self.typed().clone = Some(Last::clone);
        self
    }

    /// Puts a circuit breaker in front of this stage (the core's
    /// [`CircuitBreaker`](crate::core::breaker::CircuitBreaker)): when too many items fail, the stage pauses and items wait
    /// upstream (nothing is dropped); after the cooldown, trial items go through; enough
    /// successes close it again. Its state is in the stats and in events.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow::{Pipeline, core::breaker::BreakerConfig};
    ///
    /// let builder = Pipeline::<String>::builder()
    ///     .stage("call", || backflow::stage::try_map(|s: String| s.parse::<u32>()))
    ///     .circuit_breaker(BreakerConfig { threshold_percent: 20, ..BreakerConfig::default() });
    /// # drop(builder);
    /// ```
    pub fn circuit_breaker(mut self, config: BreakerConfig) -> Self {
        self.last().breaker = Some(config);
        self
    }

    /// At most `per_second` items a second through this stage (all its workers together),
    /// with bursts of up to `burst` (the core's [`TokenBucket`](crate::core::TokenBucket)). Items wait upstream.
    ///
    /// # Examples
    ///
    /// ```
    /// let builder = backflow::Pipeline::<u8>::builder().stage("api", || |x: u8| x).rate_limit(100, 10);
    /// # drop(builder);
    /// ```
    pub fn rate_limit(mut self, per_second: u64, burst: u64) -> Self {
        self.last().rate_limit = Some((per_second, burst));
        self
    }

    /// Flushes this stage at least every `period` (besides at the end of the stream), also
    /// when no items arrive: a batching stage then emits partial batches on time, an
    /// aggregate emits tumbling windows.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let builder = backflow::Pipeline::<u8>::builder()
    ///     .stage("batch", || backflow::stage::batch::<u8, 64>())
    ///     .flush_every(Duration::from_millis(100));
    /// # drop(builder);
    /// ```
    pub fn flush_every(mut self, period: Duration) -> Self {
        self.last().flush_every = Some(period);
        self
    }

    /// Raises [`Event::Stalled`] when this stage has items queued and finishes none for
    /// `after` (once per stall).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let builder = backflow::Pipeline::<u8>::builder()
    ///     .stage("db", || |x: u8| x)
    ///     .stall_after(Duration::from_secs(5));
    /// # drop(builder);
    /// ```
    pub fn stall_after(mut self, after: Duration) -> Self {
        self.last().stall_after = Some(after);
        self
    }

    /// Calls `hook` with each item just before this stage processes it.
    ///
    /// # Examples
    ///
    /// ```
    /// let builder = backflow::Pipeline::<u8>::builder()
    ///     .stage("id", || |x: u8| x)
    ///     .before(|x| eprintln!("in: {x}"));
    /// # drop(builder);
    /// ```
    pub fn before<H>(mut self, hook: H) -> Self
    where
        H: Fn(&Last) + Send + Sync + 'static,
    {
        self.typed().before = Some(Arc::new(hook));
        self
    }

    /// Calls `hook` with each output of this stage as it is emitted.
    ///
    /// # Examples
    ///
    /// ```
    /// let builder = backflow::Pipeline::<u8>::builder()
    ///     .stage("id", || |x: u8| x)
    ///     .after(|x| eprintln!("out: {x}"));
    /// # drop(builder);
    /// ```
    pub fn after<H>(mut self, hook: H) -> Self
    where
        H: Fn(&Out) + Send + Sync + 'static,
    {
        self.typed().after = Some(Arc::new(hook));
        self
    }

    /// Sends a clone of every output of this point to a branch, which ends in its own sink
    /// (named `name` in the stats) or merges back into the main line. Under `Block` the
    /// slower side holds the producer back; give the branch's first stage a drop policy to
    /// let it lose items instead.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::{Arc, atomic::{AtomicU64, Ordering}};
    /// use backflow::Pipeline;
    ///
    /// let audited = Arc::new(AtomicU64::new(0));
    /// let count = Arc::clone(&audited);
    /// let pipeline = Pipeline::<u32>::builder()
    ///     .stage("parse", || |x: u32| x)
    ///     .broadcast("audit", move |branch| {
    ///         branch.sink(move |_: u32| { count.fetch_add(1, Ordering::Relaxed); })
    ///     })
    ///     .stage("double", || |x: u32| x * 2)
    ///     .sink(|_| {})
    ///     .build()?;
    /// pipeline.input().push_iter(0..10)?;
    /// let report = pipeline.drain()?;
    /// assert_eq!((report.sink().delivered, audited.load(Ordering::Relaxed)), (10, 10));
    /// assert!(report.is_balanced());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn broadcast<F, End>(self, name: impl Into<String>, branch: F) -> Self
    where
        Out: Clone,
        F: FnOnce(Branch<Out>) -> BranchEnd<Out, End>,
    {
        self.fan(name.into(), Split::Broadcast(Out::clone), branch)
    }

    /// Sends the outputs of this point that `accepts` to a branch, and the others on along
    /// the main line. The branch ends in its own sink (named `name` in the stats) or merges
    /// back into the main line.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow::Pipeline;
    ///
    /// let (pipeline, output) = Pipeline::<i32>::builder()
    ///     .stage("parse", || |x: i32| x)
    ///     .branch("negatives", |x: &i32| *x < 0, |branch| branch.stage("abs", || |x: i32| -x).merge())
    ///     .stage("double", || |x: i32| x * 2)
    ///     .output()
    ///     .build()?;
    /// pipeline.input().push_iter([1, -2, 3])?;
    /// pipeline.drain()?;
    /// let mut out: Vec<_> = output.collect();
    /// out.sort();
    /// assert_eq!(out, [2, 4, 6]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn branch<R, F, End>(self, name: impl Into<String>, accepts: R, branch: F) -> Self
    where
        R: Fn(&Out) -> bool + Send + Sync + 'static,
        F: FnOnce(Branch<Out>) -> BranchEnd<Out, End>,
    {
        self.fan(name.into(), Split::Route(Arc::new(accepts)), branch)
    }

    fn fan<F, End>(mut self, name: String, split: Split<Out>, branch: F) -> Self
    where
        F: FnOnce(Branch<Out>) -> BranchEnd<Out, End>,
    {
        let current = self.chain.current;
        let fan = self.chain.add_fan(matches!(split, Split::Broadcast(_)));
        self.chain.branches.push(name);
        let start =
            Builder { chain: self.chain, attach: Box::new(|d, _| Ok(d)), _types: PhantomData };
        let end = branch(Branch { builder: start });
        let mut chain = end.chain;
        chain.branches.pop();
        chain.current = current;
        chain.tail = [Supply::FanMain(fan)].into_iter().chain(end.merges).collect();
        let (previous, side) = (self.attach, end.attach);
        let attach: Attach<In, Out> = Box::new(move |downstream, wiring| {
            let side = side(downstream.clone(), wiring)?;
            previous(launch::fan(wiring, fan, downstream, side, split), wiring)
        });
        Builder { chain, attach, _types: PhantomData }
    }
}

impl<In: Send + 'static, Last: Send + 'static, Out: Send + 'static> Builder<In, Last, Out, Trunk> {
    /// Ends the pipeline in a sink closure, called by the last stage's workers (one at a
    /// time) with every output.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut total = 0;
    /// let builder = backflow::Pipeline::<u8>::builder()
    ///     .stage("id", || |x: u8| x)
    ///     .sink(move |x| total += u32::from(x));
    /// # drop(builder);
    /// ```
    pub fn sink<F: FnMut(Out) + Send + 'static>(self, sink: F) -> WithSink<In, Last, Out> {
        WithSink { builder: self, sink: crate::route::SinkCall::new(sink), on_drop: None }
    }

    /// Ends the pipeline in an [`Output`] iterator, which `build()` returns with the pipeline.
    ///
    /// # Examples
    ///
    /// ```
    /// let builder = backflow::Pipeline::<u8>::builder().stage("id", || |x: u8| x).output();
    /// # drop(builder);
    /// ```
    pub fn output(self) -> WithOutput<In, Last, Out> {
        WithOutput { builder: self, on_drop: None }
    }

    /// Validates the definition and launches it, ending in `terminal`.
    fn launch(
        self,
        terminal: impl FnOnce(&Wiring) -> Result<Terminal<Out>, ConfigError>,
    ) -> Result<Running<In>, ConfigError> {
        let control = self.control();
        let plan = validate(self.chain, control.elapsed())?;
        launch::start(plan, control, self.attach, terminal)
    }

    fn control(&self) -> Arc<Control> {
        let settings = &self.chain.settings;
        Arc::new(Control::new(
            settings.strategy,
            settings.sample_every,
            settings.timings,
            settings.events.clone(),
        ))
    }
}

impl<In, Last, Out, P> fmt::Debug for Builder<In, Last, Out, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.chain.stages.iter().map(|s| s.name.as_str()).collect();
        f.debug_struct("Builder").field("stages", &names).finish_non_exhaustive()
    }
}

/// The start of a branch (see [`Builder::broadcast`] and [`Builder::branch`]): add stages,
/// then end it in a sink or merge it back into the main line.
///
/// # Examples
///
/// ```
/// let builder = backflow::Pipeline::<u8>::builder()
///     .stage("id", || |x: u8| x)
///     .branch("odd", |x: &u8| x % 2 == 1, |odd| odd.sink(|x| assert!(x % 2 == 1)));
/// # drop(builder);
/// ```
pub struct Branch<T> {
    builder: Builder<T, T, T, Side>,
}

impl<T: Send + 'static> Branch<T> {
    /// Adds the branch's first stage.
    ///
    /// # Examples
    ///
    /// ```
    /// let builder = backflow::Pipeline::<u8>::builder()
    ///     .stage("id", || |x: u8| x)
    ///     .broadcast("copy", |b| b.stage("wide", || |x: u8| u32::from(x)).sink(|_| {}));
    /// # drop(builder);
    /// ```
    pub fn stage<S, F>(self, name: impl Into<String>, factory: F) -> Builder<T, T, S::Out, Side>
    where
        F: Fn() -> S + Send + Sync + 'static,
        S: Stage<T> + 'static,
        S::Out: Send + 'static,
        S::Error: fmt::Display,
    {
        self.builder.stage(name, factory)
    }

    /// Ends the branch in a sink closure right away.
    ///
    /// # Examples
    ///
    /// ```
    /// let builder = backflow::Pipeline::<u8>::builder()
    ///     .stage("id", || |x: u8| x)
    ///     .broadcast("log", |b| b.sink(|x| println!("{x}")));
    /// # drop(builder);
    /// ```
    pub fn sink<F: FnMut(T) + Send + 'static>(self, sink: F) -> BranchEnd<T> {
        self.builder.sink(sink)
    }
}

impl<T> fmt::Debug for Branch<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Branch").finish_non_exhaustive()
    }
}

impl<T: Send + 'static, Last: Send + 'static, Out: Send + 'static> Builder<T, Last, Out, Side> {
    /// Ends the branch in its own sink closure, named after the branch in the stats.
    ///
    /// # Examples
    ///
    /// ```
    /// let builder = backflow::Pipeline::<u8>::builder()
    ///     .stage("id", || |x: u8| x)
    ///     .broadcast("copy", |b| b.stage("wide", || |x: u8| u32::from(x)).sink(|_| {}));
    /// # drop(builder);
    /// ```
    pub fn sink<F: FnMut(Out) + Send + 'static>(mut self, sink: F) -> BranchEnd<T, Out> {
        let index = self.chain.sinks.len() + 1;
        let name = self.chain.branches.last().expect("inside a branch").clone();
        let feeds = mem::take(&mut self.chain.tail);
        self.chain.sinks.push(SinkSpec { name, feeds });
        let previous = self.attach;
        let sink = crate::route::SinkCall::new(sink);
        let on_drop = Arc::new(OnceLock::new());
        let hook = Arc::clone(&on_drop);
        BranchEnd {
            chain: self.chain,
            merges: Vec::new(),
            attach: Box::new(move |_, wiring| {
                let sink = launch::sink(wiring, index, sink, hook.get().cloned());
                previous(sink, wiring)
            }),
            on_drop: Some(on_drop),
            _sink: PhantomData,
        }
    }
}

impl<T: Send + 'static, Last: Send + 'static> Builder<T, Last, T, Side> {
    /// Ends the branch by merging its outputs back into the main line, where it goes on
    /// after the branching point.
    ///
    /// # Examples
    ///
    /// ```
    /// let builder = backflow::Pipeline::<u8>::builder()
    ///     .stage("id", || |x: u8| x)
    ///     .branch("big", |x: &u8| *x > 100, |b| b.stage("halve", || |x: u8| x / 2).merge());
    /// # drop(builder);
    /// ```
    pub fn merge(mut self) -> BranchEnd<T> {
        let merges = mem::take(&mut self.chain.tail);
        BranchEnd {
            chain: self.chain,
            merges,
            attach: self.attach,
            on_drop: None,
            _sink: PhantomData,
        }
    }
}

/// A finished branch, as [`Builder::broadcast`] and [`Builder::branch`] take it back: `T` is
/// what the branch takes, `Out` what its sink takes (for a branch that merges, `T`).
///
/// # Examples
///
/// ```
/// let builder = backflow::Pipeline::<u8>::builder()
///     .stage("id", || |x: u8| x)
///     .broadcast("log", |b| -> backflow::BranchEnd<u8> { b.sink(|_| {}) });
/// # drop(builder);
/// ```
pub struct BranchEnd<T, Out = T> {
    chain: Chain,
    /// What the branch adds to the main line's tail, if it merges.
    merges: Vec<Supply>,
    /// Given the main line's downstream (for a merge), builds the branch.
    attach: Attach<T, T>,
    /// The branch sink's drop hook, set (or not) before the pipeline is built; `None` for a
    /// branch that merges.
    on_drop: Option<Arc<OnceLock<DropHook<Out>>>>,
    _sink: PhantomData<fn(Out)>,
}

impl<T, Out> BranchEnd<T, Out> {
    /// Calls `hook` with every item that reached this branch's sink and was never delivered
    /// to it: abandoned when the pipeline is cancelled, shut down past its deadline or
    /// dropped (stage: the branch's name, reason
    /// [`Abandoned`](crate::DropReason::Abandoned)), as the main sink's
    /// [`on_drop`](WithSink::on_drop) does. Items dropped or abandoned in the branch's stages
    /// go to those stages' hooks. Only a branch that ends in its own sink has one: on a
    /// branch that merges, `build()` returns [`ConfigError::DropHookOnMerge`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use backflow::{DropReason, Pipeline};
    ///
    /// let lost = Arc::new(Mutex::new(Vec::new()));
    /// let seen = Arc::clone(&lost);
    /// let pipeline = Pipeline::<u8>::builder()
    ///     .stage("id", || |x: u8| x)
    ///     .broadcast("audit", move |b| {
    ///         b.sink(|_| {}).on_drop(move |d| seen.lock().unwrap().push((d.stage.to_string(), d.reason)))
    ///     })
    ///     .sink(|_| {})
    ///     .build()?;
    /// pipeline.input().push_iter(0..10)?;
    /// pipeline.cancel();
    /// assert!(pipeline.drain().unwrap_err().report().is_balanced());
    /// assert!(lost.lock().unwrap().iter().all(|(stage, why)| stage == "audit" && *why == DropReason::Abandoned));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn on_drop<H>(mut self, hook: H) -> Self
    where
        H: Fn(Dropped<'_, Out>) + Send + Sync + 'static,
    {
        match &self.on_drop {
            Some(slot) => {
                let _ = slot.set(Arc::new(hook));
            }
            None => {
                let branch = self.chain.branches.last().cloned().unwrap_or_default();
                self.chain.misplaced.get_or_insert(ConfigError::DropHookOnMerge { branch });
            }
        }
        self
    }
}

impl<T, Out> fmt::Debug for BranchEnd<T, Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BranchEnd")
            .field("merges", &!self.merges.is_empty())
            .finish_non_exhaustive()
    }
}

/// A pipeline definition that ends in a sink closure; `build()` starts it.
///
/// # Examples
///
/// ```
/// let pipeline = backflow::Pipeline::<u8>::builder().stage("id", || |x: u8| x).sink(|_| {}).build()?;
/// # Ok::<(), backflow::ConfigError>(())
/// ```
pub struct WithSink<In, Last, Out> {
    builder: Builder<In, Last, Out>,
    sink: crate::route::SinkCall<Out>,
    on_drop: Option<DropHook<Out>>,
}

impl<In: Send + 'static, Last: Send + 'static, Out: Send + 'static> WithSink<In, Last, Out> {
    /// Calls `hook` with every output that reaches the sink after a cancel and is therefore
    /// not delivered (stage `"sink"`, reason [`Abandoned`](crate::DropReason::Abandoned)).
    ///
    /// # Examples
    ///
    /// ```
    /// let builder = backflow::Pipeline::<u8>::builder()
    ///     .stage("id", || |x: u8| x)
    ///     .sink(|_| {})
    ///     .on_drop(|dropped| eprintln!("{} never reached the sink", dropped.item));
    /// # drop(builder);
    /// ```
    #[must_use]
    pub fn on_drop<H>(mut self, hook: H) -> Self
    where
        H: Fn(Dropped<'_, Out>) + Send + Sync + 'static,
    {
        self.on_drop = Some(Arc::new(hook));
        self
    }

    /// Validates every setting and starts the pipeline's threads.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the stage and field at fault; nothing is left running.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow::{ConfigError, Pipeline};
    ///
    /// let err = Pipeline::<u8>::builder()
    ///     .stage("a", || |x: u8| x)
    ///     .stage("a", || |x: u8| x)
    ///     .sink(|_| {})
    ///     .build()
    ///     .unwrap_err();
    /// assert_eq!(err, ConfigError::DuplicateName { stage: "a".into() });
    /// ```
    pub fn build(self) -> Result<Pipeline<In>, ConfigError> {
        let (call, on_drop) = (self.sink, self.on_drop);
        let running = self.builder.launch(|wiring| {
            Ok(Terminal { downstream: launch::sink(wiring, 0, call, on_drop), output: None })
        })?;
        Pipeline::start(running)
    }
}

impl<In, Last, Out> fmt::Debug for WithSink<In, Last, Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WithSink").field("builder", &self.builder).finish_non_exhaustive()
    }
}

/// A pipeline definition that ends in an [`Output`] iterator; `build()` starts it.
///
/// # Examples
///
/// ```
/// let (pipeline, output) = backflow::Pipeline::<u8>::builder().stage("id", || |x: u8| x).output().build()?;
/// # Ok::<(), backflow::ConfigError>(())
/// ```
pub struct WithOutput<In, Last, Out> {
    builder: Builder<In, Last, Out>,
    on_drop: Option<DropHook<Out>>,
}

impl<In: Send + 'static, Last: Send + 'static, Out: Send + 'static> WithOutput<In, Last, Out> {
    /// Calls `hook` with every output that is never yielded: left in the output's queue when
    /// the [`Output`] is dropped or the pipeline cancelled (stage `"sink"`, reason
    /// [`Abandoned`](crate::DropReason::Abandoned)).
    ///
    /// # Examples
    ///
    /// ```
    /// let builder = backflow::Pipeline::<u8>::builder()
    ///     .stage("id", || |x: u8| x)
    ///     .output()
    ///     .on_drop(|dropped| eprintln!("{} was never read", dropped.item));
    /// # drop(builder);
    /// ```
    #[must_use]
    pub fn on_drop<H>(mut self, hook: H) -> Self
    where
        H: Fn(Dropped<'_, Out>) + Send + Sync + 'static,
    {
        self.on_drop = Some(Arc::new(hook));
        self
    }

    /// Validates every setting and starts the pipeline's threads. The output's queue has the
    /// last stage's capacity and water marks, with `Block`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the stage and field at fault; nothing is left running.
    ///
    /// # Examples
    ///
    /// ```
    /// let (pipeline, output) = backflow::Pipeline::<u8>::builder().stage("id", || |x: u8| x).output().build()?;
    /// pipeline.input().push(4).unwrap();
    /// pipeline.drain().unwrap();
    /// assert_eq!(output.collect::<Vec<_>>(), [4]);
    /// # Ok::<(), backflow::ConfigError>(())
    /// ```
    pub fn build(self) -> Result<(Pipeline<In>, Output<Out>), ConfigError> {
        let (mut link, on_drop) = (None, self.on_drop);
        let running = self.builder.launch(|wiring| {
            let output = launch::output(wiring, on_drop)?;
            link = Some(Arc::clone(&output));
            let view = Arc::clone(&output) as Arc<dyn LinkView>;
            Ok(Terminal { downstream: Downstream::Link(output), output: Some(view) })
        })?;
        let link = link.expect("the launch builds the output link");
        let shared = Arc::clone(&running.sinks[0].0);
        Ok((Pipeline::start(running)?, Output::new(link, shared)))
    }
}

impl<In, Last, Out> fmt::Debug for WithOutput<In, Last, Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WithOutput").field("builder", &self.builder).finish_non_exhaustive()
    }
}
