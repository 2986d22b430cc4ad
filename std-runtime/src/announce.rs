//! [`Announcer`]: events that change state under a lock, announced in order after every lock
//! is let go.
//!
//! The user's event handler may call back into its pipeline — take its stats, push into it —
//! and so may need the very lock under which a state changed (a queue's pressure, a stage's
//! breaker). Announcing under that lock would deadlock it; announcing after letting go of it,
//! thread by thread, could announce two changes in the wrong order. So a change is posted
//! under its lock and delivered after: whoever delivers takes the turn and announces every
//! posted change in order until none is left; a thread that finds the turn taken (on another
//! thread, or further up its own stack, in a handler that caused another change) leaves its
//! change to the one that has it.
//!
//! A change posted while the deliverer is between its last look and giving up the turn is not
//! stranded: the poster posts under the queue's lock and then tries for the turn; the
//! deliverer gives up the turn and then looks again under that lock. One of the two sees the
//! other.

use std::collections::VecDeque;
use std::fmt;
use std::sync::PoisonError;

use crate::sync::{AtomicBool, Mutex, Ordering};

/// Changes waiting to be announced, and whose turn it is; see the [module docs](self).
pub(crate) struct Announcer<K> {
    posted: Mutex<VecDeque<K>>,
    delivering: AtomicBool,
}

impl<K> Announcer<K> {
    pub(crate) fn new() -> Self {
        // Changes are delivered right after they are posted, so a few at a time wait at
        // most: room for them up front keeps a running pipeline from allocating.
        let posted = VecDeque::with_capacity(4);
        Self { posted: Mutex::new(posted), delivering: AtomicBool::new(false) }
    }

    /// Posts a change. Call it under the lock that orders the changes, then
    /// [`deliver`](Self::deliver) once that lock is let go.
    pub(crate) fn post(&self, change: K) {
        self.posted.lock().unwrap_or_else(PoisonError::into_inner).push_back(change);
    }

    /// Announces every posted change with `announce`, in order, unless another call has the
    /// turn (it announces them then). Call it with no lock held: `announce` runs the user's
    /// handler.
    pub(crate) fn deliver(&self, mut announce: impl FnMut(K)) {
        while self.take_turn(&mut announce) {}
    }

    /// One turn of [`deliver`](Self::deliver): if no other call has the turn, announces every
    /// posted change and gives the turn up. Returns whether changes were posted meanwhile
    /// that nobody may announce unless this call takes another turn.
    pub(crate) fn take_turn(&self, announce: &mut impl FnMut(K)) -> bool {
        /// Gives the turn up, also if `announce` unwinds.
        struct Turn<'a>(&'a AtomicBool);
        impl Drop for Turn<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::SeqCst);
            }
        }
        if self
            .delivering
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        let turn = Turn(&self.delivering);
        while let Some(change) = self.next() {
            announce(change);
        }
        drop(turn);
        !self.posted.lock().unwrap_or_else(PoisonError::into_inner).is_empty()
    }

    fn next(&self) -> Option<K> {
        self.posted.lock().unwrap_or_else(PoisonError::into_inner).pop_front()
    }
}

impl<K> fmt::Debug for Announcer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Announcer").finish_non_exhaustive()
    }
}
