//! `-vv`: every event applied to the state, one JSON line each on stderr, in the format the
//! state machine's tests replay (events/mod.rs).

use crate::events::Event;

/// Prints `event` as one JSON line on stderr.
pub fn event(event: &Event) {
    if let Ok(line) = serde_json::to_string(event) {
        eprintln!("{line}");
    }
}
