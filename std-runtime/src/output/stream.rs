//! Reading the output from async code: [`Output`] is a [`Stream`], and [`Output::recv`] its
//! next item as a future. A reading task waits on the same wait signal of the output's queue
//! that a blocked reader parks on.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::{FusedStream, Stream};

use super::Output;

/// The pipeline's outputs as a stream: the next item, waiting for it as a task, and `None`
/// once the pipeline has drained (or was cancelled) and every output was taken, as the
/// iterator does.
///
/// With both `Iterator` and a `StreamExt` in scope, `output.next()` is ambiguous: call
/// [`Output::recv`], or `StreamExt::next(&mut output)`.
///
/// # Examples
///
/// ```
/// use futures::StreamExt;
/// use backflow::Pipeline;
///
/// # futures::executor::block_on(async {
/// let (pipeline, output) = Pipeline::<u32>::builder().stage("double", || |x: u32| x * 2).output().build()?;
/// let mut input = pipeline.input();
/// for x in 1..=3 {
///     input.send(x).await?;
/// }
/// drop(input);
/// std::thread::spawn(move || pipeline.drain());
/// let doubled: Vec<u32> = StreamExt::collect(output).await;
/// assert_eq!(doubled, [2, 4, 6]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
impl<Out> Stream for Output<Out> {
    type Item = Out;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Out>> {
        let this = self.get_mut();
        loop {
            if let Some(envelope) = this.link.try_pop() {
                return Poll::Ready(Some(this.deliver(envelope)));
            }
            if this.link.is_over() {
                return Poll::Ready(None);
            }
            if this.link.poll_items(cx, &mut this.waiting, true).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

impl<Out> FusedStream for Output<Out> {
    fn is_terminated(&self) -> bool {
        self.link.is_over()
    }
}

impl<Out> Output<Out> {
    /// The next output, as a future: `None` once the pipeline has drained (or was cancelled)
    /// and every output was taken. Cancel safe: dropping the future takes no item.
    ///
    /// # Examples
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let (pipeline, mut output) = backflow::Pipeline::<u8>::builder().stage("id", || |x: u8| x).output().build()?;
    /// pipeline.input().send(7).await?;
    /// assert_eq!(output.recv().await, Some(7));
    /// # drop(output);
    /// # pipeline.cancel();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn recv(&mut self) -> Recv<'_, Out> {
        Recv { output: self }
    }
}

/// The future of [`Output::recv`].
///
/// # Examples
///
/// ```
/// use backflow::{Pipeline, Recv};
///
/// let (pipeline, mut output) = Pipeline::<u8>::builder().stage("id", || |x: u8| x).output().build()?;
/// pipeline.input().push(1)?;
/// let next: Recv<'_, u8> = output.recv();
/// assert_eq!(futures::executor::block_on(next), Some(1));
/// # drop(output);
/// # pipeline.cancel();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct Recv<'a, Out> {
    output: &'a mut Output<Out>,
}

impl<Out> Future for Recv<'_, Out> {
    type Output = Option<Out>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Out>> {
        Pin::new(&mut *self.get_mut().output).poll_next(cx)
    }
}

impl<Out> fmt::Debug for Recv<'_, Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recv").field("output", &self.output).finish()
    }
}
