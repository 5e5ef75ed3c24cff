//! What a probe unit is to the session (units.rs holds the registry and calls them): the
//! steps of a run it takes part in.

use crate::{
    events::{DecodeError, Event},
    kernel::probe::Probe,
    model::{report::Coverage, state::AuditState},
    settings::Common,
    Result,
};

/// A probe unit, as the session drives it. Every step but [`Unit::install`] and
/// [`Unit::hook`] does nothing unless the unit says otherwise.
pub(super) trait Unit: Sync {
    /// The run starts (before any target): installs what the flags ask for.
    fn install(&self, probe: &mut Probe, state: &mut AuditState, common: &Common);

    /// `tgid` is a target (again, on a rescan): hooks what it maps and was not hooked in it
    /// before. `named`: a process the user selected, whose refusal ends the run (exit 2);
    /// another one's is a warning.
    fn hook(
        &self,
        probe: &mut Probe,
        state: &AuditState,
        tgid: u32,
        named: bool,
        verbose: u8,
    ) -> Result<()>;

    /// After the first attach: whether what was asked for was found.
    fn attached(&self, _probe: &Probe) -> Result<()> {
        Ok(())
    }

    /// Its own ring-buffer record kinds (`probe_common::EventKind`: 9 and up), which
    /// [`Unit::decode`] reads. Unique over every unit (units.rs checks it).
    fn kinds(&self) -> &'static [u32] {
        &[]
    }

    /// The names of its own events (`UnitEventKind::NAME`), as `-vv` prints them and a
    /// replay reads them back: unique over every unit and every core event (units.rs checks
    /// it; a name taken twice would be read back as the other's). Only that check reads it.
    #[cfg(test)]
    fn event_names(&self) -> &'static [&'static str] {
        &[]
    }

    /// A ring-buffer record of a kind the core does not know (`probe_common::EventKind`):
    /// `None` when it is not one of the unit's own.
    fn decode(&self, _kind: u32, _record: &[u8]) -> Option<Result<Event, DecodeError>> {
        None
    }

    /// Reads the unit's kernel maps into the state.
    fn sample(&self, _probe: &mut Probe, _state: &mut AuditState, _verbose: u8) {}

    /// A process exited (its maps were sampled just before).
    fn exited(&self, _probe: &mut Probe, _tgid: u32) {}

    /// Its part of the report's `coverage`.
    fn coverage(&self, _probe: &Probe, _coverage: &mut Coverage) {}
}
