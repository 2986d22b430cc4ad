//! [`panic_message`]: what a caught panic says.

use std::any::Any;

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
