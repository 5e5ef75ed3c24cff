//! What is in flight, counted: client requests from the kernel's per-target counters, and the
//! latency histograms of requests and database queries.

use hdrhistogram::Histogram;

use crate::{events::RequestSample, model::report::LatencySummary};

use super::tracker::{summary, ConnTracker};

/// Counts of what is in flight right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InFlight {
    pub requests: u64,
    pub queries: u64,
    pub transactions: u64,
    /// Connections whose state at attach is still unknown: a client connection may hold a
    /// request, a database connection a transaction (those are also in `unknown_txns`).
    pub unknown: u64,
    /// Of `unknown`, database connections whose transaction state is still unknown.
    pub unknown_txns: u64,
    /// Upstream calls in flight (docs/design.md, "upstream call in flight").
    pub upstream_calls: u64,
    /// Of `upstream_calls`, first calls: they hold the drain through the quiet window's
    /// start (`ConnTracker::last_activity_ns`), not here (model/conns/calls.rs).
    pub first_calls: u64,
}
impl InFlight {
    pub fn is_idle(&self) -> bool {
        self.requests == 0
            && self.queries == 0
            && self.transactions == 0
            && self.unknown == 0
            && self.upstream_calls <= self.first_calls
    }
}
impl ConnTracker {
    /// The kernel's request counters: the latest values of each target, and the latencies
    /// of the requests answered since the previous sample.
    pub fn requests_sample(&mut self, sample: &RequestSample) {
        for target in &sample.targets {
            // Only a running target is sampled: one that exited was removed by `exit`.
            self.touch(target.last_edge_ns);
            self.facts
                .counters(target.tgid, target.pushed, target.last_input_ns);
            let before = self
                .requests_by_target
                .insert(target.tgid, *target)
                .unwrap_or_default();
            self.requests_ended += target.ended.saturating_sub(before.ended)
                + target.existing_ended.saturating_sub(before.existing_ended);
            self.calls_sample(&before.calls, &target.calls);
        }
        for &(us, count) in &sample.latency_us {
            let us = us.clamp(1, self.requests.high());
            let _ = self.requests.record_n(us, count);
        }
    }
    /// Client requests in flight in one target: those that started while watched and have
    /// not ended, plus those busy at attach whose end the kernel has not counted yet.
    pub(super) fn requests_in_flight(&self, tgid: u32) -> u64 {
        let counted = self
            .requests_by_target
            .get(&tgid)
            .copied()
            .unwrap_or_default();
        let busy = self.busy_at_attach.get(&tgid).copied().unwrap_or(0);
        let (ended, existing_ended) = self.ended_here.get(&tgid).copied().unwrap_or_default();
        counted.started.saturating_sub(counted.ended + ended)
            + busy.saturating_sub(counted.existing_ended + existing_ended)
    }
    pub fn requests(&self) -> LatencySummary {
        summary(&self.requests)
    }
    pub fn queries(&self) -> LatencySummary {
        summary(&self.queries)
    }
    /// Requests ended (answered or closed) since attach, as the kernel counted them.
    pub fn requests_ended(&self) -> u64 {
        self.requests_ended
    }
    /// Every client request latency recorded so far, in µs (for the metrics exporter).
    pub fn request_histogram(&self) -> &Histogram<u64> {
        &self.requests
    }
    /// Every database query latency recorded so far, in µs (for the metrics exporter).
    pub fn query_histogram(&self) -> &Histogram<u64> {
        &self.queries
    }
    /// The latency (µs) of the query the last [`ConnTracker::db_io`] ended, if it ended one.
    pub fn take_query_ended_us(&mut self) -> Option<u64> {
        self.query_ended_us.take()
    }
}
