//! A cooperative, single-threaded way to run stages over rings: the bare-metal pipeline.
//!
//! Each [`StageDriver`] owns one stage and moves items from an input ([`Source`]) through the
//! stage into an output ([`Queue`]) when its [`poll`](StageDriver::poll) is called, applying
//! the output's water marks and the stage's [`Overflow`] policy with the same
//! [`Overflow::push`] the std runtime uses. A main loop calls `poll` on each driver in turn; an
//! interrupt handler can own the [`Producer`](crate::ring::spsc::Producer) of the first ring.
//!
//! Under [`Overflow::Block`] an output that must wait is *held* in the driver (in order, in a
//! fixed-size buffer of `H` items) and the driver takes no new input until everything held
//! has gone downstream: backpressure reaches the input ring, and from there the producer.
//!
//! Nothing is lost silently. For every driver, at any time:
//!
//! - `received = completed + failed` (each failed input's error goes to `on_error`);
//! - `emitted = delivered + dropped_newest + rejected + held_overflow + held`, where every
//!   dropped, rejected or overflowing item goes to `on_discard` with its [`Discard`] reason,
//!   and `dropped_oldest` counts delivered items later evicted downstream (also handed to
//!   `on_discard`).
//!
//! # Examples
//!
//! ```
//! use backflow_core::driver::{Discard, Sink, StageDriver};
//! use backflow_core::ring::spsc::ArrayRing;
//! use backflow_core::{Overflow, WaterMarks, stage};
//!
//! let mut input = ArrayRing::<u32, 8>::new();
//! let mut doubled = ArrayRing::<u32, 4>::new();
//! let mut double = StageDriver::<_, u32, 4>::new(
//!     stage::map(|x: u32| x * 2),
//!     WaterMarks::for_capacity(4)?,
//!     Overflow::Block,
//! );
//! let mut total = 0;
//! let mut sum = StageDriver::<_, u32, 1>::new(|x: u32| x, WaterMarks::for_capacity(1)?, Overflow::Block);
//!
//! let (mut tx, _) = input.split();
//! assert_eq!(tx.push_slice(&[1, 2, 3, 4, 5]), 5);
//! let mut no_discard = |_: u32, _: Discard| unreachable!();
//! // Done when the rings are empty and no driver holds an item back.
//! while !input.is_empty() || !doubled.is_empty() || double.held() > 0 {
//!     double.poll(&mut input, &mut doubled, 16, &mut no_discard, &mut |_| {});
//!     sum.poll(&mut doubled, &mut Sink(|x| total += x), 16, &mut no_discard, &mut |_| {});
//! }
//! assert_eq!(total, 30);
//! assert_eq!(double.stats().received, 5);
//! # Ok::<(), backflow_core::ConfigError>(())
//! ```

use core::fmt;

use crate::Overflow;
use crate::overflow::{DropReason, PushOutcome, Queue};
use crate::ring::spsc;
use crate::ring::{PushError, Storage};
use crate::stage::Stage;
use crate::water_marks::{Pressure, WaterMarks};

/// Where a driver takes its input from.
///
/// Implemented for an SPSC [`Consumer`](spsc::Consumer) (the other half may live in an
/// interrupt handler), for an SPSC ring owned by the driver loop, and for a shared MPMC ring.
///
/// # Examples
///
/// ```
/// use backflow_core::driver::Source;
/// use backflow_core::ring::spsc::ArrayRing;
///
/// let mut ring = ArrayRing::<u8, 2>::new();
/// ring.split().0.try_push(1).unwrap();
/// assert_eq!(Source::pop(&mut ring), Some(1));
/// ```
pub trait Source<T> {
    /// Takes the oldest item, if any.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::driver::Source;
    /// use backflow_core::ring::spsc::ArrayRing;
    ///
    /// let mut ring = ArrayRing::<u8, 2>::new();
    /// assert_eq!(Source::pop(&mut ring), None);
    /// ```
    fn pop(&mut self) -> Option<T>;
}

impl<T, S, R> Source<T> for spsc::Consumer<R>
where
    R: core::ops::Deref<Target = spsc::Ring<T, S>>,
    S: Storage<Slot = spsc::Slot<T>>,
{
    fn pop(&mut self) -> Option<T> {
        self.try_pop().ok()
    }
}

impl<T, S: Storage<Slot = spsc::Slot<T>>> Source<T> for spsc::Ring<T, S> {
    fn pop(&mut self) -> Option<T> {
        self.split().1.try_pop().ok()
    }
}

#[cfg(target_has_atomic = "ptr")]
impl<T, S: Storage<Slot = crate::ring::mpmc::Slot<T>>> Source<T>
    for &crate::ring::mpmc::Ring<T, S>
{
    fn pop(&mut self) -> Option<T> {
        self.try_pop().ok()
    }
}

/// The end of a pipeline as a [`Queue`]: every item goes to the closure, which never refuses.
///
/// # Examples
///
/// ```
/// use backflow_core::driver::Sink;
/// use backflow_core::overflow::Queue;
///
/// let mut seen = Vec::new();
/// let mut sink = Sink(|x: u8| seen.push(x));
/// sink.try_push(3).unwrap();
/// drop(sink);
/// assert_eq!(seen, [3]);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Sink<F>(pub F);

impl<T, F: FnMut(T)> Queue<T> for Sink<F> {
    fn try_push(&mut self, item: T) -> Result<(), PushError<T>> {
        (self.0)(item);
        Ok(())
    }

    fn force_push(&mut self, item: T) -> Option<T> {
        (self.0)(item);
        None
    }

    fn len(&self) -> usize {
        0
    }
}

/// Why a driver let go of an item without delivering it.
///
/// # Examples
///
/// ```
/// use backflow_core::driver::Discard;
/// use backflow_core::overflow::DropReason;
///
/// assert_eq!(Discard::Dropped(DropReason::Newest).to_string(), "dropped as newest");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Discard {
    /// Dropped by the overflow policy ([`Overflow::DropOldest`] or [`Overflow::DropNewest`]).
    Dropped(DropReason),
    /// Refused by a full output under [`Overflow::Fail`].
    Rejected,
    /// Held back under [`Overflow::Block`] with the hold buffer already full: the stage emitted
    /// more outputs for one input than the driver's `H`.
    HoldFull,
}

impl fmt::Display for Discard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dropped(reason) => reason.fmt(f),
            Self::Rejected => f.write_str("rejected by a full output"),
            Self::HoldFull => f.write_str("hold buffer full"),
        }
    }
}

/// What one driver has done so far; see the [module docs](self) for the identities.
///
/// # Examples
///
/// ```
/// let stats = backflow_core::driver::StageStats::default();
/// assert_eq!(stats.received, 0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageStats {
    /// Inputs taken from the source.
    pub received: u64,
    /// Inputs the stage processed without error.
    pub completed: u64,
    /// Inputs the stage failed on.
    pub failed: u64,
    /// Outputs the stage emitted (including on flush).
    pub emitted: u64,
    /// Outputs pushed into the output queue.
    pub delivered: u64,
    /// Delivered items evicted from the output queue under [`Overflow::DropOldest`].
    pub dropped_oldest: u64,
    /// Outputs dropped under [`Overflow::DropNewest`].
    pub dropped_newest: u64,
    /// Outputs refused under [`Overflow::Fail`].
    pub rejected: u64,
    /// Outputs that found the hold buffer full.
    pub held_overflow: u64,
    /// Pressure transitions of the output queue (on and off), as counted by its
    /// [`Pressure`].
    pub pressure_transitions: u64,
}

/// What one [`StageDriver::poll`] did.
///
/// # Examples
///
/// ```
/// let poll = backflow_core::driver::Poll::default();
/// assert!(!poll.blocked);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Poll {
    /// Inputs taken.
    pub taken: usize,
    /// Whether the driver ended the call holding items it could not deliver (backpressure).
    pub blocked: bool,
}

/// Runs one stage between a [`Source`] and a [`Queue`], holding up to `H` outputs that must
/// wait; see the [module docs](self).
///
/// # Examples
///
/// ```
/// use backflow_core::driver::{Sink, StageDriver};
/// use backflow_core::ring::spsc::ArrayRing;
/// use backflow_core::{Overflow, WaterMarks};
///
/// let mut input = ArrayRing::<u8, 4>::new();
/// input.split().0.push_slice(&[1, 2]);
/// let mut driver = StageDriver::<_, u8, 1>::new(|x: u8| x + 1, WaterMarks::for_capacity(1)?, Overflow::Block);
/// let mut out = Vec::new();
/// let poll = driver.poll(&mut input, &mut Sink(|x| out.push(x)), 8, &mut |_, _| {}, &mut |_| {});
/// assert_eq!((poll.taken, out), (2, vec![2, 3]));
/// # Ok::<(), backflow_core::ConfigError>(())
/// ```
pub struct StageDriver<St, Out, const H: usize> {
    stage: St,
    overflow: Overflow,
    pressure: Pressure,
    held: heapless::Deque<Out, H>,
    stats: StageStats,
}

impl<St, Out, const H: usize> StageDriver<St, Out, H> {
    /// A driver for `stage`, pushing into an output whose water marks are `marks`, under
    /// `overflow`.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::driver::StageDriver;
    /// use backflow_core::{Overflow, WaterMarks};
    ///
    /// let driver = StageDriver::<_, u8, 2>::new(|x: u8| x, WaterMarks::for_capacity(16)?, Overflow::DropNewest);
    /// assert_eq!(driver.held(), 0);
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub fn new(stage: St, marks: WaterMarks, overflow: Overflow) -> Self {
        const { assert!(H > 0, "a driver needs room to hold at least one output") };
        Self {
            stage,
            overflow,
            pressure: Pressure::new(marks),
            held: heapless::Deque::new(),
            stats: StageStats::default(),
        }
    }

    /// Counts so far (a copy; the pressure transitions come from [`pressure`](Self::pressure)).
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::driver::StageDriver;
    /// use backflow_core::{Overflow, WaterMarks};
    ///
    /// let driver = StageDriver::<_, u8, 1>::new(|x: u8| x, WaterMarks::for_capacity(4)?, Overflow::Block);
    /// assert_eq!(driver.stats().emitted, 0);
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub const fn stats(&self) -> StageStats {
        StageStats { pressure_transitions: self.pressure.transitions(), ..self.stats }
    }

    /// Outputs held back, waiting for room downstream.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::driver::StageDriver;
    /// use backflow_core::{Overflow, WaterMarks};
    ///
    /// let driver = StageDriver::<_, u8, 1>::new(|x: u8| x, WaterMarks::for_capacity(4)?, Overflow::Block);
    /// assert_eq!(driver.held(), 0);
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// The output's pressure state.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::driver::StageDriver;
    /// use backflow_core::{Overflow, WaterMarks};
    ///
    /// let driver = StageDriver::<_, u8, 1>::new(|x: u8| x, WaterMarks::for_capacity(4)?, Overflow::Block);
    /// assert!(!driver.pressure().is_on());
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub const fn pressure(&self) -> &Pressure {
        &self.pressure
    }

    /// Moves up to `budget` inputs through the stage. Held outputs go first; no new input is
    /// taken while any is held. Items the policy drops or rejects go to `on_discard`; errors of
    /// inputs the stage failed on go to `on_error`.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::driver::{Discard, StageDriver};
    /// use backflow_core::overflow::DropReason;
    /// use backflow_core::ring::spsc::ArrayRing;
    /// use backflow_core::{Overflow, WaterMarks};
    ///
    /// let mut input = ArrayRing::<u8, 4>::new();
    /// input.split().0.push_slice(&[1, 2, 3]);
    /// let mut output = ArrayRing::<u8, 2>::new();
    /// let mut driver = StageDriver::<_, u8, 1>::new(|x: u8| x, WaterMarks::for_capacity(2)?, Overflow::DropNewest);
    /// let mut dropped = Vec::new();
    /// driver.poll(&mut input, &mut output, 8, &mut |x, why| dropped.push((x, why)), &mut |_| {});
    /// assert_eq!(dropped, [(3, Discard::Dropped(DropReason::Newest))]);
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub fn poll<In, Src, Q>(
        &mut self,
        input: &mut Src,
        output: &mut Q,
        budget: usize,
        on_discard: &mut impl FnMut(Out, Discard),
        on_error: &mut impl FnMut(St::Error),
    ) -> Poll
    where
        St: Stage<In, Out = Out>,
        Src: Source<In>,
        Q: Queue<Out>,
    {
        let Self { stage, overflow, pressure, held, stats } = self;
        let mut out =
            Output { overflow: *overflow, pressure, held, stats, queue: output, on_discard };

        out.retry_held();
        let mut taken = 0;
        while taken < budget && out.held.is_empty() {
            let Some(item) = input.pop() else { break };
            taken += 1;
            out.stats.received += 1;
            match stage.process(item, &mut |x| out.offer(x)) {
                Ok(()) => out.stats.completed += 1,
                Err(error) => {
                    out.stats.failed += 1;
                    on_error(error);
                }
            }
        }
        Poll { taken, blocked: !out.held.is_empty() }
    }

    /// End of stream: flushes the stage into the output (through the policy, like `poll`).
    ///
    /// # Errors
    ///
    /// The stage's flush error.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::driver::{Sink, StageDriver};
    /// use backflow_core::ring::spsc::ArrayRing;
    /// use backflow_core::{Overflow, WaterMarks, stage};
    ///
    /// let mut input = ArrayRing::<u32, 4>::new();
    /// input.split().0.push_slice(&[1, 2, 3]);
    /// let mut sum = StageDriver::<_, u32, 1>::new(stage::fold(0, |a: u32, x: u32| a + x), WaterMarks::for_capacity(1)?, Overflow::Block);
    /// let mut out = Vec::new();
    /// sum.poll(&mut input, &mut Sink(|x| out.push(x)), 8, &mut |_, _| {}, &mut |_| {});
    /// sum.flush(&mut Sink(|x| out.push(x)), &mut |_, _| {})?;
    /// assert_eq!(out, [6]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn flush<In, Q>(
        &mut self,
        output: &mut Q,
        on_discard: &mut impl FnMut(Out, Discard),
    ) -> Result<(), St::Error>
    where
        St: Stage<In, Out = Out>,
        Q: Queue<Out>,
    {
        let Self { stage, overflow, pressure, held, stats } = self;
        let mut out =
            Output { overflow: *overflow, pressure, held, stats, queue: output, on_discard };
        out.retry_held();
        stage.flush(&mut |x| out.offer(x))
    }
}

impl<St, Out, const H: usize> fmt::Debug for StageDriver<St, Out, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StageDriver")
            .field("overflow", &self.overflow)
            .field("pressure", &self.pressure)
            .field("held", &self.held.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// The output side of one poll: the queue, the policy and the driver's bookkeeping.
struct Output<'a, Out, Q, D, const H: usize> {
    overflow: Overflow,
    pressure: &'a mut Pressure,
    held: &'a mut heapless::Deque<Out, H>,
    stats: &'a mut StageStats,
    queue: &'a mut Q,
    on_discard: &'a mut D,
}

impl<Out, Q: Queue<Out>, D: FnMut(Out, Discard), const H: usize> Output<'_, Out, Q, D, H> {
    /// A fresh output of the stage: delivered, or held behind anything already held (order is
    /// kept).
    fn offer(&mut self, item: Out) {
        self.stats.emitted += 1;
        let item = if self.held.is_empty() {
            match self.push(item) {
                Ok(()) => return,
                Err(item) => item,
            }
        } else {
            item
        };
        if let Err(item) = self.held.push_back(item) {
            self.stats.held_overflow += 1;
            (self.on_discard)(item, Discard::HoldFull);
        }
    }

    /// Delivers held items, oldest first, until one must wait again.
    fn retry_held(&mut self) {
        while let Some(item) = self.held.pop_front() {
            if let Err(item) = self.push(item) {
                // Cannot fail: `pop_front` just freed the slot.
                let restored = self.held.push_front(item);
                debug_assert!(restored.is_ok());
                return;
            }
        }
    }

    /// One push under the policy; `Err` hands back an item that must wait.
    fn push(&mut self, item: Out) -> Result<(), Out> {
        self.pressure.observe(self.queue.len());
        match self.overflow.push(self.queue, item, self.pressure.is_on()) {
            PushOutcome::Pushed => self.stats.delivered += 1,
            PushOutcome::Dropped { item, reason: DropReason::Oldest } => {
                self.stats.delivered += 1;
                self.stats.dropped_oldest += 1;
                (self.on_discard)(item, Discard::Dropped(DropReason::Oldest));
            }
            PushOutcome::Dropped { item, reason: DropReason::Newest } => {
                self.stats.dropped_newest += 1;
                (self.on_discard)(item, Discard::Dropped(DropReason::Newest));
            }
            PushOutcome::Rejected(item) => {
                self.stats.rejected += 1;
                (self.on_discard)(item, Discard::Rejected);
            }
            PushOutcome::MustWait(item) => return Err(item),
        }
        Ok(())
    }
}
