//! Signalling a process: a pidfd (pidfd_open(2), pidfd_send_signal(2)), so that a signal
//! meant for a target can never reach another process that reused its pid; and what a
//! process does with a signal, read from the masks of /proc/PID/status (proc(5)).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use serde::Serialize;

use crate::{Error, Result};

/// A pidfd: signals sent through it cannot reach another process that reused the pid.
pub struct PidFd(OwnedFd);

impl PidFd {
    pub fn open(pid: u32) -> Result<Self> {
        // SAFETY: pidfd_open(2) with a plain pid and no flags.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(Error::NoSuchProcess(pid));
        }
        // SAFETY: a fresh fd we own.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// Whether the process has exited: every thread of it, a zombie or reaped (a pidfd
    /// polls readable then, kernel/pid.c `pidfd_poll`). Never blocks.
    pub fn exited(&self) -> bool {
        let mut poll = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll(2) on one pollfd we own, no wait.
        let n = unsafe { libc::poll(&mut poll, 1, 0) };
        n > 0 && poll.revents & (libc::POLLIN | libc::POLLHUP) != 0
    }

    /// Sends `sig`; `false` when the process is already gone.
    pub fn signal(&self, sig: i32) -> bool {
        // SAFETY: pidfd_send_signal(2) on our pidfd, no siginfo.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        rc == 0
    }
}

/// What a process does with a signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    /// A handler is installed: the signal starts the program's own shutdown.
    Handled,
    /// Ignored: the signal does nothing.
    Ignored,
    /// Blocked: the signal waits until the program unblocks it.
    Blocked,
    /// Default action: for TERM, INT, QUIT the kernel terminates it at once, like kill -9.
    Default,
}

/// A signal's disposition from the hex signal masks of /proc/PID/status.
pub fn signal_disposition(status: &str, signal: i32) -> Option<Disposition> {
    let mask = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
    };
    let bit = 1u64 << (signal - 1);
    let (caught, ignored, blocked) = (mask("SigCgt:")?, mask("SigIgn:")?, mask("SigBlk:")?);
    Some(if ignored & bit != 0 {
        Disposition::Ignored
    } else if blocked & bit != 0 {
        Disposition::Blocked
    } else if caught & bit != 0 {
        Disposition::Handled
    } else {
        Disposition::Default
    })
}

/// A running process's disposition of `signal` (a signal its threads take through sigwait
/// or a signalfd counts as handled); `None` when it is gone.
pub fn disposition_of(pid: u32, signal: i32) -> Option<Disposition> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    match signal_disposition(&status, signal)? {
        // No handler, yet a thread waits for it in sigwait or reads it from a signalfd:
        // the program's own shutdown, not the kernel's default action (host/sigwait.rs).
        // Even ignored (SIG_IGN inherited, as a shell gives a background job's SIGINT):
        // a signal blocked or waited for is never dropped as ignored (kernel/signal.c,
        // sig_ignored).
        Disposition::Default | Disposition::Blocked | Disposition::Ignored
            if super::sigwait::taken_synchronously(pid, signal) =>
        {
            Some(Disposition::Handled)
        }
        found => Some(found),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(cgt: &str, ign: &str, blk: &str) -> String {
        format!("Name:\tx\nSigBlk:\t{blk}\nSigIgn:\t{ign}\nSigCgt:\t{cgt}\n")
    }

    #[test]
    fn reads_the_sigterm_bit() {
        // SIGTERM is signal 15: bit 14, 0x4000.
        let term = libc::SIGTERM;
        let handled = status("0000000000004000", "0", "0");
        assert_eq!(
            signal_disposition(&handled, term),
            Some(Disposition::Handled)
        );
        let default = status("0000000000000002", "0", "0");
        assert_eq!(
            signal_disposition(&default, term),
            Some(Disposition::Default)
        );
        let ignored = status("0", "0000000000004000", "0");
        assert_eq!(
            signal_disposition(&ignored, term),
            Some(Disposition::Ignored)
        );
        let blocked = status("0000000000004000", "0", "0000000000004000");
        assert_eq!(
            signal_disposition(&blocked, term),
            Some(Disposition::Blocked)
        );
        assert_eq!(signal_disposition("Name:\tx\n", term), None);
        // nginx 1.22's master (Debian nginx-light), read from /proc: it catches QUIT
        // (signal 3, bit 2: 0x4) and TERM (0x4000), and ignores SIGPIPE.
        let nginx = status("0000000018016a07", "0000000040001000", "0");
        assert_eq!(
            signal_disposition(&nginx, libc::SIGQUIT),
            Some(Disposition::Handled)
        );
    }
}
