//! Model checks of backflow's lock-free rings, in `tests/`.
//!
//! They compile only with `RUSTFLAGS="--cfg loom"`, which swaps the core's atomics for loom's;
//! `cargo xtask loom` runs them with `LOOM_MAX_PREEMPTIONS=3` in the `loom` profile. The
//! runtime's own protocols (park/notify, drain, pressure, cancel, the ordered hand-off) are
//! modelled inside `backflow` itself, in `std-runtime/src/models/`, which reach its private
//! types.
#![forbid(unsafe_code)]
