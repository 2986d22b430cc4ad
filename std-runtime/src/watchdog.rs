//! Stall detection: a thread that watches the stages with
//! [`Builder::stall_after`](crate::Builder::stall_after) and raises [`Event::Stalled`] when one
//! has items queued and finishes none for that long.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::control::{Control, deadline_after};
use crate::event::Event;
use crate::link::LinkView;
use crate::plan::Watched;
use crate::stats::StageShared;
use crate::sync::thread::{self, JoinHandle};

/// One watched stage and what the watchdog last saw of it.
struct Watch {
    shared: Arc<StageShared>,
    view: Arc<dyn LinkView>,
    after: Duration,
    finished: u64,
    /// When its count of finished items last moved (or its queue was last empty).
    moved_at: Instant,
    reported: bool,
}

impl Watch {
    /// Looks at the stage at `now`; returns the stall to report, if one just began.
    fn look(&mut self, now: Instant) -> Option<(usize, Duration)> {
        let finished = self.shared.finished();
        let queued = self.view.len();
        if finished != self.finished || queued == 0 {
            self.finished = finished;
            self.moved_at = now;
            self.reported = false;
            return None;
        }
        let idle = now.saturating_duration_since(self.moved_at);
        if idle < self.after || self.reported {
            return None;
        }
        self.reported = true;
        Some((queued, idle))
    }
}

/// Starts the watchdog for `watched` stages; it runs until every worker has exited or the
/// pipeline is cancelled.
pub(crate) fn start(
    control: &Arc<Control>,
    watched: &[Watched],
    stages: &[Arc<StageShared>],
    views: &[Arc<dyn LinkView>],
) -> std::io::Result<Option<JoinHandle<()>>> {
    let Some(period) = watched.iter().map(|w| w.after).min() else { return Ok(None) };
    let now = Instant::now();
    let mut watches: Vec<Watch> = watched
        .iter()
        .map(|w| Watch {
            shared: Arc::clone(&stages[w.stage]),
            view: Arc::clone(&views[w.stage]),
            after: w.after,
            finished: 0,
            moved_at: now,
            reported: false,
        })
        .collect();
    let control = Arc::clone(control);
    // Looking four times per shortest period reports a stall at most a quarter late.
    let tick = (period / 4).max(Duration::from_millis(1));
    let handle = thread::Builder::new().name("backflow:watchdog".into()).spawn(move || {
        let done = || control.all_exited() || control.is_cancelled();
        while !control.exit.park_until(done, deadline_after(tick)) {
            let now = Instant::now();
            for watch in &mut watches {
                if let Some((queued, idle)) = watch.look(now) {
                    let stage = &*watch.shared.name;
                    control.emit(&Event::Stalled { stage, queued, idle });
                }
            }
        }
    })?;
    Ok(Some(handle))
}
