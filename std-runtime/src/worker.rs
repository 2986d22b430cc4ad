//! One worker thread of a stage: pop a batch from the stage's queue, run the stage over it,
//! deliver the outputs downstream in batches, and account for every item.
//!
//! A panic inside the stage is caught per batch: the item being processed counts as errored,
//! the worker builds a fresh stage from the factory and carries on with the rest of the batch.
//! A panic anywhere else (the sink, a drop hook) is fatal: the pipeline is cancelled and
//! `drain()` reports it.
//!
//! A worker asked to retire (its stage has a worker to spare, see [`Workers`]) takes the
//! request between two batches and leaves as at the end of its stream: it flushes its stage,
//! delivers what that emits, and drops it.

use std::any::Any;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::iter;
use std::mem;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backflow_core::stage::{Emit, Stage};

use crate::batch::BATCH;
use crate::control::{Control, Culprit, Fatal};
use crate::deferred::Batch;
use crate::event::Event;
use crate::hooks::DeadLetter;
use crate::link::{Envelope, Link};
use crate::panic::{Caught, panic_message};
use crate::policy::{Failure, OnFailure, Policy};
use crate::route::{Downstream, HandOver, Reorder};
use crate::stats::{StageCounters, StageShared};
use crate::sync::mpsc;
use crate::sync::thread::{self, JoinHandle};
use crate::workers::Workers;

mod holding;
mod in_place;

/// The outputs of the batch being processed, delivered downstream whenever [`BATCH`] of them
/// have piled up (an ordered stage's are held until the batch is done).
struct Outputs<'a, T> {
    /// The worker's buffer, which the downstream takes the outputs from.
    buf: &'a mut VecDeque<Envelope<T>>,
    /// The outputs collected since the last delivery, in `buf`'s allocation taken as a `Vec`
    /// (see [`in_buf`](Self::in_buf)).
    items: Vec<Envelope<T>>,
    /// Where `emitted` is added when this is dropped (also by a panic unwinding).
    counters: &'a StageCounters,
    downstream: &'a Downstream<T>,
    /// Called with each output as it is emitted.
    after: Option<&'a (dyn Fn(&T) + Send + Sync)>,
    /// Hold everything until the batch is handed over in sequence.
    hold: bool,
    /// The timestamps of the input being processed, inherited by its outputs.
    born: u64,
    queued: u64,
    emitted: u64,
    /// Time spent handing outputs downstream (waiting for room, or in the sink), in ns, when
    /// `timed`.
    delivering: u64,
    timed: bool,
    /// Set when the pipeline stopped while delivering.
    stopped: bool,
    /// A panic while delivering (in the sink or a drop hook), which is fatal; kept here so
    /// that it is not mistaken for the stage's, and re-raised once the batch is accounted for.
    fatal: Option<Box<dyn Any + Send>>,
}

impl<'a, T> Outputs<'a, T> {
    fn new<In>(buf: &'a mut VecDeque<Envelope<T>>, parts: &'a WorkerParts<In, T>) -> Self {
        let items = Vec::from(mem::take(buf));
        Self {
            buf,
            items,
            counters: &parts.shared.counters,
            downstream: &parts.downstream,
            after: parts.policy.after.as_deref(),
            hold: parts.reorder.is_some(),
            born: 0,
            queued: 0,
            emitted: 0,
            delivering: 0,
            timed: parts.input.control.timings,
            stopped: false,
            fatal: None,
        }
    }

    /// Runs `f` over the outputs collected, in the worker's buffer; what `f` leaves there is
    /// collected on. Converting between the `Vec` and the `VecDeque` moves nothing while the
    /// outputs start at the front of the buffer, as they do once the downstream took a batch.
    // NB: a `Vec` push is about 7 instructions an item cheaper than a `VecDeque` push_back
    // (benches/README.md, "In place: the stage over the ring's slots").
    fn in_buf<R>(&mut self, f: impl FnOnce(&mut VecDeque<Envelope<T>>, &Downstream<T>) -> R) -> R {
        self.put_back();
        let result = f(self.buf, self.downstream);
        self.items = Vec::from(mem::take(self.buf));
        result
    }

    /// Moves the outputs collected into the worker's buffer (also when a panic unwinds, see
    /// `drop`), after whatever it still holds.
    fn put_back(&mut self) {
        let items = mem::take(&mut self.items);
        if self.buf.is_empty() {
            *self.buf = VecDeque::from(items);
        } else {
            self.buf.extend(items);
        }
    }

    fn flush(&mut self) {
        if self.items.is_empty() || self.fatal.is_some() {
            return;
        }
        let started = self.timed.then(Instant::now);
        let delivered = self
            .in_buf(|buf, downstream| catch_unwind(AssertUnwindSafe(|| downstream.deliver(buf))));
        self.delivering += started.map_or(0, nanos_since);
        match delivered {
            Ok(delivered) => self.stopped |= !delivered,
            Err(panic) => {
                self.fatal = Some(panic);
                self.stopped = true;
            }
        }
    }

    /// Delivers the batch's outputs: now, or in sequence for an ordered stage.
    fn finish_batch(&mut self, ticket: Option<(u64, &Reorder<T>)>, control: &Control) {
        let Some((ticket, reorder)) = ticket else { return self.flush() };
        let started = self.timed.then(Instant::now);
        let handed = self.in_buf(|buf, downstream| {
            reorder.hand_over(ticket, buf, downstream, || control.is_cancelled())
        });
        self.delivering += started.map_or(0, nanos_since);
        match handed {
            HandOver::Delivered => {}
            HandOver::Stopped => self.stopped = true,
            HandOver::Panicked(panic) => {
                self.fatal = Some(panic);
                self.stopped = true;
            }
        }
    }

    /// Abandons what could not be delivered and re-raises a delivery panic, if there was one.
    fn finish(&mut self) {
        if let Some(panic) = self.fatal.take() {
            self.in_buf(|buf, downstream| downstream.abandon(buf));
            resume_unwind(panic);
        }
    }
}

impl<T> Drop for Outputs<'_, T> {
    fn drop(&mut self) {
        self.put_back();
        self.counters.emitted_outputs.add(self.emitted);
    }
}

impl<T> Emit<T> for Outputs<'_, T> {
    #[inline]
    fn emit(&mut self, item: T) {
        if self.items.len() >= BATCH && !self.hold {
            self.flush();
        }
        if let Some(after) = self.after {
            after(&item);
        }
        self.emitted += 1;
        self.items.push(Envelope { item, born: self.born, queued: self.queued, weight: 0 });
    }
}

/// One worker's identity, for thread names and fatal-error reports.
#[derive(Debug, Clone)]
pub(crate) struct WorkerId {
    pub(crate) stage: Arc<str>,
    pub(crate) index: usize,
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "backflow:{}:{}", self.stage, self.index)
    }
}

/// Everything a worker works with besides its stage.
pub(crate) struct WorkerParts<In, Out> {
    pub(crate) input: Arc<Link<In>>,
    pub(crate) downstream: Downstream<Out>,
    pub(crate) shared: Arc<StageShared>,
    pub(crate) policy: Policy<In, Out>,
    /// The stage's ordered hand-off, if it is `Ordered` with several workers (or may get them).
    pub(crate) reorder: Option<Arc<Reorder<Out>>>,
    pub(crate) flush_every: Option<Duration>,
}

/// Counts a worker out when dropped: after its work, or in place of it when its thread never
/// started. It leaves its stage (the last one out finishes the queue downstream, once it has
/// delivered everything) and its exit is announced (`shutdown` waits for it).
pub(crate) struct Departure<T> {
    pub(crate) workers: Arc<Workers>,
    pub(crate) downstream: Downstream<T>,
    pub(crate) control: Arc<Control>,
}

impl<T> Drop for Departure<T> {
    fn drop(&mut self) {
        self.workers.leave(|| self.downstream.upstream_done());
        self.control.worker_exited();
    }
}

/// Starts `work` on a thread named after `id`, and waits until the thread runs (the standard
/// library sets up its signal stack then), so that when memory runs out it is the next
/// `spawn` that fails, with an error, not a started thread, which would abort. A refused
/// thread drops `work` unrun.
pub(crate) fn spawn(id: &WorkerId, work: Box<dyn FnOnce() + Send>) -> io::Result<JoinHandle<()>> {
    let (started, has_started) = mpsc::sync_channel(1);
    let handle = thread::Builder::new().name(id.to_string()).spawn(move || {
        let _ = started.send(());
        work();
    })?;
    let _ = has_started.recv();
    Ok(handle)
}

/// Runs one worker to the end: until its input is finished and empty, or it retires (then it
/// flushes its stage), or until the pipeline is cancelled. The caller then lets go of its
/// [`Departure`].
pub(crate) fn run<In, S, F>(id: &WorkerId, factory: &F, parts: &WorkerParts<In, S::Out>)
where
    F: Fn() -> S,
    S: Stage<In>,
    S::Error: fmt::Display,
{
    let (input, downstream) = (&*parts.input, &parts.downstream);
    let control = Arc::clone(&input.control);
    let mut inputs: VecDeque<Envelope<In>> = VecDeque::with_capacity(BATCH);
    let mut outputs: VecDeque<Envelope<S::Out>> = VecDeque::with_capacity(BATCH);
    // Kept here, outside the catch, so that what it holds back outlives a fatal panic.
    let mut stage = None;
    let mut held = Held::new::<S>();
    let result = catch_unwind(AssertUnwindSafe(|| {
        work(id, factory, parts, &mut stage, &mut inputs, &mut outputs, &mut held);
    }));
    if let Err(panic) = result {
        // Not the stage's panic (those are caught in `work`): the sink or a hook. The pipeline
        // is stopped before anything is let go, so that what follows reads as abandoned.
        control.fail(Fatal {
            stage: id.stage.to_string(),
            message: panic_message(&*panic),
            culprit: Culprit::Worker(id.index),
        });
        for envelope in inputs.drain(..) {
            input.give_up(envelope.item);
        }
        downstream.abandon(&mut outputs);
    }
    // Items the stage still holds in flight (or that wait for a retry) when the worker stops.
    held.abandon(input, stage.as_ref(), &parts.shared.counters);
    if let Some(stage) = stage.as_mut().filter(|_| control.is_cancelled() && !held.flushed) {
        abandon_held(stage, &mut outputs, parts);
    }
    if let Some(stage) = stage.take() {
        drop_stage(stage, &parts.shared.counters);
    }
    if let Some(reorder) = &parts.reorder {
        if control.is_cancelled() {
            reorder.abandon_waiting(downstream);
        }
    }
}

fn work<In, S, F>(
    id: &WorkerId,
    factory: &F,
    parts: &WorkerParts<In, S::Out>,
    stage: &mut Option<S>,
    inputs: &mut VecDeque<Envelope<In>>,
    outputs: &mut VecDeque<Envelope<S::Out>>,
    held: &mut Held<In>,
) where
    F: Fn() -> S,
    S: Stage<In>,
    S::Error: fmt::Display,
{
    let input = &*parts.input;
    let control = &*input.control;
    let cx = ItemPolicy {
        stage: &id.stage,
        worker: id.index,
        input,
        control,
        shared: &parts.shared,
        policy: &parts.policy,
    };
    let plain = parts.policy.is_plain(control);
    let stage = stage.insert(factory());
    if S::HOLDS {
        return holding::work(factory, parts, stage, inputs, outputs, held, &cx, plain);
    }
    let in_place = !S::RUNS && plain && parts.reorder.is_none() && input.pops_in_place();
    let mut flushed_at = Instant::now();
    loop {
        if control.is_cancelled() {
            return;
        }
        // Between batches (an ordered stage's worker holds no ticket here): leave as at the
        // end of the stream.
        if parts.shared.workers.take_retirement() {
            break;
        }
        if let Some(period) = parts.flush_every {
            if flushed_at.elapsed() >= period {
                flushed_at = Instant::now();
                if !flush(stage, outputs, parts, control, (id.index, held)) {
                    return;
                }
            }
        }
        let mut out = Outputs::new(outputs, parts);
        let mut outcomes = Outcomes::new(&cx);
        let mut batch_started = None;
        let (popped, ticket) = if in_place {
            batch_started = control.timings.then(Instant::now);
            (in_place::process(stage, factory, inputs, &mut out, &cx, &mut outcomes), None)
        } else {
            pop(parts, inputs)
        };
        if popped == 0 {
            if input.finished() && input.len() == 0 {
                break;
            }
            let deadline = parts.flush_every.and_then(|period| flushed_at.checked_add(period));
            input.wait_for_items_or(deadline, || parts.shared.workers.retirement_asked());
            continue;
        }
        if !in_place {
            batch_started = control.timings.then(Instant::now);
        }
        // A run stops taking items when the pipeline is cancelled; what it left is abandoned.
        let run_cancelled = || S::RUNS && control.is_cancelled();
        // In place, the items are processed by now; what is left is abandoned below.
        while !in_place && !inputs.is_empty() && !out.stopped && !run_cancelled() {
            if S::RUNS {
                in_runs(stage, factory, inputs, &mut out, held, &cx, &mut outcomes, plain);
            } else if plain {
                let result = catch_unwind(AssertUnwindSafe(|| {
                    one_by_one(stage, inputs, &mut out, &cx, &mut outcomes);
                }));
                if result.is_err() {
                    // Delivery panics are caught in `flush`: this one is the stage's, and the
                    // item it was processing failed with it.
                    outcomes.failed += 1;
                    outcomes.panicked += 1;
                    // Plain: skip, whatever the old stage's flush says.
                    let _ = rebuild(stage, factory, &mut out);
                }
            } else {
                with_policy(stage, factory, inputs, &mut out, &cx, &mut outcomes);
            }
            if !out.stopped && control.is_cancelled() {
                break;
            }
        }
        drop(outcomes);
        out.finish_batch(ticket, control);
        let counters = &cx.shared.counters;
        counters.backpressured_ns.add(out.delivering);
        if let Some(started) = batch_started {
            counters.busy_ns.add(nanos_since(started).saturating_sub(out.delivering));
        }
        if out.stopped || !inputs.is_empty() {
            // Stopped while delivering, or cancelled: what was not processed is abandoned.
            for envelope in inputs.drain(..) {
                input.give_up(envelope.item);
            }
            out.finish();
            return;
        }
    }
    // End of stream, or retiring: let the stage emit what it holds back.
    flush(stage, outputs, parts, control, (id.index, held));
    held.flushed = true;
}

/// Pops a batch into `inputs`; returns how many items, and for an ordered stage with several
/// workers the batch's ticket, taken under the same lock as the items.
fn pop<'p, In, Out>(
    parts: &'p WorkerParts<In, Out>,
    inputs: &mut VecDeque<Envelope<In>>,
) -> (usize, Option<(u64, &'p Reorder<Out>)>) {
    let input = &*parts.input;
    match &parts.reorder {
        None => (input.pop_into(inputs, BATCH), None),
        Some(reorder) => {
            let (popped, ticket) = reorder.take(|| input.pop_into(inputs, BATCH));
            (popped, ticket.map(|t| (t, &**reorder)))
        }
    }
}

/// Flushes the stage (at the end of the stream, or on its timer) and delivers what it emits
/// right away; a flush that fails under fail-fast fails the pipeline (what the stage held is
/// lost with it, and `held` notes that the stage is not to be flushed again). What the
/// flush defers ([`after_outcome`](crate::stage::after_outcome)) runs after its outcome is
/// recorded. Returns `false` if the pipeline stopped.
fn flush<In, S>(
    stage: &mut S,
    outputs: &mut VecDeque<Envelope<S::Out>>,
    parts: &WorkerParts<In, S::Out>,
    control: &Control,
    (worker, held): (usize, &mut Held<In>),
) -> bool
where
    S: Stage<In>,
    S::Error: fmt::Display,
{
    let deferred = Batch::open();
    let mut out = Outputs::new(outputs, parts);
    out.hold = false;
    out.queued = control.now();
    if let Some(message) = flush_into(stage, &mut out) {
        if matches!(parts.policy.on_failure, OnFailure::FailFast) {
            let name = parts.shared.name.to_string();
            control.fail(Fatal { stage: name, message, culprit: Culprit::Stage });
            held.flushed = true;
        }
    }
    if let Some(message) = deferred.close() {
        let (stage, culprit) = (parts.shared.name.to_string(), Culprit::Worker(worker));
        control.fail(Fatal { stage, message, culprit });
    }
    out.flush();
    let stopped = out.stopped;
    out.finish();
    !stopped
}

/// How the items of one batch ended, added to the stage's counters when dropped (also when a
/// hook's panic unwinds through the worker); the work deferred during the batch
/// ([`after_outcome`](crate::stage::after_outcome)) runs then, once the outcomes are recorded.
struct Outcomes<'a> {
    counters: &'a StageCounters,
    control: &'a Control,
    stage: &'a str,
    worker: usize,
    deferred: Option<Batch>,
    ok: u64,
    failed: u64,
    panicked: u64,
    dead_lettered: u64,
    retried: u64,
}

impl<'a> Outcomes<'a> {
    fn new<In, Out>(cx: &ItemPolicy<'a, In, Out>) -> Self {
        Self {
            counters: &cx.shared.counters,
            control: cx.control,
            stage: cx.stage,
            worker: cx.worker,
            deferred: Some(Batch::open()),
            ok: 0,
            failed: 0,
            panicked: 0,
            dead_lettered: 0,
            retried: 0,
        }
    }

    fn count<E>(&mut self, result: &Result<(), E>) {
        match result {
            Ok(()) => self.ok += 1,
            Err(_) => self.failed += 1,
        }
    }
}

impl Outcomes<'_> {
    /// Adds the outcomes so far to the counters, and starts again from zero.
    fn publish(&mut self) {
        let c = self.counters;
        c.emitted_inputs.add(mem::take(&mut self.ok));
        c.errored.add(mem::take(&mut self.failed));
        c.panicked.add(mem::take(&mut self.panicked));
        c.dead_lettered.add(mem::take(&mut self.dead_lettered));
        c.retried.add(mem::take(&mut self.retried));
    }
}

impl Drop for Outcomes<'_> {
    fn drop(&mut self) {
        self.publish();
        // A panic the worker does not survive (not the stage's: those are caught): the
        // pipeline is failed once it has unwound; the work deferred during the batch must see
        // it stopped already. (Not in a loom model: a panic there is loom's own, a deadlock it
        // found, and touching its atomics while it unwinds aborts the model.)
        if thread::panicking() && !cfg!(loom) {
            self.control.cancel();
        }
        let panic = self.deferred.take().and_then(Batch::close);
        if let Some(message) = panic {
            let (stage, culprit) = (self.stage.to_string(), Culprit::Worker(self.worker));
            self.control.fail(Fatal { stage, message, culprit });
        }
    }
}

/// A worker applying its stage's policy to items: the stage's name and queue, the worker's
/// number, the pipeline's control, the stage's counters and its policy.
struct ItemPolicy<'a, In, Out> {
    stage: &'a str,
    worker: usize,
    input: &'a Link<In>,
    control: &'a Control,
    shared: &'a StageShared,
    policy: &'a Policy<In, Out>,
}

/// A failed attempt waiting for its policy: the failure, the item's copy (if the policy
/// keeps one) and the attempt's number.
type Failed<In, E> = (Failure<Caught<E>>, Option<In>, u32);

/// What comes after a failed attempt.
enum Next<In> {
    /// Try this copy of the item again.
    Retry(In),
    /// The item is settled (errored, dead-lettered, or abandoned during a backoff).
    Settled,
}

impl<In, Out> ItemPolicy<'_, In, Out> {
    /// Under fail-fast, a flush that failed (`message`: the old stage's, flushed as it was
    /// rebuilt after a panic, whose attempt may be retried) fails the pipeline: what that
    /// stage held is lost.
    fn flush_failed(&self, message: Option<String>) {
        if let Some(message) = message {
            if matches!(self.policy.on_failure, OnFailure::FailFast) {
                let stage = self.stage.to_string();
                self.control.fail(Fatal { stage, message, culprit: Culprit::Stage });
            }
        }
    }

    /// Applies the stage's policy to a failed attempt: retry after a backoff, or settle the
    /// item as errored (failing the pipeline under fail-fast) or dead-lettered.
    fn failed<E: fmt::Display>(
        &self,
        failure: &Failure<E>,
        copy: Option<In>,
        attempt: u32,
        outcomes: &mut Outcomes<'_>,
    ) -> Next<In> {
        let (stage, control) = (self.stage, self.control);
        control.emit(&Event::Error { stage, error: failure, attempt });
        let delay = self.policy.retry.and_then(|schedule| schedule.delay(attempt));
        let copy = match (delay, copy) {
            (Some(delay), Some(copy)) => {
                outcomes.retried += 1;
                control.emit(&Event::Retried { stage, attempt: attempt + 1, delay });
                if !control.sleep(delay) {
                    self.input.give_up(copy);
                    return Next::Settled;
                }
                return Next::Retry(copy);
            }
            (_, copy) => copy,
        };
        match &self.policy.on_failure {
            OnFailure::Skip => outcomes.failed += 1,
            OnFailure::FailFast => {
                outcomes.failed += 1;
                let message = failure.to_string();
                control.fail(Fatal { stage: stage.to_string(), message, culprit: Culprit::Stage });
            }
            OnFailure::DeadLetter(hook) => {
                let Some(item) = copy else {
                    outcomes.failed += 1;
                    return Next::Settled;
                };
                // Counted as failed for good first: if the error's `Display` panics, the item
                // never reaches the handler, and the worker stops with it settled as an error.
                outcomes.failed += 1;
                let error = failure.to_string();
                outcomes.failed -= 1;
                outcomes.dead_lettered += 1;
                control.emit(&Event::DeadLettered { stage, attempts: attempt });
                let letter = DeadLetter { stage, item, error, attempts: attempt };
                // The handler's panic stops the pipeline; it does not unwind through the
                // worker, which may be holding more failed items of a run.
                if let Err(panic) = catch_unwind(AssertUnwindSafe(|| hook(letter))) {
                    let message = panic_message(&*panic);
                    let culprit = Culprit::Worker(self.worker);
                    control.fail(Fatal { stage: stage.to_string(), message, culprit });
                }
            }
        }
        Next::Settled
    }
}

/// Runs the stage over `inputs` item by item, until they are done or delivery stopped: the
/// fast path, for stages with nothing to apply per item but counting.
fn one_by_one<In, S: Stage<In>>(
    stage: &mut S,
    inputs: &mut VecDeque<Envelope<In>>,
    out: &mut Outputs<'_, S::Out>,
    cx: &ItemPolicy<'_, In, S::Out>,
    outcomes: &mut Outcomes<'_>,
) {
    while let Some(envelope) = inputs.pop_front() {
        let popped_at = cx.start(&envelope, out);
        // An error's drop is the user's code: caught, so the item is counted once.
        let result = stage.process(envelope.item, out).map_err(Caught::new);
        cx.timed(&Times { born: envelope.born, queued: envelope.queued, popped_at });
        outcomes.count(&result);
        if out.stopped {
            break;
        }
    }
}

/// Runs the stage over `inputs` item by item, applying the stage's policy: hooks, breaker and
/// rate limit, retries, and what happens to an item that failed for good. Each attempt is
/// caught on its own, so a panic fails only its item.
fn with_policy<In, S, F>(
    stage: &mut S,
    factory: &F,
    inputs: &mut VecDeque<Envelope<In>>,
    out: &mut Outputs<'_, S::Out>,
    cx: &ItemPolicy<'_, In, S::Out>,
    outcomes: &mut Outcomes<'_>,
) where
    F: Fn() -> S,
    S: Stage<In>,
    S::Error: fmt::Display,
{
    while let Some(envelope) = inputs.pop_front() {
        if cx.control.is_cancelled() || !cx.policy.gate.admit(cx.control) {
            inputs.push_front(envelope);
            break;
        }
        let popped_at = cx.start(&envelope, out);
        let times = Times { born: envelope.born, queued: envelope.queued, popped_at };
        attempts(stage, factory, envelope.item, 1, out, cx, outcomes);
        cx.timed(&times);
        if cx.policy.watched {
            outcomes.publish();
        }
        if out.stopped {
            break;
        }
    }
}

/// Tries `item` from attempt `first` on, until it succeeds or is settled by the policy.
fn attempts<In, S, F>(
    stage: &mut S,
    factory: &F,
    mut item: In,
    first: u32,
    out: &mut Outputs<'_, S::Out>,
    cx: &ItemPolicy<'_, In, S::Out>,
    outcomes: &mut Outcomes<'_>,
) where
    F: Fn() -> S,
    S: Stage<In>,
    S::Error: fmt::Display,
{
    let policy = cx.policy;
    let mut attempt = first;
    loop {
        // The first attempt was admitted when the item was taken; a retry is admitted anew,
        // so that it too waits for an open breaker and a token.
        if attempt > 1 && !policy.gate.admit(cx.control) {
            cx.input.give_up(item);
            return;
        }
        // The copy and the hook are taken inside the catch: if they panic, the item fails with
        // the panic like any other (without a copy to retry or dead-letter).
        let mut copy = None;
        let result = catch_unwind(AssertUnwindSafe(|| {
            copy = policy.clone.map(|clone| clone(&item));
            if let Some(before) = policy.before.as_deref().filter(|_| attempt == 1) {
                before(&item);
            }
            stage.process(item, out)
        }));
        let failure = match result {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(Failure::Error(Caught::new(error))),
            Err(panic) => {
                outcomes.panicked += 1;
                // Counted as failed for good first: if the factory panics too, the worker
                // stops with this item settled.
                outcomes.failed += 1;
                cx.flush_failed(rebuild(stage, factory, out));
                outcomes.failed -= 1;
                Some(Failure::Panic(panic_message(&*panic)))
            }
        };
        policy.gate.record(failure.is_none(), cx.control);
        let Some(failure) = failure else {
            outcomes.ok += 1;
            return;
        };
        match cx.failed(&failure, copy, attempt, outcomes) {
            Next::Retry(copy) => {
                item = copy;
                attempt += 1;
            }
            Next::Settled => return,
        }
    }
}

/// An item's timestamps: when it entered the pipeline, its queue, and the worker's hands
/// (all `0` unless it is sampled).
#[derive(Debug, Clone, Copy)]
struct Times {
    born: u64,
    queued: u64,
    popped_at: u64,
}

impl<In, Out> ItemPolicy<'_, In, Out> {
    /// Stamps the outputs about to be emitted for `envelope`; returns when it was popped (if
    /// it is sampled).
    #[inline]
    fn start<T>(&self, envelope: &Envelope<T>, out: &mut Outputs<'_, Out>) -> u64 {
        let popped_at = if envelope.born != 0 { self.control.now() } else { 0 };
        out.born = envelope.born;
        out.queued = popped_at;
        popped_at
    }

    /// Records a sampled item's queue wait and processing time.
    #[inline]
    fn timed(&self, times: &Times) {
        if times.born != 0 {
            self.shared.queue_wait.record(times.popped_at.saturating_sub(times.queued));
            self.shared.process_time.record(self.control.now() - times.popped_at);
        }
    }
}

/// What the worker keeps of an item that a run-processing stage has taken and not yet
/// reported: its timestamps, for its outputs and the stats, and a copy when the policy needs
/// one.
struct Taken<In> {
    times: Times,
    copy: Option<In>,
    /// Which attempt this is (a retry of an item held in flight is taken again in a run).
    attempt: u32,
}

/// The items a run-processing stage has taken and not yet reported, oldest first, and the
/// items waiting to be tried again (only for a stage that [`HOLDS`](Stage::HOLDS) items,
/// whose retries go back through its runs), each with the attempt it will be.
pub(crate) struct Held<In> {
    taken: VecDeque<Taken<In>>,
    retries: VecDeque<(Envelope<In>, u32)>,
    /// The stage was flushed for the last time (at the end of its stream, or by a flush that
    /// failed the pipeline): a worker that stops does not flush it again.
    flushed: bool,
}

impl<In> Held<In> {
    fn new<S: Stage<In>>() -> Self {
        let capacity = if S::RUNS && !S::HOLDS { BATCH } else { 0 };
        Self { taken: VecDeque::with_capacity(capacity), retries: VecDeque::new(), flushed: false }
    }

    /// Abandons every item left: counted, and handed to the drop hook when there is a copy
    /// (an item in flight is owned by the stage, and dropped with it); except the items
    /// `stage` says have finished (see [`Stage::finished_held`]), counted as processed or
    /// failed.
    fn abandon<S: Stage<In>>(
        &mut self,
        input: &Link<In>,
        stage: Option<&S>,
        counters: &StageCounters,
    ) {
        // Each taken item's outcome, if the stage says it has finished.
        let mut finished = vec![None; self.taken.len()];
        if let Some(stage) = stage {
            // The stage's own code: if it panics, what it held is abandoned.
            let _ = catch_unwind(AssertUnwindSafe(|| {
                stage.finished_held(&mut |place, ok| {
                    if let Some(outcome) = finished.get_mut(place) {
                        *outcome = Some(ok);
                    }
                });
            }));
        }
        for (Taken { copy, .. }, outcome) in self.taken.drain(..).zip(finished) {
            match (outcome, copy) {
                (Some(true), _) => counters.emitted_inputs.add(1),
                (Some(false), None) => counters.errored.add(1),
                // A failure its policy can no longer handle (retry, dead letter): the copy is
                // abandoned, to the drop hook, as the items that never ran are.
                (_, Some(item)) => input.give_up(item),
                (None, None) => input.give_up_held(),
            }
        }
        for (envelope, _) in self.retries.drain(..) {
            input.give_up(envelope.item);
        }
    }
}

/// The outputs of a run: each takes the timestamps of the oldest item not yet reported,
/// which is the one it comes from (see [`Stage::process_run`]).
struct RunOutputs<'o, 'a, In, T> {
    out: &'o mut Outputs<'a, T>,
    taken: &'o RefCell<&'o mut VecDeque<Taken<In>>>,
}

impl<In, T> Emit<T> for RunOutputs<'_, '_, In, T> {
    #[inline]
    fn emit(&mut self, item: T) {
        if let Some(taken) = self.taken.borrow().front() {
            self.out.born = taken.times.born;
            self.out.queued = taken.times.popped_at;
        }
        self.out.emit(item);
    }
}

/// Hands `inputs` to the stage as one run ([`Stage::process_run`]), until they are done or
/// the pipeline is cancelled. Items the stage took and has not reported when it panics fail
/// with the panic. Failed items go through the stage's policy after the run (a retry is then
/// made item by item).
#[allow(clippy::too_many_arguments)]
fn in_runs<In, S, F>(
    stage: &mut S,
    factory: &F,
    inputs: &mut VecDeque<Envelope<In>>,
    out: &mut Outputs<'_, S::Out>,
    held: &mut Held<In>,
    cx: &ItemPolicy<'_, In, S::Out>,
    outcomes: &mut Outcomes<'_>,
    plain: bool,
) where
    F: Fn() -> S,
    S: Stage<In>,
    S::Error: fmt::Display,
{
    let (control, policy) = (cx.control, cx.policy);
    let mut failures: Vec<Failed<In, S::Error>> = Vec::new();
    let Held { taken, retries, .. } = held;
    let result = {
        let taken = RefCell::new(&mut *taken);
        let mut items = iter::from_fn(|| {
            if control.is_cancelled() || (!plain && !policy.gate.admit(control)) {
                return None;
            }
            let (envelope, attempt) = match retries.pop_front() {
                Some(retry) => retry,
                None => (inputs.pop_front()?, 1),
            };
            let popped_at = if envelope.born != 0 { control.now() } else { 0 };
            let times = Times { born: envelope.born, queued: envelope.queued, popped_at };
            // Taken before the copy and the hook run: if they panic, the item fails with the
            // panic like the rest of the run.
            taken.borrow_mut().push_back(Taken { times, copy: None, attempt });
            let copy = policy.clone.map(|clone| clone(&envelope.item));
            if let Some(before) = policy.before.as_deref().filter(|_| attempt == 1) {
                before(&envelope.item);
            }
            if let Some(last) = taken.borrow_mut().back_mut() {
                last.copy = copy;
            }
            Some(envelope.item)
        });
        let mut done = |result: Result<(), S::Error>| {
            let Some(Taken { times, copy, attempt }) = taken.borrow_mut().pop_front() else {
                return;
            };
            cx.timed(&times);
            if !plain {
                policy.gate.record(result.is_ok(), control);
            }
            match result.map_err(Caught::new) {
                Ok(()) => outcomes.ok += 1,
                Err(_) if plain => outcomes.failed += 1,
                Err(error) => failures.push((Failure::Error(error), copy, attempt)),
            }
        };
        let mut run_out = RunOutputs { out, taken: &taken };
        catch_unwind(AssertUnwindSafe(|| stage.process_run(&mut items, &mut run_out, &mut done)))
    };
    if let Err(panic) = result {
        // Every item of the run not yet reported failed with the panic.
        outcomes.panicked += 1;
        let message = panic_message(&*panic);
        for Taken { copy, attempt, .. } in taken.drain(..) {
            if plain {
                outcomes.failed += 1;
            } else {
                policy.gate.record(false, control);
                failures.push((Failure::Panic(message.clone()), copy, attempt));
            }
        }
        // Counted as failed for good first: if the factory (or the old stage's `drop`)
        // panics too, the worker stops with the run's failures settled as errors.
        let failed = failures.len() as u64;
        outcomes.failed += failed;
        cx.flush_failed(rebuild(stage, factory, out));
        outcomes.failed -= failed;
    }
    let mut failures = failures.into_iter();
    while let Some((failure, copy, attempt)) = failures.next() {
        let handled = catch_unwind(AssertUnwindSafe(|| {
            match cx.failed(&failure, copy, attempt, outcomes) {
                // A stage that holds items takes its retries in its next run, so that the
                // worker does not wait for one item while the others in flight wait for it.
                Next::Retry(copy) if S::HOLDS => {
                    let envelope = Envelope { item: copy, born: 0, queued: 0, weight: 0 };
                    retries.push_back((envelope, attempt + 1));
                }
                Next::Retry(copy) => {
                    attempts(stage, factory, copy, attempt + 1, out, cx, outcomes);
                }
                Next::Settled => {}
            }
        }));
        if let Err(panic) = handled {
            // The worker cannot go on (the factory panicked rebuilding the stage after a
            // retry, or the error's `Display` panicked; the failure at hand is counted by
            // then): the failures not handled yet are settled as errors on the way out.
            outcomes.failed += failures.len() as u64;
            resume_unwind(panic);
        }
    }
}

/// Replaces a stage that panicked with a fresh one from the factory. What the old one held
/// back (a partial batch, aggregates) came from inputs it processed: it is flushed on before
/// the old one is dropped, so that nothing it held vanishes with it. A failure of that flush
/// or a panic in its `drop` counts as a panic of the stage. A panic in the factory goes on
/// (the worker cannot go on without a stage: it is fatal, and the old stage stays, for the
/// worker to abandon what it holds), saying where it came from.
fn rebuild<In, S>(
    stage: &mut S,
    factory: &impl Fn() -> S,
    out: &mut Outputs<'_, S::Out>,
) -> Option<String>
where
    S: Stage<In>,
    S::Error: fmt::Display,
{
    let fresh = catch_unwind(AssertUnwindSafe(factory)).unwrap_or_else(|panic| {
        let message = format!("the stage's factory panicked: {}", panic_message(&*panic));
        resume_unwind(Box::new(message))
    });
    let mut old = mem::replace(stage, fresh);
    let failed = flush_into(&mut old, out);
    drop_stage(old, out.counters);
    failed
}

/// Abandons what `stage` holds back when its worker stops before the end of the stream
/// (cancel, a fatal panic): the stage is flushed, and its outputs are received and abandoned
/// downstream, counted and handed to the drop hook there, like the rest of the worker's.
fn abandon_held<In, S>(
    stage: &mut S,
    outputs: &mut VecDeque<Envelope<S::Out>>,
    parts: &WorkerParts<In, S::Out>,
) where
    S: Stage<In>,
    S::Error: fmt::Display,
{
    let mut out = Outputs::new(outputs, parts);
    out.hold = true;
    // The worker stops: the pipeline has ended already.
    let _ = flush_into(stage, &mut out);
    drop(out);
    parts.downstream.abandon(outputs);
}

/// Flushes `stage` into `out`. A flush carries no input of its own: its failure, error or
/// panic, is counted as a panic would be; returns what the failure said (for a panic,
/// `panicked: ` and its message).
fn flush_into<In, S>(stage: &mut S, out: &mut Outputs<'_, S::Out>) -> Option<String>
where
    S: Stage<In>,
    S::Error: fmt::Display,
{
    let message = match catch_unwind(AssertUnwindSafe(|| stage.flush(&mut *out))) {
        Ok(Ok(())) => return None,
        Ok(Err(error)) => {
            let error = Caught::new(error);
            catch_unwind(AssertUnwindSafe(|| error.to_string())).unwrap_or_else(|panic| {
                format!("its error's Display panicked: {}", panic_message(&*panic))
            })
        }
        Err(panic) => format!("panicked: {}", panic_message(&*panic)),
    };
    out.counters.panicked.increment();
    Some(message)
}

/// Drops a stage instance; its `drop` is the user's code too, and a panic in it is counted
/// as the stage's.
fn drop_stage<S>(stage: S, counters: &StageCounters) {
    if catch_unwind(AssertUnwindSafe(|| drop(stage))).is_err() {
        counters.panicked.increment();
    }
}

/// Nanoseconds since `start`.
fn nanos_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}
