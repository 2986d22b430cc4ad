//! One worker thread of a stage: pop a batch from the stage's queue, run the stage over it,
//! deliver the outputs downstream in batches, and account for every item.
//!
//! A panic inside the stage is caught per batch: the item being processed counts as errored,
//! the worker builds a fresh stage from the factory and carries on with the rest of the batch.
//! A panic anywhere else (the sink, a drop hook) is fatal: the pipeline is cancelled and
//! `drain()` reports it.

use std::any::Any;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::iter;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::{Arc, Mutex, PoisonError};

use backflow_core::stage::{Emit, Stage};

use crate::control::{Control, Fatal};
use crate::link::{DropHook, Envelope, Link};
use crate::stats::{SinkShared, StageShared};
use crate::{DropReason, Dropped};

/// Items a worker pops, and outputs it collects, before touching a shared queue again.
// NB: one pop/push of the shared indices, one counter update and one wake-up check per batch
// instead of per item is what lets a 3-stage pipeline move tens of millions of items per
// second (benches/README.md, "Pipelines").
pub(crate) const BATCH: usize = 128;

/// Where a stage's outputs go.
pub(crate) enum Downstream<T> {
    /// The next stage's queue, or the output handle's.
    Link(Arc<Link<T>>),
    /// The sink closure, called by the last stage's workers.
    Sink(Arc<Sink<T>>),
}

impl<T> Clone for Downstream<T> {
    fn clone(&self) -> Self {
        match self {
            Self::Link(link) => Self::Link(Arc::clone(link)),
            Self::Sink(sink) => Self::Sink(Arc::clone(sink)),
        }
    }
}

impl<T> Downstream<T> {
    /// Delivers a batch; `false` if the pipeline stopped and some items were abandoned.
    fn deliver(&self, batch: &mut VecDeque<Envelope<T>>) -> bool {
        match self {
            Self::Link(link) => link.deliver(batch),
            Self::Sink(sink) => sink.deliver(batch),
        }
    }

    /// Receives and abandons outputs that will never be delivered (left behind by a panic).
    fn abandon(&self, batch: &mut VecDeque<Envelope<T>>) {
        match self {
            Self::Link(link) => batch.drain(..).for_each(|envelope| link.abandon(envelope.item)),
            Self::Sink(sink) => {
                sink.shared.counters.received.add(batch.len() as u64);
                sink.abandon(batch);
            }
        }
    }

    /// This worker will deliver nothing more.
    fn upstream_done(&self) {
        if let Self::Link(link) = self {
            link.upstream_done();
        }
    }
}

/// The sink closure, shared by the last stage's workers.
pub(crate) struct Sink<T> {
    pub(crate) call: Mutex<Box<dyn FnMut(T) + Send>>,
    pub(crate) shared: Arc<SinkShared>,
    pub(crate) control: Arc<Control>,
    pub(crate) on_drop: Option<DropHook<T>>,
}

impl<T> Sink<T> {
    fn deliver(&self, batch: &mut VecDeque<Envelope<T>>) -> bool {
        let n = batch.len() as u64;
        let counters = &self.shared.counters;
        counters.received.add(n);
        if self.control.is_cancelled() {
            self.abandon(batch);
            return false;
        }
        let mut call = self.call.lock().unwrap_or_else(PoisonError::into_inner);
        let delivered = catch_unwind(AssertUnwindSafe(|| {
            while let Some(envelope) = batch.pop_front() {
                if envelope.born != 0 {
                    self.shared.latency.record(self.control.now().saturating_sub(envelope.born));
                }
                call(envelope.item);
                self.shared.delivered.increment();
            }
        }));
        drop(call);
        if let Err(panic) = delivered {
            // The item in the sink's hands is gone with the panic; the rest never got there.
            counters.abandoned.increment();
            self.abandon(batch);
            resume_unwind(panic);
        }
        true
    }

    /// Abandons items this sink received but will not deliver.
    fn abandon(&self, batch: &mut VecDeque<Envelope<T>>) {
        for envelope in batch.drain(..) {
            self.shared.counters.abandoned.increment();
            if let Some(hook) = &self.on_drop {
                hook(Dropped { stage: "sink", reason: DropReason::Abandoned, item: envelope.item });
            }
        }
    }
}

/// The outputs of the batch being processed, delivered downstream whenever [`BATCH`] of them
/// have piled up.
struct Outputs<'a, T> {
    buf: &'a mut VecDeque<Envelope<T>>,
    downstream: &'a Downstream<T>,
    /// The timestamps of the input being processed, inherited by its outputs.
    born: u64,
    queued: u64,
    emitted: u64,
    /// Set when the pipeline stopped while delivering.
    stopped: bool,
    /// A panic while delivering (in the sink or a drop hook), which is fatal; kept here so
    /// that it is not mistaken for the stage's, and re-raised once the batch is accounted for.
    fatal: Option<Box<dyn Any + Send>>,
}

impl<'a, T> Outputs<'a, T> {
    fn new(buf: &'a mut VecDeque<Envelope<T>>, downstream: &'a Downstream<T>) -> Self {
        Self { buf, downstream, born: 0, queued: 0, emitted: 0, stopped: false, fatal: None }
    }

    fn flush(&mut self) {
        if self.buf.is_empty() || self.fatal.is_some() {
            return;
        }
        let (downstream, buf) = (self.downstream, &mut *self.buf);
        match catch_unwind(AssertUnwindSafe(|| downstream.deliver(buf))) {
            Ok(delivered) => self.stopped |= !delivered,
            Err(panic) => {
                self.fatal = Some(panic);
                self.stopped = true;
            }
        }
    }

    /// Abandons what could not be delivered and re-raises a delivery panic, if there was one.
    fn finish(&mut self) {
        if let Some(panic) = self.fatal.take() {
            self.downstream.abandon(self.buf);
            resume_unwind(panic);
        }
    }
}

impl<T> Emit<T> for Outputs<'_, T> {
    #[inline]
    fn emit(&mut self, item: T) {
        if self.buf.len() >= BATCH {
            self.flush();
        }
        self.emitted += 1;
        self.buf.push_back(Envelope { item, born: self.born, queued: self.queued });
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

/// Runs one worker to the end: until its input is finished and empty (then it flushes its
/// stage), or until the pipeline is cancelled.
pub(crate) fn run<In, S, F>(
    id: &WorkerId,
    factory: &F,
    input: &Link<In>,
    downstream: &Downstream<S::Out>,
    shared: &StageShared,
) where
    F: Fn() -> S,
    S: Stage<In>,
{
    let control = Arc::clone(&input.control);
    let mut inputs: VecDeque<Envelope<In>> = VecDeque::with_capacity(BATCH);
    let mut outputs: VecDeque<Envelope<S::Out>> = VecDeque::with_capacity(BATCH);
    let result = catch_unwind(AssertUnwindSafe(|| {
        work(factory, input, downstream, shared, &mut inputs, &mut outputs);
    }));
    if let Err(panic) = result {
        // Not the stage's panic (those are caught in `work`): the sink or a drop hook.
        for envelope in inputs.drain(..) {
            input.give_up(envelope.item);
        }
        downstream.abandon(&mut outputs);
        control.fail(Fatal {
            stage: id.stage.to_string(),
            worker: id.index,
            message: panic_message(&*panic),
        });
    }
    downstream.upstream_done();
}

fn work<In, S, F>(
    factory: &F,
    input: &Link<In>,
    downstream: &Downstream<S::Out>,
    shared: &StageShared,
    inputs: &mut VecDeque<Envelope<In>>,
    outputs: &mut VecDeque<Envelope<S::Out>>,
) where
    F: Fn() -> S,
    S: Stage<In>,
{
    let control = &*input.control;
    let counters = &*shared.counters;
    let mut stage = factory();
    let mut taken = VecDeque::with_capacity(if S::RUNS { BATCH } else { 0 });
    loop {
        if control.is_cancelled() {
            return;
        }
        if input.pop_into(inputs, BATCH) == 0 {
            if input.finished() && input.len() == 0 {
                break;
            }
            input.wait_for_items();
            continue;
        }
        let mut out = Outputs::new(outputs, downstream);
        let mut outcomes = Outcomes::default();
        // A run stops taking items when the pipeline is cancelled; what it left is abandoned.
        let run_cancelled = || S::RUNS && control.is_cancelled();
        while !inputs.is_empty() && !out.stopped && !run_cancelled() {
            let result = catch_unwind(AssertUnwindSafe(|| {
                if S::RUNS {
                    in_runs(
                        &mut stage,
                        inputs,
                        &mut out,
                        &mut taken,
                        control,
                        shared,
                        &mut outcomes,
                    );
                } else {
                    one_by_one(&mut stage, inputs, &mut out, control, shared, &mut outcomes);
                }
            }));
            if result.is_err() {
                // Delivery panics are caught in `flush`: this one is the stage's. The item
                // it was processing (every item of a run not yet reported) failed with it.
                outcomes.failed += if S::RUNS { taken.len() as u64 } else { 1 };
                taken.clear();
                outcomes.panicked += 1;
                stage = factory();
            }
        }
        let Outcomes { ok, failed, panicked } = outcomes;
        out.flush();
        counters.emitted_outputs.add(out.emitted);
        counters.emitted_inputs.add(ok);
        counters.errored.add(failed);
        counters.panicked.add(panicked);
        if out.stopped || !inputs.is_empty() {
            // Stopped while delivering, or cancelled: what was not processed is abandoned.
            for envelope in inputs.drain(..) {
                input.give_up(envelope.item);
            }
            out.finish();
            return;
        }
    }
    // End of stream: let the stage emit what it holds back.
    let mut out = Outputs::new(outputs, downstream);
    out.queued = control.now();
    if catch_unwind(AssertUnwindSafe(|| stage.flush(&mut out))).is_err() {
        counters.panicked.increment();
    }
    out.flush();
    counters.emitted_outputs.add(out.emitted);
    out.finish();
}

/// How the items of one batch ended.
#[derive(Debug, Default)]
struct Outcomes {
    ok: u64,
    failed: u64,
    panicked: u64,
}

impl Outcomes {
    fn count<E>(&mut self, result: &Result<(), E>) {
        match result {
            Ok(()) => self.ok += 1,
            Err(_) => self.failed += 1,
        }
    }
}

/// Runs the stage over `inputs` item by item, until they are done or delivery stopped.
fn one_by_one<In, S: Stage<In>>(
    stage: &mut S,
    inputs: &mut VecDeque<Envelope<In>>,
    out: &mut Outputs<'_, S::Out>,
    control: &Control,
    shared: &StageShared,
    outcomes: &mut Outcomes,
) {
    while let Some(envelope) = inputs.pop_front() {
        let sampled = envelope.born != 0;
        let popped_at = if sampled { control.now() } else { 0 };
        out.born = envelope.born;
        out.queued = popped_at;
        let result = stage.process(envelope.item, out);
        if sampled {
            shared.queue_wait.record(popped_at.saturating_sub(envelope.queued));
            shared.process_time.record(control.now() - popped_at);
        }
        outcomes.count(&result);
        if out.stopped {
            break;
        }
    }
}

/// What the worker keeps of an item that a run-processing stage has taken and not yet
/// reported: its timestamps, for its outputs and the stats.
#[derive(Debug, Clone, Copy)]
struct Taken {
    born: u64,
    queued: u64,
    popped_at: u64,
}

/// The outputs of a run: each takes the timestamps of the oldest item not yet reported,
/// which is the one it comes from (see [`Stage::process_run`]).
struct RunOutputs<'o, 'a, T> {
    out: &'o mut Outputs<'a, T>,
    taken: &'o RefCell<&'o mut VecDeque<Taken>>,
}

impl<T> Emit<T> for RunOutputs<'_, '_, T> {
    #[inline]
    fn emit(&mut self, item: T) {
        if let Some(taken) = self.taken.borrow().front() {
            self.out.born = taken.born;
            self.out.queued = taken.popped_at;
        }
        self.out.emit(item);
    }
}

/// Hands `inputs` to the stage as one run ([`Stage::process_run`]), until they are done or
/// the pipeline is cancelled. Items the stage took and has not reported stay in `taken` if it
/// panics.
fn in_runs<In, S: Stage<In>>(
    stage: &mut S,
    inputs: &mut VecDeque<Envelope<In>>,
    out: &mut Outputs<'_, S::Out>,
    taken: &mut VecDeque<Taken>,
    control: &Control,
    shared: &StageShared,
    outcomes: &mut Outcomes,
) {
    let taken = RefCell::new(taken);
    let mut items = iter::from_fn(|| {
        if control.is_cancelled() {
            return None;
        }
        let envelope = inputs.pop_front()?;
        let popped_at = if envelope.born != 0 { control.now() } else { 0 };
        let (born, queued) = (envelope.born, envelope.queued);
        taken.borrow_mut().push_back(Taken { born, queued, popped_at });
        Some(envelope.item)
    });
    let mut done = |result: Result<(), S::Error>| {
        let item = taken.borrow_mut().pop_front();
        if let Some(Taken { born, queued, popped_at }) = item {
            if born != 0 {
                shared.queue_wait.record(popped_at.saturating_sub(queued));
                shared.process_time.record(control.now() - popped_at);
            }
        }
        outcomes.count(&result);
    };
    let mut run_out = RunOutputs { out, taken: &taken };
    stage.process_run(&mut items, &mut run_out, &mut done);
}

/// The message of a panic payload, when it is a string.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(not a string)".to_string())
}
