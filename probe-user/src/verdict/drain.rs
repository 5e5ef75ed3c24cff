//! The drain rules (docs/design.md, "drained"): drained is no client request, database query or
//! transaction in flight, held for the whole quiet window, counted from the kernel
//! timestamp of the last activity, and, with `--settle D`, no database query sent for D
//! after the last client input ("drain tail"); what the verdict rests on (`drain.basis`);
//! and a drain report's verdict is `incomplete` > `timeout` > the rest; and how a `wait` or
//! `stop` ended, for its headline.

use std::time::Duration;

use crate::{
    duration,
    model::{
        conns::{ConnTracker, FIRST_CALL_HOLD},
        report::{DrainBasis, DrainReport, HiddenWork, Report, Verdict},
        state::AuditState,
    },
    verdict::outcome::EndedBy,
};

/// What "drained" means for a run: `--quiet`, `--settle`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainRule {
    pub quiet: Duration,
    pub settle: Option<Duration>,
}

impl DrainRule {
    pub fn quiet(quiet: Duration) -> Self {
        Self {
            quiet,
            settle: None,
        }
    }

    /// When (ktime ns) the targets are drained if nothing changes from what the state says
    /// now: the quiet window after the last activity, and the settle time after the later
    /// of the last client input and the last query; `None` while something is in flight.
    pub fn drained_at(&self, state: &AuditState) -> Option<u64> {
        let idle = state.idle_since()? + self.quiet.as_nanos() as u64;
        let settled = match (self.settle, state.conns()) {
            (Some(settle), Some(conns)) => {
                conns.facts().settle_from(state.attach_ns()) + settle.as_nanos() as u64
            }
            _ => 0,
        };
        Some(idle.max(settled))
    }

    /// Drained, as of `now_ns` (CLOCK_MONOTONIC, the probe's clock)?
    pub fn drained(&self, state: &AuditState, now_ns: u64) -> bool {
        self.drained_at(state).is_some_and(|at| at <= now_ns)
    }
}

/// Drained for the whole quiet window, as of `now_ns` (CLOCK_MONOTONIC, the probe's clock)?
pub fn drained(state: &AuditState, quiet: Duration, now_ns: u64) -> bool {
    DrainRule::quiet(quiet).drained(state, now_ns)
}

/// The drain tail measured so far (ms), see [`crate::model::drain_facts::DrainFacts::tail_ns`].
pub fn tail_ms(state: &AuditState) -> Option<u64> {
    state
        .conns()
        .and_then(|c| c.facts().tail_ns())
        .map(|ns| ns / 1_000_000)
}

/// What the verdict rests on: what was observable for these targets, and where work could
/// hide from it (docs/design.md, "drained"). Operations (`--op`) are observed when the
/// state watches them; `settle`: `--settle` in force. `None` when sockets were not watched.
pub fn basis(state: &AuditState, settle: Option<Duration>) -> Option<DrainBasis> {
    let conns = state.conns()?;
    let ops = state.operations().is_some();
    let mut observed = vec!["requests", "queries", "transactions", "upstream_calls"];
    if ops {
        observed.push("operations");
    }
    let facts = conns.facts();
    let held = settle
        .map(|d| format!("; held by --settle {}", duration::format(d)))
        .unwrap_or_default();
    let mut hidden = Vec::new();
    if !ops {
        for (pid, count, named) in facts.pushing_targets() {
            let list: Vec<String> = named
                .iter()
                .map(|c| match &c.peer {
                    Some(peer) => format!("fd {} {peer}", c.fd),
                    None => format!("fd {}", c.fd),
                })
                .collect();
            let what = if count == 1 {
                "push-style client connection".to_string()
            } else {
                format!("{count} push-style client connections")
            };
            let which = if list.is_empty() {
                String::new()
            } else {
                format!(" ({})", list.join(", "))
            };
            hidden.push(HiddenWork {
                pid,
                why: format!("{what}{which}, no --op{held}"),
            });
        }
        hidden.extend(upstream_hidden(conns, &held));
        for pid in facts.event_loops() {
            hidden.push(HiddenWork {
                pid,
                why: format!("event loop (epoll), no --op{held}"),
            });
        }
    }
    // Operations begun before attach in a target of a runtime that cannot see them
    // (model/ops/, kernel/ops/runtime.rs).
    if let Some(ops) = state.operations() {
        for &pid in ops.blind_at_attach() {
            hidden.push(HiddenWork {
                pid,
                why: format!(
                    "{} operations begun before attach are not seen (--op follows calls \
                     from attach on)",
                    ops.blind_runtimes()
                ),
            });
        }
    }
    // A client connection unknown at attach that no traffic of its own settled: the verdict
    // rests on the outside evidence that called it idle, or on nothing.
    for unknown in conns.unknown_at_attach() {
        let how = match unknown.resolved_by {
            Some("evidence") => "judged idle from /proc and the socket's state, not its traffic",
            None => "never resolved",
            Some(_) => continue,
        };
        hidden.push(HiddenWork {
            pid: unknown.pid,
            why: format!(
                "connection fd {} unknown at attach ({} in flight?), {how}",
                unknown.fd, unknown.what
            ),
        });
    }
    hidden.sort_by_key(|h| h.pid);
    Some(DrainBasis {
        observed,
        could_hide_work: hidden,
    })
}

/// Upstream connections whose sends are not followed as calls (docs/design.md, "upstream
/// call in flight"): one-way ones, and first calls past their hold (model/conns/calls.rs).
fn upstream_hidden(conns: &ConnTracker, held: &str) -> Vec<HiddenWork> {
    let plural = |n: u64, one: &str, many: &str| {
        if n == 1 {
            one.to_string()
        } else {
            format!("{n} {many}")
        }
    };
    let mut out = Vec::new();
    for (pid, calls) in conns.calls_by_target() {
        if calls.one_way > 0 {
            let what = plural(
                calls.one_way,
                "one-way upstream connection",
                "one-way upstream connections",
            );
            let names = conns.one_way_names(pid);
            let which = if names.is_empty() {
                String::new()
            } else {
                format!(" ({})", names.join(", "))
            };
            out.push(HiddenWork {
                pid,
                why: format!(
                    "{what}{which} (sent to, never answered: a send there is no call), no \
                     --op{held}"
                ),
            });
        }
        if calls.first > 0 {
            let what = plural(calls.first, "upstream call", "upstream calls");
            out.push(HiddenWork {
                pid,
                why: format!(
                    "{what} on a connection that never answered, held {}s (one-way, or a slower \
                     first reply), no --op{held}",
                    FIRST_CALL_HOLD.as_secs()
                ),
            });
        }
    }
    out
}

/// The basis in words, for the verdict's line: "requests, queries, transactions observed;
/// could hide work: pid 12: push-style client connection (fd 5 127.0.0.1:4000), no --op:
/// see --op, --settle".
pub fn basis_line(basis: &DrainBasis, settle: Option<Duration>) -> String {
    let mut line = format!("{} observed", basis.observed.join(", "));
    if basis.could_hide_work.is_empty() {
        return line;
    }
    let items: Vec<String> = basis
        .could_hide_work
        .iter()
        .map(|h| format!("pid {}: {}", h.pid, h.why))
        .collect();
    line.push_str(&format!("; could hide work: {}", items.join("; ")));
    let hides_between_writes = basis
        .could_hide_work
        .iter()
        .any(|h| h.why.contains("no --op"));
    if hides_between_writes && settle.is_none() {
        line.push_str(": see --op, --settle");
    }
    line
}

/// The drain section of a report: times as measured, plus the tail, the settle and the
/// basis read from the state.
#[derive(Clone, Debug, Default)]
pub struct DrainTimes {
    pub signal: Option<String>,
    pub signal_at_ms: Option<u64>,
    pub drained_at_ms: Option<u64>,
    pub exited_at_ms: Option<u64>,
}

pub fn drain_report(
    state: &AuditState,
    times: DrainTimes,
    settle: Option<Duration>,
    with_tail: bool,
) -> DrainReport {
    let end = times.drained_at_ms.or(times.exited_at_ms);
    DrainReport {
        drain_ms: end.map(|at| at.saturating_sub(times.signal_at_ms.unwrap_or(0))),
        signal: times.signal,
        signal_at_ms: times.signal_at_ms,
        drained_at_ms: times.drained_at_ms,
        exited_at_ms: times.exited_at_ms,
        tail_ms: if with_tail { tail_ms(state) } else { None },
        settle_ms: settle.map(|d| d.as_millis() as u64),
        basis: basis(state, settle),
    }
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

/// `--settle-from`: the settle time for a tail measured on staging. One measurement is no
/// bound: production's database answers slower under load and its host schedules later,
/// and a tail that waits on the database grows with both, so half again as long; and at
/// least 100 ms more than the tail, for the scheduling and timer slack a short tail (a few
/// ms, measured on an idle machine) says nothing about.
pub fn settle_for_tail(tail: Duration) -> Duration {
    (tail * 3 / 2).max(tail + SETTLE_FLOOR)
}

/// The least margin `--settle-from` adds to a measured tail.
pub const SETTLE_FLOOR: Duration = Duration::from_millis(100);

/// The drain tail in a report's text (`drain.tail_ms` of a `drainwatch.report/v1`), or
/// why there is none, in words for one line.
pub fn tail_in_report(text: &str) -> Result<Duration, String> {
    let json: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| format!("not a drainwatch report (not JSON: {e})"))?;
    let schema = json.get("schema").and_then(|s| s.as_str());
    if schema != Some(crate::model::report::SCHEMA) {
        return Err(format!(
            "not a drainwatch report (schema {}, expected {}); give the --report FILE of an \
             audit or stop",
            schema.unwrap_or("missing"),
            crate::model::report::SCHEMA
        ));
    }
    match json.pointer("/drain/tail_ms") {
        Some(serde_json::Value::Number(n)) if n.as_u64().is_some() => {
            Ok(Duration::from_millis(n.as_u64().unwrap_or_default()))
        }
        Some(serde_json::Value::Null) | None => Err(
            "the report has no drain tail (drain.tail_ms is null: that run saw no client input, \
             or was a wait); audit the server through a release with clients on it"
                .to_string(),
        ),
        Some(other) => Err(format!(
            "drain.tail_ms is {other}, not a number of milliseconds"
        )),
    }
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

#[cfg(test)]
mod tests;
