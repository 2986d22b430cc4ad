//! [`TokenBucket`]: a rate limit with bursts, with time passed in.
//!
//! Tokens refill continuously at `rate` per second up to `burst`; each admitted item takes one.
//! Over any interval of length `t` starting from a full bucket, at most `burst + rate · t`
//! items are admitted. Time is whatever monotonic clock the caller reads, as a [`Duration`]
//! since an arbitrary start, so the bucket runs on bare metal and in tests without a clock.
//!
//! # Examples
//!
//! ```
//! use backflow_core::TokenBucket;
//! use core::time::Duration;
//!
//! let mut bucket = TokenBucket::new(100, 10, Duration::ZERO)?; // 100/s, bursts of 10
//! for _ in 0..10 {
//!     assert!(bucket.try_acquire(Duration::ZERO).is_ok());
//! }
//! // Empty: the next token arrives after 1/100 s.
//! assert_eq!(bucket.try_acquire(Duration::ZERO), Err(Duration::from_millis(10)));
//! assert!(bucket.try_acquire(Duration::from_millis(10)).is_ok());
//! # Ok::<(), backflow_core::ConfigError>(())
//! ```

use core::time::Duration;

use crate::ConfigError;

/// Nano-tokens per token: the bucket counts in billionths so that refills at any rate are
/// exact for whole nanoseconds.
const SCALE: u128 = 1_000_000_000;

/// A token bucket; see the [module docs](self).
///
/// # Examples
///
/// ```
/// use backflow_core::TokenBucket;
/// use core::time::Duration;
///
/// let bucket = TokenBucket::new(5, 2, Duration::ZERO)?;
/// assert_eq!(bucket.available(), 2);
/// # Ok::<(), backflow_core::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBucket {
    rate: u64,
    burst: u64,
    /// Tokens held, times [`SCALE`].
    nanotokens: u128,
    last: Duration,
}

impl TokenBucket {
    /// A full bucket refilling at `rate` tokens per second, holding at most `burst`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming `token_bucket.rate` or `token_bucket.burst` when either
    /// is zero.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::{ConfigError, TokenBucket};
    /// use core::time::Duration;
    ///
    /// assert!(matches!(
    ///     TokenBucket::new(0, 1, Duration::ZERO),
    ///     Err(ConfigError::Invalid { field: "token_bucket.rate", .. })
    /// ));
    /// ```
    pub const fn new(rate: u64, burst: u64, now: Duration) -> Result<Self, ConfigError> {
        if rate == 0 {
            return Err(ConfigError::Invalid {
                field: "token_bucket.rate",
                expected: "at least 1",
            });
        }
        if burst == 0 {
            return Err(ConfigError::Invalid {
                field: "token_bucket.burst",
                expected: "at least 1",
            });
        }
        Ok(Self { rate, burst, nanotokens: burst as u128 * SCALE, last: now })
    }

    /// Takes one token if there is one.
    ///
    /// # Errors
    ///
    /// The time until the next token, when the bucket is empty.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::TokenBucket;
    /// use core::time::Duration;
    ///
    /// let mut bucket = TokenBucket::new(2, 1, Duration::ZERO)?;
    /// assert!(bucket.try_acquire(Duration::ZERO).is_ok());
    /// assert_eq!(bucket.try_acquire(Duration::ZERO), Err(Duration::from_millis(500)));
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub fn try_acquire(&mut self, now: Duration) -> Result<(), Duration> {
        self.refill(now);
        if self.nanotokens >= SCALE {
            self.nanotokens -= SCALE;
            Ok(())
        } else {
            let missing = SCALE - self.nanotokens;
            let nanos = missing.div_ceil(u128::from(self.rate));
            Err(Duration::from_nanos(nanos as u64))
        }
    }

    /// Whole tokens available as of the last call.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::TokenBucket;
    /// use core::time::Duration;
    ///
    /// let mut bucket = TokenBucket::new(1, 3, Duration::ZERO)?;
    /// bucket.try_acquire(Duration::ZERO).unwrap();
    /// assert_eq!(bucket.available(), 2);
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub const fn available(&self) -> u64 {
        (self.nanotokens / SCALE) as u64
    }

    /// Adds the tokens earned since the last call, up to the burst. Time that goes backwards
    /// earns nothing.
    fn refill(&mut self, now: Duration) {
        let Some(elapsed) = now.checked_sub(self.last) else { return };
        self.last = now;
        let earned = elapsed.as_nanos().saturating_mul(u128::from(self.rate));
        let full = u128::from(self.burst) * SCALE;
        self.nanotokens = self.nanotokens.saturating_add(earned).min(full);
    }
}
