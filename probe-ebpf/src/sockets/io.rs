//! The data syscalls (read, write, recvfrom, sendto, recvmsg, sendmsg, readv, writev): the
//! edges of client requests, and the hand-off of database I/O to the database path.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use probe_common::{
    ConnKey, Pending, SockAddr, CONN_UNKNOWN, IO_READ, IO_READV, IO_RECVFROM, IO_RECVMSG,
    IO_SENDMSG, IO_SENDTO, IO_WRITE, IO_WRITEV, ROLE_CLIENT, ROLE_DB, ROLE_UPSTREAM,
};

use super::{
    calls::{upstream_recv, upstream_send},
    conns::{resolve, CONNS},
    db::{head_span, jump_to_db_io},
    pending::remember,
    requests::{client_recv, client_send, now_ns},
    syscall::{arg, ret},
    tls::{other_io, SocketBytes},
};
use crate::shared::current_tgid_pid;

/// sys_enter of read/write/recvfrom/sendto/recvmsg/sendmsg/readv/writev: remember the
/// buffer if the fd is a connection worth looking at.
#[inline(always)]
fn enter_io(ctx: &RawTracePointContext, kind: u8) -> Result<u32, u32> {
    // The dispatcher passed the target bitmap; the connection map only holds targets'
    // connections, so finding the fd there is the target check (one hash lookup, not two).
    let (tgid, _) = current_tgid_pid();
    let Some((fd, state)) = resolve(tgid, arg(ctx, 0)? as u32) else {
        return Ok(0);
    };
    // SAFETY: a map value pointer, valid for this program run.
    let state = unsafe { &mut *state };
    let wanted = match state.role {
        // A client request ends when the server starts to send (here, at sys_enter: what
        // happens to the bytes after that is the kernel's business); it starts at the first
        // bytes received after idle, which only the sys_exit can tell. So only a receive on
        // an idle client connection is remembered.
        ROLE_CLIENT if is_send(kind) => {
            other_io(fd, true);
            // Traffic settles a connection unknown at attach (userspace reads the flag).
            if state.flags & CONN_UNKNOWN != 0 {
                state.flags &= !CONN_UNKNOWN;
            }
            client_send(tgid, tgid, state, now_ns());
            false
        }
        // Every receive: one on an idle connection starts a request, any other is still
        // client input (the drain tail's start), which only the sys_exit can tell.
        ROLE_CLIENT => true,
        ROLE_DB => true,
        // A call starts at the send, like an answer (calls.rs); its reply's first bytes
        // only the sys_exit can tell.
        ROLE_UPSTREAM if is_send(kind) => {
            upstream_send(tgid, state);
            state.sniff_left > 0
        }
        ROLE_UPSTREAM => true,
        _ => false,
    };
    if !wanted {
        return Ok(0);
    }
    if state.role == ROLE_CLIENT || (state.role == ROLE_UPSTREAM && state.sniff_left == 0) {
        // A request start (a reply) needs only the fd: no buffer, no register reads.
        remember(kind, fd, 0, 0, SockAddr::empty());
        return Ok(0);
    }
    let count = if kind == IO_READV || kind == IO_WRITEV {
        arg(ctx, 2)?
    } else {
        0
    };
    remember(kind, fd, arg(ctx, 1)?, count, SockAddr::empty());
    Ok(0)
}

#[inline(always)]
fn is_send(kind: u8) -> bool {
    matches!(kind, IO_WRITE | IO_SENDTO | IO_SENDMSG | IO_WRITEV)
}

/// sys_exit of the data syscalls.
#[inline(always)]
pub(super) fn exit_io(ctx: &RawTracePointContext, pending: Pending) -> Result<u32, u32> {
    let moved = ret(ctx)?;
    if moved <= 0 {
        return Ok(0);
    }
    let (tgid, _) = current_tgid_pid();
    let key = ConnKey {
        tgid,
        fd: pending.fd,
    };
    let Some(state) = CONNS.get_ptr_mut(&key) else {
        return Ok(0);
    };
    // SAFETY: a map value pointer, valid for this program run; only this thread's syscall
    // touches this fd's entry in the common case, and a lost race costs one request edge.
    let state = unsafe { &mut *state };
    let send = is_send(pending.kind);
    let role = state.role;
    match role {
        ROLE_CLIENT if !send => {
            if state.request_in_flight == 0 {
                other_io(pending.fd, false);
                if state.flags & CONN_UNKNOWN != 0 {
                    state.flags &= !CONN_UNKNOWN;
                }
            }
            client_recv(tgid, state, now_ns());
        }
        ROLE_DB | ROLE_UPSTREAM => {
            if role == ROLE_UPSTREAM {
                if !send {
                    upstream_recv(tgid, state);
                }
                if state.sniff_left == 0 {
                    return Ok(0);
                }
                state.sniff_left -= 1;
            }
            // TLS hook point (tls.rs): ciphertext of a conversation read in plaintext
            // through the SSL uprobes is not parsed (a held SSL_write is, in its place).
            let (head, _) = head_span(&pending, moved as u64);
            match super::tls::socket_io(pending.fd, state, send, head) {
                SocketBytes::Parse => jump_to_db_io(ctx, pending, moved as u64, tgid, send, false),
                SocketBytes::Skip => {}
                SocketBytes::Held { buf, moved } => {
                    let plain = Pending {
                        kind: IO_WRITE,
                        ptr: buf,
                        count: 0,
                        ..pending
                    };
                    jump_to_db_io(ctx, plain, moved, tgid, true, true)
                }
            }
        }
        _ => {}
    }
    Ok(0)
}

macro_rules! io_programs {
    ($($enter:ident, $kind:expr;)*) => {$(
        #[raw_tracepoint]
        pub fn $enter(ctx: RawTracePointContext) -> u32 {
            match enter_io(&ctx, $kind) {
                Ok(r) | Err(r) => r,
            }
        }
    )*};
}

io_programs! {
    sys_enter_read, IO_READ;
    sys_enter_write, IO_WRITE;
    sys_enter_recvfrom, IO_RECVFROM;
    sys_enter_sendto, IO_SENDTO;
    sys_enter_recvmsg, IO_RECVMSG;
    sys_enter_sendmsg, IO_SENDMSG;
    sys_enter_readv, IO_READV;
    sys_enter_writev, IO_WRITEV;
}
