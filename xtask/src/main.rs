//! backflow's task runner: `cargo xtask <task>` (alias in `.cargo/config.toml`).
//!
//! - `setup`: installs what the checks need and a fresh machine lacks (thumb targets, nightly
//!   with miri, `qemu-system-arm`, `redis-server`, `prometheus`, `cargo-deny`); quiet and
//!   quick when all is there.
//! - `ci`: `setup`, then every check, in order, with a pass/fail summary; exits non-zero on any
//!   failure. Starts a `redis-server` on loopback for the tests of `backflow-redis`, and stops
//!   it.
//! - `deny`: the dependency policy alone (`deny.toml`: licenses, bans, sources).
//! - `msrv`: each published crate built with the toolchain of its declared `rust-version`.
//! - `package`: every published crate packaged and its package built, as crates.io would.
//! - `modules`: the module graph of `std-runtime/src`, which must have no cycle, and its
//!   concurrency primitives, which must come from its `sync` module.
//! - `loom`: the loom model checks of the core's rings (`loom-tests/`) and of the runtime's
//!   protocols (`std-runtime/src/models/`).
//! - `miri`: the core's tests under miri (nightly).
//! - `qemu`: the Cortex-M demo in `core/bare-metal`, run under QEMU.
//! - `bench [--criterion]`: the same-run ring comparison table (or the criterion benches).
#![forbid(unsafe_code)]

mod bench;
mod ci;
mod deny;
mod loom;
mod miri;
mod modules;
mod qemu;
mod release;
mod setup;
mod step;

use std::process::ExitCode;

const USAGE: &str = "usage: cargo xtask <setup | ci | deny | msrv | package | modules | loom | miri | qemu | bench [--criterion]>";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup::run(),
        Some("ci") => ci::run(),
        Some("msrv") => release::msrv(),
        Some("package") => release::package(),
        Some("deny") => step::run_alone(deny::step()),
        Some("modules") => modules::run(),
        Some("loom") => step::run_alone(loom::step()),
        Some("miri") => step::run_alone(miri::step()),
        Some("qemu") => qemu::run(),
        Some("bench") => bench::run(args.iter().any(|a| a == "--criterion")),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}
