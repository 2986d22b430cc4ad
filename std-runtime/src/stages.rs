//! The runtime's built-in stages: the ones that need the heap or a run-time size.
//!
//! [`batches`] groups items into `Vec`s of a size chosen at run time, [`flatten`] emits the
//! elements of each item (undoing `batches`), and [`aggregate`] folds items per key. The
//! stateful ones emit what they hold on [`Stage::flush`]: a pipeline flushes each stage at the
//! end of its stream, and also on a timer when the stage sets `Builder::flush_every`.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::convert::Infallible;
use std::fmt;
use std::hash::Hash;
use std::num::NonZeroUsize;

use backflow_core::stage::{Emit, Stage};

/// Groups items into `Vec`s of a size chosen at run time. See [`batches`].
///
/// # Examples
///
/// ```
/// use std::num::NonZeroUsize;
/// use backflow::stage::{self, Batches, Stage};
///
/// let mut singles: Batches<char> = stage::batches(NonZeroUsize::MIN);
/// let mut out = Vec::new();
/// singles.process('a', &mut |b| out.push(b)).unwrap();
/// assert_eq!(out, [vec!['a']]);
/// ```
#[derive(Debug, Clone)]
pub struct Batches<T> {
    size: NonZeroUsize,
    batch: Vec<T>,
}

/// A stage grouping items into `Vec`s of `size` items, each emitted as soon as it is full;
/// [`Stage::flush`] emits the last, partial batch (never an empty one).
///
/// A pipeline flushes each stage at the end of its stream. Set `Builder::flush_every` on the
/// stage to flush it on a timer as well: a batch then goes out when it is full or when the timer
/// fires, whichever comes first (batching by size or timeout).
///
/// Each batch is allocated with capacity `size` when its first item arrives, so it never grows
/// (unless the allocator refuses that much at once: it then grows with its items), and a
/// stage between batches holds no memory. For a size known at compile time and no heap,
/// see [`batch`](crate::stage::batch).
///
/// # Examples
///
/// ```
/// use std::num::NonZeroUsize;
/// use backflow::stage::{self, Stage};
///
/// let mut pairs = stage::batches(NonZeroUsize::new(2).unwrap());
/// let mut out = Vec::new();
/// for x in 1..=3 {
///     pairs.process(x, &mut |b| out.push(b)).unwrap();
/// }
/// assert_eq!(out, [vec![1, 2]]);
/// pairs.flush(&mut |b| out.push(b)).unwrap();
/// assert_eq!(out, [vec![1, 2], vec![3]]);
/// ```
///
/// In a pipeline, the last batch comes out when the pipeline drains:
///
/// ```
/// use std::num::NonZeroUsize;
/// use std::sync::{Arc, Mutex};
/// use backflow::{Pipeline, stage};
///
/// let batches = Arc::new(Mutex::new(Vec::new()));
/// let seen = Arc::clone(&batches);
/// let pipeline = Pipeline::<u32>::builder()
///     .stage("batch", || stage::batches(NonZeroUsize::new(2).unwrap()))
///     .sink(move |b: Vec<u32>| seen.lock().unwrap().push(b))
///     .build()?;
/// pipeline.input().push_iter(1..=5)?;
/// pipeline.drain()?;
/// assert_eq!(*batches.lock().unwrap(), [vec![1, 2], vec![3, 4], vec![5]]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub const fn batches<T>(size: NonZeroUsize) -> Batches<T> {
    Batches { size, batch: Vec::new() }
}

impl<T> Stage<T> for Batches<T> {
    type Out = Vec<T>;
    type Error = Infallible;

    fn process(&mut self, item: T, out: &mut impl Emit<Vec<T>>) -> Result<(), Infallible> {
        if self.batch.is_empty() {
            // A size the allocator refuses up front (a huge one) is not an abort: the batch
            // then grows with the items that actually arrive.
            let _ = self.batch.try_reserve_exact(self.size.get());
        }
        self.batch.push(item);
        if self.batch.len() == self.size.get() {
            out.emit(std::mem::take(&mut self.batch));
        }
        Ok(())
    }

    fn flush(&mut self, out: &mut impl Emit<Vec<T>>) -> Result<(), Infallible> {
        if !self.batch.is_empty() {
            out.emit(std::mem::take(&mut self.batch));
        }
        Ok(())
    }
}

/// Emits each element of each item. See [`flatten`].
///
/// # Examples
///
/// ```
/// use backflow::stage::{self, Flatten, Stage};
///
/// let mut flat: Flatten = stage::flatten();
/// let mut out = Vec::new();
/// flat.process(None::<u8>, &mut |x| out.push(x)).unwrap();
/// flat.process(Some(4), &mut |x| out.push(x)).unwrap();
/// assert_eq!(out, [4]);
/// ```
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Flatten;

/// A stage taking items that are `IntoIterator` (a `Vec`, an array, an `Option`…) and emitting
/// each of their elements, in order: the inverse of [`batches`].
///
/// # Examples
///
/// ```
/// use backflow::stage::{self, Stage};
///
/// let mut flat = stage::flatten();
/// let mut out = Vec::new();
/// for batch in [vec![1, 2], vec![], vec![3]] {
///     flat.process(batch, &mut |x| out.push(x)).unwrap();
/// }
/// assert_eq!(out, [1, 2, 3]);
/// ```
///
/// In a pipeline, after a stage that emits lists:
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use backflow::{Pipeline, stage};
///
/// let words = Arc::new(Mutex::new(Vec::new()));
/// let seen = Arc::clone(&words);
/// let pipeline = Pipeline::<&'static str>::builder()
///     .stage("split", || |line: &'static str| line.split_whitespace().collect::<Vec<_>>())
///     .stage("flatten", stage::flatten)
///     .sink(move |w| seen.lock().unwrap().push(w))
///     .build()?;
/// pipeline.input().push_iter(["to be", "or not"])?;
/// pipeline.drain()?;
/// assert_eq!(*words.lock().unwrap(), ["to", "be", "or", "not"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub const fn flatten() -> Flatten {
    Flatten
}

impl<I: IntoIterator> Stage<I> for Flatten {
    type Out = I::Item;
    type Error = Infallible;

    fn process(&mut self, item: I, out: &mut impl Emit<I::Item>) -> Result<(), Infallible> {
        item.into_iter().for_each(|x| out.emit(x));
        Ok(())
    }
}

/// Folds items into one accumulator per key, emitted on flush. See [`aggregate`].
///
/// # Examples
///
/// ```
/// use backflow::stage::{self, Stage};
///
/// let mut sums = stage::aggregate(|x: &u32| x % 2, || 0, |sum: &mut u32, x| *sum += x);
/// let mut out = Vec::new();
/// sums.process(3, &mut |_| unreachable!()).unwrap();
/// sums.flush(&mut |kv| out.push(kv)).unwrap();
/// // Flushing emptied it: nothing is left for the next flush.
/// sums.flush(&mut |kv| out.push(kv)).unwrap();
/// assert_eq!(out, [(1, 3)]);
/// ```
#[derive(Clone)]
pub struct Aggregate<K, Acc, KeyFn, InitFn, FoldFn> {
    key: KeyFn,
    init: InitFn,
    fold: FoldFn,
    /// Each key's index in `accs`, which is the order the keys were first seen: the indices are
    /// always exactly `0..accs.len()`.
    index: HashMap<K, usize>,
    accs: Vec<Acc>,
}

impl<K, Acc, KeyFn, InitFn, FoldFn> fmt::Debug for Aggregate<K, Acc, KeyFn, InitFn, FoldFn> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Aggregate").field("keys", &self.accs.len()).finish_non_exhaustive()
    }
}

/// A keyed fold: each item goes into the accumulator of its key, `key(&item)`, which starts as
/// `init()` the first time the key is seen; `fold(&mut acc, item)` adds the item. Processing
/// emits nothing; [`Stage::flush`] emits every `(key, accumulator)` in the order the keys were
/// first seen, then starts again with no keys (keeping its memory for the next window).
///
/// A pipeline flushes each stage at the end of its stream, which gives one total per key. Set
/// `Builder::flush_every` on the stage to flush it on a timer as well, and it emits a total per
/// key per period instead: a tumbling window.
///
/// Each worker has its own stage value, so with several workers each emits its own partial
/// total for a key: merge them downstream (in the sink, or in a one-worker stage).
///
/// # Examples
///
/// ```
/// use backflow::stage::{self, Stage};
///
/// let mut longest = stage::aggregate(
///     |word: &&str| word.chars().next(),
///     || 0,
///     |max, word: &str| *max = word.len().max(*max),
/// );
/// for word in ["bee", "ant", "bumblebee", "wasp"] {
///     longest.process(word, &mut |_| unreachable!()).unwrap();
/// }
/// let mut out = Vec::new();
/// longest.flush(&mut |kv| out.push(kv)).unwrap();
/// assert_eq!(out, [(Some('b'), 9), (Some('a'), 3), (Some('w'), 4)]);
/// ```
///
/// In a pipeline, counting words; the counts come out when the pipeline drains:
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use backflow::{Pipeline, stage};
///
/// let counts = Arc::new(Mutex::new(Vec::new()));
/// let seen = Arc::clone(&counts);
/// let pipeline = Pipeline::<&'static str>::builder()
///     .stage("count", || stage::aggregate(|w: &&str| *w, || 0, |n: &mut u32, _| *n += 1))
///     .sink(move |kv| seen.lock().unwrap().push(kv))
///     .build()?;
/// pipeline.input().push_iter(["to", "be", "or", "not", "to", "be"])?;
/// pipeline.drain()?;
/// assert_eq!(*counts.lock().unwrap(), [("to", 2), ("be", 2), ("or", 1), ("not", 1)]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn aggregate<In, K, Acc, KeyFn, InitFn, FoldFn>(
    key: KeyFn,
    init: InitFn,
    fold: FoldFn,
) -> Aggregate<K, Acc, KeyFn, InitFn, FoldFn>
where
    K: Hash + Eq,
    KeyFn: FnMut(&In) -> K,
    InitFn: FnMut() -> Acc,
    FoldFn: FnMut(&mut Acc, In),
{
    Aggregate { key, init, fold, index: HashMap::new(), accs: Vec::new() }
}

impl<In, K, Acc, KeyFn, InitFn, FoldFn> Stage<In> for Aggregate<K, Acc, KeyFn, InitFn, FoldFn>
where
    K: Hash + Eq,
    KeyFn: FnMut(&In) -> K,
    InitFn: FnMut() -> Acc,
    FoldFn: FnMut(&mut Acc, In),
{
    type Out = (K, Acc);
    type Error = Infallible;

    fn process(&mut self, item: In, _out: &mut impl Emit<(K, Acc)>) -> Result<(), Infallible> {
        let slot = match self.index.entry((self.key)(&item)) {
            Entry::Occupied(entry) => *entry.get(),
            Entry::Vacant(entry) => {
                self.accs.push((self.init)());
                *entry.insert(self.accs.len() - 1)
            }
        };
        (self.fold)(&mut self.accs[slot], item);
        Ok(())
    }

    fn flush(&mut self, out: &mut impl Emit<(K, Acc)>) -> Result<(), Infallible> {
        // The indices are exactly `0..accs.len()`: sorted, the keys line up with `accs`.
        let mut keys: Vec<(usize, K)> = self.index.drain().map(|(key, slot)| (slot, key)).collect();
        keys.sort_unstable_by_key(|&(slot, _)| slot);
        for ((_, key), acc) in keys.into_iter().zip(self.accs.drain(..)) {
            out.emit((key, acc));
        }
        Ok(())
    }
}
