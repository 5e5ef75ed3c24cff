//! A signal a program takes synchronously instead of through a handler: a thread waiting in
//! sigwait(3) (rt_sigtimedwait(2)) with the signal in its set, or a signalfd(2) whose mask
//! holds it, the signal blocked everywhere else. /proc/PID/status alone calls that
//! "not handled" or "blocked": while a thread waits in rt_sigtimedwait the kernel takes the
//! waited signals out of its blocked mask (kernel/signal.c, do_sigtimedwait: `blocked &=
//! ~these`, the old mask kept in `real_blocked`, which /proc does not show), and no handler
//! is installed; yet the signal is no fatal default action then (kernel/signal.c,
//! complete_signal: `sig_fatal` only when the chosen thread's `real_blocked` lacks it), it
//! is the program's own shutdown (a C++ server's main thread in sigwait, tests/fixtures/
//! game_ops.cpp).

use std::os::unix::fs::FileExt;

/// rt_sigtimedwait's number on x86_64 (arch/x86/entry/syscalls/syscall_64.tbl).
const RT_SIGTIMEDWAIT: u64 = 128;

/// Whether `signal` sent to `tgid` is taken by one of its threads waiting for it (sigwait)
/// or read from a signalfd, with every other thread blocking it, so that no thread gets
/// its default action.
pub fn taken_synchronously(tgid: u32, signal: i32) -> bool {
    let bit = 1u64 << (signal - 1);
    let mut waiting = false;
    for tid in super::procfs::threads(tgid) {
        match super::blocked::blocked_syscall(tgid, tid) {
            Some((RT_SIGTIMEDWAIT, [set, ..]))
                if read_u64(tgid, set).is_some_and(|s| s & bit != 0) =>
            {
                waiting = true;
            }
            _ => {
                let status = std::fs::read_to_string(format!("/proc/{tgid}/task/{tid}/status"));
                if !status.is_ok_and(|s| mask(&s, "SigBlk:").is_some_and(|m| m & bit != 0)) {
                    return false;
                }
            }
        }
    }
    waiting || signalfd_holds(tgid, bit)
}

/// The first 8 bytes of the sigset at `addr` in `tgid`'s memory (the 64 classic and
/// real-time signals of x86_64's kernel sigset_t); `None` when unreadable.
fn read_u64(tgid: u32, addr: u64) -> Option<u64> {
    let mem = std::fs::File::open(format!("/proc/{tgid}/mem")).ok()?;
    let mut bytes = [0u8; 8];
    mem.read_exact_at(&mut bytes, addr).ok()?;
    Some(u64::from_ne_bytes(bytes))
}

/// Whether one of `tgid`'s fds is a signalfd whose mask has `bit` (fdinfo's `sigmask:`,
/// fs/signalfd.c, signalfd_show_fdinfo).
fn signalfd_holds(tgid: u32, bit: u64) -> bool {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{tgid}/fdinfo")) else {
        return false;
    };
    dir.flatten().any(|entry| {
        std::fs::read_to_string(entry.path())
            .is_ok_and(|info| mask(&info, "sigmask:").is_some_and(|m| m & bit != 0))
    })
}

/// A hex mask line (`SigBlk:\t0000000000004000`) of a /proc text.
pub fn mask(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_hex_masks() {
        let status = "Name:\tx\nSigBlk:\t0000000000004000\nSigIgn:\t0\n";
        assert_eq!(mask(status, "SigBlk:"), Some(0x4000));
        assert_eq!(mask(status, "SigCgt:"), None);
        assert_eq!(
            mask("pos:\t0\nsigmask:\t0000000000000a00\n", "sigmask:"),
            Some(0xa00)
        );
    }

    /// A forked child that blocks SIGUSR2 and waits for it in sigwait (one thread: the
    /// fork of a test thread) takes SIGUSR2 synchronously, not SIGUSR1; SIGUSR2 then ends
    /// its wait and it exits 0.
    #[test]
    fn a_child_in_sigwait_takes_its_signal() {
        // SAFETY: the child only calls async-signal-safe functions (sigprocmask, sigwait's
        // rt_sigtimedwait, _exit) before it exits.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork");
        if child == 0 {
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGUSR2);
                libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                let mut sig = 0;
                libc::sigwait(&set, &mut sig);
                libc::_exit(if sig == libc::SIGUSR2 { 0 } else { 1 });
            }
        }
        let tgid = child as u32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while super::super::blocked::blocked_syscall(tgid, tgid).map(|(nr, _)| nr)
            != Some(RT_SIGTIMEDWAIT)
        {
            assert!(std::time::Instant::now() < deadline, "child never waited");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let usr2 = taken_synchronously(tgid, libc::SIGUSR2);
        let usr1 = taken_synchronously(tgid, libc::SIGUSR1);
        // SAFETY: kill and waitpid on our own child.
        let status = unsafe {
            libc::kill(child, libc::SIGUSR2);
            let mut status = 0;
            libc::waitpid(child, &mut status, 0);
            status
        };
        assert!(usr2, "SIGUSR2 is waited for");
        assert!(!usr1, "SIGUSR1 is not");
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
}
