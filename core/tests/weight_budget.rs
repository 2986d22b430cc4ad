//! The weight budget against a model: a queue of weights run through `AtomicWeight` and an
//! MPMC ring under every policy, checked against a `VecDeque` and the plain rules.

mod common;

use std::collections::VecDeque;

use backflow_core::overflow::{DropReason, Overflow, PushOutcome};
use backflow_core::ring::mpmc::{SliceRing, Slot};
use backflow_core::water_marks::{Pressure, Transition};
use backflow_core::weight_budget::{Admission, AtomicWeight, WeightBudget};
use common::scaled;
use proptest::prelude::*;

/// One step of a test run.
#[derive(Debug, Clone)]
enum Op {
    Push {
        weight: usize,
        policy: Overflow,
    },
    /// Several items pushed at once if their total fits, as a worker's batch.
    Run(Vec<usize>),
    Pop,
}

fn policy() -> impl Strategy<Value = Overflow> {
    prop_oneof![
        Just(Overflow::Block),
        Just(Overflow::DropOldest),
        Just(Overflow::DropNewest),
        Just(Overflow::Fail),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        // Some items heavier than any budget below, some of weight zero.
        3 => (0usize..150, policy()).prop_map(|(weight, policy)| Op::Push { weight, policy }),
        1 => proptest::collection::vec(0usize..60, 1..5).prop_map(Op::Run),
        2 => Just(Op::Pop),
    ]
}

/// Pushes `weight` as the runtime does: admit by weight, then by count; under `DropOldest`
/// evict until it fits. Returns the weights evicted and whether the item went in.
fn push(
    ring: &SliceRing<'_, usize>,
    weight: &AtomicWeight,
    item: usize,
    policy: Overflow,
) -> (Vec<usize>, bool) {
    let mut evicted = Vec::new();
    loop {
        match weight.try_admit(item, policy) {
            Admission::Admit => {
                let mut queue = ring;
                return match policy.push(&mut queue, item, false) {
                    PushOutcome::Pushed => (evicted, true),
                    PushOutcome::Dropped { item: oldest, reason: DropReason::Oldest } => {
                        weight.release(oldest);
                        evicted.push(oldest);
                        (evicted, true)
                    }
                    _ => {
                        weight.release(item);
                        (evicted, false)
                    }
                };
            }
            Admission::EvictOldest => {
                let oldest = ring.try_pop().expect("weight is queued, so an item is");
                weight.release(oldest);
                evicted.push(oldest);
            }
            Admission::Wait | Admission::DropNewest | Admission::Reject => {
                return (evicted, false);
            }
        }
    }
}

proptest! {
    // Under miri, fewer and shorter cases: the ring's unsafe code has its own tests there.
    #![proptest_config(ProptestConfig::with_cases(scaled(256, 2) as u32))]

    /// Whatever the pushes and pops, the shared count is the weight of the queued items,
    /// admission follows the rule (fits, or the queue holds no weight), only a lone item
    /// exceeds the budget, `DropOldest` evicts oldest first until the item fits, and the
    /// count is back at zero once the queue is empty.
    #[test]
    fn the_count_follows_the_model_and_returns_to_zero(
        limit in 1usize..120,
        capacity in 1usize..12,
        ops in proptest::collection::vec(op(), 0..scaled(200, 50)),
    ) {
        let budget = WeightBudget::new(limit).unwrap();
        let weight = AtomicWeight::new(budget);
        let mut slots: [Slot<usize>; 12] = Default::default();
        let ring = SliceRing::with_storage(&mut slots[..capacity]).unwrap();
        let mut model: VecDeque<usize> = VecDeque::new();
        for op in ops {
            match op {
                Op::Pop => {
                    let popped = ring.try_pop().ok();
                    prop_assert_eq!(popped, model.pop_front());
                    if let Some(item) = popped {
                        weight.release(item);
                    }
                }
                Op::Run(items) => {
                    let total: usize = items.iter().sum();
                    let queued: usize = model.iter().sum();
                    let admitted = weight.try_admit_run(total);
                    prop_assert_eq!(admitted, queued + total <= limit);
                    if admitted {
                        // As the runtime does: what the ring does not take is counted out.
                        for &item in &items {
                            if ring.try_push(item).is_ok() {
                                model.push_back(item);
                            } else {
                                weight.release(item);
                            }
                        }
                    }
                }
                Op::Push { weight: item, policy } => {
                    let (evicted, pushed) = push(&ring, &weight, item, policy);
                    // The model: evict oldest first while the item does not fit (DropOldest);
                    // then it goes in if it fits and the ring has a slot (or evicts one more
                    // by count under DropOldest).
                    let used = |m: &VecDeque<usize>| m.iter().sum::<usize>();
                    let fits = |m: &VecDeque<usize>| used(m) == 0 || used(m) + item <= limit;
                    let mut expected_evicted = Vec::new();
                    if policy == Overflow::DropOldest {
                        while !fits(&model) {
                            expected_evicted.push(model.pop_front().unwrap());
                        }
                    }
                    let expected_pushed = if !fits(&model) {
                        false
                    } else if model.len() < capacity {
                        true
                    } else if policy == Overflow::DropOldest {
                        expected_evicted.push(model.pop_front().unwrap());
                        true
                    } else {
                        false
                    };
                    if expected_pushed {
                        model.push_back(item);
                    }
                    prop_assert_eq!(evicted, expected_evicted);
                    prop_assert_eq!(pushed, expected_pushed);
                }
            }
            let queued: usize = model.iter().sum();
            prop_assert_eq!(weight.load(), queued);
            prop_assert_eq!(ring.len(), model.len());
            if queued > limit {
                prop_assert_eq!(model.iter().filter(|&&w| w > 0).count(), 1);
            }
        }
        while let Ok(item) = ring.try_pop() {
            weight.release(item);
        }
        prop_assert_eq!(weight.load(), 0);
    }

    /// Pressure on the fill turns on when either bound reaches the high mark's share and off
    /// only when both are back at the low mark's.
    #[test]
    fn pressure_on_the_fill_watches_both_bounds(
        limit in 10usize..10_000,
        capacity in 1usize..64,
        steps in proptest::collection::vec((0usize..12_000, 0usize..64), 0..100),
    ) {
        let budget = WeightBudget::new(limit).unwrap();
        let marks = budget.marks();
        let mut pressure = Pressure::new(marks);
        for (used, len) in steps {
            let len = len.min(capacity);
            let fill = budget.fill(used, len, capacity);
            let was_on = pressure.is_on();
            let transition = pressure.observe(fill);
            let count_high = len * limit >= marks.high() * capacity;
            if !was_on && (used >= marks.high() || count_high) {
                prop_assert_eq!(transition, Some(Transition::On));
            }
            if was_on && transition == Some(Transition::Off) {
                prop_assert!(used <= marks.low() && len * limit <= marks.low() * capacity);
            }
            if len == capacity || budget.is_full(used) {
                prop_assert!(pressure.is_on());
            }
        }
    }
}
