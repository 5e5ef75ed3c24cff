//! JUnit rendering from constructed reports: case names, failure counts, the harness rule.

use std::time::{Duration, UNIX_EPOCH};

use super::*;
use crate::model::report::{
    EventCounts, InflightAtExit, Mode, SigkillViolation, TargetReport, SCHEMA,
};

fn target(pid: u32, comm: &str, parent_pid: Option<u32>) -> TargetReport {
    TargetReport {
        pid,
        comm: comm.into(),
        parent_pid,
        signalled_by: None,
        exit: None,
    }
}

fn sigkill(pid: u32) -> Violation {
    Violation::Sigkill(SigkillViolation {
        pid,
        at_ms: 5,
        sender_pid: 9,
        sender_tgid: 9,
        sender_comm: "sh".into(),
        sender_cmdline: None,
        by_kernel: false,
        by_drainwatch: false,
    })
}

fn inflight(pid: u32) -> Violation {
    Violation::InflightAtExit(InflightAtExit {
        pid,
        at_ms: 7,
        requests: 1,
        queries: 0,
        connections: vec!["127.0.0.1:5000".into()],
    })
}

fn report(targets: Vec<TargetReport>, violations: Vec<Violation>) -> Report {
    Report {
        schema: SCHEMA,
        mode: Mode::Audit,
        verdict: if violations.is_empty() {
            Verdict::Clean
        } else {
            Verdict::Violations
        },
        targets,
        violations,
        warnings: vec![],
        drain: None,
        operations: None,
        connections: None,
        requests: None,
        db_queries: None,
        upstream_calls: None,
        events: EventCounts {
            received: 10,
            lost: 0,
        },
        coverage: None,
        probe_failures: vec![],
    }
}

fn run<'a>(launched: Option<u32>, harness: bool, comms: &'a [String]) -> JunitRun<'a> {
    JunitRun {
        started: UNIX_EPOCH + Duration::from_secs(1_764_506_096),
        elapsed_s: 1.5,
        hostname: "ci-runner-7".into(),
        launched,
        interrupted: false,
        launched_is_harness: harness,
        selected_comms: comms,
        name: None,
    }
}

fn attr(xml: &str, element: &str, name: &str) -> Vec<String> {
    xml.split(&format!("<{element} "))
        .map(|rest| format!(" {rest}"))
        .skip(1)
        .filter_map(|rest| {
            let start = rest.find(&format!(" {name}=\""))? + name.len() + 3;
            Some(rest[start..start + rest[start..].find('"')?].to_string())
        })
        .collect()
}

#[test]
fn escapes_everything_xml_cannot_hold() {
    assert_eq!(escape("a<b>&\"c'\u{1}"), "a&lt;b&gt;&amp;&quot;c&apos;?");
}

#[test]
fn timestamps_are_utc_calendar_time() {
    assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00Z");
    assert_eq!(
        timestamp(UNIX_EPOCH + Duration::from_secs(1_764_506_096)),
        "2025-11-30T12:34:56Z"
    );
    assert_eq!(
        timestamp(UNIX_EPOCH + Duration::from_secs(951_782_400)),
        "2000-02-29T00:00:00Z"
    );
}

/// Two redis-server processes (an old one SIGKILLed twice, a new one) and nginx with a
/// worker: two cases by name, one failure per kind with its count, no pid anywhere.
#[test]
fn one_case_per_name_one_failure_per_kind() {
    let r = report(
        vec![
            target(100, "redis-server", None),
            target(200, "redis-server", None),
            target(300, "nginx", None),
            target(301, "nginx", Some(300)),
            target(150, "redis-rdb-bgsave", Some(100)),
        ],
        vec![sigkill(100), sigkill(150), inflight(100)],
    );
    let xml = render(&r, &run(None, false, &[]));
    assert_eq!(attr(&xml, "testcase", "name"), ["nginx", "redis-server"]);
    assert_eq!(
        attr(&xml, "failure", "type"),
        ["inflight_at_exit", "sigkill"]
    );
    let messages = attr(&xml, "failure", "message");
    assert!(
        messages[1].starts_with("2 sigkill: SIGKILL sent to"),
        "{xml}"
    );
    assert!(messages[1].ends_with("(and 1 more)"), "{xml}");
    assert!(messages[0].starts_with("1 inflight_at_exit: "), "{xml}");
    assert_eq!(attr(&xml, "testsuite", "tests"), ["2"]);
    assert_eq!(
        attr(&xml, "testsuite", "failures"),
        ["1"],
        "cases that failed"
    );
    assert_eq!(attr(&xml, "testsuites", "failures"), ["1"]);
    assert_eq!(attr(&xml, "testsuite", "hostname"), ["ci-runner-7"]);
    assert_eq!(
        attr(&xml, "testsuite", "timestamp"),
        ["2025-11-30T12:34:56Z"]
    );
    for name in attr(&xml, "testcase", "name") {
        assert!(!name.contains('('), "no pid in a case name: {name}");
    }
}

/// `audit --comm dw-fixture -- sh -c 'kill -9 OLD; dw-fixture & sleep 1'`: sh and sleep are
/// the harness, the new dw-fixture (forked by sh) is a case under its selected name.
#[test]
fn a_launched_harness_is_not_a_test_case() {
    let comms = ["dw-fixture".to_string()];
    let targets = vec![
        target(10, "sh", None),
        target(11, "sleep", Some(10)),
        target(12, "dw-fixture", Some(10)),
        target(5, "dw-fixture", None),
    ];
    let xml = render(
        &report(targets.clone(), vec![sigkill(5)]),
        &run(Some(10), true, &comms),
    );
    assert_eq!(attr(&xml, "testcase", "name"), ["dw-fixture"], "{xml}");
    assert_eq!(attr(&xml, "testsuite", "failures"), ["1"]);

    // A violation on the harness is not dropped: it gets the launched command's case.
    let xml = render(
        &report(targets.clone(), vec![sigkill(11)]),
        &run(Some(10), true, &comms),
    );
    assert_eq!(
        attr(&xml, "testcase", "name"),
        ["dw-fixture", "sh (launched command)"]
    );
    assert_eq!(attr(&xml, "testsuite", "tests"), ["2"]);
    assert_eq!(attr(&xml, "testsuite", "failures"), ["1"]);

    // `-- CMD` alone: CMD is the target, its children count under its name.
    let xml = render(
        &report(targets[..2].to_vec(), vec![]),
        &run(Some(10), false, &[]),
    );
    assert_eq!(attr(&xml, "testcase", "name"), ["sh"]);
}

#[test]
fn a_name_given_is_the_one_case() {
    let mut junit_run = run(None, false, &[]);
    junit_run.name = Some("checkout-api");
    let r = report(
        vec![target(1, "gunicorn", None), target(2, "gunicorn", Some(1))],
        vec![sigkill(2)],
    );
    let xml = render(&r, &junit_run);
    assert_eq!(attr(&xml, "testcase", "name"), ["checkout-api"]);
    assert_eq!(attr(&xml, "testsuite", "failures"), ["1"]);
}

/// An interrupted audit that saw nothing wrong is `incomplete`, and fails in CI like its exit
/// code (1): a case of its own says why (issue #27: it showed failures="0").
#[test]
fn an_incomplete_audit_fails_with_its_reason() {
    let mut r = report(vec![target(1, "sh", None)], vec![]);
    crate::verdict::outcome::mark_interrupted(&mut r);
    assert_eq!(r.verdict, Verdict::Incomplete);
    let mut junit_run = run(Some(1), false, &[]);
    junit_run.interrupted = true;
    let xml = render(&r, &junit_run);
    assert_eq!(
        attr(&xml, "testcase", "name"),
        ["sh", "drainwatch (incomplete)"]
    );
    assert_eq!(attr(&xml, "failure", "type"), ["incomplete"]);
    assert!(
        attr(&xml, "failure", "message")[0].contains("interrupted"),
        "{xml}"
    );
    assert_eq!(attr(&xml, "testsuite", "tests"), ["2"]);
    assert_eq!(attr(&xml, "testsuite", "failures"), ["1"]);
    assert_eq!(attr(&xml, "testsuites", "failures"), ["1"]);
}
