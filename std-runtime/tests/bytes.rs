//! Queues bounded in bytes (`capacity_bytes`): each overflow policy acting on the weight, an
//! item heavier than the whole budget, the water marks on the weight, a panicking weigh
//! function, and the count of weight back at zero at the end of every run. The stalls are
//! deterministic: a sink held at a gate keeps the first item, then the test pushes and checks
//! exactly what happened.

mod common;

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::thread;

use backflow::{ConfigError, DropReason, Overflow, Pipeline, PipelineError, PushError, Report};
use common::{Flag, Gate};

/// An item that weighs what it says (no memory: these tests are about the counting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Item {
    id: u32,
    weight: usize,
}

fn item(id: u32, weight: usize) -> Item {
    Item { id, weight }
}

fn ids(items: &[Item]) -> Vec<u32> {
    items.iter().map(|i| i.id).collect()
}

const BUDGET: usize = 100;

/// Every stage balanced and settled, and every queue's weight back at zero.
fn assert_settled(report: &Report, pushed: u64) {
    assert!(report.is_balanced(), "unbalanced report:\n{report}");
    assert_eq!(report.stages()[0].accounting.received, pushed);
    for stage in report.stages() {
        assert_eq!(stage.accounting.in_flight, 0, "{}", stage.name);
        assert_eq!(stage.queue_bytes, 0, "{}: weight left in its queue", stage.name);
    }
}

/// What a stalled run recorded.
#[derive(Default)]
struct Seen {
    dropped: Arc<Mutex<Vec<(u32, DropReason)>>>,
    delivered: Arc<Mutex<Vec<Item>>>,
}

impl Seen {
    fn dropped(&self) -> Vec<(u32, DropReason)> {
        self.dropped.lock().unwrap().clone()
    }

    fn delivered(&self) -> Vec<u32> {
        ids(&self.delivered.lock().unwrap())
    }
}

/// A 1-stage pipeline with a byte budget of [`BUDGET`] (and room for 8 items) whose sink
/// holds the first item at `gate`.
fn stalled(
    overflow: Overflow,
    high_low: (u8, u8),
    gate: &Gate,
    entered: &Flag,
    seen: &Seen,
) -> Pipeline<Item> {
    let dropped = Arc::clone(&seen.dropped);
    Pipeline::<Item>::builder()
        .stage("pass", || |x: Item| x)
        .capacity(8)
        .capacity_bytes(BUDGET, |item: &Item| item.weight)
        .water_marks(high_low.0, high_low.1)
        .overflow(overflow)
        .on_drop(move |d| dropped.lock().unwrap().push((d.item.id, d.reason)))
        .sink(common::held_sink(gate, entered, &seen.delivered))
        .build()
        .unwrap()
}

/// The stats of the stage `pass`.
fn pass(pipeline: &Pipeline<Item>) -> backflow::StageStats {
    pipeline.stats().stage("pass").cloned().unwrap()
}

/// Pushes item 0 and waits until the sink holds it: from then on the queue only fills.
fn hold_first(pipeline: &Pipeline<Item>, entered: &Flag) {
    pipeline.input().push(item(0, 10)).unwrap();
    entered.wait();
}

#[test]
fn drop_newest_drops_what_does_not_fit_by_weight() {
    let (gate, entered, seen) = (Gate::default(), Flag::default(), Seen::default());
    let pipeline = stalled(Overflow::DropNewest, (100, 50), &gate, &entered, &seen);
    hold_first(&pipeline, &entered);
    let input = pipeline.input();
    for (id, weight) in [(1, 30), (2, 30), (3, 30), (4, 30), (5, 10), (6, 11), (7, 0)] {
        input.try_push(item(id, weight)).unwrap();
    }
    // 1, 2, 3 make 90 of 100; 4 (30) and 6 (11) do not fit, 5 (10) and 7 (0) do.
    let stats = pass(&pipeline);
    assert_eq!(
        (stats.queue_len, stats.queue_bytes, stats.queue_capacity_bytes),
        (5, 100, Some(100))
    );
    gate.open();
    let report = pipeline.drain().unwrap();
    assert_eq!(seen.dropped(), [(4, DropReason::Newest), (6, DropReason::Newest)]);
    assert_eq!(seen.delivered(), [0, 1, 2, 3, 5, 7]);
    assert_eq!(report.stage("pass").unwrap().dropped_newest, 2);
    assert_settled(&report, 8);
}

#[test]
fn drop_oldest_evicts_until_the_new_item_fits() {
    let (gate, entered, seen) = (Gate::default(), Flag::default(), Seen::default());
    let pipeline = stalled(Overflow::DropOldest, (100, 50), &gate, &entered, &seen);
    hold_first(&pipeline, &entered);
    let input = pipeline.input();
    for (id, weight) in [(1, 30), (2, 30), (3, 30)] {
        input.try_push(item(id, weight)).unwrap();
    }
    // 70 more: 1 and 2 go (90 → 30), then 3 and 4 make 100.
    input.try_push(item(4, 70)).unwrap();
    assert_eq!(seen.dropped(), [(1, DropReason::Oldest), (2, DropReason::Oldest)]);
    assert_eq!((pass(&pipeline).queue_len, pass(&pipeline).queue_bytes), (2, 100));
    // Heavier than the whole budget: everything goes, and it is admitted alone.
    input.try_push(item(5, 250)).unwrap();
    assert_eq!((pass(&pipeline).queue_len, pass(&pipeline).queue_bytes), (1, 250));
    // Nothing joins it: the next item evicts it.
    input.try_push(item(6, 1)).unwrap();
    assert_eq!((pass(&pipeline).queue_len, pass(&pipeline).queue_bytes), (1, 1));
    gate.open();
    let report = pipeline.drain().unwrap();
    let oldest = |ids: &[u32]| ids.iter().map(|&id| (id, DropReason::Oldest)).collect::<Vec<_>>();
    assert_eq!(seen.dropped(), oldest(&[1, 2, 3, 4, 5]));
    assert_eq!(seen.delivered(), [0, 6]);
    assert_eq!(report.stage("pass").unwrap().dropped_oldest, 5);
    assert_settled(&report, 7);
}

#[test]
fn drop_oldest_by_count_releases_the_evicted_weight() {
    // Light items: the ring (8 slots) fills before the budget; each push past it evicts one.
    let (gate, entered, seen) = (Gate::default(), Flag::default(), Seen::default());
    let pipeline = stalled(Overflow::DropOldest, (100, 50), &gate, &entered, &seen);
    hold_first(&pipeline, &entered);
    let input = pipeline.input();
    for id in 1..=12 {
        input.try_push(item(id, usize::try_from(id).unwrap())).unwrap();
    }
    // 5..=12 are queued: 5 + 6 + … + 12 = 68.
    assert_eq!((pass(&pipeline).queue_len, pass(&pipeline).queue_bytes), (8, 68));
    gate.open();
    let report = pipeline.drain().unwrap();
    let evicted: Vec<_> = (1..=4).map(|id| (id, DropReason::Oldest)).collect();
    assert_eq!(seen.dropped(), evicted);
    assert_eq!(seen.delivered(), [0, 5, 6, 7, 8, 9, 10, 11, 12]);
    assert_settled(&report, 13);
}

#[test]
fn fail_hands_back_what_does_not_fit_by_weight() {
    let (gate, entered, seen) = (Gate::default(), Flag::default(), Seen::default());
    let pipeline = stalled(Overflow::Fail, (100, 50), &gate, &entered, &seen);
    hold_first(&pipeline, &entered);
    let input = pipeline.input();
    let refused: Vec<Item> = [(1, 60), (2, 50), (3, 40), (4, 1)]
        .into_iter()
        .filter_map(|(id, weight)| match input.push(item(id, weight)) {
            Ok(()) => None,
            Err(PushError::Full(item)) => Some(item),
            Err(other) => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(refused, [item(2, 50), item(4, 1)]);
    gate.open();
    let report = pipeline.drain().unwrap();
    assert!(seen.dropped().is_empty());
    assert_eq!(seen.delivered(), [0, 1, 3]);
    assert_settled(&report, 3);
}

#[test]
fn block_turns_pressure_on_at_the_high_mark_of_the_weight() {
    let (gate, entered, seen) = (Gate::default(), Flag::default(), Seen::default());
    // Default marks: on at 80 of the 100, off at 40.
    let pipeline = stalled(Overflow::Block, (80, 40), &gate, &entered, &seen);
    hold_first(&pipeline, &entered);
    let input = pipeline.input();
    let pushed: Vec<u32> = (1..=5).filter(|&id| input.try_push(item(id, 30)).is_ok()).collect();
    // 3 items (90) are past the high mark: pressure is on, though 5 of 8 slots are free.
    assert_eq!(pushed, [1, 2, 3]);
    let stats = pass(&pipeline);
    assert!(stats.pressure_on);
    assert_eq!((stats.queue_len, stats.queue_bytes, stats.pressure_transitions), (3, 90, 1));
    assert_eq!(input.room(), 0);

    // A blocking producer waits, and resumes once the sink moves: nothing is dropped.
    let producer = blocked_producer(&pipeline, vec![item(4, 30), item(5, 30)]);
    common::eventually("the producer sleeps on the heavy queue", || {
        common::threads("blocked-push").iter().any(|&(_, state)| state == 'S')
    });
    assert_eq!(pass(&pipeline).queue_bytes, 90, "nothing got past the high mark");
    gate.open();
    producer.join().unwrap().unwrap();
    let report = pipeline.drain().unwrap();
    assert!(seen.dropped().is_empty());
    assert_eq!(seen.delivered(), [0, 1, 2, 3, 4, 5]);
    assert_settled(&report, 6);
}

#[test]
fn block_waits_for_enough_weight_to_leave_with_pressure_off() {
    let (gate, entered, seen) = (Gate::default(), Flag::default(), Seen::default());
    // The high mark at the whole budget: pressure stays off below it, and the wait is for
    // the weight alone.
    let pipeline = stalled(Overflow::Block, (100, 50), &gate, &entered, &seen);
    hold_first(&pipeline, &entered);
    let input = pipeline.input();
    input.try_push(item(1, 60)).unwrap();
    assert_eq!(input.try_push(item(2, 50)), Err(PushError::Full(item(2, 50))));
    let timeout = std::time::Duration::from_millis(20);
    assert_eq!(input.push_timeout(item(2, 50), timeout), Err(PushError::Timeout(item(2, 50))));
    assert!(!pass(&pipeline).pressure_on);
    let producer = blocked_producer(&pipeline, vec![item(2, 50), item(3, 50)]);
    common::eventually("the producer sleeps until the item fits", || {
        common::threads("blocked-push").iter().any(|&(_, state)| state == 'S')
    });
    assert_eq!((pass(&pipeline).queue_len, pass(&pipeline).queue_bytes), (1, 60));
    gate.open();
    producer.join().unwrap().unwrap();
    let report = pipeline.drain().unwrap();
    assert_eq!(seen.delivered(), [0, 1, 2, 3]);
    assert_settled(&report, 4);
}

#[test]
fn block_admits_an_item_heavier_than_the_budget_alone() {
    let (gate, entered, seen) = (Gate::default(), Flag::default(), Seen::default());
    let pipeline = stalled(Overflow::Block, (100, 50), &gate, &entered, &seen);
    hold_first(&pipeline, &entered);
    let input = pipeline.input();
    input.try_push(item(1, 5)).unwrap();
    // 1 000 does not fit beside 5; once the queue is empty it goes in, and the next item
    // waits for it to leave.
    let producer = blocked_producer(&pipeline, vec![item(2, 1_000), item(3, 5)]);
    common::eventually("the producer sleeps until the queue is empty", || {
        common::threads("blocked-push").iter().any(|&(_, state)| state == 'S')
    });
    assert_eq!((pass(&pipeline).queue_len, pass(&pipeline).queue_bytes), (1, 5));
    gate.open();
    producer.join().unwrap().unwrap();
    let report = pipeline.drain().unwrap();
    assert_eq!(seen.delivered(), [0, 1, 2, 3]);
    assert_settled(&report, 4);
}

/// Starts a thread named `blocked-push` that pushes `items` one by one, blocking.
fn blocked_producer(
    pipeline: &Pipeline<Item>,
    items: Vec<Item>,
) -> thread::JoinHandle<Result<(), PushError<Item>>> {
    let input = pipeline.input();
    thread::Builder::new()
        .name("blocked-push".into())
        .spawn(move || items.into_iter().try_for_each(|x| input.push(x)))
        .unwrap()
}

#[test]
fn the_stats_table_shows_the_weight_beside_the_fill() {
    let (gate, entered, seen) = (Gate::default(), Flag::default(), Seen::default());
    let pipeline = stalled(Overflow::Block, (80, 40), &gate, &entered, &seen);
    hold_first(&pipeline, &entered);
    pipeline.input().try_push(item(1, 30)).unwrap();
    let table = pipeline.stats().to_string();
    assert!(table.contains(" 1/8 30B/100B "), "{table}");
    gate.open();
    assert_settled(&pipeline.drain().unwrap(), 2);
}

#[test]
fn prometheus_exposes_the_weight_of_budgeted_queues_only() {
    let (gate, entered, seen) = (Gate::default(), Flag::default(), Seen::default());
    let delivered = Arc::clone(&seen.delivered);
    let pipeline = Pipeline::<Item>::builder()
        .stage("plain", || |x: Item| x)
        .stage("pass", || |x: Item| x)
        .capacity_bytes(BUDGET, |item: &Item| item.weight)
        .sink(common::held_sink(&gate, &entered, &delivered))
        .build()
        .unwrap();
    hold_first(&pipeline, &entered);
    pipeline.input().push(item(1, 30)).unwrap();
    common::eventually("item 1 reaches the budgeted queue", || pass(&pipeline).queue_len == 1);
    let text = pipeline.stats().to_prometheus("p");
    assert!(text.contains("# TYPE backflow_stage_queue_bytes gauge\n"), "{text}");
    assert!(
        text.contains("backflow_stage_queue_bytes{pipeline=\"p\",stage=\"pass\"} 30\n"),
        "{text}"
    );
    assert!(!text.contains("backflow_stage_queue_bytes{pipeline=\"p\",stage=\"plain\"}"), "{text}");
    gate.open();
    assert_settled(&pipeline.drain().unwrap(), 2);
}

#[test]
fn a_budget_of_zero_or_marks_as_counts_are_config_errors() {
    let build = |bytes: usize, counts: bool| {
        let builder = Pipeline::<Vec<u8>>::builder()
            .stage("first", || |v: Vec<u8>| v)
            .stage("chunks", || |v: Vec<u8>| v.len())
            .capacity_bytes(bytes, Vec::len);
        let builder = if counts { builder.water_mark_counts(8, 2) } else { builder };
        builder.sink(|_| {}).build().err()
    };
    let invalid = |field, expected| ConfigError::Invalid {
        stage: "chunks".into(),
        source: backflow::core::ConfigError::Invalid { field, expected },
    };
    assert_eq!(build(0, false), Some(invalid("capacity_bytes", "at least 1")));
    assert_eq!(
        build(1 << 20, true),
        Some(invalid("water_mark_counts", "percentages (`water_marks`) with `capacity_bytes`"))
    );
    assert_eq!(
        build(0, false).unwrap().to_string(),
        "stage `chunks`: `capacity_bytes` must be at least 1"
    );
    assert!(build(1, false).is_none());
}

#[test]
fn a_panicking_weigh_on_the_input_hands_the_item_back_and_fails_the_drain() {
    let pipeline = Pipeline::<Item>::builder()
        .stage("pass", || |x: Item| x)
        .capacity_bytes(BUDGET, |item: &Item| {
            assert!(item.id != 3, "cannot weigh item 3");
            item.weight
        })
        .sink(|_| {})
        .build()
        .unwrap();
    let input = pipeline.input();
    input.push_iter((1..=2).map(|id| item(id, 1))).unwrap();
    assert_eq!(input.push(item(3, 1)), Err(PushError::Cancelled(item(3, 1))));
    assert_eq!(input.push(item(4, 1)), Err(PushError::Cancelled(item(4, 1))));
    match pipeline.drain() {
        Err(PipelineError::WeighPanicked { stage, message, report }) => {
            assert_eq!((stage.as_str(), message.as_str()), ("pass", "cannot weigh item 3"));
            assert_settled(&report, 2);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_panicking_weigh_in_a_worker_abandons_and_counts_the_items() {
    let pipeline = Pipeline::<Item>::builder()
        .stage("first", || |x: Item| x)
        .stage("second", || |x: Item| x)
        .capacity_bytes(BUDGET, |item: &Item| {
            assert!(item.id != 50, "cannot weigh item 50");
            item.weight
        })
        .sink(|_| {})
        .build()
        .unwrap();
    let _ = pipeline.input().push_iter((0..200).map(|id| item(id, 1)));
    let Err(PipelineError::WeighPanicked { stage, report, .. }) = pipeline.drain() else {
        panic!("the drain reports the panic");
    };
    assert_eq!(stage, "second");
    assert!(report.is_balanced(), "{report}");
    let second = report.stage("second").unwrap();
    assert!(second.accounting.abandoned >= 1, "item 50 at least: {report}");
    assert!(report.stages().iter().all(|s| s.queue_bytes == 0 && s.accounting.in_flight == 0));
}

#[test]
fn a_cancel_sweeps_the_queue_and_its_weight() {
    let (gate, entered, seen) = (Gate::default(), Flag::default(), Seen::default());
    let pipeline = stalled(Overflow::Block, (100, 50), &gate, &entered, &seen);
    hold_first(&pipeline, &entered);
    let input = pipeline.input();
    for id in 1..=3 {
        input.try_push(item(id, 20)).unwrap();
    }
    assert_eq!(pass(&pipeline).queue_bytes, 60);
    pipeline.cancel();
    gate.open();
    let report = pipeline.drain().unwrap_err().report().clone();
    assert!(report.is_balanced(), "{report}");
    let stats = report.stage("pass").unwrap();
    assert_eq!((stats.queue_bytes, stats.queue_len), (0, 0));
    assert_eq!(stats.accounting.abandoned, 3);
    assert_eq!(seen.dropped(), [1, 2, 3].map(|id| (id, DropReason::Abandoned)));
}

#[test]
fn many_producers_and_workers_stay_within_the_budget_and_deliver_everything() {
    // Three stages, several workers sharing each queue, a key-ordered one (a budget per
    // lane), weights up to the budget: all delivered under Block, and the weight sampled
    // while running never above a queue's budget.
    const ITEMS: u32 = 5_000;
    let weigh = |item: &Item| item.weight;
    let two = NonZeroUsize::new(2).unwrap();
    let pipeline = Pipeline::<Item>::builder()
        .stage("a", || |x: Item| x)
        .capacity_bytes(BUDGET, weigh)
        .workers(two)
        .stage("b", || |x: Item| x)
        .capacity_bytes(BUDGET, weigh)
        .workers(two)
        .key_ordered(|item: &Item| u64::from(item.id % 7))
        .stage("c", || |x: Item| x)
        .capacity_bytes(BUDGET, weigh)
        .sink(|_| {})
        .build()
        .unwrap();
    let producers: Vec<_> = (0..2)
        .map(|p| {
            let input = pipeline.input();
            thread::spawn(move || {
                let items = (p..ITEMS).step_by(2).map(|id| item(id, (id as usize * 37) % 101));
                items.into_iter().try_for_each(|x| input.push(x))
            })
        })
        .collect();
    let mut samples = 0;
    while producers.iter().any(|p| !p.is_finished()) {
        for stage in pipeline.stats().stages() {
            let budget = stage.queue_capacity_bytes.unwrap();
            assert!(
                stage.queue_bytes <= budget,
                "{}: {} of {budget}",
                stage.name,
                stage.queue_bytes
            );
        }
        samples += 1;
        thread::yield_now();
    }
    for producer in producers {
        producer.join().unwrap().unwrap();
    }
    let report = pipeline.drain().unwrap();
    assert_eq!(report.sink().delivered, u64::from(ITEMS));
    assert_eq!(report.stage("b").unwrap().queue_capacity_bytes, Some(2 * BUDGET));
    assert_settled(&report, u64::from(ITEMS));
    assert!(samples > 0);
}

// ---- heavy items, real memory ---------------------------------------------------------------

/// Items in a heavy run.
const HEAVY_ITEMS: u32 = 20_000;
/// Each of the three stages' byte budget.
const HEAVY_BUDGET: usize = 64 << 20;
/// What a heavy run may hold besides its three queues' budgets, at its peak: the test
/// process itself, the item being made and the one in the sink, each worker's batch (at most
/// a [`BATCH`](backflow::stage::BATCH)th of a budget, plus one item) and the allocator's
/// slack.
const HEAVY_SLACK: usize = 32 << 20;
/// How long the sink takes per item: slower than the producer, so the queues fill up.
const HEAVY_SINK_DELAY: std::time::Duration = std::time::Duration::from_micros(50);

/// The byte every byte of item `id` but its first four is set to.
fn fill_byte(id: u32) -> u8 {
    (id % 251) as u8 + 1
}

/// Item `id`: 1 KiB to 1 MiB (from `rng`), its id in the first four bytes, every other byte
/// written.
fn heavy_item(id: u32, rng: &mut u64) -> Vec<u8> {
    // xorshift64: sizes spread evenly, the same every run.
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let size = 1024 + (*rng % ((1 << 20) - 1024 + 1)) as usize;
    let mut item = vec![fill_byte(id); size];
    item[..4].copy_from_slice(&id.to_le_bytes());
    item
}

/// The peak resident memory of this process so far, in bytes (`VmHWM`).
fn peak_rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find_map(|line| line.strip_prefix("VmHWM:")).expect("VmHWM");
    let kib: usize = line.trim().trim_end_matches("kB").trim().parse().expect("VmHWM in kB");
    kib * 1024
}

/// Pushes [`HEAVY_ITEMS`] heavy items through three stages of [`HEAVY_BUDGET`] bytes each
/// under `overflow`, into a slow sink that checks every item it gets; returns the report, the
/// items delivered and the peak resident memory. Run it alone in a process (the peak is the
/// process's).
fn heavy_run(overflow: Overflow) -> (Report, u64, usize) {
    let stage = || {
        |item: Vec<u8>| {
            assert_eq!(
                item.last(),
                Some(&fill_byte(u32::from_le_bytes(item[..4].try_into().unwrap())))
            );
            item
        }
    };
    let delivered = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = Arc::clone(&delivered);
    let pipeline = Pipeline::<Vec<u8>>::builder()
        .stage("a", stage)
        .capacity_bytes(HEAVY_BUDGET, Vec::len)
        .overflow(overflow)
        .stage("b", stage)
        .capacity_bytes(HEAVY_BUDGET, Vec::len)
        .overflow(overflow)
        .stage("c", stage)
        .capacity_bytes(HEAVY_BUDGET, Vec::len)
        .overflow(overflow)
        .sink(move |item: Vec<u8>| {
            let id = u32::from_le_bytes(item[..4].try_into().unwrap());
            assert!(item[4..].iter().step_by(4096).all(|&b| b == fill_byte(id)));
            thread::sleep(HEAVY_SINK_DELAY);
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })
        .build()
        .unwrap();
    let input = pipeline.input();
    let mut rng = 0x9E37_79B9_7F4A_7C15;
    for id in 0..HEAVY_ITEMS {
        input.push(heavy_item(id, &mut rng)).unwrap();
    }
    let report = pipeline.drain().unwrap();
    let delivered = delivered.load(std::sync::atomic::Ordering::Relaxed);
    (report, delivered, peak_rss())
}

/// Checks a heavy run's accounting and its peak memory against three budgets and the slack.
fn assert_heavy_run(overflow: Overflow) -> Report {
    let started = std::time::Instant::now();
    let (report, delivered, peak) = heavy_run(overflow);
    let mib = |bytes: usize| bytes as f64 / f64::from(1 << 20);
    println!(
        "{overflow:?}: {delivered} of {HEAVY_ITEMS} delivered in {:.1?}, peak RSS {:.1} MiB \
         (bound {:.0} MiB)",
        started.elapsed(),
        mib(peak),
        mib(3 * HEAVY_BUDGET + HEAVY_SLACK)
    );
    assert_settled(&report, u64::from(HEAVY_ITEMS));
    assert_eq!(report.sink().delivered, delivered);
    let dropped: u64 = report.stages().iter().map(|s| s.accounting.dropped).sum();
    assert_eq!(delivered + dropped, u64::from(HEAVY_ITEMS), "{report}");
    assert!(peak <= 3 * HEAVY_BUDGET + HEAVY_SLACK, "peak RSS {:.1} MiB\n{report}", mib(peak));
    report
}

#[test]
fn heavy_items_under_block_all_arrive_within_three_budgets_of_memory() {
    common::isolated("heavy_items_under_block_all_arrive_within_three_budgets_of_memory", || {
        let report = assert_heavy_run(Overflow::Block);
        assert_eq!(report.sink().delivered, u64::from(HEAVY_ITEMS));
        // Each queue reached its high mark (80 % of its budget): the bound was put to work.
        for stage in report.stages() {
            assert!(stage.pressure_transitions > 0, "{}: pressure never on\n{report}", stage.name);
        }
    });
}

#[test]
fn heavy_items_under_drop_oldest_are_delivered_or_counted_within_three_budgets() {
    common::isolated(
        "heavy_items_under_drop_oldest_are_delivered_or_counted_within_three_budgets",
        || {
            let report = assert_heavy_run(Overflow::DropOldest);
            let evicted: u64 = report.stages().iter().map(|s| s.dropped_oldest).sum();
            assert!(evicted > 0, "the slow sink makes the last queue evict\n{report}");
        },
    );
}

#[test]
fn heavy_items_under_drop_newest_are_delivered_or_counted_within_three_budgets() {
    common::isolated(
        "heavy_items_under_drop_newest_are_delivered_or_counted_within_three_budgets",
        || {
            let report = assert_heavy_run(Overflow::DropNewest);
            let refused: u64 = report.stages().iter().map(|s| s.dropped_newest).sum();
            assert!(refused > 0, "the slow sink makes the last queue refuse\n{report}");
        },
    );
}
