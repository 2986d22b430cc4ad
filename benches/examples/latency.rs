//! One paced-latency run per contender, to compare builds process by process:
//! `latency <stages> <items> [park|spin|disruptor]` sends `items` at 100 k items/s and prints
//! the p50 and p99 in microseconds (run it under `/usr/bin/time` for its CPU time).

use std::env;

use backflow_benches::{lmax, pipeline};

fn main() {
    let args: Vec<String> = env::args().collect();
    let stages: usize = args.get(1).map_or(1, |s| s.parse().expect("stages"));
    let items: u64 = args.get(2).map_or(50_000, |s| s.parse().expect("items"));
    let which = args.get(3).map_or("park", String::as_str);
    let rate = 100_000;
    let latency = match which {
        "spin" => pipeline::backflow_latency_busy_spin(items, rate, stages),
        "disruptor" => lmax::disruptor_latency(items, rate, stages),
        _ => pipeline::backflow_latency_park(items, rate, stages),
    }
    .expect("the contender runs this many stages");
    println!(
        "{which} {stages} stage(s): p50 {:.2} µs, p99 {:.2} µs",
        latency.p50 as f64 / 1e3,
        latency.p99 as f64 / 1e3
    );
}
