//! The kernel's request and upstream-call counters of a target process, summed over its
//! per-CPU copies (probe-ebpf/src/sockets/requests.rs, `REQUEST_COUNTS`) and the overflow
//! copy in its `TARGETS` entry, read so that what is in flight is never under-counted.

use aya::maps::{HashMap, PerCpuHashMap};
use probe_common::{map_names, CallCounters, RequestCounters, TargetInfo};

use super::owned::Probe;

impl Probe {
    /// The kernel's request counters of a target process; `None` once it has exited.
    ///
    /// A request may start on one CPU and end on another, and a read copies the CPUs one
    /// after the other: a single read could find its end on a CPU copied late and miss its
    /// start on one copied early, and so hide another request in flight. So the copies are
    /// read twice, the `ended` side taken from the first read and the `started` side from the
    /// second ([`in_flight_safe`]): every end in the first read had its start before it, and
    /// the second read has that start. The `TARGETS` entry (where a process counts that found
    /// the per-CPU map full) is read in between, and counts on both sides.
    pub fn request_counters(&self, tgid: u32) -> Option<RequestCounters> {
        let first = self.per_cpu_counters(tgid);
        let map = self.ebpf.map(map_names::TARGETS)?;
        let targets = HashMap::<_, u32, TargetInfo>::try_from(map).ok()?;
        let overflow = targets.get(&tgid, 0).ok()?.requests;
        let second = self.per_cpu_counters(tgid);
        Some(in_flight_safe(
            &sum(first.iter().chain([&overflow])),
            &sum(second.iter().chain([&overflow])),
        ))
    }

    /// This process's copies of the per-CPU counters; none before its first request edge.
    fn per_cpu_counters(&self, tgid: u32) -> Vec<RequestCounters> {
        self.ebpf
            .map(map_names::REQUEST_COUNTS)
            .and_then(|map| PerCpuHashMap::<_, u32, RequestCounters>::try_from(map).ok())
            .and_then(|map| map.get(&tgid, 0).ok())
            .map(|copies| copies.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// The counters of several copies together: counts add up (wrapping, as the kernel's
/// adds do), times are the latest of the copies'.
fn sum<'a>(copies: impl IntoIterator<Item = &'a RequestCounters>) -> RequestCounters {
    let mut out = RequestCounters::zeroed();
    for c in copies {
        let add = |total: &mut u64, n: u64| *total = total.wrapping_add(n);
        add(&mut out.ended, c.ended);
        add(&mut out.started, c.started);
        add(&mut out.existing_ended, c.existing_ended);
        out.last_edge_ns = out.last_edge_ns.max(c.last_edge_ns);
        add(&mut out.pushed, c.pushed);
        out.last_input_ns = out.last_input_ns.max(c.last_input_ns);
        let (total, calls) = (&mut out.calls, &c.calls);
        add(&mut total.ended, calls.ended);
        add(&mut total.started, calls.started);
        add(&mut total.existing_ended, calls.existing_ended);
        total.last_edge_ns = total.last_edge_ns.max(calls.last_edge_ns);
        add(&mut total.first_ended, calls.first_ended);
        add(&mut total.first_started, calls.first_started);
        total.first_last_start_ns = total.first_last_start_ns.max(calls.first_last_start_ns);
        add(&mut total.one_way, calls.one_way);
        add(&mut total.first_existing_ended, calls.first_existing_ended);
        add(&mut total.taken_back, calls.taken_back);
        add(&mut total.first_taken_back, calls.first_taken_back);
    }
    out
}

/// Counters from two reads, `early` before `late`: what ends a request or a call (and
/// takes a call back) from the early one, everything else from the late one. Every count
/// only grows, so a start can only be newer than its end here: what is in flight is never
/// under-counted, at worst an edge between the reads counts as in flight one tick longer.
fn in_flight_safe(early: &RequestCounters, late: &RequestCounters) -> RequestCounters {
    RequestCounters {
        ended: early.ended,
        existing_ended: early.existing_ended,
        calls: CallCounters {
            ended: early.calls.ended,
            existing_ended: early.calls.existing_ended,
            first_ended: early.calls.first_ended,
            first_existing_ended: early.calls.first_existing_ended,
            taken_back: early.calls.taken_back,
            first_taken_back: early.calls.first_taken_back,
            ..late.calls
        },
        ..*late
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests(started: u64, ended: u64) -> RequestCounters {
        RequestCounters {
            started,
            ended,
            ..RequestCounters::zeroed()
        }
    }

    fn in_flight(c: &RequestCounters) -> i64 {
        c.started.wrapping_sub(c.ended) as i64
    }

    #[test]
    fn a_request_that_moves_cpus_between_the_copies_is_never_hidden() {
        // One request long in flight (CPU 0). Another starts on CPU 0 after the read copied
        // CPU 0, and ends on CPU 1 before the read copied CPU 1.
        let (cpu0_before, cpu1_before) = (requests(1, 0), requests(0, 0));
        let (cpu0_after, cpu1_after) = (requests(2, 0), requests(0, 1));
        // A single read (CPU 0 early, CPU 1 late) sees the end and not the start.
        let single = sum([&cpu0_before, &cpu1_after]);
        assert_eq!(in_flight(&single), 0, "the hazard this guards against");
        // Two reads: the ends from the first, the starts from the second.
        let early = sum([&cpu0_before, &cpu1_before]);
        let late = sum([&cpu0_after, &cpu1_after]);
        assert_eq!(in_flight(&in_flight_safe(&early, &late)), 2);
        // Once both reads see it, it is over.
        let settled = in_flight_safe(&late, &late);
        assert_eq!(in_flight(&settled), 1);
    }

    #[test]
    fn counts_add_up_and_times_are_the_latest() {
        let mut a = requests(5, 3);
        a.last_edge_ns = 100;
        a.calls.taken_back = 1;
        a.calls.first_last_start_ns = 7;
        let mut b = requests(2, 2);
        b.last_edge_ns = 90;
        b.last_input_ns = 95;
        b.calls.taken_back = 2;
        b.calls.first_last_start_ns = 9;
        let total = sum([&a, &b]);
        assert_eq!((total.started, total.ended), (7, 5));
        assert_eq!((total.last_edge_ns, total.last_input_ns), (100, 95));
        assert_eq!(total.calls.taken_back, 3);
        assert_eq!(total.calls.first_last_start_ns, 9);
    }

    #[test]
    fn a_call_taken_back_between_the_reads_stays_in_flight_for_one_read() {
        let mut early = RequestCounters::zeroed();
        early.calls.started = 1;
        let mut late = early;
        late.calls.taken_back = 1;
        let c = in_flight_safe(&early, &late);
        assert_eq!(c.calls.started - c.calls.ended - c.calls.taken_back, 1);
        let c = in_flight_safe(&late, &late);
        assert_eq!(c.calls.started - c.calls.ended - c.calls.taken_back, 0);
    }
}
