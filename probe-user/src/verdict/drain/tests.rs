//! The drain rules on event sequences shaped as the probe records them (`-vv`): a game
//! server whose link to its gateway is push-style, an operation that writes A, waits, then
//! writes B with nothing in flight between (docs/design.md, "drain tail").

use super::*;
use crate::{
    events::Event,
    model::{report::Mode, state::Origin},
};

const ATTACH_NS: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;
const GAME: u32 = 4242;

fn game() -> AuditState {
    let mut state = AuditState::new(ATTACH_NS, 1).with_sockets();
    state.add_target(GAME, "dw-game".into(), Origin::Named);
    state
}

fn apply(state: &mut AuditState, lines: &[String]) {
    for line in lines {
        state.apply(&serde_json::from_str::<Event>(line).expect("event parses"));
    }
}

fn at(ms: u64) -> u64 {
    ATTACH_NS + ms * MS
}

fn link_open(ms: u64) -> String {
    format!(
        r#"{{"event":"conn_open","ktime_ns":{},"tgid":{GAME},"fd":7,"role":"client","protocol":"unknown","peer":"127.0.0.1:40100","local":null}}"#,
        at(ms)
    )
}

fn db_open(ms: u64) -> String {
    format!(
        r#"{{"event":"conn_open","ktime_ns":{},"tgid":{GAME},"fd":3,"role":"db","protocol":"postgres","peer":"127.0.0.1:5432","local":null}}"#,
        at(ms)
    )
}

/// The kernel's counters: (started, ended, last edge ms, pushed, last input ms).
fn counters(ms: u64, started: u64, ended: u64, edge: u64, pushed: u64, input: u64) -> String {
    format!(
        r#"{{"event":"requests","ktime_ns":{},"targets":[{{"tgid":{GAME},"started":{started},"ended":{ended},"existing_ended":0,"last_edge_ns":{},"pushed":{pushed},"last_input_ns":{}}}]}}"#,
        at(ms),
        at(edge),
        at(input)
    )
}

/// A simple-protocol query and its answer ending in ReadyForQuery idle ('Z' 'I').
fn query(ms: u64) -> [String; 2] {
    [
        format!(
            r#"{{"event":"db_io","ktime_ns":{},"tgid":{GAME},"fd":3,"dir":"send","protocol":"postgres","len":40,"head":[81,0,0,0,39],"tail":[]}}"#,
            at(ms)
        ),
        format!(
            r#"{{"event":"db_io","ktime_ns":{},"tgid":{GAME},"fd":3,"dir":"recv","protocol":"postgres","len":21,"head":[67,0,0,0,13],"tail":[90,0,0,0,5,73]}}"#,
            at(ms + 1)
        ),
    ]
}

fn push_mark(ms: u64) -> String {
    format!(
        r#"{{"event":"push_style","ktime_ns":{},"tgid":{GAME},"fd":7}}"#,
        at(ms)
    )
}

/// The gateway's link at 10 ms; ticks from 60 ms on mark it push-style; "op X" arrives at
/// 200 ms, the next tick (230 ms) ends its "request"; the operation writes A at 202 ms and,
/// with nothing in flight meanwhile, B at 900 ms.
fn op_between_writes() -> Vec<String> {
    let mut lines = vec![db_open(1), link_open(10), counters(100, 0, 0, 0, 1, 0)];
    lines.push(push_mark(100));
    lines.push(counters(201, 1, 0, 200, 1, 200));
    lines.extend(query(202));
    lines.push(counters(231, 1, 1, 230, 1, 200));
    lines
}

#[test]
fn without_settle_the_gap_between_two_writes_looks_drained() {
    let mut state = game();
    apply(&mut state, &op_between_writes());
    let rule = DrainRule::quiet(Duration::from_millis(100));
    // Idle since the tick that "answered" at 230 ms: drained at 330 ms, long before B.
    assert_eq!(rule.drained_at(&state), Some(at(330)));
    assert!(rule.drained(&state, at(400)));
}

#[test]
fn settle_holds_drained_until_no_query_for_settle_after_the_last_input() {
    let mut state = game();
    apply(&mut state, &op_between_writes());
    let rule = DrainRule {
        quiet: Duration::from_millis(100),
        settle: Some(Duration::from_millis(1200)),
    };
    // From write A (203 ms, after the input at 200 ms): not before 1403 ms.
    assert_eq!(rule.drained_at(&state), Some(at(1402)));
    assert!(!rule.drained(&state, at(899)));
    // Write B at 900 ms moves it again: 1200 ms after B.
    let b = query(900);
    apply(&mut state, &b);
    assert_eq!(rule.drained_at(&state), Some(at(2100)));
    assert!(!rule.drained(&state, at(2099)));
    assert!(rule.drained(&state, at(2100)));
}

#[test]
fn the_tail_runs_from_the_last_input_to_the_last_query_after_it() {
    let mut state = game();
    apply(&mut state, &op_between_writes());
    assert_eq!(tail_ms(&state), Some(2), "write A, 2 ms after the input");
    apply(&mut state, &query(900));
    assert_eq!(tail_ms(&state), Some(700));
    // The gateway hangs up at 950 ms: a close is client input, nothing written after it.
    apply(
        &mut state,
        &[format!(
            r#"{{"event":"conn_close","ktime_ns":{},"tgid":{GAME},"fd":7,"push":true}}"#,
            at(950)
        )],
    );
    assert_eq!(tail_ms(&state), Some(0));
    apply(&mut state, &query(1300));
    assert_eq!(tail_ms(&state), Some(350));
}

#[test]
fn a_push_style_link_without_op_could_hide_work() {
    let mut state = game();
    apply(&mut state, &op_between_writes());
    let seen = basis(&state, None).expect("sockets watched");
    assert_eq!(
        seen.observed,
        ["requests", "queries", "transactions", "upstream_calls"]
    );
    assert_eq!(
        seen.could_hide_work,
        [HiddenWork {
            pid: GAME,
            why: "push-style client connection (fd 7 127.0.0.1:40100), no --op".into()
        }]
    );
    assert_eq!(
        basis_line(&seen, None),
        "requests, queries, transactions, upstream_calls observed; could hide work: pid 4242: push-style \
         client connection (fd 7 127.0.0.1:40100), no --op: see --op, --settle"
    );
    let settled = basis(&state, Some(Duration::from_millis(1200))).unwrap();
    assert_eq!(
        settled.could_hide_work[0].why,
        "push-style client connection (fd 7 127.0.0.1:40100), no --op; held by --settle 1.2s"
    );
    assert!(!basis_line(&settled, Some(Duration::from_millis(1200))).contains("see --op"));
    // With --op, the work between the writes is watched: model/ops/tests.rs.
}

#[test]
fn an_event_loop_without_op_could_hide_work() {
    let mut state = game();
    state.event_loop(GAME);
    let seen = basis(&state, None).unwrap();
    assert_eq!(seen.could_hide_work.len(), 1);
    assert_eq!(seen.could_hide_work[0].why, "event loop (epoll), no --op");
}

#[test]
fn a_request_or_response_server_rests_on_what_was_observed() {
    let mut state = game();
    apply(&mut state, &[link_open(10), counters(100, 1, 1, 50, 0, 40)]);
    let seen = basis(&state, None).unwrap();
    assert!(seen.could_hide_work.is_empty());
    assert_eq!(
        basis_line(&seen, None),
        "requests, queries, transactions, upstream_calls observed"
    );
}

/// The gateway's ping read at 300 ms, its answer due with the next tick (the game batches
/// what it sends per tick); the gateway hangs up at 305 ms and the game closes the link:
/// on a push-style link nothing proves an answer was owed (the audit once called it
/// `request_dropped`).
#[test]
fn a_push_style_link_closed_after_input_drops_no_request() {
    let mut state = game();
    let mut lines = op_between_writes();
    lines.push(counters(301, 2, 1, 300, 1, 300));
    lines.push(format!(
        r#"{{"event":"conn_close","ktime_ns":{},"tgid":{GAME},"fd":7,"request_since_ns":{},"push":true}}"#,
        at(305),
        at(300)
    ));
    apply(&mut state, &lines);
    let report = state.report(Mode::Audit, 0, vec![]);
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    // The same close on a request/response connection is a dropped request.
    let mut state = game();
    apply(
        &mut state,
        &[
            link_open(10),
            counters(301, 1, 0, 300, 0, 300),
            format!(
                r#"{{"event":"conn_close","ktime_ns":{},"tgid":{GAME},"fd":7,"request_since_ns":{}}}"#,
                at(305),
                at(300)
            ),
        ],
    );
    let report = state.report(Mode::Audit, 0, vec![]);
    assert_eq!(report.violations.len(), 1);
    assert_eq!(report.violations[0].kind(), "request_dropped");
}

#[test]
fn settle_from_a_report_takes_its_tail_with_a_margin() {
    assert_eq!(
        settle_for_tail(Duration::from_millis(800)),
        Duration::from_millis(1200)
    );
    // A short tail gets at least the floor on top.
    assert_eq!(
        settle_for_tail(Duration::from_millis(20)),
        Duration::from_millis(120)
    );
    assert_eq!(settle_for_tail(Duration::ZERO), SETTLE_FLOOR);
    let report = r#"{"schema":"drainwatch.report/v1","drain":{"tail_ms":800}}"#;
    assert_eq!(tail_in_report(report), Ok(Duration::from_millis(800)));
}

#[test]
fn settle_from_a_report_without_a_tail_says_why() {
    let no_tail = r#"{"schema":"drainwatch.report/v1","drain":{"tail_ms":null}}"#;
    assert!(tail_in_report(no_tail)
        .unwrap_err()
        .contains("no drain tail"));
    let no_drain = r#"{"schema":"drainwatch.report/v1","drain":null}"#;
    assert!(tail_in_report(no_drain)
        .unwrap_err()
        .contains("no drain tail"));
    assert!(tail_in_report("not json").unwrap_err().contains("not JSON"));
    let other = r#"{"schema":"something/v2"}"#;
    assert!(tail_in_report(other)
        .unwrap_err()
        .contains("schema something/v2"));
    let text = r#"{"schema":"drainwatch.report/v1","drain":{"tail_ms":"800ms"}}"#;
    assert!(tail_in_report(text).unwrap_err().contains("not a number"));
}

/// issue #22: `wait` once printed `drained: nothing in flight for 100ms (at 0.000s)`. A
/// drained time counts the quiet window from attach at the earliest, whatever the ring held
/// from before it (a record stamped before attach, or nothing at all): never 0 ms.
#[test]
fn a_drained_time_is_never_before_the_quiet_window_after_attach() {
    let rule = DrainRule::quiet(Duration::from_millis(100));
    let idle = game();
    let at_ms = |state: &AuditState| state.ms_since_attach(rule.drained_at(state).unwrap());
    assert_eq!(
        at_ms(&idle),
        100,
        "nothing seen: drained a quiet window after attach"
    );
    let mut before = game();
    apply(
        &mut before,
        &[format!(
            r#"{{"event":"conn_open","ktime_ns":{},"tgid":{GAME},"fd":7,"role":"client","protocol":"unknown","peer":"127.0.0.1:40100","local":null}}"#,
            ATTACH_NS - 50 * MS
        )],
    );
    assert_eq!(
        at_ms(&before),
        100,
        "activity before attach counts from attach"
    );
    assert_eq!(
        wait_ending(EndedBy::Condition, Verdict::Clean, Some(at_ms(&idle))),
        Ending::Drained { at_ms: 100 }
    );
}
