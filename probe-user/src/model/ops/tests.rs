//! The operations tracker's tests: counters, cuts and exits in event order, the report,
//! and what the contract shows of operations through it (the metrics' series, the drain's
//! basis).

use super::*;

const MS: u64 = 1_000_000;

fn ms(ns: u64) -> u64 {
    ns / MS
}

fn count(tgid: u32, function: u32, started: u64, ended: u64, cut: u64) -> OpCount {
    OpCount {
        tgid,
        function,
        started,
        ended,
        cut,
        last_edge_ns: 0,
    }
}

fn sample(at_ms: u64, counts: Vec<OpCount>, threads: Vec<OpThread>) -> OpsSample {
    OpsSample {
        ktime_ns: at_ms * MS,
        counts,
        threads,
        latency_us: Vec::new(),
        before_attach: Vec::new(),
        blind_at_attach: Vec::new(),
    }
}

fn thread(tgid: u32, pid: u32, since_ms: u64) -> OpThread {
    OpThread {
        tgid,
        pid,
        function: 0,
        since_ns: since_ms * MS,
    }
}

fn cut_event(tgid: u32, pid: u32, at_ms: u64, since_ms: u64) -> OpCut {
    OpCut {
        ktime_ns: at_ms * MS,
        tgid,
        pid,
        function: 0,
        since_ns: since_ms * MS,
        before_attach: false,
    }
}

#[test]
fn in_flight_is_started_less_ended_and_cut_of_running_processes() {
    let mut ops = OpsTracker::new(vec!["purchase".into()]);
    ops.sample(&sample(
        10,
        vec![count(7, 0, 5, 2, 1), count(8, 0, 3, 3, 0)],
        vec![],
    ));
    assert_eq!(ops.in_flight(None), 2);
    assert_eq!(ops.in_flight(Some(8)), 0);
    assert_eq!(ops.completed(), 5);
    // An older read (torn or late) does not take counts back.
    ops.sample(&sample(11, vec![count(7, 0, 4, 1, 1)], vec![]));
    assert_eq!(ops.in_flight(Some(7)), 2);
}

#[test]
fn a_kill_mid_operation_is_one_cut_per_function_with_the_oldest_age() {
    let mut ops = OpsTracker::new(vec!["purchase".into()]);
    ops.sample(&sample(
        100,
        vec![count(7, 0, 10, 7, 0)],
        vec![thread(7, 71, 40), thread(7, 72, 90), thread(7, 73, 95)],
    ));
    // Two workers' exits come before the process's, the third after it.
    let mut violations = Vec::new();
    merge(&mut violations, ops.cut(&cut_event(7, 71, 120, 40), ms));
    merge(&mut violations, ops.cut(&cut_event(7, 72, 120, 90), ms));
    // Final counters at the exit: the three cut ones are not ended.
    ops.sample(&sample(
        121,
        vec![count(7, 0, 10, 7, 2)],
        vec![thread(7, 73, 95)],
    ));
    for v in ops.exit(7, 121 * MS, ms) {
        merge(&mut violations, v);
    }
    merge(&mut violations, ops.cut(&cut_event(7, 73, 122, 95), ms));
    assert_eq!(
        violations,
        vec![Violation::OperationCut(OperationCut {
            pid: 7,
            at_ms: 120,
            function: "purchase".into(),
            count: 3,
            oldest_age_ms: 80,
        })]
    );
    assert_eq!(ops.in_flight(None), 0, "an exited process holds nothing");
}

#[test]
fn an_exit_with_nothing_in_flight_is_no_violation() {
    let mut ops = OpsTracker::new(vec!["purchase".into()]);
    ops.sample(&sample(100, vec![count(7, 0, 10, 10, 0)], vec![]));
    assert!(ops.exit(7, 101 * MS, ms).is_empty());
    let report = ops.report();
    assert_eq!((report.count, report.in_flight), (10, 0));
}

#[test]
fn a_thread_that_exits_mid_operation_is_cut_while_its_process_runs() {
    let mut ops = OpsTracker::new(vec!["purchase".into(), "refund".into()]);
    ops.sample(&sample(50, vec![count(7, 1, 1, 0, 0)], vec![]));
    let mut violations = Vec::new();
    let mut event = cut_event(7, 70, 60, 20);
    event.function = 1;
    merge(&mut violations, ops.cut(&event, ms));
    ops.sample(&sample(61, vec![count(7, 1, 1, 0, 1)], vec![]));
    assert_eq!(
        ops.in_flight(None),
        0,
        "a cut operation no longer holds the drain"
    );
    let Violation::OperationCut(cut) = &violations[0] else {
        panic!("{violations:?}")
    };
    assert_eq!(
        (cut.function.as_str(), cut.count, cut.oldest_age_ms),
        ("refund", 1, 40)
    );
    // The process then exits cleanly: the same violation, not a second one.
    for v in ops.exit(7, 100 * MS, ms) {
        merge(&mut violations, v);
    }
    assert_eq!(violations.len(), 1);
}

#[test]
fn operations_from_before_attach_hold_the_drain_and_are_cut_at_exit() {
    let mut ops = OpsTracker::new(vec!["purchase".into()]);
    let mut s = sample(5, vec![], vec![]);
    s.before_attach = vec![
        thread(7, 71, 0),
        OpThread {
            function: UNKNOWN_FUNCTION,
            ..thread(7, 72, 0)
        },
    ];
    ops.sample(&s);
    assert_eq!(ops.in_flight(None), 2, "unknown is never idle");
    // The unknown one was outside after all; the other is still inside at the kill.
    s.before_attach.truncate(1);
    s.ktime_ns = 50 * MS;
    ops.sample(&s);
    assert_eq!(ops.in_flight(None), 1);
    let cuts = ops.exit(7, 80 * MS, ms);
    assert_eq!(cuts.len(), 1);
    assert_eq!((cuts[0].count, cuts[0].oldest_age_ms), (1, 80));
    // A thread from before attach that began a hooked call since and was cut in it is
    // counted once.
    let mut ops = OpsTracker::new(vec!["purchase".into()]);
    let mut s = sample(5, vec![count(8, 0, 1, 0, 0)], vec![]);
    s.before_attach = vec![thread(8, 81, 0)];
    ops.sample(&s);
    let _ = ops.cut(&cut_event(8, 81, 60, 30), ms);
    let cuts = ops.exit(8, 61 * MS, ms);
    assert_eq!(cuts[0].count, 1, "{cuts:?}");
    assert_eq!(ops.in_flight(None), 0);
}

/// The 5.10 guest's `stop --op purchase` of the C++ game whose SIGTERM handler abandons its
/// purchases (tests/operations.rs): two purchases between their writes since before attach
/// (threads 71, 72, found on their stacks and marked in the kernel), one begun after attach
/// (thread 73, counted). The handler's `_exit` kills the workers, which the kernel sees exit
/// inside their operations; those are gone from the process before its exit is read, and a
/// look at them can no longer tell (the report counted 1 where the ledger had 3 half done).
/// Thread 71's event comes before the exit (the session's read then drops it from the list),
/// thread 72's after it (still listed at the exit): each is counted once.
#[test]
fn operations_from_before_attach_cut_by_the_kernel_are_counted_once_each() {
    let mut ops = OpsTracker::new(vec!["purchase".into()]);
    let mut s = sample(5, vec![], vec![]);
    s.before_attach = vec![thread(7, 71, 5), thread(7, 72, 5)];
    ops.sample(&s);
    let mut s = sample(900, vec![count(7, 0, 1, 0, 0)], vec![thread(7, 73, 800)]);
    s.before_attach = vec![thread(7, 71, 5), thread(7, 72, 5)];
    ops.sample(&s);
    assert_eq!(ops.in_flight(None), 3);
    let before = |pid, at_ms| OpCut {
        before_attach: true,
        ..cut_event(7, pid, at_ms, 5)
    };
    let cut = ops.cut(&before(71, 2400), ms);
    assert_eq!(cut.count, 1, "{cut:?}");
    let _ = ops.cut(&cut_event(7, 73, 2401, 800), ms);
    // Read at the exit: 71's mark is gone (the kernel took it), 72's still there.
    let mut s = sample(2402, vec![count(7, 0, 1, 0, 1)], vec![]);
    s.before_attach = vec![thread(7, 72, 5)];
    ops.sample(&s);
    let cuts = ops.exit(7, 2403 * MS, ms);
    assert_eq!(cuts.len(), 1, "{cuts:?}");
    assert_eq!((cuts[0].count, cuts[0].oldest_age_ms), (3, 2398));
    let late = ops.cut(&before(72, 2404), ms);
    assert_eq!(late.count, 3, "72 was counted at the exit: {late:?}");
    assert_eq!(ops.in_flight(None), 0);
}

/// A thread never seen blocked (so never looked at) when its process exits might have been
/// inside an operation from before attach: no cut is counted for it, and the report cannot
/// be `clean` (docs/design.md: unknown is shown as unknown).
#[test]
fn a_thread_still_unknown_at_its_process_exit_makes_the_report_incomplete() {
    use crate::model::{
        report::{Mode, Verdict},
        state::{AuditState, Origin},
    };
    let mut state = AuditState::new(0, 5000);
    state.add_target(7, "game".into(), Origin::Named);
    let mut ops = OpsTracker::new(vec!["purchase".into()]);
    let mut s = sample(5, vec![], vec![]);
    s.before_attach = vec![OpThread {
        function: UNKNOWN_FUNCTION,
        ..thread(7, 72, 5)
    }];
    ops.sample(&s);
    let cuts = ops.exit(7, 80 * MS, ms);
    assert!(cuts.is_empty(), "{cuts:?}");
    state.track(ops);
    let report = state.report(Mode::Audit, 0, Vec::new());
    assert_eq!(report.verdict, Verdict::Incomplete);
}

#[test]
fn latencies_are_kept_by_function() {
    let mut ops = OpsTracker::new(vec!["purchase".into(), "refund".into()]);
    let mut s = sample(10, vec![count(7, 0, 3, 3, 0)], vec![]);
    s.latency_us = vec![(0, vec![(250_000, 2), (500_000, 1)])];
    ops.sample(&s);
    let report = ops.report();
    assert!(report.latency_us.max >= 499_000, "{report:?}");
    let by: Vec<(&str, u64)> = ops.histograms().map(|(n, h)| (n, h.len())).collect();
    assert_eq!(by, vec![("purchase", 3), ("refund", 0)]);
}

#[test]
fn operations_are_series_per_name_and_function_and_their_latency_per_function() {
    use crate::{
        events::{Event, UnitEvent},
        model::{state::Origin, tracker::Tracker},
        output::metrics::Exporter,
    };
    let mut ops = OpsTracker::new(vec!["purchase".into(), "refund".into()]);
    let mut violations = Vec::new();
    ops.apply(
        &Event::Unit(UnitEvent::new(&OpsSample {
            ktime_ns: 2_000_000_000,
            counts: vec![OpCount {
                tgid: 41,
                function: 0,
                started: 7,
                ended: 4,
                cut: 0,
                last_edge_ns: 1_900_000_000,
            }],
            latency_us: vec![(0, vec![(300_000, 3), (2_000, 1)])],
            ..OpsSample::default()
        })),
        0,
        &mut violations,
    );
    let mut state = crate::model::state::AuditState::new(1_000_000_000, 5000);
    state.add_target(41, "game_ops".into(), Origin::Named);
    state.track(ops);
    let text = Exporter::default().scrape(&state, 0, 0);
    let has = |line: &str| assert!(text.contains(line), "no {line:?} in\n{text}");
    has("# TYPE drainwatch_operations_in_flight gauge\n");
    has("drainwatch_operations_in_flight{comm=\"game_ops\",function=\"purchase\"} 3\n");
    has("drainwatch_operations_in_flight{comm=\"game_ops\",function=\"refund\"} 0\n");
    has("drainwatch_operations_total{comm=\"game_ops\",function=\"purchase\"} 4\n");
    has("drainwatch_operation_duration_seconds_count{function=\"purchase\"} 4\n");
    has("drainwatch_operation_duration_seconds_bucket{function=\"purchase\",le=\"0.0025\"} 1\n");
    has("drainwatch_operation_duration_seconds_bucket{function=\"purchase\",le=\"0.5\"} 4\n");
}

/// A push-style client connection could hide work without `--op` (verdict/drain/tests.rs);
/// with it, the work between the writes is watched.
#[test]
fn with_op_a_push_style_link_hides_no_work() {
    use crate::{
        events::{ConnOpen, Event, PushStyle, Role},
        model::state::{AuditState, Origin},
        verdict::drain::basis,
    };
    let mut state = AuditState::new(1_000_000_000, 1).with_sockets();
    state.add_target(4242, "dw-game".into(), Origin::Named);
    state.apply(&Event::ConnOpen(ConnOpen {
        ktime_ns: 1_010_000_000,
        tgid: 4242,
        fd: 7,
        role: Role::Client,
        protocol: crate::events::Protocol::Unknown,
        peer: Some("127.0.0.1:40100".parse().unwrap()),
        local: None,
        unix_inode: None,
        existed: false,
    }));
    state.apply(&Event::PushStyle(PushStyle {
        ktime_ns: 1_100_000_000,
        tgid: 4242,
        fd: 7,
    }));
    let without = basis(&state, None).expect("sockets watched");
    assert_eq!(without.could_hide_work.len(), 1, "{without:?}");
    state.track(OpsTracker::new(vec!["purchase".into()]));
    let with_op = basis(&state, None).unwrap();
    assert!(with_op.could_hide_work.is_empty());
    assert!(with_op.observed.contains(&"operations"));
}

/// An operation event is the unit's own (events/unit.rs): its JSON is what `-vv` printed
/// when `Event` named it, and it reads back as what it was.
#[test]
fn an_op_cut_keeps_its_json_line_and_reads_back() {
    use crate::events::{Event, UnitEvent};
    let cut = cut_event(7, 71, 120, 40);
    let event = Event::Unit(UnitEvent::new(&cut));
    let line = serde_json::to_string(&event).unwrap();
    let before = format!(
        r#"{{"event":"op_cut","ktime_ns":{},"tgid":7,"pid":71,"function":0,"since_ns":{}}}"#,
        cut.ktime_ns, cut.since_ns
    );
    // The same object (its keys come out in another order).
    let value = |text: &str| serde_json::from_str::<serde_json::Value>(text).unwrap();
    assert_eq!(value(&line), value(&before));
    assert_eq!(serde_json::from_str::<Event>(&before).unwrap(), event);
    let parsed: Event = serde_json::from_str(&line).unwrap();
    assert_eq!(parsed, event);
    assert_eq!(parsed.ktime_ns(), cut.ktime_ns);
    let Event::Unit(unit) = parsed else {
        panic!("not a unit event: {parsed:?}")
    };
    assert_eq!(unit.read::<OpCut>(), Some(cut));
    assert_eq!(unit.read::<OpsSample>(), None);
    // A core event is still its own variant.
    let exec: Event =
        serde_json::from_str(r#"{"event":"exec","ktime_ns":5,"tgid":7,"comm":"x"}"#).unwrap();
    assert!(matches!(exec, Event::Exec(_)));
}
