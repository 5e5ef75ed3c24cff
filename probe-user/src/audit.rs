//! `drainwatch audit`: attach, follow the targets until they exit (or the duration ends, or
//! Ctrl-C), then report. The I/O half of the audit; the decisions live in [`crate::state`].

use std::{io::Write, os::fd::AsRawFd, time::Duration};

use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};

use crate::{
    event::{self, Event},
    launch,
    probe::{Probe, ProbeOptions},
    procfs,
    report::{Mode, Report, Verdict},
    settings::{AuditSettings, AuditTargets, ReportFile},
    state::{AuditState, Origin},
    summary, tracefs, Error, Result,
};

/// How often the ring buffer is drained even without a wake-up, and the kernel log flushed.
const TICK: Duration = Duration::from_millis(100);

/// Why the audit window closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndedBy {
    AllExited,
    Duration,
    Interrupted,
}

impl EndedBy {
    pub fn describe(self) -> &'static str {
        match self {
            EndedBy::AllExited => "every target exited",
            EndedBy::Duration => "the --duration ended",
            EndedBy::Interrupted => "interrupted (partial report)",
        }
    }
}

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

/// Adds the named pids (and their current threads) to the probe and the state.
fn attach_pids(probe: &mut Probe, state: &mut AuditState, pids: &[u32]) -> Result<()> {
    for &tgid in pids {
        probe.add_target(tgid, tgid)?;
        for pid in procfs::threads(tgid) {
            probe.add_target(pid, tgid)?;
            state.add_thread(pid, tgid);
        }
        // Checked after the insert: a process that exited in between would otherwise be
        // audited forever, its exit never seen.
        let comm = procfs::comm(tgid).filter(|_| procfs::process_exists(tgid));
        let Some(comm) = comm else {
            return Err(Error::NoSuchProcess(tgid));
        };
        state.add_target(tgid, comm, Origin::Named);
    }
    Ok(())
}

/// Fills in what only userspace can know, right after the event is read.
fn enrich(event: &mut Event) {
    match event {
        Event::Signal(signal) if signal.sig == libc::SIGKILL => {
            signal.sender_cmdline = procfs::cmdline(signal.sender_tgid);
        }
        Event::Fork(fork) => fork.child_tgid = procfs::tgid_of(fork.child_pid),
        _ => {}
    }
}

struct Reader {
    malformed: u64,
    verbose: u8,
}

impl Reader {
    /// Reads every record waiting in the ring buffer into the state.
    fn drain(&mut self, probe: &mut Probe, state: &mut AuditState) {
        let verbose = self.verbose;
        let ring = probe.events();
        while let Some(record) = ring.next() {
            match event::decode(&record) {
                Ok(mut event) => {
                    enrich(&mut event);
                    if verbose >= 2 {
                        if let Ok(line) = serde_json::to_string(&event) {
                            eprintln!("{line}");
                        }
                    }
                    state.apply(&event);
                }
                Err(err) => {
                    log::warn!("undecodable probe record: {err}");
                    self.malformed += 1;
                }
            }
        }
    }
}

pub async fn run(settings: &AuditSettings) -> Result<Outcome> {
    let (tracefs_root, mounted) = tracefs::ensure_mounted()?;
    if mounted {
        eprintln!("drainwatch: mounted tracefs at {}", tracefs_root.display());
    }
    let options = ProbeOptions {
        follow_forks: settings.common.follow_forks,
        ..ProbeOptions::default()
    };
    // Programs are attached before any target is added: from the moment a pid is in the
    // map, every event about it is seen.
    let mut probe = Probe::load(&tracefs_root, &options)?;
    let attach_time = procfs::monotonic_now();
    let mut state = AuditState::new(attach_time.as_nanos() as u64, std::process::id());
    let mut launched = None;
    match &settings.targets {
        AuditTargets::Pids(pids) => attach_pids(&mut probe, &mut state, pids)?,
        AuditTargets::Launch(command) => {
            let held = launch::spawn_held(command)?;
            probe.add_target(held.pid, held.pid)?;
            state.add_target(held.pid, command.comm(), Origin::Launched);
            launched = Some(held.release()?);
        }
    }
    let names: Vec<String> = state
        .targets()
        .map(|t| format!("{} ({})", t.comm, t.tgid))
        .collect();
    let until = match settings.duration {
        Some(d) => format!("until they exit or {:.1}s pass", d.as_secs_f64()),
        None => "until they exit".to_string(),
    };
    eprintln!(
        "drainwatch: attached to {}; auditing {until}; Ctrl-C stops with a partial report",
        names.join(", ")
    );
    for failure in probe.failures() {
        eprintln!("drainwatch: warning: probe {failure}: the verdict will be incomplete");
    }

    // SAFETY: the ring buffer's fd is owned by `probe`, which outlives `ring_fd`: it is
    // dropped explicitly below, before the probe.
    let ring_fd = unsafe { AsyncFd::register(probe.events().as_raw_fd()) }
        .map_err(|e| Error::Load(format!("cannot poll the ring buffer: {e}")))?;
    let mut reader = Reader {
        malformed: 0,
        verbose: settings.common.verbose,
    };
    let mut tick = tokio::time::interval(TICK);
    let mut interrupt = tokio::signal::unix::signal(SignalKind::interrupt())
        .map_err(|e| Error::Load(format!("cannot handle SIGINT: {e}")))?;
    let mut terminate = tokio::signal::unix::signal(SignalKind::terminate())
        .map_err(|e| Error::Load(format!("cannot handle SIGTERM: {e}")))?;
    let deadline = settings.duration.map(|d| tokio::time::Instant::now() + d);
    let started = std::time::Instant::now();
    let ended_by = loop {
        if state.all_exited() {
            break EndedBy::AllExited;
        }
        tokio::select! {
            guard = ring_fd.readable() => {
                if let Ok(mut guard) = guard {
                    guard.clear_ready();
                }
                reader.drain(&mut probe, &mut state);
            }
            _ = tick.tick() => {
                reader.drain(&mut probe, &mut state);
                probe.flush_log();
            }
            _ = interrupt.recv() => break EndedBy::Interrupted,
            _ = terminate.recv() => break EndedBy::Interrupted,
            _ = sleep_until(deadline) => break EndedBy::Duration,
        }
    };
    let elapsed = started.elapsed();
    drop(ring_fd);
    // Whatever is still queued happened inside the window: read it before reporting.
    reader.drain(&mut probe, &mut state);
    probe.flush_log();
    let lost = probe.lost() + reader.malformed;
    let report = state.report(Mode::Audit, lost, probe.failures().to_vec());
    drop(probe);
    if let Some(pid) = launched {
        if ended_by == EndedBy::AllExited {
            // Reap it; the probe already saw how it ended.
            launch::reap(pid);
        }
    }
    Ok(Outcome {
        report,
        ended_by,
        elapsed,
    })
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
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
