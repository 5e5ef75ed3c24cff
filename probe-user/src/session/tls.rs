//! TLS in a session, a probe unit (units.rs): the targets' TLS libraries hooked
//! (kernel/tls.rs) when a target talks outward, at attach and on the rescans; the report's
//! `coverage.tls_libraries` says which were found and whether they are read.

use crate::{
    events::Role,
    kernel::{probe::Probe, tls::TlsHooks},
    model::{report::Coverage, state::AuditState},
    session::unit::Unit,
    settings::Common,
    Result,
};

/// The TLS hooks unit.
pub(super) struct Tls;

impl Unit for Tls {
    fn install(&self, probe: &mut Probe, _state: &mut AuditState, _common: &Common) {
        probe.install(TlsHooks::default());
    }

    /// Hooks the TLS libraries `tgid` maps and did not before, when it talks outward; one
    /// that could not be hooked is a warning (its conversations stay `unverified`).
    fn hook(
        &self,
        probe: &mut Probe,
        state: &AuditState,
        tgid: u32,
        _named: bool,
        verbose: u8,
    ) -> Result<()> {
        if talks_outward(state, tgid) {
            hook_tls(probe, tgid, verbose);
        }
        Ok(())
    }

    fn coverage(&self, probe: &Probe, coverage: &mut Coverage) {
        if let Some((tls, _)) = probe.unit::<TlsHooks>() {
            coverage.tls_libraries = tls.libraries().iter().map(|l| l.describe()).collect();
        }
    }
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
/// which.
fn hook_tls(probe: &mut Probe, tgid: u32, verbose: u8) {
    // DRAINWATCH_TLS=off: no uprobes (to measure their cost, or if a library misbehaves
    // under them); TLS conversations are then `unverified`, as for libraries not hooked.
    if std::env::var("DRAINWATCH_TLS").is_ok_and(|v| v == "off") {
        return;
    }
    let Some((tls, ebpf)) = probe.unit_mut::<TlsHooks>() else {
        return;
    };
    for library in tls.attach(ebpf, tgid) {
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
