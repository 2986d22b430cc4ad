//! How a stage that runs a closure elsewhere (on a thread pool, as a future) turns each result
//! into outputs: [`Expand`], with the three usual shapes [`Map`], [`FilterMap`] and
//! [`FlatMap`]. The adapters' stages (`backflow-rayon`'s `par_map`, `backflow-tokio`'s
//! `map_async` and their kin) are generic over it, so one stage type serves every shape.
//!
//! # Examples
//!
//! ```
//! use backflow_core::stage::expand::{Expand, FilterMap, FlatMap, Map};
//!
//! let mut out = Vec::new();
//! Map::expand(1, &mut |x| out.push(x));
//! FilterMap::expand(None, &mut |x| out.push(x));
//! FilterMap::expand(Some(2), &mut |x| out.push(x));
//! FlatMap::expand([3, 4], &mut |x| out.push(x));
//! assert_eq!(out, [1, 2, 3, 4]);
//! ```

use super::Emit;

/// How a stage turns what its closure returns into outputs.
///
/// # Examples
///
/// ```
/// use backflow_core::stage::expand::{Expand, FlatMap};
///
/// let mut out = Vec::new();
/// FlatMap::expand(vec![1, 2], &mut |x| out.push(x));
/// assert_eq!(out, [1, 2]);
/// ```
pub trait Expand<R> {
    /// The stage's output type.
    type Out;

    /// Emits the outputs of one result.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::stage::expand::{Expand, FilterMap};
    ///
    /// let mut out = Vec::new();
    /// FilterMap::expand(Some(3), &mut |x| out.push(x));
    /// FilterMap::expand(None, &mut |x| out.push(x));
    /// assert_eq!(out, [3]);
    /// ```
    fn expand(result: R, out: &mut impl Emit<Self::Out>);
}

/// One output per result.
///
/// # Examples
///
/// ```
/// use backflow_core::stage::expand::{Expand, Map};
///
/// let mut out = Vec::new();
/// Map::expand("a", &mut |x| out.push(x));
/// assert_eq!(out, ["a"]);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Map;

/// An output for each `Some`.
///
/// # Examples
///
/// ```
/// use backflow_core::stage::expand::{Expand, FilterMap};
///
/// let mut out = Vec::new();
/// FilterMap::expand(Some(1), &mut |x| out.push(x));
/// FilterMap::expand(None::<u8>, &mut |x| out.push(x));
/// assert_eq!(out, [1]);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct FilterMap;

/// Every item the result (an iterable) yields.
///
/// # Examples
///
/// ```
/// use backflow_core::stage::expand::{Expand, FlatMap};
///
/// let mut out = Vec::new();
/// FlatMap::expand(1..=3, &mut |x| out.push(x));
/// assert_eq!(out, [1, 2, 3]);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct FlatMap;

impl<R> Expand<R> for Map {
    type Out = R;

    #[inline]
    fn expand(result: R, out: &mut impl Emit<R>) {
        out.emit(result);
    }
}

impl<T> Expand<Option<T>> for FilterMap {
    type Out = T;

    #[inline]
    fn expand(result: Option<T>, out: &mut impl Emit<T>) {
        if let Some(item) = result {
            out.emit(item);
        }
    }
}

impl<I: IntoIterator> Expand<I> for FlatMap {
    type Out = I::Item;

    #[inline]
    fn expand(result: I, out: &mut impl Emit<I::Item>) {
        result.into_iter().for_each(|item| out.emit(item));
    }
}
