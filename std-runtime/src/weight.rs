//! A stage's byte budget as its input queue applies it ([`Weight`]): the core's
//! [`AtomicWeight`], which counts the weight queued and decides what fits, and the user's
//! function that weighs an item.
//!
//! An item is weighed once, when it is pushed; its weight travels with it in its envelope, so
//! exactly what was counted in is released when it leaves the queue, whichever way it leaves
//! (popped by a worker, evicted, swept on cancel), and the user's function is not called again.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use backflow_core::Overflow;
use backflow_core::weight_budget::{Admission, AtomicWeight, WeightBudget};

use crate::panic::panic_message;

/// A user's function that weighs an item (bytes, usually).
pub(crate) type WeighFn<T> = Arc<dyn Fn(&T) -> usize + Send + Sync>;

/// The weight in one queue, bounded by a budget.
pub(crate) struct Weight<T> {
    count: AtomicWeight,
    weigh: WeighFn<T>,
}

impl<T> Weight<T> {
    pub(crate) fn new(budget: WeightBudget, weigh: WeighFn<T>) -> Self {
        Self { count: AtomicWeight::new(budget), weigh }
    }

    /// Weighs `item` with the user's function.
    ///
    /// # Errors
    ///
    /// The message of the function's panic.
    pub(crate) fn weigh(&self, item: &T) -> Result<usize, String> {
        catch_unwind(AssertUnwindSafe(|| (self.weigh)(item))).map_err(|p| panic_message(&*p))
    }

    /// Weighs each item, writing its weight beside it, under one guard against a panic.
    ///
    /// # Errors
    ///
    /// The message of the function's panic (some weights are then left unwritten).
    pub(crate) fn weigh_all<'a>(
        &self,
        items: impl Iterator<Item = (&'a T, &'a mut usize)>,
    ) -> Result<(), String>
    where
        T: 'a,
    {
        let weigh = &*self.weigh;
        catch_unwind(AssertUnwindSafe(|| items.for_each(|(item, weight)| *weight = weigh(item))))
            .map_err(|p| panic_message(&*p))
    }

    /// Counts `weight` in if it fits; otherwise what `policy` says (see the core).
    pub(crate) fn try_admit(&self, weight: usize, policy: Overflow) -> Admission {
        self.count.try_admit(weight, policy)
    }

    /// Counts in `weight`, a run's total, if it fits within the budget as a whole.
    pub(crate) fn try_admit_run(&self, weight: usize) -> bool {
        self.count.try_admit_run(weight)
    }

    /// Counts out the weight of an item that left the queue.
    pub(crate) fn release(&self, weight: usize) {
        self.count.release(weight);
    }

    /// Whether an item of `weight` fits now.
    pub(crate) fn fits(&self, weight: usize) -> bool {
        self.count.budget().fits(self.count.load(), weight)
    }

    /// Whether the queue is at its budget: a push would have to wait, drop or evict.
    pub(crate) fn is_full(&self) -> bool {
        self.count.budget().is_full(self.count.load())
    }

    /// The queue's fill for its water marks, with `len` items in `capacity` slots.
    pub(crate) fn fill(&self, len: usize, capacity: usize) -> usize {
        self.count.budget().fill(self.count.load(), len, capacity)
    }

    /// The weight queued now, and the budget.
    pub(crate) fn used_and_limit(&self) -> (usize, usize) {
        (self.count.load(), self.count.budget().limit())
    }

    pub(crate) fn budget(&self) -> WeightBudget {
        self.count.budget()
    }
}
