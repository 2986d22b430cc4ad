//! A link: the bounded queue in front of a stage (or of the output), with its water marks,
//! overflow policy, wake-up signals and the accounting of every item that enters it.
//!
//! The decisions are the core's: [`Overflow::push`] says what a push does, [`Pressure`] turns
//! pressure on and off with hysteresis. This module only adds threads to them: a lock around
//! the `Pressure` machine (taken only when a transition is possible), an atomic flag that
//! pushers read, and [`Signal`]s to park on.

use std::collections::VecDeque;
use std::iter;
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use backflow_core::metrics::Counter;
use backflow_core::overflow::{self, Overflow, PushOutcome, Queue};
use backflow_core::ring::{CapacityError, PushError};
use backflow_core::weight_budget::Admission;
use backflow_core::{Pressure, WaterMarks};

use crate::announce::Announcer;
use crate::batch::BATCH;
use crate::control::{Control, Culprit, Fatal, Wake};
use crate::event::Event;
use crate::hooks::{DropHook, DropReason, Dropped};
use crate::slots::{Pusher, Slots};
use crate::stats::StageCounters;
use crate::sync::{
    AtomicBool, AtomicU64, AtomicUsize, CachePadded, Mutex, Ordering, fence, this_thread, thread,
};
use crate::wait::{Signal, wait_until};
use crate::weight::Weight;

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
    /// Its weight while it is in a queue with a byte budget (see [`Weight`]): what was
    /// counted in, and is counted out when it leaves. `0` elsewhere.
    pub(crate) weight: usize,
}

/// The per-handle state of an [`Input`](crate::Input): written only by that handle's thread.
#[derive(Debug, Default)]
pub(crate) struct HandleState {
    /// Set while a push is in progress, so that the first stage does not finish under it.
    pub(crate) active: AtomicBool,
    /// The thread of the push in progress, or of the last one ([`this_thread`]).
    pub(crate) pusher: AtomicUsize,
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

    /// Whether a push through one of the handles is in progress on this thread (ending the
    /// pipeline here would wait for it).
    pub(crate) fn pushing_here(&self) -> bool {
        let here = this_thread();
        let list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        list.iter().any(|handle| {
            handle.active.load(Ordering::Acquire) && handle.pusher.load(Ordering::Relaxed) == here
        })
    }

    /// Items received through every handle.
    pub(crate) fn received(&self) -> u64 {
        let list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        list.iter().map(|handle| handle.received.load(Ordering::Relaxed)).sum()
    }
}

/// How long a push may wait for room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Patience {
    /// Not at all: no room now is [`PushFailure::Full`] (`try_push`, `send`'s poll).
    None,
    /// Until the deadline: no room by then is [`PushFailure::Timeout`], however near it was.
    Until(Instant),
    /// For as long as it takes.
    Forever,
}

impl Patience {
    /// Waiting until `deadline`; `None` is forever (a timeout past the end of time).
    pub(crate) fn until(deadline: Option<Instant>) -> Self {
        deadline.map_or(Self::Forever, Self::Until)
    }

    fn deadline(self) -> Option<Instant> {
        match self {
            Self::Until(deadline) => Some(deadline),
            Self::None | Self::Forever => None,
        }
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
    /// Pressure turned on (`true`) or off, announced after the pressure lock is let go.
    turned: Announcer<bool>,
    /// Consumers park here while the ring is empty.
    items: Signal,
    /// Blocked producers park here while pressure is on, the ring's next slot is taken (full,
    /// or its item claimed by a worker's run and not read yet), or their item's weight does
    /// not fit.
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
    /// The byte budget, if the stage has one: its water marks are then `marks`.
    weight: Option<Weight<T>>,
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
    /// A byte budget; its water marks replace `marks`.
    pub(crate) weight: Option<Weight<T>>,
}

impl<T> Link<T> {
    /// A link as specified, its ring allocated.
    ///
    /// # Errors
    ///
    /// The ring's capacity is out of range, or its slots could not be allocated.
    pub(crate) fn new(spec: LinkSpec<T>, control: Arc<Control>) -> Result<Self, CapacityError> {
        let marks = spec.weight.as_ref().map_or(spec.marks, |weight| weight.budget().marks());
        Ok(Self {
            ring: Slots::new(spec.capacity, spec.single)?,
            overflow: spec.overflow,
            marks,
            pressure: Mutex::new(Pressure::new(marks)),
            pressure_on: AtomicBool::new(false),
            turned: Announcer::new(),
            items: Signal::new(),
            room: Signal::new(),
            upstream_left: AtomicUsize::new(spec.upstream),
            handles: spec.handles.then(Handles::default),
            consumer_gone: AtomicBool::new(false),
            stage: spec.stage,
            counters: spec.counters,
            on_drop: spec.on_drop,
            control,
            weight: spec.weight,
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

    /// One more upstream worker will push (a worker added while the pipeline runs, counted in
    /// while another upstream worker has not finished: the link is not finished yet).
    pub(crate) fn upstream_added(&self) {
        self.upstream_left.fetch_add(1, Ordering::AcqRel);
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
    ///
    /// Another thread may have turned pressure on since the flag was read, and the fill
    /// fallen back to the low mark since: then this turns it off, and wakes the producers
    /// waiting for that (a producer that only tries to push never relieves pressure itself).
    /// Likewise, the consumers may have emptied the queue between the read of the fill that
    /// turned pressure on and the store of the flag, each pop reading the flag still off:
    /// then this turns it off again at once. Not called under a signal's lock.
    fn raise(&self) {
        if !self.pressure_on.load(Ordering::Relaxed) && self.fill() >= self.marks.high() {
            let mut pressure = self.pressure.lock().unwrap_or_else(PoisonError::into_inner);
            let turned = pressure.observe(self.fill()).is_some();
            self.pressure_on.store(pressure.is_on(), Ordering::SeqCst);
            if turned {
                // Posted under the lock, so that on and off are announced in order.
                self.turned.post(pressure.is_on());
            }
            let mut relieved = turned && !pressure.is_on();
            if turned && pressure.is_on() {
                // Pairs with the fence of `popped`: either a pop since the fill was read sees
                // pressure on (and relieves it), or this sees the fill that pop left.
                fence(Ordering::SeqCst);
                if pressure.observe(self.fill()).is_some() {
                    self.pressure_on.store(false, Ordering::SeqCst);
                    self.turned.post(false);
                    relieved = true;
                }
            }
            drop(pressure);
            if relieved {
                self.room.notify();
            }
            if turned {
                self.announce_pressure();
            }
        }
    }

    /// Announces pressure turned on or off, in order. Call it with no lock held: the event
    /// handler may take the stats (which read the pressure) or push into this very link.
    fn announce_pressure(&self) {
        let stage = &self.stage;
        self.turned.deliver(|on| {
            let event = if on { Event::PressureOn { stage } } else { Event::PressureOff { stage } };
            self.control.emit(&event);
        });
    }

    /// Turns pressure off if the fill fell to the low mark; returns whether it did. Neither
    /// notifies nor announces it (it runs inside `park_until` of the `room` signal, under its
    /// lock): the caller announces it with [`announce_pressure`](Self::announce_pressure).
    fn relieve(&self) -> bool {
        if !self.pressure_on.load(Ordering::Acquire) {
            return false;
        }
        let mut pressure = self.pressure.lock().unwrap_or_else(PoisonError::into_inner);
        let turned_off = pressure.observe(self.fill()).is_some() && !pressure.is_on();
        self.pressure_on.store(pressure.is_on(), Ordering::SeqCst);
        if turned_off {
            self.turned.post(false);
        }
        turned_off
    }

    /// Pops up to `max` items into `buf`; returns how many. With a byte budget, stops early
    /// once the items popped weigh a [`BATCH`]th of the budget (taking at least one), so that
    /// what a worker holds stays small beside what its queue holds.
    pub(crate) fn pop_into(&self, buf: &mut VecDeque<Envelope<T>>, max: usize) -> usize {
        let popped = match &self.weight {
            None => self.ring.pop_each(max, |envelope| buf.push_back(envelope)),
            Some(weight) => {
                let most = weight.budget().limit() / BATCH;
                let mut left = 0;
                let popped = self.ring.pop_while(max, |envelope| {
                    // No overflow: what is queued was counted in without overflowing.
                    left += envelope.weight;
                    buf.push_back(envelope);
                    left < most
                });
                weight.release(left);
                popped
            }
        };
        if popped > 0 {
            self.popped();
        }
        popped
    }

    /// Whether a consumer may run its work inside [`pop_each`](Self::pop_each): no producer
    /// ever pops from this queue (`DropOldest` evicts, a byte budget counts weights out), so an
    /// SPSC ring's consumer half may stay locked for the whole run.
    pub(crate) fn pops_in_place(&self) -> bool {
        self.weight.is_none() && self.overflow != Overflow::DropOldest
    }

    /// Pops up to `max` items, oldest first, into `f`; returns how many. `f` must not panic
    /// (see [`Slots::pop_each`]); only where [`pops_in_place`](Self::pops_in_place).
    ///
    /// Each item's slot is free once `f` gets the item, though the run goes on: producers
    /// parked with pressure off (for a slot the run held) are woken at once rather than after
    /// the run. That look has no fence, so it may miss one; the fenced
    /// [`popped`](Self::popped) after the run does not. Producers parked while pressure is
    /// on wait for the end of the run (waking them on every item that does not bring the
    /// fill to the low mark would only cost the run time).
    pub(crate) fn pop_each(&self, max: usize, mut f: impl FnMut(Envelope<T>)) -> usize {
        debug_assert!(self.pops_in_place());
        let popped = self.ring.pop_each(max, |envelope| {
            if self.room.has_sleepers() && !self.pressure_on.load(Ordering::Relaxed) {
                self.room.notify();
            }
            f(envelope);
        });
        if popped > 0 {
            self.popped();
        }
        popped
    }

    /// After a pop: turns pressure off if the fill fell to the low mark, and wakes the
    /// producers waiting for that, or, with pressure off, for the room or weight the pop left.
    fn popped(&self) {
        // Pairs with the fence a blocked producer issues after raising pressure: either it
        // sees this pop's fill, or this load sees pressure on.
        fence(Ordering::SeqCst);
        if self.pressure_on.load(Ordering::Relaxed) && self.relieve() {
            self.room.notify();
            self.announce_pressure();
        } else if !self.pressure_on.load(Ordering::Relaxed) {
            // Producers may be waiting with pressure off: for weight to leave, or for a slot
            // whose item this pop has just read. The fence above orders the reads. (While
            // pressure is on, none of them can go on: the one that turns it off wakes them.
            // This second load sees it off if a waiter's own check turned it off meanwhile.)
            self.room.notify_fenced();
        }
    }

    /// Waits until the ring has an item, the link is finished, the pipeline is cancelled, or
    /// `deadline`.
    pub(crate) fn wait_for_items(&self, deadline: Option<Instant>) {
        self.wait_for_items_or(deadline, || false);
    }

    /// [`wait_for_items`](Self::wait_for_items), also ending when `stop()` (checked like the
    /// rest of the condition: make it true, then [`wake_all`](Self::wake_all)).
    pub(crate) fn wait_for_items_or(&self, deadline: Option<Instant>, stop: impl Fn() -> bool) {
        let control = &self.control;
        wait_until(
            &self.items,
            control.strategy,
            || !self.ring.is_empty() || control.is_cancelled() || self.finished() || stop(),
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
    /// `Block`, nor, with a byte budget, while the queue is at its budget, nor while the next
    /// slot still holds an item a worker's run has not got to. At most this many: a run may
    /// also hold slots further on.
    pub(crate) fn room(&self) -> usize {
        let weighed_full = self.weight.as_ref().is_some_and(Weight::is_full);
        if self.may_run() && !weighed_full && !self.ring.is_full() {
            self.capacity().saturating_sub(self.len())
        } else {
            0
        }
    }

    /// Waits until [`room`](Self::room) is not zero, or `deadline`, or the pipeline stops;
    /// returns the room then.
    pub(crate) fn await_room(&self, deadline: Option<Instant>) -> usize {
        loop {
            if self.stopping() {
                return 0;
            }
            let room = self.room();
            if room > 0 || self.wait_for_room(deadline, 0).is_err() {
                return if self.stopping() { 0 } else { self.room() };
            }
        }
    }

    /// Waits until pressure is off (the fill is back at the low mark), the ring has room
    /// (a worker's run may hold the next slot, its item unread, while the fill is low) and,
    /// with a byte budget, an item of `weight` fits; or until `deadline`.
    fn wait_for_room(&self, deadline: Option<Instant>, weight: usize) -> Result<(), Stop> {
        self.raise();
        let ready = || self.room_for(weight);
        let woke = wait_until(&self.room, self.control.strategy, ready, deadline);
        // Pass the news on: other producers may be parked on the same condition.
        self.room.notify();
        self.announce_pressure();
        if self.stopping() {
            Err(Stop::Cancelled)
        } else if woke {
            Ok(())
        } else {
            Err(Stop::Timeout)
        }
    }

    /// The condition a producer waiting for room under `Block` waits for: the pipeline
    /// stopped, or pressure is off (relieved here if the fill is back at the low mark), the
    /// ring has room and an item of `weight` fits. Checked under the `room` signal's lock.
    fn room_for(&self, weight: usize) -> bool {
        self.stopping() || {
            self.relieve();
            !self.pressure_on.load(Ordering::Acquire) && self.fits(weight) && !self.ring.is_full()
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
    /// under `Block` as `patience` allows. Does not wake the consumers
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
        patience: Patience,
    ) -> (u64, Result<(), (Envelope<T>, PushFailure)>) {
        let mut received = 0;
        // With an SPSC ring this holds the producer's lock; it is let go while waiting and
        // around drop hooks (which may push into the pipeline themselves).
        let mut queue = self.ring.pusher();
        let mut envelopes = envelopes;
        let mut refused = None;
        if self.may_run() && self.weight.is_none() {
            let (pushed, back) = queue.push_run(&mut envelopes);
            received += pushed as u64;
            refused = back;
        }
        for mut envelope in refused.into_iter().chain(envelopes) {
            if self.weight.is_some() && !self.weigh(&mut envelope) {
                return (received, Err((envelope, PushFailure::Cancelled)));
            }
            loop {
                let outcome;
                (queue, outcome) = self.push_one(queue, envelope);
                match outcome {
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
                        let out_of_time = match patience {
                            Patience::None => Some(PushFailure::Full),
                            Patience::Until(d) if d <= Instant::now() => Some(PushFailure::Timeout),
                            Patience::Until(_) | Patience::Forever => None,
                        };
                        if let Some(failure) = out_of_time {
                            return (received, Err((envelope, failure)));
                        }
                        let failure = match self.wait_for_room(patience.deadline(), envelope.weight)
                        {
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

    /// [`offer`](Self::offer) for one envelope: while a run may go in (see
    /// [`may_run`](Self::may_run)), one try straight into the ring, and `offer` only if that
    /// finds it full.
    // NB: the try skips the iterator plumbing `offer` goes through: about 100 instructions of
    // a per-item `push` (benches/README.md, "In place: the stage over the ring's slots").
    pub(crate) fn offer_one(
        &self,
        envelope: Envelope<T>,
        patience: Patience,
    ) -> (u64, Result<(), (Envelope<T>, PushFailure)>) {
        if !self.may_run() || self.weight.is_some() {
            return self.offer(iter::once(envelope), patience);
        }
        let tried = self.ring.pusher().try_push(envelope);
        match tried {
            Ok(()) => (1, Ok(())),
            Err(PushError::Full(back)) => self.offer(iter::once(back), patience),
        }
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
        if self.weight.is_some() && !self.weigh_all(batch) {
            batch.drain(..).for_each(|envelope| self.abandon(envelope.item));
            return false;
        }
        let mut queue = self.ring.pusher();
        // Counted once per batch, and also if a drop hook panics on the way.
        let mut received = Tally { counter: &self.counters.received, n: 0 };
        if self.may_run() && !self.consumer_gone.load(Ordering::Relaxed) {
            received.n += match &self.weight {
                None => queue.push_from(batch) as u64,
                Some(weight) => Self::push_weighed_run(weight, &mut queue, batch),
            };
        }
        'items: while let Some(mut envelope) = batch.pop_front() {
            if self.consumer_gone.load(Ordering::Relaxed) {
                batch.push_front(envelope);
                break;
            }
            loop {
                let outcome;
                (queue, outcome) = self.push_one(queue, envelope);
                match outcome {
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
                        if self.wait_for_room(None, envelope.weight).is_err() {
                            batch.push_front(envelope);
                            break 'items;
                        }
                    }
                }
            }
        }
        // What follows may run drop hooks: let go of the ring's producer side first.
        drop(queue);
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
            self.release(envelope.weight);
            self.give_up(envelope.item);
        }
    }

    /// Pops one item for the output handle, waiting for it; `None` once the link is finished
    /// and empty, or cancelled.
    pub(crate) fn pop_blocking(&self) -> Option<Envelope<T>> {
        loop {
            if let Some(envelope) = self.ring.try_pop() {
                self.release(envelope.weight);
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

/// A push under a byte budget, as [`Link::push_weighed`] reports it: the core's outcome, or an item
/// evicted to make room (`DropOldest`), after which the push is tried again.
enum Step<T> {
    Done(PushOutcome<T>),
    /// The oldest item was evicted (`None`: there was none to evict, as the weight still
    /// counted belongs to items being pushed or popped by other threads right now).
    Evicted {
        oldest: Option<T>,
        item: T,
    },
}

/// The byte budget: weighing on the way in, counting in and out.
impl<T> Link<T> {
    /// Weighs the item into its envelope, if the link has a byte budget. A panic of the user's
    /// function stops the pipeline (`drain()` reports it); returns `false` then.
    fn weigh(&self, envelope: &mut Envelope<T>) -> bool {
        let Some(weight) = &self.weight else { return true };
        match weight.weigh(&envelope.item) {
            Ok(w) => {
                envelope.weight = w;
                true
            }
            Err(message) => {
                self.weigh_failed(message);
                false
            }
        }
    }

    /// Weighs a worker's batch into its envelopes, as [`weigh`](Self::weigh) does one item.
    fn weigh_all(&self, batch: &mut VecDeque<Envelope<T>>) -> bool {
        let Some(weight) = &self.weight else { return true };
        let weighed = weight.weigh_all(batch.iter_mut().map(|e| (&e.item, &mut e.weight)));
        weighed.map_err(|message| self.weigh_failed(message)).is_ok()
    }

    /// The user's weigh function panicked: the pipeline stops.
    fn weigh_failed(&self, message: String) {
        let stage = self.stage.to_string();
        self.control.fail(Fatal { stage, message, culprit: Culprit::Weigh });
    }

    /// Pushes one envelope under the link's policy: the core's outcome, without a byte budget
    /// after one branch; with one, after evicting by weight as `DropOldest` asks (the queue is
    /// let go around the drop hook, which may push into the pipeline, and taken again).
    fn push_one<'a>(
        &'a self,
        mut queue: Pusher<'a, Envelope<T>>,
        mut envelope: Envelope<T>,
    ) -> (Pusher<'a, Envelope<T>>, PushOutcome<Envelope<T>>) {
        loop {
            let pressure_on = self.pressure_on.load(Ordering::Relaxed);
            if self.weight.is_none() {
                let outcome = self.overflow.push(&mut queue, envelope, pressure_on);
                return (queue, outcome);
            }
            match self.push_weighed(&mut queue, envelope, pressure_on) {
                Step::Done(outcome) => return (queue, outcome),
                Step::Evicted { oldest, item } => {
                    envelope = item;
                    if let Some(oldest) = oldest {
                        drop(queue);
                        self.drop_by_policy(oldest.item, overflow::DropReason::Oldest);
                        queue = self.ring.pusher();
                    }
                }
            }
        }
    }

    /// Pushes under the overflow policy and the byte budget: an item that does not fit by
    /// weight waits (`Block`, as `MustWait`), is dropped (`DropNewest`), handed back (`Fail`)
    /// or evicts the oldest item (`DropOldest`). Every weight counted in for an item that is
    /// not queued in the end, or that is evicted, is counted out here.
    fn push_weighed(
        &self,
        queue: &mut Pusher<'_, Envelope<T>>,
        envelope: Envelope<T>,
        pressure_on: bool,
    ) -> Step<Envelope<T>> {
        let Some(weight) = &self.weight else {
            return Step::Done(self.overflow.push(queue, envelope, pressure_on));
        };
        if self.overflow == Overflow::Block && pressure_on {
            return Step::Done(PushOutcome::MustWait(envelope));
        }
        Step::Done(match weight.try_admit(envelope.weight, self.overflow) {
            Admission::Admit => {
                let counted = envelope.weight;
                let outcome = self.overflow.push(queue, envelope, pressure_on);
                match &outcome {
                    PushOutcome::Pushed => {}
                    // Evicted by count: the new item went in, the oldest left.
                    PushOutcome::Dropped { item, reason: overflow::DropReason::Oldest } => {
                        weight.release(item.weight);
                    }
                    _ => weight.release(counted),
                }
                outcome
            }
            Admission::Wait => PushOutcome::MustWait(envelope),
            Admission::Reject => PushOutcome::Rejected(envelope),
            Admission::DropNewest => {
                PushOutcome::Dropped { item: envelope, reason: overflow::DropReason::Newest }
            }
            Admission::EvictOldest => {
                let oldest = queue.evict();
                match &oldest {
                    Some(oldest) => weight.release(oldest.weight),
                    None => thread::yield_now(),
                }
                return Step::Evicted { oldest, item: envelope };
            }
        })
    }

    /// Pushes as much of a weighed batch as the ring takes at once, if the whole batch fits
    /// the byte budget (the rest goes item by item); returns how many.
    fn push_weighed_run(
        weight: &Weight<T>,
        queue: &mut Pusher<'_, Envelope<T>>,
        batch: &mut VecDeque<Envelope<T>>,
    ) -> u64 {
        if !queue.takes_runs() {
            return 0;
        }
        let total = batch.iter().try_fold(0, |total: usize, e| total.checked_add(e.weight));
        if !total.is_some_and(|total| weight.try_admit_run(total)) {
            return 0;
        }
        let pushed = queue.push_from(batch);
        weight.release(batch.iter().map(|e| e.weight).sum());
        pushed as u64
    }

    /// Counts out the weight of an item that left the ring.
    #[inline]
    fn release(&self, weight: usize) {
        if let Some(budget) = &self.weight {
            budget.release(weight);
        }
    }

    /// Whether an item of `weight` fits the byte budget now (any does without one).
    fn fits(&self, weight: usize) -> bool {
        self.weight.as_ref().is_none_or(|budget| budget.fits(weight))
    }

    /// The fill the water marks apply to: the item count, or with a byte budget, the nearer
    /// of the weight and the count's share of the capacity, in weight units.
    #[inline]
    fn fill(&self) -> usize {
        match &self.weight {
            None => self.ring.len(),
            Some(weight) => weight.fill(self.ring.len(), self.ring.capacity()),
        }
    }

    /// The weight queued and the byte budget, if there is one.
    pub(crate) fn bytes(&self) -> Option<(usize, usize)> {
        self.weight.as_ref().map(Weight::used_and_limit)
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
pub(crate) struct Tally<'a> {
    pub(crate) counter: &'a Counter,
    pub(crate) n: u64,
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
    /// The weight queued and the byte budget, if the queue has one.
    fn bytes(&self) -> Option<(usize, usize)>;
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

    fn bytes(&self) -> Option<(usize, usize)> {
        Link::bytes(self)
    }
}
