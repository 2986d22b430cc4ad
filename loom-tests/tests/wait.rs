//! Model checks of the park/notify protocol in `std-runtime/src/wait.rs`, compiled here from
//! that very file with loom's mutex, condition variable and atomics. The waiter's condition is
//! a `Relaxed` flag and the notifier sets it with a `Relaxed` store, so only the two `SeqCst`
//! fences order it against the sleeper count. A lost wake-up leaves a thread parked forever,
//! which loom reports as a deadlock. A copy without the notifier's fence shows that it would.
#![cfg(loom)]

#[allow(dead_code, reason = "`WaitStrategy` and `wait_until` are not used under loom")]
#[path = "../../std-runtime/src/wait.rs"]
mod wait;

// `std`'s `Arc`, not loom's: when loom stops a deadlocked execution it unwinds the parked
// threads, and dropping a `loom::sync::Arc` there panics again and aborts the whole test binary
// instead of failing the one test.
use std::sync::{Arc, PoisonError};

use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::sync::{Condvar, Mutex};
use loom::thread;

use wait::Signal;

/// A condition and the signal that announces it.
struct Shared {
    flag: AtomicBool,
    signal: Signal,
}

impl Shared {
    fn new() -> Arc<Self> {
        Arc::new(Self { flag: AtomicBool::new(false), signal: Signal::new() })
    }

    /// Parks until the flag is set and checks that it was.
    fn wait(&self) {
        assert!(self.signal.park_until(|| self.flag.load(Ordering::Relaxed), None));
        assert!(self.flag.load(Ordering::Relaxed));
    }

    /// Sets the flag with the weakest store and relies on `notify`'s fence alone.
    fn set(&self) {
        self.flag.store(true, Ordering::Relaxed);
        self.signal.notify();
    }
}

#[test]
fn waiter_wakes_after_notify() {
    loom::model(|| {
        let shared = Shared::new();
        let waiter = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || shared.wait())
        };
        shared.set();
        waiter.join().unwrap();
    });
}

#[test]
fn two_waiters_both_wake() {
    loom::model(|| {
        let shared = Shared::new();
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let shared = Arc::clone(&shared);
                thread::spawn(move || shared.wait())
            })
            .collect();
        shared.set();
        for waiter in waiters {
            waiter.join().unwrap();
        }
    });
}

/// `Signal` with the fence in `notify` removed: the notifier may then read a stale sleeper
/// count of zero while the waiter reads a stale `false`, and the waiter sleeps forever.
struct UnfencedSignal {
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

impl UnfencedSignal {
    fn notify(&self) {
        if self.sleepers.load(Ordering::Relaxed) != 0 {
            drop(self.lock.lock().unwrap_or_else(PoisonError::into_inner));
            self.wake.notify_all();
        }
    }

    fn park_until(&self, ready: impl Fn() -> bool) {
        let mut guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.sleepers.fetch_add(1, Ordering::Relaxed);
        loom::sync::atomic::fence(Ordering::SeqCst);
        while !ready() {
            guard = self.wake.wait(guard).unwrap_or_else(PoisonError::into_inner);
        }
        self.sleepers.fetch_sub(1, Ordering::Relaxed);
    }
}

#[test]
#[should_panic(expected = "deadlock")]
fn without_the_notify_fence_a_wake_up_is_lost() {
    loom::model(|| {
        let flag = Arc::new(AtomicBool::new(false));
        let signal = Arc::new(UnfencedSignal {
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let waiter = {
            let (flag, signal) = (Arc::clone(&flag), Arc::clone(&signal));
            thread::spawn(move || signal.park_until(|| flag.load(Ordering::Relaxed)))
        };
        flag.store(true, Ordering::Relaxed);
        signal.notify();
        waiter.join().unwrap();
    });
}
