//! The fentry backend (docs/hooks.md): for kernels without `sock:sock_send_length` /
//! `sock_recv_length` (before 6.3; Debian 12's 6.1), the same three values — the socket,
//! the bytes moved or -errno, the flags — from fexit programs on the protocol functions
//! every socket send/recv of a TCP or unix-domain stream socket goes through, whatever the
//! syscall (io_uring included): `tcp_sendmsg`/`tcp_recvmsg` (net/ipv4/tcp.c, also IPv6's)
//! and `unix_stream_sendmsg`/`unix_stream_recvmsg` (net/unix/af_unix.c, reached through
//! `unix_stream_ops`, so never inlined). `sock_sendmsg`/`sock_recvmsg` would miss
//! sendmsg(2)/recvmsg(2), which call the inlined `sock_*msg_nosec` directly.
//!
//! Everything after that is the socket backend's code (`sock_tp::data`), and its
//! lifecycle programs (`inet_sock_set_state`, `tcp_destroy_sock`: tp_btf, present on 6.1)
//! are attached with these: the state machine cannot tell the two backends apart.
//!
//! A fexit program sees the function's arguments, then its return value in the next slot.

use aya_ebpf::{macros::fexit, programs::FExitContext};

use super::sock_tp::{data, kread};
use crate::shared::config;

/// `int tcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t size)`
#[fexit(function = "tcp_sendmsg")]
pub fn fx_tcp_send(ctx: FExitContext) -> u32 {
    data(ctx.arg(0), ctx.arg(3), 0, true)
}

/// `int tcp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len, int flags,
/// int *addr_len)`
#[fexit(function = "tcp_recvmsg")]
pub fn fx_tcp_recv(ctx: FExitContext) -> u32 {
    data(ctx.arg(0), ctx.arg(5), ctx.arg(3), false)
}

/// `struct socket *` -> its `struct sock *` (`socket.sk`).
#[inline(always)]
fn sk_of(sock: u64) -> u64 {
    let off = config().sock.socket_sk;
    if off == probe_common::NO_OFFSET {
        return 0;
    }
    kread(sock + off as u64).unwrap_or(0)
}

/// `int unix_stream_sendmsg(struct socket *sock, struct msghdr *msg, size_t len)`
#[fexit(function = "unix_stream_sendmsg")]
pub fn fx_unix_send(ctx: FExitContext) -> u32 {
    let sk = sk_of(ctx.arg(0));
    if sk == 0 {
        return 0;
    }
    data(sk, ctx.arg(3), 0, true)
}

/// `int unix_stream_recvmsg(struct socket *sock, struct msghdr *msg, size_t size,
/// int flags)`
#[fexit(function = "unix_stream_recvmsg")]
pub fn fx_unix_recv(ctx: FExitContext) -> u32 {
    let sk = sk_of(ctx.arg(0));
    if sk == 0 {
        return 0;
    }
    data(sk, ctx.arg(4), ctx.arg(3), false)
}
