//! A bounded single-producer single-consumer ring, split into a [`Producer`] and a [`Consumer`].
//!
//! Each half owns one position and keeps a cached copy of the other half's. It refreshes that
//! copy (an `Acquire` load) only when the ring looks full (producer) or empty (consumer), and
//! publishes its own position with a `Release` store. The two positions sit on separate cache
//! lines, so in steady state each half writes only its own line.
//!
//! Batch operations ([`Producer::push_slice`], [`Producer::push_iter`],
//! [`Consumer::pop_slice`], [`Consumer::pop_each`]) load the other half's position once and
//! publish their own once, however many items they move.
//!
//! # Capacity
//!
//! A ring of capacity `n` holds exactly `n` items: every slot is usable. Positions run over
//! `0..2n`, which tells a full ring (`tail - head == n`) from an empty one (`tail == head`)
//! without giving up a slot.
//!
//! # Examples
//!
//! Two threads sharing a ring that lives on the stack:
//!
//! ```
//! use backflow_core::ring::spsc::ArrayRing;
//!
//! let mut ring = ArrayRing::<u64, 64>::new();
//! let (mut tx, mut rx) = ring.split();
//! std::thread::scope(|s| {
//!     s.spawn(move || {
//!         for i in 0..1000 {
//!             let mut item = i;
//!             // A full ring hands the item back; a real producer would wait here.
//!             while let Err(full) = tx.try_push(item) {
//!                 item = full.into_inner();
//!             }
//!         }
//!     });
//!     let mut sum = 0;
//!     let mut seen = 0;
//!     while seen < 1000 {
//!         if let Ok(x) = rx.try_pop() {
//!             sum += x;
//!             seen += 1;
//!         }
//!     }
//!     assert_eq!(sum, 999 * 1000 / 2);
//! });
//! ```
//!
//! With the `alloc` feature, [`Ring::into_split`] gives halves that share ownership of the
//! ring, which is what std threads usually want:
//!
//! ```
//! # #[cfg(feature = "alloc")] {
//! use backflow_core::ring::spsc::HeapRing;
//!
//! let (mut tx, mut rx) = HeapRing::<String>::with_capacity(16)?.into_split();
//! std::thread::spawn(move || tx.try_push("hello".to_string()).unwrap()).join().unwrap();
//! assert_eq!(rx.try_pop().as_deref(), Ok("hello"));
//! # }
//! # Ok::<(), backflow_core::ring::CapacityError>(())
//! ```

#[cfg(feature = "alloc")]
use alloc::boxed::Box;
#[cfg(all(feature = "alloc", target_has_atomic = "ptr"))]
use alloc::sync::Arc;
use core::cell::Cell;
use core::fmt;
use core::marker::PhantomData;
use core::mem::MaybeUninit;
use core::ops::Deref;

use super::{CapacityError, PopError, PushError, Storage, check_capacity};
use crate::sync::{AtomicUsize, CachePadded, Ordering, UnsafeCell, const_fn};

/// One slot of an SPSC ring: room for one item, initially empty.
///
/// Slots are public so that a caller can provide the buffer a ring runs over
/// ([`SliceRing`]); they hold no item outside a ring.
///
/// # Examples
///
/// ```
/// use backflow_core::ring::spsc::{Slot, SliceRing};
///
/// let mut buffer: [Slot<u16>; 8] = [const { Slot::new() }; 8];
/// let ring = SliceRing::with_storage(&mut buffer[..])?;
/// assert_eq!(ring.capacity(), 8);
/// # Ok::<(), backflow_core::ring::CapacityError>(())
/// ```
#[repr(transparent)]
pub struct Slot<T>(UnsafeCell<MaybeUninit<T>>);

impl<T> Slot<T> {
    const_fn! {
        /// Returns an empty slot.
        ///
        /// # Examples
        ///
        /// ```
        /// let slots: [backflow_core::ring::spsc::Slot<u8>; 4] = [const { backflow_core::ring::spsc::Slot::new() }; 4];
        /// # let _ = slots;
        /// ```
        pub fn new() -> Self {
            Self(UnsafeCell::new(MaybeUninit::uninit()))
        }
    }

    /// Moves `item` into the slot.
    ///
    /// # Safety
    ///
    /// The caller has exclusive access to the slot and the slot holds no item.
    #[inline(always)]
    unsafe fn write(&self, item: T) {
        // SAFETY: the caller guarantees no other access to this slot while we write.
        self.0.with_mut(|p| unsafe { p.cast::<T>().write(item) });
    }

    /// Moves the item out of the slot, leaving it empty.
    ///
    /// # Safety
    ///
    /// The caller has exclusive access to the slot and the slot holds an item.
    #[inline(always)]
    unsafe fn read(&self) -> T {
        // SAFETY: the caller guarantees the slot holds an initialised item and that nobody
        // else touches it; after this read the caller treats the slot as empty.
        self.0.with(|p| unsafe { p.cast::<T>().read() })
    }

    /// Drops the item in the slot, leaving it empty.
    ///
    /// # Safety
    ///
    /// The caller has exclusive access to the slot and the slot holds an item.
    unsafe fn drop_in_place(&self) {
        // SAFETY: as for `read`; the item is dropped exactly once, here.
        self.0.with_mut(|p| unsafe { p.cast::<T>().drop_in_place() });
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

/// A bounded SPSC ring over the slots in `S`; see the [module docs](self).
///
/// Use one of the aliases: [`ArrayRing`] (capacity fixed at compile time, `const`-constructible
/// for `static`s), [`SliceRing`] (a caller-provided buffer) or [`HeapRing`] (feature `alloc`).
///
/// # Examples
///
/// ```
/// use backflow_core::ring::spsc::ArrayRing;
///
/// let mut ring = ArrayRing::<char, 2>::new();
/// let (mut tx, mut rx) = ring.split();
/// tx.try_push('a').unwrap();
/// assert_eq!(rx.try_pop(), Ok('a'));
/// ```
pub struct Ring<T, S: Storage<Slot = Slot<T>>> {
    /// Position of the next item to pop, in `0..2 * capacity`. Written only by the consumer.
    head: CachePadded<AtomicUsize>,
    /// Position of the next slot to push into, in `0..2 * capacity`. Written only by the
    /// producer.
    tail: CachePadded<AtomicUsize>,
    slots: S,
    /// The ring owns the items in its slots.
    _items: PhantomData<T>,
}

/// An SPSC ring with its `N` slots inline: capacity fixed at compile time, usable in a `static`.
///
/// # Examples
///
/// ```
/// use backflow_core::ring::spsc::ArrayRing;
///
/// static RING: ArrayRing<u32, 128> = ArrayRing::new();
/// assert_eq!(RING.capacity(), 128);
/// ```
pub type ArrayRing<T, const N: usize> = Ring<T, [Slot<T>; N]>;

/// An SPSC ring over a caller-provided buffer of slots.
///
/// # Examples
///
/// ```
/// use backflow_core::ring::spsc::{SliceRing, Slot};
///
/// let mut buffer: [Slot<u8>; 3] = Default::default();
/// let mut ring = SliceRing::with_storage(&mut buffer[..])?;
/// let (mut tx, _rx) = ring.split();
/// assert_eq!(tx.push_slice(&[1, 2, 3, 4]), 3);
/// # Ok::<(), backflow_core::ring::CapacityError>(())
/// ```
pub type SliceRing<'a, T> = Ring<T, &'a mut [Slot<T>]>;

/// An SPSC ring whose slots are allocated once on the heap (feature `alloc`).
///
/// # Examples
///
/// ```
/// use backflow_core::ring::spsc::HeapRing;
///
/// let ring = HeapRing::<u64>::with_capacity(1000)?;
/// assert_eq!(ring.capacity(), 1000);
/// # Ok::<(), backflow_core::ring::CapacityError>(())
/// ```
#[cfg(feature = "alloc")]
pub type HeapRing<T> = Ring<T, Box<[Slot<T>]>>;

// SAFETY: the ring hands each item from exactly one thread (the producer) to exactly one other
// (the consumer); a slot is only ever accessed by the half that currently owns it, and
// ownership moves with a Release store / Acquire load of the positions. So sharing the ring
// only requires that the items may be sent between threads.
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
    /// use backflow_core::ring::spsc::ArrayRing;
    ///
    /// static SAMPLES: ArrayRing<i16, 256> = ArrayRing::new();
    /// assert!(SAMPLES.is_empty());
    /// ```
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        const { assert!(N > 0 && N <= super::MAX_CAPACITY, "ring capacity out of range") };
        Self {
            head: CachePadded::new(AtomicUsize::new(0)),
            tail: CachePadded::new(AtomicUsize::new(0)),
            slots: [const { Slot::new() }; N],
            _items: PhantomData,
        }
    }

    /// Returns an empty ring of capacity `N`.
    #[cfg(loom)]
    pub fn new() -> Self {
        const { assert!(N > 0 && N <= super::MAX_CAPACITY, "ring capacity out of range") };
        Self {
            head: CachePadded::new(AtomicUsize::new(0)),
            tail: CachePadded::new(AtomicUsize::new(0)),
            slots: core::array::from_fn(|_| Slot::new()),
            _items: PhantomData,
        }
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
    /// use backflow_core::ring::{spsc::HeapRing, CapacityError};
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
        Self::with_storage(super::heap_slots(capacity, |_| Slot::new())?)
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
    /// use backflow_core::ring::spsc::{SliceRing, Slot};
    ///
    /// let mut buffer: [Slot<u8>; 16] = Default::default();
    /// let ring = SliceRing::with_storage(&mut buffer[..4])?;
    /// assert_eq!(ring.capacity(), 4);
    /// # Ok::<(), backflow_core::ring::CapacityError>(())
    /// ```
    pub fn with_storage(storage: S) -> Result<Self, CapacityError> {
        check_capacity(storage.slots().len())?;
        Ok(Self {
            head: CachePadded::new(AtomicUsize::new(0)),
            tail: CachePadded::new(AtomicUsize::new(0)),
            slots: storage,
            _items: PhantomData,
        })
    }

    /// Splits the ring into its two halves, borrowing it.
    ///
    /// Items pushed by earlier halves are still there. For halves that own the ring, see
    /// [`into_split`](Self::into_split).
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::ring::spsc::ArrayRing;
    ///
    /// let mut ring = ArrayRing::<u8, 4>::new();
    /// {
    ///     let (mut tx, _rx) = ring.split();
    ///     tx.try_push(1).unwrap();
    /// }
    /// let (_tx, mut rx) = ring.split();
    /// assert_eq!(rx.try_pop(), Ok(1));
    /// ```
    pub fn split(&mut self) -> (Producer<&Self>, Consumer<&Self>) {
        let ring: &Self = self;
        (Producer::new(ring), Consumer::new(ring))
    }

    /// Splits the ring into two halves that share ownership of it (feature `alloc`); the ring
    /// is dropped, with any items left in it, when both halves are.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::ring::spsc::HeapRing;
    ///
    /// let (mut tx, mut rx) = HeapRing::<u8>::with_capacity(2)?.into_split();
    /// let handle = std::thread::spawn(move || tx.push_slice(&[1, 2]));
    /// assert_eq!(handle.join().unwrap(), 2);
    /// assert_eq!(rx.len(), 2);
    /// # Ok::<(), backflow_core::ring::CapacityError>(())
    /// ```
    #[cfg(all(feature = "alloc", target_has_atomic = "ptr"))]
    pub fn into_split(self) -> (Producer<Arc<Self>>, Consumer<Arc<Self>>) {
        let ring = Arc::new(self);
        (Producer::new(Arc::clone(&ring)), Consumer::new(ring))
    }

    /// The number of items the ring holds when full.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(backflow_core::ring::spsc::ArrayRing::<u8, 9>::new().capacity(), 9);
    /// ```
    #[inline(always)]
    pub fn capacity(&self) -> usize {
        self.slots.slots().len()
    }

    /// The number of items in the ring: exact when no half is in use, otherwise a snapshot that
    /// may already be stale (the halves' own [`Producer::len`] is never less than the true
    /// count, [`Consumer::len`] never more).
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::ring::spsc::ArrayRing;
    ///
    /// let mut ring = ArrayRing::<u8, 4>::new();
    /// ring.split().0.push_slice(&[1, 2]);
    /// assert_eq!(ring.len(), 2);
    /// ```
    pub fn len(&self) -> usize {
        loop {
            let tail = self.tail.load(Ordering::Acquire);
            let head = self.head.load(Ordering::Acquire);
            // If the tail did not move while we read the head, the pair is consistent.
            if self.tail.load(Ordering::Acquire) == tail {
                return self.distance(head, tail).min(self.capacity());
            }
        }
    }

    /// Whether the ring holds no item (a snapshot, like [`len`](Self::len)).
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(backflow_core::ring::spsc::ArrayRing::<u8, 1>::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether every slot holds an item (a snapshot, like [`len`](Self::len)).
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::ring::spsc::ArrayRing;
    ///
    /// let mut ring = ArrayRing::<u8, 1>::new();
    /// ring.split().0.try_push(0).unwrap();
    /// assert!(ring.is_full());
    /// ```
    pub fn is_full(&self) -> bool {
        self.len() == self.capacity()
    }

    /// The slot a position refers to.
    ///
    /// # Safety
    ///
    /// `pos < 2 * capacity`, which every position kept by this module satisfies.
    #[inline(always)]
    unsafe fn slot(&self, pos: usize) -> &Slot<T> {
        let index = self.collapse(pos);
        debug_assert!(index < self.capacity());
        // SAFETY: `collapse` maps `0..2 * capacity` onto `0..capacity`, the slice's bounds.
        unsafe { self.slots.slots().get_unchecked(index) }
    }

    /// Maps a position in `0..2 * capacity` to a slot index in `0..capacity`.
    #[inline(always)]
    fn collapse(&self, pos: usize) -> usize {
        let capacity = self.capacity();
        if pos < capacity { pos } else { pos - capacity }
    }

    /// Moves a position `n <= capacity` slots forward, wrapping at `2 * capacity`.
    #[inline(always)]
    fn advance(&self, pos: usize, n: usize) -> usize {
        // No overflow: pos + n < 3 * capacity <= 3 * MAX_CAPACITY < usize::MAX.
        let next = pos + n;
        let wrap = 2 * self.capacity();
        if next < wrap { next } else { next - wrap }
    }

    /// Moves a position one slot forward, wrapping at `2 * capacity`.
    #[inline(always)]
    fn advance_one(&self, pos: usize) -> usize {
        let next = pos + 1;
        if next == 2 * self.capacity() { 0 } else { next }
    }

    /// The number of items between a head and a tail position.
    #[inline(always)]
    fn distance(&self, head: usize, tail: usize) -> usize {
        if tail >= head { tail - head } else { tail + 2 * self.capacity() - head }
    }

    /// The slot-index ranges `[a, b)` and `[0, c)` covering `n` slots from position `pos`.
    #[inline(always)]
    fn segments(&self, pos: usize, n: usize) -> (core::ops::Range<usize>, core::ops::Range<usize>) {
        let start = self.collapse(pos);
        let first = n.min(self.capacity() - start);
        (start..start + first, 0..n - first)
    }
}

impl<T, S: Storage<Slot = Slot<T>>> Drop for Ring<T, S> {
    fn drop(&mut self) {
        // No half is alive (they borrow or co-own the ring), and every half publishes its
        // position before returning, so `head..tail` is exactly the set of items left.
        let head = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Relaxed);
        let (first, second) = self.segments(head, self.distance(head, tail));
        for slot in &self.slots.slots()[first] {
            // SAFETY: slots in `head..tail` hold items; `&mut self` means nobody else can
            // touch them, and each is dropped once because the ring is going away.
            unsafe { slot.drop_in_place() };
        }
        for slot in &self.slots.slots()[second] {
            // SAFETY: as above, for the wrapped-around part of `head..tail`.
            unsafe { slot.drop_in_place() };
        }
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

/// Publishes a half's position when dropped: at the end of a batch, or while unwinding from a
/// panic in the caller's iterator or closure, so items already moved are never lost or seen
/// twice.
struct Publish<'a, T, S: Storage<Slot = Slot<T>>> {
    ring: &'a Ring<T, S>,
    /// The ring's copy of the position: `ring.tail` or `ring.head`.
    shared: &'a AtomicUsize,
    /// The half's own copy of the position.
    position: &'a mut usize,
    /// Items moved since `position`.
    moved: usize,
}

impl<T, S: Storage<Slot = Slot<T>>> Drop for Publish<'_, T, S> {
    #[inline(always)]
    fn drop(&mut self) {
        *self.position = self.ring.advance(*self.position, self.moved);
        self.shared.store(*self.position, Ordering::Release);
    }
}

/// The pushing half of an SPSC ring.
///
/// `R` is how the half holds the ring: `&Ring` (from [`Ring::split`]) or `Arc<Ring>` (from
/// [`Ring::into_split`]). The half is `Send` (when items are) but not `Sync`: exactly one
/// thread pushes.
///
/// # Examples
///
/// ```
/// use backflow_core::ring::{spsc::ArrayRing, PushError};
///
/// let mut ring = ArrayRing::<u8, 2>::new();
/// let (mut tx, _rx) = ring.split();
/// assert_eq!(tx.push_slice(&[1, 2]), 2);
/// assert_eq!(tx.try_push(3), Err(PushError::Full(3)));
/// ```
pub struct Producer<R> {
    ring: R,
    /// Our own position; the shared copy in the ring is only ever stored to.
    tail: usize,
    /// The position one full ring ahead of the consumer's position when we last looked: the
    /// ring looks full when `tail` reaches it.
    limit: usize,
    _not_sync: PhantomData<Cell<()>>,
}

impl<T, S, R> Producer<R>
where
    R: Deref<Target = Ring<T, S>>,
    S: Storage<Slot = Slot<T>>,
{
    fn new(ring: R) -> Self {
        let tail = ring.tail.load(Ordering::Relaxed);
        let limit = ring.advance(ring.head.load(Ordering::Acquire), ring.capacity());
        Self { ring, tail, limit, _not_sync: PhantomData }
    }

    /// Pushes one item, or hands it back if the ring is full.
    ///
    /// # Errors
    ///
    /// [`PushError::Full`] with the item when every slot is taken.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::ring::{spsc::ArrayRing, PushError};
    ///
    /// let mut ring = ArrayRing::<&str, 1>::new();
    /// let (mut tx, _rx) = ring.split();
    /// assert_eq!(tx.try_push("a"), Ok(()));
    /// assert_eq!(tx.try_push("b"), Err(PushError::Full("b")));
    /// ```
    #[inline]
    pub fn try_push(&mut self, item: T) -> Result<(), PushError<T>> {
        let ring = &*self.ring;
        // Possibly full (by the cached limit)? Look at the real head; really full? Give it back.
        if self.tail == self.limit {
            self.limit = ring.advance(ring.head.load(Ordering::Acquire), ring.capacity());
            if self.tail == self.limit {
                return Err(PushError::Full(item));
            }
        }
        // SAFETY: `tail` is a valid position. The slot at `tail` is outside `head..tail`, so it
        // is empty and the consumer does not touch it until the Release store below publishes
        // it (the Acquire load of `head` above ordered the consumer's read of its last item
        // before our write).
        unsafe { ring.slot(self.tail).write(item) };
        self.tail = ring.advance_one(self.tail);
        ring.tail.store(self.tail, Ordering::Release);
        Ok(())
    }

    /// Copies as many items from the front of `items` as fit and returns how many; loads the
    /// consumer's position once and publishes once.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::ring::spsc::ArrayRing;
    ///
    /// let mut ring = ArrayRing::<u32, 4>::new();
    /// let (mut tx, _rx) = ring.split();
    /// assert_eq!(tx.push_slice(&[1, 2, 3]), 3);
    /// assert_eq!(tx.push_slice(&[4, 5, 6]), 1);
    /// ```
    #[inline]
    pub fn push_slice(&mut self, items: &[T]) -> usize
    where
        T: Copy,
    {
        let n = items.len().min(self.refresh_free());
        let ring = &*self.ring;
        let (first, second) = ring.segments(self.tail, n);
        let (items_first, items_second) = items[..n].split_at(first.len());
        for (slot, &item) in ring.slots.slots()[first].iter().zip(items_first) {
            // SAFETY: the `n` slots from `tail` are free (n <= free space just loaded with
            // Acquire) and unpublished, so only this half can touch them.
            unsafe { slot.write(item) };
        }
        for (slot, &item) in ring.slots.slots()[second].iter().zip(items_second) {
            // SAFETY: as above, for the wrapped-around part.
            unsafe { slot.write(item) };
        }
        self.tail = ring.advance(self.tail, n);
        ring.tail.store(self.tail, Ordering::Release);
        n
    }

    /// Pushes items taken from `items` while there is room and returns how many; takes nothing
    /// from the iterator that it cannot push. Loads the consumer's position once and publishes
    /// once (also if the iterator panics, so pushed items are never lost).
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::ring::spsc::ArrayRing;
    ///
    /// let mut ring = ArrayRing::<String, 2>::new();
    /// let (mut tx, _rx) = ring.split();
    /// let mut words = ["a", "b", "c"].into_iter().map(String::from);
    /// assert_eq!(tx.push_iter(&mut words), 2);
    /// assert_eq!(words.next().as_deref(), Some("c"));
    /// ```
    pub fn push_iter<I: Iterator<Item = T>>(&mut self, items: &mut I) -> usize {
        let free = self.refresh_free();
        let ring = &*self.ring;
        let slots = ring.slots.slots();
        let (first, second) = ring.segments(self.tail, free);
        let mut publish = Publish { ring, shared: &ring.tail, position: &mut self.tail, moved: 0 };
        for part in [first, second] {
            let (room, before) = (part.len(), publish.moved);
            // A slot is taken before its item: nothing is taken from `items` without a slot.
            for (slot, item) in slots[part].iter().zip(&mut *items) {
                // SAFETY: the `free` slots from `tail` are empty (free space was just loaded
                // with Acquire) and unpublished, so only this half can touch them.
                unsafe { slot.write(item) };
                publish.moved += 1;
            }
            if publish.moved - before < room {
                break;
            }
        }
        publish.moved
    }

    /// The number of items in the ring. Never less than the true count: the consumer may have
    /// taken some since.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::ring::spsc::ArrayRing;
    ///
    /// let mut ring = ArrayRing::<u8, 4>::new();
    /// let (mut tx, _rx) = ring.split();
    /// tx.push_slice(&[1, 2]);
    /// assert_eq!(tx.len(), 2);
    /// ```
    pub fn len(&self) -> usize {
        self.ring.distance(self.ring.head.load(Ordering::Acquire), self.tail)
    }

    /// Whether the ring is empty (see [`len`](Self::len)).
    ///
    /// # Examples
    ///
    /// ```
    /// let mut ring = backflow_core::ring::spsc::ArrayRing::<u8, 4>::new();
    /// assert!(ring.split().0.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a push would fail right now.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut ring = backflow_core::ring::spsc::ArrayRing::<u8, 1>::new();
    /// let (mut tx, _rx) = ring.split();
    /// tx.try_push(1).unwrap();
    /// assert!(tx.is_full());
    /// ```
    pub fn is_full(&self) -> bool {
        self.len() == self.ring.capacity()
    }

    /// The ring's capacity.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut ring = backflow_core::ring::spsc::ArrayRing::<u8, 3>::new();
    /// assert_eq!(ring.split().0.capacity(), 3);
    /// ```
    pub fn capacity(&self) -> usize {
        self.ring.capacity()
    }

    /// The ring this half pushes into, as the half holds it (`&Ring`, or `Arc<Ring>` after
    /// [`Ring::into_split`]): a third party, such as a monitor, can keep a clone of an `Arc` to
    /// read the ring's [`len`](Ring::len) while both halves are in use.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::ring::spsc::ArrayRing;
    ///
    /// let mut ring = ArrayRing::<u8, 4>::new();
    /// let (mut tx, _rx) = ring.split();
    /// let monitor: &ArrayRing<u8, 4> = *tx.ring();
    /// tx.try_push(1).unwrap();
    /// assert_eq!(monitor.len(), 1);
    /// ```
    pub fn ring(&self) -> &R {
        &self.ring
    }

    /// Reloads the consumer's position and returns the number of free slots.
    #[inline(always)]
    fn refresh_free(&mut self) -> usize {
        let ring = &*self.ring;
        self.limit = ring.advance(ring.head.load(Ordering::Acquire), ring.capacity());
        ring.distance(self.tail, self.limit)
    }
}

impl<R> fmt::Debug for Producer<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer").field("tail", &self.tail).finish_non_exhaustive()
    }
}

/// The popping half of an SPSC ring.
///
/// `R` is how the half holds the ring: `&Ring` (from [`Ring::split`]) or `Arc<Ring>` (from
/// [`Ring::into_split`]). The half is `Send` (when items are) but not `Sync`: exactly one
/// thread pops.
///
/// # Examples
///
/// ```
/// use backflow_core::ring::{spsc::ArrayRing, PopError};
///
/// let mut ring = ArrayRing::<u8, 2>::new();
/// let (mut tx, mut rx) = ring.split();
/// tx.try_push(7).unwrap();
/// assert_eq!(rx.try_pop(), Ok(7));
/// assert_eq!(rx.try_pop(), Err(PopError::Empty));
/// ```
pub struct Consumer<R> {
    ring: R,
    /// Our own position; the shared copy in the ring is only ever stored to.
    head: usize,
    /// The producer's position when we last looked.
    cached_tail: usize,
    _not_sync: PhantomData<Cell<()>>,
}

impl<T, S, R> Consumer<R>
where
    R: Deref<Target = Ring<T, S>>,
    S: Storage<Slot = Slot<T>>,
{
    fn new(ring: R) -> Self {
        let head = ring.head.load(Ordering::Relaxed);
        let cached_tail = ring.tail.load(Ordering::Acquire);
        Self { ring, head, cached_tail, _not_sync: PhantomData }
    }

    /// Pops the oldest item.
    ///
    /// # Errors
    ///
    /// [`PopError::Empty`] when the ring holds no item.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::ring::{spsc::ArrayRing, PopError};
    ///
    /// let mut ring = ArrayRing::<u8, 2>::new();
    /// let (mut tx, mut rx) = ring.split();
    /// tx.push_slice(&[1, 2]);
    /// assert_eq!(rx.try_pop(), Ok(1));
    /// assert_eq!(rx.try_pop(), Ok(2));
    /// assert_eq!(rx.try_pop(), Err(PopError::Empty));
    /// ```
    #[inline]
    pub fn try_pop(&mut self) -> Result<T, PopError> {
        let ring = &*self.ring;
        // Possibly empty (by the cached tail)? Look at the real tail; really empty? Report it.
        if self.head == self.cached_tail {
            self.cached_tail = ring.tail.load(Ordering::Acquire);
            if self.head == self.cached_tail {
                return Err(PopError::Empty);
            }
        }
        // SAFETY: `head` is a valid position inside `head..tail`, so the slot holds an item
        // that the producer published with Release (and we loaded `tail` with Acquire); the
        // producer does not reuse the slot until the Release store below.
        let item = unsafe { ring.slot(self.head).read() };
        self.head = ring.advance_one(self.head);
        ring.head.store(self.head, Ordering::Release);
        Ok(item)
    }

    /// Copies as many items as fit into the front of `out` and returns how many; loads the
    /// producer's position once and publishes once.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::ring::spsc::ArrayRing;
    ///
    /// let mut ring = ArrayRing::<u8, 4>::new();
    /// let (mut tx, mut rx) = ring.split();
    /// tx.push_slice(&[1, 2, 3]);
    /// let mut out = [0; 2];
    /// assert_eq!(rx.pop_slice(&mut out), 2);
    /// assert_eq!(out, [1, 2]);
    /// ```
    #[inline]
    pub fn pop_slice(&mut self, out: &mut [T]) -> usize
    where
        T: Copy,
    {
        let n = out.len().min(self.refresh_len());
        let ring = &*self.ring;
        let (first, second) = ring.segments(self.head, n);
        let (out_first, out_second) = out[..n].split_at_mut(first.len());
        for (item, slot) in out_first.iter_mut().zip(&ring.slots.slots()[first]) {
            // SAFETY: the `n` slots from `head` hold items published before the Acquire load
            // of `tail`; the producer cannot reuse them before we publish `head`.
            *item = unsafe { slot.read() };
        }
        for (item, slot) in out_second.iter_mut().zip(&ring.slots.slots()[second]) {
            // SAFETY: as above, for the wrapped-around part.
            *item = unsafe { slot.read() };
        }
        self.head = ring.advance(self.head, n);
        ring.head.store(self.head, Ordering::Release);
        n
    }

    /// Pops up to `max` items, oldest first, handing each to `f`, and returns how many; loads
    /// the producer's position once and publishes once (also if `f` panics, so no item is
    /// seen twice or lost).
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::ring::spsc::ArrayRing;
    ///
    /// let mut ring = ArrayRing::<String, 4>::new();
    /// let (mut tx, mut rx) = ring.split();
    /// tx.push_iter(&mut ["a", "b", "c"].into_iter().map(String::from));
    /// let mut seen = Vec::new();
    /// assert_eq!(rx.pop_each(2, |s| seen.push(s)), 2);
    /// assert_eq!(seen, ["a", "b"]);
    /// ```
    pub fn pop_each(&mut self, max: usize, mut f: impl FnMut(T)) -> usize {
        let n = max.min(self.refresh_len());
        let ring = &*self.ring;
        let slots = ring.slots.slots();
        let (first, second) = ring.segments(self.head, n);
        let mut publish = Publish { ring, shared: &ring.head, position: &mut self.head, moved: 0 };
        for part in [first, second] {
            for slot in &slots[part] {
                // SAFETY: the `n` slots from `head` hold items published before the Acquire
                // load of `tail`. The item is counted as taken before `f` runs, so a panic in
                // `f` cannot lead to a second read.
                let item = unsafe { slot.read() };
                publish.moved += 1;
                f(item);
            }
        }
        n
    }

    /// The number of items in the ring. Never more than the true count: the producer may have
    /// added some since.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::ring::spsc::ArrayRing;
    ///
    /// let mut ring = ArrayRing::<u8, 4>::new();
    /// let (mut tx, rx) = ring.split();
    /// tx.push_slice(&[1, 2, 3]);
    /// assert_eq!(rx.len(), 3);
    /// ```
    pub fn len(&self) -> usize {
        self.ring.distance(self.head, self.ring.tail.load(Ordering::Acquire))
    }

    /// Whether a pop would fail right now.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut ring = backflow_core::ring::spsc::ArrayRing::<u8, 4>::new();
    /// assert!(ring.split().1.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ring's capacity.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut ring = backflow_core::ring::spsc::ArrayRing::<u8, 3>::new();
    /// assert_eq!(ring.split().1.capacity(), 3);
    /// ```
    pub fn capacity(&self) -> usize {
        self.ring.capacity()
    }

    /// Reloads the producer's position and returns the number of items available.
    #[inline(always)]
    fn refresh_len(&mut self) -> usize {
        self.cached_tail = self.ring.tail.load(Ordering::Acquire);
        self.ring.distance(self.head, self.cached_tail)
    }
}

impl<R> fmt::Debug for Consumer<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer").field("head", &self.head).finish_non_exhaustive()
    }
}
