//! ACL users on a real server: refused passwords and missing permissions are typed errors,
//! not retried, that leave entries pending; and no password is ever printed.

mod common;

use std::time::{Duration, Instant};

use backflow::core::RetrySchedule;
use backflow::{Pipeline, Stage};
use backflow_redis::{Consumer, ConsumerConfig, Entry, Error, Record, Writer, WriterConfig};
use common::{Server, documented_users, keys};

/// A password no output may hold.
const SECRET: &str = "s3cret-7f41d9a2";

/// Well under the default reconnect schedule's ~6 s: a refusal is not retried.
const QUICK: Duration = Duration::from_secs(2);

/// A server with the README's two users (password [`SECRET`]) for `keys`, the consumer's
/// rule changed by `consumer_rule`.
fn server(
    keys: &(String, String, String),
    consumer_rule: impl Fn(Vec<String>) -> Vec<String>,
) -> Server {
    let users = documented_users(&keys.0, &keys.2, SECRET);
    let split = users.iter().skip(1).position(|arg| arg == "--user").expect("two users") + 1;
    let (consumer, writer) = users.split_at(split);
    let mut args = consumer_rule(consumer.to_vec());
    args.extend_from_slice(writer);
    Server::with_args(&args)
}

fn config(server: &Server, keys: &(String, String, String), password: &str) -> ConsumerConfig {
    ConsumerConfig::new(&server.url, &keys.0, &keys.1, "c")
        .username("backflow-consumer")
        .password(password)
        .block(Duration::from_millis(20))
}

/// A pipeline that takes every entry into its sink.
fn sink_all() -> Pipeline<Entry> {
    Pipeline::<Entry>::builder().stage("id", || |entry: Entry| entry).sink(|_| {}).build().unwrap()
}

#[test]
fn a_wrong_password_is_a_typed_auth_error_naming_the_user_at_once() {
    let keys = keys("wrongpass");
    let server = server(&keys, |rule| rule);
    let started = Instant::now();
    let error = Consumer::connect(config(&server, &keys, "not-the-password")).unwrap_err();
    assert!(started.elapsed() < QUICK, "retried for {:?}", started.elapsed());
    match &error {
        Error::Auth { user, .. } => assert_eq!(user, "backflow-consumer"),
        other => panic!("{other:?}"),
    }
    assert!(error.to_string().contains("backflow-consumer"), "{error}");
    // The group was not created: nothing was done.
    assert!(server.try_group_info(&keys.0, &keys.1).is_none());

    // The same in the URL, for the writer.
    let url = server.url_as("backflow-writer", "not-the-password");
    let mut stage = Writer::new(WriterConfig::new(url, &keys.2)).unwrap().stage();
    let started = Instant::now();
    let error = stage.process(vec![Record::new().field("n", "1")], &mut |_: Vec<String>| {});
    assert!(started.elapsed() < QUICK, "retried for {:?}", started.elapsed());
    assert!(
        matches!(&error, Err(Error::Auth { user, .. }) if user == "backflow-writer"),
        "{error:?}"
    );
}

#[test]
fn a_consumer_without_xack_stops_with_noperm_naming_xack_and_leaves_every_entry_pending() {
    const ENTRIES: u64 = 50;
    let keys = keys("noxack");
    let server = server(&keys, |rule| rule.into_iter().filter(|word| word != "+xack").collect());
    server.fill(&keys.0, 0, ENTRIES);
    let consumer = Consumer::connect(config(&server, &keys, SECRET)).expect("it may connect");
    let started = Instant::now();
    let error = consumer.run(sink_all()).unwrap_err();
    assert!(started.elapsed() < QUICK, "retried for {:?}", started.elapsed());
    match &error {
        Error::Permission { user, command, .. } => {
            assert_eq!((user.as_str(), command.as_str()), ("backflow-consumer", "XACK"));
        }
        other => panic!("{other:?}"),
    }
    assert!(error.to_string().contains("XACK"), "{error}");
    // Nothing acknowledged, nothing lost: every entry is in the stream and pending.
    assert_eq!(server.pending(&keys.0, &keys.1), ENTRIES);
    assert_eq!(server.entries(&keys.0).len() as u64, ENTRIES);
}

#[test]
fn a_writer_refused_a_key_gets_noperm_naming_xadd_and_its_entries_stay_pending() {
    const ENTRIES: u64 = 10;
    let keys = keys("nokey");
    let server = server(&keys, |rule| rule);
    server.fill(&keys.0, 0, ENTRIES);
    // The writer's rule covers `keys.2`, not this stream.
    let url = server.url_as("backflow-writer", SECRET);
    let writer = Writer::new(WriterConfig::new(url, format!("{}-elsewhere", keys.2))).unwrap();
    let pipeline = Pipeline::<Entry>::builder()
        .stage("record", || {
            |entry: Entry| vec![Record::new().field("n", "1").settles(entry.receipt())]
        })
        .stage("store", move || writer.stage())
        .on_error(backflow::ErrorPolicy::FailFast)
        .sink(|_| {})
        .build()
        .unwrap();
    let consumer = Consumer::connect(config(&server, &keys, SECRET)).unwrap();
    let error = consumer.run(pipeline).unwrap_err();
    let message = error.to_string();
    assert!(message.contains("XADD") && message.contains("backflow-writer"), "{message}");
    assert!(!message.contains(SECRET), "{message}");
    assert!(server.pending(&keys.0, &keys.1) > 0, "what was not written stays pending");
    assert_eq!(server.entries(&keys.0).len() as u64, ENTRIES);
}

#[test]
fn the_password_appears_in_no_debug_display_error_or_summary() {
    let keys = keys("redact");
    let server = server(&keys, |rule| rule);
    server.fill(&keys.0, 0, 20);
    let in_url = server.url_as("backflow-consumer", SECRET);
    let beside = config(&server, &keys, SECRET);
    let writer_config = WriterConfig::new(server.url_as("backflow-writer", SECRET), &keys.2);
    let writer_beside =
        WriterConfig::new(&server.url, &keys.2).username("backflow-writer").password(SECRET);
    let mut printed = vec![
        format!("{:?}", ConsumerConfig::new(&in_url, &keys.0, &keys.1, "c")),
        format!("{beside:?}"),
        format!("{writer_config:?}"),
        format!("{writer_beside:?}"),
    ];
    let writer = Writer::new(writer_config).unwrap();
    printed.push(format!("{writer:?}"));
    printed.push(format!("{:?}", writer.stage()));
    printed.push(format!("{:?}", Writer::new(writer_beside).unwrap()));

    // Errors: a wrong password (the secret itself), a refused command, an unreachable server,
    // a bad setting.
    let wrong = ConsumerConfig::new(
        server.url_as("backflow-consumer", SECRET).replace(SECRET, "x"),
        &keys.0,
        &keys.1,
        "c",
    )
    .password(SECRET.to_uppercase());
    let errors = [
        Consumer::connect(wrong).unwrap_err(),
        Consumer::connect(ConsumerConfig::new(&in_url, "forbidden", &keys.1, "c")).unwrap_err(),
        Consumer::connect(
            ConsumerConfig::new(format!("redis://app:{SECRET}@127.0.0.1:1/"), "s", "g", "c")
                .reconnect(
                    RetrySchedule::new(Duration::from_millis(1), Duration::from_millis(1), 1)
                        .unwrap(),
                ),
        )
        .unwrap_err(),
        Consumer::connect(ConsumerConfig::new(format!("redis://app:{SECRET}@host/"), "s", "", "c"))
            .unwrap_err(),
        Consumer::connect(
            ConsumerConfig::new(format!("redis://app:{SECRET}@host/"), "s", "g", "c")
                .tls(backflow_redis::Tls::ca_pem("")),
        )
        .unwrap_err(),
    ];
    assert!(matches!(errors[0], Error::Auth { .. }), "{:?}", errors[0]);
    assert!(matches!(errors[1], Error::Permission { .. }), "{:?}", errors[1]);
    assert!(matches!(errors[2], Error::Connection { .. }), "{:?}", errors[2]);
    for error in &errors {
        printed.push(format!("{error:?}"));
        printed.push(error.to_string());
    }

    let consumer =
        Consumer::connect(beside.stop_when_idle(Duration::from_millis(100))).expect("it connects");
    printed.push(format!("{consumer:?}"));
    printed.push(format!("{:?}", consumer.handle()));
    let summary = consumer.run(sink_all()).expect("it runs");
    assert_eq!(summary.read, 20);
    printed.push(format!("{summary:?}"));
    printed.push(summary.report.to_string());

    for text in &printed {
        assert!(
            !text.to_lowercase().contains(&SECRET.to_lowercase()),
            "the password is in: {text}"
        );
    }
    assert!(printed[0].contains("backflow-consumer:***@"), "{}", printed[0]);
}
