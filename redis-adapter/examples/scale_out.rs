//! One process of a scaled-out pipeline: run it on as many machines as the work needs.
//!
//! Each process reads the stream `numbers` as its own consumer of the group `squarers`,
//! squares each number, and adds the result to the stream `squares`; the group hands each
//! entry to one process, and entries of a process that dies are taken over by the others.
//!
//! ```text
//! cargo run --release -p backflow-redis --example scale_out -- --fill 100000   # the input
//! cargo run --release -p backflow-redis --example scale_out -- --consumer a --until-done &
//! cargo run --release -p backflow-redis --example scale_out -- --consumer b --until-done
//! ```
//!
//! Each prints a `summary:` line with its counts, and where its time went.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use backflow::{ErrorPolicy, Pipeline, stage};
use backflow_redis::{Consumer, ConsumerConfig, Entry, Record, Writer, WriterConfig};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "One consumer of a scaled-out backflow pipeline on Redis Streams")]
struct Args {
    /// The Redis server.
    #[arg(long, default_value = "redis://127.0.0.1:6379/")]
    url: String,
    /// The stream to read.
    #[arg(long, default_value = "numbers")]
    stream: String,
    /// The consumer group shared by every process.
    #[arg(long, default_value = "squarers")]
    group: String,
    /// This process's name in the group.
    #[arg(long, default_value = "consumer-1")]
    consumer: String,
    /// The stream results are added to.
    #[arg(long, default_value = "squares")]
    output: String,
    /// The server (and user) results are written with, when not the reader's `--url`: a
    /// writer's ACL user may add to the output stream and do nothing else.
    #[arg(long)]
    output_url: Option<String>,
    /// Count results in the sink instead of writing them (a two-stage pipeline).
    #[arg(long)]
    no_output: bool,
    /// Add this many entries (n = 0, 1, …) to the input stream, then exit.
    #[arg(long)]
    fill: Option<u64>,
    /// Entries per read.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Capacity of each stage's queue.
    #[arg(long, default_value_t = 1024)]
    capacity: usize,
    /// Workers of the squaring stage.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Busy work per entry, in microseconds (a stand-in for real processing).
    #[arg(long, default_value_t = 0)]
    work_us: u64,
    /// Take over entries pending longer than this (milliseconds).
    #[arg(long, default_value_t = 30_000)]
    claim_idle_ms: u64,
    /// Look for entries to take over this often (milliseconds).
    #[arg(long, default_value_t = 5_000)]
    claim_every_ms: u64,
    /// Stop once the group has handed out every entry and has none pending.
    #[arg(long)]
    until_done: bool,
    /// Stop after reading nothing for this long (milliseconds).
    #[arg(long)]
    idle_exit_ms: Option<u64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.fill {
        Some(entries) => fill(&args, entries),
        None => consume(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("scale_out {}: {error}", args.consumer);
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error>;

/// Records per `XADD` round trip (fewer when the input pauses: flushed every 20 ms).
const WRITE_BATCH: NonZeroUsize = NonZeroUsize::new(64).expect("not zero");

/// Runs this process's consumer until it is told to stop (or the group is done).
fn consume(args: &Args) -> Result<(), BoxError> {
    let started = Instant::now();
    let mut config = ConsumerConfig::new(&args.url, &args.stream, &args.group, &args.consumer)
        .batch(args.batch)
        .claim_idle(Duration::from_millis(args.claim_idle_ms))
        .claim_every(Duration::from_millis(args.claim_every_ms));
    if let Some(idle) = args.idle_exit_ms {
        config = config.stop_when_idle(Duration::from_millis(idle));
    }
    let consumer = Consumer::connect(config)?;
    if args.until_done {
        let (handle, url) = (consumer.handle(), args.url.clone());
        let (stream, group) = (args.stream.clone(), args.group.clone());
        std::thread::spawn(move || {
            while !group_done(&url, &stream, &group).unwrap_or(false) {
                std::thread::sleep(Duration::from_millis(20));
            }
            handle.stop();
        });
    }

    let work = Duration::from_micros(args.work_us);
    let workers = NonZeroUsize::new(args.workers).ok_or("--workers must be at least 1")?;
    let source = Pipeline::<Entry>::builder()
        .stage("parse", || {
            |entry: Entry| {
                let n: u64 = entry.get_str("n").and_then(|n| n.parse().ok()).unwrap_or(0);
                (entry.receipt(), n)
            }
        })
        .capacity(args.capacity)
        .stage("square", move || {
            move |(receipt, n): (backflow_redis::Receipt, u64)| {
                let until = Instant::now() + work;
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
                (receipt, n, n.wrapping_mul(n))
            }
        })
        .capacity(args.capacity)
        .workers(workers);
    let summary = if args.no_output {
        let pipeline = source.sink(|_| {}).build()?;
        consumer.run(pipeline)?
    } else {
        let output_url = args.output_url.as_ref().unwrap_or(&args.url);
        let writer = Writer::new(WriterConfig::new(output_url, &args.output))?;
        let consumer_name = args.consumer.clone();
        let pipeline = source
            .stage("record", move || {
                let consumer = consumer_name.clone();
                move |(receipt, n, square): (backflow_redis::Receipt, u64, u64)| {
                    Record::new()
                        .field("n", n.to_string())
                        .field("square", square.to_string())
                        .field("consumer", &consumer)
                        .settles(receipt)
                }
            })
            .stage("batch", || stage::batches(WRITE_BATCH))
            .flush_every(Duration::from_millis(20))
            .stage("store", move || writer.stage())
            .on_error(ErrorPolicy::FailFast)
            .sink(|_ids| {})
            .build()?;
        consumer.run(pipeline)?
    };

    let report = &summary.report;
    eprintln!("{report}");
    println!(
        "summary: consumer={} read={} claimed={} acknowledged={} released={} dead_lettered={} \
         pending={} reconnects={} delivered={} elapsed_ms={} reading_ms={} waiting_ms={} \
         pushing_ms={} balanced={}",
        args.consumer,
        summary.read,
        summary.claimed,
        summary.acknowledged,
        summary.released,
        summary.dead_lettered,
        summary.pending,
        summary.reconnects,
        report.sink().delivered,
        started.elapsed().as_millis(),
        summary.reading.as_millis(),
        summary.waiting.as_millis(),
        summary.pushing.as_millis(),
        report.is_balanced(),
    );
    Ok(())
}

/// Whether the group has handed out every entry of the stream and has none pending.
fn group_done(url: &str, stream: &str, group: &str) -> Result<bool, BoxError> {
    let mut connection = redis::Client::open(url)?.get_connection()?;
    let groups: Vec<redis::Value> =
        redis::cmd("XINFO").arg("GROUPS").arg(stream).query(&mut connection)?;
    for info in groups {
        let fields: HashMap<String, redis::Value> = redis::from_redis_value(info)?;
        let get = |key: &str| fields.get(key).cloned().map(redis::from_redis_value::<i64>);
        let name = fields.get("name").cloned().map(redis::from_redis_value::<String>);
        if name.transpose()?.as_deref() == Some(group) {
            return Ok(get("pending").transpose()? == Some(0) && get("lag").transpose()? == Some(0));
        }
    }
    Ok(false)
}

/// Adds `entries` numbers to the input stream, a thousand per round trip.
fn fill(args: &Args, entries: u64) -> Result<(), BoxError> {
    let mut connection = redis::Client::open(args.url.as_str())?.get_connection()?;
    let mut n = 0;
    while n < entries {
        let mut pipe = redis::pipe();
        for n in n..entries.min(n + 1000) {
            pipe.cmd("XADD").arg(&args.stream).arg("*").arg("n").arg(n).ignore();
        }
        pipe.query::<()>(&mut connection)?;
        n = entries.min(n + 1000);
    }
    println!("filled: stream={} entries={entries}", args.stream);
    Ok(())
}
