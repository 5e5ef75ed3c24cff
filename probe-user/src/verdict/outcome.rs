//! How a run ended and the exit code it earns (docs/design.md, "Exit codes"). Below both
//! renderers (output::summary, output::junit) and the commands that return these codes.

use std::time::Duration;

use crate::model::report::{Report, Verdict};

/// `wait` and `stop`: the deadline passed before the target drained or exited.
pub const EXIT_TIMEOUT: u8 = 4;

/// Why a session's loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndedBy {
    AllExited,
    /// The command launched with `-- CMD` exited.
    CommandExited,
    Duration,
    Interrupted,
    /// The caller's condition held (e.g. drained).
    Condition,
}

impl EndedBy {
    pub fn describe(self) -> &'static str {
        match self {
            EndedBy::AllExited => "every target exited",
            EndedBy::CommandExited => {
                "the launched command exited, and every target it told to end"
            }
            EndedBy::Duration => "the time limit was reached",
            EndedBy::Interrupted => "interrupted (partial report, never clean)",
            EndedBy::Condition => "the condition held",
        }
    }
}

/// A run interrupted (SIGINT, SIGTERM to drainwatch) before it could tell is never `clean`:
/// what the interruption cut short was not seen (docs/design.md, "Command line"). Violations
/// seen before stay `violations`.
pub fn mark_interrupted(report: &mut Report) {
    if report.verdict == Verdict::Clean {
        report.verdict = Verdict::Incomplete;
    }
}

/// What an audit ends with: the report, why the run ended, and how long it took.
pub struct Outcome {
    pub report: Report,
    pub ended_by: EndedBy,
    pub elapsed: Duration,
}

impl Outcome {
    /// Exit code per docs/design.md: 0 clean; 1 violations, or not all was seen.
    pub fn exit_code(&self) -> i32 {
        match self.report.verdict {
            Verdict::Clean => 0,
            Verdict::Violations | Verdict::Incomplete | Verdict::Timeout => 1,
        }
    }
}

/// Exit code of `wait` and `stop` per docs/design.md: 0 drained (or exited) clean; 1 violations
/// or not all was seen; 4 timeout.
pub fn drain_exit_code(report: &Report) -> u8 {
    match report.verdict {
        Verdict::Clean => 0,
        Verdict::Timeout => EXIT_TIMEOUT,
        Verdict::Violations | Verdict::Incomplete => 1,
    }
}
