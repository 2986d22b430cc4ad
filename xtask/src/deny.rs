//! The dependency policy step: `cargo deny check licenses bans sources` against the
//! workspace's `deny.toml` (licenses allowed, banned and duplicate crates, sources limited to
//! crates.io). Advisories are left out: their database is cloned from GitHub at check time,
//! which CI machines cannot be assumed to reach.

use crate::setup::Need;
use crate::step::{Step, cargo};

/// The cargo subcommand the step runs, installed by `cargo xtask setup`.
pub const TOOL: &str = "cargo-deny";

/// The checks run: everything `deny.toml` configures except advisories.
const CHECKS: [&str; 3] = ["licenses", "bans", "sources"];

/// `cargo deny check licenses bans sources`, from the workspace root.
pub fn step() -> Step {
    let mut command = cargo(["deny", "--all-features", "check"]);
    command.args(CHECKS);
    Step::new("deny", command, &[Need::CargoTool(TOOL)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_step_checks_everything_but_advisories_and_needs_cargo_deny() {
        let step = step();
        let args: Vec<_> =
            step.command.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(args, ["deny", "--all-features", "check", "licenses", "bans", "sources"]);
        assert!(!args.iter().any(|arg| arg == "advisories"));
        assert_eq!(step.needs, [Need::CargoTool(TOOL)]);
    }

    #[test]
    fn the_policy_file_is_at_the_root_and_limits_sources_to_crates_io() {
        let policy = std::fs::read_to_string(crate::step::root().join("deny.toml")).unwrap();
        assert!(policy.contains("unknown-registry = \"deny\""), "{policy}");
        assert!(policy.contains("unknown-git = \"deny\""), "{policy}");
    }
}
