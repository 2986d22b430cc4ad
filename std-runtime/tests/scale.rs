//! The thread budget: workers move to the stage that limits the pipeline and back, every item
//! stays counted, a retiring worker's stage is flushed, added workers are joined at the end,
//! and every setting that cannot work is refused by `build()`.
//!
//! The tests assert outcomes (where the workers end up, the sequence of [`Event::Scaled`],
//! the final accounting), never timings: they wait for each outcome with a bounded poll
//! ([`common::eventually`]), with a short scaling interval so that it comes soon.

mod common;

use std::hint::spin_loop;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use backflow::core::scaler::{Reason, ScalerConfig};
use backflow::{ConfigError, Event, Input, Pipeline, stage};
use common::{assert_no_backflow_threads, eventually};

/// Busy-waits `cost` nanoseconds (read each time: a test changes it mid-run).
fn spin(cost: &AtomicU64) {
    let until = Instant::now() + Duration::from_nanos(cost.load(Ordering::Relaxed));
    while Instant::now() < until {
        spin_loop();
    }
}

/// Counts the stage values a stage's factory made and those dropped since.
#[derive(Debug, Default)]
struct Instances {
    made: AtomicUsize,
    dropped: AtomicUsize,
}

/// One stage value's share of [`Instances`], counted when made and when dropped.
struct Instance(Arc<Instances>);

impl Instance {
    fn new(instances: &Arc<Instances>) -> Self {
        instances.made.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(instances))
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.0.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

/// The [`Event::Scaled`]s of a run, in order.
type Scaled = Arc<Mutex<Vec<(String, usize, usize, Reason)>>>;

fn scaled_log() -> (Scaled, impl Fn(&Event<'_>) + Send + Sync + 'static) {
    let log = Scaled::default();
    let keep = Arc::clone(&log);
    let handler = move |event: &Event<'_>| {
        if let Event::Scaled { stage, from, to, reason } = *event {
            keep.lock().unwrap().push((stage.to_string(), from, to, reason));
        }
    };
    (log, handler)
}

fn workers(pipeline: &Pipeline<u64>) -> Vec<usize> {
    pipeline.stats().stages().iter().map(|s| s.workers).collect()
}

/// Pushes `0, 1, 2, …` as fast as the pipeline takes them until `stop`; returns how many.
fn feed(input: &Input<u64>, stop: &AtomicBool) -> u64 {
    let pushed = AtomicU64::new(0);
    let items = (0..).take_while(|_| !stop.load(Ordering::Relaxed)).inspect(|_| {
        pushed.fetch_add(1, Ordering::Relaxed);
    });
    input.push_iter(items).expect("the pipeline takes items until it is drained");
    pushed.load(Ordering::Relaxed)
}

const MICROSECOND: u64 = 1_000;

/// The scaling interval of these tests: short, for quick outcomes, but long enough that a
/// moment without CPU on a loaded machine (a stage starved of items for a few time slices)
/// does not look like a steady state for three intervals in a row.
const INTERVAL: Duration = Duration::from_millis(50);

/// The Scaled events so far, once there are `n`.
fn wait_for_events(log: &Scaled, n: usize) -> Vec<(String, usize, usize, Reason)> {
    eventually(&format!("{n} Scaled events"), || log.lock().unwrap().len() >= n);
    log.lock().unwrap().clone()
}

fn event(stage: &str, from: usize, to: usize, reason: Reason) -> (String, usize, usize, Reason) {
    (stage.to_string(), from, to, reason)
}

/// Three stages of 1, 20 and 1 µs per item (busy-waiting), 4 threads, each stage 1 to 3
/// workers starting at 1: the slow stage gets the fourth thread, and then nothing moves while
/// the load stays the same. When the slow stage turns fast and the last one slow, the
/// worker moves over to the last one. Every item arrives, and every stage value is dropped.
#[test]
fn workers_move_to_the_slow_stage_and_follow_it() {
    let costs: Arc<[AtomicU64; 3]> =
        Arc::new([1, 20, 1].map(|us| AtomicU64::new(us * MICROSECOND)));
    let instances: Arc<[Arc<Instances>; 3]> = Arc::default();
    let (log, log_scaled) = scaled_log();
    // When the last stage gets its worker, how many of the slow stage's values were dropped:
    // within the budget of 4 threads, the retiring worker has left (and dropped its value)
    // before the worker that takes its thread starts.
    let dropped_at_addition = Arc::new(Mutex::new(None));
    let (seen, slow) = (Arc::clone(&dropped_at_addition), Arc::clone(&instances[1]));
    let handler = move |event: &Event<'_>| {
        if let Event::Scaled { stage: "c", reason: Reason::Bottleneck, .. } = *event {
            *seen.lock().unwrap() = Some(slow.dropped.load(Ordering::SeqCst));
        }
        log_scaled(event);
    };
    let stage_for = |i: usize| {
        let (costs, instances) = (Arc::clone(&costs), Arc::clone(&instances));
        move || {
            let (costs, instance) = (Arc::clone(&costs), Instance::new(&instances[i]));
            move |x: u64| {
                let _ = &instance;
                spin(&costs[i]);
                x
            }
        }
    };
    let delivered = Arc::new(AtomicU64::new(0));
    let sink = Arc::clone(&delivered);
    let pipeline = Pipeline::<u64>::builder()
        .threads(4)
        .scale_interval(INTERVAL)
        .on_event(handler)
        .stage("a", stage_for(0))
        .workers_range(1..=3)
        .stage("b", stage_for(1))
        .workers_range(1..=3)
        .stage("c", stage_for(2))
        .workers_range(1..=3)
        .sink(move |_| {
            sink.fetch_add(1, Ordering::Relaxed);
        })
        .build()
        .unwrap();
    assert_eq!(workers(&pipeline), [1, 1, 1]);
    let stop = AtomicBool::new(false);
    let pushed = thread::scope(|scope| {
        let (input, stop) = (pipeline.input(), &stop);
        let producer = scope.spawn(move || feed(&input, stop));

        eventually("the slow stage has a second worker", || workers(&pipeline) == [1, 2, 1]);
        let settled = wait_for_events(&log, 1);
        assert_eq!(settled, [event("b", 1, 2, Reason::Bottleneck)]);
        // Settled: another 20 000 items through the slow stage change nothing.
        let through = |p: &Pipeline<u64>| p.stats().stages()[1].accounting.emitted_inputs;
        let later = through(&pipeline) + 20_000;
        eventually("20 000 more items went through", || through(&pipeline) >= later);
        assert_eq!(*log.lock().unwrap(), settled);
        assert_eq!(workers(&pipeline), [1, 2, 1]);
        let stats = pipeline.stats();
        let b = stats.stage("b").unwrap();
        assert_eq!((b.workers_min, b.workers_max), (1, 3));
        assert!(stats.to_string().contains("2 (1-3)"), "{stats}");
        let exposition = stats.to_prometheus("t");
        assert!(exposition.contains("backflow_stage_workers{pipeline=\"t\",stage=\"b\"} 2\n"));

        // The slow stage turns fast, the last one slow: the worker moves.
        costs[1].store(MICROSECOND, Ordering::Relaxed);
        costs[2].store(20 * MICROSECOND, Ordering::Relaxed);
        eventually("the worker moved to the last stage", || workers(&pipeline) == [1, 1, 2]);
        let moves = [
            event("b", 1, 2, Reason::Bottleneck),
            event("b", 2, 1, Reason::Spare),
            event("c", 1, 2, Reason::Bottleneck),
        ];
        assert_eq!(wait_for_events(&log, 3), moves);
        // The retired worker's stage value was flushed and dropped when it left.
        eventually("the retired worker's stage was dropped", || {
            instances[1].dropped.load(Ordering::SeqCst) == 1
        });
        // (Once items stop, `c` has a worker to spare: what happens during the drain is not
        // this test's business.)
        stop.store(true, Ordering::Relaxed);
        producer.join().unwrap()
    });
    assert_eq!(*dropped_at_addition.lock().unwrap(), Some(1), "added before one left");
    let report = pipeline.drain().unwrap();
    assert!(report.is_balanced(), "{:?}", report.unbalanced());
    assert_eq!(delivered.load(Ordering::Relaxed), pushed);
    assert_eq!(report.sink().delivered, pushed);
    // Every stage value made (the first ones, and one per added worker) has been dropped.
    let counts = instances
        .each_ref()
        .map(|i| (i.made.load(Ordering::SeqCst), i.dropped.load(Ordering::SeqCst)));
    assert_eq!(counts, [(1, 1), (2, 2), (2, 2)]);
}

/// A stage that holds what it received (a running sum, emitted on flush) gets a second
/// worker while it is slow, and gives it up when items stop: the retiring worker flushes its
/// partial sum on its way out, so the sums that reach the sink add up to every item.
#[test]
fn a_retiring_worker_flushes_what_its_stage_holds() {
    let cost = Arc::new(AtomicU64::new(50 * MICROSECOND));
    let instances = Arc::new(Instances::default());
    let (log, handler) = scaled_log();
    let (sum, made) = (Arc::clone(&cost), Arc::clone(&instances));
    let total = Arc::new(AtomicU64::new(0));
    let sink = Arc::clone(&total);
    let pipeline = Pipeline::<u64>::builder()
        .threads(3)
        .scale_interval(INTERVAL)
        .on_event(handler)
        .stage("pass", || |x: u64| x)
        .stage("sum", move || {
            let (cost, instance) = (Arc::clone(&sum), Instance::new(&made));
            stage::fold(0u64, move |acc, x: u64| {
                let _ = &instance;
                spin(&cost);
                acc + x
            })
        })
        .workers_range(1..=2)
        .sink(move |partial| {
            sink.fetch_add(partial, Ordering::Relaxed);
        })
        .build()
        .unwrap();
    let stop = AtomicBool::new(false);
    let pushed = thread::scope(|scope| {
        let (input, stop) = (pipeline.input(), &stop);
        let producer = scope.spawn(move || feed(&input, stop));
        eventually("`sum` has a second worker", || workers(&pipeline) == [1, 2]);
        stop.store(true, Ordering::Relaxed);
        producer.join().unwrap()
    });
    // No more items: both workers idle, one is spare and leaves, flushing its sum.
    eventually("`sum` is back to one worker", || workers(&pipeline) == [1, 1]);
    eventually("the retired worker's stage was dropped", || {
        instances.dropped.load(Ordering::SeqCst) == 1
    });
    let report = pipeline.drain().unwrap();
    assert!(report.is_balanced(), "{:?}", report.unbalanced());
    assert_eq!(total.load(Ordering::Relaxed), pushed * pushed.saturating_sub(1) / 2);
    assert_eq!(report.stage("sum").unwrap().accounting.emitted_inputs, pushed);
    // A flush per stage value: the retired ones', and the remaining one's at the end.
    assert_eq!(report.sink().delivered, instances.made.load(Ordering::SeqCst) as u64);
    let moves = log.lock().unwrap().clone();
    assert_eq!(moves.first(), Some(&event("sum", 1, 2, Reason::Bottleneck)));
    assert_eq!(moves.last(), Some(&event("sum", 2, 1, Reason::Spare)));
    let made = instances.made.load(Ordering::SeqCst);
    assert_eq!(made, 1 + moves.iter().filter(|m| m.3 == Reason::Bottleneck).count());
    assert_eq!(instances.dropped.load(Ordering::SeqCst), made);
}

/// An ordered stage keeps its order while a worker joins it.
#[test]
fn an_ordered_stage_keeps_its_order_as_workers_join() {
    let (log, handler) = scaled_log();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&seen);
    let pipeline = Pipeline::<u64>::builder()
        .threads(3)
        .scale_interval(INTERVAL)
        .on_event(handler)
        .stage("pass", || |x: u64| x)
        .stage("slow", || {
            let cost = AtomicU64::new(20 * MICROSECOND);
            move |x: u64| {
                spin(&cost);
                x
            }
        })
        .workers_range(1..=2)
        .ordered()
        .sink(move |x| keep.lock().unwrap().push(x))
        .build()
        .unwrap();
    let stop = AtomicBool::new(false);
    let pushed = thread::scope(|scope| {
        let (input, stop) = (pipeline.input(), &stop);
        let producer = scope.spawn(move || feed(&input, stop));
        eventually("`slow` has a second worker", || workers(&pipeline) == [1, 2]);
        // Enough items after the second worker joined for the two to interleave.
        let now = pipeline.stats().stages()[1].accounting.emitted_inputs;
        eventually("5 000 more items", || {
            pipeline.stats().stages()[1].accounting.emitted_inputs >= now + 5_000
        });
        stop.store(true, Ordering::Relaxed);
        producer.join().unwrap()
    });
    let report = pipeline.drain().unwrap();
    assert!(report.is_balanced(), "{:?}", report.unbalanced());
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len() as u64, pushed);
    assert!(seen.iter().copied().eq(0..pushed), "out of order");
    assert_eq!(log.lock().unwrap()[0], event("slow", 1, 2, Reason::Bottleneck));
}

/// Dropping a pipeline whose controller added workers, or cancelling it, joins every thread:
/// the ones started at launch, the added ones and the controller.
#[test]
fn added_workers_and_the_controller_are_joined_on_cancel_and_drop() {
    common::isolated("added_workers_and_the_controller_are_joined_on_cancel_and_drop", || {
        for cancel in [true, false] {
            let (log, handler) = scaled_log();
            let pipeline = Pipeline::<u64>::builder()
                .threads(3)
                .scale_interval(Duration::from_millis(10))
                .on_event(handler)
                .stage("pass", || |x: u64| x)
                .stage("slow", || {
                    let cost = AtomicU64::new(50 * MICROSECOND);
                    move |x: u64| {
                        spin(&cost);
                        x
                    }
                })
                .workers_range(1..=2)
                .sink(|_| {})
                .build()
                .unwrap();
            let stop = AtomicBool::new(false);
            thread::scope(|scope| {
                let (input, stop) = (pipeline.input(), &stop);
                // A cancel ends the push with an error, which is not what is tested here.
                let producer = scope.spawn(move || {
                    let items = (0..).take_while(|_| !stop.load(Ordering::Relaxed));
                    let _ = input.push_iter(items);
                });
                eventually("a worker was added", || !log.lock().unwrap().is_empty());
                if cancel {
                    pipeline.cancel();
                } else {
                    stop.store(true, Ordering::Relaxed);
                }
                producer.join().unwrap();
            });
            if cancel {
                let error = pipeline.drain().unwrap_err();
                assert!(error.report().is_balanced(), "{:?}", error.report().unbalanced());
            } else {
                drop(pipeline);
            }
            assert_no_backflow_threads();
        }
    });
}

#[test]
fn every_scaling_setting_that_cannot_work_is_refused() {
    let line = || Pipeline::<u64>::builder().stage("a", || |x: u64| x);
    let error = |built: Result<Pipeline<u64>, ConfigError>| built.unwrap_err();
    let stage = || "b".to_string();
    let two = || line().stage("b", || |x: u64| x).workers_range(1..=2).sink(|_| {}).build();
    assert!(two().is_ok());
    assert_eq!(
        error(line().stage("b", || |x: u64| x).workers_range(0..=2).sink(|_| {}).build()),
        ConfigError::WorkersRange { stage: stage(), min: 0, max: 2 }
    );
    #[allow(clippy::reversed_empty_ranges, reason = "the error under test")]
    let reversed = line().stage("b", || |x: u64| x).workers_range(3..=2).sink(|_| {}).build();
    assert_eq!(error(reversed), ConfigError::WorkersRange { stage: stage(), min: 3, max: 2 });
    assert_eq!(
        error(
            line()
                .stage("b", || |x: u64| x)
                .key_ordered(|x: &u64| *x)
                .workers_range(1..=2)
                .sink(|_| {})
                .build()
        ),
        ConfigError::KeyOrderedScaled { stage: stage() }
    );
    // A range of one value is a fixed number of workers: key ordering is fine with it.
    let fixed = line().stage("b", || |x: u64| x).key_ordered(|x: &u64| *x).workers_range(2..=2);
    assert!(fixed.sink(|_| {}).build().is_ok());
    // The budget must cover every stage's workers at the start: 1 for `a`, 2 for `b`.
    let budget = |threads: usize| {
        Pipeline::<u64>::builder()
            .threads(threads)
            .stage("a", || |x: u64| x)
            .stage("b", || |x: u64| x)
            .workers_range(2..=4)
            .sink(|_| {})
            .build()
    };
    assert_eq!(error(budget(2)), ConfigError::ThreadBudget { budget: 2, needed: 3 });
    assert!(budget(3).is_ok());
    // Also without a range: a budget below the fixed workers cannot hold.
    let fixed = Pipeline::<u64>::builder().threads(0).stage("a", || |x: u64| x).sink(|_| {});
    assert_eq!(error(fixed.build()), ConfigError::ThreadBudget { budget: 0, needed: 1 });
    let scaling = |source: backflow::Source<u64>| {
        error(source.stage("a", || |x: u64| x).workers_range(1..=2).sink(|_| {}).build())
    };
    let builder = Pipeline::<u64>::builder;
    assert_eq!(
        scaling(builder().scale_interval(Duration::ZERO)),
        ConfigError::Scaling { field: "scale_interval", expected: "longer than zero" }
    );
    assert!(matches!(
        scaling(builder().timings(false)),
        ConfigError::Scaling { field: "timings", .. }
    ));
    let config = ScalerConfig { samples: 0, ..ScalerConfig::default() };
    assert!(matches!(
        scaling(builder().scaler(config)),
        ConfigError::Scaling { field: "scaler.samples", .. }
    ));
    // Settings that matter only with a range are not checked without one.
    let plain = builder().scale_interval(Duration::ZERO).timings(false).scaler(config);
    assert!(plain.stage("a", || |x: u64| x).sink(|_| {}).build().is_ok());
}
