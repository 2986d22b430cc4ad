//! `cargo xtask setup`: installs what the checks need and a machine with only stable Rust
//! lacks, and says how to install what it cannot. It looks before it installs, so a second
//! run installs nothing and prints nothing. What it looks for, and how it installs it:
//!
//! - the targets `thumbv7em-none-eabihf` and `thumbv6m-none-eabi` (the core's `no_std`
//!   builds) and `thumbv7m-none-eabi` (the bare-metal demo), and the components `rustfmt` and
//!   `clippy`, of the toolchain running the checks: `rustup target add`, `rustup component add`;
//! - a nightly toolchain with `miri` and `rust-src`: `rustup toolchain install nightly
//!   --profile minimal --component miri,rust-src` (or `rustup component add` when nightly is
//!   there), then miri's sysroot: `cargo +nightly miri setup` (quick when it is built);
//! - the toolchains of the published crates' `rust-version`s (see [`release::TOOLCHAINS`]):
//!   `rustup toolchain install <version> --profile minimal`;
//! - `qemu-system-arm`, `redis-server` and `prometheus` (with `promtool`) on `PATH`: the
//!   Debian packages of the same names, through `apt-get update` and `apt-get install`, when
//!   `apt-get` is there and may be used (as root, or through `sudo -n`). It asks apt not to
//!   remove anything first; only when a package cannot be installed otherwise (it conflicts
//!   with one installed from elsewhere) does it let apt remove what conflicts, which apt
//!   names. The `redis-server` and `prometheus` packages start system services on their
//!   default ports; setup stops them, as the tests start servers of their own.
//!
//! - `cargo-deny` (the dependency policy step, see [`crate::deny`]): `cargo install --locked
//!   cargo-deny` (a few minutes the first time; cargo puts it in `~/.cargo/bin`).
//!
//! What it could not install it names with the command that would, and the steps that need
//! it fail with that message instead of running.

use std::fmt;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::step::root;
use crate::{deny, miri, release};

/// Something a check needs that a machine with only stable Rust may lack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A target of the toolchain running the checks.
    Target(&'static str),
    /// A component of the toolchain running the checks.
    Component(&'static str),
    /// The nightly toolchain, with `miri` and `rust-src`.
    Miri,
    /// Miri's sysroot. `cargo miri` builds it on first use, so only setup looks for it.
    MiriSysroot,
    /// A program on `PATH`, from the system package of the same name.
    Program(&'static str),
    /// A Rust toolchain of this version (a published crate's `rust-version`).
    Toolchain(&'static str),
    /// A cargo subcommand (`cargo-deny`), on `PATH`, from `cargo install --locked <name>`.
    CargoTool(&'static str),
}

/// Everything setup looks for, in the order it installs it.
const EVERYTHING: [Need; 13] = [
    Need::Target("thumbv7em-none-eabihf"),
    Need::Target("thumbv6m-none-eabi"),
    Need::Target("thumbv7m-none-eabi"),
    Need::Component("rustfmt"),
    Need::Component("clippy"),
    Need::Miri,
    Need::MiriSysroot,
    Need::Program("qemu-system-arm"),
    Need::Program("redis-server"),
    Need::Program("prometheus"),
    Need::Toolchain(release::TOOLCHAINS[0]),
    Need::Toolchain(release::TOOLCHAINS[1]),
    Need::CargoTool(deny::TOOL),
];

/// The nightly components the miri step uses.
const MIRI_COMPONENTS: [&str; 2] = ["miri", "rust-src"];

/// How long `cargo +nightly miri setup` may take before setup says it is building.
const MIRI_SETUP_NOTICE: Duration = Duration::from_secs(2);

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Need::Target(target) => write!(f, "target {target}"),
            Need::Component(component) => write!(f, "component {component}"),
            Need::Miri => write!(f, "miri (nightly, with rust-src)"),
            Need::MiriSysroot => write!(f, "miri's sysroot"),
            Need::Program(program) => write!(f, "{program}"),
            Need::Toolchain(version) => write!(f, "Rust {version}"),
            Need::CargoTool(tool) => write!(f, "{tool}"),
        }
    }
}

impl Need {
    /// `<what> is not installed: <how>`, with the install command that fits this machine.
    pub fn missing_message(self) -> String {
        let rust = |command: String| {
            if on_path("rustup") {
                format!("run `{command}`")
            } else {
                format!("install rustup (https://rustup.rs), then run `{command}`")
            }
        };
        let how = match self {
            Need::Target(target) => rust(format!("rustup target add {target}")),
            Need::Component(component) => rust(format!("rustup component add {component}")),
            Need::Miri => rust(
                "rustup toolchain install nightly --profile minimal --component miri,rust-src"
                    .into(),
            ),
            Need::MiriSysroot => rust("cargo +nightly miri setup".into()),
            Need::Toolchain(version) => {
                rust(format!("rustup toolchain install {version} --profile minimal"))
            }
            Need::CargoTool(tool) => format!("run `{}`", cargo_install_line(tool)),
            Need::Program(program) => match Apt::access() {
                Apt::Root => format!("run `apt-get install {program}`"),
                Apt::Sudo | Apt::NotAllowed => format!("run `sudo apt-get install {program}`"),
                Apt::Absent => format!(
                    "install it with the system's package manager \
                     (Debian and Ubuntu: `sudo apt-get install {program}`)"
                ),
            },
        };
        format!("{self} is not installed: {how}")
    }
}

/// `cargo xtask setup`: installs what is missing; fails naming what it could not install.
pub fn run() -> Result<(), String> {
    let missing = provision();
    if missing.is_empty() { Ok(()) } else { Err(format!("could not install: {}", list(&missing))) }
}

/// Installs whatever of [`EVERYTHING`] is missing, printing each command it runs and, on
/// stderr, a message for each thing it could not install. Returns those things.
pub fn provision() -> Vec<Need> {
    let before = Installed::look();
    let mut changed = false;
    if before.rustup {
        changed |= install_rust(&before);
    }
    let programs: Vec<&str> = EVERYTHING
        .iter()
        .filter(|need| !before.has(**need))
        .filter_map(|need| match need {
            Need::Program(program) => Some(*program),
            _ => None,
        })
        .collect();
    if !programs.is_empty() {
        changed |= install_packages(&programs);
    }
    for need in EVERYTHING.into_iter().filter(|need| !before.has(*need)) {
        if let Need::CargoTool(tool) = need {
            changed |= announce_and_run(cargo_install(tool));
        }
    }
    let after = if changed { Installed::look() } else { before };
    let mut missing: Vec<Need> = EVERYTHING.into_iter().filter(|need| !after.has(*need)).collect();
    // With nightly and miri there, build (or find up to date) miri's sysroot.
    if !missing.contains(&Need::Miri) && !miri_setup() {
        missing.push(Need::MiriSysroot);
    }
    for need in &missing {
        eprintln!("setup: {}", need.missing_message());
    }
    missing
}

/// Whether all of `needs` are installed (nothing is installed here); if not, the messages
/// saying how to install the missing ones. For a step run on its own.
pub fn require(needs: &[Need]) -> Result<(), String> {
    if needs.is_empty() {
        return Ok(());
    }
    let installed = Installed::look();
    let messages: Vec<String> = needs
        .iter()
        .filter(|need| !installed.has(**need))
        .map(|need| need.missing_message())
        .collect();
    if messages.is_empty() { Ok(()) } else { Err(messages.join("\n")) }
}

/// "a, b, c" of what is missing.
pub fn list(needs: &[Need]) -> String {
    needs.iter().map(Need::to_string).collect::<Vec<_>>().join(", ")
}

/// What is installed, looked up once: rustup's lists, and programs on `PATH`.
struct Installed {
    rustup: bool,
    /// Targets of the toolchain running the checks.
    targets: Vec<String>,
    /// Components of the toolchain running the checks.
    components: Vec<String>,
    /// Components of nightly; `None` when there is no nightly toolchain.
    nightly: Option<Vec<String>>,
    /// Installed toolchains (`1.87-x86_64-unknown-linux-gnu`, `nightly-…`).
    toolchains: Vec<String>,
}

impl Installed {
    fn look() -> Self {
        let list = |args: &[&str]| -> Option<Vec<String>> {
            let output = rustup(args).stderr(Stdio::null()).output().ok()?;
            let text = String::from_utf8_lossy(&output.stdout);
            output.status.success().then(|| text.lines().map(str::to_string).collect())
        };
        let targets = list(&["target", "list", "--installed"]);
        Self {
            rustup: targets.is_some(),
            targets: targets.unwrap_or_default(),
            components: list(&["component", "list", "--installed"]).unwrap_or_default(),
            nightly: list(&["component", "list", "--installed", "--toolchain", "nightly"]),
            toolchains: list(&["toolchain", "list"])
                .unwrap_or_default()
                .iter()
                .filter_map(|line| line.split_whitespace().next().map(str::to_string))
                .collect(),
        }
    }

    fn has(&self, need: Need) -> bool {
        match need {
            Need::Target(target) => self.targets.iter().any(|t| t == target),
            Need::Component(component) => has_component(&self.components, component),
            Need::Miri => self.nightly.as_ref().is_some_and(|nightly| {
                MIRI_COMPONENTS.iter().all(|component| has_component(nightly, component))
            }),
            Need::MiriSysroot => true,
            Need::Program(program) | Need::CargoTool(program) => on_path(program),
            Need::Toolchain(version) => self
                .toolchains
                .iter()
                .any(|t| t.strip_prefix(version).is_some_and(|rest| rest.starts_with('-'))),
        }
    }
}

/// Whether rustup lists `component`: as its bare name (`rust-src`) or followed by the host's
/// target triple (`clippy-x86_64-unknown-linux-gnu`; a triple has at least two dashes).
fn has_component(installed: &[String], component: &str) -> bool {
    installed.iter().any(|name| match name.strip_prefix(component) {
        Some("") => true,
        Some(rest) => rest.strip_prefix('-').is_some_and(|triple| triple.matches('-').count() >= 2),
        None => false,
    })
}

/// Adds the missing targets and components, and nightly with miri; whether it ran anything.
fn install_rust(installed: &Installed) -> bool {
    let missing = |pick: fn(Need) -> Option<&'static str>| -> Vec<&str> {
        EVERYTHING.into_iter().filter(|need| !installed.has(*need)).filter_map(pick).collect()
    };
    let targets = missing(|need| if let Need::Target(t) = need { Some(t) } else { None });
    let components = missing(|need| if let Need::Component(c) = need { Some(c) } else { None });
    let mut ran = false;
    if !targets.is_empty() {
        ran |= announce_and_run(rustup(&[&["target", "add"], &targets[..]].concat()));
    }
    if !components.is_empty() {
        ran |= announce_and_run(rustup(&[&["component", "add"], &components[..]].concat()));
    }
    if !installed.has(Need::Miri) {
        let command = match installed.nightly {
            None => rustup(&[
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                &MIRI_COMPONENTS.join(","),
            ]),
            Some(_) => rustup(
                &[&["component", "add", "--toolchain", "nightly"], &MIRI_COMPONENTS[..]].concat(),
            ),
        };
        ran |= announce_and_run(command);
    }
    for need in EVERYTHING.into_iter().filter(|need| !installed.has(*need)) {
        if let Need::Toolchain(version) = need {
            let install = ["toolchain", "install", version, "--profile", "minimal"];
            ran |= announce_and_run(rustup(&install));
        }
    }
    ran
}

/// `cargo install --locked <tool>` with the cargo running xtask: the versions of its own
/// lockfile, as its authors tested them.
fn cargo_install(tool: &str) -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut command = Command::new(cargo);
    command.args(["install", "--locked", tool]).current_dir(root());
    command
}

/// What [`cargo_install`] runs, as a user would type it.
fn cargo_install_line(tool: &str) -> String {
    format!("cargo install --locked {tool}")
}

/// `rustup` from the workspace root, so that it acts on the toolchain running the checks.
/// It never installs a toolchain it is only asked about.
fn rustup(args: &[&str]) -> Command {
    let mut command = Command::new("rustup");
    command.args(args).current_dir(root()).env("RUSTUP_AUTO_INSTALL", "0");
    command
}

/// Builds miri's sysroot, or finds it up to date (well under a second). Silent unless it takes
/// a while (the first time, and after a nightly update) or fails.
fn miri_setup() -> bool {
    let mut command = miri::cargo_nightly(["miri", "setup"]);
    let child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
    let child = match child {
        Ok(child) => child,
        Err(error) => {
            eprintln!("setup: could not run cargo +nightly miri setup: {error}");
            return false;
        }
    };
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    let output: std::io::Result<Output> = match finished.recv_timeout(MIRI_SETUP_NOTICE) {
        Ok(output) => output,
        Err(_) => {
            println!("setup: building miri's sysroot: cargo +nightly miri setup");
            finished.recv().unwrap_or_else(|_| Err(std::io::Error::other("no status")))
        }
    };
    match output {
        Ok(output) if output.status.success() => true,
        Ok(output) => {
            eprint!("{}", String::from_utf8_lossy(&output.stdout));
            eprint!("{}", String::from_utf8_lossy(&output.stderr));
            false
        }
        Err(error) => {
            eprintln!("setup: cargo +nightly miri setup: {error}");
            false
        }
    }
}

/// How this process may run `apt-get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Apt {
    /// It runs as root.
    Root,
    /// Through `sudo -n` (sudo without a password prompt).
    Sudo,
    /// `apt-get` is there but only root may install with it.
    NotAllowed,
    /// There is no `apt-get`.
    Absent,
}

impl Apt {
    fn access() -> Self {
        if !on_path("apt-get") {
            return Apt::Absent;
        }
        let uid = Command::new("id").arg("-u").output();
        if uid.is_ok_and(|output| output.stdout.trim_ascii() == b"0") {
            return Apt::Root;
        }
        let sudo = Command::new("sudo")
            .args(["-n", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if sudo.is_ok_and(|status| status.success()) { Apt::Sudo } else { Apt::NotAllowed }
    }

    /// `program args…`, as root, without questions.
    fn command(self, program: &str, args: &[&str]) -> Command {
        let mut command = if self == Apt::Sudo {
            let mut sudo = Command::new("sudo");
            sudo.args(["-n", "env", "DEBIAN_FRONTEND=noninteractive", program]);
            sudo
        } else {
            let mut command = Command::new(program);
            command.env("DEBIAN_FRONTEND", "noninteractive");
            command
        };
        command.args(args).stdin(Stdio::null());
        command
    }
}

/// Installs the Debian packages `packages` when apt-get may be used; whether it ran anything.
fn install_packages(packages: &[&str]) -> bool {
    let apt = Apt::access();
    if !matches!(apt, Apt::Root | Apt::Sudo) {
        return false;
    }
    // Waits for another apt to finish instead of failing on its lock.
    let lock = ["-o", "DPkg::Lock::Timeout=600"];
    if !announce_and_run(apt.command("apt-get", &[&lock[..], &["-q", "update"]].concat())) {
        return false;
    }
    // First without removing anything. A package can conflict with one installed from
    // elsewhere (a machine with `qemu-utils` from backports cannot take the distribution's
    // `qemu-system-arm` next to it): then apt resolves it as a plain install would, and its
    // output names what it removed.
    let options = ["-q", "-y", "--no-install-recommends"];
    let keep = [&lock[..], &options, &["--no-remove", "install"], packages].concat();
    if !announce_and_run(apt.command("apt-get", &keep)) {
        let names = packages.join(" ");
        println!("setup: apt cannot install {names} without removing a package; letting it");
        let plain = [&lock[..], &options, &["install"], packages].concat();
        announce_and_run(apt.command("apt-get", &plain));
    }
    // These packages start a system service on the default port; the tests start their own.
    for service in ["redis-server", "prometheus"] {
        if packages.contains(&service) && on_path(service) {
            let _ = apt
                .command("service", &[service, "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
    true
}

/// Prints `command` and runs it with its output shown; whether it succeeded.
fn announce_and_run(mut command: Command) -> bool {
    let program = command.get_program().to_string_lossy().into_owned();
    let args: Vec<String> = command.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
    println!("setup: {program} {}", args.join(" "));
    match command.status() {
        Ok(status) => status.success(),
        Err(error) => {
            eprintln!("setup: could not run {program}: {error}");
            false
        }
    }
}

/// Whether `program` is an executable file in a directory of `PATH` (as `command -v`).
fn on_path(program: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else { return false };
    std::env::split_paths(&path).any(|dir| is_executable(&dir.join(program)))
}

#[cfg(unix)]
fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &std::path::Path) -> bool {
    path.with_extension(std::env::consts::EXE_EXTENSION).is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn components_are_found_with_or_without_the_host() {
        let installed = names(&[
            "clippy-x86_64-unknown-linux-gnu",
            "rust-src",
            "rustc-x86_64-unknown-linux-gnu",
        ]);
        assert!(has_component(&installed, "clippy"));
        assert!(has_component(&installed, "rust-src"));
        // `rust` starts `rust-src` and `rustc-…`, and is neither.
        assert!(!has_component(&installed, "rust"));
        assert!(!has_component(&installed, "rustfmt"));
        assert!(!has_component(&installed, "miri"));
    }

    #[test]
    fn miri_needs_nightly_with_both_components() {
        let installed = |nightly: Option<&[&str]>| Installed {
            rustup: true,
            targets: Vec::new(),
            components: Vec::new(),
            nightly: nightly.map(names),
            toolchains: Vec::new(),
        };
        assert!(!installed(None).has(Need::Miri));
        assert!(!installed(Some(&["miri-x86_64-unknown-linux-gnu"])).has(Need::Miri));
        assert!(installed(Some(&["miri-x86_64-unknown-linux-gnu", "rust-src"])).has(Need::Miri));
    }

    #[test]
    fn a_toolchain_is_found_by_its_version_with_the_host_after_it() {
        let installed = Installed {
            rustup: true,
            targets: Vec::new(),
            components: Vec::new(),
            nightly: None,
            toolchains: names(&[
                "stable-x86_64-unknown-linux-gnu",
                "1.88-x86_64-unknown-linux-gnu",
            ]),
        };
        assert!(installed.has(Need::Toolchain("1.88")));
        assert!(!installed.has(Need::Toolchain("1.8")));
        assert!(!installed.has(Need::Toolchain("1.87")));
    }

    #[test]
    fn a_program_message_names_the_package_command() {
        let message = Need::Program("qemu-system-arm").missing_message();
        assert!(message.starts_with("qemu-system-arm is not installed: "), "{message}");
        assert!(message.contains("apt-get install qemu-system-arm`"), "{message}");
    }

    #[test]
    fn a_target_message_names_the_rustup_command() {
        let message = Need::Target("thumbv6m-none-eabi").missing_message();
        assert!(message.starts_with("target thumbv6m-none-eabi is not installed: "), "{message}");
        assert!(message.ends_with("run `rustup target add thumbv6m-none-eabi`"), "{message}");
    }

    #[test]
    fn a_cargo_tool_message_names_the_cargo_install_command() {
        let message = Need::CargoTool("cargo-deny").missing_message();
        assert_eq!(message, "cargo-deny is not installed: run `cargo install --locked cargo-deny`",);
        let command = cargo_install("cargo-deny");
        let args: Vec<_> = command.get_args().collect();
        assert_eq!(args, ["install", "--locked", "cargo-deny"]);
        assert!(EVERYTHING.contains(&Need::CargoTool(deny::TOOL)), "setup provides it");
    }

    #[test]
    fn setup_provides_prometheus_from_its_debian_package() {
        assert!(EVERYTHING.contains(&Need::Program("prometheus")));
        let message = Need::Program("prometheus").missing_message();
        assert!(message.starts_with("prometheus is not installed: "), "{message}");
        assert!(message.contains("apt-get install prometheus"), "{message}");
    }

    #[test]
    fn programs_are_looked_up_on_path() {
        assert!(on_path("sh"));
        assert!(!on_path("backflow-no-such-program"));
    }
}
