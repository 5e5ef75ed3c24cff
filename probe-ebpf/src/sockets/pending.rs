//! A thread's syscall from sys_enter to sys_exit: what the exit needs (fd, buffer, peer) is
//! left in the thread's own slot, or in the `PENDING` map for a thread without one.

use core::intrinsics::{atomic_cxchg, AtomicOrdering};

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::map,
    maps::{Array, LruHashMap},
};
use probe_common::{Pending, SockAddr, MAX_PENDING, THREAD_SLOTS};

use crate::shared::maybe_target;

/// Syscalls in progress, by thread (`pid_tgid`), from sys_enter to sys_exit, for threads
/// without a slot of their own in `THREAD_SLOTS` (and for those userspace found blocked at
/// attach). LRU: a thread that dies inside a syscall must not pin an entry.
#[map]
pub static PENDING: LruHashMap<u64, Pending> = LruHashMap::with_max_entries(MAX_PENDING, 0);

/// The fast place for a thread's pending syscall: slot `pid % THREAD_SLOTS`, claimed by the
/// first target thread that needs it (compare-and-swap on `owner`) and released when that
/// thread exits. Two array accesses instead of an LRU insert and a delete, which take
/// locks. A thread whose slot is owned by another falls back to `PENDING`.
#[map]
static THREAD_SLOTS_MAP: Array<ThreadSlot> = Array::with_max_entries(THREAD_SLOTS, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct ThreadSlot {
    /// The pid (thread id) that owns the slot; 0: free. 64 bits: the 32-bit atomics need
    /// a newer BPF CPU version than the one this object is built for.
    owner: u64,
    /// `kind == 0`: nothing pending.
    pending: Pending,
}

#[inline(always)]
pub(super) fn remember(kind: u8, fd: u32, ptr: u64, count: u64, addr: SockAddr) {
    let pending = Pending {
        kind,
        _pad: [0; 3],
        fd,
        ptr,
        count,
        addr,
        _pad2: [0; 4],
    };
    let id = bpf_get_current_pid_tgid();
    if let Some(slot) = own_slot(id as u32, true) {
        // SAFETY: a slot this thread owns: no other thread writes it.
        unsafe { (*slot).pending = pending };
        return;
    }
    let _ = PENDING.insert(&id, &pending, 0);
}

/// The slot of thread `pid` if it owns it (claiming it when free and `claim`).
#[inline(always)]
fn own_slot(pid: u32, claim: bool) -> Option<*mut ThreadSlot> {
    let slot = THREAD_SLOTS_MAP.get_ptr_mut(pid % THREAD_SLOTS)?;
    // SAFETY: an array map value, valid for this program run.
    let owner = unsafe { &raw mut (*slot).owner };
    // SAFETY: as above; this read races only with a claim, settled by the exchange below.
    let current = unsafe { core::ptr::read_volatile(owner) };
    let pid = pid as u64;
    if current == pid {
        return Some(slot);
    }
    if current != 0 || !claim {
        return None;
    }
    // SAFETY: 8-byte aligned u64 in the map value (BPF_ATOMIC | BPF_CMPXCHG).
    let (_, won) = unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(owner, 0, pid)
    };
    won.then_some(slot)
}

/// A target thread is gone: its slot is free again (a later thread with the same pid must
/// not find a syscall of the dead one pending).
#[inline(always)]
pub fn release_thread_slot(pid: u32) {
    if let Some(slot) = own_slot(pid, false) {
        // SAFETY: owned by the exiting thread, which runs this.
        unsafe {
            (*slot).pending.kind = 0;
            core::ptr::write_volatile(&raw mut (*slot).owner, 0);
        }
    }
}

/// The pending syscall of the current thread, removed. Other processes stop at the
/// bitmap, before any map lookup.
#[inline(always)]
pub(super) fn take_pending() -> Option<Pending> {
    let id = bpf_get_current_pid_tgid();
    if !maybe_target((id >> 32) as u32) {
        return None;
    }
    if let Some(slot) = own_slot(id as u32, false) {
        // SAFETY: a slot this thread owns: no other thread writes it.
        let pending = unsafe { (*slot).pending };
        if pending.kind == 0 {
            return None;
        }
        // SAFETY: as above.
        unsafe { (*slot).pending.kind = 0 };
        return Some(pending);
    }
    // SAFETY: copied out before the entry is removed.
    let pending = unsafe { PENDING.get(&id) }.copied()?;
    let _ = PENDING.remove(&id);
    Some(pending)
}
