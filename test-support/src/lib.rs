//! What backflow's integration tests, benches and `xtask` share, written once:
//!
//! - [`RedisServer`]: a `redis-server` of its own on a free loopback port, without
//!   persistence, ready when [`RedisServer::start`] returns and stopped when dropped; with
//!   arguments of the test's (ACL users) or a TLS port ([`ServerTls`]) as well.
//! - [`example`]: one of a package's examples, built (or found up to date) by cargo into the
//!   target directory and profile of the running test or bench, and its executable's path.
//! - [`PrometheusServer`]: a `prometheus` of its own on a free loopback port, scraping the
//!   test's targets every second, its files in a directory of its own; ready when
//!   [`PrometheusServer::start`] returns, queried with [`PrometheusServer::query`], stopped
//!   (its files removed) when dropped.
//! - [`http_get`]: one HTTP/1.0 `GET` over a `TcpStream`, for tests of HTTP endpoints.
//!
//! Not published: the crates use it as a dev-dependency, `xtask` as a dependency.
//!
//! ```no_run
//! use test_support::{RedisServer, example};
//!
//! let server = RedisServer::start()?;
//! let scale_out = example("backflow-redis", "scale_out")?;
//! let status = std::process::Command::new(scale_out)
//!     .args(["--url", server.url(), "--fill", "100"])
//!     .status()?;
//! assert!(status.success());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs, missing_debug_implementations)]

mod example;
mod http;
mod prometheus_server;
mod redis_server;

pub use example::{ExampleError, example, example_with_features};
pub use http::{HttpAnswer, http_get, http_request};
pub use prometheus_server::{
    PrometheusError, PrometheusServer, QueryError, SCRAPE_INTERVAL, Series,
};
pub use redis_server::{REDIS_URL_VARIABLE, RedisServer, ServerTls, StartError};
