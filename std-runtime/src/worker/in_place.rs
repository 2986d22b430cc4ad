//! The fast path of a plain stage (no per-item policy, no runs, no ordered hand-off): the
//! stage runs over the items as the queue's pop hands them out, straight from the ring's
//! slots, instead of the items being moved into the worker's batch first and taken out of it
//! again.
//!
//! The pop must not unwind (an MPMC ring has claimed the whole run before the first item is
//! handed out), so every item is processed inside its own catch: a panic of the stage fails
//! that item, the stage is rebuilt, and the run goes on. Once the run has to stop (delivery
//! stopped, the pipeline was cancelled after a panic, or the factory panicked) the rest of it
//! is put in the worker's batch, where the worker abandons it as it would on the slow path,
//! and a panic of the factory is raised again after the pop.
//!
//! A queue whose producers pop too (`DropOldest` evicts the oldest item; a byte budget
//! counts weights out) keeps the slow path: an SPSC ring is locked for the whole pop, which
//! here includes the stage's work and the delivery downstream.

use std::collections::VecDeque;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use backflow_core::stage::Stage;

use super::{Envelope, ItemPolicy, Outcomes, Outputs, Times, rebuild};
use crate::batch::BATCH;
use crate::panic::Caught;

/// Pops a batch from the stage's queue and runs the stage over it item by item; returns how
/// many items were popped. Items left over when the run had to stop are in `inputs`.
///
/// # Panics
///
/// Raises again a panic of the stage's factory (the worker cannot go on without a stage), once
/// the pop has ended.
// NB: taking items straight from the ring saves a push into and a pop from the worker's batch
// per item (benches/README.md, "In place: the stage over the ring's slots").
pub(super) fn process<In, S, F>(
    stage: &mut S,
    factory: &F,
    inputs: &mut VecDeque<Envelope<In>>,
    out: &mut Outputs<'_, S::Out>,
    cx: &ItemPolicy<'_, In, S::Out>,
    outcomes: &mut Outcomes<'_>,
) -> usize
where
    F: Fn() -> S,
    S: Stage<In>,
    S::Error: fmt::Display,
{
    let control = cx.control;
    let (failed_before, left_before) = (outcomes.failed, inputs.len());
    let mut fatal = None;
    // Set once the run must stop: what is left of it goes to `inputs`.
    let mut stop = false;
    let popped = cx.input.pop_each(BATCH, |envelope| {
        if stop {
            inputs.push_back(envelope);
            return;
        }
        let processed = catch_unwind(AssertUnwindSafe(|| {
            let popped_at = cx.start(&envelope, out);
            let times = Times { born: envelope.born, queued: envelope.queued, popped_at };
            // An error's drop is the user's code: caught, inside the run's closure.
            let result = stage.process(envelope.item, out).map_err(Caught::new);
            cx.timed(&times);
            result
        }));
        match processed {
            // Items that succeeded are counted once the run is over.
            Ok(Ok(())) => {}
            Ok(Err(_)) => outcomes.failed += 1,
            Err(_) => {
                // Delivery panics are caught in `flush`: this one is the stage's, and the
                // item it was processing failed with it.
                outcomes.failed += 1;
                outcomes.panicked += 1;
                // Plain (skip): whatever the old stage's flush says, the run goes on.
                match catch_unwind(AssertUnwindSafe(|| rebuild(stage, factory, out))) {
                    Ok(_) => stop = control.is_cancelled(),
                    Err(panic) => {
                        fatal = Some(panic);
                        stop = true;
                    }
                }
            }
        }
        stop |= out.stopped;
    });
    // Every item popped succeeded but those that failed and those left over.
    let failed = outcomes.failed - failed_before;
    let left = inputs.len() - left_before;
    outcomes.ok += (popped - left) as u64 - failed;
    if let Some(panic) = fatal {
        resume_unwind(panic);
    }
    popped
}
