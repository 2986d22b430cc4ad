//! Values that settle an item when dropped (an acknowledgement) learn, through
//! `stage::after_outcome`, whether the stage call they were dropped in ended the pipeline.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, OnceLock};

use backflow::{ErrorPolicy, Pipeline, PipelineError, Watch, stage};

/// What each ticket learned when it was settled: whether the pipeline was still going.
type Log = Arc<Mutex<Vec<(u64, bool)>>>;

/// Item `n`; when dropped, it records whether its pipeline was cancelled once the outcome of
/// the call that dropped it was recorded.
struct Ticket {
    n: u64,
    log: Log,
    watch: Arc<OnceLock<Watch>>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let (n, log, watch) = (self.n, Arc::clone(&self.log), Arc::clone(&self.watch));
        stage::after_outcome(move || {
            let going = !watch.get().is_some_and(Watch::is_cancelled);
            log.lock().unwrap().push((n, going));
        });
    }
}

const FAILING: u64 = 50;

/// Builds one shape of pipeline.
type Build = fn() -> Pipeline<Ticket>;

/// Pushes tickets 0..100 into `pipeline` (one at a time or as one run), drains it, and
/// returns what each ticket learned.
fn run(pipeline: Pipeline<Ticket>, one_at_a_time: bool) -> (HashMap<u64, bool>, PipelineError) {
    let log = Log::default();
    let watch = Arc::new(OnceLock::new());
    let _ = watch.set(pipeline.watch());
    let tickets = (0..100).map(|n| Ticket { n, log: Arc::clone(&log), watch: Arc::clone(&watch) });
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
    let log = log.lock().unwrap();
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
    let log = Log::default();
    let watch = Arc::new(OnceLock::new());
    let keep = (Arc::clone(&log), Arc::clone(&watch));
    let pipeline = Pipeline::<u64>::builder()
        .stage("ticket", move || {
            let (log, watch) = (Arc::clone(&keep.0), Arc::clone(&keep.1));
            move |n: u64| Ticket { n, log: Arc::clone(&log), watch: Arc::clone(&watch) }
        })
        // Half dropped by the stage, half by the sink.
        .stage("odd", || stage::filter(|t: &Ticket| t.n.is_multiple_of(2)))
        .sink(drop)
        .build()
        .unwrap();
    let _ = watch.set(pipeline.watch());
    pipeline.input().push_iter(0..100).unwrap();
    pipeline.drain().unwrap();
    let log = log.lock().unwrap();
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
