//! Fixed-capacity lock-free rings: the links between pipeline stages.
//!
//! - [`spsc`]: one producer, one consumer, split into a [`spsc::Producer`] and a
//!   [`spsc::Consumer`] half. The fastest link; works on every target with atomic loads and
//!   stores, including `thumbv6m-none-eabi`, which has no compare-and-swap.
//! - [`mpmc`]: any number of producers and consumers sharing one [`mpmc::Ring`] (the input of
//!   a worker pool), with [`mpmc::Ring::force_push`] for drop-oldest overflow. Needs
//!   compare-and-swap, so it exists only where the target has it.
//!
//! Both rings are one implementation over a [`Storage`] of slots, which decides where the
//! slots live:
//!
//! | storage | capacity fixed | type alias | use |
//! |---|---|---|---|
//! | `[Slot<T>; N]` | at compile time | `ArrayRing<T, N>` | `static` rings on bare metal |
//! | `&mut [Slot<T>]` | when built | `SliceRing<'a, T>` | a caller-provided buffer |
//! | `Box<[Slot<T>]>` (feature `alloc`) | when built | `HeapRing<T>` | allocated once, by the std runtime |
//!
//! A full ring hands the item back in [`PushError::Full`]; nothing is dropped behind the
//! caller's back. Items still inside a ring when it is dropped are dropped with it, once.
//!
//! # Examples
//!
//! ```
//! use backflow_core::ring::{spsc, PopError};
//!
//! let mut ring = spsc::ArrayRing::<u32, 4>::new();
//! let (mut tx, mut rx) = ring.split();
//! assert_eq!(tx.push_slice(&[1, 2, 3]), 3);
//! assert_eq!(rx.try_pop(), Ok(1));
//! let mut rest = [0; 4];
//! assert_eq!(rx.pop_slice(&mut rest), 2);
//! assert_eq!(rest[..2], [2, 3]);
//! assert_eq!(rx.try_pop(), Err(PopError::Empty));
//! ```

#[cfg(feature = "alloc")]
use alloc::boxed::Box;
use core::fmt;

#[cfg(target_has_atomic = "ptr")]
pub mod mpmc;
pub mod spsc;

/// Where a ring's slots live: an inline array, a borrowed slice or (feature `alloc`) a boxed
/// slice.
///
/// The trait is sealed: the rings rely on `slots` returning the same slice on every call, which
/// the three implementations here guarantee.
///
/// # Examples
///
/// ```
/// use backflow_core::ring::{spsc, Storage};
///
/// let storage: [spsc::Slot<u8>; 3] = [const { spsc::Slot::new() }; 3];
/// assert_eq!(storage.slots().len(), 3);
/// ```
pub trait Storage: sealed::Sealed {
    /// The slot type stored: [`spsc::Slot`] or [`mpmc::Slot`].
    type Slot;

    /// The slots, always the same slice for a given storage value.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::ring::{Storage, mpmc::Slot};
    ///
    /// let mut buffer: [Slot<u8>; 4] = Default::default();
    /// let storage: &mut [Slot<u8>] = &mut buffer;
    /// assert_eq!(storage.slots().len(), 4);
    /// ```
    fn slots(&self) -> &[Self::Slot];
}

impl<S, const N: usize> Storage for [S; N] {
    type Slot = S;

    #[inline(always)]
    fn slots(&self) -> &[S] {
        self
    }
}

impl<S> Storage for &mut [S] {
    type Slot = S;

    #[inline(always)]
    fn slots(&self) -> &[S] {
        self
    }
}

#[cfg(feature = "alloc")]
impl<S> Storage for Box<[S]> {
    type Slot = S;

    #[inline(always)]
    fn slots(&self) -> &[S] {
        self
    }
}

mod sealed {
    #[cfg(feature = "alloc")]
    use alloc::boxed::Box;

    pub trait Sealed {}
    impl<S, const N: usize> Sealed for [S; N] {}
    impl<S> Sealed for &mut [S] {}
    #[cfg(feature = "alloc")]
    impl<S> Sealed for Box<[S]> {}
}

/// The largest capacity a ring accepts. Ring positions count up to a small multiple of the
/// capacity, which must not overflow a `usize`.
pub const MAX_CAPACITY: usize = usize::MAX / 4;

/// A push into a ring that did not happen; the item is handed back.
///
/// # Examples
///
/// ```
/// use backflow_core::ring::{spsc, PushError};
///
/// let mut ring = spsc::ArrayRing::<String, 1>::new();
/// let (mut tx, _rx) = ring.split();
/// tx.try_push("a".to_string()).unwrap();
/// let err = tx.try_push("b".to_string()).unwrap_err();
/// assert_eq!(err.to_string(), "ring is full");
/// assert_eq!(err.into_inner(), "b");
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum PushError<T> {
    /// Every slot holds an item; the rejected item is inside.
    Full(T),
}

impl<T> PushError<T> {
    /// Returns the item that could not be pushed.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::ring::PushError;
    ///
    /// assert_eq!(PushError::Full(7).into_inner(), 7);
    /// ```
    pub fn into_inner(self) -> T {
        match self {
            Self::Full(item) => item,
        }
    }
}

// NB: written by hand so that `PushError<T>` is `Debug` (and an `Error`) for any `T`.
impl<T> fmt::Debug for PushError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full(_) => f.write_str("Full(..)"),
        }
    }
}

impl<T> fmt::Display for PushError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full(_) => f.write_str("ring is full"),
        }
    }
}

impl<T> core::error::Error for PushError<T> {}

/// A pop from a ring that found nothing.
///
/// # Examples
///
/// ```
/// use backflow_core::ring::{spsc, PopError};
///
/// let mut ring = spsc::ArrayRing::<u8, 2>::new();
/// let (_tx, mut rx) = ring.split();
/// assert_eq!(rx.try_pop(), Err(PopError::Empty));
/// assert_eq!(PopError::Empty.to_string(), "ring is empty");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PopError {
    /// No item was available.
    Empty,
}

impl fmt::Display for PopError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("ring is empty"),
        }
    }
}

impl core::error::Error for PopError {}

/// A ring capacity that cannot be used.
///
/// # Examples
///
/// ```
/// use backflow_core::ring::{spsc, CapacityError};
///
/// let mut buffer: [spsc::Slot<u8>; 0] = [];
/// let err = spsc::SliceRing::with_storage(&mut buffer[..]).unwrap_err();
/// assert_eq!(err, CapacityError::Zero);
/// assert_eq!(err.to_string(), "ring capacity must be at least 1");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapacityError {
    /// The storage has no slots.
    Zero,
    /// The storage has more slots than [`MAX_CAPACITY`].
    TooLarge {
        /// The capacity asked for.
        requested: usize,
    },
    /// The allocator refused the slots of a heap ring (feature `alloc`): more memory than
    /// the machine gives, or more bytes than an allocation can hold.
    OutOfMemory {
        /// The capacity asked for.
        requested: usize,
    },
}

impl fmt::Display for CapacityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Zero => f.write_str("ring capacity must be at least 1"),
            Self::TooLarge { requested } => {
                write!(f, "ring capacity {requested} exceeds the maximum of {MAX_CAPACITY}")
            }
            Self::OutOfMemory { requested } => {
                write!(f, "could not allocate a ring of {requested} slots")
            }
        }
    }
}

impl core::error::Error for CapacityError {}

/// `capacity` slots made by `slot`, on the heap, after checking the capacity; an allocation
/// the allocator refuses is an error, not an abort.
#[cfg(feature = "alloc")]
pub(crate) fn heap_slots<S>(
    capacity: usize,
    slot: impl FnMut(usize) -> S,
) -> Result<Box<[S]>, CapacityError> {
    check_capacity(capacity)?;
    let mut slots = alloc::vec::Vec::new();
    slots
        .try_reserve_exact(capacity)
        .map_err(|_| CapacityError::OutOfMemory { requested: capacity })?;
    slots.extend((0..capacity).map(slot));
    Ok(slots.into_boxed_slice())
}

/// Checks a capacity against the rules shared by both rings.
pub(crate) const fn check_capacity(capacity: usize) -> Result<(), CapacityError> {
    if capacity == 0 {
        Err(CapacityError::Zero)
    } else if capacity > MAX_CAPACITY {
        Err(CapacityError::TooLarge { requested: capacity })
    } else {
        Ok(())
    }
}
