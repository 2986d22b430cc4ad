//! [`Scaler`]: moves worker threads, within a budget, to the stage that limits a pipeline's
//! throughput.
//!
//! Once per interval the caller measures each stage (a [`Sample`]): the share of its workers'
//! time spent processing items (`busy`), and the share of time the threads feeding it spent
//! waiting for room in its queue (`upstream_waiting`). [`Scaler::observe`] takes one sample
//! per stage, with the stages' worker counts and ranges ([`StageWorkers`]), and returns at
//! most one [`Move`]:
//!
//! - **A bottleneck gets a worker.** A stage busy at least
//!   [`busy_high_percent`](ScalerConfig::busy_high_percent) of the time while its producers wait
//!   at least [`upstream_percent`](ScalerConfig::upstream_percent) of the time limits the
//!   pipeline: it gets one more worker ([`Move::Add`]) while the budget allows and it is below
//!   its maximum. Of several, the busiest.
//! - **A spare worker goes.** A stage that would still be busy at most
//!   [`busy_low_percent`](ScalerConfig::busy_low_percent) of the time with one worker fewer
//!   (its busy share × w / (w − 1)) has one to spare: it gives it up ([`Move::Remove`]), never
//!   going below its minimum. Its workers spend the rest of their time idle, waiting for
//!   items, or blocked by a stage downstream: either way, they are not what limits it.
//! - **With the budget full, a worker moves** from the stage with the most to spare to the
//!   bottleneck ([`Move::Shift`]).
//!
//! It settles instead of oscillating:
//!
//! - **Hysteresis.** Taking a worker away needs the stage's predicted busy share at most
//!   `busy_low_percent`, adding one needs it at least `busy_high_percent`, and low is below
//!   high. Under a steady load, a stage that just got a worker is exactly as busy as before
//!   when counted with one fewer (at least high, so not spare), and a stage that just gave one
//!   up is at most low (so not a bottleneck). In a chain whose stages' throughput is
//!   proportional to their workers, the pipeline's throughput never goes down: a stage gives a
//!   worker up only with room to spare after it.
//! - **Persistence.** A condition must hold on [`samples`](ScalerConfig::samples) consecutive
//!   samples before it moves anything.
//! - **Cool-down.** After a move, the next [`cooldown`](ScalerConfig::cooldown) samples are
//!   ignored: the shares measured while a worker starts or stops are not steady.
//!
//! The scaler keeps no clock and allocates nothing: time is the sequence of calls, one per
//! interval, and the per-stage state lives in the caller's slice of [`StageWorkers`].
//!
//! # Examples
//!
//! ```
//! use backflow_core::scaler::{Move, Sample, Scaler, ScalerConfig, StageWorkers};
//!
//! // Three stages of 1 to 4 workers each, 4 threads in all; the middle one is slow.
//! let mut stages = [StageWorkers::new(1, 4)?; 3];
//! let config = ScalerConfig { samples: 2, cooldown: 1, ..ScalerConfig::default() };
//! let mut scaler = Scaler::new(config, 4, &stages)?;
//! let samples = [
//!     Sample { busy: 0.05, upstream_waiting: 1.0 },  // feeds the slow stage: blocked
//!     Sample { busy: 1.0, upstream_waiting: 0.95 },  // busy all the time, its feeder waits
//!     Sample { busy: 0.05, upstream_waiting: 0.0 },  // idle, waiting for items
//! ];
//! assert_eq!(scaler.observe(&mut stages, &samples), None); // once is not enough
//! assert_eq!(scaler.observe(&mut stages, &samples), Some(Move::Add { stage: 1 }));
//! assert_eq!(stages.map(|s| s.workers()), [1, 2, 1]);
//! assert_eq!(scaler.observe(&mut stages, &samples), None); // cooling down
//! # Ok::<(), backflow_core::ConfigError>(())
//! ```

use core::fmt;

use crate::ConfigError;

/// Settings of a [`Scaler`]: its thresholds (percentages of a stage's time) and how long a
/// condition must hold.
///
/// # Examples
///
/// ```
/// let config = backflow_core::scaler::ScalerConfig::default();
/// assert_eq!((config.busy_high_percent, config.busy_low_percent), (80, 60));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScalerConfig {
    /// A stage busy at least this share of the time (with its producers waiting) is a
    /// bottleneck (1–100; default 80).
    pub busy_high_percent: u8,
    /// A stage that would be busy at most this share of the time with one worker fewer has
    /// one to spare (below `busy_high_percent`; default 60).
    pub busy_low_percent: u8,
    /// A stage counts as a bottleneck only while the threads feeding it wait for room in its
    /// queue at least this share of the time (1–100; default 20).
    pub upstream_percent: u8,
    /// Consecutive samples a condition must hold on before it moves a worker (at least 1;
    /// default 3).
    pub samples: u32,
    /// Samples ignored after a move (default 2).
    pub cooldown: u32,
}

impl Default for ScalerConfig {
    fn default() -> Self {
        Self {
            busy_high_percent: 80,
            busy_low_percent: 60,
            upstream_percent: 20,
            samples: 3,
            cooldown: 2,
        }
    }
}

impl ScalerConfig {
    /// Checks every field.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming the first field out of range.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::{ConfigError, scaler::ScalerConfig};
    ///
    /// let bad = ScalerConfig { busy_low_percent: 80, ..ScalerConfig::default() };
    /// assert!(matches!(
    ///     bad.validate(),
    ///     Err(ConfigError::Invalid { field: "scaler.busy_low_percent", .. })
    /// ));
    /// ```
    pub const fn validate(&self) -> Result<(), ConfigError> {
        let (field, expected) = if self.busy_high_percent == 0 || self.busy_high_percent > 100 {
            ("scaler.busy_high_percent", "between 1 and 100")
        } else if self.busy_low_percent >= self.busy_high_percent {
            ("scaler.busy_low_percent", "below busy_high_percent")
        } else if self.upstream_percent == 0 || self.upstream_percent > 100 {
            ("scaler.upstream_percent", "between 1 and 100")
        } else if self.samples == 0 {
            ("scaler.samples", "at least 1")
        } else {
            return Ok(());
        };
        Err(ConfigError::Invalid { field, expected })
    }
}

/// One stage measured over one interval. Shares are fractions of the interval, `0.0..=1.0`;
/// values outside are clamped, and NaN counts as `0.0`.
///
/// # Examples
///
/// ```
/// use backflow_core::scaler::Sample;
///
/// // 2 workers over 200 ms (400 ms of worker time), 360 ms of it processing items.
/// let sample = Sample { busy: 360.0 / 400.0, upstream_waiting: 0.5 };
/// assert!(sample.busy > 0.8);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// The share of the stage's worker time spent processing items.
    pub busy: f64,
    /// The share of the time the threads feeding the stage spent waiting for room in its
    /// queue (for the first stage, whoever pushes into the pipeline).
    pub upstream_waiting: f64,
}

/// A share in `0.0..=1.0`, NaN as `0.0`.
fn share(x: f64) -> f64 {
    if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) }
}

/// Whether `share` is at least `percent` %.
fn at_least(share: f64, percent: u8) -> bool {
    share * 100.0 >= f64::from(percent)
}

/// A stage's workers as the [`Scaler`] sees them: how many it has, its range, and how long
/// each condition has held.
///
/// # Examples
///
/// ```
/// use backflow_core::scaler::StageWorkers;
///
/// let stage = StageWorkers::new(1, 4)?;
/// assert_eq!((stage.workers(), stage.min(), stage.max()), (1, 1, 4));
/// assert_eq!(StageWorkers::fixed(2)?.max(), 2);
/// # Ok::<(), backflow_core::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageWorkers {
    min: usize,
    max: usize,
    workers: usize,
    /// Consecutive samples on which the stage was a bottleneck.
    hot: u32,
    /// Consecutive samples on which it had a worker to spare.
    spare: u32,
}

impl StageWorkers {
    /// A stage that may run `min..=max` workers, starting with `min`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming `workers.min` if `min` is zero, `workers.max` if it is
    /// below `min`.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::{ConfigError, scaler::StageWorkers};
    ///
    /// assert!(matches!(
    ///     StageWorkers::new(3, 2),
    ///     Err(ConfigError::Invalid { field: "workers.max", .. })
    /// ));
    /// ```
    pub const fn new(min: usize, max: usize) -> Result<Self, ConfigError> {
        if min == 0 {
            return Err(ConfigError::Invalid { field: "workers.min", expected: "at least 1" });
        }
        if max < min {
            return Err(ConfigError::Invalid { field: "workers.max", expected: "at least min" });
        }
        Ok(Self { min, max, workers: min, hot: 0, spare: 0 })
    }

    /// A stage with exactly `workers` workers, which the scaler counts against the budget and
    /// never moves.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming `workers.min` if `workers` is zero.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::scaler::StageWorkers;
    ///
    /// assert_eq!(StageWorkers::fixed(3)?.workers(), 3);
    /// assert!(StageWorkers::fixed(0).is_err());
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub const fn fixed(workers: usize) -> Result<Self, ConfigError> {
        Self::new(workers, workers)
    }

    /// Its workers now.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(backflow_core::scaler::StageWorkers::new(2, 5)?.workers(), 2);
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub const fn workers(&self) -> usize {
        self.workers
    }

    /// The fewest workers it may have.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(backflow_core::scaler::StageWorkers::new(2, 5)?.min(), 2);
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub const fn min(&self) -> usize {
        self.min
    }

    /// The most workers it may have.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(backflow_core::scaler::StageWorkers::new(2, 5)?.max(), 5);
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub const fn max(&self) -> usize {
        self.max
    }

    /// Its busy share with one worker fewer, if it has more than one.
    fn busy_with_one_fewer(&self, busy: f64) -> Option<f64> {
        (self.workers > 1).then(|| busy * self.workers as f64 / (self.workers - 1) as f64)
    }
}

/// Why a stage's worker count changed.
///
/// # Examples
///
/// ```
/// use backflow_core::scaler::Reason;
///
/// assert_eq!(Reason::Bottleneck.to_string(), "bottleneck");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// It limited the pipeline: busy while its producers waited. It got a worker.
    Bottleneck,
    /// It had a worker to spare: busy little enough to do with one fewer. It gave one up.
    Spare,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Bottleneck => "bottleneck",
            Self::Spare => "spare",
        })
    }
}

/// A change of worker counts, by stage index.
///
/// # Examples
///
/// ```
/// use backflow_core::scaler::{Move, Reason};
///
/// let shift = Move::Shift { from: 2, to: 1 };
/// assert_eq!(shift.removed(), Some(2));
/// assert_eq!(shift.added(), Some(1));
/// assert_eq!(Move::Add { stage: 0 }.removed(), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Move {
    /// One more worker for `stage`, a bottleneck; the budget had room.
    Add {
        /// The stage.
        stage: usize,
    },
    /// One worker fewer for `stage`, which had one to spare.
    Remove {
        /// The stage.
        stage: usize,
    },
    /// The budget is full: one worker fewer for `from`, which had one to spare, and one more
    /// for `to`, a bottleneck.
    Shift {
        /// The stage that gives a worker up.
        from: usize,
        /// The stage that gets it.
        to: usize,
    },
}

impl Move {
    /// The stage that loses a worker, if any (with [`Reason::Spare`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::scaler::Move;
    ///
    /// assert_eq!(Move::Remove { stage: 3 }.removed(), Some(3));
    /// ```
    pub const fn removed(self) -> Option<usize> {
        match self {
            Self::Add { .. } => None,
            Self::Remove { stage } | Self::Shift { from: stage, .. } => Some(stage),
        }
    }

    /// The stage that gets a worker, if any (with [`Reason::Bottleneck`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::scaler::Move;
    ///
    /// assert_eq!(Move::Add { stage: 1 }.added(), Some(1));
    /// ```
    pub const fn added(self) -> Option<usize> {
        match self {
            Self::Remove { .. } => None,
            Self::Add { stage } | Self::Shift { to: stage, .. } => Some(stage),
        }
    }
}

/// The scaling state machine; see the [module docs](self).
///
/// # Examples
///
/// ```
/// use backflow_core::scaler::{Move, Sample, Scaler, ScalerConfig, StageWorkers};
///
/// let config = ScalerConfig { samples: 1, ..ScalerConfig::default() };
/// let mut stages = [StageWorkers::new(1, 3)?];
/// let mut scaler = Scaler::new(config, 3, &stages)?;
/// let busy = [Sample { busy: 0.95, upstream_waiting: 0.9 }];
/// assert_eq!(scaler.observe(&mut stages, &busy), Some(Move::Add { stage: 0 }));
/// # Ok::<(), backflow_core::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scaler {
    config: ScalerConfig,
    budget: usize,
    /// Samples still to ignore after the last move.
    quiet: u32,
}

impl Scaler {
    /// A scaler that keeps the workers of `stages` together within `budget` threads.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] from [`ScalerConfig::validate`], or naming `threads` when the
    /// budget is below what the stages have now.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::{ConfigError, scaler::{Scaler, ScalerConfig, StageWorkers}};
    ///
    /// let stages = [StageWorkers::new(2, 4)?, StageWorkers::fixed(1)?];
    /// assert!(Scaler::new(ScalerConfig::default(), 3, &stages).is_ok());
    /// assert!(matches!(
    ///     Scaler::new(ScalerConfig::default(), 2, &stages),
    ///     Err(ConfigError::Invalid { field: "threads", .. })
    /// ));
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn new(
        config: ScalerConfig,
        budget: usize,
        stages: &[StageWorkers],
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        if total(stages) > budget {
            return Err(ConfigError::Invalid {
                field: "threads",
                expected: "at least the stages' workers together",
            });
        }
        Ok(Self { config, budget, quiet: 0 })
    }

    /// The most workers the stages may have together.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::scaler::{Scaler, ScalerConfig, StageWorkers};
    ///
    /// let scaler = Scaler::new(ScalerConfig::default(), 8, &[StageWorkers::new(1, 8)?])?;
    /// assert_eq!(scaler.budget(), 8);
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub const fn budget(&self) -> usize {
        self.budget
    }

    /// Takes one interval's samples, one per stage in the order of `stages`, and returns the
    /// move to make, if any, already applied to `stages`. Extra samples or stages (the two
    /// slices of different lengths) are ignored, but every stage counts against the budget.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::scaler::{Move, Sample, Scaler, ScalerConfig, StageWorkers};
    ///
    /// let config = ScalerConfig { samples: 1, cooldown: 0, ..ScalerConfig::default() };
    /// let mut stages = [StageWorkers::new(1, 2)?, StageWorkers::new(1, 2)?];
    /// let mut scaler = Scaler::new(config, 3, &stages)?;
    /// let first_slow = [Sample { busy: 1.0, upstream_waiting: 1.0 }, Sample::default()];
    /// assert_eq!(scaler.observe(&mut stages, &first_slow), Some(Move::Add { stage: 0 }));
    /// // Then the second one is slow, the budget is full, the first is idle: a worker moves.
    /// let second_slow = [Sample::default(), Sample { busy: 1.0, upstream_waiting: 1.0 }];
    /// assert_eq!(scaler.observe(&mut stages, &second_slow), Some(Move::Shift { from: 0, to: 1 }));
    /// assert_eq!(stages.map(|s| s.workers()), [1, 2]);
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub fn observe(&mut self, stages: &mut [StageWorkers], samples: &[Sample]) -> Option<Move> {
        if self.quiet > 0 {
            self.quiet -= 1;
            return None;
        }
        let config = self.config;
        for (stage, sample) in stages.iter_mut().zip(samples) {
            let (busy, waiting) = (share(sample.busy), share(sample.upstream_waiting));
            let hot = at_least(busy, config.busy_high_percent)
                && at_least(waiting, config.upstream_percent);
            let spare = stage.workers > stage.min
                && stage
                    .busy_with_one_fewer(busy)
                    .is_some_and(|busy| busy * 100.0 <= f64::from(config.busy_low_percent));
            stage.hot = if hot { stage.hot.saturating_add(1) } else { 0 };
            stage.spare = if spare { stage.spare.saturating_add(1) } else { 0 };
        }
        let held = config.samples;
        let busy = |i: usize| share(samples[i].busy);
        let measured = stages.len().min(samples.len());
        // The busiest bottleneck with room below its maximum (the first of equals).
        let bottleneck = (0..measured)
            .filter(|&i| stages[i].hot >= held && stages[i].workers < stages[i].max)
            .fold(None, |best: Option<usize>, i| match best {
                Some(b) if busy(b) >= busy(i) => Some(b),
                _ => Some(i),
            });
        // The stage with the most to spare: the least busy with one worker fewer.
        let one_fewer = |i: usize| stages[i].busy_with_one_fewer(busy(i)).unwrap_or(f64::MAX);
        let donor = (0..measured)
            .filter(|&i| stages[i].spare >= held && Some(i) != bottleneck)
            .fold(None, |best: Option<usize>, i| match best {
                Some(b) if one_fewer(b) <= one_fewer(i) => Some(b),
                _ => Some(i),
            });
        let chosen = match (bottleneck, donor) {
            (Some(stage), _) if total(stages) < self.budget => Move::Add { stage },
            (Some(to), Some(from)) => Move::Shift { from, to },
            (Some(_), None) | (None, None) => return None,
            (None, Some(stage)) => Move::Remove { stage },
        };
        apply(stages, chosen, false);
        for stage in stages.iter_mut() {
            stage.hot = 0;
            stage.spare = 0;
        }
        self.quiet = config.cooldown;
        Some(chosen)
    }

    /// Undoes `applied`, a move [`observe`](Self::observe) returned that the caller could not
    /// make (a worker thread that would not start, say): the counts go back to what they were.
    /// The cool-down stays.
    ///
    /// # Examples
    ///
    /// ```
    /// use backflow_core::scaler::{Move, Sample, Scaler, ScalerConfig, StageWorkers};
    ///
    /// let config = ScalerConfig { samples: 1, ..ScalerConfig::default() };
    /// let mut stages = [StageWorkers::new(1, 2)?];
    /// let mut scaler = Scaler::new(config, 2, &stages)?;
    /// let hot = [Sample { busy: 1.0, upstream_waiting: 1.0 }];
    /// let chosen = scaler.observe(&mut stages, &hot).unwrap();
    /// scaler.revert(&mut stages, chosen);
    /// assert_eq!(stages[0].workers(), 1);
    /// # Ok::<(), backflow_core::ConfigError>(())
    /// ```
    pub fn revert(&mut self, stages: &mut [StageWorkers], applied: Move) {
        apply(stages, applied, true);
    }
}

/// Every stage's workers together.
fn total(stages: &[StageWorkers]) -> usize {
    stages.iter().fold(0, |sum, s| sum.saturating_add(s.workers))
}

/// Applies `chosen` to the counts (or undoes it), within each stage's range.
fn apply(stages: &mut [StageWorkers], chosen: Move, undo: bool) {
    let (mut fewer, mut more) = (chosen.removed(), chosen.added());
    if undo {
        core::mem::swap(&mut fewer, &mut more);
    }
    if let Some(stage) = fewer.and_then(|i| stages.get_mut(i)) {
        stage.workers = stage.workers.saturating_sub(1).max(stage.min);
    }
    if let Some(stage) = more.and_then(|i| stages.get_mut(i)) {
        stage.workers = stage.workers.saturating_add(1).min(stage.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOT: Sample = Sample { busy: 1.0, upstream_waiting: 1.0 };
    const IDLE: Sample = Sample { busy: 0.0, upstream_waiting: 0.0 };

    fn config(samples: u32, cooldown: u32) -> ScalerConfig {
        ScalerConfig { samples, cooldown, ..ScalerConfig::default() }
    }

    fn counts(stages: &[StageWorkers]) -> [usize; 3] {
        [stages[0].workers(), stages[1].workers(), stages[2].workers()]
    }

    #[test]
    fn a_bottleneck_gets_a_worker_only_after_enough_samples_in_a_row() {
        let mut stages = [StageWorkers::new(1, 4).unwrap(); 3];
        let mut scaler = Scaler::new(config(3, 0), 4, &stages).unwrap();
        let samples = [IDLE, HOT, IDLE];
        assert_eq!(scaler.observe(&mut stages, &samples), None);
        assert_eq!(scaler.observe(&mut stages, &samples), None);
        // An interruption starts the count again.
        assert_eq!(scaler.observe(&mut stages, &[IDLE; 3]), None);
        assert_eq!(scaler.observe(&mut stages, &samples), None);
        assert_eq!(scaler.observe(&mut stages, &samples), None);
        assert_eq!(scaler.observe(&mut stages, &samples), Some(Move::Add { stage: 1 }));
        assert_eq!(counts(&stages), [1, 2, 1]);
    }

    #[test]
    fn a_busy_stage_whose_producers_do_not_wait_is_not_a_bottleneck() {
        // Busy all the time, but items arrive no faster: another worker would change nothing.
        let mut stages = [StageWorkers::new(1, 4).unwrap()];
        let mut scaler = Scaler::new(config(1, 0), 4, &stages).unwrap();
        let input_bound = [Sample { busy: 0.99, upstream_waiting: 0.1 }];
        for _ in 0..10 {
            assert_eq!(scaler.observe(&mut stages, &input_bound), None);
        }
        // A waiting producer but a stage below the high mark: not one either.
        let blocked_elsewhere = [Sample { busy: 0.7, upstream_waiting: 1.0 }];
        assert_eq!(scaler.observe(&mut stages, &blocked_elsewhere), None);
    }

    #[test]
    fn after_a_move_nothing_moves_for_the_cooldown() {
        let mut stages = [StageWorkers::new(1, 4).unwrap(); 3];
        let mut scaler = Scaler::new(config(1, 2), 5, &stages).unwrap();
        let samples = [IDLE, HOT, IDLE];
        assert_eq!(scaler.observe(&mut stages, &samples), Some(Move::Add { stage: 1 }));
        assert_eq!(scaler.observe(&mut stages, &samples), None);
        assert_eq!(scaler.observe(&mut stages, &samples), None);
        assert_eq!(scaler.observe(&mut stages, &samples), Some(Move::Add { stage: 1 }));
        assert_eq!(counts(&stages), [1, 3, 1]);
    }

    #[test]
    fn never_past_the_budget_or_a_maximum() {
        let mut stages = [StageWorkers::new(1, 2).unwrap(), StageWorkers::new(1, 9).unwrap()];
        let mut scaler = Scaler::new(config(1, 0), 4, &stages).unwrap();
        let both_hot = [HOT, HOT];
        let mut moves = 0;
        while scaler.observe(&mut stages, &both_hot).is_some() {
            moves += 1;
        }
        assert_eq!(moves, 2);
        assert_eq!((stages[0].workers(), stages[1].workers()), (2, 2));
        // Full: nothing to spare anywhere, so nothing moves however long it lasts.
        for _ in 0..10 {
            assert_eq!(scaler.observe(&mut stages, &both_hot), None);
        }
    }

    #[test]
    fn a_spare_worker_goes_only_if_the_stage_keeps_up_without_it_and_never_below_min() {
        let mut stages = [StageWorkers::new(2, 4).unwrap()];
        stages[0].workers = 4;
        let mut scaler = Scaler::new(config(1, 0), 4, &stages).unwrap();
        // 50 % busy on 4 workers is 67 % on 3: above the low mark (60 %), keep them all.
        let half = [Sample { busy: 0.5, upstream_waiting: 0.0 }];
        assert_eq!(scaler.observe(&mut stages, &half), None);
        // 45 % on 4 is 60 % on 3: one goes.
        let less = [Sample { busy: 0.45, upstream_waiting: 0.0 }];
        assert_eq!(scaler.observe(&mut stages, &less), Some(Move::Remove { stage: 0 }));
        let idle = [IDLE];
        assert_eq!(scaler.observe(&mut stages, &idle), Some(Move::Remove { stage: 0 }));
        assert_eq!(scaler.observe(&mut stages, &idle), None);
        assert_eq!(stages[0].workers(), 2);
    }

    #[test]
    fn with_the_budget_full_a_worker_moves_from_the_stage_with_most_to_spare() {
        let mut stages = [StageWorkers::new(1, 4).unwrap(); 3];
        stages[0].workers = 2;
        stages[2].workers = 2;
        let mut scaler = Scaler::new(config(1, 0), 5, &stages).unwrap();
        let samples = [
            Sample { busy: 0.25, upstream_waiting: 1.0 }, // 50 % with one fewer
            HOT,
            Sample { busy: 0.1, upstream_waiting: 0.0 }, // 20 % with one fewer: the donor
        ];
        assert_eq!(scaler.observe(&mut stages, &samples), Some(Move::Shift { from: 2, to: 1 }));
        assert_eq!(counts(&stages), [2, 2, 1]);
        // Stage 2 is at its minimum now: stage 0 gives.
        let samples = [samples[0], HOT, IDLE];
        assert_eq!(scaler.observe(&mut stages, &samples), Some(Move::Shift { from: 0, to: 1 }));
        assert_eq!(counts(&stages), [1, 3, 1]);
        assert_eq!(scaler.observe(&mut stages, &samples), None);
    }

    #[test]
    fn of_two_bottlenecks_the_busiest_gets_the_worker() {
        let mut stages = [StageWorkers::new(1, 4).unwrap(); 3];
        let mut scaler = Scaler::new(config(1, 0), 6, &stages).unwrap();
        let samples = [Sample { busy: 0.9, upstream_waiting: 1.0 }, HOT, IDLE];
        assert_eq!(scaler.observe(&mut stages, &samples), Some(Move::Add { stage: 1 }));
    }

    #[test]
    fn nonsense_shares_are_clamped() {
        let mut stages = [StageWorkers::new(1, 2).unwrap()];
        let mut scaler = Scaler::new(config(1, 0), 2, &stages).unwrap();
        let nan = [Sample { busy: f64::NAN, upstream_waiting: f64::INFINITY }];
        assert_eq!(scaler.observe(&mut stages, &nan), None);
        let over = [Sample { busy: 7.0, upstream_waiting: 2.0 }];
        assert_eq!(scaler.observe(&mut stages, &over), Some(Move::Add { stage: 0 }));
        let negative = [Sample { busy: -1.0, upstream_waiting: -1.0 }];
        assert_eq!(scaler.observe(&mut stages, &negative), Some(Move::Remove { stage: 0 }));
    }

    #[test]
    fn revert_restores_the_counts() {
        let mut stages = [StageWorkers::new(1, 4).unwrap(); 2];
        stages[0].workers = 2;
        let before = stages;
        let mut scaler = Scaler::new(config(1, 0), 3, &stages).unwrap();
        let chosen = scaler.observe(&mut stages, &[IDLE, HOT]).unwrap();
        assert_eq!(chosen, Move::Shift { from: 0, to: 1 });
        scaler.revert(&mut stages, chosen);
        assert_eq!(stages.map(|s| s.workers()), before.map(|s| s.workers()));
    }

    #[test]
    fn every_setting_is_checked_and_named() {
        let field = |config: ScalerConfig| match config.validate() {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let default = ScalerConfig::default();
        assert_eq!(default.validate(), Ok(()));
        assert_eq!(
            field(ScalerConfig { busy_high_percent: 0, ..default }),
            "scaler.busy_high_percent"
        );
        assert_eq!(
            field(ScalerConfig { busy_high_percent: 101, ..default }),
            "scaler.busy_high_percent"
        );
        assert_eq!(
            field(ScalerConfig { busy_low_percent: 90, ..default }),
            "scaler.busy_low_percent"
        );
        assert_eq!(
            field(ScalerConfig { upstream_percent: 0, ..default }),
            "scaler.upstream_percent"
        );
        assert_eq!(field(ScalerConfig { samples: 0, ..default }), "scaler.samples");
        assert!(matches!(
            StageWorkers::new(0, 3),
            Err(ConfigError::Invalid { field: "workers.min", .. })
        ));
        let stages = [StageWorkers::new(2, 3).unwrap(); 2];
        assert!(Scaler::new(default, 4, &stages).is_ok());
        assert!(Scaler::new(default, 3, &stages).is_err());
    }
}
