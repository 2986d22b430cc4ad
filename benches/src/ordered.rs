//! The cost of keeping a stage's outputs in order: one stage on two workers made `Ordered`
//! (`Builder::ordered`) against the default (unordered), with one worker as the baseline.
//!
//! A producer pushes `0..items` with `push_iter` through the one stage into a sink. The stage
//! either busy-works about [`COST`] per item ([`Load::Spin`]) or is a plain map
//! ([`Load::Map`]); both return the item unchanged, so the sink can tell whether the items
//! arrive in order: it counts [inversions](Run::inversions). Every run checks that every item
//! arrived (the sink's count and sum), and an ordered run that none arrived out of order.
//!
//! The workers are started before the clock starts (the stage factory waits at a [`Barrier`]
//! with the producer); the clock runs from the first push until `drain()` has joined them.

use std::convert::identity;
use std::hint::{black_box, spin_loop};
use std::num::NonZeroUsize;
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use backflow::Pipeline;

/// The work each item costs under [`Load::Spin`].
pub const COST: Duration = Duration::from_micros(1);

/// What the stage does per item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    /// Busy-works for [`COST`] ([`spin`]).
    Spin,
    /// Nothing: a plain map returning the item.
    Map,
}

impl Load {
    /// The stage's map.
    fn map(self) -> fn(u64) -> u64 {
        match self {
            Self::Spin => spin,
            Self::Map => identity,
        }
    }
}

/// Busy-works for [`COST`], then returns `x`.
///
/// # Examples
///
/// ```
/// use std::time::Instant;
/// use backflow_benches::ordered::{COST, spin};
///
/// let start = Instant::now();
/// assert_eq!(spin(7), 7);
/// assert!(start.elapsed() >= COST);
/// ```
pub fn spin(x: u64) -> u64 {
    let until = Instant::now() + COST;
    while Instant::now() < until {
        spin_loop();
    }
    black_box(x)
}

/// One measured run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// From the first push until `drain()` returned.
    pub elapsed: Duration,
    /// Items that reached the sink after one at least as large: 0 exactly when the sink saw
    /// `0, 1, 2, …` in order (every item arrived, which the run checks separately).
    pub inversions: u64,
}

/// A contender: its name and a run function taking the load and the number of items.
#[derive(Debug, Clone, Copy)]
pub struct OrderedContender {
    /// The row label.
    pub name: &'static str,
    /// Runs `items` items through the stage and returns the time and the sink's inversions.
    pub run: fn(Load, u64) -> Run,
}

/// The baseline row: one worker, in order by construction.
pub const ONE_WORKER: &str = "backflow, 1 worker";

/// Two workers, the default order.
pub const UNORDERED: &str = "backflow, 2 workers (unordered)";

/// Two workers, `.ordered()`.
pub const ORDERED: &str = "backflow, 2 workers (ordered)";

/// Every contender.
pub const CONTENDERS: &[OrderedContender] = &[
    OrderedContender { name: ONE_WORKER, run: one_worker },
    OrderedContender { name: UNORDERED, run: unordered },
    OrderedContender { name: ORDERED, run: ordered },
];

/// What the sink saw, published with the last item.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    seen: u64,
    sum: u64,
    inversions: u64,
    last: Option<u64>,
}

impl Tally {
    #[inline]
    fn add(&mut self, x: u64) {
        self.inversions += u64::from(self.last.is_some_and(|last| x <= last));
        self.last = Some(x);
        self.seen += 1;
        self.sum += x;
    }
}

fn run(load: Load, items: u64, workers: usize, ordered: bool) -> Run {
    let workers = NonZeroUsize::new(workers).expect("at least one worker");
    let ready = Arc::new(Barrier::new(workers.get() + 1));
    let published = Arc::new(OnceLock::new());
    let sink = {
        let published = Arc::clone(&published);
        let mut tally = Tally::default();
        move |x: u64| {
            tally.add(x);
            if tally.seen == items {
                let _ = published.set(tally);
            }
        }
    };
    let factory = {
        let (ready, map) = (Arc::clone(&ready), load.map());
        move || {
            ready.wait();
            map
        }
    };
    let stage = Pipeline::<u64>::builder().stage("work", factory).workers(workers);
    let stage = if ordered { stage.ordered() } else { stage };
    let pipeline = stage.sink(sink).build().expect("a valid pipeline");
    let input = pipeline.input();
    ready.wait();
    let start = Instant::now();
    input.push_iter(0..items).expect("the pipeline is open");
    let report = pipeline.drain().expect("the pipeline drains");
    let elapsed = start.elapsed();
    assert_eq!(report.sink().delivered, items, "items lost or duplicated");
    assert!(report.is_balanced(), "accounting does not balance");
    let tally = published.get().expect("the sink saw every item");
    assert_eq!(tally.sum, items * items.saturating_sub(1) / 2, "items lost or corrupted");
    if ordered {
        assert_eq!(tally.inversions, 0, "an ordered stage delivered out of order");
    }
    Run { elapsed, inversions: tally.inversions }
}

/// One worker (unordered, which one worker does not need).
pub fn one_worker(load: Load, items: u64) -> Run {
    run(load, items, 1, false)
}

/// Two workers, unordered.
pub fn unordered(load: Load, items: u64) -> Run {
    run(load, items, 2, false)
}

/// Two workers, ordered.
///
/// # Panics
///
/// If the sink sees an item out of order.
pub fn ordered(load: Load, items: u64) -> Run {
    run(load, items, 2, true)
}
