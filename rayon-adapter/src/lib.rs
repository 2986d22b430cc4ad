//! Stateless backflow stages spread over a [rayon] thread pool.
//!
//! [`par_map`], [`par_filter_map`] and [`par_flat_map`] wrap a `Fn(In) -> …` closure into a
//! [`Stage`] that the std runtime's builder takes like any other. Instead of one item at a
//! time, the stage's worker hands it each batch it pops from the stage's queue
//! ([`Stage::process_run`]); the stage maps the batch on the pool (the global one, or the
//! [`ThreadPool`] given to [`ParStage::on`]) and emits the results in input order.
//!
//! - **Order:** outputs leave in the order their inputs arrived, whatever each item costs.
//! - **Backpressure:** the worker waits for its batch to come back from the pool before it pops
//!   the next, so at most one batch per worker is in flight: a stalled downstream still stops
//!   the producer at the stage's water marks.
//! - **Panics:** a panic in the closure fails that item only, with [`Panicked`] as the stage's
//!   error (counted in the stage's `errored`); the pool and the other items carry on.
//!
//! rayon starts its global pool on first use, from whichever thread uses it first: here a
//! pipeline worker. On Linux the pool's threads then inherit that worker's name
//! (`backflow:<stage>:<n>`) and outlive the pipeline, as the global pool does. Give the pool
//! its own names with `rayon::ThreadPoolBuilder::thread_name(..).build_global()` before the
//! first pipeline, or pass a pool of your own to [`ParStage::on`].
//!
//! # Examples
//!
//! ```
//! use backflow::Pipeline;
//! use backflow_rayon::par_map;
//!
//! fn checksum(block: Vec<u8>) -> u32 {
//!     block.iter().fold(0u32, |sum, &b| sum.rotate_left(5) ^ u32::from(b))
//! }
//!
//! let (pipeline, output) = Pipeline::<Vec<u8>>::builder()
//!     .stage("checksum", || par_map(checksum))
//!     .output()
//!     .build()?;
//! pipeline.input().push_iter((0..100u8).map(|n| vec![n; 64]))?;
//! let report = pipeline.drain()?;
//! let sums: Vec<u32> = output.collect();
//! assert_eq!(sums.len(), 100);
//! assert_eq!(sums[7], checksum(vec![7; 64])); // in input order
//! assert!(report.is_balanced());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
// docs.rs (`--cfg docsrs`, nightly) badges each feature-gated item with its feature.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

use std::any::Any;
use std::fmt;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use backflow::Stage;
use backflow::stage::{Deferred, Emit};
use rayon::ThreadPool;
use rayon::prelude::*;

/// The rayon this crate was built with, for [`ThreadPoolBuilder`](rayon::ThreadPoolBuilder)
/// and friends at a matching version.
///
/// # Examples
///
/// ```
/// let pool = backflow_rayon::rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
/// assert_eq!(pool.current_num_threads(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub use rayon;

/// The most items a [`ParStage`] takes at once by default: a whole batch of its worker
/// ([`backflow::stage::BATCH`]).
pub const DEFAULT_BATCH: usize = backflow::stage::BATCH;

/// A panic inside a parallel stage's closure: that item's error.
///
/// # Examples
///
/// ```
/// use backflow::Stage;
/// use backflow_rayon::{Panicked, par_map};
///
/// let mut halve = par_map(|x: u32| if x % 2 == 0 { x / 2 } else { panic!("odd: {x}") });
/// let err = halve.process(3, &mut |_| {}).unwrap_err();
/// assert_eq!(err, Panicked { message: "odd: 3".into() });
/// assert_eq!(err.to_string(), "the stage panicked: odd: 3");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the stage panicked: {message}")]
pub struct Panicked {
    /// The panic's message, when it was a string.
    pub message: String,
}

impl Panicked {
    fn from_payload(payload: &(dyn Any + Send)) -> Self {
        Self { message: backflow::stage::panic_message(payload) }
    }
}

// How a `ParStage` turns what its closure returns into outputs: `Map` for `par_map`,
// `FilterMap` for `par_filter_map`, `FlatMap` for `par_flat_map`.
pub use backflow::stage::expand::{Expand, FilterMap, FlatMap, Map};

/// A stateless stage whose batches are mapped on a rayon pool; made by [`par_map`],
/// [`par_filter_map`] and [`par_flat_map`]. `R` is what the closure returns, `K` how that
/// becomes outputs.
pub struct ParStage<In, R, F, K> {
    f: F,
    pool: Option<Arc<ThreadPool>>,
    batch: usize,
    min_len: usize,
    /// Reused for every batch, so a warmed-up stage does not allocate for its own buffers.
    items: Vec<In>,
    /// Each item's result, with the work its call deferred (to defer on the worker).
    results: Vec<(Result<R, Panicked>, Deferred)>,
    kind: PhantomData<K>,
}

/// A stage that maps every item with `f` on rayon's global pool, in parallel, keeping order.
///
/// # Examples
///
/// ```
/// use backflow::Stage;
/// use backflow_rayon::par_map;
///
/// let mut square = par_map(|x: u64| x * x);
/// let mut out = Vec::new();
/// square.process_run(&mut (1..=4).into_iter(), &mut |y| out.push(y), &mut |r| r.unwrap());
/// assert_eq!(out, [1, 4, 9, 16]);
/// ```
pub fn par_map<In, Out, F>(f: F) -> ParStage<In, Out, F, Map>
where
    F: Fn(In) -> Out + Send + Sync,
{
    ParStage::new(f)
}

/// A stage that keeps the `Some` results of `f`, computed in parallel, in order.
///
/// # Examples
///
/// ```
/// use backflow::Stage;
/// use backflow_rayon::par_filter_map;
///
/// let mut parse = par_filter_map(|s: &str| s.parse::<u8>().ok());
/// let mut out = Vec::new();
/// parse.process_run(&mut ["1", "x", "3"].into_iter(), &mut |n| out.push(n), &mut |r| r.unwrap());
/// assert_eq!(out, [1, 3]);
/// ```
pub fn par_filter_map<In, Out, F>(f: F) -> ParStage<In, Option<Out>, F, FilterMap>
where
    F: Fn(In) -> Option<Out> + Send + Sync,
{
    ParStage::new(f)
}

/// A stage that emits everything `f` returns for each item, computed in parallel, in order.
///
/// # Examples
///
/// ```
/// use backflow::Stage;
/// use backflow_rayon::par_flat_map;
///
/// let mut words = par_flat_map(|line: &str| line.split(' ').map(str::len).collect::<Vec<_>>());
/// let mut out = Vec::new();
/// words.process_run(&mut ["a bb", "ccc"].into_iter(), &mut |n| out.push(n), &mut |r| r.unwrap());
/// assert_eq!(out, [1, 2, 3]);
/// ```
pub fn par_flat_map<In, I, F>(f: F) -> ParStage<In, I, F, FlatMap>
where
    F: Fn(In) -> I + Send + Sync,
    I: IntoIterator,
{
    ParStage::new(f)
}

impl<In, R, F, K> ParStage<In, R, F, K> {
    fn new(f: F) -> Self {
        Self {
            f,
            pool: None,
            batch: DEFAULT_BATCH,
            min_len: 1,
            items: Vec::new(),
            results: Vec::new(),
            kind: PhantomData,
        }
    }

    /// Runs the batches on `pool` instead of rayon's global pool.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// let pool = Arc::new(rayon::ThreadPoolBuilder::new().num_threads(2).build()?);
    /// let stage = backflow_rayon::par_map(|x: u32| x + 1).on(pool);
    /// # drop(stage);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn on(mut self, pool: Arc<ThreadPool>) -> Self {
        self.pool = Some(pool);
        self
    }

    /// Takes at most `items` items at once (default [`DEFAULT_BATCH`], the most its worker
    /// pops at once; at least 1). Smaller batches keep less in flight and start emitting
    /// sooner; larger ones split better across the pool.
    ///
    /// # Examples
    ///
    /// ```
    /// let stage = backflow_rayon::par_map(|x: u32| x + 1).batch(32);
    /// # drop(stage);
    /// ```
    #[must_use]
    pub fn batch(mut self, items: usize) -> Self {
        self.batch = items.max(1);
        self
    }

    /// Gives each pool task at least `items` items (default 1): raise it when one item costs
    /// too little to be worth a task of its own.
    ///
    /// # Examples
    ///
    /// ```
    /// let stage = backflow_rayon::par_map(|x: u32| x + 1).min_len(16);
    /// # drop(stage);
    /// ```
    #[must_use]
    pub fn min_len(mut self, items: usize) -> Self {
        self.min_len = items.max(1);
        self
    }
}

/// Calls `f`, turning a panic into the item's error; with what the call deferred
/// ([`after_outcome`](backflow::stage::after_outcome)), which waits on the worker for the
/// item's outcome.
fn call<In, R>(f: &impl Fn(In) -> R, item: In) -> (Result<R, Panicked>, Deferred) {
    Deferred::collect(|| {
        catch_unwind(AssertUnwindSafe(|| f(item))).map_err(|panic| Panicked::from_payload(&*panic))
    })
}

/// Maps `batch` (emptying it) into `results`, in order, on the current rayon pool (the global
/// one outside any pool).
fn map_batch<In: Send, R: Send>(
    f: &(impl Fn(In) -> R + Sync),
    min_len: usize,
    batch: &mut Vec<In>,
    results: &mut Vec<(Result<R, Panicked>, Deferred)>,
) {
    batch.par_drain(..).with_min_len(min_len).map(|item| call(f, item)).collect_into_vec(results);
}

impl<In, R, F, K> Stage<In> for ParStage<In, R, F, K>
where
    In: Send,
    R: Send,
    F: Fn(In) -> R + Send + Sync,
    K: Expand<R>,
{
    type Out = K::Out;
    type Error = Panicked;

    const RUNS: bool = true;

    /// One item, on the calling thread.
    fn process(&mut self, item: In, out: &mut impl Emit<K::Out>) -> Result<(), Panicked> {
        let (result, deferred) = call(&self.f, item);
        deferred.defer();
        K::expand(result?, out);
        Ok(())
    }

    /// Up to [`batch`](Self::batch) items at a time, mapped on the pool, emitted in order.
    fn process_run(
        &mut self,
        items: &mut impl Iterator<Item = In>,
        out: &mut impl Emit<K::Out>,
        done: &mut impl FnMut(Result<(), Panicked>),
    ) {
        loop {
            self.items.extend(items.by_ref().take(self.batch));
            if self.items.is_empty() {
                return;
            }
            let (f, min_len) = (&self.f, self.min_len);
            let (batch, results) = (&mut self.items, &mut self.results);
            match &self.pool {
                Some(pool) => pool.install(|| map_batch(f, min_len, batch, results)),
                None => map_batch(f, min_len, batch, results),
            }
            for (result, deferred) in self.results.drain(..) {
                // Settles with the outcome about to be reported.
                deferred.defer();
                // Expanded here, on the worker (a flat map's iterator runs as it is read): a
                // panic in it fails its own item only, like one in the closure.
                let mut expanded = |r| catch_unwind(AssertUnwindSafe(|| K::expand(r, out)));
                done(result.and_then(|r| expanded(r).map_err(|p| Panicked::from_payload(&*p))));
            }
        }
    }
}

impl<In, R, F, K> fmt::Debug for ParStage<In, R, F, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParStage")
            .field("pool", &self.pool.as_ref().map(|pool| pool.current_num_threads()))
            .field("batch", &self.batch)
            .field("min_len", &self.min_len)
            .finish_non_exhaustive()
    }
}
