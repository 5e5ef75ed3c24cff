//! What a thread is blocked in now, from /proc/TGID/task/PID/syscall (proc(5): `nr arg1 ..
//! arg6 sp pc` in hex, or `running` / `-1 ...` when not in a syscall): the socket syscalls
//! a target's threads already waited in at attach, whose sys_enter the probe never saw, and
//! whether a process waits for input.

/// A thread's syscall in progress: its number and first three arguments; `None` when it is
/// running, blocked outside a syscall, or gone.
pub fn blocked_syscall(tgid: u32, pid: u32) -> Option<(u64, [u64; 3])> {
    let text = std::fs::read_to_string(format!("/proc/{tgid}/task/{pid}/syscall")).ok()?;
    parse(&text)
}

/// [`blocked_syscall`] on the text of the file.
fn parse(text: &str) -> Option<(u64, [u64; 3])> {
    let mut words = text.split_whitespace();
    let nr: u64 = words.next()?.parse().ok()?;
    let mut args = [0u64; 3];
    for arg in &mut args {
        *arg = u64::from_str_radix(words.next()?.trim_start_matches("0x"), 16).ok()?;
    }
    Some((nr, args))
}

/// x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl) of the socket syscalls
/// the probe follows, and what the probe calls them (`probe_common::IO_*`).
pub fn io_kind(nr: u64) -> Option<u8> {
    Some(match nr {
        0 => probe_common::IO_READ,
        1 => probe_common::IO_WRITE,
        19 => probe_common::IO_READV,
        20 => probe_common::IO_WRITEV,
        43 | 288 => probe_common::IO_ACCEPT,
        44 => probe_common::IO_SENDTO,
        45 => probe_common::IO_RECVFROM,
        46 => probe_common::IO_SENDMSG,
        47 => probe_common::IO_RECVMSG,
        _ => return None,
    })
}

/// Whether syscall `nr` receives (read, readv, recvfrom, recvmsg).
pub fn is_recv(nr: u64) -> bool {
    matches!(
        io_kind(nr),
        Some(
            probe_common::IO_READ
                | probe_common::IO_READV
                | probe_common::IO_RECVFROM
                | probe_common::IO_RECVMSG
        )
    )
}

/// Whether the thread waits in epoll_wait, epoll_pwait or epoll_pwait2 (x86_64).
pub fn in_epoll_wait(tgid: u32, pid: u32) -> bool {
    blocked_syscall(tgid, pid).is_some_and(|(nr, _)| matches!(nr, 232 | 281 | 441))
}

/// Threads of `tgid` blocked in a receive on one of `fds` now.
pub fn threads_reading(tgid: u32, fds: &[u32]) -> Vec<u32> {
    super::procfs::threads(tgid)
        .into_iter()
        .filter_map(|pid| blocked_syscall(tgid, pid))
        .filter(|(nr, args)| is_recv(*nr) && fds.contains(&(args[0] as u32)))
        .map(|(_, args)| args[0] as u32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_syscall_file() {
        assert_eq!(
            parse("45 0x7 0x7ffd1000 0x4000 0x0 0x0 0x0 0x7ffd0f00 0x7f001234\n"),
            Some((45, [7, 0x7ffd_1000, 0x4000]))
        );
        assert_eq!(parse("running\n"), None);
        assert_eq!(parse("-1 0x7ffd0f00 0x7f001234\n"), None);
        assert!(is_recv(45) && is_recv(0) && !is_recv(1) && !is_recv(232));
    }
}
