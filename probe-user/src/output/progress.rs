//! What `wait` and `stop` show while they follow a drain: what is in flight, as a line
//! redrawn in place on a terminal, or as JSON lines otherwise; and the headline and report
//! they end with.

use std::{io::Write, time::Duration};

use crate::{
    duration,
    events::Protocol,
    host::procfs,
    model::{report::Report, state::AuditState},
    output::{
        print_out,
        summary::{self, plural},
    },
    verdict::{
        drain::Ending,
        shutdown::{Chosen, KnownServer},
    },
};

/// How often progress is redrawn on a terminal.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// How often a progress line goes to stderr when stdout is no terminal (a log, a journal).
const LOG_PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// What is in flight, for messages and progress lines.
#[derive(Debug, Default)]
pub struct Progress {
    pub at_ms: u64,
    pub phase: &'static str,
    pub requests: u64,
    pub queries: u64,
    pub transactions: u64,
    /// Upstream calls in flight (docs/design.md, "upstream call in flight").
    pub upstream_calls: u64,
    /// Operations in flight (`--op`, docs/design.md "operation"); `None` without it.
    pub operations: Option<u64>,
    /// Connections whose state at attach is still unknown (they hold the drain).
    pub unknown: u64,
    /// Of `unknown`, database connections whose transaction state is still unknown.
    pub unknown_transactions: u64,
    /// Those, as `pid P fd F` (for the one-line reasons).
    pub unknown_transactions_on: Vec<String>,
}

/// What is in flight in `state` now.
pub fn progress(state: &AuditState, phase: &'static str) -> Progress {
    let in_flight = state.conns().map(|c| c.in_flight(None)).unwrap_or_default();
    let unknown_transactions_on = state
        .conns()
        .map(|c| {
            c.unresolved_txns()
                .map(|(pid, fd)| format!("pid {pid} fd {fd}"))
                .collect()
        })
        .unwrap_or_default();
    Progress {
        at_ms: state.ms_since_attach(procfs::monotonic_now().as_nanos() as u64),
        phase,
        requests: in_flight.requests,
        queries: in_flight.queries,
        transactions: in_flight.transactions,
        upstream_calls: in_flight.upstream_calls,
        operations: state.operations().map(|ops| ops.in_flight()),
        unknown: in_flight.unknown,
        unknown_transactions: in_flight.unknown_txns,
        unknown_transactions_on,
    }
}

pub fn describe_in_flight(p: &Progress) -> String {
    let mut unknown = if p.unknown > 0 {
        format!(", {} unknown since attach", plural(p.unknown, "connection"))
    } else {
        String::new()
    };
    if !p.unknown_transactions_on.is_empty() {
        unknown.push_str(&format!(
            " (transaction state of {}: waiting for {} next reply or close; --db-url \
             env:VAR would ask the database)",
            p.unknown_transactions_on.join(", "),
            if p.unknown_transactions_on.len() == 1 {
                "its"
            } else {
                "their"
            }
        ));
    }
    let operations = p
        .operations
        .map_or(String::new(), |n| format!("{}, ", plural(n, "operation")));
    format!(
        "{}, {}, {}, {operations}{} in flight{unknown}",
        plural(p.requests, "request"),
        plural(p.queries, "db query"),
        plural(p.upstream_calls, "upstream call"),
        plural(p.transactions, "transaction")
    )
}

/// Progress output. On a terminal (without `--json`): a line redrawn in place on stdout,
/// then the headline and the violations there. Otherwise stdout carries the report alone, one
/// JSON object that `jq -r .verdict` reads as it is (docs/report.md); progress, the headline
/// and the violations go to stderr as lines, for logs and journals.
pub struct Shower {
    json: bool,
    timeout: Duration,
    last: Option<std::time::Instant>,
}

impl Shower {
    /// `json`: `--json`, or stdout is not a terminal.
    pub fn new(json: bool, timeout: Duration) -> Self {
        Self {
            json,
            timeout,
            last: None,
        }
    }

    pub fn show(&mut self, state: &AuditState, phase: &'static str) {
        let every = if self.json {
            LOG_PROGRESS_EVERY
        } else {
            PROGRESS_EVERY
        };
        if self.last.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.last = Some(std::time::Instant::now());
        let p = progress(state, phase);
        let line = format!(
            "{phase}: {}   {:.1}s / {}",
            describe_in_flight(&p),
            p.at_ms as f64 / 1000.0,
            duration::format(self.timeout)
        );
        if self.json {
            eprintln!("drainwatch: {line}");
        } else {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "\r\x1b[K{line}").and_then(|()| out.flush());
        }
    }

    /// The verdict: the report and the headline with the violations under it. A reader of
    /// stdout that is gone (EPIPE) does not stop the rest (the report file is written).
    pub fn finish(&self, report: &Report, headline: &str) {
        let violations = report
            .violations
            .iter()
            .map(|v| format!("  x {}\n", summary::violation_line(report, v)));
        if self.json {
            print_out(&format!(
                "{}\n",
                serde_json::to_string(report).expect("report serializes")
            ));
            let mut text = format!("drainwatch: {headline}\n");
            text.extend(violations.map(|line| format!("drainwatch: {line}")));
            eprint!("{text}");
        } else {
            let mut text = format!("\r\x1b[K{headline}\n");
            text.extend(violations);
            print_out(&text);
        }
    }
}

/// The headline of a `wait`: how it ended, with what was in flight (`p`) when it matters.
pub fn wait_headline(ending: Ending, quiet: Duration, timeout: Duration, p: &Progress) -> String {
    match ending {
        Ending::Drained { at_ms } => format!(
            "drained: nothing in flight for {} (at {:.3}s)",
            duration::format(quiet),
            at_ms as f64 / 1000.0
        ),
        Ending::Timeout => format!(
            "timeout after {}: {}",
            duration::format(timeout),
            describe_in_flight(p)
        ),
        Ending::Interrupted { verdict } => format!(
            "interrupted before drained (verdict {}): {}",
            verdict.as_str(),
            describe_in_flight(p)
        ),
        _ => "exited".to_string(),
    }
}

/// The headline of a `stop` that sent `signal`.
pub fn stop_headline(ending: Ending, signal: &str, timeout: Duration, p: &Progress) -> String {
    let at = |ms: u64| format!("{:.3}s", ms as f64 / 1000.0);
    match ending {
        Ending::Timeout => format!(
            "timeout after {}, not stopped (no SIGKILL without --kill-after): {}",
            duration::format(timeout),
            describe_in_flight(p)
        ),
        Ending::StoppedCleanly {
            signal_at_ms,
            drained_at_ms,
            exited_at_ms,
        } => format!(
            "stopped cleanly: {signal} at {}, drained at {}, exited at {}",
            at(signal_at_ms),
            drained_at_ms.map(at).unwrap_or_else(|| "exit".into()),
            at(exited_at_ms.unwrap_or(0))
        ),
        Ending::Interrupted { verdict } => format!(
            "interrupted before the target exited (verdict {}): {}",
            verdict.as_str(),
            describe_in_flight(p)
        ),
        Ending::StoppedWithViolations => "stopped, with violations (listed below)".to_string(),
        Ending::StoppedIncomplete => "stopped, but what happened is incomplete (events lost, a \
                                      probe failed, or something was not seen)"
            .to_string(),
        Ending::Drained { .. } | Ending::Exited | Ending::Stopped => "stopped cleanly".to_string(),
    }
}

/// Which database connections from before attach `wait` and `stop` cannot judge: their
/// transaction state is unknown until their next status message (no PostgreSQL process
/// title, no `--db-url` view told it). They hold the drain until their next reply or their
/// close: unknown never counts as "no transaction" (docs/design.md: unknown is shown as
/// unknown). `None` when there are none.
pub fn txn_unknown_line(unknown: &[(u32, u32, Protocol)]) -> Option<String> {
    if unknown.is_empty() {
        return None;
    }
    let list: Vec<String> = unknown
        .iter()
        .map(|(pid, fd, protocol)| {
            format!("pid {pid} fd {fd} {}", summary::protocol_name(*protocol))
        })
        .collect();
    Some(format!(
        "cannot tell whether {} from before attach {} in a transaction ({}): waiting for {} \
         next reply or close before calling it drained; give --db-url env:VAR|file:PATH to ask \
         the database",
        plural(unknown.len() as u64, "database connection"),
        if unknown.len() == 1 { "is" } else { "are" },
        list.join(", "),
        if unknown.len() == 1 { "its" } else { "their" },
    ))
}

/// What `stop` says about the signal it chose for one process: the graceful signal of a
/// known server, or a signal asked for that the table knows cuts work. `None`: nothing to say.
pub fn signal_choice_line(
    pid: u32,
    comm: &str,
    sig: i32,
    chosen: Chosen,
    server: Option<&KnownServer>,
) -> Option<String> {
    let name = crate::events::signals::name(sig);
    let graceful = |row: &KnownServer| crate::events::signals::name(row.graceful);
    match chosen {
        Chosen::Graceful(row) => Some(format!(
            "{comm} ({pid}) is {}: sending its graceful stop, {name} ({}); --signal sends \
             another",
            row.name, row.source
        )),
        Chosen::Asked => {
            let row = server?;
            row.fast.contains(&sig).then(|| {
                format!(
                    "warning: for {}, {name} is a fast shutdown that cuts what is in flight \
                     (its graceful stop is {}, {}); sending it as --signal asks",
                    row.name,
                    graceful(row),
                    row.source
                )
            })
        }
        Chosen::Default => None,
    }
}
