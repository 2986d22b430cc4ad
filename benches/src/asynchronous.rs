//! Async workloads on a tokio runtime with a worker thread per core.
//!
//! **I/O-bound stage** ([`IO_CONTENDERS`]): each item's call sleeps [`CALL`] on the tokio
//! timer and returns the item; a producer feeds `0..n` through that one stage into a consumer
//! that sums the results (the sum is checked). backflow-tokio's `map_async` at concurrency
//! [`CONCURRENCY`] (one worker, capacity 1024, fed by `push_iter` from a thread, a sink
//! closure) runs against `futures::stream::iter(..).map(call).buffered(256)`, against a tokio
//! pipeline of the same shape (producer task → `mpsc::channel(1024)` → a stage task keeping up
//! to 256 calls in a `JoinSet` → `mpsc::channel(1024)` → consumer task), and against backflow
//! thread stages with 8 workers each sleeping through a call. Each run also reports the most
//! calls alive at once (memory in flight): at most the concurrency for the async contenders.
//!
//! **Async ends** ([`SEND_CONTENDERS`]): a producer task `send().await`s `u64`s through a
//! 1-stage backflow pipeline (`x ^ 1`) to a consumer task reading the output as a `Stream`,
//! against the same shape on tokio `mpsc::channel(1024)` (producer task → channel → stage task
//! → channel → consumer task).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use backflow::Pipeline;
use backflow_tokio::map_async;
use futures::StreamExt;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// What each I/O call waits, on the tokio timer.
pub const CALL: Duration = Duration::from_millis(5);

/// Calls in flight for the async contenders.
pub const CONCURRENCY: usize = 256;

/// Worker threads of the thread-stage contender.
pub const THREAD_WORKERS: usize = 8;

/// The capacity of every queue and channel.
const CAPACITY: usize = 1024;

/// One run of the I/O-bound workload: its time and the most calls alive at once.
#[derive(Debug, Clone, Copy)]
pub struct IoRun {
    /// From the first item in until the last result is summed.
    pub elapsed: Duration,
    /// The most calls alive (started and not yet dropped) at any moment.
    pub peak_calls: usize,
}

/// A contender of the I/O-bound workload.
#[derive(Debug, Clone, Copy)]
pub struct IoContender {
    /// The row label.
    pub name: &'static str,
    /// Runs `n` items on the runtime.
    pub run: fn(&Runtime, u64) -> IoRun,
}

/// The baseline row of the I/O-bound workload.
pub const BACKFLOW_ASYNC: &str = "backflow-tokio map_async, concurrency 256";
/// The `buffered` peer.
pub const BUFFERED: &str = "futures stream buffered(256)";
/// The tokio channels + `JoinSet` peer.
pub const JOIN_SET: &str = "tokio mpsc + JoinSet (256)";
/// backflow's thread stages.
pub const THREADS: &str = "backflow thread stage, 8 workers";

/// Every contender of the I/O-bound workload.
pub const IO_CONTENDERS: &[IoContender] = &[
    IoContender { name: BACKFLOW_ASYNC, run: backflow_async },
    IoContender { name: BUFFERED, run: buffered },
    IoContender { name: JOIN_SET, run: join_set },
    IoContender { name: THREADS, run: threads },
];

/// A multi-thread runtime with a worker per core, timers on.
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime")
}

/// Counts the calls alive, and the most at once.
#[derive(Debug, Default)]
struct Calls {
    alive: AtomicUsize,
    peak: AtomicUsize,
}

/// A call alive, counted until dropped.
struct Alive(Arc<Calls>);

impl Alive {
    fn new(calls: &Arc<Calls>) -> Self {
        let now = calls.alive.fetch_add(1, Ordering::Relaxed) + 1;
        calls.peak.fetch_max(now, Ordering::Relaxed);
        Self(Arc::clone(calls))
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.alive.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The I/O call: waits [`CALL`] on the tokio timer, returns `x`.
async fn call(x: u64, alive: Alive) -> u64 {
    tokio::time::sleep(CALL).await;
    drop(alive);
    x
}

fn expected(n: u64) -> u64 {
    n * n.saturating_sub(1) / 2
}

fn checked(n: u64, sum: u64, started: Instant, calls: &Calls) -> IoRun {
    let elapsed = started.elapsed();
    assert_eq!(sum, expected(n), "items lost or duplicated");
    IoRun { elapsed, peak_calls: calls.peak.load(Ordering::Relaxed) }
}

fn backflow_async(runtime: &Runtime, n: u64) -> IoRun {
    let calls = Arc::new(Calls::default());
    let (handle, counted) = (runtime.handle().clone(), Arc::clone(&calls));
    let sum = Arc::new(AtomicU64::new(0));
    let total = Arc::clone(&sum);
    let pipeline = Pipeline::<u64>::builder()
        .stage("call", move || {
            let calls = Arc::clone(&counted);
            map_async(move |x: u64| {
                let alive = Alive::new(&calls);
                async move { Ok::<_, std::convert::Infallible>(call(x, alive).await) }
            })
            .concurrency(CONCURRENCY)
            .on(handle.clone())
        })
        .capacity(CAPACITY)
        .sink(move |x| {
            total.fetch_add(x, Ordering::Relaxed);
        })
        .build()
        .expect("a valid pipeline");
    let started = Instant::now();
    pipeline.input().push_iter(0..n).expect("an open pipeline");
    pipeline.drain().expect("a clean drain");
    checked(n, sum.load(Ordering::Relaxed), started, &calls)
}

fn buffered(runtime: &Runtime, n: u64) -> IoRun {
    let calls = Arc::new(Calls::default());
    let started = Instant::now();
    let sum = runtime.block_on(
        futures::stream::iter(0..n)
            .map(|x| call(x, Alive::new(&calls)))
            .buffered(CONCURRENCY)
            .fold(0u64, |sum, x| async move { sum + x }),
    );
    checked(n, sum, started, &calls)
}

fn join_set(runtime: &Runtime, n: u64) -> IoRun {
    let calls = Arc::new(Calls::default());
    let started = Instant::now();
    let counted = Arc::clone(&calls);
    let sum = runtime.block_on(async move {
        let (in_tx, mut in_rx) = mpsc::channel::<u64>(CAPACITY);
        let (out_tx, mut out_rx) = mpsc::channel::<u64>(CAPACITY);
        let producer = tokio::spawn(async move {
            for x in 0..n {
                in_tx.send(x).await.expect("the stage is alive");
            }
        });
        let stage = tokio::spawn(async move {
            let mut in_flight = JoinSet::new();
            let mut open = true;
            while open || !in_flight.is_empty() {
                tokio::select! {
                    item = in_rx.recv(), if open && in_flight.len() < CONCURRENCY => match item {
                        Some(x) => {
                            in_flight.spawn(call(x, Alive::new(&counted)));
                        }
                        None => open = false,
                    },
                    Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                        out_tx.send(done.expect("the call ran")).await.expect("the consumer is alive");
                    }
                }
            }
        });
        let mut sum = 0;
        while let Some(x) = out_rx.recv().await {
            sum += x;
        }
        producer.await.expect("the producer ran");
        stage.await.expect("the stage ran");
        sum
    });
    checked(n, sum, started, &calls)
}

fn threads(_: &Runtime, n: u64) -> IoRun {
    let calls = Arc::new(Calls::default());
    let counted = Arc::clone(&calls);
    let sum = Arc::new(AtomicU64::new(0));
    let total = Arc::clone(&sum);
    let pipeline = Pipeline::<u64>::builder()
        .stage("call", move || {
            let calls = Arc::clone(&counted);
            move |x: u64| {
                let _alive = Alive::new(&calls);
                std::thread::sleep(CALL);
                x
            }
        })
        .workers(std::num::NonZeroUsize::new(THREAD_WORKERS).expect("non-zero"))
        .capacity(CAPACITY)
        .sink(move |x| {
            total.fetch_add(x, Ordering::Relaxed);
        })
        .build()
        .expect("a valid pipeline");
    let started = Instant::now();
    pipeline.input().push_iter(0..n).expect("an open pipeline");
    pipeline.drain().expect("a clean drain");
    checked(n, sum.load(Ordering::Relaxed), started, &calls)
}

/// A contender of the async-ends workload.
#[derive(Debug, Clone, Copy)]
pub struct SendContender {
    /// The row label.
    pub name: &'static str,
    /// Moves `n` items on the runtime and returns the time it took.
    pub run: fn(&Runtime, u64) -> Duration,
}

/// The baseline row of the async-ends workload.
pub const TOKIO_MPSC: &str = "tokio mpsc::channel(1024), stage task";

/// Every contender of the async-ends workload.
pub const SEND_CONTENDERS: &[SendContender] = &[
    SendContender { name: "backflow send().await → stage → Stream", run: backflow_send },
    SendContender { name: TOKIO_MPSC, run: tokio_mpsc },
];

fn backflow_send(runtime: &Runtime, n: u64) -> Duration {
    let (pipeline, mut output) = Pipeline::<u64>::builder()
        .stage("xor", || |x: u64| x ^ 1)
        .capacity(CAPACITY)
        .output()
        .build()
        .expect("a valid pipeline");
    let mut input = pipeline.input();
    let started = Instant::now();
    let sum = runtime.block_on(async move {
        let producer = tokio::spawn(async move {
            for x in 0..n {
                input.send(x).await.expect("an open pipeline");
            }
            drop(input);
            tokio::task::spawn_blocking(move || pipeline.drain()).await
        });
        let consumer = tokio::spawn(async move {
            let mut sum = 0u64;
            while let Some(x) = StreamExt::next(&mut output).await {
                sum += x;
            }
            sum
        });
        producer.await.expect("the producer ran").expect("the drain ran").expect("a clean drain");
        consumer.await.expect("the consumer ran")
    });
    let elapsed = started.elapsed();
    assert_eq!(sum, xor_sum(n), "items lost or duplicated");
    elapsed
}

fn tokio_mpsc(runtime: &Runtime, n: u64) -> Duration {
    let started = Instant::now();
    let sum = runtime.block_on(async move {
        let (in_tx, mut in_rx) = mpsc::channel::<u64>(CAPACITY);
        let (out_tx, mut out_rx) = mpsc::channel::<u64>(CAPACITY);
        let producer = tokio::spawn(async move {
            for x in 0..n {
                in_tx.send(x).await.expect("the stage is alive");
            }
        });
        let stage = tokio::spawn(async move {
            while let Some(x) = in_rx.recv().await {
                out_tx.send(x ^ 1).await.expect("the consumer is alive");
            }
        });
        let consumer = tokio::spawn(async move {
            let mut sum = 0u64;
            while let Some(x) = out_rx.recv().await {
                sum += x;
            }
            sum
        });
        producer.await.expect("the producer ran");
        stage.await.expect("the stage ran");
        consumer.await.expect("the consumer ran")
    });
    let elapsed = started.elapsed();
    assert_eq!(sum, xor_sum(n), "items lost or duplicated");
    elapsed
}

/// The sum of `x ^ 1` over `0..n`.
fn xor_sum(n: u64) -> u64 {
    (0..n).map(|x| x ^ 1).sum()
}
