//! Every bench workload runs to completion and delivers every item (each run checks the sum of
//! what its consumers received), so the bench numbers come from working queues.

use backflow_benches::{asynchronous, bytes, mpmc, report, spsc};

const ITEMS: u64 = 20_000;

#[test]
fn every_spsc_contender_delivers_every_item() {
    for contender in spsc::CONTENDERS {
        let elapsed = (contender.run)(ITEMS);
        assert!(report::per_second(ITEMS, elapsed) > 0.0, "{}", contender.name);
    }
}

#[test]
fn every_mpmc_contender_delivers_every_item_in_every_shape() {
    for &shape in mpmc::SHAPES {
        for contender in mpmc::CONTENDERS {
            let ran = mpmc::for_shape(contender, shape)(ITEMS);
            let applies = contender.name != "std sync_channel" || shape.consumers == 1;
            assert_eq!(ran.is_some(), applies, "{} {shape:?}", contender.name);
        }
    }
}

#[test]
fn interleave_takes_turns_and_skips_what_does_not_apply() {
    let mut calls = Vec::new();
    let samples = report::interleave(&["a", "b", "c"], 2, |i| {
        calls.push(i);
        (i != 1).then_some(i as f64)
    });
    // Warm-up in order, then rounds starting from a different contender each time.
    assert_eq!(calls, [0, 1, 2, 0, 2, 2, 0]);
    let names: Vec<&str> = samples.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["a", "c"]);
    assert_eq!(samples[1].per_second, [2.0, 2.0]);
}

#[test]
fn every_pipeline_contender_delivers_every_item() {
    use backflow_benches::pipeline::{self, SinkDelay, Workload};
    use std::time::Duration;

    for &stages in pipeline::STAGES {
        let workload = Workload { items: ITEMS, stages, sink_delay: SinkDelay::None };
        for contender in pipeline::THROUGHPUT {
            assert!((contender.run)(workload).is_some(), "{} {stages}", contender.name);
        }
    }
    let slow =
        Workload { items: 20, stages: 1, sink_delay: SinkDelay::Spin(Duration::from_micros(100)) };
    for contender in pipeline::SLOW_CONSUMER {
        let elapsed = (contender.run)(slow).expect("applies");
        assert!(elapsed >= Duration::from_millis(2), "{}: 20 × 100 µs", contender.name);
    }
    for contender in pipeline::LATENCY {
        let latency =
            (contender.run)(1_000, pipeline::RATE, 1).expect("every contender runs 1 stage");
        assert!(latency.p50 <= latency.p99, "{}", contender.name);
        if let Some(latency) = (contender.run)(1_000, pipeline::RATE, 3) {
            assert!(latency.p50 <= latency.p99, "{}", contender.name);
        }
    }
}

#[test]
fn every_parallel_contender_delivers_every_item() {
    use backflow_benches::parallel;

    for contender in parallel::CONTENDERS {
        let elapsed = (contender.run)(200);
        assert!(elapsed >= parallel::COST * 100, "{}: 200 × 10 µs on 2 cores", contender.name);
    }
}

#[test]
fn every_ordered_contender_delivers_every_item_and_ordered_ones_in_order() {
    use backflow_benches::ordered::{self, Load};

    for load in [Load::Spin, Load::Map] {
        for contender in ordered::CONTENDERS {
            // Each run asserts the count and the sum, and an ordered run zero inversions.
            let run = (contender.run)(load, ITEMS);
            if contender.name != ordered::UNORDERED {
                assert_eq!(run.inversions, 0, "{} {load:?}", contender.name);
            }
        }
    }
}

#[test]
fn the_byte_budget_workloads_deliver_every_item() {
    for &(name, budget) in bytes::HEAVY {
        let run = bytes::heavy(200, budget, std::time::Duration::ZERO);
        assert!(run.bytes >= 200 * 1024, "{name}");
    }
    for &(name, budget) in bytes::SMALL {
        assert!(report::per_second(ITEMS, bytes::small(ITEMS, budget)) > 0.0, "{name}");
    }
}

#[test]
fn every_budget_contender_delivers_every_item_within_the_budget() {
    use backflow_benches::budget::{self, Workers};

    let contenders = budget::fixed_assignments().into_iter().map(Workers::Fixed);
    for workers in contenders.chain([Workers::Budget]) {
        // Each run asserts the sum and the accounting.
        let run = budget::run(2_000, workers);
        assert!(run.workers.iter().sum::<usize>() <= budget::THREADS, "{}", workers.name());
        if let Workers::Fixed(counts) = workers {
            assert_eq!(run.workers, counts);
            assert!(run.moves.is_empty());
        }
    }
}

#[test]
fn every_async_contender_delivers_every_item_within_its_concurrency() {
    let runtime = asynchronous::runtime();
    for contender in asynchronous::IO_CONTENDERS {
        let run = (contender.run)(&runtime, 600);
        assert!(run.elapsed >= asynchronous::CALL, "{}", contender.name);
        let limit = if contender.name == asynchronous::THREADS {
            asynchronous::THREAD_WORKERS
        } else {
            asynchronous::CONCURRENCY
        };
        assert!(run.peak_calls <= limit, "{}: {} calls at once", contender.name, run.peak_calls);
    }
    for contender in asynchronous::SEND_CONTENDERS {
        assert!(
            report::per_second(5_000, (contender.run)(&runtime, 5_000)) > 0.0,
            "{}",
            contender.name
        );
    }
}
