//! `cargo xtask miri`: the core's tests (unit, integration, doc) under miri on nightly.

use std::process::Command;

use crate::setup::Need;
use crate::step::{Step, root};

pub fn step() -> Step {
    let mut command = cargo_nightly(["miri", "test", "-p", "backflow-core", "--features", "alloc"]);
    command
        .args(["--target-dir", "target/miri"])
        // Proptest reads the working directory to find its regression files.
        .env("MIRIFLAGS", "-Zmiri-disable-isolation");
    Step::new("miri", command, &[Need::Miri])
}

/// `cargo +nightly <args>` from the workspace root.
pub fn cargo_nightly<const N: usize>(args: [&str; N]) -> Command {
    // `+nightly` needs the rustup proxy, so this is `cargo` from PATH, not `$CARGO`.
    let mut command = Command::new("cargo");
    command.arg("+nightly").args(args).current_dir(root()).env_remove("RUSTUP_TOOLCHAIN");
    command
}
