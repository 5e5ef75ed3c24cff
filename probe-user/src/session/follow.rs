//! `audit -- CMD` follows what the command signals (docs/design.md, "Command line"): a
//! process its tree sends a signal becomes a target at that signal, in the kernel
//! (probe-ebpf/src/lifecycle.rs); when the event says so, the process is surveyed here like
//! an attached pid (its threads, the connections and database conversations it already had
//! going, its TLS libraries, its `--op` functions) before the event is applied, so that the
//! state knows it when its signal, its connections and its exit are judged.

use crate::{
    events::{signals, Signal},
    host::{procfs, targets},
    kernel::probe::Probe,
    model::state::{AuditState, Origin},
    session::attach,
    settings::Common,
};

/// Surveys the receiver of a followed signal, once, and says so on stderr. One gone before
/// it could be surveyed (a SIGKILL acts in microseconds) is taken in from the event by the
/// state (model/state/follow.rs).
pub(super) fn survey(probe: &mut Probe, state: &mut AuditState, signal: &Signal, common: &Common) {
    if !signal.followed || state.knows(signal.target_pid) {
        return;
    }
    // kill(2) names the process's main thread; a tgkill(2) names another thread, whose
    // process is the target (the kernel only had the thread's id).
    let tgid = procfs::tgid_of(signal.target_pid).unwrap_or(signal.target_pid);
    let origin = Origin::Signalled {
        by: signal.sender_tgid,
    };
    let mut comm = signal.target_comm.clone();
    if state.knows(tgid) {
        state.add_thread(signal.target_pid, tgid);
        return;
    }
    match attach::attach_process(probe, state, tgid, origin, common)
        .and_then(|alive| attach_descendants(probe, state, tgid, common).map(|()| alive))
    {
        Ok(true) => {
            if let Some(target) = state.targets().find(|t| t.tgid == tgid) {
                comm = target.comm.clone();
            }
        }
        Ok(false) => {}
        Err(err) => {
            eprintln!(
                "drainwatch: warning: pid {tgid} ({comm}) signalled by the command: not \
                 surveyed: {err}; the verdict will be incomplete"
            );
            probe.note_failure(format!("survey of followed pid {tgid}: {err}"));
        }
    }
    let sender = state
        .targets()
        .find(|t| t.tgid == signal.sender_tgid)
        .map(|t| t.comm.clone())
        .unwrap_or_else(|| signal.sender_comm.clone());
    eprintln!(
        "drainwatch: followed: pid {tgid} ({comm}) signalled by {sender} ({}, {})",
        signal.sender_tgid,
        signals::name(signal.sig)
    );
}

/// The followed process's descendants that exist now, like those of an attached pid
/// (attach.rs, `attach_tree`): a pre-fork server's workers hold its connections. Forks
/// from now on are followed in the kernel.
fn attach_descendants(
    probe: &mut Probe,
    state: &mut AuditState,
    root: u32,
    common: &Common,
) -> crate::Result<()> {
    const PASSES: usize = 8;
    let mut tree = vec![root];
    for _ in 0..PASSES {
        let new: Vec<(u32, u32)> = targets::descendants(&tree)
            .into_iter()
            .filter(|(child, _)| !state.knows(*child))
            .collect();
        if new.is_empty() {
            break;
        }
        for (child, parent) in new {
            attach::attach_process(probe, state, child, Origin::Tree { parent }, common)?;
            tree.push(child);
        }
    }
    Ok(())
}
