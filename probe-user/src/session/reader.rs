//! What the kernel says, into the state: the ring buffer's records decoded into events
//! (events/mod.rs), completed with what only userspace can know, and applied; the request
//! counters after each read (requests.rs), and the probe units' maps (units.rs: the `--op`
//! counters); and the ends the ring cannot tell (an exit lost with dropped events; a
//! unix-domain close on the socket backend, unix_close.rs).

use probe_common::ConnKey;

use crate::{
    events::{self, Event, Role},
    host::{netstat, procfs},
    kernel::probe::Probe,
    model::state::AuditState,
    session::{
        exits::ExitWatch, follow, requests::RequestSampler, trace, units,
        unix_close::UnixCloseWatch,
    },
    settings::Common,
};

pub(super) struct Reader {
    verbose: u8,
    /// Records that could not be decoded (counted with the lost events).
    malformed: u64,
    requests: RequestSampler,
    /// The socket backend's unix-domain connections, whose close userspace sees.
    unix: Option<UnixCloseWatch>,
    /// The shared flags, to survey a process followed at a signal (follow.rs).
    common: Common,
    /// The targets' ends, whatever the ring says (exits.rs).
    exits: ExitWatch,
    /// Targets found exited with no exit event, where no loss explains it.
    missing_exits: u64,
}

impl Reader {
    /// `socket_hooks`: the socket-level backends feed the probe (docs/hooks.md), where a
    /// unix-domain close has no hook.
    pub(super) fn new(common: &Common, socket_hooks: bool) -> Self {
        let verbose = common.verbose;
        Self {
            common: common.clone(),
            verbose,
            malformed: 0,
            requests: RequestSampler::new(verbose),
            unix: socket_hooks.then(UnixCloseWatch::default),
            exits: ExitWatch::default(),
            missing_exits: 0,
        }
    }

    /// Records that could not be decoded, and exits no event told (counted with the lost
    /// events).
    pub(super) fn malformed(&self) -> u64 {
        self.malformed + self.missing_exits
    }

    /// Reads every record waiting in the ring buffer into the state, then the request
    /// counters (`final_read`: the latency histograms too, whenever they were last read).
    pub(super) fn read(&mut self, probe: &mut Probe, state: &mut AuditState, final_read: bool) {
        self.drain_ring(probe, state);
        self.requests.sample(probe, state, final_read);
        units::sample(probe, state, self.verbose);
        probe.flush_log();
    }

    /// The ring's records, in batches (the ring holds a borrow of the probe, whose maps an
    /// exit needs to look at).
    fn drain_ring(&mut self, probe: &mut Probe, state: &mut AuditState) {
        const BATCH: usize = 4096;
        let mut batch = Vec::with_capacity(64);
        loop {
            let ring = probe.events();
            while batch.len() < BATCH {
                let Some(record) = ring.next() else { break };
                let decoded = match events::decode(&record) {
                    Err(events::DecodeError::UnknownKind(kind)) => units::decode(kind, &record),
                    decoded => decoded,
                };
                match decoded {
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
        match &mut event {
            Event::Exit(exit) => {
                // The kernel closed its sockets without close(2): forget them, after noting
                // which ones had a request in flight.
                closed_by_kernel = known_conns(state, exit.tgid);
                exit.busy_fds = busy_fds(probe, &closed_by_kernel);
                // Its units' counters (operations) are final: read before the exit is judged.
                units::sample(probe, state, self.verbose);
            }
            Event::ConnOpen(open) => {
                if let (Some(unix), Some(inode)) = (&mut self.unix, open.unix_inode) {
                    unix.opened(open.tgid, open.fd, inode);
                }
            }
            Event::Signal(signal) => follow::survey(probe, state, signal, &self.common),
            _ => {}
        }
        if self.verbose >= 2 {
            trace::event(&event);
        }
        state.apply(&event);
        probe.remove_conns(&closed_by_kernel);
        if let Event::Exit(exit) = &event {
            self.requests
                .at_exit(probe, state, exit.tgid, exit.ktime_ns);
            units::exited(probe, exit.tgid);
        }
    }

    /// A target whose process has ended with no exit event read (exits.rs: at two looks,
    /// the ring read in between, so a delivered exit event always wins) is recorded as
    /// exited with an unknown status: an exit among lost events, or one the kernel never
    /// reported. The latter is counted as a lost event too: the verdict cannot be `clean`
    /// about an exit it did not see.
    pub(super) fn notice_unseen_exits(&mut self, probe: &mut Probe, state: &mut AuditState) {
        let ended = self.exits.ended(&state.running_targets());
        if ended.is_empty() {
            return;
        }
        self.read(probe, state, false);
        let now = procfs::monotonic_now().as_nanos() as u64;
        for tgid in ended {
            if state.has_exited(tgid) {
                continue;
            }
            if probe.unseen() + self.malformed == 0 {
                log::warn!("pid {tgid} has exited and no exit event said so");
                self.missing_exits += 1;
            }
            let keys = known_conns(state, tgid);
            let busy = busy_fds(probe, &keys);
            state.exit_unseen(tgid, now, busy);
            probe.remove_conns(&keys);
        }
    }

    /// Closes the socket backend's unix-domain connections whose fds are gone (see
    /// unix_close.rs: the ring is read once more first).
    pub(super) fn notice_unix_closes(&mut self, probe: &mut Probe, state: &mut AuditState) {
        let Some(unix) = &mut self.unix else {
            return;
        };
        let gone = unix.gone(state);
        if gone.is_empty() {
            return;
        }
        self.read(probe, state, false);
        if let Some(unix) = &mut self.unix {
            unix.close(gone, probe, state, self.verbose);
        }
    }
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
fn known_conns(state: &AuditState, tgid: u32) -> Vec<ConnKey> {
    state
        .conns()
        .into_iter()
        .flat_map(|c| c.conns())
        .filter(|c| c.tgid == tgid)
        .map(|c| ConnKey {
            tgid: c.tgid,
            fd: c.fd,
        })
        .collect()
}

/// Which of these connections have a request in flight, by the kernel's map.
fn busy_fds(probe: &Probe, keys: &[ConnKey]) -> Vec<u32> {
    keys.iter()
        .filter(|key| probe.request_in_flight(**key))
        .map(|key| key.fd)
        .collect()
}
