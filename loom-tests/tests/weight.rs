//! Model checks of the weight budget's shared count (`AtomicWeight`): producers racing to
//! admit items never hold more than the budget together (but for one item heavier than the
//! budget, alone), and the count is back at zero once everyone has released.
#![cfg(loom)]

use backflow_core::Overflow;
use backflow_core::weight_budget::{Admission, AtomicWeight, WeightBudget};
use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;

const LIMIT: usize = 10;

/// Admits `weight` under `Block`, yielding to the model checker while it does not fit; then
/// adds it to `inside` (what is admitted right now, as the threads see it), checks the bound,
/// and releases it.
fn admit_and_release(count: &AtomicWeight, inside: &AtomicUsize, weight: usize) {
    while count.try_admit(weight, Overflow::Block) != Admission::Admit {
        thread::yield_now();
    }
    let now = inside.fetch_add(weight, Ordering::SeqCst) + weight;
    assert!(now <= LIMIT || now == weight, "{now} admitted at once");
    inside.fetch_sub(weight, Ordering::SeqCst);
    count.release(weight);
}

#[test]
fn racing_admissions_stay_within_the_budget() {
    loom::model(|| {
        let count = Arc::new(AtomicWeight::new(WeightBudget::new(LIMIT).unwrap()));
        let inside = Arc::new(AtomicUsize::new(0));
        let other = {
            let (count, inside) = (Arc::clone(&count), Arc::clone(&inside));
            thread::spawn(move || admit_and_release(&count, &inside, 6))
        };
        admit_and_release(&count, &inside, 7);
        other.join().unwrap();
        assert_eq!(count.load(), 0);
    });
}

#[test]
fn a_heavy_item_is_admitted_only_alone() {
    loom::model(|| {
        let count = Arc::new(AtomicWeight::new(WeightBudget::new(LIMIT).unwrap()));
        let inside = Arc::new(AtomicUsize::new(0));
        let heavy = {
            let (count, inside) = (Arc::clone(&count), Arc::clone(&inside));
            thread::spawn(move || admit_and_release(&count, &inside, 25))
        };
        // A run of two items, admitted at once or not at all.
        while !count.try_admit_run(4) {
            thread::yield_now();
        }
        let now = inside.fetch_add(4, Ordering::SeqCst) + 4;
        assert!(now <= LIMIT, "{now} admitted at once");
        inside.fetch_sub(4, Ordering::SeqCst);
        count.release(1);
        count.release(3);
        heavy.join().unwrap();
        assert_eq!(count.load(), 0);
    });
}
