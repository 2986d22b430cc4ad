//! A plain stage runs over its items as the queue's pop hands them out: a run that has to
//! stop half-way (its delivery stopped by a cancel) leaves the rest of the run abandoned, and
//! every item is counted once.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use backflow::stage::{Emit, Stage};
use backflow::{Pipeline, PipelineError};
use common::{Flag, Gate};

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
