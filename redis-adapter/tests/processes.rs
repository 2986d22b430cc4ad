//! Two processes of the `scale_out` example share one consumer group on a real server.

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, example, keys, number, summary, wait_with_limit};

const LIMIT: Duration = Duration::from_secs(120);

/// `scale_out` reading `stream` in `group` as `consumer`, writing to `output`.
fn consumer(
    server: &Server,
    (stream, group, output): &(String, String, String),
    name: &str,
) -> Command {
    let mut command = Command::new(example());
    command
        .args(["--url", &server.url, "--stream", stream, "--group", group, "--output", output])
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
    const ENTRIES: u64 = 6000;
    let server = Server::get();
    let keys = keys("share");
    server.fill(&keys.0, 0, ENTRIES);
    let spawn = |name: &str| {
        consumer(&server, &keys, name)
            .args(["--until-done", "--work-us", "20", "--capacity", "64", "--batch", "32"])
            .spawn()
            .expect("the example starts")
    };
    let (a, b) = (spawn("a"), spawn("b"));
    let (a, b) = (wait_with_limit(a, LIMIT), wait_with_limit(b, LIMIT));
    for output in [&a, &b] {
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    let (a, b) = (summary(&a.stdout), summary(&b.stdout));
    for s in [&a, &b] {
        assert!(number(s, "read") > 0, "both processes took a share: {s:?}");
        assert_eq!(number(s, "claimed"), 0, "nothing to take over in the happy path: {s:?}");
        assert_eq!(number(s, "acknowledged"), number(s, "read"), "{s:?}");
        assert!(number(s, "delivered") > 0);
        assert_eq!(s["balanced"], "true");
    }
    assert_eq!(number(&a, "read") + number(&b, "read"), ENTRIES);

    let seen = outputs(&server, &keys.2);
    assert_eq!(seen.len() as u64, ENTRIES, "every entry was written");
    assert!(seen.values().all(|&times| times == 1), "and exactly once");
    assert!(seen.keys().all(|&n| n < ENTRIES));
    assert_eq!(server.pending(&keys.0, &keys.1), 0);
    assert_eq!(server.group_info(&keys.0, &keys.1)["lag"], 0);
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
