//! The workspace README's examples, compiled and run as doc tests (`cargo test -p
//! backflow-readme --doc`, part of `cargo xtask ci`'s test step). Nothing else lives here.
#![forbid(unsafe_code)]

/// The README, whose Rust snippets are this crate's doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
