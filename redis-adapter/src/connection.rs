//! A connection that reconnects on the reconnect schedule, and the parsing of stream replies.

use std::thread;
use std::time::Duration;

use backflow::core::RetrySchedule;
use redis::{Client, Connection, ErrorKind, RedisError, Value};

use crate::Error;
use crate::entry::Fields;
use crate::tls;

/// Room left on top of a blocking read before a silent server counts as a lost connection.
const READ_MARGIN: Duration = Duration::from_secs(5);

/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One Redis connection, opened on first use and opened again after it is lost.
pub(crate) struct Reconnecting {
    client: Client,
    /// The user the server authenticates the connection as, for errors.
    user: String,
    connection: Option<Connection>,
    schedule: RetrySchedule,
    /// How long the longest command may keep the server silent (a blocking read).
    longest: Duration,
    /// Connections opened after a loss.
    pub(crate) reconnects: u64,
}

impl Reconnecting {
    /// Connects through `client` as `user` on first use; `longest` is the longest the server
    /// may take to answer a command.
    pub(crate) fn new(
        client: Client,
        user: String,
        schedule: RetrySchedule,
        longest: Duration,
    ) -> Self {
        Self { client, user, connection: None, schedule, longest, reconnects: 0 }
    }

    /// Runs `command` on the connection. When the connection is lost (or cannot be opened),
    /// or the server answers that it cannot serve yet ([`is_transient`]), `command` runs
    /// again after the schedule's delay (on a new connection if it was lost), until the
    /// schedule runs out. A command that may have reached the server before the connection
    /// dropped runs twice: every caller sends only commands for which that is harmless or
    /// handled. Refused credentials, a missing permission and a failed TLS handshake are
    /// not retried: they end the run at once ([`refusal`]).
    pub(crate) fn run<T>(
        &mut self,
        name: &'static str,
        mut command: impl FnMut(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T, Error> {
        let mut attempt: u32 = 0;
        loop {
            let result = self.connection().and_then(&mut command);
            let error = match result {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            if let Some(refused) = refusal(&error, name, &self.user) {
                // A connection refused its credentials or its TLS is of no further use.
                if !matches!(refused, Error::Permission { .. }) {
                    self.connection = None;
                }
                return Err(refused);
            }
            if is_connection_loss(&error) {
                self.connection = None;
            } else if !is_transient(&error) {
                return Err(Error::Command { command: name, source: error });
            }
            attempt = attempt.saturating_add(1);
            let Some(delay) = self.schedule.delay(attempt) else {
                return Err(Error::Connection { attempts: attempt, source: error });
            };
            thread::sleep(delay);
            if self.connection.is_none() {
                self.reconnects += 1;
            }
        }
    }

    fn connection(&mut self) -> redis::RedisResult<&mut Connection> {
        if self.connection.is_none() {
            let connection = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
            connection.set_read_timeout(Some(self.longest.saturating_add(READ_MARGIN)))?;
            connection.set_write_timeout(Some(READ_MARGIN))?;
            self.connection = Some(connection);
        }
        Ok(self.connection.as_mut().expect("opened above"))
    }
}

fn is_connection_loss(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || error.is_unrecoverable_error()
}

/// The error for a refusal no retry can change, if `error` is one: the TLS handshake failed
/// ([`Error::Tls`]), the server refused the credentials of `user` or wants some
/// ([`Error::Auth`]), or `user` may not run the command named `name`, or one in its pipeline
/// ([`Error::Permission`], naming the command the server names).
pub(crate) fn refusal(error: &RedisError, name: &str, user: &str) -> Option<Error> {
    if let Some(detail) = tls::failure(error) {
        return Some(Error::Tls { detail });
    }
    let user = user.to_string();
    if error.kind() == ErrorKind::AuthenticationFailed {
        let detail = error.detail().unwrap_or("the server refused the credentials").to_string();
        return Some(Error::Auth { user, code: "AUTH".into(), detail });
    }
    let errors = error.clone().into_server_errors()?;
    errors.iter().find_map(|(_, refused)| {
        let detail = refused.details().unwrap_or_default().to_string();
        match refused.code() {
            code @ ("WRONGPASS" | "NOAUTH") => {
                Some(Error::Auth { user: user.clone(), code: code.into(), detail })
            }
            "NOPERM" => {
                // "this user has no permissions to run the 'xack' command"; a refused key
                // names no command: the one sent is named.
                let command = detail
                    .split('\'')
                    .nth(1)
                    .map_or_else(|| name.to_string(), str::to_ascii_uppercase);
                Some(Error::Permission { user: user.clone(), command, detail })
            }
            _ => None,
        }
    })
}

/// Replies that say the server cannot serve now and will soon: it is loading its data after a
/// restart, running a script past its time limit, or (in a cluster or behind a replica)
/// between owners of the data.
const TRANSIENT: [&str; 4] = ["LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN"];

/// Whether the server answered every failed command of `error` (one command, or several in
/// a pipeline) with a [`TRANSIENT`] reply.
pub(crate) fn is_transient(error: &RedisError) -> bool {
    error.clone().into_server_errors().is_some_and(|errors| {
        !errors.is_empty() && errors.iter().all(|(_, error)| TRANSIENT.contains(&error.code()))
    })
}

/// One entry as the server sent it: id, and fields (`None` for an entry deleted while pending).
pub(crate) type RawEntry = (String, Option<Fields>);

fn unexpected(command: &'static str, detail: impl Into<String>) -> Error {
    Error::Reply { command, detail: detail.into() }
}

fn text(value: Value, command: &'static str) -> Result<String, Error> {
    match value {
        Value::BulkString(bytes) => {
            String::from_utf8(bytes).map_err(|_| unexpected(command, "a string that is not UTF-8"))
        }
        Value::SimpleString(text) => Ok(text),
        other => Err(unexpected(command, format!("expected a string, got {other:?}"))),
    }
}

/// A name a client chose (a field's, another consumer's): any bytes to the server, a `String`
/// here, with U+FFFD in place of what is not UTF-8, so that no name holds an entry back.
fn name(value: Value, command: &'static str) -> Result<String, Error> {
    match value {
        Value::BulkString(bytes) => Ok(String::from_utf8(bytes)
            .unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into_owned())),
        other => text(other, command),
    }
}

fn array(value: Value, command: &'static str) -> Result<Vec<Value>, Error> {
    match value {
        Value::Array(values) => Ok(values),
        other => Err(unexpected(command, format!("expected an array, got {other:?}"))),
    }
}

/// `[id, [field, value, …] | nil]`.
fn entry(value: Value, command: &'static str) -> Result<RawEntry, Error> {
    let mut parts = array(value, command)?.into_iter();
    let (Some(id), Some(fields), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(unexpected(command, "an entry that is not [id, fields]"));
    };
    let id = text(id, command)?;
    let fields = match fields {
        Value::Nil => None,
        fields => {
            let flat = array(fields, command)?;
            let mut fields = Vec::with_capacity(flat.len() / 2);
            let mut flat = flat.into_iter();
            while let Some(field) = flat.next() {
                let value = match flat.next() {
                    Some(Value::BulkString(bytes)) => bytes,
                    _ => return Err(unexpected(command, "a field without a value")),
                };
                fields.push((name(field, command)?, value));
            }
            Some(fields)
        }
    };
    Ok((id, fields))
}

fn entries(value: Value, command: &'static str) -> Result<Vec<RawEntry>, Error> {
    array(value, command)?.into_iter().map(|e| entry(e, command)).collect()
}

/// An `XREADGROUP` reply for one stream: `nil` (nothing came) or `[[stream, [entry, …]]]`.
pub(crate) fn read_reply(value: Value) -> Result<Vec<RawEntry>, Error> {
    const COMMAND: &str = "XREADGROUP";
    match value {
        Value::Nil => Ok(Vec::new()),
        Value::Map(streams) => match streams.into_iter().next() {
            Some((_, read)) => entries(read, COMMAND),
            None => Ok(Vec::new()),
        },
        value => match array(value, COMMAND)?.into_iter().next() {
            Some(stream) => {
                let mut parts = array(stream, COMMAND)?.into_iter();
                entries(parts.nth(1).ok_or_else(|| unexpected(COMMAND, "no entries"))?, COMMAND)
            }
            None => Ok(Vec::new()),
        },
    }
}

/// An `XCLAIM` reply: `[entry, …]`, where an entry deleted from the stream may be `nil` or
/// `[id, nil]` (servers before 7 keep it pending; later ones drop it and leave it out).
pub(crate) fn claimed_reply(value: Value) -> Result<Vec<RawEntry>, Error> {
    const COMMAND: &str = "XCLAIM";
    let entries = array(value, COMMAND)?.into_iter().filter(|entry| *entry != Value::Nil);
    entries.map(|e| entry(e, COMMAND)).collect()
}

/// What `XPENDING <stream> <group> <id> <id> 1` says of one entry: who holds it, how long
/// since it was last handed out, and how many times it was; `None` if it is not pending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pending {
    pub(crate) consumer: String,
    pub(crate) idle: Duration,
    pub(crate) deliveries: u64,
}

/// An `XPENDING` reply for one entry: `[]`, or `[[id, consumer, idle ms, deliveries]]`.
pub(crate) fn pending_reply(value: Value) -> Result<Option<Pending>, Error> {
    const COMMAND: &str = "XPENDING";
    let Some(first) = array(value, COMMAND)?.into_iter().next() else { return Ok(None) };
    let mut parts = array(first, COMMAND)?.into_iter();
    let (Some(_id), Some(consumer), Some(idle), Some(deliveries)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(unexpected(COMMAND, "an entry that is not [id, consumer, idle, deliveries]"));
    };
    let number = |value: Value| match value {
        Value::Int(n) => u64::try_from(n).map_err(|_| unexpected(COMMAND, "a negative count")),
        other => Err(unexpected(COMMAND, format!("expected a number, got {other:?}"))),
    };
    Ok(Some(Pending {
        consumer: name(consumer, COMMAND)?,
        idle: Duration::from_millis(number(idle)?),
        deliveries: number(deliveries)?,
    }))
}

/// An `XPENDING <stream> <group>` reply: `[count, first id, last id, [[consumer, count], …]]`;
/// how many entries `consumer` holds.
pub(crate) fn pending_of(value: Value, consumer: &str) -> Result<u64, Error> {
    const COMMAND: &str = "XPENDING";
    let consumers = array(value, COMMAND)?.into_iter().nth(3).unwrap_or(Value::Nil);
    if consumers == Value::Nil {
        return Ok(0);
    }
    for pair in array(consumers, COMMAND)? {
        let mut parts = array(pair, COMMAND)?.into_iter();
        let (Some(holder), Some(count)) = (parts.next(), parts.next()) else {
            return Err(unexpected(COMMAND, "a consumer without a count"));
        };
        if name(holder, COMMAND)? == consumer {
            let count = text(count, COMMAND)?;
            return count.parse().map_err(|_| unexpected(COMMAND, format!("a count {count:?}")));
        }
    }
    Ok(0)
}

/// An `XAUTOCLAIM` reply: `[next cursor, [entry, …], [deleted id, …]]`; the cursor and the
/// entries (deleted ones are dropped from the pending list by the server).
pub(crate) fn claim_reply(value: Value) -> Result<(String, Vec<RawEntry>), Error> {
    const COMMAND: &str = "XAUTOCLAIM";
    let mut parts = array(value, COMMAND)?.into_iter();
    let (Some(cursor), Some(claimed)) = (parts.next(), parts.next()) else {
        return Err(unexpected(COMMAND, "fewer than two parts"));
    };
    Ok((text(cursor, COMMAND)?, entries(claimed, COMMAND)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_a_read_reply_with_a_deleted_entry() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("s"),
            Value::Array(vec![
                Value::Array(vec![bulk("1-0"), Value::Array(vec![bulk("n"), bulk("5")])]),
                Value::Array(vec![bulk("2-0"), Value::Nil]),
            ]),
        ])]);
        let entries = read_reply(reply).unwrap();
        assert_eq!(entries[0], ("1-0".to_string(), Some(vec![("n".to_string(), b"5".to_vec())])));
        assert_eq!(entries[1], ("2-0".to_string(), None));
        assert!(read_reply(Value::Nil).unwrap().is_empty());
    }

    #[test]
    fn parses_a_claim_reply_and_rejects_odd_shapes() {
        let reply = Value::Array(vec![
            bulk("0-0"),
            Value::Array(vec![Value::Array(vec![bulk("3-1"), Value::Array(vec![])])]),
            Value::Array(vec![bulk("2-0")]),
        ]);
        let (cursor, claimed) = claim_reply(reply).unwrap();
        assert_eq!(cursor, "0-0");
        assert_eq!(claimed, vec![("3-1".to_string(), Some(Vec::new()))]);
        let odd = Value::Array(vec![bulk("0-0")]);
        assert!(matches!(claim_reply(odd), Err(Error::Reply { command: "XAUTOCLAIM", .. })));
        let field_without_value = Value::Array(vec![Value::Array(vec![
            bulk("s"),
            Value::Array(vec![Value::Array(vec![bulk("1-0"), Value::Array(vec![bulk("n")])])]),
        ])]);
        assert!(read_reply(field_without_value).is_err());
    }

    /// The error a reply line such as `-LOADING …` turns into.
    fn server_error(line: &str) -> RedisError {
        match redis::parse_redis_value(format!("-{line}\r\n").as_bytes()).unwrap() {
            Value::ServerError(error) => error.into(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn loading_busy_tryagain_and_masterdown_are_transient_and_nothing_else_is() {
        for line in [
            "LOADING Redis is loading the dataset in memory",
            "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
            "TRYAGAIN Multiple keys request during rehashing of slot",
            "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
        ] {
            assert!(is_transient(&server_error(line)), "{line}");
        }
        for line in [
            "ERR unknown command",
            "WRONGTYPE Operation against a key holding the wrong kind of value",
            "NOGROUP No such key 's' or consumer group 'g'",
            "BUSYGROUP Consumer Group name already exists",
            "READONLY You can't write against a read only replica.",
        ] {
            assert!(!is_transient(&server_error(line)), "{line}");
        }
        let lost = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(!is_transient(&lost) && is_connection_loss(&lost));
    }

    #[test]
    fn refused_credentials_and_permissions_are_typed_and_name_the_user_and_command() {
        let refused = |line: &str| refusal(&server_error(line), "XREADGROUP", "app");
        for line in [
            "WRONGPASS invalid username-password pair or user is disabled.",
            "NOAUTH Authentication required.",
        ] {
            let code = line.split(' ').next().unwrap();
            assert!(
                matches!(refused(line), Some(Error::Auth { user, code: c, .. }) if user == "app" && c == code),
                "{line}"
            );
        }
        let noperm = refused("NOPERM this user has no permissions to run the 'xack' command");
        assert!(
            matches!(&noperm, Some(Error::Permission { user, command, .. }) if user == "app" && command == "XACK"),
            "{noperm:?}"
        );
        let key = refused(
            "NOPERM this user has no permissions to access one of the keys used as arguments",
        );
        assert!(
            matches!(&key, Some(Error::Permission { command, .. }) if command == "XREADGROUP"),
            "{key:?}"
        );
        let failed =
            RedisError::from((ErrorKind::AuthenticationFailed, "Password authentication failed"));
        assert!(matches!(refusal(&failed, "PING", "app"), Some(Error::Auth { .. })));
        assert!(refused("LOADING Redis is loading the dataset in memory").is_none());
        assert!(refused("ERR unknown command").is_none());
    }

    #[test]
    fn parses_pending_replies() {
        let one = Value::Array(vec![Value::Array(vec![
            bulk("1-0"),
            bulk("c"),
            Value::Int(1500),
            Value::Int(4),
        ])]);
        let pending =
            Pending { consumer: "c".into(), idle: Duration::from_millis(1500), deliveries: 4 };
        assert_eq!(pending_reply(one).unwrap(), Some(pending));
        assert_eq!(pending_reply(Value::Array(Vec::new())).unwrap(), None);
        let short = Value::Array(vec![Value::Array(vec![bulk("1-0"), bulk("c")])]);
        assert!(pending_reply(short).is_err());

        let summary = Value::Array(vec![
            Value::Int(5),
            bulk("1-0"),
            bulk("9-0"),
            Value::Array(vec![
                Value::Array(vec![bulk("a"), bulk("2")]),
                Value::Array(vec![bulk("c"), bulk("3")]),
            ]),
        ]);
        assert_eq!(pending_of(summary.clone(), "c").unwrap(), 3);
        assert_eq!(pending_of(summary, "b").unwrap(), 0);
        let none = Value::Array(vec![Value::Int(0), Value::Nil, Value::Nil, Value::Nil]);
        assert_eq!(pending_of(none, "c").unwrap(), 0);
    }

    #[test]
    fn parses_a_claimed_reply_with_deleted_entries() {
        let reply = Value::Array(vec![
            Value::Array(vec![bulk("1-0"), Value::Array(vec![bulk("n"), bulk("1")])]),
            Value::Nil,
            Value::Array(vec![bulk("2-0"), Value::Nil]),
        ]);
        let entries = claimed_reply(reply).unwrap();
        assert_eq!(entries[0], ("1-0".to_string(), Some(vec![("n".to_string(), b"1".to_vec())])));
        assert_eq!(entries[1], ("2-0".to_string(), None));
        assert_eq!(entries.len(), 2);
    }
}
