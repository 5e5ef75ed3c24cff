//! The JUnit file of a real audit with violations, validated by `xmllint --schema` against
//! tests/fixtures/junit.xsd (the Ant JUnit format, strict), and its counts checked against
//! the report: what XSD 1.0 cannot say.

use std::process::Command;

use drainwatch_tests::*;

fn schema() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/junit.xsd").to_string()
}

/// `xmllint --noout --schema junit.xsd FILE`: Ok, or xmllint's complaint.
fn validate(path: &str) -> Result<(), String> {
    let out = Command::new("xmllint")
        .args(["--noout", "--schema", &schema(), path])
        .output()
        .expect("xmllint runs (Debian libxml2-utils, installed by `cargo xtask setup`)");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The values of attribute `name` on every `<element ...>`, in order.
fn attrs(xml: &str, element: &str, name: &str) -> Vec<String> {
    xml.split(&format!("<{element} "))
        .skip(1)
        .map(|tag| {
            let tag = tag.split('>').next().unwrap();
            tag.split(&format!(" {name}=\""))
                .nth(1)
                .or_else(|| tag.strip_prefix(&format!("{name}=\"")))
                .and_then(|v| v.split('"').next())
                .unwrap_or_else(|| panic!("<{element}> without {name}: {tag}"))
                .to_string()
        })
        .collect()
}

/// Two servers SIGKILLed by the audited script, one of them (the event-loop server) with a
/// request in flight: two cases, one with two kinds of violation.
#[test]
fn an_audit_s_junit_file_is_valid_ant_junit_with_consistent_counts() {
    require_root();
    let dir = TempDir::new("junit-schema");
    let (report_path, junit_path) = (dir.path("report.json"), dir.path("junit.xml"));
    let echo = Server::start(&[]);
    let event_loop = EventLoopServer::start(&[]);
    let _in_flight = event_loop.request("slow", scaled_ms(600_000));
    event_loop.until_read();
    let (p1, p2) = (echo.pid.to_string(), event_loop.pid.to_string());
    let script = format!("sleep 0.5; kill -9 {p1} {p2}");
    let done = run_drainwatch(&[
        "audit",
        "--pid",
        &p1,
        "--pid",
        &p2,
        "--report",
        &report_path,
        "--junit",
        &junit_path,
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(done.code, 1, "{done:?}");
    let report = read_report(&report_path);
    let xml = std::fs::read_to_string(&junit_path).unwrap();
    if let Err(complaint) = validate(&junit_path) {
        panic!("{junit_path} is not valid against junit.xsd:\n{complaint}\n{xml}");
    }

    // Cases: the two servers by name, the script not (it is the harness).
    let names = attrs(&xml, "testcase", "name");
    assert_eq!(names, ["dw-fixture", "python3"], "{xml}");
    // Failures per case, in order, by kind: the same kinds as the report's violations.
    let cases: Vec<&str> = xml.split("<testcase ").skip(1).collect();
    let kinds_of = |case: &str| -> Vec<String> {
        let mut kinds = attrs(&format!("<x {case}"), "failure", "type");
        kinds.sort();
        kinds
    };
    let reported = |pid: &str| -> Vec<String> {
        let mut kinds: Vec<String> = report["violations"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["pid"].as_u64() == pid.parse().ok())
            .map(|v| v["kind"].as_str().unwrap().to_string())
            .collect();
        kinds.sort();
        kinds.dedup();
        kinds
    };
    assert_eq!(kinds_of(cases[0]), reported(&p1), "{xml}\n{report:#}");
    assert_eq!(kinds_of(cases[1]), reported(&p2), "{xml}\n{report:#}");
    assert_eq!(kinds_of(cases[0]), ["sigkill"], "{xml}");
    assert_eq!(
        kinds_of(cases[1]),
        ["inflight_at_exit", "sigkill"],
        "{xml}\n{report:#}"
    );
    // Counts: tests = cases, failures = failed cases, the aggregate = the suite.
    let failed = cases.iter().filter(|c| c.contains("<failure ")).count();
    for element in ["testsuites", "testsuite"] {
        assert_eq!(attrs(&xml, element, "tests"), ["2"], "{xml}");
        assert_eq!(
            attrs(&xml, element, "failures"),
            [failed.to_string()],
            "{xml}"
        );
        assert_eq!(attrs(&xml, element, "errors"), ["0"], "{xml}");
    }
    // The suite's time covers every violation in it: both are counted from the attach.
    let suite_time: f64 = attrs(&xml, "testsuite", "time")[0].parse().unwrap();
    let last_at_ms = report["violations"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["at_ms"].as_u64())
        .max()
        .expect("violations have at_ms");
    assert!(
        suite_time * 1000.0 >= last_at_ms as f64,
        "suite time {suite_time}s ends before a violation at {last_at_ms} ms\n{xml}\n{report:#}"
    );
    // hostname: this machine; timestamp: the start, in UTC, within the test's run.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(attrs(&xml, "testsuite", "hostname"), [host.trim()], "{xml}");
    let stamp = &attrs(&xml, "testsuite", "timestamp")[0];
    assert!(stamp.ends_with('Z'), "UTC, with its zone: {stamp}");
    let date = Command::new("date")
        .args(["-u", "-d", stamp, "+%s"])
        .output()
        .unwrap();
    let at: u64 = String::from_utf8_lossy(&date.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("timestamp {stamp} is not a date"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        at <= now && now - at < PATIENCE.as_secs(),
        "{stamp} is not now"
    );

    // The schema bites: each of these breaks of the format is refused.
    let first_failure = xml
        .split("<failure ")
        .nth(1)
        .map(|f| format!("<failure {}", f.split("</failure>").next().unwrap()))
        .unwrap()
        + "</failure>";
    let broken = [
        (
            "no hostname",
            xml.replacen(&format!(" hostname=\"{}\"", host.trim()), "", 1),
        ),
        (
            "a timestamp without its zone",
            xml.replacen(
                &format!("timestamp=\"{stamp}\""),
                &format!("timestamp=\"{}\"", stamp.trim_end_matches('Z')),
                1,
            ),
        ),
        (
            "two failures of one kind in a case",
            xml.replacen(
                &first_failure,
                &format!("{first_failure}{first_failure}"),
                1,
            ),
        ),
        (
            "a case twice",
            xml.replacen(
                "<testcase classname=\"drainwatch.audit\" name=\"python3\"",
                "<testcase classname=\"drainwatch.audit\" name=\"dw-fixture\"",
                1,
            ),
        ),
        (
            "a negative count",
            xml.replacen("tests=\"2\"", "tests=\"-2\"", 2),
        ),
        ("a case without a time", {
            let (head, tail) = xml.split_once("name=\"python3\" time=\"").unwrap();
            let rest = tail.split_once('"').unwrap().1;
            format!("{head}name=\"python3\"{rest}")
        }),
    ];
    for (what, text) in broken {
        assert_ne!(text, xml, "{what}: the mutation did nothing");
        let path = dir.path("broken.xml");
        std::fs::write(&path, &text).unwrap();
        assert!(
            validate(&path).is_err(),
            "junit.xsd accepts {what}:\n{text}"
        );
    }
}
