//! [`Flight`]: the futures one stage instance has in flight, each polled only when its own
//! waker says it may progress.
//!
//! Every future gets a waker of its own that queues the future's slot and wakes the stage's
//! current waker (the worker's, set by [`Flight::set_waker`]); [`Flight::drive`] then polls
//! the queued slots alone, so a wake-up costs one poll, not one per future in flight.

use std::any::Any;
use std::future::Future;
use std::mem;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use backflow::stage::Deferred;

/// A future in flight, boxed: what [`Flight`] holds.
pub(crate) type Boxed<T> = Pin<Box<dyn Future<Output = T>>>;

/// The futures in flight, each under a ticket that says which item it is.
pub(crate) struct Flight<T> {
    slots: Vec<Option<Slot<T>>>,
    free: Vec<usize>,
    woken: Arc<Woken>,
    len: usize,
}

struct Slot<T> {
    future: Boxed<T>,
    wake: Arc<SlotWake>,
    waker: Waker,
    ticket: u64,
    /// What its polls so far deferred: it waits for the future's outcome.
    deferred: Deferred,
}

/// The slots whose futures were woken since the last drive, and whom to tell.
#[derive(Default)]
struct Woken {
    slots: Mutex<Vec<usize>>,
    waker: Mutex<Option<Waker>>,
}

/// One future's waker: queues its slot (once until it is polled) and passes the wake on.
struct SlotWake {
    slot: usize,
    queued: AtomicBool,
    woken: Arc<Woken>,
}

impl Wake for SlotWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        lock(&self.woken.slots).push(self.slot);
        let waker = lock(&self.woken.waker).clone();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<T> Drop for Flight<T> {
    /// Drops the futures still in flight one at a time, each in its own catch: a future whose
    /// drop panics neither takes the others' drops with it nor, with a second panic while the
    /// first unwinds, the process. The first panic goes on once all are dropped (unless a
    /// panic is unwinding already), as a panic of the stage's own.
    fn drop(&mut self) {
        drop_one_by_one(self.slots.drain(..).flatten());
    }
}

/// Drops `values` one at a time, each in its own catch: a value whose drop panics neither
/// takes the others' drops with it nor, with a second panic while the first unwinds, the
/// process. The first panic goes on once all are dropped, unless a panic is unwinding
/// already.
pub(crate) fn drop_one_by_one<T>(values: impl IntoIterator<Item = T>) {
    let mut first = None;
    for value in values {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| drop(value))) {
            first.get_or_insert(panic);
        }
    }
    if let Some(panic) = first.filter(|_| !std::thread::panicking()) {
        resume_unwind(panic);
    }
}

impl<T> Flight<T> {
    pub(crate) fn new() -> Self {
        Self { slots: Vec::new(), free: Vec::new(), woken: Arc::default(), len: 0 }
    }

    /// Futures in flight.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The waker to wake when a future may progress (the task or thread driving the stage).
    pub(crate) fn set_waker(&self, waker: &Waker) {
        let mut current = lock(&self.woken.waker);
        match &mut *current {
            Some(current) if current.will_wake(waker) => {}
            current => *current = Some(waker.clone()),
        }
    }

    /// Adds a future under `ticket`; the next [`drive`](Self::drive) polls it first.
    pub(crate) fn insert(&mut self, future: Boxed<T>, ticket: u64) {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        let wake = Arc::new(SlotWake {
            slot,
            queued: AtomicBool::new(true),
            woken: Arc::clone(&self.woken),
        });
        let waker = Waker::from(Arc::clone(&wake));
        self.slots[slot] =
            Some(Slot { future, wake, waker, ticket, deferred: Deferred::default() });
        self.len += 1;
        lock(&self.woken.slots).push(slot);
    }

    /// Polls every future woken since the last drive, once, and hands each one that finished
    /// to `finished` with its ticket: its output, or the message of its panic, and the work
    /// its polls and its drop deferred ([`after_outcome`](backflow::stage::after_outcome)), to
    /// be deferred when its outcome is reported. A panic in a finished future's `drop` is
    /// its panic too. A future woken during the drive waits for the next one (the stage's
    /// waker is woken for it), so one that wakes itself at every poll cannot hold the others
    /// up.
    pub(crate) fn drive(&mut self, mut finished: impl FnMut(u64, Result<T, String>, Deferred)) {
        let woken = mem::take(&mut *lock(&self.woken.slots));
        {
            for slot in woken {
                let Some(Some(entry)) = self.slots.get_mut(slot) else { continue };
                entry.wake.queued.store(false, Ordering::Release);
                let mut cx = Context::from_waker(&entry.waker);
                let future = &mut entry.future;
                let (polled, deferred) = Deferred::collect(|| {
                    catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut cx)))
                });
                entry.deferred.append(deferred);
                let outcome = match polled {
                    Ok(Poll::Pending) => continue,
                    Ok(Poll::Ready(output)) => Ok(output),
                    Err(panic) => Err(message(&*panic)),
                };
                let Some(Slot { future, ticket, mut deferred, .. }) = self.slots[slot].take()
                else {
                    continue;
                };
                self.free.push(slot);
                self.len -= 1;
                let (dropped, more) =
                    Deferred::collect(|| catch_unwind(AssertUnwindSafe(|| drop(future))));
                deferred.append(more);
                let outcome = match dropped {
                    Ok(()) => outcome,
                    Err(panic) => Err(message(&*panic)),
                };
                finished(ticket, outcome, deferred);
            }
        }
    }
}

/// A panic's message.
fn message(payload: &(dyn Any + Send)) -> String {
    backflow::stage::panic_message(payload)
}
