//! A probe unit's part of the state (session/units.rs drives its session part): the
//! operations of `--op` (model/ops/) are one. The state holds each tracker the run
//! watches, feeds it every event and each exit, asks it whether it holds the drain, and has
//! it fill its section of the report; the rest of the state never names it.

use hdrhistogram::Histogram;

use crate::{
    events::Event,
    model::report::{OperationsReport, Report, Violation},
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

    /// The operations it watches, when it is the tracker of operations.
    fn operations(&self) -> Option<&dyn Operations> {
        None
    }
}

/// Operations (docs/design.md, "operation") as the contract shows them, whichever unit
/// tracks them: the report's `operations`, `watch`'s line, the metrics' series, the drain's
/// basis and the progress line read them through this, and name no unit.
pub trait Operations {
    /// In flight now, over every running process (unknown counts: never idle).
    fn in_flight(&self) -> u64;

    /// In flight now by function: (SPEC, how many, when the oldest began (ktime ns) if
    /// known).
    fn in_flight_by_function(&self) -> Vec<(String, u64, Option<u64>)>;

    /// The report's `operations`.
    fn summary(&self) -> OperationsReport;

    /// The SPECs, by function index.
    fn names(&self) -> &[String];

    /// Per (process, SPEC): in flight now and returned since attach.
    fn by_process(&self) -> Vec<(u32, &str, u64, u64)>;

    /// Latencies (µs) by SPEC.
    fn histograms(&self) -> Vec<(&str, &Histogram<u64>)>;

    /// Running processes whose operations from before attach cannot be seen.
    fn blind_at_attach(&self) -> &[u32];

    /// The runtimes that blindness is of, for the drain's basis (`Go`, `Go or CPython`).
    fn blind_runtimes(&self) -> &str;
}

/// Nanoseconds since attach in ms, as the report counts.
pub fn ms_since(attach_ns: u64) -> impl Fn(u64) -> u64 {
    move |ns| ns.saturating_sub(attach_ns) / 1_000_000
}
