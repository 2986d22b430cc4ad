//! [`Keyed`]: key routing to the per-worker queues of a key-ordered stage, and those queues
//! seen as one ([`Lanes`]).

use std::collections::VecDeque;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Arc;

use crate::control::Wake;
use crate::hooks::KeyFn;
use crate::link::{Envelope, Link, LinkView};

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

    pub(crate) fn upstream_added(&self) {
        self.lanes.iter().for_each(|lane| lane.upstream_added());
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

    fn bytes(&self) -> Option<(usize, usize)> {
        let lanes = self.0.iter().filter_map(|lane| lane.bytes());
        lanes.reduce(|(used, limit), (u, l)| (used + u, limit.saturating_add(l)))
    }
}
