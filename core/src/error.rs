//! [`ConfigError`]: a setting that cannot work, named by field.

use core::fmt;

/// A configuration value that cannot work, naming the field at fault. Constructors return it
/// instead of panicking, so bad user input never brings a program down.
///
/// # Examples
///
/// ```
/// use backflow_core::{ConfigError, WaterMarks};
///
/// let err = WaterMarks::from_counts(100, 40, 60).unwrap_err();
/// assert_eq!(err, ConfigError::LowNotBelowHigh { low: 60, high: 40 });
/// assert_eq!(err.to_string(), "water marks: low mark 60 must be below high mark 40");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A capacity of zero: nothing could ever be queued.
    ZeroCapacity,
    /// The low water mark is not below the high one, so pressure could never turn off.
    LowNotBelowHigh {
        /// The low mark given.
        low: usize,
        /// The high mark given.
        high: usize,
    },
    /// The high water mark exceeds the capacity, so pressure could never turn on.
    HighAboveCapacity {
        /// The high mark given.
        high: usize,
        /// The capacity it was checked against.
        capacity: usize,
    },
    /// A field outside the values it accepts.
    Invalid {
        /// The field, e.g. `"breaker.threshold_percent"`.
        field: &'static str,
        /// What the field accepts, e.g. `"between 1 and 100"`.
        expected: &'static str,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroCapacity => f.write_str("capacity must be at least 1"),
            Self::LowNotBelowHigh { low, high } => {
                write!(f, "water marks: low mark {low} must be below high mark {high}")
            }
            Self::HighAboveCapacity { high, capacity } => {
                write!(f, "water marks: high mark {high} exceeds the capacity {capacity}")
            }
            Self::Invalid { field, expected } => write!(f, "`{field}` must be {expected}"),
        }
    }
}

impl core::error::Error for ConfigError {}
