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
    mut run: impl FnMut(usize) -> Option<f64>,
) -> Vec<Samples> {
    let mut samples: Vec<Samples> = names
        .iter()
        .map(|name| Samples { name: (*name).to_string(), per_second: Vec::new() })
        .collect();
    // One untimed warm-up run each (page faults, thread creation, CPU frequency).
    let applicable: Vec<bool> = (0..names.len()).map(|i| run(i).is_some()).collect();
    for round in 0..rounds {
        for turn in 0..names.len() {
            let i = (round + turn) % names.len();
            if applicable[i] {
                if let Some(sample) = run(i) {
                    samples[i].per_second.push(sample);
                }
            }
        }
    }
    samples.retain(|s| !s.per_second.is_empty());
    samples
}

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
    let base = rows
        .iter()
        .find(|r| r.name == baseline)
        .and_then(|r| Summary::of(&r.per_second))
        .map(|s| s.median);
    let mut out = String::new();
    let _ = writeln!(out, "| contender | median M items/s | min – max | vs {baseline} |");
    let _ = writeln!(out, "|---|---:|---:|---:|");
    for row in rows {
        let Some(s) = Summary::of(&row.per_second) else { continue };
        let ratio = base.map_or_else(|| "–".to_string(), |b| format!("{:.2}×", s.median / b));
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.1} – {:.1} | {} |",
            row.name,
            s.median / 1e6,
            s.min / 1e6,
            s.max / 1e6,
            ratio
        );
    }
    out
}
