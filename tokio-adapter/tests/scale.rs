//! An async stage under a thread budget: it gets a worker while it limits the pipeline and
//! gives it back when another stage does, like a thread stage. Outcomes are awaited with a
//! bounded poll, never timed.

use std::convert::Infallible;
use std::hint::spin_loop;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use backflow::core::scaler::Reason;
use backflow::{Event, Pipeline};
use backflow_tokio::map_async;

const MICROSECOND: u64 = 1_000;

/// Busy-waits `cost` nanoseconds, read each time (the test changes it mid-run).
fn spin(cost: &AtomicU64) {
    let until = Instant::now() + Duration::from_nanos(cost.load(Ordering::Relaxed));
    while Instant::now() < until {
        spin_loop();
    }
}

/// Counts the async stage's values dropped (a retiring worker drops its own).
struct Dropped(Arc<AtomicUsize>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Sets its flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Polls `done` until it is true; fails naming `what` after 60 s.
fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "not seen within 60 s: {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn an_async_stage_takes_a_worker_and_gives_it_back() {
    let costs: Arc<[AtomicU64; 2]> = Arc::new([20, 1].map(|us| AtomicU64::new(us * MICROSECOND)));
    let moves = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&moves);
    let async_costs = Arc::clone(&costs);
    let dropped = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&dropped);
    let sync_costs = Arc::clone(&costs);
    let pipeline = Pipeline::<u64>::builder()
        .threads(3)
        .scale_interval(Duration::from_millis(20))
        .on_event(move |event: &Event<'_>| {
            if let Event::Scaled { stage, from, to, reason } = *event {
                log.lock().unwrap().push((stage.to_string(), from, to, reason));
            }
        })
        .stage("lookup", move || {
            let costs = Arc::clone(&async_costs);
            let value = Dropped(Arc::clone(&counter));
            // The future spins on the worker's thread: its time is the stage's busy time.
            map_async(move |x: u64| {
                let _ = &value;
                spin(&costs[0]);
                async move { Ok::<_, Infallible>(x) }
            })
            .concurrency(1)
        })
        .workers_range(1..=2)
        .stage("store", move || {
            let costs = Arc::clone(&sync_costs);
            move |x: u64| {
                spin(&costs[1]);
                x
            }
        })
        .workers_range(1..=2)
        .sink(|_| {})
        .build()
        .unwrap();
    let workers = |p: &Pipeline<u64>| -> Vec<usize> {
        p.stats().stages().iter().map(|s| s.workers).collect()
    };
    let stop = AtomicBool::new(false);
    let pushed = thread::scope(|scope| {
        let (input, stop) = (pipeline.input(), &stop);
        let producer = scope.spawn(move || {
            let mut pushed = 0;
            while !stop.load(Ordering::Relaxed) {
                input.push_iter(pushed..pushed + 64).unwrap();
                pushed += 64;
            }
            pushed
        });
        // Stops the producer also when an expectation below fails.
        let _stop = StopOnDrop(stop);
        eventually("the async stage has a second worker", || workers(&pipeline) == [2, 1]);
        // The async stage turns fast, the thread stage slow: the worker moves over, which
        // needs the async stage's worker to retire.
        costs[0].store(MICROSECOND, Ordering::Relaxed);
        costs[1].store(20 * MICROSECOND, Ordering::Relaxed);
        eventually("the worker moved to the thread stage", || workers(&pipeline) == [1, 2]);
        eventually("the retired worker dropped its stage", || dropped.load(Ordering::SeqCst) == 1);
        drop(_stop);
        producer.join().unwrap()
    });
    let report = pipeline.drain().unwrap();
    assert!(report.is_balanced(), "{:?}", report.unbalanced());
    assert_eq!(report.sink().delivered, pushed);
    let moves = moves.lock().unwrap();
    let retired = ("lookup".to_string(), 2, 1, Reason::Spare);
    assert!(moves.contains(&retired), "{moves:?}");
}
