//! `/metrics` over HTTP: a [`MetricsServer`] serves the stats of one or more pipelines in the
//! Prometheus text format, as [`stats::exposition`](crate::stats::exposition) writes them,
//! taken when each request comes.
//!
//! The server is [tiny_http](https://docs.rs/tiny_http): a small, synchronous HTTP server on
//! threads of its own, with no async runtime. Its listening socket is made here, so that a
//! bad address or a port in use is a [`ServeError`] naming the address, and so that the
//! connections it accepts carry a write timeout: a client that stops reading holds the
//! answering thread for at most that long.
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
use std::net::{Shutdown, SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tiny_http::{Header, Method, Request, Response, Server};

use crate::pipeline::Watch;
use crate::stats::exposition;
use crate::sync::Mutex;
use crate::sync::thread::{self, JoinHandle};

/// How long writing an answer to one client may block before the server gives up on that
/// client: see [`MetricsServer::bind`].
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The content type of the Prometheus text format, version 0.0.4.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Connections waiting to be accepted, as `listen(2)` takes it.
const BACKLOG: i32 = 128;

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
    /// The server's answering thread could not be started.
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
/// Answers are written by one thread of the server's own (`backflow-metrics`), one request
/// at a time; tiny_http's threads read the requests. Stopping the server (with
/// [`stop`](Self::stop) or by dropping it) closes the port and joins that thread, waiting
/// for at most the write timeout if an answer is being written.
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
    server: Arc<Server>,
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

    /// As [`bind`](Self::bind), with a write timeout of its own: how long writing an answer
    /// to one client may block (on a client that does not read) before the server drops that
    /// answer and goes on with the next request. `Duration::MAX` means no timeout.
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
        let server = Server::from_listener(TcpListener::from(listener), None)
            .map_err(|error| bind_error(addr, io::Error::other(error.to_string())))?;
        let server = Arc::new(server);
        let served = Served::default();
        let thread = thread::Builder::new()
            .name("backflow-metrics".into())
            .spawn({
                let (server, served) = (Arc::clone(&server), Arc::clone(&served));
                move || answer_all(&server, &served)
            })
            .map_err(|error| ServeError::Spawn { message: error.to_string() })?;
        Ok(Self { addr: local, served, server, listener: handle, thread: Some(thread) })
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

    /// Stops the server: the port closes and its answering thread is joined (after the
    /// answer it may be writing, for at most the write timeout). Dropping the server does
    /// the same.
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
            // Refuses new connections at once and wakes tiny_http's thread out of `accept`,
            // where Linux ends it; elsewhere dropping the server ends it.
            let _ = self.listener.shutdown(Shutdown::Both);
            self.server.unblock();
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

/// Answers requests until the server is unblocked (stopped) or stops accepting.
fn answer_all(server: &Server, served: &Mutex<Vec<(String, Watch)>>) {
    while let Ok(request) = server.recv() {
        answer(request, served);
    }
}

/// Answers one request. A failed write (the client went away, or stopped reading for the
/// write timeout) loses only that answer.
fn answer(request: Request, served: &Mutex<Vec<(String, Watch)>>) {
    let path = request.url().split(['?', '#']).next().unwrap_or_default();
    let text = "text/plain; charset=utf-8";
    let response = match (request.method(), path) {
        (Method::Get | Method::Head, "/metrics") => {
            with_headers(Response::from_string(scrape(served)), &[("Content-Type", CONTENT_TYPE)])
        }
        (Method::Get | Method::Head, _) => with_headers(
            Response::from_string("not found: try /metrics\n").with_status_code(404),
            &[("Content-Type", text)],
        ),
        _ => with_headers(
            Response::from_string("method not allowed: GET or HEAD\n").with_status_code(405),
            &[("Allow", "GET, HEAD"), ("Content-Type", text)],
        ),
    };
    // A known length: no chunked encoding, which some simple clients do not read.
    let _ = request.respond(response.with_chunked_threshold(usize::MAX));
}

/// The exposition of every pipeline served, snapshots taken now. The list is copied out of
/// its lock first: adding or removing a pipeline never waits on a snapshot.
fn scrape(served: &Mutex<Vec<(String, Watch)>>) -> String {
    let pipelines = served.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let snapshots: Vec<_> = pipelines.iter().map(|(name, watch)| (name, watch.stats())).collect();
    exposition(snapshots.iter().map(|(name, stats)| (name.as_str(), stats)))
}

/// `response` with `headers` (this module's constants, all valid).
fn with_headers<R: io::Read>(mut response: Response<R>, headers: &[(&str, &str)]) -> Response<R> {
    for (name, value) in headers {
        if let Ok(header) = Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            response.add_header(header);
        }
    }
    response
}
