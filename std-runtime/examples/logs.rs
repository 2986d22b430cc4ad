//! The backflow demo: a web-server access-log pipeline, with a live per-stage table.
//!
//! ```text
//! cargo run --release --example logs                        # 3 M generated lines, ~3 s
//! cargo run --release --example logs -- --slow-sink-us 200  # a slow store: backpressure
//! cargo run --release --example logs -- --slow-sink-us 200 --overflow drop-oldest
//! cargo run --release --example logs -- --slow-sink-us 200 --max-queue-bytes 65536
//! cargo run --release --example logs -- --threads 6         # workers move to the bottleneck
//! cargo run --release --example logs -- access.log          # or `-` for stdin
//! cargo run --release --features http --example logs -- --metrics-addr 127.0.0.1:9898 --hold
//! ```
//!
//! Lines in the combined log format (plus the response time, as nginx's `$request_time`) are
//! generated from a fixed seed, or read from a file or stdin, and flow through:
//!
//! ```text
//! lines ─► parse ─► enrich ×2 ─┬─► aggregate ─► sink `totals`   every record
//!            │                 └─┬─► sink `alerts`              5xx records
//!       dead letters             └─► encode ─► sink (the store) the other records
//! ```
//!
//! - `parse` turns a line into a record; a malformed line is the stage's error, handed to a
//!   dead-letter handler and counted. So is a line longer than `--max-line-bytes`, which the
//!   reader hands on as its first bytes and its length, without holding the rest.
//! - `enrich` (two workers) drops health checks, normalizes the route (`/users/123` becomes
//!   `/users/:id`) and classifies the status.
//! - A broadcast sends every enriched record to `aggregate`, which totals requests, bytes and
//!   latency per (status class, route); each worker emits its totals when the pipeline drains
//!   and the `totals` sink merges them.
//! - On the main line, 5xx records are routed to the `alerts` sink and the others are encoded
//!   as JSON lines and handed to the main sink, the "store": `--slow-sink-us` makes it slow,
//!   to show pressure building up from the sink back to the producer, or, with a drop
//!   policy, items dropped and counted.
//!
//! - `--threads N` gives the four stages N worker threads together instead of fixed counts:
//!   each starts with one, and every 200 ms a controller moves workers to the stage that
//!   limits the pipeline (`Source::threads`, `Builder::workers_range`); the results say where
//!   they went.
//!
//! While it runs, a table on stderr shows each stage's throughput, queue fill, pressure,
//! p99 processing time, drops and time shares; at the end stdout gets the final report, the
//! accounting check, the demo's own results and a `summary:` line for scripts.
//!
//! For operators: `--metrics-addr HOST:PORT` serves the stats at `/metrics` for Prometheus
//! (with backflow's `http` feature), `--hold` keeps serving the final stats after the run,
//! `--prometheus FILE` and `--graph FILE.dot` write the final stats and the pipeline's graph
//! (Graphviz) to files.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::fs::File;
use std::io::{self, BufRead, IsTerminal, Write as _};
use std::net::IpAddr;
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use backflow::builder::Builder;
use backflow::core::metrics::{Histogram, Snapshot};
use backflow::{
    DEFAULT_CAPACITY, DeadLetter, Dropped, Event, Input, Overflow, Pipeline, Report, StageStats,
    Stats, stage,
};
use clap::builder::{RangedU64ValueParser, TypedValueParser};
use clap::{Parser, ValueEnum, value_parser};

// ---------------------------------------------------------------------------------------------
// Flags
// ---------------------------------------------------------------------------------------------

/// Access-log analytics on a backflow pipeline: parse → enrich → aggregate, with a live
/// per-stage table on stderr and a final report on stdout.
#[derive(Debug, Parser)]
#[command(after_help = "\
Pipeline: lines → parse → enrich → (every record) aggregate → totals
                                 → (5xx) alerts
                                 → (the rest) encode → sink (the store)

Try:  --slow-sink-us 200                        pressure builds up behind a slow store
      --slow-sink-us 200 --overflow drop-oldest the store's queue drops instead")]
struct Args {
    /// Read access-log lines from this file (`-`: stdin) instead of generating them.
    input: Option<PathBuf>,
    /// Lines to generate, 1 to 1,000,000,000 [default: 3000000; with --slow-sink-us and
    /// --overflow block, about 3 s worth of the slow store].
    #[arg(long, value_name = "N", value_parser = value_parser!(u64).range(1..=MAX_ITEMS))]
    items: Option<u64>,
    /// Seed of the line generator.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Worker threads of the `enrich` stage, 1 to 64.
    #[arg(long, value_name = "N", default_value_t = NonZeroUsize::new(2).unwrap(),
          value_parser = workers())]
    workers: NonZeroUsize,
    /// Worker threads of the `aggregate` stage, 1 to 64 (each emits partial totals; the sink
    /// merges).
    #[arg(long, value_name = "N", default_value_t = NonZeroUsize::MIN, value_parser = workers())]
    aggregate_workers: NonZeroUsize,
    /// Worker threads of the four stages together, 1 to 256, instead of fixed counts: each
    /// stage starts with one and may get up to N, moved every 200 ms to the stage that limits
    /// the pipeline. At least 4 (one per stage).
    #[arg(long, value_name = "N", conflicts_with_all = ["workers", "aggregate_workers"],
          value_parser = value_parser!(u64).range(1..=MAX_THREADS).map(|n| n as usize))]
    threads: Option<usize>,
    /// Capacity of every stage's input queue, 1 to 65,536.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CAPACITY,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_CAPACITY))]
    capacity: usize,
    /// What the full queue in front of the store does: the policy of the `encode` stage,
    /// which hands records to the store. The other stages always block, so the totals stay
    /// exact and the reader waits when the pipeline is full.
    #[arg(long, value_enum, default_value_t = Policy::Block)]
    overflow: Policy,
    /// The store (the main sink) sleeps this long per record, like a slow database: 0 (not
    /// slow) to 1,000,000 (a second).
    #[arg(long, value_name = "µs", value_parser = value_parser!(u64).range(..=MAX_SLOW_SINK_US))]
    slow_sink_us: Option<u64>,
    /// Longest line taken from the input file or stdin, 1 to 16,777,216 bytes, not counting
    /// its newline. A longer line is dead-lettered as `line too long` with its first bytes;
    /// the rest of it is skipped as it is read, never held in memory.
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_LINE_BYTES))]
    max_line_bytes: usize,
    /// Bound every stage's queue by the bytes its items hold as well, 1 to 1 TiB: a line
    /// weighs its length, a record its size and its strings [default: by item count only].
    #[arg(long, value_name = "BYTES",
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_QUEUE_BYTES))]
    max_queue_bytes: Option<usize>,
    /// At the end, write the final stats in the Prometheus text format to FILE.
    #[arg(long, value_name = "FILE")]
    prometheus: Option<PathBuf>,
    /// At the end, write the pipeline's graph to FILE in Graphviz's DOT language (each node
    /// with its throughput, queue fill and pressure, the bottleneck outlined); render it with
    /// `dot -Tsvg FILE -o graph.svg`.
    #[arg(long, value_name = "FILE")]
    graph: Option<PathBuf>,
    /// Serve the stats at http://HOST:PORT/metrics for Prometheus to scrape, from the start
    /// (port 0: any free port; the address is printed on stderr). Needs backflow's `http`
    /// feature: `cargo run --features http --example logs`.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<String>,
    /// After the run, keep serving /metrics (the final stats) until stdin is closed (Ctrl-D)
    /// or the process is stopped (Ctrl-C); with `-` as the input, until it is stopped.
    #[arg(long, requires = "metrics_addr")]
    hold: bool,
    /// How often the live table is redrawn, 10 to 60,000 ms (a plain status line each second
    /// when stderr is not a terminal, or less often if this is longer).
    #[arg(long, value_name = "MS", default_value_t = 250,
          value_parser = value_parser!(u64).range(REFRESH_MS))]
    refresh_ms: u64,
}

// The limits of the numeric flags: larger values are refused with the flag's name and range,
// before anything runs. The README's "See it work" lists them too.

/// `--items`: 10⁹ generated lines take several minutes even in release.
const MAX_ITEMS: u64 = 1_000_000_000;
/// `--workers`, `--aggregate-workers`: far more threads than the demo's work can use.
const MAX_WORKERS: u64 = 64;
/// `--threads`: four stages of up to 64 workers.
const MAX_THREADS: u64 = 4 * MAX_WORKERS;
/// `--capacity`: each of the four queues holds up to this many lines or records.
const MAX_CAPACITY: u64 = 65_536;
/// `--slow-sink-us`: a second per record.
const MAX_SLOW_SINK_US: u64 = 1_000_000;
/// `--max-line-bytes`: a line of the input is held whole until it is parsed, so the first
/// queue holds at most `--capacity` × this many bytes of lines.
const MAX_LINE_BYTES: u64 = 16 << 20;
/// `--max-queue-bytes`: far more than a machine gives a queue.
const MAX_QUEUE_BYTES: u64 = 1 << 40;
/// `--refresh-ms`.
const REFRESH_MS: std::ops::RangeInclusive<u64> = 10..=60_000;

/// The parser of `--workers` and `--aggregate-workers`: 1 to [`MAX_WORKERS`].
fn workers() -> impl TypedValueParser<Value = NonZeroUsize> {
    value_parser!(u64)
        .range(1..=MAX_WORKERS)
        .try_map(|n| NonZeroU64::try_from(n).and_then(NonZeroUsize::try_from))
}

/// `--overflow`: [`Overflow`] without `Fail`, which only a first stage may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Policy {
    /// Wait for room: pressure travels upstream to the reader.
    Block,
    /// Evict the oldest queued item to make room (counted as dropped).
    DropOldest,
    /// Refuse the new item (counted as dropped).
    DropNewest,
}

impl From<Policy> for Overflow {
    fn from(policy: Policy) -> Self {
        match policy {
            Policy::Block => Overflow::Block,
            Policy::DropOldest => Overflow::DropOldest,
            Policy::DropNewest => Overflow::DropNewest,
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.to_possible_value().expect("no variant is skipped").get_name())
    }
}

// ---------------------------------------------------------------------------------------------
// The pipeline
// ---------------------------------------------------------------------------------------------

/// Why the demo stopped early; each names what it was about.
#[derive(Debug, thiserror::Error)]
enum DemoError {
    #[error("the pipeline's configuration: {0}")]
    Config(#[from] backflow::ConfigError),
    #[error("the pipeline: {0}")]
    Pipeline(#[from] backflow::PipelineError),
    #[error("the pipeline stopped taking lines after {lines} lines")]
    Stopped { lines: u64 },
    #[error("cannot open {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot read {input} after {lines} lines: {source}")]
    Read { input: String, lines: u64, source: io::Error },
    #[error("cannot write --prometheus {}: {source}", path.display())]
    Prometheus { path: PathBuf, source: io::Error },
    #[error("cannot write --graph {}: {source}", path.display())]
    Graph { path: PathBuf, source: io::Error },
    #[cfg(feature = "http")]
    #[error("--metrics-addr: {0}")]
    Metrics(#[from] backflow::ServeError),
    #[cfg(not(feature = "http"))]
    #[error(
        "--metrics-addr needs backflow's `http` feature: \
         cargo run --release --features http --example logs -- --metrics-addr {0}"
    )]
    NoHttp(String),
    #[error("cannot write the results to stdout: {0}")]
    Stdout(io::Error),
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), DemoError> {
    let items = args.items.unwrap_or(match args.slow_sink_us {
        // A slow store holds the whole pipeline back: about 3 s of it (sleeping N µs takes
        // about N + 60 µs). With a drop policy the store loses records instead, and the rest
        // of the pipeline goes at full speed.
        Some(us) if us > 0 && args.overflow == Policy::Block => 3_000_000 / (us + 60),
        _ => 3_000_000,
    });
    // What can fail before the first line moves fails here, before any thread starts.
    let source = Source::open(args, items)?;
    let prometheus = match &args.prometheus {
        Some(path) => match File::create(path) {
            Ok(file) => Some((path, file)),
            Err(source) => return Err(DemoError::Prometheus { path: path.clone(), source }),
        },
        None => None,
    };
    let graph = match &args.graph {
        Some(path) => match File::create(path) {
            Ok(file) => Some((path, file)),
            Err(source) => return Err(DemoError::Graph { path: path.clone(), source }),
        },
        None => None,
    };
    let endpoint = MetricsEndpoint::open(args)?;
    let tally = Arc::new(Tally::default());
    let pipeline = build(args, &tally)?;
    if let Some(endpoint) = &endpoint {
        endpoint.serve(&pipeline)?;
    }
    let mut out = io::stdout().lock();
    print_header(&mut out, args, items).map_err(DemoError::Stdout)?;

    let started = Instant::now();
    let mut live = Live::new(Duration::from_millis(args.refresh_ms));
    let lines = std::thread::scope(|scope| {
        let input = pipeline.input();
        let producer = scope.spawn(move || produce(source, args.max_line_bytes, &input));
        // Redraw until every line is in and has gone all the way through; then drain() only
        // has the aggregates' totals to flush.
        loop {
            std::thread::sleep(Duration::from_millis(10));
            let stats = pipeline.stats();
            let done = producer.is_finished() && in_flight(&stats) == 0;
            live.show(&stats, done);
            if done {
                break;
            }
        }
        producer.join().expect("the producer does not panic")
    })?;
    let report = pipeline.drain()?;
    let elapsed = started.elapsed();

    print_results(&mut out, &report, &tally, lines, elapsed).map_err(DemoError::Stdout)?;
    if let Some((path, mut file)) = prometheus {
        let text = report.stats().to_prometheus("logs");
        file.write_all(text.as_bytes())
            .map_err(|source| DemoError::Prometheus { path: path.clone(), source })?;
        writeln!(out, "prometheus: final stats written to {}", path.display())
            .map_err(DemoError::Stdout)?;
    }
    if let Some((path, mut file)) = graph {
        file.write_all(report.stats().to_dot().as_bytes())
            .map_err(|source| DemoError::Graph { path: path.clone(), source })?;
        writeln!(out, "graph: written to {} (render: dot -Tsvg {0} -o graph.svg)", path.display())
            .map_err(DemoError::Stdout)?;
    }
    out.flush().map_err(DemoError::Stdout)?;
    if let Some(endpoint) = endpoint.filter(|_| args.hold) {
        let stdin_is_input = args.input.as_deref() == Some(Path::new("-"));
        hold(&endpoint, stdin_is_input);
    }
    Ok(())
}

/// `--hold`: serves the final stats until stdin ends (or, when stdin was the input, until the
/// process is stopped).
fn hold(endpoint: &MetricsEndpoint, stdin_is_input: bool) {
    if stdin_is_input {
        eprintln!("holding: {} serves the final stats until stopped (Ctrl-C)", endpoint.url());
        loop {
            std::thread::park();
        }
    }
    eprintln!(
        "holding: {} serves the final stats until stdin is closed (Ctrl-D) or Ctrl-C",
        endpoint.url()
    );
    // Whatever comes on stdin is read and let go; its end (or a read error) ends the hold.
    let _ = io::copy(&mut io::stdin().lock(), &mut io::sink());
}

/// `--metrics-addr`: the `/metrics` endpoint, listening before the pipeline is built, so that
/// an address it cannot listen on ends the demo before anything runs.
#[cfg(feature = "http")]
struct MetricsEndpoint(backflow::MetricsServer);

#[cfg(feature = "http")]
impl MetricsEndpoint {
    fn open(args: &Args) -> Result<Option<Self>, DemoError> {
        let Some(addr) = &args.metrics_addr else { return Ok(None) };
        let server = backflow::MetricsServer::bind(addr)?;
        eprintln!("metrics: serving {}", server.url());
        Ok(Some(Self(server)))
    }

    fn serve(&self, pipeline: &Pipeline<Line>) -> Result<(), DemoError> {
        Ok(self.0.add("logs", pipeline.watch())?)
    }

    fn url(&self) -> String {
        self.0.url()
    }
}

/// Without the `http` feature there is no endpoint: `--metrics-addr` is an error saying how
/// to build the demo with it.
#[cfg(not(feature = "http"))]
enum MetricsEndpoint {}

#[cfg(not(feature = "http"))]
impl MetricsEndpoint {
    fn open(args: &Args) -> Result<Option<Self>, DemoError> {
        match &args.metrics_addr {
            Some(addr) => Err(DemoError::NoHttp(addr.clone())),
            None => Ok(None),
        }
    }

    fn serve(&self, _: &Pipeline<Line>) -> Result<(), DemoError> {
        match *self {}
    }

    fn url(&self) -> String {
        match *self {}
    }
}

/// Items anywhere between the input and the sinks.
fn in_flight(stats: &Stats) -> u64 {
    let stages = stats.stages().iter().map(|s| s.accounting.in_flight).sum::<u64>();
    stages + stats.sinks().iter().map(|s| s.in_flight).sum::<u64>()
}

/// The pipeline: `parse` (malformed lines dead-lettered) → `enrich` → a copy of every record to
/// `aggregate` → `totals`; then 5xx records to `alerts`, the others to `encode` → the store.
fn build(args: &Args, tally: &Arc<Tally>) -> Result<Pipeline<Line>, backflow::ConfigError> {
    let capacity = args.capacity;
    let [dlq, health, totals, alerts, drops, store, scaled] = [(); 7].map(|()| Arc::clone(tally));
    let slow = args.slow_sink_us.filter(|&us| us > 0).map(Duration::from_micros);
    // A stage's workers: `fixed` of them, or 1 to the budget with `--threads`.
    let workers = |fixed: NonZeroUsize| match args.threads {
        Some(budget) => 1..=budget,
        None => fixed.get()..=fixed.get(),
    };
    let started = Instant::now();
    let mut source = Pipeline::<Line>::builder().on_event(move |event| {
        if let Event::Scaled { .. } = event {
            lock(&scaled.scaled).push((started.elapsed(), event.to_string()));
        }
    });
    if let Some(budget) = args.threads {
        source = source.threads(budget);
    }
    source
        .stage("parse", || stage::try_map(parse))
        .workers_range(workers(NonZeroUsize::MIN))
        .capacity(capacity)
        .max_queue_bytes(args.max_queue_bytes)
        .dead_letter(move |letter: DeadLetter<'_, Line>| {
            if dlq.dead_lettered.fetch_add(1, Ordering::Relaxed) < EXAMPLES as u64 {
                let line = match letter.item {
                    Line::Text(text) => text,
                    Line::TooLong { head, .. } => head + "…",
                };
                lock(&dlq.dead_examples).push((line, letter.error));
            }
        })
        .stage("enrich", move || {
            let (health, mut routes) = (Arc::clone(&health), Routes::default());
            stage::filter_map(move |access: Access| {
                if access.is_health_check() {
                    health.health_checks.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                Some(routes.enrich(access))
            })
        })
        .workers_range(workers(args.workers))
        .capacity(capacity)
        .max_queue_bytes(args.max_queue_bytes)
        .broadcast("totals", |every| {
            every
                .stage("aggregate", || {
                    stage::aggregate(
                        |hit: &Hit| (hit.class, Arc::clone(&hit.route)),
                        Totals::default,
                        |totals: &mut Totals, hit: Hit| totals.add(&hit),
                    )
                })
                .workers_range(workers(args.aggregate_workers))
                .capacity(capacity)
                .max_queue_bytes(args.max_queue_bytes)
                .sink(move |(key, partial): (Key, Totals)| {
                    lock(&totals.totals).entry(key).or_default().merge(&partial);
                })
        })
        .branch(
            "alerts",
            |hit: &Hit| hit.class == StatusClass::ServerError,
            |errors| {
                errors.sink(move |hit: Hit| {
                    if alerts.alerts.fetch_add(1, Ordering::Relaxed) < EXAMPLES as u64 {
                        let time = format_time(hit.time);
                        let alert =
                            format!("{time}  {} {}  from {}", hit.status, hit.route, hit.client);
                        lock(&alerts.alert_examples).push(alert);
                    }
                })
            },
        )
        .stage("encode", || |hit: Hit| encode(&hit))
        .workers_range(workers(NonZeroUsize::MIN))
        .capacity(capacity)
        .max_queue_bytes(args.max_queue_bytes)
        .overflow(Overflow::from(args.overflow))
        .on_drop(move |_: Dropped<'_, Hit>| {
            drops.dropped.fetch_add(1, Ordering::Relaxed);
        })
        .sink(move |json: String| {
            if let Some(delay) = slow {
                std::thread::sleep(delay);
            }
            store.stored.fetch_add(1, Ordering::Relaxed);
            store.stored_bytes.fetch_add(json.len() as u64 + 1, Ordering::Relaxed);
        })
        .build()
}

/// `--max-queue-bytes` on a stage: its queue bounded by the bytes its items hold as well as
/// by their number.
trait MaxQueueBytes: Sized {
    fn max_queue_bytes(self, max: Option<usize>) -> Self;
}

impl<In, Last, Out, P> MaxQueueBytes for Builder<In, Last, Out, P>
where
    In: Send + 'static,
    Last: Weight + Send + 'static,
    Out: Send + 'static,
{
    fn max_queue_bytes(self, max: Option<usize>) -> Self {
        match max {
            Some(max) => self.capacity_bytes(max, Last::bytes),
            None => self,
        }
    }
}

/// What an item holds in memory, as `--max-queue-bytes` weighs it.
trait Weight {
    fn bytes(&self) -> usize;
}

impl Weight for Line {
    fn bytes(&self) -> usize {
        match self {
            Self::Text(text) => text.len(),
            Self::TooLong { head, .. } => head.len(),
        }
    }
}

impl Weight for Access {
    fn bytes(&self) -> usize {
        size_of::<Self>() + self.method.len() + self.path.len() + self.agent.len()
    }
}

impl Weight for Hit {
    /// The route is shared by every record of it.
    fn bytes(&self) -> usize {
        size_of::<Self>()
    }
}

/// Where the lines come from: the generator, stdin, or a file opened before the pipeline
/// starts.
enum Source {
    Generated { seed: u64, items: u64 },
    Stdin,
    File { path: PathBuf, file: File },
}

impl Source {
    fn open(args: &Args, items: u64) -> Result<Self, DemoError> {
        Ok(match &args.input {
            None => Self::Generated { seed: args.seed, items },
            Some(path) if path == Path::new("-") => Self::Stdin,
            Some(path) => match File::open(path) {
                Ok(file) => Self::File { path: path.clone(), file },
                Err(source) => return Err(DemoError::Open { path: path.clone(), source }),
            },
        })
    }
}

/// Pushes every line of `source`; returns how many.
fn produce(source: Source, max_line_bytes: usize, input: &Input<Line>) -> Result<u64, DemoError> {
    match source {
        Source::Generated { seed, items } => {
            let lines = LogGenerator::new(seed, items).map(|line| Ok(Line::Text(line)));
            push_lines(input, lines, "the generator")
        }
        Source::Stdin => push_lines(input, Lines::new(io::stdin().lock(), max_line_bytes), "stdin"),
        Source::File { path, file } => {
            let lines = Lines::new(io::BufReader::new(file), max_line_bytes);
            push_lines(input, lines, path.display())
        }
    }
}

/// Pushes lines until the end or the first read error, which is the error of the whole run:
/// the results of part of the input would pass for the results of all of it.
fn push_lines(
    input: &Input<Line>,
    lines: impl Iterator<Item = io::Result<Line>>,
    name: impl fmt::Display,
) -> Result<u64, DemoError> {
    let (mut count, mut error) = (0, None);
    let pushed = input.push_iter(lines.map_while(|line| match line {
        Ok(line) => {
            count += 1;
            Some(line)
        }
        Err(read) => {
            error = Some(read);
            None
        }
    }));
    if let Some(source) = error {
        return Err(DemoError::Read { input: name.to_string(), lines: count, source });
    }
    match pushed {
        Ok(()) => Ok(count),
        Err(_) => Err(DemoError::Stopped { lines: count }),
    }
}

/// A line as the reader hands it to `parse`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    /// The line, newline included, invalid UTF-8 replaced.
    Text(String),
    /// A line longer than `--max-line-bytes`: its first bytes (at most [`LINE_HEAD`]) and its
    /// length, newline not counted.
    TooLong { head: String, bytes: u64 },
}

/// How much of a line that is too long its dead letter quotes.
const LINE_HEAD: usize = 256;

/// How much of the rest of a line that is too long is read at a time to be skipped.
const SKIP_PIECE: usize = 8 * 1024;

/// The lines of a reader, read into a buffer of at most `max` + 1 bytes: a longer line
/// becomes a [`Line::TooLong`]. A read error is the last item.
struct Lines<R> {
    reader: R,
    max: usize,
    buf: Vec<u8>,
}

impl<R: BufRead> Lines<R> {
    fn new(reader: R, max: usize) -> Self {
        Self { reader, max, buf: Vec::new() }
    }

    /// Reads up to `limit` bytes of the current line into `buf` (cleared first), newline
    /// included; returns how many, 0 at the end.
    fn read(&mut self, limit: usize) -> io::Result<usize> {
        self.buf.clear();
        io::Read::take(&mut self.reader, limit as u64).read_until(b'\n', &mut self.buf)
    }
}

impl<R: BufRead> Iterator for Lines<R> {
    type Item = io::Result<Line>;

    fn next(&mut self) -> Option<Self::Item> {
        // One byte more than a line may have tells a line of `max` bytes without its newline
        // (the last line) from a longer one.
        match self.read(self.max.saturating_add(1)) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(error) => return Some(Err(error)),
        }
        if self.buf.len() <= self.max || self.buf.ends_with(b"\n") {
            return Some(Ok(Line::Text(String::from_utf8_lossy(&self.buf).into_owned())));
        }
        let head = String::from_utf8_lossy(&self.buf[..self.max.min(LINE_HEAD)]).into_owned();
        // Skip to the end of the line a piece at a time.
        let mut bytes = self.buf.len() as u64;
        loop {
            match self.read(SKIP_PIECE) {
                Ok(0) => break,
                Ok(n) => bytes += n as u64,
                Err(error) => return Some(Err(error)),
            }
            if self.buf.ends_with(b"\n") {
                bytes -= 1;
                break;
            }
        }
        Some(Ok(Line::TooLong { head, bytes }))
    }
}

/// What the stages, hooks and sinks count on their own, besides the pipeline's stats: the
/// `summary:` line prints both, and `tests/demo.rs` checks one against the other.
#[derive(Debug, Default)]
struct Tally {
    dead_lettered: AtomicU64,
    /// The first few dead letters: line, error.
    dead_examples: Mutex<Vec<(String, String)>>,
    health_checks: AtomicU64,
    alerts: AtomicU64,
    /// The first few alerts.
    alert_examples: Mutex<Vec<String>>,
    stored: AtomicU64,
    stored_bytes: AtomicU64,
    /// Items dropped by overflow policies, as the drop hooks saw them.
    dropped: AtomicU64,
    /// With `--threads`: each change of a stage's workers, with the time since the start.
    scaled: Mutex<Vec<(Duration, String)>>,
    totals: Mutex<HashMap<Key, Merged>>,
}

/// How many dead letters and alerts the results quote.
const EXAMPLES: usize = 3;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// Generating lines
// ---------------------------------------------------------------------------------------------

/// SplitMix64: a tiny, fast, deterministic generator, good enough for fake traffic.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// True with probability `per_mille / 1000`.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// One kind of request the fake site serves.
struct Endpoint {
    method: &'static str,
    /// `{id}`, `{uuid}`, `{hash}`, `{page}` and `{word}` are filled in per request.
    path: &'static str,
    /// Relative frequency.
    weight: u64,
    /// Status of a successful request.
    ok: u16,
    /// Typical response time, ms.
    millis: f64,
    /// Typical response size.
    bytes: u64,
    /// Server errors per thousand requests, outside the incident.
    errors_per_mille: u64,
}

const fn endpoint(
    method: &'static str,
    path: &'static str,
    weight: u64,
    ok: u16,
    millis: f64,
    bytes: u64,
    errors_per_mille: u64,
) -> Endpoint {
    Endpoint { method, path, weight, ok, millis, bytes, errors_per_mille }
}

#[rustfmt::skip]
const ENDPOINTS: &[Endpoint] = &[
    endpoint("GET",    "/api/v1/products/{id}",              22, 200,  18.0,   4_800,  3),
    endpoint("GET",    "/api/v1/products?page={page}",       10, 200,  35.0,  22_000,  3),
    endpoint("GET",    "/api/v1/search?q={word}",             8, 200,  80.0,  12_000, 20),
    endpoint("GET",    "/api/v1/users/{id}",                  9, 200,  12.0,   1_200,  2),
    endpoint("GET",    "/api/v1/users/{id}/orders",           6, 200,  45.0,   6_400,  4),
    endpoint("GET",    "/api/v1/orders/{id}",                 5, 200,  20.0,   2_100,  4),
    endpoint("POST",   "/api/v1/orders",                      3, 201, 120.0,     350, 12),
    endpoint("GET",    "/api/v1/cart/{uuid}",                 6, 200,  10.0,     900,  2),
    endpoint("PUT",    "/api/v1/cart/{uuid}",                 5, 200,  25.0,     180,  3),
    endpoint("POST",   "/api/v1/login",                       3, 200, 150.0,     420,  2),
    endpoint("DELETE", "/api/v1/sessions/{id}",               1, 204,   5.0,       0,  1),
    endpoint("GET",    "/static/js/app.{hash}.js",           10, 200,   2.0, 182_000,  0),
    endpoint("GET",    "/static/img/products/{id}.webp",      7, 200,   3.0,  48_000,  0),
    endpoint("GET",    "/favicon.ico",                        1, 200,   1.0,   5_430,  0),
    endpoint("GET",    "/healthz",                            4, 200,   0.3,       2,  0),
    endpoint("GET",    "/wp-login.php",                       1, 404,   1.0,     153,  0),
];

const BROWSERS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) \
     Chrome/129.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) \
     Version/17.6 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_6 like Mac OS X) AppleWebKit/605.1.15 \
     (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (X11; Linux x86_64; rv:131.0) Gecko/20100101 Firefox/131.0",
    "shop-android/5.12.0 okhttp/4.12.0",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "curl/8.5.0",
];

const WORDS: &[&str] = &["shoes", "red+dress", "usb-c", "coffee", "lego", "tent", "headphones"];

/// 2024-10-10 13:55:36 UTC, when the fake log starts.
const LOG_START: i64 = 1_728_568_536;

/// Requests per second of the fake site: the log's clock advances one second per this many
/// lines.
const REQUESTS_PER_SECOND: u64 = 2_500;

/// Writes `count` access-log lines from a fixed seed: mostly successful requests, some 3xx
/// and 4xx, a few 5xx (more during an incident on the order service, from 40 % to 45 % of the
/// run), and 0.3 % malformed lines.
struct LogGenerator {
    rng: Rng,
    index: u64,
    count: u64,
    total_weight: u64,
    /// The time field of the current second, reformatted once per second.
    time: (i64, String),
}

impl LogGenerator {
    fn new(seed: u64, count: u64) -> Self {
        let total_weight = ENDPOINTS.iter().map(|e| e.weight).sum();
        Self { rng: Rng(seed), index: 0, count, total_weight, time: (i64::MIN, String::new()) }
    }

    fn endpoint(&mut self) -> &'static Endpoint {
        let mut ticket = self.rng.below(self.total_weight);
        for endpoint in ENDPOINTS {
            match ticket.checked_sub(endpoint.weight) {
                Some(rest) => ticket = rest,
                None => return endpoint,
            }
        }
        unreachable!("tickets are below the total weight")
    }

    fn line(&mut self) -> String {
        let endpoint = self.endpoint();
        let rng = &mut self.rng;
        let mut line = String::with_capacity(256);

        // Client address: a few busy clients, then anybody.
        let ip: [u64; 4] = if rng.chance(150) {
            [203, 0, 113, rng.below(16)]
        } else {
            [
                *rng.pick(&[31, 46, 77, 82, 91, 109, 151, 176, 185, 212]),
                rng.below(256),
                rng.below(256),
                1 + rng.below(254),
            ]
        };
        let second = LOG_START + (self.index / REQUESTS_PER_SECOND) as i64;
        if self.time.0 != second {
            self.time = (second, format_time(second));
        }
        let _ = write!(
            line,
            "{}.{}.{}.{} - - [{}] \"{} ",
            ip[0], ip[1], ip[2], ip[3], self.time.1, endpoint.method
        );
        fill_path(&mut line, endpoint.path, rng);

        // Status: the endpoint's, or a client error, or a server error.
        let progress = self.index as f64 / self.count.max(1) as f64;
        let incident = (0.40..0.45).contains(&progress) && endpoint.path.contains("orders");
        let errors = if incident { 200 } else { endpoint.errors_per_mille };
        let status = if rng.chance(errors) {
            *rng.pick(&[500, 502, 503, 503, 504])
        } else if endpoint.path.contains("{id}") && rng.chance(25) {
            404
        } else if endpoint.path == "/api/v1/login" && rng.chance(80) {
            401
        } else if rng.chance(5) {
            *rng.pick(&[400, 403, 429])
        } else if endpoint.path.starts_with("/static") && rng.chance(400) {
            304
        } else {
            endpoint.ok
        };
        let bytes = match status {
            204 | 304 => 0,
            200..=299 => (endpoint.bytes as f64 * (0.6 + 0.8 * rng.unit())) as u64,
            _ => 150 + rng.below(400),
        };
        // Response time: log-normal-ish around the endpoint's, with a slow tail; slower still
        // when failing.
        let noise = (rng.unit() + rng.unit() + rng.unit() + rng.unit() - 2.0) * 0.9;
        let mut millis = endpoint.millis * noise.exp();
        if rng.chance(10) {
            millis *= 8.0;
        }
        if status >= 500 {
            millis = millis * 3.0 + 250.0;
        }
        let agent =
            if endpoint.path == "/healthz" { "kube-probe/1.30" } else { rng.pick(BROWSERS) };
        let referer = if rng.chance(300) { "https://shop.example.com/" } else { "-" };
        let _ = write!(
            line,
            " HTTP/1.1\" {status} {bytes} \"{referer}\" \"{agent}\" {:.3}",
            millis / 1e3
        );

        if rng.chance(3) {
            corrupt(&mut line, rng);
        }
        line
    }
}

impl Iterator for LogGenerator {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        if self.index == self.count {
            return None;
        }
        let line = self.line();
        self.index += 1;
        Some(line)
    }
}

/// Appends `template` with its placeholders filled in.
fn fill_path(line: &mut String, template: &str, rng: &mut Rng) {
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        line.push_str(&rest[..open]);
        let close = open + rest[open..].find('}').expect("placeholders are closed");
        let _ = match &rest[open + 1..close] {
            "id" => {
                // Mostly recent ids, some very old ones.
                let range = if rng.chance(100) { 9_999_999 } else { 50_000 };
                write!(line, "{}", 1 + rng.below(range))
            }
            "uuid" => {
                let (a, b) = (rng.next_u64(), rng.next_u64());
                write!(
                    line,
                    "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
                    a >> 32,
                    (a >> 16) & 0xffff,
                    a & 0xfff,
                    b >> 52,
                    b & 0xffff_ffff_ffff
                )
            }
            "hash" => write!(line, "{:08x}", rng.pick(&[0x3f9a_2c1d_u32, 0x77e0_4b1a])),
            "page" => write!(line, "{}", 1 + rng.below(40)),
            "word" => write!(line, "{}", rng.pick(WORDS)),
            other => unreachable!("unknown placeholder {other}"),
        };
        rest = &rest[close + 1..];
    }
    line.push_str(rest);
}

/// Damages a line the ways real logs are damaged: cut short by a rotation, a TLS handshake
/// sent to the plain-HTTP port, a blank line, a garbled status.
fn corrupt(line: &mut String, rng: &mut Rng) {
    match rng.below(4) {
        0 => line.truncate(line.len() / 4 + rng.below(line.len() as u64 / 2) as usize),
        1 => {
            let ip_end = line.find(' ').unwrap_or(0);
            line.replace_range(ip_end.., " - - [10/Oct/2024:13:55:36 +0000] \"\\x16\\x03\\x01\\x02\\x00\\x01\" 400 157 \"-\" \"-\"");
        }
        2 => line.clear(),
        _ => {
            if let Some(at) = line.find("HTTP/1.1\" ") {
                line.replace_range(at + 10..at + 13, "2O0");
            }
        }
    }
}

const MONTHS: [&str; 12] =
    ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// `10/Oct/2024:13:55:36 +0000` for a Unix time.
fn format_time(unix: i64) -> String {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    format!("{day:02}/{}/{year}:{h:02}:{m:02}:{s:02} +0000", MONTHS[month as usize - 1])
}

/// Year, month (1-based) and day of a day count since 1970-01-01 (Howard Hinnant's
/// algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Days since 1970-01-01 of a date (the inverse of [`civil_from_days`]).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/// One parsed access-log line.
#[derive(Debug)]
struct Access {
    client: IpAddr,
    /// Unix time of the request.
    time: i64,
    method: String,
    /// As requested, with any query string.
    path: String,
    status: u16,
    bytes: u64,
    /// Response time, if the line has it (the combined format itself does not).
    latency_us: Option<u64>,
    agent: String,
}

/// Why a line is not an access-log line: the field that is missing or does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ParseError {
    /// Longer than `--max-line-bytes`; the length, newline not counted.
    TooLong(u64),
    Empty,
    Missing(&'static str),
    Invalid(&'static str),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLong(bytes) => write!(f, "line too long ({bytes} bytes)"),
            Self::Empty => f.write_str("empty line"),
            Self::Missing(field) => write!(f, "no {field}"),
            Self::Invalid(field) => write!(f, "invalid {field}"),
        }
    }
}

/// Parses a line as read; one that was too long to read whole is an error as it is.
fn parse(line: Line) -> Result<Access, ParseError> {
    match line {
        Line::Text(text) => parse_line(text),
        Line::TooLong { bytes, .. } => Err(ParseError::TooLong(bytes)),
    }
}

/// Parses `ip ident user [time] "method path protocol" status bytes "referer" "agent"
/// [seconds]`.
fn parse_line(line: String) -> Result<Access, ParseError> {
    use ParseError::{Empty, Invalid, Missing};
    let line = line.trim_end();
    if line.is_empty() {
        return Err(Empty);
    }
    let (client, rest) = line.split_once(' ').ok_or(Missing("client address"))?;
    let client = client.parse().map_err(|_| Invalid("client address"))?;
    let rest = rest.split_once('[').ok_or(Missing("time"))?.1;
    let (time, rest) = rest.split_once(']').ok_or(Missing("time"))?;
    let time = parse_time(time).ok_or(Invalid("time"))?;
    let (request, rest) = quoted(rest).ok_or(Missing("request"))?;
    let mut parts = request.split(' ');
    let (Some(method), Some(path), Some(_protocol), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Invalid("request"));
    };
    if !path.starts_with('/') || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Invalid("request"));
    }
    let mut fields = rest.trim_start().splitn(3, ' ');
    let status = fields.next().filter(|s| !s.is_empty()).ok_or(Missing("status"))?;
    let status = status.parse().ok().filter(|s| (100..600).contains(s)).ok_or(Invalid("status"))?;
    let bytes = match fields.next().ok_or(Missing("size"))? {
        "-" => 0,
        bytes => bytes.parse().map_err(|_| Invalid("size"))?,
    };
    let rest = fields.next().ok_or(Missing("referer"))?;
    let (_referer, rest) = quoted(rest).ok_or(Missing("referer"))?;
    let (agent, rest) = quoted(rest).ok_or(Missing("user agent"))?;
    let latency_us = match rest.trim() {
        "" => None,
        seconds => {
            let seconds: f64 = seconds.parse().map_err(|_| Invalid("response time"))?;
            Some((seconds * 1e6).round() as u64)
        }
    };
    let (method, path, agent) = (method.to_string(), path.to_string(), agent.to_string());
    Ok(Access { client, time, method, path, status, bytes, latency_us, agent })
}

/// The text between the first pair of double quotes (no escapes), and what follows it.
fn quoted(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start().strip_prefix('"')?;
    let end = s.find('"')?;
    Some((&s[..end], &s[end + 1..]))
}

/// `10/Oct/2024:13:55:36 +0000` as a Unix time.
fn parse_time(s: &str) -> Option<i64> {
    let (date, zone) = s.split_once(' ')?;
    let mut parts = date.splitn(4, [':', '/']);
    let day: i64 = parts.next()?.parse().ok()?;
    let month = parts.next()?;
    let month = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    let year: i64 = parts.next()?.parse().ok()?;
    let mut clock = parts.next()?.split(':').map(|n| n.parse::<i64>().ok());
    let (h, m, sec) = (clock.next()??, clock.next()??, clock.next()??);
    let sign = match zone.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let zone: i64 = zone.get(1..5)?.parse().ok()?;
    if !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let offset = sign * (zone / 100 * 3600 + zone % 100 * 60);
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + sec - offset)
}

// ---------------------------------------------------------------------------------------------
// Enriching
// ---------------------------------------------------------------------------------------------

/// A status code's class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum StatusClass {
    Informational,
    Success,
    Redirect,
    ClientError,
    ServerError,
}

impl StatusClass {
    fn of(status: u16) -> Self {
        match status {
            ..200 => Self::Informational,
            200..300 => Self::Success,
            300..400 => Self::Redirect,
            400..500 => Self::ClientError,
            _ => Self::ServerError,
        }
    }
}

impl fmt::Display for StatusClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Informational => "1xx",
            Self::Success => "2xx",
            Self::Redirect => "3xx",
            Self::ClientError => "4xx",
            Self::ServerError => "5xx",
        })
    }
}

/// A request, enriched: its route (`GET /users/:id`) and status class.
#[derive(Debug, Clone)]
struct Hit {
    route: Arc<str>,
    class: StatusClass,
    status: u16,
    bytes: u64,
    latency_us: Option<u64>,
    time: i64,
    client: IpAddr,
}

impl Access {
    /// A load balancer's or orchestrator's probe, not a user's request.
    fn is_health_check(&self) -> bool {
        self.path == "/healthz" || self.agent.starts_with("kube-probe/")
    }
}

/// Routes by normalized text, one `Arc` each, so records share them: each enrich worker has
/// its own.
#[derive(Debug, Default)]
struct Routes {
    known: HashMap<String, Arc<str>>,
    scratch: String,
}

impl Routes {
    /// Distinct routes kept; past this (a file of random paths) each record gets its own.
    const LIMIT: usize = 10_000;

    fn enrich(&mut self, access: Access) -> Hit {
        self.scratch.clear();
        self.scratch.push_str(&access.method);
        self.scratch.push(' ');
        normalize_path(&access.path, &mut self.scratch);
        let route = match self.known.get(self.scratch.as_str()) {
            Some(route) => Arc::clone(route),
            None => {
                let route: Arc<str> = Arc::from(self.scratch.as_str());
                if self.known.len() < Self::LIMIT {
                    self.known.insert(self.scratch.clone(), Arc::clone(&route));
                }
                route
            }
        };
        Hit {
            route,
            class: StatusClass::of(access.status),
            status: access.status,
            bytes: access.bytes,
            latency_us: access.latency_us,
            time: access.time,
            client: access.client,
        }
    }
}

/// Appends `path` without its query string, with ids, UUIDs and content hashes replaced by
/// `:id`, `:uuid` and `:hash`: `/users/123/orders?page=2` → `/users/:id/orders`.
fn normalize_path(path: &str, out: &mut String) {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if is_uuid(segment) {
            out.push_str(":uuid");
            continue;
        }
        // `app.3f9a2c1d.js` → `app.:hash.js`, `123.webp` → `:id.webp`.
        for (j, part) in segment.split('.').enumerate() {
            if j > 0 {
                out.push('.');
            }
            let digits = part.bytes().filter(u8::is_ascii_digit).count();
            if !part.is_empty() && digits == part.len() {
                out.push_str(":id");
            } else if part.len() >= 8 && digits > 0 && part.bytes().all(|b| b.is_ascii_hexdigit()) {
                out.push_str(":hash");
            } else {
                out.push_str(part);
            }
        }
    }
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| {
            if [8, 13, 18, 23].contains(&i) { b == b'-' } else { b.is_ascii_hexdigit() }
        })
}

/// A record as the store takes it: one JSON line.
fn encode(hit: &Hit) -> String {
    let mut json = String::with_capacity(128);
    let _ = write!(
        json,
        r#"{{"time":{},"client":"{}","route":"{}","status":{},"bytes":{}"#,
        hit.time,
        hit.client,
        hit.route.escape_default(),
        hit.status,
        hit.bytes
    );
    if let Some(us) = hit.latency_us {
        let _ = write!(json, r#","latency_us":{us}"#);
    }
    json.push('}');
    json
}

// ---------------------------------------------------------------------------------------------
// Aggregating
// ---------------------------------------------------------------------------------------------

/// What the `aggregate` stage keeps per (status class, route): one worker's partial totals.
#[derive(Debug, Default)]
struct Totals {
    requests: u64,
    bytes: u64,
    /// Response times in µs, in backflow's own histogram (boxed: it is 15 KiB).
    latency: Box<Histogram>,
}

impl Totals {
    fn add(&mut self, hit: &Hit) {
        self.requests += 1;
        self.bytes += hit.bytes;
        if let Some(us) = hit.latency_us {
            self.latency.record(us);
        }
    }
}

/// Every worker's totals for one (status class, route), merged in the `totals` sink.
#[derive(Debug, Default)]
struct Merged {
    requests: u64,
    bytes: u64,
    latency: Snapshot,
}

impl Merged {
    fn merge(&mut self, partial: &Totals) {
        self.requests += partial.requests;
        self.bytes += partial.bytes;
        self.latency.merge(&partial.latency.snapshot());
    }

    fn add(&mut self, other: &Self) {
        self.requests += other.requests;
        self.bytes += other.bytes;
        self.latency.merge(&other.latency);
    }
}

type Key = (StatusClass, Arc<str>);

// ---------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------

fn print_header(out: &mut impl io::Write, args: &Args, items: u64) -> io::Result<()> {
    let max_line = args.max_line_bytes as u64;
    let source = match &args.input {
        None => format!("{} generated access-log lines (seed {})", group(items), args.seed),
        Some(path) if path == Path::new("-") => {
            format!("access-log lines from stdin (at most {} bytes each)", group(max_line))
        }
        Some(path) => {
            format!(
                "access-log lines from {} (at most {} bytes each)",
                path.display(),
                group(max_line)
            )
        }
    };
    let store = match args.slow_sink_us {
        Some(us) if us > 0 => format!("the store sleeps {us} µs per record"),
        _ => "the store takes records at once".to_string(),
    };
    writeln!(out, "backflow demo: {source}")?;
    writeln!(out)?;
    let (enrich, aggregate) = match args.threads {
        Some(_) => ("×n".to_string(), "×n".to_string()),
        None => (format!("×{}", args.workers), format!("×{}", args.aggregate_workers)),
    };
    writeln!(
        out,
        "  lines ─► parse ─► enrich {enrich} ─┬─► aggregate {aggregate} ─► totals  (every record)"
    )?;
    writeln!(out, "             │                 └─┬─► alerts                 (5xx)")?;
    writeln!(out, "        dead letters             └─► encode ─► sink (store)   (the rest)")?;
    writeln!(out)?;
    let bounds = match args.max_queue_bytes {
        None => format!("{} items", args.capacity),
        Some(max) => format!("{} items and {} bytes", args.capacity, group(max as u64)),
    };
    writeln!(
        out,
        "  queues of {bounds}; the store's queue (encode) when full: {}; {store}",
        args.overflow
    )?;
    if let Some(budget) = args.threads {
        writeln!(
            out,
            "  {budget} worker threads for the four stages: each starts with 1 and may get up \
             to {budget}, moved every 200 ms to the stage that limits the pipeline"
        )?;
    }
    writeln!(out)
}

/// The live table on stderr: redrawn in place on a terminal, one status line a second
/// otherwise.
struct Live {
    tty: bool,
    every: Duration,
    last: Option<Instant>,
    /// Lines drawn last time, to move back over.
    drawn: usize,
    /// The last status line, not repeated when nothing has changed.
    said: String,
}

impl Live {
    fn new(refresh: Duration) -> Self {
        let tty = io::stderr().is_terminal();
        let every = if tty { refresh } else { refresh.max(Duration::from_secs(1)) };
        Self { tty, every, last: None, drawn: 0, said: String::new() }
    }

    fn show(&mut self, stats: &Stats, done: bool) {
        let due = self.last.is_none_or(|last| last.elapsed() >= self.every);
        if !due && !done {
            return;
        }
        self.last = Some(Instant::now());
        let text = if self.tty {
            self.table(stats)
        } else {
            let line = status_line(stats) + "\n";
            if line == self.said {
                return;
            }
            self.said.clone_from(&line);
            line
        };
        let mut err = io::stderr().lock();
        let _ = err.write_all(text.as_bytes());
        let _ = err.flush();
    }

    fn table(&mut self, stats: &Stats) -> String {
        let mut out = String::new();
        if self.drawn > 0 {
            let _ = write!(out, "\x1b[{}F", self.drawn);
        }
        let lines = live_table(stats);
        self.drawn = lines.len();
        for line in lines {
            let _ = writeln!(out, "\x1b[2K{line}");
        }
        out
    }
}

fn live_table(stats: &Stats) -> Vec<String> {
    let parse = &stats.stages()[0];
    let mut lines = vec![
        format!(
            "{:>6.1}s  {} lines in, {}",
            stats.elapsed().as_secs_f64(),
            group(parse.accounting.received),
            rate(parse.throughput_recent)
        ),
        format!(
            "{:<13} {:>9}  {:<22} {:<9} {:>8} {:>9} {:>5} {:>8}",
            "stage", "items/s", "queue", "pressure", "p99", "drops", "busy", "blocked"
        ),
    ];
    for s in stats.stages() {
        let name =
            if s.workers > 1 { format!("{} ×{}", s.name, s.workers) } else { s.name.clone() };
        lines.push(format!(
            "{:<13} {:>9}  {} {:<9} {:>8} {:>9} {:>5} {:>8}",
            name,
            rate(s.throughput_recent),
            queue_bar(s),
            format!("{} ({})", if s.pressure_on { "ON" } else { "off" }, s.pressure_transitions),
            nanos(s.process_time.p99),
            group(s.dropped_oldest + s.dropped_newest),
            percent(s.time.busy),
            percent(s.time.backpressured),
        ));
    }
    for k in stats.sinks() {
        let name = if k.name == "sink" { "sink (store)" } else { &k.name };
        lines.push(format!(
            "{name:<13} {:>9}  {} delivered",
            rate(k.throughput_recent),
            group(k.delivered)
        ));
    }
    let bottleneck = stats.bottleneck().map_or_else(|| "-".to_string(), |b| b.to_string());
    lines.push(format!("bottleneck: {bottleneck}"));
    lines
}

/// A queue's fill, `0.0..=1.0`: by items, or by bytes if that is fuller.
fn fill_share(s: &StageStats) -> f64 {
    let by_bytes = s.queue_capacity_bytes.map_or(0.0, |max| s.queue_bytes as f64 / max as f64);
    s.utilization().max(by_bytes)
}

/// `[####      ]  412/1024`, or with `--max-queue-bytes`, `[####      ] 1.2M/4.0M`.
fn queue_bar(s: &StageStats) -> String {
    const WIDTH: usize = 10;
    let filled = (fill_share(s) * WIDTH as f64).round() as usize;
    let fill = match s.queue_capacity_bytes {
        None => format!("{}/{}", s.queue_len, s.queue_capacity),
        Some(max) => format!("{}/{}", bytes(s.queue_bytes as u64), bytes(max as u64)),
    };
    format!(
        "[{}{}] {fill:>9}",
        "#".repeat(filled.min(WIDTH)),
        " ".repeat(WIDTH - filled.min(WIDTH))
    )
}

/// One line for logs: elapsed, lines in, each queue's fill (`ON`: pressure on), drops.
fn status_line(stats: &Stats) -> String {
    let parse = &stats.stages()[0];
    let mut line = format!(
        "[{:>5.1}s] {} lines, {:>8} | queues",
        stats.elapsed().as_secs_f64(),
        group(parse.accounting.received),
        rate(parse.throughput_recent)
    );
    for s in stats.stages() {
        let on = if s.pressure_on { " ON" } else { "" };
        let _ = write!(line, " {} {}%{on}", s.name, (fill_share(s) * 100.0).round());
    }
    let dropped: u64 = stats.stages().iter().map(|s| s.accounting.dropped).sum();
    let _ = write!(line, " | drops {}", group(dropped));
    line
}

fn print_results(
    out: &mut impl io::Write,
    report: &Report,
    tally: &Tally,
    lines: u64,
    elapsed: Duration,
) -> io::Result<()> {
    let stats = report.stats();
    let stage = |name: &str| report.stage(name).expect("the pipeline has this stage");
    let (parse, enrich, aggregate) = (stage("parse"), stage("enrich"), stage("aggregate"));

    writeln!(out, "── final report {}", "─".repeat(64))?;
    writeln!(out, "{report}")?;
    if report.is_balanced() {
        writeln!(
            out,
            "accounting: balanced: every line was delivered, dead-lettered, filtered or dropped"
        )?;
    } else {
        writeln!(out, "accounting: NOT balanced: {}", report.unbalanced().join("; "))?;
    }

    let totals = lock(&tally.totals);
    let mut routes: HashMap<&str, (Merged, [u64; 5])> = HashMap::new();
    let mut classes: HashMap<StatusClass, u64> = HashMap::new();
    for ((class, route), merged) in totals.iter() {
        let (all, by_class) = routes.entry(route).or_default();
        all.add(merged);
        by_class[*class as usize] += merged.requests;
        *classes.entry(*class).or_default() += merged.requests;
    }
    let aggregated: u64 = classes.values().sum();
    let mut top: Vec<_> = routes.iter().collect();
    top.sort_by(|a, b| b.1.0.requests.cmp(&a.1.0.requests).then(a.0.cmp(b.0)));

    writeln!(out)?;
    writeln!(out, "── results {}", "─".repeat(69))?;
    writeln!(
        out,
        "{:<34} {:>10} {:>6} {:>6} {:>6} {:>8} {:>8} {:>9}",
        format!("top routes (of {})", top.len()),
        "requests",
        "share",
        "4xx",
        "5xx",
        "p50",
        "p99",
        "bytes"
    )?;
    for (route, (all, by_class)) in top.iter().take(10) {
        let share = |n: u64| percent(n as f64 / all.requests.max(1) as f64);
        writeln!(
            out,
            "{:<34} {:>10} {:>6} {:>6} {:>6} {:>8} {:>8} {:>9}",
            truncate(route, 34),
            group(all.requests),
            percent(all.requests as f64 / aggregated.max(1) as f64),
            share(by_class[StatusClass::ClientError as usize]),
            share(by_class[StatusClass::ServerError as usize]),
            latency(&all.latency, 0.5),
            latency(&all.latency, 0.99),
            bytes(all.bytes),
        )?;
    }
    let mut by_class: Vec<_> = classes.into_iter().collect();
    by_class.sort();
    let by_class: Vec<String> = by_class
        .iter()
        .map(|(class, n)| {
            format!("{class} {} ({})", group(*n), percent(*n as f64 / aggregated.max(1) as f64))
        })
        .collect();
    writeln!(out, "status: {}", by_class.join(", "))?;

    let dead = tally.dead_lettered.load(Ordering::Relaxed);
    let share = dead as f64 * 100.0 / lines.max(1) as f64;
    let eg = if dead > 0 { ", e.g.:" } else { "" };
    writeln!(out, "dead letters: {} malformed lines ({share:.2} %){eg}", group(dead))?;
    for (line, error) in lock(&tally.dead_examples).iter() {
        // From the request on: the client and time are not where lines break.
        let from_request = line.find('"').map_or(line.as_str(), |at| &line[at..]);
        let printable: String =
            from_request.trim_end().chars().map(|c| if c.is_control() { '?' } else { c }).collect();
        writeln!(out, "  {error:<22} {}", truncate(&printable, 62))?;
    }
    let alerts = tally.alerts.load(Ordering::Relaxed);
    let first = if alerts > 0 { ", the first:" } else { "" };
    writeln!(out, "alerts: {} server errors{first}", group(alerts))?;
    for alert in lock(&tally.alert_examples).iter() {
        writeln!(out, "  {alert}")?;
    }
    let health = tally.health_checks.load(Ordering::Relaxed);
    let stored = tally.stored.load(Ordering::Relaxed);
    let dropped = tally.dropped.load(Ordering::Relaxed);
    writeln!(
        out,
        "store: {} records ({}), {} dropped on the way, {} health checks filtered",
        group(stored),
        bytes(tally.stored_bytes.load(Ordering::Relaxed)),
        group(dropped),
        group(health)
    )?;
    writeln!(
        out,
        "{} lines in {:.2} s: {}",
        group(lines),
        elapsed.as_secs_f64(),
        rate(lines as f64 / elapsed.as_secs_f64()).replace("/s", " lines/s")
    )?;
    let moves = lock(&tally.scaled);
    let at_end: Vec<String> =
        stats.stages().iter().map(|s| format!("{} {}", s.name, s.workers)).collect();
    let budget = stats.stages().first().filter(|s| s.workers_min < s.workers_max);
    if budget.is_some() {
        let total: usize = stats.stages().iter().map(|s| s.workers).sum();
        writeln!(
            out,
            "workers: {} ({total} threads) at the end; {} moves",
            at_end.join(", "),
            moves.len()
        )?;
        for (at, what) in moves.iter() {
            writeln!(out, "  {:>6.2} s  {what}", at.as_secs_f64())?;
        }
    }

    let enriched = enrich.emitted_outputs;
    let report_drops: u64 = stats.stages().iter().map(|s| s.accounting.dropped).sum();
    let transitions: u64 = stats.stages().iter().map(|s| s.pressure_transitions).sum();
    writeln!(
        out,
        "summary: lines={lines} parsed={} dead_lettered={dead} health_checks={health} \
         enriched={enriched} aggregated={aggregated} aggregate_in={} alerts={alerts} \
         stored={stored} dropped={dropped} report_dropped={report_drops} \
         pressure_transitions={transitions} workers={} moves={} balanced={}",
        parse.accounting.emitted_inputs,
        aggregate.accounting.emitted_inputs,
        stats.stages().iter().map(|s| s.workers.to_string()).collect::<Vec<_>>().join("/"),
        moves.len(),
        report.is_balanced()
    )
}

fn truncate(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_string()
    } else {
        s.chars().take(width - 1).chain(['…']).collect()
    }
}

/// `1,234,567`
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn percent(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

fn rate(per_second: f64) -> String {
    match per_second {
        r if r >= 1e6 => format!("{:.2}M/s", r / 1e6),
        r if r >= 1e3 => format!("{:.1}k/s", r / 1e3),
        r => format!("{r:.0}/s"),
    }
}

fn nanos(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns}ns"),
        1_000..1_000_000 => format!("{:.1}µs", ns as f64 / 1e3),
        _ => format!("{:.1}ms", ns as f64 / 1e6),
    }
}

/// A quantile of response times in µs; `-` when the lines had none.
fn latency(us: &Snapshot, q: f64) -> String {
    if us.count() == 0 { "-".to_string() } else { nanos(us.quantile(q).saturating_mul(1000)) }
}

fn bytes(n: u64) -> String {
    match n {
        0..1_000 => format!("{n} B"),
        1_000..1_000_000 => format!("{:.1} kB", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", n as f64 / 1e6),
        _ => format!("{:.1} GB", n as f64 / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_lines_parse_back() {
        let mut lines = LogGenerator::new(7, 2_000);
        let parsed: Vec<_> = lines.by_ref().map(parse_line).collect();
        let good = parsed.iter().filter(|p| p.is_ok()).count();
        assert!((1_970..2_000).contains(&good), "{good} good lines");
        let first = parsed[0].as_ref().unwrap();
        assert_eq!(first.time, LOG_START);
    }

    /// A reader that fails: a disk error, a file on a network share that went away.
    struct Broken;

    impl io::Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("input/output error"))
        }
    }

    #[test]
    fn a_read_error_in_the_middle_ends_the_run_with_the_error() {
        use io::Read as _;
        let reader = io::BufReader::new(io::Cursor::new("a\nb\n").chain(Broken));
        let mut lines = Lines::new(reader, 80);
        assert_eq!(lines.next().unwrap().unwrap(), text("a\n"));
        assert_eq!(lines.next().unwrap().unwrap(), text("b\n"));
        assert_eq!(lines.next().unwrap().unwrap_err().to_string(), "input/output error");

        let (pipeline, output) =
            Pipeline::<Line>::builder().stage("id", || |line: Line| line).output().build().unwrap();
        let reader = io::BufReader::new(io::Cursor::new("a\nb\n").chain(Broken));
        let error =
            push_lines(&pipeline.input(), Lines::new(reader, 80), "access.log").unwrap_err();
        assert_eq!(error.to_string(), "cannot read access.log after 2 lines: input/output error");
        pipeline.drain().unwrap();
        assert_eq!(output.collect::<Vec<_>>(), [text("a\n"), text("b\n")]);
    }

    fn text(line: &str) -> Line {
        Line::Text(line.to_string())
    }

    fn too_long(head: &str, bytes: u64) -> Line {
        Line::TooLong { head: head.to_string(), bytes }
    }

    #[test]
    fn a_line_over_the_cap_is_cut_to_its_head_and_the_rest_skipped() {
        let read =
            |input: &[u8], max| Lines::new(input, max).collect::<io::Result<Vec<_>>>().unwrap();
        // Up to the cap, with or without a newline; then one byte over, with or without.
        assert_eq!(read(b"12345678\n12345678", 8), [text("12345678\n"), text("12345678")]);
        assert_eq!(
            read(b"123456789\nok\n123456789", 8),
            [too_long("12345678", 9), text("ok\n"), too_long("12345678", 9)]
        );
        // A long line goes by in pieces: what is held stays near the cap, and the line after
        // it is read whole.
        let mut input = vec![b'x'; 1 << 20];
        input.extend_from_slice(b"\nnext\n");
        let mut lines = Lines::new(io::BufReader::new(&input[..]), 1000);
        let head = "x".repeat(LINE_HEAD);
        assert_eq!(lines.next().unwrap().unwrap(), too_long(&head, 1 << 20));
        assert!(lines.buf.capacity() <= 2 * SKIP_PIECE, "{}", lines.buf.capacity());
        assert_eq!(lines.next().unwrap().unwrap(), text("next\n"));
        assert!(lines.next().is_none());
        // The head is cut at a byte; a character cut in two is replaced.
        assert_eq!(read("ééé\n".as_bytes(), 3), [too_long("é\u{FFFD}", 6)]);
    }

    #[test]
    fn a_line_too_long_is_its_own_parse_error() {
        assert_eq!(
            parse(too_long("x", 70_000)).unwrap_err().to_string(),
            "line too long (70000 bytes)"
        );
    }

    #[test]
    fn paths_normalize() {
        let route = |p: &str| {
            let mut out = String::new();
            normalize_path(p, &mut out);
            out
        };
        assert_eq!(route("/api/v1/users/123/orders?page=2"), "/api/v1/users/:id/orders");
        assert_eq!(route("/static/js/app.3f9a2c1d.js"), "/static/js/app.:hash.js");
        assert_eq!(route("/static/img/products/77.webp"), "/static/img/products/:id.webp");
        assert_eq!(
            route("/api/v1/cart/0f8fad5b-d9cb-469f-a165-70867728950e"),
            "/api/v1/cart/:uuid"
        );
        assert_eq!(route("/"), "/");
    }

    #[test]
    fn time_round_trips() {
        for t in [0, LOG_START, 951_782_400 /* 2000-02-29 */] {
            assert_eq!(parse_time(&format_time(t)), Some(t));
        }
        assert_eq!(parse_time("10/Oct/2000:13:55:36 -0700"), Some(971_211_336));
    }
}
