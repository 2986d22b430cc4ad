//! The runtime's errors, one enum per boundary: [`ConfigError`] from `build()`,
//! [`PushError`] from an [`Input`](crate::Input), [`PipelineError`] from `drain()`.

use std::fmt;

use crate::stats::Report;

/// A pipeline definition that cannot run, naming the stage and the field at fault.
/// `build()` returns it instead of panicking; nothing has been started when it does.
///
/// # Examples
///
/// ```
/// use backflow::{ConfigError, Pipeline};
///
/// let err = Pipeline::<u32>::builder()
///     .stage("double", || |x: u32| x * 2)
///     .capacity(0)
///     .sink(|_| {})
///     .build()
///     .unwrap_err();
/// assert_eq!(err, ConfigError::ZeroCapacity { stage: "double".into() });
/// assert_eq!(err.to_string(), "stage `double`: capacity must be at least 1");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A stage has an empty name (stages are numbered from 0 in `index`).
    #[error("stage #{index}: name must not be empty")]
    EmptyName {
        /// The position of the stage in the pipeline.
        index: usize,
    },
    /// A stage name contains a control character, which would garble logs, thread names and
    /// metric labels.
    #[error("stage {name:?}: name must not contain control characters")]
    NameHasControl {
        /// The name given.
        name: String,
    },
    /// Two stages, or a stage and a sink, share a name, so stats, events and drop hooks could
    /// not tell them apart. The pipeline's own sink (or output) is named `sink`; a branch's
    /// sink is named after the branch.
    #[error("stage `{stage}`: the name is used by more than one stage or sink")]
    DuplicateName {
        /// The repeated name.
        stage: String,
    },
    /// A stage's input capacity is zero: nothing could ever be queued.
    #[error("stage `{stage}`: capacity must be at least 1")]
    ZeroCapacity {
        /// The stage.
        stage: String,
    },
    /// A stage's input capacity is above what a ring can hold.
    #[error("stage `{stage}`: capacity {capacity} exceeds the maximum of {max}")]
    CapacityTooLarge {
        /// The stage.
        stage: String,
        /// The capacity asked for.
        capacity: usize,
        /// The largest capacity a ring accepts.
        max: usize,
    },
    /// A stage's water marks cannot work with its capacity (low not below high, high above
    /// the capacity, a percentage above 100).
    #[error("stage `{stage}`: {source}")]
    WaterMarks {
        /// The stage.
        stage: String,
        /// What is wrong with the marks.
        source: backflow_core::ConfigError,
    },
    /// [`Overflow::Fail`](crate::Overflow::Fail) hands a full queue's item back to whoever
    /// pushed it; only the first stage has such a caller (the [`Input`](crate::Input)).
    #[error("stage `{stage}`: overflow `Fail` is only allowed on the first stage")]
    FailNotFirst {
        /// The stage.
        stage: String,
    },
    /// [`Builder::key_ordered`](crate::Builder::key_ordered) on the first stage, which input
    /// handles feed from any thread: there is no worker upstream to route by key. Put a stage
    /// before it.
    #[error("stage `{stage}`: the first stage cannot be key-ordered")]
    KeyOrderedFirst {
        /// The stage.
        stage: String,
    },
    /// [`BranchEnd::on_drop`](crate::BranchEnd::on_drop) on a branch that merges back into
    /// the main line: it has no sink of its own (its items' drops go to the hooks of the
    /// stages and the sink they reach).
    #[error("branch `{branch}`: `on_drop` needs a branch that ends in its own sink, not a merge")]
    DropHookOnMerge {
        /// The branch.
        branch: String,
    },
    /// A period that must be longer than zero is zero.
    #[error("stage `{stage}`: `{field}` must be longer than zero")]
    ZeroDuration {
        /// The stage.
        stage: String,
        /// The setting: `flush_every` or `stall_after`.
        field: &'static str,
    },
    /// A stage's circuit breaker or rate limit is out of range (the core's error names the
    /// field, such as `breaker.threshold_percent` or `token_bucket.rate`).
    #[error("stage `{stage}`: {source}")]
    Invalid {
        /// The stage.
        stage: String,
        /// What is wrong.
        source: backflow_core::ConfigError,
    },
    /// The allocator refused a stage's queue (its capacity times the size of an item is more
    /// memory than the machine gives, or than one allocation can hold). Queues are allocated
    /// before any thread starts: nothing was started.
    #[error("stage `{stage}`: could not allocate a queue of {capacity} items")]
    OutOfMemory {
        /// The stage (or sink) whose queue it was.
        stage: String,
        /// The capacity asked for.
        capacity: usize,
    },
    /// The operating system refused to start a worker thread. The threads already started
    /// have been stopped and joined.
    #[error("stage `{stage}`: could not start worker {worker}: {message}")]
    Spawn {
        /// The stage.
        stage: String,
        /// The worker's number within the stage.
        worker: usize,
        /// The operating system's error.
        message: String,
    },
    /// More workers to start a stage with (its [`Builder::workers`](crate::Builder::workers),
    /// or the minimum of its [`Builder::workers_range`](crate::Builder::workers_range)) than
    /// [`MAX_WORKERS`](crate::builder::MAX_WORKERS).
    #[error("stage `{stage}`: {workers} workers to start with, at most {max}")]
    TooManyWorkers {
        /// The stage.
        stage: String,
        /// The workers asked for.
        workers: usize,
        /// [`MAX_WORKERS`](crate::builder::MAX_WORKERS).
        max: usize,
    },
    /// [`Builder::workers_range`](crate::Builder::workers_range) with a minimum of zero or
    /// above the maximum.
    #[error("stage `{stage}`: workers_range {min}..={max} must have 1 <= min <= max")]
    WorkersRange {
        /// The stage.
        stage: String,
        /// The minimum given.
        min: usize,
        /// The maximum given.
        max: usize,
    },
    /// A key-ordered stage with a workers range: its keys are spread over one queue per
    /// worker, a number fixed when the pipeline is built, so its workers cannot come and go.
    #[error("stage `{stage}`: a key-ordered stage cannot have a workers range")]
    KeyOrderedScaled {
        /// The stage.
        stage: String,
    },
    /// [`Source::threads`](crate::Source::threads) below the workers the stages start with
    /// (each fixed number, each range's minimum), or zero.
    #[error("threads: a budget of {budget} is below the {needed} workers the stages start with")]
    ThreadBudget {
        /// The budget given.
        budget: usize,
        /// The stages' workers at the start, together.
        needed: usize,
    },
    /// A pipeline-wide scaling setting that cannot work: `scale_interval` zero, `timings` off
    /// (the scaler measures how busy the stages are), or a field of the
    /// [`ScalerConfig`](crate::core::scaler::ScalerConfig) out of range (`scaler.samples`, …).
    #[error("`{field}` must be {expected}")]
    Scaling {
        /// The setting.
        field: &'static str,
        /// What it accepts.
        expected: &'static str,
    },
}

/// A push into a pipeline that did not happen; the item is inside, so nothing is lost.
///
/// # Examples
///
/// ```
/// use backflow::{Pipeline, PushError};
///
/// let pipeline = Pipeline::<String>::builder().stage("id", || |s: String| s).sink(|_| {}).build()?;
/// let input = pipeline.input();
/// pipeline.drain()?;
/// let err = input.push("late".to_string()).unwrap_err();
/// assert_eq!(err.to_string(), "the pipeline is closed");
/// assert_eq!(err.into_inner(), "late");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub enum PushError<T> {
    /// The first stage's queue is full (from `try_push`, or any push under
    /// [`Overflow::Fail`](crate::Overflow::Fail)).
    Full(T),
    /// `push_timeout` waited for room until its deadline.
    Timeout(T),
    /// The pipeline is draining or drained: it takes no more items.
    Closed(T),
    /// The pipeline was cancelled.
    Cancelled(T),
}

impl<T> PushError<T> {
    /// Returns the item that was not pushed.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(backflow::PushError::Closed(3).into_inner(), 3);
    /// ```
    pub fn into_inner(self) -> T {
        match self {
            Self::Full(item) | Self::Timeout(item) | Self::Closed(item) | Self::Cancelled(item) => {
                item
            }
        }
    }
}

// NB: by hand, so that `PushError<T>` is `Debug` (and an `Error`) for any `T`.
impl<T> fmt::Debug for PushError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Full(_) => "Full(..)",
            Self::Timeout(_) => "Timeout(..)",
            Self::Closed(_) => "Closed(..)",
            Self::Cancelled(_) => "Cancelled(..)",
        })
    }
}

impl<T> fmt::Display for PushError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Full(_) => "the first stage's queue is full",
            Self::Timeout(_) => "timed out waiting for room in the first stage's queue",
            Self::Closed(_) => "the pipeline is closed",
            Self::Cancelled(_) => "the pipeline was cancelled",
        })
    }
}

impl<T> std::error::Error for PushError<T> {}

/// Why a pipeline did not finish cleanly. Each variant carries the final [`Report`], so the
/// accounting of every item is available either way; but for
/// [`CalledFromWithin`](Self::CalledFromWithin), whose report is of the moment of the call.
///
/// # Examples
///
/// ```
/// use backflow::{Pipeline, PipelineError};
///
/// let pipeline = Pipeline::<u8>::builder().stage("id", || |x: u8| x).sink(|_| {}).build()?;
/// pipeline.cancel();
/// let err = pipeline.drain().unwrap_err();
/// assert!(matches!(err, PipelineError::Cancelled { .. }));
/// assert!(err.report().is_balanced());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// The pipeline was cancelled before it drained; unprocessed items are counted as
    /// abandoned in the report.
    #[error("the pipeline was cancelled; {} items abandoned", report.abandoned())]
    Cancelled {
        /// The final accounting.
        report: Box<Report>,
    },
    /// A stage with [`ErrorPolicy::FailFast`](crate::ErrorPolicy::FailFast) failed an item;
    /// the pipeline was cancelled.
    #[error("stage `{stage}` failed: {error}")]
    StageFailed {
        /// The stage.
        stage: String,
        /// The first error (for a panic, `panicked: ` and its message).
        error: String,
        /// The final accounting.
        report: Box<Report>,
    },
    /// A worker thread panicked outside its stage (in the sink, the stage's factory, a
    /// broadcast `Clone`, a route predicate or key function, the dead-letter or event
    /// handler); the pipeline was cancelled.
    #[error("stage `{stage}`: worker {worker} panicked: {message}")]
    WorkerPanicked {
        /// The stage whose worker panicked (the last stage, when the sink did).
        stage: String,
        /// The worker's number within the stage.
        worker: usize,
        /// The panic's message, when it was a string.
        message: String,
        /// The final accounting.
        report: Box<Report>,
    },
    /// A drop hook (a stage's, a sink's or an output's `on_drop`) panicked, or an item being
    /// dropped without a hook panicked in its `drop`. The panic was caught where it happened
    /// (a push, a worker, a sweep during `drain` or a drop): the pipeline was cancelled, and
    /// the items after it were still counted and handed to the hook.
    #[error("stage `{stage}`: the drop hook panicked: {message}")]
    DropHookPanicked {
        /// The stage (or sink) whose hook panicked.
        stage: String,
        /// The first panic's message, when it was a string.
        message: String,
        /// The final accounting.
        report: Box<Report>,
    },
    /// The function that weighs a stage's items for its byte budget
    /// ([`Builder::capacity_bytes`](crate::Builder::capacity_bytes)) panicked; the pipeline was
    /// cancelled. The item being weighed was handed back to the [`Input`](crate::Input) that
    /// pushed it ([`PushError::Cancelled`]), or, pushed by a worker, abandoned and counted.
    #[error("stage `{stage}`: the weigh function panicked: {message}")]
    WeighPanicked {
        /// The stage whose weigh function panicked.
        stage: String,
        /// The first panic's message, when it was a string.
        message: String,
        /// The final accounting.
        report: Box<Report>,
    },
    /// [`drain`](crate::Pipeline::drain) or [`shutdown`](crate::Pipeline::shutdown) was
    /// called from inside the pipeline, where it cannot wait for the pipeline to end: on one
    /// of its own threads (in a stage, the sink, a hook or the event handler), or in a drop
    /// hook or `push_iter`'s iterator while a push into it is in progress on the same thread.
    /// The pipeline ends as the call would have ended it (a drain finishes every item, a
    /// shutdown runs out of time and cancels), on a thread of its own, once that callback has
    /// returned; its [`Watch`](crate::Watch)es then have the final stats
    /// ([`Watch::has_ended`](crate::Watch::has_ended)). A drop there ends it the same way,
    /// cancelled. (Should the operating system refuse that thread, the pipeline is cancelled
    /// where the call was made and ended as far as it can be without waiting for that thread:
    /// its stats may then miss what the thread still held.)
    #[error(
        "`{call}` was called from inside the pipeline, which it cannot wait for: the pipeline \
         ends on a thread of its own, its watches have the final stats"
    )]
    CalledFromWithin {
        /// `"drain"` or `"shutdown"`.
        call: &'static str,
        /// The accounting at the time of the call, not final: items are still in flight.
        report: Box<Report>,
    },
}

impl PipelineError {
    /// The final accounting of the pipeline that failed (of the moment of the call, for
    /// [`CalledFromWithin`](Self::CalledFromWithin)).
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow::Pipeline;
    ///
    /// let pipeline = Pipeline::<u8>::builder().stage("id", || |x: u8| x).sink(|_| {}).build()?;
    /// pipeline.cancel();
    /// assert_eq!(pipeline.drain().unwrap_err().report().stages().len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn report(&self) -> &Report {
        match self {
            Self::Cancelled { report }
            | Self::StageFailed { report, .. }
            | Self::WorkerPanicked { report, .. }
            | Self::DropHookPanicked { report, .. }
            | Self::WeighPanicked { report, .. }
            | Self::CalledFromWithin { report, .. } => report,
        }
    }
}
