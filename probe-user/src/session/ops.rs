//! Operations (`--op`) in a session: the targets' functions hooked as they become targets
//! and on the rescans (kernel/ops.rs), the kernel's counters read into the state on each
//! drain and at each exit (model/ops.rs).

use crate::{
    events::{
        ops::{OpCount, OpThread, OpsSample, UNKNOWN_FUNCTION},
        Event,
    },
    host::procfs,
    kernel::{ops::OpsRead, probe::Probe},
    model::state::AuditState,
    Error, Result,
};

/// Hooks the `--op` functions `tgid` maps and were not hooked in it before. `named`: a
/// process the user selected, whose refusal ends the run (exit 2); another one (a child, a
/// later match) is a warning.
pub fn hook(probe: &mut Probe, tgid: u32, named: bool, verbose: u8) -> Result<()> {
    let (ops, ebpf) = probe.ops_mut();
    if !ops.is_on() {
        return Ok(());
    }
    match ops.attach(ebpf, tgid) {
        Ok(hooked) => {
            if verbose >= 1 {
                for h in hooked {
                    eprintln!("drainwatch: {}", h.describe(ops.specs()));
                }
            }
            Ok(())
        }
        Err(refusal) if named => Err(Error::Ops(refusal.to_string())),
        Err(refusal) => {
            eprintln!("drainwatch: warning: {refusal}");
            Ok(())
        }
    }
}

/// After the first attach: a SPEC that matched nothing in any target is an error naming what
/// was searched and the nearest names (docs/design.md, "operation").
pub fn check_matched(probe: &Probe) -> Result<()> {
    let unmatched = probe.ops().0.unmatched();
    if unmatched.is_empty() {
        Ok(())
    } else {
        Err(Error::Ops(unmatched.join("; ")))
    }
}

/// Reads the kernel's operation maps into the state.
pub fn sample(probe: &mut Probe, state: &mut AuditState, verbose: u8) {
    if state.ops().is_none() {
        return;
    }
    let (ops, ebpf) = probe.ops_mut();
    let read = ops.read(ebpf);
    let ktime_ns = procfs::monotonic_now().as_nanos() as u64;
    let event = Event::Operations(from_read(ktime_ns, read));
    if verbose >= 2 {
        if let Ok(line) = serde_json::to_string(&event) {
            eprintln!("{line}");
        }
    }
    state.apply(&event);
}

/// A process exited: its maps' entries go (its counters were read just before, by
/// [`sample`]).
pub fn forget(probe: &mut Probe, tgid: u32) {
    let (ops, ebpf) = probe.ops_mut();
    if ops.is_on() {
        ops.forget(ebpf, tgid);
    }
}

fn from_read(ktime_ns: u64, read: OpsRead) -> OpsSample {
    OpsSample {
        ktime_ns,
        counts: read
            .counters
            .into_iter()
            .map(|(key, c)| OpCount {
                tgid: key.tgid,
                function: key.function,
                started: c.started,
                ended: c.ended,
                cut: c.cut,
                last_edge_ns: c.last_edge_ns,
            })
            .collect(),
        threads: read
            .threads
            .into_iter()
            .map(|(tgid, pid, call)| OpThread {
                tgid,
                pid,
                function: call.function,
                since_ns: call.since_ns,
            })
            .collect(),
        latency_us: read.latency_us,
        before_attach: read
            .before_attach
            .into_iter()
            .map(|(tgid, pid, function, since_ns)| OpThread {
                tgid,
                pid,
                function: function.unwrap_or(UNKNOWN_FUNCTION),
                since_ns,
            })
            .collect(),
    }
}
