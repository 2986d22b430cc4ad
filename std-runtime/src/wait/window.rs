//! How long a waiter spins before it parks, learned from how long the waits on the same
//! signal have lasted.
//!
//! A parked thread costs whoever wakes it a futex call, and it runs again only when the
//! scheduler gets to it: 5–15 µs on a shared 2-core virtual machine, paid at every hand-off
//! of a pipeline whose items come a few microseconds apart. A thread that keeps checking
//! (yielding its core between checks, so that with more threads than cores the thread with
//! the work gets to run) sees the item within a microsecond or so, but holds on to a core
//! meanwhile. The window is how long the waiters of one signal do that before they park:
//!
//! - a wait that ends within [`MAX`] widens the window to half as long again as the wait (a
//!   waiter spinning that long would have seen the end of it without parking);
//! - a wait longer than [`MAX`] halves it (spinning would have been wasted), down to nothing.
//!
//! So waiters whose items keep coming spin through the gaps between them, waiters whose items
//! come rarely soon park straight away, and an idle pipeline is parked within [`MAX`] of its
//! last item. It is a hint shared by the waiters without ordering: the wake-up protocol does
//! not depend on it (under loom it is always empty, and waiters park at once).
//!
//! [`MAX`]: SpinWindow::MAX

use std::time::Duration;

use crate::sync::{AtomicU64, Ordering};

/// How long the waiters of one signal spin before they park.
#[derive(Debug, Default)]
pub(crate) struct SpinWindow {
    nanos: AtomicU64,
}

impl SpinWindow {
    /// The longest a waiter spins: about ten hand-offs through a parked thread.
    pub(crate) const MAX: Duration = Duration::from_micros(100);

    /// How long to spin now.
    pub(crate) fn get(&self) -> Duration {
        if cfg!(loom) {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.nanos.load(Ordering::Relaxed))
    }

    /// Takes into account a wait that lasted `waited` before its condition came true.
    pub(crate) fn learn(&self, waited: Duration) {
        if cfg!(loom) {
            return;
        }
        let window = self.nanos.load(Ordering::Relaxed);
        let next = next(window, waited);
        if next != window {
            self.nanos.store(next, Ordering::Relaxed);
        }
    }
}

/// The window after a wait of `waited`, in nanoseconds.
fn next(window: u64, waited: Duration) -> u64 {
    let max = SpinWindow::MAX.as_nanos() as u64;
    match u64::try_from(waited.as_nanos()) {
        Ok(waited) if waited <= max => window.max(waited.saturating_add(waited / 2)).min(max),
        _ => window / 2,
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    const MAX: u64 = SpinWindow::MAX.as_nanos() as u64;

    #[test]
    fn a_short_wait_widens_the_window_to_cover_it() {
        assert_eq!(next(0, Duration::from_micros(10)), 15_000);
        assert_eq!(next(20_000, Duration::from_micros(10)), 20_000, "never narrowed by one");
        assert_eq!(next(0, SpinWindow::MAX), MAX, "never past the longest");
    }

    #[test]
    fn a_long_wait_halves_the_window() {
        assert_eq!(next(MAX, SpinWindow::MAX + Duration::from_nanos(1)), MAX / 2);
        assert_eq!(next(1, Duration::MAX), 0);
        assert_eq!(next(0, Duration::from_secs(1)), 0);
    }

    #[test]
    fn waits_that_stop_coming_soon_leave_nothing_to_spin_for() {
        let window = SpinWindow::default();
        window.learn(Duration::from_micros(60));
        assert_eq!(window.get(), Duration::from_micros(90));
        for _ in 0..20 {
            window.learn(Duration::from_millis(5));
        }
        assert_eq!(window.get(), Duration::ZERO);
    }
}
