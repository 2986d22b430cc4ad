//! The plan of a pipeline: what the builder's validation resolves a definition into and the
//! launch code builds from. Plain data: no queue, no thread.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use backflow_core::breaker::CircuitBreaker;
use backflow_core::scaler::{Scaler, StageWorkers};
use backflow_core::{Overflow, RetrySchedule, TokenBucket, WaterMarks, WeightBudget};

/// A pipeline definition, validated.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) stages: Vec<StagePlan>,
    /// Worker threads that feed each stage (at the start).
    pub(crate) upstream: Vec<usize>,
    /// Whether each stage is fed by a fixed number of workers (no stage with a workers range).
    pub(crate) upstream_fixed: Vec<bool>,
    /// The stages whose workers feed each stage, through fans and merges; none for the first.
    pub(crate) feeders: Vec<Vec<usize>>,
    /// Every sink's name, the main one (`sink`) first.
    pub(crate) sink_names: Vec<Arc<str>>,
    /// Whether each fan broadcasts (or routes).
    pub(crate) fans: Vec<bool>,
    /// What each node should have received, checked in the report.
    pub(crate) flows: Vec<Flow>,
    /// The stages with stall detection.
    pub(crate) watched: Vec<Watched>,
    /// The main line's last stage.
    pub(crate) trunk_last: usize,
    /// Worker threads that feed the main sink (at the start), and whether that number is fixed.
    pub(crate) sink_upstream: usize,
    pub(crate) sink_upstream_fixed: bool,
    /// The thread budget and the scaler, when a stage has a workers range.
    pub(crate) scaling: Option<Scaling>,
}

/// How the workers of stages with a workers range are scaled.
#[derive(Debug, Clone)]
pub(crate) struct Scaling {
    /// How often the stages are measured.
    pub(crate) interval: Duration,
    /// The decisions, within the thread budget.
    pub(crate) scaler: Scaler,
    /// Every stage's workers and range, as the scaler counts them.
    pub(crate) workers: Vec<StageWorkers>,
}

/// One stage as validated: every setting resolved against the others.
#[derive(Debug)]
pub(crate) struct StagePlan {
    pub(crate) name: Arc<str>,
    /// Workers at the start: the fixed number, or the range's minimum.
    pub(crate) workers: usize,
    /// The most workers it may have (`workers` unless it has a range).
    pub(crate) max_workers: usize,
    pub(crate) capacity: usize,
    pub(crate) marks: WaterMarks,
    /// The byte budget of its input queue, with its water marks in bytes.
    pub(crate) budget: Option<WeightBudget>,
    pub(crate) overflow: Overflow,
    pub(crate) order: Order,
    pub(crate) retry: Option<RetrySchedule>,
    pub(crate) flush_every: Option<Duration>,
    /// Whether the stall watchdog watches it.
    pub(crate) watched: bool,
    /// The circuit breaker and its cooldown, and the rate limit, in their initial states.
    pub(crate) breaker: Option<(CircuitBreaker, Duration)>,
    pub(crate) limiter: Option<TokenBucket>,
    /// The stage's typed settings (see the builder), boxed to keep the list untyped.
    pub(crate) typed: Option<Box<dyn Any>>,
}

/// How a stage's workers keep the order of items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Order {
    Unordered,
    Ordered,
    KeyOrdered,
}

/// Where a node's items come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Supply {
    /// A stage's outputs, all of them.
    Stage(usize),
    /// What a fan sent on along the main line.
    FanMain(usize),
    /// What a fan sent to its branch.
    FanSide(usize),
}

/// A node of the graph that receives items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Node {
    Stage(usize),
    Sink(usize),
    Fan(usize),
}

/// A node and what feeds it: for the report's check that nothing vanished between nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Flow {
    pub(crate) into: Node,
    pub(crate) from: Vec<Supply>,
}

/// A stage with stall detection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Watched {
    pub(crate) stage: usize,
    pub(crate) after: Duration,
}
