//! The workloads behind backflow's benches, shared by the criterion benches (`benches/rings.rs`)
//! and the same-run comparison report (`benches/compare.rs`, run by `cargo xtask bench`).
//!
//! Every workload moves `items` `u64`s from producer threads to consumer threads through a
//! queue of capacity [`CAPACITY`] and returns the wall time from the moment all threads are
//! released (a [`Barrier`]) until the last item is consumed. Thread start-up is not measured.
//! Each run checks that every item arrived, so a broken queue cannot post a good number.
//!
//! Waiting is the same for every contender of a kind: ring-style queues spin with
//! [`std::hint::spin_loop`] (SPSC) or crossbeam's `Backoff` (MPMC, which yields once spinning
//! stops paying off, so oversubscribed runs still finish); channels use their own blocking
//! `send`/`recv`, which is how they are used.
#![forbid(unsafe_code)]

pub mod asynchronous;
pub mod budget;
pub mod bytes;
pub mod lmax;
pub mod mpmc;
pub mod ordered;
pub mod parallel;
pub mod pipeline;
pub mod report;
pub mod spsc;

use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

/// The capacity of every queue in the ring benches.
pub const CAPACITY: usize = 1024;

/// Items per batch in the batch workloads.
pub const BATCH: usize = 256;

/// One queue implementation under one workload: a name for the table and a run function taking
/// the number of items and returning the measured time.
#[derive(Debug, Clone, Copy)]
pub struct Contender {
    /// The row label, e.g. `"backflow spsc"`.
    pub name: &'static str,
    /// Moves the given number of items and returns the time it took.
    pub run: fn(u64) -> Duration,
}

/// Runs `producers` and `consumers` on their own threads, releases them together and returns
/// the time until all have finished. Each consumer returns the sum of what it received; the
/// total must equal `0 + 1 + … + (items - 1)`.
///
/// # Panics
///
/// If the consumers' sums do not add up: an item was lost, duplicated or corrupted.
pub fn timed<P, C>(items: u64, producers: Vec<P>, consumers: Vec<C>) -> Duration
where
    P: FnOnce() + Send,
    C: FnOnce() -> u64 + Send,
{
    timed_sum(items * items.saturating_sub(1) / 2, producers, consumers)
}

/// [`timed`] for workloads that transform the items on the way: the consumers' sums must add
/// up to `expected`. Threads that return nothing (producers, middle stages) go in `producers`.
///
/// # Panics
///
/// If the consumers' sums do not add up to `expected`.
pub fn timed_sum<P, C>(expected: u64, producers: Vec<P>, consumers: Vec<C>) -> Duration
where
    P: FnOnce() + Send,
    C: FnOnce() -> u64 + Send,
{
    let barrier = Barrier::new(producers.len() + consumers.len() + 1);
    let (elapsed, sum) = thread::scope(|s| {
        let producer_threads: Vec<_> = producers
            .into_iter()
            .map(|p| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    p();
                })
            })
            .collect();
        let consumer_threads: Vec<_> = consumers
            .into_iter()
            .map(|c| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    c()
                })
            })
            .collect();
        // Read the clock before the barrier releases the threads, not after: this thread may
        // be descheduled after the barrier while the others already work, and the measured
        // time must never be shorter than the work (the cost: the last threads' arrival at
        // the barrier, microseconds against runs of a second).
        let start = Instant::now();
        barrier.wait();
        let sum: u64 = consumer_threads.into_iter().map(|t| t.join().unwrap()).sum();
        let elapsed = start.elapsed();
        producer_threads.into_iter().for_each(|t| t.join().unwrap());
        (elapsed, sum)
    });
    assert_eq!(sum, expected, "items lost or duplicated");
    elapsed
}

/// Splits `0..items` into `parts` contiguous ranges of near-equal length.
pub fn ranges(items: u64, parts: usize) -> Vec<std::ops::Range<u64>> {
    let parts = parts as u64;
    (0..parts).map(|i| items * i / parts..items * (i + 1) / parts).collect()
}
