//! One consumer process against two sharing a consumer group, on one Redis server.
//!
//! Workload: a stream of N small entries (`n` = 0, 1, …; N = 1 000 000, or
//! `BACKFLOW_BENCH_REDIS_ITEMS`) is filled with `scale_out --fill N` before the clock starts.
//! Then each contender consumes it to the end with the `scale_out` example in
//! `--no-output --until-done` mode (a parse → square pipeline into a counting sink):
//!
//! - "1 process": one consumer process reads the whole stream;
//! - "2 processes": two consumer processes, started together, share the group.
//!
//! A run's time goes from spawning the first process to the last one exiting. Every run uses
//! a fresh stream and group (deleted afterwards) and is checked: the processes' `read` counts
//! add up to N, none claimed anything, and each acknowledged and delivered what it read.
//! Contenders alternate (1, 2, 2, 1, …) over `BACKFLOW_BENCH_ROUNDS` rounds (default 5).
//!
//! The report gives the median items/s with min–max, the ratio of the medians, each process's
//! time breakdown from its `summary:` line (averaged over processes and rounds), and the CPU
//! time the consumer processes and (when the bench started it) `redis-server` used during the
//! runs: a server near 100 % of one core is the limit (its commands run on one thread), and
//! so are the machine's cores when the two add up to all of them.
//!
//! The server is `BACKFLOW_REDIS_URL` if set, otherwise a `redis-server` of the bench's own on
//! a free loopback port without persistence, killed at the end (test-support's
//! `RedisServer`, as in the integration tests). The example is built in release first.
//!
//! ```text
//! cargo bench -p backflow-redis --bench scale_out
//! BACKFLOW_BENCH_REDIS_ITEMS=100000 BACKFLOW_BENCH_ROUNDS=3 cargo bench -p backflow-redis --bench scale_out
//! ```
//!
//! The markdown report is printed and written to `target/redis-bench-report.md`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use test_support::{RedisServer, example};

/// Entries in the stream of each run, unless `BACKFLOW_BENCH_REDIS_ITEMS` says otherwise.
const DEFAULT_ITEMS: u64 = 1_000_000;
/// Runs of each contender, unless `BACKFLOW_BENCH_ROUNDS` says otherwise.
const DEFAULT_ROUNDS: usize = 5;
/// The contenders: consumer processes sharing the group.
const CONTENDERS: [usize; 2] = [1, 2];
/// A run taking longer than this fails (its processes are killed).
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a run looks whether its processes have exited.
const EXIT_POLL: Duration = Duration::from_millis(1);
/// The consumer group of every run (each run has a stream of its own).
const GROUP: &str = "bench";

fn main() {
    let items: u64 = env_or("BACKFLOW_BENCH_REDIS_ITEMS", DEFAULT_ITEMS);
    let rounds: usize = env_or("BACKFLOW_BENCH_ROUNDS", DEFAULT_ROUNDS);
    assert!(items > 0 && rounds > 0, "items and rounds must be at least 1");
    let target = target_dir();
    let server = Server::get();
    let bench = Bench {
        example: example("backflow-redis", "scale_out").unwrap_or_else(|error| panic!("{error}")),
        server,
        items,
        ticks_per_second: clock_ticks_per_second(),
    };

    let mut runs: BTreeMap<usize, Vec<Run>> = BTreeMap::new();
    let mut run_id = 0;
    for round in 0..rounds {
        for processes in round_order(round) {
            run_id += 1;
            let run =
                bench.run(processes, &format!("backflow-bench-{}-{run_id}", std::process::id()));
            eprintln!("round {}: {}", round + 1, run.describe(items));
            runs.entry(processes).or_default().push(run);
        }
    }

    let (url, owned) = (&bench.server.url, bench.server.pid().is_some());
    let report = report(items, rounds, url, owned, &runs);
    println!("\n{report}");
    let path = target.join("redis-bench-report.md");
    std::fs::write(&path, &report).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    eprintln!("report written to {}", path.display());
}

/// The environment variable `name` parsed, or `default` when it is not set.
fn env_or<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value.trim().parse().unwrap_or_else(|_| panic!("{name}={value} is not valid")),
        Err(_) => default,
    }
}

/// The contenders in the order of round `round`: the first one rotates (1, 2, 2, 1, …).
fn round_order(round: usize) -> Vec<usize> {
    let mut order = CONTENDERS.to_vec();
    order.rotate_left(round % CONTENDERS.len());
    order
}

/// The target directory: this bench runs as `<target>/release/deps/scale_out-<hash>`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the bench's own path");
    exe.ancestors().nth(3).expect("the bench runs from <target>/release/deps").to_path_buf()
}

/// The server the runs use: the shared one, or the bench's own (stopped when dropped).
struct Server {
    url: String,
    own: Option<RedisServer>,
}

impl Server {
    /// The server `BACKFLOW_REDIS_URL` names, else one of the bench's own.
    fn get() -> Self {
        match RedisServer::shared_url() {
            Some(url) => Self { url, own: None },
            None => {
                let own = RedisServer::start().unwrap_or_else(|error| panic!("{error}"));
                Self { url: own.url().to_string(), own: Some(own) }
            }
        }
    }

    /// The server's process id, when the bench started it.
    fn pid(&self) -> Option<u32> {
        self.own.as_ref().map(RedisServer::pid)
    }
}

/// What runs need: the example, the server, and the size of the stream.
struct Bench {
    example: PathBuf,
    server: Server,
    items: u64,
    /// The unit of the CPU times in `/proc/*/stat`.
    ticks_per_second: f64,
}

impl Bench {
    /// One checked run of `processes` consumer processes over a fresh stream `stream`.
    fn run(&self, processes: usize, stream: &str) -> Run {
        self.fill(stream);
        let server_before = self.server.pid().map(|pid| self.server_cpu(pid));
        let consumers_before = self.children_cpu();
        let started = Instant::now();
        let running = Processes(
            (1..=processes).map(|k| self.spawn_consumer(stream, &format!("c{k}"))).collect(),
        );
        let finished = running.wait(RUN_TIMEOUT);
        let elapsed = started.elapsed();
        let consumers_cpu = self.children_cpu() - consumers_before;
        let server_cpu =
            server_before.zip(self.server.pid()).map(|(before, pid)| self.server_cpu(pid) - before);
        self.delete(stream);
        let summaries = check(&finished, self.items);
        Run { processes, elapsed, summaries, server_cpu, consumers_cpu }
    }

    /// CPU time (user + system) the server process has used so far.
    fn server_cpu(&self, pid: u32) -> Duration {
        self.stat_cpu(&format!("/proc/{pid}/stat"), [14, 15])
    }

    /// CPU time (user + system) of the bench's exited and waited-for children so far: the
    /// consumer processes (and the `--fill` ones, which are done before a run starts).
    fn children_cpu(&self) -> Duration {
        self.stat_cpu("/proc/self/stat", [16, 17])
    }

    /// The sum of two clock-tick fields (numbered as in proc(5), from 1) of a stat file.
    fn stat_cpu(&self, path: &str, fields: [usize; 2]) -> Duration {
        let stat = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        // The command name, field 2, is in parentheses and may hold spaces: count from after it.
        let (_, after_name) = stat.rsplit_once(')').expect("a /proc stat line");
        let values: Vec<&str> = after_name.split_whitespace().collect();
        let ticks: u64 = fields
            .iter()
            .map(|&field| values[field - 3].parse::<u64>().expect("a clock tick count"))
            .sum();
        Duration::from_secs_f64(ticks as f64 / self.ticks_per_second)
    }

    /// Adds the run's entries to `stream` (not timed).
    fn fill(&self, stream: &str) {
        let output = Command::new(&self.example)
            .args([
                "--fill",
                &self.items.to_string(),
                "--url",
                &self.server.url,
                "--stream",
                stream,
            ])
            .output()
            .expect("running scale_out --fill");
        assert!(
            output.status.success(),
            "scale_out --fill failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn spawn_consumer(&self, stream: &str, consumer: &str) -> Running {
        let mut child = Command::new(&self.example)
            .args(["--url", &self.server.url, "--stream", stream, "--group", GROUP])
            .args(["--consumer", consumer, "--no-output", "--until-done"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning a scale_out consumer");
        let stdout = read_all(child.stdout.take().expect("piped stdout"));
        let stderr = read_all(child.stderr.take().expect("piped stderr"));
        Running { name: consumer.to_string(), child, stdout, stderr }
    }

    /// Frees the run's stream (and its group) on the server.
    fn delete(&self, stream: &str) {
        let mut connection = redis::Client::open(self.server.url.as_str())
            .and_then(|client| client.get_connection())
            .expect("a connection to the server");
        redis::cmd("DEL").arg(stream).query::<()>(&mut connection).expect("deleting the stream");
    }
}

/// Reads a child's output to the end on a thread of its own (so the pipe never fills up).
fn read_all(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

/// A consumer process of a run, its output being collected.
struct Running {
    name: String,
    child: Child,
    stdout: JoinHandle<String>,
    stderr: JoinHandle<String>,
}

impl Running {
    fn finish(self, status: ExitStatus) -> Finished {
        let stdout = self.stdout.join().expect("the stdout reader");
        let stderr = self.stderr.join().expect("the stderr reader");
        Finished { name: self.name, status, stdout, stderr }
    }
}

/// A consumer process that has exited.
struct Finished {
    name: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// The consumer processes of a run; those still running are killed when dropped.
struct Processes(Vec<Running>);

impl Processes {
    /// Waits for every process to exit; kills them all and panics after `timeout`.
    fn wait(mut self, timeout: Duration) -> Vec<Finished> {
        let started = Instant::now();
        let mut statuses: Vec<Option<ExitStatus>> = vec![None; self.0.len()];
        while statuses.iter().any(Option::is_none) {
            if started.elapsed() > timeout {
                self.kill();
                let outputs: Vec<String> =
                    self.finish_all(&statuses).iter().map(describe).collect();
                panic!("the run timed out after {timeout:?}:\n{}", outputs.join("\n"));
            }
            for (running, status) in self.0.iter_mut().zip(&mut statuses) {
                if status.is_none() {
                    *status = running.child.try_wait().expect("checking a consumer");
                }
            }
            thread::sleep(EXIT_POLL);
        }
        self.finish_all(&statuses)
    }

    fn kill(&mut self) {
        for running in &mut self.0 {
            let _ = running.child.kill();
        }
    }

    /// Collects the outputs; a process without a status is waited for (it has been killed).
    fn finish_all(&mut self, statuses: &[Option<ExitStatus>]) -> Vec<Finished> {
        let processes = std::mem::take(&mut self.0);
        processes
            .into_iter()
            .zip(statuses)
            .map(|(mut running, status)| {
                let status = status.unwrap_or_else(|| running.child.wait().expect("a consumer"));
                running.finish(status)
            })
            .collect()
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.kill();
        for running in &mut self.0 {
            let _ = running.child.wait();
        }
    }
}

fn describe(process: &Finished) -> String {
    format!(
        "--- {} ({})\nstdout:\n{}\nstderr:\n{}",
        process.name, process.status, process.stdout, process.stderr
    )
}

/// What a consumer process reported on its `summary:` line.
#[derive(Debug, Clone, Copy, Default)]
struct ProcessSummary {
    read: u64,
    claimed: u64,
    acknowledged: u64,
    delivered: u64,
    elapsed_ms: u64,
    reading_ms: u64,
    waiting_ms: u64,
    pushing_ms: u64,
}

impl ProcessSummary {
    /// Parses the `summary: key=value …` line of a process's standard output.
    fn parse(stdout: &str) -> Option<Self> {
        let line = stdout.lines().find_map(|line| line.strip_prefix("summary:"))?;
        let fields: HashMap<&str, &str> =
            line.split_whitespace().filter_map(|pair| pair.split_once('=')).collect();
        let get = |key: &str| fields.get(key).and_then(|value| value.parse().ok());
        if fields.get("balanced") != Some(&"true") {
            return None;
        }
        Some(Self {
            read: get("read")?,
            claimed: get("claimed")?,
            acknowledged: get("acknowledged")?,
            delivered: get("delivered")?,
            elapsed_ms: get("elapsed_ms")?,
            reading_ms: get("reading_ms")?,
            waiting_ms: get("waiting_ms")?,
            pushing_ms: get("pushing_ms")?,
        })
    }
}

/// Checks a run's processes and returns their summaries; panics with their output if they
/// failed, or if their counts do not add up to `items` entries each read, delivered and
/// acknowledged once.
fn check(finished: &[Finished], items: u64) -> Vec<ProcessSummary> {
    let fail = |why: String| -> ! {
        let outputs: Vec<String> = finished.iter().map(describe).collect();
        panic!("{why}\n{}", outputs.join("\n"))
    };
    let mut summaries = Vec::with_capacity(finished.len());
    for process in finished {
        if !process.status.success() {
            fail(format!("consumer {} failed: {}", process.name, process.status));
        }
        let Some(summary) = ProcessSummary::parse(&process.stdout) else {
            fail(format!("consumer {}: no complete, balanced summary line", process.name));
        };
        let ProcessSummary { read, claimed, acknowledged, delivered, .. } = summary;
        if claimed != 0 || acknowledged != read || delivered != read {
            fail(format!(
                "consumer {}: read={read} claimed={claimed} acknowledged={acknowledged} \
                 delivered={delivered} (expected claimed=0, acknowledged=delivered=read)",
                process.name
            ));
        }
        summaries.push(summary);
    }
    let read: u64 = summaries.iter().map(|summary| summary.read).sum();
    if read != items {
        fail(format!("the consumers read {read} entries in all, not {items}"));
    }
    summaries
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`; 100 on Linux if that fails).
fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

/// One checked run of a contender.
struct Run {
    processes: usize,
    elapsed: Duration,
    summaries: Vec<ProcessSummary>,
    /// CPU time the server used during the run, when the bench started it.
    server_cpu: Option<Duration>,
    /// CPU time the consumer processes used, all together.
    consumers_cpu: Duration,
}

impl Run {
    fn items_per_second(&self, items: u64) -> f64 {
        items as f64 / self.elapsed.as_secs_f64()
    }

    fn describe(&self, items: u64) -> String {
        let reads: Vec<String> = self.summaries.iter().map(|s| s.read.to_string()).collect();
        let mut text = format!(
            "{}: {:.3} s, {:.0} items/s, read {}",
            contender_name(self.processes),
            self.elapsed.as_secs_f64(),
            self.items_per_second(items),
            reads.join(" + ")
        );
        let _ = write!(text, ", consumers CPU {:.0} ms", self.consumers_cpu.as_secs_f64() * 1e3);
        if let Some(cpu) = self.server_cpu {
            let _ = write!(text, ", redis-server CPU {:.0} ms", cpu.as_secs_f64() * 1e3);
        }
        text
    }
}

fn contender_name(processes: usize) -> String {
    match processes {
        1 => "1 process".to_string(),
        n => format!("{n} processes"),
    }
}

/// The middle value of `values` (the mean of the two middle ones for an even count).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    } else {
        sorted[middle]
    }
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, count) = values.fold((0.0, 0_u32), |(sum, count), value| (sum + value, count + 1));
    sum / f64::from(count.max(1))
}

/// The markdown report: throughput, the per-process time breakdown, and the server's CPU.
fn report(
    items: u64,
    rounds: usize,
    url: &str,
    own_server: bool,
    runs: &BTreeMap<usize, Vec<Run>>,
) -> String {
    let server = if own_server { "own redis-server" } else { "BACKFLOW_REDIS_URL" };
    let mut text = format!(
        "## backflow-redis scale-out: N = {items} entries, {rounds} rounds ({server} at {url})\n\n"
    );
    text += &throughput_table(items, runs);
    text += "\n";
    text += &breakdown_table(runs);
    text += "\n";
    text += &cpu_table(runs, own_server);
    text
}

fn throughput_table(items: u64, runs: &BTreeMap<usize, Vec<Run>>) -> String {
    let mut text = String::from(
        "| contender | median items/s | min–max items/s | median time |\n|---|---:|---:|---:|\n",
    );
    for (&processes, runs) in runs {
        let rates: Vec<f64> = runs.iter().map(|run| run.items_per_second(items)).collect();
        let times: Vec<f64> = runs.iter().map(|run| run.elapsed.as_secs_f64()).collect();
        let (min, max) =
            rates.iter().fold((f64::MAX, 0.0_f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
        let _ = writeln!(
            text,
            "| {} | {:.0} | {min:.0}–{max:.0} | {:.3} s |",
            contender_name(processes),
            median(&rates),
            median(&times)
        );
    }
    let median_rate = |processes: usize| {
        runs.get(&processes).map(|runs| {
            median(&runs.iter().map(|run| run.items_per_second(items)).collect::<Vec<_>>())
        })
    };
    if let (Some(one), Some(two)) = (median_rate(1), median_rate(2)) {
        let _ = writeln!(text, "\nRatio of medians, 2 processes / 1 process: {:.2}", two / one);
    }
    text
}

/// Each process's time breakdown, averaged over the processes of all rounds.
fn breakdown_table(runs: &BTreeMap<usize, Vec<Run>>) -> String {
    let mut text = String::from(
        "Per process (mean over processes and rounds):\n\n\
         | contender | read | elapsed_ms | reading_ms | waiting_ms | pushing_ms |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for (&processes, runs) in runs {
        let summaries: Vec<&ProcessSummary> = runs.iter().flat_map(|run| &run.summaries).collect();
        let average = |field: fn(&ProcessSummary) -> u64| {
            mean(summaries.iter().map(|summary| field(summary) as f64))
        };
        let _ = writeln!(
            text,
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            contender_name(processes),
            average(|s| s.read),
            average(|s| s.elapsed_ms),
            average(|s| s.reading_ms),
            average(|s| s.waiting_ms),
            average(|s| s.pushing_ms),
        );
    }
    text
}

/// CPU time of the server and of the consumer processes per run, and as a share of one
/// core over the run's wall time (the machine has `available_parallelism` cores in all).
fn cpu_table(runs: &BTreeMap<usize, Vec<Run>>, own_server: bool) -> String {
    let cores = thread::available_parallelism().map_or(1, usize::from);
    let mut text = format!(
        "CPU (user + system) per run, median over rounds; % is of one core over the run's wall \
         time ({cores} cores):\n\n\
         | contender | redis-server | consumer processes |\n|---|---:|---:|\n"
    );
    for (&processes, runs) in runs {
        let server = if own_server {
            cpu_cell(runs, |run| run.server_cpu.unwrap_or_default())
        } else {
            "not measured".to_string()
        };
        let consumers = cpu_cell(runs, |run| run.consumers_cpu);
        let _ = writeln!(text, "| {} | {server} | {consumers} |", contender_name(processes));
    }
    text
}

/// "<median CPU time> (<median share of wall time>)" of the CPU time `cpu` picks from a run.
fn cpu_cell(runs: &[Run], cpu: fn(&Run) -> Duration) -> String {
    let times: Vec<f64> = runs.iter().map(|run| cpu(run).as_secs_f64()).collect();
    let shares: Vec<f64> =
        runs.iter().map(|run| cpu(run).as_secs_f64() / run.elapsed.as_secs_f64()).collect();
    format!("{:.0} ms ({:.0} %)", median(&times) * 1e3, median(&shares) * 100.0)
}
