//! Operations in CPython 3.11 (`--op` on a Python target, docs/design.md "operation"): two
//! uprobes at the interpreter's USDT markers `function__entry` and `function__return`,
//! attached by userspace per target process with the markers' semaphores raised by the
//! kernel (probe-user/src/kernel/ops/python.rs). Every Python function of the target
//! passes these two points; the entry keeps the ones `PY_OP_NAMES` names.
//!
//! At both markers the interpreter frame is in RBX (userspace decodes the marker functions
//! to check this before attaching), the file name in RBP and the function name in R12
//! (the markers' own argument list, `8@%rbp 8@%r12 -4@%eax`).
//!
//! A call is keyed by its frame (`OP_GO_CALLS`, see `OpGoKey`): CPython 3.11 fires the
//! entry marker at every RESUME, which is a function's start (oparg 0) and every resumption
//! of a coroutine or generator after a yield or an await (oparg > 0), and the return marker
//! at every RETURN_VALUE, YIELD_VALUE and unwinding exception (Python/ceval.c). So a call
//! starts at RESUME 0, a return at YIELD_VALUE is a suspension (the coroutine's operation
//! goes on, awaiting), and any other return ends it: a coroutine is one operation from its
//! first entry to its final return, not one per `await`. Names are read only at the entry;
//! a return costs one lookup by frame.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        bpf_probe_read_user_str_bytes,
    },
    macros::{map, uprobe},
    maps::{HashMap, PerCpuArray},
    programs::ProbeContext,
};
use probe_common::{
    ops::{OpCall, OpGoKey, MAX_OP_FUNCTIONS},
    ops::py::{py311, PyOpName, PY_FILE_LEN, PY_NAME_LEN},
    Counter,
};

use crate::{
    ops::{ended, started, OP_GO_CALLS},
    shared::bump,
};

/// The `--op` functions of Python targets, by name. Written by userspace only.
#[map]
static PY_OP_NAMES: HashMap<[u8; PY_NAME_LEN], PyOpName> =
    HashMap::with_max_entries(MAX_OP_FUNCTIONS, 0);

/// The file name of the call at hand (too big for the stack next to the name).
#[map]
static PY_FILE: PerCpuArray<[u8; PY_FILE_LEN]> = PerCpuArray::with_max_entries(1, 0);

/// The opcode and oparg of the instruction the frame's `prev_instr` points at.
#[inline(always)]
fn prev_instruction(frame: u64) -> Result<(u16, u16), u32> {
    // SAFETY: bpf_probe_read_user fails cleanly on a bad user address.
    let prev: u64 = unsafe {
        bpf_probe_read_user((frame + py311::FRAME_PREV_INSTR) as *const u64).map_err(|_| 0u32)?
    };
    // SAFETY: as above; a code unit is a little-endian (opcode, oparg) byte pair.
    let unit: u16 = unsafe { bpf_probe_read_user(prev as *const u16).map_err(|_| 0u32)? };
    Ok((unit & 0xff, unit >> 8))
}

/// Whether the file name at `file` ends in `want`'s suffix, at the start of a path part
/// (`game.py` matches `/srv/game.py`, not `/srv/mygame.py`).
#[inline(always)]
fn file_ends_with(file: u64, want: &PyOpName) -> bool {
    let Some(buf) = PY_FILE.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's scratch buffer, for this program run.
    let buf = unsafe { &mut *buf };
    // SAFETY: reads at most PY_FILE_LEN bytes, NUL-terminated; fails cleanly.
    let Ok(read) = (unsafe { bpf_probe_read_user_str_bytes(file as *const u8, buf) }) else {
        return false;
    };
    let len = read.len();
    let want_len = want.suffix_len as usize;
    if want_len > len || want_len > PY_NAME_LEN {
        return false;
    }
    let start = len - want_len;
    const MASK: usize = PY_FILE_LEN - 1;
    // Every one of the PY_NAME_LEN places is compared, those past the suffix masked out,
    // with no exit that depends on its length: a loop that stopped at `want_len` was
    // compiled into a count from -want_len up to 0 (`!= 0`), whose end Linux 5.10's verifier
    // cannot see from a range, so it walked the pointer off the stack ("invalid read from
    // stack R2 off=0 size=1"); a count to a constant is exact on every kernel.
    let mut differ = 0u8;
    for i in 0..PY_NAME_LEN {
        let inside = 0u8.wrapping_sub(u8::from(i < want_len));
        differ |= (buf[(start + i) & MASK] ^ want.suffix[i]) & inside;
    }
    differ == 0 && (start == 0 || buf[(start - 1) & MASK] == b'/')
}

#[inline(always)]
fn try_py_entry(ctx: &ProbeContext) -> Result<u32, u32> {
    // SAFETY: the context is the task's saved registers.
    let (frame, file, name) = unsafe { ((*ctx.regs).rbx, (*ctx.regs).rbp, (*ctx.regs).r12) };
    let mut key = [0u8; PY_NAME_LEN];
    // SAFETY: reads at most PY_NAME_LEN bytes, NUL-terminated; the rest stays zero.
    unsafe { bpf_probe_read_user_str_bytes(name as *const u8, &mut key) }.map_err(|_| 0u32)?;
    // SAFETY: copied at once.
    let Some(want) = (unsafe { PY_OP_NAMES.get(&key) }).copied() else {
        return Ok(0);
    };
    if want.suffix_len > 0 && !file_ends_with(file, &want) {
        return Ok(0);
    }
    let (opcode, oparg) = prev_instruction(frame)?;
    // A resumption after a yield or an await (oparg > 0), or a throw() into a suspended
    // coroutine (the entry fires with the frame still at its YIELD_VALUE): the call began
    // at its RESUME 0, and is in flight already if that was seen.
    if !(opcode == py311::RESUME || opcode == py311::RESUME_QUICK) || oparg != 0 {
        return Ok(0);
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let call = OpCall {
        since_ns: now,
        function: want.function,
        depth: 1,
    };
    let key = OpGoKey {
        tgid,
        _pad: 0,
        g: frame,
    };
    if OP_GO_CALLS.insert(&key, &call, BPF_NOEXIST as u64).is_err() {
        bump(Counter::OpsMissed);
        return Ok(0);
    }
    started(tgid, want.function, now)
}

#[inline(always)]
fn try_py_return(ctx: &ProbeContext) -> Result<u32, u32> {
    // SAFETY: the context is the task's saved registers.
    let frame = unsafe { (*ctx.regs).rbx };
    let key = OpGoKey {
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        _pad: 0,
        g: frame,
    };
    // SAFETY: copied at once. Most returns are of other functions: they end here.
    let Some(call) = (unsafe { OP_GO_CALLS.get(&key) }).copied() else {
        return Ok(0);
    };
    // An unreadable frame leaves the call in flight: it holds the drain, never a false
    // clean.
    let (opcode, _) = prev_instruction(frame)?;
    if opcode == py311::YIELD_VALUE {
        // Suspended at a yield or an await: the coroutine's operation goes on.
        return Ok(0);
    }
    let _ = OP_GO_CALLS.remove(&key);
    ended(key.tgid, &call)
}

/// CPython's `function__entry` marker (python:function__entry).
#[uprobe]
pub fn op_py_entry(ctx: ProbeContext) -> u32 {
    match try_py_entry(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

/// CPython's `function__return` marker (python:function__return): a plain uprobe, since
/// the marker sits inside the interpreter's own function, not the Python one's.
#[uprobe]
pub fn op_py_return(ctx: ProbeContext) -> u32 {
    match try_py_return(&ctx) {
        Ok(r) | Err(r) => r,
    }
}
