//! A thread budget against fixed worker counts: three stages of [`COSTS`] (1, 20 and 1 µs of
//! busy work per item, on [`Instant`], not sleeping), [`THREADS`] worker threads in all.
//!
//! The fixed contenders are every assignment of at most [`THREADS`] workers with at least one
//! per stage ([`fixed_assignments`]); the scaled one gives each stage `workers_range(1..=4)`,
//! starting at one worker each, under `threads(4)` with the default scaling interval, so
//! its first interval runs at one-worker speed. A producer pushes `0..items` with `push_iter`
//! into the first stage; the sink sums what arrives (checked). The clock runs from the first
//! push until `drain()` returns. A scaled run also reports what the controller did: each
//! [`Event::Scaled`] with the time since the start, and the workers at the end.

use std::hint::{black_box, spin_loop};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use backflow::{Event, Pipeline};

/// What each stage's items cost.
pub const COSTS: [Duration; 3] =
    [Duration::from_micros(1), Duration::from_micros(20), Duration::from_micros(1)];

/// The thread budget: worker threads of the three stages together.
pub const THREADS: usize = 4;

/// How the stages get their workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// These many per stage, for the whole run.
    Fixed([usize; 3]),
    /// `workers_range(1..=THREADS)` each, within `threads(THREADS)`.
    Budget,
}

impl Workers {
    /// The row label: `fixed 1 / 2 / 1`, or `budget of 4 (scaled)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_benches::budget::Workers;
    ///
    /// assert_eq!(Workers::Fixed([1, 2, 1]).name(), "fixed 1 / 2 / 1");
    /// ```
    pub fn name(self) -> String {
        match self {
            Self::Fixed([a, b, c]) => format!("fixed {a} / {b} / {c}"),
            Self::Budget => format!("budget of {THREADS} (scaled)"),
        }
    }
}

/// Every fixed assignment: at least one worker per stage, at most [`THREADS`] in all.
///
/// # Examples
///
/// ```
/// use backflow_benches::budget::fixed_assignments;
///
/// assert_eq!(fixed_assignments(), [[1, 1, 1], [1, 1, 2], [1, 2, 1], [2, 1, 1]]);
/// ```
pub fn fixed_assignments() -> Vec<[usize; 3]> {
    let mut all = Vec::new();
    for a in 1..=THREADS {
        for b in 1..=THREADS {
            for c in 1..=THREADS {
                if a + b + c <= THREADS {
                    all.push([a, b, c]);
                }
            }
        }
    }
    all
}

/// Busy-works for `cost`, then returns `x`.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// use backflow_benches::budget::work;
///
/// let start = Instant::now();
/// assert_eq!(work(3, Duration::from_micros(20)), 3);
/// assert!(start.elapsed() >= Duration::from_micros(20));
/// ```
pub fn work(x: u64, cost: Duration) -> u64 {
    let until = Instant::now() + cost;
    while Instant::now() < until {
        spin_loop();
    }
    black_box(x)
}

/// One measured run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// From the first push until `drain()` returned.
    pub elapsed: Duration,
    /// Each stage's workers at the end.
    pub workers: [usize; 3],
    /// What the controller did (scaled runs): each change, with the time since the start.
    pub moves: Vec<(Duration, String)>,
}

/// Pushes `0..items` through the three stages with `workers` and returns the run.
///
/// # Panics
///
/// If the sink's sum is not that of `0..items`, or the accounting does not balance.
pub fn run(items: u64, workers: Workers) -> Run {
    let total = Arc::new(AtomicU64::new(0));
    let sum = Arc::clone(&total);
    let moves = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&moves);
    let start = Arc::new(Mutex::new(Instant::now()));
    let started = Arc::clone(&start);
    let mut builder = Pipeline::<u64>::builder().on_event(move |event| {
        if let Event::Scaled { .. } = event {
            let at = started.lock().unwrap_or_else(PoisonError::into_inner).elapsed();
            log.lock().unwrap_or_else(PoisonError::into_inner).push((at, event.to_string()));
        }
    });
    if workers == Workers::Budget {
        builder = builder.threads(THREADS);
    }
    // A range of one value is a fixed number of workers.
    let range = |stage: usize| match workers {
        Workers::Fixed(counts) => counts[stage]..=counts[stage],
        Workers::Budget => 1..=THREADS,
    };
    let pipeline = builder
        .stage("a", || |x: u64| work(x, COSTS[0]))
        .workers_range(range(0))
        .stage("b", || |x: u64| work(x, COSTS[1]))
        .workers_range(range(1))
        .stage("c", || |x: u64| work(x, COSTS[2]))
        .workers_range(range(2))
        .sink(move |x| {
            sum.fetch_add(x, Ordering::Relaxed);
        })
        .build()
        .expect("a valid pipeline");
    let began = Instant::now();
    *start.lock().unwrap_or_else(PoisonError::into_inner) = began;
    pipeline.input().push_iter(0..items).expect("the pipeline is open");
    let report = pipeline.drain().expect("the pipeline drains");
    let elapsed = began.elapsed();
    assert!(report.is_balanced(), "accounting does not balance: {:?}", report.unbalanced());
    assert_eq!(total.load(Ordering::Relaxed), items * items.saturating_sub(1) / 2, "items lost");
    let stages = report.stages();
    let moves = std::mem::take(&mut *moves.lock().unwrap_or_else(PoisonError::into_inner));
    Run { elapsed, workers: [stages[0].workers, stages[1].workers, stages[2].workers], moves }
}
