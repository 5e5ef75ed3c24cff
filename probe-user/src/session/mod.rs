//! A session: the probe attached to a set of targets, and the loop that feeds its events
//! into the state machine. `audit`, `watch`, `wait` and `stop` are sessions with different
//! ends and outputs.
//!
//! [`existing`] seeds what the targets already had going at attach (connections, blocked
//! syscalls), judged by [`attach_rule`] (pure: whether a connection had a request in
//! flight). The session joins the layers below it: it may use [`crate::kernel`],
//! [`crate::host`], [`crate::events`], [`crate::model`], [`crate::verdict`] (why a run ended)
//! and the settings; only the commands use it.

pub mod attach_rule;
pub mod existing;
pub mod unix_close;
pub mod unix_existing;

use std::{os::fd::AsRawFd, time::Duration};

use probe_common::latency;
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};

use crate::{
    events::{self, Event, Protocol, RequestSample, Resolved, ResolvedBy, Role, TargetRequests},
    host::launch,
    host::netstat,
    host::procfs,
    host::targets::{self, Selected, Selection},
    kernel::probe::{Probe, ProbeOptions},
    kernel::tracefs,
    kernel::{backends, features::check_privileges},
    model::conns::AtAttach,
    model::protocol::spec,
    model::state::{AuditState, Origin},
    output::doctor,
    settings::{Common, TargetSet},
    verdict::outcome::EndedBy,
    Error, Result,
};

/// Adds a process (and its current threads) to the probe and the state, with the connections
/// it holds now. `Ok(false)` when it has already ended.
fn attach_process(
    probe: &mut Probe,
    state: &mut AuditState,
    tgid: u32,
    origin: Origin,
    common: &Common,
) -> Result<bool> {
    // Asked before the probe watches the target: the question is not one of its requests.
    let view = existing::server_view(tgid);
    probe.add_target(tgid, tgid)?;
    for pid in procfs::threads(tgid) {
        probe.add_target(pid, tgid)?;
        state.add_thread(pid, tgid);
    }
    // Checked after the insert: a process that exited in between would otherwise be
    // audited forever, its exit never seen. A zombie has exited too (its parent has not
    // reaped it yet): its exit tracepoint fired before the insert.
    let comm =
        procfs::comm(tgid).filter(|_| procfs::process_exists(tgid) && !procfs::has_ended(tgid));
    let Some(comm) = comm else {
        return Ok(false);
    };
    if procfs::is_32bit(tgid) {
        return Err(Error::Compat32(tgid));
    }
    state.add_target(tgid, comm, origin);
    existing::attach(probe, state, tgid, common, view.as_ref())?;
    if talks_outward(state, tgid) {
        hook_tls(probe, tgid, common.verbose);
    }
    Ok(true)
}

/// Whether `tgid` has a database or upstream connection: only then are its TLS libraries
/// hooked (a process that only serves clients pays no uprobe on its own TLS; loading the
/// probes takes the verifier a second or two, which would otherwise delay every attach to a
/// process that merely maps libssl). One that connects later is hooked by the rescans.
fn talks_outward(state: &AuditState, tgid: u32) -> bool {
    state.conns().is_some_and(|conns| {
        conns
            .conns()
            .any(|c| c.tgid == tgid && matches!(c.role, Role::Db | Role::Upstream))
    })
}

/// Hooks the TLS libraries `tgid` maps and did not before (kernel/tls.rs), saying at `-v`
/// which; one that could not be hooked is a warning (its conversations stay `unverified`).
fn hook_tls(probe: &mut Probe, tgid: u32, verbose: u8) {
    // DRAINWATCH_TLS=off: no uprobes (to measure their cost, or if a library misbehaves
    // under them); TLS conversations are then `unverified`, as for libraries not hooked.
    if std::env::var("DRAINWATCH_TLS").is_ok_and(|v| v == "off") {
        return;
    }
    for library in probe.attach_tls(tgid) {
        match &library.outcome {
            Ok(_) if verbose >= 1 => eprintln!("drainwatch: TLS: {}", library.describe()),
            Ok(_) => {}
            Err(_) => eprintln!(
                "drainwatch: warning: TLS: {}: its encrypted conversations stay unverified",
                library.describe()
            ),
        }
    }
}

/// How often the running targets' memory maps are read again for TLS libraries loaded
/// since (a module importing `ssl`, a launched command that has exec'd, a forked child):
/// at every drain tick while a target is new (a program loads its libraries and often
/// connects right after it starts: a conversation begun before its library is hooked is
/// read from the middle, or stays unverified), then every [`TLS_RESCAN_EVERY`].
const TLS_RESCAN_EVERY: Duration = Duration::from_millis(1000);
const TLS_NEW_TARGET: Duration = Duration::from_secs(5);

/// Resolves the selectors now; refuses one that matched nothing. A cgroup is read once, at
/// attach; a name may still match an exec during an audit or serve.
fn check_selection(set: &TargetSet) -> Result<Selection> {
    let selection = Selection::resolve(&set.pids, &set.comms, &set.cgroups)?;
    let unmatched: Vec<String> = selection
        .unmatched(&set.comms, &set.cgroups)
        .into_iter()
        .filter(|s| !(set.await_comms && s.starts_with("--comm ")))
        .collect();
    if !unmatched.is_empty() {
        return Err(Error::NothingMatched(unmatched));
    }
    Ok(selection)
}

/// Makes the selected processes targets, then their descendants that exist now. The tree
/// is read again until it holds still: a child forked by a descendant before that one was in
/// the kernel's map is seen by the next pass; forks after it are followed in the kernel.
fn attach_tree(
    probe: &mut Probe,
    state: &mut AuditState,
    selection: &Selection,
    common: &Common,
) -> Result<()> {
    for (tgid, why) in &selection.members {
        let attached = attach_process(probe, state, *tgid, Origin::Named, common)?;
        if !attached && *why == Selected::Pid {
            return Err(Error::NoSuchProcess(*tgid));
        }
    }
    const PASSES: usize = 8;
    for _ in 0..PASSES {
        let running = state.running_targets();
        let new: Vec<(u32, u32)> = targets::descendants(&running)
            .into_iter()
            .filter(|(child, _)| !running.contains(child))
            .collect();
        if new.is_empty() {
            break;
        }
        for (child, parent) in new {
            attach_process(probe, state, child, Origin::Tree { parent }, common)?;
        }
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
        Event::ConnOpen(open) if open.role == Role::Db || open.peer.is_none() => {
            if let Some(socket) = netstat::socket_of(open.tgid, open.fd) {
                open.local = Some(socket.local);
                open.peer = open.peer.or(Some(socket.remote));
            }
        }
        _ => {}
    }
}

/// The connections of a target that the state knows, as keys of the kernel's map.
fn known_conns(state: &AuditState, tgid: u32) -> Vec<probe_common::ConnKey> {
    state
        .conns()
        .into_iter()
        .flat_map(|c| c.conns())
        .filter(|c| c.tgid == tgid)
        .map(|c| probe_common::ConnKey {
            tgid: c.tgid,
            fd: c.fd,
        })
        .collect()
}

/// Which of these connections have a request in flight, by the kernel's map.
fn busy_fds(probe: &Probe, keys: &[probe_common::ConnKey]) -> Vec<u32> {
    keys.iter()
        .filter(|key| probe.request_in_flight(**key))
        .map(|key| key.fd)
        .collect()
}

/// The longest the ring buffer waits to be read.
const DRAIN_EVERY: Duration = Duration::from_millis(50);

/// How often the request latency histogram is read (the counters are read on every drain).
const LATENCY_READ_EVERY: Duration = Duration::from_millis(250);

struct Reader {
    malformed: u64,
    verbose: u8,
    /// Each process's latency histogram totals at the previous read, to hand on only what
    /// is new.
    latency_seen: std::collections::HashMap<u32, Vec<u64>>,
    latency_read_at: Option<std::time::Instant>,
    /// The counters last printed at -vv.
    printed_targets: Vec<TargetRequests>,
    /// The socket backend's unix-domain connections, whose close userspace sees.
    unix: Option<unix_close::UnixCloseWatch>,
}

/// One event as a JSON line on stderr (-vv): the format the state machine's tests replay.
fn print_event(event: &Event) {
    if let Ok(line) = serde_json::to_string(event) {
        eprintln!("{line}");
    }
}

impl Reader {
    /// Reads every record waiting in the ring buffer into the state, in batches (the ring
    /// holds a borrow of the probe, whose maps an exit needs to look at).
    fn drain(&mut self, probe: &mut Probe, state: &mut AuditState) {
        const BATCH: usize = 4096;
        let mut batch = Vec::with_capacity(64);
        loop {
            let ring = probe.events();
            while batch.len() < BATCH {
                let Some(record) = ring.next() else { break };
                if let Some(unix) = &mut self.unix {
                    if let Some((tgid, fd, inode)) = events::unix_open(&record) {
                        unix.opened(tgid, fd, inode);
                    }
                }
                match events::decode(&record) {
                    Ok(event) => batch.push(event),
                    Err(err) => {
                        log::warn!("undecodable probe record: {err}");
                        self.malformed += 1;
                    }
                }
            }
            if batch.is_empty() {
                return;
            }
            for event in batch.drain(..) {
                self.apply(probe, state, event);
            }
        }
    }

    fn apply(&mut self, probe: &mut Probe, state: &mut AuditState, mut event: Event) {
        enrich(&mut event);
        let mut closed_by_kernel = Vec::new();
        if let Event::Exit(exit) = &mut event {
            // The kernel closed its sockets without close(2): forget them, after noting
            // which ones had a request in flight.
            closed_by_kernel = known_conns(state, exit.tgid);
            exit.busy_fds = busy_fds(probe, &closed_by_kernel);
        }
        if self.verbose >= 2 {
            print_event(&event);
        }
        state.apply(&event);
        probe.remove_conns(&closed_by_kernel);
        if let Event::Exit(exit) = &event {
            self.latency_at_exit(probe, state, exit.tgid, exit.ktime_ns);
        }
    }

    /// The last latencies of a process that exited, read before its histogram is removed
    /// from the kernel's map (which only has room for so many processes).
    fn latency_at_exit(
        &mut self,
        probe: &mut Probe,
        state: &mut AuditState,
        tgid: u32,
        ktime_ns: u64,
    ) {
        if state.conns().is_none() {
            return;
        }
        let new = probe
            .request_latency_of(tgid)
            .map(|totals| self.new_of(tgid, totals))
            .unwrap_or_default();
        self.latency_seen.remove(&tgid);
        probe.forget_latency(tgid);
        if !new.is_empty() {
            state.apply(&Event::Requests(RequestSample {
                ktime_ns,
                targets: Vec::new(),
                latency_us: new.clone(),
                latency_by_tgid: vec![(tgid, new)],
            }));
        }
    }

    /// Reads the kernel's request counters of every running target (and, every
    /// [`LATENCY_READ_EVERY`] or when `final_read`, the latency histogram) into the state.
    /// Called after the ring was drained, so an exit is applied before its target's counters
    /// disappear from the map.
    fn sample_requests(&mut self, probe: &Probe, state: &mut AuditState, final_read: bool) {
        if state.conns().is_none() {
            return;
        }
        let ktime_ns = procfs::monotonic_now().as_nanos() as u64;
        let targets = state
            .running_targets()
            .into_iter()
            .filter_map(|tgid| {
                let c = probe.request_counters(tgid)?;
                Some(TargetRequests {
                    tgid,
                    started: c.started,
                    ended: c.ended,
                    existing_ended: c.existing_ended,
                    last_edge_ns: c.last_edge_ns,
                })
            })
            .collect();
        let due = self
            .latency_read_at
            .is_none_or(|at| at.elapsed() >= LATENCY_READ_EVERY);
        let (latency_us, latency_by_tgid) = if final_read || due {
            self.latency_read_at = Some(std::time::Instant::now());
            self.new_latencies(probe)
        } else {
            Default::default()
        };
        let sample = Event::Requests(RequestSample {
            ktime_ns,
            targets,
            latency_us,
            latency_by_tgid,
        });
        // At -vv, a sample is printed when it says something new (it is read every tick).
        if self.verbose >= 2 {
            if let Event::Requests(s) = &sample {
                if !s.latency_us.is_empty() || s.targets != self.printed_targets {
                    self.printed_targets = s.targets.clone();
                    print_event(&sample);
                }
            }
        }
        state.apply(&sample);
    }

    /// Latencies recorded in the kernel since the last read: (µs, count) by bucket, over
    /// every process and by process.
    #[allow(clippy::type_complexity)]
    fn new_latencies(&mut self, probe: &Probe) -> (Vec<(u64, u64)>, Vec<(u32, Vec<(u64, u64)>)>) {
        let Some(histograms) = probe.request_latency() else {
            return Default::default();
        };
        let by_tgid: Vec<(u32, Vec<(u64, u64)>)> = histograms
            .into_iter()
            .map(|(tgid, totals)| (tgid, self.new_of(tgid, totals)))
            .filter(|(_, new)| !new.is_empty())
            .collect();
        let mut sum = std::collections::BTreeMap::new();
        for (us, count) in by_tgid.iter().flat_map(|(_, new)| new) {
            *sum.entry(*us).or_insert(0) += count;
        }
        (sum.into_iter().collect(), by_tgid)
    }

    /// What one process's histogram gained since it was last read: (µs, count) by bucket.
    fn new_of(&mut self, tgid: u32, totals: Vec<u64>) -> Vec<(u64, u64)> {
        let seen = self
            .latency_seen
            .entry(tgid)
            .or_insert_with(|| vec![0; totals.len()]);
        if seen.len() != totals.len() {
            *seen = vec![0; totals.len()];
        }
        let buckets = totals.len().saturating_sub(1); // the last slot is the max
        let out = totals[..buckets]
            .iter()
            .zip(seen.iter())
            .enumerate()
            .filter(|(_, (now, before))| now > before)
            .map(|(index, (now, before))| (latency::bucket_value(index), now - before))
            .collect();
        *seen = totals;
        out
    }
}

/// Probe options from the shared flags.
pub fn probe_options(common: &Common) -> ProbeOptions {
    ProbeOptions {
        follow_forks: common.follow_forks,
        db_ports: common
            .db_ports
            .iter()
            .map(|port| (*port, spec::wire_of_port(*port)))
            .collect(),
        db_addrs: common
            .db_addrs
            .iter()
            .map(|addr| (*addr, spec::wire_of_port(addr.port())))
            .collect(),
        ring_bytes: common.ring_bytes,
        ..ProbeOptions::default()
    }
}

pub struct Session {
    pub probe: Probe,
    pub state: AuditState,
    reader: Reader,
    /// The pid of a command launched with `-- CMD`.
    pub launched: Option<u32>,
    /// The `--comm` names, to tell at the end which matched nothing.
    comms: Vec<String>,
    /// audit and serve: the `--unit`/`--cgroup` cgroups, read again while the run lasts.
    cgroup_watch: Option<CgroupWatch>,
    end: EndWhen,
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    common: Common,
    /// When connections unknown at attach were last looked at.
    unknown_checked_at: Option<std::time::Instant>,
    /// How many times they were looked at: the look backs off (`recheck_every`).
    unknown_checks: u32,
    /// When database connections whose transaction state is unknown were last looked at
    /// from the database's side (`recheck_txns`).
    txns_checked_at: Option<std::time::Instant>,
    /// When the targets' maps were last all read for TLS libraries.
    tls_scanned_at: Option<std::time::Instant>,
    /// When each target was first looked at for TLS libraries.
    tls_first_seen: std::collections::HashMap<u32, std::time::Instant>,
}

/// How often the database's own view is asked again about transaction states still unknown
/// (a /proc scan for PostgreSQL titles; a query with `--db-url`).
const TXN_RECHECK_EVERY: Duration = Duration::from_secs(1);

/// How often an audit or serve reads its cgroups again.
const CGROUP_READ_EVERY: Duration = Duration::from_millis(250);

/// The cgroups of an audit or serve. A process that systemd starts into a unit after attach
/// (a restart's new main process, an `ExecReload=` helper) is no child of a target: the
/// kernel's fork following cannot see it join, so cgroup.procs is read again every
/// [`CGROUP_READ_EVERY`]. A process that joins and leaves between two reads is missed.
struct CgroupWatch {
    cgroups: Vec<targets::CgroupSelector>,
    common: Common,
    read_at: std::time::Instant,
}

/// How often connections still unknown since attach are looked at again.
/// How often connections still unknown since attach are looked at again: every 25 ms at
/// first (a thread caught running at attach is the usual cause, and the drain waits for the
/// answer), backing off to every 200 ms (each look reads the targets' fd tables, their
/// /proc/net/tcp and a sock_diag dump: on a busy server with many connections that costs).
fn recheck_every(checks: u32) -> Duration {
    Duration::from_millis(25 << checks.min(3))
}

/// When [`Session::follow`] ends by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndWhen {
    AllExited,
    /// When this target (a launched command) has exited.
    Exited(u32),
    Never,
}

impl Session {
    /// Mounts tracefs if needed, loads the probe, and makes the targets targets. Programs are
    /// attached before any target is added: from the moment a pid is in the map, every event
    /// about it is seen.
    pub fn attach(set: &TargetSet, common: &Common) -> Result<Self> {
        // Ctrl-C and SIGTERM are caught from here on, before anything is attached or
        // announced: one that arrives while attaching ends the run with a partial report
        // at the first turn of the loop, instead of killing drainwatch mid-way.
        let interrupt = tokio::signal::unix::signal(SignalKind::interrupt())
            .map_err(|e| Error::Load(format!("cannot handle SIGINT: {e}")))?;
        let terminate = tokio::signal::unix::signal(SignalKind::terminate())
            .map_err(|e| Error::Load(format!("cannot handle SIGTERM: {e}")))?;
        // A selector that refuses or matches nothing costs one line before anything is
        // loaded; it is resolved again once the probe runs, which is the one that counts.
        check_selection(set)?;
        // Privileges first: without them tracefs cannot be read or mounted either, and the
        // fix to tell is "run as root".
        check_privileges()?;
        let (tracefs_root, mounted) = tracefs::ensure_mounted()?;
        if mounted {
            eprintln!("drainwatch: mounted tracefs at {}", tracefs_root.display());
        }
        // What this kernel offers, logged at -v like `drainwatch doctor` prints it; a missing
        // essential ends here with one line, before anything is loaded.
        let mut options = probe_options(common);
        let features = backends::detect();
        doctor::log(&features);
        features.require_essentials(options.sockets)?;
        options.hooks = backends::choose(&features)?;
        let mut probe = Probe::load(&tracefs_root, &options)?;
        let attach_time = procfs::monotonic_now();
        let mut state =
            AuditState::new(attach_time.as_nanos() as u64, std::process::id()).with_sockets();
        // Names first: a process that execs under one from now on is caught in the kernel;
        // then the ones running now, from /proc and cgroupfs.
        for comm in &set.comms {
            probe.add_comm(comm)?;
        }
        let selection = check_selection(set)?;
        attach_tree(&mut probe, &mut state, &selection, common)?;
        if state.targets().next().is_none() && set.launch.is_none() && !set.await_comms {
            // What matched has exited since: there is nothing to wait for or stop.
            return Err(Error::NothingMatched(
                selection.labels(&set.comms, &set.cgroups),
            ));
        }
        let mut launched = None;
        if let Some(command) = &set.launch {
            let held = launch::spawn_held(command)?;
            probe.add_target(held.pid, held.pid)?;
            state.add_target(held.pid, command.comm(), Origin::Launched);
            launched = Some(held.release()?);
        }
        // When the audit window closes by itself: with a launched command, when it exits
        // (e.g. a restart script); with names, never (new processes may still come: only
        // --duration or Ctrl-C end it); else when every target has exited.
        // A name or a cgroup of an audit or serve may take in new processes: such a run
        // ends at --duration or Ctrl-C, not when the current ones have exited.
        let awaits = set.await_comms && !(set.comms.is_empty() && set.cgroups.is_empty());
        let end = match (launched, awaits) {
            (Some(pid), _) => EndWhen::Exited(pid),
            (None, true) => EndWhen::Never,
            (None, false) => EndWhen::AllExited,
        };
        for failure in probe.failures() {
            eprintln!("drainwatch: warning: probe {failure}: the verdict will be incomplete");
        }
        let socket_hooks = probe.hooks().by_socket();
        Ok(Self {
            probe,
            state,
            reader: Reader {
                malformed: 0,
                verbose: common.verbose,
                latency_seen: Default::default(),
                latency_read_at: None,
                printed_targets: Vec::new(),
                unix: socket_hooks.then(unix_close::UnixCloseWatch::default),
            },
            launched,
            comms: set.comms.clone(),
            cgroup_watch: (set.await_comms && !set.cgroups.is_empty()).then(|| CgroupWatch {
                cgroups: set.cgroups.clone(),
                common: common.clone(),
                read_at: std::time::Instant::now(),
            }),
            end,
            interrupt,
            terminate,
            common: common.clone(),
            unknown_checked_at: None,
            unknown_checks: 0,
            txns_checked_at: None,
            tls_scanned_at: None,
            tls_first_seen: std::collections::HashMap::new(),
        })
    }

    /// Asks the database's own view again about database connections from before attach
    /// whose transaction state is still unknown: a PostgreSQL backend that was running a
    /// command at attach has its state in its title again once the command ends; a
    /// `--db-url` view may list a session it did not then. Resolved: `database`.
    fn recheck_txns(&mut self) {
        let Some(conns) = self.state.conns() else {
            return;
        };
        if self
            .txns_checked_at
            .is_some_and(|at| at.elapsed() < TXN_RECHECK_EVERY)
        {
            return;
        }
        let unknown: Vec<(
            (u32, u32),
            Protocol,
            std::net::SocketAddr,
            std::net::SocketAddr,
        )> = conns
            .unresolved_txns()
            .filter_map(|key| {
                let conn = conns.conns().find(|c| (c.tgid, c.fd) == key)?;
                Some((key, conn.protocol, conn.local?, conn.peer?))
            })
            .collect();
        if unknown.is_empty() {
            return;
        }
        self.txns_checked_at = Some(std::time::Instant::now());
        let mut view = existing::DbView::again(&self.common);
        let mut told = Vec::new();
        for (key, protocol, local, peer) in unknown {
            if let Some(txn) = existing::db_state_now(protocol, local, peer, &mut view) {
                told.push((key, txn));
            }
        }
        let at_ns = procfs::monotonic_now().as_nanos() as u64;
        for (key, txn) in told {
            log::debug!("fd {} of {}: the database now says {txn:?}", key.1, key.0);
            self.state.db_state_seen(key, txn, at_ns);
        }
    }

    /// Settles client connections whose state at attach was unknown (`attach_rule`): one
    /// that had traffic since (the kernel cleared its flag: it follows its requests from
    /// there), or, with no traffic on it, whose process now waits for input with nothing in
    /// flight, no outbound connection awaiting a reply and no bytes unread.
    fn recheck_unknown(&mut self) {
        let Some(conns) = self.state.conns() else {
            return;
        };
        let unresolved: Vec<(u32, u32)> = conns.unresolved().collect();
        if unresolved.is_empty()
            || self
                .unknown_checked_at
                .is_some_and(|at| at.elapsed() < recheck_every(self.unknown_checks))
        {
            return;
        }
        self.unknown_checked_at = Some(std::time::Instant::now());
        self.unknown_checks += 1;
        let ktime_ns = procfs::monotonic_now().as_nanos() as u64;
        let mut settled = Vec::new();
        let mut quiet: Vec<(u32, u32)> = Vec::new();
        for (tgid, fd) in unresolved {
            if self.probe.had_traffic(probe_common::ConnKey { tgid, fd }) {
                settled.push((tgid, fd, ResolvedBy::Traffic));
            } else {
                quiet.push((tgid, fd));
            }
        }
        let mut tgids: Vec<u32> = quiet.iter().map(|(tgid, _)| *tgid).collect();
        tgids.dedup();
        for tgid in tgids {
            // The same rule as at attach, on what the kernel and /proc say now.
            let held = existing::survey(tgid, &self.common);
            let in_flight = conns.in_flight(Some(tgid));
            let extra = (in_flight.requests + in_flight.queries) as usize;
            let judged = existing::judge_clients(tgid, &held, None, extra);
            for (fd, at_attach, why) in judged {
                if at_attach == AtAttach::Idle && quiet.contains(&(tgid, fd)) {
                    log::debug!("client fd {fd} of {tgid}, unknown at attach, now idle: {why}");
                    settled.push((tgid, fd, ResolvedBy::Evidence));
                }
            }
        }
        for (tgid, fd, by) in settled {
            let event = Event::Resolved(Resolved {
                ktime_ns,
                tgid,
                fd,
                by,
            });
            if self.reader.verbose >= 2 {
                print_event(&event);
            }
            self.state.apply(&event);
        }
    }

    /// When events were lost, an exit may have been among them: a target whose process has
    /// ended (checked after the ring was drained, so a delivered exit event always wins) is
    /// recorded as exited with an unknown status.
    fn notice_unseen_exits(&mut self) {
        if self.lost() == 0 {
            return;
        }
        let now = procfs::monotonic_now().as_nanos() as u64;
        for tgid in self.state.running_targets() {
            if procfs::has_ended(tgid) {
                let keys = known_conns(&self.state, tgid);
                let busy = busy_fds(&self.probe, &keys);
                self.state.exit_unseen(tgid, now, busy);
                self.probe.remove_conns(&keys);
            }
        }
    }

    /// Makes targets of the processes that joined a watched cgroup since the last read.
    fn join_cgroups(&mut self) {
        let Session {
            probe,
            state,
            cgroup_watch: Some(watch),
            ..
        } = self
        else {
            return;
        };
        if watch.read_at.elapsed() < CGROUP_READ_EVERY {
            return;
        }
        watch.read_at = std::time::Instant::now();
        let known: std::collections::BTreeSet<u32> = state.targets().map(|t| t.tgid).collect();
        let own = std::process::id();
        for cgroup in &watch.cgroups {
            for tgid in targets::cgroup_procs(&cgroup.dir) {
                if known.contains(&tgid) || tgid == own || targets::refusal(tgid).is_some() {
                    continue;
                }
                if let Err(err) = attach_process(probe, state, tgid, Origin::Matched, &watch.common)
                {
                    log::warn!("{tgid} joined {}: not watched: {err}", cgroup.label);
                }
            }
        }
    }

    /// Hooks TLS libraries the running targets loaded since they were last looked at.
    fn rescan_tls(&mut self) {
        let now = std::time::Instant::now();
        let all = self
            .tls_scanned_at
            .is_none_or(|at| at.elapsed() >= TLS_RESCAN_EVERY);
        if all {
            self.tls_scanned_at = Some(now);
        }
        let running = self.state.running_targets();
        self.tls_first_seen.retain(|tgid, _| running.contains(tgid));
        for tgid in running {
            if !talks_outward(&self.state, tgid) {
                continue;
            }
            let first = *self.tls_first_seen.entry(tgid).or_insert(now);
            if all || first.elapsed() < TLS_NEW_TARGET {
                hook_tls(&mut self.probe, tgid, self.common.verbose);
            }
        }
    }

    /// Fills the report's `coverage` with this kernel and the hooks that fed the socket
    /// side (docs/hooks.md).
    pub fn stamp_coverage(&self, report: &mut crate::model::report::Report) {
        let coverage = report.coverage.get_or_insert_with(Default::default);
        coverage.kernel = Some(crate::kernel::features::kernel_release());
        coverage.hooks = Some(self.probe.hooks().coverage());
        coverage.tls_libraries = self
            .probe
            .tls_libraries()
            .iter()
            .map(|l| l.describe())
            .collect();
    }

    /// Whether the targets this session waits for have exited.
    pub fn targets_done(&self) -> bool {
        match self.end {
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
        self.comms
            .iter()
            .filter(|name| !self.state.targets().any(|t| &t.comm == *name))
            .map(|name| format!("--comm {name}"))
            .collect()
    }

    pub fn end_when(&self) -> EndWhen {
        self.end
    }

    /// "name (pid), ..." of the targets.
    pub fn target_names(&self) -> String {
        self.state
            .targets()
            .map(|t| format!("{} ({})", t.comm, t.tgid))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Reads every event waiting in the ring buffer into the state.
    pub fn drain(&mut self) {
        self.reader.drain(&mut self.probe, &mut self.state);
        self.reader
            .sample_requests(&self.probe, &mut self.state, false);
        self.probe.flush_log();
    }

    /// Closes the socket backend's unix-domain connections whose fds are gone (after a
    /// drain: see [`unix_close`]).
    fn notice_unix_closes(&mut self) {
        let Some(unix) = &mut self.reader.unix else {
            return;
        };
        let gone = unix.gone(&self.state);
        if gone.is_empty() {
            return;
        }
        self.drain();
        if let Some(unix) = &mut self.reader.unix {
            unix.close(gone, &mut self.probe, &mut self.state, self.reader.verbose);
        }
    }

    /// Events lost in the kernel plus records that could not be decoded.
    pub fn lost(&self) -> u64 {
        self.probe.unseen() + self.reader.malformed
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
        let mut last_tick: Option<std::time::Instant> = None;
        let ended = loop {
            if self.targets_done() {
                break match self.end {
                    EndWhen::Exited(_) => EndedBy::CommandExited,
                    EndWhen::AllExited | EndWhen::Never => EndedBy::AllExited,
                };
            }
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
                    self.drain();
                    self.notice_unseen_exits();
                    self.notice_unix_closes();
                    self.join_cgroups();
                    self.recheck_unknown();
                    self.recheck_txns();
                    self.rescan_tls();
                    if last_tick.is_none_or(|at| at.elapsed() >= tick) {
                        last_tick = Some(std::time::Instant::now());
                        on_tick(self);
                    }
                }
                _ = self.interrupt.recv() => break EndedBy::Interrupted,
                _ = self.terminate.recv() => break EndedBy::Interrupted,
                _ = sleep_until(deadline) => break EndedBy::Duration,
            }
        };
        drop(ring_fd);
        // Whatever is still queued happened inside the window: read it before reporting.
        self.drain();
        self.notice_unix_closes();
        if ended != EndedBy::Interrupted {
            self.await_dying().await;
        }
        self.reader
            .sample_requests(&self.probe, &mut self.state, true);
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
            self.notice_unseen_exits();
        }
    }

    /// Detaches the probe and reaps a launched command that has exited.
    pub fn finish(self) {
        let launched = self.launched;
        let exited = launched.is_some_and(|pid| self.state.has_exited(pid));
        self.probe.close();
        if let (Some(pid), true) = (launched, exited) {
            launch::reap(pid);
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
