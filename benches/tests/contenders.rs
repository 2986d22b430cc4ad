//! Every bench workload runs to completion and delivers every item (each run checks the sum of
//! what its consumers received), so the bench numbers come from working queues.

use backflow_benches::{mpmc, report, spsc};

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
