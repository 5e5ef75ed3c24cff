//! Wire types shared by drainwatch's eBPF probe (`probe-ebpf`) and its userspace
//! (`probe-user`).
//!
//! Every type here is `#[repr(C)]` with fixed-width fields and explicit padding, so the
//! kernel and userspace agree on the layout byte for byte. The `size_of` assertions at the
//! bottom are checked when either side compiles.
//!
//! Naming follows the kernel: a **tgid** is what userspace calls a process id (`getpid()`),
//! a **pid** is what userspace calls a thread id (`gettid()`).
#![no_std]

/// Length of a task's `comm`, including the trailing NUL (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// Default size of the event ring buffer, in bytes (a power of two, as the kernel requires).
pub const DEFAULT_RING_BYTES: u32 = 1 << 20;

/// Most tgids/pids tracked as targets at once (tgids plus the threads of followed children).
pub const MAX_TARGETS: u32 = 16384;

/// Names of the maps, as they appear in the object file.
pub mod map_names {
    pub const EVENTS: &str = "EVENTS";
    pub const TARGETS: &str = "TARGETS";
    pub const COUNTERS: &str = "COUNTERS";
}

/// Event kinds, the first field of every event.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Signal = 1,
    Fork = 2,
    Exec = 3,
    Exit = 4,
}

impl EventKind {
    pub fn from_u32(raw: u32) -> Option<Self> {
        Some(match raw {
            1 => Self::Signal,
            2 => Self::Fork,
            3 => Self::Exec,
            4 => Self::Exit,
            _ => return None,
        })
    }
}

/// Common header of every event in the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHeader {
    /// An [`EventKind`] as `u32`.
    pub kind: u32,
    /// `size_of` the whole event, header included.
    pub size: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the event happened.
    pub ktime_ns: u64,
}

impl EventHeader {
    pub const fn new(kind: EventKind, size: usize, ktime_ns: u64) -> Self {
        Self {
            kind: kind as u32,
            size: size as u32,
            ktime_ns,
        }
    }
}

/// `signal:signal_generate` for a target: a signal was generated for it.
/// See include/trace/events/signal.h in the kernel source.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignalEvent {
    pub header: EventHeader,
    /// The receiving task's pid (thread id) as the tracepoint reports it.
    pub target_pid: u32,
    /// The sending (current) task.
    pub sender_tgid: u32,
    pub sender_pid: u32,
    pub sig: i32,
    /// `siginfo.si_code`: `SI_USER` (0) for kill(2), `SI_KERNEL` (0x80) for the OOM killer
    /// and other kernel-generated signals, negative for sigqueue/tkill.
    pub code: i32,
    /// `TRACE_SIGNAL_*`: 0 delivered, 1 ignored, 2 already pending, 3 overflow, 4 lose info.
    pub result: i32,
    /// Non-zero when sent to the whole thread group.
    pub group: u32,
    pub _pad: u32,
    pub sender_comm: [u8; COMM_LEN],
}

/// `sched:sched_process_fork` where the parent is a target: the child becomes a target too.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForkEvent {
    pub header: EventHeader,
    pub parent_tgid: u32,
    pub parent_pid: u32,
    pub child_pid: u32,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
}

/// `sched:sched_process_exec` of a target.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecEvent {
    pub header: EventHeader,
    pub tgid: u32,
    pub pid: u32,
    pub comm: [u8; COMM_LEN],
}

/// `sched:sched_process_exit` of the last thread of a target tgid (`group_dead`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitEvent {
    pub header: EventHeader,
    pub tgid: u32,
    pub pid: u32,
    /// `task_struct.exit_code` in wait(2) status form; valid when `exit_code_known != 0`.
    pub exit_code: u32,
    pub exit_code_known: u32,
    pub comm: [u8; COMM_LEN],
}

/// Indices into the per-CPU `COUNTERS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Events the probe produced for a target.
    Emitted = 0,
    /// Ring-buffer reservations that failed: events lost.
    Lost = 1,
    /// Fork children that could not be added to `TARGETS` (map full): they are not followed.
    TargetsFull = 2,
}

pub const COUNTER_SLOTS: u32 = 4;

/// Load-time configuration, written into the object's `.rodata` by userspace before load
/// (aya's `EbpfLoader::set_global`), so the verifier sees constants.
///
/// Tracepoint field offsets come from tracefs `format` files on the running kernel, so the
/// probe does not depend on one kernel's layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeConfig {
    /// tgid of drainwatch itself (never a target).
    pub self_tgid: u32,
    /// 1: add fork children to the targets in the kernel (`--no-follow` clears it).
    pub follow_forks: u32,
    pub signal_sig_off: u32,
    pub signal_code_off: u32,
    pub signal_pid_off: u32,
    pub signal_group_off: u32,
    pub signal_result_off: u32,
    pub fork_parent_pid_off: u32,
    pub fork_child_pid_off: u32,
    pub exec_pid_off: u32,
    pub exit_pid_off: u32,
    pub exit_group_dead_off: u32,
    /// Byte offset of `exit_code` in `struct task_struct`, from kernel BTF; 0 if unknown.
    pub task_exit_code_off: u32,
    pub _pad: u32,
}

impl ProbeConfig {
    /// An all-zero config: what the object holds before userspace fills it in.
    pub const fn zeroed() -> Self {
        Self {
            self_tgid: 0,
            follow_forks: 0,
            signal_sig_off: 0,
            signal_code_off: 0,
            signal_pid_off: 0,
            signal_group_off: 0,
            signal_result_off: 0,
            fork_parent_pid_off: 0,
            fork_child_pid_off: 0,
            exec_pid_off: 0,
            exit_pid_off: 0,
            exit_group_dead_off: 0,
            task_exit_code_off: 0,
            _pad: 0,
        }
    }
}

/// Value of the `TARGETS` map: why a tgid/pid is a target.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetInfo {
    /// The tgid this entry belongs to (equal to the key for a process, the owning tgid for
    /// a thread; 0 when the kernel added a fork child before knowing whether it is a thread).
    pub tgid: u32,
    /// 1 when userspace named it, 2 when the kernel followed a fork.
    pub origin: u32,
}

pub const ORIGIN_USER: u32 = 1;
pub const ORIGIN_FORK: u32 = 2;

// Layouts are part of the wire contract: both sides fail to compile if they drift.
const _: () = assert!(core::mem::size_of::<EventHeader>() == 16);
const _: () = assert!(core::mem::size_of::<SignalEvent>() == 16 + 32 + COMM_LEN);
const _: () = assert!(core::mem::size_of::<ForkEvent>() == 16 + 16 + COMM_LEN);
const _: () = assert!(core::mem::size_of::<ExecEvent>() == 16 + 8 + COMM_LEN);
const _: () = assert!(core::mem::size_of::<ExitEvent>() == 16 + 16 + COMM_LEN);
const _: () = assert!(core::mem::size_of::<ProbeConfig>() == 56);
const _: () = assert!(core::mem::size_of::<TargetInfo>() == 8);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are #[repr(C)], made of integers and byte arrays, with explicit padding,
    // so every bit pattern is valid and there are no implicit holes.
    unsafe impl aya::Pod for super::ProbeConfig {}
    unsafe impl aya::Pod for super::TargetInfo {}
}
