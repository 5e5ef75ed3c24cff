//! A thread's syscall from sys_enter to sys_exit: what the exit needs (fd, buffer, peer) is
//! left in the thread's own slot, or in the `PENDING` map for a thread without one.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_get_current_pid_tgid,
    macros::map,
    maps::{Array, HashMap, LruHashMap},
};
use probe_common::{Pending, SockAddr, MAX_PENDING, THREAD_SLOTS};

use crate::shared::maybe_target;

/// Syscalls in progress, by thread (`pid_tgid`), from sys_enter to sys_exit, for threads
/// without a slot of their own in `THREAD_SLOTS` (and for those userspace found blocked at
/// attach). LRU: a thread that dies inside a syscall must not pin an entry.
#[map]
pub static PENDING: LruHashMap<u64, Pending> = LruHashMap::with_max_entries(MAX_PENDING, 0);

/// The fast place for a thread's pending syscall: slot `pid % THREAD_SLOTS`, claimed by the
/// first target thread that needs it (see [`SLOT_CLAIMS`]) and released when that thread
/// exits. Two array accesses instead of an LRU insert and a delete, which take locks. A
/// thread whose slot is owned by another falls back to `PENDING`.
#[map]
static THREAD_SLOTS_MAP: Array<ThreadSlot> = Array::with_max_entries(THREAD_SLOTS, 0);

/// Who claimed each slot (slot index -> pid): the claim is an insert with `BPF_NOEXIST`,
/// which the kernel checks and performs under the hash bucket's lock
/// (kernel/bpf/hashtab.c, `htab_map_update_elem`), so of two threads claiming a free slot
/// exactly one wins. That is all a compare-and-exchange did here, without the BPF atomics
/// of Linux 5.12 (5.10 has atomic add only). Touched once per thread, at its claim and at
/// its exit; every syscall in between reads `owner` in the array.
#[map]
static SLOT_CLAIMS: HashMap<u32, u32> = HashMap::with_max_entries(THREAD_SLOTS, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct ThreadSlot {
    /// The pid (thread id) that owns the slot; 0: free. Written only by that thread, after
    /// its claim in `SLOT_CLAIMS` won, and cleared by it at its exit.
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
    let index = pid % THREAD_SLOTS;
    let slot = THREAD_SLOTS_MAP.get_ptr_mut(index)?;
    // SAFETY: an array map value, valid for this program run.
    let owner = unsafe { &raw mut (*slot).owner };
    // SAFETY: as above; only the owning thread writes a non-zero value here, so reading our
    // own pid means the slot is ours, and anything else means it is not (yet).
    let current = unsafe { core::ptr::read_volatile(owner) };
    let pid = pid as u64;
    if current == pid {
        return Some(slot);
    }
    if current != 0 || !claim {
        return None;
    }
    // A free slot: whoever inserts the claim first owns it; the loser (and anyone who reads
    // `owner` between the claim and the store below) falls back to `PENDING` this time.
    SLOT_CLAIMS
        .insert(&index, &(pid as u32), BPF_NOEXIST as u64)
        .ok()?;
    // SAFETY: the claim is ours: no other thread writes this slot until we release it.
    unsafe { core::ptr::write_volatile(owner, pid) };
    Some(slot)
}

/// A target thread is gone: its slot is free again (a later thread with the same pid must
/// not find a syscall of the dead one pending). `owner` is cleared before the claim goes,
/// so a new claimant never finds a stale owner.
#[inline(always)]
pub fn release_thread_slot(pid: u32) {
    if let Some(slot) = own_slot(pid, false) {
        // SAFETY: owned by the exiting thread, which runs this.
        unsafe {
            (*slot).pending.kind = 0;
            core::ptr::write_volatile(&raw mut (*slot).owner, 0);
        }
        let _ = SLOT_CLAIMS.remove(&(pid % THREAD_SLOTS));
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
