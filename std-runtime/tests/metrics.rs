//! `Stats::record_metrics` (feature `metrics`): the values a recorder installed for the
//! `metrics` facade receives, under the names and labels of the Prometheus exposition.
#![cfg(feature = "metrics")]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use backflow::{Pipeline, stage};
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString,
    Unit,
};

/// Each metric's last value, keyed `name{label=value,…}` with the labels in the order given.
type Values = Arc<Mutex<BTreeMap<String, f64>>>;

/// A recorder that keeps the last value of every counter and gauge, and each description.
#[derive(Default)]
struct Last {
    values: Values,
    described: Mutex<Vec<String>>,
}

/// One registered counter or gauge, writing to the recorder's map.
struct Slot {
    key: String,
    values: Values,
}

impl Slot {
    fn store(&self, value: f64) {
        self.values.lock().unwrap().insert(self.key.clone(), value);
    }
}

impl CounterFn for Slot {
    fn increment(&self, value: u64) {
        *self.values.lock().unwrap().entry(self.key.clone()).or_default() += value as f64;
    }

    fn absolute(&self, value: u64) {
        self.store(value as f64);
    }
}

impl GaugeFn for Slot {
    fn increment(&self, value: f64) {
        *self.values.lock().unwrap().entry(self.key.clone()).or_default() += value;
    }

    fn decrement(&self, value: f64) {
        *self.values.lock().unwrap().entry(self.key.clone()).or_default() -= value;
    }

    fn set(&self, value: f64) {
        self.store(value);
    }
}

impl Last {
    fn slot(&self, key: &Key) -> Arc<Slot> {
        let labels: Vec<_> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
        let key = format!("{}{{{}}}", key.name(), labels.join(","));
        Arc::new(Slot { key, values: Arc::clone(&self.values) })
    }

    fn get(&self, key: &str) -> f64 {
        let values = self.values.lock().unwrap();
        *values.get(key).unwrap_or_else(|| panic!("no {key} in {:#?}", values.keys()))
    }
}

impl Recorder for Last {
    fn describe_counter(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
        self.described.lock().unwrap().push(key.as_str().to_string());
    }

    fn describe_gauge(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
        self.described.lock().unwrap().push(key.as_str().to_string());
    }

    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {
        panic!("no histograms are recorded");
    }

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.slot(key))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.slot(key))
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        panic!("no histograms are recorded");
    }
}

#[test]
fn the_recorder_gets_every_stat_under_the_exposition_names() {
    let pipeline = Pipeline::<u32>::builder()
        .stage("parse", || {
            stage::try_map(
                |x: u32| if x.is_multiple_of(10) { Err(format!("{x} is bad")) } else { Ok(x) },
            )
        })
        .dead_letter(|_| {})
        .broadcast("audit", |b| b.sink(|_| {}))
        .stage("store", || |x: u32| u64::from(x))
        .capacity(16)
        .sink(|_| {})
        .build()
        .unwrap();
    pipeline.input().push_iter(1..=100).unwrap();
    let report = pipeline.drain().unwrap();

    let recorder = Last::default();
    metrics::with_local_recorder(&recorder, || report.stats().record_metrics("demo"));

    let stage = |name: &str, stage: &str| format!("{name}{{pipeline=demo,stage={stage}}}");
    let sink = |name: &str, sink: &str| format!("{name}{{pipeline=demo,sink={sink}}}");
    let received = "backflow_stage_received_items_total";
    assert_eq!(recorder.get(&stage(received, "parse")), 100.0);
    assert_eq!(recorder.get(&stage(received, "store")), 90.0);
    assert_eq!(recorder.get(&stage("backflow_stage_dead_lettered_items_total", "parse")), 10.0);
    let dropped = "backflow_stage_dropped_items_total{pipeline=demo,stage=store,reason=newest}";
    assert_eq!(recorder.get(dropped), 0.0);
    assert_eq!(recorder.get(&stage("backflow_stage_queue_capacity_items", "store")), 16.0);
    let delivered = "backflow_sink_delivered_items_total";
    assert_eq!(recorder.get(&sink(delivered, "sink")), 90.0);
    assert_eq!(recorder.get(&sink(delivered, "audit")), 90.0);
    let p99 = "backflow_stage_process_seconds{pipeline=demo,stage=parse,quantile=0.99}";
    let parse = report.stage("parse").unwrap();
    assert_eq!(recorder.get(p99), parse.process_time.p99 as f64 / 1e9);

    // The same samples as the text exposition, each family described once.
    let text = report.stats().to_prometheus("demo");
    let lines = text.lines().filter(|line| !line.starts_with('#')).count();
    assert_eq!(recorder.values.lock().unwrap().len(), lines);
    let families = text.lines().filter(|line| line.starts_with("# TYPE ")).count();
    let described = recorder.described.lock().unwrap();
    assert_eq!(described.len(), families);
    assert!(described.iter().all(|name| text.contains(&format!("# TYPE {name} "))));
}
