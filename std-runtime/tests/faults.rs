//! Randomized, seeded fault injection. Each run builds a pipeline from its seed: 2–4 stages with
//! random workers, capacities, water marks, overflow and error policies (skip, dead letter,
//! fail fast), retries, ordering, and sometimes a broadcast or a routed branch (to its own
//! sink, or merged back). Its stages fail items by a rule fixed by the seed, the stage and the
//! item: with an error or a panic, for good or only on the first one or two attempts. Some
//! runs drain, some are cancelled by the producer or shut down mid-run.
//!
//! After every run the test proves, from what the stages, hooks and sinks saw:
//!
//! - the report is balanced with nothing in flight, and every count in it matches what was
//!   observed: successes, final failures, dead letters, panics, retries, drops by reason,
//!   abandons, deliveries;
//! - every item that reached a stage or sink met exactly one fate there (passed, failed for
//!   good, dropped, abandoned, delivered), and the drop hooks saw every drop and abandon;
//! - every success took exactly the attempts the rule says, and every final failure and dead
//!   letter is an item the rule fails for good, after exactly the allowed attempts;
//! - a drained run with `Block` everywhere ends exactly as the rules predict;
//! - a fail-fast stage that failed an item ends the run in `StageFailed` naming it;
//! - no `backflow` thread outlives the run, and single-worker or ordered paths keep order.
//!
//! No check depends on timing. Two limits only turn a hang into a failure with a seed: a
//! producer still blocked in a push after [`STUCK`] fails its run (and is freed with
//! `cancel()` so that the other runs go on), and a run longer than [`HANG`] ends the process.
//!
//! A failing run prints its seed: `FAULTS_SEED=<seed> cargo test -p backflow --test faults`
//! replays it alone; `FAULTS_RUNS=<n>` runs more seeds.

mod common;

use std::env;
use std::fmt::{self, Write as _};
use std::hint::black_box;
use std::io::{self, Write as _};
use std::num::NonZeroUsize;
use std::panic;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, Once};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use backflow::core::RetrySchedule;
use backflow::{
    Branch, BranchEnd, Builder, ConfigError, DropReason, ErrorPolicy, Overflow, Pipeline,
    PipelineError, PushError, Report, Side, WaitStrategy, stage,
};

/// Runs unless `FAULTS_RUNS` says otherwise.
const RUNS: u64 = 60;
/// The seed the runs' seeds are drawn from.
const SEEDS: u64 = 0xFA17_5EED;
/// A run taking this long is a hang: the watchdog reports its seed and ends the process.
const HANG: Duration = Duration::from_secs(30);
/// A producer blocked this long is stuck: the run is failed and freed with `cancel()`.
const STUCK: Duration = Duration::from_secs(5);
/// How an injected panic's message starts (the panic hook keeps these quiet).
const INJECTED: &str = "injected panic:";
const MAIN_NAMES: [&str; 4] = ["s0", "s1", "s2", "s3"];
/// The branch's stage and the branch itself (its sink's name in the stats).
const BRANCH_STAGE: &str = "b0";
const BRANCH: &str = "br";

// ---- randomness ----

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A fixed hash of a few words: fault rules and routes, from the seed and the item.
fn hash(words: &[u64]) -> u64 {
    words.iter().fold(0x243F_6A88_85A3_08D3, |mut h, &w| {
        h ^= w;
        splitmix(&mut h)
    })
}

/// A small seeded generator for the plan of a run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        splitmix(&mut self.0)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// In `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    fn pick<T: Copy>(&mut self, options: &[T]) -> T {
        options[self.below(options.len() as u64) as usize]
    }
}

// ---- the plan of a run ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    Error,
    Panic,
}

/// How a stage treats one item: how many attempts fail before one succeeds (`u32::MAX`: all
/// of them), and how they fail.
#[derive(Debug, Clone, Copy)]
struct Fault {
    fails: u32,
    how: How,
}

/// Which items a stage fails, and how: a pure function of the seed, the stage and the item.
#[derive(Debug, Clone, Copy)]
struct Rule {
    key: u64,
    for_good_per_mille: u64,
    /// Items that fail their first one or two attempts, then pass.
    transient_per_mille: u64,
    panic_percent: u64,
}

impl Rule {
    fn fault(&self, item: u64) -> Fault {
        let h = hash(&[self.key, item]);
        let roll = h % 1000;
        let fails = if roll < self.for_good_per_mille {
            u32::MAX
        } else if roll < self.for_good_per_mille + self.transient_per_mille {
            1 + (h >> 16) as u32 % 2
        } else {
            0
        };
        let how = if (h >> 32) % 100 < self.panic_percent { How::Panic } else { How::Error };
        Fault { fails, how }
    }
}

/// What a stage does with an item once its attempts are used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Last {
    Skip,
    DeadLetter,
    FailFast,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    Any,
    Ordered,
    Keyed,
}

#[derive(Debug, Clone)]
struct StagePlan {
    name: &'static str,
    workers: usize,
    capacity: usize,
    marks: (u8, u8),
    overflow: Overflow,
    order: Order,
    last: Last,
    retries: u32,
    delay: Duration,
    rule: Rule,
    /// Busy work per attempt, so that queues fill and drop policies act.
    spin: u32,
}

impl StagePlan {
    fn random(rng: &mut Rng, seed: u64, name: &'static str, first: bool, lossy: bool) -> Self {
        let workers = rng.range(1, 3) as usize;
        let capacity = rng.range(4, 64) as usize;
        let high = rng.range(50, 100) as u8;
        let low = rng.below(u64::from(high)) as u8;
        let overflow = match (lossy, first) {
            (false, _) => Overflow::Block,
            (true, true) => rng.pick(&[Overflow::Block, Overflow::DropNewest]),
            (true, false) => {
                rng.pick(&[Overflow::Block, Overflow::DropOldest, Overflow::DropNewest])
            }
        };
        let order = match rng.below(4) {
            _ if workers == 1 => Order::Any,
            0 | 1 => Order::Ordered,
            2 if !first => Order::Keyed,
            _ => Order::Any,
        };
        let last = match rng.below(20) {
            0..8 => Last::Skip,
            8..17 => Last::DeadLetter,
            _ => Last::FailFast,
        };
        let retries = rng.pick(&[0, 0, 1, 2]);
        let delay =
            rng.pick(&[Duration::ZERO, Duration::from_micros(200), Duration::from_millis(1)]);
        let key = hash(&[seed, name.bytes().fold(0, |k, b| k << 8 | u64::from(b))]);
        let rule = if last == Last::FailFast {
            // Rare failures, so that some fail-fast stages never trip.
            Rule {
                key,
                for_good_per_mille: rng.pick(&[0, 0, 1]),
                transient_per_mille: rng.pick(&[0, 10]),
                panic_percent: rng.pick(&[0, 50, 100]),
            }
        } else {
            Rule {
                key,
                for_good_per_mille: rng.pick(&[0, 5, 30, 100]),
                transient_per_mille: rng.pick(&[0, 20, 60]),
                panic_percent: rng.pick(&[0, 30, 100]),
            }
        };
        let spin = rng.pick(&[0, 0, 0, 200, 2_000]);
        Self {
            name,
            workers,
            capacity,
            marks: (high, low),
            overflow,
            order,
            last,
            retries,
            delay,
            rule,
            spin,
        }
    }

    fn attempts(&self) -> u32 {
        self.retries + 1
    }

    /// The attempts the stage makes on `item`, and whether the last one passes.
    fn outcome(&self, item: u64) -> (u32, bool) {
        let fails = self.rule.fault(item).fails;
        if fails < self.attempts() { (fails + 1, true) } else { (self.attempts(), false) }
    }

    fn keeps_order(&self) -> bool {
        self.workers == 1 || self.order == Order::Ordered
    }
}

/// A broadcast (every item both ways) or a route (some items to the branch) after a main stage.
#[derive(Debug, Clone)]
struct FanPlan {
    after: usize,
    /// `None` for a broadcast; for a route, the share of items sent to the branch.
    route_percent: Option<u64>,
    key: u64,
    /// Whether the branch has a stage (`b0`) before its sink or merge.
    stage: bool,
    /// Whether the branch merges back into the main line (routes with a stage only).
    merge: bool,
}

impl FanPlan {
    fn to_branch(&self, item: u64) -> bool {
        self.route_percent.is_none_or(|p| hash(&[self.key, item]) % 100 < p)
    }

    fn to_main(&self, item: u64) -> bool {
        self.route_percent.is_none() || !self.to_branch(item)
    }
}

/// How the run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Drain,
    /// The producer pushes `after` items, then cancels.
    Cancel {
        after: u64,
    },
    /// The producer pushes `after` items, then the pipeline is shut down with no time to drain.
    Shutdown {
        after: u64,
    },
}

#[derive(Debug, Clone)]
struct Plan {
    seed: u64,
    items: u64,
    /// The main stages, then the branch's stage if there is one.
    stages: Vec<StagePlan>,
    main: usize,
    fan: Option<FanPlan>,
    stop: Stop,
    /// Push in chunks with `push_iter` rather than one by one.
    push_iter: bool,
    wait: WaitStrategy,
}

impl Plan {
    fn new(seed: u64) -> Self {
        let mut rng = Rng(seed);
        let main = rng.range(2, 4) as usize;
        let items = rng.range(500, 3_000);
        let lossy = rng.percent(50);
        let mut stages: Vec<StagePlan> = (0..main)
            .map(|i| StagePlan::random(&mut rng, seed, MAIN_NAMES[i], i == 0, lossy))
            .collect();
        let fan = rng.percent(40).then(|| {
            let route_percent = rng.percent(50).then(|| rng.range(20, 80));
            let stage = rng.percent(60);
            FanPlan {
                after: rng.below(main as u64) as usize,
                route_percent,
                key: rng.next(),
                stage,
                merge: stage && route_percent.is_some() && rng.percent(50),
            }
        });
        if fan.as_ref().is_some_and(|f| f.stage) {
            stages.push(StagePlan::random(&mut rng, seed, BRANCH_STAGE, false, lossy));
        }
        let stop = match rng.below(20) {
            0..12 => Stop::Drain,
            12..17 => Stop::Cancel { after: rng.below(items + 1) },
            _ => Stop::Shutdown { after: rng.below(items + 1) },
        };
        let push_iter = rng.percent(50);
        let wait = if rng.percent(20) { WaitStrategy::BusySpin } else { WaitStrategy::Park };
        Self { seed, items, stages, main, fan, stop, push_iter, wait }
    }

    fn push_until(&self) -> u64 {
        match self.stop {
            Stop::Drain => self.items,
            Stop::Cancel { after } | Stop::Shutdown { after } => after,
        }
    }

    /// Stages in an order where each comes after every stage feeding it.
    fn topological(&self) -> Vec<usize> {
        let split = self.fan.as_ref().map_or(self.main, |f| f.after + 1);
        let branch = (self.stages.len() > self.main).then_some(self.main);
        (0..split).chain(branch).chain(split..self.main).collect()
    }

    /// What stage `node` receives, per item, given what every stage passed (`ok`) and how many
    /// items went in.
    fn feed(&self, node: usize, ok: &[Vec<u32>], pushed: u64) -> Vec<u32> {
        if node == 0 {
            return (0..self.items).map(|x| u32::from(x < pushed)).collect();
        }
        if node == self.main {
            let fan = self.fan.as_ref().expect("a branch stage has a fan");
            return side(fan, &ok[fan.after]);
        }
        self.carry(node - 1, ok)
    }

    /// What the main line carries past main stage `node`.
    fn carry(&self, node: usize, ok: &[Vec<u32>]) -> Vec<u32> {
        match &self.fan {
            Some(fan) if fan.after == node => {
                let mut main = keep(&ok[node], |x| fan.to_main(x));
                if fan.merge {
                    main.iter_mut().zip(&ok[self.main]).for_each(|(m, b)| *m += b);
                }
                main
            }
            _ => ok[node].clone(),
        }
    }

    fn sink_feed(&self, ok: &[Vec<u32>]) -> Vec<u32> {
        self.carry(self.main - 1, ok)
    }

    fn branch_sink_feed(&self, ok: &[Vec<u32>]) -> Option<Vec<u32>> {
        let fan = self.fan.as_ref()?;
        match (fan.merge, fan.stage) {
            (true, _) => None,
            (false, true) => Some(ok[self.main].clone()),
            (false, false) => Some(side(fan, &ok[fan.after])),
        }
    }

    fn all_block(&self) -> bool {
        self.stages.iter().all(|s| s.overflow == Overflow::Block)
    }

    /// Whether the main sink must see items in order: no merge, and every main stage keeps order.
    fn main_in_order(&self) -> bool {
        !self.fan.as_ref().is_some_and(|f| f.merge)
            && self.stages[..self.main].iter().all(StagePlan::keeps_order)
    }

    fn branch_in_order(&self) -> bool {
        let Some(fan) = &self.fan else { return false };
        self.stages[..=fan.after].iter().all(StagePlan::keeps_order)
            && (!fan.stage || self.stages[self.main].keeps_order())
    }
}

fn keep(counts: &[u32], accepts: impl Fn(u64) -> bool) -> Vec<u32> {
    counts.iter().enumerate().map(|(x, &n)| if accepts(x as u64) { n } else { 0 }).collect()
}

fn side(fan: &FanPlan, ok: &[u32]) -> Vec<u32> {
    keep(ok, |x| fan.to_branch(x))
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let push = if self.push_iter { "push_iter" } else { "push" };
        write!(f, "{} items, {:?}, {push}, {:?}", self.items, self.stop, self.wait)?;
        for s in &self.stages {
            write!(
                f,
                "\n  {}: {}w cap {} marks {:?} {:?} {:?} {:?} retries {} delay {:?} spin {} {:?}",
                s.name,
                s.workers,
                s.capacity,
                s.marks,
                s.overflow,
                s.order,
                s.last,
                s.retries,
                s.delay,
                s.spin,
                s.rule
            )?;
        }
        if let Some(fan) = &self.fan {
            write!(f, "\n  fan: {fan:?}")?;
        }
        Ok(())
    }
}

// ---- what a run saw ----

/// What one stage's workers saw, per item.
struct Seen {
    attempts: Vec<AtomicU32>,
    ok: Vec<AtomicU32>,
    /// Final failures: the last allowed attempt failed.
    failed: Vec<AtomicU32>,
    panics: AtomicU64,
    /// Failures with attempts left.
    retried: AtomicU64,
    /// A final failure while no cancel had been asked for.
    failed_early: AtomicBool,
}

impl Seen {
    fn new(items: u64) -> Self {
        let counts = || (0..items).map(|_| AtomicU32::new(0)).collect();
        Self {
            attempts: counts(),
            ok: counts(),
            failed: counts(),
            panics: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            failed_early: AtomicBool::new(false),
        }
    }
}

#[derive(Debug)]
struct Letter {
    stage: String,
    item: u64,
    attempts: u32,
    error: String,
}

/// Everything the stages, hooks and sinks of one run recorded.
struct Log {
    stages: Vec<StagePlan>,
    seen: Vec<Seen>,
    cancel_asked: AtomicBool,
    letters: Mutex<Vec<Letter>>,
    drops: Mutex<Vec<(String, u64, DropReason)>>,
    delivered: Mutex<Vec<u64>>,
    branch_delivered: Mutex<Vec<u64>>,
}

impl Log {
    fn new(plan: &Plan) -> Self {
        Self {
            stages: plan.stages.clone(),
            seen: plan.stages.iter().map(|_| Seen::new(plan.items)).collect(),
            cancel_asked: AtomicBool::new(false),
            letters: Mutex::default(),
            drops: Mutex::default(),
            delivered: Mutex::default(),
            branch_delivered: Mutex::default(),
        }
    }

    /// One attempt of stage `node` on `item`, failing as the stage's rule says.
    fn attempt(&self, node: usize, item: u64) -> Result<u64, String> {
        let (plan, seen) = (&self.stages[node], &self.seen[node]);
        let i = item as usize;
        let attempt = seen.attempts[i].fetch_add(1, SeqCst) + 1;
        for k in 0..plan.spin {
            black_box(k);
        }
        let fault = plan.rule.fault(item);
        if attempt > fault.fails {
            seen.ok[i].fetch_add(1, SeqCst);
            return Ok(item);
        }
        if attempt >= plan.attempts() {
            seen.failed[i].fetch_add(1, SeqCst);
            if !self.cancel_asked.load(SeqCst) {
                seen.failed_early.store(true, SeqCst);
            }
        } else {
            seen.retried.fetch_add(1, SeqCst);
        }
        match fault.how {
            How::Error => {
                Err(format!("injected error: {} item {item} attempt {attempt}", plan.name))
            }
            How::Panic => {
                seen.panics.fetch_add(1, SeqCst);
                panic!("{INJECTED} {} item {item} attempt {attempt}", plan.name)
            }
        }
    }

    fn counts(values: &[AtomicU32]) -> Vec<u32> {
        values.iter().map(|v| v.load(SeqCst)).collect()
    }
}

// ---- building and running ----

/// A stage that can fail: a `try_map` over one attempt of [`Log::attempt`].
type Faulty = stage::TryMap<Box<dyn FnMut(u64) -> Result<u64, String> + Send>>;

/// The factory of stage `node`: a `try_map` that fails as the node's rule says.
fn faulty(log: &Arc<Log>, node: usize) -> impl Fn() -> Faulty + Send + Sync + 'static {
    let log = Arc::clone(log);
    move || {
        let log = Arc::clone(&log);
        stage::try_map(Box::new(move |x: u64| log.attempt(node, x)))
    }
}

/// Applies stage `node`'s plan to the stage just added.
fn configure<P>(
    b: Builder<u64, u64, u64, P>,
    log: &Arc<Log>,
    node: usize,
) -> Builder<u64, u64, u64, P> {
    let plan = &log.stages[node];
    let mut b = b
        .workers(NonZeroUsize::new(plan.workers).unwrap())
        .capacity(plan.capacity)
        .water_marks(plan.marks.0, plan.marks.1)
        .overflow(plan.overflow);
    b = match plan.order {
        Order::Any => b,
        Order::Ordered => b.ordered(),
        Order::Keyed => b.key_ordered(|x: &u64| x % 7),
    };
    let drops = Arc::clone(log);
    b = b.on_drop(move |d| {
        drops.drops.lock().unwrap().push((d.stage.to_string(), d.item, d.reason))
    });
    b = match plan.last {
        Last::Skip => b.on_error(ErrorPolicy::Skip),
        Last::FailFast => b.on_error(ErrorPolicy::FailFast),
        Last::DeadLetter => {
            let letters = Arc::clone(log);
            b.dead_letter(move |l| {
                let letter = Letter {
                    stage: l.stage.to_string(),
                    item: l.item,
                    attempts: l.attempts,
                    error: l.error,
                };
                letters.letters.lock().unwrap().push(letter);
            })
        }
    };
    if plan.retries > 0 {
        let schedule = RetrySchedule::new(plan.delay, Duration::from_millis(1), plan.retries);
        b = b.retry(schedule.expect("delays of at most 1 ms"));
    }
    b
}

/// Adds the plan's fan if it comes after main stage `node`.
fn with_fan(
    b: Builder<u64, u64, u64>,
    plan: &Plan,
    log: &Arc<Log>,
    node: usize,
) -> Builder<u64, u64, u64> {
    let Some(fan) = plan.fan.clone().filter(|f| f.after == node) else { return b };
    let (log, branch_node) = (Arc::clone(log), plan.main);
    let (has_stage, merge) = (fan.stage, fan.merge);
    let end = move |branch: Branch<u64>| -> BranchEnd<u64> {
        let record = Arc::clone(&log);
        let sink = move |x| record.branch_delivered.lock().unwrap().push(x);
        if !has_stage {
            return branch.sink(sink);
        }
        let b: Builder<u64, u64, u64, Side> =
            configure(branch.stage(BRANCH_STAGE, faulty(&log, branch_node)), &log, branch_node);
        if merge { b.merge() } else { b.sink(sink) }
    };
    match fan.route_percent {
        None => b.broadcast(BRANCH, end),
        Some(_) => b.branch(BRANCH, move |x: &u64| fan.to_branch(*x), end),
    }
}

fn build(plan: &Plan, log: &Arc<Log>) -> Result<Pipeline<u64>, ConfigError> {
    let name = |node: usize| plan.stages[node].name;
    let first = Pipeline::<u64>::builder().wait_strategy(plan.wait).stage(name(0), faulty(log, 0));
    let mut b = with_fan(configure(first, log, 0), plan, log, 0);
    for node in 1..plan.main {
        b = configure(b.stage(name(node), faulty(log, node)), log, node);
        b = with_fan(b, plan, log, node);
    }
    let (sink, hook) = (Arc::clone(log), Arc::clone(log));
    b.sink(move |x| sink.delivered.lock().unwrap().push(x))
        .on_drop(move |d| hook.drops.lock().unwrap().push((d.stage.to_string(), d.item, d.reason)))
        .build()
}

/// Pushes items `0..` until the plan's stop (cancelling if it says so) or until a fail-fast
/// stage cancels; returns how many items went in.
fn produce(pipeline: &Pipeline<u64>, plan: &Plan, log: &Log) -> Result<u64, String> {
    let input = pipeline.input();
    let mut rng = Rng(hash(&[plan.seed, 0x9E0D]));
    let until = plan.push_until();
    let mut next = 0;
    while next < until {
        let chunk = rng.range(1, 300).min(until - next);
        let pushed = if plan.push_iter {
            input.push_iter(next..next + chunk)
        } else {
            (next..next + chunk).try_for_each(|x| input.push(x))
        };
        match pushed {
            Ok(()) => next += chunk,
            // Items go in in order: everything before the one handed back went in.
            Err(PushError::Cancelled(x)) => return Ok(x),
            Err(other) => return Err(format!("push of item {next}.. failed with {other:?}")),
        }
    }
    if let Stop::Cancel { .. } = plan.stop {
        log.cancel_asked.store(true, SeqCst);
        pipeline.cancel();
        match input.push(next) {
            Err(PushError::Cancelled(x)) if x == next => {}
            other => return Err(format!("a push after cancel returned {other:?}")),
        }
    }
    Ok(next)
}

/// What one run ended with, for the summary.
#[derive(Debug, Default)]
struct Tally {
    runs: u64,
    exact: u64,
    fail_fast: u64,
    cancelled: u64,
    shut_down: u64,
    broadcasts: u64,
    routes: u64,
    merges: u64,
    dropped: u64,
    abandoned: u64,
    dead_letters: u64,
    panics: u64,
    retries: u64,
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} runs: {} exact (drained, Block everywhere), {} ended by a fail-fast stage, {} cancelled, \
             {} shut down; {} broadcasts, {} routes ({} merged); items dropped {}, abandoned {}, \
             dead-lettered {}; panics {}, retries {}",
            self.runs,
            self.exact,
            self.fail_fast,
            self.cancelled,
            self.shut_down,
            self.broadcasts,
            self.routes,
            self.merges,
            self.dropped,
            self.abandoned,
            self.dead_letters,
            self.panics,
            self.retries
        )
    }
}

/// Runs the pipeline of `seed` and returns the problems found (empty if none).
fn run(seed: u64, tally: &mut Tally) -> Vec<String> {
    let plan = Plan::new(seed);
    let log = Arc::new(Log::new(&plan));
    let pipeline = match build(&plan, &log) {
        Ok(pipeline) => pipeline,
        Err(error) => return vec![format!("build failed: {error}")],
    };
    let (produced, stuck) = thread::scope(|s| {
        let (done, finished) = mpsc::channel::<()>();
        let producer = s.spawn(|| {
            let _done = done;
            produce(&pipeline, &plan, &log)
        });
        // A producer blocked this long is blocked for good: wake it with a cancel, so that the
        // run is reported (and the next ones run) instead of hanging the test.
        let stuck = finished.recv_timeout(STUCK) == Err(RecvTimeoutError::Timeout);
        if stuck {
            pipeline.cancel();
        }
        (producer.join().expect("the producer does not panic"), stuck)
    });
    let result = match plan.stop {
        Stop::Shutdown { .. } => {
            log.cancel_asked.store(true, SeqCst);
            pipeline.shutdown(Duration::ZERO)
        }
        Stop::Drain | Stop::Cancel { .. } => pipeline.drain(),
    };
    let left = live_threads("backflow");
    let mut problems = Problems::default();
    if stuck {
        problems.add(format!(
            "the producer was still blocked in a push after {STUCK:?} (a hang): only an outside \
             cancel() freed it"
        ));
    }
    if !left.is_empty() {
        problems.add(format!("threads left after the run: {left:?}"));
        // Let them go, so that the next runs are judged on their own.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !live_threads("backflow").is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
    }
    let pushed = match produced {
        Ok(pushed) => pushed,
        Err(problem) => {
            problems.add(format!("producer: {problem}"));
            return problems.0;
        }
    };
    check(&plan, &log, pushed, &result, &mut problems, tally);
    if !problems.0.is_empty() {
        let report = match &result {
            Ok(report) => report,
            Err(error) => error.report(),
        };
        problems
            .add(format!("result: {:?}\nplan: {plan}\nreport:\n{report}", result.as_ref().err()));
    }
    problems.0
}

/// The kernel marks a task that is in `do_exit` with this flag (`PF_EXITING`).
const PF_EXITING: u64 = 0x4;

/// [`common::threads`] that are not already exiting, as `tid name`. A thread that has been
/// joined can stay listed in `/proc` for a moment while the kernel finishes its exit; it is
/// marked `PF_EXITING` from before the join returns, so it is told apart without waiting.
fn live_threads(prefix: &str) -> Vec<String> {
    common::threads(prefix)
        .into_iter()
        .filter_map(|(tid, _)| {
            let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            // After the name: state, ppid, pgrp, session, tty, tpgid, flags, ...
            let flags: u64 = rest.split_whitespace().nth(6)?.parse().ok()?;
            let name = head.split_once('(').map_or("?", |(_, name)| name);
            (flags & PF_EXITING == 0).then(|| format!("{tid} {name}"))
        })
        .collect()
}

#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, problem: String) {
        self.0.push(problem);
    }

    fn eq<T: PartialEq + fmt::Debug>(&mut self, what: impl fmt::Display, actual: T, expected: T) {
        if actual != expected {
            self.add(format!("{what}: {actual:?}, expected {expected:?}"));
        }
    }

    /// Compares two per-item counts and names the first items that differ.
    fn same_items(&mut self, what: impl fmt::Display, actual: &[u32], expected: &[u32]) {
        let differ: Vec<String> = (0..actual.len())
            .filter(|&x| actual[x] != expected[x])
            .take(8)
            .map(|x| format!("item {x}: {} not {}", actual[x], expected[x]))
            .collect();
        if !differ.is_empty() {
            self.add(format!("{what}: {}", differ.join(", ")));
        }
    }
}

fn per_item(items: u64, list: impl IntoIterator<Item = u64>) -> Vec<u32> {
    let mut counts = vec![0; items as usize];
    list.into_iter().for_each(|x| counts[x as usize] += 1);
    counts
}

fn sum(counts: &[u32]) -> u64 {
    counts.iter().map(|&n| u64::from(n)).sum()
}

fn strictly_increasing(items: &[u64]) -> Option<usize> {
    items.windows(2).position(|w| w[0] >= w[1])
}

/// Every check of one run; see the module docs.
#[allow(clippy::too_many_lines)]
fn check(
    plan: &Plan,
    log: &Log,
    pushed: u64,
    result: &Result<Report, PipelineError>,
    p: &mut Problems,
    tally: &mut Tally,
) {
    let report = match result {
        Ok(report) => report,
        Err(error) => error.report(),
    };
    if !report.is_balanced() {
        p.add(format!("unbalanced: {:?}", report.unbalanced()));
    }
    let nodes = plan.stages.len();
    let ok: Vec<Vec<u32>> = log.seen.iter().map(|s| Log::counts(&s.ok)).collect();
    let failed: Vec<Vec<u32>> = log.seen.iter().map(|s| Log::counts(&s.failed)).collect();
    let attempts: Vec<Vec<u32>> = log.seen.iter().map(|s| Log::counts(&s.attempts)).collect();
    let drops = log.drops.lock().unwrap();
    let letters = log.letters.lock().unwrap();
    let delivered = log.delivered.lock().unwrap();
    let branch_delivered = log.branch_delivered.lock().unwrap();
    let hooked = |stage: &str, reasons: &[DropReason]| {
        let items = drops.iter().filter(|(s, _, r)| s == stage && reasons.contains(r));
        per_item(plan.items, items.map(|&(_, x, _)| x))
    };
    let known = |stage: &str| stage == "sink" || plan.stages.iter().any(|s| s.name == stage);
    for (stage, item, reason) in drops.iter().filter(|(s, _, _)| !known(s)) {
        p.add(format!("drop hook called for unknown stage {stage:?} (item {item}, {reason})"));
    }
    let mut hook_total = 0;

    // ---- each stage: fates, rules, counts ----
    for node in 0..nodes {
        let s = &plan.stages[node];
        let name = s.name;
        let Some(stats) = report.stage(name) else {
            p.add(format!("{name}: missing from the report"));
            continue;
        };
        let a = stats.accounting;
        let arrived = plan.feed(node, &ok, pushed);
        let dropped = hooked(name, &[DropReason::Oldest, DropReason::Newest]);
        let abandoned = hooked(name, &[DropReason::Abandoned]);
        let fates: Vec<u32> = (0..arrived.len())
            .map(|x| ok[node][x] + failed[node][x] + dropped[x] + abandoned[x])
            .collect();
        p.same_items(
            format!("{name}: fates (passed + failed + dropped + abandoned) against arrivals"),
            &fates,
            &arrived,
        );
        for x in 0..plan.items {
            let i = x as usize;
            let (tries, passes) = s.outcome(x);
            let seen = attempts[node][i];
            if ok[node][i] > 0 && (ok[node][i], seen, passes) != (1, tries, true) {
                p.add(format!("{name}: item {x} passed {}× after {seen} attempts; the rule says {tries} attempts, passes {passes}", ok[node][i]));
            }
            if failed[node][i] > 0 && (failed[node][i], seen, passes) != (1, tries, false) {
                p.add(format!("{name}: item {x} failed for good {}× after {seen} attempts; the rule says {tries} attempts, passes {passes}", failed[node][i]));
            }
            if ok[node][i] + failed[node][i] == 0
                && seen > 0
                && (seen >= tries || abandoned[i] != 1)
            {
                p.add(format!("{name}: item {x} unsettled after {seen} attempts (abandoned {}×); the rule says {tries}", abandoned[i]));
            }
        }
        let finals = sum(&failed[node]);
        p.eq(format!("{name}: received"), a.received, sum(&arrived));
        p.eq(format!("{name}: emitted inputs"), a.emitted_inputs, sum(&ok[node]));
        p.eq(format!("{name}: emitted outputs"), stats.emitted_outputs, a.emitted_inputs);
        let (errored, dead) = if s.last == Last::DeadLetter { (0, finals) } else { (finals, 0) };
        p.eq(format!("{name}: errored"), a.errored, errored);
        p.eq(format!("{name}: dead-lettered"), a.dead_lettered, dead);
        p.eq(format!("{name}: dropped (drop hook)"), a.dropped, sum(&dropped));
        p.eq(
            format!("{name}: dropped oldest (drop hook)"),
            stats.dropped_oldest,
            sum(&hooked(name, &[DropReason::Oldest])),
        );
        p.eq(
            format!("{name}: dropped newest (drop hook)"),
            stats.dropped_newest,
            sum(&hooked(name, &[DropReason::Newest])),
        );
        p.eq(format!("{name}: abandoned (drop hook)"), a.abandoned, sum(&abandoned));
        p.eq(format!("{name}: in flight"), a.in_flight, 0);
        p.eq(format!("{name}: panics"), stats.panics, log.seen[node].panics.load(SeqCst));
        p.eq(format!("{name}: retries"), stats.retries, log.seen[node].retried.load(SeqCst));
        match s.overflow {
            Overflow::Block => p.eq(format!("{name}: dropped under Block"), a.dropped, 0),
            Overflow::DropOldest => {
                p.eq(format!("{name}: dropped newest under DropOldest"), stats.dropped_newest, 0)
            }
            _ => p.eq(format!("{name}: dropped oldest under DropNewest"), stats.dropped_oldest, 0),
        }
        let mine: Vec<&Letter> = letters.iter().filter(|l| l.stage == name).collect();
        p.eq(format!("{name}: dead letters handed over"), mine.len() as u64, a.dead_lettered);
        for letter in mine {
            let fault = s.rule.fault(letter.item);
            let panicked = letter.error.starts_with("panicked: ");
            if letter.item >= plan.items
                || failed[node][letter.item as usize] != 1
                || letter.attempts != s.attempts()
                || fault.fails < s.attempts()
                || panicked != (fault.how == How::Panic)
            {
                p.add(format!("{name}: dead letter {letter:?} does not match the rule ({fault:?}, {} attempts)", s.attempts()));
            }
        }
        hook_total += a.dropped + a.abandoned;
        tally.dropped += a.dropped;
        tally.dead_letters += a.dead_lettered;
        tally.panics += stats.panics;
        tally.retries += stats.retries;
    }
    for letter in letters.iter().filter(|l| !plan.stages.iter().any(|s| s.name == l.stage)) {
        p.add(format!("dead letter from unknown stage: {letter:?}"));
    }

    // ---- sinks ----
    let arrived = plan.sink_feed(&ok);
    let at_sink = per_item(plan.items, delivered.iter().copied());
    let sink_abandoned = hooked("sink", &[DropReason::Abandoned]);
    let fates: Vec<u32> = (0..arrived.len()).map(|x| at_sink[x] + sink_abandoned[x]).collect();
    p.same_items("sink: delivered + abandoned (drop hook) against arrivals", &fates, &arrived);
    p.eq(
        "sink: hook calls other than abandoned",
        hooked("sink", &[DropReason::Oldest, DropReason::Newest]).iter().sum::<u32>(),
        0,
    );
    let k = report.sink();
    p.eq("sink: received", k.received, sum(&arrived));
    p.eq("sink: delivered", k.delivered, delivered.len() as u64);
    p.eq("sink: abandoned (drop hook)", k.abandoned, sum(&sink_abandoned));
    p.eq("sink: in flight", k.in_flight, 0);
    hook_total += k.abandoned;
    p.eq("drop hook calls, all stages and the sink", drops.len() as u64, hook_total);
    if let Some(branch_arrived) = plan.branch_sink_feed(&ok) {
        let at_branch = per_item(plan.items, branch_delivered.iter().copied());
        let extra: Vec<u32> =
            (0..at_branch.len()).map(|x| at_branch[x].saturating_sub(branch_arrived[x])).collect();
        p.same_items("br: delivered beyond arrivals", &extra, &vec![0; extra.len()]);
        match report.stats().sinks().iter().find(|k| k.name == BRANCH) {
            None => p.add("br: the branch sink is missing from the report".into()),
            Some(k) => {
                p.eq("br: received", k.received, sum(&branch_arrived));
                p.eq("br: delivered", k.delivered, branch_delivered.len() as u64);
                p.eq("br: abandoned", k.abandoned, k.received.saturating_sub(k.delivered));
                p.eq("br: in flight", k.in_flight, 0);
            }
        }
    } else {
        p.eq("br: deliveries without a branch sink", branch_delivered.len(), 0);
    }
    if plan.main_in_order() {
        if let Some(at) = strictly_increasing(&delivered) {
            p.add(format!(
                "sink: out of order at {at}: {:?}",
                &delivered[at..delivered.len().min(at + 4)]
            ));
        }
    }
    if plan.branch_in_order() {
        if let Some(at) = strictly_increasing(&branch_delivered) {
            p.add(format!(
                "br: out of order at {at}: {:?}",
                &branch_delivered[at..branch_delivered.len().min(at + 4)]
            ));
        }
    }
    tally.abandoned += report.abandoned();

    // ---- how the run ended ----
    let fail_fast = |early: bool| -> Vec<&str> {
        (0..nodes)
            .filter(|&n| plan.stages[n].last == Last::FailFast && sum(&failed[n]) > 0)
            .filter(|&n| !early || log.seen[n].failed_early.load(SeqCst))
            .map(|n| plan.stages[n].name)
            .collect()
    };
    let (tripped, tripped_early) = (fail_fast(false), fail_fast(true));
    match result {
        Ok(_) => {
            if let Stop::Cancel { .. } = plan.stop {
                p.add("a cancelled run drained Ok".into());
            }
            if !tripped.is_empty() {
                p.add(format!("fail-fast stages {tripped:?} failed items, yet the run ended Ok"));
            }
        }
        Err(PipelineError::StageFailed { stage, error, .. }) => {
            tally.fail_fast += 1;
            if !tripped.contains(&stage.as_str()) {
                p.add(format!("StageFailed names {stage} ({error}); fail-fast stages that failed items: {tripped:?}"));
            }
            if !error.contains("injected") {
                p.add(format!("StageFailed carries {error:?}, not the injected failure"));
            }
        }
        Err(PipelineError::Cancelled { .. }) => {
            if !matches!(plan.stop, Stop::Cancel { .. }) {
                p.add(format!("Cancelled, though the run was not cancelled ({:?})", plan.stop));
            }
            if !tripped_early.is_empty() {
                p.add(format!("fail-fast stages {tripped_early:?} failed items before the cancel, yet the run ended Cancelled"));
            }
        }
        Err(other) => p.add(format!("unexpected error: {other}")),
    }
    if pushed < plan.push_until() && tripped.is_empty() {
        p.add(format!("pushes refused after {pushed} items with no fail-fast stage tripped"));
    }
    match plan.stop {
        Stop::Drain => {}
        Stop::Cancel { .. } => tally.cancelled += 1,
        Stop::Shutdown { .. } => tally.shut_down += 1,
    }
    if let Some(fan) = &plan.fan {
        if fan.route_percent.is_some() {
            tally.routes += 1
        } else {
            tally.broadcasts += 1
        }
        tally.merges += u64::from(fan.merge);
    }

    // ---- a drained run with Block everywhere: exactly what the rules say ----
    if plan.stop != Stop::Drain || !plan.all_block() {
        return;
    }
    let mut model_ok = vec![vec![0; plan.items as usize]; nodes];
    let mut model_failed = model_ok.clone();
    let mut model_attempts = model_ok.clone();
    for node in plan.topological() {
        for (x, &n) in plan.feed(node, &model_ok, plan.items).iter().enumerate() {
            if n > 0 {
                let (tries, passes) = plan.stages[node].outcome(x as u64);
                model_attempts[node][x] = tries;
                model_ok[node][x] = u32::from(passes);
                model_failed[node][x] = u32::from(!passes);
            }
        }
    }
    let trips: Vec<&str> = (0..nodes)
        .filter(|&n| plan.stages[n].last == Last::FailFast && sum(&model_failed[n]) > 0)
        .map(|n| plan.stages[n].name)
        .collect();
    if !trips.is_empty() {
        if !matches!(result, Err(PipelineError::StageFailed { .. })) {
            p.add(format!(
                "the rules fail items in fail-fast stages {trips:?}, yet the run did not fail"
            ));
        }
        if let Some(stray) = tripped.iter().find(|t| !trips.contains(t)) {
            p.add(format!("fail-fast stage {stray} failed an item the rules let pass"));
        }
        return;
    }
    tally.exact += 1;
    p.eq("pushed", pushed, plan.items);
    p.eq("abandoned", report.abandoned(), 0);
    for node in 0..nodes {
        let name = plan.stages[node].name;
        p.same_items(format!("{name}: passed, against the rules"), &ok[node], &model_ok[node]);
        p.same_items(
            format!("{name}: failed for good, against the rules"),
            &failed[node],
            &model_failed[node],
        );
        p.same_items(
            format!("{name}: attempts, against the rules"),
            &attempts[node],
            &model_attempts[node],
        );
    }
    p.same_items(
        "sink: delivered, against the rules",
        &per_item(plan.items, delivered.iter().copied()),
        &plan.sink_feed(&model_ok),
    );
    if let Some(expected) = plan.branch_sink_feed(&model_ok) {
        p.same_items(
            "br: delivered, against the rules",
            &per_item(plan.items, branch_delivered.iter().copied()),
            &expected,
        );
    }
}

// ---- the harness ----

/// Keeps injected panics quiet, and every other panic (an assertion, a runtime bug) loud.
fn quiet_injected_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied());
            if !message.is_some_and(|m| m.starts_with(INJECTED)) {
                default(info);
            }
        }));
    });
}

/// Ends the process, naming the run, if a run takes longer than [`HANG`]: a hung pipeline
/// would otherwise hang the test with no seed to replay.
struct Watchdog {
    runs: Option<mpsc::Sender<String>>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    fn start() -> Self {
        let (runs, started) = mpsc::channel::<String>();
        let thread = thread::Builder::new()
            .name("faults-watchdog".into())
            .spawn(move || {
                let mut current = None;
                loop {
                    match started.recv_timeout(HANG) {
                        Ok(run) => current = Some(run),
                        Err(RecvTimeoutError::Disconnected) => return,
                        Err(RecvTimeoutError::Timeout) => {
                            if let Some(run) = &current {
                                // Straight to the file descriptor: `eprintln!` is captured by
                                // the test harness, and the capture is lost with the process.
                                let _ = writeln!(
                                    io::stderr(),
                                    "HANG: {run} did not finish within {HANG:?}"
                                );
                                std::process::exit(101);
                            }
                        }
                    }
                }
            })
            .expect("the watchdog starts");
        Self { runs: Some(runs), thread: Some(thread) }
    }

    fn begin(&self, run: String) {
        self.runs.as_ref().unwrap().send(run).expect("the watchdog is running");
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.runs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn env_number(name: &str) -> Option<u64> {
    let value = env::var(name).ok()?;
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={value} is not a number")))
}

#[test]
fn random_faults_leave_every_item_accounted_for() {
    quiet_injected_panics();
    let replay = env_number("FAULTS_SEED");
    let seeds: Vec<u64> = match replay {
        Some(seed) => vec![seed],
        None => {
            let mut state = SEEDS;
            (0..env_number("FAULTS_RUNS").unwrap_or(RUNS)).map(|_| splitmix(&mut state)).collect()
        }
    };
    let watchdog = Watchdog::start();
    let mut tally = Tally::default();
    let mut failures = Vec::new();
    let started = Instant::now();
    for &seed in &seeds {
        watchdog.begin(format!("seed {seed:#018x} ({})", Plan::new(seed)));
        tally.runs += 1;
        let problems = run(seed, &mut tally);
        if !problems.is_empty() {
            failures.push((seed, problems));
        }
    }
    drop(watchdog);
    eprintln!("{tally} in {:.1?}", started.elapsed());
    if !failures.is_empty() {
        let mut message = format!(
            "{} of {} runs failed; replay one with FAULTS_SEED=<seed>\n",
            failures.len(),
            seeds.len()
        );
        for (seed, problems) in &failures {
            let _ = writeln!(message, "\n== seed {seed:#018x}:");
            for problem in problems {
                let _ = writeln!(message, "  - {problem}");
            }
        }
        panic!("{message}");
    }
    if replay.is_none() && env_number("FAULTS_RUNS").is_none() {
        // The default seeds cover every kind of run (fixed by the seeds, not by timing).
        let plans: Vec<Plan> = seeds.iter().map(|&s| Plan::new(s)).collect();
        let some = |what: &str, f: &dyn Fn(&Plan) -> bool| {
            assert!(plans.iter().any(f), "no default seed plans a run with {what}");
        };
        some("a cancel", &|p| matches!(p.stop, Stop::Cancel { .. }));
        some("a shutdown", &|p| matches!(p.stop, Stop::Shutdown { .. }));
        some("a broadcast", &|p| p.fan.as_ref().is_some_and(|f| f.route_percent.is_none()));
        some("a merged route", &|p| p.fan.as_ref().is_some_and(|f| f.merge));
        some("a fail-fast stage", &|p| p.stages.iter().any(|s| s.last == Last::FailFast));
        some("a key-ordered stage", &|p| p.stages.iter().any(|s| s.order == Order::Keyed));
        assert!(tally.exact > 0 && tally.fail_fast > 0, "{tally}");
    }
}
