//! SPSC ring: behaviour, drops, threads and a property test against a `VecDeque` model.
#![cfg(feature = "alloc")]

mod common;

use std::collections::VecDeque;
use std::sync::Arc;

use backflow_core::ring::spsc::{ArrayRing, Consumer, HeapRing, Producer, Ring, SliceRing, Slot};
use backflow_core::ring::{CapacityError, MAX_CAPACITY, PopError, PushError};
use common::{DropCounter, assert_not_sync, assert_send, assert_sync, scaled};
use proptest::prelude::*;

#[test]
fn halves_are_send_but_not_sync() {
    assert_send::<Producer<Arc<HeapRing<String>>>>();
    assert_send::<Consumer<Arc<HeapRing<String>>>>();
    assert_send::<Producer<&ArrayRing<String, 4>>>();
    assert_not_sync::<Producer<Arc<HeapRing<u8>>>>();
    assert_not_sync::<Consumer<Arc<HeapRing<u8>>>>();
    assert_not_sync::<Producer<&ArrayRing<u8, 4>>>();
    assert_not_sync::<Consumer<&ArrayRing<u8, 4>>>();
    assert_sync::<ArrayRing<String, 4>>();
}

#[test]
fn capacity_is_exact_and_every_slot_is_usable() {
    let mut ring = ArrayRing::<u32, 3>::new();
    let (mut tx, mut rx) = ring.split();
    for round in 0..5 {
        for i in 0..3 {
            assert_eq!(tx.try_push(round * 10 + i), Ok(()));
        }
        assert!(tx.is_full());
        assert_eq!(tx.try_push(99), Err(PushError::Full(99)));
        assert_eq!(rx.len(), 3);
        for i in 0..3 {
            assert_eq!(rx.try_pop(), Ok(round * 10 + i));
        }
        assert_eq!(rx.try_pop(), Err(PopError::Empty));
        assert!(rx.is_empty() && tx.is_empty());
    }
}

#[test]
fn capacity_errors_name_the_problem() {
    let mut empty: [Slot<u8>; 0] = [];
    assert_eq!(SliceRing::with_storage(&mut empty[..]).unwrap_err(), CapacityError::Zero);
    assert_eq!(HeapRing::<u8>::with_capacity(0).unwrap_err(), CapacityError::Zero);
    let too_large = HeapRing::<u8>::with_capacity(MAX_CAPACITY + 1).unwrap_err();
    assert_eq!(too_large, CapacityError::TooLarge { requested: MAX_CAPACITY + 1 });
    assert!(too_large.to_string().contains(&(MAX_CAPACITY + 1).to_string()));
}

#[test]
fn a_ring_can_be_a_static() {
    static RING: ArrayRing<u8, 4> = ArrayRing::new();
    assert_eq!(RING.capacity(), 4);
    assert!(RING.is_empty());
}

#[test]
fn slice_ring_over_a_reused_buffer() {
    let mut buffer: [Slot<String>; 4] = Default::default();
    for round in 0..3 {
        let mut ring = SliceRing::with_storage(&mut buffer[..]).unwrap();
        let (mut tx, mut rx) = ring.split();
        tx.try_push(format!("a{round}")).unwrap();
        tx.try_push(format!("b{round}")).unwrap();
        assert_eq!(rx.try_pop().unwrap(), format!("a{round}"));
        // "b" stays inside and is dropped with the ring.
    }
}

#[test]
fn batches_wrap_around_the_end() {
    let mut ring = ArrayRing::<u16, 5>::new();
    let (mut tx, mut rx) = ring.split();
    let mut out = [0u16; 8];
    let mut next = 0u16;
    let mut expected = 0u16;
    for _ in 0..20 {
        let batch: Vec<u16> = (next..next + 4).collect();
        let pushed = tx.push_slice(&batch);
        next += u16::try_from(pushed).unwrap();
        let popped = rx.pop_slice(&mut out[..3]);
        for &x in &out[..popped] {
            assert_eq!(x, expected);
            expected += 1;
        }
    }
    assert_eq!(usize::from(next - expected), rx.len());
}

#[test]
fn push_iter_takes_only_what_fits() {
    let mut ring = ArrayRing::<String, 3>::new();
    let (mut tx, mut rx) = ring.split();
    let mut source = (0..10).map(|i| i.to_string());
    assert_eq!(tx.push_iter(&mut source), 3);
    assert_eq!(source.next().as_deref(), Some("3"));
    assert_eq!(rx.pop_each(usize::MAX, drop), 3);
    assert_eq!(tx.push_iter(&mut source), 3);
    let mut seen = Vec::new();
    assert_eq!(rx.pop_each(2, |s| seen.push(s)), 2);
    assert_eq!(seen, ["4", "5"]);
}

#[test]
fn every_item_is_dropped_exactly_once() {
    let counter = DropCounter::default();
    {
        let mut ring = ArrayRing::<_, 4>::new();
        let (mut tx, mut rx) = ring.split();
        for id in 0..4 {
            tx.try_push(counter.item(id)).unwrap();
        }
        // A rejected item comes back and is the caller's to drop.
        let rejected = tx.try_push(counter.item(99)).unwrap_err().into_inner();
        assert_eq!(rejected.id, 99);
        drop(rejected);
        assert_eq!(counter.dropped(), 1);
        // Popped items are the caller's.
        let first = rx.try_pop().unwrap();
        assert_eq!(first.id, 0);
        drop(first);
        assert_eq!(counter.dropped(), 2);
        // Wrap around so the leftovers span the end of the buffer.
        tx.try_push(counter.item(4)).unwrap();
        assert_eq!(rx.pop_each(1, drop), 1);
        assert_eq!(counter.dropped(), 3);
    }
    // Items 2, 3 and 4 were still inside.
    assert_eq!(counter.dropped(), 6);
}

#[test]
fn shared_halves_drop_the_ring_with_its_items() {
    let counter = DropCounter::default();
    let (mut tx, rx) = HeapRing::with_capacity(8).unwrap().into_split();
    tx.push_iter(&mut (0..5).map(|id| counter.item(id)));
    drop(rx);
    assert_eq!(counter.dropped(), 0);
    drop(tx);
    assert_eq!(counter.dropped(), 5);
}

#[test]
fn a_panic_inside_a_batch_loses_nothing() {
    let counter = DropCounter::default();
    let mut ring = ArrayRing::<_, 8>::new();
    {
        let (mut tx, mut rx) = ring.split();
        // The iterator panics after yielding two items: both stay pushed.
        let mut ids = 0..;
        let mut source = std::iter::from_fn(|| {
            let id = ids.next().unwrap();
            assert!(id < 2, "source failed");
            Some(counter.item(id))
        });
        let pushed =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| tx.push_iter(&mut source)));
        assert!(pushed.is_err());
        assert_eq!(rx.len(), 2);
        // The closure panics on the first item: it was handed over (and dropped by the
        // unwinding closure), the second is still in the ring.
        let popped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rx.pop_each(usize::MAX, |item| panic!("sink failed on {}", item.id))
        }));
        assert!(popped.is_err());
        assert_eq!(counter.dropped(), 1);
        assert_eq!(rx.try_pop().unwrap().id, 1);
        assert_eq!(rx.try_pop().map(|item| item.id), Err(PopError::Empty));
    }
    assert_eq!(counter.dropped(), 2);
}

#[test]
fn errors_display_and_are_errors() {
    fn is_error<E: std::error::Error>(_: &E) {}
    let full = PushError::Full(vec![1]);
    is_error(&full);
    assert_eq!(format!("{full:?}"), "Full(..)");
    is_error(&PopError::Empty);
    is_error(&CapacityError::Zero);
}

#[test]
fn threads_transfer_every_item_in_order() {
    let items = scaled(200_000, 500);
    let (mut tx, mut rx) = HeapRing::<usize>::with_capacity(16).unwrap().into_split();
    let producer = std::thread::spawn(move || {
        let mut next = 0;
        while next < items {
            if next % 3 == 0 {
                let batch: Vec<usize> = (next..(next + 7).min(items)).collect();
                next += tx.push_slice(&batch);
            } else if tx.try_push(next).is_ok() {
                next += 1;
            }
            std::hint::spin_loop();
        }
    });
    let mut expected = 0;
    let mut buffer = [0; 5];
    while expected < items {
        let n = rx.pop_slice(&mut buffer);
        for &x in &buffer[..n] {
            assert_eq!(x, expected);
            expected += 1;
        }
        if let Ok(x) = rx.try_pop() {
            assert_eq!(x, expected);
            expected += 1;
        }
        std::hint::spin_loop();
    }
    producer.join().unwrap();
    assert!(rx.is_empty());
}

#[derive(Debug, Clone)]
enum Op {
    Push(u8),
    Pop,
    PushSlice(Vec<u8>),
    PopSlice(usize),
    PushIter(Vec<u8>),
    PopEach(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        any::<u8>().prop_map(Op::Push),
        Just(Op::Pop),
        proptest::collection::vec(any::<u8>(), 0..12).prop_map(Op::PushSlice),
        (0usize..12).prop_map(Op::PopSlice),
        proptest::collection::vec(any::<u8>(), 0..12).prop_map(Op::PushIter),
        (0usize..12).prop_map(Op::PopEach),
    ]
}

/// Runs `ops` against the ring and a `VecDeque` of the same capacity, comparing every result.
fn check_against_model<S>(ring: &mut Ring<u8, S>, ops: &[Op]) -> Result<(), TestCaseError>
where
    S: backflow_core::ring::Storage<Slot = Slot<u8>>,
{
    let capacity = ring.capacity();
    let mut model = VecDeque::new();
    let (mut tx, mut rx) = ring.split();
    for op in ops {
        match op {
            Op::Push(x) => {
                let result = tx.try_push(*x);
                if model.len() < capacity {
                    prop_assert_eq!(result, Ok(()));
                    model.push_back(*x);
                } else {
                    prop_assert_eq!(result, Err(PushError::Full(*x)));
                }
            }
            Op::Pop => prop_assert_eq!(rx.try_pop().ok(), model.pop_front()),
            Op::PushSlice(items) => {
                let n = tx.push_slice(items);
                prop_assert_eq!(n, items.len().min(capacity - model.len()));
                model.extend(&items[..n]);
            }
            Op::PopSlice(len) => {
                let mut out = vec![0; *len];
                let n = rx.pop_slice(&mut out);
                let expected: Vec<u8> = model.drain(..(*len).min(model.len())).collect();
                prop_assert_eq!(&out[..n], &expected[..]);
            }
            Op::PushIter(items) => {
                let mut source = items.iter().copied();
                let n = tx.push_iter(&mut source);
                prop_assert_eq!(n, items.len().min(capacity - model.len()));
                prop_assert_eq!(source.len(), items.len() - n);
                model.extend(&items[..n]);
            }
            Op::PopEach(max) => {
                let mut out = Vec::new();
                let n = rx.pop_each(*max, |x| out.push(x));
                let expected: Vec<u8> = model.drain(..(*max).min(model.len())).collect();
                prop_assert_eq!(n, expected.len());
                prop_assert_eq!(out, expected);
            }
        }
        prop_assert_eq!(tx.len(), model.len());
        prop_assert_eq!(rx.len(), model.len());
        prop_assert_eq!(tx.is_full(), model.len() == capacity);
        prop_assert_eq!(rx.is_empty(), model.is_empty());
    }
    prop_assert_eq!(ring.len(), model.len());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(scaled(256, 4) as u32))]

    #[test]
    fn array_ring_matches_a_vecdeque(ops in proptest::collection::vec(op(), 0..64)) {
        check_against_model(&mut ArrayRing::<u8, 7>::new(), &ops)?;
    }

    #[test]
    fn heap_ring_matches_a_vecdeque(
        capacity in 1usize..10,
        ops in proptest::collection::vec(op(), 0..64),
    ) {
        check_against_model(&mut HeapRing::with_capacity(capacity).unwrap(), &ops)?;
    }
}
