//! The one place the runtime takes its concurrency primitives from: atomics and fences,
//! `Mutex`, `Condvar`, the thread-start channel, threads (and a number naming the current
//! one, [`this_thread`]), and crossbeam-utils' `Backoff` and `CachePadded`.
//!
//! Normally these are the standard library's and crossbeam-utils' own, re-exported as they
//! are: nothing is wrapped, and a build without loom runs exactly the code it would run
//! importing them directly. Built with `RUSTFLAGS="--cfg loom"`, they are loom's
//! model-checked versions, so the protocols loom explores in the runtime's models (`models/`,
//! run by `cargo xtask loom`) are the very code a pipeline runs. The core does the same for
//! its rings (`backflow-core`'s `sync` module).
//!
//! Some primitives stay the standard library's in both builds, and are not re-exported here:
//! `Arc` and `Weak` (loom's `Arc` panics when it is dropped while loom unwinds a deadlocked
//! execution, which would abort the test binary instead of failing one model), `OnceLock`
//! and `PoisonError` (set once while a pipeline is built; a lock's result), and the counters
//! of `backflow_core::metrics` (statistics that no thread waits on).
//!
//! No other module of the runtime imports `std::sync::atomic`, `std::sync::{Mutex, Condvar,
//! mpsc}`, `std::thread` or crossbeam-utils directly (`cargo xtask modules` checks it).

#[cfg(not(loom))]
pub(crate) use crossbeam_utils::Backoff;
#[cfg(not(loom))]
pub(crate) use std::hint::spin_loop;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering, fence};
#[cfg(not(loom))]
pub(crate) use std::sync::{Condvar, Mutex, MutexGuard, mpsc};
#[cfg(not(loom))]
pub(crate) use std::thread;

pub(crate) use crossbeam_utils::CachePadded;

#[cfg(not(loom))]
std::thread_local! {
    /// A thread-local whose address names the thread while it lives.
    static HERE: u8 = const { 0 };
}

/// A number no other running thread has while this one runs.
#[cfg(not(loom))]
pub(crate) fn this_thread() -> usize {
    HERE.with(|here| std::ptr::from_ref(here).addr())
}

#[cfg(loom)]
pub(crate) use self::model::{Backoff, fence, mpsc, this_thread, thread};
#[cfg(all(loom, test))]
pub(crate) use self::model::{FenceSite, without_fences};
#[cfg(loom)]
pub(crate) use loom::hint::spin_loop;
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::{Condvar, Mutex, MutexGuard};

/// What only a loom build has: a `Backoff` that hands the turn to the model checker, threads
/// with a stack of a useful size, a bounded channel, and a `fence` that a model can leave out
/// at chosen call sites.
#[cfg(loom)]
mod model {
    use std::cell::{Cell, RefCell};
    use std::panic::Location;

    use super::Ordering;

    /// Under loom a waiting thread yields to the model checker instead of spinning, and parks
    /// at once: spinning only repeats the checks that precede the park, and each repetition
    /// would multiply the interleavings loom explores.
    #[derive(Debug, Default)]
    pub(crate) struct Backoff;

    impl Backoff {
        pub(crate) fn new() -> Self {
            Self
        }

        pub(crate) fn snooze(&self) {
            loom::thread::yield_now();
        }

        pub(crate) fn is_completed(&self) -> bool {
            true
        }
    }

    /// A number naming the current thread: a hash of its loom id (loom's thread-locals do
    /// not stay at one address).
    pub(crate) fn this_thread() -> usize {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(thread::current().id());
        // Only compared for equality: the bits a `usize` keeps are as good as any.
        hash as usize
    }

    /// loom's threads, with the standard library's default stack: loom runs each thread as a
    /// coroutine with 32 KiB of stack unless told otherwise, less than a worker needs.
    pub(crate) mod thread {
        pub(crate) use loom::thread::{JoinHandle, Thread, current, park, yield_now};
        /// Whether this thread is unwinding: loom runs its threads as the process's, and a
        /// panic unwinds them as any.
        pub(crate) use std::thread::panicking;

        /// Loom has no clock: a timed park is a park that may end early.
        pub(crate) fn park_timeout(_timeout: std::time::Duration) {
            park();
        }

        const STACK_SIZE: usize = 2 << 20;

        #[derive(Debug)]
        pub(crate) struct Builder(loom::thread::Builder);

        impl Builder {
            pub(crate) fn new() -> Self {
                Self(loom::thread::Builder::new().stack_size(STACK_SIZE))
            }

            pub(crate) fn name(self, name: String) -> Self {
                Self(self.0.name(name))
            }

            pub(crate) fn spawn<F, T>(self, f: F) -> std::io::Result<JoinHandle<T>>
            where
                F: FnOnce() -> T + Send + 'static,
                T: Send + 'static,
            {
                self.0.spawn(f)
            }
        }

        #[cfg(test)]
        pub(crate) fn spawn<F, T>(f: F) -> JoinHandle<T>
        where
            F: FnOnce() -> T + Send + 'static,
            T: Send + 'static,
        {
            Builder::new().spawn(f).expect("loom spawns every thread it can hold")
        }
    }

    /// loom's channels, with the standard library's name for the bounded one: a thread's
    /// start is announced with one message, so the bound makes no difference.
    pub(crate) mod mpsc {
        pub(crate) use loom::sync::mpsc::{Receiver, Sender};

        pub(crate) fn sync_channel<T>(_bound: usize) -> (Sender<T>, Receiver<T>) {
            loom::sync::mpsc::channel()
        }
    }

    /// A call in the runtime's source that issues a fence (`fence(…)`, or a `#[track_caller]`
    /// function that does): the file (as its path ends, such as `"src/input.rs"`) and the
    /// line.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct FenceSite {
        pub(crate) file: &'static str,
        pub(crate) line: u32,
    }

    impl FenceSite {
        fn is(&self, location: &Location<'_>) -> bool {
            location.line() == self.line && location.file().ends_with(self.file)
        }
    }

    // Loom runs every thread of a model on the test's own thread, one at a time, so a
    // thread-local setting reaches all of them, and no other test.
    thread_local! {
        static LEFT_OUT: RefCell<Vec<FenceSite>> = const { RefCell::new(Vec::new()) };
        static REACHED: Cell<usize> = const { Cell::new(0) };
    }

    /// loom's `fence`, except at the call sites a model left out with [`without_fences`]. A
    /// fence in a `#[track_caller]` function (`Signal::notify` under loom) is its caller's.
    #[track_caller]
    pub(crate) fn fence(order: Ordering) {
        let here = Location::caller();
        if LEFT_OUT.with_borrow(|sites| sites.iter().any(|site| site.is(here))) {
            REACHED.set(REACHED.get() + 1);
        } else {
            loom::sync::atomic::fence(order);
        }
    }

    /// Runs `f` with the fences at `sites` left out (until it returns or panics); returns
    /// what `f` returned and how many times a thread reached a missing fence.
    #[cfg(test)]
    pub(crate) fn without_fences<R>(sites: &[FenceSite], f: impl FnOnce() -> R) -> (R, usize) {
        struct Restore;
        impl Drop for Restore {
            fn drop(&mut self) {
                LEFT_OUT.with_borrow_mut(Vec::clear);
            }
        }
        LEFT_OUT.set(sites.to_vec());
        REACHED.set(0);
        let restore = Restore;
        let result = f();
        drop(restore);
        (result, REACHED.get())
    }
}
