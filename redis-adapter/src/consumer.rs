//! [`Consumer`]: reads a stream as a member of a consumer group into a pipeline, as fast as the
//! pipeline takes entries, and acknowledges each entry once it has left the pipeline.

use std::collections::VecDeque;
use std::iter;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backflow::{Input, Pipeline, PushError, Report};
use redis::Value;

use crate::config::millis;
use crate::connection::{
    Pending, RawEntry, Reconnecting, claim_reply, claimed_reply, pending_of, pending_reply,
    read_reply,
};
use crate::entry::{Entry, Failure, Fields, Ledger, Receipt};
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
/// consumer takes them over: every entry is processed at least once.
///
/// An entry whose stage panicked, or failed the pipeline with an error under
/// [`ErrorPolicy::FailFast`](backflow::ErrorPolicy::FailFast), stays pending too, and this consumer tries it again
/// (`XCLAIM`) once it has been idle for `claim_idle`. An entry handed out more than
/// `max_deliveries` times goes to the dead-letter stream instead, and is acknowledged. A
/// lost connection, or a server that answers it cannot serve yet (`LOADING` while it loads
/// its data after a restart, `BUSY`, `TRYAGAIN`, `MASTERDOWN`), is retried on the reconnect
/// schedule.
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
    dead_lettered: AtomicU64,
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

    /// Entries taken over from other consumers, taken back to be tried again, or left pending
    /// by an earlier run of this one; each time.
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

    /// Entries moved to the dead-letter stream so far (and acknowledged: they are counted in
    /// [`acknowledged`](Self::acknowledged) too).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # let consumer = backflow_redis::Consumer::connect(backflow_redis::ConsumerConfig::new("redis://127.0.0.1/", "s", "g", "c"))?;
    /// assert_eq!(consumer.handle().dead_lettered(), 0);
    /// # Ok::<(), backflow_redis::Error>(())
    /// ```
    pub fn dead_lettered(&self) -> u64 {
        self.progress.dead_lettered.load(Ordering::Relaxed)
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
/// assert_eq!(summary.read + summary.claimed, summary.acknowledged + summary.released);
/// println!("{} dead-lettered, {} left pending", summary.dead_lettered, summary.pending);
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
    /// Entries taken over (`XAUTOCLAIM`), taken back to be tried again (`XCLAIM`), or read
    /// back from this consumer's own pending list; each time.
    pub claimed: u64,
    /// Entries acknowledged, those moved to the dead-letter stream included. Once every
    /// receipt is gone, `read + claimed == acknowledged + released`.
    pub acknowledged: u64,
    /// Entries moved to the dead-letter stream (handed out more than `max_deliveries` times)
    /// and acknowledged.
    pub dead_lettered: u64,
    /// Times an entry was let go without acknowledgement (abandoned, panicked on, or kept
    /// pending): it stayed pending in the group, to be taken again.
    pub released: u64,
    /// Entries left pending under this consumer's name when the run ended, as the server
    /// counts them: let go and not yet tried again, or handed back by the stop. Another
    /// consumer takes them over after `claim_idle`, or the next run under this name reads
    /// them first.
    pub pending: u64,
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
        let endpoint = &config.endpoint;
        let mut redis =
            Reconnecting::new(endpoint.client()?, endpoint.user(), config.reconnect, config.block);
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
    /// returns the summary (with how many entries it leaves pending).
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
        let pending = reader.left_pending()?;
        let (reading, waiting, pushing) = (reader.reading, reader.waiting, reader.pushing);
        let progress = &self.progress;
        Ok(Summary {
            report,
            read: progress.read.load(Ordering::Relaxed),
            claimed: progress.claimed.load(Ordering::Relaxed),
            acknowledged: progress.acknowledged.load(Ordering::Relaxed),
            dead_lettered: progress.dead_lettered.load(Ordering::Relaxed),
            released: self.ledger.released(),
            pending,
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
                if self.retake(input)? + self.claim(input, &mut claim_from)? > 0 {
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
            let taken = if from == NEW {
                self.push(input, entries, false)
            } else {
                match entries.last() {
                    Some((id, _)) => from.clone_from(id),
                    None => from = NEW.to_string(),
                }
                self.intake(input, entries)?
            };
            if taken > 0 {
                last_taken = Instant::now();
            }
        }
    }

    /// How many more entries may be taken now: `max_pending` less those this consumer holds
    /// unacknowledged (in the pipeline, done and about to be acknowledged, or let go and
    /// still pending under its name).
    fn window(&mut self) -> usize {
        let ledger = &self.consumer.ledger;
        ledger.take_done(&mut self.to_ack);
        self.max_pending.saturating_sub(ledger.unsettled())
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
        self.consumer.ledger.acknowledged(&self.to_ack);
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
            let claimed = self.intake(input, entries)?;
            kept += claimed;
            if cursor == START || claimed == 0 {
                return Ok(kept);
            }
        }
    }

    /// Takes back the entries this consumer let go (a stage panicked on them, or kept them
    /// pending) once they have been idle for `claim_idle`, to try them again; forgets those
    /// no longer pending under its name. Returns how many were taken back.
    fn retake(&mut self, input: &Input<Entry>) -> Result<usize, Error> {
        let released = self.consumer.ledger.released_ids();
        let mut kept = 0;
        for ids in released.chunks(self.consumer.config.batch) {
            if input.is_closed() {
                break;
            }
            let states = self.pending(ids)?;
            let config = &self.consumer.config;
            let mut due = Vec::new();
            for (id, pending) in ids.iter().zip(states) {
                match pending {
                    Some(Pending { consumer, idle, .. }) if consumer == config.consumer => {
                        if idle >= config.claim_idle {
                            due.push(id);
                        }
                    }
                    // Acknowledged or deleted, or taken over by another consumer.
                    _ => self.consumer.ledger.forget(id),
                }
            }
            if due.is_empty() {
                continue;
            }
            let config = &self.consumer.config;
            let (stream, group, consumer) = (&config.stream, &config.group, &config.consumer);
            let idle = millis(config.claim_idle);
            let started = Instant::now();
            let reply = self.consumer.redis.run("XCLAIM", |c| {
                redis::cmd("XCLAIM")
                    .arg(stream)
                    .arg(group)
                    .arg(consumer)
                    .arg(idle)
                    .arg(&due)
                    .query::<Value>(c)
            });
            self.reading += started.elapsed();
            let entries = claimed_reply(reply?)?;
            kept += self.intake(input, entries)?;
        }
        Ok(kept)
    }

    /// What the server says of each of `ids` (`XPENDING`, one round trip).
    fn pending(&mut self, ids: &[String]) -> Result<Vec<Option<Pending>>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let config = &self.consumer.config;
        let (stream, group) = (&config.stream, &config.group);
        let started = Instant::now();
        let replies = self.consumer.redis.run("XPENDING", |c| {
            let mut pipe = redis::pipe();
            for id in ids {
                pipe.cmd("XPENDING").arg(stream).arg(group).arg(id).arg(id).arg(1);
            }
            pipe.query::<Vec<Value>>(c)
        });
        self.reading += started.elapsed();
        replies?.into_iter().map(pending_reply).collect()
    }

    /// Takes entries handed out before (taken over, taken back, or read back from this
    /// consumer's own pending list): those handed out more than `max_deliveries` times go to
    /// the dead-letter stream, the rest to the pipeline. Returns how many were new to this
    /// consumer (entries it holds already are skipped).
    fn intake(&mut self, input: &Input<Entry>, raw: Vec<RawEntry>) -> Result<usize, Error> {
        let ledger = Arc::clone(&self.consumer.ledger);
        let mut failures = ledger.take_back(raw.iter().map(|(id, _)| id.as_str()));
        let acknowledged_before = self.to_ack.len();
        let mut fresh = Vec::with_capacity(raw.len());
        for (id, fields) in raw {
            match fields {
                Some(fields) if !ledger.is_held(&id) => fresh.push((id, fields)),
                Some(_) => {}
                // Deleted from the stream while pending: nothing to process.
                None => self.to_ack.push(id),
            }
        }
        let deleted = self.to_ack.len() - acknowledged_before;
        let ids: Vec<String> = fresh.iter().map(|(id, _)| id.clone()).collect();
        let max_deliveries = self.consumer.config.max_deliveries;
        let mut dead = Vec::new();
        let mut live = Vec::with_capacity(fresh.len());
        for ((id, fields), pending) in fresh.into_iter().zip(self.pending(&ids)?) {
            match pending {
                Some(Pending { deliveries, .. }) if deliveries > max_deliveries => {
                    let failure = failures.remove(&id);
                    // This delivery has not been tried: the ones before it failed.
                    dead.push(DeadLetter { id, fields, deliveries: deliveries - 1, failure });
                }
                _ => live.push((id, Some(fields))),
            }
        }
        let progress = &self.consumer.progress;
        progress.claimed.fetch_add((deleted + dead.len()) as u64, Ordering::Relaxed);
        self.dead_letter(dead)?;
        Ok(deleted + self.push(input, live, true))
    }

    /// Adds each entry to the dead-letter stream and acknowledges it, in one round trip.
    fn dead_letter(&mut self, letters: Vec<DeadLetter>) -> Result<(), Error> {
        if letters.is_empty() {
            return Ok(());
        }
        let config = &self.consumer.config;
        let (stream, group, consumer) = (&config.stream, &config.group, &config.consumer);
        let dead_letters = config.dead_letters();
        let ids: Vec<&str> = letters.iter().map(|letter| letter.id.as_str()).collect();
        self.consumer.redis.run("XADD", |c| {
            let mut pipe = redis::pipe();
            for letter in &letters {
                let unknown = Failure {
                    stage: "unknown".into(),
                    error: "unknown: not seen failing in this process".into(),
                };
                let failure = letter.failure.as_ref().unwrap_or(&unknown);
                pipe.cmd("XADD")
                    .arg(&dead_letters)
                    .arg("*")
                    .arg("dead.id")
                    .arg(&letter.id)
                    .arg("dead.stream")
                    .arg(stream)
                    .arg("dead.group")
                    .arg(group)
                    .arg("dead.consumer")
                    .arg(consumer)
                    .arg("dead.deliveries")
                    .arg(letter.deliveries)
                    .arg("dead.stage")
                    .arg(&failure.stage)
                    .arg("dead.error")
                    .arg(&failure.error);
                for (name, value) in &letter.fields {
                    pipe.arg(name).arg(value);
                }
                pipe.ignore();
            }
            pipe.cmd("XACK").arg(stream).arg(group).arg(&ids).ignore();
            pipe.query::<()>(c)
        })?;
        let progress = &self.consumer.progress;
        let count = letters.len() as u64;
        progress.dead_lettered.fetch_add(count, Ordering::Relaxed);
        progress.acknowledged.fetch_add(count, Ordering::Relaxed);
        Ok(())
    }

    /// How many entries the server counts pending under this consumer's name.
    fn left_pending(&mut self) -> Result<u64, Error> {
        let config = &self.consumer.config;
        let (stream, group) = (&config.stream, &config.group);
        let reply = self
            .consumer
            .redis
            .run("XPENDING", |c| redis::cmd("XPENDING").arg(stream).arg(group).query::<Value>(c))?;
        pending_of(reply, &config.consumer)
    }

    /// Hands entries to the pipeline; counts and returns how many were new to this consumer
    /// (as claimed if `redelivered`, else as read). Entries
    /// deleted from the stream while pending are acknowledged with the next round trip (and
    /// counted); entries this consumer already holds (a claim hands them back) are skipped.
    fn push(&mut self, input: &Input<Entry>, raw: Vec<RawEntry>, redelivered: bool) -> usize {
        if raw.is_empty() {
            return 0;
        }
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

/// An entry on its way to the dead-letter stream.
struct DeadLetter {
    id: String,
    fields: Fields,
    /// Times it was handed out and not acknowledged.
    deliveries: u64,
    /// The last failure this process saw it through, if any.
    failure: Option<Failure>,
}
