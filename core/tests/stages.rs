//! Stages, combinators and fusion.

use core::convert::Infallible;

use backflow_core::stage::{self, Emit, Invalid, Stage, ThenError};

/// Runs `items` through `stage`, then flushes it, collecting every output.
fn run<In, S: Stage<In>>(
    stage: &mut S,
    items: impl IntoIterator<Item = In>,
) -> (Vec<S::Out>, Vec<S::Error>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for item in items {
        if let Err(e) = stage.process(item, &mut |x| out.push(x)) {
            errors.push(e);
        }
    }
    if let Err(e) = stage.flush(&mut |x| out.push(x)) {
        errors.push(e);
    }
    (out, errors)
}

#[test]
fn closures_are_map_stages() {
    let (out, errors) = run(&mut |x: u32| x * 3, 1..=3);
    assert_eq!(out, [3, 6, 9]);
    assert!(errors.is_empty());
}

#[test]
fn each_combinator_emits_what_it_should() {
    assert_eq!(run(&mut stage::map(|x: u8| x + 1), [1, 2]).0, [2, 3]);
    assert_eq!(run(&mut stage::filter(|x: &u8| *x > 1), [1, 2, 3]).0, [2, 3]);
    assert_eq!(run(&mut stage::filter_map(|x: u8| x.checked_sub(2)), [1, 2, 3]).0, [0, 1]);
    assert_eq!(run(&mut stage::flat_map(|x: u8| 0..x), [0, 1, 3]).0, [0, 0, 1, 2]);
    let mut seen = Vec::new();
    assert_eq!(run(&mut stage::inspect(|x: &u8| seen.push(*x)), [4, 5]).0, [4, 5]);
    assert_eq!(seen, [4, 5]);
}

#[test]
fn batch_emits_full_batches_and_the_rest_on_flush() {
    let (out, _) = run(&mut stage::batch::<u32, 3>(), 0..7);
    let out: Vec<Vec<u32>> = out.into_iter().map(|b| b.to_vec()).collect();
    assert_eq!(out, [vec![0, 1, 2], vec![3, 4, 5], vec![6]]);
    // Nothing held: flush emits nothing.
    let (out, _) = run(&mut stage::batch::<u32, 3>(), 0..3);
    assert_eq!(out.len(), 1);
}

#[test]
fn fold_emits_on_flush_and_starts_over() {
    let mut sum = stage::fold(0u32, |acc, x: u32| acc + x);
    assert_eq!(run(&mut sum, 1..=4).0, [10]);
    assert_eq!(run(&mut sum, [5]).0, [5]);
}

#[test]
fn validate_fails_with_the_item_inside() {
    let mut even = stage::validate(|x: &u8| if x.is_multiple_of(2) { Ok(()) } else { Err("odd") });
    let (out, errors) = run(&mut even, 0..4);
    assert_eq!(out, [0, 2]);
    assert_eq!(errors, [Invalid { item: 1, error: "odd" }, Invalid { item: 3, error: "odd" }]);
}

#[test]
fn from_fn_emits_many_and_fails() {
    let mut split = stage::from_fn(|s: &str, out: &mut dyn Emit<char>| {
        if s.is_empty() {
            return Err("empty");
        }
        s.chars().for_each(|c| out.emit(c));
        Ok(())
    });
    let (out, errors) = run(&mut split, ["ab", "", "c"]);
    assert_eq!(out, ['a', 'b', 'c']);
    assert_eq!(errors, ["empty"]);
}

#[test]
fn fusion_runs_both_stages_in_order_and_flushes_through() {
    // then() and >> build the same stage.
    let mut a = stage::flat_map(|x: u32| [x, x + 100]).then(stage::batch::<u32, 3>());
    let mut b = stage::flat_map(|x: u32| [x, x + 100]) >> stage::batch::<u32, 3>();
    let (out_a, _) = run(&mut a, [1, 2]);
    let (out_b, _) = run(&mut b, [1, 2]);
    let out_a: Vec<Vec<u32>> = out_a.into_iter().map(|v| v.to_vec()).collect();
    let out_b: Vec<Vec<u32>> = out_b.into_iter().map(|v| v.to_vec()).collect();
    assert_eq!(out_a, [vec![1, 101, 2], vec![102]]);
    assert_eq!(out_a, out_b);

    // A flushing first stage feeds the second, which is flushed after.
    let mut totals = stage::fold(0u32, |acc, x: u32| acc + x) >> stage::batch::<u32, 2>();
    let (out, _) = run(&mut totals, 1..=3);
    assert_eq!(out.into_iter().map(|v| v.to_vec()).collect::<Vec<_>>(), [vec![6]]);
}

#[test]
fn fusion_reports_which_half_failed_and_loses_no_item() {
    let first = stage::from_fn(|x: i32, out: &mut dyn Emit<i32>| {
        if x == 0 {
            return Err("zero");
        }
        out.emit(-x);
        out.emit(x);
        Ok(())
    });
    let second = stage::validate(|x: &i32| if *x > 0 { Ok(()) } else { Err("negative") });
    let mut fused = first >> second;
    let (out, errors) = run(&mut fused, [0, 5]);
    // For 5, the first half emits -5 (rejected) and 5 (still processed).
    assert_eq!(out, [5]);
    assert_eq!(
        errors,
        [ThenError::First("zero"), ThenError::Second(Invalid { item: -5, error: "negative" })]
    );
}

#[test]
fn then_error_unwraps_when_one_half_cannot_fail() {
    let mut fused = (|x: u8| x).then(stage::validate(|_: &u8| Err::<(), _>("no")));
    let err = fused.process(1, &mut |_| {}).unwrap_err();
    assert_eq!(err.into_second(), Invalid { item: 1, error: "no" });
    let first_only: ThenError<&str, Infallible> = ThenError::First("x");
    assert_eq!(first_only.into_first(), "x");
    assert_eq!(ThenError::<&str, &str>::Second("boom").to_string(), "boom");
}

#[test]
fn long_fused_chains_compose() {
    let mut chain = stage::map(|x: u32| x + 1)
        >> stage::filter(|x: &u32| x.is_multiple_of(2))
        >> stage::inspect(|_: &u32| {})
        >> stage::map(|x: u32| x / 2)
        >> stage::fold(0u32, |acc, x| acc + x);
    assert_eq!(run(&mut chain, 0..10).0, [1 + 2 + 3 + 4 + 5]);
}
