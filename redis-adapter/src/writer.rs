//! [`Writer`]: a stage that adds records to a stream with `XADD`, a batch per round trip.

use std::fmt;
use std::time::Duration;

use backflow::core::stage::{Emit, Stage};
use redis::Value;

use crate::connection::Reconnecting;
use crate::entry::{Fields, Receipt};
use crate::{Error, WriterConfig};

/// One entry to add to the output stream: its fields, and the receipts of the entries it was
/// made from (acknowledged once the record is written).
///
/// # Examples
///
/// ```
/// use backflow_redis::{Entry, Record};
///
/// let entry = Entry::detached("1-0", vec![("n".into(), b"3".to_vec())]);
/// let record = Record::new().field("square", "9").settles(entry.receipt());
/// assert_eq!(record.fields()[0].0, "square");
/// ```
#[derive(Debug, Clone, Default)]
pub struct Record {
    fields: Fields,
    receipts: Vec<Receipt>,
}

impl Record {
    /// A record with no fields yet (Redis needs at least one to add it).
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(backflow_redis::Record::new().fields().is_empty());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds field `name` with `value`.
    ///
    /// # Examples
    ///
    /// ```
    /// let record = backflow_redis::Record::new().field("k", b"v".as_slice());
    /// assert_eq!(record.fields(), &[("k".to_string(), b"v".to_vec())]);
    /// ```
    #[must_use]
    pub fn field(mut self, name: impl Into<String>, value: impl AsRef<[u8]>) -> Self {
        self.fields.push((name.into(), value.as_ref().to_vec()));
        self
    }

    /// Makes the record carry `receipt`: the entry it stands for is acknowledged only after
    /// the record is written (and after every other value carrying the receipt is gone).
    ///
    /// # Examples
    ///
    /// ```
    /// # use backflow_redis::{Entry, Record};
    /// let entry = Entry::detached("1-0", Vec::new());
    /// let record = Record::new().field("k", "v").settles(entry.receipt());
    /// ```
    #[must_use]
    pub fn settles(mut self, receipt: Receipt) -> Self {
        self.receipts.push(receipt);
        self
    }

    /// The fields so far.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(backflow_redis::Record::new().field("a", "1").fields().len(), 1);
    /// ```
    pub fn fields(&self) -> &[(String, Vec<u8>)] {
        &self.fields
    }
}

/// Adds records to a stream: the factory of an `XADD` stage.
///
/// Each worker of the stage gets its own connection (opened on first use). The stage takes a
/// batch of records (put [`backflow::stage::batches`] with a
/// [`flush_every`](backflow::Builder::flush_every) in front of it: batches by size or by
/// time), sends one `XADD` per record in a single round trip, and emits the new entries' ids;
/// then the records' receipts go, and the entries they stand for are acknowledged.
///
/// If the connection is lost, or the server answers that it cannot serve yet (`LOADING`
/// after a restart, `BUSY` with a long script, `TRYAGAIN`, `MASTERDOWN`), the batch is sent
/// again on the reconnect schedule (a record that had reached the server may then be added
/// twice: at-least-once). When the schedule runs out, every receipt in the batch is
/// [kept pending](Receipt::keep_pending) (its entry is handed out again later, and
/// dead-lettered with this error once it has been handed out `max_deliveries` times) and the
/// stage returns the error to its error policy.
///
/// # Examples
///
/// ```no_run
/// use std::num::NonZeroUsize;
/// use std::time::Duration;
/// use backflow::{ErrorPolicy, Pipeline, stage};
/// use backflow_redis::{Entry, Record, Writer, WriterConfig};
///
/// let writer = Writer::new(WriterConfig::new("redis://127.0.0.1/", "squares").max_len(100_000))?;
/// let pipeline = Pipeline::<Entry>::builder()
///     .stage("square", || |entry: Entry| {
///         let n: u64 = entry.get_str("n").and_then(|n| n.parse().ok()).unwrap_or(0);
///         Record::new().field("square", (n * n).to_string()).settles(entry.receipt())
///     })
///     .stage("batch", || stage::batches(NonZeroUsize::new(64).unwrap()))
///     .flush_every(Duration::from_millis(20))
///     .stage("store", move || writer.stage())
///     .on_error(ErrorPolicy::FailFast)
///     .sink(|_ids| {})
///     .build()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Writer {
    config: WriterConfig,
    client: redis::Client,
}

impl Writer {
    /// A writer for `config`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming a bad setting.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_redis::{Writer, WriterConfig};
    ///
    /// assert!(Writer::new(WriterConfig::new("nope://", "out")).is_err());
    /// ```
    pub fn new(config: WriterConfig) -> Result<Self, Error> {
        config.validate()?;
        Ok(Self { client: config.endpoint.client()?, config })
    }

    /// A new stage with its own connection, opened on its first batch.
    ///
    /// # Examples
    ///
    /// ```
    /// # use backflow_redis::{Writer, WriterConfig};
    /// let writer = Writer::new(WriterConfig::new("redis://127.0.0.1/", "out"))?;
    /// let stage = writer.stage(); // connects on first use
    /// # Ok::<(), backflow_redis::Error>(())
    /// ```
    pub fn stage(&self) -> Xadd {
        let (client, user) = (self.client.clone(), self.config.endpoint.user());
        let redis = Reconnecting::new(client, user, self.config.reconnect, Duration::ZERO);
        Xadd { config: self.config.clone(), redis }
    }
}

impl fmt::Debug for Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer").field("config", &self.config).finish_non_exhaustive()
    }
}

/// The `XADD` stage a [`Writer`] makes: batches of [`Record`]s in, the new ids out.
///
/// # Examples
///
/// ```
/// use backflow::Stage;
/// use backflow_redis::{Writer, WriterConfig, Xadd};
///
/// let mut stage: Xadd = Writer::new(WriterConfig::new("redis://127.0.0.1/", "out"))?.stage();
/// // An empty batch writes nothing, and needs no server.
/// stage.process(Vec::new(), &mut |_ids: Vec<String>| unreachable!())?;
/// # Ok::<(), backflow_redis::Error>(())
/// ```
pub struct Xadd {
    config: WriterConfig,
    redis: Reconnecting,
}

impl fmt::Debug for Xadd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Xadd").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Stage<Vec<Record>> for Xadd {
    type Out = Vec<String>;
    type Error = Error;

    fn process(
        &mut self,
        records: Vec<Record>,
        out: &mut impl Emit<Vec<String>>,
    ) -> Result<(), Error> {
        if records.is_empty() {
            return Ok(());
        }
        let (stream, max_len) = (&self.config.stream, self.config.max_len);
        let written = self.redis.run("XADD", |c| {
            let mut pipe = redis::pipe();
            for record in &records {
                pipe.cmd("XADD").arg(stream);
                if let Some(max_len) = max_len {
                    pipe.arg("MAXLEN").arg("~").arg(max_len);
                }
                pipe.arg("*");
                for (name, value) in &record.fields {
                    pipe.arg(name).arg(value);
                }
            }
            pipe.query::<Vec<Value>>(c)
        });
        match written {
            Ok(ids) => {
                let ids = ids
                    .into_iter()
                    .map(|id| match id {
                        Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                        other => format!("{other:?}"),
                    })
                    .collect();
                // The receipts go with `records`, after the write: the entries are settled.
                out.emit(ids);
                Ok(())
            }
            Err(error) => {
                for receipt in records.iter().flat_map(|record| &record.receipts) {
                    receipt.keep_pending_after(&error);
                }
                Err(error)
            }
        }
    }
}
