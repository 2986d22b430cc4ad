//! [`ConsumerConfig`] and [`WriterConfig`]: what to read, where to write, and how to behave.

use std::time::Duration;

use backflow::core::{ConfigError, RetrySchedule};

use crate::endpoint::Endpoint;
use crate::{Error, Tls};

/// Entries asked for per `XREADGROUP` when nothing else is said: a worker's batch
/// ([`backflow::stage::BATCH`]).
///
/// # Examples
///
/// ```
/// assert_eq!(backflow_redis::DEFAULT_BATCH, 128);
/// ```
pub const DEFAULT_BATCH: usize = backflow::stage::BATCH;

/// The most entries [`ConsumerConfig::batch`] accepts. The server sets memory aside for the
/// whole count of each `XAUTOCLAIM` before it looks for entries, and a read this large is
/// already far past the size that makes round trips cheap.
///
/// # Examples
///
/// ```
/// use backflow_redis::{ConsumerConfig, MAX_BATCH};
///
/// let config = ConsumerConfig::new("redis://localhost/", "s", "g", "c");
/// assert!(config.clone().batch(MAX_BATCH).validate().is_ok());
/// assert!(config.batch(MAX_BATCH + 1).validate().is_err());
/// ```
pub const MAX_BATCH: usize = 1_000_000;

/// The longest any duration setting may be: 365 days. Longer waits are of no use, and this
/// keeps every deadline within what the clock and the server (milliseconds in a signed
/// 64-bit count) take.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use backflow_redis::{ConsumerConfig, MAX_DURATION};
///
/// let config = ConsumerConfig::new("redis://localhost/", "s", "g", "c");
/// assert!(config.clone().claim_idle(MAX_DURATION).validate().is_ok());
/// assert!(config.claim_idle(Duration::MAX).validate().is_err());
/// ```
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// How many times an entry is handed out, and not acknowledged, before a consumer moves it
/// to the dead-letter stream, when nothing else is said.
///
/// # Examples
///
/// ```
/// assert_eq!(backflow_redis::DEFAULT_MAX_DELIVERIES, 5);
/// ```
pub const DEFAULT_MAX_DELIVERIES: u64 = 5;

/// The reconnect schedule when nothing else is said: 8 retries, 50 ms doubling to 2 s (about
/// 6 s in all before giving up).
///
/// # Examples
///
/// ```
/// assert_eq!(backflow_redis::DEFAULT_RECONNECT.max_attempts(), 8);
/// ```
pub const DEFAULT_RECONNECT: RetrySchedule =
    match RetrySchedule::new(Duration::from_millis(50), Duration::from_secs(2), 8) {
        Ok(schedule) => schedule,
        Err(_) => panic!("the default reconnect schedule is valid"),
    };

/// How a [`Consumer`](crate::Consumer) reads a stream as one member of a consumer group.
///
/// Nothing is checked until [`validate`](Self::validate) (which
/// [`Consumer::connect`](crate::Consumer::connect) calls): each setter just records.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use backflow_redis::ConsumerConfig;
///
/// let config = ConsumerConfig::new("redis://127.0.0.1:6379/", "orders", "billing", "host-a")
///     .batch(256)
///     .block(Duration::from_millis(200))
///     .claim_idle(Duration::from_secs(60));
/// config.validate()?;
/// # Ok::<(), backflow_redis::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub(crate) endpoint: Endpoint,
    pub(crate) stream: String,
    pub(crate) group: String,
    pub(crate) consumer: String,
    pub(crate) batch: usize,
    pub(crate) block: Duration,
    pub(crate) claim_idle: Duration,
    pub(crate) claim_every: Duration,
    pub(crate) max_pending: Option<usize>,
    pub(crate) reconnect: RetrySchedule,
    pub(crate) stop_when_idle: Option<Duration>,
    pub(crate) max_deliveries: u64,
    pub(crate) dead_letter_stream: Option<String>,
}

impl ConsumerConfig {
    /// Reads `stream` at `url` as consumer `consumer` of `group` (created at the start of the
    /// stream if it does not exist). Each process of a scaled-out pipeline uses the same
    /// stream and group and its own consumer name.
    ///
    /// # Examples
    ///
    /// ```
    /// let config = backflow_redis::ConsumerConfig::new("redis://localhost/", "events", "etl", "worker-1");
    /// assert!(config.validate().is_ok());
    /// ```
    pub fn new(
        url: impl Into<String>,
        stream: impl Into<String>,
        group: impl Into<String>,
        consumer: impl Into<String>,
    ) -> Self {
        Self {
            endpoint: Endpoint::new(url.into()),
            stream: stream.into(),
            group: group.into(),
            consumer: consumer.into(),
            batch: DEFAULT_BATCH,
            block: Duration::from_millis(100),
            claim_idle: Duration::from_secs(30),
            claim_every: Duration::from_secs(5),
            max_pending: None,
            reconnect: DEFAULT_RECONNECT,
            stop_when_idle: None,
            max_deliveries: DEFAULT_MAX_DELIVERIES,
            dead_letter_stream: None,
        }
    }

    /// Authenticates as `username` (a Redis ACL user), in place of the URL's user. Without
    /// a username anywhere, the password is the `default` user's (`requirepass`).
    ///
    /// # Examples
    ///
    /// ```
    /// # use backflow_redis::ConsumerConfig;
    /// let config = ConsumerConfig::new("redis://localhost/", "s", "g", "c").username("app");
    /// assert!(format!("{config:?}").contains("app"));
    /// ```
    #[must_use]
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.endpoint.set_username(username.into());
        self
    }

    /// Authenticates with `password`, in place of the URL's: read it from wherever the
    /// application keeps secrets (an environment variable, a file) rather than writing it in
    /// the URL. It is never printed: `Debug` shows `***`, and no error carries it.
    ///
    /// # Examples
    ///
    /// ```
    /// # use backflow_redis::ConsumerConfig;
    /// let password = std::env::var("REDIS_PASSWORD").unwrap_or_else(|_| "s3cret".into());
    /// let config = ConsumerConfig::new("redis://localhost/", "s", "g", "c").username("app").password(password);
    /// assert!(!format!("{config:?}").contains("s3cret"));
    /// ```
    #[must_use]
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.endpoint.set_password(password.into());
        self
    }

    /// Trusts only `tls`'s CA for a `rediss://` URL, and shows its client certificate if it
    /// has one (mutual TLS). See [`Tls`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use backflow_redis::{ConsumerConfig, Tls};
    /// let config = ConsumerConfig::new("rediss://localhost/", "s", "g", "c").tls(Tls::ca_file("/etc/redis/ca.pem"));
    /// assert!(format!("{config:?}").contains("ca.pem"));
    /// ```
    #[must_use]
    pub fn tls(mut self, tls: Tls) -> Self {
        self.endpoint.set_tls(tls);
        self
    }

    /// Entries asked for per read (`COUNT`), at most [`MAX_BATCH`]; default [`DEFAULT_BATCH`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use backflow_redis::ConsumerConfig;
    /// let config = ConsumerConfig::new("redis://localhost/", "s", "g", "c").batch(0);
    /// assert!(config.validate().unwrap_err().to_string().contains("`batch`"));
    /// ```
    #[must_use]
    pub fn batch(mut self, entries: usize) -> Self {
        self.batch = entries;
        self
    }

    /// How long one read waits on the server for new entries (`BLOCK`); default 100 ms, at
    /// most [`MAX_DURATION`]. The consumer checks for a stop, and sends acknowledgements, at
    /// least this often.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use backflow_redis::ConsumerConfig;
    /// let config = ConsumerConfig::new("redis://localhost/", "s", "g", "c").block(Duration::ZERO);
    /// assert!(config.validate().unwrap_err().to_string().contains("`block`"));
    /// ```
    #[must_use]
    pub fn block(mut self, wait: Duration) -> Self {
        self.block = wait;
        self
    }

    /// How long an entry must have been pending, unacknowledged, before this consumer takes
    /// it over (`XAUTOCLAIM`) from whichever consumer had it: one that died, or one much
    /// slower than this. It is also how long an entry this consumer let go unacknowledged
    /// (its stage panicked) waits before this consumer tries it again. Default 30 s, at most
    /// [`MAX_DURATION`]; set it well above the time an entry takes through the pipeline, or
    /// live consumers' entries are processed twice (and their deliveries counted twice
    /// towards [`max_deliveries`](Self::max_deliveries)).
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use backflow_redis::ConsumerConfig;
    /// let config = ConsumerConfig::new("redis://localhost/", "s", "g", "c").claim_idle(Duration::from_secs(10));
    /// assert!(config.validate().is_ok());
    /// ```
    #[must_use]
    pub fn claim_idle(mut self, idle: Duration) -> Self {
        self.claim_idle = idle;
        self
    }

    /// How often to look for entries to take over, or to try again; default 5 s, at most
    /// [`MAX_DURATION`]. The first look is at start.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use backflow_redis::ConsumerConfig;
    /// let config = ConsumerConfig::new("redis://localhost/", "s", "g", "c").claim_every(Duration::from_secs(1));
    /// assert!(config.validate().is_ok());
    /// ```
    #[must_use]
    pub fn claim_every(mut self, period: Duration) -> Self {
        self.claim_every = period;
        self
    }

    /// The most entries this consumer holds unacknowledged: read or taken over and not yet
    /// acknowledged, including those let go unacknowledged (a panic) that are still pending
    /// under its name, waiting to be tried again. It reads no more until some are
    /// acknowledged. Default: the first stage's queue capacity plus one batch.
    ///
    /// # Examples
    ///
    /// ```
    /// # use backflow_redis::ConsumerConfig;
    /// let config = ConsumerConfig::new("redis://localhost/", "s", "g", "c").max_pending(0);
    /// assert!(config.validate().unwrap_err().to_string().contains("`max_pending`"));
    /// ```
    #[must_use]
    pub fn max_pending(mut self, entries: usize) -> Self {
        self.max_pending = Some(entries);
        self
    }

    /// Delays between attempts after the connection is lost, or while the server answers
    /// that it cannot serve yet (`LOADING` after a restart, `BUSY`, `TRYAGAIN`, `MASTERDOWN`),
    /// and how many attempts before giving up with [`Error::Connection`]; default
    /// [`DEFAULT_RECONNECT`]. Make it last longer than the server takes to load its data
    /// after a restart. The delays are slept as they are (a stop is noticed after them).
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// use backflow::core::RetrySchedule;
    /// # use backflow_redis::ConsumerConfig;
    /// let schedule = RetrySchedule::new(Duration::from_millis(10), Duration::from_secs(1), 20)?;
    /// let config = ConsumerConfig::new("redis://localhost/", "s", "g", "c").reconnect(schedule);
    /// # Ok::<(), backflow::core::ConfigError>(())
    /// ```
    #[must_use]
    pub fn reconnect(mut self, schedule: RetrySchedule) -> Self {
        self.reconnect = schedule;
        self
    }

    /// Stops by itself, draining the pipeline, once it has read and claimed nothing for
    /// `idle` (a batch job over what the stream holds); at most [`MAX_DURATION`]. Without it
    /// the consumer runs until [`ConsumerHandle::stop`](crate::ConsumerHandle::stop).
    /// Entries waiting to be tried again when it stops stay pending (see
    /// [`Summary::pending`](crate::Summary::pending)).
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use backflow_redis::ConsumerConfig;
    /// let config = ConsumerConfig::new("redis://localhost/", "s", "g", "c").stop_when_idle(Duration::from_secs(1));
    /// assert!(config.validate().is_ok());
    /// ```
    #[must_use]
    pub fn stop_when_idle(mut self, idle: Duration) -> Self {
        self.stop_when_idle = Some(idle);
        self
    }

    /// How many times an entry may be handed out without being acknowledged (default
    /// [`DEFAULT_MAX_DELIVERIES`]). The count is the server's (`XPENDING`): every read and
    /// every take-over counts, by any consumer of the group. An entry handed out more often
    /// than this (it made its stage panic every time, or crashed every process that took it)
    /// is not processed again: it goes to the [dead-letter stream](Self::dead_letter_stream)
    /// and is acknowledged.
    ///
    /// # Examples
    ///
    /// ```
    /// # use backflow_redis::ConsumerConfig;
    /// let config = ConsumerConfig::new("redis://localhost/", "s", "g", "c").max_deliveries(3);
    /// assert!(config.validate().is_ok());
    /// let config = ConsumerConfig::new("redis://localhost/", "s", "g", "c").max_deliveries(0);
    /// assert!(config.validate().unwrap_err().to_string().contains("`max_deliveries`"));
    /// ```
    #[must_use]
    pub fn max_deliveries(mut self, deliveries: u64) -> Self {
        self.max_deliveries = deliveries;
        self
    }

    /// The stream entries handed out more than [`max_deliveries`](Self::max_deliveries) times
    /// go to; default `<stream>:dead`. Each dead letter holds the entry's fields after these:
    /// `dead.id` (its id in the stream), `dead.stream`, `dead.group`, `dead.consumer` (the one
    /// that gave up on it), `dead.deliveries` (times handed out and not acknowledged),
    /// `dead.stage` and `dead.error` (the last failure this consumer saw: the stage, and
    /// `panicked` or the error it was kept pending with; `unknown` when another process
    /// failed it).
    ///
    /// # Examples
    ///
    /// ```
    /// # use backflow_redis::ConsumerConfig;
    /// let config = ConsumerConfig::new("redis://localhost/", "orders", "g", "c")
    ///     .dead_letter_stream("orders:poison");
    /// assert!(config.validate().is_ok());
    /// let config = ConsumerConfig::new("redis://localhost/", "orders", "g", "c")
    ///     .dead_letter_stream("orders");
    /// assert!(config.validate().unwrap_err().to_string().contains("`dead_letter_stream`"));
    /// ```
    #[must_use]
    pub fn dead_letter_stream(mut self, stream: impl Into<String>) -> Self {
        self.dead_letter_stream = Some(stream.into());
        self
    }

    /// The dead-letter stream's name: the one set, or `<stream>:dead`.
    pub(crate) fn dead_letters(&self) -> String {
        self.dead_letter_stream.clone().unwrap_or_else(|| format!("{}:dead", self.stream))
    }

    /// Checks every setting.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the first field that is wrong: `url` (not a Redis URL, port 0,
    /// a negative database, a `%` in the user or password that is not an escape), `tls`
    /// (set for a URL other than `rediss://`), `tls.ca`, `tls.client_cert`, `tls.client_key`
    /// (a file that cannot be read or is over 16 MiB, PEM without what it should hold, a
    /// certificate that does not parse, a key the TLS provider cannot use or that is not the
    /// client certificate's),
    /// `stream`, `group` or `consumer` (empty), `batch` (zero or over [`MAX_BATCH`]),
    /// `max_pending` or `max_deliveries` (zero), `block`, `claim_idle`, `claim_every` or
    /// `stop_when_idle` (under a millisecond or over [`MAX_DURATION`]),
    /// `dead_letter_stream` (empty, or the stream read).
    ///
    /// # Examples
    ///
    /// ```
    /// # use backflow_redis::ConsumerConfig;
    /// let config = ConsumerConfig::new("http://localhost/", "s", "g", "c");
    /// assert!(config.validate().unwrap_err().to_string().contains("`url`"));
    /// ```
    pub fn validate(&self) -> Result<(), Error> {
        self.endpoint.client()?;
        not_empty("stream", &self.stream)?;
        not_empty("group", &self.group)?;
        not_empty("consumer", &self.consumer)?;
        positive("batch", self.batch)?;
        if self.batch > MAX_BATCH {
            return Err(invalid("batch", "at most MAX_BATCH (1 000 000)"));
        }
        positive("max_pending", self.max_pending.unwrap_or(1))?;
        if self.max_deliveries == 0 {
            return Err(invalid("max_deliveries", "at least 1"));
        }
        duration("block", self.block)?;
        duration("claim_idle", self.claim_idle)?;
        duration("claim_every", self.claim_every)?;
        duration("stop_when_idle", self.stop_when_idle.unwrap_or(self.block))?;
        let dead_letters = self.dead_letters();
        not_empty("dead_letter_stream", &dead_letters)?;
        if dead_letters == self.stream {
            return Err(invalid("dead_letter_stream", "a stream other than the one read"));
        }
        Ok(())
    }
}

/// Where a [`Writer`](crate::Writer) adds entries, and how.
///
/// # Examples
///
/// ```
/// use backflow_redis::WriterConfig;
///
/// let config = WriterConfig::new("redis://127.0.0.1/", "results").max_len(1_000_000);
/// config.validate()?;
/// # Ok::<(), backflow_redis::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub(crate) endpoint: Endpoint,
    pub(crate) stream: String,
    pub(crate) max_len: Option<usize>,
    pub(crate) reconnect: RetrySchedule,
}

impl WriterConfig {
    /// Adds entries to `stream` at `url`.
    ///
    /// # Examples
    ///
    /// ```
    /// let config = backflow_redis::WriterConfig::new("redis://localhost/", "out");
    /// assert!(config.validate().is_ok());
    /// ```
    pub fn new(url: impl Into<String>, stream: impl Into<String>) -> Self {
        Self {
            endpoint: Endpoint::new(url.into()),
            stream: stream.into(),
            max_len: None,
            reconnect: DEFAULT_RECONNECT,
        }
    }

    /// Authenticates as `username` (a Redis ACL user), in place of the URL's user. Without
    /// a username anywhere, the password is the `default` user's (`requirepass`).
    ///
    /// # Examples
    ///
    /// ```
    /// # use backflow_redis::WriterConfig;
    /// let config = WriterConfig::new("redis://localhost/", "out").username("app");
    /// assert!(format!("{config:?}").contains("app"));
    /// ```
    #[must_use]
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.endpoint.set_username(username.into());
        self
    }

    /// Authenticates with `password`, in place of the URL's: read it from wherever the
    /// application keeps secrets (an environment variable, a file) rather than writing it in
    /// the URL. It is never printed: `Debug` shows `***`, and no error carries it.
    ///
    /// # Examples
    ///
    /// ```
    /// # use backflow_redis::WriterConfig;
    /// let password = std::env::var("REDIS_PASSWORD").unwrap_or_else(|_| "s3cret".into());
    /// let config = WriterConfig::new("redis://localhost/", "out").username("app").password(password);
    /// assert!(!format!("{config:?}").contains("s3cret"));
    /// ```
    #[must_use]
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.endpoint.set_password(password.into());
        self
    }

    /// Trusts only `tls`'s CA for a `rediss://` URL, and shows its client certificate if it
    /// has one (mutual TLS). See [`Tls`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use backflow_redis::{WriterConfig, Tls};
    /// let config = WriterConfig::new("rediss://localhost/", "out").tls(Tls::ca_file("/etc/redis/ca.pem"));
    /// assert!(format!("{config:?}").contains("ca.pem"));
    /// ```
    #[must_use]
    pub fn tls(mut self, tls: Tls) -> Self {
        self.endpoint.set_tls(tls);
        self
    }

    /// Trims the stream to about `entries` as it grows (`MAXLEN ~`: the server trims whole
    /// nodes, so the length may be somewhat above); at most `i64::MAX`, the server's largest
    /// count. Default: no trimming.
    ///
    /// # Examples
    ///
    /// ```
    /// # use backflow_redis::WriterConfig;
    /// let config = WriterConfig::new("redis://localhost/", "out").max_len(0);
    /// assert!(config.validate().unwrap_err().to_string().contains("`max_len`"));
    /// ```
    #[must_use]
    pub fn max_len(mut self, entries: usize) -> Self {
        self.max_len = Some(entries);
        self
    }

    /// Delays between attempts after the connection is lost, or while the server answers
    /// that it cannot serve yet, and how many before a batch fails; default
    /// [`DEFAULT_RECONNECT`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use backflow_redis::WriterConfig;
    /// let schedule = backflow::core::RetrySchedule::new(Duration::from_millis(5), Duration::from_millis(5), 2)?;
    /// let config = WriterConfig::new("redis://localhost/", "out").reconnect(schedule);
    /// # Ok::<(), backflow::core::ConfigError>(())
    /// ```
    #[must_use]
    pub fn reconnect(mut self, schedule: RetrySchedule) -> Self {
        self.reconnect = schedule;
        self
    }

    /// Checks every setting.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the field: `url` (not a Redis URL), `tls`, `tls.ca`,
    /// `tls.client_cert`, `tls.client_key` (as for [`ConsumerConfig::validate`]), `stream` (empty),
    /// `max_len` (zero, or over `i64::MAX`).
    ///
    /// # Examples
    ///
    /// ```
    /// # use backflow_redis::WriterConfig;
    /// let config = WriterConfig::new("redis://localhost/", "");
    /// assert!(config.validate().unwrap_err().to_string().contains("`stream`"));
    /// ```
    pub fn validate(&self) -> Result<(), Error> {
        self.endpoint.client()?;
        not_empty("stream", &self.stream)?;
        positive("max_len", self.max_len.unwrap_or(1))?;
        if self.max_len.is_some_and(|entries| i64::try_from(entries).is_err()) {
            return Err(invalid("max_len", "at most i64::MAX"));
        }
        Ok(())
    }
}

pub(crate) fn invalid(field: &'static str, expected: &'static str) -> Error {
    Error::Config(ConfigError::Invalid { field, expected })
}

fn not_empty(field: &'static str, value: &str) -> Result<(), Error> {
    if value.is_empty() { Err(invalid(field, "a non-empty name")) } else { Ok(()) }
}

fn positive(field: &'static str, value: usize) -> Result<(), Error> {
    if value == 0 { Err(invalid(field, "at least 1")) } else { Ok(()) }
}

fn duration(field: &'static str, value: Duration) -> Result<(), Error> {
    if value < Duration::from_millis(1) || value > MAX_DURATION {
        Err(invalid(field, "at least 1 ms and at most MAX_DURATION (365 days)"))
    } else {
        Ok(())
    }
}

/// `duration` in whole milliseconds, as the server takes it (validated settings always fit).
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
