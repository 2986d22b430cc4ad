//! [`CircuitBreaker`]: stop calling a stage that keeps failing, try again after a cooldown.
//!
//! - **Closed** (normal): outcomes are counted in windows of [`BreakerConfig::window`]. When a
//!   window holds at least [`BreakerConfig::min_samples`] outcomes and more than
//!   [`BreakerConfig::threshold_percent`] of them are failures, the breaker opens.
//! - **Open**: nothing is allowed through (the runtime pauses the stage and lets items wait
//!   upstream; none is dropped). After [`BreakerConfig::cooldown`], it turns half-open.
//! - **HalfOpen**: trial items go through. [`BreakerConfig::trial_successes`] successes in a
//!   row close it; one failure opens it again.
//!
//! Time is passed in as a [`Duration`] since an arbitrary start, so the breaker needs no clock.
//!
//! # Examples
//!
//! ```
//! use backflow_core::breaker::{BreakerConfig, BreakerState, BreakerTransition, CircuitBreaker};
//! use core::time::Duration;
//!
//! let config = BreakerConfig { min_samples: 4, trial_successes: 1, ..BreakerConfig::default() };
//! let mut breaker = CircuitBreaker::new(config)?;
//! let t = Duration::from_millis(1);
//! breaker.on_success(t);
//! breaker.on_success(t);
//! breaker.on_success(t);
//! assert_eq!(breaker.on_failure(t), Some(BreakerTransition::Opened)); // 25 % > 20 %
//! assert!(!breaker.allows());
//! let later = t + config.cooldown;
//! assert_eq!(breaker.poll(later), Some(BreakerTransition::HalfOpened));
//! assert_eq!(breaker.on_success(later), Some(BreakerTransition::Closed));
//! assert_eq!(breaker.state(), BreakerState::Closed);
//! # Ok::<(), backflow_core::ConfigError>(())
//! ```

use core::time::Duration;

use crate::ConfigError;

/// Settings of a [`CircuitBreaker`].
///
/// # Examples
///
/// ```
/// let config = backflow_core::breaker::BreakerConfig::default();
/// assert_eq!(config.threshold_percent, 20);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Open when more than this share of a window's outcomes failed (1–99; default 20).
    pub threshold_percent: u8,
    /// Length of a counting window (default 10 s).
    pub window: Duration,
    /// Outcomes a window needs before it can open the breaker (default 20).
    pub min_samples: u32,
    /// Time spent open before trying again (default 5 s).
    pub cooldown: Duration,
    /// Successes in a row, half-open, that close the breaker (default 3).
    pub trial_successes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            threshold_percent: 20,
            window: Duration::from_secs(10),
            min_samples: 20,
            cooldown: Duration::from_secs(5),
            trial_successes: 3,
        }
    }
}

impl BreakerConfig {
    /// Checks every field.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming the first field out of range.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::{ConfigError, breaker::BreakerConfig};
    ///
    /// let bad = BreakerConfig { threshold_percent: 0, ..BreakerConfig::default() };
    /// assert!(matches!(
    ///     bad.validate(),
    ///     Err(ConfigError::Invalid { field: "breaker.threshold_percent", .. })
    /// ));
    /// ```
    pub const fn validate(&self) -> Result<(), ConfigError> {
        // Opening takes more than the threshold's share failing: at 100 % it never would.
        let (field, expected) = if self.threshold_percent == 0 || self.threshold_percent > 99 {
            ("breaker.threshold_percent", "between 1 and 99")
        } else if self.window.is_zero() {
            ("breaker.window", "longer than zero")
        } else if self.min_samples == 0 {
            ("breaker.min_samples", "at least 1")
        } else if self.trial_successes == 0 {
            ("breaker.trial_successes", "at least 1")
        } else {
            return Ok(());
        };
        Err(ConfigError::Invalid { field, expected })
    }
}

/// Where a breaker stands.
///
/// # Examples
///
/// ```
/// use backflow_core::breaker::{BreakerConfig, BreakerState, CircuitBreaker};
///
/// let breaker = CircuitBreaker::new(BreakerConfig::default())?;
/// assert_eq!(breaker.state(), BreakerState::Closed);
/// # Ok::<(), backflow_core::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Normal operation.
    Closed,
    /// Failing: nothing allowed through until the cooldown ends.
    Open,
    /// Trying again with trial items.
    HalfOpen,
}

/// A change of [`BreakerState`], for events and stats.
///
/// # Examples
///
/// ```
/// use backflow_core::breaker::BreakerTransition;
///
/// assert_ne!(BreakerTransition::Opened, BreakerTransition::Closed);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerTransition {
    /// Closed or half-open → open.
    Opened,
    /// Open → half-open, after the cooldown.
    HalfOpened,
    /// Half-open → closed, after enough trial successes.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { window_start: Duration, successes: u32, failures: u32 },
    Open { since: Duration },
    HalfOpen { successes: u32 },
}

/// The breaker state machine; see the [module docs](self).
///
/// # Examples
///
/// ```
/// use backflow_core::breaker::{BreakerConfig, CircuitBreaker};
/// use core::time::Duration;
///
/// let mut breaker = CircuitBreaker::new(BreakerConfig::default())?;
/// assert_eq!(breaker.on_success(Duration::ZERO), None);
/// assert!(breaker.allows());
/// # Ok::<(), backflow_core::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    state: State,
}

impl CircuitBreaker {
    /// A closed breaker.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] from [`BreakerConfig::validate`].
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::breaker::{BreakerConfig, CircuitBreaker};
    ///
    /// let bad = BreakerConfig { min_samples: 0, ..BreakerConfig::default() };
    /// assert!(CircuitBreaker::new(bad).is_err());
    /// ```
    pub const fn new(config: BreakerConfig) -> Result<Self, ConfigError> {
        if let Err(e) = config.validate() {
            return Err(e);
        }
        Ok(Self {
            config,
            state: State::Closed { window_start: Duration::ZERO, successes: 0, failures: 0 },
        })
    }

    /// The current state.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::breaker::{BreakerConfig, BreakerState, CircuitBreaker};
    ///
    /// assert_eq!(CircuitBreaker::new(BreakerConfig::default())?.state(), BreakerState::Closed);
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub const fn state(&self) -> BreakerState {
        match self.state {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether items may go through now (closed or half-open). Call [`poll`](Self::poll) first
    /// so an open breaker whose cooldown has ended turns half-open.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::breaker::{BreakerConfig, CircuitBreaker};
    ///
    /// assert!(CircuitBreaker::new(BreakerConfig::default())?.allows());
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub const fn allows(&self) -> bool {
        !matches!(self.state, State::Open { .. })
    }

    /// Applies the passage of time: an open breaker whose cooldown has ended turns half-open.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::breaker::{BreakerConfig, CircuitBreaker};
    /// use core::time::Duration;
    ///
    /// let mut breaker = CircuitBreaker::new(BreakerConfig::default())?;
    /// assert_eq!(breaker.poll(Duration::from_secs(60)), None); // closed: nothing to do
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub fn poll(&mut self, now: Duration) -> Option<BreakerTransition> {
        match self.state {
            State::Open { since } if now.saturating_sub(since) >= self.config.cooldown => {
                self.state = State::HalfOpen { successes: 0 };
                Some(BreakerTransition::HalfOpened)
            }
            _ => None,
        }
    }

    /// Records a success at time `now`.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::breaker::{BreakerConfig, CircuitBreaker};
    /// use core::time::Duration;
    ///
    /// let mut breaker = CircuitBreaker::new(BreakerConfig::default())?;
    /// assert_eq!(breaker.on_success(Duration::ZERO), None);
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub fn on_success(&mut self, now: Duration) -> Option<BreakerTransition> {
        self.record(now, true)
    }

    /// Records a failure at time `now`.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::breaker::{BreakerConfig, BreakerTransition, CircuitBreaker};
    /// use core::time::Duration;
    ///
    /// let config = BreakerConfig { min_samples: 1, ..BreakerConfig::default() };
    /// let mut breaker = CircuitBreaker::new(config)?;
    /// assert_eq!(breaker.on_failure(Duration::ZERO), Some(BreakerTransition::Opened));
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub fn on_failure(&mut self, now: Duration) -> Option<BreakerTransition> {
        self.record(now, false)
    }

    fn record(&mut self, now: Duration, success: bool) -> Option<BreakerTransition> {
        match &mut self.state {
            State::Closed { window_start, successes, failures } => {
                if now.saturating_sub(*window_start) >= self.config.window {
                    // A new window: forget the old counts.
                    *window_start = now;
                    *successes = 0;
                    *failures = 0;
                }
                if success {
                    *successes = successes.saturating_add(1);
                } else {
                    *failures = failures.saturating_add(1);
                }
                let total = u64::from(*successes) + u64::from(*failures);
                let over =
                    u64::from(*failures) * 100 > u64::from(self.config.threshold_percent) * total;
                if total >= u64::from(self.config.min_samples) && over {
                    self.state = State::Open { since: now };
                    return Some(BreakerTransition::Opened);
                }
                None
            }
            // Outcomes of items that were already in flight when the breaker opened.
            State::Open { .. } => None,
            State::HalfOpen { successes } => {
                if !success {
                    self.state = State::Open { since: now };
                    return Some(BreakerTransition::Opened);
                }
                *successes += 1;
                if *successes >= self.config.trial_successes {
                    self.state = State::Closed { window_start: now, successes: 0, failures: 0 };
                    return Some(BreakerTransition::Closed);
                }
                None
            }
        }
    }
}
