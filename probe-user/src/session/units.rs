//! The probe units of a session: watchers that hook the targets' own code with uprobes,
//! beside the socket core (the TLS hooks, tls.rs; the operation probes, ops.rs). Each one
//! is a [`Unit`] and one line of [`UNITS`]; the session calls them at the same points of a
//! run: when it starts ([`Unit::install`]: its kernel half into the probe, its tracker into
//! the state), when a process becomes a target and on the rescans ([`Unit::hook`]), after
//! the first attach ([`Unit::attached`]), at each read of the kernel and before an exit is
//! judged ([`Unit::sample`]), at an exit ([`Unit::exited`]), and for the report's coverage.
//! The trait is in unit.rs (the units import it, this registry imports them: no circle).
//! A unit keeps no state of its own here: its kernel half lives in the probe
//! ([`crate::kernel::uprobe::UprobeUnit`]), what it tells in the state.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use crate::{
    events::{DecodeError, Event},
    kernel::probe::Probe,
    model::{report::Coverage, state::AuditState},
    session::{every::Every, unit::Unit},
    settings::Common,
    Result,
};

/// [`UNITS`], from lib.rs's `probe_units!`.
macro_rules! units {
    ($($module:ident: $unit:ident $(($args:ident))? $(+ $tracker:ident)?;)*) => {
        /// The registry of probe units, in the order of lib.rs's `probe_units!` list (a new
        /// unit is its files and one line there).
        pub(super) const UNITS: &[&dyn Unit] = &[$(&super::$module::$unit),*];
    };
}
probe_units!(units);

/// Every unit's [`Unit::install`].
pub(super) fn install(probe: &mut Probe, state: &mut AuditState, common: &Common) {
    for unit in UNITS {
        unit.install(probe, state, common);
    }
}

/// Every unit's [`Unit::hook`]; the first refusal ends it.
pub(super) fn hook(
    probe: &mut Probe,
    state: &AuditState,
    tgid: u32,
    named: bool,
    verbose: u8,
) -> Result<()> {
    UNITS
        .iter()
        .try_for_each(|unit| unit.hook(probe, state, tgid, named, verbose))
}

/// Every unit's [`Unit::attached`].
pub(super) fn attached(probe: &Probe) -> Result<()> {
    UNITS.iter().try_for_each(|unit| unit.attached(probe))
}

/// A ring-buffer record the core did not know (`events::decode`'s `UnknownKind`): the unit
/// whose kind it is decodes it.
pub(super) fn decode(kind: u32, record: &[u8]) -> Result<Event, DecodeError> {
    UNITS
        .iter()
        .find_map(|unit| unit.decode(kind, record))
        .unwrap_or(Err(DecodeError::UnknownKind(kind)))
}

/// Every unit's [`Unit::sample`].
pub(super) fn sample(probe: &mut Probe, state: &mut AuditState, verbose: u8) {
    for unit in UNITS {
        unit.sample(probe, state, verbose);
    }
}

/// Every unit's [`Unit::exited`].
pub(super) fn exited(probe: &mut Probe, tgid: u32) {
    for unit in UNITS {
        unit.exited(probe, tgid);
    }
}

/// Every unit's [`Unit::coverage`].
pub(super) fn coverage(probe: &Probe, coverage: &mut Coverage) {
    for unit in UNITS {
        unit.coverage(probe, coverage);
    }
}

/// How the running targets are looked at again for what they loaded since (a module
/// importing `ssl`, a launched command that has exec'd, a library opened with dlopen, a
/// forked child): at every tick while a target is new (a program loads its libraries and
/// often connects right after it starts: a conversation begun before its library is hooked
/// is read from the middle, or stays unverified), then every [`RESCAN_EVERY`].
pub(super) struct Rescan {
    all: Every,
    /// When each target was first looked at.
    first_seen: HashMap<u32, Instant>,
}

const RESCAN_EVERY: Duration = Duration::from_millis(1000);
const NEW_TARGET: Duration = Duration::from_secs(5);

impl Rescan {
    pub(super) fn new() -> Self {
        Self {
            all: Every::new(RESCAN_EVERY),
            first_seen: HashMap::new(),
        }
    }

    /// Every unit's [`Unit::hook`] on the running targets due a look (a refusal there is a
    /// warning: none of them is a process the user named, as far as this look goes).
    pub(super) fn run(&mut self, probe: &mut Probe, state: &AuditState, verbose: u8) {
        let now = Instant::now();
        let all = self.all.take();
        let running = state.running_targets();
        self.first_seen.retain(|tgid, _| running.contains(tgid));
        for tgid in running {
            let first = *self.first_seen.entry(tgid).or_insert(now);
            if all || first.elapsed() < NEW_TARGET {
                let _ = hook(probe, state, tgid, false, verbose);
            }
        }
    }
}
