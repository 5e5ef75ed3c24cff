//! TLS in plaintext: uprobes on OpenSSL's `SSL_write`, `SSL_read`, `SSL_write_ex` and
//! `SSL_read_ex` (in a shared libssl, or statically linked into a binary such as node),
//! attached by userspace per target process (probe-user/src/kernel/tls.rs).
//!
//! At entry the call's `SSL *`, buffer and length (or the `_ex` out-pointer) are kept per
//! thread; at return the plaintext the call moved goes down the same database path as a
//! socket's bytes ([`super::db::db_tls`]), with the same kernel redaction: nothing more
//! leaves the kernel than for a plaintext connection.
//!
//! Which connection an `SSL *` speaks on (https://docs.openssl.org/3.0/man3/SSL_read/):
//! - a socket BIO (libpq, CPython's `ssl` as used by PyMySQL and asyncpg) does its
//!   send/recv *inside* the SSL call, on the same thread: the socket hooks report it here
//!   ([`socket_io`]) and the pair is kept in `SSL_CONNS`;
//! - a memory BIO (node's TLSWrap) receives the ciphertext on the socket first and then
//!   calls `SSL_read` on the same thread (also to drive the handshake, before any
//!   `SSL_write`): an `SSL *` not yet known takes the thread's last database receive.
//!
//! Once a connection is read through these hooks (`CONN_TLS`), its socket bytes are
//! ciphertext: the socket hooks no longer hand them to the database path.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{map, uprobe, uretprobe},
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
};
use probe_common::{
    ConnKey, ConnState, Counter, Pending, SockAddr, CONN_TLS, IO_READ, IO_WRITE, MAX_CONNS,
    MAX_PENDING, ROLE_DB, ROLE_UPSTREAM,
};

use super::{conns::CONNS, db::db_tls, syscall::user};
use crate::shared::{bump, is_target};

/// No connection learned (yet) during a call.
const NO_FD: u32 = u32::MAX;

/// An SSL call in progress on a thread, from uprobe to uretprobe.
#[repr(C)]
#[derive(Clone, Copy)]
struct TlsCall {
    ssl: u64,
    buf: u64,
    /// `_ex` variants: where the library writes the byte count (`size_t *`).
    out: u64,
    /// The connection a socket send/recv inside the call went to; `NO_FD` if none.
    fd: u32,
    write: u8,
    ex: u8,
    _pad: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct SslKey {
    ssl: u64,
    tgid: u32,
    _pad: u32,
}

/// SSL calls in progress, by thread (`pid_tgid`). LRU: a thread that dies inside a call
/// must not pin an entry.
#[map]
static TLS_CALLS: LruHashMap<u64, TlsCall> = LruHashMap::with_max_entries(MAX_PENDING, 0);

/// The connection (primary fd) of each `SSL *` seen, by process. LRU, and checked at
/// every use against `CONNS`: a freed `SSL *` whose address is reused for another
/// connection is learned again from its socket I/O.
#[map]
static SSL_CONNS: LruHashMap<SslKey, u32> = LruHashMap::with_max_entries(MAX_CONNS, 0);

/// The last database connection each target thread received on outside an SSL call (for
/// memory-BIO libraries, whose `SSL_read` follows the socket recv).
#[map]
static LAST_RECV: LruHashMap<u64, u32> = LruHashMap::with_max_entries(MAX_PENDING, 0);

/// Called by the socket hooks (syscall exits in io.rs, the socket backend in sock_tp.rs)
/// for a send/recv on a database (or sniffed upstream) connection `fd` (its primary fd) of
/// the current thread. Returns true when the bytes are ciphertext of a TLS conversation
/// read through the hooks: the caller must not parse them.
#[inline(always)]
pub(super) fn socket_io(fd: u32, state: &mut ConnState, send: bool) -> bool {
    let id = bpf_get_current_pid_tgid();
    if let Some(call) = TLS_CALLS.get_ptr_mut(&id) {
        // Inside SSL_read/SSL_write on this thread: a socket BIO at work.
        // SAFETY: a map value pointer, valid for this program run; only this thread uses it.
        unsafe { (*call).fd = fd };
        state.flags |= CONN_TLS;
        return true;
    }
    if !send {
        let _ = LAST_RECV.insert(&id, &fd, 0);
    }
    state.flags & CONN_TLS != 0
}

#[inline(always)]
fn enter(ctx: &ProbeContext, write: bool, ex: bool) -> u32 {
    let id = bpf_get_current_pid_tgid();
    if !is_target((id >> 32) as u32) {
        return 0;
    }
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    let buf: u64 = ctx.arg(1).unwrap_or(0);
    let out: u64 = if ex { ctx.arg(3).unwrap_or(0) } else { 0 };
    let call = TlsCall {
        ssl,
        buf,
        out,
        fd: NO_FD,
        write: write as u8,
        ex: ex as u8,
        _pad: [0; 2],
    };
    let _ = TLS_CALLS.insert(&id, &call, 0);
    0
}

#[inline(always)]
fn exit(ctx: &RetProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: copied before the entry is removed.
    let Some(call) = (unsafe { TLS_CALLS.get(&id) }).copied() else {
        return 0;
    };
    let _ = TLS_CALLS.remove(&id);
    let tgid = (id >> 32) as u32;
    let ret: i64 = ctx.ret::<i32>() as i64;
    let write = call.write != 0;
    let Some(fd) = conn_of(id, tgid, &call, write) else {
        if ret > 0 {
            bump(Counter::TlsUnmatched);
        }
        return 0;
    };
    // SSL_read/SSL_write return the bytes moved (<= 0: nothing, or an error to retry);
    // the _ex variants return 1 and store the count.
    let moved = if call.ex != 0 {
        if ret != 1 {
            return 0;
        }
        user::<u64>(call.out).unwrap_or(0)
    } else if ret > 0 {
        ret as u64
    } else {
        return 0;
    };
    if moved == 0 {
        return 0;
    }
    let pending = Pending {
        kind: if write { IO_WRITE } else { IO_READ },
        _pad: [0; 3],
        fd,
        ptr: call.buf,
        count: 0,
        addr: SockAddr::empty(),
        _pad2: [0; 4],
    };
    db_tls(tgid, &pending, write, moved);
    0
}

/// The connection of this call's `SSL *`: learned inside the call, known from before, or
/// (reads only) the thread's last database receive. Marks it `CONN_TLS`.
#[inline(always)]
fn conn_of(id: u64, tgid: u32, call: &TlsCall, write: bool) -> Option<u32> {
    let key = SslKey {
        ssl: call.ssl,
        tgid,
        _pad: 0,
    };
    let mut learn = call.fd;
    if learn == NO_FD {
        // SAFETY: copied at once.
        if let Some(fd) = unsafe { SSL_CONNS.get(&key) }.copied() {
            if let Some(state) = db_conn(tgid, fd) {
                // SAFETY: a map value pointer, valid for this program run.
                if unsafe { (*state).flags } & CONN_TLS != 0 {
                    return Some(fd);
                }
            }
        }
        if write {
            return None;
        }
        // SAFETY: copied at once.
        learn = unsafe { LAST_RECV.get(&id) }.copied()?;
    }
    let state = db_conn(tgid, learn)?;
    // SAFETY: a map value pointer, valid for this program run.
    unsafe { (*state).flags |= CONN_TLS };
    let _ = SSL_CONNS.insert(&key, &learn, 0);
    Some(learn)
}

/// A database (or sniffed upstream) connection of `tgid`.
#[inline(always)]
fn db_conn(tgid: u32, fd: u32) -> Option<*mut ConnState> {
    let state = CONNS.get_ptr_mut(&ConnKey { tgid, fd })?;
    // SAFETY: a map value pointer, valid for this program run.
    let role = unsafe { (*state).role };
    (role == ROLE_DB || role == ROLE_UPSTREAM).then_some(state)
}

#[uprobe]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    enter(&ctx, true, false)
}

#[uprobe]
pub fn ssl_write_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, true, true)
}

#[uprobe]
pub fn ssl_read(ctx: ProbeContext) -> u32 {
    enter(&ctx, false, false)
}

#[uprobe]
pub fn ssl_read_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, false, true)
}

/// One return program for all four: the entry recorded which call it was.
#[uretprobe]
pub fn ssl_return(ctx: RetProbeContext) -> u32 {
    exit(&ctx)
}
