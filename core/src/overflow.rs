//! What a push does when the queue is full or under pressure: one decision function shared by
//! the std runtime and the bare-metal driver, so both account for every item the same way.
//!
//! | policy | queue full | pressure on, room left |
//! |---|---|---|
//! | [`Overflow::Block`] (default) | `MustWait(item)` | `MustWait(item)`: hold off until fill ≤ low |
//! | [`Overflow::DropOldest`] | evict the oldest, push: `Dropped { oldest, .. }` | push |
//! | [`Overflow::DropNewest`] | `Dropped { item, .. }` | push |
//! | [`Overflow::Fail`] | `Rejected(item)` | push |
//!
//! No outcome loses an item: it is pushed, handed back (`MustWait`, `Rejected`), or handed
//! out as dropped with its reason so the caller can count it and pass it to a drop hook.
//!
//! # Examples
//!
//! ```
//! use backflow_core::overflow::{DropReason, Overflow, PushOutcome};
//! use backflow_core::ring::mpmc::ArrayRing;
//!
//! let ring = ArrayRing::<u32, 2>::new();
//! let mut queue = &ring;
//! for x in [1, 2] {
//!     assert_eq!(Overflow::DropOldest.push(&mut queue, x, false), PushOutcome::Pushed);
//! }
//! assert_eq!(
//!     Overflow::DropOldest.push(&mut queue, 3, false),
//!     PushOutcome::Dropped { item: 1, reason: DropReason::Oldest }
//! );
//! assert_eq!(Overflow::Fail.push(&mut queue, 4, false), PushOutcome::Rejected(4));
//! ```

use core::fmt;

use crate::ring::spsc;
use crate::ring::{PushError, Storage};

/// What to do with an item that does not fit.
///
/// # Examples
///
/// ```
/// assert_eq!(backflow_core::Overflow::default(), backflow_core::Overflow::Block);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Overflow {
    /// Wait for room; with pressure on, wait until the fill is back to the low mark.
    #[default]
    Block,
    /// Evict the oldest queued item to make room.
    DropOldest,
    /// Drop the item being pushed.
    DropNewest,
    /// Hand the item back to the caller as an error.
    Fail,
}

/// Why an item was dropped.
///
/// # Examples
///
/// ```
/// assert_eq!(backflow_core::overflow::DropReason::Oldest.to_string(), "evicted as oldest");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Evicted from a full queue under [`Overflow::DropOldest`].
    Oldest,
    /// Refused by a full queue under [`Overflow::DropNewest`].
    Newest,
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Oldest => "evicted as oldest",
            Self::Newest => "dropped as newest",
        })
    }
}

/// The result of [`Overflow::push`]. Every variant but `Pushed` carries an item, so none is
/// lost.
///
/// # Examples
///
/// ```
/// use backflow_core::overflow::PushOutcome;
///
/// let outcome: PushOutcome<u8> = PushOutcome::MustWait(1);
/// assert!(!outcome.is_pushed());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome<T> {
    /// The item is in the queue.
    Pushed,
    /// An item was dropped: the pushed one (`Newest`), or the evicted oldest one while the
    /// pushed one went in (`Oldest`). Count it and hand it to the drop hook.
    Dropped {
        /// The dropped item.
        item: T,
        /// Why it was dropped.
        reason: DropReason,
    },
    /// The item does not fit and the policy is [`Overflow::Fail`]: it is the caller's again.
    Rejected(T),
    /// The item must wait ([`Overflow::Block`]): retry once the queue has drained enough.
    MustWait(T),
}

impl<T> PushOutcome<T> {
    /// Whether the pushed item is now in the queue (`Pushed`, or `Dropped` with
    /// [`DropReason::Oldest`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::overflow::{DropReason, PushOutcome};
    ///
    /// assert!(PushOutcome::<u8>::Pushed.is_pushed());
    /// assert!(PushOutcome::Dropped { item: 1, reason: DropReason::Oldest }.is_pushed());
    /// assert!(!PushOutcome::Dropped { item: 1, reason: DropReason::Newest }.is_pushed());
    /// ```
    pub fn is_pushed(&self) -> bool {
        matches!(self, Self::Pushed | Self::Dropped { reason: DropReason::Oldest, .. })
    }
}

/// A bounded queue that [`Overflow::push`] can apply a policy to.
///
/// Implemented for a shared MPMC ring (`&mpmc::Ring`) and for an SPSC ring owned by one thread
/// (`spsc::Ring`, as in a single-threaded driver loop). A lone SPSC producer half cannot evict
/// (only the consumer may pop), so it does not implement this trait.
///
/// # Examples
///
/// ```
/// use backflow_core::overflow::Queue;
/// use backflow_core::ring::spsc::ArrayRing;
///
/// let mut ring = ArrayRing::<u8, 1>::new();
/// ring.try_push(1).unwrap();
/// assert_eq!(ring.force_push(2), Some(1));
/// assert_eq!(Queue::len(&ring), 1);
/// ```
pub trait Queue<T> {
    /// Pushes if there is room, or hands the item back.
    ///
    /// # Errors
    ///
    /// [`PushError::Full`] with the item when the queue is full.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::overflow::Queue;
    /// use backflow_core::ring::{PushError, mpmc::ArrayRing};
    ///
    /// let ring = ArrayRing::<u8, 1>::new();
    /// let mut queue = &ring;
    /// assert_eq!(Queue::try_push(&mut queue, 1), Ok(()));
    /// assert_eq!(Queue::try_push(&mut queue, 2), Err(PushError::Full(2)));
    /// ```
    fn try_push(&mut self, item: T) -> Result<(), PushError<T>>;

    /// Pushes, evicting and returning the oldest item if the queue is full.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::overflow::Queue;
    /// use backflow_core::ring::spsc::ArrayRing;
    ///
    /// let mut ring = ArrayRing::<u8, 1>::new();
    /// assert_eq!(ring.force_push(1), None);
    /// assert_eq!(ring.force_push(2), Some(1));
    /// ```
    fn force_push(&mut self, item: T) -> Option<T>;

    /// The number of queued items.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::overflow::Queue;
    /// use backflow_core::ring::spsc::ArrayRing;
    ///
    /// let mut ring = ArrayRing::<u8, 2>::new();
    /// ring.try_push(1).unwrap();
    /// assert_eq!(Queue::len(&ring), 1);
    /// ```
    fn len(&self) -> usize;

    /// Whether the queue is empty.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::overflow::Queue;
    ///
    /// assert!(Queue::<u8>::is_empty(&backflow_core::ring::spsc::ArrayRing::<u8, 2>::new()));
    /// ```
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(target_has_atomic = "ptr")]
impl<T, S: Storage<Slot = crate::ring::mpmc::Slot<T>>> Queue<T> for &crate::ring::mpmc::Ring<T, S> {
    fn try_push(&mut self, item: T) -> Result<(), PushError<T>> {
        crate::ring::mpmc::Ring::try_push(self, item)
    }

    fn force_push(&mut self, item: T) -> Option<T> {
        crate::ring::mpmc::Ring::force_push(self, item)
    }

    fn len(&self) -> usize {
        crate::ring::mpmc::Ring::len(self)
    }
}

impl<T, S: Storage<Slot = spsc::Slot<T>>> Queue<T> for spsc::Ring<T, S> {
    fn try_push(&mut self, item: T) -> Result<(), PushError<T>> {
        self.split().0.try_push(item)
    }

    fn force_push(&mut self, item: T) -> Option<T> {
        let (mut producer, mut consumer) = self.split();
        let Err(PushError::Full(item)) = producer.try_push(item) else { return None };
        // Only this thread uses the ring, so the slot just popped is free for the push.
        let oldest = consumer.try_pop().ok();
        let pushed = producer.try_push(item);
        debug_assert!(pushed.is_ok());
        oldest
    }

    fn len(&self) -> usize {
        spsc::Ring::len(self)
    }
}

impl Overflow {
    /// Applies the policy to pushing `item` into `queue`; `pressure_on` is the queue's
    /// [`Pressure`](crate::water_marks::Pressure) state, which only [`Overflow::Block`] heeds.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::overflow::{Overflow, PushOutcome};
    /// use backflow_core::ring::spsc::ArrayRing;
    ///
    /// let mut ring = ArrayRing::<u8, 4>::new();
    /// // Room left, but pressure is on: a blocking producer holds off.
    /// assert_eq!(Overflow::Block.push(&mut ring, 1, true), PushOutcome::MustWait(1));
    /// assert_eq!(Overflow::Block.push(&mut ring, 1, false), PushOutcome::Pushed);
    /// ```
    pub fn push<T, Q: Queue<T>>(self, queue: &mut Q, item: T, pressure_on: bool) -> PushOutcome<T> {
        if self == Self::Block && pressure_on {
            return PushOutcome::MustWait(item);
        }
        let Err(PushError::Full(item)) = queue.try_push(item) else { return PushOutcome::Pushed };
        match self {
            Self::Block => PushOutcome::MustWait(item),
            Self::Fail => PushOutcome::Rejected(item),
            Self::DropNewest => PushOutcome::Dropped { item, reason: DropReason::Newest },
            Self::DropOldest => match queue.force_push(item) {
                Some(oldest) => PushOutcome::Dropped { item: oldest, reason: DropReason::Oldest },
                // Room appeared in the meantime.
                None => PushOutcome::Pushed,
            },
        }
    }
}
