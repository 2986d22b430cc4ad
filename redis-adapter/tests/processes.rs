//! Two processes of the `scale_out` example share one consumer group on a real server.

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, documented_users, example, keys, number, summary, wait_with_limit};

const LIMIT: Duration = Duration::from_secs(120);

/// `scale_out` reading `stream` in `group` as `consumer`, writing to `output`.
fn consumer(
    server: &Server,
    (stream, group, output): &(String, String, String),
    name: &str,
) -> Command {
    consumer_at(&server.url, &server.url, &(stream.clone(), group.clone(), output.clone()), name)
}

/// As [`consumer`], reading at `url` and writing at `output_url` (each with its own user).
fn consumer_at(
    url: &str,
    output_url: &str,
    (stream, group, output): &(String, String, String),
    name: &str,
) -> Command {
    let mut command = Command::new(example());
    command
        .args(["--url", url, "--output-url", output_url])
        .args(["--stream", stream, "--group", group, "--output", output])
        .args(["--consumer", name])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// How many times each `n` appears in the output stream; checks each square.
fn outputs(server: &Server, output: &str) -> HashMap<u64, u32> {
    let mut seen = HashMap::new();
    for (id, fields) in server.entries(output) {
        let n: u64 = fields["n"].parse().unwrap();
        assert_eq!(fields["square"], (n * n).to_string(), "entry {id}");
        *seen.entry(n).or_insert(0) += 1;
    }
    seen
}

#[test]
fn two_processes_share_a_group_and_process_every_entry_exactly_once() {
    let server = Server::get();
    share(&server, &keys("share"), &server.url, &server.url);
}

#[test]
fn the_documented_least_privilege_users_run_the_scale_out_and_their_password_is_never_printed() {
    const PASSWORD: &str = "pw-6b1f0c93e2d4";
    let keys = keys("acl");
    let server = Server::with_args(&documented_users(&keys.0, &keys.2, PASSWORD));
    let reader = server.url_as("backflow-consumer", PASSWORD);
    let writer = server.url_as("backflow-writer", PASSWORD);
    for output in share(&server, &keys, &reader, &writer) {
        for stream in [&output.stdout, &output.stderr] {
            let text = String::from_utf8_lossy(stream);
            assert!(!text.contains(PASSWORD), "the password was printed: {text}");
            assert!(text.contains("summary:") || text.contains("square"), "{text}");
        }
    }
}

/// Two `scale_out` processes share `keys`' group, reading at `url` and writing at
/// `output_url`: every entry is processed exactly once. Returns their output.
fn share(
    server: &Server,
    keys: &(String, String, String),
    url: &str,
    output_url: &str,
) -> [std::process::Output; 2] {
    const ENTRIES: u64 = 6000;
    server.fill(&keys.0, 0, ENTRIES);
    let spawn = |name: &str| {
        consumer_at(url, output_url, keys, name)
            .args(["--until-done", "--work-us", "20", "--capacity", "64", "--batch", "32"])
            .spawn()
            .expect("the example starts")
    };
    let (a, b) = (spawn("a"), spawn("b"));
    let finished = [wait_with_limit(a, LIMIT), wait_with_limit(b, LIMIT)];
    for output in &finished {
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    let (a, b) = (summary(&finished[0].stdout), summary(&finished[1].stdout));
    for s in [&a, &b] {
        assert!(number(s, "read") > 0, "both processes took a share: {s:?}");
        assert_eq!(number(s, "claimed"), 0, "nothing to take over in the happy path: {s:?}");
        assert_eq!(number(s, "acknowledged"), number(s, "read"), "{s:?}");
        assert!(number(s, "delivered") > 0);
        assert_eq!(s["balanced"], "true");
    }
    assert_eq!(number(&a, "read") + number(&b, "read"), ENTRIES);

    let seen = outputs(server, &keys.2);
    assert_eq!(seen.len() as u64, ENTRIES, "every entry was written");
    assert!(seen.values().all(|&times| times == 1), "and exactly once");
    assert!(seen.keys().all(|&n| n < ENTRIES));
    assert_eq!(server.pending(&keys.0, &keys.1), 0);
    assert_eq!(server.group_info(&keys.0, &keys.1)["lag"], 0);
    finished
}

#[test]
fn entries_of_a_killed_process_are_claimed_by_the_other() {
    const ENTRIES: u64 = 3000;
    let server = Server::get();
    let keys = keys("kill");
    server.fill(&keys.0, 0, ENTRIES);

    // A slow consumer: it holds a pipeline full of entries when it dies.
    let mut victim = consumer(&server, &keys, "victim")
        .args(["--work-us", "1000", "--capacity", "32", "--batch", "16"])
        .spawn()
        .expect("the example starts");
    let deadline = Instant::now() + LIMIT;
    loop {
        std::thread::sleep(Duration::from_millis(5));
        assert!(Instant::now() < deadline, "the victim never got going");
        assert!(victim.try_wait().unwrap().is_none(), "the victim ended by itself");
        let Some(info) = server.try_group_info(&keys.0, &keys.1) else { continue };
        let (read, pending) = (info.get("entries-read").copied().unwrap_or(0), info["pending"]);
        // Mid-run: some entries done and acknowledged, some still pending.
        if pending > 0 && read > pending {
            break;
        }
    }
    victim.kill().expect("the victim can be killed");
    victim.wait().unwrap();
    let left_pending = server.pending(&keys.0, &keys.1);
    assert!(left_pending > 0, "the victim died holding entries");

    let survivor = consumer(&server, &keys, "survivor")
        .args(["--until-done", "--claim-idle-ms", "200", "--claim-every-ms", "50"])
        .spawn()
        .expect("the example starts");
    let survivor = wait_with_limit(survivor, LIMIT);
    assert!(survivor.status.success(), "{}", String::from_utf8_lossy(&survivor.stderr));
    let s = summary(&survivor.stdout);
    assert!(number(&s, "claimed") >= left_pending, "it took over the victim's entries: {s:?}");
    assert_eq!(number(&s, "acknowledged"), number(&s, "read") + number(&s, "claimed"), "{s:?}");

    // At least once: every entry written, some perhaps twice (written by the victim, which
    // died before acknowledging them); nothing pending.
    let seen = outputs(&server, &keys.2);
    assert_eq!(seen.len() as u64, ENTRIES, "every entry was written");
    assert_eq!(server.pending(&keys.0, &keys.1), 0, "everything acknowledged");
    assert_eq!(server.group_info(&keys.0, &keys.1)["lag"], 0);
}
