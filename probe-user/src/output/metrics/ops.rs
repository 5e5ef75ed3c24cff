//! The operations' series (`--op`, docs/design.md "operation"): in flight and returned per
//! target name and SPEC, read from the kernel's per-(process, function) counters, and their
//! latency per SPEC. The kernel files an operation's latency in one histogram per function
//! (probe-ebpf/src/ops/mod.rs, `OP_LATENCY`), not per process, so the duration histogram is
//! labelled by `function` alone: a `comm` there would be a guess.

use std::collections::BTreeMap;

use super::exposition::{HdrFeed, LatencyBuckets, Text};
use crate::model::state::AuditState;

/// One (target name, SPEC)'s operations at a scrape.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpsSeries {
    pub in_flight: u64,
    /// Returned since attach (a counter: a process that exited keeps its count).
    pub returned: u64,
}

/// The operations of a session's state, by (target name, SPEC); `None` without `--op`.
pub fn snapshot(state: &AuditState) -> Option<BTreeMap<(String, String), OpsSeries>> {
    let ops = state.operations()?;
    let mut out: BTreeMap<(String, String), OpsSeries> = BTreeMap::new();
    // Every name watched has its series from the first scrape, as the other families.
    for target in state.targets() {
        for name in ops.names() {
            out.entry((target.comm.clone(), name.clone())).or_default();
        }
    }
    for (tgid, function, in_flight, returned) in ops.by_process() {
        let comm = state.comm_of(tgid).unwrap_or("unknown").to_string();
        let series = out.entry((comm, function.to_string())).or_default();
        series.in_flight += in_flight;
        series.returned += returned;
    }
    Some(out)
}

/// Feeds the latencies the state recorded since the last scrape, by SPEC.
pub fn update(state: &AuditState, into: &mut BTreeMap<String, (HdrFeed, LatencyBuckets)>) {
    let Some(ops) = state.operations() else {
        return;
    };
    for (function, hdr) in ops.histograms() {
        let (feed, buckets) = into.entry(function.to_string()).or_default();
        feed.feed(hdr, buckets);
    }
}

/// The families, always (docs/observability.md lists them); samples only with `--op`.
pub fn render(
    out: &mut Text,
    series: Option<&BTreeMap<(String, String), OpsSeries>>,
    latency: &BTreeMap<String, (HdrFeed, LatencyBuckets)>,
) {
    let empty = BTreeMap::new();
    let series = series.unwrap_or(&empty);
    out.family(
        "operations_in_flight",
        "gauge",
        "Operations (--op) inside the targets' own functions now (docs/design.md, \
         \"operation\"), by target name and function.",
    );
    for ((comm, function), s) in series {
        let labels = [("comm", comm.as_str()), ("function", function.as_str())];
        out.sample("operations_in_flight", &labels, s.in_flight);
    }
    out.family(
        "operations_total",
        "counter",
        "Operations (--op) that returned since drainwatch attached, by target name and function.",
    );
    for ((comm, function), s) in series {
        let labels = [("comm", comm.as_str()), ("function", function.as_str())];
        out.sample("operations_total", &labels, s.returned);
    }
    out.family(
        "operation_duration_seconds",
        "histogram",
        "Operation (--op) latency: entry of the function to its return, by function.",
    );
    for (function, (_, buckets)) in latency {
        out.histogram_samples(
            "operation_duration_seconds",
            &[("function", function)],
            buckets,
        );
    }
}
