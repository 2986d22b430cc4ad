//! [`RetrySchedule`]: exponential backoff with a cap and seeded jitter.
//!
//! The delay before retry `n` (1-based) is `initial · multiplierⁿ⁻¹`, capped at `max`. With
//! jitter, the delay is drawn uniformly from the upper half of that, `[d/2, d]`, by a small
//! generator seeded from the caller's seed and `n`: the same seed gives the same schedule, so
//! tests and replays are deterministic, and different seeds spread retries of many workers.
//!
//! # Examples
//!
//! ```
//! use backflow_core::RetrySchedule;
//! use core::time::Duration;
//!
//! let schedule = RetrySchedule::new(Duration::from_millis(10), Duration::from_millis(50), 4)?;
//! let delays: Vec<_> = (1..=5).map(|n| schedule.delay(n)).collect();
//! assert_eq!(
//!     delays,
//!     [10, 20, 40, 50].map(|ms| Some(Duration::from_millis(ms))).into_iter().chain([None]).collect::<Vec<_>>()
//! );
//! # Ok::<(), backflow_core::ConfigError>(())
//! ```

use core::time::Duration;

use crate::ConfigError;

/// A backoff schedule; see the [module docs](self).
///
/// # Examples
///
/// ```
/// use backflow_core::RetrySchedule;
/// use core::time::Duration;
///
/// let schedule = RetrySchedule::new(Duration::from_millis(1), Duration::from_secs(1), 3)?
///     .with_jitter(42);
/// let d = schedule.delay(2).unwrap();
/// assert!(d >= Duration::from_millis(1) && d <= Duration::from_millis(2));
/// assert_eq!(schedule.delay(2), Some(d)); // same seed, same delay
/// # Ok::<(), backflow_core::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySchedule {
    initial: Duration,
    max: Duration,
    multiplier: u32,
    max_attempts: u32,
    jitter_seed: Option<u64>,
}

impl RetrySchedule {
    /// Doubling delays from `initial`, capped at `max`, for at most `max_attempts` retries; no
    /// jitter.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming `retry.max` if `max < initial`.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::{ConfigError, RetrySchedule};
    /// use core::time::Duration;
    ///
    /// let err = RetrySchedule::new(Duration::from_secs(2), Duration::from_secs(1), 3);
    /// assert!(matches!(err, Err(ConfigError::Invalid { field: "retry.max", .. })));
    /// ```
    pub const fn new(
        initial: Duration,
        max: Duration,
        max_attempts: u32,
    ) -> Result<Self, ConfigError> {
        if max.as_nanos() < initial.as_nanos() {
            return Err(ConfigError::Invalid {
                field: "retry.max",
                expected: "at least the initial delay",
            });
        }
        Ok(Self { initial, max, multiplier: 2, max_attempts, jitter_seed: None })
    }

    /// Sets the growth factor between retries.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming `retry.multiplier` if it is zero.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::RetrySchedule;
    /// use core::time::Duration;
    ///
    /// let s = RetrySchedule::new(Duration::from_millis(1), Duration::from_secs(1), 3)?
    ///     .with_multiplier(10)?;
    /// assert_eq!(s.delay(3), Some(Duration::from_millis(100)));
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub const fn with_multiplier(mut self, multiplier: u32) -> Result<Self, ConfigError> {
        if multiplier == 0 {
            return Err(ConfigError::Invalid { field: "retry.multiplier", expected: "at least 1" });
        }
        self.multiplier = multiplier;
        Ok(self)
    }

    /// Draws each delay from `[d/2, d]` with a generator seeded by `seed`.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::RetrySchedule;
    /// use core::time::Duration;
    ///
    /// let base = RetrySchedule::new(Duration::from_millis(8), Duration::from_secs(1), 3)?;
    /// let d = base.with_jitter(7).delay(1).unwrap();
    /// assert!(d >= Duration::from_millis(4) && d <= Duration::from_millis(8));
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub const fn with_jitter(mut self, seed: u64) -> Self {
        self.jitter_seed = Some(seed);
        self
    }

    /// The most retries the schedule allows.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::RetrySchedule;
    /// use core::time::Duration;
    ///
    /// assert_eq!(RetrySchedule::new(Duration::ZERO, Duration::ZERO, 5)?.max_attempts(), 5);
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub const fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The delay before retry `attempt` (1 for the first retry), or `None` once the attempts
    /// are used up (and for `attempt == 0`).
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::RetrySchedule;
    /// use core::time::Duration;
    ///
    /// let s = RetrySchedule::new(Duration::from_millis(5), Duration::from_secs(1), 1)?;
    /// assert_eq!(s.delay(1), Some(Duration::from_millis(5)));
    /// assert_eq!(s.delay(2), None);
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub fn delay(&self, attempt: u32) -> Option<Duration> {
        if attempt == 0 || attempt > self.max_attempts {
            return None;
        }
        let max = self.max.as_nanos();
        let mut nanos = self.initial.as_nanos();
        for _ in 1..attempt {
            if nanos >= max {
                break;
            }
            nanos = nanos.saturating_mul(u128::from(self.multiplier));
        }
        let capped = nanos.min(max);
        let delay = match self.jitter_seed {
            None => capped,
            Some(seed) => {
                let half = capped / 2;
                let span = capped - half; // the upper half, [half, capped]
                let draw = u128::from(splitmix64(seed ^ u64::from(attempt)));
                half + draw % (span + 1)
            }
        };
        Some(duration_from_nanos(delay))
    }
}

/// SplitMix64: a tiny, well-mixed generator, enough to decorrelate retry delays.
const fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Nanoseconds (at most `max`, which came from a `Duration`) back to a `Duration`.
fn duration_from_nanos(nanos: u128) -> Duration {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    let secs = u64::try_from(nanos / NANOS_PER_SEC).unwrap_or(u64::MAX);
    Duration::new(secs, (nanos % NANOS_PER_SEC) as u32)
}
