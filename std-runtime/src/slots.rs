//! The ring inside a link. Where several threads may push or pop (the input handles, a stage
//! with several workers) it is the core's MPMC ring, which claims every slot with a CAS.
//! Where one worker pushes and one thread pops (a stage with one worker behind a stage with
//! one worker, or the output handle) it is the core's SPSC ring, whose halves move a run of
//! items with plain loads and stores and publish it once: each half sits behind a lock that
//! its user takes once per batch (uncontended), and that a sweep or a `DropOldest` eviction
//! takes too.

use std::collections::VecDeque;
use std::mem;
use std::sync::{Arc, PoisonError};

use backflow_core::overflow::Queue;
use backflow_core::ring::{CapacityError, PushError, mpmc, spsc};

use crate::sync::{CachePadded, Mutex, MutexGuard};

type SpscRing<T> = Arc<spsc::HeapRing<T>>;

/// A link's ring; see the [module docs](self).
#[allow(
    clippy::large_enum_variant,
    reason = "one per link; boxing the MPMC ring (its indices are cache-padded) would add an \
              indirection to every push and pop"
)]
pub(crate) enum Slots<T> {
    /// Several producers or several consumers.
    Shared(mpmc::HeapRing<T>),
    /// One producing thread, one consuming thread.
    Single {
        /// For the length, read by anyone without taking a lock.
        ring: SpscRing<T>,
        // Each half on a cache line of its own: the producing thread takes its lock for every
        // single push, the consuming thread its own for every run.
        tx: CachePadded<Mutex<spsc::Producer<SpscRing<T>>>>,
        rx: CachePadded<Mutex<spsc::Consumer<SpscRing<T>>>>,
    },
}

fn locked<G>(mutex: &Mutex<G>) -> MutexGuard<'_, G> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<T> Slots<T> {
    /// A ring of `capacity` slots, SPSC if `single`.
    ///
    /// # Errors
    ///
    /// The capacity is out of range, or the allocator refused the slots.
    pub(crate) fn new(capacity: usize, single: bool) -> Result<Self, CapacityError> {
        Ok(if single {
            let (tx, rx) = spsc::HeapRing::with_capacity(capacity)?.into_split();
            Self::Single {
                ring: Arc::clone(tx.ring()),
                tx: CachePadded::new(Mutex::new(tx)),
                rx: CachePadded::new(Mutex::new(rx)),
            }
        } else {
            Self::Shared(mpmc::HeapRing::with_capacity(capacity)?)
        })
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Shared(ring) => ring.len(),
            Self::Single { ring, .. } => ring.len(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a push would find no room: with the MPMC ring also while the slot it would fill
    /// holds an item a run has claimed and not read yet (see `mpmc::Ring::is_full`).
    pub(crate) fn is_full(&self) -> bool {
        match self {
            Self::Shared(ring) => ring.is_full(),
            Self::Single { ring, .. } => ring.is_full(),
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        match self {
            Self::Shared(ring) => ring.capacity(),
            Self::Single { ring, .. } => ring.capacity(),
        }
    }

    /// Pops one item.
    pub(crate) fn try_pop(&self) -> Option<T> {
        match self {
            Self::Shared(ring) => ring.try_pop().ok(),
            Self::Single { rx, .. } => locked(rx).try_pop().ok(),
        }
    }

    /// Pops up to `max` items, oldest first, into `f`; returns how many. With the MPMC ring the
    /// run is claimed whole before `f` runs (see `mpmc::Ring::pop_each`): `f` must not panic.
    pub(crate) fn pop_each(&self, max: usize, f: impl FnMut(T)) -> usize {
        match self {
            Self::Shared(ring) => ring.pop_each(max, f),
            Self::Single { rx, .. } => locked(rx).pop_each(max, f),
        }
    }

    /// Pops items, oldest first, into `f` until it returns `false` (or `max` items, or the ring
    /// is empty); returns how many. An SPSC ring is locked once for the run.
    pub(crate) fn pop_while(&self, max: usize, mut f: impl FnMut(T) -> bool) -> usize {
        let mut popped = 0;
        let mut go_on = true;
        match self {
            Self::Shared(ring) => {
                while go_on && popped < max {
                    let Ok(item) = ring.try_pop() else { break };
                    go_on = f(item);
                    popped += 1;
                }
            }
            Self::Single { rx, .. } => {
                let mut rx = locked(rx);
                while go_on && popped < max {
                    let Ok(item) = rx.try_pop() else { break };
                    go_on = f(item);
                    popped += 1;
                }
            }
        }
        popped
    }

    /// The pushing side, for a run of pushes by one thread. With an SPSC ring it holds the
    /// producer's lock until dropped.
    pub(crate) fn pusher(&self) -> Pusher<'_, T> {
        match self {
            Self::Shared(ring) => Pusher::Shared(ring),
            Self::Single { tx, rx, .. } => Pusher::Single { tx: locked(tx), rx },
        }
    }
}

/// The pushing side of [`Slots`], a [`Queue`] for the core's overflow policies.
pub(crate) enum Pusher<'a, T> {
    Shared(&'a mpmc::HeapRing<T>),
    Single {
        tx: MutexGuard<'a, spsc::Producer<SpscRing<T>>>,
        /// Taken only to evict the oldest item from a full ring.
        rx: &'a Mutex<spsc::Consumer<SpscRing<T>>>,
    },
}

impl<T> Pusher<'_, T> {
    /// Pushes items from `items` while there is room and returns how many, with the item it
    /// took but found no room for, if any (only an MPMC ring, which other threads fill too,
    /// gives one back). An SPSC ring takes an item only when it has a slot for it and
    /// publishes the run once.
    pub(crate) fn push_run(&mut self, items: &mut impl Iterator<Item = T>) -> (usize, Option<T>) {
        match self {
            Self::Shared(ring) => {
                let mut pushed = 0;
                for item in items {
                    if let Err(PushError::Full(back)) = ring.try_push(item) {
                        return (pushed, Some(back));
                    }
                    pushed += 1;
                }
                (pushed, None)
            }
            Self::Single { tx, .. } => (tx.push_iter(items), None),
        }
    }

    /// Pushes items from the front of `items` while there is room; returns how many. What the
    /// ring did not take stays in `items`, in order. An SPSC ring takes the run it has room for
    /// as one slice and publishes it once.
    // NB: draining the run from a `Vec` (the `VecDeque` converted, which moves nothing while its
    // items start at the front of its buffer) costs about 6 instructions an item less than
    // `pop_front` per item (benches/README.md, "In place: the stage over the ring's slots").
    pub(crate) fn push_from(&mut self, items: &mut VecDeque<T>) -> usize {
        match self {
            Self::Shared(ring) => {
                let mut pushed = 0;
                while let Some(item) = items.pop_front() {
                    if let Err(PushError::Full(back)) = ring.try_push(item) {
                        items.push_front(back);
                        break;
                    }
                    pushed += 1;
                }
                pushed
            }
            Self::Single { tx, .. } => {
                // Only this thread pushes: the free space seen now can only grow until the
                // push, which therefore takes every item of the run.
                let room = tx.capacity() - tx.len();
                let mut run = Vec::from(mem::take(items));
                let take = room.min(run.len());
                let pushed = tx.push_iter(&mut run.drain(..take));
                debug_assert_eq!(pushed, take);
                *items = VecDeque::from(run);
                pushed
            }
        }
    }

    /// Whether [`push_run`](Self::push_run) publishes a run at once (an SPSC ring), so that
    /// whatever it does not take stays with the caller.
    pub(crate) fn takes_runs(&self) -> bool {
        matches!(self, Self::Single { .. })
    }

    /// Pops the oldest item, to make room for another one by weight (`DropOldest` under a
    /// byte budget, where the ring may have free slots).
    pub(crate) fn evict(&mut self) -> Option<T> {
        match self {
            Self::Shared(ring) => ring.try_pop().ok(),
            Self::Single { rx, .. } => locked(rx).try_pop().ok(),
        }
    }
}

impl<T> Queue<T> for Pusher<'_, T> {
    #[inline]
    fn try_push(&mut self, item: T) -> Result<(), PushError<T>> {
        match self {
            Self::Shared(ring) => ring.try_push(item),
            Self::Single { tx, .. } => tx.try_push(item),
        }
    }

    fn force_push(&mut self, item: T) -> Option<T> {
        match self {
            Self::Shared(ring) => ring.force_push(item),
            Self::Single { tx, rx } => {
                let Err(PushError::Full(item)) = tx.try_push(item) else { return None };
                // Only this thread pushes (it holds `tx`), so the slot freed by the eviction
                // (or by the consumer meanwhile) is still free for the push.
                let oldest = locked(rx).try_pop().ok();
                match tx.try_push(item) {
                    Ok(()) => oldest,
                    Err(_) => unreachable!("a slot was just freed and only this thread pushes"),
                }
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Shared(ring) => ring.len(),
            Self::Single { tx, .. } => tx.len(),
        }
    }
}
