//! Same-run comparison tables: interleaved rounds, median with min–max, ratios to a baseline.
//!
//! These machines vary 20–50 % from run to run, so a ratio is only meaningful between numbers
//! taken in the same run, and contenders take turns (round-robin, with the starting contender
//! rotating each round) so that a slow patch of the machine hits all of them alike.

use std::fmt::Write as _;
use std::time::Duration;

/// Throughput samples for one contender, in items per second.
#[derive(Debug, Clone)]
pub struct Samples {
    /// The row label.
    pub name: String,
    /// One entry per round.
    pub per_second: Vec<f64>,
}

/// Median, minimum and maximum of a set of samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// The middle sample (mean of the two middle ones for an even count).
    pub median: f64,
    /// The slowest sample.
    pub min: f64,
    /// The fastest sample.
    pub max: f64,
}

impl Summary {
    /// Summarizes `samples`; `None` if there are none.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_benches::report::Summary;
    ///
    /// let s = Summary::of(&[3.0, 1.0, 2.0]).unwrap();
    /// assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
    /// ```
    pub fn of(samples: &[f64]) -> Option<Self> {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = match n {
            0 => return None,
            _ if n % 2 == 1 => sorted[n / 2],
            _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Some(Self { median, min: sorted[0], max: sorted[n - 1] })
    }
}

/// Items per second for `items` moved in `elapsed`.
pub fn per_second(items: u64, elapsed: Duration) -> f64 {
    items as f64 / elapsed.as_secs_f64()
}

/// Runs every contender `rounds` times, taking turns, and returns their samples in the given
/// order. `run(i)` measures contender `i` once and returns items per second, or `None` when
/// the contender does not apply.
pub fn interleave(
    names: &[&str],
    rounds: usize,
    run: impl FnMut(usize) -> Option<f64>,
) -> Vec<Samples> {
    interleave_runs(names, rounds, run)
        .into_iter()
        .map(|(name, per_second)| Samples { name, per_second })
        .collect()
}

/// [`interleave`] for any kind of measurement (a latency distribution, say): the same turns
/// and warm-up, returning each applicable contender's name with one result per round.
pub fn interleave_runs<T>(
    names: &[&str],
    rounds: usize,
    mut run: impl FnMut(usize) -> Option<T>,
) -> Vec<(String, Vec<T>)> {
    let mut samples: Vec<(String, Vec<T>)> =
        names.iter().map(|name| ((*name).to_string(), Vec::new())).collect();
    // One untimed warm-up run each (page faults, thread creation, CPU frequency).
    let applicable: Vec<bool> = (0..names.len()).map(|i| run(i).is_some()).collect();
    for round in 0..rounds {
        for turn in 0..names.len() {
            let i = (round + turn) % names.len();
            if applicable[i] {
                if let Some(sample) = run(i) {
                    samples[i].1.push(sample);
                }
            }
        }
    }
    samples.retain(|(_, runs)| !runs.is_empty());
    samples
}

/// What a table's ratio column divides by.
#[derive(Debug, Clone, Copy)]
pub enum Baseline<'a> {
    /// The median of the row with this name.
    Row(&'a str),
    /// A fixed rate in items per second, such as the limit a workload cannot exceed.
    Rate {
        /// The column's label, after "vs".
        label: &'a str,
        /// The rate itself.
        per_second: f64,
    },
}

/// The unit a table shows rates in.
#[derive(Debug, Clone, Copy)]
pub struct Unit {
    /// The column heading, e.g. `"M items/s"`.
    pub label: &'static str,
    /// Items per second per unit, e.g. `1e6`.
    pub scale: f64,
}

/// Millions of items per second.
pub const MILLIONS: Unit = Unit { label: "M items/s", scale: 1e6 };

/// Thousands of items per second.
pub const THOUSANDS: Unit = Unit { label: "k items/s", scale: 1e3 };

/// Renders a Markdown table of the samples in millions of items per second, with each median's
/// ratio to the median of the contender named `baseline`.
///
/// # Examples
///
/// ```
/// use backflow_benches::report::{Samples, table};
///
/// let rows = [
///     Samples { name: "a".into(), per_second: vec![2e6, 4e6, 3e6] },
///     Samples { name: "b".into(), per_second: vec![1e6, 1.5e6, 2e6] },
/// ];
/// let out = table(&rows, "b");
/// assert!(out.contains("| a | 3.0 | 2.0 – 4.0 | 2.00× |"));
/// ```
pub fn table(rows: &[Samples], baseline: &str) -> String {
    table_in(rows, &[Baseline::Row(baseline)], MILLIONS)
}

/// Renders a Markdown table of the samples in `unit`, with one ratio column per baseline.
///
/// # Examples
///
/// ```
/// use backflow_benches::report::{Baseline, Samples, THOUSANDS, table_in};
///
/// let rows = [
///     Samples { name: "a".into(), per_second: vec![6e3, 8e3, 7e3] },
///     Samples { name: "b".into(), per_second: vec![3.5e3] },
/// ];
/// let limit = Baseline::Rate { label: "10 k/s", per_second: 1e4 };
/// let out = table_in(&rows, &[limit, Baseline::Row("b")], THOUSANDS);
/// assert!(out.contains("| contender | median k items/s | min – max | vs 10 k/s | vs b |"));
/// assert!(out.contains("| a | 7.0 | 6.0 – 8.0 | 0.70× | 2.00× |"));
/// ```
pub fn table_in(rows: &[Samples], baselines: &[Baseline<'_>], unit: Unit) -> String {
    let bases: Vec<(&str, Option<f64>)> = baselines
        .iter()
        .map(|baseline| match *baseline {
            Baseline::Row(name) => (
                name,
                rows.iter()
                    .find(|r| r.name == name)
                    .and_then(|r| Summary::of(&r.per_second))
                    .map(|s| s.median),
            ),
            Baseline::Rate { label, per_second } => (label, Some(per_second)),
        })
        .collect();
    let mut out = String::new();
    let _ = write!(out, "| contender | median {} | min – max |", unit.label);
    for (label, _) in &bases {
        let _ = write!(out, " vs {label} |");
    }
    let _ = writeln!(out, "\n|---|---:|---:|{}", "---:|".repeat(bases.len()));
    for row in rows {
        let Some(s) = Summary::of(&row.per_second) else { continue };
        let _ = write!(
            out,
            "| {} | {:.1} | {:.1} – {:.1} |",
            row.name,
            s.median / unit.scale,
            s.min / unit.scale,
            s.max / unit.scale,
        );
        for (_, base) in &bases {
            let ratio = base.map_or_else(|| "–".to_string(), |b| format!("{:.2}×", s.median / b));
            let _ = write!(out, " {ratio} |");
        }
        out.push('\n');
    }
    out
}

/// One latency run: the median and 99th percentile, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
}

/// Renders a Markdown table of latency runs in microseconds: for p50 and for p99, the median
/// over the runs and its min – max, with the p50 and p99 medians' ratios to those of the row
/// named `baseline`.
///
/// # Examples
///
/// ```
/// use backflow_benches::report::{Latency, latency_table};
///
/// let rows = [
///     ("a".to_string(), vec![Latency { p50: 2_000, p99: 9_000 }, Latency { p50: 4_000, p99: 11_000 }, Latency { p50: 3_000, p99: 10_000 }]),
///     ("b".to_string(), vec![Latency { p50: 6_000, p99: 20_000 }]),
/// ];
/// let out = latency_table(&rows, "b");
/// assert!(out.contains("| a | 3.0 | 2.0 – 4.0 | 10.0 | 9.0 – 11.0 | 0.50× | 0.50× |"));
/// ```
pub fn latency_table(rows: &[(String, Vec<Latency>)], baseline: &str) -> String {
    let micros = |runs: &[Latency], pick: fn(&Latency) -> u64| {
        let values: Vec<f64> = runs.iter().map(|run| pick(run) as f64 / 1e3).collect();
        Summary::of(&values)
    };
    let p50 = |run: &Latency| run.p50;
    let p99 = |run: &Latency| run.p99;
    let base = rows
        .iter()
        .find(|(name, _)| name == baseline)
        .and_then(|(_, runs)| Some((micros(runs, p50)?.median, micros(runs, p99)?.median)));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| contender | p50 µs | min – max | p99 µs | min – max | p50 vs {baseline} | p99 vs {baseline} |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
    for (name, runs) in rows {
        let (Some(a), Some(b)) = (micros(runs, p50), micros(runs, p99)) else { continue };
        let ratio = |mine: f64, theirs: Option<f64>| {
            theirs.map_or_else(|| "–".to_string(), |t| format!("{:.2}×", mine / t))
        };
        let _ = writeln!(
            out,
            "| {name} | {:.1} | {:.1} – {:.1} | {:.1} | {:.1} – {:.1} | {} | {} |",
            a.median,
            a.min,
            a.max,
            b.median,
            b.min,
            b.max,
            ratio(a.median, base.map(|(x, _)| x)),
            ratio(b.median, base.map(|(_, y)| y)),
        );
    }
    out
}
