//! The Grafana dashboard, `dashboards/backflow.json`: an importable dashboard (schema 39, its
//! Prometheus data source an input) with the panels an operator looks for, whose every query
//! names metrics and labels that a real pipeline's exposition has. A metric renamed in the
//! exposition, or a typo in a query, fails here rather than as an empty panel.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use backflow::core::breaker::BreakerConfig;
use backflow::{Overflow, Pipeline, stage};
use serde_json::Value;

/// The dashboard, parsed.
fn dashboard() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards/backflow.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every panel, those inside collapsed rows too, rows left out.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in panels.as_array().expect("a list of panels") {
            if panel["type"] != "row" {
                out.push(panel);
            }
            if let Some(nested) = panel.get("panels") {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// A sample line of the exposition: its metric name and labels.
type Sample = (String, BTreeMap<String, String>);

/// The samples of a pipeline with every family in its exposition: a breaker (the circuit
/// state), a branch with its own sink, a `DropNewest` queue, a dead-letter handler.
fn exposition() -> Vec<Sample> {
    let pipeline = Pipeline::<u32>::builder()
        .stage("parse", || {
            stage::try_map(|x: u32| if x.is_multiple_of(7) { Err("bad") } else { Ok(x) })
        })
        .dead_letter(|_| {})
        .broadcast("audit", |b| b.sink(|_| {}))
        .stage("store", || |x: u32| u64::from(x))
        .capacity(4)
        .overflow(Overflow::DropNewest)
        .circuit_breaker(BreakerConfig::default())
        .sink(|_| {})
        .build()
        .unwrap();
    pipeline.input().push_iter(0..100).unwrap();
    let text = pipeline.drain().unwrap().stats().to_prometheus("dashboard");
    text.lines().filter(|line| !line.starts_with('#')).map(sample).collect()
}

/// `name{a="x",b="y"} value` as `(name, {a: x, b: y})`; the values here have no escapes.
fn sample(line: &str) -> Sample {
    let (name, rest) = line.split_once('{').unwrap_or_else(|| panic!("no labels: {line}"));
    let (labels, _) = rest.rsplit_once("} ").unwrap_or_else(|| panic!("no value: {line}"));
    let labels = labels
        .split("\",")
        .map(|pair| {
            let (key, value) = pair.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
            (key.to_string(), value.trim_end_matches('"').to_string())
        })
        .collect();
    (name.to_string(), labels)
}

/// A label matcher of a selector: `label op "value"`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Matcher {
    label: String,
    op: String,
    value: String,
}

/// A series selector of a query: a metric name and its matchers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Selector {
    metric: String,
    matchers: Vec<Matcher>,
}

/// Every `backflow_…` selector of a PromQL expression, with its matchers.
fn selectors(expr: &str) -> Vec<Selector> {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("backflow_") {
        let after = &rest[at..];
        let end =
            after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
        let metric = after[..end].to_string();
        let mut matchers = Vec::new();
        rest = &after[end..];
        if let Some(body) = rest.strip_prefix('{') {
            let close = body.find('}').unwrap_or_else(|| panic!("unclosed selector in {expr}"));
            for matcher in body[..close].split(',').map(str::trim).filter(|m| !m.is_empty()) {
                let op_at = matcher.find(['=', '!']).unwrap_or_else(|| panic!("{matcher}"));
                let label = matcher[..op_at].trim().to_string();
                let after_label = &matcher[op_at..];
                let op_len = if after_label.starts_with("=~")
                    || after_label.starts_with("!~")
                    || after_label.starts_with("!=")
                {
                    2
                } else {
                    1
                };
                let op = after_label[..op_len].to_string();
                let value = after_label[op_len..].trim();
                let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
                let value = value.unwrap_or_else(|| panic!("unquoted value in {matcher}"));
                matchers.push(Matcher { label, op, value: value.to_string() });
            }
            rest = &body[close + 1..];
        }
        found.push(Selector { metric, matchers });
    }
    found
}

/// The labels of every `by (…)` clause of an expression.
fn by_labels(expr: &str) -> BTreeSet<String> {
    let mut labels = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("by (") {
        let list = &rest[at + 4..];
        let close = list.find(')').expect("a closed `by` list");
        labels.extend(list[..close].split(',').map(|l| l.trim().to_string()));
        rest = &list[close..];
    }
    labels
}

/// The `{{label}}`s of a legend.
fn legend_labels(legend: &str) -> BTreeSet<String> {
    let mut labels = BTreeSet::new();
    let mut rest = legend;
    while let Some(at) = rest.find("{{") {
        let close = rest[at..].find("}}").expect("a closed `{{`") + at;
        labels.insert(rest[at + 2..close].trim().to_string());
        rest = &rest[close + 2..];
    }
    labels
}

/// Whether some sample of the exposition is selected by `selector`: its metric, with every
/// label matched. A matcher on a dashboard variable (`=~"$pipeline"`) matches any value of a
/// label the samples have; any other value must be exactly there.
fn selects(samples: &[Sample], selector: &Selector) -> bool {
    samples.iter().any(|(name, labels)| {
        *name == selector.metric
            && selector.matchers.iter().all(|m| match (m.op.as_str(), m.value.starts_with('$')) {
                ("=~", true) => labels.contains_key(&m.label),
                ("=", false) => labels.get(&m.label) == Some(&m.value),
                ("!=", false) => labels.contains_key(&m.label),
                other => panic!("a matcher this test does not read: {m:?} {other:?}"),
            })
    })
}

/// The labels every sample of `metric` has.
fn labels_of(samples: &[Sample], metric: &str) -> BTreeSet<String> {
    let mut of_metric = samples.iter().filter(|(name, _)| name == metric);
    let first: BTreeSet<String> =
        of_metric.next().map(|(_, l)| l.keys().cloned().collect()).unwrap_or_default();
    of_metric.fold(first, |common, (_, labels)| {
        common.into_iter().filter(|label| labels.contains_key(label)).collect()
    })
}

#[test]
fn the_dashboard_imports_with_a_prometheus_input_and_has_the_operators_panels() {
    let dashboard = dashboard();
    assert_eq!(dashboard["schemaVersion"], 39);
    let inputs = dashboard["__inputs"].as_array().unwrap();
    assert!(
        inputs.iter().any(|i| i["name"] == "DS_PROMETHEUS"
            && i["type"] == "datasource"
            && i["pluginId"] == "prometheus"),
        "{inputs:?}"
    );
    let panels = panels(&dashboard);
    let mut ids = BTreeSet::new();
    for panel in &panels {
        assert!(ids.insert(panel["id"].as_u64().unwrap()), "panel id twice: {}", panel["id"]);
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", panel["title"]);
        for field in ["h", "w", "x", "y"] {
            assert!(panel["gridPos"][field].is_u64(), "{}: gridPos.{field}", panel["title"]);
        }
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} queries nothing", panel["title"]);
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${DS_PROMETHEUS}");
            assert!(target["expr"].as_str().is_some_and(|e| !e.is_empty()));
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        assert_eq!(variable["datasource"]["uid"], "${DS_PROMETHEUS}");
    }
    let titles: Vec<String> =
        panels.iter().map(|p| p["title"].as_str().unwrap().to_lowercase()).collect();
    for wanted in [
        "items/s per stage",
        "queue fill",
        "pressure",
        "drops by reason",
        "p99 processing time",
        "end-to-end latency",
        "busy and backpressured",
        "bottleneck",
    ] {
        assert!(titles.iter().any(|t| t.contains(wanted)), "no `{wanted}` panel in {titles:?}");
    }
}

#[test]
fn every_metric_and_label_the_dashboard_queries_is_in_a_real_exposition() {
    let dashboard = dashboard();
    let samples = exposition();
    let mut checked = BTreeSet::new();
    // The variables' queries, then each panel's.
    let variables = dashboard["templating"]["list"].as_array().unwrap().iter().map(|v| {
        let query = v["definition"].as_str().unwrap();
        let label = query.rsplit_once(',').unwrap().1.trim_end_matches(')').trim();
        (query.to_string(), BTreeSet::from([label.to_string()]))
    });
    let targets = panels(&dashboard).into_iter().flat_map(|panel| {
        panel["targets"].as_array().unwrap().iter().map(|t| {
            let legend = t["legendFormat"].as_str().unwrap_or_default();
            (t["expr"].as_str().unwrap().to_string(), legend_labels(legend))
        })
    });
    for (expr, shown) in variables.chain(targets) {
        let selected = selectors(&expr);
        assert!(!selected.is_empty(), "no backflow metric in {expr}");
        for selector in &selected {
            assert!(
                selects(&samples, selector),
                "{expr}: nothing in the exposition for {selector:?}"
            );
            checked.insert(selector.metric.clone());
        }
        // What the legend (or the variable) shows, and what `by` keeps, is on the series.
        let by = by_labels(&expr);
        for label in by.iter().chain(&shown) {
            for selector in &selected {
                let has = labels_of(&samples, &selector.metric);
                assert!(has.contains(label), "{expr}: {} has no label `{label}`", selector.metric);
            }
        }
        // An aggregation keeps only its `by` labels (`topk` keeps the series' own).
        let aggregates = ["sum", "avg", "min", "max", "count"];
        if aggregates.iter().any(|op| expr.contains(&format!("{op} by ("))) {
            assert!(shown.is_subset(&by), "{expr}: the legend shows {shown:?}, `by` keeps {by:?}");
        }
    }
    // The operator's view covers the exposition's main families.
    for family in [
        "backflow_stage_emitted_inputs_total",
        "backflow_stage_queue_items",
        "backflow_stage_queue_capacity_items",
        "backflow_stage_pressure_on",
        "backflow_stage_dropped_items_total",
        "backflow_stage_process_seconds",
        "backflow_sink_latency_seconds",
        "backflow_stage_time_share",
    ] {
        assert!(checked.contains(family), "the dashboard never shows {family}");
    }
}

#[test]
fn the_query_reader_finds_what_a_typo_hides() {
    // A misspelt metric and a label value the exposition never has are caught.
    let samples = exposition();
    let typo = selectors(r#"rate(backflow_stage_emited_inputs_total{pipeline=~"$pipeline"}[1m])"#);
    assert!(!selects(&samples, &typo[0]));
    let value = selectors(r#"backflow_stage_time_share{kind="bussy"}"#);
    assert!(!selects(&samples, &value[0]));
    let label = selectors(r#"backflow_stage_time_share{knd=~"$kind"}"#);
    assert!(!selects(&samples, &label[0]));
    let both = selectors(
        r#"backflow_stage_queue_items{stage=~"$s"} / backflow_stage_queue_capacity_items{stage=~"$s"}"#,
    );
    assert_eq!(both.len(), 2);
    assert!(both.iter().all(|s| selects(&samples, s)));
    assert_eq!(
        by_labels("sum by (pipeline, reason) (x)"),
        BTreeSet::from(["pipeline".into(), "reason".into()])
    );
    assert_eq!(
        legend_labels("{{pipeline}} sink {{ sink }}"),
        BTreeSet::from(["pipeline".into(), "sink".into()])
    );
}
