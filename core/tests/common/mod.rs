//! Helpers shared by the ring tests.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// An item that counts how many times items of its family were dropped.
#[derive(Debug)]
pub struct Counted {
    pub id: usize,
    drops: Arc<AtomicUsize>,
}

/// Makes `Counted` items that share one drop counter.
#[derive(Debug, Default, Clone)]
pub struct DropCounter(Arc<AtomicUsize>);

impl DropCounter {
    pub fn item(&self, id: usize) -> Counted {
        Counted { id, drops: Arc::clone(&self.0) }
    }

    pub fn dropped(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

/// Fewer cases and items under miri, which runs the same tests a few thousand times slower.
pub const fn scaled(normal: usize, miri: usize) -> usize {
    if cfg!(miri) { miri } else { normal }
}

/// Fails to compile if `T: Sync` (two applicable impls make the call ambiguous).
pub fn assert_not_sync<T: ?Sized>() {
    trait AmbiguousIfSync<A> {
        fn check() {}
    }
    impl<T: ?Sized> AmbiguousIfSync<()> for T {}
    impl<T: ?Sized + Sync> AmbiguousIfSync<u8> for T {}
    <T as AmbiguousIfSync<_>>::check();
}

pub fn assert_send<T: Send>() {}
pub fn assert_sync<T: Sync>() {}
