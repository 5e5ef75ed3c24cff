//! accept/accept4 and connect: a connection of a target starts, as a client (accepted), a
//! database (a database port or a `--db` address) or an upstream (anything else it connects to).

use aya_ebpf::{
    macros::{map, raw_tracepoint},
    maps::{Array, HashMap},
    programs::RawTracePointContext,
};
use probe_common::{
    ConnKey, ConnOpenEvent, ConnState, Counter, EventKind, Pending, SockAddr, DB_PORT_FLAG,
    DB_PORT_PROTO_MASK, DB_PORT_SLOTS, IO_ACCEPT, IO_CONNECT, MAX_DB_ADDRS, PROTO_UNKNOWN,
    ROLE_CLIENT, ROLE_DB, ROLE_LISTENER, ROLE_UPSTREAM,
};

use super::{
    conns::CONNS,
    pending::remember,
    syscall::{arg, is_unix_sockaddr, read_sockaddr, ret, AF_UNIX},
};
use crate::shared::{bump, current_tgid_pid, emit_flags, header, is_target, quiet_flags};

/// Per TCP port: `DB_PORT_FLAG | protocol` for database ports, else 0.
#[map]
pub static DB_PORTS: Array<u8> = Array::with_max_entries(DB_PORT_SLOTS, 0);

/// Database addresses named with `--db ADDR:PORT` (value: protocol).
#[map]
pub static DB_ADDRS: HashMap<SockAddr, u8> = HashMap::with_max_entries(MAX_DB_ADDRS, 0);

const EINPROGRESS: i64 = 115;

#[raw_tracepoint]
pub fn sys_enter_accept(ctx: RawTracePointContext) -> u32 {
    match try_enter_accept(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

#[inline(always)]
fn try_enter_accept(ctx: &RawTracePointContext) -> Result<u32, u32> {
    let (tgid, _) = current_tgid_pid();
    if !is_target(tgid) {
        return Ok(0);
    }
    // accept(fd, upeer_sockaddr, upeer_addrlen[, flags])
    remember(
        IO_ACCEPT,
        arg(ctx, 0)? as u32,
        arg(ctx, 1)?,
        0,
        SockAddr::empty(),
    );
    Ok(0)
}

#[inline(always)]
pub(super) fn try_exit_accept(ctx: &RawTracePointContext, pending: Pending) -> Result<u32, u32> {
    let fd = ret(ctx)?;
    if fd < 0 {
        return Ok(0);
    }
    let (tgid, _) = current_tgid_pid();
    let listener = ConnKey {
        tgid,
        fd: pending.fd,
    };
    // SAFETY: presence check only.
    if unsafe { CONNS.get(&listener) }.is_none() {
        let state = ConnState::new(ROLE_LISTENER, PROTO_UNKNOWN, pending.fd);
        let _ = CONNS.insert(&listener, &state, 0);
    }
    // The kernel has filled the peer address in by now (if the caller asked for it).
    let peer = read_sockaddr(pending.ptr);
    let state = ConnState::new(ROLE_CLIENT, PROTO_UNKNOWN, fd as u32);
    let _ = open_conn(tgid, fd as u32, state, pending.fd, peer, 0);
    Ok(0)
}

/// Tracks a new connection of a target: `state` is its entry (role, protocol, and
/// `CONN_EXISTED` for a socket from before attach first seen now), announced to userspace.
#[inline(always)]
pub(super) fn open_conn(
    tgid: u32,
    fd: u32,
    state: ConnState,
    listener_fd: u32,
    peer: SockAddr,
    unix_inode: u32,
) -> bool {
    let key = ConnKey { tgid, fd };
    if CONNS.insert(&key, &state, 0).is_err() {
        bump(Counter::ConnsFull);
        return false;
    }
    emit_flags(quiet_flags(), || ConnOpenEvent {
        header: header::<ConnOpenEvent>(EventKind::ConnOpen),
        tgid,
        fd,
        role: state.role,
        proto: state.proto,
        flags: state.flags,
        _pad: 0,
        listener_fd,
        peer,
        unix_inode,
    });
    true
}

#[raw_tracepoint]
pub fn sys_enter_connect(ctx: RawTracePointContext) -> u32 {
    match try_enter_connect(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

#[inline(always)]
fn try_enter_connect(ctx: &RawTracePointContext) -> Result<u32, u32> {
    let (tgid, _) = current_tgid_pid();
    if !is_target(tgid) {
        return Ok(0);
    }
    let ptr = arg(ctx, 1)?;
    if is_unix_sockaddr(ptr) {
        // A unix-domain peer has no port: it is tracked as an upstream and becomes a
        // database connection by its first bytes (sniffing, recognize.rs), like TCP on an
        // unknown port. (A connected datagram socket, e.g. syslog's /dev/log, is tracked
        // too and stays an upstream.)
        let unix = SockAddr {
            family: AF_UNIX,
            port: 0,
            addr: [0; 16],
        };
        remember(IO_CONNECT, arg(ctx, 0)? as u32, 0, 0, unix);
        return Ok(0);
    }
    let addr = read_sockaddr(ptr);
    if addr.family == 0 {
        return Ok(0); // neither TCP/IP nor unix-domain
    }
    remember(IO_CONNECT, arg(ctx, 0)? as u32, 0, 0, addr);
    Ok(0)
}

#[inline(always)]
pub(super) fn try_exit_connect(ctx: &RawTracePointContext, pending: Pending) -> Result<u32, u32> {
    let rc = ret(ctx)?;
    if rc != 0 && rc != -EINPROGRESS {
        return Ok(0);
    }
    let (tgid, _) = current_tgid_pid();
    let (role, proto) = classify_peer(&pending.addr);
    let state = ConnState::new(role, proto, pending.fd);
    let _ = open_conn(tgid, pending.fd, state, 0, pending.addr, 0);
    Ok(0)
}

/// `db` when the peer is a named database address or on a database port.
#[inline(always)]
pub(super) fn classify_peer(peer: &SockAddr) -> (u8, u8) {
    // SAFETY: the value is copied at once.
    if let Some(proto) = unsafe { DB_ADDRS.get(peer) } {
        return (ROLE_DB, *proto);
    }
    match DB_PORTS.get(peer.port as u32) {
        Some(slot) if *slot & DB_PORT_FLAG != 0 => (ROLE_DB, *slot & DB_PORT_PROTO_MASK),
        _ => (ROLE_UPSTREAM, PROTO_UNKNOWN),
    }
}
