//! Bounding a queue by the total weight of its items (bytes, usually) as well as by their
//! number.
//!
//! [`WeightBudget`] holds the rules, as plain functions of the weight already queued:
//!
//! - **Fit.** An item fits if the queue holds no weight, or if the total stays within the
//!   limit. So an item heavier than the whole budget is admitted alone, into a queue that holds
//!   nothing, and nothing else fits until it has left: a heavy item waits for the queue to
//!   empty instead of waiting forever.
//! - **Overflow.** An item that does not fit gets its queue's [`Overflow`] policy
//!   ([`WeightBudget::admit`]): `Block` waits for enough weight to leave, `DropOldest` evicts
//!   the oldest item and asks again (until the item fits), `DropNewest` drops the item, `Fail`
//!   hands it back.
//! - **Fill.** Water marks are in weight units (fractions of the limit), and the fill they
//!   apply to is the larger of the weight queued and the item count's share of the capacity
//!   ([`WeightBudget::fill`]), so pressure reacts to whichever bound is nearer.
//!
//! [`AtomicWeight`] is the weight queued, shared by the threads that push and pop: it admits
//! an item by the rules with one compare-and-swap and releases its weight with one subtraction.
//!
//! # Examples
//!
//! ```
//! use backflow_core::Overflow;
//! use backflow_core::weight_budget::{Admission, WeightBudget};
//!
//! let budget = WeightBudget::new(100)?;
//! assert!(budget.fits(60, 40));
//! assert!(!budget.fits(60, 41));
//! assert!(budget.fits(0, 500)); // heavier than the budget: admitted alone
//! assert_eq!(budget.admit(60, 41, Overflow::DropOldest), Admission::EvictOldest);
//! // 3 items of a ring of 10 are 30 % of it: 30 of the 100.
//! assert_eq!(budget.fill(5, 3, 10), 30);
//! # Ok::<(), backflow_core::ConfigError>(())
//! ```

use crate::{ConfigError, Overflow, WaterMarks};

#[cfg(target_has_atomic = "ptr")]
use crate::sync::{AtomicUsize, Backoff, Ordering, const_fn};

/// A limit on the total weight of a queue's items, its water marks in weight units, and the
/// rules that apply them (see the [module docs](self)). Always valid: `limit >= 1`,
/// `low < high <= limit`.
///
/// # Examples
///
/// ```
/// use backflow_core::weight_budget::WeightBudget;
///
/// let budget = WeightBudget::new(64 << 20)?; // 64 MiB
/// assert_eq!(budget.limit(), 64 << 20);
/// assert_eq!(budget.marks().low(), (64 << 20) * 40 / 100);
/// # Ok::<(), backflow_core::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightBudget {
    limit: usize,
    marks: WaterMarks,
}

/// What to do with an item, by [`WeightBudget::admit`].
///
/// # Examples
///
/// ```
/// use backflow_core::Overflow;
/// use backflow_core::weight_budget::{Admission, WeightBudget};
///
/// let budget = WeightBudget::new(10)?;
/// assert_eq!(budget.admit(8, 5, Overflow::Block), Admission::Wait);
/// # Ok::<(), backflow_core::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Admission {
    /// The item fits: queue it (an [`AtomicWeight`] has already counted its weight).
    Admit,
    /// It does not fit and the policy is [`Overflow::Block`]: wait for weight to leave.
    Wait,
    /// It does not fit and the policy is [`Overflow::DropOldest`]: evict the oldest item,
    /// release its weight and ask again.
    EvictOldest,
    /// It does not fit and the policy is [`Overflow::DropNewest`]: drop it.
    DropNewest,
    /// It does not fit and the policy is [`Overflow::Fail`]: hand it back.
    Reject,
}

impl WeightBudget {
    /// A budget of `limit` with the default water marks, 80 % and 40 % of it (rounded as
    /// [`WaterMarks::from_percent`] does).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming `weight_budget.limit` if `limit` is zero.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::ConfigError;
    /// use backflow_core::weight_budget::WeightBudget;
    ///
    /// assert_eq!(WeightBudget::new(10)?.marks().high(), 8);
    /// assert!(matches!(WeightBudget::new(0), Err(ConfigError::Invalid { field: "weight_budget.limit", .. })));
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub const fn new(limit: usize) -> Result<Self, ConfigError> {
        if limit == 0 {
            return Err(Self::ZERO_LIMIT);
        }
        match WaterMarks::for_capacity(limit) {
            Ok(marks) => Ok(Self { limit, marks }),
            Err(error) => Err(error),
        }
    }

    /// A budget of `limit` with `marks` in weight units (e.g. from
    /// [`WaterMarks::from_percent`]`(limit, …)`).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming `weight_budget.limit` if `limit` is zero,
    /// [`ConfigError::HighAboveCapacity`] if the high mark is above `limit`.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::{ConfigError, WaterMarks};
    /// use backflow_core::weight_budget::WeightBudget;
    ///
    /// let marks = WaterMarks::from_percent(1000, 90, 50)?;
    /// assert_eq!(WeightBudget::with_marks(1000, marks)?.marks().high(), 900);
    /// assert_eq!(
    ///     WeightBudget::with_marks(800, marks),
    ///     Err(ConfigError::HighAboveCapacity { high: 900, capacity: 800 })
    /// );
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub const fn with_marks(limit: usize, marks: WaterMarks) -> Result<Self, ConfigError> {
        if limit == 0 {
            Err(Self::ZERO_LIMIT)
        } else if marks.high() > limit {
            Err(ConfigError::HighAboveCapacity { high: marks.high(), capacity: limit })
        } else {
            Ok(Self { limit, marks })
        }
    }

    const ZERO_LIMIT: ConfigError =
        ConfigError::Invalid { field: "weight_budget.limit", expected: "at least 1" };

    /// The most weight the queue holds, but for one item heavier than that, admitted alone.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(backflow_core::weight_budget::WeightBudget::new(7)?.limit(), 7);
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub const fn limit(&self) -> usize {
        self.limit
    }

    /// The water marks, in weight units.
    ///
    /// # Examples
    ///
    /// ```
    /// let marks = backflow_core::weight_budget::WeightBudget::new(100)?.marks();
    /// assert_eq!((marks.high(), marks.low()), (80, 40));
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub const fn marks(&self) -> WaterMarks {
        self.marks
    }

    /// Whether an item of `weight` fits into a queue holding `used`: the queue holds no
    /// weight, or the total stays within the limit.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::weight_budget::WeightBudget;
    ///
    /// let budget = WeightBudget::new(10)?;
    /// assert!(budget.fits(4, 6));
    /// assert!(!budget.fits(4, 7));
    /// assert!(budget.fits(0, 1000)); // alone
    /// assert!(!budget.fits(1000, 0)); // nothing joins an item over the budget
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub const fn fits(&self, used: usize, weight: usize) -> bool {
        used == 0
            || match used.checked_add(weight) {
                Some(total) => total <= self.limit,
                None => false,
            }
    }

    /// Whether a run of items weighing `weight` in all fits into a queue holding `used` as
    /// one: the total stays within the limit. No exception for an empty queue (that is for a
    /// single item): a run over the limit goes item by item.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::weight_budget::WeightBudget;
    ///
    /// let budget = WeightBudget::new(10)?;
    /// assert!(budget.fits_run(4, 6));
    /// assert!(!budget.fits_run(0, 11));
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub const fn fits_run(&self, used: usize, weight: usize) -> bool {
        match used.checked_add(weight) {
            Some(total) => total <= self.limit,
            None => false,
        }
    }

    /// Whether a queue holding `used` is at its limit (or over it, with a heavy item alone):
    /// only an item of weight zero could still fit, and only below the limit.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::weight_budget::WeightBudget;
    ///
    /// let budget = WeightBudget::new(10)?;
    /// assert!(!budget.is_full(9));
    /// assert!(budget.is_full(10));
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub const fn is_full(&self, used: usize) -> bool {
        used >= self.limit
    }

    /// The fill of a queue holding `used` in `len` items out of `capacity` slots, in weight
    /// units, for its water marks: the larger of `used` and `len`'s share of `capacity`
    /// scaled to the limit (rounded up, so a full ring is at the limit). A queue full by count
    /// is as full as one full by weight.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::weight_budget::WeightBudget;
    ///
    /// let budget = WeightBudget::new(1000)?;
    /// assert_eq!(budget.fill(700, 1, 100), 700); // heavy items: the weight counts
    /// assert_eq!(budget.fill(5, 90, 100), 900); // many light ones: the count does
    /// assert_eq!(budget.fill(0, 100, 100), 1000);
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub const fn fill(&self, used: usize, len: usize, capacity: usize) -> usize {
        if capacity == 0 {
            return used;
        }
        // u128: no overflow for any count and limit.
        let share = (len as u128 * self.limit as u128).div_ceil(capacity as u128);
        let share = if share > usize::MAX as u128 { usize::MAX } else { share as usize };
        if share > used { share } else { used }
    }

    /// What to do with an item of `weight` pushed into a queue holding `used` under `policy`:
    /// [`Admission::Admit`] if it [`fits`](Self::fits), else what the policy says.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::Overflow;
    /// use backflow_core::weight_budget::{Admission, WeightBudget};
    ///
    /// let budget = WeightBudget::new(10)?;
    /// assert_eq!(budget.admit(3, 7, Overflow::Fail), Admission::Admit);
    /// assert_eq!(budget.admit(3, 8, Overflow::Fail), Admission::Reject);
    /// assert_eq!(budget.admit(3, 8, Overflow::DropNewest), Admission::DropNewest);
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub const fn admit(&self, used: usize, weight: usize, policy: Overflow) -> Admission {
        if self.fits(used, weight) {
            return Admission::Admit;
        }
        match policy {
            Overflow::Block => Admission::Wait,
            Overflow::DropOldest => Admission::EvictOldest,
            Overflow::DropNewest => Admission::DropNewest,
            Overflow::Fail => Admission::Reject,
        }
    }
}

/// The weight a queue holds, shared by the threads that push and pop, applying a
/// [`WeightBudget`]: [`try_admit`](Self::try_admit) counts an item's weight if it fits,
/// [`release`](Self::release) takes it off when the item leaves the queue (by any path).
/// Needs compare-and-swap (not on `thumbv6m`).
///
/// The count orders no other memory: the queue publishes the items themselves, and a thread
/// that waits for weight to leave re-checks it under its own wake-up protocol.
///
/// # Examples
///
/// ```
/// use backflow_core::Overflow;
/// use backflow_core::weight_budget::{Admission, AtomicWeight, WeightBudget};
///
/// let weight = AtomicWeight::new(WeightBudget::new(100)?);
/// assert_eq!(weight.try_admit(70, Overflow::Block), Admission::Admit);
/// assert_eq!(weight.try_admit(40, Overflow::Block), Admission::Wait);
/// weight.release(70);
/// assert_eq!(weight.try_admit(40, Overflow::Block), Admission::Admit);
/// assert_eq!(weight.load(), 40);
/// # Ok::<(), backflow_core::ConfigError>(())
/// ```
#[cfg(target_has_atomic = "ptr")]
#[derive(Debug)]
pub struct AtomicWeight {
    budget: WeightBudget,
    used: AtomicUsize,
}

#[cfg(target_has_atomic = "ptr")]
impl AtomicWeight {
    const_fn! {
        /// An empty queue's weight under `budget`.
        ///
        /// # Examples
        ///
        /// ```
        /// use backflow_core::weight_budget::{AtomicWeight, WeightBudget};
        ///
        /// assert_eq!(AtomicWeight::new(WeightBudget::new(8)?).load(), 0);
        /// # Ok::<(), backflow_core::ConfigError>(())
        /// ```
        pub fn new(budget: WeightBudget) -> Self {
            Self { budget, used: AtomicUsize::new(0) }
        }
    }

    /// The budget it applies.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::weight_budget::{AtomicWeight, WeightBudget};
    ///
    /// let budget = WeightBudget::new(8)?;
    /// assert_eq!(AtomicWeight::new(budget).budget(), budget);
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub fn budget(&self) -> WeightBudget {
        self.budget
    }

    /// The weight counted now.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::Overflow;
    /// use backflow_core::weight_budget::{AtomicWeight, WeightBudget};
    ///
    /// let weight = AtomicWeight::new(WeightBudget::new(8)?);
    /// weight.try_admit(3, Overflow::Block);
    /// assert_eq!(weight.load(), 3);
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub fn load(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Counts `weight` if an item of that weight fits ([`WeightBudget::fits`]) and returns
    /// [`Admission::Admit`]; otherwise counts nothing and returns what `policy` says to do
    /// ([`WeightBudget::admit`]). Whoever is admitted must [`release`](Self::release) the
    /// weight exactly once, when the item leaves the queue or is not queued after all.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::Overflow;
    /// use backflow_core::weight_budget::{Admission, AtomicWeight, WeightBudget};
    ///
    /// let weight = AtomicWeight::new(WeightBudget::new(10)?);
    /// assert_eq!(weight.try_admit(25, Overflow::DropNewest), Admission::Admit); // alone
    /// assert_eq!(weight.try_admit(1, Overflow::DropNewest), Admission::DropNewest);
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub fn try_admit(&self, weight: usize, policy: Overflow) -> Admission {
        let backoff = Backoff::new();
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let admission = self.budget.admit(used, weight, policy);
            if admission != Admission::Admit {
                return admission;
            }
            // `fits` checked that the sum does not overflow.
            let total = used + weight;
            match self.used.compare_exchange_weak(used, total, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Admission::Admit,
                Err(now) => {
                    used = now;
                    backoff.spin();
                }
            }
        }
    }

    /// Counts `weight`, the total of a run of items pushed at once, if it
    /// [`fits_run`](WeightBudget::fits_run); returns whether it did. Whoever is admitted
    /// releases each item's weight as for [`try_admit`](Self::try_admit).
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::weight_budget::{AtomicWeight, WeightBudget};
    ///
    /// let weight = AtomicWeight::new(WeightBudget::new(10)?);
    /// assert!(weight.try_admit_run(7));
    /// assert!(!weight.try_admit_run(4));
    /// assert_eq!(weight.load(), 7);
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub fn try_admit_run(&self, weight: usize) -> bool {
        let budget = self.budget;
        let admitted = self.used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
            budget.fits_run(used, weight).then(|| used + weight)
        });
        admitted.is_ok()
    }

    /// Takes off the weight of an item that left the queue (or was admitted and then not
    /// queued).
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::Overflow;
    /// use backflow_core::weight_budget::{AtomicWeight, WeightBudget};
    ///
    /// let weight = AtomicWeight::new(WeightBudget::new(8)?);
    /// weight.try_admit(5, Overflow::Block);
    /// weight.release(5);
    /// assert_eq!(weight.load(), 0);
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub fn release(&self, weight: usize) {
        let before = self.used.fetch_sub(weight, Ordering::Relaxed);
        debug_assert!(before >= weight, "released {weight} of a weight of {before}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_limit_is_an_error_naming_the_field() {
        let error = ConfigError::Invalid { field: "weight_budget.limit", expected: "at least 1" };
        assert_eq!(WeightBudget::new(0), Err(error));
        let marks = WaterMarks::for_capacity(10).unwrap();
        assert_eq!(WeightBudget::with_marks(0, marks), Err(error));
    }

    #[test]
    fn a_tiny_budget_still_has_distinct_marks() {
        let marks = WeightBudget::new(1).unwrap().marks();
        assert_eq!((marks.high(), marks.low()), (1, 0));
    }

    #[test]
    fn fits_up_to_the_limit_and_never_overflows() {
        let budget = WeightBudget::new(10).unwrap();
        assert!(budget.fits(0, 0) && budget.fits(0, 10) && budget.fits(0, usize::MAX));
        assert!(budget.fits(10, 0) && budget.fits(9, 1));
        assert!(!budget.fits(9, 2) && !budget.fits(11, 0) && !budget.fits(1, usize::MAX));
    }

    #[test]
    fn each_policy_answers_an_item_that_does_not_fit() {
        let budget = WeightBudget::new(10).unwrap();
        let answers = [
            (Overflow::Block, Admission::Wait),
            (Overflow::DropOldest, Admission::EvictOldest),
            (Overflow::DropNewest, Admission::DropNewest),
            (Overflow::Fail, Admission::Reject),
        ];
        for (policy, answer) in answers {
            assert_eq!(budget.admit(5, 6, policy), answer, "{policy:?}");
            assert_eq!(budget.admit(5, 5, policy), Admission::Admit, "{policy:?}");
            assert_eq!(budget.admit(0, 50, policy), Admission::Admit, "{policy:?}");
        }
    }

    #[test]
    fn the_fill_is_the_nearer_bound() {
        let budget = WeightBudget::new(100).unwrap();
        assert_eq!(budget.fill(0, 0, 4), 0);
        assert_eq!(budget.fill(0, 1, 3), 34); // rounded up
        assert_eq!(budget.fill(0, 3, 3), 100);
        assert_eq!(budget.fill(250, 1, 3), 250); // a heavy item alone
        assert_eq!(budget.fill(7, 0, 0), 7);
        let huge = WeightBudget::new(usize::MAX).unwrap();
        assert_eq!(huge.fill(0, usize::MAX, usize::MAX), usize::MAX);
    }

    #[cfg(target_has_atomic = "ptr")]
    #[test]
    fn an_item_heavier_than_the_budget_goes_in_alone() {
        let weight = AtomicWeight::new(WeightBudget::new(10).unwrap());
        assert_eq!(weight.try_admit(1, Overflow::Block), Admission::Admit);
        assert_eq!(weight.try_admit(30, Overflow::Block), Admission::Wait);
        weight.release(1);
        assert_eq!(weight.try_admit(30, Overflow::Block), Admission::Admit);
        assert_eq!(weight.try_admit(0, Overflow::Block), Admission::Wait);
        weight.release(30);
        assert_eq!(weight.load(), 0);
    }
}
