//! The same-run comparison report: every ring and pipeline contender, interleaved, several
//! rounds, one Markdown table per workload on stdout. Run it with `cargo xtask bench`.
//!
//! Environment: `BACKFLOW_BENCH_ROUNDS` (default 9), `BACKFLOW_BENCH_SPSC_ITEMS` (default
//! 100 000 000), `BACKFLOW_BENCH_MPMC_ITEMS` (default 20 000 000),
//! `BACKFLOW_BENCH_PIPELINE_ITEMS` (default 10 000 000), `BACKFLOW_BENCH_PARALLEL_ITEMS`
//! (default 50 000), `BACKFLOW_BENCH_ORDERED_ITEMS` (default 800 000, the 1 µs stage),
//! `BACKFLOW_BENCH_ORDERED_MAP_ITEMS` (default 15 000 000, the plain map),
//! `BACKFLOW_BENCH_BYTES_ITEMS` (default 20 000, the heavy items of the byte budget),
//! `BACKFLOW_BENCH_ASYNC_ITEMS` (default 20 000, the 5 ms I/O stage; the thread stage runs a
//! tenth of them), `BACKFLOW_BENCH_ASYNC_SEND_ITEMS` (default 2 000 000, the async ends),
//! `BACKFLOW_BENCH_ONLY` (`spsc`, `mpmc`, `pipeline`, `throughput`, `parallel`, `ordered`,
//! `metrics`, `bytes`, `budget` or `async`: run one part),
//! `BACKFLOW_BENCH_FILTER` (comma-separated substrings: run only the contenders whose name
//! contains one).

use std::env;
use std::time::Duration;

use backflow_benches::budget::{self, Workers};
use backflow_benches::ordered::{self, Load};
use backflow_benches::pipeline::{self, SinkDelay, Workload};
use backflow_benches::report::{
    Baseline, MILLIONS, Samples, Summary, THOUSANDS, interleave, interleave_runs, latency_table,
    per_second, table, table_in,
};
use backflow_benches::{asynchronous, bytes, mpmc, parallel, spsc};

/// Items per paced-latency run: half a second at [`pipeline::RATE`].
const LATENCY_ITEMS: u64 = pipeline::RATE / 2;

/// Items per slow-consumer run: half a second at the sink's limit.
const SLOW_ITEMS: u64 = 5_000;

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
    let pipeline_items = env_or("BACKFLOW_BENCH_PIPELINE_ITEMS", 10_000_000);
    let parallel_items = env_or("BACKFLOW_BENCH_PARALLEL_ITEMS", 50_000);
    let ordered_items = env_or("BACKFLOW_BENCH_ORDERED_ITEMS", 800_000);
    let ordered_map_items = env_or("BACKFLOW_BENCH_ORDERED_MAP_ITEMS", 15_000_000);
    let budget_items = env_or("BACKFLOW_BENCH_BUDGET_ITEMS", 400_000);
    let async_items = env_or("BACKFLOW_BENCH_ASYNC_ITEMS", 20_000);
    let async_send_items = env_or("BACKFLOW_BENCH_ASYNC_SEND_ITEMS", 2_000_000);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let only = env::var("BACKFLOW_BENCH_ONLY").unwrap_or_default();
    let part = |name: &str| only.is_empty() || only == name;

    println!("# Same-run comparison\n");
    println!(
        "{rounds} interleaved rounds, capacity {}, u64 items, {cores} cores.\n",
        backflow_benches::CAPACITY
    );

    if part("spsc") {
        spsc_table(rounds, spsc_items);
    }
    if part("mpmc") {
        mpmc_tables(rounds, mpmc_items, cores);
    }
    if part("pipeline") || part("throughput") {
        throughput_tables(rounds, pipeline_items, cores);
    }
    if part("pipeline") {
        pipeline_tables(rounds);
    }
    if part("parallel") {
        parallel_table(rounds, parallel_items, cores);
    }
    if part("ordered") {
        ordered_tables(rounds, ordered_items, ordered_map_items, cores);
    }
    if part("metrics") {
        metrics_table(rounds, pipeline_items);
    }
    if part("budget") {
        budget_table(rounds, budget_items, cores);
    }
    if part("async") {
        async_tables(rounds, async_items, async_send_items, cores);
    }
    if part("bytes") {
        let heavy_items = env_or("BACKFLOW_BENCH_BYTES_ITEMS", 20_000);
        bytes_tables(rounds, u32::try_from(heavy_items).unwrap_or(u32::MAX), pipeline_items);
    }
}

/// Heavy items through three stages with and without a byte budget (throughput and peak
/// memory), and small items with and without one (what the budget costs per item).
fn bytes_tables(rounds: usize, items: u32, small_items: u64) {
    let heavy: Vec<_> = bytes::HEAVY.iter().filter(|(name, _)| selected(name)).collect();
    let names: Vec<&str> = heavy.iter().map(|(name, _)| *name).collect();
    for delay in [Duration::ZERO, Duration::from_micros(50)] {
        println!(
            "## Byte budget: {items} items of 1 KiB – 1 MiB through 3 stages, sink sleeping \
             {delay:?} per item\n"
        );
        let runs =
            interleave_runs(&names, rounds, |i| Some(bytes::heavy(items, heavy[i].1, delay)));
        println!(
            "| contender | median items/s | median MB/s | min – max items/s | peak RSS MiB (max) |"
        );
        println!("|---|---:|---:|---:|---:|");
        for (name, runs) in runs {
            let rates: Vec<f64> =
                runs.iter().map(|r| per_second(u64::from(items), r.elapsed)).collect();
            let mbs: Vec<f64> =
                runs.iter().map(|r| r.bytes as f64 / 1e6 / r.elapsed.as_secs_f64()).collect();
            let (Some(rate), Some(mb)) = (Summary::of(&rates), Summary::of(&mbs)) else { continue };
            let peak = runs.iter().filter_map(|r| r.peak_rss).max();
            let peak = peak.map_or_else(
                || "–".to_string(),
                |p| format!("{:.0}", p as f64 / f64::from(1 << 20)),
            );
            println!(
                "| {name} | {:.0} | {:.0} | {:.0} – {:.0} | {peak} |",
                rate.median, mb.median, rate.min, rate.max
            );
        }
        println!();
    }
    println!("## Byte budget: {small_items} u64 items through 3 stages, push_iter\n");
    let small: Vec<_> = bytes::SMALL.iter().filter(|(name, _)| selected(name)).collect();
    let names: Vec<&str> = small.iter().map(|(name, _)| *name).collect();
    let samples = interleave(&names, rounds, |i| {
        Some(per_second(small_items, bytes::small(small_items, small[i].1)))
    });
    let baselines = [Baseline::Row(bytes::SMALL[0].0)];
    println!("{}", table_in(&samples, &baselines, MILLIONS));
}

/// The 3-stage pipeline with its timings on and off, interleaved: what the stats cost.
fn metrics_table(rounds: usize, items: u64) {
    let workload = Workload { items, stages: 3, sink_delay: SinkDelay::None };
    println!("## Metrics on and off: 3 stages, push_iter, {items} items per run\n");
    let contenders: Vec<_> = pipeline::METRICS.iter().filter(|c| selected(c.name)).collect();
    let names: Vec<&str> = contenders.iter().map(|c| c.name).collect();
    let samples = interleave(&names, rounds, |i| {
        (contenders[i].run)(workload).map(|elapsed| per_second(items, elapsed))
    });
    let baselines = [Baseline::Row(pipeline::METRICS[1].name)];
    println!("{}", table_in(&samples, &baselines, MILLIONS));
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

fn throughput_tables(rounds: usize, items: u64, cores: usize) {
    let contenders: Vec<_> = pipeline::THROUGHPUT.iter().filter(|c| selected(c.name)).collect();
    let names: Vec<&str> = contenders.iter().map(|c| c.name).collect();
    for &stages in pipeline::STAGES {
        let workload = Workload { items, stages, sink_delay: SinkDelay::None };
        let threads = workload.threads();
        let flag = if threads > cores {
            format!(" ({threads} threads on {cores} cores)")
        } else {
            String::new()
        };
        println!(
            "## Pipeline, {stages} stage(s): producer → stages → sink, {items} items per run{flag}\n"
        );
        let samples = interleave(&names, rounds, |i| {
            (contenders[i].run)(workload).map(|elapsed| per_second(items, elapsed))
        });
        let baselines = [Baseline::Row(pipeline::DISRUPTOR), Baseline::Row(pipeline::CHANNEL)];
        println!("{}", table_in(&samples, &baselines, MILLIONS));
    }
}

fn pipeline_tables(rounds: usize) {
    let rate = pipeline::RATE;
    let contenders: Vec<_> = pipeline::LATENCY.iter().filter(|c| selected(c.name)).collect();
    let names: Vec<&str> = contenders.iter().map(|c| c.name).collect();
    for &stages in pipeline::LATENCY_STAGES {
        println!(
            "## Pipeline latency, {stages} stage(s): {LATENCY_ITEMS} items paced at {} k items/s \
             (the producer sleeps between items), end to end\n",
            rate / 1000
        );
        let runs =
            interleave_runs(&names, rounds, |i| (contenders[i].run)(LATENCY_ITEMS, rate, stages));
        println!("{}", latency_table(&runs, "backflow push (Park)"));
    }

    let delay = pipeline::SINK_DELAY;
    let limit = 1e9 / delay.as_nanos() as f64;
    let label = format!("{} k/s limit", limit / 1e3);
    let contenders: Vec<_> = pipeline::SLOW_CONSUMER.iter().filter(|c| selected(c.name)).collect();
    let names: Vec<&str> = contenders.iter().map(|c| c.name).collect();
    for (how, sink_delay) in
        [("sleeps", SinkDelay::Sleep(delay)), ("busy-waits", SinkDelay::Spin(delay))]
    {
        println!(
            "## Slow consumer, 1 stage: the sink {how} {} µs per item, {SLOW_ITEMS} items per run\n",
            delay.as_micros()
        );
        let workload = Workload { items: SLOW_ITEMS, stages: 1, sink_delay };
        let samples = interleave(&names, rounds, |i| {
            (contenders[i].run)(workload).map(|elapsed| per_second(SLOW_ITEMS, elapsed))
        });
        let baselines = [
            Baseline::Rate { label: &label, per_second: limit },
            Baseline::Row(pipeline::DELAY_ALONE),
        ];
        println!("{}", table_in(&samples, &baselines, THOUSANDS));
    }
}

fn parallel_table(rounds: usize, items: u64, cores: usize) {
    println!(
        "## A CPU-bound stage ({} µs per item) on {cores} cores, {items} items per run\n",
        parallel::COST.as_micros()
    );
    let contenders: Vec<_> = parallel::CONTENDERS.iter().filter(|c| selected(c.name)).collect();
    let names: Vec<&str> = contenders.iter().map(|c| c.name).collect();
    let samples =
        interleave(&names, rounds, |i| Some(per_second(items, (contenders[i].run)(items))));
    println!("{}", table_in(&samples, &[Baseline::Row(parallel::ONE_WORKER)], THOUSANDS));
}

fn ordered_tables(rounds: usize, spin_items: u64, map_items: u64, cores: usize) {
    let contenders: Vec<_> = ordered::CONTENDERS.iter().filter(|c| selected(c.name)).collect();
    let names: Vec<&str> = contenders.iter().map(|c| c.name).collect();
    let cost = format!("{} µs of busy work per item", ordered::COST.as_micros());
    for (load, what, items) in
        [(Load::Spin, cost.as_str(), spin_items), (Load::Map, "a plain map", map_items)]
    {
        println!(
            "## Ordering: one stage ({what}) on {cores} cores, producer → stage → sink, \
             {items} items per run\n"
        );
        let mut inversions = vec![Vec::new(); contenders.len()];
        let samples = interleave(&names, rounds, |i| {
            let run = (contenders[i].run)(load, items);
            inversions[i].push(run.inversions as f64);
            Some(per_second(items, run.elapsed))
        });
        let baselines = [Baseline::Row(ordered::ONE_WORKER), Baseline::Row(ordered::UNORDERED)];
        let unit = if load == Load::Spin { THOUSANDS } else { MILLIONS };
        println!("{}", table_in(&samples, &baselines, unit));
        println!(
            "Inversions at the sink (items not greater than the one before), median over the runs (warm-up included):\n"
        );
        for (name, counts) in names.iter().zip(&inversions) {
            let median = Summary::of(counts).map_or(0.0, |s| s.median);
            println!("- {name}: {median:.0}");
        }
        println!();
    }
}

/// Every fixed assignment of the thread budget against the scaler, interleaved; the ratio
/// column divides by the best fixed assignment's median. Then what the scaler did each run.
fn budget_table(rounds: usize, items: u64, cores: usize) {
    let costs: Vec<String> = budget::COSTS.iter().map(|c| c.as_micros().to_string()).collect();
    println!(
        "## Thread budget: 3 stages of {} µs per item, {} worker threads, {cores} cores, \
         {items} items per run\n",
        costs.join(" / "),
        budget::THREADS
    );
    let contenders: Vec<Workers> = budget::fixed_assignments()
        .into_iter()
        .map(Workers::Fixed)
        .chain([Workers::Budget])
        .filter(|w| selected(&w.name()))
        .collect();
    let names: Vec<String> = contenders.iter().map(|w| w.name()).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let runs = interleave_runs(&name_refs, rounds, |i| Some(budget::run(items, contenders[i])));
    let samples: Vec<Samples> = runs
        .iter()
        .map(|(name, runs)| Samples {
            name: name.clone(),
            per_second: runs.iter().map(|run| per_second(items, run.elapsed)).collect(),
        })
        .collect();
    let best = samples
        .iter()
        .filter(|s| s.name.starts_with("fixed"))
        .filter_map(|s| Some((s.name.as_str(), Summary::of(&s.per_second)?.median)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(name, _)| name);
    let baselines: Vec<Baseline<'_>> = best.map(Baseline::Row).into_iter().collect();
    println!("{}", table_in(&samples, &baselines, THOUSANDS));
    let scaled = Workers::Budget.name();
    for (name, runs) in runs.iter().filter(|(name, _)| *name == scaled) {
        println!(
            "{name}, run by run: the moves (time since the first push) and the workers at the end.\n"
        );
        for run in runs {
            let moves: Vec<String> = run
                .moves
                .iter()
                .map(|(at, what)| format!("{:.2} s {what}", at.as_secs_f64()))
                .collect();
            let [a, b, c] = run.workers;
            println!(
                "- {}; at the end {a} / {b} / {c}",
                if moves.is_empty() { "no move".into() } else { moves.join(", ") }
            );
        }
        println!();
    }
}

/// The I/O-bound stage (5 ms timer calls) and the async ends.
fn async_tables(rounds: usize, items: u64, send_items: u64, cores: usize) {
    let runtime = asynchronous::runtime();
    println!(
        "## An I/O-bound stage: each call waits {} ms on the tokio timer, {cores} cores, {items} items per run
",
        asynchronous::CALL.as_millis()
    );
    println!(
        "The thread stage runs {} items per run (a tenth: it is that much slower).
",
        items / 10
    );
    let contenders: Vec<_> =
        asynchronous::IO_CONTENDERS.iter().filter(|c| selected(c.name)).collect();
    let names: Vec<&str> = contenders.iter().map(|c| c.name).collect();
    let mut peaks = vec![0usize; contenders.len()];
    let samples = interleave(&names, rounds, |i| {
        let n = if contenders[i].name == asynchronous::THREADS { items / 10 } else { items };
        let run = (contenders[i].run)(&runtime, n);
        peaks[i] = peaks[i].max(run.peak_calls);
        Some(per_second(n, run.elapsed))
    });
    println!("{}", table_in(&samples, &[Baseline::Row(asynchronous::BACKFLOW_ASYNC)], THOUSANDS));
    println!("Most calls alive at once (memory in flight), over every run:\n");
    for (name, peak) in names.iter().zip(&peaks) {
        println!("- {name}: {peak}");
    }
    println!();

    println!(
        "## Async ends: a producer task sends u64s through one stage to a consumer task, {cores} cores, {send_items} items per run\n"
    );
    let contenders: Vec<_> =
        asynchronous::SEND_CONTENDERS.iter().filter(|c| selected(c.name)).collect();
    let names: Vec<&str> = contenders.iter().map(|c| c.name).collect();
    let samples = interleave(&names, rounds, |i| {
        Some(per_second(send_items, (contenders[i].run)(&runtime, send_items)))
    });
    println!("{}", table_in(&samples, &[Baseline::Row(asynchronous::TOKIO_MPSC)], MILLIONS));
}
