//! Scale a backflow pipeline out past one machine on Redis Streams consumer groups.
//!
//! Run the same pipeline in as many processes, on as many machines, as the work needs: each
//! process is a [`Consumer`] of one group on one stream, and the group hands each entry to
//! one of them. Inside a process, backpressure reaches the server: a consumer reads
//! (`XREADGROUP`) only while the pipeline's first queue has room and fewer than `max_pending`
//! of its entries are unacknowledged.
//!
//! **Delivery guarantee: at least once.** An entry is acknowledged (`XACK`) only after it has
//! left the pipeline: delivered (written by a [`Writer`], or taken by the sink), filtered
//! out, dropped by an overflow policy, or skipped or dead-lettered by an error policy. That
//! is when the last clone of its [`Receipt`] is dropped (in a stage, once the worker has
//! recorded the outcome of the call that dropped it). An entry abandoned by a cancel, one
//! whose stage panicked, one whose stage's error failed the pipeline
//! ([`ErrorPolicy::FailFast`](backflow::ErrorPolicy::FailFast)), and every entry of a process that crashed stay pending, and a
//! consumer takes them over (`XAUTOCLAIM`, or `XCLAIM` for its own) once they have been idle
//! for `claim_idle`: so an entry may be processed twice, never lost. Make what the pipeline
//! writes idempotent, or check [`Entry::redelivered`].
//!
//! **Poison entries** do not cycle forever: an entry handed out more than `max_deliveries`
//! times (default 5, the server's delivery count) is moved to a dead-letter stream
//! (`<stream>:dead` unless [set](ConsumerConfig::dead_letter_stream)) with its fields, the
//! stage and error it last failed with, and its delivery count, then acknowledged; the
//! [`Summary`] counts it. While they wait to be tried again, entries let go unacknowledged
//! count against `max_pending`, and [`Summary::pending`] says how many a run leaves pending.
//!
//! **Server restarts** are waited out: a lost connection, and the replies of a server that
//! cannot serve yet (`LOADING` while it reloads its data, `BUSY`, `TRYAGAIN`, `MASTERDOWN`),
//! are retried on the reconnect schedule, by the consumer and by the [`Writer`] alike. A
//! command may then run twice (an entry read twice, a record written twice), which
//! at-least-once allows; what the server lost in the crash is read or written again.
//!
//! **TLS and users.** A `rediss://` URL connects over TLS, trusting the CA a [`Tls`] names
//! (and showing its client certificate, for mutual TLS); a username and password go in the
//! URL or beside it ([`ConsumerConfig::password`]). The password is masked (`***`) in every
//! `Debug` and `Display` and is in no error. Refused credentials ([`Error::Auth`]), a missing
//! ACL permission ([`Error::Permission`], naming the command) and a failed handshake
//! ([`Error::Tls`]) are not retried. The README gives the ACL rules a consumer and a writer
//! need.
//!
//! ```no_run
//! use std::num::NonZeroUsize;
//! use std::time::Duration;
//! use backflow::{Pipeline, stage};
//! use backflow_redis::{Consumer, ConsumerConfig, Entry, Record, Writer, WriterConfig};
//!
//! let url = "redis://127.0.0.1/";
//! let writer = Writer::new(WriterConfig::new(url, "squares"))?;
//! let pipeline = Pipeline::<Entry>::builder()
//!     .stage("square", || |entry: Entry| {
//!         let n: u64 = entry.get_str("n").and_then(|n| n.parse().ok()).unwrap_or(0);
//!         Record::new().field("n", n.to_string()).field("square", (n * n).to_string()).settles(entry.receipt())
//!     })
//!     .stage("batch", || stage::batches(NonZeroUsize::new(64).unwrap()))
//!     .flush_every(Duration::from_millis(20))
//!     .stage("store", move || writer.stage())
//!     .sink(|_ids| {})
//!     .build()?;
//! // Each process: same stream and group, its own consumer name.
//! let consumer = Consumer::connect(ConsumerConfig::new(url, "numbers", "squarers", "host-a"))?;
//! let summary = consumer.run(pipeline)?;
//! println!("{} read, {} taken over, {} acknowledged", summary.read, summary.claimed, summary.acknowledged);
//! println!("{} dead-lettered, {} left pending", summary.dead_lettered, summary.pending);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
// docs.rs (`--cfg docsrs`, nightly) badges each feature-gated item with its feature.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

mod config;
mod connection;
mod consumer;
mod endpoint;
mod entry;
mod error;
mod tls;
mod writer;

pub use config::{
    ConsumerConfig, DEFAULT_BATCH, DEFAULT_MAX_DELIVERIES, DEFAULT_RECONNECT, MAX_BATCH,
    MAX_DURATION, WriterConfig,
};
pub use consumer::{Consumer, ConsumerHandle, Summary};
pub use entry::{Entry, Fields, Receipt};
pub use error::Error;
pub use tls::Tls;
pub use writer::{Record, Writer, Xadd};
