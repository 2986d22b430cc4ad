//! Backpressure and overflow policies, driven deterministically: a sink held at a gate stalls
//! the pipeline at a known point, then the test pushes and checks exactly what happened.

mod common;

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::thread;

use backflow::{DropReason, Overflow, Pipeline, PushError, Report};
use common::{Flag, Gate};

const CAPACITY: usize = 8;

/// Every stage balanced, stages linked, and the end-to-end sum: what went in is delivered or
/// settled somewhere on the way.
fn assert_accounted(report: &Report, pushed: u64) {
    assert!(report.is_balanced(), "unbalanced report:\n{report}");
    let first = &report.stages()[0].accounting;
    assert_eq!(first.received, pushed);
    for stage in report.stages() {
        assert_eq!(stage.accounting.in_flight, 0, "{}", stage.name);
    }
}

/// A 1-stage pipeline whose sink holds its first item at `gate` (after raising `entered`),
/// recording what it delivers.
fn stalled(
    overflow: Overflow,
    gate: &Gate,
    entered: &Flag,
    dropped: &Arc<Mutex<Vec<(u32, DropReason)>>>,
    delivered: &Arc<Mutex<Vec<u32>>>,
) -> Pipeline<u32> {
    let dropped = Arc::clone(dropped);
    Pipeline::<u32>::builder()
        .stage("pass", || |x: u32| x)
        .capacity(CAPACITY)
        .overflow(overflow)
        .on_drop(move |d| dropped.lock().unwrap().push((d.item, d.reason)))
        .sink(common::held_sink(gate, entered, delivered))
        .build()
        .unwrap()
}

/// Pushes item 0, waits until the sink holds it, then pushes `1..=n` with `try_push` and
/// returns the items handed back.
fn fill(pipeline: &Pipeline<u32>, entered: &Flag, n: u32) -> Vec<u32> {
    let input = pipeline.input();
    input.push(0).unwrap();
    entered.wait();
    (1..=n).filter_map(|x| input.try_push(x).err().map(PushError::into_inner)).collect()
}

/// Stalls a 1-stage pipeline under a dropping `overflow`, offers items `1..=20` with
/// `try_push` (item 0 sits in the sink), then lets it drain: the items dropped (with their
/// reasons) and delivered, in order, and the report.
fn drops_under(overflow: Overflow) -> (Vec<(u32, DropReason)>, Vec<u32>, Report) {
    let (gate, entered) = (Gate::default(), Flag::default());
    let (dropped, delivered) = (Arc::default(), Arc::default());
    let pipeline = stalled(overflow, &gate, &entered, &dropped, &delivered);
    assert!(fill(&pipeline, &entered, 20).is_empty(), "{overflow:?} never hands items back");
    gate.open();
    let report = pipeline.drain().unwrap();
    assert_accounted(&report, 21);
    let dropped = dropped.lock().unwrap().clone();
    let delivered = delivered.lock().unwrap().clone();
    (dropped, delivered, report)
}

#[test]
fn drop_newest_drops_exactly_the_items_that_did_not_fit() {
    let (dropped, delivered, report) = drops_under(Overflow::DropNewest);
    assert_eq!(dropped, (9..=20).map(|x| (x, DropReason::Newest)).collect::<Vec<_>>());
    assert_eq!(delivered, (0..=8).collect::<Vec<_>>());
    let pass = report.stage("pass").unwrap();
    assert_eq!((pass.dropped_newest, pass.dropped_oldest), (12, 0));
}

#[test]
fn drop_oldest_evicts_exactly_the_oldest_items() {
    let (dropped, delivered, report) = drops_under(Overflow::DropOldest);
    assert_eq!(dropped, (1..=12).map(|x| (x, DropReason::Oldest)).collect::<Vec<_>>());
    assert_eq!(delivered, [0].into_iter().chain(13..=20).collect::<Vec<_>>());
    let pass = report.stage("pass").unwrap();
    assert_eq!((pass.dropped_oldest, pass.dropped_newest), (12, 0));
}

#[test]
fn fail_hands_the_item_back_and_counts_nothing() {
    let (gate, entered) = (Gate::default(), Flag::default());
    let (dropped, delivered) = (Arc::default(), Arc::default());
    let pipeline = stalled(Overflow::Fail, &gate, &entered, &dropped, &delivered);
    let input = pipeline.input();
    input.push(0).unwrap();
    entered.wait();
    let refused: Vec<_> = (1..=20)
        .filter_map(|x| match input.push(x) {
            Ok(()) => None,
            Err(PushError::Full(item)) => Some(item),
            Err(other) => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(refused, (9..=20).collect::<Vec<_>>());
    gate.open();
    let report = pipeline.drain().unwrap();
    assert!(dropped.lock().unwrap().is_empty());
    assert_eq!(*delivered.lock().unwrap(), (0..=8).collect::<Vec<_>>());
    assert_accounted(&report, 9);
}

#[test]
fn block_stops_the_producer_at_capacity_and_resumes_without_dropping() {
    let (gate, entered) = (Gate::default(), Flag::default());
    let (dropped, delivered) = (Arc::default(), Arc::default());
    let pipeline = stalled(Overflow::Block, &gate, &entered, &dropped, &delivered);
    let refused = fill(&pipeline, &entered, 20);
    // Pressure turns on at the high mark (80 % of 8 = 7): from then on `try_push` says Full.
    let accepted = 20 - refused.len();
    assert_eq!(accepted, 7, "accepted up to the high mark");
    assert_eq!(refused, (8..=20).collect::<Vec<_>>(), "the refused items come back in order");
    let stats = pipeline.stats();
    let pass = stats.stage("pass").unwrap();
    assert!(pass.pressure_on);
    assert_eq!((pass.queue_len, pass.pressure_transitions), (7, 1));

    // A blocking producer waits instead of dropping, and resumes once the sink moves.
    let input = pipeline.input();
    let producer = thread::Builder::new()
        .name("blocked-push".into())
        .spawn(move || refused.into_iter().try_for_each(|x| input.push(x)))
        .unwrap();
    common::eventually("the producer sleeps on the full queue", || {
        common::threads("blocked-push").iter().any(|&(_, state)| state == 'S')
    });
    let pass = pipeline.stats().stage("pass").cloned().unwrap();
    assert_eq!(
        (pass.queue_len, pass.accounting.received),
        (7, 8),
        "nothing got past the high mark"
    );
    gate.open();
    producer.join().unwrap().unwrap();
    let report = pipeline.drain().unwrap();
    assert!(dropped.lock().unwrap().is_empty());
    assert_eq!(*delivered.lock().unwrap(), (0..=20).collect::<Vec<_>>());
    assert_accounted(&report, 21);
}

#[test]
fn pressure_has_hysteresis() {
    // Capacity 100, on at 80, off at 20: every on→off cycle moves at least 60 items, so the
    // transition count is bounded by the items pushed, however the threads interleave.
    let items = 20_000u64;
    let pipeline = Pipeline::<u64>::builder()
        .stage("pass", || |x: u64| x)
        .capacity(100)
        .water_marks(80, 20)
        .stage("slow", || {
            |x: u64| {
                std::hint::black_box((0..50).fold(x, |a, b| a.wrapping_mul(31).wrapping_add(b)))
            }
        })
        .capacity(100)
        .water_marks(80, 20)
        .sink(|_| {})
        .build()
        .unwrap();
    pipeline.input().push_iter(0..items).unwrap();
    let report = pipeline.drain().unwrap();
    assert_accounted(&report, items);
    for stage in report.stages() {
        let transitions = stage.pressure_transitions;
        assert_eq!(transitions % 2, 0, "{}: pressure ends off", stage.name);
        assert!(transitions <= 2 * items / 60 + 2, "{}: {transitions} transitions", stage.name);
        assert!(!stage.pressure_on);
    }
}

#[test]
fn push_after_close_or_cancel_returns_the_item() {
    let pipeline = Pipeline::<String>::builder().stage("id", || |s: String| s).sink(|_| {}).build();
    let pipeline = pipeline.unwrap();
    let input = pipeline.input();
    pipeline.drain().unwrap();
    assert_eq!(input.push("a".into()), Err(PushError::Closed("a".into())));
    assert_eq!(input.try_push("b".into()), Err(PushError::Closed("b".into())));
    assert_eq!(input.push_iter(["c".to_string()]), Err(PushError::Closed("c".into())));

    let pipeline = Pipeline::<String>::builder().stage("id", || |s: String| s).sink(|_| {}).build();
    let pipeline = pipeline.unwrap();
    let input = pipeline.input();
    pipeline.cancel();
    assert_eq!(input.push("d".into()), Err(PushError::Cancelled("d".into())));
    let timeout = std::time::Duration::from_millis(1);
    assert_eq!(input.push_timeout("e".into(), timeout), Err(PushError::Cancelled("e".into())));
}

#[test]
fn push_timeout_gives_the_item_back_when_no_room_comes() {
    let (gate, entered) = (Gate::default(), Flag::default());
    let (dropped, delivered) = (Arc::default(), Arc::default());
    let pipeline = stalled(Overflow::Block, &gate, &entered, &dropped, &delivered);
    let _opens = gate.opened_on_drop();
    let refused = fill(&pipeline, &entered, 20);
    let input = pipeline.input();
    let timeout = std::time::Duration::from_millis(5);
    assert_eq!(input.push_timeout(refused[0], timeout), Err(PushError::Timeout(refused[0])));
    // However short the timeout, one that runs out is a timeout, not `Full` (`try_push`'s).
    for timeout in [0, 1, 100].map(std::time::Duration::from_nanos) {
        let pushed = input.push_timeout(refused[0], timeout);
        assert_eq!(pushed, Err(PushError::Timeout(refused[0])), "{timeout:?}");
    }
    assert_eq!(input.try_push(refused[0]), Err(PushError::Full(refused[0])));
    gate.open();
    assert_eq!(input.push_timeout(refused[0], std::time::Duration::from_secs(60)), Ok(()));
    let report = pipeline.drain().unwrap();
    assert_accounted(&report, 9);
}

/// The accounting identity for every policy, per stage and end to end, through three stages
/// with several workers, a filter (fewer outputs), an expander (more outputs) and errors.
#[test]
fn accounting_holds_for_every_policy() {
    for overflow in [Overflow::Block, Overflow::DropOldest, Overflow::DropNewest] {
        let hooked = Arc::new(Mutex::new(0u64));
        let counted = Arc::clone(&hooked);
        let pipeline = Pipeline::<u64>::builder()
            .stage("parse", || backflow::stage::filter(|x: &u64| !x.is_multiple_of(3)))
            .capacity(16)
            .overflow(if overflow == Overflow::Block { overflow } else { Overflow::Block })
            .stage("expand", || backflow::stage::flat_map(|x: u64| [x, x + 1]))
            .workers(NonZeroUsize::new(2).unwrap())
            .capacity(16)
            .overflow(overflow)
            .on_drop(move |_| *counted.lock().unwrap() += 1)
            .stage("check", || {
                backflow::stage::validate(
                    |x: &u64| if x.is_multiple_of(7) { Err("seven") } else { Ok(()) },
                )
            })
            .capacity(4)
            .overflow(overflow)
            .sink(|_| {})
            .build()
            .unwrap();
        let input = pipeline.input();
        input.push_iter(0..30_000).unwrap();
        let report = pipeline.drain().unwrap();
        assert_accounted(&report, 30_000);
        let [parse, expand, check] = report.stages() else { panic!("three stages") };
        assert_eq!(parse.accounting.emitted_inputs, 30_000);
        assert_eq!(parse.emitted_outputs, 20_000);
        assert_eq!(expand.emitted_outputs, 2 * expand.accounting.emitted_inputs);
        assert_eq!(*hooked.lock().unwrap(), expand.accounting.dropped);
        assert_eq!(report.sink().delivered, check.accounting.emitted_inputs);
        if overflow == Overflow::Block {
            assert_eq!(expand.accounting.dropped + check.accounting.dropped, 0);
            assert_eq!(report.sink().delivered + check.accounting.errored, 40_000);
        }
    }
}

#[test]
fn several_producers_and_workers_deliver_everything_once() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink_seen = Arc::clone(&seen);
    let pipeline = Pipeline::<u64>::builder()
        .stage("a", || |x: u64| x)
        .workers(NonZeroUsize::new(3).unwrap())
        .capacity(32)
        .stage("b", || |x: u64| x)
        .workers(NonZeroUsize::new(2).unwrap())
        .capacity(32)
        .sink(move |x| sink_seen.lock().unwrap().push(x))
        .build()
        .unwrap();
    let producers: Vec<_> = (0..3u64)
        .map(|p| {
            let input = pipeline.input();
            thread::spawn(move || {
                for i in 0..5_000 {
                    if i % 2 == 0 {
                        input.push(p * 5_000 + i).unwrap();
                    } else {
                        input.push_iter([p * 5_000 + i]).unwrap();
                    }
                }
            })
        })
        .collect();
    producers.into_iter().for_each(|p| p.join().unwrap());
    let report = pipeline.drain().unwrap();
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_unstable();
    assert_eq!(seen, (0..15_000).collect::<Vec<_>>());
    assert_accounted(&report, 15_000);
}

#[test]
fn output_iterator_yields_everything_in_order_with_one_worker() {
    let (pipeline, output) = Pipeline::<u32>::builder()
        .stage("inc", || |x: u32| x + 1)
        .capacity(4)
        .output()
        .build()
        .unwrap();
    let reader = thread::spawn(move || output.collect::<Vec<_>>());
    pipeline.input().push_iter(0..1000).unwrap();
    let report = pipeline.drain().unwrap();
    assert_eq!(reader.join().unwrap(), (1..=1000).collect::<Vec<_>>());
    assert_eq!(report.sink().received, 1000);
}

#[test]
fn a_dropped_output_abandons_what_it_holds_and_the_pipeline_still_drains() {
    let (pipeline, output) = Pipeline::<u32>::builder()
        .stage("inc", || |x: u32| x + 1)
        .capacity(4)
        .output()
        .build()
        .unwrap();
    let input = pipeline.input();
    let producer = thread::spawn(move || input.push_iter(0..1000));
    drop(output);
    producer.join().unwrap().unwrap();
    let report = pipeline.drain().unwrap();
    assert_eq!(report.sink().delivered, 0);
    assert_eq!(report.sink().abandoned, 1000);
    assert_accounted(&report, 1000);
}

#[test]
fn drop_policies_between_single_worker_stages_drop_exactly_the_expected_items() {
    for (overflow, reason) in
        [(Overflow::DropOldest, DropReason::Oldest), (Overflow::DropNewest, DropReason::Newest)]
    {
        let (gate, entered) = (Gate::default(), Flag::default());
        let dropped = Arc::new(Mutex::new(Vec::new()));
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let hook = Arc::clone(&dropped);
        // One worker feeding one worker: the link between them is single-producer.
        let pipeline = Pipeline::<u32>::builder()
            .stage("first", || |x: u32| x)
            .stage("second", || |x: u32| x)
            .capacity(4)
            .overflow(overflow)
            .on_drop(move |d| hook.lock().unwrap().push((d.item, d.reason)))
            .sink(common::held_sink(&gate, &entered, &delivered))
            .build()
            .unwrap();
        let input = pipeline.input();
        input.push(0).unwrap();
        entered.wait();
        input.push_iter(1..=20).unwrap();
        // `first` passes everything on; `second`'s queue ends up holding 4 of them.
        common::eventually("the items reach the second stage", || {
            pipeline.stats().stage("first").unwrap().accounting.emitted_inputs == 21
        });
        gate.open();
        let report = pipeline.drain().unwrap();

        let (expected_drops, expected_delivered): (Vec<u32>, Vec<u32>) = match reason {
            DropReason::Oldest => ((1..=16).collect(), [0].into_iter().chain(17..=20).collect()),
            _ => ((5..=20).collect(), (0..=4).collect()),
        };
        let expected_drops: Vec<_> = expected_drops.into_iter().map(|x| (x, reason)).collect();
        assert_eq!(*dropped.lock().unwrap(), expected_drops, "{overflow:?}");
        assert_eq!(*delivered.lock().unwrap(), expected_delivered, "{overflow:?}");
        assert_eq!(report.stage("second").unwrap().accounting.dropped, 16);
        assert_accounted(&report, 21);
    }
}
