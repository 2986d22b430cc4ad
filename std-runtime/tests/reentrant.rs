//! An event handler may call back into its own pipeline: take its stats, push into it, look
//! at it from any event, on any thread. No event is announced while the runtime holds a lock
//! the handler's calls need, so none of this deadlocks, and every item is still counted.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};

use backflow::{Event, Input, Overflow, Pipeline, Watch};
use common::within_time;

/// What a handler reaches back into: its pipeline's watch and an input handle.
#[derive(Default)]
struct Back {
    watch: OnceLock<Watch>,
    input: Mutex<Option<Input<u64>>>,
}

#[test]
fn a_handler_that_takes_stats_on_every_event_does_not_deadlock() {
    let report = within_time(|| {
        let back = Arc::new(Back::default());
        let (gate, opened) = mpsc::channel::<()>();
        let opened = Mutex::new(opened);
        let handler = {
            let back = Arc::clone(&back);
            move |_: &Event<'_>| {
                if let Some(watch) = back.watch.get() {
                    let _ = watch.stats();
                }
            }
        };
        let pipeline = Pipeline::<u64>::builder()
            .on_event(handler)
            .stage("first", || |x: u64| x)
            .capacity(4)
            .overflow(Overflow::DropNewest)
            .sink(move |_| {
                let _ = opened.lock().unwrap().recv();
            })
            .build()
            .expect("valid");
        let _ = back.watch.set(pipeline.watch());
        let input = pipeline.input();
        for x in 0..100 {
            input.push(x).expect("open");
        }
        drop(gate);
        drop(input);
        pipeline.drain().expect("drains")
    });
    assert!(report.is_balanced(), "{report}");
    assert_eq!(report.stage("first").expect("a stage").accounting.received, 100);
}

#[test]
fn a_handler_that_pushes_when_pressure_turns_on_does_not_deadlock() {
    let (report, pushed) = within_time(|| {
        let back = Arc::new(Back::default());
        let (gate, opened) = mpsc::channel::<()>();
        let (opened, gate) = (Mutex::new(opened), Mutex::new(Some(gate)));
        let pushed = Arc::new(AtomicU64::new(0));
        let handler = {
            let (back, pushed) = (Arc::clone(&back), Arc::clone(&pushed));
            move |event: &Event<'_>| {
                if !matches!(event, Event::PressureOn { .. }) {
                    return;
                }
                // The sink was held until now: let it go, then push one more item, which
                // waits for room under `Block` like any other push.
                drop(gate.lock().unwrap().take());
                if let Some(input) = &*back.input.lock().unwrap() {
                    if input.push(1_000).is_ok() {
                        pushed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        };
        let pipeline = Pipeline::<u64>::builder()
            .on_event(handler)
            .stage("first", || |x: u64| x)
            .capacity(4)
            .sink(move |_| {
                let _ = opened.lock().unwrap().recv();
            })
            .build()
            .expect("valid");
        *back.input.lock().unwrap() = Some(pipeline.input());
        let input = pipeline.input();
        for x in 0..100 {
            input.push(x).expect("open");
        }
        drop(input);
        back.input.lock().unwrap().take();
        let pushed = pushed.load(Ordering::Relaxed);
        (pipeline.drain().expect("drains"), pushed)
    });
    assert!(report.is_balanced(), "{report}");
    assert!(pushed > 0, "pressure turned on and the handler pushed");
    assert_eq!(report.stage("first").expect("a stage").accounting.received, 100 + pushed);
    assert_eq!(report.sink().delivered, 100 + pushed);
}
