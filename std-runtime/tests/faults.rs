//! Randomized, seeded fault injection. Each run builds a pipeline from its seed: 2–4 stages with
//! random workers, capacities, water marks, overflow and error policies (skip, dead letter,
//! fail fast), retries, ordering, sometimes a broadcast or a routed branch (to its own sink, or
//! merged back), and a sink closure or an [`Output`] read by its own thread (which may drop it
//! halfway). Its stages fail items by a rule fixed by the seed, the stage and the item: with an
//! error or a panic, for good or only on the first one or two attempts. One to three producer
//! threads push with `push`, `try_push`, `push_timeout` (up to `Duration::MAX`) or `push_iter`;
//! the run drains, or is cancelled, shut down (with no time, a little, or `Duration::MAX`) or
//! dropped while they push.
//!
//! Half the runs also let user callbacks misbehave ("chaos"): a stage's, the sink's or the
//! output's drop hook panics from some call on, the stage before a broadcast emits items whose
//! clone panics, a factory panics when it rebuilds its stage, the dead-letter handler or the
//! event handler panics.
//!
//! After every run the test proves, from what the producers, stages, hooks and sinks saw:
//!
//! - the report is final: balanced, nothing in flight; the first stage received exactly the
//!   items the producers were told went in;
//! - every count in the report matches what was observed (successes, final failures, dead
//!   letters, panics, retries, drops by reason, abandons, deliveries) — exactly, or, where a
//!   callback panicked, as a bound (a hook that panicked may not see every item it would have);
//! - every item met at most one fate at each stage and sink, and, without chaos, exactly one,
//!   which the drop hooks saw if it was a drop or an abandon;
//! - every success took exactly the attempts the rule says, and every final failure and dead
//!   letter is an item the rule fails for good, after exactly the allowed attempts;
//! - a drained run with `Block` everywhere and no chaos ends exactly as the rules predict;
//! - a fail-fast stage that failed an item ends the run in `StageFailed` naming it, and a
//!   callback's panic ends it in a `PipelineError`;
//! - no `backflow` thread outlives the run, and single-worker or ordered paths keep the order
//!   of each producer's items.
//!
//! Runs happen in a child process (the test binary, run again with only this test), one seed
//! after another, so that a run that aborts the process or hangs is reported with its seed and
//! the other seeds still run (in a new child). No check depends on timing. Two limits only turn
//! a hang into a failure with a seed: producers that have not got where the run ends them
//! after [`STUCK`] fail the run (and are freed with `cancel()`), and a run longer than [`HANG`]
//! is killed with its process.
//!
//! A failing run prints its seed: `FAULTS_SEED=<seed> cargo test -p backflow --test faults`
//! replays it alone; `FAULTS_RUNS=<n>` runs more seeds.

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::env;
use std::fmt::{self, Write as _};
use std::hint::black_box;
use std::io::{self, Write as _};
use std::num::NonZeroUsize;
use std::ops::Range;
use std::panic::{self, AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};

use backflow::core::RetrySchedule;
use backflow::{
    Branch, BranchEnd, Builder, ConfigError, DropReason, ErrorPolicy, Event, Input, Output,
    Overflow, Pipeline, PipelineError, PushError, Report, Side, WaitStrategy, stage,
};

/// Runs unless `FAULTS_RUNS` says otherwise.
const RUNS: u64 = 300;
/// The seed the runs' seeds are drawn from.
const SEEDS: u64 = 0xFA17_5EED;
/// A run taking this long is a hang: its process is killed and the run reported.
const HANG: Duration = Duration::from_secs(20);
/// Producers that have not got where the run ends them after this long are stuck: the run is
/// failed and freed with `cancel()`.
const STUCK: Duration = Duration::from_secs(5);
/// After this many failed runs the test stops (on a broken build every run may take [`HANG`]).
const MAX_FAILED: usize = 12;
/// How an injected panic's message starts (the panic hook keeps these quiet).
const INJECTED: &str = "injected panic:";
const MAIN_NAMES: [&str; 4] = ["s0", "s1", "s2", "s3"];
/// The branch's stage and the branch itself (its sink's name in the stats).
const BRANCH_STAGE: &str = "b0";
const BRANCH: &str = "br";
/// This test's name, for its child processes.
const TEST: &str = "random_faults_leave_every_item_accounted_for";
/// The seeds a child process runs, comma-separated.
const CHILD_SEEDS: &str = "FAULTS_CHILD_SEEDS";
/// How a child's lines about its runs start.
const LINE: &str = "faults:";

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

    fn is_broadcast(&self) -> bool {
        self.route_percent.is_none()
    }
}

/// How a producer pushes its items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Push {
    One,
    /// `try_push`, again until it goes in (or the pipeline refuses it for good).
    Try,
    /// `push_timeout` with this timeout, again until it goes in.
    Timeout(Duration),
    /// `push_iter` in chunks of random size.
    Iter,
}

/// How the run ends. `after`: once the producers have put in that many items (they go on
/// pushing meanwhile).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Once every producer is done.
    Drain,
    Cancel {
        after: u64,
    },
    Shutdown {
        after: u64,
        deadline: Duration,
    },
    Drop {
        after: u64,
    },
}

/// Where the main line ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Sink,
    /// An [`Output`] read by its own thread, which drops it after `drop_after` items, if set.
    Output {
        drop_after: Option<u64>,
    },
}

/// The user callbacks that misbehave in a run. A trigger `from` panics from its `from`-th
/// call on.
#[derive(Debug, Clone, Copy, Default)]
struct Chaos {
    /// A stage's drop hook: `(stage, from)`.
    stage_hook: Option<(usize, u32)>,
    /// The sink's or the output's drop hook.
    sink_hook: Option<u32>,
    /// Per mille of the items the stage before a broadcast emits brittle: their clone panics.
    brittle_per_mille: u64,
    /// A stage's factory, from its `from`-th rebuild on: `(stage, from)`.
    factory: Option<(usize, u32)>,
    /// The dead-letter handlers.
    dead_letter: Option<u32>,
    /// The event handler.
    events: Option<u32>,
}

impl Chaos {
    fn random(rng: &mut Rng, stages: &[StagePlan], fan: Option<&FanPlan>) -> Self {
        let n = stages.len() as u64;
        let letters = stages.iter().any(|s| s.last == Last::DeadLetter);
        let broadcast = fan.is_some_and(FanPlan::is_broadcast);
        loop {
            let chaos = Self {
                stage_hook: rng
                    .percent(35)
                    .then(|| (rng.below(n) as usize, rng.range(1, 20) as u32)),
                sink_hook: rng.percent(25).then(|| rng.range(1, 20) as u32),
                brittle_per_mille: if broadcast && rng.percent(50) {
                    rng.pick(&[2, 20])
                } else {
                    0
                },
                factory: rng.percent(30).then(|| (rng.below(n) as usize, rng.range(1, 3) as u32)),
                dead_letter: (letters && rng.percent(30)).then(|| rng.range(1, 5) as u32),
                events: rng.percent(15).then(|| rng.range(1, 50) as u32),
            };
            if chaos.any() {
                return chaos;
            }
        }
    }

    fn any(&self) -> bool {
        self.stage_hook.is_some()
            || self.sink_hook.is_some()
            || self.brittle_per_mille > 0
            || self.factory.is_some()
            || self.dead_letter.is_some()
            || self.events.is_some()
    }
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
    /// Each producer pushes its own range of the items, in order.
    producers: Vec<Push>,
    end: End,
    /// Whether an event handler is set.
    events: bool,
    chaos: Chaos,
    wait: WaitStrategy,
}

impl Plan {
    fn new(seed: u64) -> Self {
        let mut rng = Rng(seed);
        let main = rng.range(2, 4) as usize;
        let items = rng.range(300, 2_000);
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
        let after = rng.below(items + 1);
        let stop = match rng.below(20) {
            0..10 => Stop::Drain,
            10..13 => Stop::Cancel { after },
            13..17 => {
                let deadline = rng.pick(&[Duration::ZERO, Duration::from_millis(1), Duration::MAX]);
                Stop::Shutdown { after, deadline }
            }
            _ => Stop::Drop { after },
        };
        let producers = (0..rng.range(1, 3))
            .map(|_| match rng.below(4) {
                0 => Push::One,
                1 => Push::Try,
                2 => Push::Timeout(rng.pick(&[
                    Duration::from_millis(1),
                    Duration::from_millis(50),
                    Duration::MAX,
                ])),
                _ => Push::Iter,
            })
            .collect();
        let end = if rng.percent(25) {
            End::Output { drop_after: rng.percent(30).then(|| rng.below(items)) }
        } else {
            End::Sink
        };
        let chaos = if rng.percent(50) {
            Chaos::random(&mut rng, &stages, fan.as_ref())
        } else {
            Chaos::default()
        };
        let events = chaos.events.is_some() || rng.percent(15);
        let wait = if rng.percent(20) { WaitStrategy::BusySpin } else { WaitStrategy::Park };
        Self { seed, items, stages, main, fan, stop, producers, end, events, chaos, wait }
    }

    /// The items producer `p` pushes.
    fn range(&self, p: usize) -> Range<u64> {
        let n = self.producers.len() as u64;
        let p = p as u64;
        self.items * p / n..self.items * (p + 1) / n
    }

    /// How many items the producers put in before the run ends (`None`: all of them).
    fn stop_after(&self) -> Option<u64> {
        match self.stop {
            Stop::Drain => None,
            Stop::Cancel { after } | Stop::Shutdown { after, .. } | Stop::Drop { after } => {
                Some(after)
            }
        }
    }

    /// Stages in an order where each comes after every stage feeding it.
    fn topological(&self) -> Vec<usize> {
        let split = self.fan.as_ref().map_or(self.main, |f| f.after + 1);
        let branch = (self.stages.len() > self.main).then_some(self.main);
        (0..split).chain(branch).chain(split..self.main).collect()
    }

    /// What stage `node` receives, per item, given what every stage passed (`ok`) and which
    /// items went in (`pushed`).
    fn feed(&self, node: usize, ok: &[Vec<u32>], pushed: &[u32]) -> Vec<u32> {
        if node == 0 {
            return pushed.to_vec();
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

    /// Whether the main sink must see each producer's items in order: no merge, and every
    /// main stage keeps order.
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
        write!(
            f,
            "{} items, {:?}, producers {:?}, {:?}, {:?}{}",
            self.items,
            self.stop,
            self.producers,
            self.end,
            self.wait,
            if self.events { ", events" } else { "" }
        )?;
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
        if self.chaos.any() {
            write!(f, "\n  chaos: {:?}", self.chaos)?;
        }
        Ok(())
    }
}

// ---- what a run saw ----

/// The pipeline's item: its number and, for a brittle item, a fuse that makes its first clone
/// panic (a broadcast's clone: no other clone comes first).
#[derive(Debug)]
struct Item {
    n: u64,
    fuse: Option<Arc<AtomicBool>>,
}

impl Item {
    fn new(n: u64) -> Self {
        Self { n, fuse: None }
    }
}

impl Clone for Item {
    fn clone(&self) -> Self {
        if self.fuse.as_ref().is_some_and(|fuse| fuse.swap(false, SeqCst)) {
            panic!("{INJECTED} the clone of item {}", self.n);
        }
        Self::new(self.n)
    }
}

/// A callback that panics from its `from`-th call on (never, without a `from`).
#[derive(Debug, Default)]
struct Trigger {
    from: Option<u32>,
    calls: AtomicU32,
}

impl Trigger {
    fn new(from: Option<u32>) -> Self {
        Self { from, calls: AtomicU32::new(0) }
    }

    /// Counts a call; whether it is to panic.
    fn fires(&self) -> bool {
        let call = self.calls.fetch_add(1, SeqCst) + 1;
        self.from.is_some_and(|from| call >= from)
    }
}

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
    /// Calls of the stage's factory.
    built: AtomicU32,
}

impl Seen {
    fn new(items: u64) -> Self {
        Self {
            attempts: counts(items),
            ok: counts(items),
            failed: counts(items),
            panics: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            failed_early: AtomicBool::new(false),
            built: AtomicU32::new(0),
        }
    }
}

fn counts(items: u64) -> Vec<AtomicU32> {
    (0..items).map(|_| AtomicU32::new(0)).collect()
}

#[derive(Debug)]
struct Letter {
    stage: String,
    item: u64,
    attempts: u32,
    error: String,
}

/// Everything the producers, stages, hooks and sinks of one run recorded.
struct Log {
    plan: Plan,
    seen: Vec<Seen>,
    /// Items the producers were told went in.
    pushed: Vec<AtomicU32>,
    pushed_total: AtomicU64,
    /// Items of a push that panicked in a drop hook: they may or may not have gone in.
    maybe: Vec<AtomicU32>,
    cancel_asked: AtomicBool,
    letters: Mutex<Vec<Letter>>,
    drops: Mutex<Vec<(String, u64, DropReason)>>,
    delivered: Mutex<Vec<u64>>,
    branch_delivered: Mutex<Vec<u64>>,
    /// Injected panics of callbacks so far, but clones' and the output's drop hook's.
    fired: AtomicU64,
    /// Injected panics of the output's drop hook (on the reader's thread, maybe after the end).
    output_fired: AtomicU64,
    fuses: Mutex<Vec<Arc<AtomicBool>>>,
    stage_hook: Trigger,
    sink_hook: Trigger,
    dead_letter: Trigger,
    events: Trigger,
}

impl Log {
    fn new(plan: &Plan) -> Self {
        let chaos = plan.chaos;
        Self {
            plan: plan.clone(),
            seen: plan.stages.iter().map(|_| Seen::new(plan.items)).collect(),
            pushed: counts(plan.items),
            pushed_total: AtomicU64::new(0),
            maybe: counts(plan.items),
            cancel_asked: AtomicBool::new(false),
            letters: Mutex::default(),
            drops: Mutex::default(),
            delivered: Mutex::default(),
            branch_delivered: Mutex::default(),
            fired: AtomicU64::new(0),
            output_fired: AtomicU64::new(0),
            fuses: Mutex::default(),
            stage_hook: Trigger::new(chaos.stage_hook.map(|(_, from)| from)),
            sink_hook: Trigger::new(chaos.sink_hook),
            dead_letter: Trigger::new(chaos.dead_letter),
            events: Trigger::new(chaos.events),
        }
    }

    /// One attempt of stage `node` on `item`, failing as the stage's rule says.
    fn attempt(&self, node: usize, item: u64) -> Result<u64, String> {
        let (plan, seen) = (&self.plan.stages[node], &self.seen[node]);
        let Some(i) = (item < self.plan.items).then_some(item as usize) else {
            // Not an item of the plan (a push that should have been refused): let it pass.
            return Ok(item);
        };
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

    /// What stage `node` emits for item `n`: brittle, if it is the stage before a broadcast
    /// and the chaos says so.
    fn emit(&self, node: usize, n: u64) -> Item {
        let per_mille = self.plan.chaos.brittle_per_mille;
        let before_fan = self.plan.fan.as_ref().is_some_and(|f| f.after == node);
        if per_mille == 0 || !before_fan || hash(&[self.plan.seed, 0xB417, n]) % 1000 >= per_mille {
            return Item::new(n);
        }
        let fuse = Arc::new(AtomicBool::new(true));
        self.fuses.lock().unwrap().push(Arc::clone(&fuse));
        Item { n, fuse: Some(fuse) }
    }

    /// Stage `node`'s factory is called (once per worker to start, then once per rebuild).
    fn build(&self, node: usize) {
        let built = self.seen[node].built.fetch_add(1, SeqCst) + 1;
        let workers = self.plan.stages[node].workers as u32;
        if let Some((stage, from)) = self.plan.chaos.factory {
            if stage == node && built >= workers + from {
                self.fired.fetch_add(1, SeqCst);
                panic!(
                    "{INJECTED} the factory of {} on build {built}",
                    self.plan.stages[node].name
                );
            }
        }
    }

    /// A drop hook's call.
    fn dropped(&self, stage: &str, item: u64, reason: DropReason) {
        self.drops.lock().unwrap().push((stage.to_string(), item, reason));
        let hooked = self.plan.chaos.stage_hook.map(|(node, _)| self.plan.stages[node].name);
        let (trigger, fired) = if stage == "sink" {
            let output = matches!(self.plan.end, End::Output { .. });
            (&self.sink_hook, if output { &self.output_fired } else { &self.fired })
        } else if hooked == Some(stage) {
            (&self.stage_hook, &self.fired)
        } else {
            return;
        };
        if trigger.fires() {
            fired.fetch_add(1, SeqCst);
            panic!("{INJECTED} the drop hook of {stage} on item {item}");
        }
    }

    fn dead_letter(&self, letter: Letter) {
        self.letters.lock().unwrap().push(letter);
        if self.dead_letter.fires() {
            self.fired.fetch_add(1, SeqCst);
            panic!("{INJECTED} the dead-letter handler");
        }
    }

    fn event(&self, event: &Event<'_>) {
        if self.events.fires() {
            self.fired.fetch_add(1, SeqCst);
            panic!("{INJECTED} the event handler, on {event:?}");
        }
    }

    /// The producers were told `items` went in.
    fn pushed(&self, items: Range<u64>) {
        let n = items.end - items.start;
        items.for_each(|x| {
            self.pushed[x as usize].fetch_add(1, SeqCst);
        });
        self.pushed_total.fetch_add(n, SeqCst);
    }

    /// Brittle items whose clone panicked.
    fn broken_clones(&self) -> usize {
        self.fuses.lock().unwrap().iter().filter(|fuse| !fuse.load(SeqCst)).count()
    }

    fn counts(values: &[AtomicU32]) -> Vec<u32> {
        values.iter().map(|v| v.load(SeqCst)).collect()
    }
}

// ---- building and running ----

/// A stage that can fail: a `try_map` over one attempt of [`Log::attempt`].
type Faulty = stage::TryMap<Box<dyn FnMut(Item) -> Result<Item, String> + Send>>;

/// The factory of stage `node`: a `try_map` that fails as the node's rule says.
fn faulty(log: &Arc<Log>, node: usize) -> impl Fn() -> Faulty + Send + Sync + 'static {
    let log = Arc::clone(log);
    move || {
        log.build(node);
        let log = Arc::clone(&log);
        stage::try_map(Box::new(move |x: Item| log.attempt(node, x.n).map(|n| log.emit(node, n))))
    }
}

/// A drop hook that records what it sees in `log` (and panics if the chaos says so).
fn recorded(log: &Arc<Log>) -> impl Fn(backflow::Dropped<'_, Item>) + Send + Sync + 'static {
    let log = Arc::clone(log);
    move |d| log.dropped(d.stage, d.item.n, d.reason)
}

/// Applies stage `node`'s plan to the stage just added.
fn configure<P>(
    b: Builder<Item, Item, Item, P>,
    log: &Arc<Log>,
    node: usize,
) -> Builder<Item, Item, Item, P> {
    let plan = &log.plan.stages[node];
    let mut b = b
        .workers(NonZeroUsize::new(plan.workers).unwrap())
        .capacity(plan.capacity)
        .water_marks(plan.marks.0, plan.marks.1)
        .overflow(plan.overflow)
        .on_drop(recorded(log));
    b = match plan.order {
        Order::Any => b,
        Order::Ordered => b.ordered(),
        Order::Keyed => b.key_ordered(|x: &Item| x.n % 7),
    };
    b = match plan.last {
        Last::Skip => b.on_error(ErrorPolicy::Skip),
        Last::FailFast => b.on_error(ErrorPolicy::FailFast),
        Last::DeadLetter => {
            let letters = Arc::clone(log);
            b.dead_letter(move |l| {
                let (stage, item, attempts) = (l.stage.to_string(), l.item.n, l.attempts);
                letters.dead_letter(Letter { stage, item, attempts, error: l.error });
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
    b: Builder<Item, Item, Item>,
    plan: &Plan,
    log: &Arc<Log>,
    node: usize,
) -> Builder<Item, Item, Item> {
    let Some(fan) = plan.fan.clone().filter(|f| f.after == node) else { return b };
    let (log, branch_node) = (Arc::clone(log), plan.main);
    let (has_stage, merge) = (fan.stage, fan.merge);
    let end = move |branch: Branch<Item>| -> BranchEnd<Item> {
        let record = Arc::clone(&log);
        let sink = move |x: Item| record.branch_delivered.lock().unwrap().push(x.n);
        if !has_stage {
            return branch.sink(sink);
        }
        let b: Builder<Item, Item, Item, Side> =
            configure(branch.stage(BRANCH_STAGE, faulty(&log, branch_node)), &log, branch_node);
        if merge { b.merge() } else { b.sink(sink) }
    };
    match fan.route_percent {
        None => b.broadcast(BRANCH, end),
        Some(_) => b.branch(BRANCH, move |x: &Item| fan.to_branch(x.n), end),
    }
}

/// The pipeline of `plan`, and its output if it ends in one.
type Built = (Pipeline<Item>, Option<Output<Item>>);

fn build(plan: &Plan, log: &Arc<Log>) -> Result<Built, ConfigError> {
    let name = |node: usize| plan.stages[node].name;
    let mut source = Pipeline::<Item>::builder().wait_strategy(plan.wait);
    if plan.events {
        let events = Arc::clone(log);
        source = source.on_event(move |event| events.event(event));
    }
    let first = source.stage(name(0), faulty(log, 0));
    let mut b = with_fan(configure(first, log, 0), plan, log, 0);
    for node in 1..plan.main {
        b = configure(b.stage(name(node), faulty(log, node)), log, node);
        b = with_fan(b, plan, log, node);
    }
    match plan.end {
        End::Sink => {
            let sink = Arc::clone(log);
            b.sink(move |x: Item| sink.delivered.lock().unwrap().push(x.n))
                .on_drop(recorded(log))
                .build()
                .map(|pipeline| (pipeline, None))
        }
        End::Output { .. } => {
            b.output().on_drop(recorded(log)).build().map(|(p, output)| (p, Some(output)))
        }
    }
}

/// Pushes `items` as `how` says, in order, until they are in or the pipeline refuses them for
/// good; records in `log` what the producer was told went in. A refusal other than a cancel
/// (or a close, when the run is shut down while producers push) is a problem.
fn produce(
    input: &Input<Item>,
    how: Push,
    items: Range<u64>,
    log: &Log,
    rng: &mut Rng,
) -> Result<(), String> {
    let closes = matches!(log.plan.stop, Stop::Shutdown { .. });
    let mut next = items.start;
    while next < items.end {
        let chunk = if how == Push::Iter { rng.range(1, 300).min(items.end - next) } else { 1 };
        let pushed = catch_unwind(AssertUnwindSafe(|| match how {
            Push::One => input.push(Item::new(next)),
            Push::Try => input.try_push(Item::new(next)),
            Push::Timeout(timeout) => input.push_timeout(Item::new(next), timeout),
            Push::Iter => input.push_iter((next..next + chunk).map(Item::new)),
        }));
        let error = match pushed {
            Ok(Ok(())) => {
                log.pushed(next..next + chunk);
                next += chunk;
                continue;
            }
            Ok(Err(error)) => error,
            Err(panic) => {
                let message = panic_message(&*panic);
                if !message.starts_with(INJECTED) {
                    return Err(format!("a push of {next}.. panicked: {message}"));
                }
                // A drop hook panicked in this thread's push: whether the chunk went in is the
                // report's to say.
                (next..next + chunk).for_each(|x| {
                    log.maybe[x as usize].fetch_add(1, SeqCst);
                });
                return Ok(());
            }
        };
        let again = matches!(error, PushError::Full(_) | PushError::Timeout(_));
        let closed = matches!(error, PushError::Closed(_));
        // Items go in in order: everything before the one handed back went in.
        let back = error.into_inner().n;
        log.pushed(next..back);
        next = back;
        if again {
            thread::yield_now();
        } else if closed && !closes {
            return Err(format!("the push of item {back} was refused as closed"));
        } else {
            return Ok(());
        }
    }
    Ok(())
}

/// Reads the output until it ends, or until `drop_after` items, then drops it.
fn read(output: Output<Item>, drop_after: Option<u64>, log: &Log) -> Result<(), String> {
    let read = catch_unwind(AssertUnwindSafe(|| {
        let mut output = output;
        let mut n = 0;
        while drop_after != Some(n) {
            let Some(item) = output.next() else { break };
            log.delivered.lock().unwrap().push(item.n);
            n += 1;
        }
    }));
    read.map_err(|panic| format!("the output's reader panicked: {}", panic_message(&*panic)))
}

/// Waits until the producers have put in the items after which the run ends, or are all done;
/// `false` if they got stuck on the way.
fn wait_for_the_stop(plan: &Plan, log: &Log, done: &AtomicUsize) -> bool {
    let deadline = Instant::now() + STUCK;
    loop {
        let reached = plan.stop_after().is_some_and(|after| log.pushed_total.load(SeqCst) >= after);
        if reached || done.load(SeqCst) == plan.producers.len() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_micros(200));
    }
}

/// Ends the run as the plan says; the result, unless the pipeline was dropped.
fn end(
    pipeline: Pipeline<Item>,
    plan: &Plan,
    log: &Log,
    p: &mut Problems,
) -> Option<Result<Report, PipelineError>> {
    if plan.stop != Stop::Drain {
        log.cancel_asked.store(true, SeqCst);
    }
    match plan.stop {
        Stop::Drain => Some(pipeline.drain()),
        Stop::Cancel { .. } => {
            pipeline.cancel();
            match pipeline.input().push(Item::new(plan.items)) {
                Err(PushError::Cancelled(x)) if x.n == plan.items => {}
                other => p.add(format!("a push after cancel returned {other:?}")),
            }
            Some(pipeline.drain())
        }
        Stop::Shutdown { deadline, .. } => Some(pipeline.shutdown(deadline)),
        Stop::Drop { .. } => {
            drop(pipeline);
            None
        }
    }
}

/// What one run ended with, for the summary: counts by name.
#[derive(Debug, Default)]
struct Tally(BTreeMap<String, u64>);

impl Tally {
    fn add(&mut self, what: &str, n: u64) {
        *self.0.entry(what.to_string()).or_default() += n;
    }

    fn get(&self, what: &str) -> u64 {
        self.0.get(what).copied().unwrap_or(0)
    }

    /// Adds a child's `name=count` words.
    fn parse(&mut self, words: &str) {
        for (what, n) in words.split_whitespace().filter_map(|w| w.split_once('=')) {
            self.add(what, n.parse().unwrap_or(0));
        }
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words: Vec<String> = self.0.iter().map(|(what, n)| format!("{what}={n}")).collect();
        f.write_str(&words.join(" "))
    }
}

/// Runs the pipeline of `seed` and returns the problems found (empty if none).
fn run(seed: u64, tally: &mut Tally) -> Vec<String> {
    let plan = Plan::new(seed);
    let log = Arc::new(Log::new(&plan));
    let (pipeline, output) = match build(&plan, &log) {
        Ok(built) => built,
        Err(error) => return vec![format!("build failed: {error}")],
    };
    let mut problems = Problems::default();
    let done = AtomicUsize::new(0);
    let (result, fired, stuck, produced, read) = thread::scope(|s| {
        let producers: Vec<_> = (0..plan.producers.len())
            .map(|p| {
                let (input, log, done, plan) = (pipeline.input(), &*log, &done, &plan);
                s.spawn(move || {
                    let mut rng = Rng(hash(&[plan.seed, 0x9E0D, p as u64]));
                    let produced = produce(&input, plan.producers[p], plan.range(p), log, &mut rng);
                    done.fetch_add(1, SeqCst);
                    produced
                })
            })
            .collect();
        let reader = output.map(|output| {
            let drop_after = match plan.end {
                End::Output { drop_after } => drop_after,
                End::Sink => None,
            };
            let log = &*log;
            s.spawn(move || read(output, drop_after, log))
        });
        // Producers that do not get there are blocked for good: free them with a cancel, so
        // that the run is reported (and the next ones run) instead of hanging.
        let stuck = !wait_for_the_stop(&plan, &log, &done);
        if stuck {
            pipeline.cancel();
        }
        let result = end(pipeline, &plan, &log, &mut problems);
        // Callbacks that panicked by the time the run ended.
        let fired = log.fired.load(SeqCst);
        let produced: Vec<_> = producers.into_iter().map(|p| p.join()).collect();
        let read = reader.map(|r| r.join());
        (result, fired, stuck, produced, read)
    });
    let left = common::live_threads("backflow");
    if stuck {
        problems.add(format!(
            "the producers had not got where the run ends them after {STUCK:?} (a hang): only \
             an outside cancel() freed them"
        ));
    }
    if !left.is_empty() {
        problems.add(format!("threads left after the run: {left:?}"));
        // Let them go, so that the next runs are judged on their own.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !common::live_threads("backflow").is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
    }
    for problem in produced.into_iter().chain(read).filter_map(|joined| match joined {
        Ok(Ok(())) => None,
        Ok(Err(problem)) => Some(problem),
        Err(panic) => Some(format!("a thread of the test panicked: {}", panic_message(&*panic))),
    }) {
        problems.add(problem);
    }
    check(&plan, &log, result.as_ref(), fired, &mut problems, tally);
    if !problems.0.is_empty() {
        let (ended, report) = match &result {
            None => ("dropped".to_string(), "(none)".to_string()),
            Some(Ok(report)) => ("Ok".to_string(), report.to_string()),
            Some(Err(error)) => (format!("{error}"), error.report().to_string()),
        };
        problems.add(format!("ended: {ended}\nplan: {plan}\nreport:\n{report}"));
    }
    problems.0
}

/// The message of a panic payload, when it is a string.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(not a string)".to_string())
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

    /// `actual` within `lo..=hi`.
    fn within(&mut self, what: impl fmt::Display, actual: u64, lo: u64, hi: u64) {
        if actual < lo || actual > hi {
            self.add(format!("{what}: {actual}, expected {lo}..={hi}"));
        }
    }

    /// `actual == expected` if `exact`, else `actual <= expected`.
    fn up_to(&mut self, exact: bool, what: impl fmt::Display, actual: u64, expected: u64) {
        if exact {
            self.eq(what, actual, expected);
        } else {
            self.within(what, actual, 0, expected);
        }
    }

    /// `actual == expected` if `exact`, else `actual >= expected`.
    fn at_least(&mut self, exact: bool, what: impl fmt::Display, actual: u64, expected: u64) {
        if exact {
            self.eq(what, actual, expected);
        } else {
            self.within(what, actual, expected, u64::MAX);
        }
    }

    /// Compares two per-item counts, equal if `exact`, else `actual` at most `expected`, and
    /// names the first items that differ.
    fn items(&mut self, exact: bool, what: impl fmt::Display, actual: &[u32], expected: &[u32]) {
        let differ: Vec<String> = (0..actual.len())
            .filter(|&x| if exact { actual[x] != expected[x] } else { actual[x] > expected[x] })
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
    list.into_iter().filter(|&x| x < items).for_each(|x| counts[x as usize] += 1);
    counts
}

fn sum(counts: &[u32]) -> u64 {
    counts.iter().map(|&n| u64::from(n)).sum()
}

fn add(a: &[u32], b: &[u32]) -> Vec<u32> {
    a.iter().zip(b).map(|(a, b)| a + b).collect()
}

/// Where each producer's items, in the order `items` lists them, first go backwards.
fn out_of_order(plan: &Plan, items: &[u64]) -> Option<String> {
    (0..plan.producers.len()).find_map(|p| {
        let range = plan.range(p);
        let mine: Vec<u64> = items.iter().copied().filter(|x| range.contains(x)).collect();
        let at = mine.windows(2).position(|w| w[0] >= w[1])?;
        Some(format!("producer {p}'s items at {at}: {:?}", &mine[at..mine.len().min(at + 4)]))
    })
}

/// Every check of one run; see the module docs. `fired`: the callbacks' injected panics when
/// the run ended.
#[allow(clippy::too_many_lines)]
fn check(
    plan: &Plan,
    log: &Log,
    result: Option<&Result<Report, PipelineError>>,
    fired: u64,
    p: &mut Problems,
    tally: &mut Tally,
) {
    let report = result.map(|result| match result {
        Ok(report) => report,
        Err(error) => error.report(),
    });
    // Without chaos every count is exact; a callback that panicked may not have seen (or
    // caused) everything it would have, so counts it drives become bounds.
    let exact = !plan.chaos.any();
    let output = matches!(plan.end, End::Output { .. });
    let nodes = plan.stages.len();
    let pushed = Log::counts(&log.pushed);
    let maybe = Log::counts(&log.maybe);
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

    // ---- the report is final, and counts what the producers were told went in ----
    if let Some(report) = report {
        p.eq("unbalanced", report.unbalanced(), Vec::new());
        for k in report.sinks() {
            // An output may still hold items its reader has not taken yet.
            if k.in_flight != 0 && !(output && k.name == "sink") {
                p.add(format!("{}: {} in flight after the end", k.name, k.in_flight));
            }
        }
        let told = sum(&pushed);
        let first = report.stage(plan.stages[0].name).map_or(0, |s| s.accounting.received);
        p.within(
            "first stage: received, against the pushes that went in",
            first,
            told,
            told + sum(&maybe),
        );
    }

    // ---- each stage: fates, rules, counts ----
    for node in 0..nodes {
        let s = &plan.stages[node];
        let name = s.name;
        let arrived = plan.feed(node, &ok, &add(&pushed, &maybe));
        let dropped = hooked(name, &[DropReason::Oldest, DropReason::Newest]);
        let abandoned = hooked(name, &[DropReason::Abandoned]);
        let fates: Vec<u32> = (0..arrived.len())
            .map(|x| ok[node][x] + failed[node][x] + dropped[x] + abandoned[x])
            .collect();
        p.items(
            exact,
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
            if exact
                && ok[node][i] + failed[node][i] == 0
                && seen > 0
                && (seen >= tries || abandoned[i] != 1)
            {
                p.add(format!("{name}: item {x} unsettled after {seen} attempts (abandoned {}×); the rule says {tries}", abandoned[i]));
            }
        }
        let mine: Vec<&Letter> = letters.iter().filter(|l| l.stage == name).collect();
        for letter in &mine {
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
        let Some(report) = report else { continue };
        let Some(stats) = report.stage(name) else {
            p.add(format!("{name}: missing from the report"));
            continue;
        };
        let a = stats.accounting;
        let finals = sum(&failed[node]);
        p.up_to(exact, format!("{name}: received, against arrivals"), a.received, sum(&arrived));
        p.within(
            format!("{name}: received, against fates seen"),
            a.received,
            sum(&fates),
            u64::MAX,
        );
        p.eq(format!("{name}: emitted inputs"), a.emitted_inputs, sum(&ok[node]));
        p.eq(format!("{name}: emitted outputs"), stats.emitted_outputs, a.emitted_inputs);
        p.eq(format!("{name}: in flight"), a.in_flight, 0);
        if exact {
            let (errored, dead) =
                if s.last == Last::DeadLetter { (0, finals) } else { (finals, 0) };
            p.eq(format!("{name}: errored"), a.errored, errored);
            p.eq(format!("{name}: dead-lettered"), a.dead_lettered, dead);
            p.eq(format!("{name}: panics"), stats.panics, log.seen[node].panics.load(SeqCst));
            p.eq(format!("{name}: retries"), stats.retries, log.seen[node].retried.load(SeqCst));
            p.eq(format!("{name}: dead letters handed over"), mine.len() as u64, a.dead_lettered);
        } else {
            let settled = a.errored + a.dead_lettered + a.abandoned;
            p.within(
                format!("{name}: errored + dead-lettered + abandoned, against final failures"),
                settled,
                finals,
                u64::MAX,
            );
            let handed = mine.len() as u64;
            p.within(
                format!("{name}: dead letters handed over"),
                handed,
                a.dead_lettered,
                a.dead_lettered + a.errored,
            );
        }
        p.at_least(exact, format!("{name}: dropped (drop hook)"), a.dropped, sum(&dropped));
        for (reason, count) in
            [(DropReason::Oldest, stats.dropped_oldest), (DropReason::Newest, stats.dropped_newest)]
        {
            p.at_least(
                exact,
                format!("{name}: dropped {reason} (drop hook)"),
                count,
                sum(&hooked(name, &[reason])),
            );
        }
        p.at_least(exact, format!("{name}: abandoned (drop hook)"), a.abandoned, sum(&abandoned));
        match s.overflow {
            Overflow::Block => p.eq(format!("{name}: dropped under Block"), a.dropped, 0),
            Overflow::DropOldest => {
                p.eq(format!("{name}: dropped newest under DropOldest"), stats.dropped_newest, 0)
            }
            _ => p.eq(format!("{name}: dropped oldest under DropNewest"), stats.dropped_oldest, 0),
        }
        hook_total += a.dropped + a.abandoned;
        tally.add("dropped", a.dropped);
        tally.add("dead_letters", a.dead_lettered);
        tally.add("panics", stats.panics);
        tally.add("retries", stats.retries);
    }
    for letter in letters.iter().filter(|l| !plan.stages.iter().any(|s| s.name == l.stage)) {
        p.add(format!("dead letter from unknown stage: {letter:?}"));
    }

    // ---- sinks ----
    // The output's reader and the output's drop hook see its items to the end, after the
    // report was taken: the report counts at most what they saw.
    let arrived = plan.sink_feed(&ok);
    let at_sink = per_item(plan.items, delivered.iter().copied());
    let sink_abandoned = hooked("sink", &[DropReason::Abandoned]);
    let fates = add(&at_sink, &sink_abandoned);
    p.items(exact, "sink: delivered + abandoned (drop hook) against arrivals", &fates, &arrived);
    p.eq(
        "sink: hook calls other than abandoned",
        hooked("sink", &[DropReason::Oldest, DropReason::Newest]).iter().sum::<u32>(),
        0,
    );
    if let Some(report) = report {
        let k = report.sink();
        p.up_to(exact, "sink: received, against arrivals", k.received, sum(&arrived));
        if output {
            p.within("sink: delivered (read)", k.delivered, 0, delivered.len() as u64);
            if exact {
                p.within("sink: abandoned (drop hook)", k.abandoned, 0, sum(&sink_abandoned));
            }
        } else {
            p.eq("sink: delivered", k.delivered, delivered.len() as u64);
            let hooked = sum(&sink_abandoned);
            p.at_least(exact, "sink: abandoned (drop hook)", k.abandoned, hooked);
            hook_total += k.abandoned;
            if exact {
                p.eq("drop hook calls, all stages and the sink", drops.len() as u64, hook_total);
            }
        }
    }
    if let Some(branch_arrived) = plan.branch_sink_feed(&ok) {
        let at_branch = per_item(plan.items, branch_delivered.iter().copied());
        p.items(false, "br: delivered, against arrivals", &at_branch, &branch_arrived);
        match report.map(|r| r.sinks().iter().find(|k| k.name == BRANCH)) {
            None => {}
            Some(None) => p.add("br: the branch sink is missing from the report".into()),
            Some(Some(k)) => {
                p.up_to(exact, "br: received", k.received, sum(&branch_arrived));
                p.eq("br: delivered", k.delivered, branch_delivered.len() as u64);
                p.eq("br: abandoned", k.abandoned, k.received.saturating_sub(k.delivered));
            }
        }
    } else {
        p.eq("br: deliveries without a branch sink", branch_delivered.len(), 0);
    }
    if plan.main_in_order() {
        if let Some(at) = out_of_order(plan, &delivered) {
            p.add(format!("sink: out of order: {at}"));
        }
    }
    if plan.branch_in_order() {
        if let Some(at) = out_of_order(plan, &branch_delivered) {
            p.add(format!("br: out of order: {at}"));
        }
    }
    tally.add("runs", 1);
    tally.add("outputs", u64::from(output));
    tally.add("chaos", u64::from(plan.chaos.any()));
    tally.add("callback_panics", fired + log.output_fired.load(SeqCst));
    tally.add("clone_panics", log.broken_clones() as u64);
    tally.add("producers", plan.producers.len() as u64);
    if let Some(fan) = &plan.fan {
        tally.add(if fan.is_broadcast() { "broadcasts" } else { "routes" }, 1);
        tally.add("merges", u64::from(fan.merge));
    }
    tally.add(
        match plan.stop {
            Stop::Drain => "drained",
            Stop::Cancel { .. } => "cancelled",
            Stop::Shutdown { .. } => "shut_down",
            Stop::Drop { .. } => "dropped_runs",
        },
        1,
    );

    // ---- how the run ended ----
    let Some(result) = result else { return };
    tally.add("abandoned", report.map_or(0, Report::abandoned));
    let fail_fast = |early: bool| -> Vec<&str> {
        (0..nodes)
            .filter(|&n| plan.stages[n].last == Last::FailFast && sum(&failed[n]) > 0)
            .filter(|&n| !early || log.seen[n].failed_early.load(SeqCst))
            .map(|n| plan.stages[n].name)
            .collect()
    };
    let (tripped, tripped_early) = (fail_fast(false), fail_fast(true));
    let clones = log.broken_clones();
    // The output's drop hook panics on the reader's thread: before the end (an output dropped
    // early), the pipeline ends with that error; after it, nothing can report it.
    let output_fired = log.output_fired.load(SeqCst);
    if fired > 0 {
        // A callback's panic stops the pipeline, which says so.
        if result.is_ok() {
            p.add(format!("callbacks panicked {fired}×, yet the run ended Ok"));
        }
    } else if clones > 0 {
        let errored: u64 =
            report.map_or(0, |r| r.stages().iter().map(|s| s.accounting.errored).sum());
        if result.is_ok() && errored == 0 {
            p.add(format!("{clones} clones panicked, yet the run ended Ok with nothing errored"));
        }
    } else {
        match result {
            Ok(_) => {
                if let Stop::Cancel { .. } = plan.stop {
                    p.add("a cancelled run drained Ok".into());
                }
                if !tripped.is_empty() {
                    p.add(format!(
                        "fail-fast stages {tripped:?} failed items, yet the run ended Ok"
                    ));
                }
            }
            Err(PipelineError::StageFailed { stage, error, .. }) => {
                tally.add("fail_fast", 1);
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
            Err(PipelineError::DropHookPanicked { stage, .. })
                if stage == "sink" && output_fired > 0 => {}
            Err(other) => p.add(format!("unexpected error: {other}")),
        }
    }
    let all_in = pushed.iter().all(|&n| n == 1);
    let quiet = fired == 0 && clones == 0 && output_fired == 0;
    if plan.stop == Stop::Drain && !all_in && tripped.is_empty() && quiet {
        p.add(format!(
            "pushes refused after {} items with no fail-fast stage tripped",
            sum(&pushed)
        ));
    }

    // ---- a drained run with Block everywhere and no chaos: exactly what the rules say ----
    let dropped_output = matches!(plan.end, End::Output { drop_after: Some(_) });
    if plan.stop != Stop::Drain || !plan.all_block() || !exact || !all_in || dropped_output {
        return;
    }
    let mut model_ok = vec![vec![0; plan.items as usize]; nodes];
    let mut model_failed = model_ok.clone();
    let mut model_attempts = model_ok.clone();
    for node in plan.topological() {
        for (x, &n) in plan.feed(node, &model_ok, &pushed).iter().enumerate() {
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
    tally.add("exact", 1);
    p.eq("abandoned", report.map_or(0, Report::abandoned), 0);
    for node in 0..nodes {
        let name = plan.stages[node].name;
        p.items(true, format!("{name}: passed, against the rules"), &ok[node], &model_ok[node]);
        p.items(
            true,
            format!("{name}: failed for good, against the rules"),
            &failed[node],
            &model_failed[node],
        );
        p.items(
            true,
            format!("{name}: attempts, against the rules"),
            &attempts[node],
            &model_attempts[node],
        );
    }
    p.items(
        true,
        "sink: delivered, against the rules",
        &per_item(plan.items, delivered.iter().copied()),
        &plan.sink_feed(&model_ok),
    );
    if let Some(expected) = plan.branch_sink_feed(&model_ok) {
        p.items(
            true,
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

fn env_number(name: &str) -> Option<u64> {
    let value = env::var(name).ok()?;
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={value} is not a number")))
}

/// Tells the parent process something, in one write (so that lines do not interleave).
fn say(line: &str) {
    let _ = io::stderr().lock().write_all(format!("{LINE} {line}\n").as_bytes());
}

/// In a child process: runs the seeds the parent asked for, one after the other, and tells it
/// how each went: `begin <seed>`, `problem <seed> - <text>` (continued by `problem <seed> |
/// <more>`), `end <seed> <tally>`.
fn run_seeds_here() {
    quiet_injected_panics();
    let seeds = env::var(CHILD_SEEDS).unwrap_or_default();
    for seed in
        seeds.split(',').filter_map(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
    {
        say(&format!("begin {seed:#x}"));
        let mut tally = Tally::default();
        let problems =
            catch_unwind(AssertUnwindSafe(|| run(seed, &mut tally))).unwrap_or_else(|panic| {
                let message = panic_message(&*panic);
                vec![format!("the run panicked: {message}\nplan: {}", Plan::new(seed))]
            });
        for problem in problems {
            for (i, line) in problem.lines().enumerate() {
                say(&format!("problem {seed:#x} {} {line}", if i == 0 { '-' } else { '|' }));
            }
        }
        say(&format!("end {seed:#x} {tally}"));
    }
}

/// What the children reported.
#[derive(Default)]
struct Outcome {
    failures: Vec<(u64, Vec<String>)>,
    tally: Tally,
    /// Seeds not run, once too many failed.
    not_run: usize,
}

/// A line a child wrote about its runs.
enum Said<'a> {
    Begin(u64),
    Problem { first: bool, text: &'a str },
    End(&'a str),
    Other,
}

fn parse(line: &str) -> Said<'_> {
    let Some(rest) = line.strip_prefix(LINE).map(str::trim_start) else { return Said::Other };
    let (word, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let (seed, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    match word {
        "begin" => {
            u64::from_str_radix(seed.trim_start_matches("0x"), 16).map_or(Said::Other, Said::Begin)
        }
        "problem" => {
            Said::Problem { first: rest.starts_with('-'), text: rest.get(2..).unwrap_or("") }
        }
        "end" => Said::End(rest),
        _ => Said::Other,
    }
}

/// Runs `seeds` in child processes: one runs them in order until one aborts or hangs (past
/// [`HANG`], then it is killed), which counts as that seed's failure; the next child goes on
/// from the seed after it.
fn run_in_children(seeds: &[u64]) -> Outcome {
    let mut outcome = Outcome::default();
    let mut rest = seeds;
    while !rest.is_empty() {
        if outcome.failures.len() >= MAX_FAILED {
            outcome.not_run = rest.len();
            break;
        }
        let list: Vec<String> = rest.iter().map(|s| format!("{s:#x}")).collect();
        let mut child = common::ChildTest::new(TEST).env(CHILD_SEEDS, list.join(",")).spawn();
        let (mut current, mut problems, mut finished) = (None::<(u64, Instant)>, Vec::new(), 0);
        let mut tail = VecDeque::new();
        let hung = loop {
            let wait = current.map_or(HANG, |(_, since)| HANG.saturating_sub(since.elapsed()));
            let line = match child.next_line(wait) {
                Ok(line) => line,
                Err(RecvTimeoutError::Disconnected) => break false,
                Err(RecvTimeoutError::Timeout) => break true,
            };
            match parse(&line) {
                Said::Begin(seed) => {
                    current = Some((seed, Instant::now()));
                    tail.clear();
                }
                Said::Problem { first: true, text } => problems.push(text.to_string()),
                Said::Problem { first: false, text } => {
                    if let Some(last) = problems.last_mut() {
                        let _ = write!(last, "\n{text}");
                    }
                }
                Said::End(words) => {
                    outcome.tally.parse(words);
                    if let Some((seed, _)) = current.take() {
                        if !problems.is_empty() {
                            outcome.failures.push((seed, std::mem::take(&mut problems)));
                        }
                    }
                    finished += 1;
                }
                Said::Other => {
                    tail.push_back(line);
                    if tail.len() > 30 {
                        tail.pop_front();
                    }
                }
            }
        };
        let status = if hung { child.kill() } else { child.wait() };
        let how = common::how_it_ended(status);
        let tail = Vec::from(tail).join("\n");
        match current {
            Some((seed, _)) => {
                let when = if hung { format!(" after {HANG:?}") } else { String::new() };
                problems.push(format!(
                    "its process {how}{when}, in the middle of the run; its last lines:\n{tail}\nplan: {}",
                    Plan::new(seed)
                ));
                outcome.failures.push((seed, problems));
                finished += 1;
            }
            None if finished < rest.len() => {
                outcome.failures.push((
                    rest[finished],
                    vec![format!("the child process {how} between runs:\n{tail}")],
                ));
                finished += 1;
            }
            None => {}
        }
        rest = &rest[finished..];
    }
    outcome
}

#[test]
fn random_faults_leave_every_item_accounted_for() {
    if common::is_child(TEST) {
        return run_seeds_here();
    }
    let replay = env_number("FAULTS_SEED");
    let seeds: Vec<u64> = match replay {
        Some(seed) => vec![seed],
        None => {
            let mut state = SEEDS;
            (0..env_number("FAULTS_RUNS").unwrap_or(RUNS)).map(|_| splitmix(&mut state)).collect()
        }
    };
    let started = Instant::now();
    let outcome = run_in_children(&seeds);
    eprintln!("{} in {:.1?}", outcome.tally, started.elapsed());
    if !outcome.failures.is_empty() {
        let mut message = format!(
            "{} of {} runs failed{}; replay one with FAULTS_SEED=<seed>\n",
            outcome.failures.len(),
            seeds.len(),
            if outcome.not_run > 0 {
                format!(
                    " ({} not run: the test stops after {MAX_FAILED} failures)",
                    outcome.not_run
                )
            } else {
                String::new()
            }
        );
        for (seed, problems) in &outcome.failures {
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
        some("a drop", &|p| matches!(p.stop, Stop::Drop { .. }));
        for deadline in [Duration::ZERO, Duration::MAX] {
            some(
                &format!("a shutdown within {deadline:?}"),
                &|p| matches!(p.stop, Stop::Shutdown { deadline: d, .. } if d == deadline),
            );
        }
        some("a broadcast", &|p| p.fan.as_ref().is_some_and(FanPlan::is_broadcast));
        some("a merged route", &|p| p.fan.as_ref().is_some_and(|f| f.merge));
        some("a fail-fast stage", &|p| p.stages.iter().any(|s| s.last == Last::FailFast));
        some("a key-ordered stage", &|p| p.stages.iter().any(|s| s.order == Order::Keyed));
        some("three producers", &|p| p.producers.len() == 3);
        some("push_timeout(Duration::MAX)", &|p| {
            p.producers.contains(&Push::Timeout(Duration::MAX))
        });
        some("an output dropped halfway", &|p| {
            matches!(p.end, End::Output { drop_after: Some(_) })
        });
        let c = |p: &Plan| p.chaos;
        some("a panicking stage drop hook", &|p| c(p).stage_hook.is_some());
        some("a panicking output drop hook", &|p| {
            c(p).sink_hook.is_some() && matches!(p.end, End::Output { .. })
        });
        some("a panicking sink drop hook", &|p| c(p).sink_hook.is_some() && p.end == End::Sink);
        some("brittle clones", &|p| c(p).brittle_per_mille > 0);
        some("a panicking factory", &|p| c(p).factory.is_some());
        some("a panicking dead-letter handler", &|p| c(p).dead_letter.is_some());
        some("a panicking event handler", &|p| c(p).events.is_some());
        let t = &outcome.tally;
        assert!(t.get("exact") > 0 && t.get("fail_fast") > 0, "{t}");
        assert!(t.get("callback_panics") > 0 && t.get("clone_panics") > 0, "{t}");
    }
}
