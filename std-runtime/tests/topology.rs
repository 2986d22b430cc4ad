//! Shapes beyond a straight line (broadcast, branch, merge) and ordering (`ordered`,
//! `key_ordered`): exact outputs, exact order, balanced reports.

mod common;

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use backflow::{ConfigError, Overflow, Pipeline, stage};

fn workers(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap()
}

/// A small seeded generator, so that the "random" delays replay exactly.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Sleeps 0–`max_us` µs, chosen by the item and the seed: workers finish out of order.
fn jitter(item: u64, seed: u64, max_us: u64) {
    let mut state = item ^ seed.rotate_left(17);
    let us = splitmix(&mut state) % (max_us + 1);
    if us > 0 {
        thread::sleep(Duration::from_micros(us));
    }
}

/// Pushes `items` and drains on another thread while this one reads `output` to the end.
fn through<In, Out>(
    pipeline: Pipeline<In>,
    output: backflow::Output<Out>,
    items: Vec<In>,
) -> (Vec<Out>, backflow::Report)
where
    In: Send + 'static,
    Out: Send + 'static,
{
    let feeder = thread::spawn(move || {
        let input = pipeline.input();
        // Small runs, so that each worker gets batches of a few items.
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            input.push_iter(items.by_ref().take(7)).unwrap();
        }
        pipeline.drain().unwrap()
    });
    let out = output.collect();
    (out, feeder.join().unwrap())
}

fn collector<T: Send + 'static>() -> (Arc<Mutex<Vec<T>>>, impl FnMut(T) + Send + 'static) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&seen);
    (seen, move |item| keep.lock().unwrap().push(item))
}

#[test]
fn broadcast_gives_the_branch_a_copy_of_every_item() {
    let (branch_seen, branch_sink) = collector();
    let (main_seen, main_sink) = collector();
    let pipeline = Pipeline::<u64>::builder()
        .stage("parse", || |x: u64| x)
        .broadcast("audit", |b| b.stage("tag", || |x: u64| x + 1_000).sink(branch_sink))
        .stage("double", || |x: u64| x * 2)
        .workers(workers(2))
        .sink(main_sink)
        .build()
        .unwrap();
    pipeline.input().push_iter(0..5_000).unwrap();
    let report = pipeline.drain().unwrap();
    assert!(report.is_balanced(), "{:?}", report.unbalanced());
    let mut main = main_seen.lock().unwrap().clone();
    main.sort_unstable();
    assert_eq!(main, (0..5_000).map(|x| x * 2).collect::<Vec<_>>());
    // One worker per stage on the branch: it keeps the order.
    assert_eq!(*branch_seen.lock().unwrap(), (1_000..6_000).collect::<Vec<_>>());
    let names: Vec<_> = report.stats().sinks().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["sink", "audit"]);
    assert_eq!(report.stats().sinks()[1].delivered, 5_000);
}

#[test]
fn a_branch_with_a_drop_policy_loses_items_instead_of_holding_the_main_line() {
    let gate = common::Gate::default();
    let held = gate.clone();
    let (main_seen, main_sink) = collector();
    let pipeline = Pipeline::<u64>::builder()
        .stage("parse", || |x: u64| x)
        .broadcast("slow", |b| {
            b.stage("slowstage", || |x: u64| x)
                .capacity(8)
                .overflow(Overflow::DropNewest)
                .sink(move |_| held.wait())
        })
        .sink(main_sink)
        .build()
        .unwrap();
    pipeline.input().push_iter(0..2_000).unwrap();
    // The branch's sink is shut: the main line must still deliver everything.
    common::eventually("the main line delivered all", || main_seen.lock().unwrap().len() == 2_000);
    gate.open();
    let report = pipeline.drain().unwrap();
    assert!(report.is_balanced(), "{:?}", report.unbalanced());
    let slow = report.stage("slowstage").unwrap();
    assert_eq!(slow.accounting.received, 2_000);
    assert!(slow.dropped_newest > 0);
    assert_eq!(report.stats().sinks()[1].delivered + slow.dropped_newest, 2_000);
}

#[test]
fn branch_routes_by_predicate() {
    let (odd_seen, odd_sink) = collector();
    let (even_seen, even_sink) = collector();
    let pipeline = Pipeline::<u64>::builder()
        .stage("parse", || |x: u64| x)
        .workers(workers(2))
        .branch("odd", |x: &u64| x % 2 == 1, |b| b.sink(odd_sink))
        .sink(even_sink)
        .build()
        .unwrap();
    pipeline.input().push_iter(0..10_000).unwrap();
    let report = pipeline.drain().unwrap();
    assert!(report.is_balanced(), "{:?}", report.unbalanced());
    let (mut odd, mut even) = (odd_seen.lock().unwrap().clone(), even_seen.lock().unwrap().clone());
    odd.sort_unstable();
    even.sort_unstable();
    assert_eq!(odd, (0..10_000).filter(|x| x % 2 == 1).collect::<Vec<_>>());
    assert_eq!(even, (0..10_000).filter(|x| x % 2 == 0).collect::<Vec<_>>());
}

#[test]
fn a_branch_merges_back_into_the_main_line() {
    let (pipeline, output) = Pipeline::<i64>::builder()
        .stage("parse", || |x: i64| x)
        .branch(
            "negative",
            |x: &i64| *x < 0,
            |b| b.stage("abs", || |x: i64| -x).workers(workers(2)).merge(),
        )
        .stage("square", || |x: i64| x * x)
        .output()
        .build()
        .unwrap();
    let (mut out, report) = through(pipeline, output, (-3_000..3_000).collect());
    assert!(report.is_balanced(), "{:?}", report.unbalanced());
    out.sort_unstable();
    let mut expected: Vec<i64> = (-3_000..3_000i64).map(|x| x * x).collect();
    expected.sort_unstable();
    assert_eq!(out, expected);
    assert_eq!(report.stage("square").unwrap().accounting.received, 6_000);
    assert_eq!(report.stage("abs").unwrap().accounting.received, 3_000);
}

#[test]
fn a_broadcast_merged_back_doubles_every_item_and_branches_nest() {
    let (seen, sink) = collector();
    let (big_seen, big_sink) = collector();
    let pipeline = Pipeline::<u64>::builder()
        .stage("parse", || |x: u64| x)
        .broadcast("copy", |b| {
            b.stage("plus", || |x: u64| x + 100_000)
                .branch("big", |x: &u64| x.is_multiple_of(10), |inner| inner.sink(big_sink))
                .merge()
        })
        .stage("last", || |x: u64| x)
        .sink(sink)
        .build()
        .unwrap();
    pipeline.input().push_iter(0..1_000).unwrap();
    let report = pipeline.drain().unwrap();
    assert!(report.is_balanced(), "{:?}", report.unbalanced());
    let mut out = seen.lock().unwrap().clone();
    out.sort_unstable();
    let mut expected: Vec<u64> =
        (0..1_000).chain((0..1_000).map(|x| x + 100_000).filter(|x| x % 10 != 0)).collect();
    expected.sort_unstable();
    assert_eq!(out, expected);
    assert_eq!(big_seen.lock().unwrap().len(), 100);
}

#[test]
fn ordered_stages_keep_input_order_with_workers_finishing_out_of_order() {
    for (seed, n_workers) in [(1, 2), (2, 3), (3, 4)] {
        let (pipeline, output) = Pipeline::<u64>::builder()
            .stage("jitter", move || {
                stage::flat_map(move |x: u64| {
                    jitter(x, seed, 200);
                    // Drop some, expand others: order is about the outputs.
                    match x % 5 {
                        0 => vec![],
                        1 => vec![x, x],
                        _ => vec![x],
                    }
                })
            })
            .workers(workers(n_workers))
            .capacity(64)
            .ordered()
            .stage("next", move || {
                move |x: u64| {
                    jitter(x, seed + 10, 100);
                    x
                }
            })
            .workers(workers(2))
            .ordered()
            .output()
            .build()
            .unwrap();
        let (out, report) = through(pipeline, output, (0..3_000).collect());
        assert!(report.is_balanced(), "seed {seed}: {:?}", report.unbalanced());
        let expected: Vec<u64> = (0..3_000)
            .flat_map(|x| match x % 5 {
                0 => vec![],
                1 => vec![x, x],
                _ => vec![x],
            })
            .collect();
        assert_eq!(out, expected, "seed {seed}, {n_workers} workers");
    }
}

#[test]
fn key_ordered_stages_keep_each_keys_order_on_one_worker() {
    let workers_by_key: Arc<Mutex<HashMap<u64, Vec<String>>>> = Arc::default();
    let record = Arc::clone(&workers_by_key);
    let (pipeline, output) = Pipeline::<(u64, u64)>::builder()
        .stage("parse", || |pair: (u64, u64)| pair)
        .stage("perkey", move || {
            let record = Arc::clone(&record);
            move |(key, seq): (u64, u64)| {
                let me = thread::current().name().unwrap_or_default().to_string();
                record.lock().unwrap().entry(key).or_default().push(me);
                jitter(key * 10_000 + seq, 7, 150);
                (key, seq)
            }
        })
        .workers(workers(3))
        .key_ordered(|(key, _): &(u64, u64)| *key)
        .output()
        .build()
        .unwrap();
    let items = (0..400).flat_map(|seq| (0..10).map(move |k| (k, seq))).collect();
    let (out, report) = through(pipeline, output, items);
    assert!(report.is_balanced(), "{:?}", report.unbalanced());
    assert_eq!(out.len(), 4_000);
    for key in 0..10 {
        let seqs: Vec<u64> = out.iter().filter(|(k, _)| *k == key).map(|&(_, s)| s).collect();
        assert_eq!(seqs, (0..400).collect::<Vec<_>>(), "key {key} out of order");
    }
    let by_key = workers_by_key.lock().unwrap();
    for (key, names) in by_key.iter() {
        assert!(names.iter().all(|n| n == &names[0]), "key {key} went to {names:?}");
    }
    // With 10 keys and 3 workers, more than one worker got keys.
    let distinct: std::collections::HashSet<_> = by_key.values().map(|n| n[0].clone()).collect();
    assert!(distinct.len() > 1, "every key went to {distinct:?}");
    assert_eq!(report.stage("perkey").unwrap().queue_capacity, 3 * 1024);
}

#[test]
fn graph_mistakes_are_config_errors() {
    let err = Pipeline::<u64>::builder()
        .stage("first", || |x: u64| x)
        .workers(workers(2))
        .key_ordered(|x: &u64| *x)
        .sink(|_| {})
        .build()
        .unwrap_err();
    assert_eq!(err, ConfigError::KeyOrderedFirst { stage: "first".into() });

    let err = Pipeline::<u64>::builder()
        .stage("parse", || |x: u64| x)
        .broadcast("parse", |b| b.sink(|_| {}))
        .sink(|_| {})
        .build()
        .unwrap_err();
    assert_eq!(err, ConfigError::DuplicateName { stage: "parse".into() });

    let err = Pipeline::<u64>::builder()
        .stage("parse", || |x: u64| x)
        .branch("", |_: &u64| true, |b| b.sink(|_| {}))
        .sink(|_| {})
        .build()
        .unwrap_err();
    assert!(matches!(err, ConfigError::EmptyName { .. }), "{err:?}");

    let err = Pipeline::<u64>::builder()
        .stage("parse", || |x: u64| x)
        .broadcast("copy", |b| b.stage("parse", || |x: u64| x).sink(|_| {}))
        .sink(|_| {})
        .build()
        .unwrap_err();
    assert_eq!(err, ConfigError::DuplicateName { stage: "parse".into() });
}
