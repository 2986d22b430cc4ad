//! Randomized, seeded fault injection with async stages mixed among thread stages. Each run
//! builds a pipeline from its seed: 2–3 stages, each either a thread stage or an async stage
//! (random concurrency, ordered or not, with a timeout), with random workers, capacities and
//! error policies (skip or dead letter, with or without retries). Each stage fails items by a
//! rule fixed by the seed, the stage and the item: an error, a panic, a future that never
//! finishes (timed out), an error on the first attempt only, or a slow success. A producer
//! pushes from a thread or sends from a tokio task; the run drains, or is cancelled, shut down
//! with no time, or dropped while it pushes.
//!
//! After every run: the report is final and balanced at every stage and sink, nothing in
//! flight; the first stage received exactly what the producer was told went in; no future
//! of an async stage is left alive and no worker thread outlives the run; and a drained run
//! ends exactly as the rules predict (successes, dead letters, errors, deliveries).
//!
//! `FAULTS_SEED=<seed>` replays one run; `FAULTS_RUNS=<n>` runs more seeds.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::panic;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use backflow::core::RetrySchedule;
use backflow::{Builder, Pipeline, PushError, Report, stage};
use backflow_tokio::map_async;
use tokio::runtime::Runtime;

/// Runs unless `FAULTS_RUNS` says otherwise.
const RUNS: u64 = 40;
const SEEDS: u64 = 0xA5_1CF0_0D5E;
const INJECTED: &str = "injected panic";
const ITEMS: u64 = 300;
/// How long an async stage waits for an item's future.
const TIMEOUT: Duration = Duration::from_millis(30);
const NAMES: [&str; 3] = ["s0", "s1", "s2"];

/// SplitMix64: the seed's random numbers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What happens to an item at a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Ok,
    Slow,
    Err,
    Panic,
    /// Never finishes: times out (an async stage); fails like an error in a thread stage.
    Hang,
    /// Fails its first attempt only.
    Flaky,
}

fn fate(seed: u64, stage: usize, item: u64) -> Fate {
    let mut rng = Rng(seed ^ (stage as u64) << 56 ^ item.wrapping_mul(0x2545_F491_4F6C_DD1D));
    match rng.below(100) {
        0..70 => Fate::Ok,
        70..76 => Fate::Slow,
        76..82 => Fate::Err,
        82..87 => Fate::Panic,
        87..92 => Fate::Hang,
        _ => Fate::Flaky,
    }
}

/// One stage's plan and what it saw.
struct StagePlan {
    index: usize,
    is_async: bool,
    workers: usize,
    capacity: usize,
    concurrency: usize,
    ordered: bool,
    retries: u32,
    dead_letter: bool,
    attempts: Arc<Mutex<HashMap<u64, u32>>>,
    letters: Arc<AtomicU64>,
}

impl StagePlan {
    /// Whether `item` gets through this stage under its plan.
    fn passes(&self, seed: u64, item: u64) -> bool {
        match fate(seed, self.index, item) {
            Fate::Ok | Fate::Slow => true,
            Fate::Flaky => self.retries >= 1,
            Fate::Err | Fate::Panic | Fate::Hang => false,
        }
    }
}

/// Counts the attempt and says whether it fails.
fn attempt(attempts: &Mutex<HashMap<u64, u32>>, seed: u64, stage: usize, item: u64) -> Fate {
    let mut attempts = attempts.lock().unwrap();
    let n = attempts.entry(item).or_insert(0);
    *n += 1;
    match fate(seed, stage, item) {
        Fate::Flaky if *n > 1 => Fate::Ok,
        fate => fate,
    }
}

/// Futures of the async stages alive now.
static LIVE: AtomicUsize = AtomicUsize::new(0);

struct Alive;

impl Alive {
    fn new() -> Self {
        LIVE.fetch_add(1, SeqCst);
        Self
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, SeqCst);
    }
}

fn add_stage<In: Send + 'static>(
    builder: Builder<u64, In, u64>,
    plan: &StagePlan,
    seed: u64,
    runtime: &Runtime,
) -> Builder<u64, u64, u64> {
    let (index, attempts) = (plan.index, Arc::clone(&plan.attempts));
    let builder = if plan.is_async {
        let handle = runtime.handle().clone();
        let (concurrency, ordered) = (plan.concurrency, plan.ordered);
        builder.stage(NAMES[index], move || {
            let attempts = Arc::clone(&attempts);
            let stage = map_async(move |item: u64| {
                let fate = attempt(&attempts, seed, index, item);
                let alive = Alive::new();
                async move {
                    let _alive = alive;
                    match fate {
                        Fate::Ok => Ok(item),
                        Fate::Slow => {
                            tokio::time::sleep(Duration::from_millis(item % 3 + 1)).await;
                            Ok(item)
                        }
                        Fate::Err | Fate::Flaky => Err(format!("error on {item}")),
                        Fate::Panic => panic!("{INJECTED} on {item}"),
                        Fate::Hang => std::future::pending().await,
                    }
                }
            })
            .concurrency(concurrency)
            .timeout(TIMEOUT)
            .on(handle.clone());
            if ordered { stage.ordered() } else { stage }
        })
    } else {
        builder.stage(NAMES[index], move || {
            let attempts = Arc::clone(&attempts);
            stage::try_map(move |item: u64| match attempt(&attempts, seed, index, item) {
                Fate::Ok | Fate::Slow => Ok(item),
                Fate::Err | Fate::Hang | Fate::Flaky => Err(format!("error on {item}")),
                Fate::Panic => panic!("{INJECTED} on {item}"),
            })
        })
    };
    let mut builder =
        builder.workers(NonZeroUsize::new(plan.workers).unwrap()).capacity(plan.capacity);
    if plan.retries > 0 {
        let schedule =
            RetrySchedule::new(Duration::from_micros(100), Duration::from_millis(1), plan.retries);
        builder = builder.retry(schedule.unwrap());
    }
    if plan.dead_letter {
        let letters = Arc::clone(&plan.letters);
        builder = builder.dead_letter(move |_| {
            letters.fetch_add(1, SeqCst);
        });
    }
    builder
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Drain,
    Cancel,
    Shutdown,
    Drop,
}

/// One run; panics with what went wrong.
fn run(seed: u64, runtime: &Runtime) {
    let mut rng = Rng(seed);
    let stages = 2 + rng.below(2) as usize;
    let plans: Vec<StagePlan> = (0..stages)
        .map(|index| StagePlan {
            index,
            is_async: index == 0 || rng.chance(60),
            workers: 1 + rng.below(3) as usize,
            capacity: 4 + rng.below(60) as usize,
            concurrency: 1 + rng.below(64) as usize,
            ordered: rng.chance(50),
            retries: [0, 0, 1, 2][rng.below(4) as usize],
            dead_letter: rng.chance(50),
            attempts: Arc::default(),
            letters: Arc::default(),
        })
        .collect();
    let ending = [Ending::Drain, Ending::Drain, Ending::Cancel, Ending::Shutdown, Ending::Drop]
        [rng.below(5) as usize];
    let async_producer = rng.chance(50);
    let stop_after = rng.below(ITEMS);

    let builder = Pipeline::<u64>::builder();
    let mut builder = add_stage(builder.stage("in", || |x: u64| x), &plans[0], seed, runtime);
    for plan in &plans[1..] {
        builder = add_stage(builder, plan, seed, runtime);
    }
    let delivered = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&delivered);
    let pipeline = builder
        .sink(move |_| {
            counted.fetch_add(1, SeqCst);
        })
        .build()
        .unwrap();

    let pushed = Arc::new(AtomicU64::new(0));
    let producer = {
        let (pushed, mut input) = (Arc::clone(&pushed), pipeline.input());
        let send = async move {
            for item in 0..ITEMS {
                match input.send(item).await {
                    Ok(()) => pushed.fetch_add(1, SeqCst),
                    Err(PushError::Cancelled(_) | PushError::Closed(_)) => break,
                    Err(other) => panic!("seed {seed}: {other}"),
                };
            }
        };
        if async_producer {
            let task = runtime.spawn(send);
            Box::new(move || runtime.block_on(task).unwrap()) as Box<dyn FnOnce() + Send + '_>
        } else {
            let thread = std::thread::spawn(move || futures::executor::block_on(send));
            Box::new(move || thread.join().unwrap())
        }
    };
    let report: Option<Report> = match ending {
        Ending::Drain => {
            producer();
            Some(pipeline.drain().unwrap_or_else(|e| panic!("seed {seed}: {e}")))
        }
        Ending::Cancel | Ending::Shutdown | Ending::Drop => {
            let deadline = Instant::now() + Duration::from_secs(60);
            while pushed.load(SeqCst) < stop_after {
                assert!(Instant::now() < deadline, "seed {seed}: the producer is stuck");
                std::thread::sleep(Duration::from_micros(200));
            }
            let report = match ending {
                Ending::Cancel => {
                    pipeline.cancel();
                    Some(pipeline.drain().unwrap_or_else(|e| e.report().clone()))
                }
                Ending::Shutdown => {
                    Some(pipeline.shutdown(Duration::ZERO).unwrap_or_else(|e| e.report().clone()))
                }
                _ => {
                    drop(pipeline);
                    None
                }
            };
            producer();
            report
        }
    };

    assert_eq!(LIVE.load(SeqCst), 0, "seed {seed}: futures outlived the run");
    let threads = backflow_threads();
    assert!(threads.is_empty(), "seed {seed}: threads outlived the run: {threads:?}");
    let Some(report) = report else { return };
    assert!(report.is_balanced(), "seed {seed}: unbalanced\n{report}");
    for stage in report.stages() {
        assert_eq!(
            stage.accounting.in_flight, 0,
            "seed {seed}: {} has items in flight",
            stage.name
        );
    }
    assert_eq!(report.stage("in").unwrap().accounting.received, pushed.load(SeqCst), "seed {seed}");
    if ending != Ending::Drain {
        return;
    }
    // A drained run ends as the rules say.
    let mut reaching: Vec<u64> = (0..ITEMS).collect();
    for plan in &plans {
        let stats = report.stage(NAMES[plan.index]).unwrap();
        let passing: Vec<u64> =
            reaching.iter().copied().filter(|&i| plan.passes(seed, i)).collect();
        let failing = (reaching.len() - passing.len()) as u64;
        let a = &stats.accounting;
        assert_eq!(a.received, reaching.len() as u64, "seed {seed}: {} received", stats.name);
        assert_eq!(
            a.emitted_inputs,
            passing.len() as u64,
            "seed {seed}: {} passed (async {}, retries {}, expected failures {failing})\n{report}",
            stats.name,
            plan.is_async,
            plan.retries,
        );
        if plan.dead_letter {
            assert_eq!((a.dead_lettered, a.errored), (failing, 0), "seed {seed}: {}", stats.name);
            assert_eq!(plan.letters.load(SeqCst), failing, "seed {seed}: {} letters", stats.name);
        } else {
            assert_eq!((a.dead_lettered, a.errored), (0, failing), "seed {seed}: {}", stats.name);
        }
        reaching = passing;
    }
    assert_eq!(delivered.load(SeqCst), reaching.len() as u64, "seed {seed}: delivered");
    assert_eq!(report.sink().delivered, reaching.len() as u64, "seed {seed}");
}

/// Live threads of this process named `backflow:…` (a pipeline's workers).
fn backflow_threads() -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return Vec::new() };
    tasks
        .flatten()
        .filter_map(|task| {
            let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            // Flags (the 9th field after the name) with PF_EXITING: joined, not yet reaped.
            let flags: u64 = stat.rsplit_once(')')?.1.split_whitespace().nth(6)?.parse().ok()?;
            (comm.starts_with("backflow:") && flags & 0x4 == 0).then(|| comm.trim().to_string())
        })
        .collect()
}

#[test]
fn random_faults_with_async_stages_leave_every_item_accounted_for() {
    static QUIET: Once = Once::new();
    QUIET.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let message = backflow::stage::panic_message(info.payload());
            if !message.starts_with(INJECTED) {
                default(info);
            }
        }));
    });
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let runs = std::env::var("FAULTS_RUNS").ok().and_then(|n| n.parse().ok()).unwrap_or(RUNS);
    let seeds: Vec<u64> = match std::env::var("FAULTS_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => vec![seed],
        None => {
            let mut rng = Rng(SEEDS);
            (0..runs).map(|_| rng.next()).collect()
        }
    };
    for seed in seeds {
        run(seed, &runtime);
    }
}
