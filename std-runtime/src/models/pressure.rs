//! Pressure: the flag that pushers read, raised and relieved under the link's lock, and the
//! wake-ups of producers waiting for room.
//!
//! A producer that finds pressure on (or the queue full) under `Block` raises pressure and
//! parks on the link's `room` signal until its check, which relieves pressure itself if the
//! fill is back at the low mark, finds it off. The consumer, after each pop, issues a
//! `SeqCst` fence and reads the flag (`Link::popped`): if it is on and its own relieve turns
//! it off, it wakes the parked producers; a producer that relieved pressure itself passes
//! the wake-up on (`Link::wait_for_room`). A producer whose push filled the queue may raise
//! pressure after the consumer emptied it again, with another producer, which turned it on
//! meanwhile, parked for room: that raise turns pressure off, and must wake the parked
//! producer too. (This model found that: `raise` used to turn pressure off silently.)
//!
//! The model: one link with one slot (pressure on at one item, off at none), two producers
//! pushing one item each through their input handles, and a consumer popping and waiting as
//! a worker does. Both pushes end `Ok` and the consumer gets both items: no producer is left
//! parked. Without the consumer's fence, its read of the flag and a parked producer's read of
//! the fill may both be stale (the consumer sees no pressure, the producer a full queue), and
//! the producer sleeps on an empty queue; loom needs three preemptions to get there.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::Arc;

use backflow_core::{Overflow, WaterMarks};

use crate::control::Control;
use crate::input::Input;
use crate::link::{Link, LinkSpec};
use crate::sync::thread;
use crate::wait::WaitStrategy;

use super::{MAX_PREEMPTIONS, explore, fails_without, site};

fn two_producers_wait_for_room() {
    let control = Arc::new(Control::new(WaitStrategy::Park, NonZeroU32::MIN, false, None));
    let spec = LinkSpec {
        capacity: 1,
        marks: WaterMarks::from_counts(1, 1, 0).expect("valid marks"),
        overflow: Overflow::Block,
        upstream: 0,
        single: false,
        handles: true,
        stage: Arc::from("first"),
        counters: Arc::default(),
        on_drop: None,
        weight: None,
    };
    let link = Arc::new(Link::new(spec, control).expect("a small queue"));
    let producers: Vec<_> = (0..2)
        .map(|item| {
            let input = Input::new(Arc::clone(&link));
            thread::spawn(move || input.push(item))
        })
        .collect();
    // The consumer, popping and waiting as a worker does.
    let mut taken = VecDeque::new();
    while taken.len() < 2 {
        if link.pop_into(&mut taken, 1) == 0 {
            link.wait_for_items(None);
        }
    }
    for producer in producers {
        producer.join().unwrap().expect("a push waits for room");
    }
    let mut items: Vec<u32> = taken.into_iter().map(|envelope| envelope.item).collect();
    items.sort_unstable();
    assert_eq!(items, [0, 1]);
}

#[test]
fn producers_waiting_for_room_wake_up() {
    assert!(explore("pressure", two_producers_wait_for_room) > 1);
}

#[test]
fn without_the_fence_after_a_pop_a_producer_sleeps_on_an_empty_queue() {
    let popped = site("src/link.rs", include_str!("../link.rs"), "fn popped(", "fence(");
    let failure =
        fails_without("pressure", &[popped], MAX_PREEMPTIONS + 1, two_producers_wait_for_room);
    assert!(failure.contains("deadlock"), "{failure}");
}
