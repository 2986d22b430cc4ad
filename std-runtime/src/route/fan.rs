//! [`Fan`]: a branching point, which sends a copy of every item (broadcast) or the items a
//! predicate accepts (route) to a branch, and the rest on along the main line.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Arc;

use backflow_core::metrics::Counter;

use super::Downstream;
use crate::link::Envelope;

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
        if self.broadcast {
            input.saturating_mul(2).saturating_sub(self.unsplit.get())
        } else {
            input
        }
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
                weight: 0,
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

    pub(crate) fn upstream_added(&self) {
        self.side.upstream_added();
        self.main.upstream_added();
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
