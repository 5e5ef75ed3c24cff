//! Upstream calls, counted in the kernel like client requests (requests.rs), the other way
//! round (docs/design.md, "upstream call in flight"): on a connection the target opened to
//! another service, a call is in flight from a send of the target until the first bytes
//! it receives after it, or the close. Counters beside the requests' (requests.rs,
//! [`counters`]: `probe_common::CallCounters`), no ring-buffer event.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use probe_common::{
    ConnState, RequestCounters, CONN_ANSWERED, CONN_ONE_WAY, PUSH_GAP, PUSH_TIME_SHIFT,
};

use super::requests::{count, counters};

/// The target `tgid` sent on its upstream connection (both backends: io.rs at the send's
/// sys_enter, sock_tp.rs after the copy). With no call in flight, a call starts. With one
/// in flight on a connection that never answered, a send more than [`PUSH_GAP`] after the
/// previous one makes it one-way (a log shipper, a metrics socket: nothing will answer);
/// the rest of a request written in pieces comes sooner.
#[inline(always)]
pub(super) fn upstream_send(tgid: u32, state: &mut ConnState) {
    if state.flags & CONN_ONE_WAY != 0 {
        return;
    }
    let Some(counts) = counters(tgid) else {
        return;
    };
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // 0 means "no send seen yet", as for client connections (requests.rs).
    let units = ((now >> PUSH_TIME_SHIFT) as u32).max(1);
    if state.request_in_flight == 0 {
        start_call(counts, state, now);
    } else if state.flags & CONN_ANSWERED == 0
        && state.last_send != 0
        && units.wrapping_sub(state.last_send) >= PUSH_GAP
    {
        state.flags |= CONN_ONE_WAY;
        end_call(counts, state, now);
        // SAFETY: a map value pointer, valid for this program run.
        unsafe { count(&raw mut (*counts).calls.one_way) };
    }
    state.last_send = units;
}

/// The target received bytes on its upstream connection: the reply to the call in flight,
/// if one is; either way the connection has answered.
#[inline(always)]
pub(super) fn upstream_recv(tgid: u32, state: &mut ConnState) {
    if state.request_in_flight != 0 {
        if let Some(counts) = counters(tgid) {
            // SAFETY: bpf_ktime_get_ns has no preconditions.
            end_call(counts, state, unsafe { bpf_ktime_get_ns() });
        }
    }
    // A one-way connection that answers after all is request/response from now on.
    state.flags = (state.flags | CONN_ANSWERED) & !CONN_ONE_WAY;
}

#[inline(always)]
fn start_call(counts: *mut RequestCounters, state: &mut ConnState, now: u64) {
    state.request_in_flight = 1;
    state.request_since_ns = now;
    // SAFETY: a map value pointer, valid for this program run.
    unsafe {
        let calls = &raw mut (*counts).calls;
        if state.flags & CONN_ANSWERED == 0 {
            count(&raw mut (*calls).first_started);
            (*calls).first_last_start_ns = now;
        }
        count(&raw mut (*calls).started);
        (*calls).last_edge_ns = now;
    }
}

/// The reply came, the connection turned out one-way, or it closed (close.rs), or its
/// first bytes made it a database connection (db.rs). A start of 0 is a call that was
/// already in flight at attach: it counts apart. Call before `CONN_ANSWERED` is set.
#[inline(always)]
pub(super) fn end_call(counts: *mut RequestCounters, state: &mut ConnState, now: u64) {
    let since = state.request_since_ns;
    state.request_in_flight = 0;
    // SAFETY: a map value pointer, valid for this program run.
    unsafe {
        let calls = &raw mut (*counts).calls;
        if since == 0 {
            if state.flags & CONN_ANSWERED == 0 {
                count(&raw mut (*calls).first_existing_ended);
            }
            count(&raw mut (*calls).existing_ended);
        } else {
            if state.flags & CONN_ANSWERED == 0 {
                count(&raw mut (*calls).first_ended);
            }
            count(&raw mut (*calls).ended);
        }
        (*calls).last_edge_ns = now;
    }
}

/// The connection's first bytes made it a database connection (db.rs): the call its send
/// started was a database's handshake or query, followed by the protocol rules from here,
/// so it is taken back rather than counted as a call (`taken_back`, which userspace
/// subtracts from `started`: every counter only grows, which the per-CPU copies' reading
/// relies on). One in flight at attach is ended instead.
#[inline(always)]
pub(super) fn undo_call(tgid: u32, state: &mut ConnState) {
    if state.request_in_flight == 0 {
        return;
    }
    let Some(counts) = counters(tgid) else {
        return;
    };
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if state.request_since_ns == 0 {
        end_call(counts, state, now);
        return;
    }
    state.request_in_flight = 0;
    // SAFETY: a map value pointer, valid for this program run.
    unsafe {
        let calls = &raw mut (*counts).calls;
        if state.flags & CONN_ANSWERED == 0 {
            count(&raw mut (*calls).first_taken_back);
        }
        count(&raw mut (*calls).taken_back);
        (*calls).last_edge_ns = now;
    }
}
