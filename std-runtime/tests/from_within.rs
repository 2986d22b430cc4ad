//! Ending a pipeline from inside it: dropping it, draining it or shutting it down in its own
//! sink, or in a drop hook or an iterator while a push into it is in progress on the same
//! thread. The call cannot wait for the thread it is on: nothing panics and nothing hangs, the
//! pipeline ends on a thread of its own, and its watches end with final, balanced stats.
//!
//! Thread checks look for `backflow:<stage>:<n>` names in `/proc/self/task`; every test names
//! its stage differently, and briefly (Linux keeps 15 bytes of a thread name).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use backflow::stats::Stats;
use backflow::{Overflow, Pipeline, PipelineError, Watch};
use common::{Gate, within_time};

/// Where a callback finds the pipeline it ends.
type Slot = Arc<Mutex<Option<Pipeline<u64>>>>;

/// A stage factory whose stages pass each item on once `gate` opens.
fn held_at(gate: &Gate) -> impl Fn() -> Box<dyn FnMut(u64) -> u64 + Send> + use<> {
    let gate = gate.clone();
    move || {
        let gate = gate.clone();
        Box::new(move |x| {
            gate.wait();
            x
        })
    }
}

/// Waits for the pipeline to have ended (on a thread of its own) and returns its final stats.
fn ended(watch: &Watch) -> Stats {
    common::eventually("the pipeline has ended", || watch.has_ended());
    watch.stats()
}

/// Asserts that nothing is left in flight and every count adds up.
fn assert_final(stats: &Stats) {
    for stage in stats.stages() {
        assert!(stage.accounting.is_balanced(), "{stats}");
        assert_eq!(stage.accounting.in_flight, 0, "{stats}");
    }
    for sink in stats.sinks() {
        assert_eq!(sink.received, sink.delivered + sink.abandoned, "{stats}");
    }
}

#[test]
fn a_sink_that_drops_its_pipeline_ends_it() {
    let (stats, accepted) = within_time(|| {
        let slot: Slot = Arc::default();
        let taker = Arc::clone(&slot);
        let seen = AtomicU64::new(0);
        let pipeline = Pipeline::<u64>::builder()
            .stage("fwdrop", || |x: u64| x)
            .sink(move |_| {
                if seen.fetch_add(1, Ordering::SeqCst) == 10 {
                    drop(taker.lock().unwrap().take());
                }
            })
            .build()
            .unwrap();
        let (watch, input) = (pipeline.watch(), pipeline.input());
        *slot.lock().unwrap() = Some(pipeline);
        let accepted = (0..1_000).take_while(|&x| input.push(x).is_ok()).count() as u64;
        drop(input);
        (ended(&watch), accepted)
    });
    assert_final(&stats);
    assert_eq!(stats.stage("fwdrop").unwrap().accounting.received, accepted);
    assert_eq!(common::live_threads("backflow:fwdrop").len(), 0);
}

#[test]
fn a_sink_that_drains_its_pipeline_is_told_so_and_every_item_is_delivered() {
    let (stats, result) = within_time(|| {
        let slot: Slot = Arc::default();
        let taker = Arc::clone(&slot);
        let (told, result) = mpsc::channel();
        let seen = AtomicU64::new(0);
        let gate = Gate::default();
        let pipeline = Pipeline::<u64>::builder()
            .stage("fwdrn", held_at(&gate))
            .sink(move |_| {
                if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                    let pipeline = taker.lock().unwrap().take().unwrap();
                    told.send(pipeline.drain().map(|_| ())).unwrap();
                }
            })
            .build()
            .unwrap();
        let (watch, input) = (pipeline.watch(), pipeline.input());
        *slot.lock().unwrap() = Some(pipeline);
        input.push_iter(0..100).unwrap();
        drop(input);
        gate.open();
        let result = result.recv().unwrap();
        (ended(&watch), result)
    });
    assert!(
        matches!(result, Err(PipelineError::CalledFromWithin { call: "drain", .. })),
        "{result:?}"
    );
    assert_final(&stats);
    let delivered = stats.sinks()[0].delivered;
    assert_eq!(delivered, 100, "a drain lets every stage finish: {stats}");
    assert_eq!(common::live_threads("backflow:fwdrn").len(), 0);
}

#[test]
fn a_drop_hook_that_drops_its_pipeline_during_a_push_ends_it() {
    let stats = within_time(|| {
        let slot: Slot = Arc::default();
        let taker = Arc::clone(&slot);
        let gate = Gate::default();
        let pipeline = Pipeline::<u64>::builder()
            .stage("fwhook", held_at(&gate))
            .capacity(4)
            .overflow(Overflow::DropNewest)
            .on_drop(move |_| drop(taker.lock().unwrap().take()))
            .sink(|_| {})
            .build()
            .unwrap();
        let (watch, input) = (pipeline.watch(), pipeline.input());
        *slot.lock().unwrap() = Some(pipeline);
        // The worker holds one item at the gate; four fill the queue; the next is dropped,
        // and its hook drops the pipeline inside this push.
        for x in 0..10 {
            let _ = input.push(x);
        }
        gate.open();
        drop(input);
        ended(&watch)
    });
    assert_final(&stats);
    assert!(stats.stage("fwhook").unwrap().accounting.dropped >= 1, "{stats}");
}

#[test]
fn an_iterator_that_drops_its_pipeline_during_push_iter_ends_it() {
    let stats = within_time(|| {
        let slot: Slot = Arc::default();
        let taker = Arc::clone(&slot);
        let pipeline =
            Pipeline::<u64>::builder().stage("fwiter", || |x: u64| x).sink(|_| {}).build().unwrap();
        let (watch, input) = (pipeline.watch(), pipeline.input());
        *slot.lock().unwrap() = Some(pipeline);
        let items = (0..200).inspect(move |&x| {
            if x == 50 {
                drop(taker.lock().unwrap().take());
            }
        });
        let _ = input.push_iter(items);
        drop(input);
        ended(&watch)
    });
    assert_final(&stats);
}
