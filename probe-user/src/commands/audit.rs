//! `drainwatch audit`: attach, follow the targets until they exit (or the duration ends, or
//! Ctrl-C), then report. The decisions live in [`crate::model::state`].

use std::{io::Write, time::Duration};

use crate::{
    model::report::{Mode, Report, Verdict},
    output::summary,
    session::{EndWhen, EndedBy, Session},
    settings::{AuditSettings, ReportFile},
    Error, Result,
};

/// How often the ring buffer is drained: most socket events do not wake userspace.
const TICK: Duration = Duration::from_millis(50);

pub struct Outcome {
    pub report: Report,
    pub ended_by: EndedBy,
    pub elapsed: Duration,
}

impl Outcome {
    /// Exit code per DESIGN.md: 0 clean; 1 violations, or not all was seen.
    pub fn exit_code(&self) -> i32 {
        match self.report.verdict {
            Verdict::Clean => 0,
            Verdict::Violations | Verdict::Incomplete | Verdict::Timeout => 1,
        }
    }
}

/// Runs the audit and publishes its outcome (summary or JSON, report file) before the probe
/// is taken down.
pub async fn run(settings: &AuditSettings) -> Result<Outcome> {
    let mut session = Session::attach(&settings.targets, &settings.common)?;
    let until = match (settings.duration, session.end_when()) {
        (Some(d), _) => format!("for {:.1}s or until they exit", d.as_secs_f64()),
        (None, EndWhen::Exited(_)) => "until the launched command exits".to_string(),
        (None, EndWhen::Never) => "until Ctrl-C (new processes with these names join)".to_string(),
        (None, EndWhen::AllExited) => "until they exit".to_string(),
    };
    eprintln!(
        "drainwatch: attached to {}; auditing {until}; Ctrl-C stops with a partial report",
        session.target_names()
    );
    let started = std::time::Instant::now();
    let deadline = settings.duration.map(|d| tokio::time::Instant::now() + d);
    let ended_by = session.follow(TICK, deadline, |_| false, |_| {}).await?;
    let elapsed = started.elapsed();
    let mut report = session.state.report(
        Mode::Audit,
        session.lost(),
        session.probe.failures().to_vec(),
    );
    settings.policy.apply(&mut report);
    let outcome = Outcome {
        report,
        ended_by,
        elapsed,
    };
    publish(&outcome, settings.common.json, settings.report.as_ref())?;
    if let Some(file) = &settings.junit {
        let xml = crate::output::junit::render(&outcome.report, outcome.elapsed.as_secs_f64());
        write_text(file, &xml)?;
    }
    session.finish();
    Ok(outcome)
}

/// Prints the outcome (human summary, or the report as one JSON line with `--json`) and
/// writes the report file.
pub fn publish(outcome: &Outcome, json: bool, report_file: Option<&ReportFile>) -> Result<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string(&outcome.report).expect("report serializes")
        );
    } else {
        print!("{}", summary::render(outcome));
    }
    if let Some(file) = report_file {
        write_report(file, &outcome.report)?;
    }
    Ok(())
}

pub fn write_report(file: &ReportFile, report: &Report) -> Result<()> {
    let mut text = serde_json::to_string_pretty(report).expect("report serializes");
    text.push('\n');
    write_text(file, &text)
}

/// Replaces the file's contents (it was opened, and so proven writable, before the run).
pub fn write_text(file: &ReportFile, text: &str) -> Result<()> {
    let io = |cause| Error::ReportPath {
        path: file.path.clone(),
        cause,
    };
    let mut handle = &file.file;
    handle.set_len(0).map_err(io)?;
    std::io::Seek::rewind(&mut handle).map_err(io)?;
    handle.write_all(text.as_bytes()).map_err(io)?;
    handle.sync_all().map_err(io)
}
