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
//!
//! A producer that only tries to push never waits, so never relieves pressure itself: if the
//! push that fills the queue reads the fill, the consumer then empties the queue, each pop
//! reading the flag still off, and only then the producer stores the flag on, nobody would
//! turn it off again, and every later `try_push` would be refused by an empty queue. The
//! second model has such a producer and a consumer, and checks that pressure is off once
//! both are done; without the fence `Link::raise` issues after turning pressure on (before
//! it reads the fill again), it is left on.

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

/// A link for handles to push into, of `capacity` slots with pressure on when it is full and
/// off when it is empty.
fn first_link(capacity: usize) -> Arc<Link<u32>> {
    let control = Arc::new(Control::new(WaitStrategy::Park, NonZeroU32::MIN, false, None));
    let spec = LinkSpec {
        capacity,
        marks: WaterMarks::from_counts(capacity, capacity, 0).expect("valid marks"),
        overflow: Overflow::Block,
        upstream: 0,
        single: false,
        handles: true,
        stage: Arc::from("first"),
        counters: Arc::default(),
        on_drop: None,
        weight: None,
    };
    Arc::new(Link::new(spec, control).expect("a small queue"))
}

/// Pops `n` items, waiting for them as a worker does.
fn take(link: &Link<u32>, n: usize) -> Vec<u32> {
    let mut taken = VecDeque::new();
    while taken.len() < n {
        if link.pop_into(&mut taken, 1) == 0 {
            link.wait_for_items(None);
        }
    }
    taken.into_iter().map(|envelope| envelope.item).collect()
}

fn two_producers_wait_for_room() {
    let link = first_link(1);
    let producers: Vec<_> = (0..2)
        .map(|item| {
            let input = Input::new(Arc::clone(&link));
            thread::spawn(move || input.push(item))
        })
        .collect();
    let mut items = take(&link, 2);
    for producer in producers {
        producer.join().unwrap().expect("a push waits for room");
    }
    items.sort_unstable();
    assert_eq!(items, [0, 1]);
}

fn a_producer_tries_to_push() {
    let link = first_link(2);
    let producer = {
        let input = Input::new(Arc::clone(&link));
        thread::spawn(move || {
            for item in 0..2 {
                input.try_push(item).expect("room for both");
            }
        })
    };
    assert_eq!(take(&link, 2), [0, 1]);
    producer.join().unwrap();
    assert!(!link.pressure().0, "pressure left on with an empty queue");
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

#[test]
fn pressure_is_off_once_a_producer_that_only_tries_and_the_consumer_are_done() {
    assert!(explore("pressure after try_push", a_producer_tries_to_push) > 1);
}

#[test]
fn without_the_fence_after_raising_pressure_it_is_left_on() {
    let raised = site("src/link.rs", include_str!("../link.rs"), "fn raise(", "fence(");
    let failure = fails_without(
        "pressure after try_push",
        &[raised],
        MAX_PREEMPTIONS,
        a_producer_tries_to_push,
    );
    assert!(failure.contains("pressure left on"), "{failure}");
}
