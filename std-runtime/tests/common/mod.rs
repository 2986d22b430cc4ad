//! Helpers shared by the runtime's integration tests.
#![allow(dead_code)]

use std::env;
use std::fmt;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, PoisonError, mpsc};
use std::thread;
use std::time::{Duration, Instant};

/// The threads of this process whose OS name starts with `prefix` (Linux truncates thread
/// names to 15 bytes, so tests use short stage names): `(tid, state)` with the state letter
/// from `/proc/self/task/<tid>/stat` (`R` running, `S` sleeping, …).
pub fn threads(prefix: &str) -> Vec<(String, char)> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc/self/task").expect("/proc/self/task is readable") {
        let tid = entry.unwrap().file_name().to_string_lossy().into_owned();
        let Ok(comm) = fs::read_to_string(format!("/proc/self/task/{tid}/comm")) else {
            continue; // the thread exited meanwhile
        };
        if !comm.trim_end().starts_with(prefix) {
            continue;
        }
        let Ok(stat) = fs::read_to_string(format!("/proc/self/task/{tid}/stat")) else {
            continue;
        };
        // `pid (comm) state ...`: the state follows the last ')'.
        let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim().chars().next());
        found.push((tid, state.unwrap_or('?')));
    }
    found
}

/// The kernel marks a task that is in `do_exit` with this flag (`PF_EXITING`).
const PF_EXITING: u64 = 0x4;

/// [`threads`] that are not already exiting, as `tid name`. A thread that has been joined can
/// stay listed in `/proc` for a moment while the kernel finishes its exit; it is marked
/// `PF_EXITING` from before the join returns, so it is told apart without waiting.
pub fn live_threads(prefix: &str) -> Vec<String> {
    threads(prefix)
        .into_iter()
        .filter_map(|(tid, _)| {
            let stat = fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            // After the name: state, ppid, pgrp, session, tty, tpgid, flags, ...
            let flags: u64 = rest.split_whitespace().nth(6)?.parse().ok()?;
            let name = head.split_once('(').map_or("?", |(_, name)| name);
            (flags & PF_EXITING == 0).then(|| format!("{tid} {name}"))
        })
        .collect()
}

/// Asserts that no worker thread (`backflow:<stage>:<n>`) of any pipeline is alive. Only
/// meaningful where no other test runs pipelines at the same time: in a [`ChildTest`].
pub fn assert_no_backflow_threads() {
    let left = live_threads("backflow");
    assert!(left.is_empty(), "backflow threads left behind: {left:?}");
}

/// How many times thread `tid` of this process has been switched out, voluntarily or not.
pub fn switches(tid: &str) -> u64 {
    let status =
        fs::read_to_string(format!("/proc/self/task/{tid}/status")).expect("the thread is alive");
    status
        .lines()
        .filter(|line| line.contains("ctxt_switches:"))
        .map(|line| line.split_whitespace().last().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// Waits (polling, up to a minute) until `condition` holds; panics with `what` otherwise.
pub fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A gate a stage or sink can be held at: closed until `open()`.
#[derive(Clone, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    pub fn wait(&self) {
        let (open, cond) = &*self.0;
        let mut open = open.lock().unwrap();
        while !*open {
            open = cond.wait(open).unwrap();
        }
    }

    pub fn open(&self) {
        let (open, cond) = &*self.0;
        *open.lock().unwrap_or_else(PoisonError::into_inner) = true;
        cond.notify_all();
    }

    /// Opens the gate when the guard drops: declared after the pipeline, it lets a test that
    /// fails while the gate is closed end with its panic instead of hanging in the
    /// pipeline's drop.
    pub fn is_open(&self) -> bool {
        *self.0.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn opened_on_drop(&self) -> OpensGate {
        OpensGate(self.clone())
    }
}

/// Opens its gate on drop; see [`Gate::opened_on_drop`].
pub struct OpensGate(Gate);

impl Drop for OpensGate {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// A sink that raises `entered` and waits at `gate` on every item, then records it in
/// `delivered`: the first item holds the last stage's worker until the gate opens.
pub fn held_sink<T: Send + 'static>(
    gate: &Gate,
    entered: &Flag,
    delivered: &Arc<Mutex<Vec<T>>>,
) -> impl FnMut(T) + Send + 'static {
    let (gate, entered, delivered) = (gate.clone(), entered.clone(), Arc::clone(delivered));
    move |item| {
        entered.raise();
        gate.wait();
        delivered.lock().unwrap().push(item);
    }
}

/// A one-shot flag a stage or sink raises when it gets somewhere, and the test waits for.
#[derive(Clone, Default)]
pub struct Flag(Arc<(Mutex<bool>, Condvar)>);

impl Flag {
    pub fn raise(&self) {
        let (raised, cond) = &*self.0;
        *raised.lock().unwrap() = true;
        cond.notify_all();
    }

    pub fn wait(&self) {
        let (raised, cond) = &*self.0;
        let mut raised = raised.lock().unwrap();
        while !*raised {
            raised = cond.wait(raised).unwrap();
        }
    }
}

/// Set in a child process started by [`ChildTest`] to the name of the test it runs.
const CHILD_TEST: &str = "BACKFLOW_CHILD_TEST";

/// How long a child process may run before it counts as hung and is killed.
pub const CHILD_DEADLINE: Duration = Duration::from_secs(30);

/// Runs the body of test `name` in a child process: for failures that end a process (an abort)
/// or never end (a hang), which a test in the harness's own process cannot survive or report.
/// See [`ChildTest::isolate`].
pub fn isolated(name: &str, body: impl FnOnce()) {
    ChildTest::new(name).isolate(body);
}

/// Whether this process is the child started to run test `name`.
pub fn is_child(name: &str) -> bool {
    env::var(CHILD_TEST).is_ok_and(|test| test == name)
}

/// A test of this binary to run alone in a child process; see [`isolated`].
pub struct ChildTest {
    name: String,
    env: Vec<(String, String)>,
    memory_kib: Option<u64>,
}

impl ChildTest {
    pub fn new(name: &str) -> Self {
        Self { name: name.to_string(), env: Vec::new(), memory_kib: None }
    }

    /// Sets an environment variable in the child.
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_string(), value.into()));
        self
    }

    /// Caps the child's address space (`ulimit -v`), so that a huge allocation fails in the
    /// child whatever the machine's overcommit policy, instead of eating the machine's memory.
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.memory_kib = Some(bytes / 1024);
        self
    }

    /// Call it from test `name` itself: in the child (the test binary, run again with only
    /// this test) it runs `body`; in the parent it runs the child, kills it after
    /// [`CHILD_DEADLINE`], and fails unless the child exited normally and passed.
    ///
    /// ```ignore
    /// #[test]
    /// fn drain_survives_a_panicking_hook() {
    ///     ChildTest::new("drain_survives_a_panicking_hook").isolate(|| { /* may abort */ });
    /// }
    /// ```
    pub fn isolate(&self, body: impl FnOnce()) {
        if is_child(&self.name) {
            body();
        } else {
            self.run().assert_passed();
        }
    }

    /// Runs the child to its end, or kills it after [`CHILD_DEADLINE`].
    pub fn run(&self) -> ChildRun {
        let mut child = self.spawn();
        let deadline = Instant::now() + CHILD_DEADLINE;
        let mut output = Vec::new();
        let hung = loop {
            match child.next_line(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => output.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break false,
                Err(mpsc::RecvTimeoutError::Timeout) => break true,
            }
        };
        let status = if hung { child.kill() } else { child.wait() };
        ChildRun { name: self.name.clone(), status, output: output.join("\n") }
    }

    /// Starts the child and returns at once, with its output to read line by line.
    pub fn spawn(&self) -> RunningChild {
        let exe = env::current_exe().expect("the test binary knows its path");
        let args = [self.name.as_str(), "--exact", "--nocapture", "--include-ignored"];
        let mut command = match self.memory_kib {
            None => Command::new(&exe),
            Some(kib) => {
                let mut sh = Command::new("sh");
                sh.args(["-c", &format!("ulimit -v {kib} && exec \"$0\" \"$@\"")]).arg(&exe);
                sh
            }
        };
        command.args(args).args(["--test-threads", "1"]).env(CHILD_TEST, &self.name);
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the test binary starts again");
        // Both pipes are read as the child writes, so that a chatty child never blocks on them.
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>);
        let stderr = child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>);
        for pipe in [stdout, stderr].into_iter().flatten() {
            let tx = tx.clone();
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { return };
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
        }
        RunningChild { child, lines }
    }
}

/// A child process started by [`ChildTest::spawn`].
pub struct RunningChild {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl RunningChild {
    /// The next line the child wrote (to stdout or stderr), waiting at most `timeout`;
    /// `Disconnected` once it closed both.
    pub fn next_line(&self, timeout: Duration) -> Result<String, mpsc::RecvTimeoutError> {
        self.lines.recv_timeout(timeout)
    }

    /// Waits for the child to end; `None` if it cannot be waited for.
    pub fn wait(&mut self) -> Option<ExitStatus> {
        self.child.wait().ok()
    }

    /// Kills the child (it hung) and reaps it; returns `None`, which [`ChildRun`] reads as hung.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

/// How a child process ended, in words: `None` means it hung and was killed.
pub fn how_it_ended(status: Option<ExitStatus>) -> String {
    match status {
        None => "HUNG: killed after its deadline".to_string(),
        Some(s) if s.success() => "passed".to_string(),
        Some(s) => match (s.code(), s.signal()) {
            (_, Some(6)) => "ABORTED (SIGABRT)".to_string(),
            (_, Some(signal)) => format!("killed by signal {signal}"),
            (Some(101), _) => "FAILED (exit code 101: the test panicked)".to_string(),
            (code, _) => format!("exited with {code:?}"),
        },
    }
}

/// How a [`ChildTest`] ended.
pub struct ChildRun {
    name: String,
    /// `None` if it was killed after [`CHILD_DEADLINE`].
    pub status: Option<ExitStatus>,
    /// What it wrote, stdout and stderr interleaved.
    pub output: String,
}

impl ChildRun {
    /// Whether it exited by itself with code 0 (its test passed).
    pub fn passed(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// Fails, saying how the child ended (hung, killed by a signal, failed), unless it passed.
    pub fn assert_passed(&self) {
        assert!(self.passed(), "{self}");
    }
}

impl fmt::Display for ChildRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = how_it_ended(self.status);
        let how = if self.status.is_none() { format!("{how} ({CHILD_DEADLINE:?})") } else { how };
        // The end of the output says why.
        let lines: Vec<&str> = self.output.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        write!(
            f,
            "child process running `{}`: {how}\n--- its output, last 40 lines ---\n{tail}",
            self.name
        )
    }
}

/// How long a scenario may take before it counts as hung (the ones given to
/// [`within_time`] take milliseconds).
const HUNG: Duration = Duration::from_secs(20);

/// Runs `scenario` on its own thread and fails the test if it does not return in time.
pub fn within_time<R: Send + 'static>(scenario: impl FnOnce() -> R + Send + 'static) -> R {
    let (done, finished) = mpsc::channel();
    thread::spawn(move || {
        let _ = done.send(scenario());
    });
    finished.recv_timeout(HUNG).expect("the scenario hung")
}

/// What tickets learned: each one's number, and whether its pipeline was still going when the
/// work its drop deferred ran.
pub type Learned = Arc<Mutex<Vec<(u64, bool)>>>;

/// An item that says, once the work its drop defers (`stage::after_outcome`) runs, whether its
/// pipeline was still going: as an acknowledgement decides whether to acknowledge.
pub struct Ticket {
    pub n: u64,
    learned: Learned,
    watch: Arc<std::sync::OnceLock<backflow::Watch>>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let (n, learned, watch) = (self.n, Arc::clone(&self.learned), Arc::clone(&self.watch));
        backflow::stage::after_outcome(move || {
            let going = !watch.get().is_some_and(backflow::Watch::is_cancelled);
            learned.lock().unwrap_or_else(PoisonError::into_inner).push((n, going));
        });
    }
}

/// Hands out the tickets of one pipeline, and reads what they learned.
#[derive(Clone, Default)]
pub struct Tickets {
    learned: Learned,
    watch: Arc<std::sync::OnceLock<backflow::Watch>>,
}

impl Tickets {
    /// Ties the tickets to `watch`'s pipeline.
    pub fn watch(&self, watch: backflow::Watch) {
        let _ = self.watch.set(watch);
    }

    pub fn ticket(&self, n: u64) -> Ticket {
        Ticket { n, learned: Arc::clone(&self.learned), watch: Arc::clone(&self.watch) }
    }

    /// What each ticket dropped so far learned, in the order their work ran.
    pub fn learned(&self) -> Vec<(u64, bool)> {
        self.learned.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// A stage's error whose drop panics (unless a panic is unwinding already).
#[derive(Debug)]
pub struct LoudDrop;

impl fmt::Display for LoudDrop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("loud")
    }
}

impl Drop for LoudDrop {
    fn drop(&mut self) {
        if !thread::panicking() {
            panic!("the error panics when dropped");
        }
    }
}
