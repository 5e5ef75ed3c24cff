//! Operations (`--op`, docs/design.md "operation"): an uprobe at the entry of each named
//! function and an uretprobe at its return, attached by userspace per target process
//! (probe-user/src/kernel/ops/), the binary as it is.
//!
//! Counted here, not sent: the entry notes the thread's operation in `OP_CALLS` and adds
//! to the function's `started`; the return of the outermost call removes it, adds to
//! `ended` and files the latency in the function's histogram. Userspace reads the counters
//! on its drain tick (no wake-up per call). The one event is [`thread_exit`]'s: a thread
//! that exits inside an operation cut it (rare, and userspace must see it in order with the
//! process's exit). That includes an operation begun before attach, which userspace found
//! on the thread's stack and marked in `OP_CALLS` (`BEFORE_ATTACH`): counted nowhere here,
//! replaced by the thread's next hooked call.
//!
//! Go functions (`op_go_entry`, `op_go_return`): no uretprobe (it swaps the return address
//! on the stack, which Go's stack copying and traceback do not expect), but plain uprobes
//! placed by userspace after the function's stack-growth check and at each of its RET
//! instructions (probe-user/src/kernel/ops/go.rs); a call is paired with its return per
//! goroutine (`OP_GO_CALLS`, keyed by the `g` in R14), since goroutines move between threads.

mod py;

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, uprobe, uretprobe},
    maps::{Array, HashMap},
    programs::{ProbeContext, RetProbeContext},
};
use probe_common::{
    latency::{self, LatencyHistogram, LATENCY_MAX_SLOT},
    ops::{
        OpAddrKey, OpCall, OpCounters, OpCutEvent, OpGoKey, OpStatsKey, MAX_OP_ADDRS, MAX_OP_CALLS,
        BEFORE_ATTACH, MAX_OP_FUNCTIONS, MAX_OP_STATS, OP_CUT_KIND,
    },
    Counter, EventHeader,
};

use crate::shared::{bump, emit};

/// Where each hooked function starts in each target's memory, and its index in the `--op`
/// list. Written by userspace only.
#[map]
static OP_ADDRS: HashMap<OpAddrKey, u32> = HashMap::with_max_entries(MAX_OP_ADDRS, 0);

/// Counters per (process, function).
#[map]
static OP_STATS: HashMap<OpStatsKey, OpCounters> = HashMap::with_max_entries(MAX_OP_STATS, 0);

/// The operation each thread is inside, by `pid_tgid`. Not LRU: an entry evicted while its
/// call runs would be an operation never ended; a full map is counted (`OpsMissed`) instead.
/// Entries leave at the return or at the thread's exit.
#[map]
static OP_CALLS: HashMap<u64, OpCall> = HashMap::with_max_entries(MAX_OP_CALLS, 0);

/// The operation each goroutine is inside, by (process, `g`). Entries leave at the return;
/// one whose goroutine never returns (a panic through the function) stays and holds the
/// drain, which errs towards waiting; userspace drops a process's entries at its exit.
#[map]
pub(crate) static OP_GO_CALLS: HashMap<OpGoKey, OpCall> =
    HashMap::with_max_entries(MAX_OP_CALLS, 0);

/// Latencies of returned operations, one histogram per function (atomic adds).
#[map]
static OP_LATENCY: Array<LatencyHistogram> = Array::with_max_entries(MAX_OP_FUNCTIONS, 0);

#[inline(always)]
fn add(counter: *mut u64) {
    // SAFETY: a u64 inside a map value, 8-byte aligned, valid for this program run.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, 1) };
}

/// The counters of one function in one process, created at its first call.
#[inline(always)]
fn stats(tgid: u32, function: u32) -> Option<*mut OpCounters> {
    let key = OpStatsKey { tgid, function };
    if let Some(stats) = OP_STATS.get_ptr_mut(&key) {
        return Some(stats);
    }
    // BPF_NOEXIST: another CPU may have created it meanwhile, which is as good.
    let _ = OP_STATS.insert(&key, &OpCounters::default(), BPF_NOEXIST as u64);
    OP_STATS.get_ptr_mut(&key)
}

/// The hooked function whose entry probe fired at `addr` in process `tgid`.
#[inline(always)]
fn function_at(tgid: u32, addr: u64) -> Option<u32> {
    // SAFETY: copied at once.
    unsafe {
        OP_ADDRS.get(&OpAddrKey {
            tgid,
            _pad: 0,
            addr,
        })
    }
    .copied()
}

/// An outermost call began: counted as started.
#[inline(always)]
pub(crate) fn started(tgid: u32, function: u32, now: u64) -> Result<u32, u32> {
    let stats = stats(tgid, function).ok_or(0u32)?;
    // SAFETY: a map value pointer, valid for this program run.
    unsafe {
        add(&raw mut (*stats).started);
        (*stats).last_edge_ns = now;
    }
    Ok(0)
}

/// An outermost call returned: counted as ended, its latency filed.
#[inline(always)]
pub(crate) fn ended(tgid: u32, call: &OpCall) -> Result<u32, u32> {
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let stats = stats(tgid, call.function).ok_or(0u32)?;
    // SAFETY: a map value pointer, valid for this program run.
    unsafe {
        add(&raw mut (*stats).ended);
        (*stats).last_edge_ns = now;
    }
    record_latency(call.function, now.saturating_sub(call.since_ns) / 1000);
    Ok(0)
}

#[inline(always)]
fn try_entry(ctx: &ProbeContext) -> Result<u32, u32> {
    let id = bpf_get_current_pid_tgid();
    if let Some(call) = OP_CALLS.get_ptr_mut(&id) {
        // A hooked call inside an operation: only the outermost one counts. Only this
        // thread touches its entry (userspace only adds or removes a BEFORE_ATTACH one).
        // SAFETY: a map value pointer, valid for this program run.
        unsafe {
            if (*call).depth != BEFORE_ATTACH {
                (*call).depth += 1;
                return Ok(0);
            }
        }
        // The thread's operation from before attach: this hooked call is counted from here
        // on instead, as userspace's look at the thread would have it (kernel/ops/mod.rs:
        // a thread seen in a hooked call since is the kernel's to count). Replaced below.
    }
    let tgid = (id >> 32) as u32;
    // The uprobe fires with the instruction pointer at the probed address (kernel/events/
    // uprobes.c, handle_swbp: "change it in advance for ->handler() and restart").
    // SAFETY: the context is the task's saved registers.
    let addr = unsafe { (*ctx.regs).rip };
    let Some(function) = function_at(tgid, addr) else {
        return Ok(0);
    };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let call = OpCall {
        since_ns: now,
        function,
        depth: 1,
    };
    // BPF_ANY: only a BEFORE_ATTACH entry can be there (see above), which this call replaces.
    if OP_CALLS.insert(&id, &call, BPF_ANY as u64).is_err() {
        bump(Counter::OpsMissed);
        return Ok(0);
    }
    started(tgid, function, now)
}

#[inline(always)]
fn try_return() -> Result<u32, u32> {
    let id = bpf_get_current_pid_tgid();
    let call = OP_CALLS.get_ptr_mut(&id).ok_or(0u32)?;
    // SAFETY: a map value pointer of this thread, valid for this program run.
    let copy = unsafe {
        // A call from before attach has no return probe: a return here is another call's.
        if (*call).depth == BEFORE_ATTACH {
            return Ok(0);
        }
        if (*call).depth > 1 {
            (*call).depth -= 1;
            return Ok(0);
        }
        *call
    };
    let _ = OP_CALLS.remove(&id);
    ended((id >> 32) as u32, &copy)
}

/// The goroutine running Go code on this thread: Go's register ABI keeps its `g` in R14 (Go
/// 1.17+, amd64: src/cmd/compile/abi-internal.md, "amd64 architecture"), at a Go function's
/// body and at its RET alike.
#[inline(always)]
fn go_key(ctx: &ProbeContext) -> (OpGoKey, u64) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: the context is the task's saved registers.
    let (g, addr) = unsafe { ((*ctx.regs).r14, (*ctx.regs).rip) };
    (OpGoKey { tgid, _pad: 0, g }, addr)
}

#[inline(always)]
fn try_go_entry(ctx: &ProbeContext) -> Result<u32, u32> {
    let (key, addr) = go_key(ctx);
    if let Some(call) = OP_GO_CALLS.get_ptr_mut(&key) {
        // A hooked call inside an operation of this goroutine: only the outermost counts.
        // Only this goroutine touches its entry, and it runs on one thread at a time.
        // SAFETY: a map value pointer, valid for this program run.
        unsafe { (*call).depth += 1 };
        return Ok(0);
    }
    let Some(function) = function_at(key.tgid, addr) else {
        return Ok(0);
    };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let call = OpCall {
        since_ns: now,
        function,
        depth: 1,
    };
    if OP_GO_CALLS.insert(&key, &call, BPF_NOEXIST as u64).is_err() {
        bump(Counter::OpsMissed);
        return Ok(0);
    }
    started(key.tgid, function, now)
}

#[inline(always)]
fn try_go_return(ctx: &ProbeContext) -> Result<u32, u32> {
    let (key, _) = go_key(ctx);
    // A RET of a call begun before its probes were planted finds nothing here.
    let call = OP_GO_CALLS.get_ptr_mut(&key).ok_or(0u32)?;
    // SAFETY: a map value pointer of this goroutine, valid for this program run.
    let copy = unsafe {
        if (*call).depth > 1 {
            (*call).depth -= 1;
            return Ok(0);
        }
        *call
    };
    let _ = OP_GO_CALLS.remove(&key);
    ended(key.tgid, &copy)
}

#[inline(always)]
fn record_latency(function: u32, us: u64) {
    let Some(histogram) = OP_LATENCY.get_ptr_mut(function) else {
        return;
    };
    // SAFETY: a map value; bucket() < LATENCY_MAX_SLOT and the mask keeps the verifier's
    // view of the index inside the array. The max is a plain store (at worst one is missed).
    unsafe {
        let counts = &mut (*histogram).counts;
        let index = latency::bucket(us) & (latency::LATENCY_SLOTS - 1);
        add(&raw mut counts[index]);
        if us > counts[LATENCY_MAX_SLOT] {
            counts[LATENCY_MAX_SLOT] = us;
        }
    }
}

/// Called by `sched_process_exit` (lifecycle.rs) for every exiting thread of a target,
/// before the process's exit event: a thread inside an operation abandoned it.
#[inline(always)]
pub fn thread_exit(tgid: u32, pid: u32) {
    let id = ((tgid as u64) << 32) | pid as u64;
    // SAFETY: copied before the entry is removed.
    let Some(call) = (unsafe { OP_CALLS.get(&id) }).copied() else {
        return;
    };
    let _ = OP_CALLS.remove(&id);
    // An operation from before attach (userspace's entry) was never counted as started.
    let before_attach = call.depth == BEFORE_ATTACH;
    if !before_attach {
        if let Some(stats) = stats(tgid, call.function) {
            // SAFETY: a map value pointer, valid for this program run.
            unsafe { add(&raw mut (*stats).cut) };
        }
    }
    emit(|| OpCutEvent {
        header: EventHeader::of_kind(
            OP_CUT_KIND,
            core::mem::size_of::<OpCutEvent>(),
            // SAFETY: bpf_ktime_get_ns has no preconditions.
            unsafe { bpf_ktime_get_ns() },
        ),
        tgid,
        pid,
        function: call.function,
        before_attach: before_attach as u32,
        since_ns: call.since_ns,
    });
}

#[uprobe]
pub fn op_entry(ctx: ProbeContext) -> u32 {
    match try_entry(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

/// One return program for every hooked function: the entry noted which operation it is.
#[uretprobe]
pub fn op_return(_ctx: RetProbeContext) -> u32 {
    match try_return() {
        Ok(r) | Err(r) => r,
    }
}

/// A Go function's body, after its stack-growth check (a call that grows its stack starts
/// again at the entry: a probe there would count it twice).
#[uprobe]
pub fn op_go_entry(ctx: ProbeContext) -> u32 {
    match try_go_entry(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

/// Each RET of a Go function (a plain uprobe: no uretprobe on Go stacks).
#[uprobe]
pub fn op_go_return(ctx: ProbeContext) -> u32 {
    match try_go_return(&ctx) {
        Ok(r) | Err(r) => r,
    }
}
