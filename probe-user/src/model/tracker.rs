//! A probe unit's part of the state (session/units.rs drives its session part): the
//! operations of `--op` (model/ops.rs) are one. The state holds each tracker the run
//! watches, feeds it every event and each exit, asks it whether it holds the drain, and has
//! it fill its section of the report; the rest of the state never names it.

use crate::{
    events::Event,
    model::report::{Report, Violation},
};

pub trait Tracker: std::fmt::Debug + Send + std::any::Any {
    /// An event (most are not its own). `attach_ns`: where `at_ms` values count from;
    /// `violations`: the state's, for it to add to.
    fn apply(&mut self, event: &Event, attach_ns: u64, violations: &mut Vec<Violation>);

    /// A target exited (its kernel counters were read just before).
    fn exit(&mut self, tgid: u32, ktime_ns: u64, attach_ns: u64, violations: &mut Vec<Violation>);

    /// Nothing of it in flight (docs/design.md, "drained").
    fn idle(&self) -> bool;

    /// When (ktime ns) something of it last began or ended: the quiet window counts from
    /// there.
    fn last_edge_ns(&self) -> u64;

    /// Its section of the report.
    fn report(&self, report: &mut Report);
}

/// Nanoseconds since attach in ms, as the report counts.
pub fn ms_since(attach_ns: u64) -> impl Fn(u64) -> u64 {
    move |ns| ns.saturating_sub(attach_ns) / 1_000_000
}
