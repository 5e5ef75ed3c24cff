//! Sockets: which fds of a target are connections, what role they play, when a client
//! request is in flight, and the few bytes of each database send/recv that the protocol
//! rules need.
//!
//! Two raw tracepoints (kprobes are not available): `raw_syscalls:sys_enter` and
//! `sys_exit`, whose arguments are `struct pt_regs *` and the syscall number or return
//! value (include/trace/events/syscalls.h). Other processes stop at the target bitmap; a
//! target's syscall entry is handed to its own program by syscall number (`ENTER_JUMP`),
//! which reads the arguments from the registers (x86_64 calling convention) and leaves what
//! the exit needs in the thread's pending slot.
//!
//! Hot path: the bitmap, then a `CONNS` lookup before anything else. Client requests send
//! no events at all: they are counted in the target's `TARGETS` entry (started, ended, last
//! edge) and their latencies in a per-CPU histogram, which userspace reads on its drain
//! tick. Only connection opens/closes, database I/O and lifecycle events use the ring
//! buffer, submitted without waking userspace (unless it is half full).

use core::intrinsics::{atomic_cxchg, atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user,
    },
    macros::{map, raw_tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray},
    programs::RawTracePointContext,
};
use probe_common::{
    latency::{self, LatencyHistogram, LATENCY_MAX_SLOT},
    *,
};

use crate::shared::{
    bump, config, current_tgid_pid, emit_flags, header, is_target, maybe_target, target, EVENTS,
};
use probe_common::redact::redact;

#[map]
pub static CONNS: HashMap<ConnKey, ConnState> = HashMap::with_max_entries(MAX_CONNS, 0);

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

/// Per TCP port: `DB_PORT_FLAG | protocol` for database ports, else 0.
#[map]
pub static DB_PORTS: Array<u8> = Array::with_max_entries(DB_PORT_SLOTS, 0);

/// Database addresses named with `--db ADDR:PORT` (value: protocol).
#[map]
pub static DB_ADDRS: HashMap<SockAddr, u8> = HashMap::with_max_entries(MAX_DB_ADDRS, 0);

/// The database path (copy, redact, emit) runs as its own program, reached by a tail call
/// from the syscall exits: the verifier checks it once instead of inside each of the eight
/// exit programs, where the combined branches exceed its budget.
#[map]
pub static JUMP: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The program for each syscall a target makes that matters here, by x86_64 syscall number
/// (filled in by userspace).
#[map]
pub static ENTER_JUMP: ProgramArray = ProgramArray::with_max_entries(SYSCALL_SLOTS, 0);

/// What the exit program hands to `db_io` across the tail call (one slot per CPU; the
/// tail call runs on the same CPU without preemption).
#[map]
static DB_WORK: PerCpuArray<DbWork> = PerCpuArray::with_max_entries(1, 0);

/// Latencies of answered client requests, by bucket (one histogram per CPU, summed by
/// userspace).
#[map]
static REQUEST_LATENCY: PerCpuArray<LatencyHistogram> = PerCpuArray::with_max_entries(1, 0);

/// Where the tail is copied right-aligned (its last byte at index 31) before it goes into
/// the event: a map value, because the verifier allows a variable-offset write there as
/// long as offset + size stays inside (32 - n + n <= 64), and not on the stack.
#[map]
static TAIL_SCRATCH: PerCpuArray<[u8; 64]> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
#[derive(Clone, Copy)]
struct DbWork {
    pending: Pending,
    moved: u64,
    tgid: u32,
    send: u8,
    _pad: [u8; 3],
    /// The JUMP slot, read back from the map so that the verifier sees an unknown index.
    slot: u32,
    _pad2: u32,
}

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const EINPROGRESS: i64 = 115;
/// Most iovecs walked to find where the bytes of a readv/writev/recvmsg/sendmsg ended.
const MAX_IOVECS: u32 = 8;

/// Where the syscall arguments are in `struct pt_regs` on x86_64: di, si, dx, r10, r8, r9
/// (arch/x86/include/asm/ptrace.h; the syscall ABI in arch/x86/entry/entry_64.S).
const ARG_OFFSETS: [u64; 6] = [112, 104, 96, 56, 72, 64];

/// Syscall argument `n` (a constant at every call site), read from the `pt_regs` that
/// raw_syscalls:sys_enter passes as its first argument.
#[inline(always)]
fn arg(ctx: &RawTracePointContext, n: usize) -> Result<u64, u32> {
    let regs: u64 = ctx.arg(0);
    let offset = match n {
        0 => ARG_OFFSETS[0],
        1 => ARG_OFFSETS[1],
        2 => ARG_OFFSETS[2],
        3 => ARG_OFFSETS[3],
        4 => ARG_OFFSETS[4],
        _ => ARG_OFFSETS[5],
    };
    // SAFETY: the helper checks the kernel address.
    unsafe { bpf_probe_read_kernel((regs + offset) as *const u64) }.map_err(|_| 0u32)
}

/// The return value: raw_syscalls:sys_exit's second argument.
#[inline(always)]
fn ret(ctx: &RawTracePointContext) -> Result<i64, u32> {
    Ok(ctx.arg::<i64>(1))
}

#[inline(always)]
fn user<T>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_user fails cleanly on a bad user address.
    unsafe { bpf_probe_read_user(addr as *const T) }.ok()
}

/// Copies up to 32 bytes of user memory; returns how many were copied.
#[inline(always)]
fn copy_user(dst: &mut [u8; 32], src: u64, len: u64) -> u8 {
    let n = if len > 32 { 32 } else { len as u32 };
    if n == 0 {
        return 0;
    }
    // SAFETY: n is 1..=32, the size of dst; the helper checks the user address.
    let rc = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_user(
            dst.as_mut_ptr().cast(),
            n,
            src as *const _,
        )
    };
    if rc == 0 {
        n as u8
    } else {
        0
    }
}

/// Reads a `struct sockaddr_in`/`sockaddr_in6` (include/uapi/linux/in.h, in6.h).
#[inline(always)]
fn read_sockaddr(ptr: u64) -> SockAddr {
    let mut out = SockAddr::empty();
    if ptr == 0 {
        return out;
    }
    let Some(family) = user::<u16>(ptr) else {
        return out;
    };
    let Some(port) = user::<u16>(ptr + 2) else {
        return out;
    };
    match family {
        AF_INET => {
            if let Some(v4) = user::<[u8; 4]>(ptr + 4) {
                out.addr[..4].copy_from_slice(&v4);
            }
        }
        AF_INET6 => {
            if let Some(v6) = user::<[u8; 16]>(ptr + 8) {
                out.addr = v6;
            }
        }
        _ => return out,
    }
    out.family = family;
    out.port = u16::from_be(port);
    out
}

/// Submits without waking userspace (it drains on a timer), unless the ring is half full.
#[inline(always)]
fn quiet_flags() -> u64 {
    let half = (config().ring_bytes / 2) as u64;
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) > half {
        0
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

#[inline(always)]
fn remember(kind: u8, fd: u32, ptr: u64, count: u64, addr: SockAddr) {
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
fn take_pending() -> Option<Pending> {
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

// ---- accept / accept4 ------------------------------------------------------------------

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
fn try_exit_accept(ctx: &RawTracePointContext, pending: Pending) -> Result<u32, u32> {
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
    open_conn(
        tgid,
        fd as u32,
        ROLE_CLIENT,
        PROTO_UNKNOWN,
        pending.fd,
        peer,
    );
    Ok(0)
}

#[inline(always)]
fn open_conn(tgid: u32, fd: u32, role: u8, proto: u8, listener_fd: u32, peer: SockAddr) {
    let key = ConnKey { tgid, fd };
    if CONNS
        .insert(&key, &ConnState::new(role, proto, fd), 0)
        .is_err()
    {
        bump(Counter::ConnsFull);
        return;
    }
    emit_flags(quiet_flags(), || ConnOpenEvent {
        header: header::<ConnOpenEvent>(EventKind::ConnOpen),
        tgid,
        fd,
        role,
        proto,
        _pad: [0; 2],
        listener_fd,
        peer,
        _pad2: [0; 4],
    });
}

// ---- connect ---------------------------------------------------------------------------

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
    let addr = read_sockaddr(arg(ctx, 1)?);
    if addr.family == 0 {
        return Ok(0); // not TCP/IP (e.g. a unix socket)
    }
    remember(IO_CONNECT, arg(ctx, 0)? as u32, 0, 0, addr);
    Ok(0)
}

#[inline(always)]
fn try_exit_connect(ctx: &RawTracePointContext, pending: Pending) -> Result<u32, u32> {
    let rc = ret(ctx)?;
    if rc != 0 && rc != -EINPROGRESS {
        return Ok(0);
    }
    let (tgid, _) = current_tgid_pid();
    let (role, proto) = classify_peer(&pending.addr);
    open_conn(tgid, pending.fd, role, proto, 0, pending.addr);
    Ok(0)
}

/// `db` when the peer is a named database address or on a database port.
#[inline(always)]
fn classify_peer(peer: &SockAddr) -> (u8, u8) {
    // SAFETY: the value is copied at once.
    if let Some(proto) = unsafe { DB_ADDRS.get(peer) } {
        return (ROLE_DB, *proto);
    }
    match DB_PORTS.get(peer.port as u32) {
        Some(slot) if *slot & DB_PORT_FLAG != 0 => (ROLE_DB, *slot & DB_PORT_PROTO_MASK),
        _ => (ROLE_UPSTREAM, PROTO_UNKNOWN),
    }
}

// ---- close -----------------------------------------------------------------------------

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
fn forget_fd(tgid: u32, fd: u32) {
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
fn emit_close(tgid: u32, fd: u32, state: &ConnState) {
    if state.request_in_flight != 0 {
        // The connection closed with a request in flight: it is over, unanswered.
        if let Some(target) = target(tgid) {
            let mut closed = *state;
            end_request(target, &mut closed, false);
        }
    }
    emit_flags(quiet_flags(), || ConnCloseEvent {
        header: header::<ConnCloseEvent>(EventKind::ConnClose),
        tgid,
        fd,
        role: state.role,
        proto: state.proto,
        request_in_flight: state.request_in_flight,
        _pad: [0; 5],
    });
}

/// The primary fd and state of the connection behind `fd` (itself, or what it duplicates).
#[inline(always)]
fn resolve(tgid: u32, fd: u32) -> Option<(u32, *mut ConnState)> {
    let entry = CONNS.get_ptr_mut(&ConnKey { tgid, fd })?;
    // SAFETY: a map value pointer, valid for this program run.
    let primary = unsafe { (*entry).primary };
    if primary == fd {
        return Some((fd, entry));
    }
    let state = CONNS.get_ptr_mut(&ConnKey { tgid, fd: primary })?;
    Some((primary, state))
}

// ---- dup, dup2, dup3, fcntl(F_DUPFD) ------------------------------------------------------

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
fn try_exit_dup(ctx: &RawTracePointContext, pending: Pending) -> Result<u32, u32> {
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

// ---- the data path ---------------------------------------------------------------------

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
            if state.request_in_flight != 0 {
                if let Some(target) = target(tgid) {
                    end_request(target, state, true);
                }
            }
            false
        }
        ROLE_CLIENT => state.request_in_flight == 0,
        ROLE_DB => true,
        ROLE_UPSTREAM => state.sniff_left > 0,
        _ => false,
    };
    if !wanted {
        return Ok(0);
    }
    if state.role == ROLE_CLIENT {
        // A request start needs only the fd: no buffer, no register reads.
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
fn exit_io(ctx: &RawTracePointContext, pending: Pending) -> Result<u32, u32> {
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
    match state.role {
        ROLE_CLIENT if !send && state.request_in_flight == 0 => {
            if let Some(target) = target(tgid) {
                start_request(target, state);
            }
        }
        ROLE_DB => jump_to_db_io(ctx, pending, moved as u64, tgid, send),
        ROLE_UPSTREAM if state.sniff_left > 0 => {
            state.sniff_left -= 1;
            jump_to_db_io(ctx, pending, moved as u64, tgid, send)
        }
        _ => {}
    }
    Ok(0)
}

#[inline(always)]
fn jump_to_db_io(ctx: &RawTracePointContext, pending: Pending, moved: u64, tgid: u32, send: bool) {
    let Some(slot) = DB_WORK.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot; the tail call below runs on the same CPU.
    unsafe {
        *slot = DbWork {
            pending,
            moved,
            tgid,
            send: send as u8,
            _pad: [0; 3],
            slot: 0,
            _pad2: 0,
        };
        // An index the verifier cannot know makes this an indirect tail call through the
        // map. With a constant index the JIT patches a direct jump instead, and on this
        // kernel that jump was seen to stay unpatched for a few hundred milliseconds after
        // attach: database traffic right after attach went unseen.
        let index = core::ptr::read_volatile(&(*slot).slot);
        // Does not return on success; on failure (not installed) the event is dropped,
        // which userspace sees as a probe failure at load time.
        JUMP.tail_call(ctx, index);
    }
    bump(Counter::DbIoMissed);
}

/// The database path: for a db connection, copy and redact the head/tail bytes and emit
/// them; for an upstream connection still being sniffed, look for a database handshake
/// first. Entered only by tail call from the syscall exits.
#[raw_tracepoint]
pub fn db_io(ctx: RawTracePointContext) -> u32 {
    let _ = ctx;
    bump(Counter::DbIoRuns);
    let Some(work) = DB_WORK.get_ptr(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot, written just before the tail call.
    let work = unsafe { *work };
    let key = ConnKey {
        tgid: work.tgid,
        fd: work.pending.fd,
    };
    let Some(state) = CONNS.get_ptr_mut(&key) else {
        return 0;
    };
    // SAFETY: a map value pointer, valid for this program run.
    let state = unsafe { &mut *state };
    let send = work.send != 0;
    let sniffing =
        state.role == ROLE_UPSTREAM || (state.role == ROLE_DB && state.proto == PROTO_UNKNOWN);
    if sniffing && state.sniff_left > 0 {
        if state.role == ROLE_DB {
            state.sniff_left -= 1;
        }
        let mut head = [0u8; 32];
        let (base, len) = head_span(&work.pending, work.moved);
        let n = copy_user(&mut head, base, len);
        // Mid-conversation messages count only where the handshake could not have been
        // seen, or where the user said this is a database.
        let midstream = state.flags & CONN_EXISTED != 0 || state.role == ROLE_DB;
        if let Some(proto) = recognize(&head, n, send, midstream, work.moved) {
            state.role = ROLE_DB;
            state.proto = proto;
            state.sniff_left = 0;
        }
    }
    if state.role != ROLE_DB {
        return 0;
    }
    db_io_event(work.tgid, &work.pending, state.proto, send, work.moved);
    0
}

/// Adds one to a counter that threads on other CPUs may be adding to as well (an atomic
/// add, `BPF_ATOMIC | BPF_ADD`).
#[inline(always)]
fn count(counter: *mut u64) {
    // SAFETY: a u64 inside a map value, 8-byte aligned, valid for this program run.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, 1) };
}

/// First bytes received on an idle client connection (DESIGN.md, "request in flight").
#[inline(always)]
fn start_request(target: *mut TargetInfo, state: &mut ConnState) {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    state.request_in_flight = 1;
    state.request_since_ns = now;
    // SAFETY: a map value pointer, valid for this program run.
    unsafe {
        count(&raw mut (*target).requests.started);
        (*target).requests.last_edge_ns = now;
    }
}

/// The server sent (`answered`) or the connection closed. A start of 0 is a request that
/// was already in flight at attach: it counts apart, and its latency is unknown.
#[inline(always)]
fn end_request(target: *mut TargetInfo, state: &mut ConnState, answered: bool) {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let since = state.request_since_ns;
    state.request_in_flight = 0;
    // SAFETY: a map value pointer, valid for this program run.
    unsafe {
        if since == 0 {
            count(&raw mut (*target).requests.existing_ended);
        } else {
            count(&raw mut (*target).requests.ended);
        }
        (*target).requests.last_edge_ns = now;
    }
    if answered && since != 0 {
        record_latency(now.saturating_sub(since) / 1000);
    }
}

#[inline(always)]
fn record_latency(us: u64) {
    let Some(histogram) = REQUEST_LATENCY.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's histogram; bucket() < LATENCY_MAX_SLOT, and the mask keeps the
    // verifier's view of the index inside the array. Syscall tracepoints may be preempted
    // (they are faultable since Linux 6.14), so another task's run on this CPU can
    // interleave: the add is atomic; the max is a plain store (at worst a max is missed).
    unsafe {
        let counts = &mut (*histogram).counts;
        let index = latency::bucket(us) & (latency::LATENCY_SLOTS - 1);
        count(&raw mut counts[index]);
        if us > counts[LATENCY_MAX_SLOT] {
            counts[LATENCY_MAX_SLOT] = us;
        }
    }
}

/// Where the first bytes of the syscall's data are: (address, bytes available there).
#[inline(always)]
fn head_span(pending: &Pending, moved: u64) -> (u64, u64) {
    match iovecs(pending) {
        None => (pending.ptr, moved),
        Some((iov, _)) => match user::<[u64; 2]>(iov) {
            Some([base, len]) => (base, if len < moved { len } else { moved }),
            None => (0, 0),
        },
    }
}

/// The iovec array and count of a vectored syscall (struct user_msghdr in
/// include/linux/socket.h: msg_iov at offset 16, msg_iovlen at 24).
#[inline(always)]
fn iovecs(pending: &Pending) -> Option<(u64, u64)> {
    match pending.kind {
        IO_READV | IO_WRITEV => Some((pending.ptr, pending.count)),
        IO_RECVMSG | IO_SENDMSG => {
            let iov = user::<u64>(pending.ptr + 16)?;
            let count = user::<u64>(pending.ptr + 24)?;
            Some((iov, count))
        }
        _ => None,
    }
}

/// Where the last bytes of the syscall's data are: (address just past them, bytes there).
#[inline(always)]
fn tail_span(pending: &Pending, moved: u64) -> (u64, u64) {
    let Some((iov, count)) = iovecs(pending) else {
        return (pending.ptr + moved, moved);
    };
    let mut left = moved;
    for i in 0..MAX_IOVECS {
        if (i as u64) >= count {
            break;
        }
        let Some([base, len]) = user::<[u64; 2]>(iov + 16 * i as u64) else {
            break;
        };
        if len >= left {
            return (base + left, left);
        }
        left -= len;
    }
    (0, 0)
}

/// Copies the last `len` (at most 32) bytes before `end` so that they end at index 31 of
/// the returned array; returns how many were copied.
#[inline(always)]
fn copy_tail(end: u64, len: u64, out: &mut [u8; TAIL_BYTES]) -> u8 {
    let Some(scratch) = TAIL_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    let n = if len > TAIL_BYTES as u64 {
        TAIL_BYTES as u32
    } else {
        len as u32
    };
    if n == 0 || end == 0 {
        return 0;
    }
    // SAFETY: this CPU's scratch slot; the destination [32 - n, 32) lies inside its 64 bytes,
    // and the helper checks the user address.
    let rc = unsafe {
        let dst = (scratch as *mut u8).add((TAIL_BYTES as u32 - n) as usize);
        aya_ebpf::helpers::generated::bpf_probe_read_user(
            dst.cast(),
            n,
            (end - n as u64) as *const _,
        )
    };
    if rc != 0 {
        return 0;
    }
    // SAFETY: the first 32 bytes of the slot; bytes before 32 - n are stale and are cleared by
    // the redaction, which never keeps more than the n copied bytes.
    unsafe { core::ptr::copy_nonoverlapping(scratch as *const u8, out.as_mut_ptr(), TAIL_BYTES) };
    n as u8
}

#[inline(always)]
fn db_io_event(tgid: u32, pending: &Pending, proto: u8, send: bool, moved: u64) {
    let (head_base, head_len) = head_span(pending, moved);
    let (tail_end, tail_avail) = tail_span(pending, moved);
    emit_flags(quiet_flags(), || {
        let mut event = DbIoEvent {
            header: header::<DbIoEvent>(EventKind::DbIo),
            tgid,
            fd: pending.fd,
            dir: if send { DIR_SEND } else { DIR_RECV },
            proto,
            head_len: 0,
            tail_len: 0,
            len: moved as u32,
            tail_off: 0,
            _pad: [0; 7],
            head: [0; HEAD_BYTES],
            tail: [0; TAIL_BYTES],
        };
        let copied_head = copy_user(&mut event.head, head_base, head_len);
        let copied_tail = copy_tail(tail_end, tail_avail, &mut event.tail);
        redact(&mut event, copied_head, copied_tail);
        event
    });
}

/// A database handshake in the first bytes of a connection on a non-database port:
/// PostgreSQL StartupMessage (protocol 3.0) / SSLRequest / GSSENCRequest
/// (https://www.postgresql.org/docs/current/protocol-message-formats.html), a RESP array
/// (Redis), or a MySQL/MariaDB server greeting (protocol 10). With `midstream`, also a
/// client message in the middle of a conversation: a PostgreSQL typed message whose length
/// fits the send, or a MySQL command packet (sequence 0) that is exactly the send.
#[inline(always)]
fn recognize(head: &[u8; 32], n: u8, send: bool, midstream: bool, moved: u64) -> Option<u8> {
    if send {
        if n >= 8 {
            let code = [head[4], head[5], head[6], head[7]];
            let pg = code == [0, 3, 0, 0]
                || (head[0..4] == [0, 0, 0, 8]
                    && (code == [0x04, 0xd2, 0x16, 0x2f] || code == [0x04, 0xd2, 0x16, 0x30]));
            if pg {
                return Some(PROTO_POSTGRES);
            }
        }
        if n >= 4 && head[0] == b'*' && head[1].is_ascii_digit() {
            return Some(PROTO_REDIS);
        }
        if midstream && n >= 5 {
            let pg_len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as u64;
            let pg_type = matches!(
                head[0],
                b'Q' | b'P' | b'B' | b'E' | b'S' | b'D' | b'C' | b'H' | b'X'
            );
            if pg_type && pg_len >= 4 && pg_len < (1 << 24) && pg_len < moved {
                return Some(PROTO_POSTGRES);
            }
            let my_len = head[0] as u64 | (head[1] as u64) << 8 | (head[2] as u64) << 16;
            if head[3] == 0 && my_len + 4 == moved && (0x01..=0x1f).contains(&head[4]) {
                return Some(PROTO_MYSQL);
            }
        }
    } else if n >= 6 && head[3] == 0 && head[4] == 0x0a && head[5].is_ascii_digit() {
        return Some(PROTO_MYSQL);
    }
    None
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

// ---- the two attached programs --------------------------------------------------------

/// Every syscall entry of every process comes here (raw_syscalls:sys_enter, whose
/// arguments are `struct pt_regs *` and the syscall number: include/trace/events/syscalls.h).
/// Other processes stop at the target bitmap; a target's syscall is handed to its program
/// in `ENTER_JUMP` (indexed by x86_64 syscall number; a syscall without one ends here).
/// One raw tracepoint instead of a syscall tracepoint per syscall: no perf record is built
/// for each hit, and the programs are attached with two links instead of two dozen.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn raw_sys_enter(ctx: RawTracePointContext) -> u32 {
    let (tgid, _) = current_tgid_pid();
    if !maybe_target(tgid) {
        return 0;
    }
    let nr: u64 = ctx.arg(1);
    if nr >= SYSCALL_SLOTS as u64 {
        return 0;
    }
    // SAFETY: a tail call does not return on success; on failure (no program for this
    // syscall) we simply end.
    unsafe {
        let _ = ENTER_JUMP.tail_call(&ctx, nr as u32);
    }
    0
}

/// Every syscall exit (raw_syscalls:sys_exit: `struct pt_regs *` and the return value).
/// Syscalls do not nest in a thread, so the pending record of this thread, if any, belongs
/// to the syscall now returning; its kind says what to do.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn raw_sys_exit(ctx: RawTracePointContext) -> u32 {
    let Some(pending) = take_pending() else {
        return 0;
    };
    let done = match pending.kind {
        IO_ACCEPT => try_exit_accept(&ctx, pending),
        IO_CONNECT => try_exit_connect(&ctx, pending),
        IO_DUP => try_exit_dup(&ctx, pending),
        _ => exit_io(&ctx, pending),
    };
    match done {
        Ok(r) | Err(r) => r,
    }
}
