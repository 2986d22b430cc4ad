//! A branch that ends in its own sink takes a drop hook, as the main line's sink does: an item
//! abandoned at the branch's sink reaches it, with the branch's name.

mod common;

use std::sync::{Arc, Mutex};

use backflow::{Branch, BranchEnd, Builder, DropReason, Dropped, Pipeline, stage};
use common::{Flag, Gate};

/// What a drop hook saw: `(stage, reason, item)`.
type Seen = Arc<Mutex<Vec<(String, DropReason, u64)>>>;

fn recording(seen: &Seen) -> impl Fn(Dropped<'_, u64>) + Send + Sync + 'static {
    let seen = Arc::clone(seen);
    move |d| seen.lock().unwrap().push((d.stage.to_string(), d.reason, d.item))
}

/// Each item becomes 300 outputs, which leave a stage in batches.
fn three_hundred(x: u64) -> impl Iterator<Item = u64> {
    (0..300).map(move |i| x * 1_000 + i)
}

/// How a test ends branch `audit`: in the held sink it is given, with a drop hook recording
/// into `Seen`.
type End = Box<dyn FnOnce(Branch<u64>, Box<dyn FnMut(u64) + Send>, Seen) -> BranchEnd<u64>>;

/// Broadcasts `main`'s outputs to branch `audit`, which `end` ends in a sink held on its first
/// item; one item is pushed and becomes 300 outputs on the way (in `main` or in the branch),
/// and the pipeline is cancelled while the sink is held, so the next batch that reaches the
/// branch's sink is abandoned there: its drop hook must see each of those items.
fn abandons_at_the_branch_sink(main: Builder<u64, u64, u64>, end: End) {
    let (gate, entered, seen) = (Gate::default(), Flag::default(), Seen::default());
    let delivered = Arc::new(Mutex::new(Vec::new()));
    let held = Box::new(common::held_sink(&gate, &entered, &delivered));
    let hook_seen = Arc::clone(&seen);
    let pipeline = main
        .broadcast("audit", move |branch| end(branch, held, hook_seen))
        .sink(|_| {})
        .build()
        .unwrap();
    pipeline.input().push(0).unwrap();
    entered.wait();
    pipeline.cancel();
    gate.open();
    let result = pipeline.drain();
    let report = result.as_ref().expect_err("the pipeline was cancelled").report();
    assert!(report.is_balanced(), "{:?}", report.unbalanced());
    let audit = report.sinks().iter().find(|k| k.name == "audit").expect("the branch's sink");
    assert!(audit.abandoned > 0, "nothing was abandoned at the branch's sink:\n{report}");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len() as u64, audit.abandoned, "drop hook calls against the report");
    for (stage, reason, _) in seen.iter() {
        assert_eq!((stage.as_str(), *reason), ("audit", DropReason::Abandoned));
    }
}

#[test]
fn a_branch_sink_hands_abandoned_items_to_its_drop_hook() {
    abandons_at_the_branch_sink(
        Pipeline::<u64>::builder().stage("spread", || stage::flat_map(three_hundred)),
        Box::new(|branch, sink, seen| branch.sink(sink).on_drop(recording(&seen))),
    );
}

#[test]
fn a_branch_sink_after_a_branch_stage_hands_abandoned_items_to_its_drop_hook() {
    abandons_at_the_branch_sink(
        Pipeline::<u64>::builder().stage("src", || |x: u64| x),
        Box::new(|branch, sink, seen| {
            branch
                .stage("spread", || stage::flat_map(three_hundred))
                .sink(sink)
                .on_drop(recording(&seen))
        }),
    );
}
