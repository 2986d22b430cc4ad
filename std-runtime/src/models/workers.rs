//! Workers joining and leaving a stage while the pipeline runs (a stage with a workers range,
//! under a thread budget).
//!
//! The stage's downstream queue is finished once every upstream worker has left
//! (`Link::upstream_done` by the last of them). The controller adds a worker with
//! `Workers::enlist`, which counts it in and, under the same lock, announces it downstream
//! (`Link::upstream_added`) — but only while some worker of the stage is still live; a
//! worker leaves with `Workers::leave`, which counts it out and announces it downstream under
//! that lock. So the downstream count never touches zero while a worker is on its way in:
//! either the new worker is refused (the stage's stream has ended) or the downstream waits for
//! its items too. Announcing the new worker after the count, outside the lock, lets the last
//! old worker leave in between: the downstream finishes, its consumer stops, and the new
//! worker's items are never taken.
//!
//! The model: a stage whose one worker reaches the end of its stream and leaves, while the
//! controller adds a second worker, which delivers one item and leaves; the downstream's
//! consumer pops and waits as a worker does until its queue is finished and empty. It gets
//! every item any worker delivered, and every thread ends. (A worker that retires leaves the
//! same way; the request it takes is one compare-and-swap on a counter.)

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use backflow_core::{Overflow, WaterMarks};

use crate::control::Control;
use crate::link::{Envelope, Link, LinkSpec};
use crate::sync::thread;
use crate::wait::WaitStrategy;
use crate::workers::Workers;

use super::{MAX_PREEMPTIONS, explore, fails_with};

/// How the controller counts a new worker in: `true` if it was.
type Join = fn(&Workers, &Link<u32>) -> bool;

/// As the controller does: announced downstream under the workers' lock.
fn under_the_lock(workers: &Workers, downstream: &Link<u32>) -> bool {
    workers.enlist(Instant::now(), || downstream.upstream_added()).is_some()
}

/// Counted in first, announced downstream after the lock is let go.
fn after_the_lock(workers: &Workers, downstream: &Link<u32>) -> bool {
    let joined = workers.enlist(Instant::now(), || {}).is_some();
    if joined {
        downstream.upstream_added();
    }
    joined
}

/// The new worker of the stage: delivers `item` downstream and leaves.
fn work(item: u32, workers: &Workers, downstream: &Link<u32>) {
    let mut batch = VecDeque::from([Envelope { item, born: 0, queued: 0, weight: 0 }]);
    assert!(downstream.deliver(&mut batch), "a delivery with room goes in");
    workers.leave(|| downstream.upstream_done());
}

fn a_worker_joins_as_the_last_leaves(join: Join) {
    let control = Arc::new(Control::new(WaitStrategy::Park, NonZeroU32::MIN, false, None));
    let spec = LinkSpec {
        capacity: 2,
        marks: WaterMarks::for_capacity(2).expect("valid marks"),
        overflow: Overflow::Block,
        upstream: 1,
        single: false,
        handles: false,
        stage: Arc::from("next"),
        counters: Arc::default(),
        on_drop: None,
        weight: None,
    };
    let downstream = Arc::new(Link::new(spec, control).expect("a small queue"));
    let workers = Arc::new(Workers::new(1, 1, 2, Instant::now()));
    // The stage's one worker, at the end of its stream: it leaves.
    let first = {
        let (workers, downstream) = (Arc::clone(&workers), Arc::clone(&downstream));
        thread::spawn(move || workers.leave(|| downstream.upstream_done()))
    };
    let controller = {
        let (workers, downstream) = (Arc::clone(&workers), Arc::clone(&downstream));
        thread::spawn(move || {
            join(&workers, &downstream)
                .then(|| thread::spawn(move || work(2, &workers, &downstream)))
        })
    };
    // The downstream's consumer, popping and waiting as a worker does.
    let mut taken = VecDeque::new();
    loop {
        if downstream.pop_into(&mut taken, 2) == 0 {
            if downstream.finished() && downstream.len() == 0 {
                break;
            }
            downstream.wait_for_items(None);
        }
    }
    first.join().unwrap();
    let mut expected = vec![];
    if let Some(second) = controller.join().unwrap() {
        second.join().unwrap();
        expected.push(2);
    }
    let mut items: Vec<u32> = taken.into_iter().map(|envelope| envelope.item).collect();
    items.sort_unstable();
    assert_eq!(items, expected, "the consumer gets every item a worker delivered");
}

fn joined_under_the_lock() {
    a_worker_joins_as_the_last_leaves(under_the_lock);
}

fn joined_after_the_lock() {
    a_worker_joins_as_the_last_leaves(after_the_lock);
}

#[test]
fn a_worker_joins_only_while_its_items_will_be_taken() {
    assert!(explore("workers: join", joined_under_the_lock) > 1);
}

#[test]
fn announced_outside_the_lock_a_new_worker_s_items_are_left_behind() {
    let failure = fails_with("workers: join", MAX_PREEMPTIONS, joined_after_the_lock);
    assert!(failure.contains("the consumer gets every item a worker delivered"), "{failure}");
}
