//! Values that settle an item when dropped (an acknowledgement) learn, through
//! `stage::after_outcome`, whether the stage call they were dropped in ended the pipeline.

mod common;

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use backflow::stage::{Deferred, after_outcome};
use backflow::{ErrorPolicy, Pipeline, PipelineError, stage};
use common::{LoudDrop, Ticket, Tickets};

const FAILING: u64 = 50;

/// Builds one shape of pipeline.
type Build = fn() -> Pipeline<Ticket>;

/// Pushes tickets 0..100 into `pipeline` (one at a time or as one run), drains it, and
/// returns what each ticket learned.
fn run(pipeline: Pipeline<Ticket>, one_at_a_time: bool) -> (HashMap<u64, bool>, PipelineError) {
    let handed = Tickets::default();
    handed.watch(pipeline.watch());
    let tickets = (0..100).map(|n| handed.ticket(n));
    let input = pipeline.input();
    if one_at_a_time {
        for ticket in tickets {
            // Refused once the pipeline has failed: the ticket comes back and is dropped.
            let _ = input.push(ticket);
        }
    } else {
        let _ = input.push_iter(tickets);
    }
    let error = pipeline.drain().expect_err("ticket 50 fails the pipeline");
    let log = handed.learned();
    let learned: HashMap<u64, bool> = log.iter().copied().collect();
    assert_eq!(log.len(), 100, "every ticket settled once: {log:?}");
    (learned, error)
}

fn check(ticket: &Ticket) -> Result<(), String> {
    if ticket.n == FAILING { Err(format!("{} is bad", ticket.n)) } else { Ok(()) }
}

#[test]
fn an_item_dropped_by_a_call_that_fails_the_pipeline_learns_it() {
    let shapes: [(&str, Build); 3] = [
        ("try_map, 1 worker", || {
            Pipeline::<Ticket>::builder()
                .stage("check", || stage::try_map(|t: Ticket| check(&t).map(|()| t.n)))
                .on_error(ErrorPolicy::FailFast)
                .sink(|_| {})
                .build()
                .unwrap()
        }),
        ("validate behind a plain stage, 2 workers", || {
            Pipeline::<Ticket>::builder()
                .stage("pass", || |t: Ticket| t)
                .stage("check", || stage::validate(check))
                .on_error(ErrorPolicy::FailFast)
                .workers(NonZeroUsize::new(2).unwrap())
                .sink(|_| {})
                .build()
                .unwrap()
        }),
        ("try_map with a drop hook", || {
            Pipeline::<Ticket>::builder()
                .stage("check", || stage::try_map(|t: Ticket| check(&t).map(|()| t.n)))
                .on_error(ErrorPolicy::FailFast)
                .on_drop(|_| {})
                .sink(|_| {})
                .build()
                .unwrap()
        }),
    ];
    for (shape, build) in shapes {
        for one_at_a_time in [false, true] {
            let (learned, error) = run(build(), one_at_a_time);
            assert!(matches!(error, PipelineError::StageFailed { .. }), "{shape}: {error:?}");
            assert!(!learned[&FAILING], "{shape}, one at a time {one_at_a_time}");
        }
    }
}

#[test]
fn without_a_failure_every_item_learns_the_pipeline_went_on() {
    let handed = Tickets::default();
    let hands = handed.clone();
    let pipeline = Pipeline::<u64>::builder()
        .stage("ticket", move || {
            let hands = hands.clone();
            move |n: u64| hands.ticket(n)
        })
        // Half dropped by the stage, half by the sink.
        .stage("odd", || stage::filter(|t: &Ticket| t.n.is_multiple_of(2)))
        .sink(drop)
        .build()
        .unwrap();
    handed.watch(pipeline.watch());
    pipeline.input().push_iter(0..100).unwrap();
    pipeline.drain().unwrap();
    let log = handed.learned();
    assert_eq!(log.len(), 100);
    assert!(log.iter().all(|&(_, going)| going), "{log:?}");
}

#[test]
fn deferred_work_that_panics_fails_the_pipeline_and_every_item_is_counted() {
    let pipeline = Pipeline::<u64>::builder()
        .stage("defer", || {
            |n: u64| {
                stage::after_outcome(move || {
                    if n == 7 {
                        panic!("deferred work of {n} panics");
                    }
                });
                n
            }
        })
        .sink(|_| {})
        .build()
        .unwrap();
    let _ = pipeline.input().push_iter(0..100);
    match pipeline.drain() {
        Err(PipelineError::WorkerPanicked { stage, message, report, .. }) => {
            assert_eq!((stage.as_str(), message.as_str()), ("defer", "deferred work of 7 panics"));
            assert!(report.is_balanced(), "{report:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_piece_of_deferred_work_runs_though_one_panics() {
    let ran = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&ran);
    let ((), deferred) = Deferred::collect(|| {
        after_outcome(|| panic!("the first piece panics"));
        after_outcome(move || {
            counted.fetch_add(1, Ordering::Relaxed);
        });
    });
    // Outside a worker's batch: both run now, and the first panic reaches the caller.
    let result = catch_unwind(AssertUnwindSafe(|| deferred.defer()));
    assert!(result.is_err());
    assert_eq!(ran.load(Ordering::Relaxed), 1, "the piece after the panicking one ran");
}

/// Panicking work that runs while a panic unwinds (held work let go as the panic passes)
/// cannot unwind in turn: it is caught there, and the process goes on.
#[test]
fn deferred_work_that_panics_while_a_panic_unwinds_does_not_abort() {
    common::isolated("deferred_work_that_panics_while_a_panic_unwinds_does_not_abort", || {
        let result = catch_unwind(|| {
            let ((), _deferred) = Deferred::collect(|| {
                after_outcome(|| panic!("the deferred work panics"));
                panic!("the closure panics");
            });
        });
        assert!(result.is_err());
    });
}

/// Says nothing when dropped but defers work that panics.
struct Loud;

impl Drop for Loud {
    fn drop(&mut self) {
        after_outcome(|| panic!("the deferred work panics"));
    }
}

/// Items whose drop defers work that panics, held by a stage (a partial batch) when the
/// pipeline is cancelled: dropped with the stage, outside a worker's batch, one after the
/// other while the first one's panic unwinds.
#[test]
fn items_whose_deferred_work_panics_held_by_a_stage_at_cancel_do_not_abort() {
    common::isolated(
        "items_whose_deferred_work_panics_held_by_a_stage_at_cancel_do_not_abort",
        || {
            let pipeline = Pipeline::<Loud>::builder()
                .stage("batch", || stage::batches(NonZeroUsize::new(100).unwrap()))
                .sink(drop)
                .build()
                .unwrap();
            pipeline.input().push_iter((0..10).map(|_| Loud)).unwrap();
            common::eventually("the stage holds the ten items", || {
                let stats = pipeline.stats();
                stats.stages()[0].accounting.received == 10 && stats.stages()[0].queue_len == 0
            });
            pipeline.cancel();
            let error = pipeline.drain().expect_err("cancelled");
            assert!(error.report().is_balanced(), "{error:?}");
        },
    );
}

/// An error whose `Display` panics: reporting it is a panic the worker does not survive.
#[derive(Debug)]
struct Unprintable;

impl std::fmt::Display for Unprintable {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        panic!("this error cannot be shown")
    }
}

#[test]
fn an_item_whose_failure_cannot_even_be_reported_learns_the_pipeline_stopped() {
    let pipeline = Pipeline::<Ticket>::builder()
        .stage("check", || {
            stage::try_map(|t: Ticket| if t.n == FAILING { Err(Unprintable) } else { Ok(t.n) })
        })
        .on_error(ErrorPolicy::FailFast)
        .sink(|_| {})
        .build()
        .unwrap();
    let (learned, error) = run(pipeline, false);
    assert!(matches!(error, PipelineError::WorkerPanicked { .. }), "{error:?}");
    assert!(!learned[&FAILING]);
}

/// Holds every ticket until its flush, which counts itself in `flushes`, drops them and
/// fails with `error()`.
struct HoldsThenFails<E> {
    held: Vec<Ticket>,
    flushes: Arc<AtomicUsize>,
    error: fn() -> E,
}

impl<E: std::fmt::Display> backflow::Stage<Ticket> for HoldsThenFails<E> {
    type Out = u64;
    type Error = E;

    fn process(&mut self, t: Ticket, _out: &mut impl stage::Emit<u64>) -> Result<(), E> {
        self.held.push(t);
        Ok(())
    }

    fn flush(&mut self, _out: &mut impl stage::Emit<u64>) -> Result<(), E> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        self.held.clear();
        Err((self.error)())
    }
}

/// Runs ten tickets through a fail-fast stage whose flush fails with `error()`: the drain's
/// error, what the tickets learned, and how many times the stage was flushed.
fn run_a_failing_flush<E>(error: fn() -> E) -> (PipelineError, Vec<(u64, bool)>, usize)
where
    E: std::fmt::Display + Send + 'static,
{
    let flushes = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&flushes);
    let pipeline = Pipeline::<Ticket>::builder()
        .stage("hold", move || HoldsThenFails {
            held: Vec::new(),
            flushes: Arc::clone(&counted),
            error,
        })
        .on_error(ErrorPolicy::FailFast)
        .sink(|_| {})
        .build()
        .unwrap();
    let handed = Tickets::default();
    handed.watch(pipeline.watch());
    pipeline.input().push_iter((0..10).map(|n| handed.ticket(n))).unwrap();
    let error = pipeline.drain().expect_err("the flush failed");
    (error, handed.learned(), flushes.load(Ordering::SeqCst))
}

/// Under fail-fast, a flush that fails at the end of the stream fails the pipeline: what it
/// dropped learns it, and the stage is not flushed a second time as the pipeline stops.
#[test]
fn what_a_failing_flush_drops_learns_the_pipeline_stopped() {
    let (error, log, flushes) = run_a_failing_flush(|| String::from("the flush fails"));
    assert!(matches!(error, PipelineError::StageFailed { .. }), "{error:?}");
    assert_eq!(log.len(), 10);
    assert!(log.iter().all(|&(_, going)| !going), "{log:?}");
    assert_eq!(flushes, 1, "flushed again after its flush failed");
}

/// The flush's error panics as the runtime drops it: what the flush dropped still learns the
/// pipeline stopped, each ticket once.
#[test]
fn what_a_flush_drops_learns_its_outcome_though_its_error_panics_when_dropped() {
    let (error, log, _) = run_a_failing_flush(|| LoudDrop);
    assert!(error.report().is_balanced(), "{error:?}");
    assert_eq!(log.len(), 10, "{log:?}");
    assert!(log.iter().all(|&(_, going)| !going), "{log:?}");
}
