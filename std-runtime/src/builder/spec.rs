//! A pipeline definition as the builder collects it, before validation: pipeline-wide
//! settings, each stage's settings as given, the fans and sinks, and what feeds what.

use std::any::Any;
use std::fmt;
use std::mem;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use backflow_core::breaker::BreakerConfig;
use backflow_core::scaler::ScalerConfig;
use backflow_core::{Overflow, RetrySchedule};

use super::{DEFAULT_CAPACITY, DEFAULT_SAMPLE_EVERY, DEFAULT_SCALE_INTERVAL};
use crate::error::ConfigError;
use crate::event::EventHandler;
use crate::plan::{Order, Supply};
use crate::wait::WaitStrategy;

/// Pipeline-wide settings.
#[derive(Clone)]
pub(super) struct Settings {
    pub(super) strategy: WaitStrategy,
    pub(super) sample_every: NonZeroU32,
    pub(super) timings: bool,
    pub(super) events: Option<EventHandler>,
    /// The thread budget of the stages with a workers range, and how they are scaled.
    pub(super) threads: Option<usize>,
    pub(super) scale_interval: Duration,
    pub(super) scaler: ScalerConfig,
}

impl Default for Settings {
    fn default() -> Self {
        let sample_every = NonZeroU32::new(DEFAULT_SAMPLE_EVERY).unwrap_or(NonZeroU32::MIN);
        Self {
            strategy: WaitStrategy::default(),
            sample_every,
            timings: true,
            events: None,
            threads: None,
            scale_interval: DEFAULT_SCALE_INTERVAL,
            scaler: ScalerConfig::default(),
        }
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("strategy", &self.strategy)
            .field("sample_every", &self.sample_every)
            .field("timings", &self.timings)
            .field("events", &self.events.is_some())
            .field("threads", &self.threads)
            .field("scale_interval", &self.scale_interval)
            .field("scaler", &self.scaler)
            .finish()
    }
}

/// Water marks as given, resolved against the capacity in `build()`.
#[derive(Debug, Clone, Copy)]
pub(super) enum Marks {
    Default,
    Percent { high: u8, low: u8 },
    Counts { high: usize, low: usize },
}

/// One stage's settings as given.
pub(super) struct StageSettings {
    pub(super) name: String,
    pub(super) workers: NonZeroUsize,
    /// A workers range as given (`min..=max`), instead of `workers`.
    pub(super) range: Option<(usize, usize)>,
    pub(super) capacity: usize,
    /// The byte budget of its input queue (its weigh function is a typed setting).
    pub(super) capacity_bytes: Option<usize>,
    pub(super) marks: Marks,
    pub(super) overflow: Overflow,
    pub(super) order: Order,
    pub(super) retry: Option<RetrySchedule>,
    pub(super) breaker: Option<BreakerConfig>,
    pub(super) rate_limit: Option<(u64, u64)>,
    pub(super) flush_every: Option<Duration>,
    pub(super) stall_after: Option<Duration>,
    /// What feeds it.
    pub(super) feeds: Vec<Supply>,
    /// The stage's typed settings (`policy::TypedSettings` for its input and output types), boxed to
    /// keep the list untyped.
    pub(super) typed: Option<Box<dyn Any>>,
}

/// A fan-out point as defined: what feeds it.
pub(super) struct FanSpec {
    pub(super) feeds: Vec<Supply>,
    pub(super) broadcast: bool,
}

/// A sink as defined: its name and what feeds it.
pub(super) struct SinkSpec {
    pub(super) name: String,
    pub(super) feeds: Vec<Supply>,
}

/// The graph as defined so far, shared by the main line and its branches.
pub(super) struct Chain {
    pub(super) settings: Settings,
    pub(super) stages: Vec<StageSettings>,
    pub(super) fans: Vec<FanSpec>,
    /// The branches' sinks; the main sink comes first at build time.
    pub(super) sinks: Vec<SinkSpec>,
    /// What feeds the next stage or sink.
    pub(super) tail: Vec<Supply>,
    /// The stage that settings apply to.
    pub(super) current: usize,
    /// The names of the branches being defined, innermost last.
    pub(super) branches: Vec<String>,
    /// A setting given where it cannot apply, reported by `build()`.
    pub(super) misplaced: Option<ConfigError>,
}

impl Chain {
    /// An empty definition with pipeline-wide `settings`.
    pub(super) fn new(settings: Settings) -> Self {
        Self {
            settings,
            stages: Vec::new(),
            fans: Vec::new(),
            sinks: Vec::new(),
            tail: Vec::new(),
            current: 0,
            branches: Vec::new(),
            misplaced: None,
        }
    }

    pub(super) fn add_stage(&mut self, name: String) -> usize {
        let index = self.stages.len();
        let feeds = mem::replace(&mut self.tail, vec![Supply::Stage(index)]);
        self.stages.push(StageSettings::new(name, feeds));
        self.current = index;
        index
    }

    pub(super) fn add_fan(&mut self, broadcast: bool) -> usize {
        let fan = self.fans.len();
        let feeds = mem::replace(&mut self.tail, vec![Supply::FanSide(fan)]);
        self.fans.push(FanSpec { feeds, broadcast });
        fan
    }

    /// Worker threads that deliver through `supply`, at the start.
    pub(super) fn workers_behind(&self, supply: Supply) -> usize {
        self.stages_behind(supply).iter().map(|&i| self.stages[i].initial_workers()).sum()
    }

    /// The stages whose workers deliver through `supply`.
    pub(super) fn stages_behind(&self, supply: Supply) -> Vec<usize> {
        match supply {
            Supply::Stage(index) => vec![index],
            Supply::FanMain(fan) | Supply::FanSide(fan) => {
                self.fans[fan].feeds.iter().flat_map(|&s| self.stages_behind(s)).collect()
            }
        }
    }

    /// Whether the stages delivering through `supply` have a fixed number of workers.
    pub(super) fn fixed_behind(&self, supply: Supply) -> bool {
        self.stages_behind(supply).iter().all(|&i| !self.stages[i].scales())
    }
}

impl StageSettings {
    /// Workers at the start: the range's minimum, or the fixed number.
    pub(super) fn initial_workers(&self) -> usize {
        self.range.map_or(self.workers.get(), |(min, _)| min)
    }

    /// Whether its number of workers may change.
    pub(super) fn scales(&self) -> bool {
        self.range.is_some_and(|(min, max)| min < max)
    }

    pub(super) fn new(name: String, feeds: Vec<Supply>) -> Self {
        Self {
            name,
            workers: NonZeroUsize::MIN,
            range: None,
            capacity: DEFAULT_CAPACITY,
            capacity_bytes: None,
            marks: Marks::Default,
            overflow: Overflow::Block,
            order: Order::Unordered,
            retry: None,
            breaker: None,
            rate_limit: None,
            flush_every: None,
            stall_after: None,
            feeds,
            typed: None,
        }
    }
}
