//! Validation: a pure function from a pipeline definition ([`Chain`]) to its [`Plan`], or the
//! [`ConfigError`] that names the stage and field at fault. It starts nothing and allocates no
//! queue, so every rule is unit-tested here without a thread.

use std::collections::HashSet;
use std::mem;
use std::sync::Arc;
use std::time::Duration;

use backflow_core::breaker::CircuitBreaker;
use backflow_core::ring::MAX_CAPACITY;
use backflow_core::scaler::{Scaler, StageWorkers};
use backflow_core::{Overflow, TokenBucket, WaterMarks, WeightBudget};

use super::MAX_WORKERS;
use super::spec::{Chain, Marks, Settings, SinkSpec, StageSettings};
use crate::error::ConfigError;
use crate::plan::{Flow, Node, Order, Plan, Scaling, StagePlan, Watched};

/// Validates `chain` and resolves it into a plan; `since_start` is the time since the
/// pipeline started (see [`resolve`]). Errors come in the order of the definition: a setting
/// given where it cannot apply, then each stage, then each sink's name, then the thread
/// budget and scaling.
pub(super) fn validate(mut chain: Chain, since_start: Duration) -> Result<Plan, ConfigError> {
    if let Some(error) = chain.misplaced.take() {
        return Err(error);
    }
    let sink_upstream = chain.tail.iter().map(|&f| chain.workers_behind(f)).sum();
    let sink_upstream_fixed = chain.tail.iter().all(|&f| chain.fixed_behind(f));
    let trunk_last = chain.current;
    chain.sinks.insert(0, SinkSpec { name: "sink".into(), feeds: mem::take(&mut chain.tail) });
    let mut names = HashSet::new();
    let upstream: Vec<usize> = chain
        .stages
        .iter()
        .map(|s| s.feeds.iter().map(|&f| chain.workers_behind(f)).sum())
        .collect();
    let upstream_fixed =
        chain.stages.iter().map(|s| s.feeds.iter().all(|&f| chain.fixed_behind(f))).collect();
    let feeders =
        chain.stages.iter().map(|s| s.feeds.iter().flat_map(|&f| chain.stages_behind(f)).collect());
    let feeders: Vec<Vec<usize>> = feeders.collect();
    let flows = flows(&chain);
    let watched = chain
        .stages
        .iter()
        .enumerate()
        .filter_map(|(stage, s)| s.stall_after.map(|after| Watched { stage, after }))
        .collect();
    let stages = chain
        .stages
        .into_iter()
        .enumerate()
        .map(|(index, stage)| resolve(stage, index, &mut names, since_start))
        .collect::<Result<Vec<_>, _>>()?;
    let stage_count = stages.len();
    // The main sink's name, `sink`, is taken like any other: a stage or branch named so
    // would be indistinguishable from it in stats, events and drop hooks.
    for (index, sink) in chain.sinks.iter().enumerate() {
        check_name(&sink.name, stage_count + index, &mut names)?;
    }
    let scaling = scaling(&chain.settings, &stages)?;
    Ok(Plan {
        stages,
        upstream,
        upstream_fixed,
        feeders,
        sink_upstream_fixed,
        scaling,
        sink_names: chain.sinks.iter().map(|s| Arc::from(s.name.as_str())).collect(),
        fans: chain.fans.iter().map(|f| f.broadcast).collect(),
        flows,
        watched,
        trunk_last,
        sink_upstream,
    })
}

/// Validates stage `index`'s settings (its name against `names`, which it joins); `start` is
/// the time since the pipeline started, for the rate limit's first refill.
fn resolve(
    settings: StageSettings,
    index: usize,
    names: &mut HashSet<String>,
    start: Duration,
) -> Result<StagePlan, ConfigError> {
    let stage = || settings.name.clone();
    check_name(&settings.name, index, names)?;
    let (workers, max_workers) = match settings.range {
        None => (settings.workers.get(), settings.workers.get()),
        Some((min, max)) if min == 0 || min > max => {
            return Err(ConfigError::WorkersRange { stage: stage(), min, max });
        }
        Some(range) => range,
    };
    if workers > MAX_WORKERS {
        return Err(ConfigError::TooManyWorkers { stage: stage(), workers, max: MAX_WORKERS });
    }
    if settings.order == Order::KeyOrdered && max_workers > workers {
        return Err(ConfigError::KeyOrderedScaled { stage: stage() });
    }
    if settings.capacity == 0 {
        return Err(ConfigError::ZeroCapacity { stage: stage() });
    }
    if settings.capacity > MAX_CAPACITY {
        return Err(ConfigError::CapacityTooLarge {
            stage: stage(),
            capacity: settings.capacity,
            max: MAX_CAPACITY,
        });
    }
    let marks = match settings.marks {
        Marks::Default => WaterMarks::for_capacity(settings.capacity),
        Marks::Percent { high, low } => WaterMarks::from_percent(settings.capacity, high, low),
        Marks::Counts { high, low } => WaterMarks::from_counts(settings.capacity, high, low),
    }
    .map_err(|source| ConfigError::WaterMarks { stage: stage(), source })?;
    let budget = settings.capacity_bytes.map(|limit| budget(limit, settings.marks)).transpose();
    let budget = budget.map_err(|error| error.at(stage()))?;
    if settings.overflow == Overflow::Fail && index > 0 {
        return Err(ConfigError::FailNotFirst { stage: stage() });
    }
    if settings.order == Order::KeyOrdered && index == 0 {
        return Err(ConfigError::KeyOrderedFirst { stage: stage() });
    }
    for (field, duration) in
        [("flush_every", settings.flush_every), ("stall_after", settings.stall_after)]
    {
        if duration.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::ZeroDuration { stage: stage(), field });
        }
    }
    let invalid = |source| ConfigError::Invalid { stage: stage(), source };
    let breaker = settings
        .breaker
        .map(|config| CircuitBreaker::new(config).map(|b| (b, config.cooldown)))
        .transpose()
        .map_err(invalid)?;
    let limiter = settings
        .rate_limit
        .map(|(rate, burst)| TokenBucket::new(rate, burst, start))
        .transpose()
        .map_err(invalid)?;
    let name: Arc<str> = settings.name.into();
    Ok(StagePlan {
        name,
        breaker,
        limiter,
        workers,
        max_workers,
        capacity: settings.capacity,
        marks,
        budget,
        overflow: settings.overflow,
        order: settings.order,
        retry: settings.retry,
        flush_every: settings.flush_every,
        watched: settings.stall_after.is_some(),
        typed: settings.typed,
    })
}

/// What is wrong with a byte budget, before it is known which stage it belongs to.
enum BudgetError {
    Marks(backflow_core::ConfigError),
    Invalid(backflow_core::ConfigError),
}

impl BudgetError {
    fn at(self, stage: String) -> ConfigError {
        match self {
            Self::Marks(source) => ConfigError::WaterMarks { stage, source },
            Self::Invalid(source) => ConfigError::Invalid { stage, source },
        }
    }
}

/// A byte budget of `limit`, with the stage's water marks as percentages of it.
fn budget(limit: usize, marks: Marks) -> Result<WeightBudget, BudgetError> {
    let invalid = |field, expected| {
        BudgetError::Invalid(backflow_core::ConfigError::Invalid { field, expected })
    };
    if limit == 0 {
        return Err(invalid("capacity_bytes", "at least 1"));
    }
    let marks = match marks {
        Marks::Default => WaterMarks::for_capacity(limit),
        Marks::Percent { high, low } => WaterMarks::from_percent(limit, high, low),
        Marks::Counts { .. } => {
            return Err(invalid(
                "water_mark_counts",
                "percentages (`water_marks`) with `capacity_bytes`",
            ));
        }
    }
    .map_err(BudgetError::Marks)?;
    WeightBudget::with_marks(limit, marks).map_err(BudgetError::Marks)
}

/// The thread budget and the scaler, checked against the stages: `None` when no stage has a
/// workers range (a budget is still checked against the fixed workers). Without a budget,
/// each stage's range is its only limit.
fn scaling(settings: &Settings, stages: &[StagePlan]) -> Result<Option<Scaling>, ConfigError> {
    let needed = stages.iter().fold(0usize, |sum, s| sum.saturating_add(s.workers));
    if let Some(budget) = settings.threads.filter(|&budget| budget < needed.max(1)) {
        return Err(ConfigError::ThreadBudget { budget, needed });
    }
    if stages.iter().all(|s| s.max_workers == s.workers) {
        return Ok(None);
    }
    let invalid = |field, expected| ConfigError::Scaling { field, expected };
    if settings.scale_interval.is_zero() {
        return Err(invalid("scale_interval", "longer than zero"));
    }
    if !settings.timings {
        return Err(invalid("timings", "on when a stage has a workers range"));
    }
    let core = |error| match error {
        backflow_core::ConfigError::Invalid { field, expected } => invalid(field, expected),
        _ => invalid("scaler", "valid"),
    };
    let workers = stages
        .iter()
        .map(|s| StageWorkers::new(s.workers, s.max_workers))
        .collect::<Result<Vec<_>, _>>()
        .map_err(core)?;
    let most = stages.iter().fold(0usize, |sum, s| sum.saturating_add(s.max_workers));
    let budget = settings.threads.unwrap_or(most);
    let scaler = Scaler::new(settings.scaler, budget, &workers).map_err(core)?;
    Ok(Some(Scaling { interval: settings.scale_interval, scaler, workers }))
}

/// Checks a stage's or sink's name: not empty, no control characters, not taken.
fn check_name(name: &str, index: usize, names: &mut HashSet<String>) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(ConfigError::EmptyName { index });
    }
    if name.chars().any(char::is_control) {
        return Err(ConfigError::NameHasControl { name: name.to_string() });
    }
    if !names.insert(name.to_string()) {
        return Err(ConfigError::DuplicateName { stage: name.to_string() });
    }
    Ok(())
}

/// The flows to check in the report: what each stage and sink should have received.
fn flows(chain: &Chain) -> Vec<Flow> {
    let stages = chain
        .stages
        .iter()
        .enumerate()
        .skip(1)
        .map(|(index, stage)| Flow { into: Node::Stage(index), from: stage.feeds.clone() });
    let sinks = chain
        .sinks
        .iter()
        .enumerate()
        .map(|(index, sink)| Flow { into: Node::Sink(index), from: sink.feeds.clone() });
    let fans = chain
        .fans
        .iter()
        .enumerate()
        .map(|(index, fan)| Flow { into: Node::Fan(index), from: fan.feeds.clone() });
    stages.chain(sinks).chain(fans).collect()
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use super::*;
    use crate::builder::spec::Settings;
    use crate::plan::Supply;

    /// A main line of stages named `names`, ending in the main sink.
    fn line(names: &[&str]) -> Chain {
        let mut chain = Chain::new(Settings::default());
        for name in names {
            chain.add_stage((*name).to_string());
        }
        chain
    }

    fn workers(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).unwrap()
    }

    #[test]
    fn a_line_resolves_with_worker_counts_and_flows() {
        let mut chain = line(&["parse", "square"]);
        chain.stages[0].workers = workers(3);
        chain.stages[1].workers = workers(2);
        chain.stages[1].stall_after = Some(Duration::from_secs(1));
        let plan = validate(chain, Duration::ZERO).unwrap();
        let names: Vec<&str> = plan.stages.iter().map(|s| &*s.name).collect();
        assert_eq!(names, ["parse", "square"]);
        assert_eq!(plan.upstream, [0, 3]);
        assert_eq!((plan.trunk_last, plan.sink_upstream), (1, 2));
        assert_eq!(plan.sink_names, [Arc::from("sink")]);
        assert_eq!(plan.stages[0].marks, WaterMarks::for_capacity(1024).unwrap());
        assert_eq!(plan.watched.iter().map(|w| w.stage).collect::<Vec<_>>(), [1]);
        // Stage 1 is fed by stage 0, the sink by stage 1 (the first stage by the inputs).
        let flows: Vec<String> =
            plan.flows.iter().map(|f| format!("{:?}<-{:?}", f.into, f.from)).collect();
        assert_eq!(flows, ["Stage(1)<-[Stage(0)]", "Sink(0)<-[Stage(1)]"]);
    }

    #[test]
    fn names_must_be_present_clean_and_unique_including_the_sink() {
        let error = |names: &[&str]| validate(line(names), Duration::ZERO).err();
        assert_eq!(error(&["a", ""]), Some(ConfigError::EmptyName { index: 1 }));
        assert_eq!(error(&["a\n"]), Some(ConfigError::NameHasControl { name: "a\n".into() }));
        assert_eq!(error(&["a", "a"]), Some(ConfigError::DuplicateName { stage: "a".into() }));
        assert_eq!(error(&["sink"]), Some(ConfigError::DuplicateName { stage: "sink".into() }));
    }

    #[test]
    fn each_stage_setting_is_checked_and_named() {
        let check = |index: usize, set: fn(&mut StageSettings)| {
            let mut chain = line(&["a", "b"]);
            set(&mut chain.stages[index]);
            validate(chain, Duration::ZERO).unwrap_err()
        };
        let b = || "b".to_string();
        assert_eq!(check(1, |s| s.capacity = 0), ConfigError::ZeroCapacity { stage: b() });
        assert_eq!(
            check(1, |s| s.capacity = MAX_CAPACITY + 1),
            ConfigError::CapacityTooLarge {
                stage: b(),
                capacity: MAX_CAPACITY + 1,
                max: MAX_CAPACITY
            }
        );
        assert!(matches!(
            check(1, |s| s.marks = Marks::Percent { high: 50, low: 60 }),
            ConfigError::WaterMarks { stage, .. } if stage == "b"
        ));
        assert_eq!(
            check(1, |s| s.overflow = Overflow::Fail),
            ConfigError::FailNotFirst { stage: b() }
        );
        assert_eq!(
            check(0, |s| s.order = Order::KeyOrdered),
            ConfigError::KeyOrderedFirst { stage: "a".into() }
        );
        assert_eq!(
            check(1, |s| s.stall_after = Some(Duration::ZERO)),
            ConfigError::ZeroDuration { stage: b(), field: "stall_after" }
        );
        assert!(matches!(
            check(1, |s| s.rate_limit = Some((0, 1))),
            ConfigError::Invalid { stage, .. } if stage == "b"
        ));
        // The first stage may fail a push back to its caller, and later stages key-order.
        let mut chain = line(&["a", "b"]);
        chain.stages[0].overflow = Overflow::Fail;
        chain.stages[1].order = Order::KeyOrdered;
        assert!(validate(chain, Duration::ZERO).is_ok());
    }

    #[test]
    fn a_byte_budget_takes_the_marks_as_percentages_of_it() {
        let check = |set: fn(&mut StageSettings)| {
            let mut chain = line(&["a", "b"]);
            chain.stages[1].capacity_bytes = Some(1000);
            set(&mut chain.stages[1]);
            validate(chain, Duration::ZERO).map(|mut plan| plan.stages.remove(1))
        };
        let b = || "b".to_string();
        let plain = check(|_| {}).unwrap();
        assert_eq!(plain.budget, Some(WeightBudget::new(1000).unwrap()));
        // The item-count marks stay as they were, for the output's queue.
        assert_eq!(plain.marks, WaterMarks::for_capacity(1024).unwrap());
        let tuned = check(|s| s.marks = Marks::Percent { high: 90, low: 10 }).unwrap();
        assert_eq!(tuned.budget.map(|b| (b.marks().high(), b.marks().low())), Some((900, 100)));
        let invalid = |field, expected| ConfigError::Invalid {
            stage: b(),
            source: backflow_core::ConfigError::Invalid { field, expected },
        };
        assert_eq!(
            check(|s| s.capacity_bytes = Some(0)).unwrap_err(),
            invalid("capacity_bytes", "at least 1")
        );
        assert_eq!(
            check(|s| s.marks = Marks::Counts { high: 8, low: 2 }).unwrap_err(),
            invalid("water_mark_counts", "percentages (`water_marks`) with `capacity_bytes`")
        );
        assert!(matches!(
            check(|s| s.marks = Marks::Percent { high: 101, low: 10 }).unwrap_err(),
            ConfigError::WaterMarks { stage, .. } if stage == "b"
        ));
        assert!(check(|s| s.capacity_bytes = None).unwrap().budget.is_none());
    }

    #[test]
    fn a_misplaced_setting_is_reported_before_any_stage() {
        let mut chain = line(&["a", "a"]);
        chain.misplaced = Some(ConfigError::DropHookOnMerge { branch: "x".into() });
        let error = validate(chain, Duration::ZERO).unwrap_err();
        assert_eq!(error, ConfigError::DropHookOnMerge { branch: "x".into() });
    }

    #[test]
    fn a_range_starts_at_its_minimum_and_makes_the_queues_around_it_shared() {
        // a (1..=3) → b (2) → c (1) → sink, within 6 threads.
        let mut chain = line(&["a", "b", "c"]);
        chain.settings.threads = Some(6);
        chain.stages[0].range = Some((1, 3));
        chain.stages[1].workers = workers(2);
        let plan = validate(chain, Duration::ZERO).unwrap();
        let counts: Vec<(usize, usize)> =
            plan.stages.iter().map(|s| (s.workers, s.max_workers)).collect();
        assert_eq!(counts, [(1, 3), (2, 2), (1, 1)]);
        assert_eq!(plan.upstream, [0, 1, 2]);
        // `b` is fed by a stage whose workers may change; `c` and the sink are not.
        assert_eq!(plan.upstream_fixed, [true, false, true]);
        assert!(plan.sink_upstream_fixed);
        assert_eq!(plan.feeders, [vec![], vec![0], vec![1]]);
        let scaling = plan.scaling.unwrap();
        assert_eq!(scaling.scaler.budget(), 6);
        assert_eq!(scaling.workers.iter().map(|w| w.workers()).collect::<Vec<_>>(), [1, 2, 1]);
        // Without a budget, the ranges are the only limit; without a range, nothing scales.
        let mut chain = line(&["a", "b"]);
        chain.stages[1].range = Some((2, 5));
        let plan = validate(chain, Duration::ZERO).unwrap();
        assert_eq!(plan.scaling.unwrap().scaler.budget(), 6);
        assert!(validate(line(&["a"]), Duration::ZERO).unwrap().scaling.is_none());
    }

    #[test]
    fn a_fan_counts_the_workers_behind_it_on_both_sides() {
        // a (2 workers) ─ fan ─ branch: b → its own sink `audit`
        //                     └ main: c → sink
        let mut chain = line(&["a"]);
        chain.stages[0].workers = workers(2);
        let fan = chain.add_fan(true);
        chain.branches.push("audit".into());
        chain.add_stage("b".into());
        let feeds = mem::take(&mut chain.tail);
        chain.sinks.push(SinkSpec { name: "audit".into(), feeds });
        chain.branches.pop();
        chain.tail = vec![Supply::FanMain(fan)];
        chain.add_stage("c".into());
        let plan = validate(chain, Duration::ZERO).unwrap();
        assert_eq!(plan.upstream, [0, 2, 2]);
        assert_eq!(plan.fans, [true]);
        assert_eq!(plan.sink_names, [Arc::from("sink"), Arc::from("audit")]);
        let fan_flow = plan.flows.iter().find(|f| matches!(f.into, Node::Fan(0))).unwrap();
        assert_eq!(fan_flow.from, [Supply::Stage(0)]);
    }
}
