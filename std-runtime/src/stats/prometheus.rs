//! Every stat of a [`Stats`] snapshot as Prometheus metrics: [`Stats::to_prometheus`] writes
//! the text exposition format (version 0.0.4) that a `/metrics` endpoint serves, and, with the
//! `metrics` feature, `Stats::record_metrics` sets the same values through the `metrics`
//! facade.
//!
//! The families are built once, as data ([`families`]), and written by each output.
//!
//! # Examples
//!
//! ```
//! use backflow::Pipeline;
//!
//! let pipeline = Pipeline::<u32>::builder().stage("parse", || |x: u32| x).sink(|_| {}).build()?;
//! pipeline.input().push_iter(0..3)?;
//! let report = pipeline.drain()?;
//! let text = report.stats().to_prometheus("orders");
//! assert!(text.contains("# TYPE backflow_stage_received_items_total counter\n"));
//! assert!(text.contains("backflow_stage_received_items_total{pipeline=\"orders\",stage=\"parse\"} 3\n"));
//! assert!(text.contains("backflow_sink_delivered_items_total{pipeline=\"orders\",sink=\"sink\"} 3\n"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt::Write as _;

use backflow_core::breaker::BreakerState;

use super::{Latency, SinkStats, StageStats, Stats};

/// How a family's samples behave, as Prometheus types them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Only goes up (until the pipeline is rebuilt).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Quantiles of a distribution, one sample each, with a `quantile` label.
    Summary,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Summary => "summary",
        }
    }
}

/// One metric family: what `# HELP` and `# TYPE` say about the samples that follow.
#[derive(Debug, Clone, Copy)]
struct Family {
    name: &'static str,
    kind: Kind,
    help: &'static str,
}

/// A sample's value: a count, written exactly, or a number.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Value {
    Count(u64),
    Number(f64),
}

impl Value {
    fn flag(on: bool) -> Self {
        Self::Count(u64::from(on))
    }

    fn size(n: usize) -> Self {
        Self::Count(n as u64)
    }

    #[cfg(feature = "metrics")]
    fn as_f64(self) -> f64 {
        match self {
            Self::Count(n) => n as f64,
            Self::Number(x) => x,
        }
    }
}

/// A label name and a value known at compile time.
type Label = (&'static str, &'static str);

/// One node's samples in one family, each with its extra label, if any.
type Values = Vec<(Option<Label>, Value)>;

/// Every family of one snapshot, each with its samples (see [`families`]).
type Families<'a> = Vec<(Family, Vec<Sample<'a>>)>;

/// One sample: the node it describes (`("stage", name)`, `("sink", name)`, or none for the
/// whole pipeline), at most one more label, and the value.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample<'a> {
    node: Option<(&'static str, &'a str)>,
    extra: Option<Label>,
    value: Value,
}

/// Every family of `stats` with its samples, in the order they are written: the same
/// families for every snapshot, some perhaps without samples (the circuit state when no stage
/// has a breaker), which the outputs leave out.
fn families(stats: &Stats) -> Families<'_> {
    let mut all = Vec::with_capacity(32);
    let mut stage = |family: Family, values: &dyn Fn(&StageStats) -> Values| {
        let samples = stats.stages().iter().flat_map(|s| {
            let node = Some(("stage", s.name.as_str()));
            values(s).into_iter().map(move |(extra, value)| Sample { node, extra, value })
        });
        all.push((family, samples.collect()));
    };
    let one = |value: Value| vec![(None, value)];

    stage(
        counter(
            "backflow_stage_received_items_total",
            "Items that entered the stage's queue, or were dropped by its overflow policy trying to.",
        ),
        &|s| one(Value::Count(s.accounting.received)),
    );
    stage(
        counter(
            "backflow_stage_emitted_inputs_total",
            "Inputs the stage processed successfully, whatever number of outputs they produced.",
        ),
        &|s| one(Value::Count(s.accounting.emitted_inputs)),
    );
    stage(counter("backflow_stage_emitted_outputs_total", "Outputs the stage emitted."), &|s| {
        one(Value::Count(s.emitted_outputs))
    });
    stage(
        counter(
            "backflow_stage_dropped_items_total",
            "Items the stage's overflow policy dropped: evicted from its full queue (reason \
             oldest) or refused by it (reason newest).",
        ),
        &|s| {
            vec![
                (Some(("reason", "oldest")), Value::Count(s.dropped_oldest)),
                (Some(("reason", "newest")), Value::Count(s.dropped_newest)),
            ]
        },
    );
    stage(
        counter(
            "backflow_stage_errored_items_total",
            "Inputs whose processing failed for good (an error or a panic), not dead-lettered.",
        ),
        &|s| one(Value::Count(s.accounting.errored)),
    );
    stage(
        counter(
            "backflow_stage_dead_lettered_items_total",
            "Inputs that failed for good and went to the stage's dead-letter handler.",
        ),
        &|s| one(Value::Count(s.accounting.dead_lettered)),
    );
    stage(
        counter(
            "backflow_stage_abandoned_items_total",
            "Inputs never processed because the pipeline was cancelled or shut down first.",
        ),
        &|s| one(Value::Count(s.accounting.abandoned)),
    );
    stage(
        counter(
            "backflow_stage_panics_total",
            "Failed attempts that were panics (each rebuilt the worker's stage), and failed flushes.",
        ),
        &|s| one(Value::Count(s.panics)),
    );
    stage(counter("backflow_stage_retries_total", "Attempts made again after a failure."), &|s| {
        one(Value::Count(s.retries))
    });
    stage(
        counter(
            "backflow_stage_pressure_transitions_total",
            "Times pressure in front of the stage turned on or off.",
        ),
        &|s| one(Value::Count(s.pressure_transitions)),
    );
    stage(
        gauge(
            "backflow_stage_in_flight_items",
            "Inputs received and not yet settled: queued or being processed.",
        ),
        &|s| one(Value::Count(s.accounting.in_flight)),
    );
    stage(gauge("backflow_stage_queue_items", "Items in the stage's input queue."), &|s| {
        one(Value::size(s.queue_len))
    });
    stage(
        gauge("backflow_stage_queue_capacity_items", "The capacity of the stage's input queue."),
        &|s| one(Value::size(s.queue_capacity)),
    );
    stage(
        gauge(
            "backflow_stage_queue_bytes",
            "The weight (bytes) of the items in the stage's input queue, as its byte budget \
             counts it; only stages with a byte budget.",
        ),
        &|s| s.queue_capacity_bytes.map_or_else(Vec::new, |_| one(Value::size(s.queue_bytes))),
    );
    stage(gauge("backflow_stage_workers", "The stage's worker threads."), &|s| {
        one(Value::size(s.workers))
    });
    stage(
        gauge(
            "backflow_stage_pressure_on",
            "1 while pressure is on in front of the stage (its queue reached the high water \
             mark and has not fallen to the low one yet), else 0.",
        ),
        &|s| one(Value::flag(s.pressure_on)),
    );
    stage(
        gauge(
            "backflow_stage_circuit_state",
            "1 for the state the stage's circuit breaker is in, 0 for the others; only stages \
             with a breaker.",
        ),
        &|s| {
            let Some(now) = s.circuit else { return Vec::new() };
            [
                ("closed", BreakerState::Closed),
                ("open", BreakerState::Open),
                ("half_open", BreakerState::HalfOpen),
            ]
            .map(|(name, state)| (Some(("state", name)), Value::flag(state == now)))
            .to_vec()
        },
    );
    stage(
        gauge(
            "backflow_stage_time_share",
            "Fraction of the workers' wall time since the start spent processing (busy), \
             handing outputs downstream (backpressured) or waiting for items (idle); the three \
             add up to 1.",
        ),
        &|s| {
            vec![
                (Some(("kind", "busy")), Value::Number(s.time.busy)),
                (Some(("kind", "backpressured")), Value::Number(s.time.backpressured)),
                (Some(("kind", "idle")), Value::Number(s.time.idle)),
            ]
        },
    );
    stage(
        gauge(
            "backflow_stage_throughput_items_per_second",
            "Inputs processed per second: over the recent window (at least 200 ms between \
             snapshots) or since the start (total).",
        ),
        &|s| throughput(s.throughput_recent, s.throughput_total),
    );
    stage(
        summary(
            "backflow_stage_process_seconds",
            "Time to process one input, sampled; quantile 1 is the largest sample. Quantiles \
             of a bucketed histogram, within 1.6 %; no _sum or _count, which the stats do not \
             keep.",
        ),
        &|s| quantiles(&s.process_time),
    );
    stage(
        summary(
            "backflow_stage_queue_wait_seconds",
            "Time an input waited in the stage's queue, sampled; quantile 1 is the largest \
             sample. Quantiles of a bucketed histogram, within 1.6 %; no _sum or _count, which \
             the stats do not keep.",
        ),
        &|s| quantiles(&s.queue_wait),
    );

    let mut sink = |family: Family, values: &dyn Fn(&SinkStats) -> Values| {
        let samples = stats.sinks().iter().flat_map(|k| {
            let node = Some(("sink", k.name.as_str()));
            values(k).into_iter().map(move |(extra, value)| Sample { node, extra, value })
        });
        all.push((family, samples.collect()));
    };
    sink(counter("backflow_sink_received_items_total", "Items that reached the sink."), &|k| {
        one(Value::Count(k.received))
    });
    sink(
        counter(
            "backflow_sink_delivered_items_total",
            "Items the sink closure took, or the output handle yielded.",
        ),
        &|k| one(Value::Count(k.delivered)),
    );
    sink(
        counter(
            "backflow_sink_abandoned_items_total",
            "Items that reached the sink after a cancel, or were left in a dropped output handle.",
        ),
        &|k| one(Value::Count(k.abandoned)),
    );
    sink(
        gauge("backflow_sink_in_flight_items", "Items waiting in the output handle's queue."),
        &|k| one(Value::Count(k.in_flight)),
    );
    sink(
        summary(
            "backflow_sink_latency_seconds",
            "End-to-end latency from push to the sink, sampled; quantile 1 is the largest \
             sample. Quantiles of a bucketed histogram, within 1.6 %; no _sum or _count, which \
             the stats do not keep.",
        ),
        &|k| quantiles(&k.latency),
    );
    sink(
        gauge(
            "backflow_sink_throughput_items_per_second",
            "Items delivered per second: over the recent window (at least 200 ms between \
             snapshots) or since the start (total).",
        ),
        &|k| throughput(k.throughput_recent, k.throughput_total),
    );

    let elapsed = Value::Number(stats.elapsed().as_secs_f64());
    all.push((
        gauge("backflow_pipeline_elapsed_seconds", "Time since the pipeline started."),
        vec![Sample { node: None, extra: None, value: elapsed }],
    ));
    all
}

const fn counter(name: &'static str, help: &'static str) -> Family {
    Family { name, kind: Kind::Counter, help }
}

const fn gauge(name: &'static str, help: &'static str) -> Family {
    Family { name, kind: Kind::Gauge, help }
}

const fn summary(name: &'static str, help: &'static str) -> Family {
    Family { name, kind: Kind::Summary, help }
}

fn throughput(recent: f64, total: f64) -> Values {
    vec![
        (Some(("window", "recent")), Value::Number(recent)),
        (Some(("window", "total")), Value::Number(total)),
    ]
}

/// A latency's quantiles, in seconds; its maximum is quantile 1.
fn quantiles(latency: &Latency) -> Values {
    let seconds = |ns: u64| Value::Number(ns as f64 / 1e9);
    vec![
        (Some(("quantile", "0.5")), seconds(latency.p50)),
        (Some(("quantile", "0.95")), seconds(latency.p95)),
        (Some(("quantile", "0.99")), seconds(latency.p99)),
        (Some(("quantile", "1")), seconds(latency.max)),
    ]
}

/// Writes `value` as a label value between double quotes: backslash, double quote and line
/// feed escaped as `\\`, `\"` and `\n`, as the text format requires.
fn write_label_value(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Writes a sample value: a count exactly, a number in the shortest form that reads back as
/// the same `f64`, and the infinities and NaN as Prometheus spells them.
fn write_value(out: &mut String, value: Value) {
    // `fmt::Write` for `String` never fails.
    let _ = match value {
        Value::Count(n) => write!(out, "{n}"),
        Value::Number(x) if x.is_nan() => write!(out, "NaN"),
        Value::Number(x) if x.is_infinite() => {
            write!(out, "{}Inf", if x > 0.0 { '+' } else { '-' })
        }
        Value::Number(x) => write!(out, "{x}"),
    };
}

/// The stats of several pipelines in one Prometheus text exposition (version 0.0.4), as
/// one `/metrics` endpoint serves them: each family once, with one `# HELP` and one `# TYPE`
/// line, then the samples of every pipeline in the order given, each labelled
/// `pipeline="{name}"`. The names should differ, or the pipelines' series would clash.
/// [`Stats::to_prometheus`] writes a single pipeline's, and says what each family is.
///
/// # Examples
///
/// ```
/// use backflow::Pipeline;
///
/// let orders = Pipeline::<u32>::builder().stage("parse", || |x: u32| x).sink(|_| {}).build()?;
/// let billing = Pipeline::<u64>::builder().stage("parse", || |x: u64| x).sink(|_| {}).build()?;
/// orders.input().push_iter(0..3)?;
/// let (orders, billing) = (orders.drain()?, billing.drain()?);
/// let text = backflow::stats::exposition([("orders", orders.stats()), ("billing", billing.stats())]);
/// assert_eq!(text.matches("# TYPE backflow_stage_received_items_total counter\n").count(), 1);
/// assert!(text.contains("backflow_stage_received_items_total{pipeline=\"orders\",stage=\"parse\"} 3\n"));
/// assert!(text.contains("backflow_stage_received_items_total{pipeline=\"billing\",stage=\"parse\"} 0\n"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn exposition<'a>(pipelines: impl IntoIterator<Item = (&'a str, &'a Stats)>) -> String {
    let each: Vec<(&str, Families<'_>)> =
        pipelines.into_iter().map(|(pipeline, stats)| (pipeline, families(stats))).collect();
    let mut out = String::with_capacity(16 * 1024 * each.len().max(1));
    let Some((_, first)) = each.first() else { return out };
    for (index, &(family, _)) in first.iter().enumerate() {
        // Every snapshot has the same families, in the same order.
        let samples = || {
            each.iter().flat_map(|(pipeline, all)| {
                all.get(index)
                    .into_iter()
                    .flat_map(move |(_, s)| s.iter().map(move |s| (*pipeline, s)))
            })
        };
        if samples().next().is_none() {
            continue;
        }
        // HELP text escapes backslash and line feed; ours has neither.
        debug_assert!(!family.help.contains(['\\', '\n']), "{}", family.name);
        let (name, kind) = (family.name, family.kind.as_str());
        let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} {kind}", family.help);
        for (pipeline, sample) in samples() {
            out.push_str(name);
            out.push_str("{pipeline=");
            write_label_value(&mut out, pipeline);
            for (label, value) in sample.node.into_iter().chain(sample.extra) {
                out.push(',');
                out.push_str(label);
                out.push('=');
                write_label_value(&mut out, value);
            }
            out.push_str("} ");
            write_value(&mut out, sample.value);
            out.push('\n');
        }
    }
    out
}

impl Stats {
    /// Every stat of this snapshot in the Prometheus text exposition format (version
    /// 0.0.4), each sample labelled `pipeline="{pipeline}"` and with its stage or sink; serve
    /// it with the content type `text/plain; version=0.0.4`. Each family has one `# HELP` and
    /// one `# TYPE` line, before its samples.
    ///
    /// Every name starts with `backflow_`, then the node it describes (`stage_`, `sink_`,
    /// `pipeline_`), and ends with its unit (`_items_total`, `_seconds`, …). Every sample
    /// carries the `pipeline` label and, but for the elapsed time, a `stage` or `sink` label
    /// naming its node:
    ///
    /// | family | type | extra label |
    /// | --- | --- | --- |
    /// | `backflow_stage_received_items_total` | counter | |
    /// | `backflow_stage_emitted_inputs_total`, `backflow_stage_emitted_outputs_total` | counter | |
    /// | `backflow_stage_dropped_items_total` | counter | `reason`: `oldest`, `newest` |
    /// | `backflow_stage_errored_items_total`, `backflow_stage_dead_lettered_items_total`, `backflow_stage_abandoned_items_total` | counter | |
    /// | `backflow_stage_panics_total`, `backflow_stage_retries_total`, `backflow_stage_pressure_transitions_total` | counter | |
    /// | `backflow_stage_in_flight_items`, `backflow_stage_queue_items`, `backflow_stage_queue_capacity_items`, `backflow_stage_workers` | gauge | |
    /// | `backflow_stage_pressure_on` | gauge, 0 or 1 | |
    /// | `backflow_stage_circuit_state` (stages with a breaker only) | gauge, 0 or 1 | `state`: `closed`, `open`, `half_open` |
    /// | `backflow_stage_time_share` | gauge, 0 to 1 | `kind`: `busy`, `backpressured`, `idle` |
    /// | `backflow_stage_throughput_items_per_second` | gauge | `window`: `recent`, `total` |
    /// | `backflow_stage_process_seconds`, `backflow_stage_queue_wait_seconds` | summary | `quantile`: `0.5`, `0.95`, `0.99`, `1` |
    /// | `backflow_sink_received_items_total`, `backflow_sink_delivered_items_total`, `backflow_sink_abandoned_items_total` | counter | |
    /// | `backflow_sink_in_flight_items` | gauge | |
    /// | `backflow_sink_latency_seconds` | summary | `quantile` |
    /// | `backflow_sink_throughput_items_per_second` | gauge | `window` |
    /// | `backflow_pipeline_elapsed_seconds` | gauge | |
    ///
    /// The summaries have no `_sum` and `_count` samples: the snapshot keeps only the quantiles
    /// of its sampled, bucketed histograms (within 1.6 % of the true value; see
    /// [`backflow::core::metrics`](crate::core::metrics)). Quantile `1` is the largest sample,
    /// exact.
    ///
    /// Counters count from the pipeline's start, so a rebuilt pipeline starts them again
    /// from zero, which Prometheus's `rate()` reads as a counter reset.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow::{Overflow, Pipeline};
    ///
    /// let pipeline = Pipeline::<u32>::builder()
    ///     .stage("evens", || backflow::stage::filter(|x: &u32| x % 2 == 0))
    ///     .overflow(Overflow::DropNewest)
    ///     .sink(|_| {})
    ///     .build()?;
    /// pipeline.input().push_iter(0..10)?;
    /// let report = pipeline.drain()?;
    /// let text = report.stats().to_prometheus("numbers");
    ///
    /// let received = r#"backflow_stage_received_items_total{pipeline="numbers",stage="evens"} 10"#;
    /// assert!(text.lines().any(|line| line == received));
    /// let evens = r#"backflow_sink_delivered_items_total{pipeline="numbers",sink="sink"} 5"#;
    /// assert!(text.lines().any(|line| line == evens));
    /// let dropped = r#"backflow_stage_dropped_items_total{pipeline="numbers",stage="evens",reason="newest"} "#;
    /// assert!(text.lines().any(|line| line.starts_with(dropped)));
    /// assert_eq!(text.matches("# TYPE backflow_stage_process_seconds summary\n").count(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn to_prometheus(&self, pipeline: &str) -> String {
        exposition([(pipeline, self)])
    }

    /// Sets every stat of this snapshot through the [`metrics`] facade, on whatever recorder
    /// is installed, under the same names and labels as [`to_prometheus`](Self::to_prometheus):
    /// counters with [`Counter::absolute`](metrics::Counter::absolute), everything else with
    /// [`Gauge::set`](metrics::Gauge::set). The facade has no summaries, so each latency
    /// quantile is a gauge with a `quantile` label. Each family is described with its help
    /// text. Call it after each [`stats()`](crate::Pipeline::stats), say once a second.
    ///
    /// Needs the `metrics` feature.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow::Pipeline;
    ///
    /// let pipeline = Pipeline::<u32>::builder().stage("parse", || |x: u32| x).sink(|_| {}).build()?;
    /// pipeline.input().push_iter(0..3)?;
    /// // With no recorder installed, the values go nowhere.
    /// pipeline.stats().record_metrics("orders");
    /// assert_eq!(pipeline.drain()?.sink().delivered, 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "metrics")]
    pub fn record_metrics(&self, pipeline: &str) {
        for (family, samples) in families(self).into_iter().filter(|(_, s)| !s.is_empty()) {
            let (name, help) = (family.name, family.help);
            match family.kind {
                Kind::Counter => metrics::describe_counter!(name, help),
                Kind::Gauge | Kind::Summary => metrics::describe_gauge!(name, help),
            }
            for sample in samples {
                let mut labels = vec![metrics::Label::new("pipeline", pipeline.to_owned())];
                if let Some((label, value)) = sample.node {
                    labels.push(metrics::Label::new(label, value.to_owned()));
                }
                if let Some((label, value)) = sample.extra {
                    labels.push(metrics::Label::new(label, value));
                }
                match (family.kind, sample.value) {
                    (Kind::Counter, Value::Count(n)) => metrics::counter!(name, labels).absolute(n),
                    (_, value) => metrics::gauge!(name, labels).set(value.as_f64()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(value: &str) -> String {
        let mut out = String::new();
        write_label_value(&mut out, value);
        out
    }

    fn value(value: Value) -> String {
        let mut out = String::new();
        write_value(&mut out, value);
        out
    }

    #[test]
    fn label_values_escape_backslash_quote_and_line_feed_only() {
        assert_eq!(label("plain stage"), r#""plain stage""#);
        assert_eq!(label("a\\b\"c\nd"), r#""a\\b\"c\nd""#);
        assert_eq!(label("tab\tand é, {x=y}"), "\"tab\tand é, {x=y}\"");
    }

    #[test]
    fn values_read_back_exactly_and_spell_the_specials_as_prometheus_does() {
        assert_eq!(value(Value::Count(u64::MAX)), u64::MAX.to_string());
        for x in [0.0, 1.5e-9, 0.1 + 0.2, 12_345.678, 1e300] {
            assert_eq!(value(Value::Number(x)).parse::<f64>(), Ok(x));
        }
        assert_eq!(value(Value::Number(f64::INFINITY)), "+Inf");
        assert_eq!(value(Value::Number(f64::NEG_INFINITY)), "-Inf");
        assert_eq!(value(Value::Number(f64::NAN)), "NaN");
    }

    #[test]
    fn latency_quantiles_are_seconds_and_the_maximum_is_quantile_one() {
        let latency = Latency { p50: 1_500, p95: 2_000_000, p99: 3_000_000_000, max: 4 };
        assert_eq!(
            quantiles(&latency),
            [
                (Some(("quantile", "0.5")), Value::Number(1.5e-6)),
                (Some(("quantile", "0.95")), Value::Number(2e-3)),
                (Some(("quantile", "0.99")), Value::Number(3.0)),
                (Some(("quantile", "1")), Value::Number(4e-9)),
            ]
        );
    }
}
