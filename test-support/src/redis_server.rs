//! A `redis-server` of a test's own: started on a free loopback port, waited for until it
//! answers `PING`, killed when dropped.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The environment variable naming a server to share instead of starting one (`redis://…`):
/// `cargo xtask ci` starts one server for the whole test step and sets it.
///
/// ```
/// assert_eq!(test_support::REDIS_URL_VARIABLE, "BACKFLOW_REDIS_URL");
/// ```
pub const REDIS_URL_VARIABLE: &str = "BACKFLOW_REDIS_URL";

/// The program started.
const PROGRAM: &str = "redis-server";
/// How long a started server has to answer `PING`.
const STARTUP_LIMIT: Duration = Duration::from_secs(10);
/// How often a starting server is asked.
const POLL: Duration = Duration::from_millis(10);
/// A port picked free can be taken by someone else before the server binds it; then the
/// server exits at once and is started again on another port, this many times in all.
const ATTEMPTS: usize = 3;

/// A `redis-server` this process started on `127.0.0.1`, without persistence (no RDB
/// snapshots, no append-only file). Dropping it kills the process and waits for it.
///
/// # Examples
///
/// ```no_run
/// use std::io::{Read, Write};
///
/// let server = test_support::RedisServer::start()?;
/// assert!(server.url().starts_with("redis://127.0.0.1:"));
/// let mut connection = std::net::TcpStream::connect(("127.0.0.1", server.port()))?;
/// connection.write_all(b"PING\r\n")?;
/// let mut reply = [0; 7];
/// connection.read_exact(&mut reply)?;
/// assert_eq!(&reply, b"+PONG\r\n");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    port: u16,
    url: String,
    tls_port: Option<u16>,
}

/// The files of a server that also listens for TLS: its certificate and key, and the CA its
/// clients' certificates must be signed by (PEM files, e.g. made at test time).
///
/// # Examples
///
/// ```
/// let tls = test_support::ServerTls {
///     cert: "server.pem".into(),
///     key: "server.key".into(),
///     ca: "ca.pem".into(),
///     auth_clients: false,
/// };
/// assert!(!tls.auth_clients);
/// ```
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The server's certificate (`--tls-cert-file`).
    pub cert: PathBuf,
    /// Its private key (`--tls-key-file`).
    pub key: PathBuf,
    /// The CA client certificates are checked against (`--tls-ca-cert-file`).
    pub ca: PathBuf,
    /// Whether a client must show a certificate signed by `ca` (`--tls-auth-clients yes`,
    /// mutual TLS) or may show none (`no`).
    pub auth_clients: bool,
}

/// Why [`RedisServer::start`] has no server to give.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// There is no `redis-server` on `PATH`.
    #[error("redis-server is not installed: `cargo xtask setup` installs it")]
    NotInstalled,
    /// No loopback port could be reserved.
    #[error("no free loopback port: {0}")]
    NoFreePort(#[source] io::Error),
    /// `redis-server` is there but could not be started.
    #[error("could not start redis-server: {0}")]
    Spawn(#[source] io::Error),
    /// The server exited before it answered (on the last of the ports tried).
    #[error("redis-server on port {port} exited with {status} before it answered PING")]
    Exited {
        /// The port it was told to listen on.
        port: u16,
        /// How it ended.
        status: ExitStatus,
    },
    /// The server runs but did not answer `PING` in time; it has been killed.
    #[error("redis-server on port {port} did not answer PING within {limit:?}")]
    NoAnswer {
        /// The port it was told to listen on.
        port: u16,
        /// How long it was given.
        limit: Duration,
    },
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port and returns once it answers `PING`.
    ///
    /// # Errors
    ///
    /// [`StartError::NotInstalled`] when there is no `redis-server` to run; the other
    /// variants when it ran but never answered.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let server = test_support::RedisServer::start()?;
    /// println!("a server at {} (process {})", server.url(), server.pid());
    /// # Ok::<(), test_support::StartError>(())
    /// ```
    pub fn start() -> Result<Self, StartError> {
        Self::start_program(OsStr::new(PROGRAM), &[], None)
    }

    /// As [`start`](Self::start), with `args` after the loopback basics: ACL users
    /// (`--user app on >password ~keys +command …`, one argument per word), settings. The
    /// `default` user must still answer `PING` without a password on [`port`](Self::port),
    /// which is how the server is known to be ready.
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start); arguments the server rejects end it:
    /// [`StartError::Exited`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let server = test_support::RedisServer::start_with(&["--user", "app", "on", ">pw", "~*", "+@all"])?;
    /// let url = format!("redis://app:pw@127.0.0.1:{}/", server.port());
    /// # Ok::<(), test_support::StartError>(())
    /// ```
    pub fn start_with<S: AsRef<OsStr>>(args: &[S]) -> Result<Self, StartError> {
        let args: Vec<OsString> = args.iter().map(|arg| arg.as_ref().to_owned()).collect();
        Self::start_program(OsStr::new(PROGRAM), &args, None)
    }

    /// As [`start_with`](Self::start_with), the server also listening for TLS on a second
    /// free loopback port ([`tls_port`](Self::tls_port), [`tls_url`](Self::tls_url)) with
    /// `tls`'s certificate. The plain port stays open, for readiness and for a test's own
    /// look at the data.
    ///
    /// # Errors
    ///
    /// As [`start_with`](Self::start_with); certificate files the server cannot load end it:
    /// [`StartError::Exited`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use test_support::{RedisServer, ServerTls};
    ///
    /// let tls = ServerTls { cert: "server.pem".into(), key: "server.key".into(), ca: "ca.pem".into(), auth_clients: true };
    /// let server = RedisServer::start_tls(&tls, &[] as &[&str])?;
    /// assert!(server.tls_url().unwrap().starts_with("rediss://127.0.0.1:"));
    /// # Ok::<(), test_support::StartError>(())
    /// ```
    pub fn start_tls<S: AsRef<OsStr>>(tls: &ServerTls, args: &[S]) -> Result<Self, StartError> {
        let args: Vec<OsString> = args.iter().map(|arg| arg.as_ref().to_owned()).collect();
        Self::start_program(OsStr::new(PROGRAM), &args, Some(tls))
    }

    /// The URL of a server to share instead of starting one: [`REDIS_URL_VARIABLE`]'s value,
    /// when it is set and not empty.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use test_support::RedisServer;
    ///
    /// // The shared server, or one of this program's own (kept until the end).
    /// let own;
    /// let url = match RedisServer::shared_url() {
    ///     Some(url) => url,
    ///     None => {
    ///         own = RedisServer::start()?;
    ///         own.url().to_string()
    ///     }
    /// };
    /// # let _ = url;
    /// # Ok::<(), test_support::StartError>(())
    /// ```
    pub fn shared_url() -> Option<String> {
        std::env::var(REDIS_URL_VARIABLE).ok().filter(|url| !url.is_empty())
    }

    /// As [`start_tls`](Self::start_tls) (without TLS when `tls` is `None`), running
    /// `program` in place of `redis-server`.
    fn start_program(
        program: &OsStr,
        args: &[OsString],
        tls: Option<&ServerTls>,
    ) -> Result<Self, StartError> {
        let mut attempt = 1;
        loop {
            match Self::start_once(program, args, tls) {
                Err(StartError::Exited { .. }) if attempt < ATTEMPTS => attempt += 1,
                result => return result,
            }
        }
    }

    fn start_once(
        program: &OsStr,
        args: &[OsString],
        tls: Option<&ServerTls>,
    ) -> Result<Self, StartError> {
        let port = free_port()?;
        let mut command = server_command(program, port);
        command.args(["--appendonly", "no"]);
        let tls_port = match tls {
            None => None,
            Some(tls) => {
                let tls_port = free_port()?;
                let auth_clients = if tls.auth_clients { "yes" } else { "no" };
                command
                    .args(["--tls-port", &tls_port.to_string()])
                    .arg("--tls-cert-file")
                    .arg(&tls.cert)
                    .arg("--tls-key-file")
                    .arg(&tls.key)
                    .arg("--tls-ca-cert-file")
                    .arg(&tls.ca)
                    .args(["--tls-auth-clients", auth_clients]);
                Some(tls_port)
            }
        };
        let child = command.args(args).spawn().map_err(|error| match error.kind() {
            io::ErrorKind::NotFound => StartError::NotInstalled,
            _ => StartError::Spawn(error),
        })?;
        // From here on, dropping `server` stops the process, on every error path too.
        let url = format!("redis://127.0.0.1:{port}/");
        let mut server = Self { child, port, url, tls_port };
        let deadline = Instant::now() + STARTUP_LIMIT;
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(StartError::Exited { port, status });
            }
            if answers_ping(SocketAddr::from((Ipv4Addr::LOCALHOST, port))) {
                return Ok(server);
            }
            if Instant::now() >= deadline {
                return Err(StartError::NoAnswer { port, limit: STARTUP_LIMIT });
            }
            std::thread::sleep(POLL);
        }
    }

    /// The command that starts `redis-server` on loopback `port` with no snapshots and its
    /// output discarded, for a test that runs a server its own way (with persistence, to
    /// kill and start it again on the same port): add arguments, then spawn it.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let mut server = test_support::RedisServer::command(7399).args(["--appendonly", "yes"]).spawn()?;
    /// server.kill()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn command(port: u16) -> Command {
        server_command(OsStr::new(PROGRAM), port)
    }

    /// The server's address for a client, `redis://127.0.0.1:<port>/`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let server = test_support::RedisServer::start()?;
    /// assert_eq!(server.url(), format!("redis://127.0.0.1:{}/", server.port()));
    /// # Ok::<(), test_support::StartError>(())
    /// ```
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The loopback port it listens on.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let server = test_support::RedisServer::start()?;
    /// assert_ne!(server.port(), 0);
    /// # Ok::<(), test_support::StartError>(())
    /// ```
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The loopback port it listens on for TLS, if it was started with
    /// [`start_tls`](Self::start_tls).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let server = test_support::RedisServer::start()?;
    /// assert_eq!(server.tls_port(), None);
    /// # Ok::<(), test_support::StartError>(())
    /// ```
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// `rediss://127.0.0.1:<tls port>/`, if it listens for TLS.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let server = test_support::RedisServer::start()?;
    /// assert_eq!(server.tls_url(), None);
    /// # Ok::<(), test_support::StartError>(())
    /// ```
    pub fn tls_url(&self) -> Option<String> {
        self.tls_port.map(|port| format!("rediss://127.0.0.1:{port}/"))
    }

    /// The server's process id (to read its CPU time in `/proc`, say).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let server = test_support::RedisServer::start()?;
    /// let stat = std::fs::read_to_string(format!("/proc/{}/stat", server.pid()))?;
    /// assert!(stat.contains("redis-server"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free right now.
fn free_port() -> Result<u16, StartError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(StartError::NoFreePort)
}

/// Whether a Redis server at `address` answers an inline `PING` with `+PONG` (a server still
/// loading its data answers `-LOADING …`, which is not ready).
fn answers_ping(address: SocketAddr) -> bool {
    let exchange = || -> io::Result<bool> {
        let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        stream.write_all(b"PING\r\n")?;
        let mut reply = [0; 7];
        stream.read_exact(&mut reply)?;
        Ok(&reply == b"+PONG\r\n")
    };
    exchange().unwrap_or(false)
}

/// `program` as a loopback `redis-server` on `port`: no snapshots, no input, output discarded.
fn server_command(program: &OsStr, port: u16) -> Command {
    let mut command = Command::new(program);
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    command
}

#[cfg(test)]
mod tests {
    use std::thread;

    use super::*;

    /// A one-connection server on a free port that reads a request and writes `reply`.
    fn fake_server(reply: &'static [u8]) -> (SocketAddr, thread::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let address = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0; 6];
            stream.read_exact(&mut request).unwrap();
            stream.write_all(reply).unwrap();
            request.to_vec()
        });
        (address, server)
    }

    #[test]
    fn a_pong_is_an_answer() {
        let (address, server) = fake_server(b"+PONG\r\n");
        assert!(answers_ping(address));
        assert_eq!(server.join().unwrap(), b"PING\r\n");
    }

    #[test]
    fn a_loading_server_is_not_ready() {
        let (address, server) = fake_server(b"-LOADING Redis is loading the dataset\r\n");
        assert!(!answers_ping(address));
        server.join().unwrap();
    }

    #[test]
    fn a_silent_listener_is_no_answer() {
        // The kernel completes the connection (backlog), but nobody ever replies.
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        assert!(!answers_ping(listener.local_addr().unwrap()));
    }

    #[test]
    fn a_missing_program_is_not_installed() {
        let error =
            RedisServer::start_program(OsStr::new("backflow-no-such-redis-server"), &[], None);
        assert!(matches!(error, Err(StartError::NotInstalled)), "{error:?}");
        let message = error.unwrap_err().to_string();
        assert!(message.contains("cargo xtask setup"), "{message}");
    }

    #[test]
    fn a_server_that_exits_is_reported_at_once() {
        // `false` exits 1 whatever its arguments: as a server that cannot bind its port would.
        let started = Instant::now();
        let error = RedisServer::start_program(OsStr::new("false"), &[], None);
        assert!(matches!(error, Err(StartError::Exited { .. })), "{error:?}");
        assert!(started.elapsed() < STARTUP_LIMIT, "waited {:?}", started.elapsed());
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_started_server_answers_until_dropped() {
        let server = RedisServer::start().expect("redis-server (`cargo xtask setup`)");
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, server.port()));
        assert_eq!(server.url(), format!("redis://127.0.0.1:{}/", server.port()));
        assert!(answers_ping(address));
        let pid = server.pid();
        drop(server);
        // Killed and reaped (no zombie left): its process is gone.
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn arguments_reach_the_server_and_bad_ones_end_it() {
        let args = ["--user", "app", "on", ">pw", "~in", "+xadd"];
        let server = RedisServer::start_with(&args).expect("redis-server (`cargo xtask setup`)");
        let mut stream = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
        stream.write_all(b"AUTH app pw\r\nXADD out * n 1\r\n").unwrap();
        let mut reply = vec![0; 5];
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(reply, b"+OK\r\n", "the user exists");
        let mut refusal = [0; 7];
        stream.read_exact(&mut refusal).unwrap();
        assert_eq!(&refusal, b"-NOPERM", "with only the permissions given");
        let error = RedisServer::start_with(&["--no-such-setting", "1"]);
        assert!(matches!(error, Err(StartError::Exited { .. })), "{error:?}");
    }
}
