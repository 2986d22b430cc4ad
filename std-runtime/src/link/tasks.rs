//! What tasks see of a link: waiting for items or room with a [`Waker`](std::task::Waker)
//! instead of a parked thread (an `Output` read as a stream, an `Input` sending from async
//! code, a worker whose stage holds futures), on the link's own [`Signal`](crate::wait::Signal)s,
//! so a task is woken by exactly the notifications that wake a parked thread.

use std::task::{Context, Poll};

#[cfg(feature = "async")]
use backflow_core::Overflow;

#[cfg(feature = "async")]
use super::Envelope;
use super::Link;
use crate::event::Event;
use crate::hooks::DropReason;
use crate::wait::Registration;

impl<T> Link<T> {
    /// `Ready` once the ring has an item, every item has arrived, or the pipeline is
    /// cancelled; otherwise registers the task to be woken when one of those may have become
    /// true. With `items` false, only the cancel counts (a worker that cannot take more yet).
    pub(crate) fn poll_items(
        &self,
        cx: &mut Context<'_>,
        registration: &mut Registration,
        items: bool,
    ) -> Poll<()> {
        let ready =
            || self.control.is_cancelled() || (items && (!self.ring.is_empty() || self.finished()));
        if ready() {
            self.items.unregister(registration);
            return Poll::Ready(());
        }
        self.items.poll_until(cx, registration, ready)
    }

    /// Gives up a task's place among the waiters for items.
    pub(crate) fn forget_items(&self, registration: &mut Registration) {
        self.items.unregister(registration);
    }

    /// Abandons an item this link already received and that is gone without being handed
    /// back: a stage held it in flight (a future that owned it) when the pipeline stopped.
    /// Counted, and announced as dropped; the drop hook has no item to see.
    pub(crate) fn give_up_held(&self) {
        self.counters.abandoned.increment();
        self.control.emit(&Event::Dropped { stage: &self.stage, reason: DropReason::Abandoned });
    }
}

/// What the async ends of a pipeline (`Input::send`, `Output` as a stream) need.
#[cfg(feature = "async")]
impl<T> Link<T> {
    /// `Ready` once a push of an item of `weight` under `Block` need not wait (pressure is
    /// off, the ring has room and, with a byte budget, the item fits), or the pipeline
    /// stopped; otherwise registers the task to be woken when that may have changed. The
    /// task's side of [`wait_for_room`](Link::wait_for_room).
    pub(crate) fn poll_room(
        &self,
        cx: &mut Context<'_>,
        registration: &mut Registration,
        weight: usize,
    ) -> Poll<()> {
        self.raise();
        let ready = || self.room_for(weight);
        let polled = if ready() {
            self.room.unregister(registration);
            Poll::Ready(())
        } else {
            self.room.poll_until(cx, registration, ready)
        };
        if polled.is_ready() {
            // Pass the news on, as a parked producer does: others may wait on the same room.
            self.room.notify();
        }
        self.announce_pressure();
        polled
    }

    /// Gives up a task's place among the waiters for room.
    pub(crate) fn forget_room(&self, registration: &mut Registration) {
        self.room.unregister(registration);
    }

    /// Pops one item without waiting.
    pub(crate) fn try_pop(&self) -> Option<Envelope<T>> {
        let envelope = self.ring.try_pop()?;
        self.popped();
        Some(envelope)
    }

    /// No item will come out of this link any more: cancelled, or finished and empty.
    pub(crate) fn is_over(&self) -> bool {
        self.control.is_cancelled() || (self.finished() && self.ring.is_empty())
    }

    /// Whether a full queue makes a push wait (rather than fail or drop).
    pub(crate) fn blocks(&self) -> bool {
        self.overflow == Overflow::Block
    }
}
