//! [`Input`]: the handle that puts items into a pipeline.

use std::any::Any;
use std::cell::Cell;
use std::fmt;
use std::iter;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Arc;
use std::time::Duration;

use crate::batch::BATCH;
use crate::control::deadline_after;
use crate::error::PushError;
use crate::link::{Envelope, HandleState, Link, Patience, PushFailure};
use crate::sync::{CachePadded, Ordering, fence, this_thread};

#[cfg(feature = "async")]
mod send;
#[cfg(feature = "async")]
pub use send::{RoomFuture, SendFuture};

/// Puts items into a pipeline's first stage. Cloneable: give each producer thread its own
/// clone (a handle is `Send` but not `Sync`, which keeps its bookkeeping free of atomics'
/// read-modify-write costs).
///
/// What a push does when the first stage's queue is full depends on that stage's
/// [`Overflow`](crate::Overflow) policy: `Block` waits (with pressure on, until the queue is
/// back at its low water mark), `DropOldest` and `DropNewest` drop an item and count it, `Fail`
/// returns [`PushError::Full`] with the item. After `drain()` or `cancel()` every push returns
/// the item inside the error.
///
/// # Examples
///
/// ```
/// use backflow::Pipeline;
///
/// let pipeline = Pipeline::<u64>::builder().stage("square", || |x: u64| x * x).sink(|_| {}).build()?;
/// let producers: Vec<_> = (0..2)
///     .map(|p| {
///         let input = pipeline.input();
///         std::thread::spawn(move || (0..100).try_for_each(|i| input.push(p * 100 + i)))
///     })
///     .collect();
/// for producer in producers {
///     producer.join().unwrap()?;
/// }
/// assert_eq!(pipeline.drain()?.sink().delivered, 200);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Input<In> {
    link: Arc<Link<In>>,
    state: Arc<CachePadded<HandleState>>,
    /// Items until the next sampled one.
    countdown: Cell<u32>,
    _not_sync: PhantomData<Cell<()>>,
}

impl<In> Input<In> {
    pub(crate) fn new(link: Arc<Link<In>>) -> Self {
        let handles = link.handles.as_ref().expect("the first link has handles");
        let state = handles.register();
        Self { link, state, countdown: Cell::new(0), _not_sync: PhantomData }
    }

    /// Pushes one item; under `Block`, waits for room.
    ///
    /// # Errors
    ///
    /// The item back: [`PushError::Full`] under `Fail` when the queue is full,
    /// [`PushError::Closed`] after `drain()`, [`PushError::Cancelled`] after `cancel()`.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pipeline = backflow::Pipeline::<u8>::builder().stage("id", || |x: u8| x).sink(|_| {}).build()?;
    /// pipeline.input().push(1)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn push(&self, item: In) -> Result<(), PushError<In>> {
        self.push_until(item, Patience::Forever)
    }

    /// Pushes one item if it can go in without waiting.
    ///
    /// # Errors
    ///
    /// As [`push`](Self::push), and [`PushError::Full`] when the item would have to wait
    /// (queue full, or pressure on under `Block`).
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow::{Pipeline, PushError};
    ///
    /// let (pipeline, output) = Pipeline::<u8>::builder()
    ///     .stage("id", || |x: u8| x)
    ///     .capacity(1)
    ///     .output()
    ///     .build()?;
    /// let input = pipeline.input();
    /// // Nobody reads the output, so the pipeline fills up and `try_push` gives the item back.
    /// let mut refused = None;
    /// for x in 0..10 {
    ///     if let Err(PushError::Full(item)) = input.try_push(x) {
    ///         refused = Some(item);
    ///         break;
    ///     }
    /// }
    /// assert!(refused.is_some());
    /// drop(output);
    /// # pipeline.cancel();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_push(&self, item: In) -> Result<(), PushError<In>> {
        self.push_until(item, Patience::None)
    }

    /// Pushes one item, waiting at most `timeout` for room.
    ///
    /// # Errors
    ///
    /// As [`push`](Self::push), and [`PushError::Timeout`] when the wait timed out, however
    /// short `timeout` was (`Duration::ZERO` included; [`try_push`](Self::try_push) is the
    /// push that does not wait, with [`PushError::Full`]).
    ///
    /// # Examples
    ///
    /// ```
    /// # let pipeline = backflow::Pipeline::<u8>::builder().stage("id", || |x: u8| x).sink(|_| {}).build()?;
    /// pipeline.input().push_timeout(1, std::time::Duration::from_millis(10))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn push_timeout(&self, item: In, timeout: Duration) -> Result<(), PushError<In>> {
        // A timeout past the end of time waits as long as `push` does.
        self.push_until(item, Patience::until(deadline_after(timeout)))
    }

    /// Pushes every item of `items` in order, as [`push`](Self::push) would, but with the
    /// handle's bookkeeping and the wake-up of the first stage done once per batch rather than
    /// once per item: the fastest way to feed a pipeline.
    ///
    /// The iterator is read inside the push (a batch at a time), and
    /// [`drain`](crate::Pipeline::drain), [`shutdown`](crate::Pipeline::shutdown) and a drop
    /// of the pipeline wait for a push in progress to end before taking their final count: an
    /// iterator that blocks (on a socket, a channel) holds them up until it yields. Such a
    /// source is better pushed item by item.
    ///
    /// # Errors
    ///
    /// The first item that could not be pushed (closed or cancelled); the rest of the iterator
    /// is left unconsumed.
    ///
    /// # Panics
    ///
    /// When `items` panics: the panic goes on to the caller once the items taken before it are
    /// in the pipeline and counted.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pipeline = backflow::Pipeline::<u32>::builder().stage("id", || |x: u32| x).sink(|_| {}).build()?;
    /// pipeline.input().push_iter(0..1000)?;
    /// assert_eq!(pipeline.drain()?.sink().delivered, 1000);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn push_iter<I: IntoIterator<Item = In>>(&self, items: I) -> Result<(), PushError<In>> {
        let mut items = items.into_iter();
        // The iterator is the caller's code, read inside the push: its panic is held until
        // the push has ended, so that no item it gave is left uncounted.
        let mut panicked = None;
        loop {
            let mut push = self.begin();
            // Whether the iterator may have more: it filled the whole chunk.
            let mut more = false;
            let result = match self.refusal() {
                Err(refuse) => items.next().map_or(Ok(()), |item| Err(refuse(item))),
                Ok(()) => {
                    let taken = iter::from_fn(|| next(&mut items, &mut panicked));
                    let batch = taken.take(BATCH).map(|item| self.envelope(item));
                    let (received, result) = self.link.offer(batch, Patience::Forever);
                    push.received = received;
                    more = received == BATCH as u64;
                    result.map_err(|(envelope, why)| why.into_error(envelope.item))
                }
            };
            drop(push);
            result?;
            if !more || panicked.is_some() {
                break;
            }
        }
        match panicked {
            Some(panic) => resume_unwind(panic),
            None => Ok(()),
        }
    }

    /// How many items a push could put into the first stage's queue now without waiting:
    /// its free slots, or none while pressure is on under `Block` (or while the queue is at
    /// its byte budget, with [`capacity_bytes`](crate::Builder::capacity_bytes): how many
    /// items would fit by weight is not known before they are weighed). At most this many: a
    /// worker that runs its stage over the items in the queue's slots frees each slot as it
    /// gets to its item. A source that pulls from elsewhere (a socket, a broker) asks for no
    /// more than this, so the backpressure reaches whatever it pulls from.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow::Pipeline;
    ///
    /// let (pipeline, output) =
    ///     Pipeline::<u8>::builder().stage("id", || |x: u8| x).capacity(8).output().build()?;
    /// let input = pipeline.input();
    /// assert_eq!(input.room(), 8);
    /// # drop(output);
    /// # pipeline.cancel();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn room(&self) -> usize {
        if self.is_closed() { 0 } else { self.link.room() }
    }

    /// Waits at most `timeout` for [`room`](Self::room) in the first stage's queue; returns
    /// the room then: `0` if the time ran out, or the pipeline no longer takes items.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let pipeline = backflow::Pipeline::<u8>::builder().stage("id", || |x: u8| x).sink(|_| {}).build()?;
    /// let input = pipeline.input();
    /// let room = input.wait_for_room(Duration::from_millis(10));
    /// assert!(room > 0);
    /// pipeline.cancel();
    /// assert_eq!(input.wait_for_room(Duration::from_millis(10)), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait_for_room(&self, timeout: Duration) -> usize {
        if self.is_closed() { 0 } else { self.link.await_room(deadline_after(timeout)) }
    }

    /// Whether the pipeline no longer takes items (drained or cancelled).
    ///
    /// # Examples
    ///
    /// ```
    /// # let pipeline = backflow::Pipeline::<u8>::builder().stage("id", || |x: u8| x).sink(|_| {}).build()?;
    /// let input = pipeline.input();
    /// assert!(!input.is_closed());
    /// pipeline.drain()?;
    /// assert!(input.is_closed());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_closed(&self) -> bool {
        self.refusal().is_err()
    }

    fn push_until(&self, item: In, patience: Patience) -> Result<(), PushError<In>> {
        let mut push = self.begin();
        match self.refusal() {
            Err(refuse) => Err(refuse(item)),
            Ok(()) => {
                let (received, result) = self.link.offer_one(self.envelope(item), patience);
                push.received = received;
                result.map_err(|(envelope, why)| why.into_error(envelope.item))
            }
        }
    }

    /// Marks a push in progress until the returned guard is dropped (also by a panic). The
    /// first stage does not finish, and `drain` does not take its report, while a handle is
    /// active.
    fn begin(&self) -> Push<'_, In> {
        self.state.pusher.store(this_thread(), Ordering::Relaxed);
        // Release: whoever sees this push active sees which thread it is on.
        self.state.active.store(true, Ordering::Release);
        // Pairs with the fence in `Handles::all_done`: either this push sees `closed` below,
        // or the first stage sees this handle active and waits for the push to land.
        fence(Ordering::SeqCst);
        Push { input: self, received: 0 }
    }

    /// `Err` with the right error constructor if the pipeline takes no more items.
    #[allow(clippy::type_complexity)]
    fn refusal(&self) -> Result<(), fn(In) -> PushError<In>> {
        let closed = self.link.handles.as_ref().is_some_and(|h| h.closed.load(Ordering::Relaxed));
        if self.link.control.is_cancelled() {
            Err(PushError::Cancelled)
        } else if closed {
            Err(PushError::Closed)
        } else {
            Ok(())
        }
    }

    /// Wraps an item, stamping one in `sample_every` with the time.
    #[inline]
    fn envelope(&self, item: In) -> Envelope<In> {
        let left = self.countdown.get();
        if left == 0 && self.link.control.timings {
            self.countdown.set(self.link.control.sample_every.get() - 1);
            let now = self.link.control.now();
            Envelope { item, born: now, queued: now, weight: 0 }
        } else {
            self.countdown.set(left.saturating_sub(1));
            Envelope { item, born: 0, queued: 0, weight: 0 }
        }
    }
}

/// A push in progress; dropping it ends the push.
struct Push<'a, In> {
    input: &'a Input<In>,
    /// Items the push put into the first stage (pushed, or dropped by the policy).
    received: u64,
}

impl<In> Drop for Push<'_, In> {
    fn drop(&mut self) {
        let (state, link) = (&self.input.state, &self.input.link);
        // Only this handle writes its counter (handles are not `Sync`).
        let received = state.received.load(Ordering::Relaxed) + self.received;
        state.received.store(received, Ordering::Relaxed);
        state.active.store(false, Ordering::Release);
        // Wakes the first stage's workers, and a `drain` waiting for the push to end.
        link.settle();
    }
}

/// The next of `items`; a panic in it is kept in `panicked` and ends the items.
fn next<I: Iterator>(items: &mut I, panicked: &mut Option<Panic>) -> Option<I::Item> {
    if panicked.is_some() {
        return None;
    }
    catch_unwind(AssertUnwindSafe(|| items.next())).unwrap_or_else(|panic| {
        *panicked = Some(panic);
        None
    })
}

/// A caught panic's payload.
type Panic = Box<dyn Any + Send>;

impl<In> Clone for Input<In> {
    fn clone(&self) -> Self {
        Self::new(Arc::clone(&self.link))
    }
}

impl<In> fmt::Debug for Input<In> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Input").field("closed", &self.is_closed()).finish_non_exhaustive()
    }
}

impl PushFailure {
    fn into_error<T>(self, item: T) -> PushError<T> {
        match self {
            Self::Full => PushError::Full(item),
            Self::Timeout => PushError::Timeout(item),
            Self::Cancelled => PushError::Cancelled(item),
        }
    }
}
