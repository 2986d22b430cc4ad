//! Shapes beyond a straight line: fan-out to a branch (every item cloned, or routed by a
//! predicate), key routing to the workers of a key-ordered stage, and the ordered hand-off of
//! an `Ordered` stage's batches.

use std::collections::VecDeque;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::mem;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use backflow_core::ReorderWindow;
use backflow_core::metrics::Counter;

use crate::control::Wake;
use crate::hooks::KeyFn;
use crate::link::{Envelope, Link, LinkView};
use crate::worker::Downstream;

/// How a fan splits what it receives between the main line and the branch.
pub(crate) enum Split<T> {
    /// The branch gets a clone of every item.
    Broadcast(fn(&T) -> T),
    /// Items the predicate accepts go to the branch, the others stay on the main line.
    Route(Arc<dyn Fn(&T) -> bool + Send + Sync>),
}

/// What a fan has received and sent each way, for the report's flow check.
#[derive(Debug, Default)]
pub(crate) struct FanCounts {
    /// Whether the fan broadcasts (sends everything both ways) or routes.
    pub(crate) broadcast: bool,
    pub(crate) input: Counter,
    pub(crate) main: Counter,
    pub(crate) side: Counter,
    /// Items that went on along the main line alone because splitting them failed (a clone
    /// or the predicate panicked): a broadcast sent no copy of them to the branch.
    pub(crate) unsplit: Counter,
}

impl FanCounts {
    /// What the fan's two sides must have received between them: everything once for a
    /// route, everything twice for a broadcast (but once for what could not be copied).
    pub(crate) fn owed(&self) -> u64 {
        let input = self.input.get();
        if self.broadcast { (2 * input).saturating_sub(self.unsplit.get()) } else { input }
    }
}

/// A fan-out point: delivers each batch to the branch and to the main line.
pub(crate) struct Fan<T> {
    pub(crate) main: Downstream<T>,
    pub(crate) side: Downstream<T>,
    pub(crate) split: Split<T>,
    pub(crate) counts: Arc<FanCounts>,
}

impl<T> Fan<T> {
    /// Splits `batch` and delivers both parts, the branch's first: under `Block` the slower
    /// side holds the producer back.
    pub(crate) fn deliver(&self, batch: &mut VecDeque<Envelope<T>>) -> bool {
        let mut side = self.split(batch);
        let delivered = catch_unwind(AssertUnwindSafe(|| {
            let side_ok = side.is_empty() || self.side.deliver(&mut side);
            let main_ok = self.main.deliver(batch);
            side_ok && main_ok
        }));
        delivered.unwrap_or_else(|panic| {
            // A sink or a drop hook panicked: what either side has not taken is abandoned
            // there, so the caller finds nothing left (and does not split it again).
            abandon_quietly(&self.side, &mut side);
            abandon_quietly(&self.main, batch);
            resume_unwind(panic)
        })
    }

    /// Splits `batch` as a delivery would and abandons both parts where they would have gone.
    pub(crate) fn abandon(&self, batch: &mut VecDeque<Envelope<T>>) {
        match catch_unwind(AssertUnwindSafe(|| self.split(batch))) {
            Ok(mut side) => self.side.abandon(&mut side),
            Err(_) => {
                // The clone or the predicate panics (again, most likely: this is the clean-up
                // after a fatal panic): the main line takes the whole batch, unsplit.
                let n = batch.len() as u64;
                self.counts.input.add(n);
                self.counts.main.add(n);
                self.counts.unsplit.add(n);
            }
        }
        self.main.abandon(batch);
    }

    /// Takes out of `batch` (or copies) what goes to the branch, and counts both parts.
    fn split(&self, batch: &mut VecDeque<Envelope<T>>) -> VecDeque<Envelope<T>> {
        let mut side = VecDeque::new();
        let split = catch_unwind(AssertUnwindSafe(|| match &self.split {
            Split::Broadcast(clone) => side.extend(batch.iter().map(|e| Envelope {
                item: clone(&e.item),
                born: e.born,
                queued: e.queued,
            })),
            Split::Route(accepts) => {
                let mut i = 0;
                while i < batch.len() {
                    if accepts(&batch[i].item) {
                        side.extend(batch.remove(i));
                    } else {
                        i += 1;
                    }
                }
            }
        }));
        if let Err(panic) = split {
            // A clone or the predicate panicked: the batch goes back whole (clones made so
            // far are copies nobody counted), and the caller abandons it.
            if matches!(self.split, Split::Route(_)) {
                batch.extend(side.drain(..));
            }
            resume_unwind(panic);
        }
        let input = if self.counts.broadcast { batch.len() } else { batch.len() + side.len() };
        self.counts.input.add(input as u64);
        self.counts.side.add(side.len() as u64);
        self.counts.main.add(batch.len() as u64);
        side
    }

    pub(crate) fn upstream_done(&self) {
        self.side.upstream_done();
        self.main.upstream_done();
    }
}

/// Abandons `batch` downstream during the clean-up after a panic; a second panic (the same
/// hook again) is not raised over the first.
fn abandon_quietly<T>(downstream: &Downstream<T>, batch: &mut VecDeque<Envelope<T>>) {
    let _ = catch_unwind(AssertUnwindSafe(|| downstream.abandon(batch)));
    batch.clear();
}

/// The per-worker queues of a key-ordered stage: equal keys go to the same worker.
pub(crate) struct Keyed<T> {
    pub(crate) lanes: Vec<Arc<Link<T>>>,
    pub(crate) key: KeyFn<T>,
}

/// The lane for a key.
fn lane_of(key: u64, lanes: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() % lanes as u64) as usize
}

impl<T> Keyed<T> {
    pub(crate) fn deliver(&self, batch: &mut VecDeque<Envelope<T>>) -> bool {
        let mut parts: Vec<VecDeque<Envelope<T>>> =
            (0..self.lanes.len()).map(|_| VecDeque::new()).collect();
        let routed = catch_unwind(AssertUnwindSafe(|| {
            while let Some(envelope) = batch.front() {
                let lane = lane_of((self.key)(&envelope.item), self.lanes.len());
                parts[lane].extend(batch.pop_front());
            }
        }));
        if let Err(panic) = routed {
            // The key function panicked: put everything back for the caller to abandon.
            for part in &mut parts {
                batch.extend(part.drain(..));
            }
            resume_unwind(panic);
        }
        let delivered = catch_unwind(AssertUnwindSafe(|| {
            let mut ok = true;
            for (lane, part) in self.lanes.iter().zip(&mut parts) {
                if !part.is_empty() {
                    ok &= lane.deliver(part);
                }
            }
            ok
        }));
        delivered.unwrap_or_else(|panic| {
            // A drop hook panicked: the parts not delivered yet are abandoned in their lanes.
            for (lane, part) in self.lanes.iter().zip(&mut parts) {
                let _ = catch_unwind(AssertUnwindSafe(|| {
                    part.drain(..).for_each(|envelope| lane.abandon(envelope.item));
                }));
            }
            resume_unwind(panic)
        })
    }

    pub(crate) fn abandon(&self, batch: &mut VecDeque<Envelope<T>>) {
        batch.drain(..).for_each(|envelope| self.lanes[0].abandon(envelope.item));
    }

    pub(crate) fn upstream_done(&self) {
        self.lanes.iter().for_each(|lane| lane.upstream_done());
    }
}

/// A key-ordered stage's lanes seen as one queue, for stats and the lifecycle.
pub(crate) struct Lanes<T>(pub(crate) Vec<Arc<Link<T>>>);

impl<T: Send> Wake for Lanes<T> {
    fn wake_all(&self) {
        self.0.iter().for_each(|lane| lane.wake_all());
    }
}

impl<T: Send> LinkView for Lanes<T> {
    fn len(&self) -> usize {
        self.0.iter().map(|lane| lane.len()).sum()
    }

    fn capacity(&self) -> usize {
        self.0.iter().map(|lane| lane.capacity()).sum()
    }

    fn pressure(&self) -> (bool, u64) {
        self.0
            .iter()
            .map(|lane| lane.pressure())
            .fold((false, 0), |(on, n), (lane_on, lane_n)| (on || lane_on, n + lane_n))
    }

    fn sweep(&self) {
        self.0.iter().for_each(|lane| lane.sweep());
    }

    fn sweep_orphaned(&self) {}

    fn handle_received(&self) -> u64 {
        0
    }
}

/// Batches an `Ordered` stage may finish ahead of the oldest one still being processed.
pub(crate) const REORDER_WINDOW: usize = 16;

/// The hand-off of an `Ordered` stage: workers take batches in queue order under a lock, each
/// with a sequence number, and hand their outputs back through a [`ReorderWindow`], which
/// releases them downstream in sequence. A worker whose batch is further ahead than the
/// window waits for it to move: memory stays bounded.
pub(crate) struct Reorder<T> {
    /// The next batch's sequence number; its lock also makes taking a batch and numbering it
    /// one step.
    pub(crate) next_ticket: Mutex<u64>,
    window: Mutex<Window<T>>,
    moved: Condvar,
}

struct Window<T> {
    slots: Box<ReorderWindow<VecDeque<Envelope<T>>, REORDER_WINDOW>>,
    /// Emptied buffers, kept for reuse.
    spare: Vec<VecDeque<Envelope<T>>>,
    /// Set once a delivery stopped (cancel) or panicked: later batches are abandoned.
    stopped: bool,
}

/// How handing a batch's outputs over ended.
pub(crate) enum HandOver {
    Delivered,
    /// The pipeline stopped; the outputs were abandoned downstream.
    Stopped,
    /// A delivery panicked (the sink, a drop hook); re-raise it once accounted for.
    Panicked(Box<dyn std::any::Any + Send>),
}

impl<T> Reorder<T> {
    pub(crate) fn new() -> Self {
        Self {
            next_ticket: Mutex::new(0),
            window: Mutex::new(Window {
                slots: Box::new(ReorderWindow::new()),
                spare: Vec::new(),
                stopped: false,
            }),
            moved: Condvar::new(),
        }
    }

    /// Hands over the outputs of batch `ticket` (leaving `outputs` empty, with a spare
    /// buffer's capacity) and delivers every batch that is now due, in sequence.
    pub(crate) fn hand_over(
        &self,
        ticket: u64,
        outputs: &mut VecDeque<Envelope<T>>,
        downstream: &Downstream<T>,
        cancelled: impl Fn() -> bool,
    ) -> HandOver {
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        while !window.slots.fits(ticket) && !window.stopped && !cancelled() {
            window = self
                .moved
                .wait_timeout(window, Duration::from_millis(20))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let spare = window.spare.pop().unwrap_or_default();
        let mine = mem::replace(outputs, spare);
        if window.stopped || !window.slots.fits(ticket) {
            let mut mine = mine;
            downstream.abandon(&mut mine);
            return HandOver::Stopped;
        }
        if let Err(refused) = window.slots.accept(ticket, mine) {
            // Each ticket is handed over once; a refusal would be a bug, but lose nothing.
            downstream.abandon(&mut refused.into_inner());
            return HandOver::Stopped;
        }
        let mut result = HandOver::Delivered;
        while let Some((_, mut batch)) = window.slots.pop_ready() {
            if window.stopped {
                downstream.abandon(&mut batch);
            } else {
                match catch_unwind(AssertUnwindSafe(|| downstream.deliver(&mut batch))) {
                    Ok(true) => {}
                    Ok(false) => {
                        window.stopped = true;
                        result = HandOver::Stopped;
                    }
                    Err(panic) => {
                        window.stopped = true;
                        downstream.abandon(&mut batch);
                        result = HandOver::Panicked(panic);
                    }
                }
            }
            window.spare.push(batch);
        }
        drop(window);
        self.moved.notify_all();
        result
    }

    /// Stops the hand-off and abandons every batch held in the window, gaps and all: a
    /// worker that stops (cancel, a fatal panic) may leave its batch's turn unfilled.
    pub(crate) fn abandon_waiting(&self, downstream: &Downstream<T>) {
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        window.stopped = true;
        let next = window.slots.next_seq();
        for seq in next..next + REORDER_WINDOW as u64 {
            // Fill the gaps with empty batches; the held ones refuse as duplicates.
            let _ = window.slots.accept(seq, VecDeque::new());
        }
        while let Some((_, mut batch)) = window.slots.pop_ready() {
            downstream.abandon(&mut batch);
        }
        drop(window);
        self.moved.notify_all();
    }
}
