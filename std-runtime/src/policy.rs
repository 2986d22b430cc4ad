//! What a worker applies to each item besides its stage: hooks, retries, what happens to an
//! item that failed for good ([`OnFailure`]), and the [`Gate`] in front of a stage: its circuit
//! breaker and rate limit.

use std::fmt;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use backflow_core::breaker::{BreakerState, BreakerTransition, CircuitBreaker};
use backflow_core::{RetrySchedule, TokenBucket};

use crate::announce::Announcer;
use crate::control::Control;
use crate::event::Event;
use crate::hooks::{DeadLetterHook, DropHook, KeyFn, Look};
use crate::stats::CircuitGauge;
use crate::sync::Mutex;
use crate::weight::WeighFn;

/// What happens to an item once its attempts are used up.
pub(crate) enum OnFailure<T> {
    Skip,
    FailFast,
    DeadLetter(DeadLetterHook<T>),
}

impl<T> Clone for OnFailure<T> {
    fn clone(&self) -> Self {
        match self {
            Self::Skip => Self::Skip,
            Self::FailFast => Self::FailFast,
            Self::DeadLetter(hook) => Self::DeadLetter(Arc::clone(hook)),
        }
    }
}

/// The settings of one stage that depend on its input and output types, kept type-erased in
/// the builder's list and recovered by the stage's own attach step.
pub(crate) struct TypedSettings<In, Out> {
    pub(crate) on_drop: Option<DropHook<In>>,
    pub(crate) on_failure: OnFailure<In>,
    /// How to copy an item before processing it, when a retry or a dead letter needs it.
    pub(crate) clone: Option<fn(&In) -> In>,
    pub(crate) before: Option<Look<In>>,
    pub(crate) after: Option<Look<Out>>,
    pub(crate) key: Option<KeyFn<In>>,
    /// Weighs an item for the byte budget.
    pub(crate) weigh: Option<WeighFn<In>>,
}

impl<In, Out> Default for TypedSettings<In, Out> {
    fn default() -> Self {
        Self {
            on_drop: None,
            on_failure: OnFailure::Skip,
            clone: None,
            before: None,
            after: None,
            key: None,
            weigh: None,
        }
    }
}

/// What one worker applies to each item: the typed settings and the stage's gate.
pub(crate) struct Policy<In, Out> {
    pub(crate) on_failure: OnFailure<In>,
    pub(crate) clone: Option<fn(&In) -> In>,
    pub(crate) retry: Option<RetrySchedule>,
    pub(crate) before: Option<Look<In>>,
    pub(crate) after: Option<Look<Out>>,
    pub(crate) gate: Arc<Gate>,
    /// Progress is published item by item, for the stall watchdog.
    pub(crate) watched: bool,
}

impl<In, Out> Policy<In, Out> {
    /// Whether items can take the fast path: no per-item hook, retry, gate or failure
    /// handling beyond counting.
    pub(crate) fn is_plain(&self, control: &Control) -> bool {
        matches!(self.on_failure, OnFailure::Skip)
            && self.retry.is_none()
            && self.before.is_none()
            && self.gate.is_open_door()
            && !self.watched
            && !control.has_events()
    }
}

impl<In, Out> Clone for Policy<In, Out> {
    fn clone(&self) -> Self {
        Self {
            on_failure: self.on_failure.clone(),
            clone: self.clone,
            retry: self.retry,
            before: self.before.clone(),
            after: self.after.clone(),
            gate: Arc::clone(&self.gate),
            watched: self.watched,
        }
    }
}

/// What stands in front of a stage's workers: its circuit breaker and its rate limit, shared
/// by all of them.
#[derive(Debug)]
pub(crate) struct Gate {
    stage: Arc<str>,
    breaker: Option<Mutex<Breaker>>,
    limiter: Option<Mutex<TokenBucket>>,
    /// The breaker's state, for stats.
    circuit: Arc<CircuitGauge>,
    /// The breaker's transitions, announced after its lock is let go.
    transitions: Announcer<BreakerTransition>,
}

#[derive(Debug)]
struct Breaker {
    machine: CircuitBreaker,
    cooldown: Duration,
    /// When the breaker last opened, as [`Control::elapsed`].
    opened_at: Duration,
}

impl Gate {
    pub(crate) fn new(
        stage: Arc<str>,
        breaker: Option<(CircuitBreaker, Duration)>,
        limiter: Option<TokenBucket>,
    ) -> Self {
        let circuit = Arc::new(CircuitGauge::new(breaker.as_ref().map(|(b, _)| b.state())));
        Self {
            stage,
            breaker: breaker.map(|(machine, cooldown)| {
                Mutex::new(Breaker { machine, cooldown, opened_at: Duration::ZERO })
            }),
            limiter: limiter.map(Mutex::new),
            circuit,
            transitions: Announcer::new(),
        }
    }

    /// No breaker and no rate limit: every item goes straight through.
    pub(crate) fn is_open_door(&self) -> bool {
        self.breaker.is_none() && self.limiter.is_none()
    }

    /// The gauge that stats read the breaker's state from.
    pub(crate) fn circuit(&self) -> Arc<CircuitGauge> {
        Arc::clone(&self.circuit)
    }

    /// Waits until the breaker lets an item through and the rate limit has a token for it.
    /// Returns `false` if the pipeline was cancelled while waiting.
    pub(crate) fn admit(&self, control: &Control) -> bool {
        if let Some(breaker) = &self.breaker {
            loop {
                let now = control.elapsed();
                let mut b = breaker.lock().unwrap_or_else(PoisonError::into_inner);
                let posted = self.post(b.machine.poll(now));
                let (allows, reopens) =
                    (b.machine.allows(), b.opened_at.saturating_add(b.cooldown));
                drop(b);
                if posted {
                    self.announce(control);
                }
                if allows {
                    break;
                }
                if !control.sleep(reopens.saturating_sub(now)) {
                    return false;
                }
            }
        }
        if let Some(limiter) = &self.limiter {
            loop {
                let wait = limiter
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .try_acquire(control.elapsed());
                match wait {
                    Ok(()) => break,
                    Err(wait) if !control.sleep(wait) => return false,
                    Err(_) => {}
                }
            }
        }
        true
    }

    /// Feeds one attempt's outcome to the breaker.
    pub(crate) fn record(&self, success: bool, control: &Control) {
        let Some(breaker) = &self.breaker else { return };
        let now = control.elapsed();
        let mut b = breaker.lock().unwrap_or_else(PoisonError::into_inner);
        let transition =
            if success { b.machine.on_success(now) } else { b.machine.on_failure(now) };
        if transition == Some(BreakerTransition::Opened) {
            b.opened_at = now;
        }
        let posted = self.post(transition);
        drop(b);
        if posted {
            self.announce(control);
        }
    }

    /// Sets the breaker's gauge and posts the transition, if there is one; returns whether
    /// there was. Call it under the breaker's lock, so that transitions are announced in the
    /// order they happened, and [`announce`](Self::announce) after.
    fn post(&self, transition: Option<BreakerTransition>) -> bool {
        let Some(transition) = transition else { return false };
        self.circuit.set(match transition {
            BreakerTransition::Opened => BreakerState::Open,
            BreakerTransition::HalfOpened => BreakerState::HalfOpen,
            BreakerTransition::Closed => BreakerState::Closed,
        });
        self.transitions.post(transition);
        true
    }

    /// Announces the posted transitions. Call it with no lock held: the event handler may
    /// call back into the pipeline.
    fn announce(&self, control: &Control) {
        let stage = &*self.stage;
        self.transitions.deliver(|transition| {
            control.emit(&match transition {
                BreakerTransition::Opened => Event::CircuitOpened { stage },
                BreakerTransition::HalfOpened => Event::CircuitHalfOpen { stage },
                BreakerTransition::Closed => Event::CircuitClosed { stage },
            });
        });
    }
}

/// A failed attempt: the stage's error or a panic's message.
pub(crate) enum Failure<E> {
    Error(E),
    Panic(String),
}

impl<E: fmt::Display> fmt::Display for Failure<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Error(error) => error.fmt(f),
            Self::Panic(message) => write!(f, "panicked: {message}"),
        }
    }
}
