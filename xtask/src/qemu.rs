//! `cargo xtask qemu`: builds the Cortex-M demo in `core/bare-metal`, checks that it links no
//! allocator, prints its flash and RAM footprint, and runs it under QEMU (lm3s6965evb) with a
//! time limit. The demo exits 0 only when its own checks pass.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::setup::{self, Need};
use crate::step::{Step, cargo, root};

/// The demo's target: Cortex-M3, as QEMU's lm3s6965evb board has.
pub const TARGET: &str = "thumbv7m-none-eabi";
const TIME_LIMIT: Duration = Duration::from_secs(120);
const NEEDS: [Need; 2] = [Need::Target(TARGET), Need::Program("qemu-system-arm")];

/// The `ci` step: this task, run as `cargo xtask qemu` so its output lands in the log.
pub fn step() -> Step {
    Step::new("qemu", cargo(["xtask", "qemu"]), &NEEDS)
}

pub fn run() -> Result<(), String> {
    setup::require(&NEEDS)?;
    let dir = root().join("core").join("bare-metal");
    // Its own target directory (whatever CARGO_TARGET_DIR says): the image is read from it.
    let target_dir = dir.join("target");
    let status = cargo(["build", "--release", "--target", TARGET, "--target-dir"])
        .arg(&target_dir)
        .current_dir(&dir)
        .status()
        .map_err(|e| format!("could not run cargo build: {e}"))?;
    if !status.success() {
        return Err("the bare-metal build failed".into());
    }
    let elf = target_dir.join(TARGET).join("release").join("backflow-bare-metal");
    let image =
        std::fs::read(&elf).map_err(|e| format!("could not read {}: {e}", elf.display()))?;

    for symbol in ["__rust_alloc", "__rdl_alloc", "__rust_alloc_error_handler"] {
        if contains(&image, symbol.as_bytes()) {
            return Err(format!(
                "the binary links an allocator ({symbol}); it must not use the heap"
            ));
        }
    }
    println!("no allocator linked");
    let size = footprint(&image).ok_or("could not read the ELF section headers")?;
    println!(
        "flash {} bytes (code and constants {}, initialised data {}); static RAM {} bytes \
         (data {}, bss {}), stack not included",
        size.text + size.data,
        size.text,
        size.data,
        size.data + size.bss,
        size.data,
        size.bss
    );
    run_in_qemu(&elf)
}

/// Runs the image under QEMU, printing its semihosting output, within [`TIME_LIMIT`].
fn run_in_qemu(elf: &Path) -> Result<(), String> {
    let mut child = Command::new("qemu-system-arm")
        .args(["-cpu", "cortex-m3", "-machine", "lm3s6965evb", "-nographic"])
        .args(["-semihosting-config", "enable=on,target=native", "-kernel"])
        .arg(elf)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not start qemu-system-arm (is it installed?): {e}"))?;
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if start.elapsed() > TIME_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("the demo did not finish within {}s", TIME_LIMIT.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut output = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut output);
    }
    print!("{output}");
    println!("qemu exited with {status} after {:.1}s", start.elapsed().as_secs_f64());
    if status.success() { Ok(()) } else { Err("the bare-metal demo failed its checks".into()) }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

/// Section sizes in the style of `size`: allocated read-only, allocated writable with
/// contents (stored in flash, copied to RAM), and zero-initialised.
struct Footprint {
    text: u64,
    data: u64,
    bss: u64,
}

/// Sums the allocated sections of a 32-bit little-endian ELF file.
fn footprint(elf: &[u8]) -> Option<Footprint> {
    const SHF_WRITE: u32 = 1;
    const SHF_ALLOC: u32 = 2;
    const SHT_NOBITS: u32 = 8;
    let u16_at = |at: usize| Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?));
    if elf.get(..5)? != b"\x7fELF\x01" {
        return None;
    }
    let section_headers = u32_at(0x20)? as usize;
    let entry_size = usize::from(u16_at(0x2E)?);
    let count = usize::from(u16_at(0x30)?);
    let mut size = Footprint { text: 0, data: 0, bss: 0 };
    for index in 0..count {
        let header = section_headers + index * entry_size;
        let (kind, flags, bytes) = (u32_at(header + 4)?, u32_at(header + 8)?, u32_at(header + 20)?);
        if flags & SHF_ALLOC == 0 {
            continue;
        }
        let bytes = u64::from(bytes);
        match (kind == SHT_NOBITS, flags & SHF_WRITE != 0) {
            (true, _) => size.bss += bytes,
            (false, true) => size.data += bytes,
            (false, false) => size.text += bytes,
        }
    }
    Some(size)
}
