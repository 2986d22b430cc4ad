//! How pipelines end: `drain`, `shutdown`, `cancel` and drop leave no thread behind and account
//! for every item; an idle pipeline sleeps; panics in a stage and in the sink.
//!
//! Thread checks look for `backflow:<stage>:<n>` names in `/proc/self/task`. Tests run in
//! parallel in one process, so every test names its stages differently (and briefly: Linux
//! keeps 15 bytes of a thread name).

mod common;

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use backflow::{DropReason, Pipeline, PipelineError, PushError, Stage, stage};
use common::{Flag, Gate};

fn two() -> NonZeroUsize {
    NonZeroUsize::new(2).unwrap()
}

/// A 2-stage pipeline, `<a>` with 2 workers and `<b>` with 1, counting deliveries.
fn two_stages(a: &str, b: &str, delivered: &Arc<AtomicU64>) -> Pipeline<u64> {
    let delivered = Arc::clone(delivered);
    Pipeline::<u64>::builder()
        .stage(a, || |x: u64| x + 1)
        .workers(two())
        .stage(b, || |x: u64| x * 2)
        .sink(move |_| {
            delivered.fetch_add(1, Ordering::Relaxed);
        })
        .build()
        .unwrap()
}

fn count(prefix: &str) -> usize {
    common::threads(prefix).len()
}

#[test]
fn drain_joins_every_thread_and_delivers_everything() {
    let delivered = Arc::default();
    let pipeline = two_stages("dra", "drb", &delivered);
    // A new thread names itself, so the names show up a moment after `build()`.
    common::eventually("the workers are up", || {
        (count("backflow:dra:"), count("backflow:drb:")) == (2, 1)
    });
    pipeline.input().push_iter(0..10_000).unwrap();
    let report = pipeline.drain().unwrap();
    assert_eq!((count("backflow:dra:"), count("backflow:drb:")), (0, 0));
    assert_eq!(delivered.load(Ordering::Relaxed), 10_000);
    assert_eq!(report.sink().delivered, 10_000);
    assert!(report.is_balanced(), "{report}");
}

#[test]
fn shutdown_within_its_deadline_is_a_drain() {
    let delivered = Arc::default();
    let pipeline = two_stages("sha", "shb", &delivered);
    pipeline.input().push_iter(0..1_000).unwrap();
    let report = pipeline.shutdown(Duration::from_secs(60)).unwrap();
    assert_eq!((count("backflow:sha:"), count("backflow:shb:")), (0, 0));
    assert_eq!((report.sink().delivered, report.abandoned()), (1_000, 0));
    assert!(report.is_balanced(), "{report}");
}

#[test]
fn cancel_stops_every_thread_on_its_own() {
    let delivered = Arc::default();
    let pipeline = two_stages("cna", "cnb", &delivered);
    let input = pipeline.input();
    input.push_iter(0..1_000).unwrap();
    pipeline.cancel();
    // The workers exit without being joined.
    common::eventually("the cancelled workers exit", || {
        count("backflow:cna:") + count("backflow:cnb:") == 0
    });
    assert_eq!(input.push(7), Err(PushError::Cancelled(7)));
    let Err(PipelineError::Cancelled { report }) = pipeline.drain() else {
        panic!("drain after cancel reports the cancel");
    };
    assert_eq!(report.sink().delivered, delivered.load(Ordering::Relaxed));
    assert_eq!(report.sink().delivered + report.abandoned(), 1_000, "{report}");
    assert!(report.is_balanced(), "{report}");
}

#[test]
fn dropping_a_running_pipeline_cancels_and_joins() {
    let (gate, entered) = (Gate::default(), Flag::default());
    let sink_gate = gate.clone();
    let sink_entered = entered.clone();
    let pipeline = Pipeline::<u64>::builder()
        .stage("dpa", || |x: u64| x)
        .capacity(16)
        .sink(move |_| {
            sink_entered.raise();
            sink_gate.wait();
        })
        .build()
        .unwrap();
    let input = pipeline.input();
    let producer = thread::spawn(move || input.push_iter(0..1_000));
    entered.wait();
    common::eventually("the worker is up", || count("backflow:dpa:") == 1);
    // The sink is held, so the producer blocks on the full queue; let the sink go as the
    // pipeline is dropped (drop joins, so it cannot wait for a sink that never returns).
    let opener = thread::spawn(move || {
        thread::sleep(Duration::from_millis(10));
        gate.open();
    });
    drop(pipeline);
    assert_eq!(count("backflow:dpa:"), 0, "drop joined the workers");
    let pushed = producer.join().unwrap();
    assert!(matches!(pushed, Err(PushError::Cancelled(_))), "{pushed:?}");
    opener.join().unwrap();
}

#[test]
fn an_idle_pipeline_sleeps() {
    let delivered = Arc::new(AtomicU64::new(0));
    let sink_count = Arc::clone(&delivered);
    let pipeline = Pipeline::<u64>::builder()
        .stage("ida", || |x: u64| x)
        .workers(two())
        .stage("idb", || |x: u64| x)
        .stage("idc", || |x: u64| x)
        .sink(move |_| {
            sink_count.fetch_add(1, Ordering::Relaxed);
        })
        .build()
        .unwrap();
    pipeline.input().push_iter(0..1_000).unwrap();
    common::eventually("everything is delivered", || delivered.load(Ordering::Relaxed) == 1_000);
    let idle = || {
        let mut threads = common::threads("backflow:id");
        threads.sort();
        threads
    };
    assert_eq!(idle().len(), 4);
    common::eventually("every worker is asleep", || idle().iter().all(|&(_, state)| state == 'S'));
    // A parked thread is not scheduled at all: its context-switch count stands still.
    // (A thread that spins or yields would be switched in and out meanwhile.)
    let before: Vec<u64> = idle().iter().map(|(tid, _)| common::switches(tid)).collect();
    thread::sleep(Duration::from_millis(50));
    let after: Vec<u64> = idle().iter().map(|(tid, _)| common::switches(tid)).collect();
    assert_eq!(before, after, "idle workers were scheduled");
    pipeline.drain().unwrap();
}

/// A stage that takes a millisecond per item.
fn slow(x: u64) -> u64 {
    thread::sleep(Duration::from_millis(1));
    x
}

#[test]
fn shutdown_past_its_deadline_abandons_the_rest_through_the_hooks() {
    let stage_drops = Arc::new(Mutex::new(Vec::new()));
    let sink_drops = Arc::new(AtomicU64::new(0));
    let (hook, sink_hook) = (Arc::clone(&stage_drops), Arc::clone(&sink_drops));
    let pipeline = Pipeline::<u64>::builder()
        .stage("sdl", || slow)
        .capacity(256)
        .on_drop(move |d| hook.lock().unwrap().push((d.stage.to_string(), d.reason, d.item)))
        .sink(|_| {})
        .on_drop(move |d| {
            assert_eq!((d.stage, d.reason), ("sink", DropReason::Abandoned));
            sink_hook.fetch_add(1, Ordering::Relaxed);
        })
        .build()
        .unwrap();
    pipeline.input().push_iter(0..200).unwrap();
    let report = pipeline.shutdown(Duration::from_millis(20)).unwrap();
    assert_eq!(count("backflow:sdl:"), 0);
    assert!(report.is_balanced(), "{report}");
    let abandoned = report.abandoned();
    assert!(abandoned > 0, "200 ms of work cannot finish in 20 ms:\n{report}");
    assert_eq!(report.sink().delivered + abandoned, 200, "{report}");
    // Every abandoned item went to a hook, once.
    let stage_drops = stage_drops.lock().unwrap();
    assert_eq!(stage_drops.len() as u64 + sink_drops.load(Ordering::Relaxed), abandoned);
    assert!(stage_drops.iter().all(|(s, r, _)| s == "sdl" && *r == DropReason::Abandoned));
    let mut items: Vec<u64> = stage_drops.iter().map(|&(_, _, x)| x).collect();
    items.dedup();
    assert_eq!(items.len(), stage_drops.len(), "an item was abandoned twice");
}

/// Panics on every item divisible by 10.
struct Picky;

impl Stage<u64> for Picky {
    type Out = u64;
    type Error = core::convert::Infallible;

    fn process(&mut self, x: u64, out: &mut impl stage::Emit<u64>) -> Result<(), Self::Error> {
        assert!(!x.is_multiple_of(10), "no multiples of ten");
        out.emit(x);
        Ok(())
    }
}

#[test]
fn a_panicking_stage_counts_the_item_as_errored_and_is_rebuilt() {
    let built = Arc::new(AtomicU64::new(0));
    let factory_count = Arc::clone(&built);
    let delivered = Arc::new(Mutex::new(Vec::new()));
    let sink_delivered = Arc::clone(&delivered);
    let pipeline = Pipeline::<u64>::builder()
        .stage("pk", move || {
            factory_count.fetch_add(1, Ordering::Relaxed);
            Picky
        })
        .sink(move |x| sink_delivered.lock().unwrap().push(x))
        .build()
        .unwrap();
    pipeline.input().push_iter(0..100).unwrap();
    let report = pipeline.drain().unwrap();
    let pk = report.stage("pk").unwrap();
    assert_eq!((pk.accounting.errored, pk.panics, pk.accounting.emitted_inputs), (10, 10, 90));
    assert_eq!(built.load(Ordering::Relaxed), 11, "one stage to start, one per panic");
    let expected: Vec<u64> = (0..100).filter(|x| x % 10 != 0).collect();
    assert_eq!(*delivered.lock().unwrap(), expected);
    assert!(report.is_balanced(), "{report}");
}

#[test]
fn a_panicking_sink_fails_the_pipeline_with_a_balanced_report() {
    let pipeline = Pipeline::<u64>::builder()
        .stage("psk", || |x: u64| x)
        .sink(|x| assert!(x != 500, "the sink refuses 500"))
        .build()
        .unwrap();
    let pushed = pipeline.input().push_iter(0..1_000);
    // The pipeline may have been cancelled under the producer's feet.
    if let Err(err) = pushed {
        assert!(matches!(err, PushError::Cancelled(_)), "{err:?}");
    }
    let Err(PipelineError::WorkerPanicked { stage, worker, message, report }) = pipeline.drain()
    else {
        panic!("a panicking sink fails the pipeline");
    };
    assert_eq!((stage.as_str(), worker, message.as_str()), ("psk", 0, "the sink refuses 500"));
    assert_eq!(report.sink().delivered, 500);
    assert!(report.is_balanced(), "{report}");
    assert_eq!(count("backflow:psk:"), 0);
}

#[test]
fn stats_render_as_an_aligned_table() {
    let delivered = Arc::default();
    let pipeline = two_stages("parse", "enrich", &delivered);
    pipeline.input().push_iter(0..5_000).unwrap();
    let report = pipeline.drain().unwrap();
    let table = report.to_string();
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines.len() >= 4, "{table}");
    for name in ["parse", "enrich", "sink"] {
        assert!(lines.iter().any(|l| l.starts_with(name)), "{name} row in\n{table}");
    }
    // Aligned: every row of the table is as wide as the header.
    let width = lines[0].chars().count();
    let rows: Vec<&&str> = lines.iter().filter(|l| !l.is_empty()).take(4).collect();
    assert!(rows.iter().all(|l| l.chars().count() == width), "ragged table:\n{table}");
    assert!(table.contains("5000"), "{table}");
}

/// Takes a whole run at once, like a stage that hands runs to a thread pool, and panics at
/// every item ending in 99: the items of the run it took and had not reported yet fail with it.
struct RunPanics;

impl Stage<u64> for RunPanics {
    type Out = u64;
    type Error = core::convert::Infallible;

    const RUNS: bool = true;

    fn process(&mut self, x: u64, out: &mut impl stage::Emit<u64>) -> Result<(), Self::Error> {
        out.emit(x);
        Ok(())
    }

    fn process_run(
        &mut self,
        items: &mut impl Iterator<Item = u64>,
        out: &mut impl stage::Emit<u64>,
        done: &mut impl FnMut(Result<(), Self::Error>),
    ) {
        let run: Vec<u64> = items.collect();
        for x in run {
            assert!(x % 100 != 99, "{x} ends in 99");
            out.emit(x);
            done(Ok(()));
        }
    }
}

#[test]
fn a_run_stage_that_panics_fails_what_it_took_and_had_not_reported() {
    let delivered = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&delivered);
    let pipeline = Pipeline::<u64>::builder()
        .stage("runs", || RunPanics)
        .sink(move |x| sink.lock().unwrap().push(x))
        .build()
        .unwrap();
    pipeline.input().push_iter(0..1_000).unwrap();
    let report = pipeline.drain().unwrap();
    assert!(report.is_balanced(), "{report}");
    let runs = report.stage("runs").unwrap();
    let delivered = delivered.lock().unwrap();
    assert_eq!(delivered.len() as u64, runs.accounting.emitted_inputs);
    assert_eq!(runs.accounting.emitted_inputs + runs.accounting.errored, 1_000);
    assert!(runs.panics >= 1 && runs.accounting.errored >= runs.panics, "{report}");
    assert!(delivered.iter().all(|x| x % 100 != 99));
    assert!(delivered.windows(2).all(|w| w[0] < w[1]), "delivered out of order");
}

/// Burns about `micros` µs of CPU (a busy wait, not a sleep: the worker stays busy).
fn spin_for(micros: u64) {
    let until = std::time::Instant::now() + Duration::from_micros(micros);
    while std::time::Instant::now() < until {
        std::hint::spin_loop();
    }
}

/// Pushes 4 000 items through `pipeline`, drains it, and returns its final stats.
fn through_4000(pipeline: Pipeline<u64>) -> backflow::stats::Stats {
    pipeline.input().push_iter(0..4_000).unwrap();
    pipeline.drain().unwrap().stats().clone()
}

#[test]
fn the_bottleneck_is_the_busy_stage_or_the_sink() {
    use backflow::Bottleneck;

    let pipeline = Pipeline::<u64>::builder()
        .stage("bparse", || |x: u64| x)
        .stage("bslow", || {
            |x: u64| {
                spin_for(50);
                x
            }
        })
        .stage("bafter", || |x: u64| x)
        .sink(|_| {})
        .build()
        .unwrap();
    let stats = through_4000(pipeline);
    let slow = stats.stage("bslow").unwrap().time;
    assert!((slow.busy + slow.backpressured + slow.idle - 1.0).abs() < 1e-9);
    match stats.bottleneck() {
        Some(Bottleneck::Stage { name, busy, upstream }) => {
            assert_eq!(name, "bslow");
            assert!(busy > 0.5, "{busy}");
            assert_eq!(upstream.map(|(up, _)| up), Some("bparse".to_string()));
        }
        other => panic!("{other:?}\n{stats}"),
    }
    assert!(stats.to_string().contains("bottleneck: bslow: busy"), "{stats}");

    let pipeline = Pipeline::<u64>::builder()
        .stage("bfirst", || |x: u64| x)
        .stage("blast", || |x: u64| x)
        .sink(|_| spin_for(50))
        .build()
        .unwrap();
    let stats = through_4000(pipeline);
    match stats.bottleneck() {
        Some(Bottleneck::Sink { last, .. }) => assert_eq!(last, "blast"),
        other => panic!("{other:?}\n{stats}"),
    }
}

/// With branches the stages are not a line: the stage feeding a slow sink, and the stage
/// feeding a busy one, are found along the pipeline's flows, not by where they were defined.
#[test]
fn the_bottleneck_follows_the_flows_through_branches() {
    use backflow::Bottleneck;

    // The main line's sink is slow; a broadcast branch, defined after, is quick.
    let pipeline = Pipeline::<u64>::builder()
        .stage("feeds-main", || |x: u64| x)
        .broadcast("copy", |branch| branch.stage("quick-branch", || |x: u64| x).sink(|_| {}))
        .sink(|_| spin_for(50))
        .build()
        .unwrap();
    let stats = through_4000(pipeline);
    match stats.bottleneck() {
        Some(Bottleneck::Sink { last, .. }) => assert_eq!(last, "feeds-main", "{stats}"),
        other => panic!("{other:?}\n{stats}"),
    }

    // A busy stage fed through a fan by `src`; a branch stage defined between them.
    let pipeline = Pipeline::<u64>::builder()
        .stage("src", || |x: u64| x)
        .broadcast("copy", |branch| branch.stage("audit", || |x: u64| x).sink(|_| {}))
        .stage("slow", || {
            |x: u64| {
                spin_for(50);
                x
            }
        })
        .sink(|_| {})
        .build()
        .unwrap();
    let stats = through_4000(pipeline);
    match stats.bottleneck() {
        Some(Bottleneck::Stage { name, upstream, .. }) => {
            assert_eq!(name, "slow", "{stats}");
            assert_eq!(upstream.map(|(up, _)| up), Some("src".to_string()), "{stats}");
        }
        other => panic!("{other:?}\n{stats}"),
    }
}

/// Holds every item back until `flush`, and panics on `panic_on`.
#[derive(Default)]
struct Hoard {
    held: Vec<u64>,
    panic_on: Option<u64>,
}

impl Stage<u64> for Hoard {
    type Out = Vec<u64>;
    type Error = std::convert::Infallible;

    fn process(
        &mut self,
        item: u64,
        _: &mut impl backflow::core::stage::Emit<Vec<u64>>,
    ) -> Result<(), Self::Error> {
        assert!(Some(item) != self.panic_on, "{item} is cursed");
        self.held.push(item);
        Ok(())
    }

    fn flush(
        &mut self,
        out: &mut impl backflow::core::stage::Emit<Vec<u64>>,
    ) -> Result<(), Self::Error> {
        if !self.held.is_empty() {
            out.emit(std::mem::take(&mut self.held));
        }
        Ok(())
    }
}

#[test]
fn what_a_stage_holds_back_when_the_pipeline_is_cancelled_is_abandoned_and_counted() {
    let lost = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&lost);
    let pipeline = Pipeline::<u64>::builder()
        .stage("hoard", Hoard::default)
        .sink(|_| {})
        .on_drop(move |d| seen.lock().unwrap().push((d.reason, d.item)))
        .build()
        .unwrap();
    pipeline.input().push_iter(0..10).unwrap();
    common::eventually("the stage took every item", || {
        pipeline.stats().stage("hoard").unwrap().accounting.emitted_inputs == 10
    });
    pipeline.cancel();
    let Err(PipelineError::Cancelled { report }) = pipeline.drain() else {
        panic!("cancelled");
    };
    assert!(report.is_balanced(), "{:?}", report.unbalanced());
    assert_eq!(report.stage("hoard").unwrap().emitted_outputs, 1);
    assert_eq!((report.sink().received, report.sink().abandoned), (1, 1));
    assert_eq!(*lost.lock().unwrap(), [(DropReason::Abandoned, (0..10).collect::<Vec<_>>())]);
}

#[test]
fn what_a_panicking_stage_held_back_goes_on_before_it_is_rebuilt() {
    let delivered = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&delivered);
    let pipeline = Pipeline::<u64>::builder()
        .stage("cursed", || Hoard { held: Vec::new(), panic_on: Some(5) })
        .sink(move |batch| seen.lock().unwrap().push(batch))
        .build()
        .unwrap();
    pipeline.input().push_iter(0..10).unwrap();
    let report = pipeline.drain().unwrap();
    assert!(report.is_balanced(), "{:?}", report.unbalanced());
    let cursed = report.stage("cursed").unwrap();
    assert_eq!((cursed.accounting.emitted_inputs, cursed.accounting.errored), (9, 1));
    assert_eq!(*delivered.lock().unwrap(), [vec![0, 1, 2, 3, 4], vec![6, 7, 8, 9]]);
}

/// A stage whose `drop` panics.
struct Grudge;

impl Drop for Grudge {
    fn drop(&mut self) {
        panic!("a grudge is never let go");
    }
}

impl Stage<u64> for Grudge {
    type Out = u64;
    type Error = std::convert::Infallible;

    fn process(
        &mut self,
        item: u64,
        out: &mut impl backflow::core::stage::Emit<u64>,
    ) -> Result<(), Self::Error> {
        out.emit(item);
        Ok(())
    }
}

#[test]
fn a_stage_whose_drop_panics_does_not_hold_up_a_shutdown_without_deadline() {
    let pipeline =
        Pipeline::<u64>::builder().stage("grudge", || Grudge).sink(|_| {}).build().unwrap();
    pipeline.input().push_iter(0..100).unwrap();
    let (done, finished) = std::sync::mpsc::channel();
    thread::spawn(move || done.send(pipeline.shutdown(Duration::MAX)));
    // A hang shows as no answer in a minute; a finished shutdown answers at once.
    let report = finished.recv_timeout(Duration::from_secs(60)).expect("shutdown returns").unwrap();
    assert_eq!(report.sink().delivered, 100);
    assert!(report.is_balanced(), "{:?}", report.unbalanced());
    assert_eq!(count("backflow:grudge:"), 0);
}

/// Items waiting in the output handle's queue when the pipeline is cancelled are abandoned
/// there, counted and handed to the drop hook, and the handle ends: the report is final.
#[test]
fn a_cancel_abandons_what_waits_in_the_output_queue() {
    let dropped = Arc::new(Mutex::new(Vec::new()));
    let hook = Arc::clone(&dropped);
    let (pipeline, mut output) = Pipeline::<u64>::builder()
        .stage("id", || |x: u64| x)
        .output()
        .on_drop(move |dropped| hook.lock().unwrap().push((dropped.item, dropped.reason)))
        .build()
        .unwrap();
    pipeline.input().push_iter(0..5).unwrap();
    common::eventually("the five wait in the output queue", || {
        pipeline.stats().sink().received == 5
    });
    pipeline.cancel();
    let error = pipeline.drain().expect_err("cancelled");
    let sink = error.report().sink();
    assert_eq!((sink.delivered, sink.abandoned, sink.in_flight), (0, 5, 0), "{error:?}");
    assert_eq!(output.next(), None);
    let dropped = dropped.lock().unwrap();
    assert_eq!(dropped.iter().map(|(item, _)| *item).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
}
