//! The rayon stages inside real pipelines: order under random per-item costs, a bounded
//! number of items in flight, panics as item errors, and a pool of one thread.

// The runtime's test helpers (the gate a sink is held at, and the like).
#[path = "../../std-runtime/tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use backflow::{Pipeline, PushError};
use backflow_rayon::{par_filter_map, par_flat_map, par_map};
use common::{Flag, Gate, Ticket, Tickets};
use rayon::ThreadPoolBuilder;

/// A small deterministic generator (xorshift), for per-item costs that differ from run to run
/// of the same seed only by scheduling.
fn costs(seed: u64, n: usize) -> Vec<u64> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % 200
        })
        .collect()
}

#[test]
fn outputs_keep_input_order_whatever_each_item_costs() {
    for seed in [1, 2, 3] {
        let cost = Arc::new(costs(seed, 2_000));
        let (pipeline, output) = Pipeline::<usize>::builder()
            .stage("slow", move || {
                let cost = Arc::clone(&cost);
                par_map(move |i: usize| {
                    // Later items often finish first.
                    thread::sleep(Duration::from_micros(cost[i]));
                    i * 3
                })
            })
            .capacity(256)
            .stage("keep", || par_filter_map(|x: usize| x.is_multiple_of(2).then_some(x)))
            .stage("twice", || par_flat_map(|x: usize| [x, x + 1]).batch(16))
            .output()
            .build()
            .unwrap();
        let consumer = thread::spawn(move || output.collect::<Vec<_>>());
        pipeline.input().push_iter(0..2_000).unwrap();
        let report = pipeline.drain().unwrap();
        let expected: Vec<usize> =
            (0..2_000).map(|i| i * 3).filter(|x| x % 2 == 0).flat_map(|x| [x, x + 1]).collect();
        assert_eq!(consumer.join().unwrap(), expected, "seed {seed}");
        assert!(report.is_balanced(), "{report}");
    }
}

/// Opens the gate when dropped, so that a failing assertion does not leave the sink held
/// (and the pipeline's drop waiting for it).
struct OpenOnDrop(Gate);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

#[test]
fn a_stalled_sink_stops_the_producer_at_the_high_mark() {
    let (gate, entered, delivered) = (Gate::default(), Flag::default(), Arc::default());
    let pipeline = Pipeline::<u64>::builder()
        .stage("square", || par_map(|x: u64| x * x))
        .capacity(64)
        .water_mark_counts(48, 16)
        .sink(common::held_sink(&gate, &entered, &delivered))
        .build()
        .unwrap();
    let _release = OpenOnDrop(gate.clone());
    let input = pipeline.input();
    input.push(0).unwrap();
    entered.wait();
    // The worker is held in the sink with item 0; its queue takes items up to its high mark
    // and then refuses: nothing piles up anywhere else.
    let mut accepted = 1;
    let refused = loop {
        match input.try_push(accepted) {
            Ok(()) => accepted += 1,
            Err(PushError::Full(item)) => break item,
            Err(other) => panic!("unexpected {other:?}"),
        }
        assert!(accepted < 10_000, "the producer was never stopped");
    };
    assert_eq!((accepted, refused), (49, 49));
    gate.open();
    let report = pipeline.drain().unwrap();
    assert_eq!(report.sink().delivered, 49);
    assert_eq!(*delivered.lock().unwrap(), (0..49).map(|x| x * x).collect::<Vec<u64>>());
    assert!(report.is_balanced(), "{report}");
}

#[test]
fn a_panic_fails_its_item_only_and_the_pool_survives() {
    let pool = Arc::new(ThreadPoolBuilder::new().num_threads(2).build().unwrap());
    for round in 0..2 {
        let stage_pool = Arc::clone(&pool);
        let (pipeline, output) = Pipeline::<u32>::builder()
            .stage("picky", move || {
                par_map(|x: u32| {
                    assert!(!x.is_multiple_of(97), "no multiples of 97");
                    x
                })
                .on(Arc::clone(&stage_pool))
            })
            .output()
            .build()
            .unwrap();
        let consumer = thread::spawn(move || output.collect::<Vec<_>>());
        pipeline.input().push_iter(0..1_000).unwrap();
        let report = pipeline.drain().unwrap();
        let expected: Vec<u32> = (0..1_000).filter(|x| x % 97 != 0).collect();
        assert_eq!(consumer.join().unwrap(), expected, "round {round}");
        let picky = report.stage("picky").unwrap();
        assert_eq!(picky.accounting.errored, 11);
        assert!(report.is_balanced(), "{report}");
    }
}

#[test]
fn a_custom_pool_of_one_thread_does_the_work() {
    let pool = Arc::new(
        ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|i| format!("custom-pool-{i}"))
            .build()
            .unwrap(),
    );
    let (pipeline, output) = Pipeline::<u32>::builder()
        .stage("where", move || {
            par_map(|x: u32| (x, thread::current().name().map(str::to_string)))
                .on(Arc::clone(&pool))
                .min_len(8)
        })
        .output()
        .build()
        .unwrap();
    let consumer = thread::spawn(move || output.collect::<Vec<_>>());
    pipeline.input().push_iter(0..500).unwrap();
    pipeline.drain().unwrap();
    let results = consumer.join().unwrap();
    let order: Vec<u32> = results.iter().map(|(x, _)| *x).collect();
    assert_eq!(order, (0..500).collect::<Vec<_>>());
    assert!(results.iter().all(|(_, name)| name.as_deref() == Some("custom-pool-0")));
}

#[test]
fn a_flat_map_whose_iterator_panics_fails_that_item_only() {
    let (pipeline, output) = Pipeline::<u64>::builder()
        .stage("expand", || {
            par_flat_map(|x: u64| {
                (0..2u64).map(move |i| {
                    assert!(x != 3 || i == 0, "item 3's second output");
                    x
                })
            })
        })
        .output()
        .build()
        .unwrap();
    pipeline.input().push_iter(0..10).unwrap();
    let report = pipeline.drain().unwrap();
    let accounting = report.stage("expand").unwrap().accounting;
    assert_eq!((accounting.errored, accounting.emitted_inputs), (1, 9), "{report}");
    let outputs: Vec<u64> = output.collect();
    // Item 3 got its first output out before its iterator panicked; every other item, both.
    let expected: Vec<u64> =
        (0..10).flat_map(|x| if x == 3 { vec![3] } else { vec![x, x] }).collect();
    assert_eq!(outputs, expected);
}

/// The closure runs on a pool thread: what it defers waits there for its item's outcome,
/// reported on the worker.
#[test]
fn an_item_dropped_by_a_call_that_fails_the_pipeline_learns_it() {
    let pipeline = Pipeline::<Ticket>::builder()
        .stage("check", || {
            par_map(|ticket: Ticket| {
                let n = ticket.n;
                drop(ticket);
                assert!(n != 50, "fifty is bad");
                n
            })
        })
        .on_error(backflow::ErrorPolicy::FailFast)
        .sink(|_| {})
        .build()
        .unwrap();
    let handed = Tickets::default();
    handed.watch(pipeline.watch());
    let _ = pipeline.input().push_iter((0..100).map(|n| handed.ticket(n)));
    assert!(pipeline.drain().is_err());
    let log = handed.learned();
    assert_eq!(log.len(), 100, "every ticket settled once");
    assert!(log.contains(&(50, false)), "{log:?}");
}
