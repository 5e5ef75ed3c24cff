//! The database path: a program of its own (`db_io`), tail-called from the syscall exits,
//! that copies the first and last bytes of a database send/recv, redacts them and emits them.
//! Query text and payloads never leave the kernel (probe-common's `redact`).

use aya_ebpf::{
    macros::{map, raw_tracepoint},
    maps::{PerCpuArray, ProgramArray},
    programs::RawTracePointContext,
};
use probe_common::{
    redact::{apply, keep},
    ConnKey, Counter, DbIoEvent, EventKind, Pending, CONN_EXISTED, DIR_RECV, DIR_SEND, HEAD_BYTES,
    IO_READV, IO_RECVMSG, IO_SENDMSG, IO_WRITEV, PROTO_UNKNOWN, ROLE_DB, ROLE_UPSTREAM, TAIL_BYTES,
};

use super::{
    conns::CONNS,
    recognize::recognize,
    syscall::{copy_user, user},
};
use crate::shared::{bump, emit_copy, header, quiet_flags};

/// The database path (copy, redact, emit) runs as its own program, reached by a tail call
/// from the syscall exits: the verifier checks it once instead of inside each of the eight
/// exit programs, where the combined branches exceed its budget.
#[map]
pub static JUMP: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// What the exit program hands to `db_io` across the tail call (one slot per CPU; the
/// tail call runs on the same CPU without preemption).
#[map]
static DB_WORK: PerCpuArray<DbWork> = PerCpuArray::with_max_entries(1, 0);

/// The database event being built (one per CPU): see `db_io_event`.
#[map]
static DB_EVENT: PerCpuArray<DbIoEvent> = PerCpuArray::with_max_entries(1, 0);

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
    /// Plaintext of a TLS write (tls.rs), not the syscall's own bytes.
    tls: u8,
    _pad: [u8; 2],
    /// The JUMP slot, read back from the map so that the verifier sees an unknown index.
    slot: u32,
    _pad2: u32,
}

/// Most iovecs walked to find where the bytes of a readv/writev/recvmsg/sendmsg ended.
const MAX_IOVECS: u32 = 8;

#[inline(always)]
pub(super) fn jump_to_db_io(
    ctx: &RawTracePointContext,
    pending: Pending,
    moved: u64,
    tgid: u32,
    send: bool,
    tls: bool,
) {
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
            tls: tls as u8,
            _pad: [0; 2],
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
    // SAFETY: this CPU's slot, written just before the tail call; read in place, not
    // copied: a copy on the stack put the chain db_io -> db_io_event over the verifier's
    // 512-byte combined stack limit on Linux 6.1 (its rounding is stricter).
    let work = unsafe { &*work };
    db_path(
        work.tgid,
        &work.pending,
        work.send != 0,
        work.moved,
        work.tls != 0,
    );
    0
}

/// The database path run in place, by the socket backend (its `tp_btf` programs cannot
/// tail-call into this raw tracepoint program: a program array holds one program type).
/// `pending.fd` is the connection's primary fd.
#[inline(always)]
pub(super) fn db_inline(tgid: u32, pending: &Pending, send: bool, moved: u64, tls: bool) {
    bump(Counter::DbIoRuns);
    db_path(tgid, pending, send, moved, tls);
}

/// The database path for plaintext read inside a TLS library call (the uprobes of
/// [`super::tls`]): `pending.ptr` is the caller's plaintext buffer, `pending.fd` the
/// connection's primary fd. The same redaction applies.
#[inline(always)]
pub(super) fn db_tls(tgid: u32, pending: &Pending, send: bool, moved: u64) {
    bump(Counter::DbIoRuns);
    db_path(tgid, pending, send, moved, true);
}

#[inline(always)]
fn db_path(tgid: u32, pending: &Pending, send: bool, moved: u64, tls: bool) {
    let key = ConnKey {
        tgid,
        fd: pending.fd,
    };
    let Some(state) = CONNS.get_ptr_mut(&key) else {
        return;
    };
    // SAFETY: a map value pointer, valid for this program run.
    let state = unsafe { &mut *state };
    let sniffing =
        state.role == ROLE_UPSTREAM || (state.role == ROLE_DB && state.proto == PROTO_UNKNOWN);
    if sniffing && state.sniff_left > 0 {
        if state.role == ROLE_DB {
            state.sniff_left -= 1;
        }
        let mut head = [0u8; 32];
        let (base, len) = head_span(pending, moved);
        let n = copy_user(&mut head, base, len);
        // Mid-conversation messages count only where the handshake could not have been
        // seen, or where the user said this is a database.
        let midstream = state.flags & CONN_EXISTED != 0 || state.role == ROLE_DB;
        if let Some(proto) = recognize(&head, n, send, midstream, moved) {
            // The send that started a call on it was a database's (calls.rs): its queries
            // are followed by the protocol rules from here.
            if state.role == ROLE_UPSTREAM {
                super::calls::undo_call(tgid, state);
            }
            state.role = ROLE_DB;
            state.proto = proto;
            state.sniff_left = 0;
        }
    }
    if state.role != ROLE_DB {
        return;
    }
    dw_db_io_event(
        (tgid as u64) << 32 | pending.fd as u64,
        pending.kind as u64 | (state.proto as u64) << 8 | (send as u64) << 16 | (tls as u64) << 24,
        pending.ptr,
        pending.count,
        moved,
    );
}

// Global BPF functions (`dw_*`). The verifier checks a global function (linkage global in
// the object's BTF: `#[unsafe(no_mangle)]`, never inlined) once, by itself, from its
// signature, instead of once for every state its caller reaches it in. Inlined whole, the
// database path made `sock_send_length`/`sock_recv_length` 143k/130k verified instructions
// and `ssl_return` 153k, most of the attach time (docs/bench.md, "Attach and detach").
// It is cut where its paths multiply: after the sniffing ([`dw_db_io_event`]) and after
// the protocol rules have decided what to keep ([`dw_db_apply_emit`]: the 64 masks and
// the emit once, not once per rule path).
// Arguments are integers only (packed): pointers from the caller are not accepted by the
// older kernels (Linux 5.6-5.11 take scalars and the context; kernel/bpf/btf.c
// `btf_prepare_func_args`), and the syscall hooks' `db_io` calls these on 5.10.

/// [`db_io_event`] out of line: `key` = tgid << 32 | fd, `bits` = kind | proto << 8 |
/// send << 16 | tls << 24, `ptr`/`count` the pending I/O's buffer, `moved` the bytes moved.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn dw_db_io_event(key: u64, bits: u64, ptr: u64, count: u64, moved: u64) -> u32 {
    let pending = Pending {
        kind: bits as u8,
        _pad: [0; 3],
        fd: key as u32,
        ptr,
        count,
        addr: probe_common::SockAddr::empty(),
        _pad2: [0; 4],
    };
    let (send, tls) = ((bits >> 16) & 1 != 0, (bits >> 24) & 1 != 0);
    db_io_event(
        (key >> 32) as u32,
        &pending,
        (bits >> 8) as u8,
        send,
        moved,
        tls,
    );
    0
}

/// Where the first bytes of the syscall's data are: (address, bytes available there).
#[inline(always)]
pub(super) fn head_span(pending: &Pending, moved: u64) -> (u64, u64) {
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
    // The offset is masked into [0, 31] before it touches the pointer: otherwise LLVM may
    // emit `scratch - n + 32`, whose intermediate negative offset the verifier refuses as an
    // unbounded access (seen once this path was inlined into the TLS uretprobe).
    // A volatile round trip hides the value from LLVM (which otherwise folds the mask away,
    // knowing n's range); the mask after it gives the verifier its bounds.
    let offset = TAIL_BYTES as u32 - n;
    // SAFETY: a read of a local just written.
    let offset = (unsafe { core::ptr::read_volatile(&offset) } & (TAIL_BYTES as u32 - 1)) as usize;
    // SAFETY: this CPU's scratch slot; the destination [offset, offset + n) = [32 - n, 32)
    // lies inside its 64 bytes, and the helper checks the user address.
    let rc = unsafe {
        let dst = (scratch as *mut u8).add(offset);
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
fn db_io_event(tgid: u32, pending: &Pending, proto: u8, send: bool, moved: u64, tls: bool) {
    let (head_base, head_len) = head_span(pending, moved);
    let (tail_end, tail_avail) = tail_span(pending, moved);
    // Built in this CPU's slot, not on the stack: inlined into a socket backend program
    // (sock_tp.rs), a stack copy of the event made the combined stack of its calls 560
    // bytes, over the verifier's 512 on 6.12 (6.18 let it pass).
    let Some(event) = DB_EVENT.get_ptr_mut(0) else {
        bump(Counter::Lost);
        return;
    };
    // SAFETY: this CPU's slot; a BPF program is not preempted on its CPU.
    let event = unsafe { &mut *event };
    event.header = header::<DbIoEvent>(EventKind::DbIo);
    event.tgid = tgid;
    event.fd = pending.fd;
    event.dir = if send { DIR_SEND } else { DIR_RECV };
    event.proto = proto;
    event.head_len = 0;
    event.tail_len = 0;
    event.len = moved as u32;
    event.tail_off = 0;
    event.tls = tls as u8;
    event._pad = [0; 6];
    event.head = [0; HEAD_BYTES];
    event.tail = [0; TAIL_BYTES];
    let copied_head = copy_user(&mut event.head, head_base, head_len);
    let copied_tail = copy_tail(tail_end, tail_avail, &mut event.tail);
    // The protocol rules here, where the verifier (and LLVM) know that at most 32 bytes
    // were copied from each end: Linux 5.10's verifier could not bound their byte indexes
    // from an integer argument. The masks and the emit out of line.
    let (head, tail) = keep(event, copied_head, copied_tail);
    dw_db_apply_emit(head as u64, tail as u64);
}

/// Keeps the first `head` and last `tail` bytes of the event in this CPU's `DB_EVENT` slot
/// (what [`keep`] decided; at most 32 each, as copied), clears the rest and emits it.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn dw_db_apply_emit(head: u64, tail: u64) -> u32 {
    let Some(event) = DB_EVENT.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot; a BPF program is not preempted on its CPU.
    let event = unsafe { &mut *event };
    // The verifier sees any integer: bounded here, a no-op for keep()'s values.
    let head = if head > HEAD_BYTES as u64 {
        HEAD_BYTES as u8
    } else {
        head as u8
    };
    let tail = if tail > TAIL_BYTES as u64 {
        TAIL_BYTES as u8
    } else {
        tail as u8
    };
    apply(event, head, tail);
    emit_copy(quiet_flags(), event);
    0
}
