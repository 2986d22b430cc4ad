//! What a release needs checked before it is published: `cargo xtask msrv` builds each
//! published crate with the toolchain of the `rust-version` it declares, and the `package` step
//! packages them all and builds the packages (`cargo package`, with verification), so that a
//! file missing from a package or a dependency only known by path shows up before a release.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use crate::setup::Need;
use crate::step::{Step, cargo, root};

/// The crates published to crates.io, each with its directory. Every other member of the
/// workspace is `publish = false`.
pub const PUBLISHED: [(&str, &str); 5] = [
    ("backflow-core", "core"),
    ("backflow", "std-runtime"),
    ("backflow-rayon", "rayon-adapter"),
    ("backflow-tokio", "tokio-adapter"),
    ("backflow-redis", "redis-adapter"),
];

/// Where `cargo xtask package` builds the packages, from the workspace root.
const PACKAGE_TARGET: &str = "target/package-check";

/// The toolchains the published crates declare as their `rust-version`, which setup installs.
/// The `msrv` step fails, naming the crate, if a manifest declares one not listed here.
pub const TOOLCHAINS: [&str; 2] = ["1.87", "1.88"];

/// The `msrv` step: `cargo xtask msrv`, run by this same program.
pub fn msrv_step() -> Step {
    let mut command = Command::new(std::env::current_exe().unwrap_or_else(|_| "xtask".into()));
    command.arg("msrv").current_dir(root());
    let needs: Vec<Need> = TOOLCHAINS.into_iter().map(Need::Toolchain).collect();
    Step::new("msrv", command, &needs)
}

/// The `package` step: `cargo xtask package`, run by this same program.
pub fn package_step() -> Step {
    let mut command = Command::new(std::env::current_exe().unwrap_or_else(|_| "xtask".into()));
    command.arg("package").current_dir(root());
    Step::new("package", command, &[])
}

/// `cargo xtask package`: every published crate packaged together, each verified against the
/// others' packages as crates.io would see them.
///
/// Cargo verifies through a registry of the new packages in the target directory, unpacks
/// them under `$CARGO_HOME/registry/src/-<hash of that path>/` and builds them as registry
/// crates; it neither unpacks nor rebuilds a version it has seen, so a second run in the same
/// checkout would check the first run's sources (the version does not change between
/// releases). So the unpacked copies of the published crates are removed first (nothing else
/// there is touched), and the packages are built in a target directory of their own, emptied
/// first.
pub fn package() -> Result<(), String> {
    let sources = cargo_home().join("registry").join("src");
    // Local registries are named without a host, `-<hash>`; crates.io's `index.crates.io-…`.
    let local = fs::read_dir(&sources)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|registry| registry.file_name().to_string_lossy().starts_with('-'));
    for registry in local {
        for (name, _) in PUBLISHED {
            let unpacked = registry.path().join(format!("{name}-{}", env!("CARGO_PKG_VERSION")));
            if unpacked.exists() {
                fs::remove_dir_all(&unpacked)
                    .map_err(|error| format!("cannot remove {}: {error}", unpacked.display()))?;
            }
        }
    }
    let target = root().join(PACKAGE_TARGET);
    if target.exists() {
        fs::remove_dir_all(&target)
            .map_err(|error| format!("cannot remove {}: {error}", target.display()))?;
    }
    let mut command = cargo(["package", "--allow-dirty", "--target-dir", PACKAGE_TARGET]);
    for (name, _) in PUBLISHED {
        command.args(["-p", name]);
    }
    let status = command.status().map_err(|error| format!("cannot run cargo package: {error}"))?;
    if status.success() { Ok(()) } else { Err("cargo package failed".to_string()) }
}

/// Cargo's home: `$CARGO_HOME`, else `~/.cargo`.
fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo")
    })
}

/// `cargo xtask msrv`: `cargo check` of each published crate (all features) with its declared
/// `rust-version` toolchain.
pub fn msrv() -> Result<(), String> {
    let workspace = declared_rust_version(&read("Cargo.toml")?)
        .ok_or("the workspace manifest declares no `rust-version`")?;
    let mut failed = Vec::new();
    for (name, dir) in PUBLISHED {
        let manifest = read(&format!("{dir}/Cargo.toml"))?;
        let version = match declared_rust_version(&manifest) {
            Some(version) => version,
            None if manifest.contains("rust-version.workspace = true") => workspace.clone(),
            None => return Err(format!("{name} declares no `rust-version`")),
        };
        if !TOOLCHAINS.contains(&version.as_str()) {
            return Err(format!(
                "{name} declares rust-version {version}, which xtask does not install: \
                 add it to `release::TOOLCHAINS`"
            ));
        }
        println!("\n==> {name} with Rust {version}");
        let status = Command::new("rustup")
            .args(["run", &version, "cargo", "check", "--all-features", "-p", name])
            // Its own directory: another compiler's artifacts would be rebuilt every time.
            .args(["--target-dir", &format!("target/msrv-{version}")])
            .env("RUSTUP_AUTO_INSTALL", "0")
            .current_dir(root())
            .status();
        if !status.is_ok_and(|status| status.success()) {
            failed.push(format!("{name} (Rust {version})"));
        }
    }
    if failed.is_empty() { Ok(()) } else { Err(format!("does not build: {}", failed.join(", "))) }
}

/// The manifest at `path` from the workspace root.
fn read(path: &str) -> Result<String, String> {
    fs::read_to_string(root().join(path)).map_err(|error| format!("cannot read {path}: {error}"))
}

/// The `rust-version = "…"` a manifest states itself (not one it inherits).
fn declared_rust_version(manifest: &str) -> Option<String> {
    manifest.lines().find_map(|line| {
        let value = line.trim().strip_prefix("rust-version")?.trim_start().strip_prefix('=')?;
        Some(value.trim().strip_prefix('"')?.strip_suffix('"')?.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_declared_rust_version_is_read_and_an_inherited_one_is_not() {
        let own = "[package]\nname = \"a\"\nrust-version = \"1.88\"\n";
        assert_eq!(declared_rust_version(own).as_deref(), Some("1.88"));
        let inherited = "[package]\nrust-version.workspace = true\n";
        assert_eq!(declared_rust_version(inherited), None);
    }

    #[test]
    fn every_published_crate_declares_a_toolchain_xtask_installs() {
        let workspace = declared_rust_version(&read("Cargo.toml").unwrap()).unwrap();
        for (name, dir) in PUBLISHED {
            let manifest = read(&format!("{dir}/Cargo.toml")).unwrap();
            let version = declared_rust_version(&manifest).unwrap_or_else(|| workspace.clone());
            assert!(TOOLCHAINS.contains(&version.as_str()), "{name}: {version}");
            assert!(!manifest.contains("publish = false"), "{name} is published");
        }
    }
}
