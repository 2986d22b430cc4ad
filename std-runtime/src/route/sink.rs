//! [`Sink`]: the sink closure at the end of a line, called by the workers that feed it.

use std::any::Any;
use std::collections::VecDeque;
use std::mem;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::{Arc, PoisonError};

use crate::control::Control;
use crate::event::Event;
use crate::hooks::{DropHook, DropReason, Dropped};
use crate::link::Envelope;
use crate::stats::SinkShared;
use crate::sync::Mutex;

/// The user's sink closure inside a loop over a whole batch, built for its type: one dynamic
/// call per batch, and the closure inlined in the loop.
pub(crate) struct SinkCall<T>(Box<Loop<T>>);

/// The loop of a [`SinkCall`]: delivers the batch, or hands back the panic of the closure
/// with what it did not take left in the batch.
type Loop<T> = dyn FnMut(&mut VecDeque<Envelope<T>>, &mut Delivery<'_>) -> Result<(), Panic> + Send;

type Panic = Box<dyn Any + Send>;

// NB: the batch is walked as a `Vec` (converting a `VecDeque` that starts at the front of its
// buffer, and back, moves nothing), each call caught on its own so that a panic does not drop
// the rest; with one dynamic call per batch that is 16 instructions an item where a
// `pop_front` loop calling through the box took 29 (benches/README.md, "In place:
// the stage over the ring's slots").
impl<T> SinkCall<T> {
    /// Wraps `sink`, which is called with every item.
    pub(crate) fn new<F: FnMut(T) + Send + 'static>(mut sink: F) -> Self
    where
        T: 'static,
    {
        Self(Box::new(move |batch, delivery| {
            let mut items = Vec::from(mem::take(batch));
            let mut outcome = Ok(());
            let mut taken = items.drain(..);
            for envelope in &mut taken {
                let called = catch_unwind(AssertUnwindSafe(|| {
                    if envelope.born != 0 {
                        (delivery.sampled)(envelope.born);
                    }
                    sink(envelope.item);
                }));
                if let Err(panic) = called {
                    outcome = Err(panic);
                    break;
                }
                delivery.delivered += 1;
            }
            // Empty unless the sink panicked: then it allocates, once.
            let rest: Vec<Envelope<T>> = taken.collect();
            items.extend(rest);
            *batch = VecDeque::from(items);
            outcome
        }))
    }
}

/// What the loop of a [`SinkCall`] reports as it goes: how many items the closure took (up to
/// the one in its hands if it panics), and where a sampled item's birth time goes.
pub(crate) struct Delivery<'a> {
    delivered: u64,
    sampled: &'a dyn Fn(u64),
}

/// The sink closure, shared by the last stage's workers.
pub(crate) struct Sink<T> {
    /// `"sink"`, or the branch's name.
    pub(crate) name: Arc<str>,
    pub(crate) call: Mutex<SinkCall<T>>,
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
        let sampled =
            |born: u64| self.shared.latency.record(self.control.now().saturating_sub(born));
        let mut delivery = Delivery { delivered: 0, sampled: &sampled };
        let delivered = (call.0)(batch, &mut delivery);
        drop(call);
        self.shared.delivered.add(delivery.delivered);
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
