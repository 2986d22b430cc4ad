//! [`ReorderWindow`]: puts items that finished out of order back in sequence, in bounded
//! memory.
//!
//! Parallel workers finish items out of order. Each item carries the sequence number it had on
//! entry; the window holds early arrivals until the gap before them fills, then releases them
//! in sequence. It holds at most `N` sequence numbers ahead of the next one due, and refuses
//! anything further ahead, so a caller waits (backpressure) instead of memory growing.
//!
//! # Examples
//!
//! ```
//! use backflow_core::ReorderWindow;
//!
//! let mut window = ReorderWindow::<&str, 4>::new();
//! window.accept(1, "b")?;
//! assert_eq!(window.pop_ready(), None); // 0 has not arrived
//! window.accept(0, "a")?;
//! assert_eq!(window.pop_ready(), Some((0, "a")));
//! assert_eq!(window.pop_ready(), Some((1, "b")));
//! # Ok::<(), backflow_core::reorder::ReorderError<&str>>(())
//! ```

use core::fmt;

/// A refused [`ReorderWindow::accept`]; the item is handed back.
///
/// # Examples
///
/// ```
/// use backflow_core::{ReorderWindow, reorder::ReorderError};
///
/// let mut window = ReorderWindow::<u8, 2>::new();
/// assert_eq!(window.accept(2, 9), Err(ReorderError::OutOfWindow(9)));
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ReorderError<T> {
    /// The sequence number is `N` or more ahead of the next one due: wait until the window
    /// moves on, then retry.
    OutOfWindow(T),
    /// The sequence number was already accepted (or already released).
    Duplicate(T),
}

impl<T> ReorderError<T> {
    /// Returns the refused item.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(backflow_core::reorder::ReorderError::Duplicate(3).into_inner(), 3);
    /// ```
    pub fn into_inner(self) -> T {
        match self {
            Self::OutOfWindow(item) | Self::Duplicate(item) => item,
        }
    }
}

impl<T> fmt::Debug for ReorderError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OutOfWindow(_) => "OutOfWindow(..)",
            Self::Duplicate(_) => "Duplicate(..)",
        })
    }
}

impl<T> fmt::Display for ReorderError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OutOfWindow(_) => "sequence number is beyond the reorder window",
            Self::Duplicate(_) => "sequence number was already accepted",
        })
    }
}

impl<T> core::error::Error for ReorderError<T> {}

/// Re-sequences up to `N` items by sequence number; see the [module docs](self).
///
/// # Examples
///
/// ```
/// use backflow_core::ReorderWindow;
///
/// let mut window = ReorderWindow::<u32, 8>::new();
/// for seq in [2, 0, 1] {
///     window.accept(seq, seq as u32 * 10)?;
/// }
/// let released: Vec<_> = std::iter::from_fn(|| window.pop_ready()).collect();
/// assert_eq!(released, [(0, 0), (1, 10), (2, 20)]);
/// # Ok::<(), backflow_core::reorder::ReorderError<u32>>(())
/// ```
pub struct ReorderWindow<T, const N: usize> {
    /// The sequence number due next.
    next: u64,
    /// Slot `seq % N` holds the item with sequence number `seq`, for `next <= seq < next + N`.
    slots: [Option<T>; N],
    len: usize,
}

impl<T, const N: usize> ReorderWindow<T, N> {
    /// An empty window expecting sequence number 0 first.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(backflow_core::ReorderWindow::<u8, 4>::new().next_seq(), 0);
    /// ```
    pub const fn new() -> Self {
        Self::starting_at(0)
    }

    /// An empty window expecting `seq` first.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(backflow_core::ReorderWindow::<u8, 4>::starting_at(7).next_seq(), 7);
    /// ```
    pub const fn starting_at(seq: u64) -> Self {
        const { assert!(N > 0, "a reorder window needs at least one slot") };
        Self { next: seq, slots: [const { None }; N], len: 0 }
    }

    /// Takes the item with sequence number `seq`.
    ///
    /// # Errors
    ///
    /// [`ReorderError::OutOfWindow`] if `seq >= next_seq() + N`, [`ReorderError::Duplicate`] if
    /// `seq` was accepted before; either way the item comes back.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::{ReorderWindow, reorder::ReorderError};
    ///
    /// let mut window = ReorderWindow::<char, 2>::new();
    /// window.accept(1, 'b').unwrap();
    /// assert_eq!(window.accept(1, 'x'), Err(ReorderError::Duplicate('x')));
    /// ```
    pub fn accept(&mut self, seq: u64, item: T) -> Result<(), ReorderError<T>> {
        let Some(ahead) = seq.checked_sub(self.next) else {
            return Err(ReorderError::Duplicate(item));
        };
        if ahead >= N as u64 {
            return Err(ReorderError::OutOfWindow(item));
        }
        let slot = &mut self.slots[(seq % N as u64) as usize];
        if slot.is_some() {
            return Err(ReorderError::Duplicate(item));
        }
        *slot = Some(item);
        self.len += 1;
        Ok(())
    }

    /// Releases the item due next, if it has arrived.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut window = backflow_core::ReorderWindow::<u8, 2>::new();
    /// window.accept(0, 5).unwrap();
    /// assert_eq!(window.pop_ready(), Some((0, 5)));
    /// assert_eq!(window.pop_ready(), None);
    /// ```
    pub fn pop_ready(&mut self) -> Option<(u64, T)> {
        let item = self.slots[(self.next % N as u64) as usize].take()?;
        let seq = self.next;
        self.next += 1;
        self.len -= 1;
        Some((seq, item))
    }

    /// The sequence number due next.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut window = backflow_core::ReorderWindow::<u8, 2>::new();
    /// window.accept(0, 5).unwrap();
    /// window.pop_ready();
    /// assert_eq!(window.next_seq(), 1);
    /// ```
    pub const fn next_seq(&self) -> u64 {
        self.next
    }

    /// Whether `seq` fits the window now (so [`accept`](Self::accept) would not refuse it as
    /// out of window).
    ///
    /// # Examples
    ///
    /// ```
    /// let window = backflow_core::ReorderWindow::<u8, 2>::new();
    /// assert!(window.fits(1) && !window.fits(2));
    /// ```
    pub const fn fits(&self, seq: u64) -> bool {
        seq >= self.next && seq - self.next < N as u64
    }

    /// Items held, waiting for a gap before them to fill.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut window = backflow_core::ReorderWindow::<u8, 4>::new();
    /// window.accept(3, 1).unwrap();
    /// assert_eq!(window.len(), 1);
    /// ```
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether no item is held.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(backflow_core::ReorderWindow::<u8, 4>::new().is_empty());
    /// ```
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The window size `N`.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(backflow_core::ReorderWindow::<u8, 4>::new().capacity(), 4);
    /// ```
    pub const fn capacity(&self) -> usize {
        N
    }
}

impl<T, const N: usize> Default for ReorderWindow<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, const N: usize> fmt::Debug for ReorderWindow<T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReorderWindow")
            .field("next", &self.next)
            .field("len", &self.len)
            .field("capacity", &N)
            .finish()
    }
}
