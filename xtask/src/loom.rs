//! `cargo xtask loom`: the model checks, with loom's atomics, locks and threads swapped in:
//! the core's rings (`loom-tests/`) and the runtime's protocols (`std-runtime/src/models/`).

use crate::step::{Step, cargo};

/// Preemptions loom explores per execution in the rings' models. 2 already catches a Release
/// weakened to Relaxed; 3 still finishes in seconds for these models. The runtime's models
/// set their own bound (`std-runtime/src/models/mod.rs`).
const MAX_PREEMPTIONS: &str = "3";

pub fn step() -> Step {
    // One build for both: apart, their dependencies resolve to different features and build
    // twice (3.3 minutes from scratch on 2 cores, against 2).
    let mut command = cargo(["test", "--profile", "loom", "-p", "loom-tests", "-p", "backflow"]);
    command
        .args(["--lib", "--test", "rings", "--test", "weight"])
        // A separate target directory: `--cfg loom` rebuilds every crate.
        .args(["--target-dir", "target/loom"])
        // Of the runtime's unit tests only the models run under loom; the others (in
        // `tests` modules) would touch loom's primitives outside a model. Each model prints
        // its count of executions and each negative control how it failed: `--nocapture`
        // after the same command shows them.
        .args(["--", "--skip", "tests::"])
        .env("RUSTFLAGS", "--cfg loom")
        .env("LOOM_MAX_PREEMPTIONS", MAX_PREEMPTIONS);
    Step::new("loom", command, &[])
}
