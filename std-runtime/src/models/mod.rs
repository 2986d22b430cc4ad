//! Loom models of the runtime's own protocols: built with `RUSTFLAGS="--cfg loom"`, run by
//! `cargo xtask loom`.
//!
//! A model runs the runtime's own code with loom's atomics, locks and threads in place of the
//! standard library's (see [`crate::sync`]): the drain and cancel models build a whole
//! pipeline with the builder and drive it through its public API; the others drive one
//! link, the ordered hand-off or a signal with the calls the workers make. Loom runs a model
//! under every interleaving of its threads (up to [`MAX_PREEMPTIONS`] preemptions), lets
//! every load that may see an older store see it, and the model checks how each execution
//! ends: every item counted once, no thread left parked, a drain that ends exactly when the
//! last item is in.
//!
//! Every model has a negative control in its file: the same model with one fence left out
//! ([`fails_without`]; for a notification, the fence before it reads the sleepers), or for
//! the ordered hand-off a batch numbered outside the ticket lock, and for workers joining a
//! stage a new worker announced outside the workers' lock, and for announcements a deliverer
//! that does not look again after its turn, which loom must fail. A
//! model that cannot fail proves nothing.
//!
//! - [`wait`]: the park/notify [`Signal`](crate::wait::Signal) every wait goes through;
//! - [`drain`]: the close/drain handshake between the input handles and the first stage;
//! - [`pressure`]: the pressure flag, raised and relieved under the link's lock, and the
//!   wake-ups of producers waiting for room;
//! - [`cancel`]: the cancel flag, the wake-ups of parked producers and workers, and the final
//!   sweep that counts what is left;
//! - [`reorder`]: an ordered stage's ticket lock and reorder window;
//! - [`workers`]: workers joining and leaving a stage while it runs (a thread budget);
//! - [`announce`]: changes made under a lock (pressure, a breaker) announced in order after
//!   it is let go.
//!
//! Loom's own settings (`LOOM_LOG`, `LOOM_LOCATION`, …) apply, but not
//! `LOOM_MAX_PREEMPTIONS`: the bound is set here.

mod announce;
mod cancel;
mod drain;
mod pressure;
mod reorder;
mod wait;
mod workers;

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::{Mutex, Once, PoisonError};

use crate::panic::panic_message;
use crate::sync::{FenceSite, thread, without_fences};

/// Preemptions loom explores per execution. The rings' models take three (`cargo xtask
/// loom` sets `LOOM_MAX_PREEMPTIONS`), but a pipeline runs some ten times as many atomic
/// operations: at three the drain model alone ran 165 687 executions (40 s), at two it runs
/// 12 354 (a second or two; the locks a drain takes to see whether it is called from inside
/// the pipeline doubled them). The negative controls fail within two, but for the pressure
/// model's, which takes three (290 906 executions, 39 s).
pub(super) const MAX_PREEMPTIONS: usize = 2;

thread_local! {
    /// Executions of the model being explored.
    static EXECUTIONS: Cell<usize> = const { Cell::new(0) };
}

/// Runs `model` under loom, each execution on a thread of its own: loom's first thread has
/// a 32 KiB stack, too small to build a pipeline on (the facade gives the threads it spawns
/// more). Returns how many executions loom ran.
fn check(model: fn(), preemptions: usize) -> usize {
    // One model at a time: the generator crate swaps the process's panic hook while it
    // cancels the coroutines of a failed execution, which would race with another test's.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let mut loom = loom::model::Builder::new();
    loom.preemption_bound = Some(preemptions);
    // A pipeline's whole life is one execution: far more than loom's default 1 000 branches.
    loom.max_branches = 100_000;
    EXECUTIONS.set(0);
    loom.check(move || {
        EXECUTIONS.set(EXECUTIONS.get() + 1);
        if let Err(panic) = thread::spawn(model).join() {
            resume_unwind(panic);
        }
    });
    EXECUTIONS.get()
}

/// Runs `model` under every interleaving loom explores; returns how many executions that
/// was (printed too, which `-- --nocapture` shows).
pub(super) fn explore(name: &str, model: fn()) -> usize {
    let executions = check(model, MAX_PREEMPTIONS);
    println!("{name}: passed {executions} executions");
    executions
}

/// The call that issues a fence in function `function` of `file`, whose text is `source`:
/// the first line after the one declaring the function that holds `call` (`"fence("`, or
/// `".notify()"`, whose fence counts as its caller's under loom).
///
/// # Panics
///
/// There is no such function, or no such call after it.
pub(super) fn site(file: &'static str, source: &str, function: &str, call: &str) -> FenceSite {
    let mut lines = source.lines().enumerate();
    lines
        .find(|(_, line)| line.contains(function))
        .unwrap_or_else(|| panic!("{file} has no `{function}`"));
    let (index, _) = lines
        .find(|(_, line)| line.contains(call))
        .unwrap_or_else(|| panic!("{file} has no `{call}` after `{function}`"));
    FenceSite { file, line: u32::try_from(index + 1).expect("a short file") }
}

thread_local! {
    /// While a negative control runs: the message of the first panic on this thread (the
    /// model's threads run on it too).
    static FIRST_PANIC: RefCell<Option<Option<String>>> = const { RefCell::new(None) };
}

/// Runs `f` and returns, with what it returned, the message of the first panic on this
/// thread meanwhile. When loom stops a failed execution it unwinds the model's other
/// threads, and what they drop may panic again: only the last panic reaches `catch_unwind`.
fn first_panic<R>(f: impl FnOnce() -> R) -> (R, Option<String>) {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            FIRST_PANIC.with_borrow_mut(|first| {
                // The generator crate (loom's threads) ends and cancels its coroutines with
                // panics of its own, which carry no message.
                let payload = info.payload();
                let message = payload.is::<&str>() || payload.is::<String>();
                if let (Some(first @ None), true) = (first, message) {
                    *first = Some(info.to_string());
                }
            });
            previous(info);
        }));
    });
    FIRST_PANIC.set(Some(None));
    let result = f();
    (result, FIRST_PANIC.take().flatten())
}

/// Runs `model` with the fences at `sites` left out and returns how loom failed it: the
/// first panic of the failing execution (an assertion of the model, or loom's report of a
/// deadlock).
///
/// # Panics
///
/// The model passed anyway, or no execution reached a missing fence (a stale site).
pub(super) fn fails_without(
    name: &str,
    sites: &[FenceSite],
    preemptions: usize,
    model: fn(),
) -> String {
    let (failure, reached) = without_fences(sites, || fails_with(name, preemptions, model));
    assert!(reached > 0, "{name}: no execution reached a fence at {sites:?}");
    let sites: Vec<String> = sites.iter().map(|s| format!("{}:{}", s.file, s.line)).collect();
    println!("{name}: the failure above is without the fence at {}", sites.join(", "));
    failure
}

/// Runs a `model` that must fail (a negative control) and returns how loom failed it: the
/// first panic of the failing execution.
///
/// # Panics
///
/// The model passed.
pub(super) fn fails_with(name: &str, preemptions: usize, model: fn()) -> String {
    let (outcome, first) =
        first_panic(|| catch_unwind(AssertUnwindSafe(|| check(model, preemptions))));
    let Err(panic) = outcome else {
        panic!("{name}: the negative control passed {} executions", EXECUTIONS.get());
    };
    let failure = first.unwrap_or_else(|| panic_message(&*panic));
    println!("{name}: execution {} failed: {failure}", EXECUTIONS.get());
    failure
}
