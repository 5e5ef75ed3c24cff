//! Maps, load-time configuration and the helpers every program uses.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_NO_WAKEUP},
    helpers::bpf_get_current_pid_tgid,
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use core::intrinsics::{atomic_xadd, AtomicOrdering};

use probe_common::{
    target_bit, Counter, EventHeader, ProbeConfig, TargetInfo, COMM_LEN, COUNTER_SLOTS,
    DEFAULT_RING_BYTES, MAX_COMMS, MAX_TARGETS, TARGET_BITMAP_WORDS,
};

/// Filled in by userspace before load (`EbpfLoader::set_global`); read with `read_volatile`
/// so the compiler does not fold the all-zero initial value into the code.
#[unsafe(no_mangle)]
static CONFIG: ProbeConfig = ProbeConfig::zeroed();

/// Events for userspace. Its size can be changed at load time (`set_max_entries`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// tgids named by userspace, plus pids of children followed on fork.
#[map]
pub static TARGETS: HashMap<u32, TargetInfo> = HashMap::with_max_entries(MAX_TARGETS, 0);

/// One bit per pid that may be a target: set by userspace for the pids it names (it is the
/// only writer of this map). Bits are never cleared: a set bit only means "look in
/// `TARGETS`", which has the last word.
#[map]
pub static USER_TARGET_BITS: Array<u64> = Array::with_max_entries(TARGET_BITMAP_WORDS, 0);

/// The same for pids the kernel side adds (followed forks, `--comm` matches), set with an
/// atomic add (see [`add_target`]). Two maps, so that userspace's read-modify-write never
/// races the kernel's.
#[map]
pub static KERNEL_TARGET_BITS: Array<u64> = Array::with_max_entries(TARGET_BITMAP_WORDS, 0);

/// The same for receivers of the launched command's signals (`signal_generate`), set from
/// the sender's context: a map of its own, because the one-writer-per-bit argument of
/// [`add_target`] does not hold there (see [`add_signalled_target`]).
#[map]
pub static SIGNALLED_TARGET_BITS: Array<u64> = Array::with_max_entries(TARGET_BITMAP_WORDS, 0);

/// Process names watched with `--comm` (NUL-padded comm, as the kernel keeps it).
#[map]
pub static COMMS: HashMap<[u8; COMM_LEN], u8> = HashMap::with_max_entries(MAX_COMMS, 0);

/// Per-CPU counters (see [`Counter`]); userspace sums them to report lost events.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

#[inline(always)]
pub fn config() -> ProbeConfig {
    // SAFETY: CONFIG is a plain static in .rodata; a volatile read stops constant folding.
    unsafe { core::ptr::read_volatile(&CONFIG) }
}

/// `(tgid, pid)` of the current task.
#[inline(always)]
pub fn current_tgid_pid() -> (u32, u32) {
    let both = bpf_get_current_pid_tgid();
    ((both >> 32) as u32, both as u32)
}

#[inline(always)]
pub fn is_target(id: u32) -> bool {
    target(id).is_some()
}

/// False when `id` is certainly not a target: two array reads (which the kernel inlines),
/// no hashing. Every other process on the machine stops here.
#[inline(always)]
pub fn maybe_target(id: u32) -> bool {
    let Some((word, mask)) = target_bit(id) else {
        return true;
    };
    let user = USER_TARGET_BITS.get(word).copied().unwrap_or(0);
    let kernel = KERNEL_TARGET_BITS.get(word).copied().unwrap_or(0);
    let signalled = SIGNALLED_TARGET_BITS.get(word).copied().unwrap_or(0);
    (user | kernel | signalled) & mask != 0
}

/// Adds a pid to `TARGETS` from the kernel side (and to its bitmap, before the entry, so a
/// reader that finds the entry also passes the bitmap).
///
/// The bit is set with an atomic add of its mask when it reads clear: Linux 5.10 has no
/// atomic OR (BPF_ATOMIC beyond add came in 5.12), and an add is an OR for a bit that is
/// clear and that nobody else sets meanwhile. Nobody can: the two callers add a pid either
/// in the fork of the task that will carry it, before that task is first woken
/// (kernel/fork.c: `trace_sched_process_fork` precedes `wake_up_new_task`), or in that
/// task's own exec; a task runs one program at a time, and a pid is only reused after its
/// task is gone, when the earlier add has long been visible. Bits are never cleared, so a
/// reused pid finds its bit set and adds nothing. Other pids' bits in the same word are
/// added atomically and do not disturb this one.
#[inline(always)]
pub fn add_target(id: u32, info: &TargetInfo) -> Result<(), ()> {
    add_with_bit(&KERNEL_TARGET_BITS, id, info)
}

/// Adds the receiver of a signal to `TARGETS` from the sender's context. Two senders can
/// signal the same receiver at once, but not both inside this: the tracepoint fires in
/// __send_signal_locked() under the receiver's `sighand->siglock` (kernel/signal.c), so
/// for a given pid the read of its bit and the add are serialized, as [`add_target`]'s
/// argument needs; the fork and exec paths set their bits in [`KERNEL_TARGET_BITS`], a map
/// of their own, so they never add to the same word's bit twice either.
#[inline(always)]
pub fn add_signalled_target(id: u32, info: &TargetInfo) -> Result<(), ()> {
    add_with_bit(&SIGNALLED_TARGET_BITS, id, info)
}

#[inline(always)]
fn add_with_bit(bits: &Array<u64>, id: u32, info: &TargetInfo) -> Result<(), ()> {
    if let Some((word, mask)) = target_bit(id) {
        if let Some(slot) = bits.get_ptr_mut(word) {
            // SAFETY: a u64 inside an array map value, valid for this program run; the
            // add's result is unused, so it is the plain BPF_XADD every kernel has.
            unsafe {
                if core::ptr::read_volatile(slot) & mask == 0 {
                    atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(slot, mask);
                }
            }
        }
    }
    TARGETS.insert(&id, info, 0).map_err(|_| ())
}

/// The `TARGETS` entry of a target (a pointer into the map value, valid for this program
/// run; its counters are only changed with atomic adds).
#[inline(always)]
pub fn target(id: u32) -> Option<*mut TargetInfo> {
    if id == 0 || !maybe_target(id) {
        return None;
    }
    TARGETS.get_ptr_mut(&id)
}

/// [`target`] for a caller that has passed the bitmap already (the socket hooks' hot path:
/// the test is three array reads, and `TARGETS` has the last word anyway).
#[inline(always)]
pub fn target_entry(id: u32) -> Option<*mut TargetInfo> {
    if id == 0 {
        return None;
    }
    TARGETS.get_ptr_mut(&id)
}

#[inline(always)]
pub fn bump(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, so no other CPU writes it; preemption is off in BPF programs.
        unsafe { *slot += 1 };
    }
}

/// Reserves a slot for `T`, lets `fill` build the whole event (reservations are not
/// zeroed), and submits it with `flags` (0 wakes userspace, `BPF_RB_NO_WAKEUP` does not).
/// A failed reservation is counted as a lost event, never ignored.
#[inline(always)]
pub fn emit_flags<T: 'static>(flags: u64, fill: impl FnOnce() -> T) {
    match EVENTS.reserve::<T>(0) {
        Some(mut slot) => {
            slot.write(fill());
            slot.submit(flags);
            bump(Counter::Emitted);
        }
        None => bump(Counter::Lost),
    }
}

/// Copies an event already built in map memory into the ring buffer with `flags`
/// (`bpf_ringbuf_output`); counted like [`emit_flags`].
#[inline(always)]
pub fn emit_copy<T: 'static>(flags: u64, event: &T) {
    match EVENTS.output::<T>(event, flags) {
        Ok(()) => bump(Counter::Emitted),
        Err(_) => bump(Counter::Lost),
    }
}

/// [`emit_flags`] waking userspace: for rare events it should see at once.
#[inline(always)]
pub fn emit<T: 'static>(fill: impl FnOnce() -> T) {
    emit_flags(0, fill)
}

#[inline(always)]
pub fn header<T>(kind: probe_common::EventKind) -> EventHeader {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    EventHeader::new(kind, core::mem::size_of::<T>(), now)
}

/// Submits without waking userspace (it drains on a timer), unless the ring is half full.
#[inline(always)]
pub fn quiet_flags() -> u64 {
    let half = (config().ring_bytes / 2) as u64;
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) > half {
        0
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}
