//! One producer thread, one consumer thread, [`CAPACITY`] slots, `u64` items.

use std::hint::spin_loop;
use std::time::Duration;

use backflow_core::ring::spsc::{ArrayRing, HeapRing};

use crate::{BATCH, CAPACITY, Contender, timed};

/// Every SPSC contender, backflow first. The report's baseline is `rtrb`.
pub const CONTENDERS: &[Contender] = &[
    Contender { name: "backflow spsc (HeapRing)", run: backflow_heap },
    Contender { name: "backflow spsc (ArrayRing<_, 1024>)", run: backflow_array },
    Contender { name: "backflow spsc push_iter/pop_each 256", run: backflow_batch },
    Contender { name: "backflow spsc push_slice/pop_slice 256", run: backflow_slices },
    Contender { name: "rtrb", run: rtrb_single },
    Contender { name: "rtrb chunks 256", run: rtrb_chunks },
    Contender { name: "heapless spsc (1023 usable)", run: heapless_spsc },
    Contender { name: "crossbeam ArrayQueue", run: array_queue },
    Contender { name: "crossbeam-channel bounded", run: crossbeam_channel },
    Contender { name: "std sync_channel", run: std_sync_channel },
];

/// Pushes `0..items` one at a time and pops them one at a time, spinning on full and empty.
fn spin_transfer<P, C>(items: u64, mut push: P, mut pop: C) -> Duration
where
    P: FnMut(u64) -> Result<(), u64> + Send,
    C: FnMut() -> Option<u64> + Send,
{
    let producer = move || {
        for i in 0..items {
            let mut item = i;
            while let Err(back) = push(item) {
                item = back;
                spin_loop();
            }
        }
    };
    let consumer = move || {
        let mut sum = 0;
        let mut received = 0;
        while received < items {
            match pop() {
                Some(item) => {
                    sum += item;
                    received += 1;
                }
                None => spin_loop(),
            }
        }
        sum
    };
    timed(items, vec![producer], vec![consumer])
}

/// Sends `0..items` and receives them with a channel's blocking calls.
fn blocking_transfer<S, R>(items: u64, mut send: S, mut recv: R) -> Duration
where
    S: FnMut(u64) + Send,
    R: FnMut() -> u64 + Send,
{
    timed(
        items,
        vec![move || (0..items).for_each(&mut send)],
        vec![move || (0..items).map(|_| recv()).sum()],
    )
}

/// backflow's SPSC ring with heap slots and a run-time capacity (like rtrb).
pub fn backflow_heap(items: u64) -> Duration {
    let (mut tx, mut rx) = HeapRing::with_capacity(CAPACITY).unwrap().into_split();
    spin_transfer(
        items,
        move |x| tx.try_push(x).map_err(|e| e.into_inner()),
        move || rx.try_pop().ok(),
    )
}

/// backflow's SPSC ring with its capacity fixed at compile time.
pub fn backflow_array(items: u64) -> Duration {
    let (mut tx, mut rx) = ArrayRing::<u64, CAPACITY>::new().into_split();
    spin_transfer(
        items,
        move |x| tx.try_push(x).map_err(|e| e.into_inner()),
        move || rx.try_pop().ok(),
    )
}

/// backflow's SPSC ring moving up to [`BATCH`] items per call, straight from an iterator into
/// the slots and from the slots into a closure (`push_iter` / `pop_each`).
pub fn backflow_batch(items: u64) -> Duration {
    let (mut tx, mut rx) = HeapRing::<u64>::with_capacity(CAPACITY).unwrap().into_split();
    let producer = move || {
        let mut next = 0;
        while next < items {
            let end = items.min(next + BATCH as u64);
            let pushed = tx.push_iter(&mut (next..end));
            if pushed == 0 {
                spin_loop();
            }
            next += pushed as u64;
        }
    };
    let consumer = move || {
        let mut sum = 0;
        let mut received = 0;
        while received < items {
            let n = rx.pop_each(BATCH, |x| sum += x);
            if n == 0 {
                spin_loop();
            }
            received += n as u64;
        }
        sum
    };
    timed(items, vec![producer], vec![consumer])
}

/// backflow's SPSC ring copying up to [`BATCH`] items per call from and to a buffer
/// (`push_slice` / `pop_slice`, for `Copy` items).
pub fn backflow_slices(items: u64) -> Duration {
    let (mut tx, mut rx) = HeapRing::<u64>::with_capacity(CAPACITY).unwrap().into_split();
    let producer = move || {
        let mut batch = [0u64; BATCH];
        let mut next = 0;
        while next < items {
            let len = (items - next).min(BATCH as u64) as usize;
            for (offset, slot) in batch[..len].iter_mut().enumerate() {
                *slot = next + offset as u64;
            }
            let mut sent = 0;
            while sent < len {
                let n = tx.push_slice(&batch[sent..len]);
                if n == 0 {
                    spin_loop();
                }
                sent += n;
            }
            next += len as u64;
        }
    };
    let consumer = move || {
        let mut batch = [0u64; BATCH];
        let mut sum = 0;
        let mut received = 0;
        while received < items {
            let n = rx.pop_slice(&mut batch);
            if n == 0 {
                spin_loop();
            }
            sum += batch[..n].iter().sum::<u64>();
            received += n as u64;
        }
        sum
    };
    timed(items, vec![producer], vec![consumer])
}

/// rtrb, one item per call.
pub fn rtrb_single(items: u64) -> Duration {
    let (mut tx, mut rx) = rtrb::RingBuffer::new(CAPACITY);
    spin_transfer(
        items,
        move |x| tx.push(x).map_err(|rtrb::PushError::Full(x)| x),
        move || rx.pop().ok(),
    )
}

/// rtrb's chunk API, up to [`BATCH`] items per chunk.
pub fn rtrb_chunks(items: u64) -> Duration {
    let (mut tx, mut rx) = rtrb::RingBuffer::<u64>::new(CAPACITY);
    let producer = move || {
        let mut next = 0;
        while next < items {
            let want = (items - next).min(BATCH as u64) as usize;
            let len = want.min(tx.slots());
            if len == 0 {
                spin_loop();
                continue;
            }
            let chunk = tx.write_chunk_uninit(len).unwrap();
            let written = chunk.fill_from_iter(next..next + len as u64);
            next += written as u64;
        }
    };
    let consumer = move || {
        let mut sum = 0;
        let mut received = 0;
        while received < items {
            let len = rx.slots().min(BATCH);
            if len == 0 {
                spin_loop();
                continue;
            }
            let chunk = rx.read_chunk(len).unwrap();
            let (a, b) = chunk.as_slices();
            sum += a.iter().sum::<u64>() + b.iter().sum::<u64>();
            chunk.commit_all();
            received += len as u64;
        }
        sum
    };
    timed(items, vec![producer], vec![consumer])
}

/// heapless' SPSC queue (`N = 1024` holds 1023 items).
pub fn heapless_spsc(items: u64) -> Duration {
    let mut queue = Box::new(heapless::spsc::Queue::<u64, CAPACITY>::new());
    let (mut tx, mut rx) = queue.split();
    spin_transfer(items, move |x| tx.enqueue(x), move || rx.dequeue())
}

/// crossbeam's `ArrayQueue` used as an SPSC queue.
pub fn array_queue(items: u64) -> Duration {
    let queue = crossbeam_queue::ArrayQueue::new(CAPACITY);
    spin_transfer(items, |x| queue.push(x), || queue.pop())
}

/// crossbeam-channel `bounded`, blocking `send` / `recv`.
pub fn crossbeam_channel(items: u64) -> Duration {
    let (tx, rx) = crossbeam_channel::bounded(CAPACITY);
    blocking_transfer(items, move |x| tx.send(x).unwrap(), move || rx.recv().unwrap())
}

/// std `sync_channel`, blocking `send` / `recv`.
pub fn std_sync_channel(items: u64) -> Duration {
    let (tx, rx) = std::sync::mpsc::sync_channel(CAPACITY);
    blocking_transfer(items, move |x| tx.send(x).unwrap(), move || rx.recv().unwrap())
}
