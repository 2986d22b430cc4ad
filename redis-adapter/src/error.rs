//! [`Error`]: everything a consumer or a writer can fail with.

use backflow::PipelineError;
use backflow::core::ConfigError;

/// Why a [`Consumer`](crate::Consumer) or a [`Writer`](crate::Writer) stopped or could not start.
///
/// # Examples
///
/// ```
/// use backflow_redis::{ConsumerConfig, Error};
///
/// let config = ConsumerConfig::new("redis://127.0.0.1/", "events", "", "worker-1");
/// match config.validate() {
///     Err(Error::Config(error)) => assert!(error.to_string().contains("`group`")),
///     other => panic!("{other:?}"),
/// }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting outside the values it accepts; the error names the field.
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    /// The server could not be reached, the connection kept dropping, or the server kept
    /// answering that it cannot serve yet (`LOADING`, `BUSY`, `TRYAGAIN`, `MASTERDOWN`),
    /// through every retry of the reconnect schedule.
    #[error("redis server not available after {attempts} attempts: {source}")]
    Connection {
        /// Connection attempts made, the first one included.
        attempts: u32,
        /// The last error.
        source: redis::RedisError,
    },
    /// The server refused a command (a wrong type at the key, a missing group, …).
    #[error("redis refused {command}: {source}")]
    Command {
        /// The command, e.g. `"XREADGROUP"`.
        command: &'static str,
        /// The server's error.
        source: redis::RedisError,
    },
    /// The server answered a command with a reply of an unexpected shape.
    #[error("unexpected reply to {command}: {detail}")]
    Reply {
        /// The command.
        command: &'static str,
        /// What was wrong with it.
        detail: String,
    },
    /// The pipeline stopped with an error (a fail-fast stage, a panic, a cancel). Entries it
    /// had not finished were not acknowledged: the group hands them out again.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}
