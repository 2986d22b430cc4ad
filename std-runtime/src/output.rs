//! [`Output`]: the end of a pipeline as a blocking iterator.

use std::fmt;
use std::sync::Arc;

use crate::link::{Envelope, Link};
use crate::stats::SinkShared;
use crate::wait::Registration;

#[cfg(feature = "async")]
mod stream;
#[cfg(feature = "async")]
pub use stream::Recv;

/// The pipeline's outputs, as a blocking iterator: `next()` waits for the next item and
/// returns `None` once the pipeline has drained and every output was taken, or once it was
/// cancelled (what its queue still holds when the cancelled pipeline ends is abandoned,
/// counted in the sink's stats and handed to the drop hook).
///
/// The last stage's queue into the output is bounded like any other, with `Block`: if nobody
/// reads the output, the pipeline fills up and its producers wait. Read it from another thread
/// than the one that calls `drain()`. Dropping it abandons what it still holds (counted in
/// the sink's stats) and lets the pipeline run on without it.
///
/// # Examples
///
/// ```
/// use backflow::Pipeline;
///
/// let (pipeline, output) = Pipeline::<u32>::builder()
///     .stage("double", || |x: u32| x * 2)
///     .output()
///     .build()?;
/// let reader = std::thread::spawn(move || output.sum::<u32>());
/// pipeline.input().push_iter(1..=3)?;
/// pipeline.drain()?;
/// assert_eq!(reader.join().unwrap(), 12);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Output<Out> {
    link: Arc<Link<Out>>,
    shared: Arc<SinkShared>,
    /// Its place among the queue's waiters, when read as a stream.
    waiting: Registration,
}

impl<Out> Output<Out> {
    pub(crate) fn new(link: Arc<Link<Out>>, shared: Arc<SinkShared>) -> Self {
        Self { link, shared, waiting: Registration::default() }
    }

    /// Counts an item handed out, and its end-to-end latency if it is sampled.
    fn deliver(&self, envelope: Envelope<Out>) -> Out {
        if envelope.born != 0 {
            let control = &self.link.control;
            self.shared.latency.record(control.now().saturating_sub(envelope.born));
        }
        self.shared.delivered.increment();
        envelope.item
    }
}

impl<Out> Iterator for Output<Out> {
    type Item = Out;

    fn next(&mut self) -> Option<Out> {
        let envelope = self.link.pop_blocking()?;
        Some(self.deliver(envelope))
    }
}

impl<Out> Drop for Output<Out> {
    fn drop(&mut self) {
        self.link.forget_items(&mut self.waiting);
        self.link.consumer_gone();
    }
}

impl<Out> fmt::Debug for Output<Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Output").field("queued", &self.link.len()).finish_non_exhaustive()
    }
}
