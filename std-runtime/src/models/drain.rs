//! The close/drain handshake: how the first stage knows it has seen its last item.
//!
//! A push marks its handle active, issues a `SeqCst` fence, then checks whether the input is
//! closed (`Input::begin`, `Input::refusal`). The first stage's worker, finding its queue
//! empty, reads `closed`, issues a `SeqCst` fence, then reads every handle's `active` flag
//! (`Handles::all_done`), and finishes only if none is set. One of the two fences comes
//! first: either the push sees the input closed and hands its item back, or the worker sees
//! the push active and waits for its item. Without the push's fence both may read the old
//! value, and the worker finishes while an accepted item is on its way into the queue.
//!
//! The model: a one-stage pipeline, two producers pushing one item each while the main thread
//! drains. Every push ends `Ok` (and its item reached the sink before `drain` returned) or
//! `Closed` with its item; the report counts every item once and abandons none.

use std::sync::{Arc, Mutex as StdMutex};

use crate::error::PushError;
use crate::pipeline::Pipeline;
use crate::sync::thread;

use super::{MAX_PREEMPTIONS, explore, fails_without, site};

fn two_producers_and_a_drain() {
    // A plain mutex: the sink's own lock (loom's) already orders the calls.
    let delivered = Arc::new(StdMutex::new(Vec::new()));
    let sink = {
        let delivered = Arc::clone(&delivered);
        move |item: u32| delivered.lock().unwrap().push(item)
    };
    let pipeline = Pipeline::<u32>::builder()
        .stage("first", || |item: u32| item)
        .capacity(2)
        .sink(sink)
        .build()
        .expect("a valid pipeline");
    let producers: Vec<_> = (0..2)
        .map(|item| {
            let input = pipeline.input();
            thread::spawn(move || (item, input.push(item)))
        })
        .collect();
    let report = pipeline.drain().expect("nothing failed");
    let mut accepted = Vec::new();
    for producer in producers {
        match producer.join().unwrap() {
            (item, Ok(())) => accepted.push(item),
            (item, Err(PushError::Closed(back))) => assert_eq!(back, item),
            (item, Err(error)) => panic!("push of {item}: {error}"),
        }
    }
    let mut delivered = delivered.lock().unwrap().clone();
    delivered.sort_unstable();
    assert_eq!(delivered, accepted, "every accepted item is delivered by drain, once");
    assert_eq!(report.sink().delivered, accepted.len() as u64);
    assert_eq!(report.abandoned(), 0);
    assert!(report.is_balanced(), "{report}");
}

#[test]
fn drain_ends_with_the_last_accepted_item() {
    assert!(explore("drain", two_producers_and_a_drain) > 1);
}

#[test]
fn without_the_fence_of_a_push_an_accepted_item_is_left_behind() {
    let begin = site("src/input.rs", include_str!("../input.rs"), "fn begin(", "fence(");
    let failure = fails_without("drain", &[begin], MAX_PREEMPTIONS, two_producers_and_a_drain);
    assert!(failure.contains("every accepted item is delivered by drain"), "{failure}");
}
