//! The backstop of a run's end: a target whose process has ended is recorded as exited even
//! when no exit event says so. The kernel's `sched_process_exit` record is the rule
//! (reader.rs); this look makes sure that whatever else happens (the record among lost
//! events, a pid the state took for a process that was a thread, a process gone before the
//! kernel followed it) a target that died, by SIGKILL or otherwise, ends an audit, a `wait`
//! and a `stop` (docs/design.md, "exited").
//!
//! Each running target is watched through a pidfd (pidfd_open(2)), opened at its first look:
//! it cannot be fooled by a pid reused since, and it reads as ended only once the whole
//! thread group has exited (kernel/pid.c, `pidfd_poll`: `thread_group_exited`), after the
//! last thread's `sched_process_exit` put the exit record in the ring. `/proc/PID/stat` is
//! the fallback where no pidfd can be had (a task id that is no process's). A target found
//! ended is recorded only at a second look, after the ring was read in between: a record
//! committed on another CPU is read first, and always wins.

use std::collections::{BTreeSet, HashMap};

use crate::host::{pidfd::PidFd, procfs};

/// The pidfds of the targets looked at, and those found ended at the previous look.
#[derive(Default)]
pub(super) struct ExitWatch {
    /// `None`: no pidfd could be opened for it (gone already, or a task id).
    pidfds: HashMap<u32, Option<PidFd>>,
    /// Found ended at the previous look, not yet recorded.
    suspects: BTreeSet<u32>,
}

impl ExitWatch {
    /// Which of `running` (the targets the state still has running) have ended for the
    /// second look in a row; the caller reads the ring between two calls.
    pub(super) fn ended(&mut self, running: &[u32]) -> Vec<u32> {
        self.pidfds.retain(|tgid, _| running.contains(tgid));
        let ended: BTreeSet<u32> = running
            .iter()
            .copied()
            .filter(|tgid| {
                let pidfd = self
                    .pidfds
                    .entry(*tgid)
                    .or_insert_with(|| PidFd::open(*tgid).ok());
                match pidfd {
                    Some(pidfd) => pidfd.exited(),
                    None => procfs::has_ended(*tgid),
                }
            })
            .collect();
        let confirmed = ended.intersection(&self.suspects).copied().collect();
        self.suspects = ended;
        confirmed
    }
}
