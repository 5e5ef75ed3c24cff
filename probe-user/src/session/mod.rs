//! A session: the probe attached to a set of targets, and the loop that feeds its events
//! into the state machine. `audit`, `watch`, `wait` and `stop` are sessions with different
//! ends and outputs.
//!
//! Attaching ([`Session::attach`]): the probe loaded, then each target by [`attach`] (one
//! process top-down), seeding what it already had going ([`seed`], from the surveys in
//! [`existing`] and [`unix_existing`], judged by [`attach_rule`], the database's own view in
//! [`db_view`]), then the probe units' hooks ([`units`]: [`tls`], [`ops`]). The loop ([`Session::follow`]): read what the kernel says ([`reader`],
//! [`requests`]), then the periodic chores ([`CHORES`], each on its own [`every::Every`]).
//!
//! Imports run one way: this module uses its children; attach -> seed -> existing,
//! unix_existing, db_view -> attach_rule; attach, reader -> units -> tls, ops, every, unit; tls, ops -> unit;
//! reader -> requests, exits, unix_close -> trace, every; follow -> attach (a process the
//! launched command signals, surveyed like an attached one);
//! recheck -> existing, db_view. The session joins the layers below it: it may use
//! [`crate::kernel`], [`crate::host`], [`crate::events`], [`crate::model`],
//! [`crate::verdict`] (why a run ended) and the settings; only the commands use it.

mod attach;
pub mod attach_rule;
pub mod db_view;
mod every;
pub mod existing;
mod exits;
mod follow;
mod reader;
mod recheck;
mod requests;
mod seed;
mod trace;
mod unit;
mod units;
// Each probe unit, as the session drives it (`tls`, `ops`).
probe_units!(unit_modules);
pub mod unix_close;
pub mod unix_existing;

use std::{os::fd::AsRawFd, time::Duration};

use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};

use crate::{
    host::{launch, procfs},
    kernel::probe::{Loader, Probe, ProbeOptions},
    kernel::tracefs,
    kernel::{backends, features::check_privileges},
    model::protocol::registry,
    model::state::{AuditState, Origin},
    output::doctor,
    settings::{Common, TargetSet},
    verdict::outcome::EndedBy,
    Error, Result,
};

use self::{attach::CgroupWatch, every::Every, reader::Reader, units::Rescan};

/// The longest the ring buffer waits to be read.
const DRAIN_EVERY: Duration = Duration::from_millis(50);

/// A chore of the loop, run after the kernel was read (see [`CHORES`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chore {
    /// Targets whose process has ended with no exit event read (reader.rs, exits.rs).
    UnseenExits,
    /// Unix-domain connections closed where the kernel has no hook (unix_close.rs).
    UnixCloses,
    /// Processes that joined a watched cgroup (attach.rs, `CgroupWatch`).
    CgroupJoins,
    /// Client connections still unknown since attach (recheck.rs).
    UnknownConns,
    /// Transaction states still unknown since attach (recheck.rs).
    UnknownTxns,
    /// What the targets loaded since, for the probe units to hook (units.rs, `Rescan`).
    Rescans,
}

/// The loop's chores in the order they run after each read of the kernel, each with how
/// often. A look at unknown connections backs off from every 25 ms (a thread caught running
/// at attach is the usual cause, and the drain waits for the answer) to every 200 ms (each
/// look reads the targets' fd tables, their /proc/net/tcp and a sock_diag dump: on a busy
/// server with many connections that costs). The database's view is asked every second (a
/// /proc scan for PostgreSQL titles; a query with `--db-url`); cgroups are read every
/// 250 ms.
const CHORES: [(Chore, Every); 6] = [
    (Chore::UnseenExits, Every::new(Duration::ZERO)),
    (Chore::UnixCloses, Every::new(Duration::ZERO)),
    (Chore::CgroupJoins, Every::new(Duration::from_millis(250))),
    (
        Chore::UnknownConns,
        Every::backing_off(Duration::from_millis(25), 3),
    ),
    (Chore::UnknownTxns, Every::new(Duration::from_secs(1))),
    (Chore::Rescans, Every::new(Duration::ZERO)),
];

/// Probe options from the shared flags.
pub fn probe_options(common: &Common) -> ProbeOptions {
    ProbeOptions {
        follow_forks: common.follow_forks,
        db_ports: common
            .db_ports
            .iter()
            .map(|port| (*port, registry::wire_of_port(*port)))
            .collect(),
        db_addrs: common
            .db_addrs
            .iter()
            .map(|addr| (*addr, registry::wire_of_port(addr.port())))
            .collect(),
        ring_bytes: common.ring_bytes,
        ..ProbeOptions::default()
    }
}

/// When [`Session::follow`] ends by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndWhen {
    AllExited,
    /// When this target (a launched command) has exited.
    Exited(u32),
    Never,
}

/// Which processes the run is about, and when it ends by itself.
struct Scope {
    /// The `--comm` names, to tell at the end which matched nothing.
    comms: Vec<String>,
    /// audit and serve: the `--unit`/`--cgroup` cgroups, read again while the run lasts.
    cgroups: Option<CgroupWatch>,
    end: EndWhen,
}

/// SIGINT and SIGTERM to drainwatch, caught from before anything is attached.
struct Stops {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

pub struct Session {
    pub probe: Probe,
    pub state: AuditState,
    /// The pid of a command launched with `-- CMD`.
    pub launched: Option<u32>,
    /// What the kernel says, into the state.
    reader: Reader,
    scope: Scope,
    /// The periodic chores and when each last ran.
    chores: [(Chore, Every); CHORES.len()],
    rescan: Rescan,
    stops: Stops,
    common: Common,
}

impl Session {
    /// Mounts tracefs if needed, loads the probe, and makes the targets targets. Programs are
    /// attached before any target is added: from the moment a pid is in the map, every event
    /// about it is seen.
    pub fn attach(set: &TargetSet, common: &Common) -> Result<Self> {
        // Ctrl-C and SIGTERM are caught from here on, before anything is attached or
        // announced: one that arrives while attaching ends the run with a partial report
        // at the first turn of the loop, instead of killing drainwatch mid-way.
        let stops = Stops {
            interrupt: tokio::signal::unix::signal(SignalKind::interrupt())
                .map_err(|e| Error::Load(format!("cannot handle SIGINT: {e}")))?,
            terminate: tokio::signal::unix::signal(SignalKind::terminate())
                .map_err(|e| Error::Load(format!("cannot handle SIGTERM: {e}")))?,
        };
        // A selector that refuses or matches nothing costs one line before anything is
        // loaded; it is resolved again once the probe runs, which is the one that counts.
        attach::check_selection(set)?;
        let mut probe = load(common)?;
        let attach_time = procfs::monotonic_now();
        let mut state =
            AuditState::new(attach_time.as_nanos() as u64, std::process::id()).with_sockets();
        units::install(&mut probe, &mut state, common);
        // Names first: a process that execs under one from now on is caught in the kernel;
        // then the ones running now, from /proc and cgroupfs.
        for comm in &set.comms {
            probe.add_comm(comm)?;
        }
        let selection = attach::check_selection(set)?;
        attach::attach_tree(&mut probe, &mut state, &selection, common)?;
        if state.targets().next().is_some() {
            units::attached(&probe)?;
        }
        // What was in flight at attach holds the very first drain check.
        units::sample(&mut probe, &mut state, common.verbose);
        if state.targets().next().is_none() && set.launch.is_none() && !set.await_comms {
            // What matched has exited since: there is nothing to wait for or stop.
            return Err(Error::NothingMatched(
                selection.labels(&set.comms, &set.cgroups),
            ));
        }
        let mut launched = None;
        if let Some(command) = &set.launch {
            let held = launch::spawn_held(command)?;
            probe.add_launched(held.pid)?;
            state.add_target(held.pid, command.comm(), Origin::Launched);
            launched = Some(held.release()?);
        }
        for failure in probe.failures() {
            eprintln!("drainwatch: warning: probe {failure}: the verdict will be incomplete");
        }
        // The attach line follows: what holds for a while from attach holds from here.
        state.attached(procfs::monotonic_now().as_nanos() as u64);
        let socket_hooks = probe.hooks().by_socket();
        Ok(Self {
            probe,
            state,
            launched,
            reader: Reader::new(common, socket_hooks),
            scope: Scope {
                comms: set.comms.clone(),
                cgroups: (set.await_comms && !set.cgroups.is_empty()).then(|| CgroupWatch {
                    cgroups: set.cgroups.clone(),
                    common: common.clone(),
                }),
                end: end_when(set, launched),
            },
            chores: CHORES,
            rescan: Rescan::new(),
            stops,
            common: common.clone(),
        })
    }

    /// Fills the report's `coverage` with this kernel and the hooks that fed the socket
    /// side (docs/hooks.md).
    pub fn stamp_coverage(&self, report: &mut crate::model::report::Report) {
        let coverage = report.coverage.get_or_insert_with(Default::default);
        coverage.kernel = Some(crate::kernel::features::kernel_release());
        coverage.hooks = Some(self.probe.hooks().coverage());
        units::coverage(&self.probe, coverage);
    }

    /// Whether the targets this session waits for have exited.
    pub fn targets_done(&self) -> bool {
        match self.scope.end {
            EndWhen::AllExited => self.state.all_exited(),
            // The command's consequences too: a target it told to end (`kill -TERM`,
            // `systemctl restart`) is followed to its exit, so the whole shutdown is audited.
            EndWhen::Exited(pid) => {
                self.state.has_exited(pid) && self.state.ending_targets().is_empty()
            }
            EndWhen::Never => false,
        }
    }

    /// The `--comm` names that no target ever had (docs/design.md: a selector that matched no
    /// process during the whole window is an error, not a clean run).
    pub fn unmatched_comms(&self) -> Vec<String> {
        self.scope
            .comms
            .iter()
            .filter(|name| !self.state.targets().any(|t| &t.comm == *name))
            .map(|name| format!("--comm {name}"))
            .collect()
    }

    pub fn end_when(&self) -> EndWhen {
        self.scope.end
    }

    /// "name (pid), ..." of the targets.
    pub fn target_names(&self) -> String {
        self.state
            .targets()
            .map(|t| format!("{} ({})", t.comm, t.tgid))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Reads every event waiting in the ring buffer, then the request counters, into the
    /// state.
    pub fn drain(&mut self) {
        self.reader.read(&mut self.probe, &mut self.state, false);
    }

    /// Events lost in the kernel plus records that could not be decoded.
    pub fn lost(&self) -> u64 {
        self.probe.unseen() + self.reader.malformed()
    }

    /// One turn of the loop's clock: read the kernel, then each chore that is due.
    fn tick(&mut self) {
        self.drain();
        for i in 0..self.chores.len() {
            let (chore, every) = self.chores[i];
            if every.due() && self.run(chore) {
                self.chores[i].1.ran();
            }
        }
    }

    /// Runs one chore; whether it had something to do (a look at nothing is not counted).
    fn run(&mut self, chore: Chore) -> bool {
        let (probe, state, verbose) = (&mut self.probe, &mut self.state, self.common.verbose);
        match chore {
            Chore::UnseenExits => self.reader.notice_unseen_exits(probe, state),
            Chore::UnixCloses => self.reader.notice_unix_closes(probe, state),
            Chore::CgroupJoins => match &self.scope.cgroups {
                Some(watch) => watch.join(probe, state),
                None => return false,
            },
            Chore::UnknownConns => {
                return recheck::unknown_conns(probe, state, &self.common, verbose)
            }
            Chore::UnknownTxns => return recheck::unknown_txns(state, &self.common),
            Chore::Rescans => self.rescan.run(probe, state, verbose),
        }
        true
    }

    /// Feeds events into the state until every target exited, `deadline` passes, SIGINT or
    /// SIGTERM arrives, or `done` holds. `on_tick` runs every `tick` (after draining).
    pub async fn follow(
        &mut self,
        tick: Duration,
        deadline: Option<tokio::time::Instant>,
        mut done: impl FnMut(&AuditState) -> bool,
        mut on_tick: impl FnMut(&Session),
    ) -> Result<EndedBy> {
        // SAFETY: the ring buffer's fd is owned by `self.probe`, which outlives `ring_fd`,
        // dropped at the end of this function.
        let ring_fd = unsafe { AsyncFd::register(self.probe.events().as_raw_fd()) }
            .map_err(|e| Error::Load(format!("cannot poll the ring buffer: {e}")))?;
        // The ring is drained at least every DRAIN_EVERY whatever the view's interval: the
        // kernel only wakes us once it is half full, and a slow reader loses events.
        let mut ticker = tokio::time::interval(tick.min(DRAIN_EVERY));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shown = Every::new(tick);
        // Read before the first look at `done`: what the kernel saw while the targets were
        // being attached (which can take longer than a quiet window: a server's own view
        // asked, a survey under load) is in the ring and the counters, not yet in the state.
        // A state that had read nothing could call a busy server drained at the first look.
        self.drain();
        let ended = loop {
            if self.targets_done() {
                break match self.scope.end {
                    EndWhen::Exited(_) => EndedBy::CommandExited,
                    EndWhen::AllExited | EndWhen::Never => EndedBy::AllExited,
                };
            }
            // Read the ring again right before the look: a tick's chores (a rescan of /proc,
            // a recheck) can take long on a loaded machine, and `done` judges the state as of
            // now; a record that came in meanwhile (a query between two writes) and was not
            // yet read would let a settle time or quiet window pass that had not passed.
            self.drain();
            if done(&self.state) {
                break EndedBy::Condition;
            }
            tokio::select! {
                guard = ring_fd.readable() => {
                    if let Ok(mut guard) = guard {
                        guard.clear_ready();
                    }
                    self.drain();
                }
                _ = ticker.tick() => {
                    self.tick();
                    if shown.take() {
                        on_tick(self);
                    }
                }
                _ = self.stops.interrupt.recv() => break EndedBy::Interrupted,
                _ = self.stops.terminate.recv() => break EndedBy::Interrupted,
                _ = sleep_until(deadline) => break EndedBy::Duration,
            }
        };
        drop(ring_fd);
        // Whatever is still queued happened inside the window: read it before reporting.
        self.drain();
        self.reader
            .notice_unix_closes(&mut self.probe, &mut self.state);
        if ended != EndedBy::Interrupted {
            self.await_dying().await;
        }
        self.reader.read(&mut self.probe, &mut self.state, true);
        Ok(ended)
    }

    /// A target seen dying (sent SIGKILL, or gone from /proc) whose exit event has not been
    /// read yet: waits a moment for it, so that its exit record is never missing from a
    /// report that saw it die. A SIGKILL takes effect in microseconds to milliseconds; a
    /// task stuck in uninterruptible sleep can take longer, and is then reported running.
    async fn await_dying(&mut self) {
        const PATIENCE: Duration = Duration::from_secs(2);
        let started = std::time::Instant::now();
        loop {
            let mut dying = self.state.killed_running();
            dying.extend(
                self.state
                    .running_targets()
                    .into_iter()
                    .filter(|tgid| procfs::has_ended(*tgid)),
            );
            if dying.is_empty() || started.elapsed() > PATIENCE {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
            self.drain();
            self.reader
                .notice_unseen_exits(&mut self.probe, &mut self.state);
        }
    }

    /// Reaps a launched command that has exited and leaves the probe to be taken down after
    /// drainwatch's exit (host/detach.rs: the verdict is out, nobody waits for the kernel),
    /// or detaches it now where that cannot be arranged.
    pub fn finish(self) {
        let launched = self.launched;
        let exited = launched.is_some_and(|pid| self.state.has_exited(pid));
        if let (Some(pid), true) = (launched, exited) {
            launch::reap(pid);
        }
        if crate::host::detach::hand_over_to_exit() {
            // Its fds close when this process exits; the child holds them until then.
            std::mem::forget(self.probe);
        } else {
            self.probe.close();
        }
    }
}

/// Loads the probe with the hooks this kernel offers: privileges first (without them
/// tracefs cannot be read or mounted either, and the fix to tell is "run as root"), tracefs
/// mounted if needed, then what this kernel offers, logged at -v like `drainwatch doctor`
/// prints it; a missing essential ends here with one line, before anything is loaded.
fn load(common: &Common) -> Result<Probe> {
    check_privileges()?;
    // aya's loader parses the kernel's BTF: first, before the features and the hooks are
    // looked up with our own reader, so that the two parses are never in memory at once
    // (kernel/probe.rs, `Loader`).
    let loader = Loader::make();
    let (tracefs_root, mounted) = tracefs::ensure_mounted()?;
    if mounted {
        eprintln!("drainwatch: mounted tracefs at {}", tracefs_root.display());
    }
    let mut options = probe_options(common);
    let features = backends::detect();
    doctor::log(&features);
    features.require_essentials(options.sockets)?;
    options.hooks = backends::choose(&features)?;
    Probe::load(&tracefs_root, &options, loader)
}

/// When the audit window closes by itself: with a launched command, when it exits (e.g. a
/// restart script); with names, never (new processes may still come: only --duration or
/// Ctrl-C end it); else when every target has exited. A name or a cgroup of an audit or
/// serve may take in new processes: such a run ends at --duration or Ctrl-C, not when the
/// current ones have exited.
fn end_when(set: &TargetSet, launched: Option<u32>) -> EndWhen {
    let awaits = set.await_comms && !(set.comms.is_empty() && set.cgroups.is_empty());
    match (launched, awaits) {
        (Some(pid), _) => EndWhen::Exited(pid),
        (None, true) => EndWhen::Never,
        (None, false) => EndWhen::AllExited,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
