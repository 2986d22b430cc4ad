//! Access-log lines enriched by a slow service, without a thread per call.
//!
//! A tokio task sends generated access-log lines (`Input::send(..).await`) into a pipeline:
//! `parse` (a thread stage) takes each line apart, `enrich` (an async stage,
//! [`backflow_tokio::map_async`]) asks a simulated customer service about the client — each
//! call takes 2–20 ms on the tokio timer, and a few fail and are retried — with up to
//! `--concurrency` calls in flight per worker, and `tally` counts requests per customer tier.
//! The live stats table shows `enrich` as the bottleneck with hundreds of items in flight,
//! and its queue holding the producer back.
//!
//! ```text
//! cargo run --release -p backflow-tokio --example enrich -- --lines 200000 --concurrency 256
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backflow::core::RetrySchedule;
use backflow::{Pipeline, stage};
use backflow_tokio::map_async;
use clap::Parser;

/// Enrich generated access-log lines through a simulated 2–20 ms service, at bounded
/// concurrency.
#[derive(Debug, Parser)]
struct Args {
    /// How many log lines to generate.
    #[arg(long, default_value_t = 100_000)]
    lines: u64,
    /// Service calls in flight per worker of the `enrich` stage.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Workers of the `enrich` stage.
    #[arg(long, default_value = "2")]
    workers: NonZeroUsize,
}

/// One parsed request.
#[derive(Debug, Clone)]
struct Request {
    client: [u8; 4],
    path: String,
    status: u16,
}

/// A request with what the service knows of its client.
#[derive(Debug)]
struct Enriched {
    tier: &'static str,
    status: u16,
}

/// The service failed to answer.
#[derive(Debug, thiserror::Error)]
#[error("customer service: 503 for {0}")]
struct Unavailable(String);

/// SplitMix64, for the generated log and the service's latencies.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const PATHS: &[&str] = &[
    "GET /api/v1/products/{id}",
    "GET /api/v1/search?q=shoes",
    "GET /api/v1/users/{id}/orders",
    "POST /api/v1/orders",
    "PUT /api/v1/cart/{id}",
    "GET /static/js/app.js",
    "GET /healthz",
];

/// The `n`-th line of the generated access log (with 0.3 % malformed lines).
fn log_line(n: u64) -> String {
    let r = mix(n);
    let mut line = String::with_capacity(160);
    let ip = [31 + (r % 180) as u8, (r >> 8) as u8, (r >> 16) as u8, 1 + (r >> 24) as u8 % 254];
    let path =
        PATHS[(r >> 32) as usize % PATHS.len()].replace("{id}", &((r >> 40) % 9_999).to_string());
    let status = match (r >> 48) % 100 {
        0 => 503,
        1..=3 => 404,
        _ => 200,
    };
    let (minute, second) = (n / 150_000 % 60, n / 2_500 % 60);
    let _ = write!(
        line,
        "{}.{}.{}.{} - - [10/Oct/2024:13:{minute:02}:{second:02} +0000] \"{path} HTTP/1.1\" {status} {} \"-\" \"curl/8.5.0\"",
        ip[0],
        ip[1],
        ip[2],
        ip[3],
        (r >> 20) % 50_000
    );
    if r % 1000 < 3 {
        line.truncate(line.len() / 2);
    }
    line
}

/// Takes a log line apart; `None` for a malformed one.
fn parse(line: String) -> Option<Request> {
    let (ip, rest) = line.split_once(" - - [")?;
    let mut client = [0u8; 4];
    let mut octets = ip.split('.');
    for octet in &mut client {
        *octet = octets.next()?.parse().ok()?;
    }
    let (_, rest) = rest.split_once("] \"")?;
    let (request, rest) = rest.split_once(" HTTP/1.1\" ")?;
    let status = rest.split(' ').next()?.parse().ok()?;
    Some(Request { client, path: request.to_string(), status })
}

/// The simulated customer service: 2–20 ms per call on the tokio timer; one call in 200
/// fails.
async fn customer_tier(request: Request) -> Result<Enriched, Unavailable> {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let key = u64::from(u32::from_be_bytes(request.client)) ^ request.path.len() as u64;
    let r = mix(key ^ CALLS.fetch_add(1, Ordering::Relaxed) << 32);
    tokio::time::sleep(Duration::from_micros(2_000 + r % 18_000)).await;
    if r.is_multiple_of(200) {
        return Err(Unavailable(request.path));
    }
    let tier = ["free", "free", "free", "plus", "pro"][(key % 5) as usize];
    Ok(Enriched { tier, status: request.status })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    let handle = runtime.handle().clone();
    let tally: Arc<Mutex<BTreeMap<(&'static str, u16), u64>>> = Arc::default();
    let counts = Arc::clone(&tally);
    let concurrency = args.concurrency;
    let pipeline = Pipeline::<String>::builder()
        .stage("parse", || stage::filter_map(parse))
        .capacity(4_096)
        .stage("enrich", move || {
            map_async(customer_tier).concurrency(concurrency).on(handle.clone())
        })
        .workers(args.workers)
        .capacity(4_096)
        .retry(RetrySchedule::new(Duration::from_millis(5), Duration::from_millis(50), 2)?)
        .stage("tally", || |e: Enriched| (e.tier, e.status))
        .sink(move |key| *counts.lock().unwrap().entry(key).or_default() += 1)
        .build()?;

    println!(
        "enriching {} log lines through a 2–20 ms service, {} calls in flight per worker, {} workers\n",
        args.lines, args.concurrency, args.workers
    );
    let started = Instant::now();
    let mut input = pipeline.input();
    let lines = args.lines;
    let producer = runtime.spawn(async move {
        for n in 0..lines {
            if input.send(log_line(n)).await.is_err() {
                break;
            }
        }
    });
    let mut out = io::stdout();
    let mut shown = 0;
    while !producer.is_finished() {
        std::thread::sleep(Duration::from_millis(500));
        let table = pipeline.stats().to_string();
        // Redraw the table in place.
        if shown > 0 {
            write!(out, "\x1b[{shown}A\x1b[J")?;
        }
        writeln!(out, "{table}")?;
        out.flush()?;
        shown = table.lines().count();
    }
    runtime.block_on(producer)?;
    let report = pipeline.drain()?;
    let elapsed = started.elapsed();
    println!("\nfinal report after {elapsed:.2?}:\n{report}");
    let enrich = report.stage("enrich").expect("the enrich stage");
    println!(
        "enrich: {} items, {} retries, {} failed for good, processing p50 {:?} p99 {:?}",
        enrich.accounting.emitted_inputs,
        enrich.retries,
        enrich.accounting.errored,
        Duration::from_nanos(enrich.process_time.p50),
        Duration::from_nanos(enrich.process_time.p99),
    );
    println!("\nrequests by customer tier and status:");
    for ((tier, status), count) in tally.lock().unwrap().iter() {
        println!("  {tier:<5} {status}  {count:>8}");
    }
    assert!(report.is_balanced(), "the report does not add up");
    Ok(())
}
