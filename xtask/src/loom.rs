//! `cargo xtask loom`: the model checks in `loom-tests/`, with loom's atomics swapped in.

use crate::step::{Step, cargo};

/// Preemptions loom explores per execution. 2 already catches a Release weakened to Relaxed;
/// 3 still finishes in seconds for these models.
const MAX_PREEMPTIONS: &str = "3";

pub fn step() -> Step {
    let mut command = cargo(["test", "--profile", "loom", "-p", "loom-tests"]);
    command
        // A separate target directory: `--cfg loom` rebuilds every crate.
        .args(["--target-dir", "target/loom"])
        .env("RUSTFLAGS", "--cfg loom")
        .env("LOOM_MAX_PREEMPTIONS", MAX_PREEMPTIONS);
    Step::new("loom", command, &[])
}
