//! The one timer of the session's periodic chores: a chore is due when its period has passed
//! since it last ran (or it never ran). Some back off: each run doubles the wait, up to a
//! ceiling, for looks that cost more the longer a condition lasts.

use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub(super) struct Every {
    period: Duration,
    /// How many times the period doubles with the runs (0: fixed).
    doublings: u32,
    last: Option<Instant>,
    runs: u32,
}

impl Every {
    /// Due at once, then every `period`.
    pub(super) const fn new(period: Duration) -> Self {
        Self {
            period,
            doublings: 0,
            last: None,
            runs: 0,
        }
    }

    /// Due at once, then after `first` doubled at each run, at most `doublings` times.
    pub(super) const fn backing_off(first: Duration, doublings: u32) -> Self {
        Self {
            doublings,
            ..Self::new(first)
        }
    }

    /// The wait after the latest run.
    fn wait(&self) -> Duration {
        self.period * (1u32 << self.runs.min(self.doublings))
    }

    pub(super) fn due(&self) -> bool {
        self.last.is_none_or(|at| at.elapsed() >= self.wait())
    }

    /// It ran now: the next run is due one (possibly doubled) period from now.
    pub(super) fn ran(&mut self) {
        self.last = Some(Instant::now());
        self.runs = self.runs.saturating_add(1);
    }

    /// [`Every::due`], and if so [`Every::ran`].
    pub(super) fn take(&mut self) -> bool {
        let due = self.due();
        if due {
            self.ran();
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_at_once_then_after_its_period() {
        let mut every = Every::new(Duration::from_secs(3600));
        assert!(every.take());
        assert!(!every.due());
        assert!(!every.take());
        let mut always = Every::new(Duration::ZERO);
        assert!(always.take() && always.take());
    }

    #[test]
    fn backing_off_doubles_up_to_its_ceiling() {
        let mut every = Every::backing_off(Duration::from_millis(25), 3);
        let waits: Vec<u64> = (0..6)
            .map(|_| {
                every.ran();
                every.wait().as_millis() as u64
            })
            .collect();
        assert_eq!(waits, [50, 100, 200, 200, 200, 200]);
    }
}
