//! [`ConsumerConfig`] and [`WriterConfig`]: what to read, where to write, and how to behave.

use std::time::Duration;

use backflow::core::{ConfigError, RetrySchedule};

use crate::Error;

/// Entries asked for per `XREADGROUP` when nothing else is said: a worker's batch
/// ([`backflow::stage::BATCH`]).
///
/// # Examples
///
/// ```
/// assert_eq!(backflow_redis::DEFAULT_BATCH, 128);
/// ```
pub const DEFAULT_BATCH: usize = backflow::stage::BATCH;

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
    pub(crate) url: String,
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
            url: url.into(),
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
        }
    }

    /// Entries asked for per read (`COUNT`); default [`DEFAULT_BATCH`].
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

    /// How long one read waits on the server for new entries (`BLOCK`); default 100 ms. The
    /// consumer checks for a stop, and sends acknowledgements, at least this often.
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
    /// slower than this. Default 30 s; set it well above the time an entry takes through the
    /// pipeline, or live consumers' entries are processed twice.
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

    /// How often to look for entries to take over; default 5 s. The first look is at start.
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

    /// The most entries this consumer holds read and not yet acknowledged; it reads no more
    /// until some are. Default: the first stage's queue capacity plus one batch.
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

    /// Delays between reconnect attempts after the connection is lost, and how many attempts
    /// before giving up with [`Error::Connection`]; default [`DEFAULT_RECONNECT`].
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
    /// `idle` (a batch job over what the stream holds). Without it the consumer runs until
    /// [`ConsumerHandle::stop`](crate::ConsumerHandle::stop).
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

    /// Checks every setting.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the first field that is wrong: `url` (not a Redis URL),
    /// `stream`, `group` or `consumer` (empty), `batch`, `max_pending` (zero), `block`,
    /// `claim_idle`, `claim_every` or `stop_when_idle` (under a millisecond).
    ///
    /// # Examples
    ///
    /// ```
    /// # use backflow_redis::ConsumerConfig;
    /// let config = ConsumerConfig::new("http://localhost/", "s", "g", "c");
    /// assert!(config.validate().unwrap_err().to_string().contains("`url`"));
    /// ```
    pub fn validate(&self) -> Result<(), Error> {
        check_url(&self.url)?;
        not_empty("stream", &self.stream)?;
        not_empty("group", &self.group)?;
        not_empty("consumer", &self.consumer)?;
        positive("batch", self.batch)?;
        positive("max_pending", self.max_pending.unwrap_or(1))?;
        at_least_a_millisecond("block", self.block)?;
        at_least_a_millisecond("claim_idle", self.claim_idle)?;
        at_least_a_millisecond("claim_every", self.claim_every)?;
        at_least_a_millisecond("stop_when_idle", self.stop_when_idle.unwrap_or(self.block))?;
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
    pub(crate) url: String,
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
        Self { url: url.into(), stream: stream.into(), max_len: None, reconnect: DEFAULT_RECONNECT }
    }

    /// Trims the stream to about `entries` as it grows (`MAXLEN ~`: the server trims whole
    /// nodes, so the length may be somewhat above). Default: no trimming.
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

    /// Delays between reconnect attempts, and how many before a batch fails; default
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
    /// [`Error::Config`] naming the field: `url` (not a Redis URL), `stream` (empty),
    /// `max_len` (zero).
    ///
    /// # Examples
    ///
    /// ```
    /// # use backflow_redis::WriterConfig;
    /// let config = WriterConfig::new("redis://localhost/", "");
    /// assert!(config.validate().unwrap_err().to_string().contains("`stream`"));
    /// ```
    pub fn validate(&self) -> Result<(), Error> {
        check_url(&self.url)?;
        not_empty("stream", &self.stream)?;
        positive("max_len", self.max_len.unwrap_or(1))?;
        Ok(())
    }
}

fn invalid(field: &'static str, expected: &'static str) -> Error {
    Error::Config(ConfigError::Invalid { field, expected })
}

/// A client for `url` (opening one connects to nothing yet).
pub(crate) fn client(url: &str) -> Result<redis::Client, Error> {
    redis::Client::open(url).map_err(|_| invalid("url", "a Redis URL such as redis://host:6379/0"))
}

fn check_url(url: &str) -> Result<(), Error> {
    client(url).map(drop)
}

fn not_empty(field: &'static str, value: &str) -> Result<(), Error> {
    if value.is_empty() { Err(invalid(field, "a non-empty name")) } else { Ok(()) }
}

fn positive(field: &'static str, value: usize) -> Result<(), Error> {
    if value == 0 { Err(invalid(field, "at least 1")) } else { Ok(()) }
}

fn at_least_a_millisecond(field: &'static str, value: Duration) -> Result<(), Error> {
    if value < Duration::from_millis(1) { Err(invalid(field, "at least 1 ms")) } else { Ok(()) }
}
