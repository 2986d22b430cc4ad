//! [`BATCH`]: how many items a worker moves at once.

/// The most items a worker pops from its queue, and the outputs it collects, before it touches
/// a shared queue again; input handles push iterators in chunks of this size too. Adapters
/// that feed or mirror a worker (a rayon stage's chunk, a Redis read) use it as their default.
///
/// # Examples
///
/// ```
/// assert_eq!(backflow::stage::BATCH, 128);
/// ```
// NB: one pop/push of the shared indices, one counter update and one wake-up check per batch
// instead of per item is what lets a 3-stage pipeline move tens of millions of items per
// second (benches/README.md, "Pipelines").
pub const BATCH: usize = 128;
