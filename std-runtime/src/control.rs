//! What every thread of one pipeline shares: the cancel flag, the wait strategy, the clock for
//! sampled timings, and the first fatal error.

use std::num::NonZeroU32;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{OnceLock, Weak};
use std::time::{Duration, Instant};

use crate::event::{Event, EventHandler};
use crate::hooks::{DropHook, Dropped};
use crate::panic::panic_message;
use crate::sync::{AtomicBool, AtomicUsize, Mutex, Ordering};
use crate::wait::{Signal, WaitStrategy};

/// The moment `duration` from now, or `None` ("no deadline") when that is past the end of
/// time: `Duration::MAX` means forever.
pub(crate) fn deadline_after(duration: Duration) -> Option<Instant> {
    Instant::now().checked_add(duration)
}

/// A failure that stopped the pipeline, recorded once (the first wins) and reported by
/// `drain()`.
#[derive(Debug, Clone)]
pub(crate) struct Fatal {
    pub(crate) stage: String,
    pub(crate) message: String,
    pub(crate) culprit: Culprit,
}

/// What failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Culprit {
    /// A stage's error under [`ErrorPolicy::FailFast`](crate::ErrorPolicy::FailFast).
    Stage,
    /// This worker panicked outside its stage (the sink, a handler, the stage's factory).
    Worker(usize),
    /// The stage's (or sink's) drop hook panicked, on whichever thread called it.
    DropHook,
    /// The function that weighs the stage's items for its byte budget panicked.
    Weigh,
}

/// Something threads may be parked on (a queue), woken when the pipeline is cancelled.
pub(crate) trait Wake: Send + Sync {
    /// Wakes every thread parked on it.
    fn wake_all(&self);
}

/// Pipeline-wide state.
pub(crate) struct Control {
    cancelled: AtomicBool,
    pub(crate) strategy: WaitStrategy,
    start: Instant,
    /// One item in `sample_every` carries timestamps (see [`Envelope`](crate::link::Envelope)).
    pub(crate) sample_every: NonZeroU32,
    /// Whether anything is timed: sampled latencies and the workers' time shares.
    pub(crate) timings: bool,
    /// Worker threads counted in: started, or about to be.
    started: AtomicUsize,
    /// Worker threads that have returned (or were counted in and never started).
    exited: AtomicUsize,
    /// Notified each time a worker exits (`shutdown` waits on it with a deadline).
    pub(crate) exit: Signal,
    /// Notified on cancel, for threads sleeping through a backoff or a cooldown.
    cancel_signal: Signal,
    fatal: Mutex<Option<Fatal>>,
    events: Option<EventHandler>,
    /// Every queue of the pipeline, woken on cancel (weak: the queues own this).
    links: OnceLock<Vec<Weak<dyn Wake>>>,
}

impl Control {
    pub(crate) fn new(
        strategy: WaitStrategy,
        sample_every: NonZeroU32,
        timings: bool,
        events: Option<EventHandler>,
    ) -> Self {
        Self {
            cancelled: AtomicBool::new(false),
            strategy,
            start: Instant::now(),
            sample_every,
            timings,
            started: AtomicUsize::new(0),
            exited: AtomicUsize::new(0),
            exit: Signal::new(),
            cancel_signal: Signal::new(),
            fatal: Mutex::new(None),
            events,
            links: OnceLock::new(),
        }
    }

    /// Tells the control which queues to wake on cancel, once they all exist.
    pub(crate) fn set_links(&self, links: Vec<Weak<dyn Wake>>) {
        let _ = self.links.set(links);
    }

    /// Marks the pipeline cancelled and wakes every thread waiting on a queue or sleeping.
    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.cancel_signal.notify();
        for link in self.links.get().into_iter().flatten() {
            if let Some(link) = link.upgrade() {
                link.wake_all();
            }
        }
    }

    /// Sleeps for `duration` unless the pipeline is cancelled first; returns `false` if it was.
    /// A duration past the end of time sleeps until the cancel.
    pub(crate) fn sleep(&self, duration: Duration) -> bool {
        let deadline = deadline_after(duration);
        !self.cancel_signal.park_until(|| self.is_cancelled(), deadline)
    }

    /// Time since the pipeline started.
    pub(crate) fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Whether an event handler is set.
    #[inline]
    pub(crate) fn has_events(&self) -> bool {
        self.events.is_some()
    }

    /// Hands `event` to the handler, if there is one. A panic in the handler does not unwind
    /// into the runtime (which may be holding items): it stops the pipeline, and `drain()`
    /// reports it.
    pub(crate) fn emit(&self, event: &Event<'_>) {
        if let Some(handler) = &self.events {
            let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(event)));
            if let Err(panic) = handled {
                self.fail(Fatal {
                    stage: "event handler".into(),
                    message: panic_message(&*panic),
                    culprit: Culprit::Worker(0),
                });
            }
        }
    }

    /// Hands `dropped` to the stage's drop hook, or drops the item if there is none. A panic
    /// in the hook (or in the item's `drop`) does not unwind into the caller (which may be
    /// sweeping a queue, in a destructor, or in the middle of a push): it stops the pipeline,
    /// `drain()` reports it, and the caller goes on counting.
    pub(crate) fn discard<T>(&self, hook: Option<&DropHook<T>>, dropped: Dropped<'_, T>) {
        let stage = dropped.stage;
        let discarded = catch_unwind(AssertUnwindSafe(|| match hook {
            Some(hook) => hook(dropped),
            None => drop(dropped),
        }));
        if let Err(panic) = discarded {
            self.fail(Fatal {
                stage: stage.to_string(),
                message: panic_message(&*panic),
                culprit: Culprit::DropHook,
            });
        }
    }

    #[inline]
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Nanoseconds since the pipeline started, plus one, so that `0` can mean "not sampled".
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1
    }

    /// When the pipeline started.
    pub(crate) fn started_at(&self) -> Instant {
        self.start
    }

    /// Counts a worker thread in, before it starts.
    pub(crate) fn worker_started(&self) {
        self.started.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether every worker thread counted in has exited. A worker is counted in at launch,
    /// or later only while another worker of its stage runs (`Workers::enlist`), so once this
    /// is true it stays true.
    pub(crate) fn all_exited(&self) -> bool {
        self.exited.load(Ordering::Acquire) == self.started.load(Ordering::Acquire)
    }

    pub(crate) fn worker_exited(&self) {
        self.exited.fetch_add(1, Ordering::AcqRel);
        self.exit.notify();
    }

    /// Records a fatal failure (the first one wins) and cancels the pipeline.
    pub(crate) fn fail(&self, fatal: Fatal) {
        let mut slot = self.fatal.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        slot.get_or_insert(fatal);
        drop(slot);
        self.cancel();
    }

    pub(crate) fn fatal(&self) -> Option<Fatal> {
        self.fatal.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("cancelled", &self.cancelled)
            .field("strategy", &self.strategy)
            .field("exited", &self.exited)
            .finish_non_exhaustive()
    }
}
