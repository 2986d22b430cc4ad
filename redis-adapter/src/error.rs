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
    /// The server refused the credentials (`WRONGPASS`: no such user, a wrong password, or a
    /// disabled user), or asked for credentials that were not given (`NOAUTH`). Not retried:
    /// nothing was read, written or acknowledged. The password is never part of the error.
    #[error("redis refused to authenticate user `{user}` ({code}): {detail}")]
    Auth {
        /// The user the connection tried to be, `default` when no username was given.
        user: String,
        /// The server's code: `WRONGPASS` or `NOAUTH` (`AUTH` when the client reports the
        /// refusal of its `AUTH` command without the server's code).
        code: String,
        /// What the server or the client said.
        detail: String,
    },
    /// The user may not run a command, or touch a key (`NOPERM`): its ACL rule lacks it (see
    /// the README for the rules a consumer and a writer need). Not retried; whatever the
    /// command was to settle stays pending in the group.
    #[error("redis user `{user}` has no permission to run {command}: {detail}")]
    Permission {
        /// The user that was refused.
        user: String,
        /// The command refused, e.g. `"XACK"` or `"XGROUP|CREATE"`.
        command: String,
        /// What the server said.
        detail: String,
    },
    /// The TLS handshake failed: the server's certificate is not signed by the trusted CA or
    /// does not name the host, or the server refused the client's certificate (or its
    /// absence). Not retried.
    #[error("TLS with the redis server failed: {detail}")]
    Tls {
        /// What went wrong, as rustls says it.
        detail: String,
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
