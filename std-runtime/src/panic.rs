//! [`panic_message`]: what a caught panic says; and [`Caught`], a value of the user's whose
//! drop is caught.

use std::any::Any;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// The message of a caught panic's payload: the `&str` or `String` that `panic!` was given,
/// or `(not a string)` for any other payload. The runtime reports every panic it catches
/// (a stage's, a hook's, a sink's) with it, and so do adapters that catch their own.
///
/// # Examples
///
/// ```
/// let payload = std::panic::catch_unwind(|| panic!("odd: {}", 3)).unwrap_err();
/// assert_eq!(backflow::stage::panic_message(&*payload), "odd: 3");
/// ```
#[must_use]
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(not a string)".to_string())
}

/// A value of the user's (a stage's error) that the runtime holds and drops: its drop is the
/// user's code, and may panic, while the item it came with is being counted. Dropped in a
/// catch, a panic there is dropped with it: the item stays counted as it was.
pub(crate) struct Caught<T>(Option<T>);

impl<T> Caught<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(Some(value))
    }
}

impl<T: fmt::Display> fmt::Display for Caught<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(value) => value.fmt(f),
            None => Ok(()),
        }
    }
}

impl<T> Drop for Caught<T> {
    fn drop(&mut self) {
        if let Some(value) = self.0.take() {
            let _ = catch_unwind(AssertUnwindSafe(|| drop(value)));
        }
    }
}
