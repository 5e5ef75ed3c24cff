//! Whether a process runs an event loop: an epoll instance among its open files
//! (`anon_inode:[eventpoll]`, fs/eventpoll.c). Such a server may answer a request and go on
//! with work it scheduled (a timer, a future), which no socket shows (docs/design.md,
//! "drained": the verdict's basis names it).

/// True when `/proc/PID/fd` holds an epoll instance; false when it holds none or cannot be
/// read (a process that is gone has no loop to hide work in).
pub fn runs_event_loop(pid: u32) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(|entry| entry.ok())
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .any(|target| target.as_os_str() == "anon_inode:[eventpoll]")
}

#[cfg(test)]
mod tests {
    use super::runs_event_loop;

    #[test]
    fn an_epoll_instance_is_an_event_loop() {
        // SAFETY: epoll_create1 with no flags; the fd is closed below.
        let fd = unsafe { libc::epoll_create1(0) };
        assert!(fd >= 0, "epoll_create1");
        assert!(runs_event_loop(std::process::id()));
        // SAFETY: our own fd.
        unsafe { libc::close(fd) };
        assert!(!runs_event_loop(u32::MAX), "no such process: no loop");
    }
}
