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
/// whose kind it is ([`Unit::kinds`]) decodes it.
pub(super) fn decode(kind: u32, record: &[u8]) -> Result<Event, DecodeError> {
    UNITS
        .iter()
        .find(|unit| unit.kinds().contains(&kind))
        .and_then(|unit| unit.decode(kind, record))
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::UNITS;
    use crate::events::Event;

    /// A unit's record kinds and event names are its own: a kind the core or another unit
    /// reads would be decoded as theirs, a name taken twice read back (a replay, `-vv`
    /// piped into a test) as the other's event.
    #[test]
    fn every_unit_kind_and_event_name_is_its_own() {
        let mut kinds = HashSet::new();
        let mut names = HashSet::new();
        for unit in UNITS {
            for &kind in unit.kinds() {
                assert!(
                    probe_common::EventKind::from_u32(kind).is_none() && kind >= 9,
                    "kind {kind} is the core's (probe_common::EventKind: units take 9 and up)"
                );
                assert!(kinds.insert(kind), "kind {kind} is taken by two units");
            }
            for &name in unit.event_names() {
                assert!(names.insert(name), "event {name:?} is named by two units");
                assert!(
                    !Event::CORE_NAMES.contains(&name),
                    "event {name:?} is a core event's name"
                );
            }
        }
        // The check sees the units that have events (the operation probes' op_cut).
        assert!(names.contains("op_cut"), "{names:?}");
    }

    /// [`Event::CORE_NAMES`] holds every core event a recorded run has (`-vv` sequences in
    /// testdata/, each replayed by the model's tests): a core arm added without its name
    /// there fails here once a recording has it.
    #[test]
    fn the_core_names_are_those_recorded_runs_use() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata");
        let mut seen = HashSet::new();
        for entry in std::fs::read_dir(dir).expect("testdata") {
            let path = entry.expect("an entry").path();
            if path.extension().is_none_or(|e| e != "jsonl") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("a recording");
            for line in text.lines().filter(|l| l.starts_with('{')) {
                let Ok(event) = serde_json::from_str::<Event>(line) else {
                    continue;
                };
                if matches!(event, Event::Unit(_)) {
                    continue;
                }
                let json = serde_json::to_value(&event).expect("serializes");
                let name = json["event"].as_str().expect("tagged").to_string();
                assert!(
                    Event::CORE_NAMES.contains(&name.as_str()),
                    "{name:?} ({}) is missing from Event::CORE_NAMES",
                    path.display()
                );
                seen.insert(name);
            }
        }
        assert!(seen.len() >= 6, "the recordings hold core events: {seen:?}");
    }
}
