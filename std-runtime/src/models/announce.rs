//! Announcing changes made under a lock after letting go of it ([`Announcer`]; its module
//! docs describe the hand-off): a queue's pressure turning on and off, a stage's breaker.
//!
//! Each thread posts its change, then tries for the turn; the thread with the turn announces
//! what is posted until nothing is, gives the turn up, and looks again. A change posted while
//! the deliverer is between its last look and giving up the turn is announced by its poster,
//! which now gets the turn, or by the deliverer, whose look again finds it.
//!
//! The model: two threads post a change each and deliver. Every change is announced exactly
//! once. Without the look again (one turn only, [`Announcer::take_turn`]), the poster finds
//! the turn taken and leaves, the deliverer gives it up without looking, and a change is
//! never announced.

use std::sync::{Arc, Mutex as StdMutex};

use crate::announce::Announcer;
use crate::sync::thread;

use super::{MAX_PREEMPTIONS, explore, fails_with};

/// How a thread announces after posting.
type Deliver = fn(&Announcer<u32>, &mut dyn FnMut(u32));

/// As the runtime does: turns until nothing is left for this thread to announce.
fn until_done(announcer: &Announcer<u32>, announce: &mut dyn FnMut(u32)) {
    announcer.deliver(announce);
}

/// One turn, without looking again after giving it up.
fn one_turn(announcer: &Announcer<u32>, announce: &mut dyn FnMut(u32)) {
    announcer.take_turn(&mut |change| announce(change));
}

fn two_posters(deliver: Deliver) {
    let announcer = Arc::new(Announcer::new());
    // A plain mutex: the announcer's turn already orders the calls.
    let announced = Arc::new(StdMutex::new(Vec::new()));
    let posters: Vec<_> = (0..2)
        .map(|change| {
            let (announcer, announced) = (Arc::clone(&announcer), Arc::clone(&announced));
            thread::spawn(move || {
                announcer.post(change);
                deliver(&announcer, &mut |change| announced.lock().unwrap().push(change));
            })
        })
        .collect();
    for poster in posters {
        poster.join().unwrap();
    }
    let mut announced = announced.lock().unwrap().clone();
    announced.sort_unstable();
    assert_eq!(announced, [0, 1], "every change is announced exactly once");
}

fn delivered_until_done() {
    two_posters(until_done);
}

fn delivered_in_one_turn() {
    two_posters(one_turn);
}

#[test]
fn every_change_is_announced_once() {
    assert!(explore("announce", delivered_until_done) > 1);
}

#[test]
fn without_looking_again_a_change_is_never_announced() {
    let failure = fails_with("announce", MAX_PREEMPTIONS, delivered_in_one_turn);
    assert!(failure.contains("every change is announced exactly once"), "{failure}");
}
