//! The syscall backend, the last resort (docs/hooks.md): `raw_syscalls:sys_enter`/
//! `sys_exit`, handing each watched syscall of a target to its own program through a
//! dispatch table (probe-ebpf's syscall programs; docs/how-it-sees.md). Attaching anything
//! there puts every task of the host on the syscall slow path while drainwatch runs.

use aya::{
    maps::ProgramArray,
    programs::{ProgramFd, RawTracePoint},
    Ebpf,
};

use super::descriptor::Backend;
use crate::{
    kernel::{
        attach::{self, load_error},
        features,
        links::Links,
    },
    Error, Result,
};

pub static SYSCALLS: Backend = Backend {
    word: "syscalls",
    coverage: "syscalls",
    describe: "raw_syscalls sys_enter/sys_exit (the last-resort hook: every process's system \
               calls take the tracepoint slow path while drainwatch runs)",
    by_socket: false,
    tracepoints: &features::RAW_SYSCALL_TRACEPOINTS,
    // Its tracepoints are essentials wherever sockets are watched (kernel/features.rs,
    // `require_essentials`): nothing more to lack.
    missing: |_| None,
    attach: attach_all,
};

/// The program each watched syscall of a target is handed to by `raw_sys_enter`, with the
/// x86_64 syscall numbers it serves (arch/x86/entry/syscalls/syscall_64.tbl). Their exits
/// all go through `raw_sys_exit`.
const ENTER_PROGRAMS: [(&str, &[u32]); 13] = [
    ("sys_enter_read", &[0]),
    ("sys_enter_write", &[1]),
    ("sys_enter_close", &[3]),
    ("sys_enter_readv", &[19]),
    ("sys_enter_writev", &[20]),
    ("sys_enter_dup", &[32, 33, 292]), // dup, dup2, dup3
    ("sys_enter_connect", &[42]),
    ("sys_enter_accept", &[43, 288]), // accept, accept4
    ("sys_enter_sendto", &[44]),
    ("sys_enter_recvfrom", &[45]),
    ("sys_enter_sendmsg", &[46]),
    ("sys_enter_recvmsg", &[47]),
    ("sys_enter_fcntl", &[72]),
];

/// The two programs attached to raw_syscalls (include/trace/events/syscalls.h), by the
/// tracepoint each attaches to.
const RAW_PROGRAMS: [(&str, &str); 2] =
    [("raw_sys_enter", "sys_enter"), ("raw_sys_exit", "sys_exit")];

/// Attaches it. A program that does not load or attach is recorded in `failures` (the
/// verdict becomes `incomplete`), except permission, which fails the load.
fn attach_all(ebpf: &mut Ebpf, links: &mut Links, failures: &mut Vec<String>) -> Result<()> {
    if let Err(err) = install_db_io(ebpf) {
        failures.push(format!("db_io: {err}"));
    }
    // The dispatch table first: a raw_sys_enter attached before it would miss the first
    // syscalls.
    for (program, numbers) in ENTER_PROGRAMS {
        if let Err(err) = install_enter_program(ebpf, program, numbers) {
            log::warn!("probe {program} failed: {err}");
            failures.push(format!("raw_syscalls:{program}: {err}"));
        }
    }
    for (program, tracepoint) in RAW_PROGRAMS {
        if let Err(err) = attach::raw_tracepoint(ebpf, program, tracepoint, links) {
            if matches!(err, Error::NotPermitted) {
                return Err(err);
            }
            log::warn!("probe raw_syscalls:{tracepoint} failed: {err}");
            failures.push(format!("raw_syscalls:{tracepoint}: {err}"));
        }
    }
    Ok(())
}

/// Loads a tail-called program and returns its fd.
fn load_tail(ebpf: &mut Ebpf, name: &str) -> Result<ProgramFd> {
    let program: &mut RawTracePoint = ebpf
        .program_mut(name)
        .ok_or_else(|| Error::Load(format!("no program {name} in the object")))?
        .try_into()
        .map_err(load_error)?;
    program.load().map_err(load_error)?;
    program
        .fd()
        .map_err(load_error)?
        .try_clone()
        .map_err(load_error)
}

/// Loads a syscall's program and puts it in the dispatch table under its numbers.
fn install_enter_program(ebpf: &mut Ebpf, name: &str, numbers: &[u32]) -> Result<()> {
    let fd = load_tail(ebpf, name)?;
    let map = ebpf
        .map_mut("ENTER_JUMP")
        .ok_or_else(|| Error::Load("no ENTER_JUMP map in the object".into()))?;
    let mut table = ProgramArray::try_from(map).map_err(load_error)?;
    for &nr in numbers {
        table.set(nr, &fd, 0).map_err(load_error)?;
    }
    Ok(())
}

/// Loads the database path program and puts it where the syscall exits tail-call it.
fn install_db_io(ebpf: &mut Ebpf) -> Result<()> {
    let fd = load_tail(ebpf, "db_io")?;
    let map = ebpf
        .map_mut("JUMP")
        .ok_or_else(|| Error::Load("no JUMP map in the object".into()))?;
    let mut jump = ProgramArray::try_from(map).map_err(load_error)?;
    jump.set(0, &fd, 0).map_err(load_error)
}
