//! `/metrics` over HTTP: a [`MetricsServer`] serves the stats of one or more pipelines in the
//! Prometheus text format, as [`stats::exposition`](crate::stats::exposition) writes them,
//! taken when each request comes.
//!
//! The server is a small HTTP/1.x responder on threads of its own, with no async runtime:
//! it answers each connection on a thread (at most [`MAX_CONNECTIONS`] at once), reads the
//! request's head (at most [`MAX_HEAD`] bytes), never its body, answers it and closes the
//! connection. Everything a client can make it wait for is bounded by its timeout: a client
//! that sends its request slowly, or stops reading the answer, holds its answering thread
//! for at most that long and holds up no other client, and a request that says it has a
//! body of any size costs nothing (general HTTP servers read, or allocate for, a body they
//! were told of). Its listening socket is made here, so that a bad address or a port in use
//! is a [`ServeError`] naming the address.
//!
//! What a scrape costs a pipeline is what [`Pipeline::stats`](crate::Pipeline::stats) costs:
//! reading its counters. The answering thread takes each pipeline's snapshot through its
//! [`Watch`], writes the text, lets go of everything, and only then writes to the socket: a
//! slow client holds nothing of the pipeline's.
//!
//! # Examples
//!
//! ```
//! use std::io::{Read, Write};
//! use backflow::Pipeline;
//!
//! let pipeline = Pipeline::<u32>::builder().stage("parse", || |x: u32| x).sink(|_| {}).build()?;
//! pipeline.input().push_iter(0..3)?;
//! // Port 0: any free port; `local_addr` says which.
//! let server = backflow::serve_metrics("127.0.0.1:0", [("orders", pipeline.watch())])?;
//!
//! let mut client = std::net::TcpStream::connect(server.local_addr())?;
//! client.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
//! let mut answer = String::new();
//! client.read_to_string(&mut answer)?;
//! assert!(answer.starts_with("HTTP/1.0 200 OK\r\n"));
//! assert!(answer.contains("backflow_stage_received_items_total{pipeline=\"orders\",stage=\"parse\"} "));
//!
//! pipeline.drain()?;
//! server.stop();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::io;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::control::deadline_after;
use crate::pipeline::Watch;
use crate::stats::exposition;
use crate::sync::thread::{self, JoinHandle};
use crate::sync::{AtomicBool, Mutex, Ordering};

/// How long reading a request from one client, or writing an answer to it, may block before
/// the server gives up on that client: see [`MetricsServer::bind`].
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The content type of the Prometheus text format, version 0.0.4.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Connections waiting to be accepted, as `listen(2)` takes it.
const BACKLOG: i32 = 128;

/// The most bytes of a request's head (its request line and headers) the server reads; a
/// longer one is answered `431 Request Header Fields Too Large`.
///
/// # Examples
///
/// ```
/// use std::io::{Read, Write};
///
/// let server = backflow::MetricsServer::bind("127.0.0.1:0")?;
/// let mut client = std::net::TcpStream::connect(server.local_addr())?;
/// let header = "x".repeat(backflow::http::MAX_HEAD);
/// client.write_all(format!("GET /metrics HTTP/1.1\r\nX: {header}\r\n\r\n").as_bytes())?;
/// let mut answer = String::new();
/// client.read_to_string(&mut answer)?;
/// assert!(answer.starts_with("HTTP/1.1 431 "));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub const MAX_HEAD: usize = 8 * 1024;

/// How many connections the server answers at once, each on a thread of its own; one more is
/// answered `503 Service Unavailable` at once and closed. A client that connects and sends
/// nothing holds its place for at most the timeout.
///
/// # Examples
///
/// ```
/// use std::net::TcpStream;
///
/// let server = backflow::MetricsServer::bind("127.0.0.1:0")?;
/// // A client that says nothing does not hold up the next one.
/// let _silent = TcpStream::connect(server.local_addr())?;
/// assert!(backflow::http::MAX_CONNECTIONS > 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub const MAX_CONNECTIONS: usize = 8;

/// How long the server goes on reading, after its answer, what a client still sends (a
/// body it was told of): closing a connection with unread data would reset it, and the
/// client might lose the answer.
const LINGER: Duration = Duration::from_millis(100);

/// The most bytes read after the answer, within [`LINGER`].
const LINGER_BYTES: usize = 64 * 1024;

/// Why a [`MetricsServer`] could not start or take a pipeline.
///
/// # Examples
///
/// ```
/// use backflow::ServeError;
///
/// let error = backflow::MetricsServer::bind("no port here").unwrap_err();
/// assert!(matches!(&error, ServeError::Address { addr, .. } if addr == "no port here"));
/// assert!(error.to_string().contains("`no port here`"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The address is not `HOST:PORT` with a port from 0 to 65535, or the host does not
    /// resolve.
    #[error("the metrics address `{addr}` is not a socket address: {message}")]
    Address {
        /// The address as given.
        addr: String,
        /// What resolving it said.
        message: String,
    },
    /// No socket could listen on the address: the port is taken, the address is not this
    /// machine's, or the port needs privileges.
    #[error("cannot listen on the metrics address `{addr}`: {message}")]
    Bind {
        /// The address as given.
        addr: String,
        /// What went wrong, as the operating system says it.
        kind: io::ErrorKind,
        /// The operating system's message.
        message: String,
    },
    /// A write timeout of zero, which would fail every answer.
    #[error("the metrics server's write timeout is zero")]
    ZeroWriteTimeout,
    /// A pipeline of this name is served already: the two would write the same series.
    #[error("a pipeline named `{name}` is served already")]
    DuplicatePipeline {
        /// The name.
        name: String,
    },
    /// The server's accepting thread could not be started.
    #[error("cannot start the metrics server's thread: {message}")]
    Spawn {
        /// The operating system's message.
        message: String,
    },
}

/// The pipelines a server serves, each under its name, in the order they were added.
type Served = Arc<Mutex<Vec<(String, Watch)>>>;

/// An HTTP server for `/metrics`: `GET` (or `HEAD`) `/metrics` answers with the stats of every
/// pipeline added, in the Prometheus text format (each sample labelled with its pipeline's
/// name); any other path is `404 Not Found`, any other method `405 Method Not Allowed`.
/// A pipeline that has ended is served with its final stats until it is
/// [removed](Self::remove).
///
/// Connections are accepted by a thread of the server's own (`backflow-metrics`) and each is
/// answered on a thread of its own, at most [`MAX_CONNECTIONS`] at once, each answer
/// followed by the connection's close. Stopping the server (with [`stop`](Self::stop) or by
/// dropping it) closes the port and joins those threads, waiting for at most the timeout if
/// a request is being read or an answer written.
///
/// # Examples
///
/// ```
/// use backflow::{MetricsServer, Pipeline};
///
/// let server = MetricsServer::bind("127.0.0.1:0")?;
/// let pipeline = Pipeline::<u8>::builder().stage("id", || |x: u8| x).sink(|_| {}).build()?;
/// server.add("bytes", pipeline.watch())?;
/// assert!(server.add("bytes", pipeline.watch()).is_err());
/// println!("scrape {}", server.url());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct MetricsServer {
    addr: SocketAddr,
    served: Served,
    /// Set on stop: the thread ends at its next accepted connection (or failed `accept`).
    stopping: Arc<AtomicBool>,
    /// A second handle to the listening socket, to shut it down on stop.
    listener: Socket,
    thread: Option<JoinHandle<()>>,
}

/// Starts a [`MetricsServer`] on `addr` (`HOST:PORT`; port 0 picks a free one) serving
/// `pipelines`, each under its name, with the default [`WRITE_TIMEOUT`].
///
/// # Errors
///
/// [`ServeError::Address`] or [`ServeError::Bind`] naming `addr` if nothing can listen
/// there; [`ServeError::DuplicatePipeline`] if two pipelines have the same name (the server
/// is stopped then); [`ServeError::Spawn`] if its thread cannot start.
///
/// # Examples
///
/// ```
/// use backflow::Pipeline;
///
/// let a = Pipeline::<u8>::builder().stage("id", || |x: u8| x).sink(|_| {}).build()?;
/// let b = Pipeline::<String>::builder().stage("len", || |s: String| s.len()).sink(|_| {}).build()?;
/// let server = backflow::serve_metrics("127.0.0.1:0", [("a", a.watch()), ("b", b.watch())])?;
/// assert!(server.url().ends_with("/metrics"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn serve_metrics<'a>(
    addr: &str,
    pipelines: impl IntoIterator<Item = (&'a str, Watch)>,
) -> Result<MetricsServer, ServeError> {
    let server = MetricsServer::bind(addr)?;
    for (name, watch) in pipelines {
        server.add(name, watch)?;
    }
    Ok(server)
}

impl MetricsServer {
    /// Listens on `addr` (`HOST:PORT`; port 0 picks a free one, see
    /// [`local_addr`](Self::local_addr)) with the default [`WRITE_TIMEOUT`], serving no
    /// pipeline yet.
    ///
    /// # Errors
    ///
    /// [`ServeError::Address`] if `addr` is not `HOST:PORT` or does not resolve;
    /// [`ServeError::Bind`] if no socket can listen on any address it resolves to (the last
    /// one's error); [`ServeError::Spawn`] if the server's thread cannot start.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow::{MetricsServer, ServeError};
    ///
    /// let server = MetricsServer::bind("127.0.0.1:0")?;
    /// // The same port again is taken.
    /// let taken = server.local_addr().to_string();
    /// assert!(matches!(MetricsServer::bind(&taken), Err(ServeError::Bind { addr, .. }) if addr == taken));
    /// assert!(matches!(MetricsServer::bind("127.0.0.1:65536"), Err(ServeError::Address { .. })));
    /// # Ok::<(), ServeError>(())
    /// ```
    pub fn bind(addr: &str) -> Result<Self, ServeError> {
        Self::bind_with(addr, WRITE_TIMEOUT)
    }

    /// As [`bind`](Self::bind), with a timeout of its own: how long reading a request from
    /// one client (one that sends it slowly, or not at all) or writing an answer to it (one
    /// that does not read) may block before the server drops that client and frees its place
    /// (one of [`MAX_CONNECTIONS`]). `Duration::MAX` means no timeout: such a client then
    /// holds its place until it goes, and `stop` waits for it.
    ///
    /// # Errors
    ///
    /// Those of [`bind`](Self::bind), and [`ServeError::ZeroWriteTimeout`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use backflow::{MetricsServer, ServeError};
    ///
    /// let server = MetricsServer::bind_with("127.0.0.1:0", Duration::from_millis(500))?;
    /// assert_ne!(server.local_addr().port(), 0);
    /// assert_eq!(MetricsServer::bind_with("127.0.0.1:0", Duration::ZERO).err(), Some(ServeError::ZeroWriteTimeout));
    /// # Ok::<(), ServeError>(())
    /// ```
    pub fn bind_with(addr: &str, write_timeout: Duration) -> Result<Self, ServeError> {
        if write_timeout.is_zero() {
            return Err(ServeError::ZeroWriteTimeout);
        }
        let timeout = (write_timeout != Duration::MAX).then_some(write_timeout);
        let listener = listen_on(addr, timeout)?;
        let local = listener.local_addr().map_err(|error| bind_error(addr, error))?;
        let local = local.as_socket().ok_or_else(|| {
            bind_error(addr, io::Error::new(io::ErrorKind::Unsupported, "not an IP socket"))
        })?;
        let handle = listener.try_clone().map_err(|error| bind_error(addr, error))?;
        let served = Served::default();
        let stopping = Arc::new(AtomicBool::new(false));
        let thread = thread::Builder::new()
            .name("backflow-metrics".into())
            .spawn({
                let (served, stopping) = (Arc::clone(&served), Arc::clone(&stopping));
                let listener = TcpListener::from(listener);
                move || answer_all(&listener, &served, &stopping, timeout)
            })
            .map_err(|error| ServeError::Spawn { message: error.to_string() })?;
        Ok(Self { addr: local, served, stopping, listener: handle, thread: Some(thread) })
    }

    /// Serves `watch`'s pipeline under `name` (the `pipeline` label of its samples) from the
    /// next request on.
    ///
    /// # Errors
    ///
    /// [`ServeError::DuplicatePipeline`] if a pipeline of that name is served already.
    ///
    /// # Examples
    ///
    /// ```
    /// # let server = backflow::MetricsServer::bind("127.0.0.1:0")?;
    /// let pipeline = backflow::Pipeline::<u8>::builder().stage("id", || |x: u8| x).sink(|_| {}).build()?;
    /// server.add("bytes", pipeline.watch())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add(&self, name: impl Into<String>, watch: Watch) -> Result<(), ServeError> {
        let name = name.into();
        let mut served = self.served.lock().unwrap_or_else(PoisonError::into_inner);
        if served.iter().any(|(taken, _)| *taken == name) {
            return Err(ServeError::DuplicatePipeline { name });
        }
        served.push((name, watch));
        Ok(())
    }

    /// Stops serving the pipeline named `name`, and returns its watch if there was one.
    ///
    /// # Examples
    ///
    /// ```
    /// # let server = backflow::MetricsServer::bind("127.0.0.1:0")?;
    /// # let pipeline = backflow::Pipeline::<u8>::builder().stage("id", || |x: u8| x).sink(|_| {}).build()?;
    /// server.add("bytes", pipeline.watch())?;
    /// assert!(server.remove("bytes").is_some());
    /// assert!(server.remove("bytes").is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn remove(&self, name: &str) -> Option<Watch> {
        let mut served = self.served.lock().unwrap_or_else(PoisonError::into_inner);
        let index = served.iter().position(|(taken, _)| taken == name)?;
        Some(served.remove(index).1)
    }

    /// The address the server listens on (with the port picked, when asked for port 0).
    ///
    /// # Examples
    ///
    /// ```
    /// let server = backflow::MetricsServer::bind("127.0.0.1:0")?;
    /// assert!(server.local_addr().ip().is_loopback());
    /// # Ok::<(), backflow::ServeError>(())
    /// ```
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<local address>/metrics`, where a scraper finds the stats.
    ///
    /// # Examples
    ///
    /// ```
    /// let server = backflow::MetricsServer::bind("127.0.0.1:0")?;
    /// assert_eq!(server.url(), format!("http://{}/metrics", server.local_addr()));
    /// # Ok::<(), backflow::ServeError>(())
    /// ```
    pub fn url(&self) -> String {
        format!("http://{}/metrics", self.addr)
    }

    /// Stops the server: the port closes and its threads are joined (after the requests
    /// they may be reading and the answers they may be writing, each for at most the
    /// timeout). Dropping the server does the same.
    ///
    /// # Examples
    ///
    /// ```
    /// let server = backflow::MetricsServer::bind("127.0.0.1:0")?;
    /// let addr = server.local_addr();
    /// server.stop();
    /// assert!(std::net::TcpStream::connect(addr).is_err());
    /// # Ok::<(), backflow::ServeError>(())
    /// ```
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.stopping.store(true, Ordering::Release);
            // Refuses new connections at once and wakes the thread out of `accept` on Linux;
            // elsewhere a connection of its own wakes it.
            let _ = self.listener.shutdown(Shutdown::Both);
            let _ = TcpStream::connect_timeout(&self.addr, LINGER);
            // The thread catches nothing: a panic in it (a bug) ends just the server.
            let _ = thread.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.shut_down();
    }
}

impl fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let served = self.served.lock().unwrap_or_else(PoisonError::into_inner);
        let names: Vec<&str> = served.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .field("pipelines", &names)
            .finish_non_exhaustive()
    }
}

/// A listening socket on the first address `addr` resolves to that one can listen on.
fn listen_on(addr: &str, write_timeout: Option<Duration>) -> Result<Socket, ServeError> {
    let address_error = |message: String| ServeError::Address { addr: addr.to_string(), message };
    let candidates = addr.to_socket_addrs().map_err(|error| address_error(error.to_string()))?;
    let mut last = None;
    for candidate in candidates {
        match listen(candidate, write_timeout) {
            Ok(socket) => return Ok(socket),
            Err(error) => last = Some(error),
        }
    }
    Err(match last {
        Some(error) => bind_error(addr, error),
        None => address_error("it resolves to no address".into()),
    })
}

fn bind_error(addr: &str, error: io::Error) -> ServeError {
    ServeError::Bind { addr: addr.to_string(), kind: error.kind(), message: error.to_string() }
}

/// A listening socket on `addr` whose accepted connections block at most `write_timeout` in
/// a write: the timeout set on a listening socket is inherited by the connections it
/// accepts, and does not apply to `accept` itself, which waits on reads.
fn listen(addr: SocketAddr, write_timeout: Option<Duration>) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_write_timeout(write_timeout)?;
    // As `TcpListener::bind` does on Unix: a restarted server can take its port back at
    // once, while connections of the old one are still closing.
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket)
}

/// Answers the connections the listener accepts, each on a thread of its own and at most
/// [`MAX_CONNECTIONS`] at once, until the server stops; then waits for the answering threads.
fn answer_all(
    listener: &TcpListener,
    served: &Served,
    stopping: &AtomicBool,
    timeout: Option<Duration>,
) {
    let mut answering: Vec<JoinHandle<()>> = Vec::new();
    loop {
        let accepted = listener.accept();
        if stopping.load(Ordering::Acquire) {
            break;
        }
        let Ok((stream, _)) = accepted else {
            // A connection gone before it was taken, or no file descriptor free for a
            // moment: the next one may do.
            thread::yield_now();
            continue;
        };
        answering.retain(|thread| !thread.is_finished());
        if answering.len() >= MAX_CONNECTIONS {
            refuse(stream);
            continue;
        }
        let served = Arc::clone(served);
        // If no thread can start, the connection closes unanswered with the closure.
        let started = thread::Builder::new()
            .name("backflow-metrics".into())
            .spawn(move || answer(stream, &served, timeout));
        answering.extend(started.ok());
    }
    for thread in answering {
        let _ = thread.join();
    }
}

/// Answers `503 Service Unavailable` without reading the request, and closes the connection
/// after the usual linger (closing on unread data would reset the connection, and the client
/// might lose the answer): a client that goes away at once costs the accepting thread nothing,
/// one that stays silent at most [`LINGER`].
fn refuse(mut stream: TcpStream) {
    let answer = Answer::text(503, "Service Unavailable", "too many connections\n");
    // The answer fits in the socket's buffer: the write does not wait for the client.
    if stream.set_nonblocking(true).is_ok()
        && stream.write(&answer).is_ok()
        && stream.set_nonblocking(false).is_ok()
    {
        linger(&mut stream);
    }
}

/// Reads one request's head from `stream`, answers it and closes the connection. A client
/// that sends nothing, too slowly or too much, or goes away, loses only its own answer.
fn answer(mut stream: TcpStream, served: &Mutex<Vec<(String, Watch)>>, timeout: Option<Duration>) {
    // The timeout bounds the whole read of the head, and then the whole write of the answer,
    // not each system call: a client that trickles its request, or reads the answer a byte at
    // a time, is dropped when it runs out.
    let within = |timeout: Option<Duration>| timeout.and_then(deadline_after);
    let Ok(head) = read_head(&mut stream, within(timeout)) else { return };
    let answer = match head {
        Head::TooLong => Answer::text(431, "Request Header Fields Too Large", "request too long\n"),
        Head::Read(head) => respond(&head, served),
    };
    if write_all(&mut stream, &answer, within(timeout)).is_ok() {
        linger(&mut stream);
    }
}

/// The time left until `deadline` (`None`: none), as a socket timeout; an error once it has
/// passed.
fn left(deadline: Option<Instant>) -> io::Result<Option<Duration>> {
    let Some(deadline) = deadline else { return Ok(None) };
    match deadline.checked_duration_since(Instant::now()) {
        Some(left) if !left.is_zero() => Ok(Some(left)),
        _ => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// Writes all of `bytes` before `deadline`.
fn write_all(
    stream: &mut TcpStream,
    mut bytes: &[u8],
    deadline: Option<Instant>,
) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.set_write_timeout(left(deadline)?)?;
        match stream.write(bytes)? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => bytes = &bytes[n..],
        }
    }
    stream.flush()
}

/// What [`read_head`] found.
enum Head {
    /// The request's head, up to its blank line (excluded).
    Read(Vec<u8>),
    /// No blank line within [`MAX_HEAD`] bytes.
    TooLong,
}

/// Reads until the blank line that ends a request's head; an error if the client went away
/// or `deadline` passed first.
fn read_head(stream: &mut TcpStream, deadline: Option<Instant>) -> io::Result<Head> {
    // Never more than a head of `MAX_HEAD` bytes and its blank line.
    const MOST: usize = MAX_HEAD + 4;
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let room = (MOST - head.len()).min(chunk.len());
        if room == 0 {
            return Ok(Head::TooLong);
        }
        stream.set_read_timeout(left(deadline)?)?;
        let n = match stream.read(&mut chunk[..room])? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => n,
        };
        // The blank line may straddle two reads: look from three bytes before this one.
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = head[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            head.truncate(from + end);
            return Ok(Head::Read(head));
        }
    }
}

/// The answer to a request whose head is `head`, status line to body.
fn respond(head: &[u8], served: &Mutex<Vec<(String, Watch)>>) -> Vec<u8> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Answer::text(400, "Bad Request", "bad request line\n");
    };
    if !version.starts_with("HTTP/1.") {
        return Answer::text(505, "HTTP Version Not Supported", "HTTP/1.0 or HTTP/1.1\n");
    }
    let path = target.split(['?', '#']).next().unwrap_or_default();
    let head_only = method == "HEAD";
    let answer = match (method, path) {
        ("GET" | "HEAD", "/metrics") => Answer {
            status: (200, "OK"),
            content_type: CONTENT_TYPE,
            allow: false,
            body: scrape(served),
        },
        ("GET" | "HEAD", _) => Answer::plain(404, "Not Found", "not found: try /metrics\n"),
        _ => Answer {
            allow: true,
            ..Answer::plain(405, "Method Not Allowed", "method not allowed: GET or HEAD\n")
        },
    };
    // An HTTP/1.0 client gets an HTTP/1.0 answer; either way the connection then closes.
    answer.to_bytes(if version == "HTTP/1.0" { "HTTP/1.0" } else { "HTTP/1.1" }, head_only)
}

/// An answer, before it is written.
struct Answer {
    status: (u16, &'static str),
    content_type: &'static str,
    /// Whether to say which methods are allowed (a `405`).
    allow: bool,
    body: String,
}

impl Answer {
    fn plain(code: u16, reason: &'static str, body: &str) -> Self {
        let content_type = "text/plain; charset=utf-8";
        Self { status: (code, reason), content_type, allow: false, body: body.to_string() }
    }

    /// A plain-text answer to a request that could not be read as one, in HTTP/1.1.
    fn text(code: u16, reason: &'static str, body: &str) -> Vec<u8> {
        Self::plain(code, reason, body).to_bytes("HTTP/1.1", false)
    }

    /// The answer as written: status line, headers (a known length: no chunked encoding,
    /// which some simple clients do not read), and the body unless `head_only`.
    fn to_bytes(&self, version: &str, head_only: bool) -> Vec<u8> {
        let (code, reason) = self.status;
        let allow = if self.allow { "Allow: GET, HEAD\r\n" } else { "" };
        let mut bytes = format!(
            "{version} {code} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
            self.content_type,
            self.body.len(),
        )
        .into_bytes();
        if !head_only {
            bytes.extend_from_slice(self.body.as_bytes());
        }
        bytes
    }
}

/// After the answer: says the server is done writing and reads, for a moment, what the client
/// still sends (a body it announced), so that closing does not reset the connection while
/// the answer is on its way.
fn linger(stream: &mut TcpStream) {
    if stream.shutdown(Shutdown::Write).is_err() {
        return;
    }
    let deadline = Some(Instant::now() + LINGER);
    let (mut chunk, mut read) = ([0u8; 4096], 0);
    while read < LINGER_BYTES {
        let Ok(timeout) = left(deadline) else { return };
        match stream.set_read_timeout(timeout).and_then(|()| stream.read(&mut chunk)) {
            Ok(0) | Err(_) => return,
            Ok(n) => read += n,
        }
    }
}

/// The exposition of every pipeline served, snapshots taken now. The list is copied out of
/// its lock first: adding or removing a pipeline never waits on a snapshot.
fn scrape(served: &Mutex<Vec<(String, Watch)>>) -> String {
    let pipelines = served.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let snapshots: Vec<_> = pipelines.iter().map(|(name, watch)| (name, watch.stats())).collect();
    exposition(snapshots.iter().map(|(name, stats)| (name.as_str(), stats)))
}
