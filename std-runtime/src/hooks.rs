//! What user hooks see and decide: [`Dropped`] items and their [`DropReason`], failed items
//! as [`DeadLetter`]s, the [`ErrorPolicy`], and the shapes of the hooks the builder stores.

use std::fmt;
use std::sync::Arc;

/// A user's drop hook for one stage's (or sink's) items.
pub(crate) type DropHook<T> = Arc<dyn Fn(Dropped<'_, T>) + Send + Sync>;

/// What a stage does with an item that failed (its `process` returned an error or panicked)
/// once its retries, if any, are used up.
///
/// # Examples
///
/// ```
/// use backflow::{ErrorPolicy, Pipeline, PipelineError};
///
/// let pipeline = Pipeline::<u32>::builder()
///     .stage("check", || backflow::stage::validate(|x: &u32| if *x < 10 { Ok(()) } else { Err("too big") }))
///     .on_error(ErrorPolicy::FailFast)
///     .sink(|_| {})
///     .build()?;
/// pipeline.input().push(12)?;
/// match pipeline.drain() {
///     Err(PipelineError::StageFailed { stage, error, .. }) => {
///         assert_eq!(stage, "check");
///         assert!(error.contains("too big"));
///     }
///     other => panic!("{other:?}"),
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorPolicy {
    /// Count the item as errored and go on (the default).
    #[default]
    Skip,
    /// Cancel the pipeline: `drain()` returns [`PipelineError::StageFailed`] with the stage
    /// and the first error.
    ///
    /// [`PipelineError::StageFailed`]: crate::PipelineError::StageFailed
    FailFast,
}

/// An item that failed for good, as a stage's dead-letter handler receives it (see
/// [`Builder::dead_letter`](crate::Builder::dead_letter)).
///
/// # Examples
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use backflow::Pipeline;
///
/// let letters = Arc::new(Mutex::new(Vec::new()));
/// let dlq = Arc::clone(&letters);
/// let pipeline = Pipeline::<String>::builder()
///     .stage("parse", || backflow::stage::try_map(|s: String| s.parse::<u32>()))
///     .dead_letter(move |letter| {
///         dlq.lock().unwrap().push((letter.stage.to_string(), letter.item, letter.error, letter.attempts));
///     })
///     .sink(|_| {})
///     .build()?;
/// # let _ = pipeline;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct DeadLetter<'a, T> {
    /// The stage that failed the item.
    pub stage: &'a str,
    /// The item, as it entered the stage.
    pub item: T,
    /// The last error (for a panic, `panicked: ` and its message).
    pub error: String,
    /// How many times the stage tried it.
    pub attempts: u32,
}

/// A stage's dead-letter handler.
pub(crate) type DeadLetterHook<T> = Arc<dyn Fn(DeadLetter<'_, T>) + Send + Sync>;

/// A hook that looks at an item (before or after a stage).
pub(crate) type Look<T> = Arc<dyn Fn(&T) + Send + Sync>;

/// Routes an item to one of a stage's workers (key-ordered stages).
pub(crate) type KeyFn<T> = Arc<dyn Fn(&T) -> u64 + Send + Sync>;

/// Why an item left the pipeline without being processed.
///
/// # Examples
///
/// ```
/// assert_eq!(backflow::DropReason::Abandoned.to_string(), "abandoned");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// Evicted from a full queue under [`Overflow::DropOldest`](crate::Overflow::DropOldest).
    Oldest,
    /// Refused by a full queue under [`Overflow::DropNewest`](crate::Overflow::DropNewest).
    Newest,
    /// Never processed: the pipeline was cancelled or shut down first.
    Abandoned,
}

impl From<backflow_core::overflow::DropReason> for DropReason {
    fn from(reason: backflow_core::overflow::DropReason) -> Self {
        match reason {
            backflow_core::overflow::DropReason::Oldest => Self::Oldest,
            backflow_core::overflow::DropReason::Newest => Self::Newest,
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Oldest => "evicted as oldest",
            Self::Newest => "dropped as newest",
            Self::Abandoned => "abandoned",
        })
    }
}

/// An item a stage dropped or abandoned, as its drop hook sees it.
///
/// # Examples
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use backflow::{DropReason, Overflow, Pipeline};
///
/// let dropped = Arc::new(Mutex::new(Vec::new()));
/// let seen = Arc::clone(&dropped);
/// let pipeline = Pipeline::<u32>::builder()
///     .stage("id", || |x: u32| x)
///     .on_drop(move |d| seen.lock().unwrap().push((d.stage.to_string(), d.reason, d.item)))
///     .sink(|_| {})
///     .build()?;
/// pipeline.cancel();
/// pipeline.drain().unwrap_err();
/// assert!(dropped.lock().unwrap().iter().all(|(_, reason, _)| *reason == DropReason::Abandoned));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct Dropped<'a, T> {
    /// The stage whose queue the item was in (or was pushed to).
    pub stage: &'a str,
    /// Why it was dropped.
    pub reason: DropReason,
    /// The item itself, now the hook's.
    pub item: T,
}
