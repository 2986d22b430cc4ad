//! High/low water marks and the pressure state machine that applies them with hysteresis.
//!
//! Pressure turns on when a queue's fill reaches the high mark and turns off only when it has
//! fallen to the low mark. Between the two marks nothing changes, so a queue hovering around
//! one mark does not flap: between any two transitions, the fill crossed the opposite mark.
//!
//! # Examples
//!
//! ```
//! use backflow_core::water_marks::{Pressure, Transition, WaterMarks};
//!
//! let mut pressure = Pressure::new(WaterMarks::for_capacity(10)?); // high 8, low 4
//! assert_eq!(pressure.observe(7), None);
//! assert_eq!(pressure.observe(8), Some(Transition::On));
//! assert_eq!(pressure.observe(5), None); // still on: not yet down to the low mark
//! assert_eq!(pressure.observe(4), Some(Transition::Off));
//! assert_eq!(pressure.transitions(), 2);
//! # Ok::<(), backflow_core::ConfigError>(())
//! ```

use crate::ConfigError;

/// Fill levels at which pressure turns on (`high`) and off (`low`), for a queue of known
/// capacity. Always valid: `low < high <= capacity`.
///
/// # Examples
///
/// ```
/// use backflow_core::WaterMarks;
///
/// let marks = WaterMarks::for_capacity(1024)?;
/// assert_eq!((marks.high(), marks.low()), (820, 409));
/// # Ok::<(), backflow_core::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaterMarks {
    high: usize,
    low: usize,
}

impl WaterMarks {
    /// The default high mark: 80 % of capacity.
    pub const DEFAULT_HIGH_PERCENT: u8 = 80;
    /// The default low mark: 40 % of capacity.
    pub const DEFAULT_LOW_PERCENT: u8 = 40;

    /// The default marks for `capacity`: high at 80 %, low at 40 % (see
    /// [`from_percent`](Self::from_percent) for the rounding).
    ///
    /// # Errors
    ///
    /// [`ConfigError::ZeroCapacity`] if `capacity` is zero.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::WaterMarks;
    ///
    /// let marks = WaterMarks::for_capacity(10)?;
    /// assert_eq!((marks.high(), marks.low()), (8, 4));
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub const fn for_capacity(capacity: usize) -> Result<Self, ConfigError> {
        Self::from_percent(capacity, Self::DEFAULT_HIGH_PERCENT, Self::DEFAULT_LOW_PERCENT)
    }

    /// Marks at percentages of `capacity`. The high mark rounds up and the low mark rounds
    /// down, so tiny queues still get distinct marks (capacity 1: high 1, low 0).
    ///
    /// # Errors
    ///
    /// [`ConfigError::ZeroCapacity`], [`ConfigError::Invalid`] for a percentage above 100, or
    /// [`ConfigError::LowNotBelowHigh`] when the marks meet.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::{ConfigError, WaterMarks};
    ///
    /// let marks = WaterMarks::from_percent(200, 90, 50)?;
    /// assert_eq!((marks.high(), marks.low()), (180, 100));
    /// assert!(matches!(WaterMarks::from_percent(200, 120, 50), Err(ConfigError::Invalid { .. })));
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub const fn from_percent(
        capacity: usize,
        high_percent: u8,
        low_percent: u8,
    ) -> Result<Self, ConfigError> {
        if capacity == 0 {
            return Err(ConfigError::ZeroCapacity);
        }
        if high_percent > 100 {
            return Err(ConfigError::Invalid {
                field: "water_marks.high_percent",
                expected: "at most 100",
            });
        }
        if low_percent > 100 {
            return Err(ConfigError::Invalid {
                field: "water_marks.low_percent",
                expected: "at most 100",
            });
        }
        // u128: no overflow for any capacity.
        let scaled_high = capacity as u128 * high_percent as u128;
        let high = scaled_high.div_ceil(100) as usize;
        let low = (capacity as u128 * low_percent as u128 / 100) as usize;
        Self::from_counts(capacity, high, low)
    }

    /// Marks at item counts.
    ///
    /// # Errors
    ///
    /// [`ConfigError::ZeroCapacity`], [`ConfigError::LowNotBelowHigh`] unless `low < high`, or
    /// [`ConfigError::HighAboveCapacity`] unless `high <= capacity`.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::{ConfigError, WaterMarks};
    ///
    /// assert_eq!(WaterMarks::from_counts(64, 48, 16)?.high(), 48);
    /// assert_eq!(
    ///     WaterMarks::from_counts(64, 65, 16),
    ///     Err(ConfigError::HighAboveCapacity { high: 65, capacity: 64 })
    /// );
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub const fn from_counts(
        capacity: usize,
        high: usize,
        low: usize,
    ) -> Result<Self, ConfigError> {
        if capacity == 0 {
            Err(ConfigError::ZeroCapacity)
        } else if low >= high {
            Err(ConfigError::LowNotBelowHigh { low, high })
        } else if high > capacity {
            Err(ConfigError::HighAboveCapacity { high, capacity })
        } else {
            Ok(Self { high, low })
        }
    }

    /// The fill at which pressure turns on.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(backflow_core::WaterMarks::for_capacity(100)?.high(), 80);
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub const fn high(&self) -> usize {
        self.high
    }

    /// The fill at or below which pressure turns off.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(backflow_core::WaterMarks::for_capacity(100)?.low(), 40);
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub const fn low(&self) -> usize {
        self.low
    }
}

/// A change of pressure reported by [`Pressure::observe`].
///
/// # Examples
///
/// ```
/// use backflow_core::water_marks::Transition;
///
/// assert_ne!(Transition::On, Transition::Off);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transition {
    /// The fill reached the high mark.
    On,
    /// The fill fell to the low mark.
    Off,
}

/// The pressure state of one queue: on or off, with hysteresis between the marks, and the
/// number of transitions so far.
///
/// # Examples
///
/// ```
/// use backflow_core::water_marks::{Pressure, WaterMarks};
///
/// let mut pressure = Pressure::new(WaterMarks::from_counts(4, 3, 1)?);
/// for fill in [1, 2, 3, 2, 3, 2, 1] {
///     pressure.observe(fill);
/// }
/// assert!(!pressure.is_on());
/// assert_eq!(pressure.transitions(), 2); // on at the first 3, off at the final 1
/// # Ok::<(), backflow_core::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pressure {
    marks: WaterMarks,
    on: bool,
    transitions: u64,
}

impl Pressure {
    /// Pressure off, no transitions yet.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::water_marks::{Pressure, WaterMarks};
    ///
    /// let pressure = Pressure::new(WaterMarks::for_capacity(8)?);
    /// assert!(!pressure.is_on());
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub const fn new(marks: WaterMarks) -> Self {
        Self { marks, on: false, transitions: 0 }
    }

    /// Feeds the current fill level; returns the transition it caused, if any.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::water_marks::{Pressure, Transition, WaterMarks};
    ///
    /// let mut pressure = Pressure::new(WaterMarks::from_counts(10, 8, 4)?);
    /// assert_eq!(pressure.observe(9), Some(Transition::On));
    /// assert_eq!(pressure.observe(9), None);
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub fn observe(&mut self, fill: usize) -> Option<Transition> {
        let transition = if !self.on && fill >= self.marks.high {
            Transition::On
        } else if self.on && fill <= self.marks.low {
            Transition::Off
        } else {
            return None;
        };
        self.on = transition == Transition::On;
        self.transitions += 1;
        Some(transition)
    }

    /// Whether pressure is on.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::water_marks::{Pressure, WaterMarks};
    ///
    /// let mut pressure = Pressure::new(WaterMarks::from_counts(2, 2, 0)?);
    /// pressure.observe(2);
    /// assert!(pressure.is_on());
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub const fn is_on(&self) -> bool {
        self.on
    }

    /// Transitions (on and off) so far.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::water_marks::{Pressure, WaterMarks};
    ///
    /// let mut pressure = Pressure::new(WaterMarks::from_counts(2, 2, 0)?);
    /// pressure.observe(2);
    /// pressure.observe(0);
    /// assert_eq!(pressure.transitions(), 2);
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub const fn transitions(&self) -> u64 {
        self.transitions
    }

    /// The marks in force.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::water_marks::{Pressure, WaterMarks};
    ///
    /// let marks = WaterMarks::for_capacity(8)?;
    /// assert_eq!(Pressure::new(marks).marks(), marks);
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub const fn marks(&self) -> WaterMarks {
        self.marks
    }
}
