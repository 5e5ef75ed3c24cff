//! Taking the probe down after drainwatch has exited, so that whoever waits for drainwatch
//! (a shell, systemd, a release script over 100 servers) does not wait for the kernel.
//!
//! Closing the probe's links is what takes time: each tracepoint's perf event, released,
//! waits for an RCU grace period under the kernel's event mutex, one after the other (about
//! 1.4 s for 24 tracepoints; measured in docs/bench.md). Closing them at exit would not help:
//! an exiting process releases its files itself (exit_files, then the task work that runs
//! the releases, both before the parent is told), so its exit waits just as long. Instead a
//! forked child holds a copy of every fd: drainwatch's own closes then only drop references,
//! and the child, once drainwatch has fully exited (its pidfd readable: every thread gone,
//! every file put), exits too, and the kernel takes everything down in the child's exit.
//! Nothing stays attached: the last holder of each link is gone a moment later
//! (tests/tests/cleanup.rs counts the programs).

use std::io::Write;

/// Forks the child that will hold the probe's fds until this process has exited. `true`:
/// the caller must not close the probe (leave it to the exit); `false` (no pidfd, no fork):
/// close it as usual.
pub fn hand_over_to_exit() -> bool {
    // Whatever is buffered goes out now: the child never writes, and closes its copies of
    // stdin, stdout and stderr first (a pipe's reader sees the end when drainwatch exits).
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: pidfd_open(2) on our own pid, no flags.
    let me = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
    if me < 0 {
        return false;
    }
    let me = me as libc::c_int;
    // SAFETY: fork(2); the child only makes async-signal-safe system calls and _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        // SAFETY: our own fd.
        unsafe { libc::close(me) };
        return false;
    }
    if pid == 0 {
        // SAFETY: child side: close(2), poll(2), _exit(2) only.
        unsafe {
            for fd in 0..3 {
                libc::close(fd);
            }
            let mut parent = libc::pollfd {
                fd: me,
                events: libc::POLLIN,
                revents: 0,
            };
            // Readable once drainwatch has exited; EINTR: ask again.
            while libc::poll(&mut parent, 1, -1) < 0 {}
            libc::_exit(0);
        }
    }
    // The pidfd stays open until exit: the child polls its own copy.
    true
}
