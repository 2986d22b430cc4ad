//! A consumer and a writer in this process against a real server: bounded reading,
//! acknowledgement of every way an entry can leave a pipeline, and none for abandoned ones,
//! lost connections, and configuration errors.

mod common;

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::Duration;

use backflow::core::RetrySchedule;
use backflow::{ErrorPolicy, Overflow, Pipeline, PipelineError, stage};
use backflow_redis::{
    Consumer, ConsumerConfig, Entry, Error, Receipt, Record, Writer, WriterConfig,
};
use common::{Server, keys};

fn n(entry: &Entry) -> u64 {
    entry.get_str("n").and_then(|n| n.parse().ok()).expect("every test entry has n")
}

fn config(server: &Server, stream: &str, group: &str, consumer: &str) -> ConsumerConfig {
    ConsumerConfig::new(&server.url, stream, group, consumer).block(Duration::from_millis(20))
}

/// Retries a few times, quickly: for tests that expect to give up.
fn impatient() -> RetrySchedule {
    RetrySchedule::new(Duration::from_millis(2), Duration::from_millis(2), 2).unwrap()
}

#[test]
fn a_slow_sink_keeps_unacknowledged_entries_within_capacity_plus_batch() {
    const CAPACITY: usize = 32;
    const BATCH: usize = 8;
    const FIRST: u64 = 300;
    const TOTAL: u64 = 2000;
    let server = Server::get();
    let (stream, group, _) = keys("bound");
    server.fill(&stream, 0, FIRST);

    let delivered = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&delivered);
    let pipeline = Pipeline::<Entry>::builder()
        .stage("parse", || |entry: Entry| (n(&entry), entry.receipt()))
        .capacity(CAPACITY)
        .sink(move |_| {
            thread::sleep(Duration::from_micros(200));
            seen.fetch_add(1, Ordering::Relaxed);
        })
        .build()
        .unwrap();
    let consumer =
        Consumer::connect(config(&server, &stream, &group, "slow").batch(BATCH)).unwrap();
    let handle = consumer.handle();
    let running = thread::spawn(move || consumer.run(pipeline));

    // The stream grows while the pipeline works through it.
    server.fill(&stream, FIRST, TOTAL);
    let read_when_filled = handle.read();
    let mut most_unacknowledged = 0;
    while delivered.load(Ordering::Relaxed) < TOTAL {
        // Read before acknowledged: the consumer counts an acknowledgement before the read
        // that went with it, so this never overstates what it holds.
        let read = handle.read() + handle.claimed();
        most_unacknowledged = most_unacknowledged.max(read - handle.acknowledged());
        thread::sleep(Duration::from_micros(100));
    }
    handle.stop();
    let summary = running.join().unwrap().unwrap();

    assert!(read_when_filled < TOTAL, "the stream grew faster than it was read");
    assert!(
        most_unacknowledged <= (CAPACITY + BATCH) as u64,
        "{most_unacknowledged} entries held unacknowledged"
    );
    assert!(most_unacknowledged >= CAPACITY as u64 / 2, "the pipeline did fill up");
    assert_eq!((summary.read, summary.acknowledged, summary.released), (TOTAL, TOTAL, 0));
    assert_eq!(server.pending(&stream, &group), 0);
    assert!(summary.report.is_balanced());
}

#[test]
fn every_way_out_of_the_pipeline_acknowledges_the_entry() {
    const TOTAL: u64 = 3000;
    let server = Server::get();
    let (stream, group, _) = keys("ways-out");
    server.fill(&stream, 0, TOTAL);

    let dead = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let (dead_seen, dropped_seen) = (Arc::clone(&dead), Arc::clone(&dropped));
    let delivered = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&delivered);
    let pipeline = Pipeline::<Entry>::builder()
        .stage("check", || {
            stage::try_map(
                |entry: Entry| if n(&entry) % 10 == 3 { Err("ends in 3") } else { Ok(entry) },
            )
        })
        .stage("fail sevens", || {
            stage::validate(
                |entry: &Entry| if n(entry) % 10 == 7 { Err("ends in 7") } else { Ok(()) },
            )
        })
        .dead_letter(move |_| {
            dead_seen.fetch_add(1, Ordering::Relaxed);
        })
        .stage("evens", || stage::filter(|entry: &Entry| n(entry).is_multiple_of(2)))
        .capacity(4)
        .overflow(Overflow::DropNewest)
        .on_drop(move |_| {
            dropped_seen.fetch_add(1, Ordering::Relaxed);
        })
        .sink(move |_| {
            thread::sleep(Duration::from_micros(20));
            seen.fetch_add(1, Ordering::Relaxed);
        })
        .build()
        .unwrap();
    let consumer = Consumer::connect(
        config(&server, &stream, &group, "c").stop_when_idle(Duration::from_millis(300)),
    )
    .unwrap();
    let summary = consumer.run(pipeline).unwrap();

    let (dead, dropped) = (dead.load(Ordering::Relaxed), dropped.load(Ordering::Relaxed));
    assert_eq!(dead, TOTAL / 10, "the sevens were dead-lettered");
    assert!(dropped > 0, "the small queue dropped some");
    assert!(delivered.load(Ordering::Relaxed) > 0);
    assert_eq!(summary.read, TOTAL);
    assert_eq!(summary.acknowledged, TOTAL, "filtered, errored, dead-lettered, dropped, delivered");
    assert_eq!(server.pending(&stream, &group), 0);
}

/// A pipeline whose stage "check" fails entry 50 under `FailFast`: the only stage (`shape`
/// 0), or the second, with two workers (1).
fn fail_fast_at_fifty(shape: usize) -> Pipeline<Entry> {
    let failing =
        || stage::try_map(|entry: Entry| if n(&entry) == 50 { Err("fifty") } else { Ok(entry) });
    let builder = Pipeline::<Entry>::builder();
    let builder = if shape == 0 {
        builder.stage("check", failing).on_error(ErrorPolicy::FailFast)
    } else {
        builder
            .stage("pass", || |entry: Entry| entry)
            .stage("check", failing)
            .on_error(ErrorPolicy::FailFast)
            .workers(NonZeroUsize::new(2).unwrap())
    };
    builder.sink(|_| {}).build().unwrap()
}

/// An entry whose stage fails it under `FailFast` was not processed: whatever the stage does
/// with it (here `try_map` drops it, receipt and all, inside the stage call), it stays
/// pending for the next run, whichever worker path the stage runs on.
#[test]
fn an_entry_that_fails_a_fail_fast_stage_stays_pending() {
    let server = Server::get();
    let (stream, group, _) = keys("fail-fast");
    server.fill(&stream, 0, 100);
    let fifty = server.entries(&stream).into_iter().find(|(_, fields)| fields["n"] == "50");
    let fifty = fifty.expect("entry 50 was written").0;
    for shape in 0..2 {
        for batch in [1, 64] {
            let group = format!("{group}-{shape}-{batch}");
            let consumer = config(&server, &stream, &group, "c").batch(batch);
            let result = Consumer::connect(consumer).unwrap().run(fail_fast_at_fifty(shape));
            assert!(
                matches!(&result, Err(Error::Pipeline(PipelineError::StageFailed { .. }))),
                "shape {shape}, batch {batch}: {result:?}"
            );
            let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
                .arg(&stream)
                .arg(&group)
                .arg("-")
                .arg("+")
                .arg(1000)
                .query(&mut server.connection())
                .unwrap();
            assert!(
                pending.iter().any(|(id, ..)| *id == fifty),
                "shape {shape}, batch {batch}: entry 50 failed and was acknowledged; \
                 pending: {pending:?}"
            );
        }
    }
}

/// An entry whose receipt has clones: the failing stage drops its copy, then another clone is
/// dropped (here on another thread) before the failure is recorded. That last drop does not
/// settle the entry: the failing call's copy waits for its outcome, and the entry stays pending.
#[test]
fn an_entry_failed_under_fail_fast_stays_pending_whichever_clone_goes_last() {
    let server = Server::get();
    let (stream, group, _) = keys("fail-fast-clones");
    server.fill(&stream, 0, 1);
    let (share, shared) = mpsc::channel::<Receipt>();
    let (dropped, was_dropped) = mpsc::channel::<()>();
    let (go, may_go) = mpsc::channel::<()>();
    let share = Mutex::new(share);
    let (dropped, may_go) = (Mutex::new(dropped), Arc::new(Mutex::new(may_go)));
    let pipeline = Pipeline::<Entry>::builder()
        .stage("share", move || {
            let share = share.lock().unwrap().clone();
            move |entry: Entry| {
                share.send(entry.receipt()).unwrap();
                entry
            }
        })
        .stage("check", move || {
            let (dropped, may_go) = (dropped.lock().unwrap().clone(), Arc::clone(&may_go));
            stage::try_map(move |entry: Entry| {
                drop(entry);
                dropped.send(()).unwrap();
                may_go.lock().unwrap().recv().unwrap();
                Err::<Entry, _>("fails after dropping its entry")
            })
        })
        .on_error(ErrorPolicy::FailFast)
        .sink(|_| {})
        .build()
        .unwrap();
    let holder = thread::spawn(move || {
        let receipt = shared.recv().unwrap();
        was_dropped.recv().unwrap();
        // The last clone goes while the failing call has not returned yet.
        drop(receipt);
        go.send(()).unwrap();
    });
    let result = Consumer::connect(config(&server, &stream, &group, "c")).unwrap().run(pipeline);
    holder.join().unwrap();
    assert!(
        matches!(&result, Err(Error::Pipeline(PipelineError::StageFailed { .. }))),
        "{result:?}"
    );
    assert_eq!(server.pending(&stream, &group), 1, "the entry that failed was acknowledged");
}

/// A panicking attempt with a retry to come does not mark its entry: the retry that succeeds
/// (or the dead letter the entry ends as) acknowledges it. A panic that is the entry's last
/// word (no retry, no dead letter) keeps it pending.
#[test]
fn a_panic_marks_its_entry_only_when_nothing_comes_after_it() {
    let server = Server::get();
    let (stream, group, _) = keys("panic-then");
    server.fill(&stream, 0, 20);
    let retry = || RetrySchedule::new(Duration::from_millis(1), Duration::from_millis(1), 3);
    for (shape, pending) in [("retried", 0), ("dead-lettered", 0), ("skipped", 20)] {
        let tried = Arc::new(Mutex::new(HashSet::new()));
        let builder = Pipeline::<Entry>::builder().stage("flaky", move || {
            let tried = Arc::clone(&tried);
            move |entry: Entry| {
                if shape != "retried" || tried.lock().unwrap().insert(n(&entry)) {
                    panic!("entry {} panics", n(&entry));
                }
                entry
            }
        });
        let builder = match shape {
            "retried" => builder.retry(retry().unwrap()),
            "dead-lettered" => builder.dead_letter(|_| {}),
            _ => builder,
        };
        let pipeline = builder.sink(|_| {}).build().unwrap();
        let group = format!("{group}-{shape}");
        let consumer =
            config(&server, &stream, &group, "c").stop_when_idle(Duration::from_millis(200));
        Consumer::connect(consumer).unwrap().run(pipeline).unwrap();
        assert_eq!(server.pending(&stream, &group), pending, "{shape}");
    }
}

/// Runs a consumer whose sink panics at its 101st entry; returns the entries it delivered,
/// and how many it took and acknowledged.
fn run_until_the_sink_panics(
    server: &Server,
    stream: &str,
    group: &str,
    name: &str,
) -> (HashSet<u64>, u64, u64) {
    let delivered = Arc::new(Mutex::new(HashSet::new()));
    let seen = Arc::clone(&delivered);
    let pipeline = Pipeline::<Entry>::builder()
        .stage("parse", || |entry: Entry| (n(&entry), entry.receipt()))
        .capacity(64)
        .sink(move |(n, _receipt)| {
            let mut seen = seen.lock().unwrap();
            if seen.len() == 100 {
                drop(seen);
                panic!("the sink gives out at its 101st entry");
            }
            seen.insert(n);
        })
        .build()
        .unwrap();
    let consumer = Consumer::connect(config(server, stream, group, name)).unwrap();
    let handle = consumer.handle();
    match consumer.run(pipeline) {
        Err(Error::Pipeline(PipelineError::WorkerPanicked { .. })) => {}
        other => panic!("{other:?}"),
    }
    let delivered = delivered.lock().unwrap().clone();
    (delivered, handle.read() + handle.claimed(), handle.acknowledged())
}

/// Runs `config` to the end; returns the entries delivered, each with whether it was
/// redelivered, and the summary.
fn run_to_the_end(config: ConsumerConfig) -> (HashSet<(u64, bool)>, backflow_redis::Summary) {
    let delivered = Arc::new(Mutex::new(HashSet::new()));
    let seen = Arc::clone(&delivered);
    let pipeline = Pipeline::<Entry>::builder()
        .stage("parse", || |entry: Entry| (n(&entry), entry.redelivered(), entry.receipt()))
        .sink(move |(n, redelivered, _receipt)| {
            seen.lock().unwrap().insert((n, redelivered));
        })
        .build()
        .unwrap();
    let summary = Consumer::connect(config.stop_when_idle(Duration::from_millis(300)))
        .unwrap()
        .run(pipeline)
        .unwrap();
    let delivered = delivered.lock().unwrap().clone();
    (delivered, summary)
}

#[test]
fn abandoned_entries_stay_pending_and_another_consumer_takes_them_over() {
    const TOTAL: u64 = 1000;
    let server = Server::get();
    let (stream, group, _) = keys("abandon");
    server.fill(&stream, 0, TOTAL);

    let (first, taken, acked) = run_until_the_sink_panics(&server, &stream, &group, "fragile");
    assert_eq!(acked, 100, "exactly the delivered entries were acknowledged");
    assert!(taken > acked, "it died holding entries");
    assert_eq!(server.pending(&stream, &group), taken - acked, "the rest stayed pending");

    let rescuer = config(&server, &stream, &group, "rescuer").claim_idle(Duration::from_millis(1));
    let (rescued, summary) = run_to_the_end(rescuer);
    assert_eq!(summary.claimed, taken - acked);
    let all: HashSet<u64> = rescued.iter().map(|(n, _)| *n).chain(first).collect();
    assert_eq!(all.len() as u64, TOTAL, "every entry delivered by one or the other");
    assert_eq!(
        rescued.iter().filter(|(_, redelivered)| *redelivered).count() as u64,
        taken - acked
    );
    assert_eq!(server.pending(&stream, &group), 0);
}

#[test]
fn a_consumer_restarted_under_its_name_reads_its_own_pending_entries_first() {
    const TOTAL: u64 = 500;
    let server = Server::get();
    let (stream, group, _) = keys("restart");
    server.fill(&stream, 0, TOTAL);

    let (first, taken, acked) = run_until_the_sink_panics(&server, &stream, &group, "same");
    // Taking over others' entries is off (30 s idle): only its own pending list brings them back.
    let (second, summary) = run_to_the_end(config(&server, &stream, &group, "same"));
    assert_eq!(summary.claimed, taken - acked, "its own pending entries, read back");
    assert_eq!(summary.read, TOTAL - taken, "then the new ones");
    let all: HashSet<u64> = second.iter().map(|(n, _)| *n).chain(first).collect();
    assert_eq!(all.len() as u64, TOTAL);
    assert_eq!(server.pending(&stream, &group), 0);
}

#[test]
fn lost_connections_are_regained_and_nothing_is_lost() {
    const TOTAL: u64 = 3000;
    let server = Server::own();
    let (stream, group, output) = keys("drops");
    server.fill(&stream, 0, TOTAL);

    let writer = Writer::new(WriterConfig::new(&server.url, &output)).unwrap();
    let pipeline = Pipeline::<Entry>::builder()
        .stage("record", || {
            |entry: Entry| {
                thread::sleep(Duration::from_micros(100));
                Record::new().field("n", n(&entry).to_string()).settles(entry.receipt())
            }
        })
        .capacity(64)
        .stage("batch", || stage::batches(NonZeroUsize::new(16).unwrap()))
        .flush_every(Duration::from_millis(10))
        .stage("store", move || writer.stage())
        .on_error(ErrorPolicy::FailFast)
        .sink(|_| {})
        .build()
        .unwrap();
    // Entries whose read reply was lost are pending under this consumer: it takes them back.
    let settings = config(&server, &stream, &group, "c")
        .claim_idle(Duration::from_millis(200))
        .claim_every(Duration::from_millis(50));
    let consumer = Consumer::connect(settings).unwrap();
    let handle = consumer.handle();
    let running = thread::spawn(move || consumer.run(pipeline));

    let mut control = server.connection();
    for when in [300, 1500] {
        while handle.read() < when {
            thread::sleep(Duration::from_millis(1));
        }
        let kill = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .arg("SKIPME")
            .arg("yes")
            .clone();
        kill.query::<u64>(&mut control).unwrap();
    }
    let done = Arc::new(AtomicBool::new(false));
    while !done.load(Ordering::Relaxed) {
        let written: HashSet<String> =
            server.entries(&output).into_iter().map(|(_, fields)| fields["n"].clone()).collect();
        let info = server.group_info(&stream, &group);
        done.store(
            written.len() as u64 == TOTAL && info["pending"] == 0 && info["lag"] == 0,
            Ordering::Relaxed,
        );
        thread::sleep(Duration::from_millis(20));
    }
    handle.stop();
    let summary = running.join().unwrap().unwrap();
    assert!(summary.reconnects >= 2, "{summary:?}");
    assert_eq!(summary.acknowledged, summary.read + summary.claimed - summary.released);
    assert_eq!(server.pending(&stream, &group), 0);
}

#[test]
fn an_unreachable_server_is_a_clear_error_after_the_schedule() {
    // Nothing listens on a port just freed.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("redis://127.0.0.1:{port}/");
    let config = ConsumerConfig::new(&url, "s", "g", "c").reconnect(impatient());
    match Consumer::connect(config) {
        Err(error @ Error::Connection { attempts: 3, .. }) => {
            assert!(error.to_string().contains("after 3 attempts"), "{error}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_batch_that_cannot_be_written_leaves_its_entries_pending() {
    const TOTAL: u64 = 200;
    let server = Server::get();
    let (stream, group, _) = keys("unwritable");
    server.fill(&stream, 0, TOTAL);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let nowhere =
        WriterConfig::new(format!("redis://127.0.0.1:{port}/"), "out").reconnect(impatient());
    let writer = Writer::new(nowhere).unwrap();
    let pipeline = Pipeline::<Entry>::builder()
        .stage("record", || |entry: Entry| Record::new().field("n", "1").settles(entry.receipt()))
        .stage("batch", || stage::batches(NonZeroUsize::new(10).unwrap()))
        .stage("store", move || writer.stage())
        .on_error(ErrorPolicy::FailFast)
        .sink(|_| {})
        .build()
        .unwrap();
    let consumer = Consumer::connect(config(&server, &stream, &group, "c")).unwrap();
    let handle = consumer.handle();
    match consumer.run(pipeline) {
        Err(Error::Pipeline(PipelineError::StageFailed { stage, error, .. })) => {
            assert_eq!(stage, "store");
            assert!(error.contains("after 3 attempts"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(handle.acknowledged(), 0, "nothing was written, nothing acknowledged");
    assert_eq!(server.pending(&stream, &group), handle.read());
}

#[test]
fn the_writer_trims_the_stream_to_about_max_len() {
    let server = Server::get();
    let (_, _, output) = keys("trim");
    let writer = Writer::new(WriterConfig::new(&server.url, &output).max_len(1000)).unwrap();
    let pipeline = Pipeline::<u64>::builder()
        .stage("record", || |n: u64| Record::new().field("n", n.to_string()))
        .stage("batch", || stage::batches(NonZeroUsize::new(100).unwrap()))
        .stage("store", move || writer.stage())
        .sink(|_| {})
        .build()
        .unwrap();
    let report = backflow::run(0..5000, pipeline).unwrap();
    assert_eq!(report.sink().delivered, 50, "one list of ids per batch");
    let length: u64 = redis::cmd("XLEN").arg(&output).query(&mut server.connection()).unwrap();
    assert!((1000..1200).contains(&length), "trimmed to about 1000: {length}");
}

#[test]
fn bad_settings_are_config_errors_naming_the_field() {
    let valid = || ConsumerConfig::new("redis://127.0.0.1/", "s", "g", "c");
    let cases = [
        (ConsumerConfig::new("localhost:6379", "s", "g", "c"), "url"),
        (ConsumerConfig::new("redis://127.0.0.1/-1", "s", "g", "c"), "url"),
        (ConsumerConfig::new("redis://127.0.0.1:0/", "s", "g", "c"), "url"),
        (ConsumerConfig::new("rediss://127.0.0.1:0/", "s", "g", "c"), "url"),
        (ConsumerConfig::new("redis://u:%zz@127.0.0.1/", "s", "g", "c"), "url"),
        (ConsumerConfig::new("redis://%4@127.0.0.1/", "s", "g", "c"), "url"),
        (ConsumerConfig::new("redis://127.0.0.1/", "", "g", "c"), "stream"),
        (ConsumerConfig::new("redis://127.0.0.1/", "s", "", "c"), "group"),
        (ConsumerConfig::new("redis://127.0.0.1/", "s", "g", ""), "consumer"),
        (valid().batch(0), "batch"),
        (valid().max_pending(0), "max_pending"),
        (valid().block(Duration::ZERO), "block"),
        (valid().claim_idle(Duration::from_micros(10)), "claim_idle"),
        (valid().claim_every(Duration::ZERO), "claim_every"),
        (valid().stop_when_idle(Duration::ZERO), "stop_when_idle"),
        (valid().max_deliveries(0), "max_deliveries"),
        (valid().dead_letter_stream(""), "dead_letter_stream"),
        (valid().dead_letter_stream("s"), "dead_letter_stream"),
    ];
    for (config, field) in cases {
        match Consumer::connect(config) {
            Err(Error::Config(backflow::core::ConfigError::Invalid { field: named, .. })) => {
                assert_eq!(named, field);
            }
            other => panic!("{field}: {other:?}"),
        }
    }
    let writer = |config: WriterConfig| Writer::new(config).map(drop);
    assert!(matches!(
        writer(WriterConfig::new("redis://h/", "o").max_len(0)),
        Err(Error::Config(_))
    ));
    assert!(matches!(writer(WriterConfig::new("redis://h/", "")), Err(Error::Config(_))));
    assert!(matches!(writer(WriterConfig::new("ftp://h/", "o")), Err(Error::Config(_))));
}

#[test]
fn settings_past_what_the_server_or_the_clock_takes_are_config_errors() {
    let server = Server::get();
    let (stream, group, _) = keys("limits");
    let valid = || ConsumerConfig::new(&server.url, &stream, &group, "c");
    let year_and_a_day = Duration::from_secs(366 * 24 * 60 * 60);
    let cases = [
        (valid().batch(usize::MAX), "batch"),
        (valid().batch(1_000_001), "batch"),
        (valid().block(Duration::MAX), "block"),
        (valid().block(year_and_a_day), "block"),
        (valid().claim_idle(Duration::MAX), "claim_idle"),
        (valid().claim_every(Duration::MAX), "claim_every"),
        (valid().stop_when_idle(Duration::MAX), "stop_when_idle"),
        (valid().stop_when_idle(year_and_a_day), "stop_when_idle"),
    ];
    let mut wrong = Vec::new();
    for (config, field) in cases {
        let connected = std::panic::catch_unwind(|| Consumer::connect(config).map(drop));
        match connected {
            Ok(Err(Error::Config(backflow::core::ConfigError::Invalid {
                field: named, ..
            }))) if named == field => {}
            other => wrong.push(format!("{field}: {other:?}")),
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // MAXLEN is a signed 64-bit count on the server.
    match Writer::new(WriterConfig::new("redis://h/", "o").max_len(usize::MAX)) {
        Err(Error::Config(backflow::core::ConfigError::Invalid { field: "max_len", .. })) => {}
        other => panic!("max_len: {other:?}"),
    }
    assert!(Writer::new(WriterConfig::new("redis://h/", "o").max_len(i64::MAX as usize)).is_ok());
}

#[test]
fn the_largest_accepted_settings_run() {
    const TOTAL: u64 = 300;
    let server = Server::get();
    let (stream, group, output) = keys("largest");
    server.fill(&stream, 0, TOTAL);
    let year = Duration::from_secs(365 * 24 * 60 * 60);
    // Reconnect delays are slept, never added up or sent: any schedule is taken as it is.
    let forever = RetrySchedule::new(Duration::from_millis(1), Duration::MAX, u32::MAX).unwrap();
    let writer = Writer::new(
        WriterConfig::new(&server.url, &output).max_len(i64::MAX as usize).reconnect(forever),
    )
    .unwrap();
    let pipeline = Pipeline::<Entry>::builder()
        .stage("record", || {
            |entry: Entry| Record::new().field("n", n(&entry).to_string()).settles(entry.receipt())
        })
        .stage("batch", || stage::batches(NonZeroUsize::new(100).unwrap()))
        .flush_every(Duration::from_millis(10))
        .stage("store", move || writer.stage())
        .sink(|_| {})
        .build()
        .unwrap();
    let settings = ConsumerConfig::new(&server.url, &stream, &group, "c")
        .batch(1_000_000)
        .max_pending(usize::MAX)
        .block(Duration::from_millis(20))
        .claim_idle(year)
        .claim_every(year)
        .reconnect(forever)
        .stop_when_idle(Duration::from_millis(200));
    let settings = settings.max_deliveries(u64::MAX);
    let summary = Consumer::connect(settings).unwrap().run(pipeline).unwrap();
    assert_eq!((summary.read, summary.acknowledged), (TOTAL, TOTAL));
    assert_eq!(server.entries(&output).len() as u64, TOTAL);
    assert_eq!(server.pending(&stream, &group), 0);
}
