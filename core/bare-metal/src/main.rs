//! backflow on a microcontroller: a 3-stage pipeline over static rings on a Cortex-M3
//! (the lm3s6965 board QEMU emulates), with no heap.
//!
//! sensor (4 readings per tick) → **filter** (drops outliers) → **aggregate** (averages of 16,
//! deliberately slow: one reading per tick) → sink. The slow stage fills the ring in front of
//! it, pressure turns on at its high mark, the filter holds back, the first ring fills and the
//! sensor waits: backpressure all the way to the source, and no reading is dropped.
//!
//! At the end the binary prints every stage's counts over semihosting, checks them against an
//! independent computation and the accounting identities, and exits 0 only if all hold.
#![no_std]
#![no_main]
// `deny`, not `forbid`: `cortex_m::singleton!` allows `unsafe` inside its own expansion. This
// file writes none.
#![deny(unsafe_code)]

use backflow_core::driver::{Discard, Sink, StageDriver, StageStats};
use backflow_core::ring::spsc::ArrayRing;
use backflow_core::{Overflow, WaterMarks, stage};
use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hprintln};
use panic_semihosting as _;

/// Readings the sensor produces in all.
const SAMPLES: u32 = 4096;
/// Readings per aggregate.
const BATCH: usize = 16;
/// Readings at or above this are outliers.
const LIMIT: u16 = 3900;
/// Readings per tick from the sensor.
const PER_TICK: usize = 4;
/// Readings the filter keeps, for this sensor: the expected count the run is checked against.
const EXPECTED_KEPT: u64 = 3891;

/// A simulated 12-bit sensor: a linear congruential generator, so every run is the same.
struct Sensor(u32);

impl Sensor {
    fn reading(&mut self) -> u16 {
        self.0 = self.0.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (self.0 >> 20) as u16
    }
}

fn average(batch: heapless::Vec<u16, BATCH>) -> u32 {
    let sum: u32 = batch.iter().map(|&r| u32::from(r)).sum();
    sum / batch.len() as u32
}

#[entry]
fn main() -> ! {
    let code = if run() { debug::EXIT_SUCCESS } else { debug::EXIT_FAILURE };
    debug::exit(code);
    // Only reached on hardware without a debugger attached.
    loop {
        cortex_m::asm::wfi();
    }
}

/// Runs the pipeline and checks the result.
fn run() -> bool {
    // Static rings, each handed out once as `&'static mut`.
    let readings = cortex_m::singleton!(: ArrayRing<u16, 32> = ArrayRing::new()).unwrap();
    let kept = cortex_m::singleton!(: ArrayRing<u16, 64> = ArrayRing::new()).unwrap();
    let (mut sensor_tx, mut filter_rx) = readings.split();

    let marks = |capacity| WaterMarks::for_capacity(capacity).unwrap();
    let mut filter = StageDriver::<_, u16, 1>::new(
        stage::filter(|r: &u16| *r < LIMIT),
        marks(64),
        Overflow::Block,
    );
    let mut aggregate = StageDriver::<_, u32, 1>::new(
        stage::batch::<u16, BATCH>() >> stage::map(average),
        marks(1),
        Overflow::Block,
    );

    let mut sensor = Sensor(1);
    let mut produced = 0;
    let mut waiting: Option<u16> = None;
    let mut sensor_waits = 0u32;
    let (mut sink_count, mut sink_sum) = (0u64, 0u64);
    let mut discarded = 0u32;
    let mut ticks = 0u32;

    loop {
        ticks += 1;
        // The "timer interrupt": a few readings per tick. A full ring makes the sensor wait
        // with its reading; nothing is dropped.
        for _ in 0..PER_TICK {
            let reading = match waiting.take() {
                Some(reading) => reading,
                None if produced < SAMPLES => {
                    produced += 1;
                    sensor.reading()
                }
                None => break,
            };
            if let Err(full) = sensor_tx.try_push(reading) {
                waiting = Some(full.into_inner());
                sensor_waits += 1;
                break;
            }
        }
        let mut on_discard = |_, _: Discard| discarded += 1;
        filter.poll(&mut filter_rx, kept, 8, &mut on_discard, &mut |never| match never {});
        let mut sink = Sink(|avg: u32| {
            sink_count += 1;
            sink_sum += u64::from(avg);
        });
        aggregate.poll(kept, &mut sink, 1, &mut |_, _| discarded += 1, &mut |never| match never {});

        let drained = produced == SAMPLES && waiting.is_none() && filter_rx.is_empty();
        if drained && kept.is_empty() && filter.held() == 0 && aggregate.held() == 0 {
            break;
        }
    }
    let mut sink = Sink(|avg: u32| {
        sink_count += 1;
        sink_sum += u64::from(avg);
    });
    let flushed = aggregate.flush(&mut sink, &mut |_, _| discarded += 1);

    // The same computation without the pipeline.
    let mut reference = Sensor(1);
    let (mut kept_count, mut batch_count, mut batch_sum) = (0u64, 0u64, 0u64);
    let mut batch = heapless::Vec::<u16, BATCH>::new();
    for _ in 0..SAMPLES {
        let reading = reference.reading();
        if reading < LIMIT {
            kept_count += 1;
            let _ = batch.push(reading);
            if batch.is_full() {
                batch_count += 1;
                batch_sum += u64::from(average(core::mem::take(&mut batch)));
            }
        }
    }
    if !batch.is_empty() {
        batch_count += 1;
        batch_sum += u64::from(average(batch));
    }

    hprintln!("backflow bare-metal pipeline: {} readings, {} ticks", SAMPLES, ticks);
    hprintln!("sensor: produced {}, waited on a full ring {} times", produced, sensor_waits);
    report("filter", &filter.stats());
    report("aggregate", &aggregate.stats());
    hprintln!("sink: {} averages, sum {}", sink_count, sink_sum);

    let f = filter.stats();
    let a = aggregate.stats();
    let checks = [
        ("flush succeeded", flushed.is_ok()),
        ("filter received every reading", f.received == u64::from(SAMPLES)),
        (
            "filter kept the expected count",
            f.emitted == EXPECTED_KEPT && kept_count == EXPECTED_KEPT,
        ),
        ("filter delivered all it kept", f.delivered == f.emitted),
        ("aggregate received all kept", a.received == f.delivered),
        ("sink got every average", sink_count == batch_count && a.delivered == batch_count),
        ("averages match the reference", sink_sum == batch_sum),
        ("accounting identities hold", accounted(&f) && accounted(&a)),
        ("backpressure engaged", f.pressure_transitions >= 2 && sensor_waits > 0),
        ("nothing discarded", discarded == 0),
    ];
    let mut ok = true;
    for (name, passed) in checks {
        hprintln!("  {} {}", if passed { "ok  " } else { "FAIL" }, name);
        ok &= passed;
    }
    hprintln!("{}", if ok { "all checks passed" } else { "CHECKS FAILED" });
    ok
}

/// `received = completed + failed` and every emitted item delivered or discarded (nothing
/// may be held once the pipeline has drained).
fn accounted(s: &StageStats) -> bool {
    s.received == s.completed + s.failed
        && s.emitted == s.delivered + s.dropped_newest + s.rejected + s.held_overflow
}

fn report(name: &str, s: &StageStats) {
    hprintln!(
        "{}: received {}, emitted {}, delivered {}, dropped {}, failed {}, pressure transitions {}",
        name,
        s.received,
        s.emitted,
        s.delivered,
        s.dropped_oldest + s.dropped_newest + s.rejected + s.held_overflow,
        s.failed,
        s.pressure_transitions
    );
}
