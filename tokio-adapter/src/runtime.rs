//! The runtime the futures run against when none is given: one process-wide multi-thread
//! runtime with a single thread that drives timers and I/O (the futures themselves are polled
//! on the stages' workers), started on first use and kept for the life of the process, as
//! rayon's global pool is. And a way to run one future to its end on the calling thread.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

use tokio::runtime::{Builder, Handle, Runtime};

/// The name of the adapter's runtime thread.
const THREAD_NAME: &str = "backflow-tokio";

/// The adapter's runtime, or why it could not be started.
static SHARED: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// A handle to the adapter's runtime, started if need be.
pub(crate) fn shared() -> Result<Handle, String> {
    let runtime = SHARED.get_or_init(|| {
        Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(THREAD_NAME)
            .enable_all()
            .build()
            .map_err(|error| error.to_string())
    });
    match runtime {
        Ok(runtime) => Ok(runtime.handle().clone()),
        Err(error) => Err(error.clone()),
    }
}

/// Wakes the thread that runs [`block_on`].
struct ThreadWaker {
    thread: Thread,
    woken: AtomicBool,
}

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.thread.unpark();
    }
}

/// Polls `future` on this thread until it finishes, parking in between; its output, or the
/// message of its panic.
pub(crate) fn block_on<F: Future>(future: F) -> Result<F::Output, String> {
    let waker = Arc::new(ThreadWaker { thread: thread::current(), woken: AtomicBool::new(false) });
    let mut future = pin!(future);
    let thread_waker = Waker::from(Arc::clone(&waker));
    let mut cx = Context::from_waker(&thread_waker);
    loop {
        match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut cx))) {
            Ok(Poll::Ready(output)) => return Ok(output),
            Ok(Poll::Pending) => {}
            Err(panic) => return Err(backflow::stage::panic_message(&*panic)),
        }
        while !waker.woken.swap(false, Ordering::Acquire) {
            thread::park();
        }
    }
}
