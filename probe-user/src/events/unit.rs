//! A probe unit's own events, carried by a layer that does not know them (events/mod.rs):
//! a [`UnitEvent`] is the unit's event in its JSON form, the form `-vv` prints and a replay
//! reads, so the one generic arm of `Event` holds any unit's events and each unit's tracker
//! reads back its own kinds, typed ([`UnitEvent::read`]).

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::{Map, Value};

/// A unit's event type: its name in the `event` tag (unique over every unit and every
/// core event) and when it happened.
pub trait UnitEventKind: Serialize + DeserializeOwned {
    const NAME: &'static str;
}

/// One event of a probe unit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitEvent {
    /// Its kind's [`UnitEventKind::NAME`].
    pub event: String,
    /// Its fields (`ktime_ns` among them).
    #[serde(flatten)]
    pub body: Map<String, Value>,
}

impl UnitEvent {
    pub fn new<T: UnitEventKind>(event: &T) -> Self {
        let body = match serde_json::to_value(event) {
            Ok(Value::Object(body)) => body,
            // A unit event is a struct, whose JSON form is an object.
            _ => Map::new(),
        };
        Self {
            event: T::NAME.to_string(),
            body,
        }
    }

    /// The event as a `T`, when it is one.
    pub fn read<T: UnitEventKind>(&self) -> Option<T> {
        if self.event != T::NAME {
            return None;
        }
        serde_json::from_value(Value::Object(self.body.clone())).ok()
    }

    /// Its `ktime_ns` field (0 if it has none).
    pub fn ktime_ns(&self) -> u64 {
        self.body
            .get("ktime_ns")
            .and_then(Value::as_u64)
            .unwrap_or(0)
    }
}
