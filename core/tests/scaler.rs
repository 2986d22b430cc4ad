//! The scaler against a model of a pipeline: a chain of stages whose throughput is
//! proportional to their workers. Property tests: the budget and every range hold at every
//! step; under a steady load the scaler settles and then changes nothing; with noise in the
//! measurements it still stops after a bounded number of moves; when the slow stage changes,
//! the workers follow it.

mod common;

use backflow_core::scaler::{Move, Sample, Scaler, ScalerConfig, StageWorkers};
use common::scaled;
use proptest::prelude::*;

/// A chain of stages, each item costing `costs[i]` units of worker time at stage `i`, fed
/// `input` items per unit of time (`f64::INFINITY`: as fast as the first stage takes them).
#[derive(Debug, Clone)]
struct Chain {
    costs: Vec<f64>,
    input: f64,
}

impl Chain {
    /// What one interval with `workers` measures. The throughput is the smallest of the input
    /// rate and every stage's capacity (workers / cost). If a stage limits it, the queues from
    /// the input up to the first such stage are full (their producers wait), the ones after it
    /// run dry.
    fn measure(&self, workers: &[usize]) -> Vec<Sample> {
        let capacity: Vec<f64> =
            self.costs.iter().zip(workers).map(|(&c, &w)| w as f64 / c).collect();
        let slowest = capacity.iter().copied().fold(f64::INFINITY, f64::min);
        let throughput = self.input.min(slowest);
        let limited = slowest < self.input;
        let first_limit = capacity.iter().position(|&c| c <= slowest).unwrap_or(0);
        self.costs
            .iter()
            .zip(workers)
            .enumerate()
            .map(|(i, (&cost, &w))| Sample {
                busy: throughput * cost / w as f64,
                upstream_waiting: if limited && i <= first_limit { 1.0 } else { 0.0 },
            })
            .collect()
    }
}

/// Runs `intervals` intervals of `chain` through the scaler, checking the budget and ranges
/// after each; returns the interval of each move. `noise` (a seed) perturbs every share by
/// up to ±5 %.
fn run(
    scaler: &mut Scaler,
    stages: &mut [StageWorkers],
    chain: &Chain,
    intervals: usize,
    noise: Option<u64>,
) -> Result<Vec<(usize, Move)>, TestCaseError> {
    let mut moves = Vec::new();
    let mut rng = noise.unwrap_or(0);
    for interval in 0..intervals {
        let workers: Vec<usize> = stages.iter().map(StageWorkers::workers).collect();
        let mut samples = chain.measure(&workers);
        if noise.is_some() {
            for sample in &mut samples {
                sample.busy += jitter(&mut rng);
                sample.upstream_waiting += jitter(&mut rng);
            }
        }
        if let Some(chosen) = scaler.observe(stages, &samples) {
            moves.push((interval, chosen));
        }
        let total: usize = stages.iter().map(StageWorkers::workers).sum();
        prop_assert!(
            total <= scaler.budget(),
            "{} workers over a budget of {}",
            total,
            scaler.budget()
        );
        for stage in stages.iter() {
            prop_assert!(stage.min() <= stage.workers() && stage.workers() <= stage.max());
        }
    }
    Ok(moves)
}

/// A pseudo-random value in `-0.05..0.05` (SplitMix64).
fn jitter(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64 * 0.1 - 0.05
}

/// Stages with random ranges, a budget that covers their minimums, a random configuration
/// and a random chain: costs of 1 to 50, fed as fast as it goes or at a random rate.
fn setup() -> impl Strategy<Value = (Vec<StageWorkers>, usize, ScalerConfig, Chain)> {
    (1usize..=5)
        .prop_flat_map(|n| {
            (
                proptest::collection::vec((1usize..=2, 0usize..=4), n),
                0usize..=6,
                (1u32..=3, 0u32..=2),
                proptest::collection::vec(1u32..=50, n),
                prop_oneof![Just(f64::INFINITY), (1u32..=200).prop_map(|r| f64::from(r) / 100.0)],
            )
        })
        .prop_map(|(ranges, extra, (samples, cooldown), costs, input)| {
            let stages: Vec<StageWorkers> = ranges
                .iter()
                .map(|&(min, more)| StageWorkers::new(min, min + more).unwrap())
                .collect();
            let budget = stages.iter().map(StageWorkers::min).sum::<usize>() + extra;
            let config = ScalerConfig { samples, cooldown, ..ScalerConfig::default() };
            let chain = Chain { costs: costs.into_iter().map(f64::from).collect(), input };
            (stages, budget, config, chain)
        })
}

proptest! {
    // Safe code only: under miri one case each shows it runs there, without minutes of it.
    #![proptest_config(ProptestConfig::with_cases(scaled(256, 1) as u32))]

    /// Under a steady load the scaler makes its moves early and then none: no oscillation.
    #[test]
    fn under_a_steady_load_it_settles_within_the_budget_and_ranges(
        (mut stages, budget, config, chain) in setup(),
    ) {
        let mut scaler = Scaler::new(config, budget, &stages).unwrap();
        let moves = run(&mut scaler, &mut stages, &chain, 400, None)?;
        let late: Vec<_> = moves.iter().filter(|(interval, _)| *interval >= 200).collect();
        prop_assert!(late.is_empty(), "still moving after 200 intervals: {:?} (all: {:?})", late, moves);
        // Settled means: no stage is a bottleneck that the budget could still feed.
        let workers: Vec<usize> = stages.iter().map(StageWorkers::workers).collect();
        let total: usize = workers.iter().sum();
        let samples = chain.measure(&workers);
        for (i, (stage, sample)) in stages.iter().zip(&samples).enumerate() {
            let hot = sample.busy >= 0.8 && sample.upstream_waiting >= 0.2;
            prop_assert!(
                !(hot && stage.workers() < stage.max() && total < budget),
                "stage {} is a bottleneck with room for a worker: {:?}", i, workers
            );
        }
    }

    /// With ±5 % of noise in every share, the budget and ranges hold (checked after every
    /// interval) and the moves do not oscillate: a stage whose true share sits within the
    /// noise of a threshold may still be tipped over it late, but no stage gains and loses
    /// workers back and forth once the first 300 intervals are over.
    #[test]
    fn with_noisy_measurements_it_still_stays_within_bounds_and_does_not_oscillate(
        (mut stages, budget, config, chain) in setup(),
        seed in any::<u64>(),
    ) {
        let mut scaler = Scaler::new(config, budget, &stages).unwrap();
        let moves = run(&mut scaler, &mut stages, &chain, 600, Some(seed))?;
        let late: Vec<_> = moves.iter().filter(|(interval, _)| *interval >= 300).collect();
        for stage in 0..stages.len() {
            let (mut gained, mut lost) = (false, false);
            for (_, step) in &late {
                match *step {
                    Move::Add { stage: s } if s == stage => gained = true,
                    Move::Remove { stage: s } if s == stage => lost = true,
                    Move::Shift { from, to } => {
                        lost |= from == stage;
                        gained |= to == stage;
                    }
                    _ => {}
                }
            }
            prop_assert!(!(gained && lost), "stage {} oscillates: {:?} (all: {:?})", stage, late, moves);
        }
    }

    /// One slow stage (20× the others) gets every worker the budget has beyond the others'
    /// minimum; when another stage becomes the slow one, the workers move over to it.
    #[test]
    fn the_workers_follow_the_slow_stage(
        (n, slow, next) in (2usize..=5).prop_flat_map(|n| (Just(n), 0..n, 0..n - 1)),
        extra in 1usize..=6,
        (samples, cooldown) in (1u32..=3, 0u32..=2),
    ) {
        let next = if next >= slow { next + 1 } else { next };
        let budget = n + extra;
        let mut stages = vec![StageWorkers::new(1, budget).unwrap(); n];
        let config = ScalerConfig { samples, cooldown, ..ScalerConfig::default() };
        let mut scaler = Scaler::new(config, budget, &stages).unwrap();
        let slow_at = |s: usize| Chain {
            costs: (0..n).map(|i| if i == s { 20.0 } else { 1.0 }).collect(),
            input: f64::INFINITY,
        };
        let expected = |s: usize| (0..n).map(|i| if i == s { 1 + extra } else { 1 }).collect::<Vec<_>>();
        run(&mut scaler, &mut stages, &slow_at(slow), 100, None)?;
        let workers: Vec<usize> = stages.iter().map(StageWorkers::workers).collect();
        prop_assert_eq!(&workers, &expected(slow));
        run(&mut scaler, &mut stages, &slow_at(next), 100, None)?;
        let workers: Vec<usize> = stages.iter().map(StageWorkers::workers).collect();
        prop_assert_eq!(&workers, &expected(next));
    }
}

/// The acceptance case as the model sees it: stages of 1, 20 and 1 units per item, 4 threads,
/// one worker each to begin with. The slow stage gets the fourth thread and nothing else
/// moves; when it becomes fast and the last stage slow, the worker moves there.
#[test]
fn one_twenty_one_with_four_threads() {
    let mut stages = [StageWorkers::new(1, 4).unwrap(); 3];
    let mut scaler = Scaler::new(ScalerConfig::default(), 4, &stages).unwrap();
    let chain = Chain { costs: vec![1.0, 20.0, 1.0], input: f64::INFINITY };
    let moves = run(&mut scaler, &mut stages, &chain, 50, None).unwrap();
    assert_eq!(moves, [(2, Move::Add { stage: 1 })]);
    assert_eq!(stages.map(|s| s.workers()), [1, 2, 1]);
    let chain = Chain { costs: vec![1.0, 1.0, 20.0], input: f64::INFINITY };
    let moves = run(&mut scaler, &mut stages, &chain, 50, None).unwrap();
    assert_eq!(moves, [(2, Move::Shift { from: 1, to: 2 })]);
    assert_eq!(stages.map(|s| s.workers()), [1, 1, 2]);
    // The slow stage becomes fast and nothing is slow: the spare worker goes.
    let chain = Chain { costs: vec![1.0, 1.0, 1.0], input: 0.5 };
    let moves = run(&mut scaler, &mut stages, &chain, 50, None).unwrap();
    assert_eq!(moves, [(2, Move::Remove { stage: 2 })]);
    assert_eq!(stages.map(|s| s.workers()), [1, 1, 1]);
}
