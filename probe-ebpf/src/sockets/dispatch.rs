//! The two attached programs: every syscall entry and exit of every process comes through
//! them; a target's entry is handed to its hook by syscall number, and its exit to the hook
//! that the pending syscall's kind names.

use aya_ebpf::{
    macros::{map, raw_tracepoint},
    maps::ProgramArray,
    programs::RawTracePointContext,
};
use probe_common::{IO_ACCEPT, IO_CONNECT, IO_DUP, SYSCALL_SLOTS};

use super::{
    dup::try_exit_dup,
    io::exit_io,
    open::{try_exit_accept, try_exit_connect},
    pending::take_pending,
};
use crate::shared::{current_tgid_pid, maybe_target};

/// The program for each syscall a target makes that matters here, by x86_64 syscall number
/// (filled in by userspace).
#[map]
pub static ENTER_JUMP: ProgramArray = ProgramArray::with_max_entries(SYSCALL_SLOTS, 0);

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
