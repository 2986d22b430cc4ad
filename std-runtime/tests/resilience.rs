//! Error policies (skip, fail-fast, retry, dead-letter), panics under a policy, the circuit
//! breaker, the rate limit, hooks, events, stall detection and timed flushes.

mod common;

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backflow::core::RetrySchedule;
use backflow::core::breaker::{BreakerConfig, BreakerState};
use backflow::{ConfigError, ErrorPolicy, Event, Pipeline, PipelineError, stage};
use common::LoudDrop;

/// Records every event as its `Display` text.
fn recorder() -> (Arc<Mutex<Vec<String>>>, impl Fn(&Event<'_>) + Send + Sync + 'static) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&events);
    (events, move |event: &Event<'_>| keep.lock().unwrap().push(event.to_string()))
}

fn count(events: &Mutex<Vec<String>>, needle: &str) -> usize {
    events.lock().unwrap().iter().filter(|e| e.contains(needle)).count()
}

/// A stage factory whose stages pass each item on once `gate` opens.
fn held_at(gate: common::Gate) -> impl Fn() -> Box<dyn FnMut(u64) -> u64> {
    move || {
        let gate = gate.clone();
        Box::new(move |x| {
            gate.wait();
            x
        })
    }
}

/// A stage that fails an item with "`x` is bad".
type Check = Box<dyn FnMut(u64) -> Result<u64, String>>;

/// A stage factory whose stages fail the multiples of `n`.
fn fails_on_multiples_of(n: u64) -> impl Fn() -> stage::TryMap<Check> {
    move || {
        stage::try_map(Box::new(move |x: u64| {
            if x.is_multiple_of(n) { Err(format!("{x} is bad")) } else { Ok(x) }
        }))
    }
}

#[test]
fn skip_counts_each_failed_item_and_goes_on() {
    let (events, on_event) = recorder();
    let pipeline = Pipeline::<u64>::builder()
        .on_event(on_event)
        .stage("check", fails_on_multiples_of(3))
        .workers(NonZeroUsize::new(2).unwrap())
        .sink(|_| {})
        .build()
        .unwrap();
    pipeline.input().push_iter(1..=300).unwrap();
    let report = pipeline.drain().unwrap();
    assert!(report.is_balanced(), "{:?}", report.unbalanced());
    let check = report.stage("check").unwrap();
    assert_eq!((check.accounting.errored, check.accounting.emitted_inputs), (100, 200));
    assert_eq!(report.sink().delivered, 200);
    assert_eq!(count(&events, "attempt 1 failed"), 100);
    assert_eq!(count(&events, "failed: 3 is bad"), 1);
}

#[test]
fn fail_fast_cancels_the_pipeline_and_names_the_stage_and_error() {
    let pipeline = Pipeline::<u64>::builder()
        .stage("ok", || |x: u64| x)
        .stage("check", fails_on_multiples_of(500))
        .on_error(ErrorPolicy::FailFast)
        .sink(|_| {})
        .build()
        .unwrap();
    // The push may be refused once the pipeline is cancelled: that is the point.
    let _ = pipeline.input().push_iter(1..=2_000);
    match pipeline.drain() {
        Err(PipelineError::StageFailed { stage, error, report }) => {
            assert_eq!(stage, "check");
            assert_eq!(error, "500 is bad");
            assert!(report.is_balanced(), "{:?}", report.unbalanced());
            assert_eq!(report.stage("check").unwrap().accounting.errored, 1);
        }
        other => panic!("expected StageFailed, got {other:?}"),
    }
    assert!(common::threads("backflow:check").is_empty());
}

#[test]
fn retries_until_an_attempt_succeeds() {
    // Each item fails its first two attempts.
    let attempts: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let seen = Arc::clone(&attempts);
    let (events, on_event) = recorder();
    let schedule = RetrySchedule::new(Duration::ZERO, Duration::from_millis(1), 3).unwrap();
    let pipeline = Pipeline::<u64>::builder()
        .on_event(on_event)
        .stage("flaky", move || {
            let seen = Arc::clone(&seen);
            stage::try_map(move |x: u64| {
                let mut seen = seen.lock().unwrap();
                let n = seen.entry(x).or_default();
                *n += 1;
                if *n <= 2 { Err("not yet") } else { Ok(x) }
            })
        })
        .retry(schedule)
        .workers(NonZeroUsize::new(2).unwrap())
        .sink(|_| {})
        .build()
        .unwrap();
    pipeline.input().push_iter(0..200).unwrap();
    let report = pipeline.drain().unwrap();
    assert!(report.is_balanced(), "{:?}", report.unbalanced());
    let flaky = report.stage("flaky").unwrap();
    assert_eq!(
        (flaky.accounting.emitted_inputs, flaky.accounting.errored, flaky.retries),
        (200, 0, 400)
    );
    assert_eq!(report.sink().delivered, 200);
    assert!(attempts.lock().unwrap().values().all(|&n| n == 3));
    assert_eq!(count(&events, "attempt 3 in"), 200);
}

#[test]
fn an_item_that_keeps_failing_is_dead_lettered_after_its_retries() {
    let letters = Arc::new(Mutex::new(Vec::new()));
    let dlq = Arc::clone(&letters);
    let schedule = RetrySchedule::new(Duration::ZERO, Duration::ZERO, 2).unwrap();
    let pipeline = Pipeline::<u64>::builder()
        .stage("check", fails_on_multiples_of(10))
        .retry(schedule)
        .dead_letter(move |letter| {
            dlq.lock().unwrap().push((
                letter.stage.to_string(),
                letter.item,
                letter.error,
                letter.attempts,
            ));
        })
        .sink(|_| {})
        .build()
        .unwrap();
    pipeline.input().push_iter(1..=100).unwrap();
    let report = pipeline.drain().unwrap();
    assert!(report.is_balanced(), "{:?}", report.unbalanced());
    let check = report.stage("check").unwrap();
    assert_eq!(
        (check.accounting.dead_lettered, check.accounting.errored, check.retries),
        (10, 0, 20)
    );
    let letters = letters.lock().unwrap();
    let expected: Vec<_> =
        (1..=10).map(|k| ("check".to_string(), k * 10, format!("{} is bad", k * 10), 3)).collect();
    assert_eq!(*letters, expected);
}

#[test]
fn a_panic_is_an_error_under_the_policy_and_the_stage_is_rebuilt() {
    let built = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&built);
    let letters = Arc::new(Mutex::new(Vec::new()));
    let dlq = Arc::clone(&letters);
    let pipeline = Pipeline::<u64>::builder()
        .stage("boom", move || {
            counter.fetch_add(1, Ordering::Relaxed);
            |x: u64| {
                assert!(x % 25 != 7, "cannot take {x}");
                x
            }
        })
        .dead_letter(move |letter| dlq.lock().unwrap().push((letter.item, letter.error)))
        .sink(|_| {})
        .build()
        .unwrap();
    pipeline.input().push_iter(0..100).unwrap();
    let report = pipeline.drain().unwrap();
    assert!(report.is_balanced(), "{:?}", report.unbalanced());
    let boom = report.stage("boom").unwrap();
    assert_eq!((boom.panics, boom.accounting.dead_lettered, report.sink().delivered), (4, 4, 96));
    // One stage per worker at the start, one more after each panic.
    assert_eq!(built.load(Ordering::Relaxed), 5);
    let letters = letters.lock().unwrap();
    assert_eq!(letters.iter().map(|(item, _)| *item).collect::<Vec<_>>(), [7, 32, 57, 82]);
    assert_eq!(letters[0].1, "panicked: cannot take 7");
}

#[test]
fn the_breaker_opens_on_errors_pauses_the_stage_and_closes_with_nothing_dropped() {
    let (events, on_event) = recorder();
    let config = BreakerConfig {
        threshold_percent: 20,
        window: Duration::from_secs(60),
        min_samples: 10,
        cooldown: Duration::from_millis(5),
        trial_successes: 3,
    };
    // Items 0..30 fail (a dependency is down), the rest succeed.
    let pipeline = Pipeline::<u64>::builder()
        .on_event(on_event)
        .stage("call", || stage::try_map(|x: u64| if x < 30 { Err("down") } else { Ok(x) }))
        .circuit_breaker(config)
        .sink(|_| {})
        .build()
        .unwrap();
    pipeline.input().push_iter(0..200).unwrap();
    let report = pipeline.drain().unwrap();
    assert!(report.is_balanced(), "{:?}", report.unbalanced());
    let call = report.stage("call").unwrap();
    assert_eq!(
        (call.accounting.errored, call.accounting.dropped, report.sink().delivered),
        (30, 0, 170)
    );
    assert_eq!(call.circuit, Some(BreakerState::Closed));
    let circuit: Vec<String> =
        events.lock().unwrap().iter().filter(|e| e.contains("circuit")).cloned().collect();
    // Opened after 10 failures; each half-open trial with a failing item opens it again (20
    // more); the first trial of item 30 on succeeds, and 3 successes close it.
    let mut expected = vec!["call: circuit opened".to_string()];
    for _ in 0..20 {
        expected.push("call: circuit half-open".into());
        expected.push("call: circuit opened".into());
    }
    expected.push("call: circuit half-open".into());
    expected.push("call: circuit closed".into());
    assert_eq!(circuit, expected);
}

#[test]
fn the_rate_limit_holds_a_stage_to_its_rate() {
    let started = Instant::now();
    let pipeline = Pipeline::<u64>::builder()
        .stage("api", || |x: u64| x)
        .rate_limit(2_000, 10)
        .workers(NonZeroUsize::new(2).unwrap())
        .sink(|_| {})
        .build()
        .unwrap();
    pipeline.input().push_iter(0..110).unwrap();
    let report = pipeline.drain().unwrap();
    // A lower bound only: 10 at once, then 100 at 2 000/s take at least 50 ms, however fast
    // the machine (an upper bound would depend on its load).
    assert!(started.elapsed() >= Duration::from_millis(50), "{:?}", started.elapsed());
    assert_eq!(report.sink().delivered, 110);
}

#[test]
fn hooks_see_every_item_before_and_every_output_after_the_stage() {
    let (before, after) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (b, a) = (Arc::clone(&before), Arc::clone(&after));
    let pipeline = Pipeline::<u64>::builder()
        .stage("expand", || stage::flat_map(|x: u64| [x, x]))
        .before(move |x| {
            b.fetch_add(*x, Ordering::Relaxed);
        })
        .after(move |x| {
            a.fetch_add(*x, Ordering::Relaxed);
        })
        .sink(|_| {})
        .build()
        .unwrap();
    pipeline.input().push_iter(1..=100).unwrap();
    pipeline.drain().unwrap();
    assert_eq!((before.load(Ordering::Relaxed), after.load(Ordering::Relaxed)), (5_050, 10_100));
}

#[test]
fn events_report_start_pressure_drops_and_the_final_report() {
    let (events, on_event) = recorder();
    let gate = common::Gate::default();
    let pipeline = Pipeline::<u64>::builder()
        .on_event(on_event)
        .stage("hold", held_at(gate.clone()))
        .capacity(10)
        .overflow(backflow::Overflow::DropNewest)
        .sink(|_| {})
        .build()
        .unwrap();
    let input = pipeline.input();
    for x in 0..30 {
        input.push(x).unwrap();
    }
    gate.open();
    let report = pipeline.drain().unwrap();
    let dropped = report.stage("hold").unwrap().dropped_newest;
    assert!(dropped > 0);
    let events = events.lock().unwrap();
    assert_eq!(events.first().unwrap(), "started: 1 stages");
    assert!(events.iter().any(|e| e == "hold: pressure on"));
    assert_eq!(
        events.iter().filter(|e| *e == "hold: item dropped as newest").count() as u64,
        dropped
    );
    assert!(events.last().unwrap().starts_with("drained: "));
}

#[test]
fn a_stage_with_queued_items_and_no_progress_raises_stalled_once() {
    let (events, on_event) = recorder();
    let gate = common::Gate::default();
    let pipeline = Pipeline::<u64>::builder()
        .on_event(on_event)
        .stage("stuck", held_at(gate.clone()))
        .stall_after(Duration::from_millis(20))
        .sink(|_| {})
        .build()
        .unwrap();
    pipeline.input().push_iter(0..5).unwrap();
    // Once the worker has taken those (it holds the first at the gate), the next item stays
    // queued.
    common::eventually("the worker took the items", || {
        pipeline.stats().stage("stuck").unwrap().queue_len == 0
    });
    pipeline.input().push(99).unwrap();
    common::eventually("a stall is reported", || count(&events, "stuck: stalled") == 1);
    gate.open();
    pipeline.drain().unwrap();
    assert_eq!(count(&events, "stuck: stalled"), 1);
    assert!(common::threads("backflow:watch").is_empty());
}

#[test]
fn flush_every_emits_a_partial_batch_without_waiting_for_the_end() {
    let batches = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&batches);
    let pipeline = Pipeline::<u64>::builder()
        .stage("batch", || stage::batches(NonZeroUsize::new(100).unwrap()))
        .flush_every(Duration::from_millis(10))
        .sink(move |batch: Vec<u64>| keep.lock().unwrap().push(batch))
        .build()
        .unwrap();
    pipeline.input().push_iter(0..3).unwrap();
    // Far fewer than 100 items, and the input stays open: only the timer can flush them.
    common::eventually("the timer flushed the batch", || !batches.lock().unwrap().is_empty());
    assert_eq!(batches.lock().unwrap()[0], [0, 1, 2]);
    pipeline.drain().unwrap();
}

#[test]
fn run_pushes_an_iterator_and_drains() {
    let pipeline = Pipeline::<u64>::builder()
        .stage("evens", || stage::filter(|x: &u64| x.is_multiple_of(2)))
        .sink(|_| {})
        .build()
        .unwrap();
    let report = backflow::run(0..1_000, pipeline).unwrap();
    assert_eq!(report.sink().delivered, 500);
    assert!(report.is_balanced());
}

#[test]
fn bad_policy_settings_are_config_errors() {
    let err = Pipeline::<u64>::builder()
        .stage("a", || |x: u64| x)
        .circuit_breaker(BreakerConfig { threshold_percent: 0, ..BreakerConfig::default() })
        .sink(|_| {})
        .build()
        .unwrap_err();
    assert!(matches!(&err, ConfigError::Invalid { stage, .. } if stage == "a"), "{err:?}");
    assert!(err.to_string().contains("breaker.threshold_percent"), "{err}");

    let err = Pipeline::<u64>::builder()
        .stage("a", || |x: u64| x)
        .rate_limit(0, 1)
        .sink(|_| {})
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("token_bucket.rate"), "{err}");

    for (flush, stall) in
        [(Duration::ZERO, Duration::from_secs(1)), (Duration::from_secs(1), Duration::ZERO)]
    {
        let err = Pipeline::<u64>::builder()
            .stage("a", || |x: u64| x)
            .flush_every(flush)
            .stall_after(stall)
            .sink(|_| {})
            .build()
            .unwrap_err();
        assert!(matches!(err, ConfigError::ZeroDuration { .. }), "{err:?}");
    }
}

#[test]
fn panics_in_hooks_sinks_and_handlers_stop_the_pipeline_with_every_item_accounted_for() {
    // The panics below print their messages: they are on purpose.
    let balanced = |result: Result<backflow::Report, PipelineError>, stage: &str| match result {
        Err(PipelineError::WorkerPanicked { stage: s, report, .. }) => {
            assert_eq!(s, stage);
            assert!(report.is_balanced(), "{stage}: {:?}", report.unbalanced());
        }
        other => panic!("{stage}: expected WorkerPanicked, got {other:?}"),
    };

    let pipeline = Pipeline::<u64>::builder()
        .stage("dlq", fails_on_multiples_of(5))
        .dead_letter(|_| panic!("the dead-letter queue is down"))
        .sink(|_| {})
        .build()
        .unwrap();
    let _ = pipeline.input().push_iter(1..=100);
    balanced(pipeline.drain(), "dlq");

    let pipeline = Pipeline::<u64>::builder()
        .stage("fan", || |x: u64| x)
        .broadcast("copy", |b| b.sink(|x: u64| assert!(x != 3, "the copy sink fails")))
        .sink(|_| {})
        .build()
        .unwrap();
    let _ = pipeline.input().push_iter(0..100);
    balanced(pipeline.drain(), "fan");

    let pipeline = Pipeline::<u64>::builder()
        .on_event(|event| {
            if let Event::Error { .. } = event {
                panic!("the handler fails")
            }
        })
        .stage("ev", fails_on_multiples_of(7))
        .sink(|_| {})
        .build()
        .unwrap();
    let _ = pipeline.input().push_iter(1..=100);
    balanced(pipeline.drain(), "event handler");
}

/// A stage that takes its items in runs and fails the odd ones with `E`. A retry goes through
/// `process`, which panics if the stage was made with `retry_panics`.
struct FailsOddInRuns<E> {
    error: fn() -> E,
    retry_panics: bool,
}

impl<E> FailsOddInRuns<E> {
    fn one(&self, x: u64, out: &mut impl stage::Emit<u64>) -> Result<(), E> {
        if x % 2 == 1 {
            return Err((self.error)());
        }
        out.emit(x);
        Ok(())
    }
}

impl<E> stage::Stage<u64> for FailsOddInRuns<E> {
    type Out = u64;
    type Error = E;
    const RUNS: bool = true;

    fn process(&mut self, x: u64, out: &mut impl stage::Emit<u64>) -> Result<(), E> {
        assert!(!self.retry_panics, "the retry panicked");
        self.one(x, out)
    }

    fn process_run(
        &mut self,
        items: &mut impl Iterator<Item = u64>,
        out: &mut impl stage::Emit<u64>,
        done: &mut impl FnMut(Result<(), E>),
    ) {
        for x in items {
            done(self.one(x, out));
        }
    }
}

/// An error whose `Display` panics.
#[derive(Debug)]
struct Unprintable;

impl std::fmt::Display for Unprintable {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        panic!("the error's Display panicked")
    }
}

#[test]
fn a_run_whose_failures_cannot_be_handled_still_counts_every_item() {
    // A retry panics, and the factory panics when the stage is rebuilt after it.
    let builds = Arc::new(AtomicU64::new(0));
    let factory = move || {
        assert!(builds.fetch_add(1, Ordering::SeqCst) == 0, "the factory panicked");
        FailsOddInRuns { error: || "odd", retry_panics: true }
    };
    let retry = RetrySchedule::new(Duration::from_micros(1), Duration::from_micros(1), 1).unwrap();
    let pipeline = Pipeline::<u64>::builder()
        .stage("runs", factory)
        .retry(retry)
        .on_error(ErrorPolicy::Skip)
        .sink(|_| {})
        .build()
        .unwrap();
    let _ = pipeline.input().push_iter(0..1_000);
    let error = pipeline.drain().unwrap_err();
    assert!(matches!(error, PipelineError::WorkerPanicked { .. }), "{error}");
    assert!(error.report().is_balanced(), "{}", error.report());

    // The error's `Display` panics while a failure is dead-lettered, or fails the pipeline.
    for fail_fast in [false, true] {
        let letters = Arc::new(AtomicU64::new(0));
        let seen = Arc::clone(&letters);
        let builder = Pipeline::<u64>::builder()
            .stage("runs", || FailsOddInRuns { error: || Unprintable, retry_panics: false });
        let builder = if fail_fast {
            builder.on_error(ErrorPolicy::FailFast)
        } else {
            builder.dead_letter(move |_| {
                seen.fetch_add(1, Ordering::SeqCst);
            })
        };
        let pipeline = builder.sink(|_| {}).build().unwrap();
        let _ = pipeline.input().push_iter(0..1_000);
        let error = pipeline.drain().unwrap_err();
        let report = error.report();
        assert!(report.is_balanced(), "fail fast {fail_fast}: {report}");
        let dead_lettered = report.stage("runs").unwrap().accounting.dead_lettered;
        assert_eq!(dead_lettered, letters.load(Ordering::SeqCst), "{report}");
    }
}

/// Holds the last item back until the end of the stream; its flush fails while it holds one
/// (with an error, or a panic if `panics`). With `five_panicked`, it panics the first time it
/// sees 5 (of all the stage values sharing the flag).
struct HoldsTheLast {
    held: Option<u64>,
    panics: bool,
    five_panicked: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl backflow::Stage<u64> for HoldsTheLast {
    type Out = u64;
    type Error = String;

    fn process(&mut self, x: u64, out: &mut impl stage::Emit<u64>) -> Result<(), String> {
        if x == 5
            && self.five_panicked.as_ref().is_some_and(|done| !done.swap(true, Ordering::SeqCst))
        {
            panic!("five, the first time");
        }
        if let Some(held) = self.held.replace(x) {
            out.emit(held);
        }
        Ok(())
    }

    fn flush(&mut self, _out: &mut impl stage::Emit<u64>) -> Result<(), String> {
        match self.held.take() {
            Some(x) if self.panics => panic!("cannot flush {x}"),
            Some(x) => Err(format!("cannot flush {x}")),
            None => Ok(()),
        }
    }
}

#[test]
fn a_failed_flush_under_fail_fast_fails_the_pipeline() {
    for (panics, expected) in [(false, "cannot flush 2"), (true, "panicked: cannot flush 2")] {
        let pipeline = Pipeline::<u64>::builder()
            .stage("hold", move || HoldsTheLast { held: None, panics, five_panicked: None })
            .on_error(ErrorPolicy::FailFast)
            .sink(|_| {})
            .build()
            .unwrap();
        pipeline.input().push_iter(0..3).unwrap();
        match pipeline.drain() {
            Err(PipelineError::StageFailed { stage, error, report }) => {
                assert_eq!((stage.as_str(), error.as_str()), ("hold", expected));
                assert!(report.is_balanced(), "{report:?}");
            }
            other => panic!("panics {panics}: {other:?}"),
        }
    }
}

/// Under fail-fast with retries, a panic rebuilds the stage and the item is tried again; the
/// old stage value's flush failing (what it held lost) fails the pipeline too.
#[test]
fn a_failed_flush_of_a_stage_rebuilt_for_a_retry_fails_a_fail_fast_pipeline() {
    let panicked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pipeline = Pipeline::<u64>::builder()
        .stage("hold", move || HoldsTheLast {
            held: None,
            panics: false,
            five_panicked: Some(Arc::clone(&panicked)),
        })
        .retry(RetrySchedule::new(Duration::from_millis(1), Duration::from_millis(1), 3).unwrap())
        .on_error(ErrorPolicy::FailFast)
        .sink(|_| {})
        .build()
        .unwrap();
    pipeline.input().push_iter(0..10).unwrap();
    match pipeline.drain() {
        Err(PipelineError::StageFailed { stage, error, report }) => {
            assert_eq!((stage.as_str(), error.as_str()), ("hold", "cannot flush 4"));
            assert!(report.is_balanced(), "{report:?}");
        }
        other => panic!("{other:?}"),
    }
}

/// Passes every item on but `bad`, which fails with a `LoudDrop`; its flush fails too if
/// `flush_fails`.
struct LoudOn {
    bad: u64,
    flush_fails: bool,
}

impl backflow::Stage<u64> for LoudOn {
    type Out = u64;
    type Error = LoudDrop;

    fn process(&mut self, x: u64, out: &mut impl stage::Emit<u64>) -> Result<(), LoudDrop> {
        if x == self.bad {
            return Err(LoudDrop);
        }
        out.emit(x);
        Ok(())
    }

    fn flush(&mut self, _out: &mut impl stage::Emit<u64>) -> Result<(), LoudDrop> {
        if self.flush_fails { Err(LoudDrop) } else { Ok(()) }
    }
}

/// The error a stage returns is the user's value, and so is its drop: one that panics
/// neither counts its item twice nor loses others, whatever path the worker takes (in place,
/// one by one, with retries, on a flush).
#[test]
fn an_error_whose_drop_panics_is_counted_once() {
    let retry = || RetrySchedule::new(Duration::ZERO, Duration::ZERO, 3).unwrap();
    for shape in ["in place", "one by one", "retried", "flush"] {
        let pipeline = Pipeline::<u64>::builder()
            .stage("loud", move || LoudOn { bad: 5, flush_fails: shape == "flush" });
        let pipeline = match shape {
            // Evicting producers pop too: the worker takes its items one by one.
            "one by one" => pipeline.overflow(backflow::Overflow::DropOldest),
            "retried" => pipeline.retry(retry()),
            _ => pipeline,
        };
        let pipeline = pipeline.sink(|_| {});
        let pipeline = pipeline.build().unwrap();
        pipeline.input().push_iter(0..20).unwrap();
        let report = match pipeline.drain() {
            Ok(report) => report,
            Err(error) => error.report().clone(),
        };
        let loud = report.stage("loud").unwrap().accounting;
        assert!(report.is_balanced(), "{shape}: {loud:?}");
        assert_eq!((loud.received, loud.emitted_inputs, loud.errored), (20, 19, 1), "{shape}");
    }
}
