//! Operations (docs/design.md, "operation"): the business work inside a target that no
//! socket shows, in flight from the entry of a function named by `--op` until that call
//! returns, per thread. Counted in the kernel (probe-ebpf/src/ops.rs): one entry per thread
//! inside an operation, counters and a latency histogram per function; a ring-buffer event
//! only when a thread exits inside one (the operation is cut), which is rare.

use crate::EventHeader;

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
    /// only the outermost is the operation.
    pub depth: u32,
}

/// Key of `OP_GO_CALLS`: one goroutine of one process (docs/design.md, "operation": a Go
/// function is followed per goroutine). `g` is the goroutine's `runtime.g` address, which
/// Go's register ABI (amd64, Go 1.17 and later) keeps in R14 inside Go code: goroutines
/// move between threads, so a thread id cannot pair a call with its return.
///
/// A CPython call is keyed the same way by its interpreter frame's address (`g` holds the
/// `_PyInterpreterFrame *`): a coroutine's frame lives inside the coroutine object for its
/// whole life, across every `await`, on whatever thread resumes it. One process is never
/// both Go and CPython, so the two never share a key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OpGoKey {
    pub tgid: u32,
    pub _pad: u32,
    pub g: u64,
}

/// Longest CPython function name (`co_name`) and file suffix `--op` compares, NUL
/// included: longer names are compared on their first 63 bytes.
pub const PY_NAME_LEN: usize = 64;
/// Bytes of a CPython code object's file name (`co_filename`) read to compare its end.
pub const PY_FILE_LEN: usize = 256;

/// CPython 3.11's layout, as the kernel reads it at the USDT markers `function__entry` and
/// `function__return` (probe-ebpf/src/ops_py.rs). Internal to CPython, so userspace checks
/// the interpreter is 3.11 and decodes its marker functions before using them
/// (probe-user/src/kernel/ops/python.rs).
pub mod py311 {
    /// `_PyInterpreterFrame.prev_instr` (Include/internal/pycore_frame.h: six pointers,
    /// then `previous`, then `prev_instr`).
    pub const FRAME_PREV_INSTR: u64 = 0x38;
    /// Opcodes (Include/opcode.h): a frame starts or resumes at RESUME (RESUME_QUICK once
    /// quickened); its oparg is 0 at the start of the code, 1-3 after a yield or an await.
    pub const RESUME: u16 = 151;
    pub const RESUME_QUICK: u16 = 150;
    /// A generator or coroutine suspends at YIELD_VALUE (each `await` that waits ends in
    /// one); its final return is RETURN_VALUE, or an exception unwinding out.
    pub const YIELD_VALUE: u16 = 86;
}

/// Value of `PY_OP_NAMES`, keyed by a CPython function's name (`co_name`, NUL-padded to
/// [`PY_NAME_LEN`]): which `--op` it is, and the end of the file name it must be in
/// (`FILE:FUNCTION`; none when `suffix_len` is 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PyOpName {
    pub function: u32,
    pub suffix_len: u32,
    pub suffix: [u8; PY_NAME_LEN],
}

/// A thread exited inside an operation (`sched_process_exit`): the work was abandoned.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpCutEvent {
    pub header: EventHeader,
    pub tgid: u32,
    pub pid: u32,
    pub function: u32,
    pub _pad: u32,
    /// Entry of the operation (ktime ns).
    pub since_ns: u64,
}

const _: () = assert!(core::mem::size_of::<OpAddrKey>() == 16);
const _: () = assert!(core::mem::size_of::<OpStatsKey>() == 8);
const _: () = assert!(core::mem::size_of::<OpGoKey>() == 16);
const _: () = assert!(core::mem::size_of::<OpCounters>() == 32);
const _: () = assert!(core::mem::size_of::<OpCall>() == 16);
const _: () = assert!(core::mem::size_of::<OpCutEvent>() == 16 + 24);
const _: () = assert!(core::mem::size_of::<PyOpName>() == 8 + PY_NAME_LEN);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], integers only, explicit padding: every bit pattern is valid.
    unsafe impl aya::Pod for super::OpAddrKey {}
    unsafe impl aya::Pod for super::OpStatsKey {}
    unsafe impl aya::Pod for super::OpCounters {}
    unsafe impl aya::Pod for super::OpCall {}
    unsafe impl aya::Pod for super::OpGoKey {}
    unsafe impl aya::Pod for super::PyOpName {}
}
