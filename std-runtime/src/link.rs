//! A link: the bounded queue in front of a stage (or of the output), with its water marks,
//! overflow policy, wake-up signals and the accounting of every item that enters it.
//!
//! The decisions are the core's: [`Overflow::push`] says what a push does, [`Pressure`] turns
//! pressure on and off with hysteresis. This module only adds threads to them: a lock around
//! the `Pressure` machine (taken only when a transition is possible), an atomic flag that
//! pushers read, and [`Signal`]s to park on.

use std::collections::VecDeque;
use std::iter;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use backflow_core::metrics::Counter;
use backflow_core::overflow::{self, Overflow, PushOutcome};
use backflow_core::ring::CapacityError;
use backflow_core::{Pressure, WaterMarks};
use crossbeam_utils::CachePadded;

use crate::control::{Control, Wake};
use crate::event::Event;
use crate::hooks::{DropHook, DropReason, Dropped};
use crate::slots::Slots;
use crate::stats::StageCounters;
use crate::wait::{Signal, wait_until};

mod tasks;

/// An item in flight with its timestamps (nanoseconds from [`Control::now`]); both are `0`
/// unless the item is one of the sampled ones.
#[derive(Debug)]
pub(crate) struct Envelope<T> {
    pub(crate) item: T,
    /// When the item entered the pipeline (for end-to-end latency at the sink).
    pub(crate) born: u64,
    /// When the item was put in the queue it is in (for queue wait).
    pub(crate) queued: u64,
}

/// The per-handle state of an [`Input`](crate::Input): written only by that handle's thread.
#[derive(Debug, Default)]
pub(crate) struct HandleState {
    /// Set while a push is in progress, so that the first stage does not finish under it.
    pub(crate) active: AtomicBool,
    /// Items this handle put into the pipeline (pushed, or dropped by the overflow policy).
    pub(crate) received: AtomicU64,
}

/// The input handles of a pipeline: how the first link knows it has received its last item.
#[derive(Debug, Default)]
pub(crate) struct Handles {
    pub(crate) closed: AtomicBool,
    pub(crate) list: Mutex<Vec<Arc<CachePadded<HandleState>>>>,
}

impl Handles {
    /// Registers a new handle.
    pub(crate) fn register(&self) -> Arc<CachePadded<HandleState>> {
        let state = Arc::new(CachePadded::new(HandleState::default()));
        self.list.lock().unwrap_or_else(PoisonError::into_inner).push(Arc::clone(&state));
        state
    }

    /// Closed, and no push in progress: every item that will ever arrive is in the ring.
    fn all_done(&self) -> bool {
        if !self.closed.load(Ordering::Acquire) {
            return false;
        }
        // Pairs with the fence after `active = true` in `Input::push`: either that push sees
        // `closed`, or this load sees it active (or finished, with its item in the ring).
        fence(Ordering::SeqCst);
        let list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        list.iter().all(|handle| !handle.active.load(Ordering::Acquire))
    }

    /// Items received through every handle.
    pub(crate) fn received(&self) -> u64 {
        let list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        list.iter().map(|handle| handle.received.load(Ordering::Relaxed)).sum()
    }
}

/// How a blocking push ended without pushing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The pipeline was cancelled, or the consumer is gone.
    Cancelled,
    /// The deadline passed.
    Timeout,
}

/// The queue in front of one stage (or of the output handle).
pub(crate) struct Link<T> {
    ring: Slots<Envelope<T>>,
    overflow: Overflow,
    marks: WaterMarks,
    pressure: Mutex<Pressure>,
    pressure_on: AtomicBool,
    /// Consumers park here while the ring is empty.
    items: Signal,
    /// Blocked producers park here while pressure is on.
    room: Signal,
    /// Upstream workers that have not finished; `0` for the first link, which has `handles`.
    upstream_left: AtomicUsize,
    pub(crate) handles: Option<Handles>,
    /// Set when the consumer will never pop again (the output handle was dropped).
    consumer_gone: AtomicBool,
    /// The stage this link feeds, for hooks and accounting.
    stage: Arc<str>,
    counters: Arc<StageCounters>,
    on_drop: Option<DropHook<T>>,
    pub(crate) control: Arc<Control>,
}

/// How a link is set up.
pub(crate) struct LinkSpec<T> {
    pub(crate) capacity: usize,
    pub(crate) marks: WaterMarks,
    pub(crate) overflow: Overflow,
    pub(crate) upstream: usize,
    /// Exactly one worker pushes and exactly one thread pops: an SPSC ring will do.
    pub(crate) single: bool,
    pub(crate) handles: bool,
    pub(crate) stage: Arc<str>,
    pub(crate) counters: Arc<StageCounters>,
    pub(crate) on_drop: Option<DropHook<T>>,
}

impl<T> Link<T> {
    /// A link as specified, its ring allocated.
    ///
    /// # Errors
    ///
    /// The ring's capacity is out of range, or its slots could not be allocated.
    pub(crate) fn new(spec: LinkSpec<T>, control: Arc<Control>) -> Result<Self, CapacityError> {
        Ok(Self {
            ring: Slots::new(spec.capacity, spec.single)?,
            overflow: spec.overflow,
            marks: spec.marks,
            pressure: Mutex::new(Pressure::new(spec.marks)),
            pressure_on: AtomicBool::new(false),
            items: Signal::new(),
            room: Signal::new(),
            upstream_left: AtomicUsize::new(spec.upstream),
            handles: spec.handles.then(Handles::default),
            consumer_gone: AtomicBool::new(false),
            stage: spec.stage,
            counters: spec.counters,
            on_drop: spec.on_drop,
            control,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.ring.len()
    }

    pub(crate) fn capacity(&self) -> usize {
        self.ring.capacity()
    }

    /// Whether pressure is on, and the number of transitions so far.
    pub(crate) fn pressure(&self) -> (bool, u64) {
        let pressure = self.pressure.lock().unwrap_or_else(PoisonError::into_inner);
        (pressure.is_on(), pressure.transitions())
    }

    /// Whether producers should stop waiting: cancelled, or nobody will ever pop.
    #[inline]
    fn stopping(&self) -> bool {
        self.control.is_cancelled() || self.consumer_gone.load(Ordering::Relaxed)
    }

    /// Every item that will ever arrive has arrived.
    pub(crate) fn finished(&self) -> bool {
        if self.upstream_left.load(Ordering::Acquire) != 0 {
            return false;
        }
        self.handles.as_ref().is_none_or(Handles::all_done)
    }

    /// One upstream worker has finished pushing; the last one finishes the link.
    pub(crate) fn upstream_done(&self) {
        if self.upstream_left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.items.notify();
        }
    }

    /// The consumer will never pop again: producers stop waiting, what is queued is abandoned,
    /// and so is everything pushed from now on.
    pub(crate) fn consumer_gone(&self) {
        self.consumer_gone.store(true, Ordering::SeqCst);
        self.room.notify();
        self.sweep();
    }

    pub(crate) fn is_orphaned(&self) -> bool {
        self.consumer_gone.load(Ordering::SeqCst)
    }

    /// Wakes every waiter on this link (after a cancel).
    pub(crate) fn wake_all(&self) {
        self.items.notify();
        self.room.notify();
    }

    /// Turns pressure on if the fill reached the high mark.
    fn raise(&self) {
        if !self.pressure_on.load(Ordering::Relaxed) && self.ring.len() >= self.marks.high() {
            let mut pressure = self.pressure.lock().unwrap_or_else(PoisonError::into_inner);
            let turned_on = pressure.observe(self.ring.len()).is_some() && pressure.is_on();
            self.pressure_on.store(pressure.is_on(), Ordering::SeqCst);
            if turned_on {
                // Under the lock, so that on and off are announced in order.
                self.control.emit(&Event::PressureOn { stage: &self.stage });
            }
        }
    }

    /// Turns pressure off if the fill fell to the low mark; returns whether it did. Does not
    /// notify (it runs inside `park_until` of the `room` signal).
    fn relieve(&self) -> bool {
        if !self.pressure_on.load(Ordering::Acquire) {
            return false;
        }
        let mut pressure = self.pressure.lock().unwrap_or_else(PoisonError::into_inner);
        let turned_off = pressure.observe(self.ring.len()).is_some() && !pressure.is_on();
        self.pressure_on.store(pressure.is_on(), Ordering::SeqCst);
        if turned_off {
            self.control.emit(&Event::PressureOff { stage: &self.stage });
        }
        turned_off
    }

    /// Pops up to `max` items into `buf`; returns how many.
    pub(crate) fn pop_into(&self, buf: &mut VecDeque<Envelope<T>>, max: usize) -> usize {
        let popped = self.ring.pop_each(max, |envelope| buf.push_back(envelope));
        if popped > 0 {
            self.popped();
        }
        popped
    }

    /// After a pop: turns pressure off if the fill fell to the low mark, and wakes the
    /// producers waiting for that.
    fn popped(&self) {
        // Pairs with the fence a blocked producer issues after raising pressure: either it
        // sees this pop's fill, or this load sees pressure on.
        fence(Ordering::SeqCst);
        if self.pressure_on.load(Ordering::Relaxed) && self.relieve() {
            self.room.notify();
        }
    }

    /// Waits until the ring has an item, the link is finished, the pipeline is cancelled, or
    /// `deadline`.
    pub(crate) fn wait_for_items(&self, deadline: Option<Instant>) {
        let control = &self.control;
        wait_until(
            &self.items,
            control.strategy,
            || !self.ring.is_empty() || control.is_cancelled() || self.finished(),
            deadline,
        );
    }

    /// Waits until no push through an input handle is in progress. Called once the handles
    /// are closed (no push can start), before the final sweep: whatever a push was putting in
    /// is then in the ring, and counted.
    pub(crate) fn wait_for_pushes(&self) {
        if let Some(handles) = &self.handles {
            wait_until(&self.items, self.control.strategy, || handles.all_done(), None);
        }
    }

    /// Free slots a push could fill now without waiting: none while pressure is on under
    /// `Block`.
    pub(crate) fn room(&self) -> usize {
        if self.may_run() { self.capacity().saturating_sub(self.len()) } else { 0 }
    }

    /// Waits until [`room`](Self::room) is not zero, or `deadline`, or the pipeline stops;
    /// returns the room then.
    pub(crate) fn await_room(&self, deadline: Option<Instant>) -> usize {
        loop {
            if self.stopping() {
                return 0;
            }
            let room = self.room();
            if room > 0 || self.wait_for_room(deadline).is_err() {
                return if self.stopping() { 0 } else { self.room() };
            }
        }
    }

    /// Waits until pressure is off (the fill is back at the low mark), or `deadline`.
    fn wait_for_room(&self, deadline: Option<Instant>) -> Result<(), Stop> {
        self.raise();
        let ready = || {
            self.stopping() || {
                self.relieve();
                !self.pressure_on.load(Ordering::Acquire)
            }
        };
        let woke = wait_until(&self.room, self.control.strategy, ready, deadline);
        // Pass the news on: other producers may be parked on the same condition.
        self.room.notify();
        if self.stopping() {
            Err(Stop::Cancelled)
        } else if woke {
            Ok(())
        } else {
            Err(Stop::Timeout)
        }
    }

    /// Hands a dropped or abandoned item to the drop hook (which does not unwind: see
    /// [`Control::discard`]).
    fn discard(&self, item: T, reason: DropReason) {
        self.control.emit(&Event::Dropped { stage: &self.stage, reason });
        let dropped = Dropped { stage: &self.stage, reason, item };
        self.control.discard(self.on_drop.as_ref(), dropped);
    }

    /// Counts `item` as received and abandoned (it reached this link after a cancel).
    pub(crate) fn abandon(&self, item: T) {
        self.counters.received.increment();
        self.counters.abandoned.increment();
        self.discard(item, DropReason::Abandoned);
    }

    /// Whether a run of items may go into the ring without consulting the overflow policy
    /// item by item, for as long as there is room: every policy pushes while there is room,
    /// except `Block` while pressure is on.
    #[inline]
    fn may_run(&self) -> bool {
        self.overflow != Overflow::Block || !self.pressure_on.load(Ordering::Relaxed)
    }

    /// Pushes items for an input handle under the link's policy, in order, waiting for room
    /// under `Block` until `deadline` (`Some(now)`: do not wait). Does not wake the consumers
    /// unless it has to wait; call [`settle`](Self::settle) after a push or a run of them.
    /// Returns how many items the link received (pushed, or dropped by the policy), and
    /// stops at the first item it could not take.
    ///
    /// # Errors
    ///
    /// That item back, with why: the queue is full (under `Fail`, or with no time to wait),
    /// the wait timed out, or the pipeline stopped.
    pub(crate) fn offer(
        &self,
        envelopes: impl Iterator<Item = Envelope<T>>,
        deadline: Option<Instant>,
    ) -> (u64, Result<(), (Envelope<T>, PushFailure)>) {
        let mut received = 0;
        // With an SPSC ring this holds the producer's lock; it is let go while waiting and
        // around drop hooks (which may push into the pipeline themselves).
        let mut queue = self.ring.pusher();
        let mut envelopes = envelopes;
        if self.may_run() {
            received += queue.push_run(&mut envelopes) as u64;
        }
        for mut envelope in envelopes {
            loop {
                let pressure_on = self.pressure_on.load(Ordering::Relaxed);
                match self.overflow.push(&mut queue, envelope, pressure_on) {
                    PushOutcome::Pushed => break,
                    PushOutcome::Dropped { item, reason } => {
                        drop(queue);
                        self.drop_by_policy(item.item, reason);
                        queue = self.ring.pusher();
                        break;
                    }
                    PushOutcome::Rejected(back) => {
                        return (received, Err((back, PushFailure::Full)));
                    }
                    PushOutcome::MustWait(back) => {
                        envelope = back;
                        drop(queue);
                        self.settle();
                        if deadline.is_some_and(|d| d <= Instant::now()) {
                            return (received, Err((envelope, PushFailure::Full)));
                        }
                        let failure = match self.wait_for_room(deadline) {
                            Ok(()) => None,
                            Err(Stop::Timeout) => Some(PushFailure::Timeout),
                            Err(Stop::Cancelled) => Some(PushFailure::Cancelled),
                        };
                        if let Some(failure) = failure {
                            return (received, Err((envelope, failure)));
                        }
                        queue = self.ring.pusher();
                    }
                }
            }
            received += 1;
        }
        (received, Ok(()))
    }

    /// After pushes: turns pressure on if the fill reached the high mark, and wakes parked
    /// consumers.
    pub(crate) fn settle(&self) {
        self.raise();
        self.items.notify();
    }

    /// Counts an item the overflow policy dropped and hands it to the drop hook.
    fn drop_by_policy(&self, item: T, reason: overflow::DropReason) {
        match reason {
            overflow::DropReason::Oldest => self.counters.dropped_oldest.increment(),
            overflow::DropReason::Newest => self.counters.dropped_newest.increment(),
        }
        self.discard(item, reason.into());
    }

    /// Delivers a worker's batch of outputs under the link's policy, waiting under `Block`.
    /// Every item is received (pushed, or dropped by the policy). If the pipeline stops while
    /// waiting, the rest are received and abandoned and this returns `false`; if the consumer
    /// is gone, everything is received and abandoned and the worker may go on.
    pub(crate) fn deliver(&self, batch: &mut VecDeque<Envelope<T>>) -> bool {
        let mut queue = self.ring.pusher();
        // Counted once per batch, and also if a drop hook panics on the way.
        let mut received = Tally { counter: &self.counters.received, n: 0 };
        if self.may_run() && !self.consumer_gone.load(Ordering::Relaxed) {
            received.n += queue.push_run(&mut iter::from_fn(|| batch.pop_front())) as u64;
        }
        'items: while let Some(mut envelope) = batch.pop_front() {
            if self.consumer_gone.load(Ordering::Relaxed) {
                batch.push_front(envelope);
                break;
            }
            loop {
                let pressure_on = self.pressure_on.load(Ordering::Relaxed);
                match self.overflow.push(&mut queue, envelope, pressure_on) {
                    PushOutcome::Pushed => {
                        received.n += 1;
                        break;
                    }
                    PushOutcome::Dropped { item, reason } => {
                        received.n += 1;
                        drop(queue);
                        self.drop_by_policy(item.item, reason);
                        queue = self.ring.pusher();
                        break;
                    }
                    // `Fail` is only allowed on the first stage, fed by handles, not workers.
                    PushOutcome::Rejected(back) | PushOutcome::MustWait(back) => {
                        envelope = back;
                        // Consumers may be parked although this batch already filled the ring.
                        self.items.notify();
                        if self.wait_for_room(None).is_err() {
                            batch.push_front(envelope);
                            break 'items;
                        }
                    }
                }
            }
        }
        drop(received);
        // `settle` issues a SeqCst fence: either the consumer's `sweep` (after it set
        // `consumer_gone`) sees the items just pushed, or the load below sees it gone.
        self.settle();
        let gone = self.consumer_gone.load(Ordering::Relaxed);
        if gone {
            self.sweep();
        }
        let stopped = !batch.is_empty() && !gone;
        for envelope in batch.drain(..) {
            self.abandon(envelope.item);
        }
        !stopped
    }

    /// Abandons an item this link already received (taken by a worker that then stopped).
    pub(crate) fn give_up(&self, item: T) {
        self.counters.abandoned.increment();
        self.discard(item, DropReason::Abandoned);
    }

    /// Pops every item left in the ring (after the consumers stopped) and abandons it: counted,
    /// and handed to the drop hook.
    pub(crate) fn sweep(&self) {
        while let Some(envelope) = self.ring.try_pop() {
            self.give_up(envelope.item);
        }
    }

    /// Pops one item for the output handle, waiting for it; `None` once the link is finished
    /// and empty, or cancelled.
    pub(crate) fn pop_blocking(&self) -> Option<Envelope<T>> {
        loop {
            if let Some(envelope) = self.ring.try_pop() {
                self.popped();
                return Some(envelope);
            }
            if self.control.is_cancelled() || (self.finished() && self.ring.is_empty()) {
                return None;
            }
            self.wait_for_items(None);
        }
    }
}

/// Nothing is dropped silently: items still queued when the last owner lets go are
/// abandoned through the drop hook.
impl<T> Drop for Link<T> {
    fn drop(&mut self) {
        self.sweep();
    }
}

/// A count added to a counter when it goes out of scope, even by a panic.
struct Tally<'a> {
    counter: &'a Counter,
    n: u64,
}

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        self.counter.add(self.n);
    }
}

/// Why [`Link::offer`] handed the item back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushFailure {
    Full,
    Timeout,
    Cancelled,
}

/// What the pipeline needs to see of a link, whatever its item type.
pub(crate) trait LinkView: Wake {
    fn len(&self) -> usize;
    fn capacity(&self) -> usize;
    fn pressure(&self) -> (bool, u64);
    fn sweep(&self);
    /// Sweeps only if the consumer is gone (a dropped output handle).
    fn sweep_orphaned(&self);
    fn handle_received(&self) -> u64;
}

impl<T: Send> Wake for Link<T> {
    fn wake_all(&self) {
        Link::wake_all(self);
    }
}

impl<T: Send> LinkView for Link<T> {
    fn len(&self) -> usize {
        Link::len(self)
    }

    fn capacity(&self) -> usize {
        Link::capacity(self)
    }

    fn pressure(&self) -> (bool, u64) {
        Link::pressure(self)
    }

    fn sweep(&self) {
        Link::sweep(self);
    }

    fn sweep_orphaned(&self) {
        if self.is_orphaned() {
            Link::sweep(self);
        }
    }

    fn handle_received(&self) -> u64 {
        self.handles.as_ref().map_or(0, Handles::received)
    }
}
