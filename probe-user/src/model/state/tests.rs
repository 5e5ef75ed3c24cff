//! Replays event sequences (JSON lines, the `-vv` format) through the state machine.

use super::*;
use crate::{
    events::Signal,
    model::report::{SigkillViolation, Verdict},
};

const ATTACH_NS: u64 = 1_000_000_000;
const SELF_TGID: u32 = 5000;

fn replay(recorded: &str, named: &[(u32, &str)]) -> AuditState {
    let mut state = AuditState::new(ATTACH_NS, SELF_TGID);
    for (tgid, comm) in named {
        state.add_target(*tgid, comm.to_string(), Origin::Named);
    }
    for line in recorded.lines().filter(|l| !l.trim().is_empty()) {
        let event: Event = serde_json::from_str(line).expect("recorded event parses");
        state.apply(&event);
    }
    state
}

fn sigkills(state: &AuditState) -> Vec<&SigkillViolation> {
    state
        .violations()
        .iter()
        .filter_map(|v| match v {
            Violation::Sigkill(s) => Some(s),
            _ => None,
        })
        .collect()
}

#[test]
fn kill_dash_nine_is_one_sigkill_violation_naming_the_sender() {
    let state = replay(
        include_str!("../../../testdata/kill9_by_helper.jsonl"),
        &[(4121, "dw-fixture")],
    );
    let kills = sigkills(&state);
    assert_eq!(kills.len(), 1);
    let kill = kills[0];
    assert_eq!(
        (kill.pid, kill.sender_tgid, kill.sender_pid),
        (4121, 3999, 3999)
    );
    assert_eq!(kill.sender_comm, "dw-fixture");
    assert_eq!(
        kill.sender_cmdline.as_deref(),
        Some("dw-fixture signal 9 4121")
    );
    assert_eq!(kill.at_ms, 250);
    assert!(!kill.by_kernel && !kill.by_drainwatch);
    assert!(state.all_exited());
    let report = state.report(Mode::Audit, 0, vec![]);
    assert_eq!(report.verdict, Verdict::Violations);
    let exit = report.targets[0].exit.as_ref().unwrap();
    assert_eq!((exit.code, exit.signal.as_deref()), (None, Some("SIGKILL")));
    assert_eq!(report.events.received, 2);
}

#[test]
fn sigterm_and_a_clean_exit_is_clean() {
    let state = replay(
        include_str!("../../../testdata/sigterm_clean.jsonl"),
        &[(4121, "dw-fixture")],
    );
    let report = state.report(Mode::Audit, 0, vec![]);
    assert_eq!(report.verdict, Verdict::Clean);
    assert!(report.violations.is_empty());
    let exit = report.targets[0].exit.as_ref().unwrap();
    assert_eq!(
        (exit.at_ms, exit.code, exit.signal.clone()),
        (262, Some(0), None)
    );
}

#[test]
fn lost_events_or_failed_probes_make_it_incomplete_never_clean() {
    let state = replay(
        include_str!("../../../testdata/sigterm_clean.jsonl"),
        &[(4121, "dw-fixture")],
    );
    assert_eq!(
        state.report(Mode::Audit, 1, vec![]).verdict,
        Verdict::Incomplete
    );
    let failed = vec!["signal:signal_generate".to_string()];
    assert_eq!(
        state.report(Mode::Audit, 0, failed).verdict,
        Verdict::Incomplete
    );
    let killed = replay(
        include_str!("../../../testdata/kill9_by_helper.jsonl"),
        &[(4121, "dw-fixture")],
    );
    let report = killed.report(Mode::Audit, 3, vec![]);
    assert_eq!(report.verdict, Verdict::Incomplete);
    assert_eq!(report.violations.len(), 1, "violations are still listed");
}

#[test]
fn a_forked_child_killed_with_sigkill_is_flagged_with_its_own_pid() {
    let state = replay(
        include_str!("../../../testdata/forked_child_killed.jsonl"),
        &[(4121, "dw-fixture")],
    );
    let kills = sigkills(&state);
    assert_eq!(kills.len(), 1, "SIGCHLD and SIGTERM are not violations");
    assert_eq!(kills[0].pid, 4130);
    let report = state.report(Mode::Audit, 0, vec![]);
    let pids: Vec<_> = report
        .targets
        .iter()
        .map(|t| (t.pid, t.parent_pid))
        .collect();
    assert_eq!(
        pids,
        [(4121, None), (4130, Some(4121))],
        "the thread 4122 is no target"
    );
    assert!(state.all_exited());
}

#[test]
fn a_sigkill_to_one_thread_counts_for_its_process_and_the_kernel_is_named() {
    let state = replay(
        include_str!("../../../testdata/oom_kill_of_thread.jsonl"),
        &[(4121, "game")],
    );
    let kills = sigkills(&state);
    assert_eq!(kills.len(), 1);
    assert_eq!(kills[0].pid, 4121);
    assert!(kills[0].by_kernel);
    assert_eq!((kills[0].sender_tgid, kills[0].sender_pid), (777, 778));
}

#[test]
fn children_gone_before_lookup_become_targets_only_when_they_prove_to_be_processes() {
    let state = replay(
        include_str!("../../../testdata/fork_child_gone_before_lookup.jsonl"),
        &[(4121, "dw-fixture")],
    );
    let report = state.report(Mode::Audit, 0, vec![]);
    let pids: Vec<_> = report.targets.iter().map(|t| t.pid).collect();
    assert_eq!(pids, [4121, 4200], "4201 never proved to be a process");
    let child = &report.targets[1];
    assert_eq!(child.exit.as_ref().unwrap().code, Some(3));
    assert!(
        state.all_exited(),
        "an unresolved child does not hold the audit open"
    );
}

/// Recorded with `drainwatch audit -vv` (before the fix) on a process that made a thread,
/// sent it a tgkill (SIGURG, as the Go runtime preempts its threads) and was killed with -9
/// at once: the fork was read after the thread was gone, so its tgid was unknown, and the
/// signal to it made it a target that never exits: the audit never ended (issue #22, the
/// Go kill -9 test's CI failure). A signal to one task proves no process.
#[test]
fn a_thread_gone_before_lookup_and_signalled_alone_does_not_hold_the_audit_open() {
    let state = replay(
        include_str!("../../../testdata/thread_gone_before_lookup_signalled.jsonl"),
        &[(4057, "python3")],
    );
    let report = state.report(Mode::Audit, 0, vec![]);
    let pids: Vec<_> = report.targets.iter().map(|t| t.pid).collect();
    assert_eq!(pids, [4057], "4387 never proved to be a process");
    assert!(
        state.all_exited(),
        "the killed process's exit ends the audit"
    );
    assert_eq!(sigkills(&state).len(), 1);
    assert_eq!(sigkills(&state)[0].pid, 4057);
}

/// The signal held for a child not yet known to be a process counts once the child's exit
/// proves it one: a short-lived child killed with tgkill(SIGKILL) is still a SIGKILL.
#[test]
fn a_signal_held_for_an_unresolved_child_counts_once_its_exit_proves_it_a_process() {
    let mut state = AuditState::new(ATTACH_NS, SELF_TGID);
    state.add_target(10, "srv".into(), Origin::Named);
    let lines = [
        r#"{"event":"fork","ktime_ns":1100000000,"parent_tgid":10,"child_pid":11,"comm":"srv","child_tgid":null}"#,
        r#"{"event":"signal","ktime_ns":1200000000,"target_pid":11,"sender_tgid":10,"sender_pid":10,"sender_comm":"srv","sender_cmdline":null,"sig":9,"code":-6,"result":0}"#,
    ];
    for line in lines {
        state.apply(&serde_json::from_str(line).expect("event parses"));
    }
    assert!(sigkills(&state).is_empty(), "held: 11 may be a thread");
    state.apply(
        &serde_json::from_str(
            r#"{"event":"exit","ktime_ns":1210000000,"tgid":11,"comm":"srv","wait_status":9}"#,
        )
        .expect("event parses"),
    );
    let kills = sigkills(&state);
    assert_eq!(kills.len(), 1, "counted once 11 proved to be a process");
    assert_eq!((kills[0].pid, kills[0].at_ms), (11, 200));
    assert!(state.has_exited(11));
}

#[test]
fn drainwatchs_own_sigkill_is_marked() {
    let mut state = AuditState::new(ATTACH_NS, SELF_TGID);
    state.add_target(10, "srv".into(), Origin::Named);
    state.apply(&Event::Signal(Signal {
        ktime_ns: ATTACH_NS,
        target_pid: 10,
        sender_tgid: SELF_TGID,
        sender_pid: SELF_TGID + 1,
        sender_comm: "drainwatch".into(),
        sender_cmdline: None,
        sig: libc::SIGKILL,
        code: 0,
        result: 0,
        group: true,
        followed: false,
        target_comm: String::new(),
    }));
    assert!(sigkills(&state)[0].by_drainwatch);
    assert!(!state.all_exited());
}

#[test]
fn events_for_strangers_change_nothing() {
    let state = replay(
        include_str!("../../../testdata/kill9_by_helper.jsonl"),
        &[(1, "init")],
    );
    assert!(state.violations().is_empty());
    assert!(!state.all_exited());
    assert_eq!(state.received(), 2);
}

/// Recorded with `drainwatch audit -vv -- dw-game --db postgres --pool 1` on real
/// PostgreSQL: one payment (BEGIN; INSERT A; pause; ...) cut by kill -9 after write A.
#[test]
fn a_recorded_postgres_payment_cut_by_kill_nine() {
    let recorded = include_str!("../../../testdata/pg_kill9_mid_transaction.jsonl");
    let mut state = AuditState::new(ATTACH_NS, SELF_TGID).with_sockets();
    let first: Event = serde_json::from_str(recorded.lines().next().unwrap()).unwrap();
    let Event::Exec(exec) = first else {
        panic!("the recording starts with the launched command's exec")
    };
    state.add_target(exec.tgid, "dw-game".into(), Origin::Launched);
    for line in recorded.lines() {
        state.apply(&serde_json::from_str::<Event>(line).unwrap());
    }
    let report = state.report(Mode::Audit, 0, vec![]);
    let kinds: Vec<&str> = report.violations.iter().map(|v| v.kind()).collect();
    assert_eq!(
        kinds,
        [
            "sigkill",
            "open_transaction",
            "leaked_db_connection",
            "inflight_at_exit"
        ]
    );
    let Violation::OpenTransaction(txn) = &report.violations[1] else {
        panic!()
    };
    assert_eq!(txn.protocol, Protocol::Postgres);
    assert!(txn.age_ms >= 300, "open since BEGIN: {}", txn.age_ms);
    let Violation::InflightAtExit(cut) = &report.violations[3] else {
        panic!()
    };
    assert_eq!((cut.requests, cut.queries), (1, 0));
    let counts = report.connections.unwrap();
    assert_eq!((counts.client_opened, counts.db_opened), (1, 1));
    assert_eq!(
        (counts.client_closed, counts.db_closed),
        (1, 1),
        "the kernel closed them"
    );
    assert!(
        report.db_queries.unwrap().count >= 3,
        "startup, BEGIN, INSERT A"
    );
    assert!(state.all_exited());
}

fn sample(
    ktime_ns: u64,
    counters: &[(u32, u64, u64, u64, u64)],
    latency_us: &[(u64, u64)],
) -> Event {
    Event::Requests(crate::events::RequestSample {
        ktime_ns,
        targets: counters
            .iter()
            .map(|&(tgid, started, ended, existing_ended, last_edge_ns)| {
                crate::events::TargetRequests {
                    tgid,
                    started,
                    ended,
                    existing_ended,
                    last_edge_ns,
                    ..Default::default()
                }
            })
            .collect(),
        latency_us: latency_us.to_vec(),
        latency_by_tgid: vec![],
    })
}

/// The kernel counts requests; the state turns successive samples of the counters into
/// "in flight" and "idle since", and the latency buckets into the report's percentiles.
#[test]
fn request_counters_from_the_kernel_drive_in_flight_and_idle_since() {
    let mut state = AuditState::new(ATTACH_NS, SELF_TGID).with_sockets();
    state.add_target(10, "server".into(), Origin::Named);
    state.add_target(11, "other".into(), Origin::Named);
    assert_eq!(state.idle_since(), Some(ATTACH_NS), "nothing seen yet");
    let t = ATTACH_NS + 5_000_000;
    state.apply(&sample(t, &[(10, 3, 1, 0, t), (11, 0, 0, 0, 0)], &[]));
    assert_eq!(state.conns().unwrap().in_flight(None).requests, 2);
    assert_eq!(state.conns().unwrap().in_flight(Some(11)).requests, 0);
    assert_eq!(state.idle_since(), None);
    let later = t + 40_000_000;
    state.apply(&sample(
        later,
        &[(10, 4, 4, 0, later - 1_000), (11, 0, 0, 0, 0)],
        &[(250, 3), (1200, 1)],
    ));
    assert_eq!(
        state.idle_since(),
        Some(later - 1_000),
        "idle from the last end"
    );
    let report = state.report(Mode::Audit, 0, vec![]);
    let requests = report.requests.unwrap();
    assert_eq!(requests.count, 4);
    assert!(
        (249..=251).contains(&requests.latency_us.p50),
        "{requests:?}"
    );
    assert!(
        (1195..=1205).contains(&requests.latency_us.max),
        "{requests:?}"
    );
    assert_eq!(state.received(), 0, "samples are not probe records");
}

/// A client connection found busy at attach is in flight until the kernel counts its end
/// (the server sent, or it closed), which it counts apart from requests seen starting.
#[test]
fn a_connection_busy_at_attach_is_in_flight_until_the_kernel_counts_its_end() {
    let mut state = AuditState::new(ATTACH_NS, SELF_TGID).with_sockets();
    state.add_target(10, "server".into(), Origin::Named);
    state.add_existing_conn(
        (10, 7),
        Role::Client,
        Protocol::Unknown,
        None,
        None,
        AtAttach::Busy,
    );
    state.add_existing_conn(
        (10, 8),
        Role::Client,
        Protocol::Unknown,
        None,
        None,
        AtAttach::Idle,
    );
    assert_eq!(state.conns().unwrap().in_flight(Some(10)).requests, 1);
    assert_eq!(state.idle_since(), None);
    let t = ATTACH_NS + 1_000_000;
    state.apply(&sample(t, &[(10, 0, 0, 1, t)], &[]));
    assert_eq!(state.conns().unwrap().in_flight(Some(10)).requests, 0);
    assert_eq!(state.idle_since(), Some(t));
}

/// An exit names the connections whose request was cut; the target's counters go with it.
#[test]
fn an_exit_with_busy_connections_is_inflight_at_exit_and_clears_the_counters() {
    let mut state = AuditState::new(ATTACH_NS, SELF_TGID).with_sockets();
    state.add_target(10, "server".into(), Origin::Named);
    state.add_existing_conn(
        (10, 7),
        Role::Client,
        Protocol::Unknown,
        None,
        None,
        AtAttach::Idle,
    );
    state.add_existing_conn(
        (10, 9),
        Role::Client,
        Protocol::Unknown,
        None,
        None,
        AtAttach::Idle,
    );
    let t = ATTACH_NS + 1_000_000;
    state.apply(&sample(t, &[(10, 2, 0, 0, t)], &[]));
    state.apply(&Event::Exit(crate::events::Exit {
        ktime_ns: t + 1,
        tgid: 10,
        comm: "server".into(),
        wait_status: Some(9),
        busy_fds: vec![7, 9],
    }));
    assert_eq!(state.conns().unwrap().in_flight(None).requests, 0);
    let cut: Vec<_> = state
        .violations()
        .iter()
        .filter_map(|v| match v {
            Violation::InflightAtExit(c) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(cut.len(), 1);
    assert_eq!(cut[0].requests, 2);
    assert_eq!(cut[0].connections, ["fd 7", "fd 9"]);
}

/// A request cut by an exit ends at the exit: the quiet window counts from there, never
/// from the last activity before it ("drained" in hindsight).
#[test]
fn an_exit_that_cuts_a_request_is_activity_not_a_drain_in_hindsight() {
    let mut state = AuditState::new(ATTACH_NS, SELF_TGID).with_sockets();
    state.add_target(10, "server".into(), Origin::Named);
    state.add_existing_conn(
        (10, 7),
        Role::Client,
        Protocol::Unknown,
        None,
        None,
        AtAttach::Busy,
    );
    let exit_at = ATTACH_NS + 800_000_000;
    state.apply(&Event::Exit(crate::events::Exit {
        ktime_ns: exit_at,
        tgid: 10,
        comm: "server".into(),
        wait_status: Some(9),
        busy_fds: vec![7],
    }));
    assert_eq!(state.idle_since(), Some(exit_at));
}

/// Connections unknown at attach (`attach_rule`): they hold the drain until resolved (by
/// the process seen quiescent, a close, traffic), are never a violation, and one still
/// unknown when its process exits makes the verdict `incomplete`. The SIGTERM makes the
/// target one `audit -- CMD` follows to its exit.
#[test]
fn unknown_connections_hold_the_drain_until_resolved_and_are_never_violations() {
    let mut state = AuditState::new(ATTACH_NS, SELF_TGID).with_sockets();
    state.add_target(4200, "redis-server".into(), Origin::Named);
    for fd in [7, 8, 9] {
        state.add_existing_conn(
            (4200, fd),
            Role::Client,
            Protocol::Unknown,
            None,
            None,
            AtAttach::Unknown,
        );
    }
    state.add_existing_conn(
        (4200, 10),
        Role::Client,
        Protocol::Unknown,
        None,
        None,
        AtAttach::Busy,
    );
    let events: Vec<Event> = include_str!("../../../testdata/unknown_at_attach.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("recorded event parses"))
        .collect();
    let in_flight = |s: &AuditState| s.conns().unwrap().in_flight(None);
    state.apply(&events[0]);
    assert_eq!(
        (in_flight(&state).requests, in_flight(&state).unknown),
        (1, 3)
    );
    state.apply(&events[1]);
    state.apply(&events[2]);
    assert_eq!(in_flight(&state).unknown, 1, "fd 7 quiescent, fd 8 closed");
    state.apply(&events[3]);
    assert_eq!(in_flight(&state).requests, 0, "the busy one was answered");
    assert_eq!(state.idle_since(), None, "fd 9 is still unknown");
    state.apply(&events[4]);
    assert_eq!(state.ending_targets(), vec![4200], "told to end");
    state.apply(&events[5]);
    assert!(state.ending_targets().is_empty());
    assert!(
        state.violations().is_empty(),
        "unknown is never a violation"
    );
    let report = state.report(Mode::Stop, 0, vec![]);
    assert_eq!(
        report.verdict,
        Verdict::Incomplete,
        "fd 9 may have been cut"
    );
    let unknown = report.coverage.unwrap().unknown_at_attach;
    let how: Vec<_> = unknown
        .iter()
        .map(|u| (u.fd, u.resolved_at_ms, u.resolved_by))
        .collect();
    assert_eq!(
        how,
        vec![
            (7, Some(30), Some("evidence")),
            (8, Some(40), Some("closed")),
            (9, None, None)
        ]
    );
    assert_eq!(
        state.received(),
        3,
        "samples and resolutions are not probe records"
    );
}

/// All unknown connections resolved before the exit: nothing stands in the way of `clean`.
#[test]
fn unknown_connections_resolved_before_the_exit_leave_the_verdict_clean() {
    let mut state = AuditState::new(ATTACH_NS, SELF_TGID).with_sockets();
    state.add_target(4200, "redis-server".into(), Origin::Named);
    state.add_existing_conn(
        (4200, 7),
        Role::Client,
        Protocol::Unknown,
        None,
        None,
        AtAttach::Unknown,
    );
    let resolved_at = ATTACH_NS + 2_000_000;
    state.apply(&Event::Resolved(crate::events::Resolved {
        ktime_ns: resolved_at,
        tgid: 4200,
        fd: 7,
        by: crate::events::ResolvedBy::Traffic,
    }));
    assert_eq!(
        state.idle_since(),
        Some(resolved_at),
        "activity: the window restarts"
    );
    state.apply(&Event::Exit(Exit {
        ktime_ns: ATTACH_NS + 9_000_000,
        tgid: 4200,
        comm: "redis-server".into(),
        wait_status: Some(0),
        busy_fds: vec![],
    }));
    assert_eq!(state.report(Mode::Stop, 0, vec![]).verdict, Verdict::Clean);
}

/// A unix-domain client connection closed with its request in flight, seen by userspace
/// (the socket backend has no kernel hook for that close): the kernel's counters never end
/// the request, so the close itself does; else `wait` would never call the target drained.
#[test]
fn a_close_the_kernel_did_not_count_ends_its_request() {
    let mut state = AuditState::new(ATTACH_NS, SELF_TGID).with_sockets();
    state.add_target(10, "server".into(), Origin::Named);
    let t = ATTACH_NS + 5_000_000;
    state.apply(&Event::ConnOpen(crate::events::ConnOpen {
        ktime_ns: t,
        tgid: 10,
        fd: 7,
        role: Role::Client,
        protocol: Protocol::Unknown,
        peer: None,
        local: None,
        unix_inode: None,
        existed: false,
    }));
    state.apply(&sample(t + 1_000, &[(10, 1, 0, 0, t + 1_000)], &[]));
    assert_eq!(state.conns().unwrap().in_flight(None).requests, 1);
    let close = |uncounted| {
        Event::ConnClose(crate::events::ConnClose {
            ktime_ns: t + 2_000_000,
            tgid: 10,
            fd: 7,
            request_since_ns: Some(t + 1_000),
            request_uncounted: uncounted,
            push: false,
        })
    };
    state.apply(&close(true));
    assert_eq!(state.conns().unwrap().in_flight(None).requests, 0);
    state.apply(&sample(t + 3_000_000, &[(10, 1, 0, 0, t + 1_000)], &[]));
    assert_eq!(state.conns().unwrap().in_flight(None).requests, 0);
    let report = state.report(Mode::Audit, 0, vec![]);
    assert_eq!(
        report
            .violations
            .iter()
            .map(|v| v.kind())
            .collect::<Vec<_>>(),
        ["request_dropped"]
    );
}
