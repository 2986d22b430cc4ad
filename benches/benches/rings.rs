//! Criterion benches of every ring and pipeline contender (see `backflow_benches::spsc`,
//! `::mpmc`, `::pipeline` and `::ordered`).
//! For the same-run comparison table, run `cargo xtask bench` instead.

use std::time::Duration;

use backflow_benches::ordered::{self, Load};
use backflow_benches::pipeline::{self, SinkDelay, Workload};
use backflow_benches::{mpmc, spsc};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// Items moved per criterion iteration.
const ITEMS_PER_ITER: u64 = 10_000;

fn spsc_rings(c: &mut Criterion) {
    let mut group = c.benchmark_group("spsc");
    group.throughput(Throughput::Elements(ITEMS_PER_ITER));
    for contender in spsc::CONTENDERS {
        group.bench_function(contender.name, |b| {
            b.iter_custom(|iters| (contender.run)(iters * ITEMS_PER_ITER))
        });
    }
    group.finish();
}

fn mpmc_rings(c: &mut Criterion) {
    for &shape in mpmc::SHAPES {
        let mut group =
            c.benchmark_group(format!("mpmc {}p×{}c", shape.producers, shape.consumers));
        group.throughput(Throughput::Elements(ITEMS_PER_ITER));
        for contender in mpmc::CONTENDERS {
            let run = mpmc::for_shape(contender, shape);
            if run(ITEMS_PER_ITER).is_none() {
                continue;
            }
            group.bench_function(contender.name, |b| {
                b.iter_custom(|iters| run(iters * ITEMS_PER_ITER).unwrap_or(Duration::ZERO))
            });
        }
        group.finish();
    }
}

fn pipelines(c: &mut Criterion) {
    for &stages in pipeline::STAGES {
        let mut group = c.benchmark_group(format!("pipeline {stages} stage(s)"));
        group.throughput(Throughput::Elements(ITEMS_PER_ITER));
        for contender in pipeline::THROUGHPUT {
            group.bench_function(contender.name, |b| {
                b.iter_custom(|iters| {
                    let items = iters * ITEMS_PER_ITER;
                    let workload = Workload { items, stages, sink_delay: SinkDelay::None };
                    (contender.run)(workload).unwrap_or(Duration::ZERO)
                })
            });
        }
        group.finish();
    }
}

fn ordering(c: &mut Criterion) {
    for (load, label) in [(Load::Spin, "1 µs per item"), (Load::Map, "plain map")] {
        let mut group = c.benchmark_group(format!("ordered, {label}"));
        group.throughput(Throughput::Elements(ITEMS_PER_ITER));
        for contender in ordered::CONTENDERS {
            group.bench_function(contender.name, |b| {
                b.iter_custom(|iters| (contender.run)(load, iters * ITEMS_PER_ITER).elapsed)
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = spsc_rings, mpmc_rings, pipelines, ordering
}
criterion_main!(benches);
