//! A real Prometheus (Debian's `prometheus`, which `cargo xtask setup` installs) scrapes a
//! running pipeline's `/metrics` endpoint; its query API then gives back what the pipeline
//! counted, and accepts the Grafana dashboard's queries. And `promtool check metrics` (from
//! the same package) accepts what the endpoint serves.

mod common;

use std::io::Write as _;
use std::num::NonZeroU32;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use backflow::{Pipeline, Stats, serve_metrics};
use test_support::{PrometheusServer, Series, http_get};

/// How long Prometheus may take to scrape the endpoint once (it scrapes every second).
const FIRST_SCRAPE: Duration = Duration::from_secs(30);

/// A running pipeline `parse` → `enrich` → sink, every item timed, with 500 items settled:
/// its counts and latencies stay as they are while it idles.
fn settled_pipeline() -> Pipeline<u64> {
    let pipeline = Pipeline::<u64>::builder()
        .sample_every(NonZeroU32::MIN)
        .stage("parse", || |x: u64| x * 3)
        .stage("enrich", || backflow::stage::filter(|x: &u64| x.is_multiple_of(2)))
        .sink(|_| {})
        .build()
        .unwrap();
    pipeline.input().push_iter(0..500).unwrap();
    common::eventually("every item is settled", || {
        let stats = pipeline.stats();
        stats.stages().iter().all(|s| s.accounting.in_flight == 0) && stats.sink().delivered == 250
    });
    pipeline
}

/// Queries `promql` until it selects something, for at most [`FIRST_SCRAPE`].
fn first_result(prometheus: &PrometheusServer, promql: &str) -> Vec<Series> {
    let deadline = Instant::now() + FIRST_SCRAPE;
    loop {
        let result = prometheus.query(promql).unwrap_or_else(|error| panic!("{error}"));
        if !result.is_empty() {
            return result;
        }
        assert!(
            Instant::now() < deadline,
            "no {promql} after {FIRST_SCRAPE:?}; `up` says {:?}; prometheus's log:\n{}",
            prometheus.query("up"),
            prometheus.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The one series of `promql`'s result.
fn one(prometheus: &PrometheusServer, promql: &str) -> Series {
    let result = first_result(prometheus, promql);
    assert_eq!(result.len(), 1, "{promql}: {result:?}");
    result.into_iter().next().unwrap()
}

/// Every query of `dashboards/backflow.json`: its variables' and its panels'.
fn dashboard_queries() -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards/backflow.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queries = Vec::new();
    let mut panels: Vec<&serde_json::Value> =
        dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(panel) = panels.pop() {
        panels.extend(panel["panels"].as_array().into_iter().flatten());
        let targets = panel["targets"].as_array().into_iter().flatten();
        queries.extend(targets.filter_map(|t| t["expr"].as_str()).map(String::from));
    }
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    queries.extend(variables.iter().filter_map(|v| v["definition"].as_str()).map(String::from));
    assert!(queries.len() > 10, "{queries:?}");
    queries
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

#[test]
fn prometheus_scrapes_the_endpoint_and_reads_back_the_pipelines_counts_and_latencies() {
    let pipeline = settled_pipeline();
    let server = serve_metrics("127.0.0.1:0", [("scraped", pipeline.watch())]).unwrap();
    let prometheus =
        PrometheusServer::start(&[server.local_addr()]).unwrap_or_else(|error| panic!("{error}"));
    let stats: Stats = pipeline.stats();

    let received = one(&prometheus, r#"backflow_stage_received_items_total{stage="parse"}"#);
    let parse = stats.stage("parse").unwrap();
    assert_eq!(received.value, parse.accounting.received as f64);
    assert_eq!(received.value, 500.0);
    assert_eq!(received.labels["pipeline"], "scraped");
    assert_eq!(received.labels["job"], "backflow");
    assert_eq!(received.labels["instance"], server.local_addr().to_string());

    // Every stage's count, in one query.
    let all =
        first_result(&prometheus, r#"backflow_stage_received_items_total{pipeline="scraped"}"#);
    let mut counts: Vec<(String, f64)> =
        all.iter().map(|s| (s.labels["stage"].clone(), s.value)).collect();
    counts.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(counts, [("enrich".to_string(), 500.0), ("parse".to_string(), 500.0)]);

    // Latency quantiles, in seconds, exactly as the pipeline's own stats have them.
    let p99 = one(&prometheus, r#"backflow_stage_process_seconds{stage="parse",quantile="0.99"}"#);
    assert_eq!(p99.value, seconds(parse.process_time.p99));
    assert!(p99.value > 0.0, "every item was timed");
    let latency = one(&prometheus, r#"backflow_sink_latency_seconds{sink="sink",quantile="0.99"}"#);
    assert_eq!(latency.value, seconds(stats.sink().latency.p99));
    let delivered = one(&prometheus, "backflow_sink_delivered_items_total");
    assert_eq!(delivered.value, 250.0);
    let up = one(&prometheus, r#"up{job="backflow"}"#);
    assert_eq!(up.value, 1.0, "the last scrape succeeded");

    // The dashboard's queries, as Grafana would send them with every pipeline and stage
    // selected: Prometheus accepts each, and those that need no second scrape (not `rate`)
    // select something already.
    for expr in dashboard_queries() {
        let expr = expr
            .replace("$pipeline", ".*")
            .replace("$stage", ".*")
            .replace("$__rate_interval", "1m");
        if expr.starts_with("label_values(") {
            continue; // Grafana's own function, not PromQL
        }
        let result = prometheus.query(&expr).unwrap_or_else(|error| panic!("{expr}: {error}"));
        assert!(expr.contains("rate(") || !result.is_empty(), "{expr} selects nothing");
    }

    drop(prometheus);
    server.stop();
    assert!(pipeline.drain().unwrap().is_balanced());
}

#[test]
fn promtool_accepts_what_the_endpoint_serves() {
    let pipeline = settled_pipeline();
    let server = serve_metrics("127.0.0.1:0", [("checked", pipeline.watch())]).unwrap();
    let answer = http_get(server.local_addr(), "/metrics").unwrap();
    assert_eq!(answer.status, 200);
    let promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut promtool = match promtool {
        Ok(child) => child,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            panic!("{}", test_support::PrometheusError::NotInstalled)
        }
        Err(error) => panic!("cannot run promtool: {error}"),
    };
    promtool.stdin.take().unwrap().write_all(answer.body.as_bytes()).unwrap();
    let output = promtool.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&output.stdout) + String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "promtool check metrics: {}\n{said}", output.status);
    assert_eq!(said.trim(), "", "no lint problem");
    assert!(answer.body.contains("backflow_stage_received_items_total{pipeline=\"checked\""));
}
