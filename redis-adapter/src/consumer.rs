//! [`Consumer`]: reads a stream as a member of a consumer group into a pipeline, as fast as the
//! pipeline takes entries, and acknowledges each entry once it has left the pipeline.

use std::collections::VecDeque;
use std::iter;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backflow::{Input, Pipeline, PushError, Report};
use redis::Value;

use crate::config::{client, millis};
use crate::connection::{RawEntry, Reconnecting, claim_reply, read_reply};
use crate::entry::{Entry, Ledger, Receipt};
use crate::{ConsumerConfig, Error};

/// The id `XREADGROUP` takes for "entries never delivered to anyone".
const NEW: &str = ">";
/// The start of a stream, or of a pending list.
const START: &str = "0-0";

/// One member of a consumer group feeding a pipeline of [`Entry`] items.
///
/// [`run`](Self::run) reads with `XREADGROUP` only while the pipeline's first queue has room
/// and fewer than `max_pending` entries are unacknowledged, so a slow pipeline slows the
/// reading and nothing piles up in the client; entries of other (dead) consumers idle longer
/// than `claim_idle` are taken over with `XAUTOCLAIM`, at start and every `claim_every`.
/// Each entry is acknowledged (`XACK`) after its [`Receipt`] is gone, that is after the entry
/// has left the pipeline. A process that crashes leaves its entries pending, and another
/// consumer takes them over: every entry is processed at least once. A lost connection, or
/// a server that answers it cannot serve yet (`LOADING` while it loads its data after a
/// restart, `BUSY`, `TRYAGAIN`, `MASTERDOWN`), is retried on the reconnect schedule.
///
/// # Examples
///
/// ```no_run
/// use backflow::Pipeline;
/// use backflow_redis::{Consumer, ConsumerConfig, Entry};
///
/// let pipeline = Pipeline::<Entry>::builder()
///     .stage("parse", || |entry: Entry| entry.get_str("n").and_then(|n| n.parse::<u64>().ok()))
///     .sink(|n| println!("{n:?}"))
///     .build()?;
/// let config = ConsumerConfig::new("redis://127.0.0.1/", "numbers", "printers", "printer-1");
/// let consumer = Consumer::connect(config)?;
/// let handle = consumer.handle(); // `handle.stop()` from elsewhere ends the run
/// let summary = consumer.run(pipeline)?;
/// println!("{} entries read, {} acknowledged", summary.read, summary.acknowledged);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Consumer {
    config: ConsumerConfig,
    redis: Reconnecting,
    ledger: Arc<Ledger>,
    progress: Arc<Progress>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("config", &self.config)
            .field("progress", &self.progress)
            .finish_non_exhaustive()
    }
}

/// A consumer's live counters, and its stop switch.
#[derive(Debug, Default)]
struct Progress {
    read: AtomicU64,
    claimed: AtomicU64,
    acknowledged: AtomicU64,
    stop: AtomicBool,
}

/// Stops a running [`Consumer`] from another thread and reads its counters. Cloneable.
///
/// # Examples
///
/// ```no_run
/// # use backflow_redis::{Consumer, ConsumerConfig};
/// let consumer = Consumer::connect(ConsumerConfig::new("redis://127.0.0.1/", "s", "g", "c"))?;
/// let handle = consumer.handle();
/// std::thread::spawn(move || {
///     std::thread::sleep(std::time::Duration::from_secs(10));
///     handle.stop();
/// });
/// # Ok::<(), backflow_redis::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ConsumerHandle {
    progress: Arc<Progress>,
}

impl ConsumerHandle {
    /// Asks the consumer to stop: it reads no more, lets the pipeline finish what it holds,
    /// acknowledges it, and returns from [`Consumer::run`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # let consumer = backflow_redis::Consumer::connect(backflow_redis::ConsumerConfig::new("redis://127.0.0.1/", "s", "g", "c"))?;
    /// consumer.handle().stop();
    /// # Ok::<(), backflow_redis::Error>(())
    /// ```
    pub fn stop(&self) {
        self.progress.stop.store(true, Ordering::Relaxed);
    }

    /// New entries read so far.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # let consumer = backflow_redis::Consumer::connect(backflow_redis::ConsumerConfig::new("redis://127.0.0.1/", "s", "g", "c"))?;
    /// assert_eq!(consumer.handle().read(), 0);
    /// # Ok::<(), backflow_redis::Error>(())
    /// ```
    pub fn read(&self) -> u64 {
        self.progress.read.load(Ordering::Relaxed)
    }

    /// Entries taken over from other consumers, or left pending by an earlier run of this one.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # let consumer = backflow_redis::Consumer::connect(backflow_redis::ConsumerConfig::new("redis://127.0.0.1/", "s", "g", "c"))?;
    /// assert_eq!(consumer.handle().claimed(), 0);
    /// # Ok::<(), backflow_redis::Error>(())
    /// ```
    pub fn claimed(&self) -> u64 {
        self.progress.claimed.load(Ordering::Relaxed)
    }

    /// Entries acknowledged so far.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # let consumer = backflow_redis::Consumer::connect(backflow_redis::ConsumerConfig::new("redis://127.0.0.1/", "s", "g", "c"))?;
    /// assert_eq!(consumer.handle().acknowledged(), 0);
    /// # Ok::<(), backflow_redis::Error>(())
    /// ```
    pub fn acknowledged(&self) -> u64 {
        self.progress.acknowledged.load(Ordering::Relaxed)
    }
}

/// How a [`Consumer::run`] went.
///
/// # Examples
///
/// ```no_run
/// # use backflow::Pipeline;
/// # use backflow_redis::{Consumer, ConsumerConfig, Entry};
/// # let pipeline = Pipeline::<Entry>::builder().stage("id", || |e: Entry| e).sink(|_| {}).build()?;
/// # let consumer = Consumer::connect(ConsumerConfig::new("redis://127.0.0.1/", "s", "g", "c"))?;
/// let summary = consumer.run(pipeline)?;
/// assert!(summary.acknowledged <= summary.read + summary.claimed);
/// println!("{}", summary.report);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct Summary {
    /// The pipeline's final report.
    pub report: Report,
    /// New entries read (`XREADGROUP >`).
    pub read: u64,
    /// Entries taken over (`XAUTOCLAIM`), or read back from this consumer's own pending list.
    pub claimed: u64,
    /// Entries acknowledged.
    pub acknowledged: u64,
    /// Entries let go without acknowledgement (abandoned, panicked on, or kept pending):
    /// still pending in the group, to be claimed again.
    pub released: u64,
    /// Connections opened again after a loss.
    pub reconnects: u64,
    /// Time spent in round trips to the server that read or claimed (including the time the
    /// server held a blocking read open for lack of entries).
    pub reading: Duration,
    /// Time spent waiting for room in the first queue, or for entries to be acknowledged
    /// before reading more.
    pub waiting: Duration,
    /// Time spent handing entries to the pipeline.
    pub pushing: Duration,
}

impl Consumer {
    /// Checks the configuration, connects, and creates the group at the start of the stream
    /// (and the stream) if they do not exist.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a bad setting; [`Error::Connection`] if the server cannot be
    /// reached, or cannot serve, within the reconnect schedule; [`Error::Command`] if it
    /// refuses (the key is not a stream).
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_redis::{Consumer, ConsumerConfig, Error};
    ///
    /// let config = ConsumerConfig::new("redis://127.0.0.1/", "s", "g", "c").batch(0);
    /// assert!(matches!(Consumer::connect(config), Err(Error::Config(_))));
    /// ```
    pub fn connect(config: ConsumerConfig) -> Result<Self, Error> {
        config.validate()?;
        let mut redis = Reconnecting::new(client(&config.url)?, config.reconnect, config.block);
        let (stream, group) = (&config.stream, &config.group);
        let created = redis.run("XGROUP CREATE", |c| {
            redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(stream)
                .arg(group)
                .arg(START)
                .arg("MKSTREAM")
                .query::<()>(c)
        });
        match created {
            Ok(()) => {}
            Err(Error::Command { source, .. }) if source.code() == Some("BUSYGROUP") => {}
            Err(error) => return Err(error),
        }
        Ok(Self {
            config,
            redis,
            ledger: Arc::new(Ledger::new()),
            progress: Arc::new(Progress::default()),
        })
    }

    /// A handle to stop the run and read its counters.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # let consumer = backflow_redis::Consumer::connect(backflow_redis::ConsumerConfig::new("redis://127.0.0.1/", "s", "g", "c"))?;
    /// let handle = consumer.handle();
    /// # Ok::<(), backflow_redis::Error>(())
    /// ```
    pub fn handle(&self) -> ConsumerHandle {
        ConsumerHandle { progress: Arc::clone(&self.progress) }
    }

    /// Feeds `pipeline` from the stream until [`ConsumerHandle::stop`], the configured idle
    /// time, or the pipeline stops; then drains the pipeline, acknowledges what left it, and
    /// returns the summary.
    ///
    /// # Errors
    ///
    /// [`Error::Connection`] when the connection is lost for good, or the server stays
    /// unable to serve past the reconnect schedule (the pipeline is cancelled: its entries
    /// stay pending); [`Error::Pipeline`] when the pipeline failed;
    /// [`Error::Command`] or [`Error::Reply`] when the server refused a command or answered
    /// oddly.
    ///
    /// # Examples
    ///
    /// See [`Consumer`].
    pub fn run(mut self, pipeline: Pipeline<Entry>) -> Result<Summary, Error> {
        self.ledger.watch(pipeline.watch());
        let input = pipeline.input();
        let max_pending =
            self.config.max_pending.unwrap_or(input.room().saturating_add(self.config.batch));
        let mut reader = Reader {
            consumer: &mut self,
            max_pending,
            to_ack: Vec::new(),
            reading: Duration::ZERO,
            waiting: Duration::ZERO,
            pushing: Duration::ZERO,
        };
        let fed = reader.feed(&input);
        drop(input);
        if fed.is_err() {
            pipeline.cancel();
        }
        let drained = pipeline.drain();
        // Whatever is let go from now on (items the application kept) is not acknowledged.
        reader.consumer.ledger.close();
        let acked =
            if matches!(fed, Err(Error::Connection { .. })) { Ok(()) } else { reader.ack() };
        fed?;
        let report = drained?;
        acked?;
        let (reading, waiting, pushing) = (reader.reading, reader.waiting, reader.pushing);
        let progress = &self.progress;
        Ok(Summary {
            report,
            read: progress.read.load(Ordering::Relaxed),
            claimed: progress.claimed.load(Ordering::Relaxed),
            acknowledged: progress.acknowledged.load(Ordering::Relaxed),
            released: self.ledger.released(),
            reconnects: self.redis.reconnects,
            reading,
            waiting,
            pushing,
        })
    }
}

/// The reading side of one run.
struct Reader<'a> {
    consumer: &'a mut Consumer,
    max_pending: usize,
    /// Entries done, to acknowledge with the next round trip.
    to_ack: Vec<String>,
    reading: Duration,
    waiting: Duration,
    pushing: Duration,
}

impl Reader<'_> {
    /// Reads until told to stop, idle long enough, or the pipeline stops taking entries.
    fn feed(&mut self, input: &Input<Entry>) -> Result<(), Error> {
        let config = self.consumer.config.clone();
        // First this consumer's own pending entries (left by an earlier run under this name),
        // then other consumers' idle ones and new ones.
        let mut from = START.to_string();
        let mut claim_from = START.to_string();
        // `None`: not again (a period past what the clock can count).
        let mut next_claim = Some(Instant::now());
        let mut last_taken = Instant::now();
        loop {
            let progress = &self.consumer.progress;
            if progress.stop.load(Ordering::Relaxed) || input.is_closed() {
                return Ok(());
            }
            if config.stop_when_idle.is_some_and(|idle| last_taken.elapsed() >= idle) {
                return Ok(());
            }
            // Not while reading its own pending list: claimed entries would be on it too.
            if from == NEW && next_claim.is_some_and(|at| Instant::now() >= at) {
                if self.claim(input, &mut claim_from)? > 0 {
                    last_taken = Instant::now();
                }
                next_claim = Instant::now().checked_add(config.claim_every);
            }
            let started = Instant::now();
            let window = self.window();
            let room = if window == 0 {
                self.consumer.ledger.wait_settled(config.block);
                0
            } else {
                input.wait_for_room(config.block)
            };
            self.waiting += started.elapsed();
            if room == 0 {
                self.ack()?;
                continue;
            }
            let entries = self.read(&from, window.min(config.batch))?;
            let redelivered = from != NEW;
            if redelivered {
                match entries.last() {
                    Some((id, _)) => from.clone_from(id),
                    None => from = NEW.to_string(),
                }
            }
            if self.push(input, entries, redelivered) > 0 {
                last_taken = Instant::now();
            }
        }
    }

    /// How many more entries may be read now: `max_pending` less those read and not yet
    /// acknowledged (counting those done as acknowledged: the next round trip does it).
    fn window(&mut self) -> usize {
        let ledger = &self.consumer.ledger;
        ledger.take_done(&mut self.to_ack);
        let progress = &self.consumer.progress;
        let taken =
            progress.read.load(Ordering::Relaxed) + progress.claimed.load(Ordering::Relaxed);
        let acknowledged = progress.acknowledged.load(Ordering::Relaxed);
        let settled = acknowledged + self.to_ack.len() as u64 + ledger.released();
        let unsettled = usize::try_from(taken.saturating_sub(settled)).unwrap_or(usize::MAX);
        self.max_pending.saturating_sub(unsettled)
    }

    /// One round trip: acknowledges what is done and reads up to `count` entries after `from`.
    fn read(&mut self, from: &str, count: usize) -> Result<Vec<RawEntry>, Error> {
        let config = &self.consumer.config;
        let (stream, group, consumer) = (&config.stream, &config.group, &config.consumer);
        let block = millis(config.block);
        let to_ack = &self.to_ack;
        let started = Instant::now();
        let reply = self.consumer.redis.run("XREADGROUP", |c| {
            let mut pipe = redis::pipe();
            if !to_ack.is_empty() {
                pipe.cmd("XACK").arg(stream).arg(group).arg(to_ack).ignore();
            }
            pipe.cmd("XREADGROUP").arg("GROUP").arg(group).arg(consumer).arg("COUNT").arg(count);
            if from == NEW {
                pipe.arg("BLOCK").arg(block);
            }
            pipe.arg("STREAMS").arg(stream).arg(from);
            pipe.query::<(Value,)>(c)
        });
        self.reading += started.elapsed();
        let (reply,) = reply?;
        self.acknowledged();
        read_reply(reply)
    }

    /// Acknowledges what is done, if anything.
    fn ack(&mut self) -> Result<(), Error> {
        self.consumer.ledger.take_done(&mut self.to_ack);
        if self.to_ack.is_empty() {
            return Ok(());
        }
        let config = &self.consumer.config;
        let (stream, group, to_ack) = (&config.stream, &config.group, &self.to_ack);
        self.consumer.redis.run("XACK", |c| {
            redis::cmd("XACK").arg(stream).arg(group).arg(to_ack).query::<u64>(c)
        })?;
        self.acknowledged();
        Ok(())
    }

    /// Counts `to_ack` as acknowledged, now that the server has them.
    fn acknowledged(&mut self) {
        let acked = self.to_ack.len() as u64;
        self.consumer.progress.acknowledged.fetch_add(acked, Ordering::Relaxed);
        self.to_ack.clear();
    }

    /// Takes over entries idle longer than `claim_idle`, as many as the window allows, going
    /// on from `cursor`; returns how many were kept.
    fn claim(&mut self, input: &Input<Entry>, cursor: &mut String) -> Result<usize, Error> {
        let mut kept = 0;
        loop {
            let window = self.window();
            if window == 0 || input.is_closed() {
                return Ok(kept);
            }
            let config = &self.consumer.config;
            let (stream, group, consumer) = (&config.stream, &config.group, &config.consumer);
            let idle = millis(config.claim_idle);
            let count = window.min(config.batch);
            let from = cursor.clone();
            let started = Instant::now();
            let reply = self.consumer.redis.run("XAUTOCLAIM", |c| {
                redis::cmd("XAUTOCLAIM")
                    .arg(stream)
                    .arg(group)
                    .arg(consumer)
                    .arg(idle)
                    .arg(&from)
                    .arg("COUNT")
                    .arg(count)
                    .query::<Value>(c)
            });
            self.reading += started.elapsed();
            let (next, entries) = claim_reply(reply?)?;
            *cursor = next;
            let claimed = self.push(input, entries, true);
            kept += claimed;
            if cursor == START || claimed == 0 {
                return Ok(kept);
            }
        }
    }

    /// Hands entries to the pipeline; counts and returns how many were new to this consumer
    /// (as claimed if `redelivered`, else as read). Entries
    /// deleted from the stream while pending are acknowledged with the next round trip (and
    /// counted); entries this consumer already holds (a claim hands them back) are skipped.
    fn push(&mut self, input: &Input<Entry>, raw: Vec<RawEntry>, redelivered: bool) -> usize {
        let started = Instant::now();
        let ledger = &self.consumer.ledger;
        let acknowledged_before = self.to_ack.len();
        let mut live = Vec::with_capacity(raw.len());
        for (id, fields) in raw {
            match fields {
                Some(fields) => live.push((id, fields)),
                None => self.to_ack.push(id),
            }
        }
        let held = ledger.hold(live.iter().map(|(id, _)| id.clone()));
        let mut queue: VecDeque<Entry> = live
            .into_iter()
            .filter(|(id, _)| !held.contains(id))
            .map(|(id, fields)| Entry::new(Receipt::new(id, ledger, redelivered), fields))
            .collect();
        let kept = queue.len() + self.to_ack.len() - acknowledged_before;
        let progress = &self.consumer.progress;
        let counter = if redelivered { &progress.claimed } else { &progress.read };
        counter.fetch_add(kept as u64, Ordering::Relaxed);
        while !queue.is_empty() {
            match input.push_iter(iter::from_fn(|| queue.pop_front())) {
                Ok(()) => {}
                Err(PushError::Full(entry) | PushError::Timeout(entry)) => {
                    queue.push_front(entry);
                    input.wait_for_room(self.consumer.config.block);
                }
                Err(refused) => {
                    // The pipeline stopped: these entries stay pending for another consumer.
                    for entry in iter::once(refused.into_inner()).chain(queue.drain(..)) {
                        entry.receipt().keep_pending();
                    }
                }
            }
        }
        self.pushing += started.elapsed();
        kept
    }
}
