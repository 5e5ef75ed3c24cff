//! Reading a syscall from a raw tracepoint: its arguments (from `struct pt_regs`), its return
//! value, and the user memory its pointers name.

use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, bpf_probe_read_user},
    programs::RawTracePointContext,
};
use probe_common::SockAddr;

pub(super) const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// Where the syscall arguments are in `struct pt_regs` on x86_64: di, si, dx, r10, r8, r9
/// (arch/x86/include/asm/ptrace.h; the syscall ABI in arch/x86/entry/entry_64.S).
const ARG_OFFSETS: [u64; 6] = [112, 104, 96, 56, 72, 64];

/// Syscall argument `n` (a constant at every call site), read from the `pt_regs` that
/// raw_syscalls:sys_enter passes as its first argument.
#[inline(always)]
pub(super) fn arg(ctx: &RawTracePointContext, n: usize) -> Result<u64, u32> {
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
pub(super) fn ret(ctx: &RawTracePointContext) -> Result<i64, u32> {
    Ok(ctx.arg::<i64>(1))
}

#[inline(always)]
pub(super) fn user<T>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_user fails cleanly on a bad user address.
    unsafe { bpf_probe_read_user(addr as *const T) }.ok()
}

/// Copies up to 32 bytes of user memory; returns how many were copied.
#[inline(always)]
pub(super) fn copy_user(dst: &mut [u8; 32], src: u64, len: u64) -> u8 {
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

/// The sockaddr at `ptr` is a unix-domain one (`AF_UNIX`, include/uapi/linux/un.h): the
/// peer of a local database reached through its socket file (PostgreSQL's `.s.PGSQL.5432`,
/// `mysqld.sock`).
#[inline(always)]
pub(super) fn is_unix_sockaddr(ptr: u64) -> bool {
    ptr != 0 && user::<u16>(ptr) == Some(AF_UNIX)
}

/// Reads a `struct sockaddr_in`/`sockaddr_in6` (include/uapi/linux/in.h, in6.h).
#[inline(always)]
pub(super) fn read_sockaddr(ptr: u64) -> SockAddr {
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
