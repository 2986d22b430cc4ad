//! What travels through the pipeline: [`Entry`] (read from the stream) with its [`Receipt`],
//! and [`Record`] (to be written), and the ledger that turns receipts into acknowledgements.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use backflow::Watch;

/// A stream entry's fields, in the order the server gave them.
///
/// # Examples
///
/// ```
/// let fields: backflow_redis::Fields = vec![("n".into(), b"1".to_vec())];
/// assert_eq!(backflow_redis::Entry::detached("1-0", fields).get_str("n"), Some("1"));
/// ```
pub type Fields = Vec<(String, Vec<u8>)>;

/// One entry read from the stream: its id, its fields, and the [`Receipt`] that acknowledges
/// it once every value carrying the receipt is gone. A clone carries a clone of the receipt
/// (so a stage with retries or a dead-letter handler, which copies its items, works as is).
///
/// # Examples
///
/// ```
/// use backflow_redis::Entry;
///
/// let entry = Entry::detached("1700000000000-0", vec![("n".into(), b"42".to_vec())]);
/// assert_eq!(entry.id(), "1700000000000-0");
/// assert_eq!(entry.get_str("n"), Some("42"));
/// assert!(entry.get("missing").is_none());
/// ```
#[derive(Debug, Clone)]
pub struct Entry {
    receipt: Receipt,
    fields: Fields,
}

impl Entry {
    pub(crate) fn new(receipt: Receipt, fields: Fields) -> Self {
        Self { receipt, fields }
    }

    /// An entry that belongs to no consumer (its receipt acknowledges nothing): for tests and
    /// for running a pipeline's stages without a server.
    ///
    /// # Examples
    ///
    /// ```
    /// let entry = backflow_redis::Entry::detached("1-0", Vec::new());
    /// assert!(entry.fields().is_empty());
    /// ```
    pub fn detached(id: impl Into<String>, fields: Fields) -> Self {
        Self::new(Receipt::detached(id.into()), fields)
    }

    /// The entry's stream id, e.g. `"1700000000000-0"`.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(backflow_redis::Entry::detached("5-1", Vec::new()).id(), "5-1");
    /// ```
    pub fn id(&self) -> &str {
        self.receipt.id()
    }

    /// Whether this entry was handed out before (taken over from another consumer, or left
    /// pending by an earlier run of this one): it may have been processed in part already.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(!backflow_redis::Entry::detached("5-1", Vec::new()).redelivered());
    /// ```
    pub fn redelivered(&self) -> bool {
        self.receipt.ticket.redelivered
    }

    /// The value of field `name`, if the entry has it.
    ///
    /// # Examples
    ///
    /// ```
    /// let entry = backflow_redis::Entry::detached("1-0", vec![("k".into(), vec![1, 2])]);
    /// assert_eq!(entry.get("k"), Some(&[1u8, 2][..]));
    /// ```
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.fields.iter().find(|(field, _)| field == name).map(|(_, value)| value.as_slice())
    }

    /// The value of field `name` as text, if the entry has it and it is UTF-8.
    ///
    /// # Examples
    ///
    /// ```
    /// let entry = backflow_redis::Entry::detached("1-0", vec![("k".into(), b"v".to_vec())]);
    /// assert_eq!(entry.get_str("k"), Some("v"));
    /// ```
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|value| std::str::from_utf8(value).ok())
    }

    /// Every field, in the order the server gave them.
    ///
    /// # Examples
    ///
    /// ```
    /// let entry = backflow_redis::Entry::detached("1-0", vec![("a".into(), b"1".to_vec())]);
    /// assert_eq!(entry.fields().len(), 1);
    /// ```
    pub fn fields(&self) -> &[(String, Vec<u8>)] {
        &self.fields
    }

    /// A copy of the entry's receipt, to carry along in whatever a stage makes of the entry.
    ///
    /// # Examples
    ///
    /// ```
    /// let entry = backflow_redis::Entry::detached("1-0", Vec::new());
    /// assert_eq!(entry.receipt().id(), "1-0");
    /// ```
    pub fn receipt(&self) -> Receipt {
        self.receipt.clone()
    }

    /// The receipt and the fields, taking the entry apart.
    ///
    /// # Examples
    ///
    /// ```
    /// let (receipt, fields) = backflow_redis::Entry::detached("1-0", Vec::new()).into_parts();
    /// assert_eq!(receipt.id(), "1-0");
    /// assert!(fields.is_empty());
    /// ```
    pub fn into_parts(self) -> (Receipt, Fields) {
        (self.receipt, self.fields)
    }
}

/// The claim on acknowledging one entry. Cloning it is cheap (a reference count); the entry is
/// acknowledged when the last clone is dropped, that is when the entry and everything a stage
/// made of it (carrying a clone) has left the pipeline: delivered, filtered out, dropped by an
/// overflow policy, skipped or dead-lettered by an error policy.
///
/// It is *not* acknowledged, and stays pending in the group to be claimed again, if the last
/// clone goes while the pipeline is cancelled (the item was abandoned), while the thread is
/// unwinding from a panic, after [`keep_pending`](Self::keep_pending), or when its consumer
/// has stopped.
///
/// # Examples
///
/// ```
/// use backflow_redis::Entry;
///
/// let entry = Entry::detached("7-0", Vec::new());
/// let receipt = entry.receipt();
/// drop(entry); // a clone is still alive: nothing acknowledged yet
/// assert_eq!(receipt.id(), "7-0");
/// ```
#[derive(Clone)]
pub struct Receipt {
    ticket: Arc<Ticket>,
}

impl Receipt {
    pub(crate) fn new(id: String, ledger: &Arc<Ledger>, redelivered: bool) -> Self {
        let ticket = Ticket {
            id,
            ledger: Some(Arc::clone(ledger)),
            keep: AtomicBool::new(false),
            redelivered,
        };
        Self { ticket: Arc::new(ticket) }
    }

    fn detached(id: String) -> Self {
        let ticket = Ticket { id, ledger: None, keep: AtomicBool::new(false), redelivered: false };
        Self { ticket: Arc::new(ticket) }
    }

    /// The entry's stream id.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(backflow_redis::Entry::detached("3-0", Vec::new()).receipt().id(), "3-0");
    /// ```
    pub fn id(&self) -> &str {
        &self.ticket.id
    }

    /// Leaves the entry pending instead of acknowledging it: after the group's claim idle time
    /// a consumer takes it over and processes it again. For an entry that failed in a way
    /// worth retrying later (the [`Writer`](crate::Writer) does this with a batch it could not
    /// write).
    ///
    /// # Examples
    ///
    /// ```
    /// let receipt = backflow_redis::Entry::detached("3-0", Vec::new()).receipt();
    /// receipt.keep_pending();
    /// assert!(receipt.is_kept_pending());
    /// ```
    pub fn keep_pending(&self) {
        self.ticket.keep.store(true, Ordering::Relaxed);
    }

    /// Whether [`keep_pending`](Self::keep_pending) was called on any clone.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(!backflow_redis::Entry::detached("3-0", Vec::new()).receipt().is_kept_pending());
    /// ```
    pub fn is_kept_pending(&self) -> bool {
        self.ticket.keep.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Receipt").field(&self.ticket.id).finish()
    }
}

/// The shared part of a receipt; its drop settles the entry.
struct Ticket {
    id: String,
    ledger: Option<Arc<Ledger>>,
    keep: AtomicBool,
    redelivered: bool,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(ledger) = &self.ledger {
            let acknowledge = !self.keep.load(Ordering::Relaxed) && !std::thread::panicking();
            ledger.settle(std::mem::take(&mut self.id), acknowledge);
        }
    }
}

/// What a consumer's receipts report to: which entries it holds, and which are done.
pub(crate) struct Ledger {
    state: Mutex<Book>,
    settled: Condvar,
    /// The pipeline the entries are in: once it is cancelled, what leaves it was abandoned.
    watch: OnceLock<Watch>,
    /// Set when the consumer stops: nothing is acknowledged after that.
    closed: AtomicBool,
}

#[derive(Default)]
struct Book {
    /// Entries read and not yet settled.
    held: HashSet<String>,
    /// Entries done, to acknowledge.
    done: Vec<String>,
    /// Entries let go without acknowledgement (abandoned, panicked, kept pending).
    released: u64,
}

impl Ledger {
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(Book::default()),
            settled: Condvar::new(),
            watch: OnceLock::new(),
            closed: AtomicBool::new(false),
        }
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn watch(&self, watch: Watch) {
        let _ = self.watch.set(watch);
    }

    /// Records entries as held; returns those already held (to be skipped: a claim can hand
    /// this consumer back entries it is still working on).
    pub(crate) fn hold(&self, ids: impl IntoIterator<Item = String>) -> HashSet<String> {
        let mut book = self.book();
        ids.into_iter().filter(|id| !book.held.insert(id.clone())).collect()
    }

    fn settle(&self, id: String, acknowledge: bool) {
        let abandoned = self.closed.load(Ordering::Acquire)
            || self.watch.get().is_some_and(Watch::is_cancelled);
        let mut book = self.book();
        if !book.held.remove(&id) {
            return;
        }
        if acknowledge && !abandoned {
            book.done.push(id);
        } else {
            book.released += 1;
        }
        drop(book);
        self.settled.notify_all();
    }

    /// Entries done and not yet acknowledged, moved out.
    pub(crate) fn take_done(&self, into: &mut Vec<String>) {
        into.append(&mut self.book().done);
    }

    pub(crate) fn released(&self) -> u64 {
        self.book().released
    }

    /// Waits at most `timeout` for an entry to be settled (if none is waiting already).
    pub(crate) fn wait_settled(&self, timeout: Duration) {
        let book = self.book();
        if book.done.is_empty() {
            let _ = self.settled.wait_timeout(book, timeout);
        }
    }

    /// The consumer stops: receipts dropped from now on acknowledge nothing.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}
