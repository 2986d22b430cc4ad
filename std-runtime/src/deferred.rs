//! Work deferred until a worker has recorded the outcome of what it was processing:
//! [`after_outcome`], and [`Deferred`] to carry such work from another thread.
//!
//! A value that stands for an item's completion (a message to acknowledge, an offset to
//! commit) cannot tell from its own drop whether the stage that dropped it succeeded:
//! `try_map` drops its input and only then returns the error that, under
//! [`ErrorPolicy::FailFast`](crate::ErrorPolicy::FailFast), ends the pipeline. Deferred to the
//! end of the worker's batch, the value's work finds the pipeline cancelled
//! ([`Watch::is_cancelled`](crate::Watch::is_cancelled)) and knows its item did not make it.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use crate::panic::panic_message;
use crate::sync::thread;

/// A piece of deferred work.
type Work = Box<dyn FnOnce() + Send>;

thread_local! {
    /// How many batches this thread is inside (a worker's, or [`Deferred::collect`]'s).
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    /// How many pieces of work `WORK` holds (read without touching `WORK`).
    static HELD: Cell<usize> = const { Cell::new(0) };
    /// The work deferred by the open batches, the innermost last.
    static WORK: RefCell<Vec<Work>> = const { RefCell::new(Vec::new()) };
}

/// Runs `work` once the worker running on this thread has recorded the outcome of the batch
/// it is processing (the items of a stage call that failed are counted, and a
/// [`FailFast`](crate::ErrorPolicy::FailFast) failure has cancelled the pipeline); at once
/// when called anywhere else (a producer, a sink called outside a batch, any other thread).
///
/// For values that stand for an item's completion: drop code that acknowledges an item calls
/// it and checks [`Watch::is_cancelled`](crate::Watch::is_cancelled) in `work`. A batch is
/// at most [`BATCH`](crate::stage::BATCH) items, so the wait is short for most stages; a
/// stage that holds items in flight (an async stage) reports each item's outcome in input
/// order, and the work its items deferred waits for that (as long as the item before it
/// takes). In a worker's batch a panic in `work` is caught and fails the pipeline as the
/// worker's; run at once, it goes to the caller, unless a panic is unwinding already (the
/// work runs in a drop on the way), when it is caught and dropped.
///
/// # Examples
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use backflow::{ErrorPolicy, Pipeline, stage};
///
/// /// Says, when dropped, whether the pipeline was still going when its item was done.
/// struct Ack(Arc<Mutex<Vec<(u32, bool)>>>, u32, Arc<Mutex<Option<backflow::Watch>>>);
///
/// impl Drop for Ack {
///     fn drop(&mut self) {
///         let (acks, n, watch) = (self.0.clone(), self.1, self.2.clone());
///         backflow::stage::after_outcome(move || {
///             let failed = watch.lock().unwrap().as_ref().is_some_and(|w| w.is_cancelled());
///             acks.lock().unwrap().push((n, !failed));
///         });
///     }
/// }
///
/// let acks = Arc::new(Mutex::new(Vec::new()));
/// let watch = Arc::new(Mutex::new(None));
/// let pipeline = Pipeline::<Ack>::builder()
///     .stage("check", || stage::try_map(|ack: Ack| if ack.1 == 2 { Err("two") } else { Ok(()) }))
///     .on_error(ErrorPolicy::FailFast)
///     .sink(|()| {})
///     .build()?;
/// *watch.lock().unwrap() = Some(pipeline.watch());
/// pipeline.input().push_iter((0..3).map(|n| Ack(acks.clone(), n, watch.clone())))?;
/// assert!(pipeline.drain().is_err());
/// // Item 2 failed the pipeline: its drop, inside the stage call, learned it.
/// assert!(acks.lock().unwrap().contains(&(2, false)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn after_outcome(work: impl FnOnce() + Send + 'static) {
    if in_batch() {
        defer(Box::new(work));
    } else {
        // Outside a batch: with nothing to hold (no allocation).
        run_now(work);
    }
}

/// Whether this thread is inside a batch.
fn in_batch() -> bool {
    DEPTH.try_with(Cell::get).unwrap_or(0) > 0
}

/// Holds `work` in this thread's innermost open batch, or runs it if there is none.
fn defer(work: Work) {
    let mut work = Some(work);
    if in_batch() {
        // Not once the thread is ending: then, at once.
        let _ = WORK.try_with(|held| {
            if let Ok(mut held) = held.try_borrow_mut() {
                held.extend(work.take());
                HELD.set(held.len());
            }
        });
    }
    if let Some(work) = work {
        run_now(work);
    }
}

/// Runs `work` now. Work run while a panic unwinds (held work let go as the panic passes)
/// cannot unwind in turn: its own panic is caught there and dropped.
fn run_now(work: impl FnOnce()) {
    if thread::panicking() {
        drop(catch_unwind(AssertUnwindSafe(work)));
    } else {
        work();
    }
}

/// A batch on this thread: the work deferred while it is open runs when it is closed (or,
/// should a panic unwind past it, when it is dropped).
pub(crate) struct Batch {
    /// How much work was held when it opened (the outer batches').
    mark: usize,
    open: bool,
}

impl Batch {
    pub(crate) fn open() -> Self {
        DEPTH.set(DEPTH.get() + 1);
        Self { mark: HELD.get(), open: true }
    }

    /// The work deferred since the batch opened, taken out; the batch is closed.
    fn take(&mut self) -> Vec<Work> {
        if !std::mem::replace(&mut self.open, false) {
            return Vec::new();
        }
        DEPTH.set(DEPTH.get().saturating_sub(1));
        if HELD.get() <= self.mark {
            return Vec::new();
        }
        WORK.try_with(|held| {
            let mut held = held.borrow_mut();
            let mark = self.mark.min(held.len());
            let work = held.split_off(mark);
            HELD.set(held.len());
            work
        })
        .unwrap_or_default()
    }

    /// Closes the batch and runs its deferred work, each piece caught: returns the first
    /// panic's message.
    pub(crate) fn close(mut self) -> Option<String> {
        let mut first = None;
        for work in self.take() {
            if let Err(panic) = catch_unwind(AssertUnwindSafe(work)) {
                first.get_or_insert_with(|| panic_message(&*panic));
            }
        }
        first
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        for work in self.take() {
            let _ = catch_unwind(AssertUnwindSafe(work));
        }
    }
}

/// Work deferred on one thread, to be deferred again on another: an adapter that runs a
/// stage's function on threads of its own (a thread pool, an async runtime) collects what
/// each call defers, and hands it to [`defer`](Self::defer) on the worker's thread once the
/// call's outcome is known to the worker.
///
/// # Examples
///
/// ```
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use std::sync::Arc;
/// use backflow::stage::{Deferred, after_outcome};
///
/// let ran = Arc::new(AtomicBool::new(false));
/// let flag = Arc::clone(&ran);
/// let (sum, deferred) = Deferred::collect(|| {
///     after_outcome(move || flag.store(true, Ordering::Relaxed));
///     1 + 2
/// });
/// assert_eq!(sum, 3);
/// assert!(!ran.load(Ordering::Relaxed), "held");
/// deferred.defer(); // outside a worker's batch: runs at once
/// assert!(ran.load(Ordering::Relaxed));
/// ```
#[must_use = "the work runs when it is deferred or dropped"]
#[derive(Default)]
pub struct Deferred {
    work: Vec<Work>,
}

impl Deferred {
    /// Runs `f`, holding back the work it defers with [`after_outcome`]. If `f` panics, what
    /// it deferred is deferred again here as the panic passes.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow::stage::{Deferred, after_outcome};
    ///
    /// let (len, deferred) = Deferred::collect(|| {
    ///     after_outcome(|| println!("settled"));
    ///     "abc".len()
    /// });
    /// assert_eq!(len, 3);
    /// assert_eq!(format!("{deferred:?}"), "Deferred { work: 1 }");
    /// # deferred.defer();
    /// ```
    pub fn collect<R>(f: impl FnOnce() -> R) -> (R, Self) {
        /// Closes the batch on the way out, also when `f` panics.
        struct Open(Option<Batch>);
        impl Drop for Open {
            fn drop(&mut self) {
                if let Some(mut batch) = self.0.take() {
                    drop(Deferred { work: batch.take() });
                }
            }
        }
        let mut open = Open(Some(Batch::open()));
        let result = f();
        let work = open.0.take().map(|mut batch| batch.take()).unwrap_or_default();
        (result, Self { work })
    }

    /// Adds `other`'s work to this one's.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow::stage::{Deferred, after_outcome};
    ///
    /// let ((), mut first) = Deferred::collect(|| after_outcome(|| {}));
    /// let ((), second) = Deferred::collect(|| after_outcome(|| {}));
    /// first.append(second);
    /// assert_eq!(format!("{first:?}"), "Deferred { work: 2 }");
    /// ```
    pub fn append(&mut self, mut other: Deferred) {
        self.work.append(&mut other.work);
    }

    /// Defers the work on this thread, as [`after_outcome`] does each piece (dropping a
    /// `Deferred` does the same).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use backflow::stage::{Deferred, after_outcome};
    ///
    /// let ran = Arc::new(AtomicUsize::new(0));
    /// let counted = Arc::clone(&ran);
    /// let ((), deferred) = Deferred::collect(|| {
    ///     after_outcome(move || {
    ///         counted.fetch_add(1, Ordering::Relaxed);
    ///     })
    /// });
    /// // On a thread outside a worker's batch: it runs now.
    /// std::thread::spawn(move || deferred.defer()).join().unwrap();
    /// assert_eq!(ran.load(Ordering::Relaxed), 1);
    /// ```
    pub fn defer(self) {
        drop(self);
    }
}

impl Drop for Deferred {
    /// Defers every piece; run at once (outside a batch), each piece runs though one before
    /// it panicked, and then the first panic goes on to the caller.
    fn drop(&mut self) {
        let mut first = None;
        for work in std::mem::take(&mut self.work) {
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| defer(work))) {
                first.get_or_insert(panic);
            }
        }
        if let Some(panic) = first {
            resume_unwind(panic);
        }
    }
}

impl fmt::Debug for Deferred {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deferred").field("work", &self.work.len()).finish()
    }
}
