//! What the integration tests share: a `redis-server` on loopback, and small stream helpers.
//!
//! The server is the one at `BACKFLOW_REDIS_URL` when that is set (`cargo xtask ci` starts one
//! and sets it), else one started here on a free port for the test that asks, and stopped
//! when it is dropped. Tests use key names of their own, so they can share a server.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use test_support::RedisServer;

/// A Redis server the tests can use.
pub struct Server {
    pub url: String,
    child: Option<RedisServer>,
}

impl Server {
    /// The shared server if one is configured, else a server of this test's own.
    pub fn get() -> Self {
        match RedisServer::shared_url() {
            Some(url) => Self { url, child: None },
            None => Self::own(),
        }
    }

    /// A server of this test's own, for tests that disturb it (drop its clients).
    pub fn own() -> Self {
        let server = RedisServer::start().unwrap_or_else(|error| panic!("{error}"));
        Self { url: server.url().to_string(), child: Some(server) }
    }

    /// A server of this test's own started with `args` (ACL users, settings).
    pub fn with_args(args: &[String]) -> Self {
        let server = RedisServer::start_with(args).unwrap_or_else(|error| panic!("{error}"));
        Self { url: server.url().to_string(), child: Some(server) }
    }

    /// A server of this test's own, listening for TLS too (see [`Server::tls_url`]).
    pub fn with_tls(tls: &test_support::ServerTls, args: &[String]) -> Self {
        let server = RedisServer::start_tls(tls, args).unwrap_or_else(|error| panic!("{error}"));
        Self { url: server.url().to_string(), child: Some(server) }
    }

    /// `rediss://127.0.0.1:<port>/`, when started with TLS.
    pub fn tls_url(&self) -> String {
        self.child.as_ref().and_then(RedisServer::tls_url).expect("a server started with TLS")
    }

    /// The plain URL as `user` with `password`.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        self.url.replacen("redis://", &format!("redis://{user}:{password}@"), 1)
    }

    /// The server's process id, when it was started here.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(RedisServer::pid)
    }

    fn try_connection(&self) -> redis::RedisResult<redis::Connection> {
        let mut connection = redis::Client::open(self.url.as_str())?.get_connection()?;
        redis::cmd("PING").query::<String>(&mut connection)?;
        Ok(connection)
    }

    pub fn connection(&self) -> redis::Connection {
        self.try_connection().expect("the test server answers")
    }

    /// Adds entries `n = from..to` to `stream`.
    pub fn fill(&self, stream: &str, from: u64, to: u64) {
        let mut connection = self.connection();
        for start in (from..to).step_by(1000) {
            let mut pipe = redis::pipe();
            for n in start..to.min(start + 1000) {
                pipe.cmd("XADD").arg(stream).arg("*").arg("n").arg(n).ignore();
            }
            pipe.query::<()>(&mut connection).expect("XADD");
        }
    }

    /// Entries of `group` delivered and not acknowledged.
    pub fn pending(&self, stream: &str, group: &str) -> u64 {
        let reply: redis::Value =
            redis::cmd("XPENDING").arg(stream).arg(group).query(&mut self.connection()).unwrap();
        match reply {
            redis::Value::Array(parts) => redis::from_redis_value(parts[0].clone()).unwrap(),
            other => panic!("XPENDING replied {other:?}"),
        }
    }

    /// A group's fields from `XINFO GROUPS` (numbers only).
    pub fn group_info(&self, stream: &str, group: &str) -> HashMap<String, i64> {
        self.try_group_info(stream, group).unwrap_or_else(|| panic!("no group {group} on {stream}"))
    }

    /// As [`group_info`](Self::group_info), `None` while the group does not exist.
    pub fn try_group_info(&self, stream: &str, group: &str) -> Option<HashMap<String, i64>> {
        let groups: Vec<HashMap<String, redis::Value>> =
            redis::cmd("XINFO").arg("GROUPS").arg(stream).query(&mut self.connection()).ok()?;
        let name = |g: &HashMap<String, redis::Value>| {
            g.get("name").cloned().map(redis::from_redis_value::<String>).and_then(Result::ok)
        };
        let info = groups.into_iter().find(|g| name(g).as_deref() == Some(group))?;
        let numbers = info
            .into_iter()
            .filter_map(|(k, v)| redis::from_redis_value::<i64>(v).ok().map(|v| (k, v)));
        Some(numbers.collect())
    }

    /// Every entry of `stream` as (id, field → value).
    pub fn entries(&self, stream: &str) -> Vec<(String, HashMap<String, String>)> {
        redis::cmd("XRANGE").arg(stream).arg("-").arg("+").query(&mut self.connection()).unwrap()
    }
}

/// The ACL users the README documents (`user backflow-…` lines of its `acl` block), for
/// `stream` read by the consumer and `output` written by the writer, with `password`: the
/// `--user` arguments of a `redis-server`.
pub fn documented_users(stream: &str, output: &str, password: &str) -> Vec<String> {
    let readme = include_str!("../../../README.md");
    let lines: Vec<&str> =
        readme.lines().filter(|line| line.starts_with("user backflow-")).collect();
    assert_eq!(lines.len(), 2, "the README documents a consumer and a writer: {lines:?}");
    lines
        .iter()
        .flat_map(|line| {
            let line = line
                .replace("numbers", stream)
                .replace("squares", output)
                .replace(">consumer-password", &format!(">{password}"))
                .replace(">writer-password", &format!(">{password}"));
            let mut words: Vec<String> = line.split_whitespace().map(String::from).collect();
            words[0] = "--user".into();
            words
        })
        .collect()
}

/// Key names for one test: its stream, group and output stream.
pub fn keys(test: &str) -> (String, String, String) {
    let tag = format!("{test}-{}", std::process::id());
    (format!("in-{tag}"), format!("group-{tag}"), format!("out-{tag}"))
}

/// The `scale_out` example, built (or found up to date) by cargo once per run of a test binary.
pub fn example() -> &'static PathBuf {
    static EXAMPLE: OnceLock<PathBuf> = OnceLock::new();
    EXAMPLE.get_or_init(|| {
        test_support::example("backflow-redis", "scale_out")
            .unwrap_or_else(|error| panic!("{error}"))
    })
}

/// Waits for `child` at most `limit`; kills it and fails the test past that.
pub fn wait_with_limit(child: Child, limit: Duration) -> std::process::Output {
    let id = child.id();
    let (done, waited) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match waited.recv_timeout(limit) {
        Ok(output) => output.expect("the process ran"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &id.to_string()]).status();
            panic!("process {id} did not finish within {limit:?}");
        }
    }
}

/// The fields of a `summary:` line.
pub fn summary(stdout: &[u8]) -> HashMap<String, String> {
    let stdout = String::from_utf8_lossy(stdout);
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix("summary: "))
        .unwrap_or_else(|| panic!("no summary line in {stdout}"));
    line.split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn number(summary: &HashMap<String, String>, key: &str) -> u64 {
    summary
        .get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {summary:?}"))
}

/// Starts `redis-server` on `port` with `args` after the loopback basics; output discarded.
fn spawn_server(port: u16, args: &[String]) -> Child {
    RedisServer::command(port)
        .args(args)
        .spawn()
        .expect("redis-server runs (`cargo xtask setup` installs it)")
}

/// Polls `done` every millisecond until it holds; fails the test after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "gave up after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A server of a test's own that keeps its data in an append-only file, in a directory of its
/// own, and can be killed (SIGKILL) and started again on the same port with the same data.
/// Derefs to [`Server`] for the stream helpers.
pub struct DurableServer {
    server: Server,
    port: u16,
    dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl DurableServer {
    /// Starts one with `--appendonly yes` and `extra` arguments (kept for every start).
    pub fn start(extra: &[&str]) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free loopback port")
            .port();
        let dir =
            std::env::temp_dir().join(format!("backflow-redis-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let mut args: Vec<String> = ["--appendonly", "yes", "--dir"].map(String::from).to_vec();
        args.push(dir.display().to_string());
        args.extend(extra.iter().map(|arg| arg.to_string()));
        let server = Server { url: format!("redis://127.0.0.1:{port}/"), child: None };
        let mut durable = Self { server, port, dir, args, child: None };
        durable.start_again();
        durable.wait_loaded();
        durable
    }

    /// Kills the server with SIGKILL: no shutdown, no last write.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("the server is running");
        child.kill().expect("SIGKILL reaches the server");
        child.wait().expect("the killed server is reaped");
    }

    /// Starts the server again on the same port and directory; returns once it answers PING,
    /// with PONG or LOADING (it may still be loading its data: see
    /// [`wait_loaded`](Self::wait_loaded)).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the server is still running");
        self.child = Some(spawn_server(self.port, &self.args));
        let port = self.port;
        let answers = || -> redis::RedisResult<()> {
            let mut connection = redis::Client::open(self.url.as_str())?.get_connection()?;
            match redis::cmd("PING").query::<String>(&mut connection) {
                Err(error) if error.code() == Some("LOADING") => Ok(()),
                other => other.map(drop),
            }
        };
        wait_until(
            &format!("redis-server on port {port} to answer"),
            Duration::from_secs(10),
            || answers().is_ok(),
        );
    }

    /// Waits until the server has loaded its data.
    pub fn wait_loaded(&self) {
        // INFO is answered while loading; PING, and with it `connection`, is not.
        let loaded = || -> redis::RedisResult<bool> {
            let mut connection = redis::Client::open(self.url.as_str())?.get_connection()?;
            let info: String = redis::cmd("INFO").arg("persistence").query(&mut connection)?;
            Ok(info.lines().any(|line| line.trim() == "loading:0"))
        };
        wait_until("the server to load its data", Duration::from_secs(30), || {
            loaded().unwrap_or(false)
        });
    }

    /// Rewrites the append-only file (its base becomes a snapshot of every key, and the
    /// commands after it start again from none) and waits until the rewrite is done.
    pub fn rewrite_aof(&self) {
        let idle = || {
            let info = self.info("persistence");
            info["aof_rewrite_in_progress"] == "0" && info["aof_rewrite_scheduled"] == "0"
        };
        wait_until("an earlier rewrite to end", Duration::from_secs(30), idle);
        redis::cmd("BGREWRITEAOF").query::<String>(&mut self.connection()).expect("BGREWRITEAOF");
        wait_until("the rewrite to end", Duration::from_secs(30), idle);
        assert_eq!(self.info("persistence")["aof_last_bgrewrite_status"], "ok");
    }
}

impl std::ops::Deref for DurableServer {
    type Target = Server;

    fn deref(&self) -> &Server {
        &self.server
    }
}

impl Drop for DurableServer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Server {
    /// One section of `INFO`, as field → value.
    pub fn info(&self, section: &str) -> HashMap<String, String> {
        let text: String =
            redis::cmd("INFO").arg(section).query(&mut self.connection()).expect("INFO");
        text.lines()
            .filter_map(|line| line.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect()
    }

    /// How many replies with error `code` (`LOADING`, `BUSY`, …) the server has sent since it
    /// started (`INFO errorstats`).
    pub fn error_count(&self, code: &str) -> u64 {
        self.info("errorstats")
            .get(&format!("errorstat_{code}"))
            .and_then(|stat| stat.strip_prefix("count="))
            .and_then(|count| count.split(',').next())
            .map_or(0, |count| count.parse().expect("a count"))
    }
}
