//! [`Pipeline`]: a running pipeline and its lifecycle (drain, shutdown, cancel, drop).

use std::fmt;
use std::sync::{Arc, PoisonError, Weak};
use std::time::{Duration, Instant};

use crate::control::{Control, Culprit, Fatal, Wake, deadline_after};
use crate::error::{ConfigError, PipelineError, PushError};
use crate::event::Event;
use crate::input::Input;
use crate::link::{Handles, Link, LinkView};
use crate::plan::{Flow, Node, Supply, Watched};
use crate::route::FanCounts;
use crate::scale::{self, ScaleSetup, ScaledStage, Threads};
use crate::stats::Report;
use crate::stats::{Collector, FlowCheck, Graph, SinkShared, StageShared, StageSource, Stats};
use crate::sync::thread::{self, JoinHandle};
use crate::sync::{Mutex, Ordering};
use crate::watchdog;

/// The running parts of a pipeline.
pub(crate) struct Running<In> {
    pub(crate) control: Arc<Control>,
    pub(crate) input: Arc<Link<In>>,
    pub(crate) stages: Vec<Arc<StageShared>>,
    pub(crate) views: Vec<Arc<dyn LinkView>>,
    /// Every sink and its name, the main one first.
    pub(crate) sinks: Vec<(Arc<SinkShared>, Arc<str>)>,
    pub(crate) fans: Vec<Arc<FanCounts>>,
    pub(crate) flows: Vec<Flow>,
    pub(crate) watched: Vec<Watched>,
    /// The output handle's queue, if the pipeline ends in one.
    pub(crate) output: Option<Arc<dyn LinkView>>,
    /// Every worker thread: those started at launch and those the scaling controller adds.
    pub(crate) threads: Threads,
    pub(crate) watchdog: Mutex<Option<JoinHandle<()>>>,
    /// What the scaling controller needs, until it starts, if a stage has a workers range.
    pub(crate) scale: Option<ScaleSetup>,
    pub(crate) scaler: Mutex<Option<JoinHandle<()>>>,
}

impl<In> Running<In> {
    /// Takes no more items; the stages finish what they have, in order.
    fn close(&self) {
        if let Some(handles) = &self.input.handles {
            handles.closed.store(true, Ordering::SeqCst);
        }
        self.input.wake_all();
    }

    fn cancel(&self) {
        self.control.cancel();
        // Also here: before `Pipeline::start` registers the links with the control (a failed
        // spawn stops the threads already started), only this knows them.
        self.views.iter().chain(&self.output).for_each(|view| view.wake_all());
    }

    /// Joins every worker thread, and the watchdog and the scaling controller, which end
    /// with the last worker. The controller may add workers until then: the ones it added
    /// are joined after it.
    ///
    /// The thread this is called on, if it is one of them, is let go rather than joined: it
    /// cannot wait for itself (a pipeline ended from inside gets here on one of its own
    /// threads only when no thread could be started to end it, see [`ends_elsewhere`]).
    ///
    /// [`ends_elsewhere`]: Self::ends_elsewhere
    fn join(&self) {
        let take =
            || std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        let here = thread::current().id();
        // Workers catch every panic themselves (see `worker::run`); the watchdog's and the
        // controller's only user code is the event handler, whose panic ends just that thread.
        let join = |thread: JoinHandle<()>| {
            if thread.thread().id() != here {
                let _ = thread.join();
            }
        };
        loop {
            let threads = take();
            if threads.is_empty() {
                break;
            }
            threads.into_iter().for_each(join);
        }
        let watchdog = self.watchdog.lock().unwrap_or_else(PoisonError::into_inner).take();
        let scaler = self.scaler.lock().unwrap_or_else(PoisonError::into_inner).take();
        watchdog.into_iter().chain(scaler).for_each(join);
        // Workers the controller started after the last look (they have exited, or are about
        // to: the controller stops once every worker has).
        take().into_iter().for_each(join);
    }

    /// Whether ending the pipeline here would wait for this very thread: it is one of the
    /// pipeline's own (a worker running a stage, the sink or a hook; the watchdog or the
    /// scaling controller running the event handler), or a push into the pipeline is in
    /// progress on it (a drop hook or `push_iter`'s iterator ends the pipeline).
    fn ends_elsewhere(&self) -> bool {
        let here = thread::current().id();
        let ours = |thread: &JoinHandle<()>| thread.thread().id() == here;
        let threads = self.threads.lock().unwrap_or_else(PoisonError::into_inner);
        threads.iter().any(ours)
            || self.watchdog.lock().unwrap_or_else(PoisonError::into_inner).iter().any(ours)
            || self.scaler.lock().unwrap_or_else(PoisonError::into_inner).iter().any(ours)
            || self.input.handles.as_ref().is_some_and(Handles::pushing_here)
    }

    /// Ends the pipeline as `drain` (no `deadline`) and `shutdown` do: lets the workers finish
    /// until `deadline` and cancels it then, joins every thread, abandons what is left and
    /// returns the report.
    fn finish(&self, deadline: Option<Instant>) -> Result<Report, PipelineError> {
        let control = &self.control;
        if deadline.is_some() && !control.exit.park_until(|| control.all_exited(), deadline) {
            self.cancel();
        }
        self.join();
        self.sweep();
        self.report()
    }

    /// Cancels, joins and abandons whatever is left in the queues.
    pub(crate) fn stop(&self) {
        self.cancel();
        self.close();
        self.join();
        self.sweep();
    }

    /// Abandons what is left in the stages' queues (nothing, after a clean drain). Waits
    /// first for the pushes in progress to end (the handles are closed: no new one starts),
    /// so that nothing enters a queue after its final sweep.
    fn sweep(&self) {
        self.input.wait_for_pushes();
        self.sweep_queues();
    }

    /// Abandons what is left in the stages' queues now; and in the output handle's queue if
    /// the pipeline was cancelled (the handle then ends) or the handle is gone.
    fn sweep_queues(&self) {
        self.views.iter().for_each(|view| view.sweep());
        if let Some(view) = &self.output {
            if self.control.is_cancelled() { view.sweep() } else { view.sweep_orphaned() }
        }
    }

    /// What a snapshot reads.
    fn parts(&self) -> Parts<'_> {
        Parts {
            control: &self.control,
            stages: &self.stages,
            views: &self.views,
            sinks: &self.sinks,
            fans: &self.fans,
            flows: &self.flows,
        }
    }

    /// A snapshot; `exact` once every thread has been joined (see [`Collector::exact`]).
    fn stats(&self, exact: bool) -> Stats {
        self.parts().stats(exact)
    }
}

/// What a snapshot of the stats reads: a running pipeline's parts, or a watch's.
struct Parts<'a> {
    control: &'a Control,
    stages: &'a [Arc<StageShared>],
    views: &'a [Arc<dyn LinkView>],
    sinks: &'a [(Arc<SinkShared>, Arc<str>)],
    fans: &'a [Arc<FanCounts>],
    flows: &'a [Flow],
}

impl Parts<'_> {
    /// A snapshot; `exact` once every thread has been joined (see [`Collector::exact`]).
    fn stats(&self, exact: bool) -> Stats {
        let stages = self
            .stages
            .iter()
            .zip(self.views)
            .map(|(shared, view)| StageSource {
                shared,
                handle_received: view.handle_received(),
                queue_len: view.len(),
                queue_capacity: view.capacity(),
                bytes: view.bytes(),
                pressure: view.pressure(),
            })
            .collect();
        let mut stats = Collector {
            exact,
            now: Instant::now(),
            start: self.control.started_at(),
            stages,
            sinks: self.sinks.iter().map(|(shared, name)| (&**shared, &**name)).collect(),
        }
        .collect();
        let mut checks: Vec<FlowCheck> =
            self.flows.iter().map(|flow| self.check(flow, &stats)).collect();
        // Inside each fan: a broadcast sends everything both ways, a route one way each.
        checks.extend(self.fans.iter().enumerate().map(|(fan, counts)| FlowCheck {
            node: format!("fan #{fan} split"),
            received: counts.owed(),
            supplied: counts.main.get() + counts.side.get(),
        }));
        stats.set_flows(checks);
        let broadcast = self.fans.iter().map(|fan| fan.broadcast).collect();
        stats.set_graph(Arc::new(Graph::new(self.flows.to_vec(), broadcast)));
        stats
    }

    /// What `flow`'s node received against what its feeders sent it.
    fn check(&self, flow: &Flow, stats: &Stats) -> FlowCheck {
        let supplied = flow
            .from
            .iter()
            .map(|supply| match *supply {
                Supply::Stage(index) => stats.stages()[index].emitted_outputs,
                Supply::FanMain(fan) => self.fans[fan].main.get(),
                Supply::FanSide(fan) => self.fans[fan].side.get(),
            })
            .sum();
        let (node, received) = match flow.into {
            Node::Stage(index) => {
                let stage = &stats.stages()[index];
                (stage.name.clone(), stage.accounting.received)
            }
            Node::Sink(index) => {
                let sink = &stats.sinks()[index];
                (sink.name.clone(), sink.received)
            }
            Node::Fan(fan) => (format!("fan #{fan}"), self.fans[fan].input.get()),
        };
        FlowCheck { node, received, supplied }
    }
}

impl<In> Running<In> {
    /// The report after every thread has been joined.
    fn report(&self) -> Result<Report, PipelineError> {
        let report = Box::new(Report::new(self.stats(true)));
        self.control.emit(&Event::Drained { report: &report });
        if let Some(fatal) = self.control.fatal() {
            let Fatal { stage, message, culprit } = fatal;
            Err(match culprit {
                Culprit::Worker(worker) => {
                    PipelineError::WorkerPanicked { stage, worker, message, report }
                }
                Culprit::Stage => PipelineError::StageFailed { stage, error: message, report },
                Culprit::DropHook => PipelineError::DropHookPanicked { stage, message, report },
                Culprit::Weigh => PipelineError::WeighPanicked { stage, message, report },
            })
        } else if self.control.is_cancelled() {
            Err(PipelineError::Cancelled { report })
        } else {
            Ok(*report)
        }
    }
}

/// A running pipeline: stages on their own threads, linked by bounded queues, fed through
/// [`Input`] handles. Build one with [`Pipeline::builder`].
///
/// Every item pushed is accounted for: delivered, dropped by an overflow policy (counted,
/// with its reason, and handed to the stage's drop hook), errored, or abandoned when the
/// pipeline is cancelled. Dropping a running pipeline cancels it and joins its threads: no
/// thread outlives it. Dropped from inside itself (in its sink, a stage, a hook or the event
/// handler, or in a drop hook or `push_iter`'s iterator during a push into it), where it
/// cannot wait for the thread it is on, it is cancelled there and ends on a thread of its own
/// once that callback has returned ([`Watch::has_ended`]).
///
/// # Examples
///
/// ```
/// use std::num::NonZeroUsize;
/// use backflow::{Pipeline, stage};
///
/// let pipeline = Pipeline::<String>::builder()
///     .stage("parse", || stage::filter_map(|line: String| line.trim().parse::<u64>().ok()))
///     .stage("square", || |n: u64| n * n)
///     .workers(NonZeroUsize::new(2).unwrap())
///     .sink(|n| assert!(n <= 81))
///     .build()?;
/// let input = pipeline.input();
/// for line in ["1", "2", "oops", "9"] {
///     input.push(line.to_string())?;
/// }
/// let report = pipeline.drain()?;
/// assert_eq!(report.sink().delivered, 3);
/// assert!(report.is_balanced());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Pipeline<In> {
    running: Arc<Running<In>>,
    /// What its watches read.
    seen: Arc<Mutex<Seen>>,
    /// Ends the pipeline on a thread of its own (see [`end_elsewhere`]).
    elsewhere: EndElsewhere<In>,
    /// Set once the ending was handed to such a thread: the drop leaves it alone.
    handed_off: bool,
}

impl<In> Pipeline<In> {
    /// A pipeline whose workers have all started: starts the stall watchdog, if a stage
    /// asks for one, and the scaling controller, if a stage has a workers range, and
    /// announces the start.
    pub(crate) fn start(mut running: Running<In>) -> Result<Self, ConfigError>
    where
        In: Send + 'static,
    {
        let setup = running.scale.take();
        let r = &running;
        r.control.set_links(
            r.views
                .iter()
                .chain(&r.output)
                .map(|view| Arc::downgrade(view) as Weak<dyn Wake>)
                .collect(),
        );
        let refused = |running: &Running<In>, stage: &str, error: std::io::Error| {
            running.stop();
            ConfigError::Spawn { stage: stage.into(), worker: 0, message: error.to_string() }
        };
        match watchdog::start(&r.control, &r.watched, &r.stages, &r.views) {
            Ok(handle) => *r.watchdog.lock().unwrap_or_else(PoisonError::into_inner) = handle,
            Err(error) => return Err(refused(r, "watchdog", error)),
        }
        if let Some(ScaleSetup { scaling, hires, feeders }) = setup {
            let stages = r.stages.iter().zip(&r.views).zip(hires).zip(feeders);
            let stages = stages
                .map(|(((shared, view), hire), feeders)| ScaledStage {
                    shared: Arc::clone(shared),
                    view: Arc::clone(view),
                    feeders,
                    hire,
                })
                .collect();
            match scale::start(&r.control, scaling, stages, &r.threads) {
                Ok(handle) => {
                    *r.scaler.lock().unwrap_or_else(PoisonError::into_inner) = Some(handle)
                }
                Err(error) => return Err(refused(r, "scaler", error)),
            }
        }
        running.control.emit(&Event::Started { stages: running.stages.len() });
        let seen = Arc::new(Mutex::new(Seen::Live(Sources::of(&running))));
        Ok(Self { running: Arc::new(running), seen, elsewhere: end_elsewhere, handed_off: false })
    }

    /// A new handle for pushing items into the pipeline.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pipeline = backflow::Pipeline::<u8>::builder().stage("id", || |x: u8| x).sink(|_| {}).build()?;
    /// let input = pipeline.input();
    /// input.push(1)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn input(&self) -> Input<In> {
        Input::new(Arc::clone(&self.running.input))
    }

    /// A handle any thread may keep that tells whether this pipeline was cancelled (by
    /// [`cancel`](Self::cancel), a fail-fast stage, a panic, or a shutdown that ran out of
    /// time): after that, items still inside are being abandoned rather than processed. It
    /// also takes the pipeline's [`stats`](Watch::stats), while it runs and after it has
    /// ended: a metrics endpoint keeps one.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pipeline = backflow::Pipeline::<u8>::builder().stage("id", || |x: u8| x).sink(|_| {}).build()?;
    /// let watch = pipeline.watch();
    /// assert!(!watch.is_cancelled());
    /// pipeline.cancel();
    /// assert!(watch.is_cancelled());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn watch(&self) -> Watch {
        Watch { control: Arc::clone(&self.running.control), seen: Arc::clone(&self.seen) }
    }

    /// Lets the watches read `last()`, the final stats, instead of the running parts (once:
    /// the first ending counts).
    fn end(&self, last: impl FnOnce() -> Stats) {
        end(&self.seen, last);
    }

    /// Hands the rest of its ending to a thread of its own, when it was called where it
    /// cannot wait (see [`Running::ends_elsewhere`]): returns what `drain` or `shutdown`
    /// then return, the stats of the moment in its report.
    fn hand_off(&mut self, call: &'static str, deadline: Option<Instant>) -> PipelineError {
        let report = Box::new(Report::new(self.running.stats(false)));
        self.handed_off = (self.elsewhere)(&self.running, &self.seen, Ending::Drained { deadline });
        if !self.handed_off {
            // No thread to end it on: it stops at once, and the drop ends it as far as it can
            // from here.
            self.running.cancel();
        }
        PipelineError::CalledFromWithin { call, report }
    }

    /// A snapshot of every stage's statistics and the sink's.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pipeline = backflow::Pipeline::<u8>::builder().stage("id", || |x: u8| x).sink(|_| {}).build()?;
    /// println!("{}", pipeline.stats());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stats(&self) -> Stats {
        self.running.stats(false)
    }

    /// Closes the input (pushes now return [`PushError::Closed`]),
    /// lets every stage finish every item it holds, flushes each stage at the end of its
    /// stream, joins every thread and returns the final [`Report`].
    ///
    /// # Errors
    ///
    /// [`PipelineError::Cancelled`] if the pipeline was cancelled first,
    /// [`PipelineError::StageFailed`] if a fail-fast stage failed an item,
    /// [`PipelineError::WorkerPanicked`] if a worker died outside its stage (or the event
    /// handler panicked), [`PipelineError::DropHookPanicked`] if a drop hook panicked. Each
    /// carries the report. [`PipelineError::CalledFromWithin`] if called from inside the
    /// pipeline, which it cannot wait for: it then drains on a thread of its own.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pipeline = backflow::Pipeline::<u8>::builder().stage("id", || |x: u8| x).sink(|_| {}).build()?;
    /// pipeline.input().push(1)?;
    /// let report = pipeline.drain()?;
    /// assert_eq!(report.sink().delivered, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn drain(mut self) -> Result<Report, PipelineError> {
        self.running.close();
        if self.running.ends_elsewhere() {
            return Err(self.hand_off("drain", None));
        }
        let result = self.running.finish(None);
        self.end(|| final_stats(&result));
        result
    }

    /// Drains for at most `timeout`, then cancels: items not processed by then are counted as
    /// abandoned and handed to their stage's drop hook. Returns the report either way (unless
    /// a worker panicked). `Duration::MAX` (or any timeout past the end of time) drains
    /// without a deadline. The report is final: pushes still in progress are waited for (a
    /// cancelled push returns at once), and no push is accepted after it.
    ///
    /// # Errors
    ///
    /// [`PipelineError::WorkerPanicked`] if a worker died outside its stage;
    /// [`PipelineError::DropHookPanicked`] if a drop hook panicked;
    /// [`PipelineError::StageFailed`] if a fail-fast stage failed an item;
    /// [`PipelineError::Cancelled`] if [`cancel`](Self::cancel) was called before;
    /// [`PipelineError::CalledFromWithin`] if called from inside the pipeline, which it cannot
    /// wait for: it then shuts down on a thread of its own.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # let pipeline = backflow::Pipeline::<u8>::builder().stage("id", || |x: u8| x).sink(|_| {}).build()?;
    /// pipeline.input().push(1)?;
    /// let report = pipeline.shutdown(Duration::from_secs(5))?;
    /// assert_eq!(report.sink().delivered + report.abandoned(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn shutdown(mut self, timeout: Duration) -> Result<Report, PipelineError> {
        // A timeout past the end of time drains as long as `drain` does.
        let deadline = deadline_after(timeout);
        let was_cancelled = self.running.control.is_cancelled();
        self.running.close();
        if self.running.ends_elsewhere() {
            return Err(self.hand_off("shutdown", deadline));
        }
        let result = self.running.finish(deadline);
        self.end(|| final_stats(&result));
        match result {
            Err(PipelineError::Cancelled { report }) if !was_cancelled => Ok(*report),
            other => other,
        }
    }

    /// Stops the pipeline as soon as possible: workers stop at their next batch, blocked
    /// pushes return [`PushError::Cancelled`], and items still
    /// queued are abandoned when the pipeline is drained or dropped. Does not wait.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pipeline = backflow::Pipeline::<u8>::builder().stage("id", || |x: u8| x).sink(|_| {}).build()?;
    /// pipeline.cancel();
    /// assert!(pipeline.input().push(1).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cancel(&self) {
        self.running.cancel();
    }
}

/// The stats a drain or shutdown ended with.
fn final_stats(result: &Result<Report, PipelineError>) -> Stats {
    match result {
        Ok(report) => report.stats().clone(),
        Err(error) => error.report().stats().clone(),
    }
}

/// What a [`Watch`] reads.
enum Seen {
    /// The running pipeline's parts.
    Live(Sources),
    /// Its final stats, once it has ended.
    Ended(Box<Stats>),
}

/// A running pipeline's parts as a watch keeps them (see [`Parts`]; the control is the
/// watch's own).
struct Sources {
    stages: Vec<Arc<StageShared>>,
    views: Vec<Arc<dyn LinkView>>,
    sinks: Vec<(Arc<SinkShared>, Arc<str>)>,
    fans: Vec<Arc<FanCounts>>,
    flows: Vec<Flow>,
}

impl Sources {
    fn of<In>(running: &Running<In>) -> Self {
        Self {
            stages: running.stages.clone(),
            views: running.views.clone(),
            sinks: running.sinks.clone(),
            fans: running.fans.clone(),
            flows: running.flows.clone(),
        }
    }
}

/// Whether a pipeline was cancelled, and its stats, readable from any thread, while the
/// pipeline runs and after it has ended (see [`Pipeline::watch`]).
///
/// # Examples
///
/// ```
/// # let pipeline = backflow::Pipeline::<u8>::builder().stage("id", || |x: u8| x).sink(|_| {}).build()?;
/// let watch = pipeline.watch();
/// std::thread::spawn(move || assert!(!watch.is_cancelled())).join().unwrap();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Watch {
    control: Arc<Control>,
    seen: Arc<Mutex<Seen>>,
}

impl Watch {
    /// Whether the pipeline was cancelled. Once `true`, stays `true`.
    ///
    /// # Examples
    ///
    /// ```
    /// # let pipeline = backflow::Pipeline::<u8>::builder().stage("id", || |x: u8| x).sink(|_| {}).build()?;
    /// let watch = pipeline.watch();
    /// pipeline.drain()?;
    /// assert!(!watch.is_cancelled());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_cancelled(&self) -> bool {
        self.control.is_cancelled()
    }

    /// A snapshot of the pipeline's stats, as [`Pipeline::stats`] takes one, from any thread;
    /// once the pipeline has ended (drained, shut down or dropped), its final stats, as its
    /// report has them. It costs the pipeline what [`Pipeline::stats`] costs (it reads the
    /// counters), and keeps no queue alive after the pipeline.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow::Pipeline;
    ///
    /// let pipeline = Pipeline::<u8>::builder().stage("id", || |x: u8| x).sink(|_| {}).build()?;
    /// let watch = pipeline.watch();
    /// pipeline.input().push_iter([1, 2, 3])?;
    /// let live = std::thread::spawn(move || watch.stats()).join().unwrap();
    /// assert!(live.stage("id").unwrap().accounting.received <= 3);
    ///
    /// let watch = pipeline.watch();
    /// let report = pipeline.drain()?;
    /// assert_eq!(&watch.stats(), report.stats());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stats(&self) -> Stats {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        match &*seen {
            Seen::Live(sources) => Parts {
                control: &self.control,
                stages: &sources.stages,
                views: &sources.views,
                sinks: &sources.sinks,
                fans: &sources.fans,
                flows: &sources.flows,
            }
            .stats(false),
            Seen::Ended(stats) => Stats::clone(stats),
        }
    }
}

impl Watch {
    /// Whether the pipeline has ended (drained, shut down or dropped, and every thread of it
    /// joined): its [`stats`](Self::stats) are final from then on. A pipeline ended from
    /// inside (see [`PipelineError::CalledFromWithin`]) ends on a thread of its own a little
    /// later (or, should no thread start for that, where it was ended, without waiting for
    /// the thread it was ended on).
    ///
    /// # Examples
    ///
    /// ```
    /// # let pipeline = backflow::Pipeline::<u8>::builder().stage("id", || |x: u8| x).sink(|_| {}).build()?;
    /// let watch = pipeline.watch();
    /// assert!(!watch.has_ended());
    /// pipeline.drain()?;
    /// assert!(watch.has_ended());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn has_ended(&self) -> bool {
        matches!(*self.seen.lock().unwrap_or_else(PoisonError::into_inner), Seen::Ended(_))
    }
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch").field("cancelled", &self.is_cancelled()).finish()
    }
}

impl<In> Drop for Pipeline<In> {
    fn drop(&mut self) {
        if self.handed_off {
            return;
        }
        let running = &self.running;
        if !running.threads.lock().unwrap_or_else(PoisonError::into_inner).is_empty() {
            if !running.ends_elsewhere() {
                running.stop();
            } else {
                running.cancel();
                running.close();
                if (self.elsewhere)(running, &self.seen, Ending::Dropped) {
                    return;
                }
                // No thread to end it on: ended here as far as it can be, this thread let go
                // and a push in progress on it not waited for (what it puts in later is not
                // abandoned, and the stats may not be final).
                running.join();
                running.sweep_queues();
            }
        }
        // After a drain or shutdown, this keeps what those ended with.
        self.end(|| self.running.stats(true));
    }
}

/// [`end_elsewhere`] for a pipeline of `In`s, taken where `In: Send` is known (a drop cannot
/// ask for it).
type EndElsewhere<In> = fn(&Arc<Running<In>>, &Arc<Mutex<Seen>>, Ending) -> bool;

/// How a pipeline ended on a thread of its own ends.
#[derive(Debug, Clone, Copy)]
enum Ending {
    /// Dropped: cancelled already, nothing is announced.
    Dropped,
    /// Drained, or shut down with a deadline, then cancelled: it is announced and reported as
    /// `drain` and `shutdown` do.
    Drained { deadline: Option<Instant> },
}

/// Ends a pipeline whose drop, drain or shutdown was called where it cannot wait (see
/// [`Running::ends_elsewhere`]) on a thread of its own: waits for its workers to finish until
/// `deadline` (cancelling it then), joins every thread, abandons what is left and gives its
/// watches the final stats. Returns `false` if the thread could not be started.
fn end_elsewhere<In: Send + 'static>(
    running: &Arc<Running<In>>,
    seen: &Arc<Mutex<Seen>>,
    ending: Ending,
) -> bool {
    let (running, seen) = (Arc::clone(running), Arc::clone(seen));
    let end_it = move || match ending {
        Ending::Dropped => {
            running.stop();
            end(&seen, || running.stats(true));
        }
        Ending::Drained { deadline } => {
            let result = running.finish(deadline);
            end(&seen, || final_stats(&result));
        }
    };
    thread::Builder::new().name("backflow:end".into()).spawn(end_it).is_ok()
}

/// Lets the watches read `last()`, the final stats, instead of the running parts (once: the
/// first ending counts).
fn end(seen: &Arc<Mutex<Seen>>, last: impl FnOnce() -> Stats) {
    // Without a watch, none can come: the pipeline is ending, owned by the caller.
    if Arc::strong_count(seen) == 1 {
        return;
    }
    let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
    if let Seen::Live(_) = *seen {
        // The running parts go: the queues, and the hooks they hold, live no longer than
        // the pipeline.
        *seen = Seen::Ended(Box::new(last()));
    }
}

impl<In> fmt::Debug for Pipeline<In> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.running.stages.iter().map(|s| &*s.name).collect();
        let workers: usize = self.running.stages.iter().map(|s| s.workers.count()).sum();
        f.debug_struct("Pipeline")
            .field("stages", &names)
            .field("workers", &workers)
            .finish_non_exhaustive()
    }
}

/// Runs an ETL-style job: pushes every item of `items` into `pipeline` from this thread,
/// then drains it and returns the report.
///
/// Under [`Overflow::Fail`](crate::Overflow::Fail) a refused item is pushed again once there
/// is room (a job reading an iterator has nobody to hand it back to). If the pipeline stops
/// taking items (cancelled, or a fail-fast stage failed), the rest of `items` is not read and
/// the error from draining says why.
///
/// # Errors
///
/// Those of [`Pipeline::drain`].
///
/// # Examples
///
/// ```
/// use backflow::{Pipeline, stage};
///
/// let pipeline = Pipeline::<&str>::builder()
///     .stage("parse", || stage::filter_map(|s: &str| s.parse::<u32>().ok()))
///     .sink(|_| {})
///     .build()?;
/// let report = backflow::run(["1", "2", "x"], pipeline)?;
/// assert_eq!(report.sink().delivered, 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn run<In: Send + 'static>(
    items: impl IntoIterator<Item = In>,
    pipeline: Pipeline<In>,
) -> Result<Report, PipelineError> {
    let input = pipeline.input();
    for item in items {
        let mut item = item;
        loop {
            match input.push(item) {
                Ok(()) => break,
                Err(PushError::Full(back)) => {
                    item = back;
                    thread::yield_now();
                }
                Err(_) => return pipeline.drain(),
            }
        }
    }
    drop(input);
    pipeline.drain()
}
