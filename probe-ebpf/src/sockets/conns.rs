//! The connection table of the targets, by (tgid, fd), shared by every hook: an fd's entry, or
//! for a duplicate, the entry of the fd it duplicates.

use aya_ebpf::{macros::map, maps::HashMap};
use probe_common::{ConnKey, ConnState, MAX_CONNS};

#[map]
pub static CONNS: HashMap<ConnKey, ConnState> = HashMap::with_max_entries(MAX_CONNS, 0);

/// The primary fd and state of the connection behind `fd` (itself, or what it duplicates).
#[inline(always)]
pub(super) fn resolve(tgid: u32, fd: u32) -> Option<(u32, *mut ConnState)> {
    let entry = CONNS.get_ptr_mut(&ConnKey { tgid, fd })?;
    // SAFETY: a map value pointer, valid for this program run.
    let primary = unsafe { (*entry).primary };
    if primary == fd {
        return Some((fd, entry));
    }
    let state = CONNS.get_ptr_mut(&ConnKey { tgid, fd: primary })?;
    Some((primary, state))
}
