//! The close of a target's unix-domain connection on the socket backend (docs/hooks.md).
//!
//! Unix sockets have no state tracepoint: their data passes `sock_send_length`/
//! `sock_recv_length` like any socket's, but nothing in the socket layer fires when a target
//! closes one (net/unix/af_unix.c `unix_release_sock` has no tracepoint; fentry on it is
//! what the fentry backend is for, and a syscall tracepoint on close(2) would put every
//! process of the host back on the syscall slow path). So userspace watches the fd: a
//! connection whose fd no longer names its socket (`/proc/PID/fd/N` -> `socket:[INODE]`)
//! while its process is alive and not exiting has been closed by the target, and is closed
//! in the state and the kernel's maps as the kernel would have. One whose process is
//! exiting is left to the exit event (`closed_by: exit`), as on every backend.
//!
//! Watched: the unix-domain connections the kernel opened (their inode comes with the open)
//! and the connections without an IP peer in the state (unix-domain ones found at attach),
//! whose inode is read at the first look. Seen within one drain tick (at most 50 ms), and
//! once more before the report. Not seen: a close and the reuse of the same fd for a socket
//! of the same inode (impossible: inodes are not reused while the old socket lives); a
//! socket whose name fd was closed while a duplicate keeps it open is taken as closed.

use std::collections::BTreeMap;

use probe_common::{ConnKey, FD_BY_INODE};

use crate::{
    events::{ConnClose, Event},
    host::{netstat, procfs},
    kernel::probe::Probe,
    model::state::AuditState,
};

/// include/linux/sched.h
const PF_EXITING: u64 = 0x4;

#[derive(Default)]
pub struct UnixCloseWatch {
    /// (tgid, fd) -> the socket's inode (0: not read yet).
    watched: BTreeMap<(u32, u32), u64>,
}

/// The socket inode an fd names now.
fn inode_of_fd(tgid: u32, fd: u32) -> Option<u64> {
    if fd & FD_BY_INODE != 0 {
        // Named by its inode (reached without an fd argument): any fd of it will do.
        let low = u64::from(fd & !FD_BY_INODE);
        return netstat::socket_fds(tgid)
            .into_iter()
            .map(|(_, inode)| inode)
            .find(|inode| inode & u64::from(!FD_BY_INODE) == low);
    }
    let link = std::fs::read_link(format!("/proc/{tgid}/fd/{fd}")).ok()?;
    link.to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Whether the process is alive and not exiting (proc(5): `flags` is the 9th field of
/// /proc/PID/stat, the state the 3rd). An exiting process's fds are closed by the exit.
fn running(tgid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{tgid}/stat")).is_ok_and(|stat| stat_running(&stat))
}

/// [`running`] on the text of /proc/PID/stat.
fn stat_running(stat: &str) -> bool {
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state_ok = fields
        .first()
        .is_some_and(|s| !matches!(*s, "Z" | "X" | "x"));
    let flags: u64 = fields
        .get(6)
        .and_then(|f| f.parse().ok())
        .unwrap_or(PF_EXITING);
    state_ok && flags & PF_EXITING == 0
}

impl UnixCloseWatch {
    /// A unix-domain connection the kernel opened (`events::ConnOpen::unix_inode`).
    pub fn opened(&mut self, tgid: u32, fd: u32, inode: u32) {
        self.watched.insert((tgid, fd), u64::from(inode));
    }

    /// Looks at every watched connection: the ones whose fd is gone. Call after the ring
    /// was drained, so that an exit already delivered wins; then drain it once more and
    /// [`UnixCloseWatch::close`] them (see there).
    pub fn gone(&mut self, state: &AuditState) -> Vec<(u32, u32)> {
        let Some(conns) = state.conns() else {
            return Vec::new();
        };
        let live: BTreeMap<(u32, u32), ()> = conns
            .conns()
            .map(|c| ((c.tgid, c.fd), c))
            .filter(|(key, c)| self.watched.contains_key(key) || c.peer.is_none())
            .map(|(key, _)| (key, ()))
            .collect();
        // Forget what the state closed (an exit, a kernel close) and watch the new ones.
        self.watched.retain(|key, _| live.contains_key(key));
        let mut closed = Vec::new();
        for key in live.keys() {
            let now = inode_of_fd(key.0, key.1);
            let known = self.watched.entry(*key).or_insert(0);
            match (now, *known) {
                (Some(inode), 0) => *known = inode,
                (Some(inode), was) if inode == was => {}
                // Gone, or the fd names another file now.
                _ => closed.push(*key),
            }
        }
        closed
    }

    /// Closes in `state` and `probe` the connections [`UnixCloseWatch::gone`] found, after
    /// the caller drained the ring again: the events of the I/O a target made on an fd
    /// before closing it are all in the ring once the fd is gone from /proc, and read after
    /// the close they would be taken for a connection of their own (seen in the 6.1 guest,
    /// where the kernel's events trail userspace's looks by more than on the host).
    pub fn close(
        &mut self,
        closed: Vec<(u32, u32)>,
        probe: &mut Probe,
        state: &mut AuditState,
        verbose: u8,
    ) {
        let ktime_ns = procfs::monotonic_now().as_nanos() as u64;
        for (tgid, fd) in closed {
            // Checked after the fd: a process that is exiting (or has) closes it by its exit,
            // and what the drain closed meanwhile (an exit event) is closed already.
            let still_open = state
                .conns()
                .is_some_and(|conns| conns.conns().any(|c| (c.tgid, c.fd) == (tgid, fd)));
            if !running(tgid) || !still_open {
                self.watched.remove(&(tgid, fd));
                continue;
            }
            self.watched.remove(&(tgid, fd));
            let key = ConnKey { tgid, fd };
            let event = Event::ConnClose(ConnClose {
                ktime_ns,
                tgid,
                fd,
                request_since_ns: probe.request_since(key).map(|since| since.unwrap_or(0)),
                request_uncounted: true,
                push: probe
                    .conn_flags(key)
                    .is_some_and(|flags| flags & probe_common::CONN_PUSH != 0),
            });
            if verbose >= 2 {
                super::trace::event(&event);
            }
            log::debug!("unix-domain connection fd {fd} of {tgid} closed (gone from /proc)");
            state.apply(&event);
            probe.remove_conns(&[key]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::stat_running;

    #[test]
    fn exiting_and_dead_processes_are_left_to_their_exit_event() {
        // pid (comm) state ppid pgrp session tty_nr tpgid flags ...
        let stat = |state: &str, flags: u64| {
            format!("123 (py (x) y) {state} 1 123 123 0 -1 {flags} 0 0 0 0 1 2 0 0 20 0 1 0")
        };
        assert!(stat_running(&stat("S", 0x400000)));
        assert!(stat_running(&stat("R", 0x400100)));
        assert!(!stat_running(&stat("S", 0x400004)), "PF_EXITING");
        assert!(!stat_running(&stat("Z", 0x400000)));
        assert!(!stat_running("garbage"));
    }
}
