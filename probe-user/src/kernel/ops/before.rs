//! Operations in flight since before attach (docs/design.md, "operation"): a call entered
//! before its uprobe was planted has no return probe, and no counter has it. Its thread is
//! found on its stack when the process is hooked (stacks.rs) and looked at again on each
//! read until it is outside; once its function is known it is marked in the kernel's
//! `OP_CALLS` (`BEFORE_ATTACH`), so that the thread's exit inside it is the kernel's to
//! report, in order with its process's exit: a look after the thread is gone cannot tell an
//! exit inside the operation from one after it. Looks alone took a thread gone while its
//! process still ran for one whose operation had ended, and at an `exit_group` the other
//! threads are released before the process is (kernel/exit.c: each thread's `release_task`
//! at its own exit, the leader a zombie only at its own `exit_notify`): `stop` of a handler
//! that abandons its purchases counted 1 cut where 2-3 were half done in loaded 5.10 and
//! 6.1 guests, whose emulated CPUs widen that window to the session's reads.

use aya::{
    maps::{HashMap as BpfHashMap, MapData},
    Ebpf,
};
use probe_common::ops::{map_names, OpCall, BEFORE_ATTACH};

use std::collections::BTreeMap;

use super::stacks;

/// A thread inside an operation since before its function was hooked.
#[derive(Clone, Copy, Debug)]
pub(super) struct BeforeAttach {
    /// The function, or `None` while the thread could not be looked at.
    pub(super) function: Option<u32>,
    /// When it was first looked at (ns).
    pub(super) since_ns: u64,
    /// Whether its `BEFORE_ATTACH` entry is in `OP_CALLS`: from then on the kernel says
    /// how it ends. Its thread's exit reports it cut (the ring's `OpCutEvent`, in order with
    /// the process's exit), its next hooked call replaces it; either way the entry leaves
    /// the map, and this one goes at the next look. A thread gone while its process exits
    /// is no longer there to look at, and a look cannot tell an exit inside the operation
    /// from one after it; the kernel's exit hook can.
    pub(super) marked: bool,
}

/// The threads inside an operation since before its function was hooked, by (tgid, tid).
/// `ranges`: each hooked function's (tgid, start, end, function index) in memory.
#[derive(Debug, Default)]
pub(super) struct BeforeAttachThreads {
    pub(super) threads: BTreeMap<(u32, u32), BeforeAttach>,
}

impl BeforeAttachThreads {
    /// Finds the threads of `tgid` already inside a hooked function (stacks.rs). Called
    /// once its probes are planted: a call entered from then on is the kernel's to count, and
    /// a thread the kernel already has in `OP_CALLS` is not counted twice.
    pub(super) fn look_at_threads(
        &mut self,
        ebpf: &mut Ebpf,
        tgid: u32,
        ranges: &[(u32, u64, u64, u32)],
    ) {
        let ranges = ranges_of(ranges, tgid);
        let now = mono_ns();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{tgid}/task")) else {
            return;
        };
        for tid in tasks
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .collect::<Vec<u32>>()
        {
            if self.threads.contains_key(&(tgid, tid)) {
                continue;
            }
            // A thread running on a CPU cannot be looked at: a server's threads block often,
            // so a few tries a few ms apart usually find it blocked.
            let mut look = stacks::look(tgid, tid, &ranges);
            for _ in 0..10 {
                if look != stacks::Look::Unknown {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
                look = stacks::look(tgid, tid, &ranges);
            }
            let found = match look {
                stacks::Look::Inside(function) => Some(function),
                stacks::Look::Unknown => None,
                stacks::Look::Outside | stacks::Look::Gone => continue,
            };
            if in_op_calls(ebpf, tgid, tid) != InOpCalls::No {
                continue;
            }
            let mut entry = BeforeAttach {
                function: found,
                since_ns: now,
                marked: false,
            };
            if !mark(ebpf, tgid, tid, &mut entry) {
                // The thread made a hooked call between the look and the mark.
                continue;
            }
            log::debug!("pid {tgid} thread {tid}: in flight at attach: {found:?}");
            self.threads.insert((tgid, tid), entry);
        }
    }

    /// Looks again at the threads in flight since before attach: one that has made a hooked
    /// call since (the kernel counts that one) or whose stack no longer holds a hooked
    /// function is done; one that was running is looked at again.
    pub(super) fn recheck(&mut self, ebpf: &mut Ebpf, ranges: &[(u32, u64, u64, u32)]) {
        let keys: Vec<(u32, u32)> = self.threads.keys().copied().collect();
        for (tgid, tid) in keys {
            let Some(mut entry) = self.threads.get(&(tgid, tid)).copied() else {
                continue;
            };
            match in_op_calls(ebpf, tgid, tid) {
                InOpCalls::Counted => {
                    self.threads.remove(&(tgid, tid));
                    continue;
                }
                // The kernel took the mark: the thread exited (cut, its event in the ring)
                // or made a hooked call (counted).
                InOpCalls::No if entry.marked => {
                    log::debug!("pid {tgid} thread {tid}: the kernel ended its operation from before attach");
                    self.threads.remove(&(tgid, tid));
                    continue;
                }
                InOpCalls::No | InOpCalls::BeforeAttach => {}
            }
            match stacks::look(tgid, tid, &ranges_of(ranges, tgid)) {
                stacks::Look::Inside(function) => {
                    entry.function = Some(function);
                    if !mark(ebpf, tgid, tid, &mut entry) {
                        self.threads.remove(&(tgid, tid));
                        continue;
                    }
                    self.threads.insert((tgid, tid), entry);
                }
                stacks::Look::Unknown => {}
                // A marked thread's exit is the kernel's to report (it takes the mark).
                stacks::Look::Gone if entry.marked => {}
                // Gone with its whole process: the exit counts it as cut (the entry goes
                // with `forget`).
                stacks::Look::Gone if !process_alive(tgid) => {}
                stacks::Look::Outside | stacks::Look::Gone => {
                    log::debug!("pid {tgid} thread {tid}: its operation from before attach ended");
                    if entry.marked {
                        unmark(ebpf, tgid, tid);
                    }
                    self.threads.remove(&(tgid, tid));
                }
            }
        }
    }
}

/// The hooked functions of `tgid` in its memory: (start, end, function index).
fn ranges_of(ranges: &[(u32, u64, u64, u32)], tgid: u32) -> Vec<(u64, u64, u32)> {
    ranges
        .iter()
        .filter(|r| r.0 == tgid)
        .map(|r| (r.1, r.2, r.3))
        .collect()
}

/// Whether process `tgid` still runs (not gone, not a zombie).
fn process_alive(tgid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{tgid}/stat")).is_ok_and(|stat| {
        // The state follows the command's closing parenthesis (proc(5)).
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// What `OP_CALLS` holds for a thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InOpCalls {
    No,
    /// A hooked call the kernel saw begin (and counts).
    Counted,
    /// Userspace's mark of an operation from before attach.
    BeforeAttach,
}

pub(super) fn thread_id(tgid: u32, tid: u32) -> u64 {
    ((tgid as u64) << 32) | tid as u64
}

/// What `OP_CALLS` holds for thread `tid` of `tgid`.
fn in_op_calls(ebpf: &Ebpf, tgid: u32, tid: u32) -> InOpCalls {
    let Some(map) = ebpf.map(map_names::OP_CALLS) else {
        return InOpCalls::No;
    };
    let Ok(calls) = BpfHashMap::<&MapData, u64, OpCall>::try_from(map) else {
        return InOpCalls::No;
    };
    match calls.get(&thread_id(tgid, tid), 0) {
        Ok(call) if call.depth == BEFORE_ATTACH => InOpCalls::BeforeAttach,
        Ok(_) => InOpCalls::Counted,
        Err(_) => InOpCalls::No,
    }
}

/// Puts the kernel in charge of the end of a thread's operation from before attach (see
/// [`BeforeAttach::marked`]), once its function is known; false if the thread made a hooked
/// call meanwhile (the kernel counts that one). A full map leaves it unmarked: looked at
/// on each read, as before.
fn mark(ebpf: &mut Ebpf, tgid: u32, tid: u32, entry: &mut BeforeAttach) -> bool {
    let Some(function) = entry.function else {
        return true;
    };
    if entry.marked {
        return true;
    }
    let Some(Ok(mut map)) = ebpf
        .map_mut(map_names::OP_CALLS)
        .map(BpfHashMap::<&mut MapData, u64, OpCall>::try_from)
    else {
        return true;
    };
    let call = OpCall {
        since_ns: entry.since_ns,
        function,
        depth: BEFORE_ATTACH,
    };
    // BPF_NOEXIST (1, include/uapi/linux/bpf.h): a call the kernel saw begin is never
    // overwritten.
    match map.insert(thread_id(tgid, tid), call, 1) {
        Ok(()) => {
            entry.marked = true;
            true
        }
        Err(_) => match map.get(&thread_id(tgid, tid), 0) {
            Ok(c) if c.depth != BEFORE_ATTACH => false,
            Ok(_) => {
                entry.marked = true;
                true
            }
            Err(_) => true,
        },
    }
}

/// Takes a thread's mark out, the thread seen outside its operation. Only a mark: a call the
/// kernel counts that took its place between the read and the removal would be lost (its
/// return unmatched, in flight until its process exits), so the entry is read first; that
/// window is the one race left, and it errs towards holding the drain.
fn unmark(ebpf: &mut Ebpf, tgid: u32, tid: u32) {
    let Some(Ok(mut map)) = ebpf
        .map_mut(map_names::OP_CALLS)
        .map(BpfHashMap::<&mut MapData, u64, OpCall>::try_from)
    else {
        return;
    };
    if matches!(map.get(&thread_id(tgid, tid), 0), Ok(c) if c.depth == BEFORE_ATTACH) {
        let _ = map.remove(&thread_id(tgid, tid));
    }
}

/// CLOCK_MONOTONIC in ns, the clock of the kernel's `bpf_ktime_get_ns`.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
