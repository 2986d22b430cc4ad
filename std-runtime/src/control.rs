//! What every thread of one pipeline shares: the cancel flag, the wait strategy, the clock for
//! sampled timings, and the first fatal error.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use crate::wait::{Signal, WaitStrategy};

/// A fatal failure of a worker, recorded once (the first wins) and reported by `drain()`.
#[derive(Debug, Clone)]
pub(crate) struct Fatal {
    pub(crate) stage: String,
    pub(crate) worker: usize,
    pub(crate) message: String,
}

/// Pipeline-wide state.
#[derive(Debug)]
pub(crate) struct Control {
    cancelled: AtomicBool,
    pub(crate) strategy: WaitStrategy,
    start: Instant,
    /// One item in `sample_every` carries timestamps (see [`Envelope`](crate::link::Envelope)).
    pub(crate) sample_every: NonZeroU32,
    /// Worker threads that have returned.
    exited: AtomicUsize,
    /// Notified each time a worker exits (`shutdown` waits on it with a deadline).
    pub(crate) exit: Signal,
    fatal: Mutex<Option<Fatal>>,
}

impl Control {
    pub(crate) fn new(strategy: WaitStrategy, sample_every: NonZeroU32) -> Self {
        Self {
            cancelled: AtomicBool::new(false),
            strategy,
            start: Instant::now(),
            sample_every,
            exited: AtomicUsize::new(0),
            exit: Signal::new(),
            fatal: Mutex::new(None),
        }
    }

    /// Marks the pipeline cancelled. Waiters are woken by the caller, which knows the links.
    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
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

    pub(crate) fn worker_exited(&self) {
        self.exited.fetch_add(1, Ordering::AcqRel);
        self.exit.notify();
    }

    pub(crate) fn exited(&self) -> usize {
        self.exited.load(Ordering::Acquire)
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
