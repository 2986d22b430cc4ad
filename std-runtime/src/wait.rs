//! Waiting without losing wake-ups: spin, then yield, then park on a [`Signal`] that the other
//! side notifies. How long a waiter yields before it parks is learned per signal
//! ([`window`]).
//!
//! The protocol is the classic event count. A waiter takes the signal's lock, registers itself
//! as a sleeper, issues a `SeqCst` fence and checks its condition again before it sleeps on the
//! condition variable. A notifier first makes the condition true (pushes an item, turns
//! pressure off, sets a flag), issues a `SeqCst` fence and only then reads the sleeper count;
//! if it is non-zero it takes the lock and wakes everyone.
//!
//! The two fences are ordered one way or the other. If the notifier's comes first, the
//! waiter's re-check sees the condition true and it does not sleep. If the waiter's comes
//! first, the notifier sees a sleeper and takes the lock, which the waiter holds from its
//! re-check until the condition variable has queued it, so the wake-up cannot fall between the
//! two. The loom models in `models/wait.rs` check exactly this code.
//!
//! The fast path of [`Signal::notify`] (nobody asleep) is one fence and one load; the runtime
//! notifies once per batch of items, not once per item.
//!
//! Tasks wait the same way without a thread of their own ([`Signal::poll_until`]): under the
//! lock a task registers its [`Waker`] and counts itself among the sleepers, fences and checks
//! its condition again; a notifier that sees a sleeper takes the lock, takes every registered
//! waker and wakes them after letting go of the lock. The argument above holds word for word
//! with "the condition variable has queued it" read as "its waker is in the list".

use std::fmt;
use std::mem;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::PoisonError;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crate::sync::{AtomicUsize, Backoff, Condvar, Mutex, MutexGuard, Ordering, fence};
use crate::sync::{spin_loop, thread};

mod window;

use self::window::SpinWindow;

/// How an idle worker or a blocked producer waits.
///
/// # Examples
///
/// ```
/// use backflow::WaitStrategy;
///
/// assert_eq!(WaitStrategy::default(), WaitStrategy::Park);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum WaitStrategy {
    /// Spin briefly, then yield, then park the thread until the other side wakes it. How long
    /// a thread keeps yielding before it parks follows how long the waits of its queue have
    /// lately lasted, up to 100 µs: while items come close together the threads do not park
    /// between them (a hand-off through a parked thread takes several microseconds), and
    /// once they come further apart the threads park at once. An idle pipeline is parked
    /// within 100 µs of its last item and then uses no CPU. The default.
    #[default]
    Park,
    /// Never sleep: spin (with `spin_loop` hints) until there is work, offering the core to
    /// other threads (`yield_now`) every few hundred spins so that a pipeline with more threads
    /// than cores still moves. Lowest latency, but every waiting thread keeps a core busy; use
    /// it with a core per thread.
    BusySpin,
}

/// One condition that threads wait for and other threads announce; see the [module
/// docs](self) for the protocol.
pub(crate) struct Signal {
    /// Parked threads plus registered wakers.
    sleepers: AtomicUsize,
    /// How long a waiter spins before it parks.
    window: SpinWindow,
    lock: Mutex<Wakers>,
    wake: Condvar,
}

/// The wakers of the tasks waiting on a signal, each under the key of its [`Registration`].
#[derive(Default)]
struct Wakers {
    next_key: u64,
    list: Vec<(u64, Waker)>,
}

impl Wakers {
    /// Removes the waker registered under `key`; returns whether it was there.
    fn remove(&mut self, key: u64) -> bool {
        let at = self.list.iter().position(|(k, _)| *k == key);
        at.map(|at| self.list.swap_remove(at)).is_some()
    }
}

/// A task's place among a signal's waiters: empty until it registers, and again once the
/// signal has woken it. A task that stops waiting while registered (a dropped future) gives
/// its place back with [`Signal::unregister`].
#[derive(Debug, Default)]
pub(crate) struct Registration {
    key: Option<u64>,
}

impl Signal {
    /// A signal nobody waits on yet.
    pub(crate) fn new() -> Self {
        Self {
            sleepers: AtomicUsize::new(0),
            window: SpinWindow::default(),
            lock: Mutex::new(Wakers::default()),
            wake: Condvar::new(),
        }
    }

    /// Wakes every parked waiter and every registered waker. Call it after making their
    /// condition true.
    #[inline]
    // Under loom the fence below counts as the caller's, so that a model can leave out the
    // fence of one call site's notifications (`models/mod.rs`).
    #[cfg_attr(loom, track_caller)]
    pub(crate) fn notify(&self) {
        // Orders the caller's write of the condition before the read of `sleepers`; pairs with
        // the fence in `park_until` and `poll_until`.
        fence(Ordering::SeqCst);
        self.notify_fenced();
    }

    /// Whether anyone seemed to wait, without a fence: a hint for an early
    /// [`notify`](Self::notify), which a fenced notification must still follow.
    #[inline]
    pub(crate) fn has_sleepers(&self) -> bool {
        self.sleepers.load(Ordering::Relaxed) != 0
    }

    /// [`notify`](Self::notify) for a caller that has issued the `SeqCst` fence itself, after
    /// making the condition true.
    #[inline]
    pub(crate) fn notify_fenced(&self) {
        if self.has_sleepers() {
            self.notify_slow();
        }
    }

    #[cold]
    fn notify_slow(&self) {
        let woken = {
            let mut wakers = self.locked();
            if !wakers.list.is_empty() {
                self.sleepers.fetch_sub(wakers.list.len(), Ordering::Relaxed);
            }
            mem::take(&mut wakers.list)
        };
        self.wake.notify_all();
        // Outside the lock: a waker may run anything, waiting on this signal included. A
        // waker is its executor's code, or the user's: one that panics counts as woken, and
        // neither the wakers after it nor the thread that notifies (a worker making room,
        // `drain` or `cancel` closing the queue) goes down with it.
        for (_, waker) in woken {
            let _ = catch_unwind(AssertUnwindSafe(|| waker.wake()));
        }
    }

    /// For a task: `Ready` if `ready()` returns true, checked under the signal's lock (so it
    /// must not notify this same signal); otherwise registers the task's waker, which the next
    /// [`notify`](Self::notify) wakes, and returns `Pending`. Check `ready()` first without
    /// the lock: this is the slow path.
    pub(crate) fn poll_until(
        &self,
        cx: &mut Context<'_>,
        registration: &mut Registration,
        mut ready: impl FnMut() -> bool,
    ) -> Poll<()> {
        let mut wakers = self.locked();
        let registered = registration.key.and_then(|key| {
            wakers.list.iter_mut().find(|(k, _)| *k == key).map(|(_, waker)| waker)
        });
        let key = match registered {
            Some(waker) => {
                if !waker.will_wake(cx.waker()) {
                    waker.clone_from(cx.waker());
                }
                registration.key
            }
            None => {
                let key = wakers.next_key;
                wakers.next_key += 1;
                wakers.list.push((key, cx.waker().clone()));
                self.sleepers.fetch_add(1, Ordering::Relaxed);
                Some(key)
            }
        };
        registration.key = key;
        // Orders the registration before the re-check of the condition; pairs with the fence
        // in `notify`.
        fence(Ordering::SeqCst);
        if !ready() {
            return Poll::Pending;
        }
        if let Some(key) = registration.key.take() {
            if wakers.remove(key) {
                self.sleepers.fetch_sub(1, Ordering::Relaxed);
            }
        }
        Poll::Ready(())
    }

    /// Gives up a task's place among the waiters, if it still has one.
    pub(crate) fn unregister(&self, registration: &mut Registration) {
        if let Some(key) = registration.key.take() {
            if self.locked().remove(key) {
                self.sleepers.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Parks until `ready()` returns true (checked under the signal's lock, so it must not
    /// notify this same signal) or, with a deadline, until the deadline passes. Returns the
    /// last answer of `ready()`.
    pub(crate) fn park_until(
        &self,
        mut ready: impl FnMut() -> bool,
        deadline: Option<Instant>,
    ) -> bool {
        let mut guard = self.locked();
        self.sleepers.fetch_add(1, Ordering::Relaxed);
        // Orders the registration before the re-check of the condition; pairs with the fence
        // in `notify`.
        fence(Ordering::SeqCst);
        let ready = loop {
            if ready() {
                break true;
            }
            guard = match deadline {
                None => self.wake.wait(guard).unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => self.wait_timeout(guard, left),
                    _ => break false,
                },
            };
        };
        self.sleepers.fetch_sub(1, Ordering::Relaxed);
        drop(guard);
        ready
    }

    /// Under loom, which has no clock, a timed wait waits for a notification.
    fn wait_timeout<'a>(
        &self,
        guard: MutexGuard<'a, Wakers>,
        left: std::time::Duration,
    ) -> MutexGuard<'a, Wakers> {
        self.wake.wait_timeout(guard, left).unwrap_or_else(PoisonError::into_inner).0
    }

    fn locked(&self) -> MutexGuard<'_, Wakers> {
        self.lock.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signal").field("sleepers", &self.sleepers).finish_non_exhaustive()
    }
}

/// How often a busy-spinning waiter yields its core. With a core per thread `yield_now`
/// returns at once (well under a microsecond); with more threads than cores it is what lets
/// the thread holding the work run, instead of a spinner burning its whole time slice.
const BUSY_SPINS_PER_YIELD: u32 = 256;

/// Waits until `ready()` under `strategy`: spin, yield, then park on `signal` ([`Park`]), or
/// spin throughout ([`BusySpin`]). Returns `false` only if `deadline` passed first.
///
/// [`Park`]: WaitStrategy::Park
/// [`BusySpin`]: WaitStrategy::BusySpin
pub(crate) fn wait_until(
    signal: &Signal,
    strategy: WaitStrategy,
    mut ready: impl FnMut() -> bool,
    deadline: Option<Instant>,
) -> bool {
    if ready() {
        return true;
    }
    let started = Instant::now();
    let backoff = Backoff::new();
    let window = signal.window.get();
    let mut spins = 0u32;
    let woke = loop {
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return false;
        }
        match strategy {
            WaitStrategy::BusySpin => {
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(BUSY_SPINS_PER_YIELD) {
                    thread::yield_now();
                } else {
                    spin_loop();
                }
            }
            WaitStrategy::Park if !backoff.is_completed() => backoff.snooze(),
            // Spinning on, for as long as waits on this signal have lately lasted, yielding
            // the core each time round.
            WaitStrategy::Park if started.elapsed() < window => thread::yield_now(),
            WaitStrategy::Park => break signal.park_until(&mut ready, deadline),
        }
        if ready() {
            break true;
        }
    };
    if woke && strategy == WaitStrategy::Park {
        signal.window.learn(started.elapsed());
    }
    woke
}
