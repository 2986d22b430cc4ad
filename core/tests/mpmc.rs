//! MPMC ring: behaviour, drops, threads and a property test against a `VecDeque` model.
#![cfg(feature = "alloc")]

mod common;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use backflow_core::ring::mpmc::{ArrayRing, HeapRing, Ring, SliceRing, Slot};
use backflow_core::ring::{CapacityError, MAX_CAPACITY, PopError, PushError, Storage};
use common::{DropCounter, assert_sync, scaled};
use proptest::prelude::*;

#[test]
fn rings_are_sync() {
    assert_sync::<ArrayRing<String, 4>>();
    assert_sync::<HeapRing<String>>();
}

#[test]
fn capacity_is_exact_for_awkward_sizes() {
    for capacity in [1, 2, 3, 5, 8, 13] {
        let ring = HeapRing::with_capacity(capacity).unwrap();
        for lap in 0..3 {
            for i in 0..capacity {
                assert_eq!(ring.try_push(lap * 100 + i), Ok(()));
            }
            assert!(ring.is_full());
            assert_eq!(ring.len(), capacity);
            assert_eq!(ring.try_push(999), Err(PushError::Full(999)));
            for i in 0..capacity {
                assert_eq!(ring.try_pop(), Ok(lap * 100 + i));
            }
            assert_eq!(ring.try_pop(), Err(PopError::Empty));
            assert!(ring.is_empty());
        }
    }
}

#[test]
fn capacity_errors_name_the_problem() {
    let mut empty: [Slot<u8>; 0] = [];
    assert_eq!(SliceRing::with_storage(&mut empty[..]).unwrap_err(), CapacityError::Zero);
    assert_eq!(HeapRing::<u8>::with_capacity(0).unwrap_err(), CapacityError::Zero);
    assert_eq!(
        HeapRing::<u8>::with_capacity(MAX_CAPACITY + 1).unwrap_err(),
        CapacityError::TooLarge { requested: MAX_CAPACITY + 1 }
    );
}

#[test]
fn a_ring_can_be_a_static() {
    static RING: ArrayRing<u32, 3> = ArrayRing::new();
    for i in 0..7 {
        RING.try_push(i).unwrap();
        assert_eq!(RING.try_pop(), Ok(i));
    }
}

#[test]
fn slice_ring_resets_a_reused_buffer() {
    let mut buffer: [Slot<u8>; 3] = Default::default();
    {
        let ring = SliceRing::with_storage(&mut buffer[..]).unwrap();
        for i in 0..5 {
            ring.force_push(i);
        }
    }
    let ring = SliceRing::with_storage(&mut buffer[..]).unwrap();
    assert!(ring.is_empty());
    assert_eq!(ring.try_pop(), Err(PopError::Empty));
    ring.try_push(7).unwrap();
    assert_eq!(ring.try_pop(), Ok(7));
}

#[test]
fn force_push_evicts_the_oldest() {
    let ring = ArrayRing::<u8, 3>::new();
    for i in 0..3 {
        assert_eq!(ring.force_push(i), None);
    }
    assert_eq!(ring.force_push(3), Some(0));
    assert_eq!(ring.force_push(4), Some(1));
    assert_eq!(ring.len(), 3);
    assert_eq!([ring.try_pop(), ring.try_pop(), ring.try_pop()], [Ok(2), Ok(3), Ok(4)]);
}

#[test]
fn every_item_is_dropped_exactly_once() {
    let counter = DropCounter::default();
    {
        let ring = ArrayRing::<_, 3>::new();
        for id in 0..3 {
            ring.try_push(counter.item(id)).unwrap();
        }
        drop(ring.try_push(counter.item(10)).unwrap_err().into_inner());
        assert_eq!(counter.dropped(), 1);
        let evicted = ring.force_push(counter.item(3)).unwrap();
        assert_eq!(evicted.id, 0);
        drop(evicted);
        drop(ring.try_pop().unwrap());
        assert_eq!(counter.dropped(), 3);
    }
    // Items 2 and 3 were still inside (across the end of the buffer).
    assert_eq!(counter.dropped(), 5);
}

/// Producers push distinct numbers, consumers pop them (odd-numbered consumers in runs of up
/// to 3): every number arrives exactly once, and each producer's numbers arrive in the order
/// pushed as seen by any one consumer.
fn transfer(producers: usize, consumers: usize, per_producer: usize, capacity: usize) {
    let ring = Arc::new(HeapRing::<usize>::with_capacity(capacity).unwrap());
    let remaining = Arc::new(AtomicUsize::new(producers * per_producer));
    let producer_threads: Vec<_> = (0..producers)
        .map(|p| {
            let ring = Arc::clone(&ring);
            std::thread::spawn(move || {
                for i in 0..per_producer {
                    let mut item = p * per_producer + i;
                    while let Err(full) = ring.try_push(item) {
                        item = full.into_inner();
                        std::thread::yield_now();
                    }
                }
            })
        })
        .collect();
    let consumer_threads: Vec<_> = (0..consumers)
        .map(|c| {
            let ring = Arc::clone(&ring);
            let remaining = Arc::clone(&remaining);
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                let mut last = vec![None; producers];
                let mut popped = Vec::new();
                while remaining.load(Ordering::SeqCst) > 0 {
                    if c % 2 == 1 {
                        ring.pop_each(3, |item| popped.push(item));
                    } else {
                        popped.extend(ring.try_pop().ok());
                    }
                    if popped.is_empty() {
                        std::thread::yield_now();
                    }
                    for item in popped.drain(..) {
                        remaining.fetch_sub(1, Ordering::SeqCst);
                        let p = item / per_producer;
                        assert!(last[p] < Some(item), "producer {p} reordered");
                        last[p] = Some(item);
                        seen.push(item);
                    }
                }
                seen
            })
        })
        .collect();
    for t in producer_threads {
        t.join().unwrap();
    }
    let mut all: Vec<usize> =
        consumer_threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    all.sort_unstable();
    assert_eq!(all, (0..producers * per_producer).collect::<Vec<_>>());
    assert!(ring.is_empty());
}

#[test]
fn two_producers_two_consumers_lose_and_duplicate_nothing() {
    transfer(2, 2, scaled(50_000, 100), 8);
}

#[test]
fn four_producers_one_consumer_through_one_slot() {
    transfer(4, 1, scaled(10_000, 30), 1);
}

#[test]
fn runs_pop_across_the_end_of_the_buffer() {
    let ring = HeapRing::<u32>::with_capacity(5).unwrap();
    let mut seen = Vec::new();
    for x in 0..4 {
        ring.try_push(x).unwrap();
    }
    assert_eq!(ring.pop_each(3, |x| seen.push(x)), 3);
    for x in 4..8 {
        ring.try_push(x).unwrap();
    }
    assert!(ring.is_full());
    assert_eq!(ring.pop_each(100, |x| seen.push(x)), 5);
    assert_eq!(seen, (0..8).collect::<Vec<_>>());
    assert!(ring.is_empty());
    assert_eq!(ring.pop_each(4, |x| seen.push(x)), 0);
}

#[test]
fn a_run_of_at_most_nothing_takes_nothing() {
    let ring = ArrayRing::<u8, 4>::new();
    ring.try_push(1).unwrap();
    assert_eq!(ring.pop_each(0, |_| unreachable!("no item asked for")), 0);
    assert_eq!(ring.len(), 1);
    let empty = ArrayRing::<u8, 4>::new();
    assert_eq!(empty.pop_each(0, |_| unreachable!("no item there")), 0);
}

/// Pushes 1 and 2 into a ring of two and pops them as one run, calling `inside` (with what
/// the run has seen so far) once it has read item 1, whose slot is free again, and not item 2,
/// whose slot is still the run's. Returns the ring and everything seen.
fn inside_a_run(
    inside: impl FnOnce(&ArrayRing<u8, 2>, &mut Vec<u8>),
) -> (ArrayRing<u8, 2>, Vec<u8>) {
    let ring = ArrayRing::<u8, 2>::new();
    ring.try_push(1).unwrap();
    ring.try_push(2).unwrap();
    let mut seen = Vec::new();
    let mut inside = Some(inside);
    ring.pop_each(2, |x| {
        seen.push(x);
        if let Some(inside) = inside.take() {
            inside(&ring, &mut seen);
        }
    });
    (ring, seen)
}

/// A run's slots are handed back one by one as its items are read, so while one consumer is
/// still working through a run, the ring can wrap around to a slot it has not read yet: a
/// pop that finds such a slot at the head has nothing to take until the run gets there.
#[test]
fn a_slot_a_run_has_not_read_yet_is_not_waited_for() {
    let (ring, seen) = inside_a_run(|ring, seen| {
        ring.try_push(3).unwrap();
        assert_eq!(ring.pop_each(2, |x| seen.push(x)), 1);
        assert_eq!(ring.pop_each(2, |_| unreachable!("item 2 is the outer run's")), 0);
        assert_eq!(ring.try_pop(), Err(PopError::Empty));
    });
    assert_eq!(seen, [1, 3, 2]);
    assert!(ring.is_empty());
}

/// The same for a push: the slot it would fill still holds an item a run has taken but not
/// read, so there is no room now, whatever the head and tail say.
#[test]
fn a_push_into_a_slot_a_run_has_not_read_yet_finds_no_room() {
    let (ring, seen) = inside_a_run(|ring, _| {
        ring.try_push(3).unwrap();
        assert!(ring.is_full());
        assert_eq!(ring.try_push(4), Err(PushError::Full(4)));
    });
    assert_eq!(seen, [1, 2]);
    assert!(!ring.is_full());
    assert_eq!(ring.try_pop(), Ok(3));
    assert!(ring.is_empty());
}

#[test]
fn a_panic_inside_a_run_drops_the_rest_once_and_frees_their_slots() {
    let counter = DropCounter::default();
    let ring = HeapRing::with_capacity(4).unwrap();
    for _ in 0..4 {
        assert!(ring.try_push(counter.item(0)).is_ok());
    }
    let mut calls = 0;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ring.pop_each(3, |_item| {
            calls += 1;
            if calls == 2 {
                panic!("the caller's closure panics");
            }
        });
    }));
    assert!(result.is_err());
    // Two items went to the closure, the third was dropped with the run; one is left inside.
    assert_eq!(counter.dropped(), 3);
    assert_eq!(ring.len(), 1);
    for _ in 0..3 {
        assert!(ring.try_push(counter.item(0)).is_ok(), "the run's slots are free again");
    }
    drop(ring);
    assert_eq!(counter.dropped(), 7);
}

#[test]
fn force_push_racing_pop_accounts_for_every_item() {
    // Every item is either popped by the consumer or handed back to the producer by
    // force_push, exactly once.
    let items = scaled(100_000, 200);
    let ring = Arc::new(HeapRing::<usize>::with_capacity(4).unwrap());
    let done = Arc::new(AtomicUsize::new(0));
    let consumer = {
        let ring = Arc::clone(&ring);
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut popped = Vec::new();
            loop {
                // Read before the pop: an empty ring after the last push means it is over (the
                // other way round, the last push may land between the pop and the read).
                let finished = done.load(Ordering::SeqCst) == 1;
                match ring.try_pop() {
                    Ok(item) => popped.push(item),
                    Err(PopError::Empty) if finished => break popped,
                    Err(PopError::Empty) => std::thread::yield_now(),
                }
            }
        })
    };
    let mut evicted: Vec<usize> = (0..items).filter_map(|i| ring.force_push(i)).collect();
    done.store(1, Ordering::SeqCst);
    let mut all = consumer.join().unwrap();
    all.append(&mut evicted);
    all.sort_unstable();
    assert_eq!(all, (0..items).collect::<Vec<_>>());
}

#[derive(Debug, Clone)]
enum Op {
    Push(u8),
    ForcePush(u8),
    Pop,
    PopRun(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        any::<u8>().prop_map(Op::Push),
        any::<u8>().prop_map(Op::ForcePush),
        Just(Op::Pop),
        (0usize..12).prop_map(Op::PopRun),
    ]
}

fn check_against_model<S>(ring: &Ring<u8, S>, ops: &[Op]) -> Result<(), TestCaseError>
where
    S: Storage<Slot = Slot<u8>>,
{
    let capacity = ring.capacity();
    let mut model = VecDeque::new();
    for op in ops {
        match op {
            Op::Push(x) => {
                let result = ring.try_push(*x);
                if model.len() < capacity {
                    prop_assert_eq!(result, Ok(()));
                    model.push_back(*x);
                } else {
                    prop_assert_eq!(result, Err(PushError::Full(*x)));
                }
            }
            Op::ForcePush(x) => {
                let evicted = if model.len() == capacity { model.pop_front() } else { None };
                model.push_back(*x);
                prop_assert_eq!(ring.force_push(*x), evicted);
            }
            Op::Pop => prop_assert_eq!(ring.try_pop().ok(), model.pop_front()),
            Op::PopRun(max) => {
                let mut popped = Vec::new();
                let n = ring.pop_each(*max, |x| popped.push(x));
                let expected: Vec<u8> = model.drain(..(*max).min(model.len())).collect();
                prop_assert_eq!(n, expected.len());
                prop_assert_eq!(popped, expected);
            }
        }
        prop_assert_eq!(ring.len(), model.len());
        prop_assert_eq!(ring.is_full(), model.len() == capacity);
        prop_assert_eq!(ring.is_empty(), model.is_empty());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(scaled(256, 4) as u32))]

    #[test]
    fn array_ring_matches_a_vecdeque(ops in proptest::collection::vec(op(), 0..64)) {
        check_against_model(&ArrayRing::<u8, 5>::new(), &ops)?;
    }

    #[test]
    fn heap_ring_matches_a_vecdeque(
        capacity in 1usize..10,
        ops in proptest::collection::vec(op(), 0..64),
    ) {
        check_against_model(&HeapRing::with_capacity(capacity).unwrap(), &ops)?;
    }
}
