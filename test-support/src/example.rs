//! A package's example, built by cargo for the running test or bench: `cargo test --test x`
//! alone does not build the examples, and a bench wants them optimised.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

/// Why [`example`] has no executable to give.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExampleError {
    /// The running program does not know its own path.
    #[error("the running program's path is unknown: {0}")]
    OwnPath(#[source] io::Error),
    /// The running program is not a test or bench in cargo's target directory.
    #[error("{} is not a test or bench cargo built (<target dir>/<profile>/deps/<name>)", .exe.display())]
    NotInTargetDir {
        /// The running program's path.
        exe: PathBuf,
    },
    /// Cargo could not be run.
    #[error("could not run cargo: {0}")]
    Cargo(#[source] io::Error),
    /// Cargo ran and the build failed (its errors are on stderr).
    #[error("building example `{example}` of {package} failed: {status}")]
    Build {
        /// The package asked for.
        package: String,
        /// The example asked for.
        example: String,
        /// How cargo ended.
        status: ExitStatus,
    },
}

/// Builds (or finds up to date) example `name` of `package` with cargo, into the target
/// directory and the profile the running test or bench was built with, and returns the
/// executable's path, `<target dir>/<profile>/examples/<name>`.
///
/// Cargo's output other than errors is silenced. A test calls it once per binary (keep the
/// path in a `OnceLock`): each call asks cargo.
///
/// # Errors
///
/// [`ExampleError::NotInTargetDir`] when called from a program that is not a test or bench in
/// cargo's target directory; [`ExampleError::Build`] when the example does not build.
///
/// # Examples
///
/// ```no_run
/// let logs = test_support::example("backflow", "logs")?;
/// let output = std::process::Command::new(logs).args(["--items", "100"]).output()?;
/// assert!(output.status.success());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn example(package: &str, name: &str) -> Result<PathBuf, ExampleError> {
    example_with_features(package, name, &[])
}

/// As [`example`], built with the package's `features` on (and its default ones). Cargo
/// builds each set of features once and keeps both, but puts whichever was built last at the
/// same path: call it from a test binary that runs the example with only this set.
///
/// # Errors
///
/// As [`example`].
///
/// # Examples
///
/// ```no_run
/// let logs = test_support::example_with_features("backflow", "logs", &["http"])?;
/// let output = std::process::Command::new(logs).args(["--items", "10", "--metrics-addr", "127.0.0.1:0"]).output()?;
/// assert!(output.status.success());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn example_with_features(
    package: &str,
    name: &str,
    features: &[&str],
) -> Result<PathBuf, ExampleError> {
    let exe = std::env::current_exe().map_err(ExampleError::OwnPath)?;
    let layout =
        Layout::of(&exe).ok_or_else(|| ExampleError::NotInTargetDir { exe: exe.clone() })?;
    let mut command = Command::new(cargo());
    command.args(["build", "--quiet", "--package", package, "--example", name]);
    if !features.is_empty() {
        command.args(["--features", &features.join(",")]);
    }
    let status = command
        .args(["--profile", &layout.profile, "--target-dir"])
        .arg(&layout.target_dir)
        .current_dir(workspace_root())
        .status()
        .map_err(ExampleError::Cargo)?;
    if !status.success() {
        return Err(ExampleError::Build {
            package: package.to_string(),
            example: name.to_string(),
            status,
        });
    }
    Ok(layout.profile_dir.join("examples").join(format!("{name}{}", std::env::consts::EXE_SUFFIX)))
}

/// Where cargo put a test or bench: `<target dir>/<profile dir>/deps/<name>-<hash>`.
#[derive(Debug, PartialEq, Eq)]
struct Layout {
    target_dir: PathBuf,
    profile_dir: PathBuf,
    /// The profile that builds into `profile_dir` (`dev` builds into `debug`).
    profile: String,
}

impl Layout {
    fn of(exe: &Path) -> Option<Self> {
        let deps = exe.parent().filter(|deps| deps.file_name() == Some("deps".as_ref()))?;
        let profile_dir = deps.parent()?;
        let target_dir = profile_dir.parent()?;
        let profile = match profile_dir.file_name()?.to_str()? {
            "debug" => "dev",
            name => name,
        };
        Some(Self {
            target_dir: target_dir.to_path_buf(),
            profile_dir: profile_dir.to_path_buf(),
            profile: profile.to_string(),
        })
    }
}

/// The cargo running the tests (it sets `CARGO` for them), else the one that built this crate.
fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into())
}

/// The workspace root: this crate lives one level below it.
fn workspace_root() -> &'static Path {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(target_dir: &str, profile_dir: &str, profile: &str) -> Option<Layout> {
        Some(Layout {
            target_dir: target_dir.into(),
            profile_dir: profile_dir.into(),
            profile: profile.into(),
        })
    }

    #[test]
    fn the_debug_directory_is_the_dev_profile() {
        let found = Layout::of(Path::new("/w/target/debug/deps/demo-0123abcd"));
        assert_eq!(found, layout("/w/target", "/w/target/debug", "dev"));
    }

    #[test]
    fn other_directories_are_named_after_their_profile() {
        // `cargo bench` builds into `release`; custom profiles into their own name.
        let found = Layout::of(Path::new("/t/release/deps/scale_out-99"));
        assert_eq!(found, layout("/t", "/t/release", "release"));
        let found = Layout::of(Path::new("/t/loom/deps/ring-1"));
        assert_eq!(found, layout("/t", "/t/loom", "loom"));
    }

    #[test]
    fn a_program_outside_deps_is_not_a_test() {
        assert_eq!(Layout::of(Path::new("/usr/bin/redis-server")), None);
        assert_eq!(Layout::of(Path::new("/t/debug/examples/logs")), None);
        assert_eq!(Layout::of(Path::new("/deps/x")), None);
    }

    #[test]
    fn this_test_is_in_the_target_dir() {
        let exe = std::env::current_exe().unwrap();
        let found = Layout::of(&exe).expect("cargo runs this test from <target>/<profile>/deps");
        assert!(exe.starts_with(&found.target_dir));
        assert!(found.profile_dir.join("deps").is_dir());
    }

    #[test]
    fn the_workspace_root_holds_the_workspace_manifest() {
        let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
        assert!(manifest.contains("[workspace]"));
    }
}
