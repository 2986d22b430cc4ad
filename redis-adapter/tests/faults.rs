//! A consumer and its writer stage keep going through a server that is killed (SIGKILL) and
//! started again on its append-only file, and through one busy running a script: every
//! entry is processed at least once, and none is left pending.

mod common;

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::thread;
use std::time::Duration;

use backflow::core::RetrySchedule;
use backflow::{ErrorPolicy, Pipeline, stage};
use backflow_redis::{
    Consumer, ConsumerConfig, ConsumerHandle, Entry, Error, Record, Summary, Writer, WriterConfig,
};
use common::{DurableServer, Server, keys, wait_until};

/// How long a test waits for anything before it fails.
const PATIENCE: Duration = Duration::from_secs(60);

fn n(entry: &Entry) -> u64 {
    entry.get_str("n").and_then(|n| n.parse().ok()).expect("every test entry has n")
}

/// Retries every 100 ms at most, for 10 s: a restart is noticed soon after the server is back.
fn eager() -> RetrySchedule {
    RetrySchedule::new(Duration::from_millis(10), Duration::from_millis(100), 100).unwrap()
}

/// `n` → `(n, entry)`, a little work each, then batches of 32 written to `output` with XADD.
fn squares(url: &str, output: &str) -> Pipeline<Entry> {
    let writer = Writer::new(WriterConfig::new(url, output).reconnect(eager())).unwrap();
    Pipeline::<Entry>::builder()
        .stage("record", || {
            |entry: Entry| {
                thread::sleep(Duration::from_micros(50));
                Record::new().field("n", n(&entry).to_string()).settles(entry.receipt())
            }
        })
        .capacity(64)
        .stage("batch", || stage::batches(NonZeroUsize::new(32).unwrap()))
        .flush_every(Duration::from_millis(10))
        .stage("store", move || writer.stage())
        .on_error(ErrorPolicy::FailFast)
        .sink(|_| {})
        .build()
        .unwrap()
}

/// The values of `n` written to `output`.
fn written(server: &Server, output: &str) -> HashSet<u64> {
    server.entries(output).into_iter().map(|(_, fields)| fields["n"].parse().unwrap()).collect()
}

/// Waits until every one of `entries` is written to `output` and the group has none pending;
/// then stops the run and returns its summary. Fails if the run ends first. (The group's lag
/// is no help here: the server does not always restore its count of entries read when it
/// loads its data.)
fn stop_when_done(
    server: &Server,
    (stream, group, output): (&str, &str, &str),
    entries: u64,
    (handle, running): (ConsumerHandle, Running),
) -> Summary {
    wait_until("every entry written and acknowledged", PATIENCE, || {
        let length: u64 = redis::cmd("XLEN").arg(output).query(&mut server.connection()).unwrap();
        running.is_finished()
            || length >= entries
                && server.pending(stream, group) == 0
                && written(server, output).len() as u64 == entries
    });
    let ended_early = running.is_finished();
    handle.stop();
    let result = running.join().unwrap();
    assert!(!ended_early, "the run ended early: {result:?}");
    result.unwrap()
}

type Running = thread::JoinHandle<Result<Summary, Error>>;

#[test]
fn a_server_killed_and_restarted_under_a_running_consumer_loses_nothing() {
    const ENTRIES: u64 = 10_000;
    // After a restart the server takes half a second to load (a thousand keys, 0.5 ms each,
    // and as long for each command logged since the last rewrite of its append-only file),
    // and answers every command but a few with LOADING meanwhile.
    let mut server = DurableServer::start(&[
        "--key-load-delay",
        "500",
        "--loading-process-events-interval-bytes",
        "1024",
    ]);
    let (stream, group, output) = keys("restart");
    server.fill(&stream, 0, ENTRIES);
    let mut filler = redis::cmd("MSET");
    for key in 0..1000 {
        filler.arg(format!("filler-{key}")).arg(key);
    }
    filler.query::<()>(&mut server.connection()).unwrap();

    let pipeline = squares(&server.url, &output);
    // Entries whose read reply was lost with the server are pending under this consumer: it
    // takes them back once they have been idle for `claim_idle`.
    let config = ConsumerConfig::new(&server.url, &stream, &group, "c")
        .block(Duration::from_millis(20))
        .claim_idle(Duration::from_millis(200))
        .claim_every(Duration::from_millis(50))
        .reconnect(eager());
    let consumer = Consumer::connect(config).unwrap();
    let handle = consumer.handle();
    let running = thread::spawn(move || consumer.run(pipeline));

    // Killed at a quarter, restarted at once; killed again at half, restarted 300 ms later.
    for (progress, pause) in
        [(ENTRIES / 4, Duration::ZERO), (ENTRIES / 2, Duration::from_millis(300))]
    {
        wait_until("the consumer to make progress", PATIENCE, || {
            handle.acknowledged() >= progress || running.is_finished()
        });
        if running.is_finished() {
            panic!("the run ended early: {:?}", running.join().unwrap());
        }
        // Keeps the load short: the commands logged so far go into a snapshot.
        server.rewrite_aof();
        server.kill();
        thread::sleep(pause);
        server.start_again();
        server.wait_loaded();
        assert!(server.error_count("LOADING") > 0, "nobody asked while the server was loading");
    }

    let summary = stop_when_done(&server, (&stream, &group, &output), ENTRIES, (handle, running));
    assert!(written(&server, &output).iter().all(|&n| n < ENTRIES));
    assert!(summary.reconnects >= 2, "{summary:?}");
    assert_eq!(summary.acknowledged, summary.read + summary.claimed - summary.released);
    assert_eq!(server.pending(&stream, &group), 0);
}

#[test]
fn a_server_busy_running_a_script_is_waited_for() {
    const ENTRIES: u64 = 3000;
    let server = Server::own();
    // Other clients get BUSY once a script has run for 10 ms.
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("lua-time-limit")
        .arg(10)
        .query::<()>(&mut server.connection())
        .unwrap();
    let (stream, group, output) = keys("busy");
    server.fill(&stream, 0, ENTRIES);
    let pipeline = squares(&server.url, &output);
    let config = ConsumerConfig::new(&server.url, &stream, &group, "c")
        .block(Duration::from_millis(20))
        .reconnect(eager());
    let consumer = Consumer::connect(config).unwrap();
    let handle = consumer.handle();
    let running = thread::spawn(move || consumer.run(pipeline));
    wait_until("the consumer to make progress", PATIENCE, || {
        handle.acknowledged() >= ENTRIES / 4 || running.is_finished()
    });

    // A script that runs until it is killed; the consumer and the writer must have been
    // answered BUSY at least once before the test lets it end (the probe's BUSY replies are
    // not theirs).
    let mut probe = server.connection();
    let mut probe_busy = 0;
    let mut rounds = 0;
    while server.error_count("BUSY") <= probe_busy {
        rounds += 1;
        assert!(rounds <= 20, "the consumer never met the busy server");
        let url = server.url.clone();
        let script = thread::spawn(move || {
            let mut connection = redis::Client::open(url).unwrap().get_connection().unwrap();
            redis::cmd("EVAL").arg("while true do end").arg(0).query::<()>(&mut connection)
        });
        wait_until("the server to be busy", PATIENCE, || {
            let busy = redis::cmd("PING")
                .query::<String>(&mut probe)
                .is_err_and(|error| error.code() == Some("BUSY"));
            probe_busy += u64::from(busy);
            busy
        });
        // The consumer asks at least every 20 ms (its block time) or after a retry delay.
        thread::sleep(Duration::from_millis(300));
        redis::cmd("SCRIPT").arg("KILL").query::<()>(&mut probe).unwrap();
        assert!(script.join().unwrap().is_err(), "the script was killed");
    }

    let summary = stop_when_done(&server, (&stream, &group, &output), ENTRIES, (handle, running));
    assert_eq!(summary.acknowledged, ENTRIES);
    assert_eq!(server.pending(&stream, &group), 0);
}
