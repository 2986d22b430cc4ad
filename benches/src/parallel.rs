//! A CPU-bound stage (about [`COST`] of work per item) on two cores: backflow's own worker
//! pool with 1 and 2 workers against the rayon adapter (`backflow_rayon::par_map`, one worker
//! handing its batches to rayon's global pool).
//!
//! A producer pushes `0..items` through the one stage into a sink that sums them; every run
//! checks the sum. The clock runs from the first push until `drain()` has joined the workers.

use std::hint::{black_box, spin_loop};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backflow::Pipeline;
use backflow_rayon::par_map;

/// The work each item costs.
pub const COST: Duration = Duration::from_micros(10);

/// Busy-works for [`COST`], then returns `x`.
///
/// # Examples
///
/// ```
/// use std::time::Instant;
/// use backflow_benches::parallel::{COST, work};
///
/// let start = Instant::now();
/// assert_eq!(work(7), 7);
/// assert!(start.elapsed() >= COST);
/// ```
pub fn work(x: u64) -> u64 {
    let until = Instant::now() + COST;
    while Instant::now() < until {
        spin_loop();
    }
    black_box(x)
}

/// A contender: its name and a run function taking the number of items.
#[derive(Debug, Clone, Copy)]
pub struct ParallelContender {
    /// The row label.
    pub name: &'static str,
    /// Runs `items` items through the stage and returns the time it took.
    pub run: fn(u64) -> Duration,
}

/// The baseline row.
pub const ONE_WORKER: &str = "backflow, 1 worker";

/// Every contender.
pub const CONTENDERS: &[ParallelContender] = &[
    ParallelContender { name: ONE_WORKER, run: one_worker },
    ParallelContender { name: "backflow, 2 workers", run: two_workers },
    ParallelContender { name: "backflow-rayon par_map, global pool", run: rayon_global },
];

/// How the stage runs.
enum Shape {
    Workers(usize),
    Rayon,
}

fn run(items: u64, shape: Shape) -> Duration {
    let total = Arc::new(AtomicU64::new(0));
    let sum = Arc::clone(&total);
    let builder = Pipeline::<u64>::builder();
    let sink = move |x: u64| {
        sum.fetch_add(x, Ordering::Relaxed);
    };
    let pipeline = match shape {
        Shape::Workers(n) => builder
            .stage("work", || work)
            .workers(NonZeroUsize::new(n).expect("at least one worker"))
            .sink(sink)
            .build(),
        Shape::Rayon => builder.stage("work", || par_map(work)).sink(sink).build(),
    }
    .expect("a valid pipeline");
    let start = Instant::now();
    pipeline.input().push_iter(0..items).expect("the pipeline is open");
    let report = pipeline.drain().expect("the pipeline drains");
    let elapsed = start.elapsed();
    assert!(report.is_balanced(), "accounting does not balance");
    assert_eq!(total.load(Ordering::Relaxed), items * items.saturating_sub(1) / 2, "items lost");
    elapsed
}

/// backflow's worker pool, 1 worker.
pub fn one_worker(items: u64) -> Duration {
    run(items, Shape::Workers(1))
}

/// backflow's worker pool, 2 workers.
pub fn two_workers(items: u64) -> Duration {
    run(items, Shape::Workers(2))
}

/// One worker handing its batches to rayon's global pool.
pub fn rayon_global(items: u64) -> Duration {
    run(items, Shape::Rayon)
}
