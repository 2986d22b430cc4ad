//! The async ends of a pipeline (feature `async`): `Input::send` and `wait_for_room_async`
//! wait as tasks, `Output` is a `Stream`; on tokio's current-thread and multi-thread runtimes.
#![cfg(feature = "async")]

mod common;

use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use backflow::{Overflow, Pipeline, PushError};
use common::{Flag, Gate, held_sink, within_time};
use futures::StreamExt;

/// A waker that reports each wake-up on a channel.
struct Reporter(Mutex<mpsc::Sender<()>>);

impl Wake for Reporter {
    fn wake(self: Arc<Self>) {
        let _ = self.0.lock().unwrap().send(());
    }
}

fn reporting_waker() -> (Waker, mpsc::Receiver<()>) {
    let (tx, rx) = mpsc::channel();
    (Waker::from(Arc::new(Reporter(Mutex::new(tx)))), rx)
}

/// Long enough never to matter on a loaded machine; only a lost wake-up reaches it.
const GUARD: Duration = Duration::from_secs(60);

/// An item that counts its drops.
struct Counted(u32, Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.1.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn send_waits_as_a_pending_task_under_a_held_sink_and_resumes_with_nothing_dropped() {
    let (gate, entered, delivered) = (Gate::default(), Flag::default(), Arc::default());
    let pipeline = Pipeline::<u32>::builder()
        .stage("id", || |x: u32| x)
        .capacity(4)
        .overflow(Overflow::Block)
        .sink(held_sink(&gate, &entered, &delivered))
        .build()
        .unwrap();
    let _opens = gate.opened_on_drop();
    let mut input = pipeline.input();
    let (waker, woken) = reporting_waker();
    let mut cx = Context::from_waker(&waker);
    // The first item holds the stage's worker in the sink: nothing leaves the queue from now.
    input.push(0).unwrap();
    entered.wait();
    // Send until a send has to wait: the queue fills up. The poll returns `Pending` on this
    // very thread: the task waits, no thread is blocked.
    let mut sent = 1u32;
    let pending_at = loop {
        assert!(sent < 10_000, "every send went through although the sink is held");
        let mut sending = pin!(input.send(sent));
        match sending.as_mut().poll(&mut cx) {
            Poll::Ready(result) => {
                result.unwrap();
                sent += 1;
            }
            Poll::Pending => {
                assert!(woken.try_recv().is_err(), "woken before any room was made");
                gate.open();
                // The room made downstream wakes the task, which then completes.
                woken.recv_timeout(GUARD).expect("the waiting task was never woken");
                let mut polled = sending.as_mut().poll(&mut cx);
                while polled.is_pending() {
                    woken.recv_timeout(GUARD).expect("the waiting task was never woken again");
                    polled = sending.as_mut().poll(&mut cx);
                }
                match polled {
                    Poll::Ready(result) => result.unwrap(),
                    Poll::Pending => unreachable!(),
                }
                break sent;
            }
        }
    };
    assert!(pending_at >= 4, "waited with room in the queue ({pending_at} sent)");
    for x in pending_at + 1..pending_at + 100 {
        futures::executor::block_on(input.send(x)).unwrap();
    }
    let report = pipeline.drain().unwrap();
    let id = &report.stage("id").unwrap().accounting;
    assert_eq!((id.received, id.dropped, id.abandoned), (u64::from(pending_at) + 100, 0, 0));
    let delivered = delivered.lock().unwrap();
    assert_eq!(*delivered, (0..pending_at + 100).collect::<Vec<_>>());
    assert!(report.is_balanced());
}

#[test]
fn a_send_future_dropped_while_waiting_keeps_its_item_out_of_the_books() {
    let (gate, entered, delivered) = (Gate::default(), Flag::default(), Arc::default());
    let drops = Arc::new(AtomicUsize::new(0));
    let pipeline = Pipeline::<Counted>::builder()
        .stage("id", || |x: Counted| x.0)
        .capacity(2)
        .sink(held_sink(&gate, &entered, &delivered))
        .build()
        .unwrap();
    let _opens = gate.opened_on_drop();
    let mut input = pipeline.input();
    let mut cx = Context::from_waker(Waker::noop());
    // The first item holds the stage's worker in the sink (the stage has dropped its
    // `Counted`): nothing leaves the queue from now.
    futures::executor::block_on(input.send(Counted(0, Arc::clone(&drops)))).unwrap();
    entered.wait();
    let mut sent = 1;
    loop {
        let mut sending = pin!(input.send(Counted(sent, Arc::clone(&drops))));
        if sending.as_mut().poll(&mut cx).is_pending() {
            break;
        }
        sent += 1;
    }
    // The future that waited, and its item with it, is gone; the items sent wait in the queue.
    assert_eq!(drops.load(Ordering::SeqCst), 2);
    gate.open();
    let report = pipeline.drain().unwrap();
    assert_eq!(report.stage("id").unwrap().accounting.received, u64::from(sent));
    assert_eq!(report.sink().delivered, u64::from(sent));
    assert_eq!(*delivered.lock().unwrap(), (0..sent).collect::<Vec<_>>());
    assert_eq!(drops.load(Ordering::SeqCst), 1 + sent as usize);
    assert!(report.is_balanced());
}

#[test]
fn a_waiting_send_gives_its_item_back_on_cancel_and_after_drain() {
    let (gate, entered, delivered) = (Gate::default(), Flag::default(), Arc::default());
    let pipeline = Pipeline::<u32>::builder()
        .stage("id", || |x: u32| x)
        .capacity(2)
        .sink(held_sink(&gate, &entered, &delivered))
        .build()
        .unwrap();
    let _opens = gate.opened_on_drop();
    let mut input = pipeline.input();
    let (waker, woken) = reporting_waker();
    let mut cx = Context::from_waker(&waker);
    // The first item holds the stage's worker in the sink: nothing leaves the queue from now.
    input.push(0).unwrap();
    entered.wait();
    let mut x = 1;
    let mut sending = loop {
        let mut sending = Box::pin(input.send(x));
        if sending.as_mut().poll(&mut cx).is_pending() {
            break sending;
        }
        x += 1;
    };
    pipeline.cancel();
    woken.recv_timeout(GUARD).expect("the cancel did not wake the waiting task");
    assert!(
        matches!(sending.as_mut().poll(&mut cx), Poll::Ready(Err(PushError::Cancelled(item))) if item == x)
    );
    drop(sending);
    gate.open();
    assert!(pipeline.drain().is_err());
    let closed = futures::executor::block_on(input.send(99));
    assert!(matches!(closed, Err(PushError::Cancelled(99))));

    let pipeline =
        Pipeline::<u32>::builder().stage("id", || |x: u32| x).sink(|_| {}).build().unwrap();
    let mut input = pipeline.input();
    pipeline.drain().unwrap();
    let closed = futures::executor::block_on(input.send(5));
    assert!(matches!(closed, Err(PushError::Closed(5))));
}

#[test]
fn send_under_fail_gives_a_full_queue_back_at_once() {
    let (gate, entered, delivered) = (Gate::default(), Flag::default(), Arc::default());
    let pipeline = Pipeline::<u32>::builder()
        .stage("id", || |x: u32| x)
        .capacity(2)
        .overflow(Overflow::Fail)
        .sink(held_sink(&gate, &entered, &delivered))
        .build()
        .unwrap();
    let _opens = gate.opened_on_drop();
    let mut input = pipeline.input();
    // The first item holds the stage's worker in the sink: nothing leaves the queue from now.
    input.push(0).unwrap();
    entered.wait();
    let full = (1..10_000).find_map(|x| match futures::executor::block_on(input.send(x)) {
        Ok(()) => None,
        Err(PushError::Full(item)) => Some(item),
        Err(other) => panic!("{other}"),
    });
    assert!(full.is_some());
    gate.open();
    let report = pipeline.drain().unwrap();
    assert!(report.is_balanced());
}

#[test]
fn wait_for_room_async_waits_for_the_low_mark_and_says_how_much_room() {
    let (gate, entered, delivered) = (Gate::default(), Flag::default(), Arc::default());
    let pipeline = Pipeline::<u32>::builder()
        .stage("id", || |x: u32| x)
        .capacity(8)
        .sink(held_sink(&gate, &entered, &delivered))
        .build()
        .unwrap();
    let _opens = gate.opened_on_drop();
    let input = pipeline.input();
    let (waker, woken) = reporting_waker();
    let mut cx = Context::from_waker(&waker);
    // The first item holds the stage's worker in the sink: nothing leaves the queue from now,
    // so the queue stays full until the gate opens.
    input.try_push(0).unwrap();
    entered.wait();
    let mut x = 1;
    while input.try_push(x).is_ok() {
        x += 1;
    }
    let mut room = pin!(input.wait_for_room_async());
    assert!(room.as_mut().poll(&mut cx).is_pending());
    gate.open();
    let room = loop {
        woken.recv_timeout(GUARD).expect("the waiting task was never woken");
        if let Poll::Ready(room) = room.as_mut().poll(&mut cx) {
            break room;
        }
    };
    assert!(room > 0 && room <= 8, "room {room}");
    pipeline.drain().unwrap();
    assert_eq!(futures::executor::block_on(input.wait_for_room_async()), 0);
}

/// A producer task sends through a pipeline while the consumer reads its output as a stream
/// inside `tokio::select!`, next to a ticking timer; the drain runs on the blocking pool.
async fn send_and_select(items: u32) {
    let (pipeline, mut output) = Pipeline::<u32>::builder()
        .stage("double", || |x: u32| u64::from(x) * 2)
        .capacity(16)
        .output()
        .build()
        .unwrap();
    let mut input = pipeline.input();
    // The drain closes the input: it starts once every item is in.
    let producer = tokio::spawn(async move {
        for x in 0..items {
            input.send(x).await.unwrap();
        }
        tokio::task::spawn_blocking(move || pipeline.drain()).await.unwrap()
    });
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    let mut got = Vec::new();
    let mut ended = false;
    while !ended {
        tokio::select! {
            item = StreamExt::next(&mut output) => match item {
                Some(x) => got.push(x),
                None => ended = true,
            },
            _ = ticker.tick() => {}
        }
    }
    let report = producer.await.unwrap().unwrap();
    assert_eq!(got, (0..u64::from(items)).map(|x| x * 2).collect::<Vec<_>>());
    // The report is taken when the last stage is done: the stream may not have read the
    // last outputs yet (they are the sink's in-flight items then).
    assert_eq!(report.sink().received, u64::from(items));
    assert!(report.sink().delivered <= u64::from(items));
    assert!(report.is_balanced());
}

#[tokio::test(flavor = "current_thread")]
async fn output_as_a_stream_in_select_on_a_current_thread_runtime() {
    send_and_select(5_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_as_a_stream_in_select_on_a_multi_thread_runtime() {
    send_and_select(5_000).await;
}

#[tokio::test(flavor = "current_thread")]
async fn recv_reads_until_the_end() {
    let (pipeline, mut output) =
        Pipeline::<u8>::builder().stage("id", || |x: u8| x).output().build().unwrap();
    let mut input = pipeline.input();
    for x in 0..3 {
        input.send(x).await.unwrap();
    }
    drop(input);
    let drained = tokio::task::spawn_blocking(move || pipeline.drain());
    let mut got = Vec::new();
    while let Some(x) = output.recv().await {
        got.push(x);
    }
    assert_eq!(got, [0, 1, 2]);
    assert!(drained.await.unwrap().unwrap().is_balanced());
}

#[test]
fn a_send_whose_item_does_not_fit_the_byte_budget_waits_as_a_task() {
    let (gate, entered, delivered) = (Gate::default(), Flag::default(), Arc::default());
    let pipeline = Pipeline::<Vec<u8>>::builder()
        .stage("len", || |x: Vec<u8>| x.len())
        .capacity_bytes(1000, Vec::len)
        .sink(held_sink(&gate, &entered, &delivered))
        .build()
        .unwrap();
    let report = within_time(move || {
        let _opens = gate.opened_on_drop();
        let mut input = pipeline.input();
        // The first item holds the stage's worker in the sink; 500 bytes wait in the queue,
        // below the high mark: pressure is off, and 600 more bytes do not fit.
        input.push(vec![0]).unwrap();
        entered.wait();
        input.push(vec![0; 500]).unwrap();
        let (waker, woken) = reporting_waker();
        let mut cx = Context::from_waker(&waker);
        let mut sending = pin!(input.send(vec![0; 600]));
        assert!(sending.as_mut().poll(&mut cx).is_pending());
        gate.open();
        loop {
            woken.recv_timeout(GUARD).expect("the waiting task was never woken");
            if let Poll::Ready(result) = sending.as_mut().poll(&mut cx) {
                break result.unwrap();
            }
        }
        pipeline.drain().unwrap()
    });
    assert_eq!(report.sink().delivered, 3, "{report}");
    assert_eq!(*delivered.lock().unwrap(), [1, 500, 600]);
}

/// A waker that opens `gate` (if given) and then panics when woken.
struct Panics(Option<Gate>);

impl Wake for Panics {
    fn wake(self: Arc<Self>) {
        if let Some(gate) = &self.0 {
            gate.open();
        }
        panic!("the waker panics");
    }
}

/// A pipeline whose sink holds its first item until `gate` opens, filled until a send waits:
/// returns it, with how many items went in.
fn held_and_full(gate: &Gate) -> (Pipeline<u32>, u32) {
    let (entered, delivered) = (Flag::default(), Arc::default());
    let pipeline = Pipeline::<u32>::builder()
        .stage("id", || |x: u32| x)
        .capacity(4)
        .sink(held_sink(gate, &entered, &delivered))
        .build()
        .unwrap();
    let input = pipeline.input();
    input.push(0).unwrap();
    entered.wait();
    let mut pushed = 1;
    while input.try_push(pushed).is_ok() {
        pushed += 1;
    }
    (pipeline, pushed)
}

/// A waker is the user's code: one that panics when the room it waits for comes is treated as
/// woken; the tasks waiting beside it are woken all the same, and every item is counted.
#[test]
fn a_waker_that_panics_loses_no_other_wake_up_and_no_item() {
    let gate = Gate::default();
    let (pipeline, pushed) = held_and_full(&gate);
    let _opens = gate.opened_on_drop();
    let (mut a, mut b) = (pipeline.input(), pipeline.input());
    let (mut first, mut second) = (pin!(a.send(1000)), pin!(b.send(1001)));
    let panics = Waker::from(Arc::new(Panics(None)));
    let (waker, woken) = reporting_waker();
    assert!(first.as_mut().poll(&mut Context::from_waker(&panics)).is_pending());
    assert!(second.as_mut().poll(&mut Context::from_waker(&waker)).is_pending());
    gate.open();
    woken.recv_timeout(GUARD).expect("the task beside the panicking waker was never woken");
    let mut cx = Context::from_waker(&waker);
    while second.as_mut().poll(&mut cx).is_pending() {
        woken.recv_timeout(GUARD).expect("woken again");
    }
    let mut cx = Context::from_waker(Waker::noop());
    let first_sent = loop {
        match first.as_mut().poll(&mut cx) {
            Poll::Ready(result) => break result.is_ok(),
            Poll::Pending => std::thread::yield_now(),
        }
    };
    assert!(first_sent);
    let report = pipeline.drain().unwrap();
    assert!(report.is_balanced(), "{report:?}");
    assert_eq!(report.sink().delivered, u64::from(pushed) + 2);
}

/// `drain` and `cancel` wake the waiting tasks on the caller's thread: a waker that panics
/// there does not take the call down with it.
#[test]
fn drain_and_cancel_end_with_a_result_though_a_waker_panics() {
    for cancel in [false, true] {
        let gate = Gate::default();
        let (pipeline, _) = held_and_full(&gate);
        let _opens = gate.opened_on_drop();
        let mut input = pipeline.input();
        let mut sending = pin!(input.send(1000));
        // Opens the sink as it panics: only the call that wakes it lets the pipeline go on.
        let panics = Waker::from(Arc::new(Panics(Some(gate.clone()))));
        assert!(sending.as_mut().poll(&mut Context::from_waker(&panics)).is_pending());
        if cancel {
            pipeline.cancel();
            assert!(gate.is_open(), "cancel woke the waiting task");
        }
        let result = pipeline.drain();
        assert!(gate.is_open(), "drain woke the waiting task");
        let report = match &result {
            Ok(report) => report,
            Err(error) => error.report(),
        };
        assert!(report.is_balanced(), "cancel {cancel}: {result:?}");
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(sending.as_mut().poll(&mut cx), Poll::Ready(Err(_))));
    }
}
