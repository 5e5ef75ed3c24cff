//! The drain rules (docs/design.md, "drained"): drained is no client request, database query or
//! transaction in flight, held for the whole quiet window, counted from the kernel
//! timestamp of the last activity; and a drain report's verdict is `incomplete` > `timeout` >
//! the rest; and how a `wait` or `stop` ended, for its headline.

use std::time::Duration;

use crate::{
    model::{
        report::{DrainReport, Report, Verdict},
        state::AuditState,
    },
    verdict::outcome::EndedBy,
};

/// Drained for the whole quiet window, as of `now_ns` (CLOCK_MONOTONIC, the probe's clock)?
pub fn drained(state: &AuditState, quiet: Duration, now_ns: u64) -> bool {
    state
        .idle_since()
        .is_some_and(|since| now_ns.saturating_sub(since) >= quiet.as_nanos() as u64)
}

/// Adds the drain section to `report`; a timed-out drain is `timeout` unless not all was
/// seen (`incomplete` wins). Interrupted (Ctrl-C, SIGTERM to drainwatch) before it could
/// tell: `incomplete`, never `clean` (violations seen before stay `violations`).
pub fn add_drain(report: &mut Report, drain: DrainReport, timed_out: bool, interrupted: bool) {
    if interrupted {
        crate::verdict::outcome::mark_interrupted(report);
    }
    if timed_out && report.verdict != Verdict::Incomplete {
        report.verdict = Verdict::Timeout;
    }
    report.drain = Some(drain);
}

/// How a `wait` or `stop` ended, for its headline (output::progress words it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// `wait`: nothing in flight for the quiet window, from `at_ms`.
    Drained { at_ms: u64 },
    /// `wait`: the targets exited.
    Exited,
    /// The timeout passed first (`stop`: and no SIGKILL was asked for).
    Timeout,
    /// SIGINT or SIGTERM to drainwatch before it could tell.
    Interrupted { verdict: Verdict },
    /// `stop`: every target exited, nothing wrong seen.
    StoppedCleanly {
        signal_at_ms: u64,
        drained_at_ms: Option<u64>,
        exited_at_ms: Option<u64>,
    },
    /// `stop`: ended with violations.
    StoppedWithViolations,
    /// `stop`: ended, but not all was seen.
    StoppedIncomplete,
    /// `stop`: ended clean by another way than every target's exit.
    Stopped,
}

/// How a `wait` ended.
pub fn wait_ending(ended: EndedBy, verdict: Verdict, drained_at_ms: Option<u64>) -> Ending {
    match ended {
        EndedBy::Condition => Ending::Drained {
            at_ms: drained_at_ms.unwrap_or(0),
        },
        EndedBy::AllExited | EndedBy::CommandExited => Ending::Exited,
        EndedBy::Duration => Ending::Timeout,
        EndedBy::Interrupted => Ending::Interrupted { verdict },
    }
}

/// How a `stop` ended, from how its loop ended and its report's verdict.
pub fn stop_ending(ended: EndedBy, report: &Report) -> Ending {
    let drain = report.drain.as_ref();
    match (ended, report.verdict) {
        (_, Verdict::Timeout) => Ending::Timeout,
        (EndedBy::AllExited, Verdict::Clean) => Ending::StoppedCleanly {
            signal_at_ms: drain.and_then(|d| d.signal_at_ms).unwrap_or(0),
            drained_at_ms: drain.and_then(|d| d.drained_at_ms),
            exited_at_ms: drain.and_then(|d| d.exited_at_ms),
        },
        (EndedBy::Interrupted, verdict) => Ending::Interrupted { verdict },
        (_, Verdict::Violations) => Ending::StoppedWithViolations,
        (_, Verdict::Incomplete) => Ending::StoppedIncomplete,
        (_, Verdict::Clean) => Ending::Stopped,
    }
}
