//! Bounded, backpressure-aware, multi-stage pipelines on threads.
//!
//! A [`Pipeline`] is a chain of named stages. Each stage has its own bounded input queue
//! (allocated once, when the pipeline is built) and one or more worker threads that share it;
//! each worker runs its own instance of the stage, made by the stage's factory, so stages keep
//! state without locks. Items go in through [`Input`] handles and come out in a sink closure or
//! an [`Output`] iterator.
//!
//! - **Backpressure.** When a queue reaches its high water mark, pressure turns on and, under
//!   the default [`Overflow::Block`], producers wait until it is back at the low mark. Other
//!   policies drop the oldest or the newest item, or fail the push.
//! - **Nothing lost silently.** Every item is delivered, dropped by a policy (counted with its
//!   reason and handed to the stage's drop hook), errored, or abandoned when the pipeline is
//!   cancelled. [`Accounting`] holds `received = emitted_inputs + dropped + errored +
//!   dead_lettered + abandoned + in_flight` for every stage, always.
//! - **Lifecycle.** [`Pipeline::drain`] finishes every item and joins every thread;
//!   [`Pipeline::shutdown`] drains until a deadline, then cancels; dropping a pipeline cancels
//!   it and joins its threads.
//! - **Stats.** [`Pipeline::stats`] reports per stage: counts, queue fill, pressure and its
//!   transitions, sampled processing time and queue wait, throughput; and end-to-end latency
//!   at the sink. `Display` renders a table.
//! - **Operating it.** A snapshot writes itself in the Prometheus text format
//!   ([`Stats::to_prometheus`](stats::Stats::to_prometheus)) and as the pipeline's graph for
//!   Graphviz ([`Stats::to_dot`](stats::Stats::to_dot)); with the `http` feature,
//!   `serve_metrics` serves one or more pipelines at `/metrics` for Prometheus to scrape.
//! - **Waiting.** Idle workers spin briefly, yield, then park until woken ([`WaitStrategy`]):
//!   an idle pipeline uses no CPU.
//!
//! The flow-control decisions themselves (water marks, overflow outcomes, the rings) live in
//! the `no_std` crate `backflow-core`, re-exported whole as [`backflow::core`](crate::core) and
//! in part at the root ([`stage`], [`Overflow`], [`WaterMarks`]).
//!
//! # Examples
//!
//! ```
//! use std::num::NonZeroUsize;
//! use backflow::{Overflow, Pipeline, stage};
//!
//! let pipeline = Pipeline::<&'static str>::builder()
//!     .stage("parse", || stage::filter_map(|s: &str| s.parse::<u32>().ok()))
//!     .capacity(256)
//!     .stage("square", || |n: u32| u64::from(n) * u64::from(n))
//!     .workers(NonZeroUsize::new(2).unwrap())
//!     .overflow(Overflow::Block)
//!     .sink(|n| println!("{n}"))
//!     .build()?;
//!
//! let input = pipeline.input();
//! for line in ["3", "x", "4"] {
//!     input.push(line)?;
//! }
//! let report = pipeline.drain()?;
//! assert_eq!(report.stage("parse").unwrap().accounting.received, 3);
//! assert_eq!(report.sink().delivered, 2);
//! assert!(report.is_balanced());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
// docs.rs (`--cfg docsrs`, nightly) badges each feature-gated item with its feature.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

mod announce;
mod batch;
pub mod builder;
mod control;
mod deferred;
mod error;
mod event;
mod hooks;
#[cfg(feature = "http")]
pub mod http;
mod input;
mod launch;
mod link;
// Loom models of the runtime's protocols (`cargo xtask loom`).
#[cfg(all(test, loom))]
mod models;
mod output;
mod panic;
mod pipeline;
mod plan;
mod policy;
mod route;
mod scale;
mod slots;
mod stages;
pub mod stats;
mod sync;
mod wait;
mod watchdog;
mod weight;
mod worker;
mod workers;

/// The `no_std` core: rings, water marks, overflow policies, stage traits.
///
/// # Examples
///
/// ```
/// use backflow::core::WaterMarks;
///
/// let marks = WaterMarks::for_capacity(10)?;
/// assert!(marks.low() < marks.high());
/// # Ok::<(), backflow::core::ConfigError>(())
/// ```
pub use backflow_core as core;
pub use backflow_core::{Overflow, Stage, WaterMarks};
pub use error::{ConfigError, PipelineError, PushError};
pub use event::Event;
pub use hooks::{DeadLetter, DropReason, Dropped, ErrorPolicy};
#[cfg(feature = "http")]
pub use http::{MetricsServer, ServeError, serve_metrics};
pub use input::Input;
#[cfg(feature = "async")]
pub use input::{RoomFuture, SendFuture};
pub use output::Output;
#[cfg(feature = "async")]
pub use output::Recv;
pub use pipeline::{Pipeline, Watch, run};
pub use stats::Report;
pub use wait::WaitStrategy;

// Kept at the root for existing code: the builder's state types live in [`builder`], the
// statistics types in [`stats`].
#[doc(hidden)]
pub use builder::{
    Branch, BranchEnd, Builder, DEFAULT_CAPACITY, DEFAULT_SAMPLE_EVERY, Side, Source, Trunk,
    WithOutput, WithSink,
};
#[doc(hidden)]
pub use stats::{Accounting, Bottleneck, Latency, SinkStats, StageStats, Stats, TimeShares};

/// Stages: the core's (map, filter, filter-map, flat-map, inspect, validate, fixed-size batch,
/// fold, …) and the runtime's own, which allocate (batches of a size chosen at run time,
/// flatten, keyed aggregates); and the batch size and panic message that adapters share with
/// the runtime ([`BATCH`](stage::BATCH), [`panic_message`](stage::panic_message)).
///
/// # Examples
///
/// ```
/// use backflow::stage::{self, Stage};
///
/// let mut out = Vec::new();
/// stage::map(|x: u8| x + 1).process(1, &mut |x| out.push(x)).unwrap();
/// assert_eq!(out, [2]);
/// ```
pub mod stage {
    pub use backflow_core::stage::*;

    pub use crate::batch::BATCH;
    pub use crate::deferred::{Deferred, after_outcome};
    pub use crate::panic::panic_message;
    pub use crate::stages::*;
}
