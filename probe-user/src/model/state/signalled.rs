//! Signals to targets: the live view's recent signals, the targets told to end (followed
//! to their exit), SIGKILL violations; and the targets a signal makes. `audit -- CMD`
//! follows what the command signals (docs/design.md, "Command line"): the kernel makes the
//! receiver of a signal from the launched command's tree a target at that signal
//! (probe-ebpf/src/lifecycle.rs) and says so in the event (`followed`); here the state
//! takes it in. The session has surveyed it first when it was still there
//! (session/follow.rs); one already gone (a SIGKILL acts in microseconds) is taken in from
//! the event alone, so that its SIGKILL and its exit are still told.

use super::{AuditState, Origin, SignalSeen, RECENT_SIGNALS};
use crate::{
    events::signals,
    events::Signal,
    model::report::{SigkillViolation, SignalledBy, Violation},
};

impl AuditState {
    pub(super) fn on_signal(&mut self, signal: &Signal) {
        // A signal to one task is no proof that an unresolved fork child is a process: the
        // Go runtime preempts each of its threads with a tgkill(SIGURG), and a thread made
        // just before its process was killed is gone before userspace can look it up. Taken
        // for a process, such a thread became a target that never exits (no exit event is
        // a thread's), and an audit of a Go server killed with -9 never ended (issue #22's
        // CI run at f208da0). Held until the child's own exit proves it a process.
        if !signal.group {
            if let Some(child) = self.unresolved_children.get_mut(&signal.target_pid) {
                child.held.push(signal.clone());
                return;
            }
        }
        let Some(tgid) = self
            .target_of(signal.target_pid)
            .or_else(|| self.follow(signal))
        else {
            return;
        };
        if signal.followed {
            self.note_sender(tgid, signal);
        }
        if self.recent_signals.len() == RECENT_SIGNALS {
            self.recent_signals.pop_front();
        }
        self.recent_signals.push_back(SignalSeen {
            at_ms: self.at_ms(signal.ktime_ns),
            pid: tgid,
            signal: signals::name(signal.sig),
            sender_tgid: signal.sender_tgid,
            sender_comm: signal.sender_comm.clone(),
        });
        if signals::asks_to_end(signal.sig) {
            self.told_to_end.insert(tgid);
            self.first_end_signal
                .get_or_insert_with(|| (signals::name(signal.sig), signal.ktime_ns));
        }
        if signal.sig != libc::SIGKILL {
            return;
        }
        let violation = SigkillViolation {
            pid: tgid,
            at_ms: self.at_ms(signal.ktime_ns),
            sender_pid: signal.sender_pid,
            sender_tgid: signal.sender_tgid,
            sender_comm: signal.sender_comm.clone(),
            sender_cmdline: signal.sender_cmdline.clone(),
            by_kernel: signals::generated_by_kernel(signal.code),
            by_drainwatch: signal.sender_tgid == self.self_tgid,
        };
        self.violations.push(Violation::Sigkill(violation));
    }

    /// Whether a task (a process or one of its threads) is a target already.
    pub fn knows(&self, pid: u32) -> bool {
        self.targets.contains_key(&pid) || self.threads.contains_key(&pid)
    }

    /// A receiver the kernel followed that the session could not survey: a target from the
    /// event's own words (the receiver's comm is the tracepoint's).
    pub(super) fn follow(&mut self, signal: &Signal) -> Option<u32> {
        if !signal.followed {
            return None;
        }
        let origin = Origin::Signalled {
            by: signal.sender_tgid,
        };
        self.add_target(signal.target_pid, signal.target_comm.clone(), origin);
        Some(signal.target_pid)
    }

    /// Who made `tgid` a target, kept from the signal that did.
    pub(super) fn note_sender(&mut self, tgid: u32, signal: &Signal) {
        let sender = self
            .targets
            .get(&signal.sender_tgid)
            .map(|t| t.comm.clone())
            .unwrap_or_else(|| signal.sender_comm.clone());
        let Some(target) = self.targets.get_mut(&tgid) else {
            return;
        };
        if !matches!(target.origin, Origin::Signalled { .. }) || target.signalled_by.is_some() {
            return;
        }
        target.signalled_by = Some(SignalledBy {
            pid: signal.sender_tgid,
            comm: sender,
            signal: signals::name(signal.sig),
        });
    }
}

#[cfg(test)]
mod tests {
    use crate::{
        events::{Event, Exit, Signal},
        model::{
            report::{Mode, Verdict, Violation},
            state::{AuditState, Origin},
        },
    };

    const ATTACH_NS: u64 = 1_000_000_000;
    const SCRIPT: u32 = 500;
    const SERVER: u32 = 900;

    fn signal(sig: i32, followed: bool, t_ms: u64) -> Event {
        Event::Signal(Signal {
            ktime_ns: ATTACH_NS + t_ms * 1_000_000,
            target_pid: SERVER,
            sender_tgid: SCRIPT,
            sender_pid: SCRIPT,
            sender_comm: "release.sh".into(),
            sender_cmdline: None,
            sig,
            code: 0,
            result: 0,
            group: true,
            followed,
            target_comm: "nginx".into(),
        })
    }

    fn exit(status: u32, t_ms: u64) -> Event {
        Event::Exit(Exit {
            ktime_ns: ATTACH_NS + t_ms * 1_000_000,
            tgid: SERVER,
            comm: "nginx".into(),
            wait_status: Some(status),
            busy_fds: Vec::new(),
        })
    }

    fn launched() -> AuditState {
        let mut state = AuditState::new(ATTACH_NS, 1);
        state.add_target(SCRIPT, "release.sh".into(), Origin::Launched);
        state
    }

    #[test]
    fn a_sigkill_to_a_server_never_named_is_a_violation_naming_both() {
        let mut state = launched();
        state.apply(&signal(libc::SIGKILL, true, 10));
        state.apply(&exit(libc::SIGKILL as u32, 11));
        let report = state.report(Mode::Audit, 0, Vec::new());
        assert_eq!(report.verdict, Verdict::Violations);
        let [Violation::Sigkill(kill)] = report.violations.as_slice() else {
            panic!("one sigkill expected: {:?}", report.violations)
        };
        assert_eq!((kill.pid, kill.sender_tgid), (SERVER, SCRIPT));
        let server = report.targets.iter().find(|t| t.pid == SERVER).unwrap();
        assert_eq!(server.comm, "nginx");
        let by = server.signalled_by.as_ref().expect("signalled_by");
        assert_eq!(
            (by.pid, by.comm.as_str(), by.signal.as_str()),
            (SCRIPT, "release.sh", "SIGKILL")
        );
        assert_eq!(
            server.exit.as_ref().unwrap().signal.as_deref(),
            Some("SIGKILL")
        );
    }

    #[test]
    fn a_server_told_to_end_is_followed_to_its_exit() {
        let mut state = launched();
        // The session surveyed it before the event was applied.
        state.add_target(SERVER, "nginx".into(), Origin::Signalled { by: SCRIPT });
        state.apply(&signal(libc::SIGTERM, true, 10));
        assert_eq!(state.ending_targets(), vec![SERVER]);
        state.apply(&exit(0, 200));
        assert!(state.ending_targets().is_empty());
        let report = state.report(Mode::Audit, 0, Vec::new());
        assert_eq!(report.verdict, Verdict::Clean);
        let server = report.targets.iter().find(|t| t.pid == SERVER).unwrap();
        assert_eq!(server.signalled_by.as_ref().unwrap().signal, "SIGTERM");
        assert_eq!(server.exit.as_ref().unwrap().code, Some(0));
    }

    #[test]
    fn a_signal_to_a_stranger_not_followed_changes_nothing() {
        let mut state = launched();
        state.apply(&signal(libc::SIGKILL, false, 10));
        assert!(!state.knows(SERVER));
        assert!(state.violations().is_empty());
    }

    #[test]
    fn a_target_already_named_keeps_its_origin() {
        let mut state = launched();
        state.add_target(SERVER, "nginx".into(), Origin::Named);
        state.apply(&signal(libc::SIGTERM, true, 10));
        let report = state.report(Mode::Audit, 0, Vec::new());
        let server = report.targets.iter().find(|t| t.pid == SERVER).unwrap();
        assert!(server.signalled_by.is_none());
    }
}
