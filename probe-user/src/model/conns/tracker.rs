//! The connection tracker's state ([`ConnTracker`]) and the parts of it its files keep
//! (calls.rs, unknown.rs, requests.rs add its methods; conns.rs the rest): a leaf they all
//! import, so none of them imports another for the type.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

use super::conn::Conn;
use crate::{
    events::TargetRequests,
    model::drain_facts::DrainFacts,
    model::report::{ConnectionCounts, LatencySummary, Percentiles, UnknownAtAttach, Unverified},
};

pub struct ConnTracker {
    /// ktime of the last request, database or close event: the drain's quiet window counts
    /// from here once nothing is in flight.
    pub(super) last_activity_ns: u64,
    pub(super) conns: BTreeMap<(u32, u32), Conn>,
    /// The kernel's request counters of each running target, as last read.
    pub(super) requests_by_target: BTreeMap<u32, TargetRequests>,
    /// Client connections found busy at attach, by target (their ends are counted apart).
    pub(super) busy_at_attach: BTreeMap<u32, u64>,
    /// Requests ended by closes the kernel's counters never saw (`ConnClose::
    /// request_uncounted`), by target: (started while watched, in flight at attach).
    pub(super) ended_here: BTreeMap<u32, (u64, u64)>,
    /// Client connections whose state at attach was unknown, resolved or not, in order.
    pub(super) unknown: Vec<Unknown>,
    /// Of those, how many were still unknown when their process exited: each could have
    /// been a request the exit cut.
    pub(super) exited_unknown: u64,
    pub(super) counts: ConnectionCounts,
    /// `counts` by target process.
    pub(super) counts_by_tgid: BTreeMap<u32, ConnectionCounts>,
    pub(super) requests: Histogram<u64>,
    pub(super) queries: Histogram<u64>,
    /// Encrypted database connections that ended: what happened in them is unknown.
    pub(super) unverified: Vec<Unverified>,
    /// The latency of the query the last `db_io` ended (µs).
    pub(super) query_ended_us: Option<u64>,
    /// Requests the kernel counted as ended (answered or closed) since attach, over every
    /// target, exited ones included: what a rate is computed from.
    pub(super) requests_ended: u64,
    /// Last client input, last query, push-style connections: what the drain's basis, its
    /// tail and `--settle` read (model/drain_facts.rs).
    pub(super) facts: DrainFacts,
    /// Upstream calls: what the kernel's counters do not carry (model/conns/calls.rs).
    pub(super) calls: CallBook,
}

impl std::fmt::Debug for ConnTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnTracker")
            .field("conns", &self.conns)
            .field("counts", &self.counts)
            .finish_non_exhaustive()
    }
}

impl Default for ConnTracker {
    fn default() -> Self {
        Self {
            last_activity_ns: 0,
            conns: BTreeMap::new(),
            requests_by_target: BTreeMap::new(),
            busy_at_attach: BTreeMap::new(),
            ended_here: BTreeMap::new(),
            unknown: Vec::new(),
            exited_unknown: 0,
            counts: ConnectionCounts::default(),
            counts_by_tgid: BTreeMap::new(),
            requests: histogram(),
            queries: histogram(),
            unverified: Vec::new(),
            query_ended_us: None,
            requests_ended: 0,
            facts: DrainFacts::default(),
            calls: CallBook::default(),
        }
    }
}

/// The bookkeeping the kernel's counters do not carry.
#[derive(Clone, Debug, Default)]
pub(super) struct CallBook {
    /// Upstream connections found awaiting a reply at attach, by target.
    pub(super) busy_at_attach: std::collections::BTreeMap<u32, u64>,
    /// Of those, connections that had never answered (first calls whose start is unknown:
    /// they hold from attach, `first_at_attach_ns`).
    pub(super) first_busy_at_attach: std::collections::BTreeMap<u32, u64>,
    pub(super) first_at_attach_ns: u64,
    /// Calls ended by closes the kernel never saw, by target: (started while watched, in
    /// flight at attach).
    pub(super) ended_here: std::collections::BTreeMap<u32, (u64, u64)>,
    /// Calls the kernel counted as ended since attach, exited targets included.
    pub(super) ended: u64,
    /// Each target's count of one-way connections when userspace last looked for which.
    pub(super) one_way_looked: std::collections::BTreeMap<u32, u64>,
    /// One-way connections named, in order: (tgid, fd, peer, still open).
    pub(super) one_way_named: Vec<(u32, u32, Option<String>, bool)>,
}

/// A connection unknown at attach; `live` until it is resolved or its process exits.
/// `report.what`: [`WHAT_REQUEST`] (a client connection) or [`WHAT_TRANSACTION`] (a
/// database connection whose transaction state nothing settled at attach).
#[derive(Debug)]
pub(super) struct Unknown {
    pub(super) live: bool,
    pub(super) report: UnknownAtAttach,
}
impl Unknown {
    pub(super) fn key(&self) -> (u32, u32) {
        (self.report.pid, self.report.fd)
    }
}
pub(crate) fn histogram() -> Histogram<u64> {
    // 1 µs to 1 hour, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}
pub(crate) fn summary(h: &Histogram<u64>) -> LatencySummary {
    LatencySummary {
        count: h.len(),
        latency_us: Percentiles {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
        },
    }
}
/// Records a latency and returns it in µs.
pub(super) fn record(h: &mut Histogram<u64>, from_ns: u64, to_ns: u64) -> u64 {
    let us = (to_ns.saturating_sub(from_ns) / 1000).max(1);
    h.saturating_record(us);
    us
}
