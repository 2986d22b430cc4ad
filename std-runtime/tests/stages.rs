//! The runtime's built-in stages (`batches`, `flatten`, `aggregate`): each driven directly,
//! edge cases included, then inside a real pipeline, with two workers where that changes what
//! comes out.

use std::collections::HashMap;
use std::convert::Infallible;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use backflow::stage::{self, Stage};
use backflow::{Pipeline, Report};
use proptest::prelude::*;

fn size(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap()
}

/// Feeds `items` to `stage`, then flushes it: what it emitted while processing, and on flush.
fn run<In, S: Stage<In, Error = Infallible>>(
    stage: &mut S,
    items: impl IntoIterator<Item = In>,
) -> (Vec<S::Out>, Vec<S::Out>) {
    let (mut processed, mut flushed) = (Vec::new(), Vec::new());
    for item in items {
        stage.process(item, &mut |o| processed.push(o)).unwrap();
    }
    stage.flush(&mut |o| flushed.push(o)).unwrap();
    (processed, flushed)
}

/// A sink recording what it delivers, and the record.
fn recorder<T: Send + 'static>() -> (impl FnMut(T) + Send + 'static, Arc<Mutex<Vec<T>>>) {
    let delivered = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&delivered);
    (move |item| record.lock().unwrap().push(item), delivered)
}

fn assert_settled(report: &Report) {
    assert!(report.is_balanced(), "unbalanced report:\n{report}");
    assert_eq!(report.abandoned(), 0);
    for stage in report.stages() {
        assert_eq!(stage.panics, 0, "{}", stage.name);
    }
}

// ---- batches ----

#[test]
fn batches_emit_each_batch_once_full_and_the_rest_on_flush() {
    let mut threes = stage::batches(size(3));
    let (processed, flushed) = run(&mut threes, 1..=7);
    assert_eq!(processed, [vec![1, 2, 3], vec![4, 5, 6]]);
    assert_eq!(flushed, [vec![7]]);
    for batch in processed.iter().chain(&flushed) {
        assert_eq!(batch.capacity(), 3);
    }
}

#[test]
fn batches_flush_nothing_when_empty() {
    let mut threes = stage::batches::<u8>(size(3));
    assert_eq!(run(&mut threes, []), (vec![], vec![]));
    // Right after a full batch, and after a flush.
    assert_eq!(run(&mut threes, [1, 2, 3]), (vec![vec![1, 2, 3]], vec![]));
    assert_eq!(run(&mut threes, [4]), (vec![], vec![vec![4]]));
    assert_eq!(run(&mut threes, []), (vec![], vec![]));
}

#[test]
fn batches_of_one_emit_every_item_at_once() {
    let mut singles = stage::batches(NonZeroUsize::MIN);
    assert_eq!(run(&mut singles, ['a', 'b']), (vec![vec!['a'], vec!['b']], vec![]));
}

#[test]
fn batches_start_again_after_a_flush() {
    let mut pairs = stage::batches(size(2));
    assert_eq!(run(&mut pairs, [1]), (vec![], vec![vec![1]]));
    assert_eq!(run(&mut pairs, [2, 3, 4]), (vec![vec![2, 3]], vec![vec![4]]));
}

#[test]
fn batches_with_two_workers_deliver_every_item_once_and_at_most_one_partial_batch_each() {
    let (sink, delivered) = recorder();
    let pipeline = Pipeline::<u32>::builder()
        .stage("batch", || stage::batches(size(10)))
        .workers(size(2))
        .sink(sink)
        .build()
        .unwrap();
    pipeline.input().push_iter(0..1000).unwrap();
    let report = pipeline.drain().unwrap();
    assert_settled(&report);

    let batches = delivered.lock().unwrap();
    assert_eq!(report.stage("batch").unwrap().emitted_outputs, batches.len() as u64);
    assert!(batches.iter().all(|b| !b.is_empty() && b.len() <= 10));
    assert!(batches.iter().filter(|b| b.len() < 10).count() <= 2);
    let mut items: Vec<u32> = batches.iter().flatten().copied().collect();
    items.sort_unstable();
    assert_eq!(items, (0..1000).collect::<Vec<_>>());
}

// ---- flatten ----

#[test]
fn flatten_emits_every_element_in_order() {
    let mut flat = stage::flatten();
    let (processed, flushed) = run(&mut flat, [vec![1, 2], vec![], vec![3]]);
    assert_eq!(processed, [1, 2, 3]);
    assert_eq!(flushed, []);
    assert_eq!(run(&mut flat, [None, Some('x'), None]), (vec!['x'], vec![]));
    assert_eq!(run(&mut flat, [[1u8; 0]; 2]), (vec![], vec![]));
}

#[test]
fn flatten_with_two_workers_delivers_every_element_once() {
    let (sink, delivered) = recorder();
    let pipeline = Pipeline::<Vec<u32>>::builder()
        .stage("flatten", stage::flatten)
        .workers(size(2))
        .sink(sink)
        .build()
        .unwrap();
    pipeline.input().push_iter((0..100).map(|i| (10 * i..10 * i + i % 11).collect())).unwrap();
    let report = pipeline.drain().unwrap();
    assert_settled(&report);

    let mut items = delivered.lock().unwrap().clone();
    items.sort_unstable();
    let expected: Vec<u32> = (0..100).flat_map(|i| 10 * i..10 * i + i % 11).collect();
    assert_eq!(items, expected);
    assert_eq!(report.stage("flatten").unwrap().emitted_outputs, expected.len() as u64);
}

#[test]
fn batches_then_flatten_in_a_pipeline_give_back_the_input_in_order() {
    let (sink, delivered) = recorder();
    let pipeline = Pipeline::<u32>::builder()
        .stage("batch", || stage::batches(size(7)))
        .stage("flatten", stage::flatten)
        .sink(sink)
        .build()
        .unwrap();
    pipeline.input().push_iter(0..1000).unwrap();
    let report = pipeline.drain().unwrap();
    assert_settled(&report);
    assert_eq!(*delivered.lock().unwrap(), (0..1000).collect::<Vec<_>>());
    // 142 full batches of 7 and the last 6 items, flushed at the end.
    assert_eq!(report.stage("batch").unwrap().emitted_outputs, 143);
}

// ---- aggregate ----

#[test]
fn aggregate_emits_one_accumulator_per_key_on_flush_in_first_seen_order() {
    let mut sums = stage::aggregate(|x: &u32| x % 3, || 0, |sum: &mut u32, x| *sum += x);
    let (processed, flushed) = run(&mut sums, [5, 3, 4, 2, 6]);
    assert_eq!(processed, []);
    assert_eq!(flushed, [(2, 7), (0, 9), (1, 4)]);
}

#[test]
fn aggregate_flush_emits_nothing_when_empty() {
    let mut sums = stage::aggregate(|x: &u32| *x, || 0, |sum: &mut u32, x| *sum += x);
    assert_eq!(run(&mut sums, []), (vec![], vec![]));
}

#[test]
fn aggregate_starts_again_after_a_flush() {
    let mut inits = 0;
    let mut counts = stage::aggregate(
        |w: &&str| *w,
        || {
            inits += 1;
            0
        },
        |n: &mut u32, _| *n += 1,
    );
    assert_eq!(run(&mut counts, ["b", "a", "b"]), (vec![], vec![("b", 2), ("a", 1)]));
    // A new window: `a` counts from scratch and now comes first.
    assert_eq!(run(&mut counts, ["a", "c"]), (vec![], vec![("a", 1), ("c", 1)]));
    assert_eq!(run(&mut counts, []), (vec![], vec![]));
    drop(counts);
    assert_eq!(inits, 4);
}

#[test]
fn aggregate_needs_no_clone_for_keys_or_accumulators() {
    struct Key(String);
    impl PartialEq for Key {
        fn eq(&self, other: &Self) -> bool {
            self.0 == other.0
        }
    }
    impl Eq for Key {}
    impl std::hash::Hash for Key {
        fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
            self.0.hash(state);
        }
    }

    let mut groups = stage::aggregate(
        |w: &String| Key(w[..1].to_owned()),
        Vec::new,
        |group: &mut Vec<String>, w| group.push(w),
    );
    let words = ["ant", "bee", "asp"].map(String::from);
    let (_, flushed) = run(&mut groups, words);
    let flushed: Vec<_> = flushed.into_iter().map(|(k, group)| (k.0, group.join(" "))).collect();
    assert_eq!(flushed, [("a".to_owned(), "ant asp".to_owned()), ("b".into(), "bee".into())]);
}

#[test]
fn aggregate_with_two_workers_gives_partial_totals_that_sum_to_the_exact_totals() {
    let (sink, delivered) = recorder();
    let pipeline = Pipeline::<u64>::builder()
        .stage("sum", || stage::aggregate(|x: &u64| x % 7, || 0, |sum: &mut u64, x| *sum += x))
        .workers(size(2))
        .sink(sink)
        .build()
        .unwrap();
    pipeline.input().push_iter(0..10_000).unwrap();
    let report = pipeline.drain().unwrap();
    assert_settled(&report);

    let partials = delivered.lock().unwrap();
    // One total per key per worker that saw the key.
    assert!((7..=14).contains(&partials.len()), "{partials:?}");
    let mut totals = HashMap::new();
    for &(key, sum) in partials.iter() {
        *totals.entry(key).or_insert(0) += sum;
    }
    let mut expected = HashMap::new();
    for x in 0..10_000u64 {
        *expected.entry(x % 7).or_insert(0) += x;
    }
    assert_eq!(totals, expected);
}

#[test]
fn aggregate_with_one_worker_gives_one_total_per_key_in_first_seen_order() {
    let (sink, delivered) = recorder();
    let pipeline = Pipeline::<u64>::builder()
        .stage("count", || stage::aggregate(|x: &u64| x % 3, || 0, |n: &mut u64, _| *n += 1))
        .sink(sink)
        .build()
        .unwrap();
    pipeline.input().push_iter((1..=10).rev()).unwrap();
    assert_settled(&pipeline.drain().unwrap());
    // 10, 9, 8, …: keys 1, 0, 2 in that order.
    assert_eq!(*delivered.lock().unwrap(), [(1, 4), (0, 3), (2, 3)]);
}

// ---- properties ----

proptest! {
    #[test]
    fn batches_then_flatten_give_back_the_input(
        items in proptest::collection::vec(any::<u16>(), 0..200),
        n in 1..20usize,
    ) {
        let (processed, flushed) = run(&mut stage::batches(size(n)), items.clone());
        prop_assert!(processed.iter().all(|b| b.len() == n));
        prop_assert!(flushed.len() <= 1 && flushed.iter().all(|b| !b.is_empty() && b.len() < n));

        let (flat, rest) = run(&mut stage::flatten(), processed.into_iter().chain(flushed));
        prop_assert!(rest.is_empty());
        prop_assert_eq!(flat, items);
    }

    #[test]
    fn aggregate_matches_a_linear_model(
        windows in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..50), 1..4),
    ) {
        let mut sums = stage::aggregate(|x: &u8| x % 5, || 0, |sum: &mut u32, x| *sum += u32::from(x));
        for window in windows {
            let mut model: Vec<(u8, u32)> = Vec::new();
            for &x in &window {
                match model.iter_mut().find(|(key, _)| *key == x % 5) {
                    Some((_, sum)) => *sum += u32::from(x),
                    None => model.push((x % 5, u32::from(x))),
                }
            }
            prop_assert_eq!(run(&mut sums, window), (vec![], model));
        }
    }
}
