//! Model checks of the SPSC and MPMC rings: loom runs each closure under every interleaving
//! (up to `LOOM_MAX_PREEMPTIONS` preemptions) and checks each slot access against the
//! happens-before relation, so a missing Release/Acquire pair is a failure, not a flaky test.
#![cfg(loom)]

use std::sync::Arc;

use backflow_core::ring::{PopError, mpmc, spsc};
use loom::thread;

/// Pops one item, yielding to the model checker while the ring is empty.
fn pop_spsc<R>(rx: &mut spsc::Consumer<R>) -> u32
where
    R: std::ops::Deref<Target = spsc::HeapRing<u32>>,
{
    loop {
        match rx.try_pop() {
            Ok(item) => return item,
            Err(PopError::Empty) => thread::yield_now(),
        }
    }
}

#[test]
fn spsc_push_pop_wraps_around() {
    loom::model(|| {
        let (mut tx, mut rx) = spsc::HeapRing::<u32>::with_capacity(2).unwrap().into_split();
        let producer = thread::spawn(move || {
            for i in 0..3 {
                let mut item = i;
                while let Err(full) = tx.try_push(item) {
                    item = full.into_inner();
                    thread::yield_now();
                }
            }
        });
        for expected in 0..3 {
            assert_eq!(pop_spsc(&mut rx), expected);
        }
        producer.join().unwrap();
        assert!(rx.is_empty());
    });
}

#[test]
fn spsc_batches_wrap_around() {
    loom::model(|| {
        let (mut tx, mut rx) = spsc::HeapRing::<u32>::with_capacity(2).unwrap().into_split();
        let producer = thread::spawn(move || {
            let items = [10, 11, 12];
            let mut sent = 0;
            while sent < items.len() {
                sent += tx.push_slice(&items[sent..]);
                thread::yield_now();
            }
        });
        let mut received = Vec::new();
        let mut buffer = [0; 2];
        while received.len() < 3 {
            let n = rx.pop_slice(&mut buffer);
            received.extend_from_slice(&buffer[..n]);
            if n == 0 {
                thread::yield_now();
            }
        }
        producer.join().unwrap();
        assert_eq!(received, [10, 11, 12]);
    });
}

#[test]
fn spsc_items_left_inside_are_dropped_once() {
    loom::model(|| {
        let item = Arc::new(());
        let (mut tx, rx) = spsc::HeapRing::with_capacity(1).unwrap().into_split();
        tx.try_push(Arc::clone(&item)).unwrap();
        let consumer = thread::spawn(move || drop(rx));
        drop(tx);
        consumer.join().unwrap();
        // Whichever half went last dropped the ring and the item inside it.
        assert_eq!(Arc::strong_count(&item), 1);
    });
}

/// Pushes one item, yielding while the ring is full.
fn push_mpmc(ring: &mpmc::HeapRing<u32>, mut item: u32) {
    while let Err(full) = ring.try_push(item) {
        item = full.into_inner();
        thread::yield_now();
    }
}

#[test]
fn mpmc_two_producers_two_consumers() {
    loom::model(|| {
        let ring = Arc::new(mpmc::HeapRing::<u32>::with_capacity(2).unwrap());
        let producers: Vec<_> = (0..2)
            .map(|p| {
                let ring = Arc::clone(&ring);
                thread::spawn(move || ring.try_push(p).unwrap())
            })
            .collect();
        // Each consumer pops once, racing the producers and each other (it may find nothing).
        let consumer = {
            let ring = Arc::clone(&ring);
            thread::spawn(move || ring.try_pop().ok())
        };
        let mine = ring.try_pop().ok();
        let theirs = consumer.join().unwrap();
        for p in producers {
            p.join().unwrap();
        }
        // Whatever the consumers did not get is still inside: nothing lost, nothing twice.
        let mut seen: Vec<u32> = [mine, theirs].into_iter().flatten().collect();
        while let Ok(item) = ring.try_pop() {
            seen.push(item);
        }
        seen.sort_unstable();
        assert_eq!(seen, [0, 1]);
    });
}

#[test]
fn mpmc_wraps_around_with_a_producer_and_a_consumer() {
    loom::model(|| {
        let ring = Arc::new(mpmc::HeapRing::<u32>::with_capacity(2).unwrap());
        let producer = {
            let ring = Arc::clone(&ring);
            thread::spawn(move || (0..3).for_each(|i| push_mpmc(&ring, i)))
        };
        for expected in 0..3 {
            let got = loop {
                match ring.try_pop() {
                    Ok(item) => break item,
                    Err(PopError::Empty) => thread::yield_now(),
                }
            };
            assert_eq!(got, expected);
        }
        producer.join().unwrap();
    });
}

#[test]
fn mpmc_force_push_racing_pop() {
    loom::model(|| {
        let ring = Arc::new(mpmc::HeapRing::<u32>::with_capacity(1).unwrap());
        ring.try_push(1).unwrap();
        let consumer = {
            let ring = Arc::clone(&ring);
            thread::spawn(move || ring.try_pop().ok())
        };
        let evicted = ring.force_push(2);
        let popped = consumer.join().unwrap();
        let left = ring.try_pop().ok();
        // Item 1 and item 2 each end up exactly once: evicted, popped or still inside.
        let mut seen: Vec<u32> = [evicted, popped, left].into_iter().flatten().collect();
        seen.sort_unstable();
        assert_eq!(seen, [1, 2]);
        assert!(ring.is_empty());
    });
}

#[test]
fn mpmc_run_pop_races_a_single_pop_and_the_producers() {
    loom::model(|| {
        let ring = Arc::new(mpmc::HeapRing::<u32>::with_capacity(3).unwrap());
        ring.try_push(0).unwrap();
        let producers: Vec<_> = (1..3)
            .map(|p| {
                let ring = Arc::clone(&ring);
                thread::spawn(move || ring.try_push(p).unwrap())
            })
            .collect();
        let consumer = {
            let ring = Arc::clone(&ring);
            thread::spawn(move || ring.try_pop().ok())
        };
        let mut seen = Vec::new();
        ring.pop_each(3, |item| seen.push(item));
        seen.extend(consumer.join().unwrap());
        for p in producers {
            p.join().unwrap();
        }
        // Whatever the consumers did not get is still inside: nothing lost, nothing twice.
        while let Ok(item) = ring.try_pop() {
            seen.push(item);
        }
        seen.sort_unstable();
        assert_eq!(seen, [0, 1, 2]);
    });
}

#[test]
fn mpmc_runs_wrap_around_in_order() {
    loom::model(|| {
        let ring = Arc::new(mpmc::HeapRing::<u32>::with_capacity(2).unwrap());
        let producer = {
            let ring = Arc::clone(&ring);
            thread::spawn(move || (0..4).for_each(|i| push_mpmc(&ring, i)))
        };
        let mut seen = Vec::new();
        while seen.len() < 4 {
            if ring.pop_each(2, |item| seen.push(item)) == 0 {
                thread::yield_now();
            }
        }
        assert_eq!(seen, [0, 1, 2, 3]);
        producer.join().unwrap();
    });
}

/// A run pop that finds nothing means the ring is empty, as a single pop's `Empty` does: while
/// a producer is halfway through the head slot it waits for the item instead of returning 0.
/// The consumer here, like a pipeline's worker, yields only while the ring is empty; were a
/// run pop to return 0 on a ring that is not empty, it would spin without end (loom reports
/// the model exceeding its branches).
#[test]
fn mpmc_run_pop_finds_nothing_only_on_an_empty_ring() {
    loom::model(|| {
        let ring = Arc::new(mpmc::HeapRing::<u32>::with_capacity(2).unwrap());
        let producer = {
            let ring = Arc::clone(&ring);
            thread::spawn(move || push_mpmc(&ring, 7))
        };
        let mut seen = Vec::new();
        while ring.pop_each(2, |item| seen.push(item)) == 0 {
            if ring.is_empty() {
                thread::yield_now();
            }
        }
        assert_eq!(seen, [7]);
        producer.join().unwrap();
    });
}
