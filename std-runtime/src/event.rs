//! [`Event`]s: what happened in a pipeline, as it happens, for a handler set with
//! [`Source::on_event`](crate::Source::on_event).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use backflow_core::scaler::Reason;

use crate::hooks::DropReason;
use crate::stats::Report;

/// Something that happened in a running pipeline. The handler is called on the thread where
/// it happened (a worker, a producer, the stall watchdog, the scaling controller, the one
/// that drains), so it should be quick; it sees borrowed data and copies what it keeps.
///
/// The handler may call back into its pipeline: take its stats through a
/// [`Watch`](crate::Watch) from any event, push through an [`Input`](crate::Input). A queue's
/// pressure turning on and off, and a stage's circuit changes, are announced after the lock
/// they changed under is let go, in the order they happened, each a moment after it happened:
/// by then the stats may show a later state. A push that waits for room waits for the stages
/// that drain the queue, and the handler runs on the thread where the event happened, which
/// may be one of them (for a stage with ordered output, while it holds the stage's place in
/// line): from a handler, push with [`try_push`](crate::Input::try_push).
///
/// The handler is also the pipeline's error and completion hook: [`Event::Error`] comes with
/// every failed attempt of every stage, [`Event::Drained`] with the final report.
///
/// # Examples
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use backflow::{Event, Pipeline};
///
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let log = Arc::clone(&seen);
/// let pipeline = Pipeline::<u32>::builder()
///     .on_event(move |event| log.lock().unwrap().push(event.to_string()))
///     .stage("id", || |x: u32| x)
///     .sink(|_| {})
///     .build()?;
/// pipeline.drain()?;
/// let seen = seen.lock().unwrap();
/// assert_eq!(seen.first().map(String::as_str), Some("started: 1 stages"));
/// assert!(seen.last().unwrap().starts_with("drained"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy)]
#[non_exhaustive]
pub enum Event<'a> {
    /// Every worker thread has started.
    Started {
        /// How many stages the pipeline has, branches included.
        stages: usize,
    },
    /// A stage's queue reached its high water mark.
    PressureOn {
        /// The stage.
        stage: &'a str,
    },
    /// A stage's queue fell back to its low water mark.
    PressureOff {
        /// The stage.
        stage: &'a str,
    },
    /// An item was dropped by an overflow policy, or abandoned.
    Dropped {
        /// The stage whose queue it was in (or `"sink"`).
        stage: &'a str,
        /// Why.
        reason: DropReason,
    },
    /// A stage failed an item (an error or a panic); `attempt` counts from 1.
    Error {
        /// The stage.
        stage: &'a str,
        /// What went wrong.
        error: &'a dyn fmt::Display,
        /// Which attempt failed.
        attempt: u32,
    },
    /// A failed item will be tried again after `delay`.
    Retried {
        /// The stage.
        stage: &'a str,
        /// The attempt about to be made (2 for the first retry).
        attempt: u32,
        /// The backoff before it.
        delay: Duration,
    },
    /// A failed item went to the stage's dead-letter handler.
    DeadLettered {
        /// The stage.
        stage: &'a str,
        /// How many times it was tried.
        attempts: u32,
    },
    /// A stage's circuit breaker opened: the stage pauses, items wait upstream.
    CircuitOpened {
        /// The stage.
        stage: &'a str,
    },
    /// A stage's circuit breaker lets trial items through.
    CircuitHalfOpen {
        /// The stage.
        stage: &'a str,
    },
    /// A stage's circuit breaker closed again.
    CircuitClosed {
        /// The stage.
        stage: &'a str,
    },
    /// A stage has had items queued and finished none for `idle` (see
    /// [`Builder::stall_after`](crate::Builder::stall_after)). Raised once per stall.
    Stalled {
        /// The stage.
        stage: &'a str,
        /// Items in its queue.
        queued: usize,
        /// How long it has made no progress.
        idle: Duration,
    },
    /// A stage's workers changed under the thread budget (see
    /// [`Source::threads`](crate::Source::threads)): `to` is one more or one fewer than
    /// `from`. A worker that leaves finishes its batch first, so for a moment the stage may run
    /// one more than `to`.
    Scaled {
        /// The stage.
        stage: &'a str,
        /// Its workers before.
        from: usize,
        /// Its workers now.
        to: usize,
        /// Why: it was the bottleneck (one more), or had a worker to spare (one fewer).
        reason: Reason,
    },
    /// The pipeline finished (drained, shut down or cancelled) and every thread was joined.
    Drained {
        /// The final report.
        report: &'a Report,
    },
}

impl fmt::Display for Event<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Started { stages } => write!(f, "started: {stages} stages"),
            Self::PressureOn { stage } => write!(f, "{stage}: pressure on"),
            Self::PressureOff { stage } => write!(f, "{stage}: pressure off"),
            Self::Dropped { stage, reason } => write!(f, "{stage}: item {reason}"),
            Self::Error { stage, error, attempt } => {
                write!(f, "{stage}: attempt {attempt} failed: {error}")
            }
            Self::Retried { stage, attempt, delay } => {
                write!(f, "{stage}: attempt {attempt} in {delay:?}")
            }
            Self::DeadLettered { stage, attempts } => {
                write!(f, "{stage}: dead-lettered after {attempts} attempts")
            }
            Self::CircuitOpened { stage } => write!(f, "{stage}: circuit opened"),
            Self::CircuitHalfOpen { stage } => write!(f, "{stage}: circuit half-open"),
            Self::CircuitClosed { stage } => write!(f, "{stage}: circuit closed"),
            Self::Stalled { stage, queued, idle } => {
                write!(f, "{stage}: stalled, {queued} queued, no progress for {idle:?}")
            }
            Self::Scaled { stage, from, to, reason } => {
                write!(f, "{stage}: {from} → {to} workers ({reason})")
            }
            Self::Drained { report } => {
                write!(
                    f,
                    "drained: {} delivered, {} abandoned",
                    report.sink().delivered,
                    report.abandoned()
                )
            }
        }
    }
}

impl fmt::Debug for Event<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Event({self})")
    }
}

/// A pipeline's event handler.
pub(crate) type EventHandler = Arc<dyn Fn(&Event<'_>) + Send + Sync>;
