//! Entries a pipeline cannot get through: dead-lettered after `max_deliveries`, and counted
//! against `max_pending` while they wait to be tried again.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use backflow::Pipeline;
use backflow_redis::{Consumer, ConsumerConfig, Entry, Error, Summary};
use common::{Server, keys, wait_until};

const PATIENCE: Duration = Duration::from_secs(30);

fn n(entry: &Entry) -> u64 {
    entry.get_str("n").and_then(|n| n.parse().ok()).expect("every test entry has n")
}

/// A pipeline whose `check` stage panics on every entry `poison` picks, and counts those
/// attempts in `attempts`.
fn failing_on(
    poison: impl Fn(u64) -> bool + Send + Sync + 'static,
    attempts: &Arc<AtomicU64>,
) -> Pipeline<Entry> {
    let (poison, attempts) = (Arc::new(poison), Arc::clone(attempts));
    Pipeline::<Entry>::builder()
        .stage("check", move || {
            let (poison, attempts) = (Arc::clone(&poison), Arc::clone(&attempts));
            move |entry: Entry| {
                if poison(n(&entry)) {
                    attempts.fetch_add(1, Ordering::Relaxed);
                    panic!("entry {} is poison", n(&entry));
                }
                entry.receipt()
            }
        })
        .sink(|_| {})
        .build()
        .unwrap()
}

fn config(server: &Server, stream: &str, group: &str) -> ConsumerConfig {
    ConsumerConfig::new(&server.url, stream, group, "c")
        .block(Duration::from_millis(20))
        .claim_every(Duration::from_millis(10))
        .stop_when_idle(Duration::from_millis(300))
}

/// Runs `consumer` on another thread while `watch` samples the group's pending count every
/// millisecond; returns the run's result and the most entries seen pending. Fails if the run
/// has not ended after [`PATIENCE`], or as soon as `give_up` says so.
fn run_watching_pending(
    server: &Server,
    (stream, group): (&str, &str),
    consumer: Consumer,
    pipeline: Pipeline<Entry>,
    give_up: impl Fn() -> Option<String>,
) -> (Result<Summary, Error>, u64) {
    let handle = consumer.handle();
    let running = thread::spawn(move || consumer.run(pipeline));
    let mut most_pending = 0;
    let mut reason = None;
    wait_until("the run to end", PATIENCE, || {
        most_pending = most_pending.max(server.pending(stream, group));
        reason = give_up();
        running.is_finished() || reason.is_some()
    });
    if let Some(reason) = reason {
        handle.stop();
        panic!("{reason} (run: {:?})", running.join().unwrap());
    }
    (running.join().unwrap(), most_pending)
}

/// The entries of `stream` as field → value maps.
fn entries(server: &Server, stream: &str) -> Vec<HashMap<String, String>> {
    server.entries(stream).into_iter().map(|(_, fields)| fields).collect()
}

#[test]
fn an_entry_that_always_panics_is_dead_lettered_after_max_deliveries() {
    const ENTRIES: u64 = 20;
    let server = Server::get();
    let (stream, group, _) = keys("poison");
    server.fill(&stream, 0, ENTRIES);
    let attempts = Arc::new(AtomicU64::new(0));
    let pipeline = failing_on(|n| n == 7, &attempts);
    // Taken back 600 ms after each failure: far above the time an entry spends in the
    // pipeline even on a busy machine, so no delivery is counted while the entry is still
    // being processed (a claim of an entry in the pipeline counts as a delivery on the
    // server). Idle for long enough between two deliveries to stop only after the last one.
    let config = config(&server, &stream, &group)
        .claim_idle(Duration::from_millis(600))
        .stop_when_idle(Duration::from_millis(2500));
    let consumer = Consumer::connect(config).unwrap();
    let (summary, _) = run_watching_pending(&server, (&stream, &group), consumer, pipeline, || {
        let attempts = attempts.load(Ordering::Relaxed);
        (attempts > 5).then(|| format!("entry 7 was processed {attempts} times"))
    });
    let summary = summary.unwrap();

    assert_eq!(attempts.load(Ordering::Relaxed), 5, "processed max_deliveries (5) times");
    let dead = entries(&server, &format!("{stream}:dead"));
    assert_eq!(dead.len(), 1, "{dead:?}");
    let letter = &dead[0];
    assert_eq!(letter["n"], "7", "the entry's own fields");
    assert_eq!(letter["dead.deliveries"], "5");
    assert_eq!(letter["dead.stage"], "check");
    assert!(letter["dead.error"].contains("panicked"), "{letter:?}");
    assert_eq!(letter["dead.consumer"], "c");
    let id = &server.entries(&stream)[7].0;
    assert_eq!(&letter["dead.id"], id);
    assert_eq!(server.pending(&stream, &group), 0);
    assert_eq!(summary.read, ENTRIES);
    assert_eq!((summary.claimed, summary.released), (5, 5), "taken back after each failure");
    assert_eq!((summary.dead_lettered, summary.pending), (1, 0));
    assert_eq!(summary.acknowledged, summary.read + summary.claimed - summary.released);
}

#[test]
fn released_entries_count_against_max_pending_and_the_rest_is_reported_pending() {
    const ENTRIES: u64 = 600;
    const MAX_PENDING: usize = 50;
    let server = Server::get();
    let (stream, group, _) = keys("bounded-release");
    server.fill(&stream, 0, ENTRIES);
    let attempts = Arc::new(AtomicU64::new(0));
    let pipeline = failing_on(|n| n % 3 == 0, &attempts);
    // Nothing is taken back within the test: every failed entry stays pending.
    let settings = config(&server, &stream, &group)
        .max_pending(MAX_PENDING)
        .claim_idle(Duration::from_secs(60));
    let consumer = Consumer::connect(settings).unwrap();
    let (summary, most_pending) =
        run_watching_pending(&server, (&stream, &group), consumer, pipeline, || None);
    let summary = summary.unwrap();

    assert!(most_pending <= MAX_PENDING as u64, "{most_pending} entries pending at once");
    let pending = server.pending(&stream, &group);
    assert_eq!(pending, MAX_PENDING as u64, "the consumer stopped reading with its window full");
    assert_eq!(summary.pending, pending, "the summary says how many it leaves pending");
    assert_eq!(summary.released, pending);
    assert_eq!(summary.acknowledged + pending, summary.read);
}

#[test]
fn entries_failing_again_and_again_stay_within_max_pending_until_dead_lettered() {
    const ENTRIES: u64 = 300;
    const MAX_PENDING: usize = 50;
    let server = Server::get();
    let (stream, group, _) = keys("bounded-retry");
    server.fill(&stream, 0, ENTRIES);
    let attempts = Arc::new(AtomicU64::new(0));
    let pipeline = failing_on(|n| n % 3 == 0, &attempts);
    let settings = config(&server, &stream, &group)
        .max_pending(MAX_PENDING)
        .claim_idle(Duration::from_millis(20));
    let consumer = Consumer::connect(settings).unwrap();
    let (summary, most_pending) =
        run_watching_pending(&server, (&stream, &group), consumer, pipeline, || {
            let attempts = attempts.load(Ordering::Relaxed);
            (attempts > 5 * ENTRIES / 3).then(|| format!("{attempts} attempts on poison entries"))
        });
    let summary = summary.unwrap();

    assert!(most_pending <= MAX_PENDING as u64, "{most_pending} entries pending at once");
    // Five each, fewer for one whose delivery count went up while it waited in the pipeline
    // longer than `claim_idle` (taken over while held).
    let attempts = attempts.load(Ordering::Relaxed);
    assert!((ENTRIES / 3..=5 * ENTRIES / 3).contains(&attempts), "{attempts} attempts");
    assert_eq!(entries(&server, &format!("{stream}:dead")).len() as u64, ENTRIES / 3);
    assert_eq!(server.pending(&stream, &group), 0);
    assert_eq!((summary.dead_lettered, summary.pending), (ENTRIES / 3, 0));
    assert_eq!(summary.acknowledged, summary.read + summary.claimed - summary.released);
}

#[test]
fn entries_another_consumer_failed_too_often_are_dead_lettered_unprocessed() {
    const ENTRIES: u64 = 10;
    let server = Server::get();
    let (stream, group, _) = keys("inherited-poison");
    server.fill(&stream, 0, ENTRIES);
    // Another consumer took every entry, and entry 3 had been handed out three times.
    let mut connection = server.connection();
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg(&group)
        .arg("0")
        .query::<()>(&mut connection)
        .unwrap();
    redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(&group)
        .arg("gone")
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query::<redis::Value>(&mut connection)
        .unwrap();
    let third = server.entries(&stream)[3].0.clone();
    redis::cmd("XCLAIM")
        .arg(&stream)
        .arg(&group)
        .arg("gone")
        .arg(0)
        .arg(&third)
        .arg("RETRYCOUNT")
        .arg(3)
        .arg("JUSTID")
        .query::<redis::Value>(&mut connection)
        .unwrap();

    let processed = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&processed);
    let pipeline = Pipeline::<Entry>::builder()
        .stage("count", move || {
            let seen = Arc::clone(&seen);
            move |entry: Entry| {
                seen.fetch_add(1, Ordering::Relaxed);
                entry.receipt()
            }
        })
        .sink(|_| {})
        .build()
        .unwrap();
    let settings = config(&server, &stream, &group)
        .claim_idle(Duration::from_millis(1))
        .max_deliveries(3)
        .dead_letter_stream(format!("{stream}:poison"));
    let consumer = Consumer::connect(settings).unwrap();
    let (summary, _) =
        run_watching_pending(&server, (&stream, &group), consumer, pipeline, || None);
    let summary = summary.unwrap();

    assert_eq!(processed.load(Ordering::Relaxed), ENTRIES - 1, "all but entry 3");
    let dead = entries(&server, &format!("{stream}:poison"));
    assert_eq!(dead.len(), 1, "{dead:?}");
    let letter = &dead[0];
    assert_eq!((letter["n"].as_str(), &letter["dead.id"]), ("3", &third));
    assert_eq!(letter["dead.deliveries"], "3");
    assert_eq!(letter["dead.stage"], "unknown");
    assert!(letter["dead.error"].starts_with("unknown"), "{letter:?}");
    assert_eq!((summary.claimed, summary.dead_lettered, summary.pending), (ENTRIES, 1, 0));
    assert_eq!(summary.acknowledged, ENTRIES);
    assert_eq!(server.pending(&stream, &group), 0);
}

/// A field name that is not UTF-8 (Redis takes any bytes) reaches the pipeline with U+FFFD
/// in place of what is not; neither it nor the entries read with it are stuck.
#[test]
fn a_field_name_that_is_not_utf8_does_not_stop_the_consumer() {
    let server = Server::get();
    let (stream, group, _) = keys("non_utf8_name");
    let mut connection = server.connection();
    for name in [&b"n"[..], &b"\xff\xfe"[..], &b"n"[..]] {
        let _: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg(name)
            .arg("1")
            .query(&mut connection)
            .unwrap();
    }
    let names = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&names);
    let pipeline = Pipeline::<Entry>::builder()
        .stage("names", || |entry: Entry| entry)
        .sink(move |entry: Entry| {
            seen.lock().unwrap().push(entry.fields()[0].0.clone());
            drop(entry.receipt());
        })
        .build()
        .unwrap();
    let consumer = Consumer::connect(config(&server, &stream, &group)).unwrap();
    let (result, _) = run_watching_pending(&server, (&stream, &group), consumer, pipeline, || None);
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(*names.lock().unwrap(), ["n", "\u{fffd}\u{fffd}", "n"]);
    assert_eq!(server.pending(&stream, &group), 0);
}
