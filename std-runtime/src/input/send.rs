//! Pushing from async code: [`Input::send`] and [`Input::wait_for_room_async`] wait for room
//! as tasks, on the same wait signal of the first stage's queue that blocked producers park
//! on, so a task is woken by exactly what wakes a parked thread.

use std::fmt;
use std::future::Future;
use std::iter;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::Input;
use crate::error::PushError;
use crate::link::{Envelope, Link, Patience, PushFailure};
use crate::sync::Ordering;
use crate::wait::Registration;

impl<In> Input<In> {
    /// Pushes one item from async code: as [`push`](Self::push), but under `Block` the task
    /// waits for room without blocking its thread.
    ///
    /// The future borrows the handle mutably, so it is `Send` whenever the items are (a handle
    /// is not `Sync`): it can be awaited inside a spawned task. Give each task its own clone
    /// of the handle.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it completes never loses an item half-way: the item goes
    /// into the queue whole, within a single poll, or not at all. So if the future is dropped
    /// after it returned `Poll::Pending`, the item never entered the pipeline — it is not
    /// counted as received anywhere — and it is dropped with the future as the caller's
    /// value, like any unsent value of an abandoned `async` block. A future that completed
    /// with `Ok(())` has put its item in (counted as received by the first stage). To keep an
    /// item that may not go in, send a clone, or use [`wait_for_room_async`] followed by
    /// [`try_push`](Self::try_push), which hands the item back.
    ///
    /// [`wait_for_room_async`]: Self::wait_for_room_async
    ///
    /// # Errors
    ///
    /// The item back, as for [`push`](Self::push): [`PushError::Full`] under `Fail` when the
    /// queue is full, [`PushError::Closed`] after `drain()` (also when the drain starts while
    /// the task waits for room), [`PushError::Cancelled`] after `cancel()`.
    ///
    /// # Examples
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let pipeline = backflow::Pipeline::<u32>::builder().stage("id", || |x: u32| x).sink(|_| {}).build()?;
    /// let mut input = pipeline.input();
    /// for x in 0..100 {
    ///     input.send(x).await?;
    /// }
    /// assert_eq!(pipeline.drain()?.sink().delivered, 100);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn send(&mut self, item: In) -> SendFuture<'_, In> {
        let envelope = self.envelope(item);
        SendFuture { input: self, envelope: Some(envelope), waiting: Registration::default() }
    }

    /// Waits, as a task, for [`room`](Self::room) in the first stage's queue; returns the room
    /// then, or `0` once the pipeline no longer takes items. The async twin of
    /// [`wait_for_room`](Self::wait_for_room), without a timeout: wrap it in your runtime's
    /// timeout for one. The future owns what it needs (it does not borrow the handle).
    ///
    /// # Examples
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let pipeline = backflow::Pipeline::<u8>::builder().stage("id", || |x: u8| x).sink(|_| {}).build()?;
    /// let input = pipeline.input();
    /// assert!(input.wait_for_room_async().await > 0);
    /// pipeline.cancel();
    /// assert_eq!(input.wait_for_room_async().await, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn wait_for_room_async(&self) -> RoomFuture<In> {
        RoomFuture { link: Arc::clone(&self.link), waiting: Registration::default() }
    }
}

/// The future of [`Input::send`]: the item goes into the first stage's queue, or comes back
/// in the error. See [`Input::send`] for its cancel safety.
///
/// # Examples
///
/// ```
/// use backflow::{Pipeline, SendFuture};
///
/// let pipeline = Pipeline::<u8>::builder().stage("id", || |x: u8| x).sink(|_| {}).build()?;
/// let mut input = pipeline.input();
/// let sending: SendFuture<'_, u8> = input.send(1);
/// futures::executor::block_on(sending)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct SendFuture<'a, In> {
    input: &'a mut Input<In>,
    /// The item, until it is in the queue or handed back.
    envelope: Option<Envelope<In>>,
    waiting: Registration,
}

// The item is never pinned: the future only moves it into the queue or back out.
impl<In> Unpin for SendFuture<'_, In> {}

impl<In> Future for SendFuture<'_, In> {
    type Output = Result<(), PushError<In>>;

    /// # Panics
    ///
    /// When polled again after it completed.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let input = &*this.input;
        let link = &input.link;
        loop {
            let envelope = this.envelope.take().expect("`SendFuture` polled after it completed");
            // The push begins and ends within this poll: a drain never waits for a task that
            // is not being polled, and a dropped future holds nothing in the queue's books.
            let mut push = input.begin();
            if let Err(refuse) = input.refusal() {
                return Poll::Ready(Err(refuse(envelope.item)));
            }
            // Push if there is room, never wait here.
            let (received, result) = link.offer(iter::once(envelope), Patience::None);
            push.received = received;
            match result {
                Ok(()) => return Poll::Ready(Ok(())),
                Err((envelope, PushFailure::Full)) if link.blocks() => {
                    this.envelope = Some(envelope);
                }
                Err((envelope, why)) => return Poll::Ready(Err(why.into_error(envelope.item))),
            }
            drop(push);
            // Weighed by the push, if the queue has a byte budget.
            let weight = this.envelope.as_ref().map_or(0, |envelope| envelope.weight);
            if link.poll_room(cx, &mut this.waiting, weight).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

impl<In> Drop for SendFuture<'_, In> {
    fn drop(&mut self) {
        self.input.link.forget_room(&mut self.waiting);
    }
}

impl<In> fmt::Debug for SendFuture<'_, In> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendFuture").field("sent", &self.envelope.is_none()).finish_non_exhaustive()
    }
}

/// The future of [`Input::wait_for_room_async`].
///
/// # Examples
///
/// ```
/// use backflow::{Pipeline, RoomFuture};
///
/// let pipeline = Pipeline::<u8>::builder().stage("id", || |x: u8| x).capacity(8).sink(|_| {}).build()?;
/// let room: RoomFuture<u8> = pipeline.input().wait_for_room_async();
/// assert_eq!(futures::executor::block_on(room), 8);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct RoomFuture<In> {
    link: Arc<Link<In>>,
    waiting: Registration,
}

impl<In> Future for RoomFuture<In> {
    type Output = usize;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
        let this = self.get_mut();
        loop {
            let link = &this.link;
            let closed = link.handles.as_ref().is_some_and(|h| h.closed.load(Ordering::Relaxed));
            if closed || link.control.is_cancelled() || link.is_orphaned() {
                return Poll::Ready(0);
            }
            let room = link.room();
            if room > 0 {
                return Poll::Ready(room);
            }
            if link.poll_room(cx, &mut this.waiting, 0).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

impl<In> Drop for RoomFuture<In> {
    fn drop(&mut self) {
        self.link.forget_room(&mut self.waiting);
    }
}

impl<In> fmt::Debug for RoomFuture<In> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoomFuture").field("room", &self.link.room()).finish_non_exhaustive()
    }
}
