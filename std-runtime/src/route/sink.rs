//! [`Sink`]: the sink closure at the end of a line, called by the workers that feed it.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::{Arc, PoisonError};

use crate::control::Control;
use crate::event::Event;
use crate::hooks::{DropHook, DropReason, Dropped};
use crate::link::{Envelope, Tally};
use crate::stats::SinkShared;
use crate::sync::Mutex;

/// The sink closure, shared by the last stage's workers.
pub(crate) struct Sink<T> {
    /// `"sink"`, or the branch's name.
    pub(crate) name: Arc<str>,
    pub(crate) call: Mutex<Box<dyn FnMut(T) + Send>>,
    pub(crate) shared: Arc<SinkShared>,
    pub(crate) control: Arc<Control>,
    pub(crate) on_drop: Option<DropHook<T>>,
}

impl<T> Sink<T> {
    pub(super) fn deliver(&self, batch: &mut VecDeque<Envelope<T>>) -> bool {
        let n = batch.len() as u64;
        let counters = &self.shared.counters;
        counters.received.add(n);
        if self.control.is_cancelled() {
            self.abandon(batch);
            return false;
        }
        let mut call = self.call.lock().unwrap_or_else(PoisonError::into_inner);
        // Counted once per batch, and up to the item in the sink's hands if it panics.
        let mut tally = Tally { counter: &self.shared.delivered, n: 0 };
        let delivered = catch_unwind(AssertUnwindSafe(|| {
            while let Some(envelope) = batch.pop_front() {
                if envelope.born != 0 {
                    self.shared.latency.record(self.control.now().saturating_sub(envelope.born));
                }
                call(envelope.item);
                tally.n += 1;
            }
        }));
        drop(call);
        drop(tally);
        if let Err(panic) = delivered {
            // The panic stops the pipeline: say so before letting go of anything, so that
            // whoever watches it knows the rest is abandoned, not delivered.
            self.control.cancel();
            // The item in the sink's hands is gone with the panic; the rest never got there.
            counters.abandoned.increment();
            self.abandon(batch);
            resume_unwind(panic);
        }
        true
    }

    /// Abandons items this sink received but will not deliver.
    pub(super) fn abandon(&self, batch: &mut VecDeque<Envelope<T>>) {
        for envelope in batch.drain(..) {
            self.shared.counters.abandoned.increment();
            let reason = DropReason::Abandoned;
            self.control.emit(&Event::Dropped { stage: &self.name, reason });
            let dropped = Dropped { stage: &self.name, reason, item: envelope.item };
            self.control.discard(self.on_drop.as_ref(), dropped);
        }
    }
}
