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
//!   `SSL_write`): an `SSL *` not yet known takes the thread's last database receive. Its
//!   `SSL_write` returns before the ciphertext is sent (TLSWrap::EncOut, same thread, at
//!   once): a write whose `SSL *` is not yet known (a connection opened before attach) is
//!   held ([`DEFERRED`]) and handed to the database path at the thread's next database
//!   send, within [`DEFER_NS`], which also ties the `SSL *` to that connection.
//!
//! Once a connection is read through these hooks (`CONN_TLS`), its socket bytes are
//! ciphertext: the socket hooks no longer hand them to the database path.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, uprobe, uretprobe},
    maps::{Array, LruHashMap},
    programs::{ProbeContext, RetProbeContext},
};
use probe_common::{
    ConnKey, ConnState, Pending, SockAddr, CONN_TLS, CONN_TLS_SEEN, IO_READ, IO_WRITE, MAX_CONNS,
    MAX_PENDING, ROLE_DB, ROLE_UPSTREAM,
};

use super::{conns::CONNS, db::db_tls, syscall::user};
use crate::shared::is_target;

/// Slot 0 is 1 once userspace hooked a TLS library in some target: only then do the socket
/// hooks pay for what the guesses below need (a look at the first bytes of database I/O,
/// the thread's last receive on any connection).
#[map]
static TLS_ON: Array<u32> = Array::with_max_entries(1, 0);

#[inline(always)]
fn tls_on() -> bool {
    TLS_ON.get(0).is_some_and(|v| *v != 0)
}

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

/// A plaintext write held for the thread's next database send.
#[repr(C)]
#[derive(Clone, Copy)]
struct Deferred {
    ssl: u64,
    buf: u64,
    moved: u64,
    at_ns: u64,
}

/// Held writes, by thread (`pid_tgid`).
#[map]
static DEFERRED: LruHashMap<u64, Deferred> = LruHashMap::with_max_entries(MAX_PENDING, 0);

/// How long a held write waits for its ciphertext to be sent; later sends are not taken
/// for it (they may belong to another connection).
const DEFER_NS: u64 = 20_000_000;

/// What the socket hooks do with the bytes of a database send/recv.
pub(super) enum SocketBytes {
    /// Plaintext: parse them.
    Parse,
    /// Ciphertext of a conversation read through the SSL hooks: not parsed.
    Skip,
    /// Ciphertext carrying a held `SSL_write` (node): parse that write's plaintext
    /// (`buf`, `moved` bytes) instead, as TLS plaintext.
    Held { buf: u64, moved: u64 },
}

/// Called by the socket hooks for a send/recv on a connection that is not a database's
/// (a client's): it is the thread's last receive, or its send takes no held write (an
/// HTTPS server's own TLS must never be taken for a database's).
#[inline(always)]
pub(super) fn other_io(fd: u32, send: bool) {
    if !tls_on() {
        return;
    }
    let id = bpf_get_current_pid_tgid();
    // Looked up before written: this runs on every client request edge of a TLS-hooked
    // target, where an LRU delete takes the bucket lock even when there is nothing to
    // delete, and an insert takes a fresh element from the LRU lists each time; a lookup
    // takes neither, and a thread's entry usually holds this fd already.
    if send {
        // SAFETY: presence check only.
        if unsafe { DEFERRED.get(&id) }.is_some() {
            let _ = DEFERRED.remove(&id);
        }
    } else {
        match LAST_RECV.get_ptr_mut(&id) {
            // SAFETY: a map value pointer, valid for this program run; only this thread
            // (the key) writes it.
            Some(last) => unsafe {
                if *last != fd {
                    *last = fd;
                }
            },
            None => {
                let _ = LAST_RECV.insert(&id, &fd, 0);
            }
        }
    }
}

/// Called by the socket hooks (syscall exits in io.rs, the socket backend in sock_tp.rs)
/// for a send/recv on a database (or sniffed upstream) connection `fd` (its primary fd) of
/// the current thread, whose first bytes are at `head` (user memory; 0: unknown): whether
/// to parse them (see [`SocketBytes`]).
#[inline(always)]
pub(super) fn socket_io(fd: u32, state: &mut ConnState, send: bool, head: u64) -> SocketBytes {
    if !tls_on() {
        return SocketBytes::Parse;
    }
    if state.flags & (CONN_TLS | CONN_TLS_SEEN) == 0 && looks_like_tls(head) {
        state.flags |= CONN_TLS_SEEN;
    }
    let id = bpf_get_current_pid_tgid();
    if let Some(call) = TLS_CALLS.get_ptr_mut(&id) {
        // Inside SSL_read/SSL_write on this thread: a socket BIO at work.
        // SAFETY: a map value pointer, valid for this program run; only this thread uses it.
        unsafe { (*call).fd = fd };
        state.flags |= CONN_TLS;
        return SocketBytes::Skip;
    }
    if !send {
        let _ = LAST_RECV.insert(&id, &fd, 0);
    } else if let Some(held) = take_held(id, state.flags & (CONN_TLS | CONN_TLS_SEEN) != 0) {
        let _ = SSL_CONNS.insert(
            &SslKey {
                ssl: held.ssl,
                tgid: (id >> 32) as u32,
                _pad: 0,
            },
            &fd,
            0,
        );
        state.flags |= CONN_TLS;
        return SocketBytes::Held {
            buf: held.buf,
            moved: held.moved,
        };
    }
    if state.flags & CONN_TLS != 0 {
        SocketBytes::Skip
    } else {
        SocketBytes::Parse
    }
}

/// A TLS record header (content type 20..=23, major version 3): a handshake, alert,
/// change-cipher-spec or application-data record (RFC 8446 section 5.1).
#[inline(always)]
fn looks_like_tls(head: u64) -> bool {
    if head == 0 {
        return false;
    }
    matches!(user::<[u8; 2]>(head), Some([20..=23, 3]))
}

/// The thread's held write, if recent enough and `tls_conn` (the send goes to a connection
/// that carries TLS); taken either way.
#[inline(always)]
fn take_held(id: u64, tls_conn: bool) -> Option<Deferred> {
    // SAFETY: copied before the entry is removed.
    let held = unsafe { DEFERRED.get(&id) }.copied()?;
    let _ = DEFERRED.remove(&id);
    if !tls_conn {
        return None;
    }
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    (now.wrapping_sub(held.at_ns) < DEFER_NS).then_some(held)
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
    // SSL_read/SSL_write return the bytes moved (<= 0: nothing, or an error to retry);
    // the _ex variants return 1 and store the count.
    let moved = if call.ex != 0 {
        if ret == 1 {
            user::<u64>(call.out).unwrap_or(0)
        } else {
            0
        }
    } else if ret > 0 {
        ret as u64
    } else {
        0
    };
    let Some(fd) = conn_of(id, tgid, &call, write) else {
        // Reads of another TLS connection (a client's) land here too: not counted as lost.
        if moved > 0 && write {
            hold(id, &call, moved);
        }
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

/// Holds a write whose connection is not known yet for the thread's next send. One that no
/// database send takes was another connection's (a TLS client's, an HTTPS upstream's).
#[inline(always)]
fn hold(id: u64, call: &TlsCall, moved: u64) {
    let held = Deferred {
        ssl: call.ssl,
        buf: call.buf,
        moved,
        // SAFETY: no preconditions.
        at_ns: unsafe { bpf_ktime_get_ns() },
    };
    let _ = DEFERRED.insert(&id, &held, 0);
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
        // A guess: only a connection that carries TLS.
        let state = db_conn(tgid, learn)?;
        // SAFETY: a map value pointer, valid for this program run.
        if unsafe { (*state).flags } & (CONN_TLS | CONN_TLS_SEEN) == 0 {
            return None;
        }
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
