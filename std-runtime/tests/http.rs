//! `/metrics` over HTTP (feature `http`): what a scrape answers, for one pipeline and several,
//! at the moment of the scrape and after a pipeline has ended; what else the server answers;
//! bad addresses; a client that stops reading, which holds up neither the pipeline nor, for
//! longer than the write timeout, the other clients; and stopping.

mod common;

use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use backflow::http::MAX_CONNECTIONS;
use backflow::{MetricsServer, Pipeline, ServeError, Stats, serve_metrics};
use prometheus_parse::{Scrape, Value};
use socket2::{Domain, Socket, Type};
use test_support::{HttpAnswer, http_get, http_request};

/// A pipeline `parse` → sink, every item timed.
fn pipeline() -> Pipeline<u64> {
    Pipeline::<u64>::builder()
        .sample_every(NonZeroU32::MIN)
        .stage("parse", || |x: u64| x + 1)
        .sink(|_| {})
        .build()
        .unwrap()
}

/// Pushes `items` and waits until the pipeline has settled them all.
fn push_and_settle(pipeline: &Pipeline<u64>, items: std::ops::Range<u64>) {
    let expected = pipeline.stats().sink().delivered + (items.end - items.start);
    pipeline.input().push_iter(items).unwrap();
    common::eventually("every item is delivered", || pipeline.stats().sink().delivered == expected);
}

fn scrape(addr: SocketAddr) -> (HttpAnswer, Scrape) {
    let answer = http_get(addr, "/metrics").unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    let scrape = Scrape::parse(answer.body.lines().map(|l| Ok(l.to_owned()))).unwrap();
    (answer, scrape)
}

/// The value of counter `metric` with `labels`, if exactly one sample has them.
fn counter(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)));
    let sample = found.next()?;
    assert!(found.next().is_none(), "several {metric} {labels:?}");
    match sample.value {
        Value::Counter(n) => Some(n),
        ref other => panic!("{metric} is not a counter: {other:?}"),
    }
}

fn received(scrape: &Scrape, pipeline: &str) -> Option<f64> {
    let labels = [("pipeline", pipeline), ("stage", "parse")];
    counter(scrape, "backflow_stage_received_items_total", &labels)
}

#[test]
fn a_scrape_answers_with_the_stats_at_that_moment() {
    let pipeline = pipeline();
    push_and_settle(&pipeline, 0..50);
    let server = serve_metrics("127.0.0.1:0", [("orders", pipeline.watch())]).unwrap();
    let (answer, first) = scrape(server.local_addr());
    assert_eq!(answer.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    assert_eq!(answer.header("content-length"), Some(answer.body.len().to_string().as_str()));
    assert_eq!(received(&first, "orders"), Some(50.0));
    // The same text the pipeline's own snapshot writes, but for what moves with time.
    let own = pipeline.stats().to_prometheus("orders");
    let steady = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| {
                !l.contains("elapsed") && !l.contains("_per_second") && !l.contains("time_share")
            })
            .map(String::from)
            .collect()
    };
    assert_eq!(steady(&answer.body), steady(&own));

    push_and_settle(&pipeline, 50..75);
    let (_, second) = scrape(server.local_addr());
    assert_eq!(received(&second, "orders"), Some(75.0), "taken at scrape time");
    pipeline.drain().unwrap();
}

#[test]
fn several_pipelines_share_one_endpoint_under_their_names() {
    let (a, b) = (pipeline(), pipeline());
    push_and_settle(&a, 0..3);
    push_and_settle(&b, 0..4);
    let server = MetricsServer::bind("127.0.0.1:0").unwrap();
    server.add("a", a.watch()).unwrap();
    server.add("b", b.watch()).unwrap();
    assert_eq!(server.add("a", b.watch()), Err(ServeError::DuplicatePipeline { name: "a".into() }));
    let (answer, both) = scrape(server.local_addr());
    assert_eq!((received(&both, "a"), received(&both, "b")), (Some(3.0), Some(4.0)));
    let help = "# HELP backflow_stage_received_items_total ";
    assert_eq!(answer.body.matches(help).count(), 1, "each family once");

    assert!(server.remove("a").is_some());
    let (_, only_b) = scrape(server.local_addr());
    assert_eq!((received(&only_b, "a"), received(&only_b, "b")), (None, Some(4.0)));
    drop((a, b));
}

#[test]
fn an_ended_pipeline_is_served_with_its_final_stats() {
    let pipeline = pipeline();
    let server = serve_metrics("127.0.0.1:0", [("job", pipeline.watch())]).unwrap();
    pipeline.input().push_iter(0..20).unwrap();
    let report = pipeline.drain().unwrap();
    let (answer, scrape) = scrape(server.local_addr());
    assert_eq!(received(&scrape, "job"), Some(20.0));
    let delivered = [("pipeline", "job"), ("sink", "sink")];
    let metric = "backflow_sink_delivered_items_total";
    assert_eq!(counter(&scrape, metric, &delivered), Some(report.sink().delivered as f64));
    assert_eq!(answer.body, report.stats().to_prometheus("job"), "exactly the report");
}

#[test]
fn other_paths_and_methods_are_refused_and_head_has_no_body() {
    let server = MetricsServer::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr();
    assert_eq!(http_get(addr, "/nope").unwrap().status, 404);
    assert_eq!(http_get(addr, "/").unwrap().status, 404);
    let post = http_request(addr, "POST", "/metrics").unwrap();
    assert_eq!((post.status, post.header("allow")), (405, Some("GET, HEAD")));
    let head = http_request(addr, "HEAD", "/metrics").unwrap();
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    assert_eq!(http_get(addr, "/metrics?ignored=1").unwrap().status, 200);
    // Nothing served yet: an empty exposition is valid.
    assert_eq!(http_get(addr, "/metrics").unwrap().body, "");
}

#[test]
fn bad_addresses_are_errors_naming_them() {
    for bad in
        ["", "9898", "localhost", "127.0.0.1:65536", "127.0.0.1:-1", "256.0.0.1:80", "[::1:80"]
    {
        match MetricsServer::bind(bad) {
            Err(ServeError::Address { addr, message }) => {
                assert_eq!(addr, bad);
                assert!(!message.is_empty());
            }
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    let taken = MetricsServer::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().to_string();
    let error = MetricsServer::bind(&addr).unwrap_err();
    assert!(
        matches!(&error, ServeError::Bind { addr: a, kind: std::io::ErrorKind::AddrInUse, .. } if *a == addr),
        "{error:?}"
    );
    assert!(error.to_string().contains(&format!("`{addr}`")), "{error}");
    // An address that is not this machine's.
    let error = MetricsServer::bind("192.0.2.1:0").unwrap_err();
    assert!(matches!(&error, ServeError::Bind { addr, .. } if addr == "192.0.2.1:0"), "{error:?}");
    assert_eq!(
        MetricsServer::bind_with("127.0.0.1:0", Duration::ZERO).unwrap_err(),
        ServeError::ZeroWriteTimeout
    );
    // No timeout at all is a choice, not an error.
    assert!(MetricsServer::bind_with("127.0.0.1:0", Duration::MAX).is_ok());
}

/// A client that sends a request and never reads the answer: with a small receive window and
/// a large answer, the server's write blocks, until the write timeout ends that answer. The
/// pipeline goes on meanwhile, and the next client is answered after the timeout at most.
#[test]
fn a_client_that_stops_reading_holds_up_neither_the_pipeline_nor_other_clients() {
    const WRITE_TIMEOUT: Duration = Duration::from_millis(300);
    let pipeline = pipeline();
    push_and_settle(&pipeline, 0..10);
    // A 256 KiB name on every sample line: an answer of about 10 MB, far more than the two
    // sockets' buffers hold.
    let name = "x".repeat(256 * 1024);
    let server = MetricsServer::bind_with("127.0.0.1:0", WRITE_TIMEOUT).unwrap();
    server.add(name.as_str(), pipeline.watch()).unwrap();
    let addr = server.local_addr();

    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut stuck = TcpStream::from(socket);
    stuck.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();

    // The pipeline is not held up by the stuck answer.
    push_and_settle(&pipeline, 10..1_000);
    let started = Instant::now();
    let answer = http_get(addr, "/metrics").unwrap();
    // Answered after the stuck one gave up: within the write timeout, plus the time to write
    // both answers.
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert_eq!(answer.status, 200);
    assert!(answer.body.len() > 8 << 20, "{} bytes", answer.body.len());
    // Too large to parse quickly in a debug build: the one line, found as text.
    let line = answer
        .body
        .lines()
        .find(|l| {
            l.starts_with("backflow_stage_received_items_total{") && l.contains("stage=\"parse\"")
        })
        .unwrap();
    assert!(line.ends_with("} 1000"), "{}", &line[line.len() - 40..]);
    drop(stuck);
    let report = pipeline.drain().unwrap();
    assert_eq!(report.sink().delivered, 1_000);
}

/// Clients that connect and send nothing hold one answering thread each: past
/// `MAX_CONNECTIONS` a connection is answered `503` at once rather than left waiting, and as
/// soon as a place is free the scrapes are answered while the other silent clients still wait.
#[test]
fn silent_clients_hold_up_no_other_scrape() {
    // Long enough that no silent client is given up on while the test runs.
    let server = MetricsServer::bind_with("127.0.0.1:0", Duration::from_secs(60)).unwrap();
    let pipeline = pipeline();
    push_and_settle(&pipeline, 0..10);
    server.add("p", pipeline.watch()).unwrap();
    let addr = server.local_addr();
    let mut silent: Vec<TcpStream> =
        (0..MAX_CONNECTIONS).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // Every place taken: the next connection is refused with an answer, not left waiting.
    let refused = http_get(addr, "/metrics").unwrap();
    assert_eq!(refused.status, 503, "{refused:?}");
    // One silent client leaves: its place goes to the next scrape.
    drop(silent.pop());
    let mut answered = None;
    common::eventually("a place is free again", || {
        answered = http_get(addr, "/metrics").ok().filter(|answer| answer.status == 200);
        answered.is_some()
    });
    let body = answered.unwrap().body;
    let scraped = Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap();
    assert_eq!(received(&scraped, "p"), Some(10.0));
    for client in &silent {
        // Still waited on: nothing was answered, the connection is open.
        client.set_nonblocking(true).unwrap();
        let mut byte = [0; 1];
        let read = std::io::Read::read(&mut &*client, &mut byte);
        assert_eq!(read.map_err(|e| e.kind()), Err(std::io::ErrorKind::WouldBlock));
    }
    drop(silent);
    server.stop();
}

#[test]
#[cfg(target_os = "linux")]
fn stopping_closes_the_port_and_ends_the_servers_thread() {
    let server = MetricsServer::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr();
    assert_eq!(http_get(addr, "/metrics").unwrap().status, 200);
    server.stop();
    let refused = TcpStream::connect(addr).map(drop);
    assert_eq!(refused.map_err(|e| e.kind()), Err(std::io::ErrorKind::ConnectionRefused));
    // Dropping is stopping too.
    let dropped = MetricsServer::bind("127.0.0.1:0").unwrap();
    let addr = dropped.local_addr();
    drop(dropped);
    assert!(TcpStream::connect(addr).is_err());
}

/// What the scrape writes is what `Stats` says.
#[test]
fn a_watchs_stats_are_what_a_scrape_counts() {
    let pipeline = pipeline();
    push_and_settle(&pipeline, 0..5);
    let server = serve_metrics("127.0.0.1:0", [("w", pipeline.watch())]).unwrap();
    let stats: Stats = pipeline.watch().stats();
    let (_, scrape) = scrape(server.local_addr());
    let parse = stats.stage("parse").unwrap();
    assert_eq!(received(&scrape, "w"), Some(parse.accounting.received as f64));
}

/// Sends `request` on a connection of its own and returns what came back before the server
/// closed it (or the read timed out).
fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    use std::io::Read as _;
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// Requests that claim a body, of any length, which never comes; a head longer than the
/// server reads; a client that sends nothing at all: each gets its answer (or is dropped
/// after the timeout), none costs the server more than that, and the next client is served.
#[test]
fn hostile_requests_cost_the_server_at_most_its_timeout() {
    let server = MetricsServer::bind_with("127.0.0.1:0", Duration::from_millis(300)).unwrap();
    let addr = server.local_addr();
    for length in [5_000, u64::MAX / 4, u64::MAX] {
        let request =
            format!("GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n");
        assert!(exchange(addr, request.as_bytes()).starts_with("HTTP/1.1 200 OK\r\n"));
        let expect = format!("{}Expect: 100-continue\r\n\r\n", request.trim_end_matches("\r\n"));
        assert!(exchange(addr, expect.as_bytes()).starts_with("HTTP/1.1 200 OK\r\n"));
        assert_eq!(http_get(addr, "/metrics").unwrap().status, 200);
    }
    let long = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "y".repeat(10_000));
    assert!(exchange(addr, long.as_bytes()).starts_with("HTTP/1.1 431 "));
    // A head of exactly `MAX_HEAD` bytes (its blank line aside) is read; one byte more is not,
    // however the reads fall.
    let line = "GET /metrics HTTP/1.1\r\nX: ";
    let fits = format!("{line}{}\r\n\r\n", "y".repeat(backflow::http::MAX_HEAD - line.len()));
    assert!(exchange(addr, fits.as_bytes()).starts_with("HTTP/1.1 200 OK\r\n"));
    let over = format!("{line}{}\r\n\r\n", "y".repeat(backflow::http::MAX_HEAD + 1 - line.len()));
    assert!(exchange(addr, over.as_bytes()).starts_with("HTTP/1.1 431 "));
    assert!(exchange(addr, b"nonsense\r\n\r\n").starts_with("HTTP/1.1 400 "));
    assert!(exchange(addr, b"GET /metrics HTTP/2\r\n\r\n").starts_with("HTTP/1.1 505 "));
    // Connected, silent: dropped after the timeout, and the next client is served.
    let silent = TcpStream::connect(addr).unwrap();
    assert_eq!(http_get(addr, "/metrics").unwrap().status, 200);
    drop(silent);
    // A request trickled a byte at a time, each well within the timeout: the timeout is for
    // the whole head, so the client is dropped after it and the next one served (a timeout
    // per read would hold the server for the whole 8 KiB, minutes).
    let (connected, trickling) = std::sync::mpsc::channel();
    let trickler = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        connected.send(()).unwrap();
        for byte in "GET /metrics HTTP/1.1\r\nX: ".bytes().chain(std::iter::repeat(b'y')) {
            if stream.write_all(&[byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    // Connected first, so accepted first.
    trickling.recv().unwrap();
    assert_eq!(http_get(addr, "/metrics").unwrap().status, 200);
    common::within_time(move || trickler.join().unwrap());
    // A request whose body never comes, still open: stopping waits at most the timeout.
    let mut waiting = TcpStream::connect(addr).unwrap();
    waiting.write_all(b"GET /metrics HTTP/1.1\r\nContent-Length: 99999\r\n\r\n").unwrap();
    assert_eq!(http_get(addr, "/metrics").unwrap().status, 200);
    common::within_time(move || server.stop());
    drop(waiting);
}
