//! `cargo xtask bench`: the same-run comparison of backflow's rings with peer crates, printed
//! and written to `target/bench-report.md`; `--criterion` runs the criterion benches instead.

use std::process::Stdio;

use crate::step::{cargo, root};

pub fn run(criterion: bool) -> Result<(), String> {
    if criterion {
        let status = cargo(["bench", "-p", "backflow-benches", "--bench", "rings"])
            .status()
            .map_err(|e| format!("could not run cargo bench: {e}"))?;
        return if status.success() { Ok(()) } else { Err("criterion benches failed".into()) };
    }
    let output = cargo(["bench", "-p", "backflow-benches", "--bench", "compare"])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("could not run cargo bench: {e}"))?;
    let report = String::from_utf8_lossy(&output.stdout);
    print!("{report}");
    if !output.status.success() {
        return Err("the comparison bench failed".into());
    }
    let path = root().join("target").join("bench-report.md");
    std::fs::write(&path, report.as_bytes())
        .map_err(|e| format!("could not write {}: {e}", path.display()))?;
    println!("written to {}", path.display());
    Ok(())
}
