//! Stages: the units of work in a pipeline, and combinators that build and fuse them.
//!
//! A [`Stage`] takes one input item at a time and emits zero or more outputs through an
//! [`Emit`] sink, without allocating (no `Vec` per item). At the end of the stream, or on a
//! timeout, [`Stage::flush`] lets stateful stages (batch, fold) emit what they hold.
//!
//! Closures are stages (`|x| x + 1` maps), and the functions here build the usual shapes:
//! [`map`], [`filter`], [`filter_map`], [`flat_map`], [`inspect`], [`batch`], [`fold`],
//! [`validate`] and [`from_fn`] for anything else. [`Stage::then`] (or `a >> b` on these
//! types) fuses two stages into one that runs both in the same thread with no queue between
//! them.
//!
//! # Examples
//!
//! ```
//! use backflow_core::stage::{self, Stage};
//!
//! let mut parse = stage::filter_map(|line: &str| line.trim().parse::<u32>().ok())
//!     >> stage::filter(|n: &u32| n % 2 == 0)
//!     >> stage::batch::<u32, 2>();
//! let mut out = Vec::new();
//! for line in ["1", "2", "x", "4", "6"] {
//!     parse.process(line, &mut |batch| out.push(batch)).unwrap();
//! }
//! parse.flush(&mut |batch| out.push(batch)).unwrap();
//! assert_eq!(out, [[2, 4].as_slice(), [6].as_slice()]);
//! ```

pub mod expand;

use core::convert::Infallible;
use core::fmt;
use core::marker::PhantomData;
use core::ops::Shr;
use core::task::{Context, Poll};

/// Where a stage puts its outputs. Any `FnMut(T)` closure is one.
///
/// # Examples
///
/// ```
/// use backflow_core::stage::Emit;
///
/// let mut seen = Vec::new();
/// let mut sink = |x: u8| seen.push(x);
/// sink.emit(1);
/// assert_eq!(seen, [1]);
/// ```
pub trait Emit<T> {
    /// Takes one output item.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::stage::Emit;
    ///
    /// let mut count = 0;
    /// (|_: char| count += 1).emit('a');
    /// assert_eq!(count, 1);
    /// ```
    fn emit(&mut self, item: T);
}

impl<T, F: FnMut(T)> Emit<T> for F {
    fn emit(&mut self, item: T) {
        self(item);
    }
}

/// One step of a pipeline: consumes an item, emits 0..n outputs.
///
/// # Examples
///
/// A stage that splits words, written by hand:
///
/// ```
/// use backflow_core::stage::{Emit, Stage};
/// use core::convert::Infallible;
///
/// struct Words;
///
/// impl<'a> Stage<&'a str> for Words {
///     type Out = &'a str;
///     type Error = Infallible;
///
///     fn process(&mut self, line: &'a str, out: &mut impl Emit<&'a str>) -> Result<(), Infallible> {
///         line.split_whitespace().for_each(|w| out.emit(w));
///         Ok(())
///     }
/// }
///
/// let mut words = Vec::new();
/// Words.process("to be", &mut |w| words.push(w)).unwrap();
/// assert_eq!(words, ["to", "be"]);
/// ```
pub trait Stage<In> {
    /// The output item type.
    type Out;
    /// What a failed item reports.
    type Error;

    /// Processes one item, emitting any number of outputs.
    ///
    /// # Errors
    ///
    /// The stage's own error for this item; the runtime applies the stage's error policy.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::stage::{self, Stage};
    ///
    /// let mut out = Vec::new();
    /// stage::flat_map(|x: u8| [x, x]).process(4, &mut |x| out.push(x)).unwrap();
    /// assert_eq!(out, [4, 4]);
    /// ```
    fn process(&mut self, item: In, out: &mut impl Emit<Self::Out>) -> Result<(), Self::Error>;

    /// Emits whatever the stage holds back (a partial batch, a running total). Called at the end
    /// of the stream and on timeouts; the default holds nothing.
    ///
    /// # Errors
    ///
    /// The stage's own error, if flushing fails.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::stage::{self, Stage};
    ///
    /// let mut batches = stage::batch::<u8, 4>();
    /// batches.process(1, &mut |_| unreachable!()).unwrap();
    /// let mut out = Vec::new();
    /// batches.flush(&mut |b| out.push(b)).unwrap();
    /// assert_eq!(out, [[1].as_slice()]);
    /// ```
    fn flush(&mut self, out: &mut impl Emit<Self::Out>) -> Result<(), Self::Error> {
        let _ = out;
        Ok(())
    }

    /// Whether a runtime should hand this stage whole runs of items through
    /// [`process_run`](Self::process_run) instead of one item at a time through
    /// [`process`](Self::process). `false` unless the stage overrides `process_run` to do
    /// better with a run than item by item (spread it over a thread pool, say).
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::stage::{self, Stage};
    ///
    /// fn runs<S: Stage<u8>>(_: &S) -> bool {
    ///     S::RUNS
    /// }
    /// assert!(!runs(&stage::map(|x: u8| x)));
    /// ```
    const RUNS: bool = false;

    /// Processes a run of items in order: for each item, its outputs go to `out` and then its
    /// result to `done`, so the n-th call of `done` reports the n-th item taken from `items`.
    /// A stage may take several items before it emits anything (to process them at once), but
    /// must report every item it took, in order, before it returns — unless it
    /// [`HOLDS`](Self::HOLDS) items, which it then reports in later runs. The default calls
    /// [`process`](Self::process) for each item.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::stage::{self, Stage};
    ///
    /// let mut parse = stage::filter_map(|s: &str| s.parse::<u8>().ok());
    /// let (mut out, mut results) = (Vec::new(), Vec::new());
    /// parse.process_run(&mut ["1", "x", "3"].into_iter(), &mut |n| out.push(n), &mut |r| results.push(r));
    /// assert_eq!(out, [1, 3]);
    /// assert_eq!(results, [Ok(()), Ok(()), Ok(())]);
    /// ```
    fn process_run(
        &mut self,
        items: &mut impl Iterator<Item = In>,
        out: &mut impl Emit<Self::Out>,
        done: &mut impl FnMut(Result<(), Self::Error>),
    ) {
        for item in items {
            let result = self.process(item, out);
            done(result);
        }
    }

    /// Whether the stage may keep items it took in [`process_run`](Self::process_run) past the
    /// end of the run, still in flight (futures waiting on I/O, say), and report them in a
    /// later run, in the order taken. Such a stage takes items only while it has room for
    /// them, leaving the rest of the run to the runtime. A runtime then calls `process_run`
    /// again, with new items or none, whenever [`poll_held`](Self::poll_held) says it has
    /// something to report, and does not end the stream while the stage holds items; when
    /// the pipeline is cancelled it counts the items the stage still holds as abandoned (but
    /// those [`finished_held`](Self::finished_held) names) and drops the stage (and what it
    /// holds with it). `false` unless overridden; a stage that
    /// holds items also sets [`RUNS`](Self::RUNS).
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::stage::{self, Stage};
    ///
    /// fn holds<S: Stage<u8>>(_: &S) -> bool {
    ///     S::HOLDS
    /// }
    /// assert!(!holds(&stage::map(|x: u8| x)));
    /// ```
    const HOLDS: bool = false;

    /// For a stage that [`HOLDS`](Self::HOLDS) items: `Poll::Ready` when a
    /// [`process_run`](Self::process_run) would make progress now without new items (report
    /// an item it holds, or emit an output), otherwise `Poll::Pending`, having arranged for
    /// `cx`'s waker to be woken when that may have changed. The default is always ready.
    ///
    /// # Examples
    ///
    /// ```
    /// use core::task::{Context, Waker};
    /// use backflow_core::stage::{self, Stage};
    ///
    /// let mut cx = Context::from_waker(Waker::noop());
    /// assert!(stage::map(|x: u8| x).poll_held(&mut cx).is_ready());
    /// ```
    fn poll_held(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let _ = cx;
        Poll::Ready(())
    }

    /// For a stage that [`HOLDS`](Self::HOLDS) items, when its worker stops before it has
    /// reported them all (a cancel): calls `finished` with the place of each held item that
    /// has finished and whose outputs, if any, are out (`0` for the oldest item not yet
    /// reported), and with its outcome (`true` for a success). Those items count as processed,
    /// or failed, rather than abandoned. The default reports none.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::stage::{self, Stage};
    ///
    /// let mut places = Vec::new();
    /// stage::map(|x: u8| x).finished_held(&mut |place, ok| places.push((place, ok)));
    /// assert!(places.is_empty());
    /// ```
    fn finished_held(&self, finished: &mut impl FnMut(usize, bool)) {
        let _ = finished;
    }

    /// Fuses `self` and `next` into one stage: each output of `self` goes straight into `next`,
    /// in the same thread, with no queue between them.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::stage::Stage;
    ///
    /// let mut double_then_add = (|x: u32| x * 2).then(|x: u32| x + 1);
    /// let mut out = Vec::new();
    /// double_then_add.process(5, &mut |x| out.push(x)).unwrap();
    /// assert_eq!(out, [11]);
    /// ```
    fn then<Next: Stage<Self::Out>>(self, next: Next) -> Then<Self, Next>
    where
        Self: Sized,
    {
        Then { first: self, second: next }
    }
}

/// Closures map: one output per input, never failing.
impl<In, Out, F: FnMut(In) -> Out> Stage<In> for F {
    type Out = Out;
    type Error = Infallible;

    fn process(&mut self, item: In, out: &mut impl Emit<Out>) -> Result<(), Infallible> {
        out.emit(self(item));
        Ok(())
    }
}

/// Two fused stages; see [`Stage::then`].
///
/// # Examples
///
/// ```
/// use backflow_core::stage::{self, Then};
///
/// let _fused: Then<_, _> = stage::map(|x: u8| x) >> stage::map(|x: u8| x + 1);
/// ```
#[derive(Debug, Clone)]
pub struct Then<A, B> {
    first: A,
    second: B,
}

/// The error of a fused stage: which half failed, and how.
///
/// # Examples
///
/// ```
/// use backflow_core::stage::{self, Stage, ThenError};
///
/// let mut checked = stage::map(|x: i32| x - 10).then(stage::validate(|x: &i32| {
///     if *x >= 0 { Ok(()) } else { Err("negative") }
/// }));
/// let err = checked.process(3, &mut |_| {}).unwrap_err();
/// assert_eq!(err.into_second().error, "negative");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThenError<A, B> {
    /// The first stage failed.
    First(A),
    /// The second stage failed on an output of the first.
    Second(B),
}

impl<B> ThenError<Infallible, B> {
    /// The second stage's error, when the first cannot fail.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::stage::ThenError;
    /// use core::convert::Infallible;
    ///
    /// assert_eq!(ThenError::<Infallible, u8>::Second(3).into_second(), 3);
    /// ```
    pub fn into_second(self) -> B {
        match self {
            Self::First(never) => match never {},
            Self::Second(error) => error,
        }
    }
}

impl<A> ThenError<A, Infallible> {
    /// The first stage's error, when the second cannot fail.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::stage::ThenError;
    /// use core::convert::Infallible;
    ///
    /// assert_eq!(ThenError::<u8, Infallible>::First(3).into_first(), 3);
    /// ```
    pub fn into_first(self) -> A {
        match self {
            Self::First(error) => error,
            Self::Second(never) => match never {},
        }
    }
}

impl<A: fmt::Display, B: fmt::Display> fmt::Display for ThenError<A, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::First(e) => e.fmt(f),
            Self::Second(e) => e.fmt(f),
        }
    }
}

impl<A: core::error::Error, B: core::error::Error> core::error::Error for ThenError<A, B> {}

impl<In, A: Stage<In>, B: Stage<A::Out>> Stage<In> for Then<A, B> {
    type Out = B::Out;
    type Error = ThenError<A::Error, B::Error>;

    /// Runs `item` through the first stage and each of its outputs through the second. If the
    /// second fails on one output, the remaining outputs still go through (no item is lost in
    /// between) and the first such error is returned.
    fn process(&mut self, item: In, out: &mut impl Emit<B::Out>) -> Result<(), Self::Error> {
        let second = &mut self.second;
        let mut failed = None;
        self.first
            .process(item, &mut |mid| {
                if let Err(e) = second.process(mid, out) {
                    failed.get_or_insert(e);
                }
            })
            .map_err(ThenError::First)?;
        failed.map_or(Ok(()), |e| Err(ThenError::Second(e)))
    }

    /// Flushes the first stage into the second, then the second.
    fn flush(&mut self, out: &mut impl Emit<B::Out>) -> Result<(), Self::Error> {
        let second = &mut self.second;
        let mut failed = None;
        self.first
            .flush(&mut |mid| {
                if let Err(e) = second.process(mid, out) {
                    failed.get_or_insert(e);
                }
            })
            .map_err(ThenError::First)?;
        let flushed = second.flush(out);
        match (failed, flushed) {
            (Some(e), _) | (None, Err(e)) => Err(ThenError::Second(e)),
            (None, Ok(())) => Ok(()),
        }
    }
}

/// Maps each item to one output. See [`map`].
///
/// # Examples
///
/// ```
/// let _stage: backflow_core::stage::Map<_> = backflow_core::stage::map(|x: u8| x * 2);
/// ```
#[derive(Debug, Clone)]
pub struct Map<F>(F);

/// A stage applying `f` to each item.
///
/// # Examples
///
/// ```
/// use backflow_core::stage::{self, Stage};
///
/// let mut out = Vec::new();
/// stage::map(|s: &str| s.len()).process("four", &mut |n| out.push(n)).unwrap();
/// assert_eq!(out, [4]);
/// ```
pub const fn map<F>(f: F) -> Map<F> {
    Map(f)
}

impl<In, Out, F: FnMut(In) -> Out> Stage<In> for Map<F> {
    type Out = Out;
    type Error = Infallible;

    fn process(&mut self, item: In, out: &mut impl Emit<Out>) -> Result<(), Infallible> {
        out.emit((self.0)(item));
        Ok(())
    }
}

/// Keeps the items a predicate accepts. See [`filter`].
///
/// # Examples
///
/// ```
/// let _stage: backflow_core::stage::Filter<_> = backflow_core::stage::filter(|x: &u8| *x > 0);
/// ```
#[derive(Debug, Clone)]
pub struct Filter<P>(P);

/// A stage keeping the items for which `predicate` is true.
///
/// # Examples
///
/// ```
/// use backflow_core::stage::{self, Stage};
///
/// let mut odd = stage::filter(|x: &u8| x % 2 == 1);
/// let mut out = Vec::new();
/// for x in 0..5 {
///     odd.process(x, &mut |x| out.push(x)).unwrap();
/// }
/// assert_eq!(out, [1, 3]);
/// ```
pub const fn filter<P>(predicate: P) -> Filter<P> {
    Filter(predicate)
}

impl<In, P: FnMut(&In) -> bool> Stage<In> for Filter<P> {
    type Out = In;
    type Error = Infallible;

    fn process(&mut self, item: In, out: &mut impl Emit<In>) -> Result<(), Infallible> {
        if (self.0)(&item) {
            out.emit(item);
        }
        Ok(())
    }
}

/// Maps and filters in one step. See [`filter_map`].
///
/// # Examples
///
/// ```
/// let _stage: backflow_core::stage::FilterMap<_> = backflow_core::stage::filter_map(|x: u8| x.checked_sub(1));
/// ```
#[derive(Debug, Clone)]
pub struct FilterMap<F>(F);

/// A stage emitting `f(item)` when it is `Some`.
///
/// # Examples
///
/// ```
/// use backflow_core::stage::{self, Stage};
///
/// let mut numbers = stage::filter_map(|s: &str| s.parse::<i32>().ok());
/// let mut out = Vec::new();
/// for s in ["1", "x", "-3"] {
///     numbers.process(s, &mut |n| out.push(n)).unwrap();
/// }
/// assert_eq!(out, [1, -3]);
/// ```
pub const fn filter_map<F>(f: F) -> FilterMap<F> {
    FilterMap(f)
}

impl<In, Out, F: FnMut(In) -> Option<Out>> Stage<In> for FilterMap<F> {
    type Out = Out;
    type Error = Infallible;

    fn process(&mut self, item: In, out: &mut impl Emit<Out>) -> Result<(), Infallible> {
        if let Some(mapped) = (self.0)(item) {
            out.emit(mapped);
        }
        Ok(())
    }
}

/// Maps each item with a function that may fail. See [`try_map`].
///
/// # Examples
///
/// ```
/// let _stage: backflow_core::stage::TryMap<_> = backflow_core::stage::try_map(|s: &str| s.parse::<u8>());
/// ```
#[derive(Debug, Clone)]
pub struct TryMap<F>(F);

/// A stage emitting `f(item)` when it is `Ok`, and failing the item with the error otherwise
/// (a runtime then applies the stage's error policy). A plain closure returning a `Result`
/// is a map to `Result`s instead: it never fails.
///
/// # Examples
///
/// ```
/// use backflow_core::stage::{self, Stage};
///
/// let mut parse = stage::try_map(|s: &str| s.parse::<i32>());
/// let mut out = Vec::new();
/// assert!(parse.process("7", &mut |n| out.push(n)).is_ok());
/// assert!(parse.process("x", &mut |n| out.push(n)).is_err());
/// assert_eq!(out, [7]);
/// ```
pub const fn try_map<F>(f: F) -> TryMap<F> {
    TryMap(f)
}

impl<In, Out, E, F: FnMut(In) -> Result<Out, E>> Stage<In> for TryMap<F> {
    type Out = Out;
    type Error = E;

    fn process(&mut self, item: In, out: &mut impl Emit<Out>) -> Result<(), E> {
        out.emit((self.0)(item)?);
        Ok(())
    }
}

/// Expands each item into any number of outputs. See [`flat_map`].
///
/// # Examples
///
/// ```
/// let _stage: backflow_core::stage::FlatMap<_> = backflow_core::stage::flat_map(|x: u8| [x; 3]);
/// ```
#[derive(Debug, Clone)]
pub struct FlatMap<F>(F);

/// A stage emitting every element of `f(item)`, any `IntoIterator` (an array, an `Option`, a
/// `split`…), without collecting it.
///
/// # Examples
///
/// ```
/// use backflow_core::stage::{self, Stage};
///
/// let mut twice = stage::flat_map(|x: u8| [x, x]);
/// let mut out = Vec::new();
/// twice.process(7, &mut |x| out.push(x)).unwrap();
/// assert_eq!(out, [7, 7]);
/// ```
pub const fn flat_map<F>(f: F) -> FlatMap<F> {
    FlatMap(f)
}

impl<In, I: IntoIterator, F: FnMut(In) -> I> Stage<In> for FlatMap<F> {
    type Out = I::Item;
    type Error = Infallible;

    fn process(&mut self, item: In, out: &mut impl Emit<I::Item>) -> Result<(), Infallible> {
        (self.0)(item).into_iter().for_each(|x| out.emit(x));
        Ok(())
    }
}

/// Looks at each item and passes it on. See [`inspect`].
///
/// # Examples
///
/// ```
/// let _stage: backflow_core::stage::Inspect<_> = backflow_core::stage::inspect(|x: &u8| assert!(*x < 10));
/// ```
#[derive(Debug, Clone)]
pub struct Inspect<F>(F);

/// A stage calling `f` on each item and passing the item on unchanged.
///
/// # Examples
///
/// ```
/// use backflow_core::stage::{self, Stage};
///
/// let mut seen = 0;
/// let mut count = stage::inspect(|_: &u8| seen += 1);
/// count.process(1, &mut |_| {}).unwrap();
/// drop(count);
/// assert_eq!(seen, 1);
/// ```
pub const fn inspect<F>(f: F) -> Inspect<F> {
    Inspect(f)
}

impl<In, F: FnMut(&In)> Stage<In> for Inspect<F> {
    type Out = In;
    type Error = Infallible;

    fn process(&mut self, item: In, out: &mut impl Emit<In>) -> Result<(), Infallible> {
        (self.0)(&item);
        out.emit(item);
        Ok(())
    }
}

/// Groups items into fixed-capacity batches. See [`batch`].
///
/// # Examples
///
/// ```
/// let _stage: backflow_core::stage::Batch<u8, 16> = backflow_core::stage::batch();
/// ```
#[derive(Debug, Clone)]
pub struct Batch<T, const N: usize>(heapless::Vec<T, N>);

/// A stage grouping items into batches of `N` (a `heapless::Vec`, no heap); [`Stage::flush`]
/// emits the last, partial batch.
///
/// # Examples
///
/// ```
/// use backflow_core::stage::{self, Stage};
///
/// let mut pairs = stage::batch::<u8, 2>();
/// let mut out = Vec::new();
/// for x in 1..=3 {
///     pairs.process(x, &mut |b| out.push(b)).unwrap();
/// }
/// pairs.flush(&mut |b| out.push(b)).unwrap();
/// assert_eq!(out, [[1, 2].as_slice(), [3].as_slice()]);
/// ```
pub const fn batch<T, const N: usize>() -> Batch<T, N> {
    const { assert!(N > 0, "a batch holds at least one item") };
    Batch(heapless::Vec::new())
}

impl<T, const N: usize> Stage<T> for Batch<T, N> {
    type Out = heapless::Vec<T, N>;
    type Error = Infallible;

    fn process(&mut self, item: T, out: &mut impl Emit<Self::Out>) -> Result<(), Infallible> {
        // The batch is emitted as soon as it is full, so there is always room here.
        if let Err(item) = self.0.push(item) {
            out.emit(core::mem::take(&mut self.0));
            let _ = self.0.push(item);
        }
        if self.0.is_full() {
            out.emit(core::mem::take(&mut self.0));
        }
        Ok(())
    }

    fn flush(&mut self, out: &mut impl Emit<Self::Out>) -> Result<(), Infallible> {
        if !self.0.is_empty() {
            out.emit(core::mem::take(&mut self.0));
        }
        Ok(())
    }
}

/// Folds all items into one value, emitted on flush. See [`fold`].
///
/// # Examples
///
/// ```
/// let _stage: backflow_core::stage::Fold<u64, _> = backflow_core::stage::fold(0, |a: u64, x: u64| a + x);
/// ```
#[derive(Debug, Clone)]
pub struct Fold<Acc, F> {
    init: Acc,
    acc: Acc,
    f: F,
}

/// A stage folding items into an accumulator that starts at `init`; [`Stage::flush`] emits the
/// accumulator and starts again from `init` (a tumbling aggregate when the runtime flushes on a
/// timer).
///
/// # Examples
///
/// ```
/// use backflow_core::stage::{self, Stage};
///
/// let mut sum = stage::fold(0u64, |acc, x: u64| acc + x);
/// for x in 1..=4 {
///     sum.process(x, &mut |_| unreachable!()).unwrap();
/// }
/// let mut out = Vec::new();
/// sum.flush(&mut |total| out.push(total)).unwrap();
/// assert_eq!(out, [10]);
/// ```
pub fn fold<Acc: Clone, F>(init: Acc, f: F) -> Fold<Acc, F> {
    Fold { acc: init.clone(), init, f }
}

impl<In, Acc: Clone, F: FnMut(Acc, In) -> Acc> Stage<In> for Fold<Acc, F> {
    type Out = Acc;
    type Error = Infallible;

    fn process(&mut self, item: In, _out: &mut impl Emit<Acc>) -> Result<(), Infallible> {
        let acc = core::mem::replace(&mut self.acc, self.init.clone());
        self.acc = (self.f)(acc, item);
        Ok(())
    }

    fn flush(&mut self, out: &mut impl Emit<Acc>) -> Result<(), Infallible> {
        out.emit(core::mem::replace(&mut self.acc, self.init.clone()));
        Ok(())
    }
}

/// An item that failed validation, handed back with the reason so it can be dead-lettered.
///
/// # Examples
///
/// ```
/// use backflow_core::stage::Invalid;
///
/// let invalid = Invalid { item: -1, error: "negative" };
/// assert_eq!(invalid.to_string(), "invalid item: negative");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid<T, E> {
    /// The item that failed.
    pub item: T,
    /// Why it failed.
    pub error: E,
}

impl<T, E: fmt::Display> fmt::Display for Invalid<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid item: {}", self.error)
    }
}

impl<T: fmt::Debug, E: core::error::Error> core::error::Error for Invalid<T, E> {}

/// Passes valid items on and fails invalid ones. See [`validate`].
///
/// # Examples
///
/// ```
/// let _stage: backflow_core::stage::Validate<_> =
///     backflow_core::stage::validate(|x: &u8| if *x > 0 { Ok(()) } else { Err("zero") });
/// ```
#[derive(Debug, Clone)]
pub struct Validate<F>(F);

/// A stage passing on items for which `check` is `Ok` and failing the others with
/// [`Invalid`], which carries the item back (nothing is lost).
///
/// # Examples
///
/// ```
/// use backflow_core::stage::{self, Invalid, Stage};
///
/// let mut positive = stage::validate(|x: &i32| if *x > 0 { Ok(()) } else { Err("not positive") });
/// let mut out = Vec::new();
/// assert!(positive.process(3, &mut |x| out.push(x)).is_ok());
/// assert_eq!(positive.process(-2, &mut |x| out.push(x)), Err(Invalid { item: -2, error: "not positive" }));
/// assert_eq!(out, [3]);
/// ```
pub const fn validate<F>(check: F) -> Validate<F> {
    Validate(check)
}

impl<In, E, F: FnMut(&In) -> Result<(), E>> Stage<In> for Validate<F> {
    type Out = In;
    type Error = Invalid<In, E>;

    fn process(&mut self, item: In, out: &mut impl Emit<In>) -> Result<(), Invalid<In, E>> {
        match (self.0)(&item) {
            Ok(()) => {
                out.emit(item);
                Ok(())
            }
            Err(error) => Err(Invalid { item, error }),
        }
    }
}

/// A stage from a closure that emits any number of outputs and may fail. See [`from_fn`].
///
/// # Examples
///
/// ```
/// use backflow_core::stage::{self, Emit, FromFn};
///
/// let _stage: FromFn<_, u8> = stage::from_fn(|x: u8, out: &mut dyn Emit<u8>| {
///     out.emit(x);
///     Ok::<_, &str>(())
/// });
/// ```
pub struct FromFn<F, Out> {
    f: F,
    _out: PhantomData<fn() -> Out>,
}

impl<F, Out> fmt::Debug for FromFn<F, Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FromFn").finish_non_exhaustive()
    }
}

/// A stage from `f(item, out)`, which emits through `out` and may fail: for anything the other
/// combinators do not cover.
///
/// # Examples
///
/// ```
/// use backflow_core::stage::{self, Emit, Stage};
///
/// let mut split = stage::from_fn(|line: &str, out: &mut dyn Emit<u32>| {
///     for field in line.split(',') {
///         out.emit(field.parse().map_err(|_| "not a number")?);
///     }
///     Ok::<_, &str>(())
/// });
/// let mut out = Vec::new();
/// split.process("1,2", &mut |n| out.push(n)).unwrap();
/// assert_eq!(out, [1, 2]);
/// assert_eq!(split.process("3,x", &mut |n| out.push(n)), Err("not a number"));
/// ```
pub const fn from_fn<F, Out>(f: F) -> FromFn<F, Out> {
    FromFn { f, _out: PhantomData }
}

impl<In, Out, E, F: FnMut(In, &mut dyn Emit<Out>) -> Result<(), E>> Stage<In> for FromFn<F, Out> {
    type Out = Out;
    type Error = E;

    fn process(&mut self, item: In, out: &mut impl Emit<Out>) -> Result<(), E> {
        (self.f)(item, out)
    }
}

/// `a >> b` for the combinator types: the same as `a.then(b)`.
macro_rules! impl_shr {
    ($($ty:ident<$($param:ident),*>),* $(,)?) => {$(
        impl<$($param,)* Next> Shr<Next> for $ty<$($param),*> {
            type Output = Then<Self, Next>;

            fn shr(self, next: Next) -> Then<Self, Next> {
                Then { first: self, second: next }
            }
        }
    )*};
}

impl_shr!(
    Then<A, B>,
    Map<F>,
    Filter<F>,
    FilterMap<F>,
    TryMap<F>,
    FlatMap<F>,
    Inspect<F>,
    Fold<Acc, F>,
    Validate<F>,
    FromFn<F, Out>,
);

impl<T, const N: usize, Next> Shr<Next> for Batch<T, N> {
    type Output = Then<Self, Next>;

    fn shr(self, next: Next) -> Then<Self, Next> {
        Then { first: self, second: next }
    }
}
