//! `cargo xtask ci`: every check, in order. All steps run even after a failure, so one run
//! shows everything that is wrong; the exit code is non-zero if any failed.

use crate::redis::RedisServer;
use crate::step::{Step, cargo, execute, summarize};
use crate::{loom, miri, qemu};

/// Bare-metal targets the core must build for: Cortex-M4F, and Cortex-M0 (no compare-and-swap:
/// the SPSC ring works there, the MPMC ring is compiled out).
pub const NO_STD_TARGETS: [&str; 2] = ["thumbv7em-none-eabihf", "thumbv6m-none-eabi"];

pub fn run() -> Result<(), String> {
    // The server lives until the end of this function: the test step runs against it.
    let redis = RedisServer::start();
    let mut test = cargo(["test", "--workspace", "--all-features"]);
    match &redis {
        Ok(server) => {
            test.env("BACKFLOW_REDIS_URL", &server.url);
        }
        Err(message) => eprintln!("xtask: {message}; the redis tests will try to start their own"),
    }
    let mut steps = vec![
        Step { name: "fmt".into(), command: cargo(["fmt", "--all", "--", "--check"]) },
        Step {
            name: "clippy".into(),
            command: cargo([
                "clippy",
                "--workspace",
                "--all-targets",
                "--all-features",
                "--",
                "-D",
                "warnings",
            ]),
        },
        Step {
            name: "clippy-core".into(),
            command: cargo(["clippy", "-p", "backflow-core", "--", "-D", "warnings"]),
        },
        Step {
            name: "fmt bare-metal".into(),
            command: cargo([
                "fmt",
                "--manifest-path",
                "core/bare-metal/Cargo.toml",
                "--",
                "--check",
            ]),
        },
        Step {
            name: "clippy bare-metal".into(),
            command: cargo([
                "clippy",
                "--manifest-path",
                "core/bare-metal/Cargo.toml",
                "--target",
                "thumbv7m-none-eabi",
                "--",
                "-D",
                "warnings",
            ]),
        },
        Step { name: "test".into(), command: test },
        Step { name: "doc".into(), command: doc() },
    ];
    for target in NO_STD_TARGETS {
        for features in ["", "alloc"] {
            let mut command = cargo(["build", "-p", "backflow-core", "--target", target]);
            if !features.is_empty() {
                command.args(["--features", features]);
            }
            let name = format!("no_std {target} {features}").trim_end().to_string();
            steps.push(Step { name, command });
        }
    }
    steps.push(qemu::step());
    steps.push(loom::step());
    steps.push(miri::step());

    let outcomes: Vec<_> = steps.into_iter().map(execute).collect();
    if summarize(&outcomes) { Ok(()) } else { Err("some checks failed".to_string()) }
}

fn doc() -> std::process::Command {
    let mut command = cargo(["doc", "--workspace", "--no-deps", "--all-features"]);
    command.env("RUSTDOCFLAGS", "-D warnings");
    command
}
