//! The byte-budget workloads.
//!
//! - **Heavy items** ([`heavy`]): items of 1 KiB to 1 MiB (sizes from a fixed seed, every byte
//!   written) pushed through three stages into a sink that may be slow, each stage's queue
//!   bounded by 1024 items only, or by [`BUDGET`] bytes as well (`capacity_bytes`, weighing
//!   `Vec::len`). Each run measures its time and the process's peak resident memory (`VmHWM`,
//!   reset before the run through `/proc/self/clear_refs`).
//! - **Small items** ([`small`]): `u64`s through three stages, without a byte budget and with
//!   one that is never reached, for what the weighing and the shared count cost per item.

use std::fs;
use std::hint::black_box;
use std::time::{Duration, Instant};

use backflow::Pipeline;

/// Each stage's byte budget in the heavy workload.
pub const BUDGET: usize = 64 << 20;

/// The heavy workload's contenders: each stage's byte budget, if any.
pub const HEAVY: &[(&str, Option<usize>)] =
    &[("items only (1024 per queue)", None), ("capacity_bytes(64 MiB)", Some(BUDGET))];

/// The small-item workload's contenders: each stage's byte budget, if any.
pub const SMALL: &[(&str, Option<usize>)] =
    &[("no byte budget", None), ("capacity_bytes(1 GiB), never reached", Some(1 << 30))];

/// What one heavy run measured.
#[derive(Debug, Clone, Copy)]
pub struct Heavy {
    /// From the first push to the end of `drain()`.
    pub elapsed: Duration,
    /// The bytes of all the items.
    pub bytes: u64,
    /// The process's peak resident memory during the run, if `/proc` tells it.
    pub peak_rss: Option<usize>,
}

/// The byte every byte of item `id` but its first four is set to.
fn fill_byte(id: u32) -> u8 {
    (id % 251) as u8 + 1
}

/// Item `id`: 1 KiB to 1 MiB (from `rng`), its id in the first four bytes, every other byte
/// written.
pub fn heavy_item(id: u32, rng: &mut u64) -> Vec<u8> {
    // xorshift64: sizes spread evenly, the same every run.
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let size = 1024 + (*rng % ((1 << 20) - 1024 + 1)) as usize;
    let mut item = vec![fill_byte(id); size];
    item[..4].copy_from_slice(&id.to_le_bytes());
    item
}

/// Resets the process's peak resident memory to what it holds now; `false` if it cannot.
fn reset_peak_rss() -> bool {
    fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The process's peak resident memory in bytes, if `/proc` tells it.
fn peak_rss() -> Option<usize> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|line| line.strip_prefix("VmHWM:"))?;
    let kib: usize = line.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// `items` heavy items through three stages, each bounded by `budget` bytes if given, into a
/// sink that sleeps `sink_delay` per item; checks that every item arrived whole.
///
/// # Panics
///
/// If an item is lost or arrives changed.
pub fn heavy(items: u32, budget: Option<usize>, sink_delay: Duration) -> Heavy {
    let pass = || {
        |item: Vec<u8>| {
            let id = u32::from_le_bytes([item[0], item[1], item[2], item[3]]);
            assert_eq!(item.last(), Some(&fill_byte(id)));
            item
        }
    };
    let bounded = |builder: backflow::builder::Builder<Vec<u8>, Vec<u8>, Vec<u8>>| match budget {
        Some(bytes) => builder.capacity_bytes(bytes, Vec::len),
        None => builder,
    };
    let line = bounded(Pipeline::<Vec<u8>>::builder().stage("a", pass));
    let line = bounded(line.stage("b", pass));
    let line = bounded(line.stage("c", pass));
    let pipeline = line
        .sink(move |item: Vec<u8>| {
            let id = u32::from_le_bytes([item[0], item[1], item[2], item[3]]);
            assert!(item[4..].iter().step_by(4096).all(|&b| b == fill_byte(id)));
            if !sink_delay.is_zero() {
                std::thread::sleep(sink_delay);
            }
        })
        .build()
        .expect("the pipeline builds");
    let measured = reset_peak_rss();
    let input = pipeline.input();
    let mut rng = 0x9E37_79B9_7F4A_7C15;
    let mut bytes = 0;
    let started = Instant::now();
    for id in 0..items {
        let item = heavy_item(id, &mut rng);
        bytes += item.len() as u64;
        input.push(item).expect("the pipeline takes every item");
    }
    let report = pipeline.drain().expect("the pipeline drains");
    let elapsed = started.elapsed();
    assert_eq!(report.sink().delivered, u64::from(items));
    assert!(report.is_balanced());
    Heavy { elapsed, bytes, peak_rss: if measured { peak_rss() } else { None } }
}

/// `items` `u64`s through three stages (`x ^ 1`), each with a byte budget of `budget` if given
/// (every item weighing 8), into a sink that sums them; returns the time it took.
///
/// # Panics
///
/// If the sum is wrong.
pub fn small(items: u64, budget: Option<usize>) -> Duration {
    let bounded = |builder: backflow::builder::Builder<u64, u64, u64>| match budget {
        Some(bytes) => builder.capacity_bytes(bytes, |_: &u64| 8),
        None => builder,
    };
    let flip = || |x: u64| x ^ 1;
    let line = bounded(Pipeline::<u64>::builder().stage("a", flip));
    let line = bounded(line.stage("b", flip));
    let line = bounded(line.stage("c", flip));
    let (sum, total) = (std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)), 0..items);
    let add = std::sync::Arc::clone(&sum);
    let mut local = 0u64;
    let pipeline = line
        .sink(move |x| {
            local = local.wrapping_add(black_box(x));
            add.store(local, std::sync::atomic::Ordering::Relaxed);
        })
        .build()
        .expect("the pipeline builds");
    let started = Instant::now();
    pipeline.input().push_iter(total.clone()).expect("the pipeline takes every item");
    pipeline.drain().expect("the pipeline drains");
    let elapsed = started.elapsed();
    let expected = total.map(|x| x ^ 1).fold(0u64, u64::wrapping_add);
    assert_eq!(sum.load(std::sync::atomic::Ordering::Relaxed), expected);
    elapsed
}
