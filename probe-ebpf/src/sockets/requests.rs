//! Client requests, counted in the kernel: started/ended counters and the last edge per
//! target process and per CPU (`REQUEST_COUNTS`), latencies in a histogram per target
//! process and per CPU (no ring-buffer event at all).

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, PerCpuHashMap},
};
use probe_common::{
    latency::{
        self, LatencyHistogram, LATENCY_MAX_SLOT, LATENCY_OVERFLOW_TGID, MAX_LATENCY_TARGETS,
    },
    ConnState, RequestCounters, CONN_PUSH, PUSH_GAP, PUSH_TIME_SHIFT,
};

use crate::shared::target_entry;

/// Latencies of answered client requests, by bucket, one histogram per target process
/// (tgid): `serve`/`watch` of two servers keep two series. One copy per CPU: an answer's
/// add stays in its own CPU's cache instead of pulling a line written by the other CPUs
/// (docs/bench.md, "Per-request program cost"); userspace sums the copies when it reads
/// them (every 250 ms, probe-user/src/kernel/probe/maps.rs). Preallocated (the kernel
/// calls run-time allocated per-CPU hash maps unsafe in tracepoint programs), 4 KiB per CPU
/// per entry: userspace sizes it by the CPUs at load (probe-user/src/kernel/probe.rs,
/// `latency_entries`).
#[map]
static REQUEST_LATENCY: PerCpuHashMap<u32, LatencyHistogram> =
    PerCpuHashMap::with_max_entries(MAX_LATENCY_TARGETS, 0);

/// The request and upstream-call counters of target processes (tgid), one copy per CPU:
/// every request edge writes them, and with one copy for all CPUs that line moved between
/// the CPUs on almost every hit of a multi-threaded server (docs/bench.md, "Per-request
/// program cost"). Userspace sums the copies, in an order that never under-counts what is
/// in flight (probe-user/src/kernel/probe/counters.rs). Preallocated, as
/// [`REQUEST_LATENCY`]; userspace sizes it by the CPUs at load. A process that finds it
/// full counts in its `TARGETS` entry instead ([`counters`]).
#[map]
static REQUEST_COUNTS: PerCpuHashMap<u32, RequestCounters> =
    PerCpuHashMap::with_max_entries(MAX_LATENCY_TARGETS, 0);

/// A zeroed histogram, never written: what a new process's entry is created from (4 KiB do
/// not fit on the 512-byte BPF stack; a map value can be the source of an update).
#[map]
static LATENCY_ZERO: Array<LatencyHistogram> = Array::with_max_entries(1, 0);

/// Adds one to a counter that threads on other CPUs may be adding to as well (an atomic
/// add, `BPF_ATOMIC | BPF_ADD`).
#[inline(always)]
pub(super) fn count(counter: *mut u64) {
    // SAFETY: a u64 inside a map value, 8-byte aligned, valid for this program run.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, 1) };
}

/// This CPU's counters of target process `tgid` ([`REQUEST_COUNTS`]), made on its first
/// request edge on this CPU; its `TARGETS` entry's when the map is full; `None` when it is
/// no target (any more). `TARGETS` stays the last word: a process gets counters only while
/// it has an entry there, and its exit removes both (lifecycle.rs).
#[inline(always)]
pub(super) fn counters(tgid: u32) -> Option<*mut RequestCounters> {
    if let Some(counters) = REQUEST_COUNTS.get_ptr_mut(&tgid) {
        return Some(counters);
    }
    if dw_new_counters(tgid as u64) == 0 {
        if let Some(counters) = REQUEST_COUNTS.get_ptr_mut(&tgid) {
            return Some(counters);
        }
    }
    // SAFETY: a map value pointer, valid for this program run.
    target_entry(tgid).map(|target| unsafe { &raw mut (*target).requests })
}

/// Makes the [`REQUEST_COUNTS`] entry of target process `tgid` (zero on every CPU); 0 when
/// it is a target. Out of line, a global BPF function: the 136-byte zeroed value lives in
/// its own stack frame, not in the frame of every data path that would inline it, and the
/// verifier checks it once.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn dw_new_counters(tgid: u64) -> u32 {
    let tgid = tgid as u32;
    if target_entry(tgid).is_none() {
        return 1;
    }
    // BPF_NOEXIST: another CPU may have made it meanwhile, which is as good.
    let _ = REQUEST_COUNTS.insert(&tgid, &RequestCounters::zeroed(), BPF_NOEXIST as u64);
    0
}

/// Forgets the counters of target process `tgid`, which exited (lifecycle.rs, after its
/// `TARGETS` entry: from then on none can be made again for it).
#[inline(always)]
pub(crate) fn forget_counters(tgid: u32) {
    let _ = REQUEST_COUNTS.remove(&tgid);
}

/// The clock of one program run: read once per hit and handed down, so that a request's
/// end, its latency and the push test agree on one instant (and a hit pays one
/// `bpf_ktime_get_ns`, not two: docs/bench.md, "Where a target's socket hit goes").
#[inline(always)]
pub(super) fn now_ns() -> u64 {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// The target `tgid` sent on its client connection (both backends: io.rs at the send's
/// sys_enter, sock_tp.rs after the copy) at `now` ([`now_ns`]), in the current process
/// `current` (whose latency histogram an answer is filed in). With a request in flight,
/// the send answers it. Without one, more than [`PUSH_GAP`] after the previous send, it is
/// unprompted: the connection is push-style (docs/design.md, "request in flight"), counted
/// once per connection so that userspace knows when to look for which.
///
/// The callers have passed the target bitmap already, so the owner's counters are looked
/// up directly ([`counters`]).
#[inline(always)]
pub(super) fn client_send(tgid: u32, current: u32, state: &mut ConnState, now: u64) {
    // 0 means "no send seen yet": the first send of a connection (a greeting before any
    // request, or the rest of an answer begun before attach) is no push by itself.
    let units = ((now >> PUSH_TIME_SHIFT) as u32).max(1);
    if state.request_in_flight != 0 {
        let since = state.request_since_ns;
        if let Some(counters) = counters(tgid) {
            end_request(counters, state, now);
            if since != 0 {
                record_latency(current, now.saturating_sub(since) / 1000);
            }
        }
    } else if state.flags & CONN_PUSH == 0
        && state.last_send != 0
        && units.wrapping_sub(state.last_send) >= PUSH_GAP
    {
        state.flags |= CONN_PUSH;
        if let Some(counters) = counters(tgid) {
            // SAFETY: a map value pointer, valid for this program run.
            unsafe { count(&raw mut (*counters).pushed) };
        }
    }
    state.last_send = units;
}

/// The target `tgid` received bytes on its client connection at `now` ([`now_ns`]): a
/// request starts if none was in flight; either way it is client input, the drain tail's
/// start (docs/design.md, "drain tail"). The bitmap is passed already, as for
/// [`client_send`].
#[inline(always)]
pub(super) fn client_recv(tgid: u32, state: &mut ConnState, now: u64) {
    let Some(counters) = counters(tgid) else {
        return;
    };
    if state.request_in_flight == 0 {
        start_request(counters, state, now);
    } else {
        // SAFETY: a map value pointer, valid for this program run (a plain 8-byte store: a
        // reader sees the old or the new time).
        unsafe { (*counters).last_input_ns = now };
    }
}

/// First bytes received on an idle client connection (docs/design.md, "request in flight").
#[inline(always)]
fn start_request(counters: *mut RequestCounters, state: &mut ConnState, now: u64) {
    state.request_in_flight = 1;
    state.request_since_ns = now;
    // SAFETY: a map value pointer, valid for this program run.
    unsafe {
        count(&raw mut (*counters).started);
        (*counters).last_edge_ns = now;
        (*counters).last_input_ns = now;
    }
}

/// The server sent or the connection closed, at `now`. A start of 0 is a request that
/// was already in flight at attach: it counts apart, and its latency is unknown (an
/// answered one's latency is filed by [`client_send`]).
#[inline(always)]
pub(super) fn end_request(counters: *mut RequestCounters, state: &mut ConnState, now: u64) {
    let since = state.request_since_ns;
    state.request_in_flight = 0;
    // SAFETY: a map value pointer, valid for this program run.
    unsafe {
        if since == 0 {
            count(&raw mut (*counters).existing_ended);
        } else {
            count(&raw mut (*counters).ended);
        }
        (*counters).last_edge_ns = now;
    }
}

/// The histogram of process `tgid` (the sender of the answer: the caller's current tgid,
/// which it has already read), created on its first answered request; the shared overflow
/// histogram when the map is full.
#[inline(always)]
fn histogram(tgid: u32) -> Option<*mut LatencyHistogram> {
    if let Some(histogram) = REQUEST_LATENCY.get_ptr_mut(tgid) {
        return Some(histogram);
    }
    let zero = LATENCY_ZERO.get(0)?;
    // BPF_NOEXIST: another CPU may have created it meanwhile, which is as good.
    let _ = REQUEST_LATENCY.insert(tgid, zero, BPF_NOEXIST as u64);
    REQUEST_LATENCY
        .get_ptr_mut(tgid)
        .or_else(|| REQUEST_LATENCY.get_ptr_mut(LATENCY_OVERFLOW_TGID))
}

#[inline(always)]
fn record_latency(tgid: u32, us: u64) {
    let Some(histogram) = histogram(tgid) else {
        return;
    };
    // SAFETY: this CPU's copy of the process's histogram; bucket() < LATENCY_MAX_SLOT, and
    // the mask keeps the verifier's view of the index inside the array. Since syscall
    // tracepoints are faultable from Linux 6.14, another task on this CPU may add to it at
    // the same time: the add stays atomic (on a line no other CPU writes, it costs little);
    // the max is a plain store (at worst a max is missed).
    unsafe {
        let counts = &mut (*histogram).counts;
        let index = latency::bucket(us) & (latency::LATENCY_SLOTS - 1);
        count(&raw mut counts[index]);
        if us > counts[LATENCY_MAX_SLOT] {
            counts[LATENCY_MAX_SLOT] = us;
        }
    }
}
