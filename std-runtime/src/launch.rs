//! Launch: builds a validated [`Plan`] into a running pipeline. Allocates every queue, wires
//! each stage's workers to where their outputs go, then spawns the threads, in that order.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Instant;

use backflow_core::{Overflow, Stage};

use crate::control::Control;
use crate::error::ConfigError;
use crate::hooks::DropHook;
use crate::link::{Link, LinkSpec, LinkView};
use crate::pipeline::Running;
use crate::plan::{Order, Plan, StagePlan};
use crate::policy::{Gate, Policy, TypedSettings};
use crate::route::{Downstream, Fan, FanCounts, Keyed, Lanes, Reorder, Sink, Split};
use crate::scale::{Hire, ScaleSetup};
use crate::stats::{SinkShared, StageShared};
use crate::sync::Mutex;
use crate::weight::Weight;
use crate::worker::{self, Departure, WorkerId, WorkerParts};
use crate::workers::Workers;

/// What the per-stage closures build into.
pub(crate) struct Wiring {
    control: Arc<Control>,
    stages: Vec<StagePlan>,
    /// Each stage's breaker and rate limit, shared by its workers.
    gates: Vec<Arc<Gate>>,
    shared: Vec<Arc<StageShared>>,
    views: Vec<Option<Arc<dyn LinkView>>>,
    /// Upstream worker count per stage (at the start), and whether it is fixed.
    upstream: Vec<usize>,
    upstream_fixed: Vec<bool>,
    fans: Vec<Arc<FanCounts>>,
    sinks: Vec<Arc<SinkShared>>,
    sink_names: Vec<Arc<str>>,
    /// The main line's last stage, and the workers that feed the main sink.
    trunk_last: usize,
    sink_upstream: usize,
    sink_upstream_fixed: bool,
    /// The workers to start once every queue is allocated.
    workers: Vec<(WorkerId, Box<dyn FnOnce() + Send>)>,
    /// How to add a worker to each stage with a workers range.
    hires: Vec<Option<Hire>>,
}

/// Builds a part of the pipeline: given where its outputs go, allocates its queues and
/// returns where its inputs go.
pub(crate) type Attach<In, Out> =
    Box<dyn FnOnce(Downstream<Out>, &mut Wiring) -> Result<Downstream<In>, ConfigError>>;

/// Builds the pipeline `plan` describes and starts its threads: allocates every queue
/// (through `attach`, which the builder composed stage by stage, ending in what `terminal`
/// returns: a sink, or the output's queue and its view), then spawns every worker. A queue
/// the allocator refuses is an error before any thread starts; a thread the system refuses
/// stops and joins those already started.
pub(crate) fn start<In, Out>(
    plan: Plan,
    control: Arc<Control>,
    attach: Attach<In, Out>,
    terminal: impl FnOnce(&Wiring) -> Result<Terminal<Out>, ConfigError>,
) -> Result<Running<In>, ConfigError> {
    let Plan {
        stages,
        upstream,
        upstream_fixed,
        feeders,
        sink_names,
        fans,
        flows,
        watched,
        trunk_last,
        sink_upstream,
        sink_upstream_fixed,
        scaling,
    } = plan;
    let start = control.started_at();
    let mut stages = stages;
    let gates: Vec<Arc<Gate>> = stages
        .iter_mut()
        .map(|s| Arc::new(Gate::new(Arc::clone(&s.name), s.breaker.take(), s.limiter.take())))
        .collect();
    let shared = stages.iter().zip(&gates).map(|(s, gate)| {
        let workers = Arc::new(Workers::new(s.workers, s.workers, s.max_workers, start));
        Arc::new(StageShared::new(Arc::clone(&s.name), workers, start, gate.circuit()))
    });
    let mut wiring = Wiring {
        control: Arc::clone(&control),
        shared: shared.collect(),
        gates,
        views: (0..stages.len()).map(|_| None).collect(),
        hires: (0..stages.len()).map(|_| None).collect(),
        upstream,
        upstream_fixed,
        stages,
        fans: fans
            .into_iter()
            .map(|broadcast| Arc::new(FanCounts { broadcast, ..FanCounts::default() }))
            .collect(),
        sinks: sink_names.iter().map(|_| Arc::new(SinkShared::new(start))).collect(),
        sink_names,
        trunk_last,
        sink_upstream,
        sink_upstream_fixed,
        workers: Vec::new(),
    };
    // Every queue is allocated before the first thread starts: a queue the allocator
    // refuses leaves nothing to stop.
    let Terminal { downstream, output } = terminal(&wiring)?;
    let Downstream::Link(input) = attach(downstream, &mut wiring)? else {
        unreachable!("the first stage is fed through a link");
    };
    let views = wiring.views.into_iter().map(|v| v.expect("every stage attached")).collect();
    let (mut threads, mut refused) = (Vec::with_capacity(wiring.workers.len()), None);
    for (id, work) in wiring.workers {
        match worker::spawn(&id, work) {
            Ok(handle) => threads.push(handle),
            Err(error) => {
                let (stage, worker) = (id.stage.to_string(), id.index);
                refused = Some(ConfigError::Spawn { stage, worker, message: error.to_string() });
                break;
            }
        }
    }
    let running = Running {
        control,
        input,
        stages: wiring.shared,
        views,
        sinks: wiring.sinks.into_iter().zip(wiring.sink_names).collect(),
        fans: wiring.fans,
        flows,
        watched,
        output,
        threads: Arc::new(Mutex::new(threads)),
        watchdog: Mutex::new(None),
        scale: scaling.map(|scaling| ScaleSetup { scaling, hires: wiring.hires, feeders }),
        scaler: Mutex::new(None),
    };
    match refused {
        None => Ok(running),
        Some(error) => {
            running.stop();
            Err(error)
        }
    }
}

/// Where the main line ends: the sink, or the output's queue (with its view, for the
/// pipeline's lifecycle).
pub(crate) struct Terminal<T> {
    pub(crate) downstream: Downstream<T>,
    pub(crate) output: Option<Arc<dyn LinkView>>,
}

/// The sink `index` (`0` for the main one), which calls `call` with every item.
pub(crate) fn sink<T>(
    wiring: &Wiring,
    index: usize,
    call: crate::route::SinkCall<T>,
    on_drop: Option<DropHook<T>>,
) -> Downstream<T> {
    Downstream::Sink(Arc::new(Sink {
        name: Arc::clone(&wiring.sink_names[index]),
        call: Mutex::new(call),
        shared: Arc::clone(&wiring.sinks[index]),
        control: Arc::clone(&wiring.control),
        on_drop,
    }))
}

/// Fan `fan`, which sends what `split` picks to `side` and the rest on to `main`.
pub(crate) fn fan<T>(
    wiring: &Wiring,
    fan: usize,
    main: Downstream<T>,
    side: Downstream<T>,
    split: Split<T>,
) -> Downstream<T> {
    let counts = Arc::clone(&wiring.fans[fan]);
    Downstream::Fan(Arc::new(Fan { main, side, split, counts }))
}

/// The output handle's queue: the main line's last stage's capacity and water marks, with
/// `Block`.
pub(crate) fn output<T>(
    wiring: &Wiring,
    on_drop: Option<DropHook<T>>,
) -> Result<Arc<Link<T>>, ConfigError> {
    let last = &wiring.stages[wiring.trunk_last];
    let upstream = wiring.sink_upstream;
    let spec = LinkSpec {
        capacity: last.capacity,
        marks: last.marks,
        overflow: Overflow::Block,
        upstream,
        single: upstream == 1 && wiring.sink_upstream_fixed,
        handles: false,
        stage: Arc::clone(&wiring.sink_names[0]),
        counters: Arc::clone(&wiring.sinks[0].counters),
        on_drop,
        weight: None,
    };
    Ok(Arc::new(new_link(spec, &wiring.control)?))
}

/// Creates stage `index`'s input queue (one per worker if it is key-ordered), starts its
/// workers, which send to `downstream`, and returns where the stage's inputs go.
pub(crate) fn attach_stage<In, S, F>(
    index: usize,
    factory: &Arc<F>,
    downstream: Downstream<S::Out>,
    wiring: &mut Wiring,
) -> Result<Downstream<In>, ConfigError>
where
    In: Send + 'static,
    F: Fn() -> S + Send + Sync + 'static,
    S: Stage<In> + 'static,
    S::Out: Send + 'static,
    S::Error: fmt::Display,
{
    let (upstream, upstream_fixed) = (wiring.upstream[index], wiring.upstream_fixed[index]);
    let stage = &mut wiring.stages[index];
    let scales = stage.max_workers > stage.workers;
    let typed: TypedSettings<In, S::Out> =
        stage.typed.take().map_or_else(TypedSettings::default, |typed| {
            *typed.downcast().expect("a stage's typed settings match its types")
        });
    let keyed = stage.order == Order::KeyOrdered;
    let lanes = if keyed { stage.workers } else { 1 };
    let links = (0..lanes)
        .map(|_| {
            let spec = LinkSpec {
                capacity: stage.capacity,
                marks: stage.marks,
                overflow: stage.overflow,
                upstream,
                // The first link is fed by the input handles: any number of threads. A stage
                // with a workers range, or fed by one, may get more.
                single: index > 0
                    && upstream == 1
                    && upstream_fixed
                    && (keyed || (stage.workers == 1 && !scales)),
                handles: index == 0,
                stage: Arc::clone(&stage.name),
                counters: Arc::clone(&wiring.shared[index].counters),
                on_drop: typed.on_drop.clone(),
                // Each lane of a key-ordered stage has a budget of its own, as it has a
                // capacity of its own.
                weight: stage.budget.zip(typed.weigh.clone()).map(|(b, w)| Weight::new(b, w)),
            };
            new_link(spec, &wiring.control).map(Arc::new)
        })
        .collect::<Result<Vec<Arc<Link<In>>>, _>>()?;
    let policy = Policy {
        on_failure: typed.on_failure,
        clone: typed.clone,
        retry: stage.retry,
        before: typed.before,
        after: typed.after,
        gate: Arc::clone(&wiring.gates[index]),
        watched: stage.watched,
    };
    let reorder =
        (stage.order == Order::Ordered && stage.max_workers > 1).then(|| Arc::new(Reorder::new()));
    let flush_every = stage.flush_every;
    let head = match typed.key {
        Some(key) if keyed => {
            wiring.views[index] = Some(Arc::new(Lanes(links.clone())) as Arc<dyn LinkView>);
            Downstream::Keyed(Arc::new(Keyed { lanes: links.clone(), key }))
        }
        _ => {
            wiring.views[index] = Some(Arc::clone(&links[0]) as Arc<dyn LinkView>);
            Downstream::Link(Arc::clone(&links[0]))
        }
    };
    let name = Arc::clone(&wiring.stages[index].name);
    let (shared, control) = (Arc::clone(&wiring.shared[index]), Arc::clone(&wiring.control));
    let factory = Arc::clone(factory);
    let told = downstream.clone();
    // Worker `worker`'s work: run the stage until the end, then count the worker out.
    let work = move |worker: usize| -> (WorkerId, Box<dyn FnOnce() + Send>) {
        let id = WorkerId { stage: Arc::clone(&name), index: worker };
        let parts = WorkerParts {
            input: Arc::clone(&links[worker % links.len()]),
            downstream: downstream.clone(),
            shared: Arc::clone(&shared),
            policy: policy.clone(),
            reorder: reorder.clone(),
            flush_every,
        };
        let departure = Departure {
            workers: Arc::clone(&shared.workers),
            downstream: downstream.clone(),
            control: Arc::clone(&control),
        };
        let factory = Arc::clone(&factory);
        let work_id = id.clone();
        let work = move || {
            // `run` catches every panic of the user's code it calls; this one is for what it
            // cannot reach (the `drop` of the factory's captures), so that the departure is
            // always announced (`shutdown` waits for it).
            let _ = catch_unwind(AssertUnwindSafe(move || {
                worker::run(&work_id, &*factory, &parts);
                drop((factory, parts));
            }));
            drop(departure);
        };
        (id, Box::new(work))
    };
    for worker in 0..wiring.stages[index].workers {
        wiring.control.worker_started();
        wiring.workers.push(work(worker));
    }
    if scales {
        let workers = Arc::clone(&wiring.shared[index].workers);
        let control = Arc::clone(&wiring.control);
        // One more worker is counted in downstream and by the pipeline before it starts,
        // while another worker of the stage still runs (see `Workers::enlist`).
        let hire: Hire = Box::new(move || {
            let announce = || {
                told.upstream_added();
                control.worker_started();
            };
            workers.enlist(Instant::now(), announce).map(&work)
        });
        wiring.hires[index] = Some(hire);
    }
    Ok(head)
}

/// A link as `spec` says; a queue the allocator refuses is a [`ConfigError`] naming it.
fn new_link<T>(spec: LinkSpec<T>, control: &Arc<Control>) -> Result<Link<T>, ConfigError> {
    let (stage, capacity) = (Arc::clone(&spec.stage), spec.capacity);
    Link::new(spec, Arc::clone(control))
        .map_err(|_| ConfigError::OutOfMemory { stage: stage.to_string(), capacity })
}
