//! A check is a named command run from the workspace root; this module runs them and reports.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::setup::{self, Need};

/// One named command, and what it needs installed.
pub struct Step {
    pub name: String,
    pub command: Command,
    pub needs: Vec<Need>,
}

impl Step {
    pub fn new(name: impl Into<String>, command: Command, needs: &[Need]) -> Self {
        Self { name: name.into(), command, needs: needs.to_vec() }
    }
}

/// How a step ended.
pub struct Outcome {
    pub name: String,
    pub passed: bool,
    pub elapsed: Duration,
    /// Why it failed without running, shown in the summary.
    pub note: Option<String>,
}

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().expect("xtask lives inside the workspace").to_path_buf()
}

/// `cargo` as the toolchain running xtask, from the workspace root.
pub fn cargo<const N: usize>(args: [&str; N]) -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut command = Command::new(cargo);
    command.args(args).current_dir(root());
    command
}

/// Runs a step with inherited output and reports how it went. A step that needs something in
/// `missing` fails at once, saying how to install it.
pub fn execute(mut step: Step, missing: &[Need]) -> Outcome {
    println!("\n==> {}: {}", step.name, describe(&step.command));
    let lacks: Vec<String> = step
        .needs
        .iter()
        .filter(|need| missing.contains(need))
        .map(|need| need.missing_message())
        .collect();
    if !lacks.is_empty() {
        let note = lacks.join("; ");
        eprintln!("{note}");
        return Outcome {
            name: step.name,
            passed: false,
            elapsed: Duration::ZERO,
            note: Some(note),
        };
    }
    let start = Instant::now();
    let passed = match step.command.status() {
        Ok(status) => status.success(),
        Err(error) => {
            eprintln!("could not start {}: {error}", step.name);
            false
        }
    };
    Outcome { name: step.name, passed, elapsed: start.elapsed(), note: None }
}

/// Runs a single step, as `cargo xtask loom` and `cargo xtask miri` do, once what it needs is
/// there (it installs nothing: `cargo xtask setup` does).
pub fn run_alone(step: Step) -> Result<(), String> {
    setup::require(&step.needs)?;
    let name = step.name.clone();
    if summarize(&[execute(step, &[])]) { Ok(()) } else { Err(format!("{name} failed")) }
}

/// Prints the summary table and returns whether every step passed.
pub fn summarize(outcomes: &[Outcome]) -> bool {
    println!("\nsummary");
    for o in outcomes {
        let verdict = if o.passed { "PASS" } else { "FAIL" };
        let note = o.note.as_deref().map(|note| format!("  {note}")).unwrap_or_default();
        println!("  {verdict}  {:<34} {:>7.1}s{note}", o.name, o.elapsed.as_secs_f64());
    }
    let passed = outcomes.iter().filter(|o| o.passed).count();
    let failed = outcomes.len() - passed;
    let total: Duration = outcomes.iter().map(|o| o.elapsed).sum();
    println!("  total {:>42.1}s", total.as_secs_f64());
    println!("steps: {passed} passed, {failed} failed");
    failed == 0
}

fn describe(command: &Command) -> String {
    let envs: Vec<String> = command
        .get_envs()
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_str()?, v?.to_str()?)))
        .collect();
    let program = PathBuf::from(command.get_program());
    let program =
        program.file_name().map_or_else(String::new, |p| p.to_string_lossy().into_owned());
    let args: Vec<String> = command.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
    [envs.join(" "), program, args.join(" ")]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A step that leaves a file behind when it runs.
    fn touching(path: &std::path::Path, needs: &[Need]) -> Step {
        let mut command = Command::new("touch");
        command.arg(path);
        Step::new("touch", command, needs)
    }

    #[test]
    fn a_step_lacking_a_need_fails_without_running() {
        let marker = std::env::temp_dir().join(format!("xtask-step-{}", std::process::id()));
        let qemu = Need::Program("qemu-system-arm");
        let outcome = execute(touching(&marker, &[qemu]), &[Need::Miri, qemu]);
        assert!(!outcome.passed);
        assert!(!marker.exists(), "the command ran");
        let note = outcome.note.expect("a reason in the summary");
        assert!(note.starts_with("qemu-system-arm is not installed: "), "{note}");
        assert!(!note.contains("miri"), "only what the step needs: {note}");
    }

    #[test]
    fn a_step_with_its_needs_runs() {
        let marker = std::env::temp_dir().join(format!("xtask-step-ran-{}", std::process::id()));
        let outcome = execute(touching(&marker, &[Need::Miri]), &[Need::MiriSysroot]);
        let ran = marker.exists();
        let _ = std::fs::remove_file(&marker);
        assert!(outcome.passed && ran && outcome.note.is_none());
    }
}
