//! What travels through the pipeline: [`Entry`] (read from the stream) with its [`Receipt`],
//! and [`Record`] (to be written), and the ledger that turns receipts into acknowledgements.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread;
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

    /// Every field, in the order the server gave them. A name that is not UTF-8 (Redis takes
    /// any bytes) has U+FFFD in place of what is not.
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
/// A clone dropped inside a stage call holds the entry until the worker has recorded that
/// call's outcome ([`after_outcome`](backflow::stage::after_outcome)): `try_map` drops its
/// input before it returns the error that, under
/// [`FailFast`](backflow::ErrorPolicy::FailFast), fails the pipeline, and such an entry must
/// not be acknowledged, whichever clone goes last. (A clone dropped on a thread the stage
/// started itself counts as dropped outside the pipeline: it holds nothing back.)
///
/// It is *not* acknowledged, and stays pending in the group to be claimed again, if it
/// settles while the pipeline is cancelled (the item was abandoned, or a stage call that
/// dropped a clone failed the pipeline), if its last clone was dropped by a panic (a
/// panicking attempt whose copy lives on, for a retry or a dead letter, leaves it to the
/// copy), after [`keep_pending`](Self::keep_pending), or when its consumer has stopped. The consumer tries such an entry again once it has been idle for
/// `claim_idle`, up to `max_deliveries` times in all (see
/// [`ConsumerConfig::max_deliveries`](crate::ConsumerConfig::max_deliveries)).
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
        let ticket =
            Ticket { id, ledger: Some(Arc::clone(ledger)), kept: OnceLock::new(), redelivered };
        Self { ticket: Arc::new(ticket) }
    }

    fn detached(id: String) -> Self {
        let ticket = Ticket { id, ledger: None, kept: OnceLock::new(), redelivered: false };
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
        self.ticket.kept.get_or_init(|| Failure::here("kept pending".into()));
    }

    /// As [`keep_pending`](Self::keep_pending), recording why (for the dead letter, if it
    /// comes to that).
    pub(crate) fn keep_pending_after(&self, error: &dyn fmt::Display) {
        self.ticket.kept.get_or_init(|| Failure::here(format!("kept pending after: {error}")));
    }

    /// Whether [`keep_pending`](Self::keep_pending) was called on any clone.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(!backflow_redis::Entry::detached("3-0", Vec::new()).receipt().is_kept_pending());
    /// ```
    pub fn is_kept_pending(&self) -> bool {
        self.ticket.kept.get().is_some()
    }
}

impl Drop for Receipt {
    /// Each clone, dropped inside a stage call, holds the entry until the worker has recorded
    /// that call's outcome: the entry settles once every clone's call has an outcome, so a
    /// call that failed the pipeline keeps it pending whichever clone goes last.
    fn drop(&mut self) {
        // The last clone, dropped by a panic: the entry's last word. A clone dropped by a
        // panicking attempt while a copy lives on (kept for a retry or a dead letter) says
        // nothing: the copy's fate decides.
        if thread::panicking() && Arc::strong_count(&self.ticket) == 1 {
            self.ticket.kept.get_or_init(|| Failure::here("panicked".into()));
        }
        let ticket = Arc::clone(&self.ticket);
        backflow::stage::after_outcome(move || drop(ticket));
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
    /// Set by `keep_pending`: the entry is let go unacknowledged, and why.
    kept: OnceLock<Failure>,
    redelivered: bool,
}

impl Drop for Ticket {
    /// Settles the entry: the last clone of its receipt is gone, and the outcome of every
    /// stage call that dropped one is recorded (a call that failed the pipeline has cancelled
    /// it by then).
    fn drop(&mut self) {
        if let Some(ledger) = &self.ledger {
            let failure = match self.kept.take() {
                Some(failure) => Some(failure),
                None if thread::panicking() => Some(Failure::here("panicked".into())),
                None => None,
            };
            ledger.settle(std::mem::take(&mut self.id), failure);
        }
    }
}

/// Why this process let an entry go unacknowledged: the stage, and what happened there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) stage: String,
    pub(crate) error: String,
}

impl Failure {
    /// `error`, in the stage whose worker runs on this thread (worker threads are named
    /// `backflow:<stage>:<worker>`); `unknown` on any other thread.
    fn here(error: String) -> Self {
        let thread = thread::current();
        let stage = thread
            .name()
            .and_then(|name| name.strip_prefix("backflow:"))
            .and_then(|name| name.rsplit_once(':'))
            .map_or("unknown", |(stage, _worker)| stage);
        Self { stage: stage.to_string(), error }
    }
}

/// What a consumer's receipts report to: which entries it holds, which are done, and which
/// it let go unacknowledged.
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
    /// Entries taken and neither acknowledged nor let go: in the pipeline, or done and about
    /// to be acknowledged.
    held: HashSet<String>,
    /// Entries done, to acknowledge (they are held until they are).
    done: Vec<String>,
    /// Entries let go without acknowledgement (abandoned, panicked, kept pending), as far as
    /// this consumer knows still pending under its name; with the failure, if one was seen.
    released: HashMap<String, Option<Failure>>,
    /// Times an entry was let go without acknowledgement.
    releases: u64,
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
    /// this consumer back entries it is still working on, or has done and not yet
    /// acknowledged).
    pub(crate) fn hold(&self, ids: impl IntoIterator<Item = String>) -> HashSet<String> {
        let mut book = self.book();
        ids.into_iter().filter(|id| !book.held.insert(id.clone())).collect()
    }

    /// Whether the entry is held: in the pipeline, or done and not yet acknowledged.
    pub(crate) fn is_held(&self, id: &str) -> bool {
        self.book().held.contains(id)
    }

    /// Settles a held entry: done (to acknowledge), or let go after `failure`.
    fn settle(&self, id: String, failure: Option<Failure>) {
        let abandoned = self.closed.load(Ordering::Acquire)
            || self.watch.get().is_some_and(Watch::is_cancelled);
        let mut book = self.book();
        if failure.is_none() && !abandoned {
            if book.held.contains(&id) {
                book.done.push(id);
            }
        } else if book.held.remove(&id) {
            book.released.insert(id, failure);
            book.releases += 1;
        }
        drop(book);
        self.settled.notify_all();
    }

    /// Entries done and not yet acknowledged, moved out (they stay held until
    /// [`acknowledged`](Self::acknowledged)).
    pub(crate) fn take_done(&self, into: &mut Vec<String>) {
        into.append(&mut self.book().done);
    }

    /// The server has acknowledged `ids`: they are no longer held.
    pub(crate) fn acknowledged(&self, ids: &[String]) {
        let mut book = self.book();
        for id in ids {
            book.held.remove(id);
        }
    }

    /// Times an entry was let go without acknowledgement.
    pub(crate) fn released(&self) -> u64 {
        self.book().releases
    }

    /// The entries let go without acknowledgement and still pending under this consumer's
    /// name, as far as it knows.
    pub(crate) fn released_ids(&self) -> Vec<String> {
        self.book().released.keys().cloned().collect()
    }

    /// Takes back those of `ids` that were let go (they are handed out again), with the
    /// failure each was let go after, if one was seen.
    pub(crate) fn take_back<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a str>,
    ) -> HashMap<String, Failure> {
        let mut book = self.book();
        ids.into_iter()
            .filter_map(|id| book.released.remove_entry(id))
            .filter_map(|(id, failure)| Some((id, failure?)))
            .collect()
    }

    /// Forgets entries let go that are no longer pending under this consumer's name (another
    /// consumer took them over, or they were acknowledged or deleted).
    pub(crate) fn forget(&self, id: &str) {
        self.book().released.remove(id);
    }

    /// Entries this consumer holds unacknowledged: in the pipeline, done but not yet
    /// acknowledged, or let go and still pending under its name.
    pub(crate) fn unsettled(&self) -> usize {
        let book = self.book();
        book.held.len() + book.released.len()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn on_thread(name: &str) -> Failure {
        let name = name.to_string();
        thread::Builder::new()
            .name(name)
            .spawn(|| Failure::here("x".into()))
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    fn a_failure_names_the_stage_of_the_worker_thread() {
        assert_eq!(on_thread("backflow:parse:0").stage, "parse");
        assert_eq!(on_thread("backflow:a:b:12").stage, "a:b");
        assert_eq!(on_thread("main").stage, "unknown");
        assert_eq!(on_thread("backflow:watchdog").stage, "unknown");
    }

    #[test]
    fn the_ledger_holds_done_entries_until_acknowledged_and_keeps_released_ones() {
        let ledger = Arc::new(Ledger::new());
        assert!(ledger.hold(["1-0".to_string(), "2-0".to_string()]).is_empty());
        let (done, failed) = (
            Receipt::new("1-0".into(), &ledger, false),
            Receipt::new("2-0".into(), &ledger, false),
        );
        failed.keep_pending();
        drop((done, failed));
        assert_eq!(ledger.unsettled(), 2, "one done and not yet acknowledged, one let go");
        let mut to_ack = Vec::new();
        ledger.take_done(&mut to_ack);
        assert_eq!(to_ack, ["1-0"]);
        assert_eq!(ledger.hold(["1-0".to_string()]).len(), 1, "done, still held");
        ledger.acknowledged(&to_ack);
        assert_eq!(ledger.unsettled(), 1);
        assert_eq!(ledger.released_ids(), ["2-0"]);
        let failures = ledger.take_back(["2-0"]);
        assert_eq!(failures["2-0"].error, "kept pending");
        assert_eq!((ledger.unsettled(), ledger.released()), (0, 1));
    }
}
