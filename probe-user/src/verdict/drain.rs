//! The drain rules (docs/design.md, "drained"): drained is no client request, database query or
//! transaction in flight, held for the whole quiet window, counted from the kernel
//! timestamp of the last activity; and a drain report's verdict is `incomplete` > `timeout` >
//! the rest.

use std::time::Duration;

use crate::model::{
    report::{DrainReport, Report, Verdict},
    state::AuditState,
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
    if interrupted && report.verdict == Verdict::Clean {
        report.verdict = Verdict::Incomplete;
    }
    if timed_out && report.verdict != Verdict::Incomplete {
        report.verdict = Verdict::Timeout;
    }
    report.drain = Some(drain);
}
