//! Client requests, counted in the kernel: started/ended counters and the last edge in the
//! target's `TARGETS` entry, latencies in a per-CPU histogram (no ring-buffer event at all).

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::map, maps::PerCpuArray};
use probe_common::{
    latency::{self, LatencyHistogram, LATENCY_MAX_SLOT},
    ConnState, TargetInfo,
};

/// Latencies of answered client requests, by bucket (one histogram per CPU, summed by
/// userspace).
#[map]
static REQUEST_LATENCY: PerCpuArray<LatencyHistogram> = PerCpuArray::with_max_entries(1, 0);

/// Adds one to a counter that threads on other CPUs may be adding to as well (an atomic
/// add, `BPF_ATOMIC | BPF_ADD`).
#[inline(always)]
fn count(counter: *mut u64) {
    // SAFETY: a u64 inside a map value, 8-byte aligned, valid for this program run.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, 1) };
}

/// First bytes received on an idle client connection (DESIGN.md, "request in flight").
#[inline(always)]
pub(super) fn start_request(target: *mut TargetInfo, state: &mut ConnState) {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    state.request_in_flight = 1;
    state.request_since_ns = now;
    // SAFETY: a map value pointer, valid for this program run.
    unsafe {
        count(&raw mut (*target).requests.started);
        (*target).requests.last_edge_ns = now;
    }
}

/// The server sent (`answered`) or the connection closed. A start of 0 is a request that
/// was already in flight at attach: it counts apart, and its latency is unknown.
#[inline(always)]
pub(super) fn end_request(target: *mut TargetInfo, state: &mut ConnState, answered: bool) {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let since = state.request_since_ns;
    state.request_in_flight = 0;
    // SAFETY: a map value pointer, valid for this program run.
    unsafe {
        if since == 0 {
            count(&raw mut (*target).requests.existing_ended);
        } else {
            count(&raw mut (*target).requests.ended);
        }
        (*target).requests.last_edge_ns = now;
    }
    if answered && since != 0 {
        record_latency(now.saturating_sub(since) / 1000);
    }
}

#[inline(always)]
fn record_latency(us: u64) {
    let Some(histogram) = REQUEST_LATENCY.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's histogram; bucket() < LATENCY_MAX_SLOT, and the mask keeps the
    // verifier's view of the index inside the array. Syscall tracepoints may be preempted
    // (they are faultable since Linux 6.14), so another task's run on this CPU can
    // interleave: the add is atomic; the max is a plain store (at worst a max is missed).
    unsafe {
        let counts = &mut (*histogram).counts;
        let index = latency::bucket(us) & (latency::LATENCY_SLOTS - 1);
        count(&raw mut counts[index]);
        if us > counts[LATENCY_MAX_SLOT] {
            counts[LATENCY_MAX_SLOT] = us;
        }
    }
}
