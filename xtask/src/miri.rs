//! `cargo xtask miri`: the core's tests (unit, integration, doc) under miri on nightly.

use std::process::Command;

use crate::step::{Step, root};

pub fn step() -> Step {
    // `+nightly` needs the rustup proxy, so this is `cargo` from PATH, not `$CARGO`.
    let mut command = Command::new("cargo");
    command
        .args(["+nightly", "miri", "test", "-p", "backflow-core", "--features", "alloc"])
        .args(["--target-dir", "target/miri"])
        .current_dir(root())
        .env_remove("RUSTUP_TOOLCHAIN")
        // Proptest reads the working directory to find its regression files.
        .env("MIRIFLAGS", "-Zmiri-disable-isolation");
    Step { name: "miri".into(), command }
}
