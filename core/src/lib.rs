//! The `no_std` core of backflow: everything a bounded, backpressure-aware pipeline must get
//! exactly right, with no heap and no operating system.
//!
//! - [`ring`]: fixed-capacity lock-free rings, SPSC ([`ring::spsc`]) and MPMC
//!   ([`ring::mpmc`]), with capacity fixed at compile time (usable in a `static`) or over a
//!   buffer chosen at run time. A full ring hands the item back; nothing is lost silently.
//! - [`water_marks`]: high/low marks and the [`Pressure`] state machine (hysteresis).
//! - [`overflow`]: what a push does when the queue is full ([`Overflow`]), as one function
//!   whose every outcome accounts for the item.
//! - [`weight_budget`]: a queue bounded by the total weight of its items as well as their
//!   number ([`WeightBudget`]), and the shared count that applies it.
//! - [`stage`]: the [`Stage`] trait, combinators and fusion (`a.then(b)`, `a >> b`).
//! - [`metrics`]: lock-free counters and a log-linear latency histogram (64-bit targets).
//! - [`driver`]: a cooperative single-threaded loop that runs stages over rings (bare metal).
//! - State machines with time passed in, so they need no clock: [`CircuitBreaker`],
//!   [`TokenBucket`], [`RetrySchedule`], and [`ReorderWindow`] for re-sequencing; and
//!   [`Scaler`], which moves workers within a thread budget to the stage that limits a
//!   pipeline, one interval's measurements at a time.
//!
//! Every constructor that takes user input returns a [`ConfigError`] naming the field instead
//! of panicking.
//!
//! Firmware uses this crate directly; the std runtime (crate `backflow`) builds threads,
//! worker pools and stats on top of it.
//!
//! # Features
//!
//! - `alloc` (off by default): heap-backed rings (`HeapRing`) and SPSC halves that share
//!   ownership of their ring through `Arc` ([`ring::spsc::Ring::into_split`]).
//!
//! # Examples
//!
//! ```
//! use backflow_core::ring::spsc::ArrayRing;
//!
//! let mut ring = ArrayRing::<u32, 8>::new();
//! let (mut tx, mut rx) = ring.split();
//! tx.try_push(42).unwrap();
//! assert_eq!(rx.try_pop(), Ok(42));
//! ```
// docs.rs (`--cfg docsrs`, nightly) badges each feature-gated item with its feature.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![no_std]
#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

#[cfg(feature = "alloc")]
extern crate alloc;

// The rings are the only place `unsafe` is allowed; every block there carries a `SAFETY:`
// comment and is covered by loom (loom-tests/) and miri (`cargo xtask miri`).
#[allow(unsafe_code)]
pub mod ring;

pub mod breaker;
pub mod driver;
mod error;
#[cfg(target_has_atomic = "64")]
pub mod metrics;
pub mod overflow;
pub mod reorder;
pub mod retry;
pub mod scaler;
pub mod stage;
mod sync;
pub mod token_bucket;
pub mod water_marks;
pub mod weight_budget;

pub use breaker::CircuitBreaker;
pub use error::ConfigError;
pub use overflow::Overflow;
pub use reorder::ReorderWindow;
pub use retry::RetrySchedule;
pub use scaler::Scaler;
pub use stage::Stage;
pub use token_bucket::TokenBucket;
pub use water_marks::{Pressure, WaterMarks};
pub use weight_budget::WeightBudget;
