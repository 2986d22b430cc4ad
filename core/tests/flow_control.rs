//! Water marks, overflow policies, token bucket, retry schedule, circuit breaker and reorder
//! window: every transition driven directly, plus property tests against simple models.

mod common;

use core::time::Duration;

use backflow_core::breaker::{BreakerConfig, BreakerState, BreakerTransition, CircuitBreaker};
use backflow_core::overflow::{DropReason, Overflow, PushOutcome, Queue};
use backflow_core::reorder::ReorderError;
use backflow_core::ring::{mpmc, spsc};
use backflow_core::water_marks::{Pressure, Transition, WaterMarks};
use backflow_core::{ConfigError, ReorderWindow, RetrySchedule, TokenBucket};
use common::scaled;
use proptest::prelude::*;

// ---- water marks -------------------------------------------------------------------------

#[test]
fn every_water_mark_error_names_its_cause() {
    assert_eq!(WaterMarks::for_capacity(0), Err(ConfigError::ZeroCapacity));
    assert_eq!(WaterMarks::from_counts(0, 1, 0), Err(ConfigError::ZeroCapacity));
    assert_eq!(
        WaterMarks::from_counts(10, 5, 5),
        Err(ConfigError::LowNotBelowHigh { low: 5, high: 5 })
    );
    assert_eq!(
        WaterMarks::from_counts(10, 11, 2),
        Err(ConfigError::HighAboveCapacity { high: 11, capacity: 10 })
    );
    assert_eq!(
        WaterMarks::from_percent(10, 101, 2),
        Err(ConfigError::Invalid { field: "water_marks.high_percent", expected: "at most 100" })
    );
    assert_eq!(
        WaterMarks::from_percent(10, 80, 200),
        Err(ConfigError::Invalid { field: "water_marks.low_percent", expected: "at most 100" })
    );
    // Equal percentages round apart (high up, low down) only when that separates them.
    assert_eq!(
        WaterMarks::from_percent(10, 50, 50),
        Err(ConfigError::LowNotBelowHigh { low: 5, high: 5 })
    );
}

#[test]
fn default_marks_round_outward_and_always_fit() {
    for capacity in 1..=200 {
        let marks = WaterMarks::for_capacity(capacity).unwrap();
        assert!(marks.low() < marks.high() && marks.high() <= capacity, "capacity {capacity}");
        assert_eq!(marks.high(), (capacity * 80).div_ceil(100));
        assert_eq!(marks.low(), capacity * 40 / 100);
    }
}

#[test]
fn pressure_turns_on_at_high_and_off_only_at_low() {
    let mut pressure = Pressure::new(WaterMarks::from_counts(10, 8, 4).unwrap());
    let fills = [0, 7, 8, 9, 5, 7, 8, 5, 4, 3, 7, 8];
    let transitions: Vec<_> = fills.iter().map(|&f| pressure.observe(f)).collect();
    use Transition::{Off, On};
    assert_eq!(
        transitions,
        [None, None, Some(On), None, None, None, None, None, Some(Off), None, None, Some(On)]
    );
    assert_eq!(pressure.transitions(), 3);
    assert!(pressure.is_on());
}

/// Reference model: the state is on iff the last mark crossed was the high one.
fn reference_pressure(marks: WaterMarks, fills: &[usize]) -> Vec<bool> {
    let mut on = false;
    fills
        .iter()
        .map(|&fill| {
            if fill >= marks.high() {
                on = true;
            } else if fill <= marks.low() {
                on = false;
            }
            on
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(scaled(256, 8) as u32))]

    #[test]
    fn pressure_matches_the_reference_and_never_flaps(
        (capacity, high, low) in (1usize..64).prop_flat_map(|c| (Just(c), 1..=c)).prop_flat_map(|(c, h)| (Just(c), Just(h), 0..h)),
        fills in proptest::collection::vec(0usize..70, 0..100),
    ) {
        let fills: Vec<usize> = fills.into_iter().map(|f| f.min(capacity)).collect();
        let marks = WaterMarks::from_counts(capacity, high, low).unwrap();
        let mut pressure = Pressure::new(marks);
        let expected = reference_pressure(marks, &fills);
        let mut last_transition: Option<(usize, Transition)> = None;
        for (i, &fill) in fills.iter().enumerate() {
            if let Some(t) = pressure.observe(fill) {
                // Between two transitions, the fill crossed the opposite mark.
                if let Some((j, previous)) = last_transition {
                    prop_assert_ne!(previous, t);
                    let between = &fills[j..=i];
                    match t {
                        Transition::On => prop_assert!(between.iter().any(|&f| f <= low)),
                        Transition::Off => prop_assert!(between.iter().any(|&f| f >= high)),
                    }
                }
                last_transition = Some((i, t));
            }
            prop_assert_eq!(pressure.is_on(), expected[i]);
        }
    }
}

// ---- overflow ----------------------------------------------------------------------------

#[test]
fn overflow_policies_account_for_every_item() {
    let ring = mpmc::ArrayRing::<u32, 2>::new();
    let mut queue = &ring;
    for policy in [Overflow::Block, Overflow::DropOldest, Overflow::DropNewest, Overflow::Fail] {
        assert_eq!(policy.push(&mut queue, 1, false), PushOutcome::Pushed);
        assert_eq!(policy.push(&mut queue, 2, false), PushOutcome::Pushed);
        let outcome = policy.push(&mut queue, 3, false);
        let expected = match policy {
            Overflow::Block => PushOutcome::MustWait(3),
            Overflow::DropOldest => PushOutcome::Dropped { item: 1, reason: DropReason::Oldest },
            Overflow::DropNewest => PushOutcome::Dropped { item: 3, reason: DropReason::Newest },
            Overflow::Fail => PushOutcome::Rejected(3),
        };
        assert_eq!(outcome, expected, "{policy:?}");
        let left: Vec<u32> = std::iter::from_fn(|| ring.try_pop().ok()).collect();
        let expected_left = if policy == Overflow::DropOldest { vec![2, 3] } else { vec![1, 2] };
        assert_eq!(left, expected_left, "{policy:?}");
    }
}

#[test]
fn block_holds_off_under_pressure_and_others_do_not() {
    let mut ring = spsc::ArrayRing::<u8, 4>::new();
    assert_eq!(Overflow::Block.push(&mut ring, 1, true), PushOutcome::MustWait(1));
    for policy in [Overflow::DropOldest, Overflow::DropNewest, Overflow::Fail] {
        assert_eq!(policy.push(&mut ring, 1, true), PushOutcome::Pushed);
    }
    assert_eq!(ring.len(), 3);
}

#[test]
fn an_owned_spsc_ring_evicts_its_oldest() {
    let mut ring = spsc::ArrayRing::<u8, 2>::new();
    assert!(Queue::is_empty(&ring));
    ring.try_push(1).unwrap();
    ring.try_push(2).unwrap();
    assert_eq!(ring.force_push(3), Some(1));
    assert_eq!(ring.force_push(4), Some(2));
    let (_, mut rx) = ring.split();
    assert_eq!([rx.try_pop(), rx.try_pop()], [Ok(3), Ok(4)]);
}

// ---- token bucket ------------------------------------------------------------------------

#[test]
fn token_bucket_refills_at_its_rate_up_to_its_burst() {
    let ms = Duration::from_millis;
    let mut bucket = TokenBucket::new(1000, 3, Duration::ZERO).unwrap();
    assert_eq!(bucket.available(), 3);
    for _ in 0..3 {
        bucket.try_acquire(ms(0)).unwrap();
    }
    assert_eq!(bucket.try_acquire(ms(0)), Err(ms(1)));
    assert_eq!(bucket.try_acquire(Duration::from_micros(500)), Err(Duration::from_micros(500)));
    bucket.try_acquire(ms(1)).unwrap();
    // A long pause refills only up to the burst.
    bucket.try_acquire(ms(60_000)).unwrap();
    assert_eq!(bucket.available(), 2);
    // Time going backwards earns nothing and breaks nothing.
    bucket.try_acquire(ms(10)).unwrap();
    bucket.try_acquire(ms(10)).unwrap();
    assert!(bucket.try_acquire(ms(10)).is_err());
}

#[test]
fn token_bucket_rejects_zero_rate_and_burst() {
    for (rate, burst, field) in [(0, 1, "token_bucket.rate"), (1, 0, "token_bucket.burst")] {
        assert_eq!(
            TokenBucket::new(rate, burst, Duration::ZERO),
            Err(ConfigError::Invalid { field, expected: "at least 1" })
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(scaled(256, 8) as u32))]

    #[test]
    fn token_bucket_never_admits_more_than_burst_plus_rate_times_t(
        rate in 1u64..10_000,
        burst in 1u64..50,
        steps in proptest::collection::vec(0u64..5_000_000, 1..200),
    ) {
        let mut bucket = TokenBucket::new(rate, burst, Duration::ZERO).unwrap();
        let mut now = 0u64;
        let mut admitted = 0u64;
        for step in steps {
            now += step;
            while bucket.try_acquire(Duration::from_nanos(now)).is_ok() {
                admitted += 1;
            }
            // burst + rate · t, in whole tokens (t in nanoseconds).
            let bound = u128::from(burst) + u128::from(rate) * u128::from(now) / 1_000_000_000;
            prop_assert!(u128::from(admitted) <= bound, "{} > {}", admitted, bound);
        }
    }
}

// ---- retry schedule ----------------------------------------------------------------------

#[test]
fn retry_delays_grow_cap_and_stop() {
    let ms = Duration::from_millis;
    let schedule = RetrySchedule::new(ms(100), ms(1000), 6).unwrap().with_multiplier(3).unwrap();
    let delays: Vec<_> = (0..=7).map(|n| schedule.delay(n)).collect();
    assert_eq!(
        delays,
        [
            None,
            Some(ms(100)),
            Some(ms(300)),
            Some(ms(900)),
            Some(ms(1000)),
            Some(ms(1000)),
            Some(ms(1000)),
            None
        ]
    );
    assert_eq!(
        RetrySchedule::new(ms(1), ms(1), 1).unwrap().with_multiplier(0),
        Err(ConfigError::Invalid { field: "retry.multiplier", expected: "at least 1" })
    );
    // Huge attempt numbers saturate at the cap instead of overflowing.
    let long = RetrySchedule::new(ms(1), Duration::from_secs(3600), u32::MAX).unwrap();
    assert_eq!(long.delay(u32::MAX), Some(Duration::from_secs(3600)));
}

#[test]
fn jitter_is_seeded_bounded_and_spread() {
    let base = RetrySchedule::new(Duration::from_millis(64), Duration::from_secs(10), 3).unwrap();
    let draws: Vec<Duration> =
        (0..64).map(|seed| base.with_jitter(seed).delay(1).unwrap()).collect();
    for d in &draws {
        assert!(*d >= Duration::from_millis(32) && *d <= Duration::from_millis(64));
    }
    let distinct: std::collections::HashSet<_> = draws.iter().collect();
    assert!(distinct.len() > 32, "seeds should spread delays, got {}", distinct.len());
    assert_eq!(base.with_jitter(9).delay(2), base.with_jitter(9).delay(2));
}

// ---- circuit breaker ---------------------------------------------------------------------

fn breaker() -> CircuitBreaker {
    CircuitBreaker::new(BreakerConfig {
        threshold_percent: 20,
        window: Duration::from_secs(10),
        min_samples: 10,
        cooldown: Duration::from_secs(5),
        trial_successes: 2,
    })
    .unwrap()
}

#[test]
fn breaker_opens_only_above_the_threshold_with_enough_samples() {
    let t = Duration::from_secs(1);
    let mut b = breaker();
    // 2 failures in 10 is exactly 20 %: not above the threshold.
    for _ in 0..8 {
        assert_eq!(b.on_success(t), None);
    }
    assert_eq!(b.on_failure(t), None);
    assert_eq!(b.on_failure(t), None);
    assert_eq!(b.state(), BreakerState::Closed);
    // The 3rd failure makes 3 in 11 (27 %).
    assert_eq!(b.on_failure(t), Some(BreakerTransition::Opened));
    assert!(!b.allows());

    // Failures below the minimum sample count do not open it.
    let mut b = breaker();
    for _ in 0..9 {
        assert_eq!(b.on_failure(t), None);
    }
    assert_eq!(b.on_failure(t), Some(BreakerTransition::Opened));
}

#[test]
fn breaker_windows_forget_old_outcomes() {
    let mut b = breaker();
    for _ in 0..9 {
        b.on_failure(Duration::from_secs(1));
    }
    // A new window starts at 11 s: the 9 old failures are gone.
    assert_eq!(b.on_failure(Duration::from_secs(11)), None);
    assert_eq!(b.state(), BreakerState::Closed);
}

#[test]
fn breaker_goes_open_half_open_closed_and_back_to_open() {
    let s = Duration::from_secs;
    let mut b = breaker();
    for _ in 0..10 {
        b.on_failure(s(0));
    }
    assert_eq!(b.state(), BreakerState::Open);
    assert_eq!(b.poll(s(4)), None);
    assert_eq!(b.on_success(s(4)), None); // a late outcome while open changes nothing
    assert_eq!(b.poll(s(5)), Some(BreakerTransition::HalfOpened));
    assert!(b.allows());
    // A failed trial reopens it.
    assert_eq!(b.on_failure(s(5)), Some(BreakerTransition::Opened));
    assert_eq!(b.poll(s(10)), Some(BreakerTransition::HalfOpened));
    assert_eq!(b.on_success(s(10)), None);
    assert_eq!(b.on_success(s(10)), Some(BreakerTransition::Closed));
    assert_eq!(b.state(), BreakerState::Closed);
    // Closed with a fresh window.
    assert_eq!(b.on_failure(s(11)), None);
}

#[test]
fn every_breaker_field_is_validated() {
    let d = BreakerConfig::default();
    let cases = [
        (BreakerConfig { threshold_percent: 0, ..d }, "breaker.threshold_percent"),
        // More than 100 % of a window can never fail: the breaker would never open.
        (BreakerConfig { threshold_percent: 100, ..d }, "breaker.threshold_percent"),
        (BreakerConfig { threshold_percent: 101, ..d }, "breaker.threshold_percent"),
        (BreakerConfig { window: Duration::ZERO, ..d }, "breaker.window"),
        (BreakerConfig { min_samples: 0, ..d }, "breaker.min_samples"),
        (BreakerConfig { trial_successes: 0, ..d }, "breaker.trial_successes"),
    ];
    for (config, field) in cases {
        match CircuitBreaker::new(config) {
            Err(ConfigError::Invalid { field: got, .. }) => assert_eq!(got, field),
            other => panic!("{field}: {other:?}"),
        }
    }
}

// ---- reorder window ----------------------------------------------------------------------

#[test]
fn reorder_window_refuses_what_it_cannot_hold() {
    let mut w = ReorderWindow::<u32, 3>::starting_at(10);
    assert_eq!(w.accept(13, 0), Err(ReorderError::OutOfWindow(0)));
    assert_eq!(w.accept(9, 1), Err(ReorderError::Duplicate(1)));
    w.accept(12, 2).unwrap();
    assert_eq!(w.accept(12, 3), Err(ReorderError::Duplicate(3)));
    assert_eq!(w.pop_ready(), None);
    w.accept(10, 4).unwrap();
    w.accept(11, 5).unwrap();
    assert_eq!(w.len(), 3);
    let released: Vec<_> = std::iter::from_fn(|| w.pop_ready()).collect();
    assert_eq!(released, [(10, 4), (11, 5), (12, 2)]);
    assert!(w.is_empty() && w.fits(15) && !w.fits(16));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(scaled(256, 8) as u32))]

    /// Items arrive in any order in which no item is more than N - 1 ahead of the oldest one
    /// not yet released; the output is exactly the input sorted.
    #[test]
    fn reorder_window_outputs_exactly_the_sorted_input(
        len in 0u64..200,
        seed in any::<u64>(),
    ) {
        const N: usize = 8;
        // Shuffle within a sliding window: repeatedly pick any pending item that fits.
        let mut pending: Vec<u64> = (0..len).collect();
        let mut window = ReorderWindow::<u64, N>::new();
        let mut output = Vec::new();
        let mut state = seed;
        while !pending.is_empty() || !window.is_empty() {
            // The item due next is always pending (everything ready was popped), so it fits.
            let fitting: Vec<usize> = (0..pending.len()).filter(|&i| window.fits(pending[i])).collect();
            prop_assert!(!fitting.is_empty(), "the window is stuck");
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let pick = fitting[(state >> 33) as usize % fitting.len()];
            let seq = pending.swap_remove(pick);
            prop_assert!(window.accept(seq, seq * 10).is_ok());
            while let Some((seq, item)) = window.pop_ready() {
                prop_assert_eq!(item, seq * 10);
                output.push(seq);
            }
        }
        prop_assert_eq!(output, (0..len).collect::<Vec<_>>());
    }
}
