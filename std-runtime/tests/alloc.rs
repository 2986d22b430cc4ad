//! A running pipeline allocates nothing per item: after a warm-up (rings and batch buffers are
//! allocated when the pipeline is built, stats storage is fixed), a million more `u64`s
//! through three stages, pushed one at a time and in runs, leave the allocation count where it
//! was. The count is global (`stats_alloc` wraps the system allocator), so this file holds a
//! single test and nothing else runs while it measures.

use std::alloc::System;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use backflow::{Input, Pipeline};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Waits (sleeping, which does not allocate) until the sink has seen `n` items.
fn wait_for(delivered: &AtomicU64, n: u64) {
    while delivered.load(Ordering::Acquire) < n {
        thread::sleep(Duration::from_millis(1));
    }
}

/// Pushes `items` items, half one at a time and half in a run.
fn feed(input: &Input<u64>, items: std::ops::Range<u64>) {
    let middle = items.start + (items.end - items.start) / 2;
    for x in items.start..middle {
        input.push(x).unwrap();
    }
    input.push_iter(middle..items.end).unwrap();
}

#[test]
fn steady_state_allocates_nothing_per_item() {
    let delivered = Arc::new(AtomicU64::new(0));
    let sink_count = Arc::clone(&delivered);
    let pipeline = Pipeline::<u64>::builder()
        .stage("parse", || |x: u64| x + 1)
        .stage("enrich", || |x: u64| x * 3)
        .capacity(256)
        .stage("shrink", || |x: u64| x / 2)
        .sink(move |_| {
            sink_count.fetch_add(1, Ordering::Release);
        })
        .build()
        .unwrap();
    let input = pipeline.input();

    const WARM_UP: u64 = 100_000;
    const MEASURED: u64 = 1_000_000;
    feed(&input, 0..WARM_UP);
    wait_for(&delivered, WARM_UP);

    let region = Region::new(GLOBAL);
    feed(&input, WARM_UP..WARM_UP + MEASURED);
    wait_for(&delivered, WARM_UP + MEASURED);
    let change = region.change();

    assert_eq!(
        (change.allocations, change.reallocations),
        (0, 0),
        "{MEASURED} items through 3 stages allocated: {change:?}"
    );
    drop(input);
    let report = pipeline.drain().unwrap();
    assert_eq!(report.sink().delivered, WARM_UP + MEASURED);
    assert!(report.is_balanced(), "{report}");
}
