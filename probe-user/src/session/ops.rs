//! Operations (`--op`) in a session, a probe unit (units.rs): the targets' functions hooked
//! as they become targets and on the rescans (kernel/ops/), the kernel's counters read into
//! the state on each drain and at each exit (model/ops/).

use crate::{
    events::{DecodeError, Event, UnitEvent},
    host::procfs,
    kernel::{
        ops::{self, OpHooks, OpsRead},
        probe::Probe,
    },
    model::{
        ops::{
            events::{OpCount, OpCut, OpThread, OpsSample, UNKNOWN_FUNCTION},
            OpsTracker,
        },
        state::AuditState,
    },
    session::unit::Unit,
    settings::Common,
    Error, Result,
};

/// The operation probes unit: on when `--op` names functions.
pub(super) struct Operations;

impl Unit for Operations {
    fn install(&self, probe: &mut Probe, state: &mut AuditState, common: &Common) {
        if common.units.ops.is_empty() {
            return;
        }
        state.track(
            OpsTracker::new(common.units.ops.iter().map(|s| s.text.clone()).collect())
                .with_blind_runtimes(ops::blind_runtimes()),
        );
        probe.install(OpHooks::new(common.units.ops.clone()));
    }

    /// Hooks the `--op` functions `tgid` maps and were not hooked in it before.
    fn hook(
        &self,
        probe: &mut Probe,
        _state: &AuditState,
        tgid: u32,
        named: bool,
        verbose: u8,
    ) -> Result<()> {
        let Some((ops, ebpf)) = probe.unit_mut::<OpHooks>() else {
            return Ok(());
        };
        match ops.attach(ebpf, tgid) {
            Ok(hooked) => {
                if verbose >= 1 {
                    for h in hooked {
                        eprintln!("drainwatch: {}", h.describe(ops.specs()));
                    }
                }
                Ok(())
            }
            Err(refusal) if named => Err(Error::Unit(refusal.to_string())),
            Err(refusal) => {
                eprintln!("drainwatch: warning: {refusal}");
                Ok(())
            }
        }
    }

    /// A SPEC that matched nothing in any target is an error naming what was searched and
    /// the nearest names (docs/design.md, "operation").
    fn attached(&self, probe: &Probe) -> Result<()> {
        let unmatched = probe
            .unit::<OpHooks>()
            .map(|(ops, _)| ops.unmatched())
            .unwrap_or_default();
        if unmatched.is_empty() {
            Ok(())
        } else {
            Err(Error::Unit(unmatched.join("; ")))
        }
    }

    /// Reads the kernel's operation maps into the state.
    fn sample(&self, probe: &mut Probe, state: &mut AuditState, verbose: u8) {
        if state.tracker::<OpsTracker>().is_none() {
            return;
        }
        let Some((ops, ebpf)) = probe.unit_mut::<OpHooks>() else {
            return;
        };
        let read = ops.read(ebpf);
        let ktime_ns = procfs::monotonic_now().as_nanos() as u64;
        let event = Event::Unit(UnitEvent::new(&from_read(ktime_ns, read)));
        if verbose >= 2 {
            if let Ok(line) = serde_json::to_string(&event) {
                eprintln!("{line}");
            }
        }
        state.apply_sample(&event);
    }

    /// A thread that exited inside an operation (`probe_common::ops::OpCutEvent`).
    fn kinds(&self) -> &'static [u32] {
        &[probe_common::ops::OP_CUT_KIND]
    }

    #[cfg(test)]
    fn event_names(&self) -> &'static [&'static str] {
        use crate::events::UnitEventKind;
        &[OpCut::NAME, OpsSample::NAME]
    }

    fn decode(&self, kind: u32, record: &[u8]) -> Option<Result<Event, DecodeError>> {
        if kind != probe_common::ops::OP_CUT_KIND {
            return None;
        }
        // SAFETY: OpCutEvent is a #[repr(C)] wire struct of integers only.
        let wire = unsafe { crate::events::read_record::<probe_common::ops::OpCutEvent>(record) };
        Some(wire.map(|e| Event::Unit(UnitEvent::new(&OpCut::from_wire(&e)))))
    }

    /// Its maps' entries for the process go (its counters were read just before).
    fn exited(&self, probe: &mut Probe, tgid: u32) {
        if let Some((ops, ebpf)) = probe.unit_mut::<OpHooks>() {
            ops.forget(ebpf, tgid);
        }
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
        blind_at_attach: read.blind_at_attach,
    }
}
