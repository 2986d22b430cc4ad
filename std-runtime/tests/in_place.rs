//! A plain stage runs over its items as the queue's pop hands them out: a run that has to
//! stop half-way (its delivery stopped by a cancel) leaves the rest of the run abandoned, and
//! every item is counted once; the items of a run the stage has not got to yet still take
//! their room in the queue, and a push that finds none does what its policy says at once.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backflow::stage::{Emit, Stage};
use backflow::{Input, Overflow, Pipeline, PipelineError, PushError, Report};
use common::{Flag, Gate, OpensGate, eventually, threads, within_time};

/// Emits each item four times: a run of 128 inputs fills the outputs' batch after 32 of them,
/// so the run delivers while it still holds inputs.
struct FourTimes;

impl Stage<u32> for FourTimes {
    type Out = u32;
    type Error = Infallible;

    fn process(&mut self, item: u32, out: &mut impl Emit<u32>) -> Result<(), Infallible> {
        for _ in 0..4 {
            out.emit(item);
        }
        Ok(())
    }
}

#[test]
fn a_run_stopped_while_delivering_abandons_the_rest_of_the_run_and_counts_every_item() {
    let (first, second) = (Gate::default(), Gate::default());
    let (entered_first, entered_second) = (Flag::default(), Flag::default());
    let delivered = Arc::new(Mutex::new(Vec::new()));
    let sink = {
        let (first, second) = (first.clone(), second.clone());
        let (entered_first, entered_second) = (entered_first.clone(), entered_second.clone());
        let delivered = Arc::clone(&delivered);
        let mut calls = 0;
        move |x: u32| {
            calls += 1;
            // The first item's first output holds the worker while the queue fills; the first
            // output of the next run's first delivery holds it until the pipeline is cancelled.
            if calls == 1 {
                entered_first.raise();
                first.wait();
            } else if calls == 5 {
                entered_second.raise();
                second.wait();
            }
            delivered.lock().unwrap().push(x);
        }
    };
    let pipeline =
        Pipeline::<u32>::builder().stage("four", || FourTimes).capacity(1024).sink(sink).build();
    let pipeline = pipeline.unwrap();
    let input = pipeline.input();
    input.push(0).unwrap();
    entered_first.wait();
    // Behind the held worker: the next run is items 1..=128, and 72 more wait in the queue.
    input.push_iter(1..=200).unwrap();
    first.open();
    entered_second.wait();
    pipeline.cancel();
    second.open();
    let Err(PipelineError::Cancelled { report }) = pipeline.drain() else {
        panic!("a cancelled pipeline drains with the cancel");
    };

    // Delivered: item 0's outputs, then the first batch of the run (items 1..=32), which was
    // in the sink's hands before the cancel.
    let expected: Vec<u32> = (0..=32).flat_map(|x| [x; 4]).collect();
    assert_eq!(*delivered.lock().unwrap(), expected);
    let stage = &report.stage("four").unwrap().accounting;
    // Processed: item 0 and items 1..=65 (the run's second delivery, at item 65's first
    // output, found the pipeline cancelled); abandoned: the rest of the run (66..=128) and
    // what was still queued (129..=200).
    assert_eq!(
        (stage.received, stage.emitted_inputs, stage.abandoned, stage.errored),
        (201, 66, 63 + 72, 0),
        "{report}"
    );
    assert_eq!(report.stage("four").unwrap().emitted_outputs, 4 * 66);
    // The sink received every output; the second batch (items 33..=64) and item 65's outputs
    // were abandoned there.
    let sink = report.sink();
    assert_eq!((sink.received, sink.delivered, sink.abandoned), (264, 132, 132), "{report}");
    assert!(report.is_balanced(), "{report}");
}

/// Emits each item a batch and a half of times: the run delivers in the middle of the item.
struct Burst;

/// Outputs of one [`Burst`] item: more than the outputs' batch (128), so that the first
/// delivery of an item starts while the stage is still processing it.
const BURST: u32 = 200;

impl Stage<u32> for Burst {
    type Out = u32;
    type Error = Infallible;

    fn process(&mut self, item: u32, out: &mut impl Emit<u32>) -> Result<(), Infallible> {
        for _ in 0..BURST {
            out.emit(item);
        }
        Ok(())
    }
}

/// A one-worker pipeline whose first queue holds 4 items under `overflow` (pressure on only
/// when all 4 are queued), held so that the worker is in the middle of a run of items 1 and 2:
/// it has read item 1 and is delivering its outputs to a sink that waits at `gate`, and has
/// not read item 2. Items 3, 4 and 5 went in behind it, the last into item 1's slot; the next
/// push's slot is item 2's, although the queue counts only 3 items. With `then`, the run
/// waits there again at item 2's first output. The guard opens `gate`.
fn held_in_a_run(
    overflow: Overflow,
    gate: &Gate,
    then: Option<&Gate>,
) -> (Pipeline<u32>, Input<u32>, OpensGate) {
    let (first, entered_first, entered_second) =
        (Gate::default(), Flag::default(), Flag::default());
    let sink = {
        let (first, gate, then) = (first.clone(), gate.clone(), then.cloned());
        let (entered_first, entered_second) = (entered_first.clone(), entered_second.clone());
        let mut calls = 0;
        move |_: u32| {
            calls += 1;
            if calls == 1 {
                entered_first.raise();
                first.wait();
            } else if calls == BURST + 1 {
                entered_second.raise();
                gate.wait();
            } else if calls == 2 * BURST + 1 {
                if let Some(then) = &then {
                    then.wait();
                }
            }
        }
    };
    let builder = Pipeline::<u32>::builder().stage("burst", || Burst).capacity(4);
    let builder = builder.water_mark_counts(4, 1).overflow(overflow);
    let pipeline = builder.sink(sink).build().unwrap();
    // Declared after the pipeline: a failed assertion opens the gates before it drops.
    let (opens, _opens_first) = (gate.opened_on_drop(), first.opened_on_drop());
    let input = pipeline.input();
    input.push(0).unwrap();
    entered_first.wait();
    // Item 0's run is over (its outputs wait to be delivered): items 1 and 2 form the next.
    input.push(1).unwrap();
    input.push(2).unwrap();
    first.open();
    entered_second.wait();
    for x in 3..=5 {
        input.try_push(x).unwrap();
    }
    (pipeline, input, opens)
}

/// Drains a pipeline held by [`held_in_a_run`] once its gate is open; returns the report.
fn drained(pipeline: Pipeline<u32>) -> Report {
    let report = pipeline.drain().unwrap();
    assert!(report.is_balanced(), "{report}");
    report
}

#[test]
fn a_push_finds_no_room_in_a_slot_a_run_has_taken_but_not_read() {
    let gate = Gate::default();
    let report = within_time(move || {
        let (pipeline, input, _open) = held_in_a_run(Overflow::Block, &gate, None);
        assert_eq!(input.try_push(6), Err(PushError::Full(6)));
        assert_eq!(input.room(), 0);
        // The wait ends with the timeout (no busy retry can tell), not with a push.
        let waited = input.push_timeout(6, Duration::from_millis(20));
        assert_eq!(waited, Err(PushError::Timeout(6)));
        let pusher = {
            let input = input.clone();
            std::thread::spawn(move || input.push(6))
        };
        gate.open();
        assert_eq!(pusher.join().unwrap(), Ok(()));
        drained(pipeline)
    });
    assert_eq!(report.sink().delivered, 7 * u64::from(BURST), "{report}");
}

#[test]
fn fail_and_drop_newest_do_not_wait_for_a_run_to_read_its_slot() {
    for overflow in [Overflow::Fail, Overflow::DropNewest] {
        let gate = Gate::default();
        let report = within_time(move || {
            let (pipeline, input, _open) = held_in_a_run(overflow, &gate, None);
            let pushed = input.push(6);
            match overflow {
                Overflow::Fail => assert_eq!(pushed, Err(PushError::Full(6))),
                _ => assert_eq!(pushed, Ok(())),
            }
            gate.open();
            drained(pipeline)
        });
        let stage = &report.stage("burst").unwrap().accounting;
        let dropped = u64::from(overflow == Overflow::DropNewest);
        assert_eq!((stage.received, stage.dropped), (6 + dropped, dropped), "{report}");
        assert_eq!(report.sink().delivered, 6 * u64::from(BURST), "{report}");
    }
}

#[test]
fn a_push_waiting_for_a_slot_a_run_holds_goes_on_once_the_run_reads_it() {
    let (gate, then) = (Gate::default(), Gate::default());
    let report = within_time(move || {
        let (pipeline, input, _open) = held_in_a_run(Overflow::Block, &gate, Some(&then));
        let _open_then = then.opened_on_drop();
        let pusher = {
            let input = input.clone();
            let named = std::thread::Builder::new().name("pusher".into());
            named.spawn(move || input.push(6)).unwrap()
        };
        // Parked for room (the only way a push sleeps).
        eventually("the push waits parked", || threads("pusher").iter().any(|(_, s)| *s == 'S'));
        // The run reads item 2 and waits again, delivering its outputs: the push goes into
        // item 2's slot meanwhile, without waiting for the run to end.
        gate.open();
        assert_eq!(pusher.join().unwrap(), Ok(()));
        then.open();
        drained(pipeline)
    });
    assert_eq!(report.sink().delivered, 7 * u64::from(BURST), "{report}");
}
