//! Pipelines used the way a hostile (or merely careless) user would: callbacks that panic in
//! every place a callback runs, durations and capacities at the end of their range, names that
//! collide, producers racing the end of a pipeline. Whatever the user does, a pipeline must end
//! with a typed error rather than abort or hang, and its final report must count every item.
//!
//! Tests whose failure would abort or hang the process run in a child process
//! ([`common::isolated`], killed after [`common::CHILD_DEADLINE`]); no other pipeline runs
//! there, so they also check that no `backflow` thread is left behind.

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::num::NonZeroUsize;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Barrier, Mutex, mpsc};
use std::thread;
use std::time::Duration;

use backflow::core::RetrySchedule;
use backflow::core::breaker::{BreakerConfig, BreakerState};
use backflow::core::ring::MAX_CAPACITY;
use backflow::stage::{self, Emit, Stage};
use backflow::{
    Accounting, Builder, ConfigError, Dropped, Input, Overflow, Pipeline, PipelineError, PushError,
    Report,
};
use common::{Flag, Gate, assert_no_backflow_threads, eventually};

/// A test whose body runs in a child process (see [`common::ChildTest`]), optionally with a
/// capped address space.
macro_rules! isolated_test {
    (fn $name:ident() $body:block) => {
        #[test]
        fn $name() {
            common::isolated(stringify!($name), || $body);
        }
    };
    (memory_limit = $bytes:expr; fn $name:ident() $body:block) => {
        #[test]
        fn $name() {
            common::ChildTest::new(stringify!($name)).memory_limit($bytes).isolate(|| $body);
        }
    };
}

// ---- helpers ----

/// A drop hook as users write them: it forwards the item to a channel whose receiver is gone,
/// so `send(..).unwrap()` panics. Counts its calls.
fn forward_to_closed_channel<T: Send + 'static>(
    calls: &Arc<AtomicU64>,
) -> impl Fn(Dropped<'_, T>) + Send + Sync + 'static {
    let (tx, rx) = mpsc::channel::<T>();
    drop(rx);
    let calls = Arc::clone(calls);
    move |dropped| {
        calls.fetch_add(1, SeqCst);
        tx.send(dropped.item).unwrap();
    }
}

/// What is wrong with a final report: unbalanced nodes, and anything left in flight in a stage
/// or a sink (in a final report nothing is in flight any more: such an item was lost).
fn final_problems(report: &Report) -> Vec<String> {
    let mut problems = report.unbalanced();
    for s in report.stages().iter().filter(|s| s.accounting.in_flight != 0) {
        problems.push(format!("{}: {} in flight after the end", s.name, s.accounting.in_flight));
    }
    for k in report.sinks() {
        if k.in_flight != 0 || k.received != k.delivered + k.abandoned {
            problems.push(format!("sink {}: {k:?}", k.name));
        }
    }
    problems
}

/// Asserts that `report` is final: balanced, nothing in flight anywhere.
fn assert_final(report: &Report) {
    let problems = final_problems(report);
    assert!(problems.is_empty(), "not a final report: {problems:?}\n{report}");
}

/// Asserts that the pipeline ended in a typed error with a final report; returns the report.
fn expect_failed(result: &Result<Report, PipelineError>) -> &Report {
    let report = match result {
        Ok(report) => panic!("expected a PipelineError, the pipeline drained Ok:\n{report}"),
        Err(error) => error.report(),
    };
    assert_final(report);
    report
}

fn report_of(result: &Result<Report, PipelineError>) -> &Report {
    match result {
        Ok(report) => report,
        Err(error) => error.report(),
    }
}

fn accounting(report: &Report, stage: &str) -> Accounting {
    report.stage(stage).unwrap_or_else(|| panic!("no stage {stage} in\n{report}")).accounting
}

/// A stage that passes items on, but first raises `entered` and waits at `gate`: its worker is
/// held on the first item it takes until the test opens the gate.
#[derive(Clone, Default)]
struct Held {
    gate: Gate,
    entered: Flag,
}

impl Held {
    fn factory(&self) -> impl Fn() -> Self + Send + Sync + 'static {
        let held = self.clone();
        move || held.clone()
    }
}

impl Stage<u64> for Held {
    type Out = u64;
    type Error = Infallible;

    fn process(&mut self, x: u64, out: &mut impl Emit<u64>) -> Result<(), Infallible> {
        self.entered.raise();
        self.gate.wait();
        out.emit(x);
        Ok(())
    }
}

/// A stage that may fail an item: a `try_map` over a boxed closure.
type Faulty = stage::TryMap<Box<dyn FnMut(u64) -> Result<u64, String> + Send>>;

fn counter() -> Arc<AtomicU64> {
    Arc::default()
}

fn counting_sink(count: &Arc<AtomicU64>) -> impl FnMut(u64) + Send + 'static {
    let count = Arc::clone(count);
    move |_| {
        count.fetch_add(1, SeqCst);
    }
}

// ---- 1. a drop hook panics while drain, drop or the output's drop sweeps the leftovers ----

/// Stage `held` with a panicking drop hook, its worker held on item 0 and `queued` more items
/// waiting behind it; then cancelled and let go, so the queued items are left for a sweep.
fn leftovers_for_a_panicking_hook(queued: u64) -> (Pipeline<u64>, Arc<AtomicU64>) {
    let (held, calls) = (Held::default(), counter());
    let pipeline = Pipeline::<u64>::builder()
        .stage("held", held.factory())
        .capacity(64)
        .on_drop(forward_to_closed_channel(&calls))
        .sink(|_| {})
        .build()
        .unwrap();
    let input = pipeline.input();
    input.push(0).unwrap();
    held.entered.wait();
    input.push_iter(1..=queued).unwrap();
    pipeline.cancel();
    held.gate.open();
    (pipeline, calls)
}

isolated_test! {
    fn a_stage_drop_hook_panicking_in_the_sweep_of_drain_is_a_typed_error() {
        let (pipeline, calls) = leftovers_for_a_panicking_hook(20);
        let result = pipeline.drain();
        let report = expect_failed(&result);
        assert_eq!(accounting(report, "held").received, 21, "{report}");
        assert!(calls.load(SeqCst) >= 1, "the hook was called");
        assert_no_backflow_threads();
    }
}

isolated_test! {
    fn a_stage_drop_hook_panicking_in_the_sweep_of_a_dropped_pipeline_does_not_abort() {
        let (pipeline, calls) = leftovers_for_a_panicking_hook(20);
        let dropped = catch_unwind(AssertUnwindSafe(|| drop(pipeline)));
        assert!(dropped.is_ok(), "dropping the pipeline panicked");
        assert!(calls.load(SeqCst) >= 1, "the hook was called");
        assert_no_backflow_threads();
    }
}

isolated_test! {
    fn an_output_drop_hook_panicking_when_the_output_is_dropped_is_a_typed_error() {
        let calls = counter();
        let (pipeline, output) = Pipeline::<u64>::builder()
            .stage("id", || |x: u64| x)
            .capacity(64)
            .output()
            .on_drop(forward_to_closed_channel(&calls))
            .build()
            .unwrap();
        pipeline.input().push_iter(0..10).unwrap();
        eventually("the outputs wait in the output's queue", || {
            pipeline.stats().sink().received == 10
        });
        let dropped = catch_unwind(AssertUnwindSafe(|| drop(output)));
        assert!(dropped.is_ok(), "dropping the output panicked");
        let result = pipeline.drain();
        let report = expect_failed(&result);
        assert_eq!((report.sink().received, report.sink().abandoned), (10, 10), "{report}");
        assert!(calls.load(SeqCst) >= 1, "the hook was called");
        assert_no_backflow_threads();
    }
}

// ---- 2. a first-stage drop hook panics inside push(); an iterator panics in push_iter ----

/// Fills stage `first` (capacity 4, held on item 0, a panicking drop hook) and pushes one item
/// more, so that `overflow` drops an item inside `push()` and the hook panics in the
/// producer's hands. Items 0..=5 entered the stage (pushed, or dropped by the policy).
fn push_that_drops_into_a_panicking_hook(overflow: Overflow) {
    let (held, calls) = (Held::default(), counter());
    let pipeline = Pipeline::<u64>::builder()
        .stage("first", held.factory())
        .capacity(4)
        .overflow(overflow)
        .on_drop(forward_to_closed_channel(&calls))
        .sink(|_| {})
        .build()
        .unwrap();
    let input = pipeline.input();
    input.push(0).unwrap();
    held.entered.wait();
    input.push_iter(1..=4).unwrap();
    // Whether the hook's panic reaches the producer or is caught, the push is over.
    let _ = catch_unwind(AssertUnwindSafe(|| input.push(5)));
    assert_eq!(calls.load(SeqCst), 1, "the policy dropped one item");
    held.gate.open();
    let result = pipeline.drain();
    let report = expect_failed(&result);
    let first = accounting(report, "first");
    assert_eq!((first.received, first.dropped), (6, 1), "{report}");
    assert_no_backflow_threads();
}

isolated_test! {
    fn a_drop_newest_hook_panicking_inside_push_does_not_hang_drain() {
        push_that_drops_into_a_panicking_hook(Overflow::DropNewest);
    }
}

isolated_test! {
    fn a_drop_oldest_hook_panicking_inside_push_does_not_hang_drain() {
        push_that_drops_into_a_panicking_hook(Overflow::DropOldest);
    }
}

isolated_test! {
    fn push_iter_whose_iterator_panics_midway_keeps_what_it_pushed() {
        let delivered = counter();
        let pipeline = Pipeline::<u64>::builder()
            .stage("first", || |x: u64| x)
            .sink(counting_sink(&delivered))
            .build()
            .unwrap();
        let input = pipeline.input();
        let fails_at_5 = |&x: &u64| assert_ne!(x, 5, "the producer's own iterator fails at 5");
        let items = (0..10u64).inspect(fails_at_5);
        let _ = catch_unwind(AssertUnwindSafe(|| input.push_iter(items)));
        let result = pipeline.drain();
        let report = report_of(&result);
        assert_final(report);
        assert_eq!(accounting(report, "first").received, 5, "{report}");
        assert_eq!(delivered.load(SeqCst), 5);
        assert_no_backflow_threads();
    }
}

// ---- 3. a drop hook panics on an upstream worker's thread ----

/// With the stage after `up` holding item 0 (its queue empty), `up` fills that queue and its
/// policy drops the rest into the (panicking) hook, on `up`'s worker: the pipeline fails,
/// every item counted, no thread left.
fn overflow_into_the_hook_on_up(pipeline: Pipeline<u64>, held: &Held, calls: &Arc<AtomicU64>) {
    let input = pipeline.input();
    input.push(0).unwrap();
    held.entered.wait();
    input.push_iter(1..=200).unwrap();
    eventually("the drop hook ran", || calls.load(SeqCst) >= 1);
    held.gate.open();
    let result = pipeline.drain();
    let report = expect_failed(&result);
    assert_eq!(accounting(report, "up").received, 201, "{report}");
    assert_no_backflow_threads();
}

isolated_test! {
    fn a_later_stage_drop_hook_panicking_on_the_upstream_worker_is_counted() {
        let (held, calls) = (Held::default(), counter());
        let pipeline = Pipeline::<u64>::builder()
            .stage("up", || |x: u64| x)
            .stage("down", held.factory())
            .capacity(4)
            .overflow(Overflow::DropNewest)
            .on_drop(forward_to_closed_channel(&calls))
            .sink(|_| {})
            .build()
            .unwrap();
        overflow_into_the_hook_on_up(pipeline, &held, &calls);
    }
}

isolated_test! {
    fn a_key_ordered_stage_drop_hook_panicking_on_the_upstream_worker_is_counted() {
        let (held, calls) = (Held::default(), counter());
        let pipeline = Pipeline::<u64>::builder()
            .stage("up", || |x: u64| x)
            .stage("keyed", held.factory())
            .workers(NonZeroUsize::new(2).unwrap())
            .key_ordered(|x: &u64| *x)
            .capacity(4)
            .overflow(Overflow::DropNewest)
            .on_drop(forward_to_closed_channel(&calls))
            .sink(|_| {})
            .build()
            .unwrap();
        overflow_into_the_hook_on_up(pipeline, &held, &calls);
    }
}

isolated_test! {
    fn a_sink_drop_hook_panicking_on_the_last_worker_is_counted() {
        let (gate, entered, calls) = (Gate::default(), Flag::default(), counter());
        let delivered = Arc::new(Mutex::new(Vec::new()));
        // One item becomes 300 outputs, handed to the sink in batches: the sink is held on the
        // first batch, the pipeline cancelled, and the next batch is abandoned into the hook.
        let pipeline = Pipeline::<u64>::builder()
            .stage("spread", || stage::flat_map(|x: u64| (0..300).map(move |i| x * 1_000 + i)))
            .sink(common::held_sink(&gate, &entered, &delivered))
            .on_drop(forward_to_closed_channel(&calls))
            .build()
            .unwrap();
        pipeline.input().push(0).unwrap();
        entered.wait();
        pipeline.cancel();
        gate.open();
        let result = pipeline.drain();
        let report = expect_failed(&result);
        assert!(calls.load(SeqCst) >= 1, "the hook was called");
        assert_eq!(report.sink().delivered, delivered.lock().unwrap().len() as u64);
        assert_eq!(report.sink().received, 300, "{report}");
        assert_no_backflow_threads();
    }
}

// ---- 4. a stage panics, then its factory panics while rebuilding it ----

/// Passes items on, panicking on `panic_at`; with `RUNS`, it takes each run whole before
/// processing any of it.
struct Fragile<const RUNS: bool> {
    panic_at: u64,
}

impl<const R: bool> Stage<u64> for Fragile<R> {
    type Out = u64;
    type Error = Infallible;

    const RUNS: bool = R;

    fn process(&mut self, x: u64, out: &mut impl Emit<u64>) -> Result<(), Infallible> {
        assert_ne!(x, self.panic_at, "injected: the stage fails at {x}");
        out.emit(x);
        Ok(())
    }

    fn process_run(
        &mut self,
        items: &mut impl Iterator<Item = u64>,
        out: &mut impl Emit<u64>,
        done: &mut impl FnMut(Result<(), Infallible>),
    ) {
        let run: Vec<u64> = items.collect();
        for x in run {
            let result = self.process(x, out);
            done(result);
        }
    }
}

/// Builds stage `fragile` (one worker, panicking at item 5) from a factory that panics when
/// asked to rebuild it, applies `configure` to it, runs 20 items through and checks that the
/// pipeline fails with every item counted.
fn factory_panics_on_rebuild<const RUNS: bool>(
    configure: impl FnOnce(Builder<u64, u64, u64>) -> Builder<u64, u64, u64>,
) {
    let built = AtomicBool::new(false);
    let factory = move || {
        assert!(!built.swap(true, SeqCst), "injected: the factory fails on rebuild");
        Fragile::<RUNS> { panic_at: 5 }
    };
    let builder = configure(Pipeline::<u64>::builder().stage("fragile", factory));
    let pipeline = builder.sink(|_| {}).build().unwrap();
    // The push may be refused once the pipeline fails.
    let _ = pipeline.input().push_iter(0..20);
    let result = pipeline.drain();
    let report = expect_failed(&result);
    assert!(accounting(report, "fragile").errored >= 1, "the item at 5 failed:\n{report}");
}

#[test]
fn factory_panicking_on_rebuild_with_a_before_hook_counts_every_item() {
    factory_panics_on_rebuild::<false>(|b| b.before(|_| {}));
}

#[test]
fn factory_panicking_on_rebuild_with_an_after_hook_counts_every_item() {
    factory_panics_on_rebuild::<false>(|b| b.after(|_| {}));
}

#[test]
fn factory_panicking_on_rebuild_with_retries_counts_every_item() {
    let schedule = RetrySchedule::new(Duration::ZERO, Duration::ZERO, 2).unwrap();
    factory_panics_on_rebuild::<false>(move |b| b.retry(schedule));
}

#[test]
fn factory_panicking_on_rebuild_with_a_dead_letter_handler_counts_every_item() {
    factory_panics_on_rebuild::<false>(|b| b.dead_letter(|_| {}));
}

#[test]
fn factory_panicking_on_rebuild_of_a_run_stage_counts_every_item() {
    factory_panics_on_rebuild::<true>(|b| b);
}

#[test]
fn factory_panicking_on_rebuild_of_a_run_stage_with_a_before_hook_counts_every_item() {
    factory_panics_on_rebuild::<true>(|b| b.before(|_| {}));
}

// ---- 5. a broadcast clone, a branch predicate or a key function panics ----

/// The item whose clone, route or key panics.
const POISON: u64 = 7;

/// An item whose `Clone` panics for [`POISON`], as a clone that allocates or locks might.
#[derive(Debug)]
struct Brittle(u64);

impl Clone for Brittle {
    fn clone(&self) -> Self {
        assert_ne!(self.0, POISON, "injected: cannot clone {}", self.0);
        Self(self.0)
    }
}

/// Pushes `items`, drains, and checks that the report is final, that `first` received every
/// item, and that the failure shows: a typed error, or items counted as errored.
fn counts_a_panicking_split<T: Send + 'static>(pipeline: Pipeline<T>, items: Vec<T>) {
    let pushed = items.len() as u64;
    let _ = pipeline.input().push_iter(items);
    let result = pipeline.drain();
    let report = report_of(&result);
    assert_final(report);
    assert_eq!(accounting(report, "first").received, pushed, "{report}");
    let errored: u64 = report.stages().iter().map(|s| s.accounting.errored).sum();
    assert!(result.is_err() || errored > 0, "the panic left no trace:\n{report}");
}

#[test]
fn a_broadcast_item_whose_clone_panics_is_counted() {
    let pipeline = Pipeline::<Brittle>::builder()
        .stage("first", || |x: Brittle| x)
        .broadcast("copy", |branch| branch.sink(|_| {}))
        .sink(|_| {})
        .build()
        .unwrap();
    counts_a_panicking_split(pipeline, (0..200).map(Brittle).collect());
}

#[test]
fn a_branch_predicate_that_panics_is_counted() {
    let accepts = |x: &u64| {
        assert_ne!(*x, POISON, "injected: cannot route {x}");
        x % 2 == 1
    };
    let pipeline = Pipeline::<u64>::builder()
        .stage("first", || |x: u64| x)
        .branch("odd", accepts, |branch| branch.sink(|_| {}))
        .sink(|_| {})
        .build()
        .unwrap();
    counts_a_panicking_split(pipeline, (0..200).collect());
}

#[test]
fn a_key_function_that_panics_is_counted() {
    let key = |x: &u64| {
        assert_ne!(*x, POISON, "injected: no key for {x}");
        *x
    };
    let pipeline = Pipeline::<u64>::builder()
        .stage("first", || |x: u64| x)
        .stage("keyed", || |x: u64| x)
        .workers(NonZeroUsize::new(2).unwrap())
        .key_ordered(key)
        .sink(|_| {})
        .build()
        .unwrap();
    counts_a_panicking_split(pipeline, (0..200).collect());
}

// ---- 6. durations at the end of time ----

/// Durations a caller may mean as "forever".
fn forevers() -> [Duration; 3] {
    [
        Duration::MAX,
        Duration::MAX.saturating_sub(Duration::from_nanos(1)),
        Duration::from_secs(u64::MAX),
    ]
}

/// A builder setting `forever` may be refused with a `ConfigError` naming the stage; returns
/// the pipeline if it was accepted.
fn accepted_or_refused<P>(built: Result<P, ConfigError>, stage: &str) -> Option<P> {
    match built {
        Ok(pipeline) => Some(pipeline),
        Err(error) => {
            assert!(error.to_string().contains(stage), "{error} does not name {stage}");
            None
        }
    }
}

/// Waits until a worker of `stage` sleeps (waiting out a period, a cooldown or a backoff), or
/// the pipeline was cancelled (a worker died).
fn a_worker_sleeps<T>(pipeline: &Pipeline<T>, stage: &str) {
    let (watch, prefix) = (pipeline.watch(), format!("backflow:{stage}:"));
    eventually(&format!("a worker of {stage} sleeps"), || {
        watch.is_cancelled() || common::threads(&prefix).iter().any(|&(_, state)| state == 'S')
    });
}

isolated_test! {
    fn push_timeout_forever_into_a_queue_with_room_succeeds() {
        let delivered = counter();
        let pipeline = Pipeline::<u64>::builder()
            .stage("first", || |x: u64| x)
            .sink(counting_sink(&delivered))
            .build()
            .unwrap();
        let input = pipeline.input();
        for (x, forever) in forevers().into_iter().enumerate() {
            assert_eq!(input.push_timeout(x as u64, forever), Ok(()), "push_timeout({forever:?})");
        }
        assert_eq!(pipeline.drain().unwrap().sink().delivered, 3);
        assert_eq!(delivered.load(SeqCst), 3);
        assert_no_backflow_threads();
    }
}

isolated_test! {
    fn wait_for_room_forever_returns_the_room_there_is() {
        let pipeline =
            Pipeline::<u64>::builder().stage("first", || |x: u64| x).sink(|_| {}).build().unwrap();
        let input = pipeline.input();
        for forever in forevers() {
            assert!(input.wait_for_room(forever) > 0, "wait_for_room({forever:?})");
        }
        pipeline.drain().unwrap();
        assert_no_backflow_threads();
    }
}

/// Holds stage `held` (capacity 4) on item 0 with 3 more items queued, so that pressure is on,
/// and runs `call` on a thread that has to wait for room; the room comes when the stage is let
/// go, once that thread sleeps. Returns what `call` returned.
fn once_room_appears<R: Send>(call: impl FnOnce(Input<u64>) -> R + Send) -> R {
    let held = Held::default();
    let pipeline =
        Pipeline::<u64>::builder().stage("held", held.factory()).capacity(4).sink(|_| {}).build();
    let pipeline = pipeline.unwrap();
    let input = pipeline.input();
    input.push(0).unwrap();
    held.entered.wait();
    input.push_iter(1..=3).unwrap();
    let waiting = pipeline.input();
    let returned = thread::scope(|s| {
        let waiter = thread::Builder::new().name("waits-for-room".into());
        let waiter = waiter.spawn_scoped(s, move || call(waiting)).unwrap();
        eventually("the caller sleeps, waiting for room", || {
            waiter.is_finished()
                || common::threads("waits-for-room").iter().any(|&(_, state)| state == 'S')
        });
        held.gate.open();
        waiter.join().unwrap_or_else(|_| panic!("the caller panicked instead of waiting"))
    });
    assert_final(&pipeline.drain().unwrap());
    returned
}

isolated_test! {
    fn push_timeout_forever_waits_for_room_then_succeeds() {
        for forever in forevers() {
            let pushed = once_room_appears(move |input| input.push_timeout(4, forever));
            assert_eq!(pushed, Ok(()), "push_timeout({forever:?})");
        }
        assert_no_backflow_threads();
    }
}

isolated_test! {
    fn wait_for_room_forever_waits_then_returns_the_room() {
        for forever in forevers() {
            let room = once_room_appears(move |input| input.wait_for_room(forever));
            assert!(room > 0, "wait_for_room({forever:?}) returned {room}");
        }
        assert_no_backflow_threads();
    }
}

isolated_test! {
    fn shutdown_with_a_deadline_at_the_end_of_time_drains() {
        for forever in forevers() {
            let delivered = counter();
            let pipeline = Pipeline::<u64>::builder()
                .stage("first", || |x: u64| x)
                .sink(counting_sink(&delivered))
                .build()
                .unwrap();
            pipeline.input().push_iter(0..100).unwrap();
            let report = pipeline.shutdown(forever).unwrap();
            assert_eq!((report.sink().delivered, report.abandoned()), (100, 0), "{forever:?}");
            assert_final(&report);
        }
        assert_no_backflow_threads();
    }
}

isolated_test! {
    fn flush_every_forever_still_flushes_at_the_end_of_the_stream() {
        for forever in forevers() {
            let batches = Arc::new(Mutex::new(Vec::new()));
            let seen = Arc::clone(&batches);
            let built = Pipeline::<u64>::builder()
                .stage("batch", || stage::batches(NonZeroUsize::new(64).unwrap()))
                .flush_every(forever)
                .sink(move |b: Vec<u64>| seen.lock().unwrap().push(b))
                .build();
            let Some(pipeline) = accepted_or_refused(built, "batch") else { continue };
            // The worker waits for items, its flush far away.
            a_worker_sleeps(&pipeline, "batch");
            // Refused only if the pipeline failed; the drain says why.
            let _ = pipeline.input().push_iter(0..10);
            let result = pipeline.drain();
            assert!(result.is_ok(), "flush_every({forever:?}): {:?}", result.err());
            assert_eq!(*batches.lock().unwrap(), [(0..10).collect::<Vec<u64>>()]);
        }
        assert_no_backflow_threads();
    }
}

/// A stage that fails every item, raising `tried` at each attempt.
fn always_fails(tried: &Flag) -> impl Fn() -> Faulty + Send + Sync + 'static {
    let tried = tried.clone();
    move || {
        let tried = tried.clone();
        stage::try_map(Box::new(move |x: u64| {
            tried.raise();
            Err(format!("{x} fails"))
        }))
    }
}

isolated_test! {
    fn a_breaker_open_until_the_end_of_time_keeps_items_waiting_and_shuts_down() {
        for forever in forevers() {
            let config = BreakerConfig {
                threshold_percent: 1,
                min_samples: 1,
                cooldown: forever,
                trial_successes: 1,
                ..BreakerConfig::default()
            };
            let built = Pipeline::<u64>::builder()
                .stage("flaky", always_fails(&Flag::default()))
                .circuit_breaker(config)
                .sink(|_| {})
                .build();
            let Some(pipeline) = accepted_or_refused(built, "flaky") else { continue };
            pipeline.input().push_iter(0..3).unwrap();
            eventually("the breaker opens", || {
                pipeline.stats().stage("flaky").unwrap().circuit == Some(BreakerState::Open)
            });
            a_worker_sleeps(&pipeline, "flaky");
            let result = pipeline.shutdown(Duration::from_millis(20));
            let report = result.unwrap_or_else(|e| panic!("cooldown {forever:?}: {e}"));
            assert_final(&report);
            assert_eq!(accounting(&report, "flaky").received, 3);
        }
        assert_no_backflow_threads();
    }
}

isolated_test! {
    fn a_retry_delay_at_the_end_of_time_ends_on_shutdown_or_cancel() {
        for (run, forever) in forevers().into_iter().enumerate() {
            let tried = Flag::default();
            let schedule = RetrySchedule::new(forever, forever, 1).unwrap();
            let built = Pipeline::<u64>::builder()
                .stage("retry", always_fails(&tried))
                .retry(schedule)
                .sink(|_| {})
                .build();
            let Some(pipeline) = accepted_or_refused(built, "retry") else { continue };
            pipeline.input().push(1).unwrap();
            tried.wait();
            a_worker_sleeps(&pipeline, "retry");
            // The item now waits out its backoff: the end of the pipeline must cut it short.
            let report = if run % 2 == 0 {
                let result = pipeline.shutdown(Duration::from_millis(20));
                result.unwrap_or_else(|e| panic!("delay {forever:?}: {e}"))
            } else {
                pipeline.cancel();
                match pipeline.drain() {
                    Err(PipelineError::Cancelled { report }) => *report,
                    other => panic!("delay {forever:?}: expected Cancelled, got {other:?}"),
                }
            };
            assert_final(&report);
            assert_eq!(accounting(&report, "retry").received, 1);
        }
        assert_no_backflow_threads();
    }
}

// ---- 7. capacities that cannot be allocated ----

/// A big item, so that a large capacity is an absurd (or overflowing) number of bytes.
type Page = [u8; 4096];

/// The child's address space: a refused allocation fails there whatever the machine's
/// overcommit policy.
const CHILD_MEMORY: u64 = 8 << 30;

/// Builds a pipeline whose stage `huge` has `capacity` slots of [`Page`], after (or before) a
/// normal stage, and checks that `build()` refuses it with an error naming the stage, leaving no
/// thread behind.
fn refuses_huge_capacity(capacity: usize, huge_first: bool) {
    let builder = Pipeline::<Page>::builder();
    let built = if huge_first {
        builder.stage("huge", || |p: Page| p).capacity(capacity).stage("normal", || |p: Page| p)
    } else {
        builder.stage("normal", || |p: Page| p).stage("huge", || |p: Page| p).capacity(capacity)
    };
    match built.sink(|_| {}).build() {
        Ok(_) => panic!("build() accepted {capacity} slots of 4 KiB"),
        Err(error) => assert!(error.to_string().contains("huge"), "{error} does not name huge"),
    }
    assert_no_backflow_threads();
}

isolated_test! {
    memory_limit = CHILD_MEMORY;
    fn capacity_max_capacity_after_a_normal_stage_is_a_config_error() {
        refuses_huge_capacity(MAX_CAPACITY, false);
    }
}

isolated_test! {
    memory_limit = CHILD_MEMORY;
    fn capacity_max_capacity_before_a_normal_stage_is_a_config_error() {
        refuses_huge_capacity(MAX_CAPACITY, true);
    }
}

isolated_test! {
    memory_limit = CHILD_MEMORY;
    fn capacity_2_pow_31_after_a_normal_stage_is_a_config_error() {
        refuses_huge_capacity(1 << 31, false);
    }
}

isolated_test! {
    memory_limit = CHILD_MEMORY;
    fn capacity_2_pow_31_before_a_normal_stage_is_a_config_error() {
        refuses_huge_capacity(1 << 31, true);
    }
}

isolated_test! {
    memory_limit = CHILD_MEMORY;
    fn capacity_2_pow_40_after_a_normal_stage_is_a_config_error() {
        refuses_huge_capacity(1 << 40, false);
    }
}

isolated_test! {
    memory_limit = CHILD_MEMORY;
    fn capacity_2_pow_40_before_a_normal_stage_is_a_config_error() {
        refuses_huge_capacity(1 << 40, true);
    }
}

// ---- 8. producers racing the end of the pipeline ----

/// How a producer pushes.
#[derive(Debug, Clone, Copy)]
enum Push {
    One,
    Try,
    Timeout,
    /// `push_iter` in chunks of up to this many items.
    Iter(u64),
}

/// How the pipeline ends while the producers push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Shutdown(Duration),
    CancelDrain,
    Drain,
    Drop,
}

#[derive(Debug)]
struct Race {
    overflow: Overflow,
    capacity: usize,
    workers: usize,
    producers: Vec<Push>,
    ending: Ending,
    /// Spins before the ending, to vary where the producers are when it comes.
    spin: u64,
}

/// A small seeded generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }

    fn pick<T: Copy>(&mut self, options: &[T]) -> T {
        options[self.below(options.len() as u64) as usize]
    }
}

impl Race {
    fn new(rng: &mut Rng) -> Self {
        let overflow = rng.pick(&[
            Overflow::Block,
            Overflow::DropNewest,
            Overflow::DropOldest,
            Overflow::Fail,
        ]);
        let producers = (0..2 + rng.below(2))
            .map(|_| match rng.below(4) {
                0 => Push::One,
                1 => Push::Try,
                2 => Push::Timeout,
                _ => Push::Iter(1 + rng.below(2_000)),
            })
            .collect();
        let ending = match rng.below(5) {
            0 => Ending::Shutdown(Duration::ZERO),
            1 => Ending::Shutdown(Duration::from_micros(200)),
            2 => Ending::CancelDrain,
            3 => Ending::Drain,
            _ => Ending::Drop,
        };
        Self {
            overflow,
            capacity: rng.pick(&[1, 4, 64, 1_000]),
            workers: 1 + rng.below(2) as usize,
            producers,
            ending,
            spin: rng.below(20_000),
        }
    }
}

/// Pushes items `base..` as `how` says until the pipeline refuses them for good; returns how
/// many items the pipeline took: those pushed with `Ok`, and those a `push_iter` took before
/// the item it handed back.
fn produce(input: &Input<u64>, how: Push, base: u64) -> u64 {
    let (mut next, mut accepted) = (base, 0);
    loop {
        let (taken, result) = match how {
            Push::One => (1, input.push(next)),
            Push::Try => (1, input.try_push(next)),
            Push::Timeout => (1, input.push_timeout(next, Duration::from_micros(100))),
            Push::Iter(chunk) => (chunk, input.push_iter(next..next + chunk)),
        };
        match result {
            Ok(()) => {
                accepted += taken;
                next += taken;
            }
            Err(PushError::Full(x) | PushError::Timeout(x)) => {
                accepted += x - next;
                next = x + 1;
            }
            Err(PushError::Closed(x) | PushError::Cancelled(x)) => return accepted + x - next,
        }
    }
}

/// Runs one race; returns what is wrong with its outcome.
fn race(plan: &Race) -> Vec<String> {
    let delivered = counter();
    let pipeline = Pipeline::<u64>::builder()
        .stage("first", || |x: u64| x)
        .workers(NonZeroUsize::new(plan.workers).unwrap())
        .capacity(plan.capacity)
        .overflow(plan.overflow)
        .sink(counting_sink(&delivered))
        .build()
        .unwrap();
    let started = Barrier::new(plan.producers.len() + 1);
    let (accepted, result) = thread::scope(|s| {
        let producers: Vec<_> = (0..)
            .zip(&plan.producers)
            .map(|(p, &how)| {
                let (input, started) = (pipeline.input(), &started);
                s.spawn(move || {
                    started.wait();
                    produce(&input, how, p << 40)
                })
            })
            .collect();
        started.wait();
        (0..plan.spin).for_each(|i| {
            std::hint::black_box(i);
        });
        let result = match plan.ending {
            Ending::Shutdown(deadline) => Some(pipeline.shutdown(deadline)),
            Ending::CancelDrain => {
                pipeline.cancel();
                Some(pipeline.drain())
            }
            Ending::Drain => Some(pipeline.drain()),
            Ending::Drop => {
                drop(pipeline);
                None
            }
        };
        let accepted: u64 = producers.into_iter().map(|p| p.join().unwrap()).sum();
        (accepted, result)
    });
    let Some(result) = result else { return Vec::new() };
    let report = report_of(&result);
    let mut problems = final_problems(report);
    let received = accounting(report, "first").received;
    if received != accepted {
        problems.push(format!(
            "producers were told {accepted} items went in; the report counts {received}"
        ));
    }
    if report.sink().delivered != delivered.load(SeqCst) {
        problems.push(format!(
            "the sink got {} items; the report says {}",
            delivered.load(SeqCst),
            report.sink().delivered
        ));
    }
    problems
}

/// Races to run, and the seed they are drawn from.
const RACES: u64 = 1_000;
const RACE_SEED: u64 = 0x5EED_0F5E_ACE5;

isolated_test! {
    fn the_report_of_drain_or_shutdown_counts_every_item_a_producer_was_told_went_in() {
        let mut rng = Rng(RACE_SEED);
        let mut failures = Vec::new();
        for run in 0..RACES {
            let plan = Race::new(&mut rng);
            let problems = race(&plan);
            if !problems.is_empty() {
                failures.push(format!("race {run}: {plan:?}\n    {}", problems.join("\n    ")));
            }
        }
        assert_no_backflow_threads();
        assert!(
            failures.is_empty(),
            "{} of {RACES} races ended with a report that is not final:\n{}",
            failures.len(),
            failures.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
        );
    }
}

// ---- 9. the report's identities against what the stages and sinks saw ----

#[test]
fn an_over_counted_accounting_is_not_balanced() {
    let max = u64::MAX;
    let over = [
        Accounting { received: 3, emitted_inputs: 2, dropped: 2, ..Accounting::default() },
        // The settled counts add up past `u64::MAX`: a wrapping sum would look balanced.
        Accounting { received: 0, emitted_inputs: max, dropped: 1, ..Accounting::default() },
        Accounting {
            received: max,
            emitted_inputs: max,
            abandoned: max,
            in_flight: 1,
            ..Accounting::default()
        },
        Accounting { received: 1, errored: 1, in_flight: max, ..Accounting::default() },
    ];
    let fine = [
        Accounting { received: max, emitted_inputs: max, ..Accounting::default() },
        Accounting {
            received: max,
            emitted_inputs: max - 1,
            in_flight: 1,
            ..Accounting::default()
        },
    ];
    let verdict = |a: &Accounting| catch_unwind(|| a.is_balanced()).map_err(|_| "panicked");
    for a in &over {
        assert_eq!(verdict(a), Ok(false), "{a:?}");
    }
    for a in &fine {
        assert_eq!(verdict(a), Ok(true), "{a:?}");
    }
}

/// What each stage and sink of a run saw: stage name → (items it was called with, items it
/// passed); sink name → (items delivered, 0).
type Book = Arc<Mutex<BTreeMap<&'static str, (u64, u64)>>>;

/// A stage that fails every fifth item with an error, writing what it saw in `book`.
fn noted(book: &Book, name: &'static str) -> impl Fn() -> Faulty + Send + Sync + 'static {
    let book = Arc::clone(book);
    move || {
        let book = Arc::clone(&book);
        stage::try_map(Box::new(move |x: u64| {
            let mut book = book.lock().unwrap();
            let entry = book.entry(name).or_default();
            entry.0 += 1;
            if x.is_multiple_of(5) {
                return Err(format!("{x} fails"));
            }
            entry.1 += 1;
            Ok(x)
        }))
    }
}

fn noted_sink(book: &Book, name: &'static str) -> impl FnMut(u64) + Send + 'static {
    let book = Arc::clone(book);
    move |_| book.lock().unwrap().entry(name).or_default().0 += 1
}

/// Drains 1000 items through `pipeline` and checks every stage's and sink's counts against
/// `book`, exactly.
fn counts_match_the_book(pipeline: Pipeline<u64>, book: &Book) {
    pipeline.input().push_iter(0..1_000).unwrap();
    let report = pipeline.drain().unwrap();
    assert_final(&report);
    let book = book.lock().unwrap();
    for s in report.stages() {
        let (calls, ok) = book.get(s.name.as_str()).copied().unwrap_or_default();
        let a = s.accounting;
        let expected = Accounting {
            received: calls,
            emitted_inputs: ok,
            errored: calls - ok,
            ..Accounting::default()
        };
        assert_eq!(a, expected, "stage {}:\n{report}", s.name);
        assert_eq!(s.emitted_outputs, ok, "stage {}", s.name);
    }
    for k in report.sinks() {
        let (delivered, _) = book.get(k.name.as_str()).copied().unwrap_or_default();
        assert_eq!((k.received, k.delivered, k.abandoned), (delivered, delivered, 0), "{}", k.name);
    }
}

#[test]
fn report_counts_match_what_was_seen_around_a_broadcast() {
    let book = Book::default();
    let pipeline = Pipeline::<u64>::builder()
        .stage("src", noted(&book, "src"))
        .broadcast("copy", |b| {
            b.stage("bstage", noted(&book, "bstage")).sink(noted_sink(&book, "copy"))
        })
        .stage("main", noted(&book, "main"))
        .sink(noted_sink(&book, "sink"))
        .build()
        .unwrap();
    counts_match_the_book(pipeline, &book);
}

#[test]
fn report_counts_match_what_was_seen_around_a_branch_to_its_own_sink() {
    let book = Book::default();
    let pipeline = Pipeline::<u64>::builder()
        .stage("src", noted(&book, "src"))
        .branch(
            "odd",
            |x: &u64| x % 2 == 1,
            |b| b.stage("bstage", noted(&book, "bstage")).sink(noted_sink(&book, "odd")),
        )
        .stage("main", noted(&book, "main"))
        .sink(noted_sink(&book, "sink"))
        .build()
        .unwrap();
    counts_match_the_book(pipeline, &book);
}

#[test]
fn report_counts_match_what_was_seen_around_a_merge() {
    let book = Book::default();
    let pipeline = Pipeline::<u64>::builder()
        .stage("src", noted(&book, "src"))
        .workers(NonZeroUsize::new(2).unwrap())
        .branch("big", |x: &u64| *x >= 500, |b| b.stage("bstage", noted(&book, "bstage")).merge())
        .stage("main", noted(&book, "main"))
        .sink(noted_sink(&book, "sink"))
        .build()
        .unwrap();
    counts_match_the_book(pipeline, &book);
}

// ---- 10. names that collide with the sink's ----

#[test]
fn a_stage_named_sink_is_a_config_error() {
    let built = Pipeline::<u64>::builder().stage("sink", || |x: u64| x).sink(|_| {}).build();
    let error = built.expect_err("a stage named `sink` makes drop hooks and events ambiguous");
    assert!(error.to_string().contains("sink"), "{error}");
}

#[test]
fn a_branch_named_sink_is_a_config_error() {
    let built = Pipeline::<u64>::builder()
        .stage("first", || |x: u64| x)
        .broadcast("sink", |b| b.sink(|_| {}))
        .sink(|_| {})
        .build();
    let error = built.expect_err("a branch sink named `sink` is two sinks with one name");
    assert!(error.to_string().contains("sink"), "{error}");
}
