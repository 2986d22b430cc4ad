//! Helpers shared by the runtime's integration tests.
#![allow(dead_code)]

use std::fs;
use std::sync::{Arc, Condvar, Mutex};
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
        *open.lock().unwrap() = true;
        cond.notify_all();
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
