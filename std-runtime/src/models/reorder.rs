//! The ordered hand-off of an `Ordered` stage with several workers: the ticket lock and the
//! reorder window.
//!
//! A worker takes a batch from the stage's queue and numbers it in one step, under the
//! ticket lock (`Reorder::take`), so that the numbers follow the queue's order. Once done, it
//! hands the batch's outputs over under the window's lock (`Reorder::hand_over`): the window
//! holds a batch that is ahead, and whoever completes the sequence delivers every batch now
//! due, in order; a worker whose batch is further ahead than the window waits on a condition
//! variable until the window moves. Numbering a batch after taking it, outside the lock,
//! lets two workers number their batches in the other order: the sink then receives them
//! out of order.
//!
//! The model: a queue holding three items, two workers taking one item per batch, a window of
//! two batches (under loom; see `REORDER_WINDOW`), and a sink. The sink receives the items in
//! queue order, every worker finishes (none waits for a window that never moves), and every
//! batch is delivered once.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Instant;

use backflow_core::{Overflow, WaterMarks};

use crate::control::Control;
use crate::input::Input;
use crate::link::{Envelope, Link, LinkSpec};
use crate::route::{Downstream, HandOver, Reorder, Sink, SinkCall};
use crate::stats::SinkShared;
use crate::sync::{Mutex, Ordering, thread};
use crate::wait::WaitStrategy;

use super::{MAX_PREEMPTIONS, explore, fails_with};

/// How a worker takes a batch and its number.
type Take = fn(&Reorder<u32>, &Link<u32>, &mut VecDeque<Envelope<u32>>) -> Option<u64>;

/// As the worker does: the batch is taken under the ticket lock.
fn under_the_lock(
    reorder: &Reorder<u32>,
    input: &Link<u32>,
    batch: &mut VecDeque<Envelope<u32>>,
) -> Option<u64> {
    reorder.take(|| input.pop_into(batch, 1)).1
}

/// The batch taken first, then numbered under the lock.
fn before_the_lock(
    reorder: &Reorder<u32>,
    input: &Link<u32>,
    batch: &mut VecDeque<Envelope<u32>>,
) -> Option<u64> {
    let popped = input.pop_into(batch, 1);
    reorder.take(|| popped).1
}

/// Two workers of an ordered stage over three items, each taking its batches with `take`.
fn two_workers(take: Take) {
    let control = Arc::new(Control::new(WaitStrategy::Park, NonZeroU32::MIN, false, None));
    let spec = LinkSpec {
        capacity: 4,
        marks: WaterMarks::for_capacity(4).expect("valid marks"),
        overflow: Overflow::Block,
        upstream: 0,
        single: false,
        handles: true,
        stage: Arc::from("ordered"),
        counters: Arc::default(),
        on_drop: None,
        weight: None,
    };
    let input = Arc::new(Link::new(spec, Arc::clone(&control)).expect("a small queue"));
    let handle = Input::new(Arc::clone(&input));
    for item in 0..3 {
        handle.push(item).expect("room for every item");
    }
    drop(handle);
    input.handles.as_ref().expect("fed by handles").closed.store(true, Ordering::SeqCst);
    let delivered = Arc::new(StdMutex::new(Vec::new()));
    let call = {
        let delivered = Arc::clone(&delivered);
        move |item: u32| delivered.lock().unwrap().push(item)
    };
    let sink = Sink {
        name: Arc::from("sink"),
        call: Mutex::new(SinkCall::new(call)),
        shared: Arc::new(SinkShared::new(Instant::now())),
        control: Arc::clone(&control),
        on_drop: None,
    };
    let downstream = Downstream::Sink(Arc::new(sink));
    let reorder = Arc::new(Reorder::new());
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (input, reorder) = (Arc::clone(&input), Arc::clone(&reorder));
            let (downstream, control) = (downstream.clone(), Arc::clone(&control));
            thread::spawn(move || {
                let mut batch = VecDeque::new();
                loop {
                    let Some(ticket) = take(&reorder, &input, &mut batch) else {
                        if input.finished() && input.len() == 0 {
                            return;
                        }
                        input.wait_for_items(None);
                        continue;
                    };
                    // The stage passes its inputs on as they are.
                    let handed = reorder
                        .hand_over(ticket, &mut batch, &downstream, || control.is_cancelled());
                    assert!(
                        matches!(handed, HandOver::Delivered),
                        "batch {ticket} was not delivered"
                    );
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    assert_eq!(*delivered.lock().unwrap(), [0, 1, 2], "the sink receives the items in queue order");
}

fn the_ordered_hand_off() {
    two_workers(under_the_lock);
}

fn numbered_outside_the_lock() {
    two_workers(before_the_lock);
}

#[test]
fn workers_deliver_in_queue_order() {
    assert!(explore("reorder", the_ordered_hand_off) > 1);
}

#[test]
fn numbered_outside_the_ticket_lock_batches_overtake() {
    let failure = fails_with("reorder", MAX_PREEMPTIONS, numbered_outside_the_lock);
    assert!(failure.contains("the sink receives the items in queue order"), "{failure}");
}
