//! `cargo xtask ci`: `setup`, then every check, in order. All steps run even after a failure,
//! so one run shows everything that is wrong; the exit code is non-zero if any failed. A step
//! that needs something setup could not install fails at once, saying how to install it.

use std::time::Instant;

use test_support::{REDIS_URL_VARIABLE, RedisServer};

use crate::setup::{self, Need};
use crate::step::{Outcome, Step, cargo, execute, summarize};
use crate::{deny, loom, miri, modules, qemu, release};

/// Bare-metal targets the core must build for: Cortex-M4F, and Cortex-M0 (no compare-and-swap:
/// the SPSC ring works there, the MPMC ring is compiled out).
pub const NO_STD_TARGETS: [&str; 2] = ["thumbv7em-none-eabihf", "thumbv6m-none-eabi"];

const RUSTFMT: Need = Need::Component("rustfmt");
const CLIPPY: Need = Need::Component("clippy");
/// `backflow-redis`'s tests run against a server started here, or start their own.
const REDIS: Need = Need::Program("redis-server");
/// `backflow`'s `/metrics` tests start a `prometheus` of their own and run `promtool`.
const PROMETHEUS: Need = Need::Program("prometheus");

pub fn run() -> Result<(), String> {
    println!("==> setup");
    let start = Instant::now();
    let missing = setup::provision();
    let setup = Outcome {
        name: "setup".into(),
        passed: missing.is_empty(),
        elapsed: start.elapsed(),
        note: (!missing.is_empty())
            .then(|| format!("could not install: {}", setup::list(&missing))),
    };

    // The server lives until the end of this function: the test step runs against it.
    let redis = if missing.contains(&REDIS) { None } else { Some(RedisServer::start()) };
    let mut test = cargo(["test", "--workspace", "--all-features"]);
    match &redis {
        Some(Ok(server)) => {
            println!("redis-server listening at {}", server.url());
            test.env(REDIS_URL_VARIABLE, server.url());
        }
        Some(Err(error)) => {
            eprintln!("xtask: {error}; the redis tests will try to start their own")
        }
        None => {}
    }
    let mut steps = vec![
        Step::new("fmt", cargo(["fmt", "--all", "--", "--check"]), &[RUSTFMT]),
        Step::new(
            "clippy",
            cargo([
                "clippy",
                "--workspace",
                "--all-targets",
                "--all-features",
                "--",
                "-D",
                "warnings",
            ]),
            &[CLIPPY],
        ),
        Step::new(
            "clippy-core",
            cargo(["clippy", "-p", "backflow-core", "--", "-D", "warnings"]),
            &[CLIPPY],
        ),
        Step::new(
            "fmt bare-metal",
            cargo(["fmt", "--manifest-path", "core/bare-metal/Cargo.toml", "--", "--check"]),
            &[RUSTFMT],
        ),
        Step::new(
            "clippy bare-metal",
            cargo([
                "clippy",
                "--manifest-path",
                "core/bare-metal/Cargo.toml",
                "--target",
                qemu::TARGET,
                "--",
                "-D",
                "warnings",
            ]),
            &[CLIPPY, Need::Target(qemu::TARGET)],
        ),
        modules::step(),
        Step::new("test", test, &[REDIS, PROMETHEUS]),
        Step::new("doc", doc(), &[]),
        deny::step(),
    ];
    for target in NO_STD_TARGETS {
        for features in ["", "alloc"] {
            let mut command = cargo(["build", "-p", "backflow-core", "--target", target]);
            if !features.is_empty() {
                command.args(["--features", features]);
            }
            let name = format!("no_std {target} {features}").trim_end().to_string();
            steps.push(Step::new(name, command, &[Need::Target(target)]));
        }
    }
    steps.push(release::msrv_step());
    steps.push(release::package_step());
    steps.push(qemu::step());
    steps.push(loom::step());
    steps.push(miri::step());

    let outcomes: Vec<_> = std::iter::once(setup)
        .chain(steps.into_iter().map(|step| execute(step, &missing)))
        .collect();
    if summarize(&outcomes) { Ok(()) } else { Err("some checks failed".to_string()) }
}

fn doc() -> std::process::Command {
    let mut command = cargo(["doc", "--workspace", "--no-deps", "--all-features"]);
    command.env("RUSTDOCFLAGS", "-D warnings");
    command
}
