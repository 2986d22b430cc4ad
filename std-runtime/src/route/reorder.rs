//! [`Reorder`]: the ordered hand-off of an `Ordered` stage's batches.

use std::collections::VecDeque;
use std::mem;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::PoisonError;
use std::time::Duration;

use backflow_core::ReorderWindow;

use super::Downstream;
use crate::link::Envelope;
use crate::sync::{Condvar, Mutex};

/// Batches an `Ordered` stage may finish ahead of the oldest one still being processed.
#[cfg(not(loom))]
pub(crate) const REORDER_WINDOW: usize = 16;
/// Under loom, two: the model's workers (`models/reorder.rs`) then also wait for the window.
#[cfg(loom)]
pub(crate) const REORDER_WINDOW: usize = 2;

/// The hand-off of an `Ordered` stage: workers take batches in queue order under a lock, each
/// with a sequence number, and hand their outputs back through a [`ReorderWindow`], which
/// releases them downstream in sequence. A worker whose batch is further ahead than the
/// window waits for it to move: memory stays bounded.
pub(crate) struct Reorder<T> {
    /// The next batch's sequence number; its lock also makes taking a batch and numbering it
    /// one step.
    next_ticket: Mutex<u64>,
    window: Mutex<Window<T>>,
    moved: Condvar,
}

struct Window<T> {
    slots: Box<ReorderWindow<VecDeque<Envelope<T>>, REORDER_WINDOW>>,
    /// Emptied buffers, kept for reuse.
    spare: Vec<VecDeque<Envelope<T>>>,
    /// Set once a delivery stopped (cancel) or panicked: later batches are abandoned.
    stopped: bool,
}

/// How handing a batch's outputs over ended.
pub(crate) enum HandOver {
    Delivered,
    /// The pipeline stopped; the outputs were abandoned downstream.
    Stopped,
    /// A delivery panicked (the sink, a drop hook); re-raise it once accounted for.
    Panicked(Box<dyn std::any::Any + Send>),
}

impl<T> Reorder<T> {
    pub(crate) fn new() -> Self {
        Self {
            next_ticket: Mutex::new(0),
            window: Mutex::new(Window {
                slots: Box::new(ReorderWindow::new()),
                spare: Vec::new(),
                stopped: false,
            }),
            moved: Condvar::new(),
        }
    }

    /// Takes a batch with `pop`, which returns how many items it took, and numbers it, in one
    /// step under the ticket lock: the numbers follow the queue's order. Returns how many
    /// items `pop` took, and the batch's number if it took any.
    pub(crate) fn take(&self, pop: impl FnOnce() -> usize) -> (usize, Option<u64>) {
        let mut next = self.next_ticket.lock().unwrap_or_else(PoisonError::into_inner);
        let popped = pop();
        let ticket = (popped > 0).then(|| {
            *next += 1;
            *next - 1
        });
        (popped, ticket)
    }

    /// Hands over the outputs of batch `ticket` (leaving `outputs` empty, with a spare
    /// buffer's capacity) and delivers every batch that is now due, in sequence.
    pub(crate) fn hand_over(
        &self,
        ticket: u64,
        outputs: &mut VecDeque<Envelope<T>>,
        downstream: &Downstream<T>,
        cancelled: impl Fn() -> bool,
    ) -> HandOver {
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        while !window.slots.fits(ticket) && !window.stopped && !cancelled() {
            window = self
                .moved
                .wait_timeout(window, Duration::from_millis(20))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let spare = window.spare.pop().unwrap_or_default();
        let mine = mem::replace(outputs, spare);
        if window.stopped || !window.slots.fits(ticket) {
            let mut mine = mine;
            downstream.abandon(&mut mine);
            return HandOver::Stopped;
        }
        if let Err(refused) = window.slots.accept(ticket, mine) {
            // Each ticket is handed over once; a refusal would be a bug, but lose nothing.
            downstream.abandon(&mut refused.into_inner());
            return HandOver::Stopped;
        }
        let mut result = HandOver::Delivered;
        while let Some((_, mut batch)) = window.slots.pop_ready() {
            if window.stopped {
                downstream.abandon(&mut batch);
            } else {
                match catch_unwind(AssertUnwindSafe(|| downstream.deliver(&mut batch))) {
                    Ok(true) => {}
                    Ok(false) => {
                        window.stopped = true;
                        result = HandOver::Stopped;
                    }
                    Err(panic) => {
                        window.stopped = true;
                        downstream.abandon(&mut batch);
                        result = HandOver::Panicked(panic);
                    }
                }
            }
            window.spare.push(batch);
        }
        drop(window);
        self.moved.notify_all();
        result
    }

    /// Stops the hand-off and abandons every batch held in the window, gaps and all: a
    /// worker that stops (cancel, a fatal panic) may leave its batch's turn unfilled.
    pub(crate) fn abandon_waiting(&self, downstream: &Downstream<T>) {
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        window.stopped = true;
        let next = window.slots.next_seq();
        for seq in next..next + REORDER_WINDOW as u64 {
            // Fill the gaps with empty batches; the held ones refuse as duplicates.
            let _ = window.slots.accept(seq, VecDeque::new());
        }
        while let Some((_, mut batch)) = window.slots.pop_ready() {
            downstream.abandon(&mut batch);
        }
        drop(window);
        self.moved.notify_all();
    }
}
