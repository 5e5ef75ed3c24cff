//! The socket backend (docs/hooks.md): the same connections, requests and database bytes as
//! the syscall hooks, from tracepoints inside the socket code, so that processes drainwatch
//! does not watch pay nothing on their system calls (nothing sits on `raw_syscalls`).
//!
//! - `sock:sock_send_length` / `sock_recv_length` (`struct sock *sk, int ret, int flags`;
//!   net/socket.c, `sock_sendmsg_nosec`/`sock_recvmsg_nosec`): fired in the calling task
//!   after every socket send/recv, whatever the syscall (io_uring included);
//! - `sock:inet_sock_set_state` (`sk, oldstate, newstate`; net/ipv4/tcp.c `tcp_set_state`):
//!   `CLOSE -> SYN_SENT` in the connecting task (tcp_v4_connect), `CLOSE -> LISTEN` in the
//!   listening task (inet_csk_listen_start), and the close (`is_close`), in the task that
//!   dropped the last reference to the socket;
//! - `tcp:tcp_destroy_sock` (`sk`; net/ipv4/inet_connection_sock.c): a socket already reset
//!   by its peer, destroyed at its close.
//!
//! All are `tp_btf` programs: `sk` is a typed pointer, and the task's saved syscall
//! registers (`bpf_task_pt_regs`) name the fd and the user buffer of the syscall in
//! progress. Connections are found by socket (`SOCKS`: the `struct sock` address → the
//! connection's key); the key's fd is the one the socket was first reached through (its
//! name for events and reports). Accepted sockets are seen at their first send/recv (their
//! `SYN_RECV -> ESTABLISHED` runs in softirq, in whatever task was interrupted).

use aya_ebpf::{
    helpers::{
        bpf_get_current_task, bpf_get_current_task_btf, bpf_probe_read_kernel,
        generated::bpf_task_pt_regs,
    },
    macros::{btf_tracepoint, map},
    maps::{Array, HashMap},
    programs::BtfTracePointContext,
};
use probe_common::{
    ConnKey, ConnState, Pending, SockAddr, CONN_BOUND, CONN_EXISTED, CONN_UNKNOWN, FD_BY_INODE,
    IO_READ, IO_READV, IO_RECVFROM, IO_RECVMSG, IO_SENDMSG, IO_SENDTO, IO_WRITE, IO_WRITEV,
    MAX_CONNS, NO_OFFSET, PROTO_UNKNOWN, ROLE_CLIENT, ROLE_DB, ROLE_UPSTREAM,
};

use super::{
    calls::{upstream_recv, upstream_send},
    close::emit_close,
    conns::{resolve, CONNS},
    db::db_inline,
    open::{classify_peer, open_conn},
    requests::{client_recv, client_send, now_ns},
    tls::{other_io, SocketBytes},
};
use crate::shared::{config, current_tgid_pid, is_target, maybe_target, target};

/// The connections of targets by socket: `struct sock` address → the `CONNS` key.
#[map]
static SOCKS: HashMap<u64, ConnKey> = HashMap::with_max_entries(MAX_CONNS, 0);

/// Local TCP ports a target listens on (1), from /proc at attach and `CLOSE -> LISTEN`:
/// a socket first seen in a target's send/recv on such a port was accepted (`client`).
#[map]
static LISTEN_PORTS: Array<u8> = Array::with_max_entries(65536, 0);

/// The sockets of a process being attached, by inode: `[role, protocol]` as its /proc
/// survey classified them (session/seed.rs). Written before the process becomes a target
/// and emptied once its connections are in `CONNS`: a socket from before attach that is
/// reached in between is classified by the survey, not by its peer alone.
#[map]
static SURVEYED: HashMap<u64, [u8; 2]> = HashMap::with_max_entries(MAX_CONNS, 0);

const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
// include/linux/net.h `enum sock_type`
const SOCK_STREAM: u16 = 1;
const SOCK_SEQPACKET: u16 = 5;

// include/net/tcp_states.h
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_FIN_WAIT1: i32 = 4;
const TCP_FIN_WAIT2: i32 = 5;
const TCP_CLOSE: i32 = 7;
const TCP_CLOSE_WAIT: i32 = 8;
const TCP_LAST_ACK: i32 = 9;
const TCP_LISTEN: i32 = 10;
const TCP_CLOSING: i32 = 11;

/// include/linux/sched.h
const PF_EXITING: u32 = 0x4;
/// include/linux/socket.h
const MSG_PEEK: i32 = 2;

// x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl).
const NR_READ: u64 = 0;
const NR_WRITE: u64 = 1;
const NR_CLOSE: u64 = 3;
const NR_READV: u64 = 19;
const NR_WRITEV: u64 = 20;
const NR_CONNECT: u64 = 42;
const NR_SENDTO: u64 = 44;
const NR_RECVFROM: u64 = 45;
const NR_SENDMSG: u64 = 46;
const NR_RECVMSG: u64 = 47;
const NR_SHUTDOWN: u64 = 48;
const NR_DUP2: u64 = 33;
const NR_EXECVE: u64 = 59;
const NR_DUP3: u64 = 292;
const NR_EXECVEAT: u64 = 322;
const NR_CLOSE_RANGE: u64 = 436;

/// `struct pt_regs` on x86_64 (arch/x86/include/asm/ptrace.h): di, si, dx, orig_ax.
const REG_DI: u64 = 112;
const REG_SI: u64 = 104;
const REG_DX: u64 = 96;
const REG_ORIG_AX: u64 = 120;

#[inline(always)]
pub(super) fn kread<T>(addr: u64) -> Option<T> {
    if addr == 0 {
        return None;
    }
    // SAFETY: the helper checks the kernel address.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
}

#[inline(always)]
fn field<T>(base: u64, off: u32) -> Option<T> {
    if off == NO_OFFSET {
        return None;
    }
    kread(base + off as u64)
}

/// The current task's syscall in progress: (number, first three arguments), from its saved
/// user registers. `None` outside a syscall context the helper can name.
#[inline(always)]
fn syscall_regs() -> Option<(u64, u64, u64, u64)> {
    // SAFETY: no preconditions; the result is the BTF-typed current task.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    Some((
        kread(regs + REG_ORIG_AX)?,
        kread(regs + REG_DI)?,
        kread(regs + REG_SI)?,
        kread(regs + REG_DX)?,
    ))
}

/// The kind of pending I/O a data syscall is (for the database path's buffer walk).
#[inline(always)]
fn io_kind(nr: u64) -> u8 {
    match nr {
        NR_READ => IO_READ,
        NR_WRITE => IO_WRITE,
        NR_READV => IO_READV,
        NR_WRITEV => IO_WRITEV,
        NR_SENDTO => IO_SENDTO,
        NR_RECVFROM => IO_RECVFROM,
        NR_SENDMSG => IO_SENDMSG,
        NR_RECVMSG => IO_RECVMSG,
        _ => 0,
    }
}

/// Whether the current task is exiting: its sockets close with it, which userspace accounts
/// from the exit event (`closed_by: exit`), as with the syscall hooks.
#[inline(always)]
fn exiting() -> bool {
    // SAFETY: no preconditions.
    let task = unsafe { bpf_get_current_task() };
    field::<u32>(task, config().sock.task_flags).is_some_and(|f| f & PF_EXITING != 0)
}

/// The socket's inode number (`/proc/PID/fd` shows `socket:[N]`).
#[inline(always)]
fn inode_of(sk: u64) -> Option<u64> {
    let off = config().sock;
    let socket: u64 = field(sk, off.sk_socket)?;
    let file: u64 = field(socket, off.socket_file)?;
    let inode: u64 = field(file, off.file_inode)?;
    field(inode, off.inode_ino)
}

/// The socket's peer address.
#[inline(always)]
fn peer_of(sk: u64) -> SockAddr {
    let off = config().sock;
    let mut out = SockAddr::empty();
    let family: u16 = field(sk, off.family).unwrap_or(0);
    let port: u16 = field(sk, off.dport).unwrap_or(0);
    match family {
        AF_INET => {
            if let Some(v4) = field::<[u8; 4]>(sk, off.daddr) {
                out.addr[..4].copy_from_slice(&v4);
            }
        }
        AF_INET6 => {
            if let Some(v6) = field::<[u8; 16]>(sk, off.v6_daddr) {
                out.addr = v6;
            }
        }
        _ => return out,
    }
    out.family = family;
    out.port = u16::from_be(port);
    out
}

/// A socket family the backend follows: TCP/IP, or unix-domain stream (the database's
/// `.s.PGSQL.5432`, `mysqld.sock`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Inet,
    Unix,
}

#[inline(always)]
fn family_of(sk: u64) -> Option<Family> {
    match field::<u16>(sk, config().sock.family)? {
        AF_INET | AF_INET6 => Some(Family::Inet),
        AF_UNIX => matches!(
            field::<u16>(sk, config().sock.sk_type)?,
            SOCK_STREAM | SOCK_SEQPACKET
        )
        .then_some(Family::Unix),
        _ => None,
    }
}

/// What a connected unix-domain stream socket first seen now is to its owner. Unix sockets
/// have no state tracepoint, so this is read from the socket itself (net/unix/af_unix.c):
/// `unix_stream_connect` gives the socket it creates for the listener's side a reference to
/// the listener's bound name (`unix_sock.addr`), while the connecting socket has a name
/// only if it was bound. So: a name here and none on the peer is the accepted side
/// (`client`); a named peer is the server we connected to (an upstream, which becomes a
/// database by its first bytes, as on the syscall hooks); neither named is a
/// `socketpair()` (asyncio's self-pipe, not a connection: not followed). Not yet connected
/// (no peer): nothing.
#[inline(always)]
fn unix_role(sk: u64) -> Option<(u8, u8, SockAddr)> {
    let off = config().sock;
    let peer: u64 = field(sk, off.unix_peer)?;
    if peer == 0 {
        return None;
    }
    let own: u64 = field(sk, off.unix_addr)?;
    let peers: u64 = field(peer, off.unix_addr)?;
    let unix = SockAddr {
        family: AF_UNIX,
        port: 0,
        addr: [0; 16],
    };
    match (own != 0, peers != 0) {
        (true, false) => Some((ROLE_CLIENT, PROTO_UNKNOWN, unix)),
        (_, true) => {
            let (role, proto) = classify_peer(&unix);
            Some((role, proto, unix))
        }
        (false, false) => None,
    }
}

/// The fd a socket is reached through in the current syscall (`nr` takes an fd first), or
/// its inode-derived name.
#[inline(always)]
fn name_fd(sk: u64, nr: u64, di: u64) -> u32 {
    match nr {
        NR_READ | NR_WRITE | NR_READV | NR_WRITEV | NR_SENDTO | NR_RECVFROM | NR_SENDMSG
        | NR_RECVMSG | NR_CONNECT | NR_SHUTDOWN | NR_CLOSE => di as u32,
        _ => FD_BY_INODE | (inode_of(sk).unwrap_or(0) as u32 & !FD_BY_INODE),
    }
}

/// Whether an entry found by fd is one userspace made at attach that no socket has claimed.
#[inline(always)]
fn unclaimed(state: *mut probe_common::ConnState) -> bool {
    // SAFETY: a map value pointer, valid for this program run.
    let flags = unsafe { (*state).flags };
    flags & CONN_EXISTED != 0 && flags & CONN_BOUND == 0
}

/// A name for a new connection: its fd, unless an entry still holds that number. That
/// happens: close(2) frees the fd at once but closes the socket only when the closing
/// thread returns to user space (the last fput runs as task work), and another thread can
/// be handed the same number in between (a thread-per-connection server under churn).
/// Then the inode names it.
#[inline(always)]
fn free_name(tgid: u32, sk: u64, fd: u32) -> u32 {
    // SAFETY: presence check only.
    if unsafe { CONNS.get(&ConnKey { tgid, fd }) }.is_none() {
        return fd;
    }
    FD_BY_INODE | (inode_of(sk).unwrap_or(0) as u32 & !FD_BY_INODE)
}

/// The connection of a target's socket first seen now (a connection found in /proc at
/// attach, whose fd names it, or one accepted since attach), reached through `nr`'s fd
/// argument `di`.
#[inline(always)]
fn first_seen(tgid: u32, sk: u64, nr: u64, di: u64) -> Option<ConnKey> {
    if !is_target(tgid) {
        return None;
    }
    let family = family_of(sk)?;
    let fd = name_fd(sk, nr, di);
    let key = match resolve(tgid, fd) {
        // A connection found in /proc at attach, reached now for the first time.
        Some((primary, state)) if unclaimed(state) => {
            // SAFETY: a map value pointer, valid for this program run.
            unsafe { (*state).flags |= CONN_BOUND };
            ConnKey { tgid, fd: primary }
        }
        // A unix-domain stream new since attach: accepted or connected, by its names. Its
        // close has no hook either: userspace sees it in /proc (session/unix_close.rs).
        _ if family == Family::Unix => {
            let (role, proto, peer) = unix_role(sk)?;
            // Its inode, for userspace to watch the fd by (ConnOpenEvent::unix_inode).
            let inode = inode_of(sk).unwrap_or(0) as u32;
            let fd = free_name(tgid, sk, fd);
            if !open_conn(tgid, fd, ConnState::new(role, proto, fd), 0, peer, inode) {
                return None;
            }
            ConnKey { tgid, fd }
        }
        // A socket from before attach reached before userspace added its entry (its process
        // is being attached): what the survey found it to be, never a guess from its peer
        // (issue #22: a local PostgreSQL on a port no flag names taken for an upstream).
        // New since attach (accepted: its SYN_RECV -> ESTABLISHED ran in softirq): its
        // listening port says client, else its peer says.
        _ => {
            let local: u16 = field(sk, config().sock.num)?;
            let peer = peer_of(sk);
            // SAFETY: copied at once.
            let surveyed = inode_of(sk).and_then(|inode| unsafe { SURVEYED.get(&inode) }.copied());
            let (role, proto) = match surveyed {
                Some([role, proto]) => (role, proto),
                None if LISTEN_PORTS.get(local as u32).is_some_and(|v| *v != 0) => {
                    (ROLE_CLIENT, PROTO_UNKNOWN)
                }
                None => classify_peer(&peer),
            };
            let fd = free_name(tgid, sk, fd);
            let mut state = ConnState::new(role, proto, fd);
            if surveyed.is_some() {
                // Its conversation is seen mid-way, as for an entry userspace made; bound to
                // this socket from now on.
                state.flags = CONN_EXISTED | CONN_BOUND;
            }
            if !open_conn(tgid, fd, state, 0, peer, 0) {
                return None;
            }
            ConnKey { tgid, fd }
        }
    };
    let _ = SOCKS.insert(&sk, &key, 0);
    Some(key)
}

/// One send or recv of `ret` bytes (or -errno) on socket `sk` by the current task, after
/// the copy: from the socket tracepoints here, or the fentry backend's fexit programs
/// (fexit.rs), which hand over the same three values.
#[inline(always)]
pub(super) fn data(sk: u64, ret: i32, flags: i32, send: bool) -> u32 {
    // The benchmark's floor build: what the hooks cost with programs that do nothing.
    if cfg!(feature = "bench-floor") {
        return 0;
    }
    let (tgid, _) = current_tgid_pid();
    if !maybe_target(tgid) {
        return 0;
    }
    // A failed send (the peer reset the link, a full non-blocking buffer) is still the
    // server's answer begun: it ends the request, as the syscall hooks end it at sys_enter
    // whatever the send returns (io.rs; docs/design.md, "request in flight": until the
    // server next sends). Without it a server that keeps a reset link open held the drain
    // with a request nobody can answer. A failed receive or an end of stream moves nothing.
    let failed = ret <= 0;
    if (failed && !send) || (!send && flags & MSG_PEEK != 0) {
        return 0;
    }
    // A known socket first: the saved registers (six helper calls) are read only for a
    // socket seen for the first time or a database conversation, never on the hot path of
    // a client request.
    // SAFETY: copied at once.
    let known = unsafe { SOCKS.get(&sk) }.copied();
    let Some(key) = known.or_else(|| {
        let (nr, di, _, _) = syscall_regs().unwrap_or((u64::MAX, 0, 0, 0));
        first_seen(tgid, sk, nr, di)
    }) else {
        return 0;
    };
    let Some(state) = CONNS.get_ptr_mut(&key) else {
        return 0;
    };
    // SAFETY: a map value pointer, valid for this program run.
    let state = unsafe { &mut *state };
    match state.role {
        // Requests count for the connection's owner (its tgid in the key).
        ROLE_CLIENT => {
            other_io(key.fd, send);
            // Traffic settles a connection unknown at attach (userspace reads the flag), as
            // on the syscall hooks (io.rs).
            if state.flags & CONN_UNKNOWN != 0 {
                state.flags &= !CONN_UNKNOWN;
            }
            // One clock read per hit (requests.rs, `now_ns`).
            let now = now_ns();
            if send {
                client_send(key.tgid, tgid, state, now);
            } else {
                client_recv(key.tgid, state, now);
            }
        }
        // Database and upstream conversations count only what moved.
        ROLE_DB | ROLE_UPSTREAM if !failed => {
            if state.role == ROLE_UPSTREAM {
                // Calls count for the connection's owner, as requests do (calls.rs).
                if send {
                    upstream_send(key.tgid, state);
                } else {
                    upstream_recv(key.tgid, state);
                }
                if state.sniff_left == 0 {
                    return 0;
                }
                state.sniff_left -= 1;
            }
            return sock_db(key.tgid, key.fd, send, ret as u64);
        }
        _ => {}
    }
    0
}

/// The database path of a send/recv of `moved` bytes on a database connection (or an
/// upstream one still sniffed) `fd` of target `tgid`: TLS, copy, redaction, event. Out of
/// line, a global BPF function like those of db.rs (see there why), so that the verifier
/// checks it once, not once for every path of [`data`] that reaches it.
#[inline(always)]
fn sock_db(tgid: u32, fd: u32, send: bool, moved: u64) -> u32 {
    dw_sock_db((tgid as u64) << 32 | fd as u64, send as u64, moved)
}

/// [`sock_db`]'s body: `key` = tgid << 32 | fd, `send` 0 or 1.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn dw_sock_db(key: u64, send: u64, moved: u64) -> u32 {
    let (tgid, fd, send) = ((key >> 32) as u32, key as u32, send != 0);
    let Some(state) = CONNS.get_ptr_mut(&ConnKey { tgid, fd }) else {
        return 0;
    };
    // SAFETY: a map value pointer, valid for this program run.
    let state = unsafe { &mut *state };
    let (nr, _, si, dx) = syscall_regs().unwrap_or((u64::MAX, 0, 0, 0));
    // TLS hook point (tls.rs): ciphertext of a conversation read in plaintext
    // through the SSL uprobes is not parsed (a held SSL_write is, in its place).
    let (mut kind, mut ptr, mut count, mut moved, mut tls) = (io_kind(nr), si, dx, moved, false);
    // The first bytes: the buffer argument (the first iovec's base is not looked
    // up here: only plain send/recv/read/write bytes mark a connection as TLS).
    let head = match kind {
        IO_READ | IO_WRITE | IO_SENDTO | IO_RECVFROM => si,
        _ => 0,
    };
    match super::tls::socket_io(fd, state, send, head) {
        SocketBytes::Parse => {}
        SocketBytes::Skip => return 0,
        SocketBytes::Held { buf, moved: held } => {
            (kind, ptr, count, moved, tls) = (IO_WRITE, buf, 0, held, true);
        }
    }
    // Through io_uring or sendfile there are no such registers: the bytes are not
    // where a syscall argument says. Counted as a missed database read, never
    // guessed (docs/hooks.md).
    if kind == 0 {
        crate::shared::bump(probe_common::Counter::DbIoMissed);
        return 0;
    }
    let pending = Pending {
        kind,
        _pad: [0; 3],
        fd,
        ptr,
        count,
        addr: SockAddr::empty(),
        _pad2: [0; 4],
    };
    db_inline(tgid, &pending, send, moved, tls);
    0
}

#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length(ctx: BtfTracePointContext) -> u32 {
    data(ctx.arg(0), ctx.arg(1), ctx.arg(2), true)
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> u32 {
    data(ctx.arg(0), ctx.arg(1), ctx.arg(2), false)
}

/// The connection behind `sk` is closed: forget it and say so (unless it closed with its
/// owner's exit, which userspace accounts from the exit event, as with the syscall hooks). The event names the connection's
/// owner, which may not be the closing task (a fork child that held the last reference).
#[inline(always)]
fn closed(sk: u64, key: Option<ConnKey>) {
    let _ = SOCKS.remove(&sk);
    let Some(key) = key else {
        return;
    };
    // SAFETY: copied before the entry is removed.
    let Some(state) = (unsafe { CONNS.get(&key) }).copied() else {
        return;
    };
    // Closed by the exit of its owner: in the exiting task itself (PF_EXITING), or after
    // it, where the kernel defers the last fput of an exiting task to a worker (the owner's
    // TARGETS entry is gone by then: lifecycle.rs removes it at the exit).
    if exiting() || target(key.tgid).is_none() {
        return;
    }
    let _ = CONNS.remove(&key);
    emit_close(key.tgid, key.fd, &state);
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> u32 {
    let (tgid, _) = current_tgid_pid();
    if !maybe_target(tgid) {
        return 0;
    }
    let sk: u64 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    // Most changes seen here are none of these (the handshake's, and on loopback the
    // peer's, run in softirq in whatever task sent the packet): they stop before any
    // lookup.
    let listening = old == TCP_CLOSE && new == TCP_LISTEN;
    let opening = old == TCP_CLOSE && new == TCP_SYN_SENT;
    if !listening && !opening && !may_close(old, new) || !is_target(tgid) {
        return 0;
    }
    if listening {
        if let Some(port) = field::<u16>(sk, config().sock.num) {
            if let Some(slot) = LISTEN_PORTS.get_ptr_mut(port as u32) {
                // SAFETY: an array map value.
                unsafe { *slot = 1 };
            }
        }
        return 0;
    }
    let (nr, di, _, _) = syscall_regs().unwrap_or((u64::MAX, 0, 0, 0));
    if opening {
        let fd = free_name(tgid, sk, name_fd(sk, nr, di));
        let peer = peer_of(sk);
        let (role, proto) = classify_peer(&peer);
        if open_conn(tgid, fd, ConnState::new(role, proto, fd), 0, peer, 0) {
            let _ = SOCKS.insert(&sk, &ConnKey { tgid, fd }, 0);
        }
        return 0;
    }
    if !is_close(old, new, nr) {
        return 0;
    }
    // SAFETY: copied at once.
    let key = match unsafe { SOCKS.get(&sk) } {
        Some(key) => Some(*key),
        // Never seen since attach (found in /proc, idle since): named by close(2)'s fd.
        None if nr == NR_CLOSE => resolve(tgid, di as u32)
            .filter(|&(_, state)| unclaimed(state))
            .map(|(fd, _)| ConnKey { tgid, fd }),
        None => None,
    };
    closed(sk, key);
    0
}

/// Whether a state change seen in a target's own context is the close of its socket.
///
/// `__tcp_close` moves the socket by `tcp_close_state`'s table (net/ipv4/tcp.c):
/// ESTABLISHED/SYN_RECV → FIN_WAIT1, CLOSE_WAIT → LAST_ACK, SYN_SENT → CLOSE, and a socket
/// already shut down for writing stays where it is (FIN_WAIT1 → FIN_WAIT1, FIN_WAIT2 →
/// FIN_WAIT2, LAST_ACK → LAST_ACK, CLOSING → CLOSING: the tracepoint still fires). With
/// unread data or SO_LINGER 0 it goes straight to CLOSE (with a reset). `shutdown(2)` takes
/// the same table without closing anything, and is told apart by the saved syscall number.
/// Transitions the peer causes (its FIN or ACK, processed in softirq, possibly on a
/// target's CPU in a target's context) are never in the table, except a reset's `→ CLOSE`,
/// which counts only inside a syscall that closes fds.
#[inline(always)]
fn is_close(old: i32, new: i32, nr: u64) -> bool {
    if nr == NR_SHUTDOWN {
        return false;
    }
    let by_reset = new == TCP_CLOSE
        && old != TCP_CLOSE
        && matches!(
            nr,
            NR_CLOSE | NR_DUP2 | NR_DUP3 | NR_EXECVE | NR_EXECVEAT | NR_CLOSE_RANGE
        );
    by_table(old, new) || by_reset
}

/// [`is_close`] before the syscall is known: a change by the close table, or to `CLOSE`.
#[inline(always)]
fn may_close(old: i32, new: i32) -> bool {
    by_table(old, new) || (new == TCP_CLOSE && old != TCP_CLOSE)
}

/// A change by `tcp_close_state`'s table (see [`is_close`]).
#[inline(always)]
fn by_table(old: i32, new: i32) -> bool {
    matches!(
        (old, new),
        (TCP_ESTABLISHED, TCP_FIN_WAIT1)
            | (TCP_SYN_RECV, TCP_FIN_WAIT1)
            | (TCP_CLOSE_WAIT, TCP_LAST_ACK)
            | (TCP_SYN_SENT, TCP_CLOSE)
            | (TCP_FIN_WAIT1, TCP_FIN_WAIT1)
            | (TCP_FIN_WAIT2, TCP_FIN_WAIT2)
            | (TCP_LAST_ACK, TCP_LAST_ACK)
            | (TCP_CLOSING, TCP_CLOSING)
    )
}

/// A socket already reset by its peer is destroyed at its close, without a state change.
#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn tcp_destroy_sock(ctx: BtfTracePointContext) -> u32 {
    let sk: u64 = ctx.arg(0);
    // SAFETY: copied at once.
    let Some(key) = (unsafe { SOCKS.get(&sk) }).copied() else {
        return 0;
    };
    closed(sk, Some(key));
    0
}
