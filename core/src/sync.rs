//! The one place the core takes its concurrency primitives from.
//!
//! Normally these are `core`'s atomics and cells and crossbeam-utils' `Backoff`. Built with
//! `RUSTFLAGS="--cfg loom"`, they are loom's model-checked versions, so the rings' code is
//! exactly the code loom explores. No other module imports `core::sync::atomic` directly.

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{AtomicUsize, Ordering};
#[cfg(all(not(loom), target_has_atomic = "ptr"))]
pub(crate) use {core::sync::atomic::fence, crossbeam_utils::Backoff};

// The metrics' counters are statistics that no thread waits on: under loom they stay plain
// atomics, so that a model of the runtime (which counts every item) explores no more
// interleavings for them.
#[cfg(target_has_atomic = "64")]
pub(crate) use core::sync::atomic::AtomicU64;

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicUsize, Ordering, fence};

pub(crate) use crossbeam_utils::CachePadded;

/// An `UnsafeCell` with loom's closure-based access shape, so the same ring code compiles with
/// and without loom (loom checks every access against the happens-before relation).
#[cfg(not(loom))]
#[derive(Debug)]
#[repr(transparent)]
pub(crate) struct UnsafeCell<T>(core::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    pub(crate) const fn new(value: T) -> Self {
        Self(core::cell::UnsafeCell::new(value))
    }

    /// Gives `f` a pointer for reading. The caller's protocol must exclude concurrent writers.
    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Gives `f` a pointer for writing. The caller's protocol must exclude any other access.
    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

#[cfg(loom)]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(loom::cell::UnsafeCell<T>);

#[cfg(loom)]
impl<T> UnsafeCell<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(loom::cell::UnsafeCell::new(value))
    }

    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        self.0.with(f)
    }

    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        self.0.with_mut(f)
    }
}

/// Under loom a spinning thread must yield to the model checker, or the model never ends.
#[cfg(loom)]
#[derive(Debug, Default)]
pub(crate) struct Backoff;

#[cfg(loom)]
impl Backoff {
    pub(crate) fn new() -> Self {
        Self
    }

    pub(crate) fn spin(&self) {
        loom::thread::yield_now();
    }

    pub(crate) fn snooze(&self) {
        loom::thread::yield_now();
    }
}

/// Defines a `const fn` normally and a plain `fn` under loom, whose atomics and cells cannot be
/// built in a const context. The body is written once.
macro_rules! const_fn {
    ($(#[$attr:meta])* $vis:vis fn $($rest:tt)*) => {
        #[cfg(not(loom))]
        $(#[$attr])* $vis const fn $($rest)*

        #[cfg(loom)]
        $(#[$attr])* $vis fn $($rest)*
    };
}
pub(crate) use const_fn;
