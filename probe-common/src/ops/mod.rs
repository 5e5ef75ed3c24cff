//! Operations (docs/design.md, "operation"): the business work inside a target that no
//! socket shows, in flight from the entry of a function named by `--op` until that call
//! returns, per thread. Counted in the kernel (probe-ebpf/src/ops/): one entry per thread
//! inside an operation, counters and a latency histogram per function; a ring-buffer event
//! only when a thread exits inside one (the operation is cut), which is rare.

pub mod py;

use crate::EventHeader;

/// The header kind of [`OpCutEvent`] (a probe unit's own kind: `crate::EventKind`).
pub const OP_CUT_KIND: u32 = 9;

/// Names of the operation maps (the unit's; `crate::map_names` holds the core's).
pub mod map_names {
    pub const OP_ADDRS: &str = "OP_ADDRS";
    pub const OP_STATS: &str = "OP_STATS";
    pub const OP_CALLS: &str = "OP_CALLS";
    pub const OP_GO_CALLS: &str = "OP_GO_CALLS";
    pub const OP_LATENCY: &str = "OP_LATENCY";
}

/// Functions `--op` can name at once (their indices key the counters and histograms).
pub const MAX_OP_FUNCTIONS: u32 = 16;
/// Function addresses hooked at once, over all target processes: a function has one address
/// per process that maps it.
pub const MAX_OP_ADDRS: u32 = 4096;
/// (process, function) pairs counted at once.
pub const MAX_OP_STATS: u32 = 4096;
/// Threads inside an operation at once.
pub const MAX_OP_CALLS: u32 = 16384;

/// Key of `OP_ADDRS`: where a hooked function starts in one process's memory (the entry
/// probe finds its function by the address it fired at).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OpAddrKey {
    pub tgid: u32,
    pub _pad: u32,
    pub addr: u64,
}

/// Key of `OP_STATS`: one function in one process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OpStatsKey {
    pub tgid: u32,
    /// Index of the function in the `--op` list.
    pub function: u32,
}

/// Value of `OP_STATS`: in flight = `started - ended - cut`. Each counter only grows (atomic
/// adds from any CPU). `ended` and `cut` come first: a reader copying front to back sees
/// them no later than `started`, so a torn read can only over-count what is in flight.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCounters {
    /// Outermost calls that returned.
    pub ended: u64,
    /// Outermost calls whose thread exited inside them.
    pub cut: u64,
    /// Outermost calls entered while watched.
    pub started: u64,
    /// ktime (ns) of the latest start, end or cut.
    pub last_edge_ns: u64,
}

/// Value of `OP_CALLS`, keyed by the thread's `pid_tgid`: the operation it is inside.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCall {
    /// Entry of the outermost call (`bpf_ktime_get_ns`).
    pub since_ns: u64,
    pub function: u32,
    /// Hooked calls open on the thread (recursion, or one `--op` function calling another):
    /// only the outermost is the operation. [`BEFORE_ATTACH`] marks an operation begun
    /// before its function was hooked.
    pub depth: u32,
}

/// `OpCall::depth` of an entry userspace writes for a thread it found inside a hooked
/// function since before the hook (probe-user/src/kernel/ops/stacks.rs): no counter has that
/// call and no return probe will see it end, but the thread's exit must say whether it was
/// still inside, and only the kernel sees that exit in order (the thread is gone by the time
/// userspace looks again). `since_ns` is when userspace first saw it. The thread's next
/// hooked entry replaces it (the kernel counts that call), its exit reports it cut
/// (`OpCutEvent::before_attach`), and userspace removes it once the thread is seen outside.
pub const BEFORE_ATTACH: u32 = 0;

/// Key of `OP_GO_CALLS`: one goroutine of one process (docs/design.md, "operation": a Go
/// function is followed per goroutine). `g` is the goroutine's `runtime.g` address, which
/// Go's register ABI (amd64, Go 1.17 and later) keeps in R14 inside Go code: goroutines
/// move between threads, so a thread id cannot pair a call with its return.
///
/// Another runtime whose calls move between threads keys them the same way, `g` holding
/// an address of its own per call (an interpreter frame: py.rs). A process runs one
/// runtime, so two runtimes never share a key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OpGoKey {
    pub tgid: u32,
    pub _pad: u32,
    pub g: u64,
}

/// A thread exited inside an operation (`sched_process_exit`): the work was abandoned.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpCutEvent {
    pub header: EventHeader,
    pub tgid: u32,
    pub pid: u32,
    pub function: u32,
    /// 1 when the operation began before its function was hooked (an entry of userspace's,
    /// [`BEFORE_ATTACH`]): no counter has it.
    pub before_attach: u32,
    /// Entry of the operation (ktime ns; for one begun before attach, when userspace first
    /// saw it).
    pub since_ns: u64,
}

const _: () = assert!(core::mem::size_of::<OpAddrKey>() == 16);
const _: () = assert!(core::mem::size_of::<OpStatsKey>() == 8);
const _: () = assert!(core::mem::size_of::<OpGoKey>() == 16);
const _: () = assert!(core::mem::size_of::<OpCounters>() == 32);
const _: () = assert!(core::mem::size_of::<OpCall>() == 16);
const _: () = assert!(core::mem::size_of::<OpCutEvent>() == 16 + 24);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], integers only, explicit padding: every bit pattern is valid.
    unsafe impl aya::Pod for super::OpAddrKey {}
    unsafe impl aya::Pod for super::OpStatsKey {}
    unsafe impl aya::Pod for super::OpCounters {}
    unsafe impl aya::Pod for super::OpCall {}
    unsafe impl aya::Pod for super::OpGoKey {}
}
