//! The worker of a stage that holds items in flight ([`Stage::HOLDS`]), such as futures
//! waiting on I/O.
//!
//! The stage takes from each run only what it has room for, and reports the rest of its items
//! in later runs. So the worker runs the stage whenever it can make progress: when new items
//! arrive while it has room, and when [`Stage::poll_held`] says something it holds finished.
//! In between it waits for either one, its waker registered with both the stage and the input
//! queue's wait signal, so that neither a finished item nor a new one can slip past it. While
//! the stage has no room the worker takes nothing from its queue, and the queue's water marks
//! hold the producers back as they would for any slow stage.
//!
//! Retries of held items go back through the stage's runs (see `in_runs`), and an ordered
//! stage with several workers finishes each batch before it hands the batch on in sequence.
//! When the pipeline is cancelled the worker stops at once: the items the stage holds are
//! counted as abandoned (see `Held::abandon`) and dropped with the stage.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Wake, Waker};
use std::time::Instant;

use backflow_core::stage::Stage;

use super::{
    Envelope, Held, ItemPolicy, Outcomes, Outputs, WorkerParts, flush, in_runs, nanos_since, pop,
};
use crate::deferred::Deferred;
use crate::link::Link;
use crate::sync::thread::{self, Thread};
use crate::sync::{AtomicBool, Ordering};
use crate::wait::Registration;

/// Runs a holding stage until its input is finished, empty and every item it held is
/// reported (then it flushes the stage), or until the pipeline is cancelled.
#[allow(clippy::too_many_arguments)]
pub(super) fn work<In, S, F>(
    factory: &F,
    parts: &WorkerParts<In, S::Out>,
    stage: &mut S,
    inputs: &mut VecDeque<Envelope<In>>,
    outputs: &mut VecDeque<Envelope<S::Out>>,
    held: &mut Held<In>,
    cx: &ItemPolicy<'_, In, S::Out>,
    plain: bool,
) where
    F: Fn() -> S,
    S: Stage<In>,
    S::Error: fmt::Display,
{
    let (input, control) = (&*parts.input, cx.control);
    let mut waiting = Waiting::new(input);
    let mut flushed_at = Instant::now();
    let mut finished_while_waiting = None;
    loop {
        if control.is_cancelled() {
            return;
        }
        // Asked to retire, and holding nothing: leave as at the end of the stream.
        let holds_nothing = inputs.is_empty() && held.retries.is_empty() && held.taken.is_empty();
        if holds_nothing && parts.shared.workers.take_retirement() {
            break;
        }
        if let Some(period) = parts.flush_every {
            if flushed_at.elapsed() >= period {
                flushed_at = Instant::now();
                if !flush(stage, outputs, parts, control, (cx.worker, held)) {
                    return;
                }
            }
        }
        let deadline = parts.flush_every.and_then(|period| flushed_at.checked_add(period));
        let nothing_to_take = inputs.is_empty() && held.retries.is_empty();
        let mut ticket = None;
        // An ordered stage with several workers takes a new batch only once the last one is
        // reported, so that each batch is handed on whole, in sequence.
        if nothing_to_take && (parts.reorder.is_none() || held.taken.is_empty()) {
            let (popped, popped_ticket) = pop(parts, inputs);
            ticket = popped_ticket;
            if popped == 0 && held.taken.is_empty() {
                if input.finished() && input.len() == 0 {
                    break;
                }
                input.wait_for_items_or(deadline, || parts.shared.workers.retirement_asked());
                continue;
            }
        }
        let mut out = Outputs::new(outputs, parts);
        let mut outcomes = Outcomes::new(cx);
        // What the stage finished while the worker waited is reported in this batch: the work
        // its items deferred waits for the batch's outcomes.
        drop(finished_while_waiting.take());
        let mut busy = 0;
        loop {
            let started = control.timings.then(Instant::now);
            in_runs(stage, factory, inputs, &mut out, held, cx, &mut outcomes, plain);
            busy += started.map_or(0, nanos_since);
            // What finished goes on at once (an ordered hand-off waits for the whole batch).
            outcomes.publish();
            if ticket.is_none() {
                out.flush();
            }
            if out.stopped || control.is_cancelled() {
                break;
            }
            let left_to_take = !inputs.is_empty() || !held.retries.is_empty();
            if !left_to_take && (held.taken.is_empty() || ticket.is_none()) {
                break;
            }
            if held.taken.is_empty() {
                // Room made, and items to take.
                continue;
            }
            // The stage has no room for the rest of the batch, or an ordered batch is not
            // reported yet: wait for the stage alone.
            waiting.until_progress(stage, false, None);
        }
        drop(outcomes);
        out.finish_batch(ticket, control);
        let counters = &cx.shared.counters;
        counters.backpressured_ns.add(out.delivering);
        counters.busy_ns.add(busy.saturating_sub(out.delivering));
        if out.stopped || control.is_cancelled() {
            // What was not taken is abandoned, and so is what the stage holds (by `run`).
            for envelope in inputs.drain(..) {
                input.give_up(envelope.item);
            }
            out.finish();
            return;
        }
        if inputs.is_empty() && held.retries.is_empty() && !held.taken.is_empty() {
            // Items in flight and none to take: wait for the stage or for new items.
            let more = !(input.finished() && input.len() == 0);
            let (_, finished) = Deferred::collect(|| waiting.until_progress(stage, more, deadline));
            finished_while_waiting = Some(finished);
        }
    }
    drop(waiting);
    // End of stream: let the stage emit what it holds back.
    flush(stage, outputs, parts, control, (cx.worker, held));
    held.flushed = true;
}

/// The worker's place among the input queue's waiters, given back when it is dropped.
struct Waiting<'a, In> {
    input: &'a Link<In>,
    registration: Registration,
    waker: Arc<ThreadWaker>,
}

impl<'a, In> Waiting<'a, In> {
    fn new(input: &'a Link<In>) -> Self {
        let waker =
            Arc::new(ThreadWaker { thread: thread::current(), woken: AtomicBool::new(false) });
        Self { input, registration: Registration::default(), waker }
    }

    /// Waits until the stage can make progress, or (with `items`) the input has items or has
    /// ended, or the pipeline is cancelled, or `deadline`.
    fn until_progress<S: Stage<In>>(
        &mut self,
        stage: &mut S,
        items: bool,
        deadline: Option<Instant>,
    ) {
        let waker = Waker::from(Arc::clone(&self.waker));
        let mut cx = Context::from_waker(&waker);
        loop {
            self.waker.woken.store(false, Ordering::SeqCst);
            if self.input.poll_items(&mut cx, &mut self.registration, items).is_ready()
                || stage.poll_held(&mut cx).is_ready()
            {
                return;
            }
            while !self.waker.woken.swap(false, Ordering::Acquire) {
                match deadline.map(|deadline| deadline.checked_duration_since(Instant::now())) {
                    None => thread::park(),
                    Some(Some(left)) if !left.is_zero() => thread::park_timeout(left),
                    Some(_) => return,
                }
            }
        }
    }
}

impl<In> Drop for Waiting<'_, In> {
    fn drop(&mut self) {
        self.input.forget_items(&mut self.registration);
    }
}

/// Wakes the worker's thread: what a held item's future or a push into the input queue calls.
struct ThreadWaker {
    thread: Thread,
    woken: AtomicBool,
}

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.thread.unpark();
    }
}
