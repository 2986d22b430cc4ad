//! Every `ConfigError` the builder returns, each naming the stage and field at fault, and
//! nothing left running after one.

mod common;

use std::env;
use std::num::NonZeroUsize;
use std::process::Command;

use backflow::core::ConfigError as MarksError;
use backflow::{ConfigError, Overflow, Pipeline};

/// Builds, and drains, a 1-stage pass-through pipeline with a stage named `name`.
fn one_stage(name: &str, capacity: usize, overflow: Overflow) -> Result<(), ConfigError> {
    let pipeline = Pipeline::<u8>::builder()
        .stage(name, || |x: u8| x)
        .capacity(capacity)
        .overflow(overflow)
        .sink(|_| {})
        .build()?;
    pipeline.drain().map(drop).map_err(|e| panic!("{e}"))
}

#[test]
fn empty_name() {
    let err = Pipeline::<u8>::builder()
        .stage("ok", || |x: u8| x)
        .stage("", || |x: u8| x)
        .sink(|_| {})
        .build()
        .unwrap_err();
    assert_eq!(err, ConfigError::EmptyName { index: 1 });
    assert_eq!(err.to_string(), "stage #1: name must not be empty");
}

#[test]
fn name_with_a_control_character() {
    let err = one_stage("par\nse", 8, Overflow::Block).unwrap_err();
    assert_eq!(err, ConfigError::NameHasControl { name: "par\nse".into() });
    assert_eq!(err.to_string(), r#"stage "par\nse": name must not contain control characters"#);
}

#[test]
fn duplicate_name() {
    let err = Pipeline::<u8>::builder()
        .stage("parse", || |x: u8| x)
        .stage("enrich", || |x: u8| x)
        .stage("parse", || |x: u8| x)
        .sink(|_| {})
        .build()
        .unwrap_err();
    assert_eq!(err, ConfigError::DuplicateName { stage: "parse".into() });
}

#[test]
fn zero_capacity() {
    let err = one_stage("parse", 0, Overflow::Block).unwrap_err();
    assert_eq!(err, ConfigError::ZeroCapacity { stage: "parse".into() });
    assert_eq!(err.to_string(), "stage `parse`: capacity must be at least 1");
}

#[test]
fn capacity_too_large() {
    let err = one_stage("parse", usize::MAX, Overflow::Block).unwrap_err();
    let ConfigError::CapacityTooLarge { stage, capacity, max } = err else {
        panic!("unexpected {err:?}");
    };
    assert_eq!((stage.as_str(), capacity), ("parse", usize::MAX));
    assert!(max < capacity);
}

#[test]
fn bad_water_marks_name_the_stage_and_the_marks() {
    let low_not_below_high = Pipeline::<u8>::builder()
        .stage("parse", || |x: u8| x)
        .capacity(10)
        .water_mark_counts(4, 6)
        .sink(|_| {})
        .build()
        .unwrap_err();
    assert_eq!(
        low_not_below_high,
        ConfigError::WaterMarks {
            stage: "parse".into(),
            source: MarksError::LowNotBelowHigh { low: 6, high: 4 },
        }
    );
    assert_eq!(
        low_not_below_high.to_string(),
        "stage `parse`: water marks: low mark 6 must be below high mark 4"
    );

    let high_above_capacity = Pipeline::<u8>::builder()
        .stage("parse", || |x: u8| x)
        .stage("enrich", || |x: u8| x)
        .capacity(10)
        .water_mark_counts(11, 2)
        .sink(|_| {})
        .build()
        .unwrap_err();
    assert_eq!(
        high_above_capacity,
        ConfigError::WaterMarks {
            stage: "enrich".into(),
            source: MarksError::HighAboveCapacity { high: 11, capacity: 10 },
        }
    );

    let percent_above_100 = Pipeline::<u8>::builder()
        .stage("parse", || |x: u8| x)
        .water_marks(120, 10)
        .output()
        .build()
        .unwrap_err();
    assert!(
        matches!(
            &percent_above_100,
            ConfigError::WaterMarks { stage, source: MarksError::Invalid { .. } } if stage == "parse"
        ),
        "{percent_above_100:?}"
    );
}

#[test]
fn fail_on_a_later_stage() {
    let err = Pipeline::<u8>::builder()
        .stage("parse", || |x: u8| x)
        .overflow(Overflow::Fail)
        .stage("enrich", || |x: u8| x)
        .overflow(Overflow::Fail)
        .sink(|_| {})
        .build()
        .unwrap_err();
    assert_eq!(err, ConfigError::FailNotFirst { stage: "enrich".into() });
    // On the first stage it is fine.
    one_stage("parse", 8, Overflow::Fail).unwrap();
}

/// Set in the child process of [`a_thread_the_os_refuses_is_a_config_error`].
const CHILD: &str = "BACKFLOW_TEST_SPAWN_CHILD";

/// The operating system refuses threads once the address space is capped (each thread
/// reserves its stack): the child process runs under `ulimit -v` and asks for more workers
/// than fit. `build()` returns the error naming the stage and worker, and the workers that
/// did start are gone.
#[test]
fn a_thread_the_os_refuses_is_a_config_error() {
    if env::var_os(CHILD).is_some() {
        let workers = NonZeroUsize::new(backflow::builder::MAX_WORKERS).unwrap();
        let err = Pipeline::<u8>::builder()
            .stage("spw", || |x: u8| x)
            .workers(workers)
            .sink(|_| {})
            .build()
            .unwrap_err();
        let ConfigError::Spawn { stage, worker, message } = &err else {
            panic!("unexpected {err:?}");
        };
        assert_eq!(stage, "spw");
        assert!(*worker > 0 && *worker < workers.get(), "{err}");
        assert!(!message.is_empty());
        assert!(common::threads("backflow:spw:").is_empty(), "workers left behind");
        println!("child: {err}");
        return;
    }
    let test_binary = env::current_exe().unwrap();
    let output = Command::new("sh")
        .args(["-c", r#"ulimit -v 2000000 && exec "$0" "$@""#])
        .arg(test_binary)
        .args(["a_thread_the_os_refuses_is_a_config_error", "--exact", "--nocapture"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("child: stage `spw`: could not start worker"), "{stdout}\n{stderr}");
}

#[test]
fn too_many_workers_is_an_error_before_anything_is_allocated() {
    let too_many = backflow::builder::MAX_WORKERS + 1;
    for workers in [too_many, usize::MAX] {
        for key_ordered in [false, true] {
            let workers = NonZeroUsize::new(workers).unwrap();
            let builder = Pipeline::<u64>::builder()
                .stage("first", || |x: u64| x)
                .stage("wide", || |x: u64| x)
                .workers(workers);
            let builder = if key_ordered { builder.key_ordered(|x: &u64| *x) } else { builder };
            let err = builder.sink(|_| {}).build().unwrap_err();
            let expected = ConfigError::TooManyWorkers {
                stage: "wide".into(),
                workers: workers.get(),
                max: backflow::builder::MAX_WORKERS,
            };
            assert_eq!(err, expected);
        }
    }
    let err = Pipeline::<u64>::builder()
        .stage("ranged", || |x: u64| x)
        .workers_range(too_many..=usize::MAX)
        .sink(|_| {})
        .build()
        .unwrap_err();
    let expected = ConfigError::TooManyWorkers {
        stage: "ranged".into(),
        workers: too_many,
        max: backflow::builder::MAX_WORKERS,
    };
    assert_eq!(err, expected);
    assert_eq!(
        err.to_string(),
        format!(
            "stage `ranged`: {too_many} workers to start with, at most {}",
            backflow::builder::MAX_WORKERS
        )
    );
}
