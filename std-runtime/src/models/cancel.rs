//! Cancel: the flag, the wake-ups of every parked producer and worker, and the final sweep
//! that counts what is left.
//!
//! `cancel` sets the pipeline's flag and notifies the control's signal and every queue's
//! signals (`Control::cancel`, `Link::wake_all`), so that a producer parked for room and a
//! worker parked for items wake up, see the flag and stop. `drain` then closes the input
//! (notifying the first queue again), joins the workers, waits for the pushes in progress to
//! end (`Link::wait_for_pushes`, the close/drain handshake of `drain.rs`) and sweeps what is
//! left in the queues, abandoning it. Each notification issues a `SeqCst` fence between the
//! flag it announces and its read of the sleepers; a parked thread fences between
//! registering and reading the flag. One of cancel's fences is enough (each comes after the
//! flag is set), so the negative control leaves out all of them, those of the notifications
//! in `Control::cancel` and `Link::wake_all` (which close uses too): the canceller may then
//! see no sleeper while the sleeper sees no cancel, and the drain waits forever for a worker
//! that sleeps.
//!
//! The model: a one-stage pipeline with one slot (pressure on at one item, so the second
//! producer may wait for room), two producers pushing one item each, and the main thread
//! cancelling, then draining. No thread stays parked; every push ends `Ok`, `Cancelled` or
//! `Closed` with its item; the report counts every accepted item once, delivered or
//! abandoned, and nothing else.

use std::sync::{Arc, Mutex as StdMutex};

use crate::error::{PipelineError, PushError};
use crate::pipeline::Pipeline;
use crate::sync::thread;

use super::{MAX_PREEMPTIONS, explore, fails_without, site};

fn cancel_while_two_producers_push() {
    let delivered = Arc::new(StdMutex::new(Vec::new()));
    let sink = {
        let delivered = Arc::clone(&delivered);
        move |item: u32| delivered.lock().unwrap().push(item)
    };
    let pipeline = Pipeline::<u32>::builder()
        .stage("first", || |item: u32| item)
        .capacity(1)
        .water_mark_counts(1, 0)
        .sink(sink)
        .build()
        .expect("a valid pipeline");
    let producers: Vec<_> = (0..2)
        .map(|item| {
            let input = pipeline.input();
            thread::spawn(move || (item, input.push(item)))
        })
        .collect();
    pipeline.cancel();
    let Err(PipelineError::Cancelled { report }) = pipeline.drain() else {
        panic!("a cancelled pipeline drains with `Cancelled`");
    };
    let mut accepted = Vec::new();
    for producer in producers {
        match producer.join().unwrap() {
            (item, Ok(())) => accepted.push(item),
            (item, Err(PushError::Cancelled(back) | PushError::Closed(back))) => {
                assert_eq!(back, item);
            }
            (item, Err(error)) => panic!("push of {item}: {error}"),
        }
    }
    let delivered = delivered.lock().unwrap().clone();
    assert!(delivered.iter().all(|item| accepted.contains(item)), "{delivered:?}");
    let received = report.stage("first").expect("the stage").accounting.received;
    assert_eq!(received, accepted.len() as u64, "the report counts every accepted item once");
    assert_eq!(report.sink().delivered, delivered.len() as u64);
    assert_eq!(report.sink().delivered + report.abandoned(), received);
    assert!(report.is_balanced(), "{report}");
}

#[test]
fn cancel_wakes_everyone_and_counts_what_is_left() {
    assert!(explore("cancel", cancel_while_two_producers_push) > 1);
}

#[test]
fn without_the_fences_of_its_wake_ups_cancel_leaves_a_thread_asleep() {
    let (control, link) = (include_str!("../control.rs"), include_str!("../link.rs"));
    let sites = [
        site("src/control.rs", control, "fn cancel(", ".notify()"),
        site("src/link.rs", link, "fn wake_all(", "self.items.notify()"),
        site("src/link.rs", link, "fn wake_all(", "self.room.notify()"),
    ];
    let failure = fails_without("cancel", &sites, MAX_PREEMPTIONS, cancel_while_two_producers_push);
    assert!(failure.contains("deadlock"), "{failure}");
}
