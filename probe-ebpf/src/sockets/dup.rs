//! dup, dup2, dup3 and fcntl(F_DUPFD): a second fd for a connection (an alias of its
//! primary fd), so that I/O and close on either are seen as the same connection.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use probe_common::{ConnKey, Counter, Pending, SockAddr, IO_DUP};

use super::{
    close::forget_fd,
    conns::{resolve, CONNS},
    pending::remember,
    syscall::{arg, ret},
};
use crate::shared::{bump, current_tgid_pid, is_target};

const F_DUPFD: u64 = 0;
const F_DUPFD_CLOEXEC: u64 = 1030;

#[raw_tracepoint]
pub fn sys_enter_dup(ctx: RawTracePointContext) -> u32 {
    match try_enter_dup(&ctx, false) {
        Ok(r) | Err(r) => r,
    }
}

#[raw_tracepoint]
pub fn sys_enter_fcntl(ctx: RawTracePointContext) -> u32 {
    match try_enter_dup(&ctx, true) {
        Ok(r) | Err(r) => r,
    }
}

/// dup(old), dup2(old, new), dup3(old, new, flags), fcntl(old, F_DUPFD[_CLOEXEC], min).
#[inline(always)]
fn try_enter_dup(ctx: &RawTracePointContext, fcntl: bool) -> Result<u32, u32> {
    let (tgid, _) = current_tgid_pid();
    if !is_target(tgid) {
        return Ok(0);
    }
    if fcntl {
        let cmd = arg(ctx, 1)?;
        if cmd != F_DUPFD && cmd != F_DUPFD_CLOEXEC {
            return Ok(0);
        }
    }
    let old = arg(ctx, 0)? as u32;
    // SAFETY: presence check only.
    if unsafe { CONNS.get(&ConnKey { tgid, fd: old }) }.is_some() {
        remember(IO_DUP, old, 0, 0, SockAddr::empty());
    }
    Ok(0)
}

#[inline(always)]
pub(super) fn try_exit_dup(ctx: &RawTracePointContext, pending: Pending) -> Result<u32, u32> {
    let new = ret(ctx)?;
    if pending.kind != IO_DUP || new < 0 || new as u32 == pending.fd {
        return Ok(0);
    }
    let (tgid, _) = current_tgid_pid();
    let new = new as u32;
    // dup2/dup3 onto an fd that was a connection closes that fd first.
    forget_fd(tgid, new);
    let Some((primary_fd, primary)) = resolve(tgid, pending.fd) else {
        return Ok(0);
    };
    // SAFETY: a map value pointer, valid for this program run.
    let primary = unsafe { &mut *primary };
    let mut alias = *primary;
    alias.primary = primary_fd;
    alias.aliases = 0;
    alias.primary_closed = 0;
    if CONNS.insert(&ConnKey { tgid, fd: new }, &alias, 0).is_ok() {
        primary.aliases = primary.aliases.saturating_add(1);
    } else {
        bump(Counter::ConnsFull);
    }
    Ok(0)
}
