//! backflow stages and sinks that are futures, on [tokio].
//!
//! [`map_async`], [`filter_map_async`] and [`sink_async`] wrap an `async` function (a
//! `Fn(In) -> impl Future<Output = Result<…, E>>`) into a [`Stage`] that the std runtime's
//! builder takes like any other. Each worker of the stage keeps up to
//! [`concurrency`](AsyncStage::concurrency) items in flight at once, their futures polled on
//! the worker's own thread within the runtime's context (timers and I/O of the runtime
//! given to [`on`](AsyncStage::on), or of one the adapter starts), so an I/O-bound stage
//! needs one thread per worker, not one per call in flight.
//!
//! - **Backpressure.** A worker takes a new item only while fewer than `n` are in flight;
//!   with all `n` in flight it takes nothing from its queue, which fills up and holds the
//!   producers back at its water marks, as a slow thread stage would.
//! - **Order.** Unordered by default: outputs leave as their futures finish.
//!   [`ordered`](AsyncStage::ordered) emits them in input order (a finished item waits for
//!   those before it), like Akka's `mapAsync`.
//! - **Errors.** A future's error, a [`timeout`](AsyncStage::timeout) and a panic (of the
//!   function or of its future) fail that item only, with [`AsyncError`] as the stage's error:
//!   the stage's error policy applies (skip, fail fast, retry, dead letter). A retried item
//!   goes back in flight with the others.
//! - **Cancel.** When the pipeline is cancelled (or shut down past its deadline, or
//!   dropped), the futures in flight are dropped on the worker's thread before it exits, and
//!   their items are counted as abandoned: no task outlives the pipeline. The stage's drop
//!   hook sees such an item only when the stage's policy kept a copy of it (for a retry or a
//!   dead letter); otherwise the item was moved into its future and is dropped with it.
//! - **Accounting.** An item is in flight from the moment its worker takes it until its
//!   result is reported; results are reported in input order (so a slow item keeps its place
//!   among the `n` until it finishes, also when unordered). The stage's processing time is
//!   measured over the same span.
//!
//! Pushing from async code and reading the output as a `Stream` need no adapter: see
//! `Input::send` and `Output` in backflow's `async` feature, which this crate turns on.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use backflow::Pipeline;
//! use backflow_tokio::map_async;
//!
//! async fn lookup(id: u32) -> Result<String, std::io::Error> {
//!     tokio::time::sleep(Duration::from_millis(1)).await; // a call to a service
//!     Ok(format!("user-{id}"))
//! }
//!
//! let (pipeline, output) = Pipeline::<u32>::builder()
//!     .stage("lookup", || map_async(lookup).concurrency(64).ordered().timeout(Duration::from_secs(5)))
//!     .output()
//!     .build()?;
//! let reader = std::thread::spawn(move || output.collect::<Vec<_>>());
//! pipeline.input().push_iter(0..200)?;
//! let report = pipeline.drain()?;
//! let names = reader.join().unwrap();
//! assert_eq!(names[7], "user-7");
//! assert_eq!(report.stage("lookup").unwrap().accounting.emitted_inputs, 200);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
// docs.rs (`--cfg docsrs`, nightly) badges each feature-gated item with its feature.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

mod flight;
mod runtime;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::mem;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::task::{Context, Poll};
use std::time::Duration;

use backflow::Stage;
use backflow::stage::{Deferred, Emit};
use tokio::runtime::Handle;

use flight::{Boxed, Flight};

/// The tokio this crate was built with, for a [`Handle`] or a runtime at a matching version.
///
/// # Examples
///
/// ```
/// let runtime = backflow_tokio::tokio::runtime::Builder::new_current_thread().enable_all().build()?;
/// let stage = backflow_tokio::sink_async(|_: u8| async { Ok::<(), std::io::Error>(()) }).on(runtime.handle().clone());
/// # drop(stage);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub use tokio;

/// How many items a worker of an async stage keeps in flight unless told otherwise
/// ([`AsyncStage::concurrency`]).
///
/// # Examples
///
/// ```
/// assert_eq!(backflow_tokio::DEFAULT_CONCURRENCY, 32);
/// ```
pub const DEFAULT_CONCURRENCY: usize = 32;

/// Why an item of an async stage failed: the stage's error, which its error policy handles.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use backflow_tokio::AsyncError;
///
/// let slow: AsyncError<std::io::Error> = AsyncError::TimedOut(Duration::from_millis(50));
/// assert_eq!(slow.to_string(), "timed out after 50ms");
/// let failed = AsyncError::Failed("refused");
/// assert_eq!(failed.to_string(), "refused");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AsyncError<E> {
    /// The future returned this error.
    #[error("{0}")]
    Failed(E),
    /// The future did not finish within the stage's [`timeout`](AsyncStage::timeout).
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    /// The function or its future panicked, with this message.
    #[error("the future panicked: {0}")]
    Panicked(String),
    /// There was no runtime to run the future against: none was given with
    /// [`on`](AsyncStage::on) and the adapter's own could not be started, for this reason.
    #[error("no tokio runtime: {0}")]
    NoRuntime(String),
}

// How an `AsyncStage` turns what its future returns into outputs: `Map` for `map_async`,
// `FilterMap` for `filter_map_async`, `Sink` (below) for `sink_async`.
pub use backflow::stage::expand::{Expand, FilterMap, Map};

/// [`sink_async`]: no output; the future is where the item ends.
#[derive(Debug, Clone, Copy)]
pub struct Sink;

impl Expand<()> for Sink {
    type Out = Infallible;

    #[inline]
    fn expand((): (), _: &mut impl Emit<Infallible>) {}
}

/// A stage whose items are futures, run with bounded concurrency per worker; made by
/// [`map_async`], [`filter_map_async`] and [`sink_async`]. `R` is what the future returns on
/// success, `E` its error, `F` the function and `K` how results become outputs.
pub struct AsyncStage<In, R, E, F, K> {
    f: F,
    concurrency: usize,
    ordered: bool,
    timeout: Option<Duration>,
    handle: Option<Handle>,
    /// The futures in flight, by ticket.
    flight: Flight<Result<R, AsyncError<E>>>,
    /// Every item taken and not reported, oldest first; the first has ticket `first`.
    held: VecDeque<Held<R, E>>,
    first: u64,
    /// Unordered: tickets of the finished items whose outputs are not emitted yet, in the
    /// order they finished.
    finished: Vec<u64>,
    kind: PhantomData<fn(In) -> K>,
}

/// An item taken and not yet reported.
enum Held<R, E> {
    /// In flight, with the work its start deferred.
    Running(Deferred),
    /// Finished; `Ok(None)` once its outputs are out (unordered). With the work its future
    /// deferred, which waits for the outcome to be reported.
    Done(Result<Option<R>, AsyncError<E>>, Deferred),
}

/// A stage that maps every item with the async function `f`: one output per item, `f`'s
/// error (or a timeout, or a panic) fails the item.
///
/// # Examples
///
/// ```
/// use backflow::Stage;
/// use backflow_tokio::map_async;
///
/// let mut double = map_async(|x: u32| async move { Ok::<_, std::io::Error>(x * 2) });
/// let mut out = Vec::new();
/// double.process(21, &mut |y| out.push(y))?;
/// assert_eq!(out, [42]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn map_async<In, Out, E, F, Fut>(f: F) -> AsyncStage<In, Out, E, F, Map>
where
    F: Fn(In) -> Fut,
    Fut: Future<Output = Result<Out, E>> + 'static,
{
    AsyncStage::new(f)
}

/// A stage that keeps the `Some` results of the async function `f`.
///
/// # Examples
///
/// ```
/// use backflow::Stage;
/// use backflow_tokio::filter_map_async;
///
/// let mut parse = filter_map_async(|s: String| async move { Ok::<_, std::io::Error>(s.parse::<u8>().ok()) });
/// let mut out = Vec::new();
/// parse.process("7".to_string(), &mut |n| out.push(n))?;
/// parse.process("x".to_string(), &mut |n| out.push(n))?;
/// assert_eq!(out, [7]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn filter_map_async<In, Out, E, F, Fut>(f: F) -> AsyncStage<In, Option<Out>, E, F, FilterMap>
where
    F: Fn(In) -> Fut,
    Fut: Future<Output = Result<Option<Out>, E>> + 'static,
{
    AsyncStage::new(f)
}

/// A stage that ends each item in the async function `f` (a write to a database, a call to a
/// service) and emits nothing: its output type is [`Infallible`], so the pipeline ends in a
/// sink that never runs (`.sink(|never| match never {})`). The stage's stats count what `f`
/// took (`emitted_inputs`), failed and abandoned.
///
/// # Examples
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
/// use backflow::Pipeline;
/// use backflow_tokio::sink_async;
///
/// let total = Arc::new(AtomicU64::new(0));
/// let store = Arc::clone(&total);
/// let pipeline = Pipeline::<u64>::builder()
///     .stage("store", move || {
///         let store = Arc::clone(&store);
///         sink_async(move |x: u64| {
///             let store = Arc::clone(&store);
///             async move {
///                 store.fetch_add(x, Ordering::Relaxed);
///                 Ok::<(), std::io::Error>(())
///             }
///         })
///     })
///     .sink(|never| match never {})
///     .build()?;
/// pipeline.input().push_iter(1..=10)?;
/// let report = pipeline.drain()?;
/// assert_eq!(total.load(Ordering::Relaxed), 55);
/// assert_eq!(report.stage("store").unwrap().accounting.emitted_inputs, 10);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn sink_async<In, E, F, Fut>(f: F) -> AsyncStage<In, (), E, F, Sink>
where
    F: Fn(In) -> Fut,
    Fut: Future<Output = Result<(), E>> + 'static,
{
    AsyncStage::new(f)
}

impl<In, R, E, F, K> AsyncStage<In, R, E, F, K> {
    fn new(f: F) -> Self {
        Self {
            f,
            concurrency: DEFAULT_CONCURRENCY,
            ordered: false,
            timeout: None,
            handle: Handle::try_current().ok(),
            flight: Flight::new(),
            held: VecDeque::new(),
            first: 0,
            finished: Vec::new(),
            kind: PhantomData,
        }
    }

    /// Keeps up to `n` items in flight per worker (default [`DEFAULT_CONCURRENCY`]; at least
    /// 1). An item is in flight from the moment the worker takes it until its result is
    /// reported, in input order.
    ///
    /// # Examples
    ///
    /// ```
    /// let stage = backflow_tokio::map_async(|x: u8| async move { Ok::<_, std::io::Error>(x) }).concurrency(256);
    /// # drop(stage);
    /// ```
    #[must_use]
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Emits outputs in the order their items were taken (per worker: with several workers,
    /// also set the builder's `ordered()` for one order across them), instead of as their
    /// futures finish.
    ///
    /// # Examples
    ///
    /// ```
    /// let stage = backflow_tokio::map_async(|x: u8| async move { Ok::<_, std::io::Error>(x) }).ordered();
    /// # drop(stage);
    /// ```
    #[must_use]
    pub fn ordered(mut self) -> Self {
        self.ordered = true;
        self
    }

    /// Fails an item whose future has not finished `timeout` after the worker took it (each
    /// attempt of it), with [`AsyncError::TimedOut`]; its future is dropped. No timeout by
    /// default.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let stage = backflow_tokio::map_async(|x: u8| async move { Ok::<_, std::io::Error>(x) })
    ///     .timeout(Duration::from_millis(250));
    /// # drop(stage);
    /// ```
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Runs the futures against `handle`'s runtime (its timers and I/O) instead of the
    /// current one when the stage is made inside a runtime, or else the adapter's own: one
    /// process-wide multi-thread runtime with a single thread (`backflow-tokio`), started on
    /// first use, that only drives timers and I/O.
    ///
    /// The futures are polled on the worker's thread; the runtime's threads must be free to
    /// drive its timers and I/O. On a current-thread runtime that is only while its thread
    /// is inside `block_on` and idle (awaiting), not while it blocks in a `drain()`: call
    /// that through `spawn_blocking`.
    ///
    /// # Examples
    ///
    /// ```
    /// let runtime = tokio::runtime::Runtime::new()?;
    /// let stage = backflow_tokio::map_async(|x: u8| async move { Ok::<_, std::io::Error>(x) })
    ///     .on(runtime.handle().clone());
    /// # drop(stage);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn on(mut self, handle: Handle) -> Self {
        self.handle = Some(handle);
        self
    }

    /// The runtime to run against: the given one, or the adapter's own.
    fn runtime(&mut self) -> Result<Handle, String> {
        match &self.handle {
            Some(handle) => Ok(handle.clone()),
            None => {
                let handle = runtime::shared()?;
                self.handle = Some(handle.clone());
                Ok(handle)
            }
        }
    }
}

impl<In, R, E, F, Fut, K> AsyncStage<In, R, E, F, K>
where
    F: Fn(In) -> Fut,
    Fut: Future<Output = Result<R, E>> + 'static,
    R: 'static,
    E: 'static,
    K: Expand<R>,
{
    /// Calls `f` and wraps its future with the timeout; a panic in `f` is the item's error.
    fn future(&self, item: In) -> Result<Boxed<Result<R, AsyncError<E>>>, AsyncError<E>> {
        let future = catch_unwind(AssertUnwindSafe(|| (self.f)(item)))
            .map_err(|panic| AsyncError::Panicked(backflow::stage::panic_message(&*panic)))?;
        Ok(match self.timeout {
            None => Box::pin(async move { future.await.map_err(AsyncError::Failed) }),
            Some(limit) => Box::pin(async move {
                match tokio::time::timeout(limit, future).await {
                    Ok(result) => result.map_err(AsyncError::Failed),
                    Err(_) => Err(AsyncError::TimedOut(limit)),
                }
            }),
        })
    }

    /// Takes `item` in flight.
    fn start(&mut self, item: In) {
        let ticket = self.first + self.held.len() as u64;
        // What the item's start defers (the function may drop the item, keeping only what
        // the future needs of it) waits, like what the future defers, for the outcome.
        let (future, deferred) = Deferred::collect(|| self.future(item));
        match future {
            Ok(future) => {
                self.held.push_back(Held::Running(deferred));
                self.flight.insert(future, ticket);
            }
            Err(error) => self.held.push_back(Held::Done(Err(error), deferred)),
        }
    }

    /// Polls the futures that may progress and records those that finished.
    fn drive(&mut self) {
        let (held, first, finished, ordered) =
            (&mut self.held, self.first, &mut self.finished, self.ordered);
        self.flight.drive(|ticket, outcome, finishing| {
            let result = outcome.unwrap_or_else(|message| Err(AsyncError::Panicked(message)));
            let at = usize::try_from(ticket - first).expect("a held ticket");
            if !ordered && result.is_ok() {
                finished.push(ticket);
            }
            let mut deferred = match mem::replace(&mut held[at], Held::Running(Deferred::default()))
            {
                Held::Running(started) | Held::Done(_, started) => started,
            };
            deferred.append(finishing);
            held[at] = Held::Done(result.map(Some), deferred);
        });
    }

    /// Emits what may go out and reports the finished items at the front, in order.
    fn report(
        &mut self,
        out: &mut impl Emit<K::Out>,
        done: &mut impl FnMut(Result<(), AsyncError<E>>),
    ) {
        for ticket in self.finished.drain(..) {
            let at = usize::try_from(ticket - self.first).expect("a held ticket");
            if let Held::Done(Ok(result), _) = &mut self.held[at] {
                if let Some(result) = result.take() {
                    K::expand(result, out);
                }
            }
        }
        while let Some(Held::Done(..)) = self.held.front() {
            let Some(Held::Done(result, deferred)) = self.held.pop_front() else { unreachable!() };
            self.first += 1;
            // Settles with the outcome about to be reported.
            deferred.defer();
            done(result.map(|result| {
                if let Some(result) = result {
                    K::expand(result, out);
                }
            }));
        }
    }

    /// Whether a run would report or emit something now.
    fn has_progress(&self) -> bool {
        !self.finished.is_empty() || matches!(self.held.front(), Some(Held::Done(..)))
    }
}

impl<In, R, E, F, Fut, K> Stage<In> for AsyncStage<In, R, E, F, K>
where
    F: Fn(In) -> Fut,
    Fut: Future<Output = Result<R, E>> + 'static,
    R: 'static,
    E: 'static,
    K: Expand<R>,
{
    type Out = K::Out;
    type Error = AsyncError<E>;

    const RUNS: bool = true;
    const HOLDS: bool = true;

    /// Runs one item's future to the end on the calling thread, blocking it (a pipeline calls
    /// [`process_run`](Self::process_run) instead). Do not call it on a thread of the
    /// stage's runtime: that thread could not drive the future's timers and I/O meanwhile.
    fn process(&mut self, item: In, out: &mut impl Emit<K::Out>) -> Result<(), AsyncError<E>> {
        let handle = self.runtime().map_err(AsyncError::NoRuntime)?;
        let _context = handle.enter();
        let future = self.future(item)?;
        let result = runtime::block_on(future)
            .unwrap_or_else(|message| Err(AsyncError::Panicked(message)))?;
        K::expand(result, out);
        Ok(())
    }

    /// Takes items while fewer than [`concurrency`](Self::concurrency) are in flight, starts
    /// their futures, emits the outputs of those that finished (in input order when
    /// [`ordered`](Self::ordered)) and reports finished items in input order. Returns without
    /// waiting: what is still in flight is reported in a later run.
    fn process_run(
        &mut self,
        items: &mut impl Iterator<Item = In>,
        out: &mut impl Emit<K::Out>,
        done: &mut impl FnMut(Result<(), AsyncError<E>>),
    ) {
        let handle = match self.runtime() {
            Ok(handle) => handle,
            Err(message) => {
                self.report(out, done);
                for _ in items {
                    done(Err(AsyncError::NoRuntime(message.clone())));
                }
                return;
            }
        };
        let _context = handle.enter();
        loop {
            let mut exhausted = false;
            while self.held.len() < self.concurrency {
                let Some(item) = items.next() else {
                    exhausted = true;
                    break;
                };
                self.start(item);
            }
            self.drive();
            self.report(out, done);
            if exhausted || self.held.len() >= self.concurrency {
                return;
            }
        }
    }

    /// The held items that finished: a failure, or a success whose outputs are out (unordered,
    /// they go out as the item finishes; in order, they wait, and are lost at a cancel).
    fn finished_held(&self, finished: &mut impl FnMut(usize, bool)) {
        for (place, held) in self.held.iter().enumerate() {
            match held {
                Held::Done(Ok(None), _) => finished(place, true),
                Held::Done(Err(_), _) => finished(place, false),
                Held::Done(Ok(Some(_)), _) | Held::Running(_) => {}
            }
        }
    }

    fn poll_held(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.flight.set_waker(cx.waker());
        if let Some(handle) = self.handle.clone() {
            let _context = handle.enter();
            self.drive();
        }
        if self.has_progress() { Poll::Ready(()) } else { Poll::Pending }
    }
}

impl<In, R, E, F, K> Drop for AsyncStage<In, R, E, F, K> {
    /// Drops the results held for reporting one at a time (an output or an error may panic in
    /// its drop, as a future may); the futures in flight go the same way with the `Flight`.
    fn drop(&mut self) {
        flight::drop_one_by_one(mem::take(&mut self.held));
    }
}

impl<In, R, E, F, K> fmt::Debug for AsyncStage<In, R, E, F, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncStage")
            .field("concurrency", &self.concurrency)
            .field("ordered", &self.ordered)
            .field("timeout", &self.timeout)
            .field("in_flight", &self.flight.len())
            .field("held", &self.held.len())
            .finish_non_exhaustive()
    }
}
