//! The park/notify protocol every wait of the runtime goes through ([`Signal`]; its module
//! docs describe it): a waiter registers as a sleeper, issues a `SeqCst` fence and checks its
//! condition again before it sleeps; a notifier makes the condition true, issues a `SeqCst`
//! fence and wakes the sleepers it sees.
//!
//! The models: a waiter's condition is a flag set with the weakest store (`Relaxed`) and read
//! with the weakest load, so only the two fences order it against the sleeper count. One
//! waiter, then two, are woken by one notification; a lost wake-up leaves a thread parked
//! forever, which loom reports as a deadlock. Without the notifier's fence, the notifier may
//! read no sleeper while the waiter reads the flag still unset: it does.
//!
//! A task waits the same way without a thread ([`Signal::poll_until`]): it registers its waker
//! among the sleepers, fences and checks again. A task that polled `Pending` is woken by the
//! notifier in every interleaving, beside a parked thread too, and a task that gives up its
//! place (a dropped future) leaves the sleeper count right for the threads that park after
//! it. Without the task's fence, its re-check and the notifier's read of the sleepers may both
//! see the old values: the task stays `Pending` and is never woken.

use std::sync::Arc;
use std::task::{Context, Wake, Waker};

use crate::sync::{AtomicBool, Ordering, thread};
use crate::wait::{Registration, Signal};

use super::{MAX_PREEMPTIONS, explore, fails_without, site};

/// A condition and the signal that announces it.
struct Shared {
    flag: AtomicBool,
    signal: Signal,
}

impl Shared {
    fn new() -> Arc<Self> {
        Arc::new(Self { flag: AtomicBool::new(false), signal: Signal::new() })
    }

    /// Parks until the flag is set, and checks that it was.
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

fn waiters_and_a_notifier(waiters: usize) {
    let shared = Shared::new();
    let waiters: Vec<_> = (0..waiters)
        .map(|_| {
            let shared = Arc::clone(&shared);
            thread::spawn(move || shared.wait())
        })
        .collect();
    shared.set();
    for waiter in waiters {
        waiter.join().unwrap();
    }
}

fn one_waiter() {
    waiters_and_a_notifier(1);
}

fn two_waiters() {
    waiters_and_a_notifier(2);
}

#[test]
fn a_waiter_wakes_after_notify() {
    assert!(explore("wait: one waiter", one_waiter) > 1);
}

#[test]
fn two_waiters_both_wake() {
    assert!(explore("wait: two waiters", two_waiters) > 1);
}

#[test]
fn without_the_notifier_fence_a_wake_up_is_lost() {
    let notify = site("src/models/wait.rs", include_str!("wait.rs"), "fn set(", ".notify()");
    let failure = fails_without("wait", &[notify], MAX_PREEMPTIONS, one_waiter);
    assert!(failure.contains("deadlock"), "{failure}");
}

/// A task's waker that records that it was woken.
struct Recorder(AtomicBool);

impl Wake for Recorder {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Polls for the flag as a task would while another thread sets it, and checks that a task
/// that polled `Pending` was woken.
fn poll_against_notifier(shared: &Arc<Shared>) {
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
    assert!(ready || woken.0.load(Ordering::Relaxed), "a task polled Pending and was never woken");
}

fn a_task() {
    poll_against_notifier(&Shared::new());
}

fn a_task_and_a_parked_thread() {
    let shared = Shared::new();
    let parked = {
        let shared = Arc::clone(&shared);
        thread::spawn(move || shared.wait())
    };
    poll_against_notifier(&shared);
    parked.join().unwrap();
}

/// A task gives up its place before the notification: the notifier wakes nobody, and a thread
/// that parks afterwards is still woken.
fn a_task_gives_up_its_place() {
    let shared = Shared::new();
    let woken = Arc::new(Recorder(AtomicBool::new(false)));
    let waker = Waker::from(Arc::clone(&woken));
    let mut registration = Registration::default();
    let mut cx = Context::from_waker(&waker);
    assert!(shared.signal.poll_until(&mut cx, &mut registration, || false).is_pending());
    shared.signal.unregister(&mut registration);
    let parked = {
        let shared = Arc::clone(&shared);
        thread::spawn(move || shared.wait())
    };
    shared.set();
    parked.join().unwrap();
    assert!(!woken.0.load(Ordering::Relaxed), "a waker that gave up its place was woken");
}

#[test]
fn a_pending_task_is_woken_by_notify() {
    assert!(explore("wait: a task", a_task) > 1);
}

#[test]
fn a_task_and_a_parked_thread_both_wake() {
    assert!(explore("wait: a task and a thread", a_task_and_a_parked_thread) > 1);
}

#[test]
fn a_task_that_gives_up_its_place_leaves_the_count_right() {
    assert!(explore("wait: a task gives up", a_task_gives_up_its_place) > 1);
}

#[test]
fn without_the_fence_of_a_task_its_wake_up_is_lost() {
    let poll = site("src/wait.rs", include_str!("../wait.rs"), "fn poll_until(", "fence(");
    let failure = fails_without("wait: a task", &[poll], MAX_PREEMPTIONS, a_task);
    assert!(failure.contains("never woken"), "{failure}");
}
