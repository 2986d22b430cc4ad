//! Model checks of the park/notify protocol in `std-runtime/src/wait.rs`, compiled here from
//! that very file with loom's mutex, condition variable and atomics. The waiter's condition is
//! a `Relaxed` flag and the notifier sets it with a `Relaxed` store, so only the two `SeqCst`
//! fences order it against the sleeper count. A lost wake-up leaves a thread parked forever,
//! which loom reports as a deadlock. A copy without the notifier's fence shows that it would.
//! A task's waker joins the same protocol: a task that polled `Pending` is woken by the
//! notifier in every interleaving.
#![cfg(loom)]

#[allow(dead_code, reason = "`WaitStrategy` and `wait_until` are not used under loom")]
#[path = "../../std-runtime/src/wait.rs"]
mod wait;

// `std`'s `Arc`, not loom's: when loom stops a deadlocked execution it unwinds the parked
// threads, and dropping a `loom::sync::Arc` there panics again and aborts the whole test binary
// instead of failing the one test.
use std::sync::{Arc, PoisonError};
use std::task::{Context, Wake, Waker};

use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::sync::{Condvar, Mutex};
use loom::thread;

use wait::{Registration, Signal};

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

/// A task's waker that records that it was woken.
struct Recorder(AtomicBool);

impl Wake for Recorder {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Polls for the flag as a task would, while another thread sets it; returns whether the poll
/// was `Ready` and whether the waker was woken.
fn poll_against_notifier(shared: &Arc<Shared>) -> (bool, bool) {
    let woken = Arc::new(Recorder(AtomicBool::new(false)));
    let waker = Waker::from(Arc::clone(&woken));
    let notifier = {
        let shared = Arc::clone(shared);
        thread::spawn(move || shared.set())
    };
    let mut registration = Registration::default();
    let mut cx = Context::from_waker(&waker);
    let ready = shared
        .signal
        .poll_until(&mut cx, &mut registration, || shared.flag.load(Ordering::Relaxed))
        .is_ready();
    notifier.join().unwrap();
    shared.signal.unregister(&mut registration);
    (ready, woken.0.load(Ordering::Relaxed))
}

#[test]
fn a_pending_task_is_woken_by_notify() {
    loom::model(|| {
        let shared = Shared::new();
        let (ready, woken) = poll_against_notifier(&shared);
        assert!(ready || woken, "the task polled Pending and was never woken");
    });
}

#[test]
fn a_task_and_a_parked_thread_both_wake() {
    loom::model(|| {
        let shared = Shared::new();
        let parked = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || shared.wait())
        };
        let (ready, woken) = poll_against_notifier(&shared);
        assert!(ready || woken, "the task polled Pending and was never woken");
        parked.join().unwrap();
    });
}

/// A task that gives up its place (a dropped future) before the notify: the notifier wakes
/// nobody, and a thread that parks afterwards is still woken by the next notify.
#[test]
fn an_unregistered_task_leaves_the_count_right() {
    loom::model(|| {
        let shared = Shared::new();
        let woken = Arc::new(Recorder(AtomicBool::new(false)));
        let waker = Waker::from(Arc::clone(&woken));
        let mut registration = Registration::default();
        let mut cx = Context::from_waker(&waker);
        let polled = shared.signal.poll_until(&mut cx, &mut registration, || false);
        assert!(polled.is_pending());
        shared.signal.unregister(&mut registration);
        let parked = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || shared.wait())
        };
        shared.set();
        parked.join().unwrap();
        assert!(!woken.0.load(Ordering::Relaxed), "an unregistered waker was woken");
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
