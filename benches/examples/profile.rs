//! One pipeline run to profile under `valgrind --tool=callgrind` (which counts instructions,
//! whatever else the machine is doing): `profile <stages> <items> [push|push_iter]`.

use std::env;

use backflow::Pipeline;
use backflow_benches::pipeline::step;

fn main() {
    let args: Vec<String> = env::args().collect();
    let stages: usize = args.get(1).map_or(1, |s| s.parse().expect("stages"));
    let items: u64 = args.get(2).map_or(1_000_000, |s| s.parse().expect("items"));
    let single = args.get(3).is_some_and(|s| s == "push");
    let mut builder = Pipeline::<u64>::builder().stage("stage 1", || step).capacity(1024);
    for i in 2..=stages {
        builder = builder.stage(format!("stage {i}"), || step).capacity(1024);
    }
    let mut sum = 0u64;
    let pipeline = builder.sink(move |x| sum = sum.wrapping_add(x)).build().expect("valid");
    let input = pipeline.input();
    if single {
        for x in 0..items {
            input.push(x).expect("open");
        }
    } else {
        input.push_iter(0..items).expect("open");
    }
    let report = pipeline.drain().expect("drains");
    assert_eq!(report.sink().delivered, items);
}
