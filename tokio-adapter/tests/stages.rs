//! Async stages in running pipelines: order, concurrency and backpressure, errors, timeouts,
//! panics and retries under the stage's policy, cancel with futures in flight, and both tokio
//! runtimes.

// The runtime's test helpers (the tickets that learn their item's outcome, and the like).
#[path = "../../std-runtime/tests/common/mod.rs"]
mod common;

use std::convert::Infallible;
use std::future::Future;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use backflow::core::RetrySchedule;
use backflow::{ErrorPolicy, Pipeline, PipelineError, PushError};
use backflow_tokio::{filter_map_async, map_async, sink_async};
use common::{Ticket, Tickets};
use tokio::runtime::{Handle, Runtime};

/// A multi-thread runtime for the stages' timers.
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
}

/// A delay in 0..=4 ms drawn from `x` (a fixed scramble, so every run sees the same delays).
fn delay(x: u64) -> Duration {
    Duration::from_micros(x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 59 << 7)
}

/// Waits (polling, up to a minute) until `condition` holds; panics with `what` otherwise.
fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn ordered_output_is_exact_under_random_delays() {
    let runtime = runtime();
    let handle = runtime.handle().clone();
    let (pipeline, output) = Pipeline::<u64>::builder()
        .stage("slow", move || {
            map_async(|x: u64| async move {
                tokio::time::sleep(delay(x)).await;
                Ok::<_, Infallible>(x * 3)
            })
            .concurrency(64)
            .ordered()
            .on(handle.clone())
        })
        .output()
        .build()
        .unwrap();
    let reader = std::thread::spawn(move || Iterator::collect::<Vec<_>>(output));
    pipeline.input().push_iter(0..3_000).unwrap();
    let report = pipeline.drain().unwrap();
    assert_eq!(reader.join().unwrap(), (0..3_000).map(|x| x * 3).collect::<Vec<_>>());
    assert!(report.is_balanced());
}

#[test]
fn ordered_across_workers_with_the_builders_ordering() {
    let runtime = runtime();
    let handle = runtime.handle().clone();
    let (pipeline, output) = Pipeline::<u64>::builder()
        .stage("slow", move || {
            filter_map_async(|x: u64| async move {
                tokio::time::sleep(delay(x)).await;
                Ok::<_, Infallible>((!x.is_multiple_of(5)).then_some(x))
            })
            .concurrency(32)
            .ordered()
            .on(handle.clone())
        })
        .workers(NonZeroUsize::new(3).unwrap())
        .ordered()
        .output()
        .build()
        .unwrap();
    let reader = std::thread::spawn(move || Iterator::collect::<Vec<_>>(output));
    pipeline.input().push_iter(0..2_000).unwrap();
    let report = pipeline.drain().unwrap();
    assert_eq!(reader.join().unwrap(), (0..2_000).filter(|x| x % 5 != 0).collect::<Vec<_>>());
    assert!(report.is_balanced());
}

#[test]
fn unordered_output_has_every_item_once() {
    let runtime = runtime();
    let handle = runtime.handle().clone();
    let (pipeline, output) = Pipeline::<u64>::builder()
        .stage("slow", move || {
            map_async(|x: u64| async move {
                tokio::time::sleep(delay(x)).await;
                Ok::<_, Infallible>(x)
            })
            .concurrency(100)
            .on(handle.clone())
        })
        .workers(NonZeroUsize::new(2).unwrap())
        .output()
        .build()
        .unwrap();
    let reader = std::thread::spawn(move || Iterator::collect::<Vec<_>>(output));
    pipeline.input().push_iter(0..3_000).unwrap();
    pipeline.drain().unwrap();
    let mut got = reader.join().unwrap();
    got.sort_unstable();
    assert_eq!(got, (0..3_000).collect::<Vec<_>>());
}

/// A future that is pending until the gate opens; counts its first polls and its drops.
struct Held {
    gate: Arc<tokio::sync::Notify>,
    started: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
    first: bool,
    wait: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl Held {
    fn new(
        gate: &Arc<tokio::sync::Notify>,
        started: &Arc<AtomicUsize>,
        dropped: &Arc<AtomicUsize>,
    ) -> Self {
        let waiting = Arc::clone(gate);
        Self {
            gate: Arc::clone(gate),
            started: Arc::clone(started),
            dropped: Arc::clone(dropped),
            first: true,
            wait: Box::pin(async move { waiting.notified().await }),
        }
    }
}

impl Future for Held {
    type Output = Result<(), Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.first {
            self.first = false;
            self.started.fetch_add(1, Ordering::SeqCst);
        }
        let _ = &self.gate;
        self.wait.as_mut().poll(cx).map(Ok)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn a_worker_takes_no_more_than_its_concurrency_and_the_queue_holds_the_producer_back() {
    let runtime = runtime();
    let handle = runtime.handle().clone();
    let gate = Arc::new(tokio::sync::Notify::new());
    let (started, dropped) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (g, s, d) = (Arc::clone(&gate), Arc::clone(&started), Arc::clone(&dropped));
    let pipeline = Pipeline::<u32>::builder()
        .stage("held", move || {
            let (g, s, d) = (Arc::clone(&g), Arc::clone(&s), Arc::clone(&d));
            sink_async(move |_: u32| Held::new(&g, &s, &d)).concurrency(4).on(handle.clone())
        })
        .capacity(8)
        .sink(|never| match never {})
        .build()
        .unwrap();
    let input = pipeline.input();
    let mut pushed = 0u32;
    loop {
        match input.try_push(pushed) {
            Ok(()) => pushed += 1,
            Err(PushError::Full(_)) if started.load(Ordering::SeqCst) == 4 => break,
            Err(PushError::Full(_)) => std::thread::yield_now(),
            Err(other) => panic!("{other}"),
        }
        assert!(pushed < 1_000, "the producer was never held back");
    }
    // The queue is full and the worker holds four futures, none finished: it takes no more.
    assert_eq!(started.load(Ordering::SeqCst), 4);
    let stats = pipeline.stats();
    let held = stats.stage("held").unwrap();
    assert_eq!(held.accounting.received, u64::from(pushed));
    assert!(held.accounting.in_flight >= 4);
    let report = match pipeline.shutdown(Duration::ZERO) {
        Ok(report) => report,
        Err(err) => err.report().clone(),
    };
    let held = &report.stage("held").unwrap().accounting;
    assert_eq!(held.abandoned, u64::from(pushed));
    // Every future that started was dropped by the time `shutdown` returned.
    assert_eq!(dropped.load(Ordering::SeqCst), 4);
    assert!(report.is_balanced());
}

#[test]
fn cancel_with_256_in_flight_abandons_and_counts_every_item_and_drops_every_future() {
    let runtime = runtime();
    let handle = runtime.handle().clone();
    let gate = Arc::new(tokio::sync::Notify::new());
    let (started, dropped) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (g, s, d) = (Arc::clone(&gate), Arc::clone(&started), Arc::clone(&dropped));
    let abandoned_seen = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&abandoned_seen);
    let (pipeline, output) = Pipeline::<u32>::builder()
        .stage("call", move || {
            let (g, s, d) = (Arc::clone(&g), Arc::clone(&s), Arc::clone(&d));
            map_async(move |_: u32| Held::new(&g, &s, &d)).concurrency(256).on(handle.clone())
        })
        .capacity(64)
        .on_drop(move |_| {
            seen.fetch_add(1, Ordering::SeqCst);
        })
        .output()
        .build()
        .unwrap();
    let input = pipeline.input();
    for x in 0..300 {
        input.push(x).unwrap();
    }
    eventually("256 futures are in flight", || started.load(Ordering::SeqCst) == 256);
    pipeline.cancel();
    let err = pipeline.drain().unwrap_err();
    assert!(matches!(err, PipelineError::Cancelled { .. }), "{err}");
    // No future outlives the pipeline: every one that started was dropped by the time
    // `drain` returned.
    assert_eq!(dropped.load(Ordering::SeqCst), 256);
    let report = err.report();
    let call = &report.stage("call").unwrap().accounting;
    assert_eq!((call.received, call.abandoned, call.in_flight), (300, 300, 0));
    // The items in the queue reach the drop hook; those moved into futures are dropped with
    // them.
    assert_eq!(abandoned_seen.load(Ordering::SeqCst), 300 - 256);
    assert!(report.is_balanced());
    drop(output);
}

/// Each item's fate by its value: 0 succeeds, 1 errs, 2 panics, 3 never finishes (timeout),
/// 4 errs on its first attempt only.
fn fate(x: u32, attempt: u32) -> Pin<Box<dyn Future<Output = Result<u32, String>> + Send>> {
    match x % 5 {
        0 => Box::pin(async move { Ok(x) }),
        1 => Box::pin(async move { Err(format!("refused {x}")) }),
        2 => Box::pin(async move { panic!("broke on {x}") }),
        3 => Box::pin(std::future::pending()),
        _ if attempt == 1 => Box::pin(async move { Err(format!("flaky {x}")) }),
        _ => Box::pin(async move { Ok(x) }),
    }
}

#[test]
fn errors_timeouts_panics_and_retries_are_counted_and_dead_lettered() {
    let runtime = runtime();
    let handle = runtime.handle().clone();
    let attempts = Arc::new(Mutex::new(std::collections::HashMap::<u32, u32>::new()));
    let letters = Arc::new(Mutex::new(Vec::new()));
    let (a, l) = (Arc::clone(&attempts), Arc::clone(&letters));
    let schedule =
        RetrySchedule::new(Duration::from_millis(1), Duration::from_millis(2), 2).unwrap();
    let (pipeline, output) = Pipeline::<u32>::builder()
        .stage("call", move || {
            let a = Arc::clone(&a);
            map_async(move |x: u32| {
                let attempt = {
                    let mut attempts = a.lock().unwrap();
                    let n = attempts.entry(x).or_insert(0);
                    *n += 1;
                    *n
                };
                fate(x, attempt)
            })
            .concurrency(16)
            .timeout(Duration::from_millis(20))
            .on(handle.clone())
        })
        .retry(schedule)
        .dead_letter(move |letter| {
            l.lock().unwrap().push((letter.item, letter.error, letter.attempts));
        })
        .output()
        .build()
        .unwrap();
    let reader = std::thread::spawn(move || Iterator::collect::<Vec<_>>(output));
    pipeline.input().push_iter(0..100).unwrap();
    let report = pipeline.drain().unwrap();
    let mut out = reader.join().unwrap();
    out.sort_unstable();
    assert_eq!(out, (0..100).filter(|x| x % 5 == 0 || x % 5 == 4).collect::<Vec<_>>());
    let call = report.stage("call").unwrap();
    assert_eq!(call.accounting.emitted_inputs, 40);
    assert_eq!(call.accounting.dead_lettered, 60);
    // 60 items fail for good after 3 attempts, 20 succeed on their second.
    assert_eq!(call.retries, 60 * 2 + 20);
    assert!(report.is_balanced());
    let attempts = attempts.lock().unwrap();
    for x in 0..100 {
        let expected = match x % 5 {
            0 => 1,
            4 => 2,
            _ => 3,
        };
        assert_eq!(attempts[&x], expected, "attempts of {x}");
    }
    let letters = letters.lock().unwrap();
    assert_eq!(letters.len(), 60);
    for (item, error, tries) in letters.iter() {
        assert_eq!(*tries, 3);
        let expected = match item % 5 {
            1 => format!("refused {item}"),
            2 => format!("the future panicked: broke on {item}"),
            _ => "timed out after 20ms".to_string(),
        };
        assert_eq!(*error, expected);
    }
}

#[test]
fn fail_fast_stops_the_pipeline_on_the_first_failed_future() {
    let runtime = runtime();
    let handle = runtime.handle().clone();
    let pipeline = Pipeline::<u32>::builder()
        .stage("call", move || {
            sink_async(|x: u32| async move { if x == 7 { Err("seven") } else { Ok(()) } })
                .on(handle.clone())
        })
        .on_error(ErrorPolicy::FailFast)
        .sink(|never| match never {})
        .build()
        .unwrap();
    let _ = pipeline.input().push_iter(0..1000);
    match pipeline.drain() {
        Err(PipelineError::StageFailed { stage, error, .. }) => {
            assert_eq!(stage, "call");
            assert_eq!(error, "seven");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_item_dropped_by_a_future_that_fails_the_pipeline_learns_it() {
    let runtime = runtime();
    let handle = runtime.handle().clone();
    // The future drops the ticket when it finishes, or in its first poll (before it waits),
    // or the function drops it as it makes the future (the future keeps only its number).
    for drops in ["at the end", "in the first poll", "at the start"] {
        for concurrency in [1, 16] {
            check_that_ticket_seven_learns_it(&handle, drops, concurrency);
        }
    }
}

/// Runs tickets 0..8 through a `sink_async` stage failing ticket 7 under `FailFast`; checks
/// that ticket 7's deferred work saw the pipeline cancelled.
fn check_that_ticket_seven_learns_it(handle: &Handle, drops: &'static str, concurrency: usize) {
    let pipeline = Pipeline::<Ticket>::builder()
        .stage("call", {
            let handle = handle.clone();
            move || {
                sink_async(move |ticket: Ticket| {
                    let n = ticket.n;
                    let ticket = (drops != "at the start").then_some(ticket);
                    async move {
                        let mut ticket = ticket;
                        if drops == "in the first poll" {
                            drop(ticket.take());
                        }
                        tokio::time::sleep(delay(n)).await;
                        drop(ticket);
                        if n == 7 { Err("seven") } else { Ok(()) }
                    }
                })
                .concurrency(concurrency)
                .on(handle.clone())
            }
        })
        .on_error(ErrorPolicy::FailFast)
        .sink(|never| match never {})
        .build()
        .unwrap();
    let handed = Tickets::default();
    handed.watch(pipeline.watch());
    // Ticket 7 last: its worker's batch ends once it has started it, and its outcome is
    // reported in the next one.
    let tickets = (0..8).map(|n| handed.ticket(n));
    let _ = pipeline.input().push_iter(tickets);
    assert!(matches!(pipeline.drain(), Err(PipelineError::StageFailed { .. })));
    let log = handed.learned();
    assert_eq!(log.len(), 8, "every ticket settled once: {log:?}");
    assert!(log.contains(&(7, false)), "dropped {drops}, concurrency {concurrency}: {log:?}");
}

/// An async producer and consumer on the same runtime as the stage's futures.
async fn through_async_stage(handle: Handle) {
    let (pipeline, mut output) = Pipeline::<u64>::builder()
        .stage("enrich", move || {
            map_async(|x: u64| async move {
                tokio::time::sleep(delay(x)).await;
                Ok::<_, Infallible>(x + 1)
            })
            .concurrency(32)
            .ordered()
            .on(handle.clone())
        })
        .capacity(16)
        .output()
        .build()
        .unwrap();
    let mut input = pipeline.input();
    let producer = tokio::spawn(async move {
        for x in 0..500 {
            input.send(x).await.unwrap();
        }
        tokio::task::spawn_blocking(move || pipeline.drain()).await.unwrap()
    });
    let mut got = Vec::new();
    while let Some(x) = futures::StreamExt::next(&mut output).await {
        got.push(x);
    }
    let report = producer.await.unwrap().unwrap();
    assert_eq!(got, (1..=500).collect::<Vec<_>>());
    assert!(report.is_balanced());
}

#[tokio::test(flavor = "current_thread")]
async fn on_a_current_thread_runtime() {
    through_async_stage(Handle::current()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_multi_thread_runtime() {
    through_async_stage(Handle::current()).await;
}

#[test]
fn without_a_handle_the_adapters_own_runtime_runs_the_timers() {
    let (pipeline, output) = Pipeline::<u64>::builder()
        .stage("sleepy", || {
            map_async(|x: u64| async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                Ok::<_, Infallible>(x)
            })
        })
        .output()
        .build()
        .unwrap();
    let reader = std::thread::spawn(move || Iterator::count(output));
    pipeline.input().push_iter(0..100).unwrap();
    pipeline.drain().unwrap();
    assert_eq!(reader.join().unwrap(), 100);
}

/// Panics when dropped: what a future in flight may own.
struct PanicsOnDrop;

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        panic!("dropped");
    }
}

/// A pipeline whose stage `name` starts three futures that never finish: `start` runs as each
/// item's future is made, and what it returns is owned by the future. Returned once all three
/// have started, with the runtime they run against.
fn three_never_finishing<H: Send + 'static>(
    name: &'static str,
    start: fn(u64) -> H,
) -> (Pipeline<u64>, Runtime) {
    let runtime = runtime();
    let handle = runtime.handle().clone();
    let (started, began) = std::sync::mpsc::channel::<u64>();
    let started = Mutex::new(started);
    let pipeline = Pipeline::<u64>::builder()
        .stage(name, move || {
            let started = started.lock().unwrap().clone();
            map_async(move |x: u64| {
                let (owned, started) = (start(x), started.clone());
                async move {
                    let _owned = owned;
                    started.send(x).unwrap();
                    std::future::pending::<()>().await;
                    Ok::<u64, Infallible>(x)
                }
            })
            .concurrency(4)
            .on(handle.clone())
        })
        .sink(|_| {})
        .build()
        .unwrap();
    pipeline.input().push_iter(0..3).unwrap();
    for _ in 0..3 {
        began.recv().unwrap();
    }
    (pipeline, runtime)
}

#[test]
fn futures_in_flight_whose_drops_panic_are_dropped_one_by_one_when_the_pipeline_is() {
    let (pipeline, _runtime) = three_never_finishing("pod", |_| PanicsOnDrop);
    let watch = pipeline.watch();
    // Three futures in flight, each of whose drops panics: a second panic while the first
    // unwinds would abort the process.
    drop(pipeline);
    let stats = watch.stats();
    let pod = stats.stage("pod").unwrap();
    assert!(pod.accounting.is_balanced() && pod.accounting.in_flight == 0, "{stats}");
    assert_eq!(pod.accounting.abandoned, 3, "{stats}");
}

#[test]
fn held_items_whose_deferred_work_panics_are_let_go_one_by_one_when_the_pipeline_is() {
    // Held with the item until its outcome is reported, which never comes.
    let (pipeline, _runtime) = three_never_finishing("defers", |x| {
        backflow::stage::after_outcome(move || panic!("the deferred work of {x} panics"));
    });
    // Three items held, each with work that panics when let go: a second panic while the
    // first unwinds would abort the process.
    pipeline.cancel();
    let error = pipeline.drain().expect_err("cancelled");
    let stats = error.report().stage("defers").unwrap();
    assert!(stats.accounting.is_balanced(), "{error:?}");
    assert_eq!(stats.accounting.abandoned, 3, "{error:?}");
}

/// An error whose drop panics.
struct Bomb(u64);

impl Drop for Bomb {
    fn drop(&mut self) {
        panic!("bomb {} dropped", self.0);
    }
}

impl std::fmt::Display for Bomb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bomb {}", self.0)
    }
}

/// Counts the futures that have finished and been dropped.
struct Finished(Arc<AtomicUsize>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn held_results_whose_drops_panic_are_dropped_one_by_one_when_the_pipeline_is() {
    let runtime = runtime();
    let handle = runtime.handle().clone();
    let finished = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&finished);
    let pipeline = Pipeline::<u64>::builder()
        .stage("bombs", move || {
            let counted = Arc::clone(&counted);
            map_async(move |x: u64| {
                let finished = Finished(Arc::clone(&counted));
                async move {
                    let _finished = finished;
                    if x == 0 {
                        std::future::pending::<()>().await;
                    }
                    Err::<u64, _>(Bomb(x))
                }
            })
            .on(handle.clone())
        })
        .sink(|_| {})
        .build()
        .unwrap();
    pipeline.input().push_iter(0..4).unwrap();
    // Items 1 to 3 have finished with their errors, held until item 0 is reported (never).
    eventually("three futures finished", || finished.load(Ordering::SeqCst) == 3);
    pipeline.cancel();
    let error = pipeline.drain().expect_err("cancelled");
    let stats = error.report().stage("bombs").unwrap();
    assert!(stats.accounting.is_balanced(), "{error:?}");
}

/// Unordered, the outputs of items that finished go out at once, though their outcomes are
/// reported in input order, behind an item that never finishes. Cancelled then, those items
/// count as processed (or failed), not as abandoned: each item is counted once.
#[test]
fn items_finished_behind_an_unfinished_one_are_not_abandoned_at_cancel() {
    let runtime = runtime();
    let handle = runtime.handle().clone();
    let (pipeline, mut output) = Pipeline::<u64>::builder()
        .stage("stuck", move || {
            map_async(|x: u64| async move {
                if x == 0 {
                    std::future::pending::<()>().await;
                }
                if x.is_multiple_of(3) { Err("a multiple of three") } else { Ok(x) }
            })
            .concurrency(16)
            .on(handle.clone())
        })
        .output()
        .build()
        .unwrap();
    pipeline.input().push_iter(0..10).unwrap();
    // 1, 2, 4, 5, 7, 8 succeed and go out; 3, 6, 9 fail; 0 never finishes.
    // All ten are started and polled in one run (concurrency 16): by the time the six
    // outputs are out, the three failures are in too.
    let mut got: Vec<u64> = output.by_ref().take(6).collect();
    got.sort_unstable();
    assert_eq!(got, [1, 2, 4, 5, 7, 8]);
    pipeline.cancel();
    drop(output);
    let error = pipeline.drain().expect_err("cancelled");
    let stuck = error.report().stage("stuck").unwrap().accounting;
    assert_eq!(
        (stuck.emitted_inputs, stuck.errored, stuck.abandoned),
        (6, 3, 1),
        "{:?}",
        error.report()
    );
    assert!(error.report().is_balanced());
}

/// A failure held behind an unfinished item, under a policy that copies items (dead letter),
/// cannot go to its handler once the pipeline is cancelled: its copy is abandoned, to the drop
/// hook, like the item that never finished.
#[test]
fn a_failure_held_at_cancel_under_a_dead_letter_policy_goes_to_the_drop_hook() {
    let runtime = runtime();
    let handle = runtime.handle().clone();
    let dropped = Arc::new(Mutex::new(Vec::new()));
    let hook = Arc::clone(&dropped);
    let failed = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&failed);
    let pipeline = Pipeline::<u64>::builder()
        .stage("stuck", move || {
            let counted = Arc::clone(&counted);
            map_async(move |x: u64| {
                let counted = Arc::clone(&counted);
                async move {
                    if x == 0 {
                        std::future::pending::<()>().await;
                    }
                    counted.fetch_add(1, Ordering::SeqCst);
                    Err::<u64, _>("fails")
                }
            })
            .on(handle.clone())
        })
        .dead_letter(|_| {})
        .on_drop(move |dropped| hook.lock().unwrap().push(dropped.item))
        .sink(|_| {})
        .build()
        .unwrap();
    pipeline.input().push_iter(0..2).unwrap();
    // Its result is held (behind 0) from the poll that finished it on.
    eventually("item 1 failed", || failed.load(Ordering::SeqCst) == 1);
    pipeline.cancel();
    let error = pipeline.drain().expect_err("cancelled");
    let stuck = error.report().stage("stuck").unwrap().accounting;
    assert!(stuck.is_balanced(), "{stuck:?}");
    assert_eq!((stuck.abandoned, stuck.dead_lettered), (2, 0), "{stuck:?}");
    let mut dropped = dropped.lock().unwrap().clone();
    dropped.sort_unstable();
    assert_eq!(dropped, [0, 1]);
}
