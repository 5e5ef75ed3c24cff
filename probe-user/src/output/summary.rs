//! The human summary of an audit: one line per violation that an SRE understands without
//! the JSON, then the targets and how each ended.

use std::fmt::Write as _;

use crate::{
    events::Protocol,
    model::report::{ClosedBy, ExitReport, Report, RollbackHow, Verdict, Violation},
    verdict::outcome::Outcome,
};

fn seconds(ms: u64) -> String {
    format!("{:.3}s", ms as f64 / 1000.0)
}

fn comm_of(report: &Report, pid: u32) -> &str {
    report
        .targets
        .iter()
        .find(|t| t.pid == pid)
        .map(|t| t.comm.as_str())
        .unwrap_or("?")
}

pub fn violation_line(report: &Report, violation: &Violation) -> String {
    match violation {
        Violation::Sigkill(v) => {
            let by = if v.by_kernel {
                format!(
                    "the kernel (in {} ({}), e.g. the OOM killer)",
                    v.sender_comm, v.sender_tgid
                )
            } else if v.by_drainwatch {
                "drainwatch (--kill-after)".to_string()
            } else {
                format!("{} ({})", v.sender_comm, v.sender_tgid)
            };
            let cmdline = v
                .sender_cmdline
                .as_deref()
                .map(|c| format!(": `{c}`"))
                .unwrap_or_default();
            format!(
                "SIGKILL sent to {} ({}) by {by} at {}{}{cmdline}",
                comm_of(report, v.pid),
                v.pid,
                seconds(v.at_ms),
                cut_by_exit(report, v.pid)
            )
        }
        Violation::LeakedDbConnection(v) => {
            let how = match v.closed_by {
                ClosedBy::Exit => "still open when it exited (the kernel closed it)",
                ClosedBy::UncleanClose => "closed without the protocol's goodbye",
            };
            format!(
                "{} connection of {} ({}) to {} (fd {}) {how}, at {}",
                protocol_name(v.protocol),
                comm_of(report, v.pid),
                v.pid,
                v.peer.as_deref().unwrap_or("?"),
                v.fd,
                seconds(v.at_ms)
            )
        }
        Violation::OpenTransaction(v) => format!(
            "{} transaction open for {} on {} ({}) to {} (fd {}) when it exited, at {}: cut in half",
            protocol_name(v.protocol),
            seconds(v.age_ms),
            comm_of(report, v.pid),
            v.pid,
            v.peer.as_deref().unwrap_or("?"),
            v.fd,
            seconds(v.at_ms)
        ),
        Violation::InflightAtExit(v) => format!(
            "{} ({}) exited with {} and {} in flight, at {} ({})",
            comm_of(report, v.pid),
            v.pid,
            plural(v.requests, "client request"),
            plural(v.queries, "database query"),
            seconds(v.at_ms),
            v.connections.join(", ")
        ),
        Violation::RequestDropped(v) => format!(
            "{} ({}) closed the client connection from {} (fd {}) with a request in flight for {}, at {}: the client never got its answer",
            comm_of(report, v.pid),
            v.pid,
            v.peer.as_deref().unwrap_or("?"),
            v.fd,
            seconds(v.age_ms),
            seconds(v.at_ms)
        ),
        Violation::OperationCut(v) => format!(
            "{} ({}) abandoned {} of {} mid-way (the oldest running for {}), at {}: the work between its writes was cut",
            comm_of(report, v.pid),
            v.pid,
            plural(v.count, "operation"),
            v.function,
            seconds(v.oldest_age_ms),
            seconds(v.at_ms)
        ),
        Violation::TransactionRolledBack(v) => {
            let how = match v.how {
                RollbackHow::Goodbye => "said goodbye",
                RollbackHow::Close => "closed the connection",
                RollbackHow::Rollback => "asked for a ROLLBACK, once told to end,",
            };
            format!(
                "{} ({}) {how} on its {} connection to {} (fd {}) inside a transaction open for {}, at {}: the database rolled it back",
                comm_of(report, v.pid),
                v.pid,
                protocol_name(v.protocol),
                v.peer.as_deref().unwrap_or("?"),
                v.fd,
                seconds(v.age_ms),
                seconds(v.at_ms)
            )
        }
    }
}

/// ": 2 requests and 1 PostgreSQL transaction were cut", from what the target's exit left
/// (its `inflight_at_exit` and `open_transaction` violations); empty when nothing was.
fn cut_by_exit(report: &Report, pid: u32) -> String {
    let mut parts = Vec::new();
    let mut transactions: std::collections::BTreeMap<&str, u64> = Default::default();
    let mut total = 0;
    for v in report.violations.iter().chain(&report.warnings) {
        match v {
            Violation::InflightAtExit(v) if v.pid == pid => {
                if v.requests > 0 {
                    parts.push(plural(v.requests, "request"));
                }
                if v.queries > 0 {
                    parts.push(plural(v.queries, "database query"));
                }
                total += v.requests + v.queries;
            }
            Violation::OpenTransaction(v) if v.pid == pid => {
                *transactions.entry(protocol_name(v.protocol)).or_default() += 1;
                total += 1;
            }
            _ => {}
        }
    }
    for (protocol, n) in transactions {
        parts.push(plural(n, &format!("{protocol} transaction")));
    }
    match total {
        0 => String::new(),
        1 => format!(": {} was cut", parts.join(" and ")),
        _ => format!(": {} were cut", parts.join(" and ")),
    }
}

/// "3 (p50 250us, p99 1200us)", or "none measured": zero percentiles of nothing would read
/// like a measurement.
fn latencies(summary: &crate::model::report::LatencySummary) -> String {
    match summary.count {
        0 => "none measured".to_string(),
        n => format!(
            "{n} (p50 {}us, p99 {}us)",
            summary.latency_us.p50, summary.latency_us.p99
        ),
    }
}

pub fn plural(n: u64, what: &str) -> String {
    match what.strip_suffix('y') {
        _ if n == 1 => format!("1 {what}"),
        Some(stem) => format!("{n} {stem}ies"),
        None => format!("{n} {what}s"),
    }
}

pub fn protocol_name(protocol: Protocol) -> &'static str {
    crate::model::protocol::registry::title(protocol)
}

fn exit_line(exit: Option<&ExitReport>) -> String {
    match exit {
        None => "still running".to_string(),
        Some(ExitReport {
            at_ms,
            signal: Some(signal),
            ..
        }) => format!("killed by {signal} at {}", seconds(*at_ms)),
        Some(ExitReport {
            at_ms,
            code: Some(code),
            ..
        }) => format!("exited with code {code} at {}", seconds(*at_ms)),
        Some(ExitReport { at_ms, .. }) => format!("exited at {} (status unknown)", seconds(*at_ms)),
    }
}

/// The drain in one line: the signal, drained, exited, the drain tail and what it rests on.
fn drain_line(drain: &crate::model::report::DrainReport) -> String {
    let mut parts = Vec::new();
    if let (Some(signal), Some(at)) = (&drain.signal, drain.signal_at_ms) {
        parts.push(format!("{signal} at {}", seconds(at)));
    }
    if let Some(at) = drain.drained_at_ms {
        parts.push(format!("drained at {}", seconds(at)));
    }
    if let Some(at) = drain.exited_at_ms {
        parts.push(format!("exited at {}", seconds(at)));
    }
    if let Some(tail) = drain.tail_ms {
        let tail = std::time::Duration::from_millis(tail);
        parts.push(format!(
            "drain tail {} (--settle-from this report: settle {})",
            crate::duration::format(tail),
            crate::duration::format(crate::verdict::drain::settle_for_tail(tail))
        ));
    }
    let mut line = format!("drain: {}", parts.join(", "));
    if let Some(basis) = &drain.basis {
        let settle = drain.settle_ms.map(std::time::Duration::from_millis);
        line.push_str(&format!(
            "; {}",
            crate::verdict::drain::basis_line(basis, settle)
        ));
    }
    line
}

pub fn render(outcome: &Outcome) -> String {
    let report = &outcome.report;
    let mut out = String::new();
    let unverified = report
        .coverage
        .as_ref()
        .map(|c| c.unverified.as_slice())
        .unwrap_or(&[]);
    let headline = match report.verdict {
        Verdict::Clean => "CLEAN: no violations".to_string(),
        Verdict::Violations => format!("VIOLATIONS: {} found", report.violations.len()),
        Verdict::Incomplete => format!(
            "INCOMPLETE: {} events lost, {} probes failed, {} database connections unread; {} violations seen",
            report.events.lost,
            report.probe_failures.len(),
            unverified.len(),
            report.violations.len()
        ),
        Verdict::Timeout => "TIMEOUT".to_string(),
    };
    let _ = writeln!(
        out,
        "drainwatch audit: {headline} (ended: {}, after {:.3}s)",
        outcome.ended_by.describe(),
        outcome.elapsed.as_secs_f64()
    );
    for violation in &report.violations {
        let _ = writeln!(out, "  x {}", violation_line(report, violation));
    }
    for warning in &report.warnings {
        let _ = writeln!(
            out,
            "  ! warning (policy): {}",
            violation_line(report, warning)
        );
    }
    for failure in &report.probe_failures {
        let _ = writeln!(out, "  ! probe failed: {failure}");
    }
    for u in unverified {
        let _ = writeln!(
            out,
            "  ? unverified: {} fd {} to {}: {} ({}): its transactions and goodbye were not seen",
            u.pid,
            u.fd,
            u.peer.as_deref().unwrap_or("?"),
            match u.why {
                "protocol-not-read" => "its protocol is not read",
                _ => "encrypted and not decrypted",
            },
            u.why
        );
    }
    let _ = writeln!(out, "targets:");
    for target in &report.targets {
        let forked = match (&target.parent_pid, &target.signalled_by) {
            (Some(p), _) => format!(" (forked by {p})"),
            // `audit -- CMD` followed it from the command's signal (docs/design.md).
            (None, Some(by)) => format!(
                " (followed: signalled {} by {} ({}))",
                by.signal, by.comm, by.pid
            ),
            (None, None) => String::new(),
        };
        let _ = writeln!(
            out,
            "  {} {}{forked}: {}",
            target.pid,
            target.comm,
            exit_line(target.exit.as_ref())
        );
    }
    if let (Some(c), Some(r), Some(q)) = (&report.connections, &report.requests, &report.db_queries)
    {
        let _ = writeln!(
            out,
            "connections: {} client opened / {} closed, {} db opened / {} closed",
            c.client_opened, c.client_closed, c.db_opened, c.db_closed
        );
        let _ = writeln!(
            out,
            "requests: {}; db queries: {}",
            latencies(r),
            latencies(q)
        );
    }
    if let Some(drain) = &report.drain {
        let _ = writeln!(out, "{}", drain_line(drain));
    }
    let _ = writeln!(
        out,
        "events: {} received, {} lost",
        report.events.received, report.events.lost
    );
    out
}
