//! `wait` and `stop`: the exact moment a server is safe to let go, instead of a fixed timer.
//!
//! Drained (docs/design.md): no client request in flight, no database query in flight, no
//! transaction open, held for the quiet window. The window counts from the kernel timestamp
//! of the last activity, so the verdict does not depend on when userspace happened to look;
//! the ring buffer is drained every few milliseconds while waiting.

use std::time::Duration;

use crate::{
    duration,
    events::signals,
    host::{pidfd::PidFd, procfs, targets::Selection},
    model::report::{DrainReport, Mode, Report},
    model::state::AuditState,
    output::{
        progress::{
            describe_in_flight, progress, signal_choice_line, stop_headline, txn_unknown_line,
            wait_headline, Shower,
        },
        publish::write_report,
        stdout_is_tty,
    },
    session::Session,
    settings::{Common, StopSettings, WaitSettings},
    verdict::{
        self,
        drain::{DrainRule, DrainTimes, Ending},
        outcome::{drain_exit_code, EndedBy},
        shutdown,
    },
    Result,
};

/// How often the ring buffer is read while a drain is followed: the verdict is at most this
/// late (on top of the quiet window).
const DRAIN_TICK: Duration = Duration::from_millis(2);
/// How long to wait for the exit after `--kill-after` sent SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// Drained (the quiet window, and the settle time if any), as of now?
fn drained(state: &AuditState, rule: DrainRule) -> bool {
    rule.drained(state, procfs::monotonic_now().as_nanos() as u64)
}

/// What "drained" means for this run (`--quiet`, `--settle`).
fn rule(common: &Common) -> DrainRule {
    DrainRule {
        quiet: common.quiet,
        settle: common.settle.as_ref().map(|s| s.time),
    }
}

/// What the attach line says of the settle time.
fn settle_words(common: &Common) -> String {
    match &common.settle {
        Some(settle) => format!(", {}", settle.describe()),
        None => String::new(),
    }
}

/// A drained verdict's line with what it rests on (docs/design.md, "drained").
fn with_basis(headline: String, report: &Report, common: &Common) -> String {
    let Some(basis) = report.drain.as_ref().and_then(|d| d.basis.as_ref()) else {
        return headline;
    };
    let settle = common.settle.as_ref().map(|s| s.time);
    let held = settle
        .map(|d| {
            format!(
                "no database query for {} after the last client input; ",
                duration::format(d)
            )
        })
        .unwrap_or_default();
    format!(
        "{headline} ({held}{})",
        verdict::drain::basis_line(basis, settle)
    )
}

/// Notes the targets running an event loop now (an epoll instance), for the basis.
pub fn note_event_loops(state: &mut AuditState) {
    for tgid in state.running_targets() {
        if crate::host::event_loop::runs_event_loop(tgid) {
            state.event_loop(tgid);
        }
    }
}

/// Progress as JSON lines with `--json` or when stdout is no terminal.
fn shower(common: &Common, timeout: Duration) -> Shower {
    Shower::new(common.json || !stdout_is_tty(), timeout)
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

/// Says which database connections from before attach `wait` and `stop` cannot judge
/// (see [`txn_unknown_line`]).
fn say_txn_unknown(session: &Session) {
    let unknown = session
        .state
        .conns()
        .map(|c| c.txn_unknown())
        .unwrap_or_default();
    if let Some(line) = txn_unknown_line(&unknown) {
        eprintln!("drainwatch: {line}");
    }
}

/// `drainwatch wait`: blocks until drained or exited; sends nothing.
pub async fn wait(settings: &WaitSettings) -> Result<u8> {
    let quiet = settings.common.quiet;
    let rule = rule(&settings.common);
    let mut session = Session::attach(&settings.targets, &settings.common)?;
    note_event_loops(&mut session.state);
    eprintln!(
        "drainwatch: attached to {}; waiting until drained (quiet {}{}) or exited, at most {}",
        session.target_names(),
        duration::format(quiet),
        settle_words(&settings.common),
        duration::format(settings.timeout)
    );
    say_txn_unknown(&session);
    let mut shower = shower(&settings.common, settings.timeout);
    let deadline = tokio::time::Instant::now() + settings.timeout;
    // When the targets were drained, taken at the verdict: the state read after it (the
    // ring's last records) may have work in flight again, and a time computed from that
    // said `drained ... (at 0.000s)`.
    let mut drained_at: Option<u64> = None;
    let ended = session
        .follow(
            DRAIN_TICK,
            Some(deadline),
            |state| {
                let held = drained(state, rule);
                if held {
                    // When it held, read as it held: the verdict's own moment.
                    drained_at = rule.drained_at(state);
                }
                held
            },
            |s| shower.show(&s.state, "waiting"),
        )
        .await?;
    note_event_loops(&mut session.state);
    let state = &session.state;
    let drained_at_ms = drained_at
        .filter(|_| ended == EndedBy::Condition)
        .map(|at| state.ms_since_attach(at));
    let times = DrainTimes {
        drained_at_ms,
        exited_at_ms: state.exited_at_ms(),
        ..DrainTimes::default()
    };
    // Operations are observed where `--op` named functions (the basis lists them then).
    let drain = verdict::drain::drain_report(state, times, rule.settle, false);
    let timed_out = matches!(ended, EndedBy::Duration);
    let interrupted = ended == EndedBy::Interrupted;
    let report = drain_report(&session, Mode::Wait, drain, timed_out, interrupted);
    let p = progress(&session.state, "timeout");
    let ending = verdict::drain::wait_ending(ended, report.verdict, drained_at_ms);
    let mut headline = wait_headline(ending, quiet, settings.timeout, &p);
    if matches!(ending, Ending::Drained { .. }) {
        headline = with_basis(headline, &report, &settings.common);
    }
    // The verdict goes out before the probe is taken down (which takes the kernel about a
    // second): whoever reads the output does not wait for that.
    shower.finish(&report, &headline);
    session.finish();
    Ok(drain_exit_code(&report))
}

/// The measured drain tail, for a stop's line.
fn tail_words(report: &Report) -> String {
    match report.drain.as_ref().and_then(|d| d.tail_ms) {
        Some(tail) => format!(
            "; drain tail {} (--settle-from this report would settle {})",
            duration::format(Duration::from_millis(tail)),
            duration::format(verdict::drain::settle_for_tail(Duration::from_millis(tail)))
        ),
        None => String::new(),
    }
}

/// `drainwatch stop`: signal, follow the drain, wait for the exit.
pub async fn stop(settings: &StopSettings) -> Result<u8> {
    let rule = rule(&settings.common);
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
    // Each signalled process gets `--signal`, else its server's own graceful signal, else
    // SIGTERM (docs/design.md, "Command line"; verdict/shutdown.rs).
    let signals: Vec<i32> = pidfds
        .iter()
        .map(|(pid, _)| {
            let comm = procfs::comm(*pid).unwrap_or_default();
            let server = shutdown::known(procfs::exe_name(*pid).as_deref(), &comm);
            let (sig, chosen) = shutdown::stop_signal(settings.signal, server);
            if let Some(line) = signal_choice_line(*pid, &comm, sig, chosen, server) {
                eprintln!("drainwatch: {line}");
            }
            sig
        })
        .collect();
    let mut session = Session::attach(set, &settings.common)?;
    note_event_loops(&mut session.state);
    let mut names: Vec<String> = signals.iter().map(|sig| signals::name(*sig)).collect();
    names.dedup();
    let signal_name = names.join(", ");
    let signalled: Vec<String> = pidfds.iter().map(|(pid, _)| pid.to_string()).collect();
    eprintln!(
        "drainwatch: attached to {}; sending {signal_name} to {}, then following the drain{} for at most {}",
        session.target_names(),
        signalled.join(", "),
        settle_words(&settings.common),
        duration::format(settings.timeout)
    );
    say_txn_unknown(&session);
    let signal_ns = procfs::monotonic_now().as_nanos() as u64;
    for ((_, pidfd), sig) in pidfds.iter().zip(&signals) {
        pidfd.signal(*sig);
    }
    let signal_at_ms = session.state.ms_since_attach(signal_ns);
    let mut shower = shower(&settings.common, settings.timeout);
    let mut drained_at_ns: Option<u64> = None;
    let mut note_drain = |state: &AuditState| {
        if drained_at_ns.is_none() && drained(state, rule) {
            let at = rule.drained_at(state).unwrap_or(signal_ns);
            drained_at_ns = Some(at.max(signal_ns + rule.quiet.as_nanos() as u64));
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
    let times = DrainTimes {
        signal: Some(signal_name.clone()),
        signal_at_ms: Some(signal_at_ms),
        drained_at_ms,
        exited_at_ms,
    };
    let drain = verdict::drain::drain_report(&session.state, times, rule.settle, true);
    let interrupted = ended == EndedBy::Interrupted;
    let report = drain_report(&session, Mode::Stop, drain, timed_out, interrupted);
    let p = progress(&session.state, "end");
    if let Some(file) = &settings.report {
        write_report(file, &report)?;
    }
    let ending = verdict::drain::stop_ending(ended, &report);
    let mut headline = stop_headline(ending, &signal_name, settings.timeout, &p);
    if matches!(ending, Ending::StoppedCleanly { .. }) {
        headline = with_basis(
            format!("{headline}{}", tail_words(&report)),
            &report,
            &settings.common,
        );
    }
    shower.finish(&report, &headline);
    session.finish();
    Ok(drain_exit_code(&report))
}
