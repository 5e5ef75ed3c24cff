//! The audit state machine: targets, their exits, and the violations the events prove.
//! Pure: no I/O, no clocks. Events go in through [`AuditState::apply`]; the report comes out
//! of [`AuditState::report`]. Unit tests replay recorded event sequences through it.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::{
    events::signals,
    events::{Event, Exit, Fork, Protocol, Role},
    model::conns::{AtAttach, ConnTracker},
    model::report::{ExitReport, SignalledBy, Violation},
    model::tracker::Tracker,
};
// The tests' (`use super::*`), since the report moved to report.rs.
#[cfg(test)]
use crate::model::report::{Mode, Report};

/// Why a process is a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Named by `--pid`.
    Named,
    /// Launched by drainwatch (`audit -- CMD`).
    Launched,
    /// Forked by a target after attach.
    Forked { parent: u32 },
    /// A descendant of a selected process that already existed at attach (a pre-fork worker).
    Tree { parent: u32 },
    /// Started under a name given with `--comm` during the audit, or joined a `--unit` or
    /// `--cgroup` of an audit or serve.
    Matched,
    /// Sent a signal by the launched command's tree (`by`: the sender's tgid).
    Signalled { by: u32 },
}

#[derive(Clone, Debug)]
pub struct Target {
    pub tgid: u32,
    pub comm: String,
    pub origin: Origin,
    /// For [`Origin::Signalled`]: the sender and the signal (state/follow.rs).
    pub signalled_by: Option<SignalledBy>,
    pub exit: Option<ExitReport>,
}

#[derive(Debug)]
pub struct AuditState {
    /// CLOCK_MONOTONIC at attach, in ns: `at_ms` values count from here.
    attach_ns: u64,
    /// drainwatch's own tgid, to tell its own signals apart.
    self_tgid: u32,
    targets: BTreeMap<u32, Target>,
    /// Threads (pid -> tgid) of targets, for signals sent to one thread.
    threads: HashMap<u32, u32>,
    /// Fork children that were gone before userspace could tell thread from process; they
    /// become targets if an event proves they were processes.
    unresolved_children: HashMap<u32, UnresolvedChild>,
    violations: Vec<Violation>,
    received: u64,
    /// `None` when sockets are not watched (the report then says `null`, not zero).
    conns: Option<ConnTracker>,
    /// The most recent signals sent to targets, oldest first (for the live view).
    recent_signals: VecDeque<SignalSeen>,
    /// Targets sent a signal that asks them to end (`signals::asks_to_end`) while watched:
    /// `audit -- CMD` follows them to their exit.
    told_to_end: std::collections::BTreeSet<u32>,
    /// The first signal asking a target to end, and when (ktime ns): where an audit's drain
    /// starts.
    first_end_signal: Option<(String, u64)>,
    /// Database query latencies by the querying target's name (µs), so that the metrics of
    /// two servers watched at once stay two series. Names are few (low cardinality), pids
    /// are not: a name's histogram outlives its processes.
    queries_by_comm: BTreeMap<String, hdrhistogram::Histogram<u64>>,
    /// Client request latencies by the answering target's name (µs), for the same reason.
    requests_by_comm: BTreeMap<String, hdrhistogram::Histogram<u64>>,
    /// The probe units' trackers this run watches (model/tracker.rs: the operations of
    /// `--op`); none, and the report says `null` for them, not zero.
    trackers: Vec<Box<dyn Tracker>>,
}

/// A fork child gone before userspace could tell thread from process (`Fork::child_tgid`
/// `None`): a new thread of a process killed at once (a Go server makes threads as it
/// runs) as often as a short-lived process.
#[derive(Debug)]
struct UnresolvedChild {
    parent: u32,
    comm: String,
    /// Signals sent to it alone (tgkill), held until it proves to be a process
    /// (state/signalled.rs).
    held: Vec<crate::events::Signal>,
}

/// A signal a target received, as the live view shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SignalSeen {
    pub at_ms: u64,
    pub pid: u32,
    pub signal: String,
    pub sender_tgid: u32,
    pub sender_comm: String,
}

/// How many recent signals the state keeps.
const RECENT_SIGNALS: usize = 16;

impl AuditState {
    pub fn new(attach_ns: u64, self_tgid: u32) -> Self {
        Self {
            attach_ns,
            self_tgid,
            targets: BTreeMap::new(),
            threads: HashMap::new(),
            unresolved_children: HashMap::new(),
            violations: Vec::new(),
            received: 0,
            conns: None,
            recent_signals: VecDeque::new(),
            told_to_end: std::collections::BTreeSet::new(),
            first_end_signal: None,
            queries_by_comm: BTreeMap::new(),
            requests_by_comm: BTreeMap::new(),
            trackers: Vec::new(),
        }
    }

    /// Targets sent SIGKILL that have not exited yet: their exit is on its way.
    pub fn killed_running(&self) -> Vec<u32> {
        let mut out: Vec<u32> = self
            .violations
            .iter()
            .filter_map(|v| match v {
                Violation::Sigkill(kill) if !self.has_exited(kill.pid) => Some(kill.pid),
                _ => None,
            })
            .collect();
        out.dedup();
        out
    }

    /// Targets that were sent a signal asking them to end and have not exited yet.
    pub fn ending_targets(&self) -> Vec<u32> {
        self.told_to_end
            .iter()
            .copied()
            .filter(|tgid| !self.has_exited(*tgid))
            .collect()
    }

    /// The first signal that asked a target to end (name, ktime ns), if any came.
    pub fn first_end_signal(&self) -> Option<(&str, u64)> {
        self.first_end_signal
            .as_ref()
            .map(|(name, at)| (name.as_str(), *at))
    }

    pub fn recent_signals(&self) -> impl Iterator<Item = &SignalSeen> {
        self.recent_signals.iter()
    }

    /// Since when (ktime ns) nothing has been in flight in any target: no client request, no
    /// database query, no open transaction; `None` while something is.
    pub fn idle_since(&self) -> Option<u64> {
        let conns = self.conns.as_ref()?;
        // Operations (`--op`) hold the drain like requests (docs/design.md, "drained").
        let units_idle = self.trackers.iter().all(|t| t.idle());
        let units_edge = self.trackers.iter().map(|t| t.last_edge_ns()).max();
        (conns.in_flight(None).is_idle() && units_idle).then(|| {
            conns
                .last_activity_ns()
                .max(units_edge.unwrap_or(0))
                .max(self.attach_ns)
        })
    }

    pub fn attach_ns(&self) -> u64 {
        self.attach_ns
    }

    /// When the last target exited (ktime ns), once all have.
    pub fn exited_at_ms(&self) -> Option<u64> {
        if !self.all_exited() {
            return None;
        }
        self.targets
            .values()
            .filter_map(|t| t.exit.as_ref())
            .map(|e| e.at_ms)
            .max()
    }

    /// ms since attach for a kernel timestamp.
    pub fn ms_since_attach(&self, ktime_ns: u64) -> u64 {
        self.at_ms(ktime_ns)
    }

    /// Watches connections too (the socket probe is attached).
    pub fn with_sockets(mut self) -> Self {
        self.conns = Some(ConnTracker::default());
        self
    }

    /// Watches operations too (`--op`): the SPECs, by function index.
    pub fn track<T: Tracker>(&mut self, tracker: T) {
        self.trackers.push(Box::new(tracker));
    }

    /// The tracker of type `T`, when the run watches it.
    pub fn tracker<T: Tracker>(&self) -> Option<&T> {
        self.trackers
            .iter()
            .find_map(|t| (t.as_ref() as &dyn std::any::Any).downcast_ref::<T>())
    }

    /// The operations watched, when a tracker watches some (model/tracker.rs).
    pub fn operations(&self) -> Option<&dyn crate::model::tracker::Operations> {
        self.trackers.iter().find_map(|t| t.operations())
    }

    pub fn conns(&self) -> Option<&ConnTracker> {
        self.conns.as_ref()
    }

    /// Every database query latency recorded so far (µs), by the querying target's name.
    pub fn query_histograms_by_comm(&self) -> &BTreeMap<String, hdrhistogram::Histogram<u64>> {
        &self.queries_by_comm
    }

    /// Every client request latency recorded so far (µs), by the answering target's name
    /// (`unknown`: processes the kernel could not keep apart, its histogram map being full).
    pub fn request_histograms_by_comm(&self) -> &BTreeMap<String, hdrhistogram::Histogram<u64>> {
        &self.requests_by_comm
    }

    /// The name of a target (`comm`), if it is one.
    pub fn comm_of(&self, tgid: u32) -> Option<&str> {
        self.targets.get(&tgid).map(|t| t.comm.as_str())
    }

    /// A target runs an event loop (an epoll instance among its fds, read by the host
    /// layer): work it schedules after answering is not seen without `--op`.
    pub fn event_loop(&mut self, tgid: u32) {
        if let Some(conns) = self.conns.as_mut() {
            conns.facts_mut().event_loop(tgid);
        }
    }

    /// Targets whose push-style count moved since the last call (see
    /// [`crate::model::drain_facts::DrainFacts::take_look_due`]), with their client
    /// connections not yet named push-style: the session reads the kernel's mark of each.
    pub fn push_look_due(&mut self) -> Vec<(u32, u32)> {
        let Some(conns) = self.conns.as_mut() else {
            return Vec::new();
        };
        let due = conns.facts_mut().take_look_due();
        let mut look: Vec<(u32, u32)> = conns
            .conns()
            .filter(|c| c.role == Role::Client && due.contains(&c.tgid))
            .filter(|c| !conns.facts().is_push(c.tgid, c.fd))
            .map(|c| (c.tgid, c.fd))
            .collect();
        look.extend(conns.one_way_look_due());
        look
    }

    /// A connection found in /proc at attach.
    pub fn add_existing_conn(
        &mut self,
        key: (u32, u32),
        role: Role,
        protocol: Protocol,
        local: Option<std::net::SocketAddr>,
        peer: Option<std::net::SocketAddr>,
        at_attach: AtAttach,
    ) {
        if let Some(conns) = self.conns.as_mut() {
            conns.add_existing(key, role, protocol, local, peer, at_attach);
        }
    }

    /// An upstream connection found at attach awaiting the reply to a first call
    /// (model/conns/calls.rs).
    pub fn first_call_at_attach(&mut self, tgid: u32, seen_ns: u64) {
        if let Some(conns) = self.conns.as_mut() {
            conns.first_call_at_attach(tgid, seen_ns.max(self.attach_ns));
        }
    }

    /// The attach is done (`ktime_ns`: when drainwatch says so): what was found in flight
    /// for a limited hold is held from here (model/conns/calls.rs).
    pub fn attached(&mut self, ktime_ns: u64) {
        if let Some(conns) = self.conns.as_mut() {
            conns.hold_first_calls_from(ktime_ns);
        }
    }

    /// The database's own view of a connection found at attach (see
    /// [`ConnTracker::db_state_at_attach`]).
    pub fn db_state_at_attach(&mut self, key: (u32, u32), txn: crate::model::protocol::Txn) {
        let at_ns = self.attach_ns;
        if let Some(conns) = self.conns.as_mut() {
            conns.db_state_at_attach(key, txn, at_ns);
        }
    }

    /// The database's own view of a connection from before attach, read again at `at_ns`
    /// after attach: a transaction state still unknown is resolved by it (`database`).
    pub fn db_state_seen(&mut self, key: (u32, u32), txn: crate::model::protocol::Txn, at_ns: u64) {
        let at_ms = self.ms_since_attach(at_ns);
        if let Some(conns) = self.conns.as_mut() {
            conns.db_state_seen(key, txn, at_ns, Some(at_ms));
        }
    }

    pub fn add_target(&mut self, tgid: u32, comm: String, origin: Origin) {
        self.targets.entry(tgid).or_insert(Target {
            tgid,
            comm,
            origin,
            signalled_by: None,
            exit: None,
        });
    }

    pub fn add_thread(&mut self, pid: u32, tgid: u32) {
        if pid != tgid {
            self.threads.insert(pid, tgid);
        }
    }

    pub fn targets(&self) -> impl Iterator<Item = &Target> {
        self.targets.values()
    }

    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    /// Targets still running as far as the events say.
    pub fn running_targets(&self) -> Vec<u32> {
        self.targets
            .values()
            .filter(|t| t.exit.is_none())
            .map(|t| t.tgid)
            .collect()
    }

    /// A target that ended without its exit event (it was lost): recorded as exited at
    /// `ktime_ns` with an unknown status, so the run can end. The loss itself already makes
    /// the verdict `incomplete`.
    pub fn exit_unseen(&mut self, tgid: u32, ktime_ns: u64, busy_fds: Vec<u32>) {
        self.on_exit(&Exit {
            ktime_ns,
            tgid,
            comm: self
                .targets
                .get(&tgid)
                .map(|t| t.comm.clone())
                .unwrap_or_default(),
            wait_status: None,
            busy_fds,
        });
    }

    pub fn has_exited(&self, tgid: u32) -> bool {
        self.targets.get(&tgid).is_some_and(|t| t.exit.is_some())
    }

    /// True once every target process has exited (and there is at least one).
    pub fn all_exited(&self) -> bool {
        !self.targets.is_empty() && self.targets.values().all(|t| t.exit.is_some())
    }

    fn at_ms(&self, ktime_ns: u64) -> u64 {
        ktime_ns.saturating_sub(self.attach_ns) / 1_000_000
    }

    pub fn apply(&mut self, event: &Event) {
        if !matches!(
            event,
            Event::Requests(_) | Event::Resolved(_) | Event::PushStyle(_)
        ) {
            self.received += 1;
        }
        self.apply_uncounted(event);
    }

    /// A probe unit's event that is no ring-buffer record (what it read from its maps):
    /// applied as [`Self::apply`] does, not counted among the events received.
    pub fn apply_sample(&mut self, event: &Event) {
        self.apply_uncounted(event);
    }

    fn apply_uncounted(&mut self, event: &Event) {
        match event {
            Event::Signal(signal) => self.on_signal(signal),
            Event::Fork(fork) => self.on_fork(fork),
            Event::Exec(exec) => match self.targets.get_mut(&exec.tgid) {
                Some(target) => target.comm = exec.comm.clone(),
                // The kernel reports the exec of a non-target only when it matched --comm.
                None => self.add_target(exec.tgid, exec.comm.clone(), Origin::Matched),
            },
            Event::Exit(exit) => self.on_exit(exit),
            Event::ConnOpen(open) => {
                if let Some(conns) = self.conns.as_mut() {
                    conns.open(open);
                }
            }
            Event::ConnClose(close) => {
                let at_ms = self.at_ms(close.ktime_ns);
                let attach_ns = self.attach_ns;
                if let Some(conns) = self.conns.as_mut() {
                    let ms = |ns: u64| ns.saturating_sub(attach_ns) / 1_000_000;
                    let found = conns.close(close, at_ms, ms);
                    self.violations.extend(found);
                }
            }
            Event::Requests(sample) => {
                if let Some(conns) = self.conns.as_mut() {
                    conns.requests_sample(sample);
                }
                for (tgid, latencies) in &sample.latency_by_tgid {
                    let comm = self.comm_of(*tgid).unwrap_or("unknown").to_string();
                    let histogram = self
                        .requests_by_comm
                        .entry(comm)
                        .or_insert_with(crate::model::conns::histogram);
                    for &(us, count) in latencies {
                        let us = us.clamp(1, histogram.high());
                        let _ = histogram.record_n(us, count);
                    }
                }
            }
            Event::DbIo(io) => {
                let at_ms = self.at_ms(io.ktime_ns);
                let mut ended_us = None;
                if let Some(conns) = self.conns.as_mut() {
                    let told_to_end = self.told_to_end.contains(&io.tgid);
                    if let Some(violation) = conns.db_io(io, at_ms, told_to_end) {
                        self.violations.push(violation);
                    }
                    ended_us = conns.take_query_ended_us();
                }
                if let Some(us) = ended_us {
                    let comm = self.comm_of(io.tgid).unwrap_or("unknown").to_string();
                    self.queries_by_comm
                        .entry(comm)
                        .or_insert_with(crate::model::conns::histogram)
                        .saturating_record(us);
                }
            }
            Event::PushStyle(push) => {
                let at_ms = self.at_ms(push.ktime_ns);
                if let Some(conns) = self.conns.as_mut() {
                    conns.push_style(push.tgid, push.fd, at_ms);
                }
            }
            // The probe units' own, for their trackers (model/tracker.rs), applied below.
            Event::Unit(_) => {}
            Event::Resolved(resolved) => {
                let at_ms = self.at_ms(resolved.ktime_ns);
                if let Some(conns) = self.conns.as_mut() {
                    conns.resolve(resolved, at_ms);
                }
            }
        }
        for tracker in &mut self.trackers {
            tracker.apply(event, self.attach_ns, &mut self.violations);
        }
    }

    /// The target tgid a task id belongs to, promoting an unresolved fork child.
    fn target_of(&mut self, pid: u32) -> Option<u32> {
        if self.targets.contains_key(&pid) {
            return Some(pid);
        }
        if let Some(tgid) = self.threads.get(&pid) {
            return Some(*tgid);
        }
        let child = self.unresolved_children.remove(&pid)?;
        self.add_target(
            pid,
            child.comm,
            Origin::Forked {
                parent: child.parent,
            },
        );
        for signal in &child.held {
            self.on_signal(signal);
        }
        Some(pid)
    }

    fn on_fork(&mut self, fork: &Fork) {
        let parent = self.target_of(fork.parent_tgid).unwrap_or(fork.parent_tgid);
        match fork.child_tgid {
            Some(tgid) if tgid == fork.child_pid => {
                self.add_target(tgid, fork.comm.clone(), Origin::Forked { parent })
            }
            Some(tgid) => self.add_thread(fork.child_pid, tgid),
            None => {
                let child = UnresolvedChild {
                    parent,
                    comm: fork.comm.clone(),
                    held: Vec::new(),
                };
                self.unresolved_children.insert(fork.child_pid, child);
            }
        }
    }

    fn on_exit(&mut self, exit: &Exit) {
        let at_ms = self.at_ms(exit.ktime_ns);
        let Some(tgid) = self.target_of(exit.tgid) else {
            return;
        };
        self.threads.retain(|_, owner| *owner != tgid);
        let attach_ns = self.attach_ns;
        if let Some(conns) = self.conns.as_mut() {
            let ms = |ns: u64| ns.saturating_sub(attach_ns) / 1_000_000;
            let found = conns.exit(tgid, &exit.busy_fds, exit.ktime_ns, at_ms, ms);
            self.violations.extend(found);
        }
        for tracker in &mut self.trackers {
            tracker.exit(tgid, exit.ktime_ns, attach_ns, &mut self.violations);
        }
        let Some(target) = self.targets.get_mut(&tgid) else {
            return;
        };
        let (code, signal) = match exit.wait_status {
            // wait(2) status: low 7 bits are the terminating signal, else bits 8..16 the code.
            Some(status) if status & 0x7f == 0 => (Some(((status >> 8) & 0xff) as i32), None),
            Some(status) => (None, Some(signals::name((status & 0x7f) as i32))),
            None => (None, None),
        };
        target.exit = Some(ExitReport {
            at_ms,
            code,
            signal,
        });
    }
}

mod report;
mod signalled;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod db_tests;
#[cfg(test)]
mod end_tests;

#[cfg(test)]
mod tls_tests;
