//! close: an fd of a connection goes away; the connection closes with its last fd (an
//! unanswered request on it ends there).

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use probe_common::{ConnCloseEvent, ConnKey, ConnState, EventKind, CONN_PUSH, ROLE_UPSTREAM};

use super::{
    calls::end_call,
    conns::CONNS,
    requests::{counters, end_request, now_ns},
    syscall::arg,
};
use crate::shared::{current_tgid_pid, emit_flags, header, is_target, quiet_flags};

#[raw_tracepoint]
pub fn sys_enter_close(ctx: RawTracePointContext) -> u32 {
    match try_enter_close(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

#[inline(always)]
fn try_enter_close(ctx: &RawTracePointContext) -> Result<u32, u32> {
    let (tgid, _) = current_tgid_pid();
    if !is_target(tgid) {
        return Ok(0);
    }
    forget_fd(tgid, arg(ctx, 0)? as u32);
    Ok(0)
}

/// An fd of a connection goes away (close, or dup2 over it). An alias only unlinks itself;
/// the connection closes with its last fd.
#[inline(always)]
pub(super) fn forget_fd(tgid: u32, fd: u32) {
    let key = ConnKey { tgid, fd };
    // SAFETY: copied before the entry is removed.
    let Some(state) = (unsafe { CONNS.get(&key) }).copied() else {
        return;
    };
    let _ = CONNS.remove(&key);
    let primary_key = ConnKey {
        tgid,
        fd: state.primary,
    };
    if state.primary != fd {
        let Some(primary) = CONNS.get_ptr_mut(&primary_key) else {
            return;
        };
        // SAFETY: a map value pointer, valid for this program run.
        let primary = unsafe { &mut *primary };
        primary.aliases = primary.aliases.saturating_sub(1);
        if primary.aliases == 0 && primary.primary_closed != 0 {
            let primary = *primary;
            let _ = CONNS.remove(&primary_key);
            emit_close(tgid, state.primary, &primary);
        }
        return;
    }
    if state.aliases > 0 {
        // Still open through a duplicate: keep the entry, marked (a request in flight on it
        // stays in flight).
        let mut kept = state;
        kept.primary_closed = 1;
        let _ = CONNS.insert(&key, &kept, 0);
        return;
    }
    emit_close(tgid, fd, &state);
}

#[inline(always)]
pub(super) fn emit_close(tgid: u32, fd: u32, state: &ConnState) {
    if state.request_in_flight != 0 {
        // The connection closed with a request (or an upstream call) in flight: it is
        // over, unanswered.
        if let Some(counts) = counters(tgid) {
            let mut closed = *state;
            if state.role == ROLE_UPSTREAM {
                // SAFETY: bpf_ktime_get_ns has no preconditions.
                end_call(counts, &mut closed, unsafe {
                    aya_ebpf::helpers::bpf_ktime_get_ns()
                });
            } else {
                end_request(counts, &mut closed, now_ns());
            }
        }
    }
    emit_flags(quiet_flags(), || ConnCloseEvent {
        header: header::<ConnCloseEvent>(EventKind::ConnClose),
        tgid,
        fd,
        role: state.role,
        proto: state.proto,
        request_in_flight: state.request_in_flight,
        push: (state.flags & CONN_PUSH != 0) as u8,
        _pad: [0; 4],
        request_since_ns: state.request_since_ns,
    });
}
