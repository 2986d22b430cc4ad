//! The demo with backflow's `http` feature, as an operator runs it: `--metrics-addr` serves
//! `/metrics` from the start, `--hold` keeps serving the final stats after the run until
//! stdin closes, and what a scrape reads then is what the demo's summary says. An address it
//! cannot listen on ends it before anything runs.
//!
//! Its own test binary: the demo built with the feature replaces, at the same path, the one
//! `tests/demo.rs` builds without it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

/// How long the demo may take to say something it must say.
const WAIT: Duration = Duration::from_secs(60);

fn demo() -> &'static PathBuf {
    static DEMO: OnceLock<PathBuf> = OnceLock::new();
    DEMO.get_or_init(|| {
        test_support::example_with_features("backflow", "logs", &["http"])
            .unwrap_or_else(|error| panic!("{error}"))
    })
}

/// Every line `reader` gives, sent as it comes.
fn lines(reader: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The first line of `lines` that starts with `prefix`, the rest of it; panics after [`WAIT`]
/// or when the stream ends first.
fn line_after(lines: &Receiver<String>, prefix: &str, seen: &mut Vec<String>) -> String {
    loop {
        match lines.recv_timeout(WAIT) {
            Ok(line) => {
                if let Some(rest) = line.strip_prefix(prefix) {
                    return rest.to_string();
                }
                seen.push(line);
            }
            Err(error) => {
                panic!("no `{prefix}` line ({error}); the demo said:\n{}", seen.join("\n"))
            }
        }
    }
}

/// Kills the demo if a check fails while it holds.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The value of the one sample of `metric` whose labels include `labels`, in `text`.
fn value(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let mut found = scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)));
    let sample = found.next().unwrap_or_else(|| panic!("no {metric} {labels:?}"));
    assert!(found.next().is_none(), "several {metric} {labels:?}");
    match sample.value {
        prometheus_parse::Value::Counter(x) | prometheus_parse::Value::Gauge(x) => x,
        ref other => panic!("{other:?}"),
    }
}

#[test]
fn the_held_demo_serves_its_final_stats_until_stdin_closes() {
    let child = Command::new(demo())
        .args(["--items", "20000", "--metrics-addr", "127.0.0.1:0", "--hold"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the demo runs");
    let mut demo = Running(child);
    let stdout = lines(demo.0.stdout.take().unwrap());
    let stderr = lines(demo.0.stderr.take().unwrap());
    let (mut said, mut logged) = (Vec::new(), Vec::new());

    let url = line_after(&stderr, "metrics: serving ", &mut logged);
    let addr: SocketAddr = url
        .strip_prefix("http://")
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("not a metrics URL: {url}"));
    let summary = line_after(&stdout, "summary: ", &mut said);
    let summary: HashMap<&str, f64> = summary
        .split_whitespace()
        .filter_map(|field| field.split_once('='))
        .filter_map(|(key, value)| Some((key, value.parse().ok()?)))
        .collect();
    line_after(&stderr, "holding: ", &mut logged);

    // The run is over and the demo still serves: the final counts, as the summary has them.
    let answer = test_support::http_get(addr, "/metrics").unwrap();
    assert_eq!(answer.status, 200);
    let text = &answer.body;
    let on = |node: &'static str, name: &'static str| [("pipeline", "logs"), (node, name)];
    let received = "backflow_stage_received_items_total";
    assert_eq!(value(text, received, &on("stage", "parse")), summary["lines"]);
    assert_eq!(summary["lines"], 20_000.0);
    let dead = "backflow_stage_dead_lettered_items_total";
    assert_eq!(value(text, dead, &on("stage", "parse")), summary["dead_lettered"]);
    let delivered = "backflow_sink_delivered_items_total";
    assert_eq!(value(text, delivered, &on("sink", "sink")), summary["stored"]);
    assert_eq!(value(text, delivered, &on("sink", "alerts")), summary["alerts"]);
    assert_eq!(value(text, "backflow_stage_in_flight_items", &on("stage", "encode")), 0.0);

    // Closing stdin ends the hold, and the demo with it.
    drop(demo.0.stdin.take());
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = demo.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the demo still runs {WAIT:?} after stdin closed");
        thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status}");
    assert!(test_support::http_get(addr, "/metrics").is_err(), "still serving after the end");
}

#[test]
fn an_address_it_cannot_listen_on_ends_the_demo_before_the_run() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    for addr in ["no-port", "127.0.0.1:99999", taken.as_str()] {
        let output = Command::new(demo())
            .args(["--items", "1000", "--metrics-addr", addr])
            .stdin(Stdio::null())
            .output()
            .expect("the demo runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{addr}: {stderr}");
        assert!(stderr.contains("error: --metrics-addr: "), "{addr}: {stderr}");
        assert!(stderr.contains(&format!("`{addr}`")), "{addr}: the address is named: {stderr}");
        assert!(!stderr.contains(" lines, "), "{addr}: it ran first: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
