//! `Watch::stats`: a pipeline's stats from another thread while it runs, its final stats once
//! it has ended, and no part of it kept alive by a watch.

mod common;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;

use backflow::{Dropped, Pipeline};
use common::{Flag, Gate};

#[test]
fn a_watch_sees_the_running_pipeline_then_its_report() {
    let (gate, entered) = (Gate::default(), Flag::default());
    let delivered = Arc::new(Mutex::new(Vec::new()));
    let pipeline = Pipeline::<u32>::builder()
        .stage("double", || |x: u32| x * 2)
        .sink(common::held_sink(&gate, &entered, &delivered))
        .build()
        .unwrap();
    let watch = pipeline.watch();
    pipeline.input().push_iter(0..10).unwrap();
    entered.wait();
    common::eventually("every item has left `double`", || {
        pipeline.stats().stage("double").unwrap().accounting.emitted_inputs == 10
    });
    // From another thread, the same numbers as the pipeline's own snapshot.
    let live = thread::spawn({
        let watch = watch.clone();
        move || watch.stats()
    })
    .join()
    .unwrap();
    let own = pipeline.stats();
    let double = live.stage("double").unwrap();
    assert_eq!(double.accounting, own.stage("double").unwrap().accounting);
    assert_eq!(double.accounting.received, 10);
    assert_eq!(live.sink().delivered, 0, "the sink is held at its first item");
    gate.open();
    let report = pipeline.drain().unwrap();
    assert_eq!(&watch.stats(), report.stats());
    assert_eq!(watch.stats().sink().delivered, 10);
}

#[test]
fn a_dropped_pipeline_leaves_its_watch_the_final_counts() {
    let (gate, entered) = (Gate::default(), Flag::default());
    let delivered = Arc::new(Mutex::new(Vec::new()));
    let pipeline = Pipeline::<u32>::builder()
        .stage("id", || |x: u32| x)
        .sink(common::held_sink(&gate, &entered, &delivered))
        .build()
        .unwrap();
    let watch = pipeline.watch();
    pipeline.input().push_iter(0..5).unwrap();
    entered.wait();
    // Dropping cancels: the held item is delivered once the gate opens, the rest abandoned.
    let opener = thread::spawn({
        let gate = gate.clone();
        let watch = watch.clone();
        move || {
            common::eventually("the pipeline is cancelled", || watch.is_cancelled());
            gate.open();
        }
    });
    drop(pipeline);
    opener.join().unwrap();
    let stats = watch.stats();
    let (id, sink) = (stats.stage("id").unwrap(), stats.sink());
    assert_eq!(id.accounting.received, 5);
    assert_eq!(id.accounting.in_flight, 0);
    let abandoned = id.accounting.abandoned + sink.abandoned;
    assert_eq!(sink.delivered + abandoned, 5, "{stats:?}");
    assert_eq!(stats, watch.stats(), "final: it no longer changes");
}

/// A drop hook that owns the only sender of a channel: once the pipeline is gone, the channel
/// is closed, watch or no watch.
#[test]
fn a_watch_does_not_keep_the_pipelines_hooks_alive() {
    for keep_a_watch in [false, true] {
        let (tx, rx) = mpsc::channel::<u32>();
        let pipeline = Pipeline::<u32>::builder()
            .stage("id", || |x: u32| x)
            .on_drop(move |dropped: Dropped<'_, u32>| {
                let _ = tx.send(dropped.item);
            })
            .sink(|_| {})
            .build()
            .unwrap();
        let watch = keep_a_watch.then(|| pipeline.watch());
        pipeline.input().push(1).unwrap();
        let report = pipeline.drain().unwrap();
        assert_eq!(report.sink().delivered, 1);
        assert_eq!(rx.try_recv(), Err(mpsc::TryRecvError::Disconnected), "watch: {keep_a_watch}");
        if let Some(watch) = watch {
            assert_eq!(&watch.stats(), report.stats());
        }
    }
}
