//! Runs the demo, `examples/logs.rs`, as a user would, and checks that its counts add up,
//! and as a user abusing it would: flags out of range, inputs and outputs that cannot be read
//! or written, a line with no end; each gets an error naming it, never a panic, a hang or a
//! process that grows with its input.
//!
//! The test asks cargo to build the example (a no-op after `cargo test`, which builds the
//! examples too) and runs it from `target/<profile>/examples`.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The example's executable, built (or found up to date) by cargo once per run of these
/// tests: `cargo test --test demo` alone does not rebuild examples.
fn demo() -> &'static PathBuf {
    static DEMO: OnceLock<PathBuf> = OnceLock::new();
    DEMO.get_or_init(|| {
        test_support::example("backflow", "logs").unwrap_or_else(|error| panic!("{error}"))
    })
}

/// Runs the demo with `args`; returns its stdout and its `summary:` line's fields.
fn run(args: &[&str]) -> (String, HashMap<String, String>) {
    let output = Command::new(demo()).args(args).output().expect("the demo runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed: {}\n{stdout}\n{stderr}", output.status);
    // stderr is not a terminal here: plain status lines, no escape codes.
    assert!(!stderr.contains('\x1b'), "escape codes on a non-terminal stderr:\n{stderr}");
    assert!(stderr.contains(" lines, "), "no status line on stderr:\n{stderr}");
    let fields = summary(&stdout);
    (stdout, fields)
}

/// The fields of the `summary:` line.
fn summary(stdout: &str) -> HashMap<String, String> {
    let summary = stdout
        .lines()
        .find_map(|line| line.strip_prefix("summary: "))
        .unwrap_or_else(|| panic!("no summary line in:\n{stdout}"));
    summary
        .split_whitespace()
        .map(|field| {
            let (key, value) = field.split_once('=').expect("key=value");
            (key.to_string(), value.to_string())
        })
        .collect()
}

/// Runs the demo with `args` and an empty stdin, expecting it to fail without printing
/// results; returns its stderr, for the caller to check that it names what was wrong.
fn refused(args: &[&Path]) -> String {
    let output = Command::new(demo()).args(args).stdin(Stdio::null()).output().expect("runs");
    let Output { status, stdout, stderr } = output;
    let (stdout, stderr) = (String::from_utf8_lossy(&stdout), String::from_utf8_lossy(&stderr));
    assert!(!status.success(), "{args:?} succeeded:\n{stdout}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{args:?} panicked:\n{stderr}");
    assert!(stderr.contains("error: "), "{args:?} printed no error:\n{stderr}");
    assert!(!stdout.contains("summary:"), "{args:?} printed results:\n{stdout}");
    stderr.into_owned()
}

/// A fresh directory of this test's own under cargo's temporary directory.
fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("demo-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("the target directory is writable");
    dir
}

fn count(fields: &HashMap<String, String>, key: &str) -> u64 {
    fields[key].parse().unwrap_or_else(|_| panic!("{key} is a count: {}", fields[key]))
}

#[test]
fn generated_lines_add_up() {
    let (stdout, f) = run(&["--items", "20000"]);
    let n = |key| count(&f, key);
    assert_eq!(n("lines"), 20_000);
    assert_eq!(n("lines"), n("parsed") + n("dead_lettered"));
    assert!(n("dead_lettered") > 0, "the generator writes some malformed lines");
    assert!(n("health_checks") > 0, "and some health checks");
    assert_eq!(n("parsed"), n("enriched") + n("health_checks"));
    // Every enriched record is in the merged totals, and the aggregate stage says so too.
    assert_eq!(n("aggregated"), n("enriched"));
    assert_eq!(n("aggregate_in"), n("enriched"));
    // The main line: 5xx to the alerts, the rest to the store; nothing dropped under Block.
    assert!(n("alerts") > 0);
    assert_eq!(n("alerts") + n("stored"), n("enriched"));
    assert_eq!((n("dropped"), n("report_dropped")), (0, 0));
    assert_eq!(f["balanced"], "true");
    assert!(stdout.contains("accounting: balanced"), "{stdout}");
    assert!(stdout.contains("bottleneck: "), "{stdout}");
    assert!(stdout.contains("GET /api/v1/products/:id"), "routes are normalized:\n{stdout}");
}

#[test]
fn a_slow_store_with_drop_oldest_drops_and_still_balances() {
    let args = ["--overflow", "drop-oldest", "--slow-sink-us", "50", "--items", "5000"];
    let (stdout, f) = run(&[&args[..], &["--capacity", "16"]].concat());
    let n = |key| count(&f, key);
    assert_eq!(n("lines"), n("parsed") + n("dead_lettered"));
    assert!(n("dropped") > 0, "a slow store with a 16-item queue drops:\n{stdout}");
    // The drop hook saw every drop the report counts.
    assert_eq!(n("dropped"), n("report_dropped"));
    // Only the store's queue drops: the totals are still exact, and every record went to the
    // alerts, to the store or was dropped in front of it.
    assert_eq!(n("aggregated"), n("enriched"));
    assert_eq!(n("alerts") + n("stored") + n("dropped"), n("enriched"));
    assert_eq!(f["balanced"], "true");
}

#[test]
fn a_slow_store_turns_pressure_on_and_is_the_bottleneck() {
    let (stdout, f) = run(&["--slow-sink-us", "200", "--items", "3000", "--capacity", "64"]);
    let n = |key| count(&f, key);
    assert!(n("pressure_transitions") > 0, "pressure never turned on:\n{stdout}");
    assert!(stdout.contains("bottleneck: sink: `encode` waits on it"), "{stdout}");
    assert_eq!((n("dropped"), n("report_dropped")), (0, 0));
    assert_eq!(n("alerts") + n("stored"), n("enriched"));
    assert_eq!(f["balanced"], "true");
}

#[test]
fn queues_bounded_in_bytes_fill_by_weight_and_still_balance() {
    // 4 KiB of lines or records per queue: a few dozen of them, far below the 1 024 items.
    let args = ["--max-queue-bytes", "4096", "--slow-sink-us", "50", "--items", "3000"];
    let (stdout, f) = run(&args);
    let n = |key| count(&f, key);
    assert!(stdout.contains("queues of 1024 items and 4,096 bytes"), "{stdout}");
    assert!(n("pressure_transitions") > 0, "the weight never reached a high mark:\n{stdout}");
    assert!(stdout.contains("/4.0KiB"), "the report shows each queue's weight:\n{stdout}");
    assert_eq!((n("dropped"), n("report_dropped")), (0, 0));
    assert_eq!(n("alerts") + n("stored"), n("enriched"));
    assert_eq!(f["balanced"], "true");
}

#[test]
fn numeric_flags_out_of_range_are_refused_before_anything_runs() {
    let max = u64::MAX.to_string();
    let cases = [
        ("--slow-sink-us", max.as_str()),
        ("--slow-sink-us", "1000001"),
        ("--items", "0"),
        ("--items", &max),
        ("--workers", "0"),
        ("--workers", &max),
        ("--aggregate-workers", "0"),
        ("--aggregate-workers", "100000"),
        ("--capacity", "0"),
        ("--capacity", &max),
        ("--refresh-ms", "0"),
        ("--refresh-ms", &max),
        ("--max-line-bytes", "0"),
        ("--max-line-bytes", &max),
        ("--max-queue-bytes", "0"),
        ("--max-queue-bytes", "1099511627777"),
    ];
    for (flag, value) in cases {
        // Lines from an empty stdin: a value that slipped through would end the run at once
        // instead of hanging the test.
        let args = [flag, value, "-"].map(Path::new);
        let stderr = refused(&args);
        assert!(
            stderr.contains("invalid value") && stderr.contains(flag) && stderr.contains(value),
            "{flag} {value}: no message naming the flag and the value:\n{stderr}"
        );
    }
    // The largest values allowed run.
    let largest = [
        ["--slow-sink-us", "1000000"],
        ["--items", "1000000000"],
        ["--workers", "64"],
        ["--aggregate-workers", "64"],
        ["--capacity", "65536"],
        ["--refresh-ms", "60000"],
        ["--max-line-bytes", "16777216"],
    ];
    let output =
        Command::new(demo()).args(largest.as_flattened()).arg("-").stdin(Stdio::null()).output();
    let output = output.expect("the demo runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(count(&summary(&String::from_utf8_lossy(&output.stdout)), "lines"), 0);
}

#[test]
fn an_input_that_cannot_be_read_is_an_error_naming_it() {
    let dir = scratch("unreadable-input");
    let stderr = refused(&[&dir]);
    assert!(stderr.contains(&format!("error: cannot read {}", dir.display())), "{stderr}");
    let missing = dir.join("missing.log");
    let stderr = refused(&[&missing]);
    assert!(stderr.contains(&format!("error: cannot open {}", missing.display())), "{stderr}");
}

#[test]
fn a_prometheus_file_that_cannot_be_created_is_refused_before_the_run() {
    let dir = scratch("prometheus");
    let unwritable = dir.join("no-such-dir").join("stats.prom");
    let stderr =
        refused(&[Path::new("--items"), Path::new("2000"), Path::new("--prometheus"), &unwritable]);
    assert!(stderr.contains(&format!("--prometheus {}", unwritable.display())), "{stderr}");
    assert!(!stderr.contains(" lines, "), "it ran first:\n{stderr}");
    // A file that can be created gets the final stats.
    let file = dir.join("stats.prom");
    let (stdout, _) = run(&["--items", "2000", "--prometheus", file.to_str().expect("UTF-8")]);
    let text = std::fs::read_to_string(&file).expect("the stats file was written");
    assert!(text.contains(r#"stage="parse""#), "{text}");
    assert!(stdout.contains(&format!("written to {}", file.display())), "{stdout}");
}

/// The high-water mark of a process's resident memory, from `/proc/<pid>/status`.
#[cfg(target_os = "linux")]
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc");
    let line = status.lines().find_map(|line| line.strip_prefix("VmHWM:")).expect("VmHWM");
    line.trim().trim_end_matches("kB").trim().parse().expect("VmHWM in kB")
}

#[cfg(target_os = "linux")]
#[test]
fn a_line_over_the_cap_is_dead_lettered_without_being_buffered() {
    const LONG: usize = 64 << 20;
    let mut child = Command::new(demo())
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the demo runs");
    let mut stdin = child.stdin.take().expect("piped");
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..LONG / chunk.len() {
        stdin.write_all(&chunk).expect("the demo reads stdin");
    }
    // The demo has read all of the long line but what the pipe holds (64 KiB): a reader that
    // keeps a line whole holds 64 MiB now. The process is still running (stdin is open).
    let peak = peak_rss_kib(child.id());
    let good = "203.0.113.9 - - [10/Oct/2024:13:55:36 +0000] \"GET /api/v1/users/12 HTTP/1.1\" \
                200 1234 \"-\" \"curl/8.5.0\" 0.012";
    write!(stdin, "\n{good}\n").expect("the demo reads stdin");
    drop(stdin);
    let output = child.wait_with_output().expect("the demo ends");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(peak < 32 << 10, "peak RSS {peak} KiB while reading a {LONG}-byte line");
    let f = summary(&stdout);
    let n = |key| count(&f, key);
    assert_eq!((n("lines"), n("parsed"), n("dead_lettered")), (2, 1, 1), "{stdout}");
    assert!(stdout.contains(&format!("line too long ({LONG} bytes)")), "{stdout}");
    assert!(stdout.contains("xxxxxxxxxxxxxxxx"), "the dead letter quotes the line:\n{stdout}");
}

#[cfg(target_os = "linux")]
#[test]
fn a_stdout_that_cannot_be_written_is_an_error_naming_it() {
    // Every write to /dev/full fails with "No space left on device".
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").expect("/dev/full");
    let output = Command::new(demo()).args(["--items", "100"]).stdout(full).output();
    let output = output.expect("the demo runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("error: cannot write the results to stdout: "), "{stderr}");
}

#[test]
fn the_graph_is_written_as_dot_with_every_node_and_edge_of_the_demo() {
    let dir = scratch("graph");
    let unwritable = dir.join("no-such-dir").join("graph.dot");
    let stderr =
        refused(&[Path::new("--items"), Path::new("2000"), Path::new("--graph"), &unwritable]);
    assert!(stderr.contains(&format!("--graph {}", unwritable.display())), "{stderr}");
    assert!(!stderr.contains(" lines, "), "it ran first:\n{stderr}");

    let file = dir.join("graph.dot");
    let (stdout, _) = run(&["--items", "2000", "--graph", file.to_str().expect("UTF-8")]);
    assert!(stdout.contains(&format!("graph: written to {}", file.display())), "{stdout}");
    let dot = std::fs::read_to_string(&file).expect("the graph was written");
    assert!(dot.starts_with("digraph backflow {\n") && dot.ends_with("}\n"), "{dot}");
    // input, parse, enrich, aggregate, encode, the broadcast and the route, and the sinks
    // `sink`, `totals` and `alerts`; nine edges between them.
    let statements: Vec<&str> = dot.lines().map(str::trim).collect();
    let edges = statements.iter().filter(|s| s.contains(" -> ")).count();
    let nodes = statements
        .iter()
        .filter(|s| !s.contains(" -> ") && s.contains(" [label="))
        .filter(|s| !s.starts_with("graph ") && !s.starts_with("node ") && !s.starts_with("edge "))
        .count();
    assert_eq!((nodes, edges), (10, 9), "{dot}");
    for name in ["parse", "enrich ×2", "aggregate", "encode", "totals", "alerts", "sink"] {
        assert!(dot.contains(&format!("label=\"{name}\\n")), "no node {name}:\n{dot}");
    }
}

#[test]
fn metrics_addr_without_the_http_feature_says_how_to_build_it() {
    // This demo is built without backflow's features.
    let stderr = refused(&[Path::new("--metrics-addr"), Path::new("127.0.0.1:0"), Path::new("-")]);
    assert!(stderr.contains("--metrics-addr needs backflow's `http` feature"), "{stderr}");
    assert!(stderr.contains("--features http"), "{stderr}");
    // `--hold` only holds the endpoint open: alone, it is refused.
    let stderr = refused(&[Path::new("--hold"), Path::new("-")]);
    assert!(stderr.contains("--hold") && stderr.contains("--metrics-addr"), "{stderr}");
}

#[test]
fn a_thread_budget_moves_workers_within_it_and_still_adds_up() {
    let (stdout, f) = run(&["--items", "20000", "--threads", "6"]);
    let n = |key| count(&f, key);
    assert_eq!(n("lines"), n("parsed") + n("dead_lettered"));
    assert_eq!(n("aggregated"), n("enriched"));
    assert_eq!(n("alerts") + n("stored"), n("enriched"));
    assert_eq!(f["balanced"], "true");
    let workers: Vec<usize> = f["workers"].split('/').map(|w| w.parse().unwrap()).collect();
    assert_eq!(workers.len(), 4, "{stdout}");
    assert!(workers.iter().all(|&w| w >= 1) && workers.iter().sum::<usize>() <= 6, "{stdout}");
    // Each move is listed under the final workers, one line each.
    let listed = stdout.lines().filter(|line| line.contains(" workers (")).count();
    assert_eq!(listed as u64, n("moves"), "{stdout}");
    assert!(stdout.contains("workers: parse "), "{stdout}");
    // A budget below one worker per stage, out of range, or with fixed worker counts: refused.
    let stderr = refused(&["--threads", "3", "-"].map(Path::new));
    assert!(stderr.contains("threads: a budget of 3"), "{stderr}");
    for value in ["0", "257"] {
        let stderr = refused(&["--threads", value, "-"].map(Path::new));
        assert!(stderr.contains("invalid value") && stderr.contains(value), "{stderr}");
    }
    let stderr = refused(&["--threads", "6", "--workers", "2", "-"].map(Path::new));
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}
