//! The kernel's request counters and latency histograms (probe_common::RequestCounters,
//! probe_common::latency) read into the state as [`RequestSample`] events. Requests are
//! counted in the kernel instead of being sent one event each: at saturated request rates
//! the events outran the reader.

use std::collections::{BTreeMap, HashMap};

use probe_common::latency;

use crate::{
    events::{Event, RequestSample, TargetRequests},
    host::procfs,
    kernel::probe::Probe,
    model::state::AuditState,
    session::{every::Every, trace},
};

/// How often the latency histograms are read (the counters are read on every drain).
const LATENCY_READ_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

pub(super) struct RequestSampler {
    verbose: u8,
    /// Each process's latency histogram totals at the previous read, to hand on only what
    /// is new.
    latency_seen: HashMap<u32, Vec<u64>>,
    latency_read: Every,
    /// The counters last printed at -vv.
    printed_targets: Vec<TargetRequests>,
}

type Latencies = Vec<(u64, u64)>;

impl RequestSampler {
    pub(super) fn new(verbose: u8) -> Self {
        Self {
            verbose,
            latency_seen: HashMap::new(),
            latency_read: Every::new(LATENCY_READ_EVERY),
            printed_targets: Vec::new(),
        }
    }

    /// Reads the kernel's request counters of every running target (and, every
    /// [`LATENCY_READ_EVERY`] or when `final_read`, the latency histograms) into the state.
    /// Called after the ring was drained, so an exit is applied before its target's counters
    /// disappear from the map.
    pub(super) fn sample(&mut self, probe: &Probe, state: &mut AuditState, final_read: bool) {
        if state.conns().is_none() {
            return;
        }
        let ktime_ns = procfs::monotonic_now().as_nanos() as u64;
        let targets = state
            .running_targets()
            .into_iter()
            .filter_map(|tgid| {
                let c = probe.request_counters(tgid)?;
                Some(TargetRequests {
                    tgid,
                    started: c.started,
                    ended: c.ended,
                    existing_ended: c.existing_ended,
                    last_edge_ns: c.last_edge_ns,
                    pushed: c.pushed,
                    last_input_ns: c.last_input_ns,
                    calls: crate::events::TargetCalls::from_wire(&c.calls),
                })
            })
            .collect::<Vec<_>>();
        let due = self.latency_read.due();
        let (latency_us, latency_by_tgid) = if final_read || due {
            self.latency_read.ran();
            self.new_latencies(probe)
        } else {
            Default::default()
        };
        // At -vv, a sample is printed when it says something new (it is read every tick).
        let new = !latency_us.is_empty() || targets != self.printed_targets;
        let sample = Event::Requests(RequestSample {
            ktime_ns,
            targets: targets.clone(),
            latency_us,
            latency_by_tgid,
        });
        if self.verbose >= 2 && new {
            self.printed_targets = targets;
            trace::event(&sample);
        }
        state.apply(&sample);
        // Which client connections became push-style: looked up only when a target's count
        // moved (docs/design.md, "request in flight").
        for (tgid, fd) in state.push_look_due() {
            let flags = probe.conn_flags(probe_common::ConnKey { tgid, fd });
            // A client connection push-style, or an upstream one one-way (its counterpart).
            let marks = probe_common::CONN_PUSH | probe_common::CONN_ONE_WAY;
            if flags.is_some_and(|f| f & marks != 0) {
                let event = Event::PushStyle(crate::events::PushStyle { ktime_ns, tgid, fd });
                if self.verbose >= 2 {
                    trace::event(&event);
                }
                state.apply(&event);
            }
        }
    }

    /// The last latencies of a process that exited, read before its histogram is removed
    /// from the kernel's map (which only has room for so many processes).
    pub(super) fn at_exit(
        &mut self,
        probe: &mut Probe,
        state: &mut AuditState,
        tgid: u32,
        ktime_ns: u64,
    ) {
        if state.conns().is_none() {
            return;
        }
        let new = probe
            .request_latency_of(tgid)
            .map(|totals| self.new_of(tgid, totals))
            .unwrap_or_default();
        self.latency_seen.remove(&tgid);
        probe.forget_latency(tgid);
        if !new.is_empty() {
            state.apply(&Event::Requests(RequestSample {
                ktime_ns,
                targets: Vec::new(),
                latency_us: new.clone(),
                latency_by_tgid: vec![(tgid, new)],
            }));
        }
    }

    /// Latencies recorded in the kernel since the last read: (µs, count) by bucket, over
    /// every process and by process.
    fn new_latencies(&mut self, probe: &Probe) -> (Latencies, Vec<(u32, Latencies)>) {
        let Some(histograms) = probe.request_latency() else {
            return Default::default();
        };
        let by_tgid: Vec<(u32, Latencies)> = histograms
            .into_iter()
            .map(|(tgid, totals)| (tgid, self.new_of(tgid, totals)))
            .filter(|(_, new)| !new.is_empty())
            .collect();
        let mut sum = BTreeMap::new();
        for (us, count) in by_tgid.iter().flat_map(|(_, new)| new) {
            *sum.entry(*us).or_insert(0) += count;
        }
        (sum.into_iter().collect(), by_tgid)
    }

    /// What one process's histogram gained since it was last read: (µs, count) by bucket.
    fn new_of(&mut self, tgid: u32, totals: Vec<u64>) -> Latencies {
        let seen = self
            .latency_seen
            .entry(tgid)
            .or_insert_with(|| vec![0; totals.len()]);
        if seen.len() != totals.len() {
            *seen = vec![0; totals.len()];
        }
        let buckets = totals.len().saturating_sub(1); // the last slot is the max
        let out = totals[..buckets]
            .iter()
            .zip(seen.iter())
            .enumerate()
            .filter(|(_, (now, before))| now > before)
            .map(|(index, (now, before))| (latency::bucket_value(index), now - before))
            .collect();
        *seen = totals;
        out
    }
}
