//! The same-run comparison report: every ring contender, interleaved, several rounds, one
//! Markdown table per workload on stdout. Run it with `cargo xtask bench`.
//!
//! Environment: `BACKFLOW_BENCH_ROUNDS` (default 9), `BACKFLOW_BENCH_SPSC_ITEMS` (default
//! 100 000 000), `BACKFLOW_BENCH_MPMC_ITEMS` (default 20 000 000), `BACKFLOW_BENCH_ONLY`
//! (`spsc` or `mpmc`: run one half), `BACKFLOW_BENCH_FILTER` (comma-separated substrings:
//! run only the contenders whose name contains one).

use std::env;

use backflow_benches::report::{interleave, per_second, table};
use backflow_benches::{mpmc, spsc};

fn env_or(name: &str, default: u64) -> u64 {
    env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Whether the contender is selected by `BACKFLOW_BENCH_FILTER` (all are when it is unset).
fn selected(name: &str) -> bool {
    env::var("BACKFLOW_BENCH_FILTER")
        .map_or(true, |filter| filter.split(',').any(|part| name.contains(part.trim())))
}

fn main() {
    // `cargo bench` passes `--bench`; this report takes no other arguments.
    let rounds = env_or("BACKFLOW_BENCH_ROUNDS", 9) as usize;
    let spsc_items = env_or("BACKFLOW_BENCH_SPSC_ITEMS", 100_000_000);
    let mpmc_items = env_or("BACKFLOW_BENCH_MPMC_ITEMS", 20_000_000);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let only = env::var("BACKFLOW_BENCH_ONLY").unwrap_or_default();

    println!("# Ring throughput, same run\n");
    println!(
        "{rounds} interleaved rounds, capacity {}, u64 items, {cores} cores.\n",
        backflow_benches::CAPACITY
    );

    if only != "mpmc" {
        spsc_table(rounds, spsc_items);
    }
    if only != "spsc" {
        mpmc_tables(rounds, mpmc_items, cores);
    }
}

fn spsc_table(rounds: usize, spsc_items: u64) {
    println!("## SPSC: 1 producer, 1 consumer, {spsc_items} items per run\n");
    let contenders: Vec<_> = spsc::CONTENDERS.iter().filter(|c| selected(c.name)).collect();
    let names: Vec<&str> = contenders.iter().map(|c| c.name).collect();
    let samples = interleave(&names, rounds, |i| {
        Some(per_second(spsc_items, (contenders[i].run)(spsc_items)))
    });
    println!("{}", table(&samples, "rtrb"));
}

fn mpmc_tables(rounds: usize, mpmc_items: u64, cores: usize) {
    for &shape in mpmc::SHAPES {
        let threads = shape.producers + shape.consumers;
        let flag = if threads > cores {
            format!(" (⚠ {threads} spinning threads on {cores} cores: oversubscribed)")
        } else {
            String::new()
        };
        println!(
            "## MPMC: {} producers × {} consumers, {mpmc_items} items per run{flag}\n",
            shape.producers, shape.consumers
        );
        let contenders: Vec<_> = mpmc::CONTENDERS.iter().filter(|c| selected(c.name)).collect();
        let names: Vec<&str> = contenders.iter().map(|c| c.name).collect();
        let samples = interleave(&names, rounds, |i| {
            mpmc::for_shape(contenders[i], shape)(mpmc_items)
                .map(|elapsed| per_second(mpmc_items, elapsed))
        });
        println!("{}", table(&samples, "crossbeam ArrayQueue"));
    }
}
