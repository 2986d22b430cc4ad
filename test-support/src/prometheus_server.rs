//! A `prometheus` server of a test's own: started on a free loopback port with a scrape
//! config of the test's targets (every second), its config and TSDB in a directory of its
//! own, waited for until it is ready, and killed (its directory removed) when dropped.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::http::http_get;

/// The program started.
const PROGRAM: &str = "prometheus";
/// How long a started server has to say it is ready.
const STARTUP_LIMIT: Duration = Duration::from_secs(30);
/// How often a starting server is asked.
const POLL: Duration = Duration::from_millis(50);
/// As for redis-server: a port picked free can be taken before the server binds it; then it
/// exits at once and is started again on another port, this many times in all.
const ATTEMPTS: usize = 3;
/// How often the targets are scraped.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);

/// Why [`PrometheusServer::start`] has no server to give.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrometheusError {
    /// There is no `prometheus` on `PATH`.
    #[error(
        "prometheus is not installed: `cargo xtask setup` installs it (Debian's package: \
         `apt-get install prometheus`)"
    )]
    NotInstalled,
    /// No loopback port could be reserved.
    #[error("no free loopback port: {0}")]
    NoFreePort(#[source] io::Error),
    /// Its directory or config file could not be written.
    #[error("cannot write prometheus's files in {}: {source}", dir.display())]
    Files {
        /// The directory.
        dir: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// `prometheus` is there but could not be started.
    #[error("could not start prometheus: {0}")]
    Spawn(#[source] io::Error),
    /// The server exited before it was ready (on the last of the ports tried).
    #[error("prometheus on port {port} exited with {status} before it was ready:\n{log}")]
    Exited {
        /// The port it was told to listen on.
        port: u16,
        /// How it ended.
        status: ExitStatus,
        /// The end of its log.
        log: String,
    },
    /// The server runs but was not ready in time; it has been killed.
    #[error("prometheus on port {port} was not ready within {limit:?}:\n{log}")]
    NotReady {
        /// The port it was told to listen on.
        port: u16,
        /// How long it was given.
        limit: Duration,
        /// The end of its log.
        log: String,
    },
}

/// Why [`PrometheusServer::query`] has no result to give.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The HTTP request failed.
    #[error("querying prometheus: {0}")]
    Http(#[source] io::Error),
    /// The answer is not the API's JSON, or says the query failed.
    #[error("prometheus answered {status}: {body}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The answer's body.
        body: String,
    },
}

/// One series of an instant query's result: its labels and its value.
///
/// # Examples
///
/// ```
/// let series = test_support::Series { labels: [("job".to_string(), "backflow".to_string())].into(), value: 1.0 };
/// assert_eq!(series.labels["job"], "backflow");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Every label, `__name__` included.
    pub labels: BTreeMap<String, String>,
    /// The sample's value.
    pub value: f64,
}

/// A `prometheus` server this process started on `127.0.0.1`, scraping the given targets
/// every [`SCRAPE_INTERVAL`] as job `backflow`. Dropping it kills the process, waits for it
/// and removes its directory.
///
/// # Examples
///
/// ```no_run
/// use test_support::PrometheusServer;
///
/// let target = "127.0.0.1:9898".parse()?;
/// let prometheus = PrometheusServer::start(&[target])?;
/// for series in prometheus.query("up")? {
///     println!("{:?} = {}", series.labels, series.value);
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct PrometheusServer {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl PrometheusServer {
    /// Starts `prometheus` on a free loopback port, scraping `targets` (`HOST:PORT`, path
    /// `/metrics`), and returns once it is ready (`/-/ready` answers 200).
    ///
    /// # Errors
    ///
    /// [`PrometheusError::NotInstalled`] when there is no `prometheus` to run; the other
    /// variants when it ran but never became ready.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let prometheus = test_support::PrometheusServer::start(&[])?;
    /// assert!(prometheus.addr().ip().is_loopback());
    /// # Ok::<(), test_support::PrometheusError>(())
    /// ```
    pub fn start(targets: &[SocketAddr]) -> Result<Self, PrometheusError> {
        Self::start_program(OsStr::new(PROGRAM), targets)
    }

    fn start_program(program: &OsStr, targets: &[SocketAddr]) -> Result<Self, PrometheusError> {
        let mut attempt = 1;
        loop {
            match Self::start_once(program, targets) {
                Err(PrometheusError::Exited { .. }) if attempt < ATTEMPTS => attempt += 1,
                result => return result,
            }
        }
    }

    fn start_once(program: &OsStr, targets: &[SocketAddr]) -> Result<Self, PrometheusError> {
        let port = free_port()?;
        let dir = own_dir(port)?;
        let files = |source| PrometheusError::Files { dir: dir.clone(), source };
        let config = dir.join("prometheus.yml");
        fs::write(&config, scrape_config(targets)).map_err(files)?;
        let log = fs::File::create(dir.join("prometheus.log")).map_err(files)?;
        let child = Command::new(program)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(error) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(match error.kind() {
                    io::ErrorKind::NotFound => PrometheusError::NotInstalled,
                    _ => PrometheusError::Spawn(error),
                });
            }
        };
        // From here on, dropping `server` stops the process and removes its files.
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut server = Self { child, addr, dir };
        let deadline = Instant::now() + STARTUP_LIMIT;
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(PrometheusError::Exited { port, status, log: server.log_tail() });
            }
            if http_get(addr, "/-/ready").is_ok_and(|answer| answer.status == 200) {
                return Ok(server);
            }
            if Instant::now() >= deadline {
                let log = server.log_tail();
                return Err(PrometheusError::NotReady { port, limit: STARTUP_LIMIT, log });
            }
            std::thread::sleep(POLL);
        }
    }

    /// The address it listens on, `127.0.0.1:<port>`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let prometheus = test_support::PrometheusServer::start(&[])?;
    /// println!("http://{}/graph", prometheus.addr());
    /// # Ok::<(), test_support::PrometheusError>(())
    /// ```
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The result of the instant query `promql` (`/api/v1/query`), evaluated now: one
    /// [`Series`] per series it selects, none while nothing has been scraped.
    ///
    /// # Errors
    ///
    /// [`QueryError::Http`] if the request failed, [`QueryError::Refused`] if Prometheus
    /// refused the query (a syntax error) or answered something else than a vector.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let prometheus = test_support::PrometheusServer::start(&[])?;
    /// assert!(prometheus.query("up")?.is_empty(), "no targets");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn query(&self, promql: &str) -> Result<Vec<Series>, QueryError> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let answer = http_get(self.addr, &path).map_err(QueryError::Http)?;
        let refused = || QueryError::Refused { status: answer.status, body: answer.body.clone() };
        if answer.status != 200 {
            return Err(refused());
        }
        vector(&answer.body).ok_or_else(refused)
    }

    /// The last lines of the server's log (its stderr), for an error message.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let prometheus = test_support::PrometheusServer::start(&[])?;
    /// eprintln!("{}", prometheus.log_tail());
    /// # Ok::<(), test_support::PrometheusError>(())
    /// ```
    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The scrape config: every target every [`SCRAPE_INTERVAL`], as job `backflow`.
fn scrape_config(targets: &[SocketAddr]) -> String {
    let seconds = SCRAPE_INTERVAL.as_secs().max(1);
    let mut config = format!(
        "global:\n  scrape_interval: {seconds}s\n  scrape_timeout: {seconds}s\n\
         scrape_configs:\n  - job_name: backflow\n    static_configs:\n      - targets: ["
    );
    let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    config.push_str(&list.join(", "));
    config.push_str("]\n");
    config
}

/// A directory of its own under the system's temporary directory, created empty.
fn own_dir(port: u16) -> Result<PathBuf, PrometheusError> {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    let n = COUNT.fetch_add(1, Ordering::Relaxed);
    let name = format!("backflow-prometheus-{}-{port}-{n}", std::process::id());
    let dir = std::env::temp_dir().join(name);
    let created = match fs::remove_dir_all(&dir) {
        Ok(()) => fs::create_dir_all(&dir),
        Err(error) if error.kind() == io::ErrorKind::NotFound => fs::create_dir_all(&dir),
        Err(error) => Err(error),
    };
    created.map_err(|source| PrometheusError::Files { dir: dir.clone(), source })?;
    Ok(dir)
}

/// A loopback port free right now.
fn free_port() -> Result<u16, PrometheusError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(PrometheusError::NoFreePort)
}

/// `text` with every byte but the unreserved ones (`A-Z a-z 0-9 - . _ ~`) as `%XX`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// The series of an instant vector answer:
/// `{"status":"success","data":{"resultType":"vector","result":[{"metric":{…},"value":[t,"v"]}]}}`.
fn vector(body: &str) -> Option<Vec<Series>> {
    let json: serde_json::Value = serde_json::from_str(body).ok()?;
    if json["status"] != "success" || json["data"]["resultType"] != "vector" {
        return None;
    }
    json["data"]["result"]
        .as_array()?
        .iter()
        .map(|series| {
            let labels = series["metric"]
                .as_object()?
                .iter()
                .map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect::<Option<BTreeMap<_, _>>>()?;
            let value = series["value"][1].as_str()?.parse().ok()?;
            Some(Series { labels, value })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(percent_encode("up"), "up");
        assert_eq!(
            percent_encode(r#"a{quantile="0.99"} > 1"#),
            "a%7Bquantile%3D%220.99%22%7D%20%3E%201"
        );
    }

    #[test]
    fn a_vector_answer_reads_as_series() {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"__name__":"x","stage":"parse"},"value":[1700000000.5,"42"]},
            {"metric":{},"value":[1700000000.5,"NaN"]}]}}"#;
        let series = vector(body).unwrap();
        assert_eq!(series[0].labels["stage"], "parse");
        assert_eq!(series[0].value, 42.0);
        assert!(series[1].value.is_nan());
        assert_eq!(vector(r#"{"status":"error","error":"bad"}"#), None);
        assert_eq!(
            vector(r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#),
            None
        );
    }

    #[test]
    fn the_config_scrapes_every_target_every_second() {
        let targets = ["127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap()];
        let config = scrape_config(&targets);
        assert!(config.contains("scrape_interval: 1s\n"), "{config}");
        assert!(config.contains("targets: ['127.0.0.1:1', '127.0.0.1:2']\n"), "{config}");
    }

    #[test]
    fn a_missing_program_is_not_installed_and_names_the_install_command() {
        let error = PrometheusServer::start_program(OsStr::new("backflow-no-such-prometheus"), &[]);
        let error = error.unwrap_err();
        assert!(matches!(error, PrometheusError::NotInstalled), "{error:?}");
        let message = error.to_string();
        assert!(message.contains("apt-get install prometheus"), "{message}");
    }

    #[test]
    fn a_server_that_exits_is_reported_at_once() {
        // `false` exits 1 whatever its arguments: as a server that cannot bind its port would.
        let started = Instant::now();
        let error = PrometheusServer::start_program(OsStr::new("false"), &[]).unwrap_err();
        assert!(matches!(error, PrometheusError::Exited { .. }), "{error:?}");
        assert!(started.elapsed() < STARTUP_LIMIT, "waited {:?}", started.elapsed());
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_started_server_is_ready_and_answers_queries_until_dropped() {
        let server = PrometheusServer::start(&[]).unwrap_or_else(|error| panic!("{error}"));
        let vector = server.query("vector(1)").expect("a constant answers");
        assert_eq!(vector, [Series { labels: BTreeMap::new(), value: 1.0 }]);
        let refused = server.query("sum(");
        assert!(matches!(refused, Err(QueryError::Refused { status: 400, .. })), "{refused:?}");
        let (pid, dir) = (server.child.id(), server.dir.clone());
        drop(server);
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "killed and reaped");
        assert!(!dir.exists(), "its files removed");
    }
}
