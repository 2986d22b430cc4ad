//! Counters and the histogram, including a property test of the stated quantile error bound.

mod common;

use std::sync::Arc;

use backflow_core::metrics::{Counter, Histogram, Snapshot};
use common::scaled;
use proptest::prelude::*;

/// The exact quantile by the same rank rule the histogram uses: the `ceil(q·n)`-th smallest.
fn exact_quantile(sorted: &[u64], q: f64) -> u64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(scaled(256, 4) as u32))]

    #[test]
    fn quantiles_are_within_one_sixty_fourth(
        values in proptest::collection::vec(
            prop_oneof![0u64..100, 0u64..1_000_000, any::<u64>()], 1..scaled(500, 20)),
        q in 0.0f64..=1.0,
    ) {
        let histogram = Histogram::new();
        values.iter().for_each(|&v| histogram.record(v));
        let snapshot = histogram.snapshot();
        let mut sorted = values.clone();
        sorted.sort_unstable();
        for q in [q, 0.5, 0.95, 0.99, 1.0] {
            let exact = exact_quantile(&sorted, q);
            let reported = snapshot.quantile(q);
            prop_assert!(
                reported.abs_diff(exact) <= exact / 64,
                "q={} exact={} reported={}", q, exact, reported
            );
        }
        prop_assert_eq!(snapshot.max(), *sorted.last().unwrap());
        prop_assert_eq!(snapshot.count(), values.len() as u64);
    }
}

#[test]
fn small_values_are_exact() {
    let h = Histogram::new();
    (0..32).for_each(|v| h.record(v));
    let s = h.snapshot();
    for (i, q) in (1..=32).map(|k| (k - 1, k as f64 / 32.0)) {
        assert_eq!(s.quantile(q), i);
    }
    assert_eq!(Snapshot::new().quantile(0.5), 0);
    assert_eq!(s.quantile(f64::NAN), 0);
}

#[test]
fn merged_snapshots_equal_one_histogram_of_everything() {
    let (a, b, all) = (Histogram::new(), Histogram::new(), Histogram::new());
    for v in 0..1000u64 {
        let v = v * v;
        if v % 3 == 0 {
            a.record(v)
        } else {
            b.record(v)
        }
        all.record(v);
    }
    let mut merged = a.snapshot();
    merged.merge(&b.snapshot());
    assert_eq!(merged, all.snapshot());
    assert_eq!(merged.mean(), all.snapshot().mean());
}

#[test]
fn concurrent_records_and_counts_are_all_kept() {
    let threads = 4;
    let per_thread = scaled(20_000, 100) as u64;
    let histogram = Arc::new(Histogram::new());
    let counter = Arc::new(Counter::new());
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (histogram, counter) = (Arc::clone(&histogram), Arc::clone(&counter));
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    histogram.record(t * per_thread + i);
                    counter.increment();
                }
            })
        })
        .collect();
    handles.into_iter().for_each(|h| h.join().unwrap());
    assert_eq!(counter.get(), threads * per_thread);
    let snapshot = histogram.snapshot();
    assert_eq!(snapshot.count(), threads * per_thread);
    assert_eq!(snapshot.max(), threads * per_thread - 1);
}
