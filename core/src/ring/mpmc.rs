//! A bounded multi-producer multi-consumer ring: the shared input of a worker pool.
//!
//! Dmitry Vyukov's bounded MPMC queue, as in crossbeam's `ArrayQueue`: every slot carries a
//! *stamp* that says whether it is ready to be written or read on the current lap, so producers
//! and consumers each claim a slot with one compare-and-swap on the tail or head and never
//! wait for each other except when a neighbour is halfway through its own slot.
//!
//! Positions (`head`, `tail`) and stamps are `{ lap, index }` packed in one `usize`: the low
//! bits are the slot index, the high bits count laps around the ring. `one_lap` is the
//! smallest power of two above the capacity, so `{ lap: 1, index: 0 }` is `one_lap`.
//!
//! The ring needs compare-and-swap and is compiled only for targets that have it.
//!
//! # Examples
//!
//! ```
//! use backflow_core::ring::mpmc::ArrayRing;
//! use std::sync::Arc;
//!
//! let ring = Arc::new(ArrayRing::<u64, 64>::new());
//! let producers: Vec<_> = (0..2u64)
//!     .map(|p| {
//!         let ring = Arc::clone(&ring);
//!         std::thread::spawn(move || {
//!             for i in 0..100 {
//!                 let mut item = p * 1000 + i;
//!                 while let Err(full) = ring.try_push(item) {
//!                     item = full.into_inner();
//!                 }
//!             }
//!         })
//!     })
//!     .collect();
//! let mut popped = 0;
//! while popped < 200 {
//!     popped += usize::from(ring.try_pop().is_ok());
//! }
//! for p in producers {
//!     p.join().unwrap();
//! }
//! assert!(ring.is_empty());
//! ```

#[cfg(feature = "alloc")]
use alloc::boxed::Box;
use core::fmt;
use core::marker::PhantomData;
use core::mem::MaybeUninit;

use super::{CapacityError, PopError, PushError, Storage, check_capacity};
use crate::sync::{AtomicUsize, Backoff, CachePadded, Ordering, UnsafeCell, const_fn, fence};

/// One slot of an MPMC ring: a stamp and room for one item.
///
/// Slots are public so that a caller can provide the buffer a ring runs over
/// ([`SliceRing`]); they hold no item outside a ring, and a ring resets their stamps when it
/// takes them.
///
/// # Examples
///
/// ```
/// use backflow_core::ring::mpmc::{Slot, SliceRing};
///
/// let mut buffer: [Slot<u16>; 8] = [const { Slot::new() }; 8];
/// let ring = SliceRing::with_storage(&mut buffer[..])?;
/// assert_eq!(ring.capacity(), 8);
/// # Ok::<(), backflow_core::ring::CapacityError>(())
/// ```
pub struct Slot<T> {
    /// If the stamp equals the tail, the slot is next to be written. If it equals head + 1, it
    /// is next to be read.
    stamp: AtomicUsize,
    value: UnsafeCell<MaybeUninit<T>>,
}

impl<T> Slot<T> {
    const_fn! {
        /// Returns an empty slot.
        ///
        /// # Examples
        ///
        /// ```
        /// let slots: [backflow_core::ring::mpmc::Slot<u8>; 4] = [const { backflow_core::ring::mpmc::Slot::new() }; 4];
        /// # let _ = slots;
        /// ```
        pub fn new() -> Self {
            Self::with_stamp(0)
        }
    }

    const_fn! {
        fn with_stamp(stamp: usize) -> Self {
            Self { stamp: AtomicUsize::new(stamp), value: UnsafeCell::new(MaybeUninit::uninit()) }
        }
    }

    /// Moves `item` into the slot.
    ///
    /// # Safety
    ///
    /// The caller won the slot (a successful CAS on the tail) and the slot holds no item.
    #[inline(always)]
    unsafe fn write(&self, item: T) {
        // SAFETY: the caller guarantees exclusive access to an empty slot.
        self.value.with_mut(|p| unsafe { p.cast::<T>().write(item) });
    }

    /// Moves the item out of the slot, leaving it empty.
    ///
    /// # Safety
    ///
    /// The caller won the slot (a successful CAS on the head) and the slot holds an item.
    #[inline(always)]
    unsafe fn read(&self) -> T {
        // SAFETY: the caller guarantees exclusive access to a full slot and treats it as empty
        // afterwards.
        self.value.with(|p| unsafe { p.cast::<T>().read() })
    }

    /// Swaps `item` with the item in the slot.
    ///
    /// # Safety
    ///
    /// The caller has exclusive access to the slot and the slot holds an item.
    #[inline(always)]
    unsafe fn replace(&self, item: T) -> T {
        // SAFETY: the caller guarantees exclusive access to a full slot; it stays full.
        self.value.with_mut(|p| unsafe { p.cast::<T>().replace(item) })
    }

    /// Drops the item in the slot.
    ///
    /// # Safety
    ///
    /// The caller has exclusive access to the slot and the slot holds an item.
    unsafe fn drop_in_place(&self) {
        // SAFETY: the caller guarantees exclusive access to a full slot, dropped once here.
        self.value.with_mut(|p| unsafe { p.cast::<T>().drop_in_place() });
    }
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for Slot<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Slot { .. }")
    }
}

/// A bounded MPMC ring over the slots in `S`; see the [module docs](self).
///
/// Use one of the aliases: [`ArrayRing`] (capacity fixed at compile time, `const`-constructible
/// for `static`s), [`SliceRing`] (a caller-provided buffer) or [`HeapRing`] (feature `alloc`).
/// Share it between threads by reference or `Arc`.
///
/// # Examples
///
/// ```
/// use backflow_core::ring::mpmc::ArrayRing;
///
/// let ring = ArrayRing::<u8, 2>::new();
/// ring.try_push(1).unwrap();
/// ring.try_push(2).unwrap();
/// assert_eq!(ring.force_push(3), Some(1)); // full: the oldest item is evicted
/// assert_eq!(ring.try_pop(), Ok(2));
/// ```
pub struct Ring<T, S: Storage<Slot = Slot<T>>> {
    /// The next position to pop, `{ lap, index }`.
    head: CachePadded<AtomicUsize>,
    /// The next position to push, `{ lap, index }`.
    tail: CachePadded<AtomicUsize>,
    /// `{ lap: 1, index: 0 }`: the smallest power of two above the capacity.
    one_lap: usize,
    slots: S,
    /// The ring owns the items in its slots.
    _items: PhantomData<T>,
}

/// An MPMC ring with its `N` slots inline: capacity fixed at compile time, usable in a `static`.
///
/// # Examples
///
/// ```
/// use backflow_core::ring::mpmc::ArrayRing;
///
/// static WORK: ArrayRing<u32, 128> = ArrayRing::new();
/// WORK.try_push(7).unwrap();
/// assert_eq!(WORK.try_pop(), Ok(7));
/// ```
pub type ArrayRing<T, const N: usize> = Ring<T, [Slot<T>; N]>;

/// An MPMC ring over a caller-provided buffer of slots.
///
/// # Examples
///
/// ```
/// use backflow_core::ring::mpmc::{SliceRing, Slot};
///
/// let mut buffer: [Slot<u8>; 3] = Default::default();
/// let ring = SliceRing::with_storage(&mut buffer[..])?;
/// assert_eq!(ring.capacity(), 3);
/// # Ok::<(), backflow_core::ring::CapacityError>(())
/// ```
pub type SliceRing<'a, T> = Ring<T, &'a mut [Slot<T>]>;

/// An MPMC ring whose slots are allocated once on the heap (feature `alloc`).
///
/// # Examples
///
/// ```
/// use backflow_core::ring::mpmc::HeapRing;
///
/// let ring = HeapRing::<u64>::with_capacity(1000)?;
/// assert_eq!(ring.capacity(), 1000);
/// # Ok::<(), backflow_core::ring::CapacityError>(())
/// ```
#[cfg(feature = "alloc")]
pub type HeapRing<T> = Ring<T, Box<[Slot<T>]>>;

// SAFETY: a slot's value is accessed only by the thread whose CAS on the tail (push) or head
// (pop, force_push eviction) claimed it, and the claim is handed on through the slot's stamp
// with Release/Acquire. Items move between threads, so they must be `Send`.
unsafe impl<T: Send, S: Storage<Slot = Slot<T>> + Send> Sync for Ring<T, S> {}

impl<T, const N: usize> Ring<T, [Slot<T>; N]> {
    /// Returns an empty ring of capacity `N`.
    ///
    /// A `const fn`, so the ring can be a `static`. `N` must be at least 1; that is checked at
    /// compile time.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::ring::mpmc::ArrayRing;
    ///
    /// static JOBS: ArrayRing<u32, 16> = ArrayRing::new();
    /// assert_eq!(JOBS.capacity(), 16);
    /// ```
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        const { assert!(N > 0 && N <= super::MAX_CAPACITY, "ring capacity out of range") };
        let mut slots = [const { Slot::new() }; N];
        let mut index = 0;
        while index < N {
            // Set the stamp to `{ lap: 0, index }`.
            slots[index] = Slot::with_stamp(index);
            index += 1;
        }
        Self::from_parts(slots, N)
    }

    /// Returns an empty ring of capacity `N`.
    #[cfg(loom)]
    pub fn new() -> Self {
        const { assert!(N > 0 && N <= super::MAX_CAPACITY, "ring capacity out of range") };
        // Set each stamp to `{ lap: 0, index }`.
        Self::from_parts(core::array::from_fn(Slot::with_stamp), N)
    }
}

impl<T, const N: usize> Default for Ring<T, [Slot<T>; N]> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "alloc")]
impl<T> Ring<T, Box<[Slot<T>]>> {
    /// Returns an empty ring of the given capacity, allocating its slots once.
    ///
    /// # Errors
    ///
    /// [`CapacityError`] if `capacity` is zero or above [`MAX_CAPACITY`](super::MAX_CAPACITY),
    /// or the allocator refuses the slots ([`CapacityError::OutOfMemory`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::ring::{mpmc::HeapRing, CapacityError};
    ///
    /// assert_eq!(HeapRing::<u8>::with_capacity(0).unwrap_err(), CapacityError::Zero);
    /// assert_eq!(HeapRing::<u8>::with_capacity(5)?.capacity(), 5);
    /// let huge = backflow_core::ring::MAX_CAPACITY;
    /// assert_eq!(
    ///     HeapRing::<[u8; 64]>::with_capacity(huge).unwrap_err(),
    ///     CapacityError::OutOfMemory { requested: huge },
    /// );
    /// # Ok::<(), CapacityError>(())
    /// ```
    pub fn with_capacity(capacity: usize) -> Result<Self, CapacityError> {
        // Set each stamp to `{ lap: 0, index }`.
        Ok(Self::from_parts(super::heap_slots(capacity, Slot::with_stamp)?, capacity))
    }
}

impl<T, S: Storage<Slot = Slot<T>>> Ring<T, S> {
    /// Returns an empty ring over `storage`; its capacity is the number of slots.
    ///
    /// # Errors
    ///
    /// [`CapacityError`] if `storage` has no slots or more than
    /// [`MAX_CAPACITY`](super::MAX_CAPACITY).
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::ring::mpmc::{SliceRing, Slot};
    ///
    /// let mut buffer: [Slot<u8>; 16] = Default::default();
    /// let ring = SliceRing::with_storage(&mut buffer[..4])?;
    /// assert_eq!(ring.capacity(), 4);
    /// # Ok::<(), backflow_core::ring::CapacityError>(())
    /// ```
    pub fn with_storage(storage: S) -> Result<Self, CapacityError> {
        let capacity = storage.slots().len();
        check_capacity(capacity)?;
        for (index, slot) in storage.slots().iter().enumerate() {
            // Set the stamp to `{ lap: 0, index }`; the buffer may come from an earlier ring.
            slot.stamp.store(index, Ordering::Relaxed);
        }
        Ok(Self::from_parts(storage, capacity))
    }

    const_fn! {
        fn from_parts(slots: S, capacity: usize) -> Self {
            Self {
                // Head and tail start at `{ lap: 0, index: 0 }`.
                head: CachePadded::new(AtomicUsize::new(0)),
                tail: CachePadded::new(AtomicUsize::new(0)),
                one_lap: (capacity + 1).next_power_of_two(),
                slots,
                _items: PhantomData,
            }
        }
    }

    /// Pushes one item, or hands it back if the ring is full.
    ///
    /// # Errors
    ///
    /// [`PushError::Full`] with the item when the ring [is full](Self::is_full): every slot
    /// is taken, or the slot the push would fill still holds an item a consumer has claimed
    /// and not read yet (a [`pop_each`](Self::pop_each) run reads its items as it gets to
    /// them, which may take as long as the run's work).
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::ring::{mpmc::ArrayRing, PushError};
    ///
    /// let ring = ArrayRing::<u8, 1>::new();
    /// assert_eq!(ring.try_push(1), Ok(()));
    /// assert_eq!(ring.try_push(2), Err(PushError::Full(2)));
    /// ```
    #[inline]
    pub fn try_push(&self, item: T) -> Result<(), PushError<T>> {
        // The slot to fill still holds last lap's item: either the head lags one lap behind
        // the tail, or a consumer has moved the head past the item and not read it yet. There
        // is no room now either way, and the read may be a whole run's work away.
        self.push_or_else(item, |item, _, _, _| Err(PushError::Full(item)))
    }

    /// Pushes one item; if the ring is full, evicts the oldest item to make room and returns
    /// it (drop-oldest overflow without losing sight of what was dropped).
    ///
    /// While the slot it needs holds an item a consumer has claimed and not read yet (in a
    /// [`pop_each`](Self::pop_each) run, until the run gets to it), there is nothing to evict
    /// and no room: it waits, spinning, for the read.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::ring::mpmc::ArrayRing;
    ///
    /// let ring = ArrayRing::<u8, 2>::new();
    /// assert_eq!(ring.force_push(1), None);
    /// assert_eq!(ring.force_push(2), None);
    /// assert_eq!(ring.force_push(3), Some(1));
    /// assert_eq!(ring.try_pop(), Ok(2));
    /// assert_eq!(ring.try_pop(), Ok(3));
    /// ```
    pub fn force_push(&self, item: T) -> Option<T> {
        self.push_or_else(item, |item, tail, new_tail, slot| {
            // The ring is full and the head is one lap behind the tail at the same index.
            let head = tail.wrapping_sub(self.one_lap);
            let new_head = new_tail.wrapping_sub(self.one_lap);

            // Try to move the head past the oldest item, claiming its slot.
            if self
                .head
                .compare_exchange_weak(head, new_head, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
            {
                // The slot still carries its full stamp, so no producer can claim the tail
                // until we restamp it below; move the tail ourselves.
                self.tail.store(new_tail, Ordering::SeqCst);
                // SAFETY: the head CAS made this slot (the oldest item) ours: consumers now
                // look at the next slot, and producers wait on its stamp.
                let oldest = unsafe { slot.replace(item) };
                // Publish the new item: `{ lap, index + 1 }` marks it ready to read.
                slot.stamp.store(tail + 1, Ordering::Release);
                Err(oldest)
            } else {
                Ok(item)
            }
        })
        .err()
    }

    /// The push loop shared by [`try_push`](Self::try_push) and
    /// [`force_push`](Self::force_push). When the ring looks full, `on_full(item, tail,
    /// new_tail, slot)` decides: `Ok(item)` retries, `Err(e)` ends the push with `e`.
    #[inline(always)]
    fn push_or_else<E>(
        &self,
        mut item: T,
        on_full: impl Fn(T, usize, usize, &Slot<T>) -> Result<T, E>,
    ) -> Result<(), E> {
        let backoff = Backoff::new();
        let mut tail = self.tail.load(Ordering::Relaxed);

        loop {
            // Deconstruct the tail into `{ lap, index }`.
            let index = tail & (self.one_lap - 1);
            let lap = tail & !(self.one_lap - 1);

            let new_tail = if index + 1 < self.capacity() {
                // Same lap, next index: `{ lap, index: index + 1 }`.
                tail + 1
            } else {
                // One lap forward, back to the first slot: `{ lap: lap + 1, index: 0 }`.
                lap.wrapping_add(self.one_lap)
            };

            debug_assert!(index < self.capacity());
            // SAFETY: `index` is the low bits of a position, always below the capacity.
            let slot = unsafe { self.slots.slots().get_unchecked(index) };
            let stamp = slot.stamp.load(Ordering::Acquire);

            if tail == stamp {
                // The slot is ready for this lap's write: try to claim it by moving the tail.
                match self.tail.compare_exchange_weak(
                    tail,
                    new_tail,
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // SAFETY: the CAS made this slot ours; its stamp (== old tail) says the
                        // last consumer finished reading it (Acquire above).
                        unsafe { slot.write(item) };
                        // `{ lap, index + 1 }`: ready to read on this lap.
                        slot.stamp.store(tail + 1, Ordering::Release);
                        return Ok(());
                    }
                    Err(current) => {
                        tail = current;
                        backoff.spin();
                    }
                }
            } else if stamp.wrapping_add(self.one_lap) == tail + 1 {
                // The slot still holds last lap's item: the ring may be full.
                fence(Ordering::SeqCst);
                item = on_full(item, tail, new_tail, slot)?;
                backoff.spin();
                tail = self.tail.load(Ordering::Relaxed);
            } else {
                // Another producer claimed the slot but has not stamped it yet: wait for it.
                backoff.snooze();
                tail = self.tail.load(Ordering::Relaxed);
            }
        }
    }

    /// Pops the oldest item.
    ///
    /// # Errors
    ///
    /// [`PopError::Empty`] when the ring holds no item another consumer has not claimed: also
    /// while the oldest slot still holds an item of an earlier [`pop_each`](Self::pop_each)
    /// run that its consumer has not read yet.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::ring::{mpmc::ArrayRing, PopError};
    ///
    /// let ring = ArrayRing::<u8, 2>::new();
    /// ring.try_push(5).unwrap();
    /// assert_eq!(ring.try_pop(), Ok(5));
    /// assert_eq!(ring.try_pop(), Err(PopError::Empty));
    /// ```
    #[inline]
    pub fn try_pop(&self) -> Result<T, PopError> {
        let backoff = Backoff::new();
        let mut head = self.head.load(Ordering::Relaxed);

        loop {
            // Deconstruct the head into `{ lap, index }`.
            let index = head & (self.one_lap - 1);
            let lap = head & !(self.one_lap - 1);

            debug_assert!(index < self.capacity());
            // SAFETY: `index` is the low bits of a position, always below the capacity.
            let slot = unsafe { self.slots.slots().get_unchecked(index) };
            let stamp = slot.stamp.load(Ordering::Acquire);

            if head + 1 == stamp {
                // The slot holds this lap's item: try to claim it by moving the head.
                let new_head = if index + 1 < self.capacity() {
                    // Same lap, next index: `{ lap, index: index + 1 }`.
                    head + 1
                } else {
                    // One lap forward, back to the first slot: `{ lap: lap + 1, index: 0 }`.
                    lap.wrapping_add(self.one_lap)
                };

                match self.head.compare_exchange_weak(
                    head,
                    new_head,
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // SAFETY: the CAS made this slot ours; its stamp (== head + 1) says the
                        // producer finished writing it (Acquire above).
                        let item = unsafe { slot.read() };
                        // `{ lap + 1, index }`: ready for next lap's write.
                        slot.stamp.store(head.wrapping_add(self.one_lap), Ordering::Release);
                        return Ok(item);
                    }
                    Err(current) => {
                        head = current;
                        backoff.spin();
                    }
                }
            } else if stamp == head {
                // The slot waits for this lap's write: the ring may be empty.
                fence(Ordering::SeqCst);
                let tail = self.tail.load(Ordering::Relaxed);
                // If the tail equals the head, the ring is empty.
                if tail == head {
                    return Err(PopError::Empty);
                }
                backoff.spin();
                head = self.head.load(Ordering::Relaxed);
            } else {
                // Either the head moved on since it was loaded (the slot is a lap ahead of
                // it), or the slot holds last lap's item, claimed by another consumer that has
                // not read it yet: nothing is ours until it does.
                match self.unread_by_another(head, &backoff) {
                    Ok(()) => return Err(PopError::Empty),
                    Err(current) => head = current,
                }
            }
        }
    }

    /// For a head slot that holds neither this lap's item nor room for it: returns `Ok` if it
    /// still holds last lap's item, claimed by another consumer that has not read it (a run's
    /// consumer reads its slots as it gets to them, which may take a while), so nothing is
    /// there to pop now; otherwise waits a moment and returns the head, which moved on.
    fn unread_by_another(&self, head: usize, backoff: &Backoff) -> Result<(), usize> {
        // The stamp seen was stored after the head moved past it (a later lap's consumer
        // stamps a slot after its CAS on the head), so if it was a lap ahead this load sees
        // the head moved on; an unchanged head means the stamp is last lap's.
        let current = self.head.load(Ordering::Relaxed);
        if current == head {
            return Ok(());
        }
        backoff.spin();
        Err(current)
    }

    /// Pops up to `max` of the oldest items, claimed as one run with a single compare-and-swap
    /// on the head, into `f`, oldest first; returns how many, `0` when `max` is, or when
    /// [`try_pop`](Self::try_pop) would find the ring empty. The run is the items published
    /// from the head on, so it may be shorter than the ring's length while a producer is
    /// halfway through a slot after it.
    ///
    /// The whole run is taken from the ring before `f` sees its first item: if `f` panics, the
    /// rest of the run is dropped with the unwinding. Give it something that cannot panic
    /// (pushing into a buffer with room) when every item matters.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::ring::mpmc::ArrayRing;
    ///
    /// let ring = ArrayRing::<u8, 4>::new();
    /// for x in 1..=3 {
    ///     ring.try_push(x).unwrap();
    /// }
    /// let mut seen = Vec::new();
    /// assert_eq!(ring.pop_each(2, |x| seen.push(x)), 2);
    /// assert_eq!(seen, [1, 2]);
    /// assert_eq!(ring.len(), 1);
    /// ```
    pub fn pop_each(&self, max: usize, mut f: impl FnMut(T)) -> usize {
        let (head, run) = self.claim_run(max);
        // Whatever `f` does, every claimed slot is read and handed back to the producers.
        for item in (Run { ring: self, position: head, left: run }) {
            f(item);
        }
        run
    }

    /// Claims the run of published items from the head, at most `max`, with one CAS; returns
    /// its first position and length.
    fn claim_run(&self, max: usize) -> (usize, usize) {
        let backoff = Backoff::new();
        let mut head = self.head.load(Ordering::Relaxed);
        if max == 0 {
            // Nothing asked for: the wait below for an item halfway through would never end.
            return (head, 0);
        }
        loop {
            // Count the slots from the head that hold this lap's item.
            let slots = self.slots.slots();
            let (mut run, mut end) = (0, head);
            while run < max {
                let index = end & (self.one_lap - 1);
                // SAFETY: the low bits of a position are always below the capacity.
                let slot = unsafe { slots.get_unchecked(index) };
                if slot.stamp.load(Ordering::Acquire) != end.wrapping_add(1) {
                    break;
                }
                run += 1;
                end = if index + 1 < slots.len() {
                    end + 1
                } else {
                    (end & !(self.one_lap - 1)).wrapping_add(self.one_lap)
                };
            }
            if run == 0 {
                // As in `try_pop`: nothing is ours if the ring is empty, or if the head slot
                // still holds last lap's item unread by another consumer; a slot halfway
                // through its write (the tail already past it) is waited for.
                let index = head & (self.one_lap - 1);
                // SAFETY: the low bits of a position are always below the capacity.
                let slot = unsafe { slots.get_unchecked(index) };
                if slot.stamp.load(Ordering::Acquire) == head {
                    fence(Ordering::SeqCst);
                    if self.tail.load(Ordering::Relaxed) == head {
                        return (head, 0);
                    }
                    backoff.spin();
                    head = self.head.load(Ordering::Relaxed);
                } else {
                    match self.unread_by_another(head, &backoff) {
                        Ok(()) => return (head, 0),
                        Err(current) => head = current,
                    }
                }
                continue;
            }
            match self.head.compare_exchange_weak(head, end, Ordering::SeqCst, Ordering::Relaxed) {
                Ok(_) => return (head, run),
                Err(current) => {
                    head = current;
                    backoff.spin();
                }
            }
        }
    }

    /// The number of items the ring holds when full.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(backflow_core::ring::mpmc::ArrayRing::<u8, 9>::new().capacity(), 9);
    /// ```
    #[inline(always)]
    pub fn capacity(&self) -> usize {
        self.slots.slots().len()
    }

    /// The number of items in the ring that no consumer has claimed yet: a consistent
    /// snapshot that may be stale by the time it is returned when other threads push or pop.
    /// Items of a [`pop_each`](Self::pop_each) run are claimed when it starts, though their
    /// slots are handed back as the run reads them (see [`is_full`](Self::is_full)).
    ///
    /// # Examples
    ///
    /// ```
    /// let ring = backflow_core::ring::mpmc::ArrayRing::<u8, 4>::new();
    /// ring.try_push(1).unwrap();
    /// assert_eq!(ring.len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        loop {
            let tail = self.tail.load(Ordering::SeqCst);
            let head = self.head.load(Ordering::SeqCst);

            // If the tail did not move while we read the head, the pair is consistent.
            if self.tail.load(Ordering::SeqCst) == tail {
                let head_index = head & (self.one_lap - 1);
                let tail_index = tail & (self.one_lap - 1);
                return if head_index < tail_index {
                    tail_index - head_index
                } else if head_index > tail_index {
                    self.capacity() - head_index + tail_index
                } else if tail == head {
                    0
                } else {
                    self.capacity()
                };
            }
        }
    }

    /// Whether the ring holds no item (a snapshot, like [`len`](Self::len)).
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(backflow_core::ring::mpmc::ArrayRing::<u8, 4>::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        let head = self.head.load(Ordering::SeqCst);
        let tail = self.tail.load(Ordering::SeqCst);
        // If the head moved before we read the tail, there was a moment when the ring was not
        // empty, so `false` is a fair answer.
        tail == head
    }

    /// Whether a push would find no room (a snapshot, like [`len`](Self::len)): every slot
    /// holds an item, or the slot the next push would fill still holds one that a consumer
    /// has claimed and not read yet. In the second case [`len`](Self::len), which counts the
    /// items no consumer has claimed, is below the capacity.
    ///
    /// # Examples
    ///
    /// ```
    /// let ring = backflow_core::ring::mpmc::ArrayRing::<u8, 2>::new();
    /// ring.try_push(1).unwrap();
    /// ring.try_push(2).unwrap();
    /// assert!(ring.is_full());
    /// ring.pop_each(2, |x| {
    ///     // The run has read item 1, not item 2: a push would have to fill item 2's slot.
    ///     if x == 1 {
    ///         ring.try_push(3).unwrap();
    ///         assert!(ring.is_full());
    ///         assert_eq!(ring.len(), 1);
    ///     }
    /// });
    /// assert!(!ring.is_full());
    /// ```
    pub fn is_full(&self) -> bool {
        let tail = self.tail.load(Ordering::SeqCst);
        let slot = &self.slots.slots()[tail & (self.one_lap - 1)];
        // Full when the slot at the tail still holds last lap's item, as `try_push` sees it.
        slot.stamp.load(Ordering::SeqCst).wrapping_add(self.one_lap) == tail.wrapping_add(1)
    }
}

impl<T, S: Storage<Slot = Slot<T>>> Drop for Ring<T, S> {
    fn drop(&mut self) {
        let head_index = self.head.load(Ordering::Relaxed) & (self.one_lap - 1);
        let len = self.len();
        let capacity = self.capacity();
        for offset in 0..len {
            let index = if head_index + offset < capacity {
                head_index + offset
            } else {
                head_index + offset - capacity
            };
            // SAFETY: the `len` slots from the head hold items; `&mut self` means no other
            // thread can touch them, and each is dropped once because the ring is going away.
            unsafe { self.slots.slots()[index].drop_in_place() };
        }
    }
}

/// A run of slots claimed by [`Ring::pop_each`], read one at a time. Dropped early (a panic in
/// the caller's closure), it reads and drops the rest, so that every claimed slot goes back to
/// the producers.
struct Run<'a, T, S: Storage<Slot = Slot<T>>> {
    ring: &'a Ring<T, S>,
    position: usize,
    left: usize,
}

impl<T, S: Storage<Slot = Slot<T>>> Iterator for Run<'_, T, S> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        if self.left == 0 {
            return None;
        }
        let ring = self.ring;
        let position = self.position;
        let slots = ring.slots.slots();
        let index = position & (ring.one_lap - 1);
        // SAFETY: the low bits of a position are always below the capacity.
        let slot = unsafe { slots.get_unchecked(index) };
        // SAFETY: the head CAS of `claim_run` made this slot ours, and its stamp (== position
        // + 1, loaded with Acquire before the CAS) says its producer finished writing it; it
        // is read once, as `left` and `position` move past it before the slot is handed back.
        let item = unsafe { slot.read() };
        self.left -= 1;
        self.position = if index + 1 < slots.len() {
            position + 1
        } else {
            (position & !(ring.one_lap - 1)).wrapping_add(ring.one_lap)
        };
        // `{ lap + 1, index }`: ready for next lap's write.
        slot.stamp.store(position.wrapping_add(ring.one_lap), Ordering::Release);
        Some(item)
    }
}

impl<T, S: Storage<Slot = Slot<T>>> Drop for Run<'_, T, S> {
    fn drop(&mut self) {
        self.for_each(drop);
    }
}

impl<T, S: Storage<Slot = Slot<T>>> fmt::Debug for Ring<T, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("capacity", &self.capacity())
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}
