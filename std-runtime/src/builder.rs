//! The typed builder: [`Source`] → [`Builder`] → [`WithSink`] / [`WithOutput`] →
//! `build()`.
//!
//! Each `stage` call checks at compile time that the stage takes what the previous one emits;
//! the settings that follow it (`workers`, `capacity`, `water_marks`, `overflow`, `on_drop`)
//! apply to that stage. Nothing is checked or started until `build()`, which validates every
//! setting and returns a [`ConfigError`] naming the stage and field, or starts the threads.
//!
//! Internally the builder composes one closure per stage, from the last stage back to the
//! first: given where its outputs go, each creates its stage's input queue, starts the
//! stage's workers and hands the queue to the closure of the stage before it.

use std::any::Any;
use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use backflow_core::ring::MAX_CAPACITY;
use backflow_core::{Overflow, Stage, WaterMarks};

use crate::control::Control;
use crate::link::{DropHook, Link, LinkSpec};
use crate::output::Output;
use crate::pipeline::{LinkView, Pipeline, Running};
use crate::stats::{SinkShared, StageShared};
use crate::wait::WaitStrategy;
use crate::worker::{self, Downstream, Sink, WorkerId};
use crate::{ConfigError, Dropped};

/// The queue capacity of a stage that does not set one.
pub const DEFAULT_CAPACITY: usize = 1024;

/// One item in this many carries timestamps, unless [`Source::sample_every`] says otherwise.
pub const DEFAULT_SAMPLE_EVERY: u32 = 64;

/// Pipeline-wide settings.
#[derive(Debug, Clone, Copy)]
struct Settings {
    strategy: WaitStrategy,
    sample_every: NonZeroU32,
}

/// Water marks as given, resolved against the capacity in `build()`.
#[derive(Debug, Clone, Copy)]
enum Marks {
    Default,
    Percent { high: u8, low: u8 },
    Counts { high: usize, low: usize },
}

/// One stage's settings as given.
struct StageSettings {
    name: String,
    workers: NonZeroUsize,
    capacity: usize,
    marks: Marks,
    overflow: Overflow,
    /// A `DropHook<T>` for the stage's input type, boxed to keep the list untyped.
    on_drop: Option<Box<dyn Any>>,
}

/// One stage's settings, validated.
pub(crate) struct Resolved {
    name: Arc<str>,
    workers: usize,
    capacity: usize,
    marks: WaterMarks,
    overflow: Overflow,
    on_drop: Option<Box<dyn Any>>,
}

/// What the per-stage closures build into.
pub(crate) struct Wiring {
    control: Arc<Control>,
    stages: Vec<Resolved>,
    shared: Vec<Arc<StageShared>>,
    views: Vec<Option<Arc<dyn LinkView>>>,
    threads: Vec<JoinHandle<()>>,
    spawn_error: Option<ConfigError>,
}

type Attach<In, Out> = Box<dyn FnOnce(Downstream<Out>, &mut Wiring) -> Arc<Link<In>>>;

/// The start of a pipeline definition: pipeline-wide settings, then the first `stage`.
///
/// # Examples
///
/// ```
/// use backflow::{Pipeline, WaitStrategy};
///
/// let pipeline = Pipeline::<u64>::builder()
///     .wait_strategy(WaitStrategy::Park)
///     .stage("inc", || |x: u64| x + 1)
///     .sink(|_| {})
///     .build()?;
/// pipeline.drain()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Source<In> {
    settings: Settings,
    _input: PhantomData<fn(In)>,
}

impl<In: Send + 'static> Source<In> {
    pub(crate) fn new() -> Self {
        let sample_every = NonZeroU32::new(DEFAULT_SAMPLE_EVERY).unwrap_or(NonZeroU32::MIN);
        Self {
            settings: Settings { strategy: WaitStrategy::default(), sample_every },
            _input: PhantomData,
        }
    }

    /// How idle workers and blocked producers wait (default [`WaitStrategy::Park`]).
    ///
    /// # Examples
    ///
    /// ```
    /// # use backflow::{Pipeline, WaitStrategy};
    /// let source = Pipeline::<u8>::builder().wait_strategy(WaitStrategy::BusySpin);
    /// # drop(source);
    /// ```
    pub fn wait_strategy(mut self, strategy: WaitStrategy) -> Self {
        self.settings.strategy = strategy;
        self
    }

    /// Time one item in `n` (queue wait, processing time, end-to-end latency); default
    /// [`DEFAULT_SAMPLE_EVERY`]. `1` times every item, at the cost of a few clock reads each.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::num::NonZeroU32;
    /// let source = backflow::Pipeline::<u8>::builder().sample_every(NonZeroU32::MIN);
    /// # drop(source);
    /// ```
    pub fn sample_every(mut self, n: NonZeroU32) -> Self {
        self.settings.sample_every = n;
        self
    }

    /// Adds the first stage. `factory` makes one stage value per worker, inside the worker's
    /// thread, so stages can keep state without a lock; a closure `|x| …` is a stage.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow::{Pipeline, stage};
    ///
    /// let builder = Pipeline::<&'static str>::builder()
    ///     .stage("parse", || stage::filter_map(|s: &str| s.parse::<u32>().ok()));
    /// # drop(builder);
    /// ```
    pub fn stage<S, F>(self, name: impl Into<String>, factory: F) -> Builder<In, In, S::Out>
    where
        F: Fn() -> S + Send + Sync + 'static,
        S: Stage<In> + 'static,
        S::Out: Send + 'static,
    {
        let factory = Arc::new(factory);
        let attach: Attach<In, S::Out> =
            Box::new(move |downstream, wiring| attach_stage(0, &factory, downstream, wiring));
        Builder {
            settings: self.settings,
            stages: vec![StageSettings::new(name.into())],
            attach,
            _last: PhantomData,
        }
    }
}

impl<In> fmt::Debug for Source<In> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source").field("settings", &self.settings).finish()
    }
}

impl StageSettings {
    fn new(name: String) -> Self {
        Self {
            name,
            workers: NonZeroUsize::MIN,
            capacity: DEFAULT_CAPACITY,
            marks: Marks::Default,
            overflow: Overflow::Block,
            on_drop: None,
        }
    }

    fn resolve(self, index: usize, names: &mut HashSet<String>) -> Result<Resolved, ConfigError> {
        let stage = || self.name.clone();
        if self.name.is_empty() {
            return Err(ConfigError::EmptyName { index });
        }
        if self.name.chars().any(char::is_control) {
            return Err(ConfigError::NameHasControl { name: stage() });
        }
        if !names.insert(self.name.clone()) {
            return Err(ConfigError::DuplicateName { stage: stage() });
        }
        if self.capacity == 0 {
            return Err(ConfigError::ZeroCapacity { stage: stage() });
        }
        if self.capacity > MAX_CAPACITY {
            return Err(ConfigError::CapacityTooLarge {
                stage: stage(),
                capacity: self.capacity,
                max: MAX_CAPACITY,
            });
        }
        let marks = match self.marks {
            Marks::Default => WaterMarks::for_capacity(self.capacity),
            Marks::Percent { high, low } => WaterMarks::from_percent(self.capacity, high, low),
            Marks::Counts { high, low } => WaterMarks::from_counts(self.capacity, high, low),
        }
        .map_err(|source| ConfigError::WaterMarks { stage: stage(), source })?;
        if self.overflow == Overflow::Fail && index > 0 {
            return Err(ConfigError::FailNotFirst { stage: stage() });
        }
        Ok(Resolved {
            name: self.name.into(),
            workers: self.workers.get(),
            capacity: self.capacity,
            marks,
            overflow: self.overflow,
            on_drop: self.on_drop,
        })
    }
}

/// A pipeline definition with at least one stage: `In` is what the pipeline takes, `Last` what
/// its last stage takes and `Out` what that stage emits. Settings apply to the last stage.
///
/// # Examples
///
/// ```
/// use std::num::NonZeroUsize;
/// use backflow::{Overflow, Pipeline};
///
/// let pipeline = Pipeline::<u32>::builder()
///     .stage("parse", || |x: u32| x.to_string())
///     .capacity(256)
///     .stage("measure", || |s: String| s.len())
///     .workers(NonZeroUsize::new(2).unwrap())
///     .overflow(Overflow::DropOldest)
///     .sink(|_len| {})
///     .build()?;
/// pipeline.drain()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Builder<In, Last, Out> {
    settings: Settings,
    stages: Vec<StageSettings>,
    attach: Attach<In, Out>,
    _last: PhantomData<fn(Last)>,
}

impl<In: Send + 'static, Last: Send + 'static, Out: Send + 'static> Builder<In, Last, Out> {
    /// Adds a stage that takes this stage's outputs.
    ///
    /// # Examples
    ///
    /// ```
    /// let builder = backflow::Pipeline::<u8>::builder()
    ///     .stage("widen", || |x: u8| u32::from(x))
    ///     .stage("square", || |x: u32| x * x);
    /// # drop(builder);
    /// ```
    pub fn stage<S, F>(self, name: impl Into<String>, factory: F) -> Builder<In, Out, S::Out>
    where
        F: Fn() -> S + Send + Sync + 'static,
        S: Stage<Out> + 'static,
        S::Out: Send + 'static,
    {
        let index = self.stages.len();
        let factory = Arc::new(factory);
        let previous = self.attach;
        let attach: Attach<In, S::Out> = Box::new(move |downstream, wiring| {
            let link = attach_stage(index, &factory, downstream, wiring);
            previous(Downstream::Link(link), wiring)
        });
        let mut stages = self.stages;
        stages.push(StageSettings::new(name.into()));
        Builder { settings: self.settings, stages, attach, _last: PhantomData }
    }

    fn last(&mut self) -> &mut StageSettings {
        self.stages.last_mut().expect("a builder always has a stage")
    }

    /// Worker threads for this stage (default 1). Workers share the stage's queue; each has
    /// its own stage value from the factory.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::num::NonZeroUsize;
    /// let builder = backflow::Pipeline::<u8>::builder()
    ///     .stage("slow", || |x: u8| x)
    ///     .workers(NonZeroUsize::new(4).unwrap());
    /// # drop(builder);
    /// ```
    pub fn workers(mut self, workers: NonZeroUsize) -> Self {
        self.last().workers = workers;
        self
    }

    /// The capacity of this stage's input queue (default [`DEFAULT_CAPACITY`]). Allocated once,
    /// when the pipeline is built.
    ///
    /// # Examples
    ///
    /// ```
    /// let builder = backflow::Pipeline::<u8>::builder().stage("id", || |x: u8| x).capacity(64);
    /// # drop(builder);
    /// ```
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.last().capacity = capacity;
        self
    }

    /// Water marks as percentages of the capacity (default 80 % / 40 %): pressure turns on at
    /// `high` and off at `low`.
    ///
    /// # Examples
    ///
    /// ```
    /// let builder = backflow::Pipeline::<u8>::builder().stage("id", || |x: u8| x).water_marks(90, 10);
    /// # drop(builder);
    /// ```
    pub fn water_marks(mut self, high_percent: u8, low_percent: u8) -> Self {
        self.last().marks = Marks::Percent { high: high_percent, low: low_percent };
        self
    }

    /// Water marks as item counts.
    ///
    /// # Examples
    ///
    /// ```
    /// let builder = backflow::Pipeline::<u8>::builder()
    ///     .stage("id", || |x: u8| x)
    ///     .capacity(10)
    ///     .water_mark_counts(8, 2);
    /// # drop(builder);
    /// ```
    pub fn water_mark_counts(mut self, high: usize, low: usize) -> Self {
        self.last().marks = Marks::Counts { high, low };
        self
    }

    /// What a push into this stage's full queue does (default [`Overflow::Block`]).
    /// [`Overflow::Fail`] is only allowed on the first stage.
    ///
    /// # Examples
    ///
    /// ```
    /// # use backflow::Overflow;
    /// let builder = backflow::Pipeline::<u8>::builder()
    ///     .stage("id", || |x: u8| x)
    ///     .overflow(Overflow::DropNewest);
    /// # drop(builder);
    /// ```
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.last().overflow = overflow;
        self
    }

    /// Called with every item this stage drops (overflow) or abandons (cancel, shutdown), so
    /// it can be logged, counted or kept.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow::{Overflow, Pipeline};
    ///
    /// let builder = Pipeline::<u8>::builder()
    ///     .stage("id", || |x: u8| x)
    ///     .overflow(Overflow::DropOldest)
    ///     .on_drop(|dropped| eprintln!("{}: {} ({})", dropped.stage, dropped.item, dropped.reason));
    /// # drop(builder);
    /// ```
    pub fn on_drop<H>(mut self, hook: H) -> Self
    where
        H: Fn(Dropped<'_, Last>) + Send + Sync + 'static,
    {
        let hook: DropHook<Last> = Arc::new(hook);
        self.last().on_drop = Some(Box::new(hook));
        self
    }

    /// Ends the pipeline in a sink closure, called by the last stage's workers (one at a
    /// time) with every output.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut total = 0;
    /// let builder = backflow::Pipeline::<u8>::builder()
    ///     .stage("id", || |x: u8| x)
    ///     .sink(move |x| total += u32::from(x));
    /// # drop(builder);
    /// ```
    pub fn sink<F: FnMut(Out) + Send + 'static>(self, sink: F) -> WithSink<In, Last, Out> {
        WithSink { builder: self, sink: Box::new(sink), on_drop: None }
    }

    /// Ends the pipeline in an [`Output`] iterator, which `build()` returns with the pipeline.
    ///
    /// # Examples
    ///
    /// ```
    /// let builder = backflow::Pipeline::<u8>::builder().stage("id", || |x: u8| x).output();
    /// # drop(builder);
    /// ```
    pub fn output(self) -> WithOutput<In, Last, Out> {
        WithOutput { builder: self, on_drop: None }
    }

    /// Validates every setting and starts the threads, ending in `downstream`.
    fn start(
        self,
        sink: Arc<SinkShared>,
        control: Arc<Control>,
        downstream: impl FnOnce(&Wiring) -> Downstream<Out>,
    ) -> Result<Running<In>, ConfigError> {
        let mut names = HashSet::new();
        let stages = self
            .stages
            .into_iter()
            .enumerate()
            .map(|(index, stage)| stage.resolve(index, &mut names))
            .collect::<Result<Vec<_>, _>>()?;
        let start = control.started_at();
        let shared = stages
            .iter()
            .map(|s| Arc::new(StageShared::new(Arc::clone(&s.name), s.workers, start)));
        let mut wiring = Wiring {
            control: Arc::clone(&control),
            shared: shared.collect(),
            views: (0..stages.len()).map(|_| None).collect(),
            stages,
            threads: Vec::new(),
            spawn_error: None,
        };
        let downstream = downstream(&wiring);
        let input = (self.attach)(downstream, &mut wiring);
        let views = wiring.views.into_iter().map(|v| v.expect("every stage attached")).collect();
        let running = Running {
            control,
            input,
            stages: wiring.shared,
            views,
            sink,
            output: None,
            threads: Mutex::new(wiring.threads),
        };
        match wiring.spawn_error {
            None => Ok(running),
            Some(error) => {
                running.stop();
                Err(error)
            }
        }
    }

    fn control(&self) -> Arc<Control> {
        Arc::new(Control::new(self.settings.strategy, self.settings.sample_every))
    }
}

impl<In, Last, Out> fmt::Debug for Builder<In, Last, Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.stages.iter().map(|s| s.name.as_str()).collect();
        f.debug_struct("Builder").field("stages", &names).finish_non_exhaustive()
    }
}

/// A pipeline definition that ends in a sink closure; `build()` starts it.
///
/// # Examples
///
/// ```
/// let pipeline = backflow::Pipeline::<u8>::builder().stage("id", || |x: u8| x).sink(|_| {}).build()?;
/// # Ok::<(), backflow::ConfigError>(())
/// ```
pub struct WithSink<In, Last, Out> {
    builder: Builder<In, Last, Out>,
    sink: Box<dyn FnMut(Out) + Send>,
    on_drop: Option<DropHook<Out>>,
}

impl<In: Send + 'static, Last: Send + 'static, Out: Send + 'static> WithSink<In, Last, Out> {
    /// Calls `hook` with every output that reaches the sink after a cancel and is therefore
    /// not delivered (stage `"sink"`, reason [`Abandoned`](crate::DropReason::Abandoned)).
    ///
    /// # Examples
    ///
    /// ```
    /// let builder = backflow::Pipeline::<u8>::builder()
    ///     .stage("id", || |x: u8| x)
    ///     .sink(|_| {})
    ///     .on_drop(|dropped| eprintln!("{} never reached the sink", dropped.item));
    /// # drop(builder);
    /// ```
    #[must_use]
    pub fn on_drop<H>(mut self, hook: H) -> Self
    where
        H: Fn(Dropped<'_, Out>) + Send + Sync + 'static,
    {
        self.on_drop = Some(Arc::new(hook));
        self
    }

    /// Validates every setting and starts the pipeline's threads.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the stage and field at fault; nothing is left running.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow::{ConfigError, Pipeline};
    ///
    /// let err = Pipeline::<u8>::builder()
    ///     .stage("a", || |x: u8| x)
    ///     .stage("a", || |x: u8| x)
    ///     .sink(|_| {})
    ///     .build()
    ///     .unwrap_err();
    /// assert_eq!(err, ConfigError::DuplicateName { stage: "a".into() });
    /// ```
    pub fn build(self) -> Result<Pipeline<In>, ConfigError> {
        let control = self.builder.control();
        let shared = Arc::new(SinkShared::new(control.started_at()));
        let sink = Arc::new(Sink {
            call: Mutex::new(self.sink),
            shared: Arc::clone(&shared),
            control: Arc::clone(&control),
            on_drop: self.on_drop,
        });
        let running = self.builder.start(shared, control, |_| Downstream::Sink(sink))?;
        Ok(Pipeline::new(running))
    }
}

impl<In, Last, Out> fmt::Debug for WithSink<In, Last, Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WithSink").field("builder", &self.builder).finish_non_exhaustive()
    }
}

/// A pipeline definition that ends in an [`Output`] iterator; `build()` starts it.
///
/// # Examples
///
/// ```
/// let (pipeline, output) = backflow::Pipeline::<u8>::builder().stage("id", || |x: u8| x).output().build()?;
/// # Ok::<(), backflow::ConfigError>(())
/// ```
pub struct WithOutput<In, Last, Out> {
    builder: Builder<In, Last, Out>,
    on_drop: Option<DropHook<Out>>,
}

impl<In: Send + 'static, Last: Send + 'static, Out: Send + 'static> WithOutput<In, Last, Out> {
    /// Calls `hook` with every output that is never yielded: left in the output's queue when
    /// the [`Output`] is dropped or the pipeline cancelled (stage `"sink"`, reason
    /// [`Abandoned`](crate::DropReason::Abandoned)).
    ///
    /// # Examples
    ///
    /// ```
    /// let builder = backflow::Pipeline::<u8>::builder()
    ///     .stage("id", || |x: u8| x)
    ///     .output()
    ///     .on_drop(|dropped| eprintln!("{} was never read", dropped.item));
    /// # drop(builder);
    /// ```
    #[must_use]
    pub fn on_drop<H>(mut self, hook: H) -> Self
    where
        H: Fn(Dropped<'_, Out>) + Send + Sync + 'static,
    {
        self.on_drop = Some(Arc::new(hook));
        self
    }

    /// Validates every setting and starts the pipeline's threads. The output's queue has the
    /// last stage's capacity and water marks, with `Block`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the stage and field at fault; nothing is left running.
    ///
    /// # Examples
    ///
    /// ```
    /// let (pipeline, output) = backflow::Pipeline::<u8>::builder().stage("id", || |x: u8| x).output().build()?;
    /// pipeline.input().push(4).unwrap();
    /// pipeline.drain().unwrap();
    /// assert_eq!(output.collect::<Vec<_>>(), [4]);
    /// # Ok::<(), backflow::ConfigError>(())
    /// ```
    pub fn build(self) -> Result<(Pipeline<In>, Output<Out>), ConfigError> {
        let control = self.builder.control();
        let shared = Arc::new(SinkShared::new(control.started_at()));
        let (mut link, on_drop) = (None, self.on_drop);
        let mut running = self.builder.start(Arc::clone(&shared), control, |wiring| {
            let last = wiring.stages.last().expect("a builder always has a stage");
            let output = Arc::new(Link::new(
                LinkSpec {
                    capacity: last.capacity,
                    marks: last.marks,
                    overflow: Overflow::Block,
                    upstream: last.workers,
                    single: last.workers == 1,
                    handles: false,
                    stage: "sink".into(),
                    counters: Arc::clone(&shared.counters),
                    on_drop,
                },
                Arc::clone(&wiring.control),
            ));
            link = Some(Arc::clone(&output));
            Downstream::Link(output)
        })?;
        let link = link.expect("start() builds the output link");
        running.output = Some(Arc::clone(&link) as Arc<dyn LinkView>);
        Ok((Pipeline::new(running), Output::new(link, shared)))
    }
}

impl<In, Last, Out> fmt::Debug for WithOutput<In, Last, Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WithOutput").field("builder", &self.builder).finish_non_exhaustive()
    }
}

/// Creates stage `index`'s input queue and starts its workers, which send to `downstream`.
fn attach_stage<In, S, F>(
    index: usize,
    factory: &Arc<F>,
    downstream: Downstream<S::Out>,
    wiring: &mut Wiring,
) -> Arc<Link<In>>
where
    In: Send + 'static,
    F: Fn() -> S + Send + Sync + 'static,
    S: Stage<In> + 'static,
    S::Out: Send + 'static,
{
    let upstream = if index == 0 { 0 } else { wiring.stages[index - 1].workers };
    let stage = &mut wiring.stages[index];
    let on_drop = stage.on_drop.take().map(|hook| {
        *hook.downcast::<DropHook<In>>().expect("on_drop stores a hook for the stage's input type")
    });
    let link = Arc::new(Link::new(
        LinkSpec {
            capacity: stage.capacity,
            marks: stage.marks,
            overflow: stage.overflow,
            upstream,
            // The first link is fed by the input handles: any number of threads.
            single: index > 0 && upstream == 1 && stage.workers == 1,
            handles: index == 0,
            stage: Arc::clone(&stage.name),
            counters: Arc::clone(&wiring.shared[index].counters),
            on_drop,
        },
        Arc::clone(&wiring.control),
    ));
    wiring.views[index] = Some(Arc::clone(&link) as Arc<dyn LinkView>);
    for worker in 0..wiring.stages[index].workers {
        if wiring.spawn_error.is_some() {
            break;
        }
        let id = WorkerId { stage: Arc::clone(&wiring.stages[index].name), index: worker };
        let (factory, input, downstream) =
            (Arc::clone(factory), Arc::clone(&link), downstream.clone());
        let (shared, control) = (Arc::clone(&wiring.shared[index]), Arc::clone(&wiring.control));
        let spawned = thread::Builder::new().name(id.to_string()).spawn(move || {
            worker::run(&id, &*factory, &input, &downstream, &shared);
            control.worker_exited();
        });
        match spawned {
            Ok(handle) => wiring.threads.push(handle),
            Err(error) => {
                wiring.spawn_error = Some(ConfigError::Spawn {
                    stage: wiring.stages[index].name.to_string(),
                    worker,
                    message: error.to_string(),
                });
            }
        }
    }
    link
}
