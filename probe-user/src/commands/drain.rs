//! `wait` and `stop`: the exact moment a server is safe to let go, instead of a fixed timer.
//!
//! Drained (docs/design.md): no client request in flight, no database query in flight, no
//! transaction open, held for the quiet window. The window counts from the kernel timestamp
//! of the last activity, so the verdict does not depend on when userspace happened to look;
//! the ring buffer is drained every few milliseconds while waiting.

use std::{
    io::Write,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use serde::Serialize;

use crate::{
    duration,
    events::signals,
    host::procfs,
    host::targets::Selection,
    model::report::{DrainReport, Mode, Report, Verdict},
    model::state::AuditState,
    output::publish::write_report,
    output::summary::{self, plural},
    session::Session,
    settings::{Common, StopSettings, WaitSettings},
    verdict::{
        self,
        outcome::{drain_exit_code, EndedBy},
    },
    Error, Result,
};

/// How often the ring buffer is read while a drain is followed: the verdict is at most this
/// late (on top of the quiet window).
const DRAIN_TICK: Duration = Duration::from_millis(2);
/// How often progress is shown.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// How long to wait for the exit after `--kill-after` sent SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// Drained for the whole quiet window, as of now?
fn drained(state: &AuditState, quiet: Duration) -> bool {
    verdict::drain::drained(state, quiet, procfs::monotonic_now().as_nanos() as u64)
}

/// What is in flight, for messages and progress lines.
#[derive(Debug, Default, Serialize)]
pub struct Progress {
    pub at_ms: u64,
    pub phase: &'static str,
    pub requests: u64,
    pub queries: u64,
    pub transactions: u64,
    /// Connections whose state at attach is still unknown (they hold the drain).
    pub unknown: u64,
    /// Of `unknown`, database connections whose transaction state is still unknown.
    #[serde(skip_serializing_if = "is_zero")]
    pub unknown_transactions: u64,
    /// Those, as `pid P fd F` (for the one-line reasons).
    #[serde(skip)]
    pub unknown_transactions_on: Vec<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn progress(state: &AuditState, phase: &'static str) -> Progress {
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
    format!(
        "{}, {}, {} in flight{unknown}",
        plural(p.requests, "request"),
        plural(p.queries, "db query"),
        plural(p.transactions, "transaction")
    )
}

fn stdout_is_tty() -> bool {
    // SAFETY: isatty on a standard fd.
    unsafe { libc::isatty(libc::STDOUT_FILENO) == 1 }
}

/// Progress output: a line redrawn in place on a terminal, JSON lines otherwise.
struct Shower {
    json: bool,
    timeout: Duration,
    last: Option<std::time::Instant>,
}

impl Shower {
    fn new(common: &Common, timeout: Duration) -> Self {
        Self {
            json: common.json || !stdout_is_tty(),
            timeout,
            last: None,
        }
    }

    fn show(&mut self, state: &AuditState, phase: &'static str) {
        if self.last.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
            return;
        }
        self.last = Some(std::time::Instant::now());
        let p = progress(state, phase);
        let mut out = std::io::stdout().lock();
        let _ = if self.json {
            writeln!(
                out,
                "{}",
                serde_json::to_string(&p).expect("progress serializes")
            )
        } else {
            write!(
                out,
                "\r\x1b[K{phase}: {}   {:.1}s / {}",
                describe_in_flight(&p),
                p.at_ms as f64 / 1000.0,
                duration::format(self.timeout)
            )
        };
        let _ = out.flush();
    }

    fn finish(&self, report: &Report, headline: &str) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string(report).expect("report serializes")
            );
            // The one-line reason for whoever reads the log (stdout stays JSON only).
            eprintln!("drainwatch: {headline}");
        } else {
            println!("\r\x1b[K{headline}");
            for violation in &report.violations {
                println!("  x {}", summary::violation_line(report, violation));
            }
        }
    }
}

/// The report with its drain section and the verdict `incomplete` > `timeout` > the rest.
/// Interrupted (Ctrl-C, SIGTERM to drainwatch) before it could tell: `incomplete`, never
/// `clean` (violations seen before the interruption stay `violations`).
fn drain_report(
    session: &Session,
    mode: Mode,
    drain: DrainReport,
    timed_out: bool,
    interrupted: bool,
) -> Report {
    let mut report = session
        .state
        .report(mode, session.lost(), session.probe.failures().to_vec());
    verdict::drain::add_drain(&mut report, drain, timed_out, interrupted);
    session.stamp_coverage(&mut report);
    report
}

/// Says which database connections from before attach `wait` and `stop` cannot judge: their
/// transaction state is unknown until their next status message (no PostgreSQL process
/// title, no `--db-url` view told it). They hold the drain until their next reply or their
/// close: unknown never counts as "no transaction" (docs/design.md: unknown is shown as unknown).
fn say_txn_unknown(session: &Session) {
    let unknown = session
        .state
        .conns()
        .map(|c| c.txn_unknown())
        .unwrap_or_default();
    if unknown.is_empty() {
        return;
    }
    let list: Vec<String> = unknown
        .iter()
        .map(|(pid, fd, protocol)| {
            format!("pid {pid} fd {fd} {}", summary::protocol_name(*protocol))
        })
        .collect();
    eprintln!(
        "drainwatch: cannot tell whether {} from before attach {} in a transaction ({}): \
         waiting for {} next reply or close before calling it drained; give --db-url \
         env:VAR|file:PATH to ask the database",
        plural(unknown.len() as u64, "database connection"),
        if unknown.len() == 1 { "is" } else { "are" },
        list.join(", "),
        if unknown.len() == 1 { "its" } else { "their" },
    );
}

/// `drainwatch wait`: blocks until drained or exited; sends nothing.
pub async fn wait(settings: &WaitSettings) -> Result<u8> {
    let quiet = settings.common.quiet;
    let mut session = Session::attach(&settings.targets, &settings.common)?;
    eprintln!(
        "drainwatch: attached to {}; waiting until drained (quiet {}) or exited, at most {}",
        session.target_names(),
        duration::format(quiet),
        duration::format(settings.timeout)
    );
    say_txn_unknown(&session);
    let mut shower = Shower::new(&settings.common, settings.timeout);
    let deadline = tokio::time::Instant::now() + settings.timeout;
    let ended = session
        .follow(
            DRAIN_TICK,
            Some(deadline),
            |state| drained(state, quiet),
            |s| shower.show(&s.state, "waiting"),
        )
        .await?;
    let state = &session.state;
    let drained_at_ms = (ended == EndedBy::Condition)
        .then(|| state.ms_since_attach(state.idle_since().unwrap_or(0) + quiet.as_nanos() as u64));
    let exited_at_ms = state.exited_at_ms();
    let drain = DrainReport {
        signal: None,
        signal_at_ms: None,
        drained_at_ms,
        exited_at_ms,
        drain_ms: drained_at_ms.or(exited_at_ms),
    };
    let timed_out = matches!(ended, EndedBy::Duration);
    let interrupted = ended == EndedBy::Interrupted;
    let report = drain_report(&session, Mode::Wait, drain, timed_out, interrupted);
    let p = progress(&session.state, "timeout");
    let headline = match ended {
        EndedBy::Condition => format!(
            "drained: nothing in flight for {} (at {:.3}s)",
            duration::format(quiet),
            drained_at_ms.unwrap_or(0) as f64 / 1000.0
        ),
        EndedBy::AllExited | EndedBy::CommandExited => "exited".to_string(),
        EndedBy::Duration => format!(
            "timeout after {}: {}",
            duration::format(settings.timeout),
            describe_in_flight(&p)
        ),
        EndedBy::Interrupted => format!(
            "interrupted before drained (verdict incomplete): {}",
            describe_in_flight(&p)
        ),
    };
    // The verdict goes out before the probe is taken down (which takes the kernel about a
    // second): whoever reads the output does not wait for that.
    shower.finish(&report, &headline);
    session.finish();
    Ok(drain_exit_code(&report))
}

/// A pidfd: signals sent through it cannot reach another process that reused the pid.
struct PidFd(OwnedFd);

impl PidFd {
    fn open(pid: u32) -> Result<Self> {
        // SAFETY: pidfd_open(2) with a plain pid and no flags.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(Error::NoSuchProcess(pid));
        }
        // SAFETY: a fresh fd we own.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// Sends `sig`; `false` when the process is already gone.
    fn signal(&self, sig: i32) -> bool {
        // SAFETY: pidfd_send_signal(2) on our pidfd, no siginfo.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        rc == 0
    }
}

/// `drainwatch stop`: signal, follow the drain, wait for the exit.
pub async fn stop(settings: &StopSettings) -> Result<u8> {
    let quiet = settings.common.quiet;
    // The pidfds first: from here on the signal can only reach these very processes.
    let set = &settings.targets;
    let selection = Selection::resolve(&set.pids, &set.comms, &set.cgroups)?;
    let pidfds = selection
        .to_signal(&selection.tree())
        .into_iter()
        .filter_map(|pid| match PidFd::open(pid) {
            Ok(fd) => Some(Ok((pid, fd))),
            // A matched process that exited meanwhile is not signalled; a named one is an error.
            Err(_) if !set.pids.contains(&pid) => None,
            Err(err) => Some(Err(err)),
        })
        .collect::<Result<Vec<_>>>()?;
    let mut session = Session::attach(set, &settings.common)?;
    let signal_name = signals::name(settings.signal);
    let signalled: Vec<String> = pidfds.iter().map(|(pid, _)| pid.to_string()).collect();
    eprintln!(
        "drainwatch: attached to {}; sending {signal_name} to {}, then following the drain for at most {}",
        session.target_names(),
        signalled.join(", "),
        duration::format(settings.timeout)
    );
    say_txn_unknown(&session);
    let signal_ns = procfs::monotonic_now().as_nanos() as u64;
    for (_, pidfd) in &pidfds {
        pidfd.signal(settings.signal);
    }
    let signal_at_ms = session.state.ms_since_attach(signal_ns);
    let mut shower = Shower::new(&settings.common, settings.timeout);
    let mut drained_at_ns: Option<u64> = None;
    let mut note_drain = |state: &AuditState| {
        if drained_at_ns.is_none() && drained(state, quiet) {
            let since = state.idle_since().unwrap_or(signal_ns).max(signal_ns);
            drained_at_ns = Some(since + quiet.as_nanos() as u64);
        }
    };
    let deadline = tokio::time::Instant::now() + settings.timeout;
    let mut ended = session
        .follow(
            DRAIN_TICK,
            Some(deadline),
            |_| false,
            |s| {
                note_drain(&s.state);
                shower.show(&s.state, "draining");
            },
        )
        .await?;
    note_drain(&session.state);
    let mut timed_out = false;
    if ended == EndedBy::Duration {
        let p = progress(&session.state, "timeout");
        if settings.kill_after {
            eprintln!(
                "drainwatch: timeout with {}: sending SIGKILL (--kill-after)",
                describe_in_flight(&p)
            );
            // Every target, not only the signalled ones: a worker left behind would keep
            // the port and the requests.
            for tgid in session.state.running_targets() {
                if let Ok(pidfd) = PidFd::open(tgid) {
                    pidfd.signal(libc::SIGKILL);
                }
            }
            let grace = tokio::time::Instant::now() + KILL_GRACE;
            ended = session
                .follow(DRAIN_TICK, Some(grace), |_| false, |_| {})
                .await?;
        } else {
            timed_out = true;
        }
    }
    let to_ms = |ns: u64| session.state.ms_since_attach(ns);
    let drained_at_ms = drained_at_ns.map(to_ms);
    let exited_at_ms = session.state.exited_at_ms();
    let drain = DrainReport {
        signal: Some(signal_name.clone()),
        signal_at_ms: Some(signal_at_ms),
        drained_at_ms,
        exited_at_ms,
        drain_ms: drained_at_ms
            .or(exited_at_ms)
            .map(|at| at.saturating_sub(signal_at_ms)),
    };
    let interrupted = ended == EndedBy::Interrupted;
    let report = drain_report(&session, Mode::Stop, drain, timed_out, interrupted);
    let p = progress(&session.state, "end");
    if let Some(file) = &settings.report {
        write_report(file, &report)?;
    }
    let headline = match (ended, report.verdict) {
        (_, Verdict::Timeout) => format!(
            "timeout after {}, not stopped (no SIGKILL without --kill-after): {}",
            duration::format(settings.timeout),
            describe_in_flight(&p)
        ),
        (EndedBy::AllExited, Verdict::Clean) => format!(
            "stopped cleanly: {signal_name} at {:.3}s, drained at {}, exited at {:.3}s",
            signal_at_ms as f64 / 1000.0,
            drained_at_ms
                .map(|ms| format!("{:.3}s", ms as f64 / 1000.0))
                .unwrap_or_else(|| "exit".into()),
            exited_at_ms.unwrap_or(0) as f64 / 1000.0
        ),
        (EndedBy::Interrupted, verdict) => format!(
            "interrupted before the target exited (verdict {}): {}",
            verdict.as_str(),
            describe_in_flight(&p)
        ),
        (_, Verdict::Violations) => "stopped, with violations (listed below)".to_string(),
        (_, Verdict::Incomplete) => {
            "stopped, but what happened is incomplete (events lost, a probe failed, or \
             something was not seen)"
                .to_string()
        }
        (_, Verdict::Clean) => "stopped cleanly".to_string(),
    };
    shower.finish(&report, &headline);
    session.finish();
    Ok(drain_exit_code(&report))
}
