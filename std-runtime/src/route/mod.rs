//! Where a stage's outputs go ([`Downstream`]): the next stage's queue, a sink, a branching
//! point ([`fan`]), or the lanes of a key-ordered stage ([`keyed`]); and the ordered hand-off
//! of an `Ordered` stage's batches ([`reorder`]).

mod fan;
mod keyed;
mod reorder;
mod sink;

use std::collections::VecDeque;
use std::sync::Arc;

pub(crate) use fan::{Fan, FanCounts, Split};
pub(crate) use keyed::{Keyed, Lanes};
pub(crate) use reorder::{HandOver, Reorder};
pub(crate) use sink::{Sink, SinkCall};

use crate::link::{Envelope, Link};

/// Where a stage's outputs go.
pub(crate) enum Downstream<T> {
    /// The next stage's queue, or the output handle's.
    Link(Arc<Link<T>>),
    /// The sink closure, called by the last stage's workers.
    Sink(Arc<Sink<T>>),
    /// A branching point: part or a copy of every batch goes to a branch.
    Fan(Arc<Fan<T>>),
    /// A key-ordered stage's per-worker queues.
    Keyed(Arc<Keyed<T>>),
}

impl<T> Clone for Downstream<T> {
    fn clone(&self) -> Self {
        match self {
            Self::Link(link) => Self::Link(Arc::clone(link)),
            Self::Sink(sink) => Self::Sink(Arc::clone(sink)),
            Self::Fan(fan) => Self::Fan(Arc::clone(fan)),
            Self::Keyed(keyed) => Self::Keyed(Arc::clone(keyed)),
        }
    }
}

impl<T> Downstream<T> {
    /// Delivers a batch; `false` if the pipeline stopped and some items were abandoned.
    pub(crate) fn deliver(&self, batch: &mut VecDeque<Envelope<T>>) -> bool {
        match self {
            Self::Link(link) => link.deliver(batch),
            Self::Sink(sink) => sink.deliver(batch),
            Self::Fan(fan) => fan.deliver(batch),
            Self::Keyed(keyed) => keyed.deliver(batch),
        }
    }

    /// Receives and abandons outputs that will never be delivered (left behind by a panic).
    pub(crate) fn abandon(&self, batch: &mut VecDeque<Envelope<T>>) {
        match self {
            Self::Link(link) => batch.drain(..).for_each(|envelope| link.abandon(envelope.item)),
            Self::Sink(sink) => {
                sink.shared.counters.received.add(batch.len() as u64);
                sink.abandon(batch);
            }
            Self::Fan(fan) => fan.abandon(batch),
            Self::Keyed(keyed) => keyed.abandon(batch),
        }
    }

    /// One more worker will deliver here (added while the pipeline runs).
    pub(crate) fn upstream_added(&self) {
        match self {
            Self::Link(link) => link.upstream_added(),
            Self::Sink(_) => {}
            Self::Fan(fan) => fan.upstream_added(),
            Self::Keyed(keyed) => keyed.upstream_added(),
        }
    }

    /// This worker will deliver nothing more.
    pub(crate) fn upstream_done(&self) {
        match self {
            Self::Link(link) => link.upstream_done(),
            Self::Sink(_) => {}
            Self::Fan(fan) => fan.upstream_done(),
            Self::Keyed(keyed) => keyed.upstream_done(),
        }
    }
}
