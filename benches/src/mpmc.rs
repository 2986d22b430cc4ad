//! Several producer and consumer threads sharing one queue of [`CAPACITY`] slots, `u64` items.

use std::time::Duration;

use backflow_core::ring::mpmc::HeapRing;
use crossbeam_utils::Backoff;

use crate::{CAPACITY, ranges, timed};

/// A thread layout: how many producers and consumers.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Producer threads.
    pub producers: usize,
    /// Consumer threads.
    pub consumers: usize,
}

/// The layouts the report measures. On a 2-core machine, 2 × 2 runs four busy threads on two
/// cores: its numbers measure the scheduler as much as the queue.
pub const SHAPES: &[Shape] = &[
    Shape { producers: 1, consumers: 1 },
    Shape { producers: 2, consumers: 1 },
    Shape { producers: 2, consumers: 2 },
];

/// An MPMC contender: a name and a run function for a given layout.
#[derive(Debug, Clone, Copy)]
pub struct MpmcContender {
    /// The row label.
    pub name: &'static str,
    /// Moves the given number of items with the given layout; `None` if the queue cannot have
    /// that layout (std's channel has one receiver).
    pub run: fn(u64, Shape) -> Option<Duration>,
}

/// Every MPMC contender, backflow first. The report's baseline is crossbeam's `ArrayQueue`.
pub const CONTENDERS: &[MpmcContender] = &[
    MpmcContender { name: "backflow mpmc", run: backflow },
    MpmcContender { name: "crossbeam ArrayQueue", run: array_queue },
    MpmcContender { name: "crossbeam-channel bounded", run: crossbeam_channel },
    MpmcContender { name: "std sync_channel", run: std_sync_channel },
];

/// Binds an MPMC contender to one layout, for the criterion benches and the report.
pub fn for_shape(contender: &MpmcContender, shape: Shape) -> impl Fn(u64) -> Option<Duration> {
    let run = contender.run;
    move |items| run(items, shape)
}

/// Producers push their share of `0..items`, consumers pop their share, all waiting with
/// crossbeam's `Backoff` (spin, then yield).
fn backoff_transfer<P, C>(items: u64, shape: Shape, push: P, pop: C) -> Duration
where
    P: Fn(u64) -> Result<(), u64> + Sync,
    C: Fn() -> Option<u64> + Sync,
{
    let (push, pop) = (&push, &pop);
    let producers = ranges(items, shape.producers)
        .into_iter()
        .map(|range| {
            move || {
                for i in range {
                    let backoff = Backoff::new();
                    let mut item = i;
                    while let Err(back) = push(item) {
                        item = back;
                        backoff.snooze();
                    }
                }
            }
        })
        .collect();
    let consumers = ranges(items, shape.consumers)
        .into_iter()
        .map(|quota| {
            move || {
                let mut sum = 0;
                for _ in quota {
                    let backoff = Backoff::new();
                    loop {
                        if let Some(item) = pop() {
                            sum += item;
                            break;
                        }
                        backoff.snooze();
                    }
                }
                sum
            }
        })
        .collect();
    timed(items, producers, consumers)
}

/// backflow's MPMC ring.
pub fn backflow(items: u64, shape: Shape) -> Option<Duration> {
    let ring = HeapRing::with_capacity(CAPACITY).unwrap();
    Some(backoff_transfer(
        items,
        shape,
        |x| ring.try_push(x).map_err(|e| e.into_inner()),
        || ring.try_pop().ok(),
    ))
}

/// crossbeam's `ArrayQueue`.
pub fn array_queue(items: u64, shape: Shape) -> Option<Duration> {
    let queue = crossbeam_queue::ArrayQueue::new(CAPACITY);
    Some(backoff_transfer(items, shape, |x| queue.push(x), || queue.pop()))
}

/// crossbeam-channel `bounded`, blocking `send` / `recv`, one handle clone per thread.
pub fn crossbeam_channel(items: u64, shape: Shape) -> Option<Duration> {
    let (tx, rx) = crossbeam_channel::bounded(CAPACITY);
    let producers = ranges(items, shape.producers)
        .into_iter()
        .map(|range| {
            let tx = tx.clone();
            move || range.for_each(|i| tx.send(i).unwrap())
        })
        .collect();
    let consumers = ranges(items, shape.consumers)
        .into_iter()
        .map(|quota| {
            let rx = rx.clone();
            move || quota.map(|_| rx.recv().unwrap()).sum()
        })
        .collect();
    Some(timed(items, producers, consumers))
}

/// std `sync_channel`: many senders, one receiver.
pub fn std_sync_channel(items: u64, shape: Shape) -> Option<Duration> {
    if shape.consumers != 1 {
        return None;
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(CAPACITY);
    let producers = ranges(items, shape.producers)
        .into_iter()
        .map(|range| {
            let tx = tx.clone();
            move || range.for_each(|i| tx.send(i).unwrap())
        })
        .collect();
    let consumer = move || (0..items).map(|_| rx.recv().unwrap()).sum();
    Some(timed(items, producers, vec![consumer]))
}
