//! [`Workers`]: the worker threads of one stage, whose number may change while the pipeline
//! runs (a stage with a workers range, under a thread budget): how many it should have, how
//! many are running, the workers asked to retire, and the worker time the stats' time shares
//! are fractions of.

use std::sync::PoisonError;
use std::time::Instant;

use crate::sync::{AtomicUsize, Mutex, MutexGuard, Ordering};

/// The worker threads of one stage; see the [module docs](self).
#[derive(Debug)]
pub(crate) struct Workers {
    min: usize,
    max: usize,
    /// Workers asked to retire that have not yet: each running worker looks between batches
    /// and takes one if there is one.
    retiring: AtomicUsize,
    count: Mutex<Count>,
}

#[derive(Debug)]
struct Count {
    /// Workers counted in (started, or about to) that have not left.
    live: usize,
    /// The workers the stage should have: the live ones not asked to retire.
    target: usize,
    /// The next worker's number, for its thread's name.
    next: usize,
    /// Worker time until `since`, in nanoseconds.
    time_ns: u128,
    since: Instant,
}

impl Workers {
    /// A stage starting with `workers` (counted in by the caller), which may run `min..=max`;
    /// its worker time counts from `start`.
    pub(crate) fn new(workers: usize, min: usize, max: usize, start: Instant) -> Self {
        Self {
            min,
            max,
            retiring: AtomicUsize::new(0),
            count: Mutex::new(Count {
                live: workers,
                target: workers,
                next: workers,
                time_ns: 0,
                since: start,
            }),
        }
    }

    fn locked(&self) -> MutexGuard<'_, Count> {
        self.count.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The workers the stage has now (those asked to retire no longer count).
    pub(crate) fn count(&self) -> usize {
        self.locked().target
    }

    /// Whether a worker asked to retire has not left yet: more workers run than the stage
    /// should have.
    pub(crate) fn is_retiring(&self) -> bool {
        let count = self.locked();
        count.live > count.target
    }

    pub(crate) fn min(&self) -> usize {
        self.min
    }

    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Worker time from the start until `now`, in nanoseconds: the integral of the count.
    pub(crate) fn time_ns(&self, now: Instant) -> u128 {
        let count = self.locked();
        count.time_ns + count.target as u128 * now.saturating_duration_since(count.since).as_nanos()
    }

    /// Changes the target by `change` at `now`, keeping the worker time up to date.
    fn retarget(count: &mut Count, now: Instant, change: impl FnOnce(usize) -> usize) {
        let since = now.max(count.since);
        count.time_ns += count.target as u128 * since.duration_since(count.since).as_nanos();
        count.since = since;
        count.target = change(count.target);
    }

    /// Counts one more worker in at `now`, and calls `announce` (which tells the stage's
    /// downstream to wait for it too) while no worker can leave; returns the new worker's
    /// number. `None` once no worker is left (the stage's stream ended, or the pipeline
    /// stopped): the downstream may have finished, and a new worker would have nothing to do.
    pub(crate) fn enlist(&self, now: Instant, announce: impl FnOnce()) -> Option<usize> {
        let mut count = self.locked();
        if count.live == 0 || count.target >= self.max {
            return None;
        }
        announce();
        count.live += 1;
        Self::retarget(&mut count, now, |n| n + 1);
        count.next += 1;
        Some(count.next - 1)
    }

    /// Asks one worker to retire at `now`: the next one between batches finishes its current
    /// batch, flushes and drops its stage, and exits. `false` at the minimum.
    pub(crate) fn retire_one(&self, now: Instant) -> bool {
        let mut count = self.locked();
        if count.target <= self.min {
            return false;
        }
        Self::retarget(&mut count, now, |n| n - 1);
        self.retiring.fetch_add(1, Ordering::SeqCst);
        true
    }

    /// Whether some worker should retire (for a worker waiting for items).
    #[inline]
    pub(crate) fn retirement_asked(&self) -> bool {
        self.retiring.load(Ordering::Relaxed) > 0
    }

    /// Takes a retirement, if one is asked for: the calling worker must exit.
    #[inline]
    pub(crate) fn take_retirement(&self) -> bool {
        let mut asked = self.retiring.load(Ordering::Relaxed);
        while asked > 0 {
            match self.retiring.compare_exchange_weak(
                asked,
                asked - 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => asked = now,
            }
        }
        false
    }

    /// A worker leaves (its stream ended, it retired, or the pipeline stopped); `announce`
    /// (which tells the downstream it is done) runs while no worker can be counted in.
    pub(crate) fn leave(&self, announce: impl FnOnce()) {
        let mut count = self.locked();
        count.live = count.live.saturating_sub(1);
        announce();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn workers_come_and_go_within_the_range_and_the_time_adds_up() {
        let start = Instant::now();
        let ms = |n: u64| start + Duration::from_millis(n);
        let workers = Workers::new(1, 1, 3, start);
        let mut announced = 0;
        assert_eq!(workers.enlist(ms(10), || announced += 1), Some(1));
        assert_eq!(workers.enlist(ms(10), || announced += 1), Some(2));
        assert_eq!(workers.enlist(ms(10), || announced += 1), None); // at the maximum
        assert_eq!((workers.count(), announced), (3, 2));
        // 1 worker for 10 ms, then 3 for 10 ms.
        assert_eq!(workers.time_ns(ms(20)), 40_000_000);
        assert!(workers.retire_one(ms(20)));
        assert!(workers.retirement_asked());
        assert!(workers.take_retirement());
        assert!(!workers.take_retirement());
        workers.leave(|| {});
        assert!(workers.retire_one(ms(20)));
        assert!(!workers.retire_one(ms(20))); // at the minimum
        assert_eq!(workers.count(), 1);
        assert_eq!(workers.time_ns(ms(30)), 50_000_000);
    }

    #[test]
    fn no_worker_is_counted_in_once_the_last_one_left() {
        let workers = Workers::new(1, 1, 4, Instant::now());
        workers.leave(|| {});
        assert_eq!(workers.enlist(Instant::now(), || panic!("announced")), None);
    }
}
