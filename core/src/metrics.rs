//! Lock-free metrics primitives: [`Counter`] and a log-linear latency [`Histogram`].
//!
//! Both record with one relaxed atomic add, never lock and never allocate, so workers can
//! record every item. They need 64-bit atomics and are compiled only where the target has
//! them (not on Cortex-M).
//!
//! # The histogram's error
//!
//! Values below 32 have a bucket each. Above, every power of two `[2ᵉ, 2ᵉ⁺¹)` is split into 32
//! equal buckets of width `w = 2ᵉ⁻⁵`, and a quantile is reported as the middle of its bucket.
//! A value `v` in bucket `[low, low + w)` has `low ≥ 32w`, so the reported value is off by at
//! most `w / 2 ≤ v / 64`: **relative error ≤ 1/64 ≈ 1.6 %**, over the whole `u64` range, in
//! 1 920 buckets (15 KiB). The maximum is tracked exactly.
//!
//! # Examples
//!
//! ```
//! use backflow_core::metrics::Histogram;
//!
//! let latency = Histogram::new();
//! for ns in 1..=1000 {
//!     latency.record(ns);
//! }
//! let snapshot = latency.snapshot();
//! let p99 = snapshot.quantile(0.99);
//! assert!(p99.abs_diff(990) <= 990 / 64);
//! assert_eq!(snapshot.max(), 1000);
//! ```

use core::fmt;

use crate::sync::{AtomicU64, Ordering};

/// A monotonically increasing count, updated with relaxed atomics.
///
/// Several counters written by different threads should not share a cache line: wrap hot ones
/// in `crossbeam_utils::CachePadded`.
///
/// # Examples
///
/// ```
/// use backflow_core::metrics::Counter;
///
/// static RECEIVED: Counter = Counter::new();
/// RECEIVED.add(2);
/// RECEIVED.increment();
/// assert_eq!(RECEIVED.get(), 3);
/// ```
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// A counter at zero.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(backflow_core::metrics::Counter::new().get(), 0);
    /// ```
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    /// Adds one.
    ///
    /// # Examples
    ///
    /// ```
    /// let c = backflow_core::metrics::Counter::new();
    /// c.increment();
    /// assert_eq!(c.get(), 1);
    /// ```
    #[inline]
    pub fn increment(&self) {
        self.add(1);
    }

    /// Adds `n` (wrapping at `u64::MAX`).
    ///
    /// # Examples
    ///
    /// ```
    /// let c = backflow_core::metrics::Counter::new();
    /// c.add(5);
    /// assert_eq!(c.get(), 5);
    /// ```
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current count.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(backflow_core::metrics::Counter::new().get(), 0);
    /// ```
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Sub-buckets per power of two, as a power of two.
const SUB_BITS: u32 = 5;
/// Sub-buckets per power of two.
const SUB: usize = 1 << SUB_BITS;
/// Buckets covering all of `u64`: one per value below `SUB`, then `SUB` per power of two.
pub const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB;

/// The bucket holding `value`.
const fn bucket_of(value: u64) -> usize {
    if value < SUB as u64 {
        return value as usize;
    }
    let exponent = 63 - value.leading_zeros();
    let shift = exponent - SUB_BITS;
    let mantissa = (value >> shift) as usize - SUB;
    (shift as usize + 1) * SUB + mantissa
}

/// The lowest value in bucket `index`, and the bucket's width.
const fn bucket_bounds(index: usize) -> (u64, u64) {
    if index < SUB {
        return (index as u64, 1);
    }
    let shift = (index / SUB - 1) as u32;
    let mantissa = (index % SUB) as u64;
    ((SUB as u64 + mantissa) << shift, 1 << shift)
}

/// A fixed-memory log-linear histogram of `u64` values (typically nanoseconds); see the
/// [module docs](self) for its error bound.
///
/// # Examples
///
/// ```
/// use backflow_core::metrics::Histogram;
///
/// let h = Histogram::new();
/// h.record(1_500);
/// assert_eq!(h.snapshot().count(), 1);
/// ```
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    max: AtomicU64,
    sum: AtomicU64,
}

impl Histogram {
    /// An empty histogram. `const`, so it can be a `static`.
    ///
    /// # Examples
    ///
    /// ```
    /// static LATENCY: backflow_core::metrics::Histogram = backflow_core::metrics::Histogram::new();
    /// LATENCY.record(10);
    /// ```
    pub const fn new() -> Self {
        Self {
            buckets: [const { AtomicU64::new(0) }; BUCKETS],
            max: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    /// Records one value: lock-free, allocation-free.
    ///
    /// # Examples
    ///
    /// ```
    /// let h = backflow_core::metrics::Histogram::new();
    /// h.record(42);
    /// assert_eq!(h.snapshot().max(), 42);
    /// ```
    #[inline]
    pub fn record(&self, value: u64) {
        self.buckets[bucket_of(value)].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(value, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// Copies the current counts. Each bucket is read atomically; values recorded while the
    /// copy is taken may or may not be in it.
    ///
    /// # Examples
    ///
    /// ```
    /// let h = backflow_core::metrics::Histogram::new();
    /// h.record(3);
    /// h.record(5);
    /// assert_eq!(h.snapshot().count(), 2);
    /// ```
    pub fn snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot::new();
        for (copy, bucket) in snapshot.buckets.iter_mut().zip(&self.buckets) {
            *copy = bucket.load(Ordering::Relaxed);
            snapshot.count += *copy;
        }
        snapshot.max = self.max.load(Ordering::Relaxed);
        snapshot.sum = self.sum.load(Ordering::Relaxed);
        snapshot
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Histogram").finish_non_exhaustive()
    }
}

/// A point-in-time copy of a [`Histogram`]: quantiles, count, max, mean; mergeable.
///
/// # Examples
///
/// ```
/// use backflow_core::metrics::{Histogram, Snapshot};
///
/// let (a, b) = (Histogram::new(), Histogram::new());
/// a.record(10);
/// b.record(1_000);
/// let mut both = Snapshot::new();
/// both.merge(&a.snapshot());
/// both.merge(&b.snapshot());
/// assert_eq!((both.count(), both.max()), (2, 1_000));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Snapshot {
    buckets: [u64; BUCKETS],
    count: u64,
    max: u64,
    sum: u64,
}

/// The quantiles a stage reports.
///
/// # Examples
///
/// ```
/// let h = backflow_core::metrics::Histogram::new();
/// h.record(7);
/// let p = h.snapshot().percentiles();
/// assert_eq!((p.p50, p.max), (7, 7));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Percentiles {
    /// Median.
    pub p50: u64,
    /// 95th percentile.
    pub p95: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest value recorded (exact).
    pub max: u64,
}

impl Snapshot {
    /// An empty snapshot, to merge others into.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(backflow_core::metrics::Snapshot::new().count(), 0);
    /// ```
    pub const fn new() -> Self {
        Self { buckets: [0; BUCKETS], count: 0, max: 0, sum: 0 }
    }

    /// Adds `other`'s values to this snapshot.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::metrics::{Histogram, Snapshot};
    ///
    /// let h = Histogram::new();
    /// h.record(1);
    /// let mut total = Snapshot::new();
    /// total.merge(&h.snapshot());
    /// total.merge(&h.snapshot());
    /// assert_eq!(total.count(), 2);
    /// ```
    pub fn merge(&mut self, other: &Self) {
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
        self.count += other.count;
        self.max = self.max.max(other.max);
        self.sum = self.sum.wrapping_add(other.sum);
    }

    /// Values recorded.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(backflow_core::metrics::Snapshot::new().count(), 0);
    /// ```
    pub const fn count(&self) -> u64 {
        self.count
    }

    /// The largest value recorded (0 when empty).
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(backflow_core::metrics::Snapshot::new().max(), 0);
    /// ```
    pub const fn max(&self) -> u64 {
        self.max
    }

    /// The mean value (0 when empty).
    ///
    /// # Examples
    ///
    /// ```
    /// let h = backflow_core::metrics::Histogram::new();
    /// h.record(2);
    /// h.record(4);
    /// assert_eq!(h.snapshot().mean(), 3);
    /// ```
    pub const fn mean(&self) -> u64 {
        match self.sum.checked_div(self.count) {
            Some(mean) => mean,
            None => 0,
        }
    }

    /// The value at quantile `q` (0.0–1.0, clamped), within 1/64 of the true value; 0 when
    /// empty.
    ///
    /// # Examples
    ///
    /// ```
    /// let h = backflow_core::metrics::Histogram::new();
    /// (1..=100).for_each(|v| h.record(v));
    /// assert_eq!(h.snapshot().quantile(0.5), 50);
    /// ```
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
        // The rank of the wanted value, 1-based: ceil(q * count), at least 1.
        let scaled = q * self.count as f64;
        let mut rank = scaled as u64;
        if (rank as f64) < scaled {
            rank += 1;
        }
        let rank = rank.clamp(1, self.count);
        let mut seen = 0;
        for (index, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let (low, width) = bucket_bounds(index);
                return (low + width / 2).min(self.max);
            }
        }
        self.max
    }

    /// p50, p95, p99 and max.
    ///
    /// # Examples
    ///
    /// ```
    /// let h = backflow_core::metrics::Histogram::new();
    /// h.record(100);
    /// assert_eq!(h.snapshot().percentiles().p99, 100);
    /// ```
    pub fn percentiles(&self) -> Percentiles {
        Percentiles {
            p50: self.quantile(0.50),
            p95: self.quantile(0.95),
            p99: self.quantile(0.99),
            max: self.max,
        }
    }
}

impl Default for Snapshot {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("count", &self.count)
            .field("percentiles", &self.percentiles())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_u64_in_order() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(31), 31);
        assert_eq!(bucket_of(32), 32);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        let mut previous = 0;
        for exponent in 0..64 {
            for value in [1u64 << exponent, (1u64 << exponent) | ((1u64 << exponent) - 1)] {
                let index = bucket_of(value);
                assert!(index >= previous);
                let (low, width) = bucket_bounds(index);
                assert!(low <= value && value - low < width, "{value} in bucket {index}");
                previous = index;
            }
        }
    }
}
