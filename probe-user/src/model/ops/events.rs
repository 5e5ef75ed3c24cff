//! Operation events (`--op`, docs/design.md "operation"): a thread cut inside an operation
//! (the one ring-buffer record, `probe_common::ops::OpCutEvent`), and the kernel's operation
//! counters as read on each drain tick (not a record: operations are counted in the kernel).
//! Both travel as `crate::events::UnitEvent`s (the events layer does not know them): the
//! session's operations unit makes them, [`super::OpsTracker`] reads them back.

use serde::{Deserialize, Serialize};

/// A thread exited inside an operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpCut {
    pub ktime_ns: u64,
    pub tgid: u32,
    pub pid: u32,
    /// Index of the function in the `--op` list.
    pub function: u32,
    /// When the operation began (ktime ns; for one begun before attach, when it was first
    /// seen).
    pub since_ns: u64,
    /// The operation began before its function was hooked: no counter has it (its thread
    /// was found inside at attach, kernel/ops/stacks.rs).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub before_attach: bool,
}

impl crate::events::UnitEventKind for OpCut {
    const NAME: &'static str = "op_cut";
}

impl crate::events::UnitEventKind for OpsSample {
    const NAME: &'static str = "operations";
}

impl OpCut {
    pub fn from_wire(e: &probe_common::ops::OpCutEvent) -> Self {
        Self {
            ktime_ns: e.header.ktime_ns,
            tgid: e.tgid,
            pid: e.pid,
            function: e.function,
            since_ns: e.since_ns,
            before_attach: e.before_attach != 0,
        }
    }
}

/// The operation counters of every (process, function), read with the time of the read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpsSample {
    pub ktime_ns: u64,
    pub counts: Vec<OpCount>,
    /// The threads inside an operation at the read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub threads: Vec<OpThread>,
    /// Latencies of operations that returned since the previous read, by function:
    /// (function, [(µs, how many)]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latency_us: Vec<(u32, Vec<(u64, u64)>)>,
    /// Threads inside an operation since before its function was hooked (their end is not
    /// the kernel's to see; userspace looks at their stacks until it is over). `function`
    /// is [`UNKNOWN_FUNCTION`] while the thread could not be looked at; `since_ns` is when it
    /// was first looked at (the operation began before).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub before_attach: Vec<OpThread>,
    /// Processes whose operations begun before attach cannot be seen at all (Go: a
    /// goroutine's stack is not a thread's), which the drain basis names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blind_at_attach: Vec<u32>,
}

/// `OpThread::function` of a thread not yet known to be inside an operation or not.
pub const UNKNOWN_FUNCTION: u32 = u32::MAX;

/// `probe_common::ops::OpCounters` of one function in one process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpCount {
    pub tgid: u32,
    pub function: u32,
    pub started: u64,
    pub ended: u64,
    pub cut: u64,
    pub last_edge_ns: u64,
}

/// A thread inside an operation (`pid` 0: a goroutine, which no one thread holds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpThread {
    pub tgid: u32,
    pub pid: u32,
    pub function: u32,
    pub since_ns: u64,
}
