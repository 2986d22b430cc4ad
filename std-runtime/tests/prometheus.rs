//! The Prometheus exposition, read back with a real parser (`prometheus-parse`) and with a
//! strict reading of the text format's sample lines, and checked against the report.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use backflow::core::breaker::BreakerConfig;
use backflow::{Overflow, Pipeline, Report, stage};
use common::{Flag, Gate};
use prometheus_parse::{Sample, Scrape, Value};

/// Samples per stage: 11 counters (dropped twice, by reason), 5 plain gauges, 3 time shares,
/// 2 throughputs, and 2 summaries of 4 quantiles.
const PER_STAGE: usize = 11 + 5 + 3 + 2 + 2 * 4;
/// Samples per sink: 3 counters, 1 gauge, 2 throughputs, 1 summary of 4 quantiles.
const PER_SINK: usize = 3 + 1 + 2 + 4;
/// The states of a circuit breaker, one sample each.
const CIRCUIT: usize = 3;

/// `parse` dead-letters multiples of 10, broadcasts to the `audit` sink, and feeds `store`,
/// whose small `DropNewest` queue overflows while its sink is held: 100 items in, some of
/// every kind out.
fn demo() -> Report {
    let (gate, entered) = (Gate::default(), Flag::default());
    let delivered = Arc::new(Mutex::new(Vec::new()));
    let pipeline = Pipeline::<u32>::builder()
        .stage("parse", || {
            stage::try_map(
                |x: u32| if x.is_multiple_of(10) { Err(format!("{x} is bad")) } else { Ok(x) },
            )
        })
        .dead_letter(|_| {})
        .broadcast("audit", |b| b.sink(|_| {}))
        .stage("store", || |x: u32| u64::from(x))
        .capacity(8)
        .overflow(Overflow::DropNewest)
        .circuit_breaker(BreakerConfig::default())
        .sink(common::held_sink(&gate, &entered, &delivered))
        .build()
        .unwrap();
    pipeline.input().push_iter(1..=100).unwrap();
    entered.wait();
    common::eventually("parse has settled every item", || {
        pipeline.stats().stage("parse").unwrap().accounting.in_flight == 0
    });
    gate.open();
    let report = pipeline.drain().unwrap();
    assert!(report.is_balanced(), "{:?}", report.unbalanced());
    report
}

fn scrape(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).unwrap()
}

/// The one sample of `metric` whose labels include all of `labels`.
fn sample<'a>(scrape: &'a Scrape, metric: &str, labels: &[(&str, &str)]) -> &'a Sample {
    let mut found = scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)));
    let one = found.next().unwrap_or_else(|| panic!("no {metric} {labels:?}"));
    assert!(found.next().is_none(), "several {metric} {labels:?}");
    one
}

fn counter(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    match sample(scrape, metric, labels).value {
        Value::Counter(n) => n,
        ref other => panic!("{metric} {labels:?} is not a counter: {other:?}"),
    }
}

fn gauge(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    match sample(scrape, metric, labels).value {
        Value::Gauge(x) => x,
        ref other => panic!("{metric} {labels:?} is not a gauge: {other:?}"),
    }
}

/// The quantiles of a summary, in the order written.
fn quantiles(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
    match &sample(scrape, metric, labels).value {
        Value::Summary(qs) => qs.iter().map(|q| (q.quantile, q.count)).collect(),
        other => panic!("{metric} {labels:?} is not a summary: {other:?}"),
    }
}

/// Reads a sample line strictly by the text format: a metric name, labels with quoted,
/// escaped values, a space and a float. Panics on anything else.
fn strict(line: &str) -> (String, Vec<(String, String)>, f64) {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let name_end = line.find(|c| !is_name(c)).expect("a value follows the name");
    let (name, mut rest) = line.split_at(name_end);
    assert!(!name.is_empty() && !name.starts_with(|c: char| c.is_ascii_digit()), "{line}");
    let mut labels = Vec::new();
    if let Some(mut body) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = body.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, value) = body.split_once("=\"").expect("label=\"value\"");
            assert!(key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
            let mut chars = value.chars();
            let mut unescaped = String::new();
            loop {
                match chars.next().expect("a closing quote") {
                    '"' => break,
                    '\\' => unescaped.push(match chars.next() {
                        Some('\\') => '\\',
                        Some('"') => '"',
                        Some('n') => '\n',
                        other => panic!("bad escape {other:?} in {line}"),
                    }),
                    '\n' => panic!("raw line feed in {line}"),
                    c => unescaped.push(c),
                }
            }
            labels.push((key.to_string(), unescaped));
            body = chars.as_str();
            body = body.strip_prefix(',').unwrap_or(body);
        }
    }
    let value = rest.strip_prefix(' ').expect("one space before the value");
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
    };
    (name.to_string(), labels, value)
}

#[test]
fn every_stat_reads_back_with_its_value_from_the_report() {
    let report = demo();
    let stats = report.stats();
    let text = stats.to_prometheus("demo");
    let scrape = scrape(&text);
    let (parse, store) = (report.stage("parse").unwrap(), report.stage("store").unwrap());
    let (main, audit) = (&stats.sinks()[0], &stats.sinks()[1]);
    assert_eq!((main.name.as_str(), audit.name.as_str()), ("sink", "audit"));

    // What the pipeline did, exactly.
    assert_eq!((parse.accounting.received, parse.accounting.dead_lettered), (100, 10));
    assert_eq!((store.accounting.received, audit.delivered), (90, 90));
    assert!(store.dropped_newest > 0, "store's queue overflowed:\n{report}");
    assert_eq!(main.delivered, 90 - store.dropped_newest);

    // And what the exposition says about it.
    let on = |node: &'static str, name: &'static str| [("pipeline", "demo"), (node, name)];
    let received = "backflow_stage_received_items_total";
    assert_eq!(counter(&scrape, received, &on("stage", "parse")), 100.0);
    assert_eq!(counter(&scrape, received, &on("stage", "store")), 90.0);
    let dead = "backflow_stage_dead_lettered_items_total";
    assert_eq!(counter(&scrape, dead, &on("stage", "parse")), 10.0);
    let emitted = "backflow_stage_emitted_inputs_total";
    assert_eq!(counter(&scrape, emitted, &on("stage", "parse")), 90.0);
    let dropped = "backflow_stage_dropped_items_total";
    let [p, s] = [on("stage", "store")[0], on("stage", "store")[1]];
    let newest = counter(&scrape, dropped, &[p, s, ("reason", "newest")]);
    assert_eq!(newest, store.dropped_newest as f64);
    assert_eq!(counter(&scrape, dropped, &[p, s, ("reason", "oldest")]), 0.0);
    let delivered = "backflow_sink_delivered_items_total";
    assert_eq!(counter(&scrape, delivered, &on("sink", "sink")), main.delivered as f64);
    assert_eq!(counter(&scrape, delivered, &on("sink", "audit")), 90.0);
    let capacity = "backflow_stage_queue_capacity_items";
    assert_eq!(gauge(&scrape, capacity, &on("stage", "store")), 8.0);
    let circuit = "backflow_stage_circuit_state";
    assert_eq!(gauge(&scrape, circuit, &[p, s, ("state", "closed")]), 1.0);
    assert_eq!(gauge(&scrape, circuit, &[p, s, ("state", "open")]), 0.0);
    let busy = gauge(&scrape, "backflow_stage_time_share", &[p, s, ("kind", "busy")]);
    assert_eq!(busy, store.time.busy);

    let process = quantiles(&scrape, "backflow_stage_process_seconds", &on("stage", "parse"));
    let t = parse.process_time;
    let seconds = |ns: u64| ns as f64 / 1e9;
    let expected = [(0.5, t.p50), (0.95, t.p95), (0.99, t.p99), (1.0, t.max)];
    assert_eq!(process, expected.map(|(q, ns)| (q, seconds(ns))));
    assert!(t.max > 0, "parse's processing time was sampled");
    let latency = quantiles(&scrape, "backflow_sink_latency_seconds", &on("sink", "audit"));
    assert_eq!(latency[0], (0.5, seconds(audit.latency.p50)));

    // Nothing silently lost: the parser kept every sample line, and there are as many as
    // the stats have values.
    let lines: Vec<_> = text.lines().filter(|line| !line.starts_with('#')).collect();
    let parsed: usize = scrape
        .samples
        .iter()
        .map(|s| match &s.value {
            Value::Summary(qs) => qs.len(),
            Value::Histogram(_) => panic!("no histograms are written"),
            _ => 1,
        })
        .sum();
    assert_eq!(parsed, lines.len());
    assert_eq!(lines.len(), 2 * PER_STAGE + CIRCUIT + 2 * PER_SINK + 1);
    let elapsed = scrape.samples.iter().find(|s| s.metric == "backflow_pipeline_elapsed_seconds");
    assert_eq!(elapsed.unwrap().value, Value::Gauge(stats.elapsed().as_secs_f64()));

    // Every line is valid by the format, every name is `backflow_` snake case, and every
    // family has its HELP and TYPE once, before its samples.
    let mut families = HashSet::new();
    let mut current = None;
    for line in text.lines() {
        if let Some(help) = line.strip_prefix("# HELP ") {
            let name = help.split(' ').next().unwrap();
            assert!(families.insert(name.to_string()), "{name} described twice");
            current = Some(name.to_string());
        } else if let Some(kind) = line.strip_prefix("# TYPE ") {
            let (name, kind) = kind.split_once(' ').unwrap();
            assert_eq!(Some(name), current.as_deref());
            assert!(["counter", "gauge", "summary"].contains(&kind), "{line}");
            assert_eq!(name.ends_with("_total"), kind == "counter", "{line}");
        } else {
            let (name, labels, _) = strict(line);
            assert_eq!(Some(name.as_str()), current.as_deref(), "{line} outside its family");
            assert!(name.starts_with("backflow_") && name == name.to_lowercase(), "{name}");
            assert_eq!(labels[0], ("pipeline".to_string(), "demo".to_string()));
        }
    }
    assert_eq!(families.len(), scrape.docs.len());
}

#[test]
fn label_values_are_escaped_and_read_back_whole() {
    // Stage names have no control characters (the builder refuses them); pipeline names are
    // the caller's.
    let (pipeline_name, stage_name) = ("line\nfeed", r#"say "hi" \ bye"#);
    let pipeline =
        Pipeline::<u8>::builder().stage(stage_name, || |x: u8| x).sink(|_| {}).build().unwrap();
    pipeline.input().push_iter(0..5).unwrap();
    let report = pipeline.drain().unwrap();
    let text = report.stats().to_prometheus(pipeline_name);
    assert!(text.contains(r#"{pipeline="line\nfeed",stage="say \"hi\" \\ bye"} 5"#), "{text}");
    let received = text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .map(strict)
        .find(|(metric, _, _)| metric == "backflow_stage_received_items_total")
        .unwrap();
    let expected = [("pipeline", pipeline_name), ("stage", stage_name)];
    let expected = expected.map(|(k, v)| (k.to_string(), v.to_string()));
    assert_eq!((received.1, received.2), (expected.to_vec(), 5.0));
}

#[test]
fn several_pipelines_share_each_family_and_keep_their_own_samples() {
    let demo = demo();
    let plain =
        Pipeline::<u8>::builder().stage("parse", || |x: u8| x).sink(|_| {}).build().unwrap();
    plain.input().push_iter(0..7).unwrap();
    let plain = plain.drain().unwrap();
    let text = backflow::stats::exposition([("demo", demo.stats()), ("plain", plain.stats())]);

    // One HELP and one TYPE per family, its samples right after them, from both pipelines.
    let mut families = HashSet::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(help) = line.strip_prefix("# HELP ") {
            current = help.split(' ').next().unwrap().to_string();
            assert!(families.insert(current.clone()), "{current} described twice");
        } else if !line.starts_with('#') {
            assert_eq!(strict(line).0, current, "{line} outside its family");
        }
    }
    let scrape = scrape(&text);
    assert_eq!(families.len(), scrape.docs.len());
    let received = "backflow_stage_received_items_total";
    let parse = |pipeline| [("pipeline", pipeline), ("stage", "parse")];
    assert_eq!(counter(&scrape, received, &parse("demo")), 100.0);
    assert_eq!(counter(&scrape, received, &parse("plain")), 7.0);
    // Only `demo`'s store has a breaker: the family is there, with its samples alone.
    let circuit: Vec<&Sample> =
        scrape.samples.iter().filter(|s| s.metric == "backflow_stage_circuit_state").collect();
    assert_eq!(circuit.len(), CIRCUIT);
    assert!(circuit.iter().all(|s| s.labels.get("pipeline") == Some("demo")), "{circuit:?}");
    // Each pipeline's samples are the ones it writes alone.
    let lines = |text: &str| text.lines().filter(|l| !l.starts_with('#')).count();
    assert_eq!(
        lines(&text),
        lines(&demo.stats().to_prometheus("demo")) + lines(&plain.stats().to_prometheus("plain"))
    );
}
