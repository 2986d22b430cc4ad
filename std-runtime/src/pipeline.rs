//! [`Pipeline`]: a running pipeline and its lifecycle (drain, shutdown, cancel, drop).

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::builder::Source;
use crate::control::Control;
use crate::input::Input;
use crate::link::Link;
use crate::stats::{Collector, SinkShared, StageShared, StageSource, Stats};
use crate::{PipelineError, Report};

/// What the pipeline needs to see of a link, whatever its item type.
pub(crate) trait LinkView: Send + Sync {
    fn len(&self) -> usize;
    fn capacity(&self) -> usize;
    fn pressure(&self) -> (bool, u64);
    fn wake_all(&self);
    fn sweep(&self);
    /// Sweeps only if the consumer is gone (a dropped output handle).
    fn sweep_orphaned(&self);
    fn handle_received(&self) -> u64;
}

impl<T: Send> LinkView for Link<T> {
    fn len(&self) -> usize {
        Link::len(self)
    }

    fn capacity(&self) -> usize {
        Link::capacity(self)
    }

    fn pressure(&self) -> (bool, u64) {
        Link::pressure(self)
    }

    fn wake_all(&self) {
        Link::wake_all(self);
    }

    fn sweep(&self) {
        Link::sweep(self);
    }

    fn sweep_orphaned(&self) {
        if self.is_orphaned() {
            Link::sweep(self);
        }
    }

    fn handle_received(&self) -> u64 {
        self.handles.as_ref().map_or(0, crate::link::Handles::received)
    }
}

/// The running parts of a pipeline.
pub(crate) struct Running<In> {
    pub(crate) control: Arc<Control>,
    pub(crate) input: Arc<Link<In>>,
    pub(crate) stages: Vec<Arc<StageShared>>,
    pub(crate) views: Vec<Arc<dyn LinkView>>,
    pub(crate) sink: Arc<SinkShared>,
    /// The output handle's queue, if the pipeline ends in one.
    pub(crate) output: Option<Arc<dyn LinkView>>,
    pub(crate) threads: Mutex<Vec<JoinHandle<()>>>,
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
        self.views.iter().chain(&self.output).for_each(|view| view.wake_all());
    }

    /// Joins every worker thread.
    fn join(&self) {
        let threads =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for thread in threads {
            // Workers catch every panic themselves (see `worker::run`).
            let _ = thread.join();
        }
    }

    /// Cancels, joins and abandons whatever is left in the queues.
    pub(crate) fn stop(&self) {
        self.cancel();
        self.join();
        self.sweep();
    }

    /// Abandons what is left in the stages' queues (nothing, after a clean drain).
    fn sweep(&self) {
        self.views.iter().for_each(|view| view.sweep());
        self.output.iter().for_each(|view| view.sweep_orphaned());
    }

    fn stats(&self) -> Stats {
        let stages = self
            .stages
            .iter()
            .zip(&self.views)
            .map(|(shared, view)| StageSource {
                shared,
                handle_received: view.handle_received(),
                queue_len: view.len(),
                queue_capacity: view.capacity(),
                pressure: view.pressure(),
            })
            .collect();
        Collector {
            now: Instant::now(),
            start: self.control.started_at(),
            stages,
            sink: &self.sink,
        }
        .collect()
    }

    /// The report after every thread has been joined.
    fn report(&self) -> Result<Report, PipelineError> {
        let report = Box::new(Report::new(self.stats()));
        if let Some(fatal) = self.control.fatal() {
            Err(PipelineError::WorkerPanicked {
                stage: fatal.stage,
                worker: fatal.worker,
                message: fatal.message,
                report,
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
/// thread outlives it.
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
    running: Running<In>,
    workers: usize,
}

impl<In: Send + 'static> Pipeline<In> {
    /// Starts a pipeline definition that takes `In` items.
    ///
    /// # Examples
    ///
    /// ```
    /// let pipeline = backflow::Pipeline::<u8>::builder().stage("id", || |x: u8| x).sink(|_| {}).build()?;
    /// # Ok::<(), backflow::ConfigError>(())
    /// ```
    pub fn builder() -> Source<In> {
        Source::new()
    }
}

impl<In> Pipeline<In> {
    pub(crate) fn new(running: Running<In>) -> Self {
        let workers = running.threads.lock().unwrap_or_else(PoisonError::into_inner).len();
        Self { running, workers }
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
        self.running.stats()
    }

    /// Closes the input (pushes now return [`PushError::Closed`](crate::PushError::Closed)),
    /// lets every stage finish every item it holds, flushes each stage at the end of its
    /// stream, joins every thread and returns the final [`Report`].
    ///
    /// # Errors
    ///
    /// [`PipelineError::Cancelled`] if the pipeline was cancelled first,
    /// [`PipelineError::WorkerPanicked`] if a worker died outside its stage. Either carries
    /// the report.
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
    pub fn drain(self) -> Result<Report, PipelineError> {
        self.running.close();
        self.running.join();
        self.running.sweep();
        self.running.report()
    }

    /// Drains for at most `timeout`, then cancels: items not processed by then are counted as
    /// abandoned and handed to their stage's drop hook. Returns the report either way (unless
    /// a worker panicked).
    ///
    /// # Errors
    ///
    /// [`PipelineError::WorkerPanicked`] if a worker died outside its stage;
    /// [`PipelineError::Cancelled`] if [`cancel`](Self::cancel) was called before.
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
    pub fn shutdown(self, timeout: Duration) -> Result<Report, PipelineError> {
        let deadline = Instant::now() + timeout;
        let was_cancelled = self.running.control.is_cancelled();
        self.running.close();
        let control = &self.running.control;
        let all_exited = || control.exited() == self.workers;
        let finished = control.exit.park_until(all_exited, Some(deadline));
        if !finished {
            self.running.cancel();
        }
        self.running.join();
        self.running.sweep();
        match self.running.report() {
            Err(PipelineError::Cancelled { report }) if !was_cancelled => Ok(*report),
            other => other,
        }
    }

    /// Stops the pipeline as soon as possible: workers stop at their next batch, blocked
    /// pushes return [`PushError::Cancelled`](crate::PushError::Cancelled), and items still
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

impl<In> Drop for Pipeline<In> {
    fn drop(&mut self) {
        let running = &self.running;
        if !running.threads.lock().unwrap_or_else(PoisonError::into_inner).is_empty() {
            running.stop();
        }
    }
}

impl<In> fmt::Debug for Pipeline<In> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.running.stages.iter().map(|s| &*s.name).collect();
        f.debug_struct("Pipeline")
            .field("stages", &names)
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}
