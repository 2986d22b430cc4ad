//! `cargo xtask loom`: the model checks, with loom's atomics, locks and threads swapped in:
//! the core's rings (`loom-tests/`) and the runtime's protocols (`std-runtime/src/models/`).

use std::process::Command;

use crate::step::{Step, cargo};

/// Preemptions loom explores per execution in the rings' models. 2 already catches a Release
/// weakened to Relaxed; 3 still finishes in seconds for these models. The runtime's models
/// set their own bound (`std-runtime/src/models/mod.rs`).
const MAX_PREEMPTIONS: &str = "3";

pub fn steps() -> Vec<Step> {
    let rings = loom(["test", "--profile", "loom", "-p", "loom-tests"]);
    // Only the models: the runtime's other unit tests do not run under loom. Each model
    // prints its count of executions, each negative control how it failed (`-- --nocapture`
    // after the same command shows them).
    let mut runtime = loom(["test", "--profile", "loom", "-p", "backflow", "--lib"]);
    runtime.args(["--", "models::"]);
    vec![Step::new("loom rings", rings, &[]), Step::new("loom runtime", runtime, &[])]
}

fn loom<const N: usize>(args: [&str; N]) -> Command {
    let mut command = cargo(args);
    command
        // A separate target directory: `--cfg loom` rebuilds every crate.
        .args(["--target-dir", "target/loom"])
        .env("RUSTFLAGS", "--cfg loom")
        .env("LOOM_MAX_PREEMPTIONS", MAX_PREEMPTIONS);
    command
}
