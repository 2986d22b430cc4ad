//! The cooperative driver: backpressure under Block, drop and reject accounting, hold buffer
//! overflow, errors, flush, and the accounting identities after every poll.

use backflow_core::driver::{Discard, Sink, StageDriver, StageStats};
use backflow_core::overflow::DropReason;
use backflow_core::ring::spsc::ArrayRing;
use backflow_core::stage::{self, Emit};
use backflow_core::{Overflow, WaterMarks};

/// Checks the module's identities for a driver holding `held` items.
fn assert_accounted(stats: &StageStats, held: usize) {
    assert_eq!(stats.received, stats.completed + stats.failed, "{stats:?}");
    assert_eq!(
        stats.emitted,
        stats.delivered + stats.dropped_newest + stats.rejected + stats.held_overflow + held as u64,
        "{stats:?}"
    );
}

#[test]
fn block_stops_taking_input_until_the_output_drains_to_the_low_mark() {
    let mut input = ArrayRing::<u32, 16>::new();
    input.split().0.push_slice(&(0..16).collect::<Vec<_>>());
    let mut output = ArrayRing::<u32, 10>::new(); // high 8, low 4
    let mut driver = StageDriver::<_, u32, 1>::new(
        |x: u32| x,
        WaterMarks::for_capacity(10).unwrap(),
        Overflow::Block,
    );
    let mut never = |_: u32, _: Discard| panic!("Block never discards");

    let poll = driver.poll(&mut input, &mut output, 100, &mut never, &mut |_| {});
    // Pressure turned on at the high mark (8): the 9th output is held, input stops.
    assert_eq!((poll.taken, poll.blocked), (9, true));
    assert_eq!((output.len(), driver.held(), input.len()), (8, 1, 7));
    assert_accounted(&driver.stats(), driver.held());

    // Drain to 5: still above the low mark, so the driver keeps holding.
    let (_, mut rx) = output.split();
    let first: Vec<u32> = (0..3).map(|_| rx.try_pop().unwrap()).collect();
    assert_eq!(first, [0, 1, 2]);
    let poll = driver.poll(&mut input, &mut output, 100, &mut never, &mut |_| {});
    assert_eq!((poll.taken, poll.blocked), (0, true));

    // Drain to 4 (the low mark): pressure turns off, held item and new input flow again.
    output.split().1.try_pop().unwrap();
    let poll = driver.poll(&mut input, &mut output, 100, &mut never, &mut |_| {});
    assert!(poll.taken > 0);
    assert_eq!(driver.stats().pressure_transitions, 3); // on, off, on again
    assert_accounted(&driver.stats(), driver.held());

    // Everything arrives, in order.
    let mut seen = first;
    seen.push(3);
    loop {
        let (_, mut rx) = output.split();
        while let Ok(x) = rx.try_pop() {
            seen.push(x);
        }
        if input.is_empty() && driver.held() == 0 {
            break;
        }
        driver.poll(&mut input, &mut output, 100, &mut never, &mut |_| {});
    }
    assert_eq!(seen, (0..16).collect::<Vec<_>>());
    assert_accounted(&driver.stats(), 0);
}

#[test]
fn drop_and_fail_policies_discard_with_reasons() {
    for (policy, discarded, left) in [
        (
            Overflow::DropNewest,
            vec![
                (3, Discard::Dropped(DropReason::Newest)),
                (4, Discard::Dropped(DropReason::Newest)),
            ],
            vec![1, 2],
        ),
        (
            Overflow::DropOldest,
            vec![
                (1, Discard::Dropped(DropReason::Oldest)),
                (2, Discard::Dropped(DropReason::Oldest)),
            ],
            vec![3, 4],
        ),
        (Overflow::Fail, vec![(3, Discard::Rejected), (4, Discard::Rejected)], vec![1, 2]),
    ] {
        let mut input = ArrayRing::<u32, 4>::new();
        input.split().0.push_slice(&[1, 2, 3, 4]);
        let mut output = ArrayRing::<u32, 2>::new();
        let mut driver =
            StageDriver::<_, u32, 1>::new(|x: u32| x, WaterMarks::for_capacity(2).unwrap(), policy);
        let mut got = Vec::new();
        let poll =
            driver.poll(&mut input, &mut output, 10, &mut |x, why| got.push((x, why)), &mut |_| {});
        assert_eq!((poll.taken, poll.blocked), (4, false), "{policy:?}");
        assert_eq!(got, discarded, "{policy:?}");
        let (_, mut rx) = output.split();
        assert_eq!([rx.try_pop().unwrap(), rx.try_pop().unwrap()].to_vec(), left, "{policy:?}");
        assert_accounted(&driver.stats(), driver.held());
    }
}

#[test]
fn fan_out_beyond_the_hold_buffer_is_counted_not_lost() {
    let mut input = ArrayRing::<u32, 4>::new();
    input.split().0.try_push(7).unwrap();
    let mut output = ArrayRing::<u32, 1>::new(); // high 1, low 0: full after one push
    let mut driver = StageDriver::<_, u32, 2>::new(
        stage::flat_map(|x: u32| [x, x + 1, x + 2, x + 3]),
        WaterMarks::for_capacity(1).unwrap(),
        Overflow::Block,
    );
    let mut discarded = Vec::new();
    driver.poll(&mut input, &mut output, 10, &mut |x, why| discarded.push((x, why)), &mut |_| {});
    // One delivered, two held, one over the hold buffer.
    assert_eq!(discarded, [(10, Discard::HoldFull)]);
    assert_eq!(driver.held(), 2);
    assert_accounted(&driver.stats(), driver.held());
}

#[test]
fn errors_go_to_the_error_hook_and_flush_drains_the_stage() {
    let mut input = ArrayRing::<u32, 8>::new();
    input.split().0.push_slice(&[1, 0, 2, 0, 3]);
    let checked = stage::from_fn(|x: u32, out: &mut dyn Emit<u32>| {
        if x == 0 {
            return Err("zero");
        }
        out.emit(x);
        Ok(())
    }) >> stage::batch::<u32, 2>();
    let mut driver =
        StageDriver::<_, _, 1>::new(checked, WaterMarks::for_capacity(1).unwrap(), Overflow::Block);
    let mut batches = Vec::new();
    let mut errors = Vec::new();
    driver.poll(
        &mut input,
        &mut Sink(|b: heapless::Vec<u32, 2>| batches.push(b.to_vec())),
        10,
        &mut |_, _| {},
        &mut |e| errors.push(e),
    );
    driver
        .flush(&mut Sink(|b: heapless::Vec<u32, 2>| batches.push(b.to_vec())), &mut |_, _| {})
        .unwrap();
    assert_eq!(batches, [vec![1, 2], vec![3]]);
    assert_eq!(errors.len(), 2);
    let stats = driver.stats();
    assert_eq!((stats.received, stats.completed, stats.failed, stats.emitted), (5, 3, 2, 2));
    assert_accounted(&stats, 0);
}

#[test]
fn budget_limits_one_poll() {
    let mut input = ArrayRing::<u32, 8>::new();
    input.split().0.push_slice(&[1, 2, 3, 4, 5]);
    let mut driver = StageDriver::<_, u32, 1>::new(
        |x: u32| x,
        WaterMarks::for_capacity(1).unwrap(),
        Overflow::Block,
    );
    let mut out = Vec::new();
    let poll = driver.poll(&mut input, &mut Sink(|x| out.push(x)), 2, &mut |_, _| {}, &mut |_| {});
    assert_eq!(poll.taken, 2);
    assert_eq!(input.len(), 3);
}
