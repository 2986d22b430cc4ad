//! The scaling controller: a thread that, every interval, measures each stage's time shares
//! since the last look, hands them to the core's [`Scaler`], which decides, and applies its
//! moves: it starts a worker on the stage's queue, or asks one to retire (see
//! [`Source::threads`](crate::Source::threads)).

use std::sync::{Arc, PoisonError};
use std::time::Instant;

use backflow_core::scaler::{Move, Reason, Sample, Scaler, StageWorkers};

use crate::control::{Control, deadline_after};
use crate::event::Event;
use crate::link::LinkView;
use crate::plan::Scaling;
use crate::stats::StageShared;
use crate::sync::Mutex;
use crate::sync::thread::{self, JoinHandle};
use crate::worker::{self, WorkerId};

/// Counts one more worker of a stage in and returns its thread's name and its work; `None`
/// once the stage has no worker left (see `Workers::enlist`).
pub(crate) type Hire = Box<dyn Fn() -> Option<(WorkerId, Box<dyn FnOnce() + Send>)> + Send + Sync>;

/// The worker threads of a pipeline, the ones started at launch and those the controller
/// adds; the pipeline joins them all.
pub(crate) type Threads = Arc<Mutex<Vec<JoinHandle<()>>>>;

/// What the launch hands over for the controller: the plan's scaling, how to add a worker to
/// each stage with a range, and which stages feed each stage.
pub(crate) struct ScaleSetup {
    pub(crate) scaling: Scaling,
    pub(crate) hires: Vec<Option<Hire>>,
    pub(crate) feeders: Vec<Vec<usize>>,
}

/// One stage as the controller sees it.
pub(crate) struct ScaledStage {
    pub(crate) shared: Arc<StageShared>,
    pub(crate) view: Arc<dyn LinkView>,
    /// The stages whose workers feed it; none for the first stage (the input handles do).
    pub(crate) feeders: Vec<usize>,
    /// How to add a worker; `None` for a stage with a fixed number of workers.
    pub(crate) hire: Option<Hire>,
}

/// What the controller last read of a stage: its busy and backpressured time and its worker
/// time, all in nanoseconds since the start.
#[derive(Debug, Clone, Copy, Default)]
struct Reading {
    busy: u64,
    backpressured: u64,
    worker_time: u128,
}

impl ScaledStage {
    fn read(&self, now: Instant) -> Reading {
        let counters = &self.shared.counters;
        Reading {
            busy: counters.busy_ns.get(),
            backpressured: counters.backpressured_ns.get(),
            worker_time: self.shared.workers.time_ns(now),
        }
    }
}

/// The busy and backpressured shares between two readings.
fn shares(before: Reading, now: Reading) -> (f64, f64) {
    let wall = now.worker_time.saturating_sub(before.worker_time) as f64;
    if wall == 0.0 {
        return (0.0, 0.0);
    }
    let share = |a: u64, b: u64| (b.saturating_sub(a) as f64 / wall).min(1.0);
    (share(before.busy, now.busy), share(before.backpressured, now.backpressured))
}

/// The controller's state between intervals.
struct Controller {
    control: Arc<Control>,
    stages: Vec<ScaledStage>,
    scaler: Scaler,
    workers: Vec<StageWorkers>,
    readings: Vec<Reading>,
    threads: Threads,
    /// The stage to get a worker once every worker asked to retire has left (within the
    /// budget a worker is added only when the one it replaces has freed its thread), and the
    /// intervals waited so far.
    waiting_add: Option<(usize, u32)>,
}

/// How many intervals an addition waits for a retiring worker to leave. A worker leaves
/// between two batches; one that holds items in flight (an async stage under steady load)
/// or is stuck in a long call may not for a long time, and the controller does not wait for
/// it forever: after this, the worker is added, and the threads outnumber the budget by one
/// until the other has left.
const WAIT_INTERVALS: u32 = 4;

impl Controller {
    /// Measures every stage since the last interval and makes what the scaler decides; or,
    /// while a move waits for a retiring worker to leave, finishes it once it has.
    fn interval(&mut self) {
        if let Some((stage, waited)) = self.waiting_add {
            if self.retiring() && waited < WAIT_INTERVALS {
                self.waiting_add = Some((stage, waited + 1));
                return;
            }
            self.waiting_add = None;
            match self.add(stage) {
                Some(from) => self.announce(stage, from, from + 1, Reason::Bottleneck),
                None => self.scaler.revert(&mut self.workers, Move::Add { stage }),
            }
        }
        let now = Instant::now();
        let readings: Vec<Reading> = self.stages.iter().map(|s| s.read(now)).collect();
        let shares: Vec<(f64, f64)> =
            self.readings.iter().zip(&readings).map(|(&a, &b)| shares(a, b)).collect();
        self.readings = readings;
        let samples: Vec<Sample> = self
            .stages
            .iter()
            .zip(&shares)
            .map(|(stage, &(busy, _))| {
                // Whoever feeds the stage waits when its queue is full: the feeding stages
                // spend that time backpressured, and the queue's pressure is on (also the
                // only sign of it for the first stage, fed by the input handles).
                let fed = stage.feeders.iter().map(|&f| shares[f].1).fold(0.0, f64::max);
                let pressure = if stage.view.pressure().0 { 1.0 } else { 0.0 };
                Sample { busy, upstream_waiting: fed.max(pressure) }
            })
            .collect();
        let Some(chosen) = self.scaler.observe(&mut self.workers, &samples) else { return };
        if !self.apply(chosen) {
            self.scaler.revert(&mut self.workers, chosen);
        }
    }

    /// Makes `chosen`: asks the stage that gives a worker up to retire one, and adds the
    /// other stage's worker once no worker asked to retire is still running (at once if none
    /// is; else at a later interval, [`WAIT_INTERVALS`] at most), so that the threads do not
    /// outnumber the budget.
    /// Returns `false`, having changed nothing, if the worker cannot be taken away (its stage
    /// is at its minimum) or added at once (its stage has finished, or the system refused the
    /// thread).
    fn apply(&mut self, chosen: Move) -> bool {
        let removed = chosen.removed().map(|stage| &self.stages[stage].shared.workers);
        if removed.is_some_and(|workers| workers.count() <= workers.min()) {
            return false;
        }
        if let Some(stage) = chosen.removed() {
            let scaled = &self.stages[stage];
            let from = scaled.shared.workers.count();
            if scaled.shared.workers.retire_one(Instant::now()) {
                // An idle worker parked on the queue wakes to take the request.
                scaled.view.wake_all();
                self.announce(stage, from, from - 1, Reason::Spare);
            }
        }
        if let Some(stage) = chosen.added() {
            if self.retiring() {
                self.waiting_add = Some((stage, 0));
            } else if let Some(from) = self.add(stage) {
                self.announce(stage, from, from + 1, Reason::Bottleneck);
            } else if chosen.removed().is_some() {
                // The removal stands: only the addition is undone.
                self.scaler.revert(&mut self.workers, Move::Add { stage });
            } else {
                return false;
            }
        }
        true
    }

    /// Whether a worker asked to retire, of any stage, has not left yet.
    fn retiring(&self) -> bool {
        self.stages.iter().any(|stage| stage.shared.workers.is_retiring())
    }

    /// Starts one more worker of `stage`; returns the stage's workers before.
    fn add(&self, stage: usize) -> Option<usize> {
        let scaled = &self.stages[stage];
        let from = scaled.shared.workers.count();
        let (id, work) = (scaled.hire.as_ref()?)()?;
        // Listed before it can run user code, which may end the pipeline and must then find
        // its own thread among the pipeline's (see `Running::ends_elsewhere`): the new worker
        // takes this lock only after it has started.
        let mut threads = self.threads.lock().unwrap_or_else(PoisonError::into_inner);
        // A refused thread drops its work unrun, which counts the worker out again.
        threads.push(worker::spawn(&id, work).ok()?);
        Some(from)
    }

    fn announce(&self, stage: usize, from: usize, to: usize, reason: Reason) {
        let stage = &*self.stages[stage].shared.name;
        self.control.emit(&Event::Scaled { stage, from, to, reason });
    }
}

/// Starts the controller for `stages` (every stage of the pipeline, in order); it runs until
/// every worker has exited or the pipeline is cancelled.
pub(crate) fn start(
    control: &Arc<Control>,
    scaling: Scaling,
    stages: Vec<ScaledStage>,
    threads: &Threads,
) -> std::io::Result<JoinHandle<()>> {
    let Scaling { interval, scaler, workers } = scaling;
    let now = Instant::now();
    let readings = stages.iter().map(|s| s.read(now)).collect();
    let mut controller = Controller {
        control: Arc::clone(control),
        stages,
        scaler,
        workers,
        readings,
        threads: Arc::clone(threads),
        waiting_add: None,
    };
    let control = Arc::clone(control);
    thread::Builder::new().name("backflow:scaler".into()).spawn(move || {
        let done = || control.all_exited() || control.is_cancelled();
        while !control.exit.park_until(done, deadline_after(interval)) {
            controller.interval();
        }
    })
}
