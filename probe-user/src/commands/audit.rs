//! `drainwatch audit`: attach, follow the targets until they exit (or the duration ends, or
//! Ctrl-C), then report. The decisions live in [`crate::model::state`].

use std::{collections::BTreeSet, time::Duration};

use crate::{
    host::pidfd::PidFd,
    model::{
        report::Mode,
        state::{AuditState, Origin},
    },
    output::publish::{publish, write_text},
    session::{EndWhen, Session},
    settings::AuditSettings,
    verdict::{
        drain::{DrainRule, DrainTimes},
        outcome::{self, EndedBy, Outcome},
    },
    Error, Result,
};

/// How often the ring buffer is drained: most socket events do not wake userspace.
const TICK: Duration = Duration::from_millis(50);
/// How long an interrupted audit waits for the launched command to end after SIGTERM,
/// and then after SIGKILL (docs/design.md, "Command line").
const LAUNCHED_GRACE: Duration = Duration::from_secs(5);
const KILLED_GRACE: Duration = Duration::from_secs(2);

/// The launched command and the processes it forked (and they forked), still running: not
/// the servers it signalled or named targets.
fn launched_tree(state: &AuditState, launched: u32) -> BTreeSet<u32> {
    let mut tree = BTreeSet::from([launched]);
    loop {
        let before = tree.len();
        for target in state.targets() {
            if let Origin::Forked { parent } = target.origin {
                if tree.contains(&parent) {
                    tree.insert(target.tgid);
                }
            }
        }
        if tree.len() == before {
            break;
        }
    }
    tree.retain(|tgid| !state.has_exited(*tgid));
    tree
}

fn signal_all(tree: &BTreeSet<u32>, sig: i32) {
    for tgid in tree {
        if let Ok(pidfd) = PidFd::open(*tgid) {
            pidfd.signal(sig);
        }
    }
}

/// An audit interrupted (Ctrl-C, SIGTERM from a CI runner's timeout) while its launched
/// command runs: the command is not left running behind the report. It gets SIGTERM (with
/// what it forked) and [`LAUNCHED_GRACE`] to end, followed like the rest of the audit;
/// what is left then (or at a second Ctrl-C/SIGTERM) gets SIGKILL, which the report shows
/// as drainwatch's. docs/design.md, "Command line"; docs/ci.md.
async fn stop_launched(session: &mut Session, launched: u32) -> Result<()> {
    let tree = launched_tree(&session.state, launched);
    if tree.is_empty() {
        return Ok(());
    }
    let pids: Vec<String> = tree.iter().map(u32::to_string).collect();
    eprintln!(
        "drainwatch: interrupted: sending SIGTERM to the launched command and what it started \
         ({}), waiting up to {} for them to end",
        pids.join(", "),
        crate::duration::format(LAUNCHED_GRACE)
    );
    signal_all(&tree, libc::SIGTERM);
    let gone = |state: &AuditState| launched_tree(state, launched).is_empty();
    let grace = tokio::time::Instant::now() + LAUNCHED_GRACE;
    session.follow(TICK, Some(grace), gone, |_| {}).await?;
    let left = launched_tree(&session.state, launched);
    if left.is_empty() {
        return Ok(());
    }
    let pids: Vec<String> = left.iter().map(u32::to_string).collect();
    eprintln!(
        "drainwatch: still running: {}: sending SIGKILL",
        pids.join(", ")
    );
    signal_all(&left, libc::SIGKILL);
    let grace = tokio::time::Instant::now() + KILLED_GRACE;
    session.follow(TICK, Some(grace), gone, |_| {}).await?;
    Ok(())
}

/// Runs the audit and publishes its outcome (summary or JSON, report file) before the probe
/// is taken down.
pub async fn run(settings: &AuditSettings) -> Result<Outcome> {
    let mut session = Session::attach(&settings.targets, &settings.common)?;
    let until = match (settings.duration, session.end_when()) {
        (Some(d), _) => format!("for {} or until they exit", crate::duration::format(d)),
        (None, EndWhen::Exited(_)) => "until the launched command exits".to_string(),
        (None, EndWhen::Never) => {
            "until Ctrl-C (new processes with these names or in these cgroups join)".to_string()
        }
        (None, EndWhen::AllExited) => "until they exit".to_string(),
    };
    // Names that match nothing yet (`--comm nosuch`): said as such, never "attached to ;".
    let names = session.target_names();
    let targets = if names.is_empty() {
        let waiting: Vec<String> = settings
            .targets
            .comms
            .iter()
            .map(|c| format!("--comm {c}"))
            .chain(settings.targets.cgroups.iter().map(|c| c.label.clone()))
            .collect();
        format!(
            "nothing yet ({} matched no process so far)",
            waiting.join(", ")
        )
    } else {
        names
    };
    eprintln!(
        "drainwatch: attached to {targets}; auditing {until}; Ctrl-C stops with a partial report"
    );
    crate::commands::drain::note_event_loops(&mut session.state);
    let deadline = settings.duration.map(|d| tokio::time::Instant::now() + d);
    // The drain after the first signal asking a target to end, judged as `stop` does
    // (the default quiet window), while a target still runs.
    let rule = DrainRule::quiet(settings.common.quiet);
    let mut drained_at_ns: Option<u64> = None;
    let ended_by = session
        .follow(
            TICK,
            deadline,
            |_| false,
            |s| {
                let state = &s.state;
                let now = crate::host::procfs::monotonic_now().as_nanos() as u64;
                if let (None, Some((_, signal_ns))) = (drained_at_ns, state.first_end_signal()) {
                    if !state.running_targets().is_empty() && rule.drained(state, now) {
                        let at = rule.drained_at(state).unwrap_or(now);
                        drained_at_ns = Some(at.max(signal_ns + rule.quiet.as_nanos() as u64));
                    }
                }
            },
        )
        .await?;
    let interrupted = ended_by == EndedBy::Interrupted;
    if let (true, Some(launched)) = (interrupted, session.launched) {
        stop_launched(&mut session, launched).await?;
    }
    // From the same origin as every `at` of the report (the attach stamp, taken once the
    // probe was loaded): measured from here, the window came out shorter than the times of
    // the violations in it ("after 1.006s" above a SIGKILL "at 1.077s").
    let elapsed = crate::host::procfs::monotonic_now()
        .saturating_sub(Duration::from_nanos(session.state.attach_ns()));
    let unmatched = session.unmatched_comms();
    if !unmatched.is_empty() {
        session.finish();
        return Err(Error::NothingMatched(unmatched));
    }
    let mut report = session.state.report(
        Mode::Audit,
        session.lost(),
        session.probe.failures().to_vec(),
    );
    session.stamp_coverage(&mut report);
    let state = &session.state;
    let signal = state.first_end_signal();
    let times = DrainTimes {
        signal: signal.map(|(name, _)| name.to_string()),
        signal_at_ms: signal.map(|(_, at)| state.ms_since_attach(at)),
        drained_at_ms: drained_at_ns.map(|at| state.ms_since_attach(at)),
        exited_at_ms: state.exited_at_ms(),
    };
    report.drain = Some(crate::verdict::drain::drain_report(
        state, times, None, true,
    ));
    settings.policy.apply(&mut report);
    if interrupted {
        outcome::mark_interrupted(&mut report);
    }
    let outcome = Outcome {
        report,
        ended_by,
        elapsed,
    };
    publish(&outcome, settings.common.json, settings.report.as_ref())?;
    if let Some(file) = &settings.junit {
        let targets = &settings.targets;
        let run = crate::output::junit::JunitRun {
            started: std::time::SystemTime::now() - outcome.elapsed,
            elapsed_s: outcome.elapsed.as_secs_f64(),
            hostname: crate::output::junit::hostname(),
            launched: session.launched,
            interrupted,
            launched_is_harness: !(targets.pids.is_empty()
                && targets.comms.is_empty()
                && targets.cgroups.is_empty()),
            selected_comms: &targets.comms,
            name: settings.junit_name.as_deref(),
        };
        let xml = crate::output::junit::render(&outcome.report, &run);
        write_text(file, &xml)?;
    }
    session.finish();
    Ok(outcome)
}
