//! Making processes targets: the selection resolved ([`check_selection`]), each selected
//! process and its descendants ([`attach_tree`]), and for one process the path top-down
//! ([`attach_process`]): ask the server, tell the probe what its sockets are, make it and
//! its threads targets, check it is still there, then what it had going (seed.rs), then its
//! probe units' hooks (units.rs: TLS libraries, `--op` functions). While the run lasts:
//! processes that join a watched cgroup ([`CgroupWatch`]).

use std::collections::BTreeSet;

use crate::{
    host::{
        procfs, server_view,
        targets::{self, Selected, Selection},
    },
    kernel::probe::Probe,
    model::state::{AuditState, Origin},
    session::{seed, units},
    settings::{Common, TargetSet},
    Error, Result,
};

/// Resolves the selectors now; refuses one that matched nothing. A cgroup is read once, at
/// attach; a name may still match an exec during an audit or serve.
pub(super) fn check_selection(set: &TargetSet) -> Result<Selection> {
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
pub(super) fn attach_tree(
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

/// Adds a process (and its current threads) to the probe and the state, with what it had
/// going. `Ok(false)` when it has already ended.
pub(super) fn attach_process(
    probe: &mut Probe,
    state: &mut AuditState,
    tgid: u32,
    origin: Origin,
    common: &Common,
) -> Result<bool> {
    // 1. The server's own view of its clients, asked before the probe watches it: the
    //    question is not one of its requests. A process followed at a signal is watched
    //    already (session/follow.rs): it is not asked.
    let view = match origin {
        Origin::Signalled { .. } => None,
        _ => server_view::ask(tgid),
    };
    // 2. What its sockets are (listening ports, each connection's role), before any of
    //    them can be classified by an event (seed.rs).
    let surveyed = seed::before_target(probe, tgid, common)?;
    let attached = attach_target(probe, state, tgid, origin, common, view.as_ref());
    seed::forget_surveyed(probe, &surveyed);
    attached
}

/// Steps 3 to 6 of [`attach_process`], with the survey told to the probe.
fn attach_target(
    probe: &mut Probe,
    state: &mut AuditState,
    tgid: u32,
    origin: Origin,
    common: &Common,
    view: Option<&server_view::ServerView>,
) -> Result<bool> {
    // 3. It and its threads become targets: from here on the kernel sees its events.
    probe.add_target(tgid, tgid)?;
    for pid in procfs::threads(tgid) {
        probe.add_target(pid, tgid)?;
        state.add_thread(pid, tgid);
    }
    // 4. Checked after the insert: a process that exited in between would otherwise be
    //    audited forever, its exit never seen. A zombie has exited too (its parent has not
    //    reaped it yet): its exit tracepoint fired before the insert.
    let alive = procfs::process_exists(tgid) && !procfs::has_ended(tgid);
    let Some(comm) = procfs::comm(tgid).filter(|_| alive) else {
        return Ok(false);
    };
    if procfs::is_32bit(tgid) {
        return Err(Error::Compat32(tgid));
    }
    state.add_target(tgid, comm, origin);
    // 5. What it had going: connections and the socket syscalls its threads wait in.
    seed::conns(probe, state, tgid, common, view)?;
    // 6. The probe units' hooks in it (units.rs: its TLS libraries when it talks outward,
    //    its `--op` functions, which a process the user named must have hooked, or exit 2).
    units::hook(probe, state, tgid, origin == Origin::Named, common.verbose)?;
    Ok(true)
}

/// The cgroups of an audit or serve. A process that systemd starts into a unit after attach
/// (a restart's new main process, an `ExecReload=` helper) is no child of a target: the
/// kernel's fork following cannot see it join, so cgroup.procs is read again (the session's
/// chore, every 250 ms). A process that joins and leaves between two reads is missed.
pub(super) struct CgroupWatch {
    pub cgroups: Vec<targets::CgroupSelector>,
    pub common: Common,
}

impl CgroupWatch {
    /// Makes targets of the processes that joined a watched cgroup since the last read.
    pub(super) fn join(&self, probe: &mut Probe, state: &mut AuditState) {
        let known: BTreeSet<u32> = state.targets().map(|t| t.tgid).collect();
        let own = std::process::id();
        for cgroup in &self.cgroups {
            for tgid in targets::cgroup_procs(&cgroup.dir) {
                if known.contains(&tgid) || tgid == own || targets::refusal(tgid).is_some() {
                    continue;
                }
                if let Err(err) = attach_process(probe, state, tgid, Origin::Matched, &self.common)
                {
                    log::warn!("{tgid} joined {}: not watched: {err}", cgroup.label);
                }
            }
        }
    }
}
