//! `drainwatch audit`: attach, follow the targets until they exit (or the duration ends, or
//! Ctrl-C), then report. The decisions live in [`crate::model::state`].

use std::time::Duration;

use crate::{
    model::report::Mode,
    output::publish::{publish, write_text},
    session::{EndWhen, Session},
    settings::AuditSettings,
    verdict::outcome::Outcome,
    Error, Result,
};

/// How often the ring buffer is drained: most socket events do not wake userspace.
const TICK: Duration = Duration::from_millis(50);

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
    eprintln!(
        "drainwatch: attached to {}; auditing {until}; Ctrl-C stops with a partial report",
        session.target_names()
    );
    let deadline = settings.duration.map(|d| tokio::time::Instant::now() + d);
    let ended_by = session.follow(TICK, deadline, |_| false, |_| {}).await?;
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
    settings.policy.apply(&mut report);
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
