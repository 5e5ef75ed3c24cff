//! Load: 10,000 concurrent client connections to a watched server, then 20 seconds of
//! connection churn. The report's counts must match what the load generators did exactly,
//! drainwatch's memory must stay bounded, and no event may be lost at the default ring
//! size. Its own test binary, so that nothing else runs beside it.

use std::time::Duration;

use drainwatch_tests::*;

/// Peak RSS allowed for drainwatch here (the benchmark measures ~23 MB at 10k connections;
/// this bounds growth, it is not a benchmark).
const MAX_HWM_KB: u64 = 48 * 1024;
const HELD: usize = 10_000;

fn vm_hwm_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn ten_thousand_connections_and_churn_are_counted_exactly() {
    require_root();
    let dir = TempDir::new("load");
    let report_path = dir.path("report.json");
    let mut server = Server::start(&[]);
    let pid = server.pid.to_string();
    let audit = Drainwatch::attach(&["audit", "--pid", &pid, "--report", &report_path]);
    let (mut hold, held) = hold_connections(server.port, HELD, 300);
    assert_eq!(held, HELD as u64, "dw-load could not open them all");
    // 20 s make thousands of connections (each opened, used and closed): enough for an exact
    // count to mean something, and a third of the time a minute took on each backend.
    let churned = churn(server.port, 8, Duration::from_secs(20));
    assert!(churned > 1_000, "churn made only {churned} connections");
    let hwm_kb = vm_hwm_kb(audit.pid());
    // Let the held connections go: 10,000 closes at once.
    drop(hold.stdin.take());
    assert!(
        wait_with_deadline(&mut hold, PATIENCE).is_some(),
        "dw-load ends"
    );
    signal_from_helper(libc::SIGTERM, server.pid);
    server.wait();
    let done = audit.finish();
    let report = read_report(&report_path);
    assert_eq!(report["events"]["lost"], 0, "{:#}", report["events"]);
    assert_eq!(done.code, 0, "{done:?}");
    assert_eq!(report["verdict"], "clean");
    let opened = held + churned;
    let counts = &report["connections"];
    assert_eq!(counts["client_opened"], opened, "{counts:#}");
    assert_eq!(counts["client_closed"], opened, "{counts:#}");
    assert!(
        hwm_kb > 0 && hwm_kb <= MAX_HWM_KB,
        "drainwatch peak RSS {hwm_kb} kB with {held} connections and churn"
    );
    eprintln!(
        "load: {held} held + {churned} churned connections, {} events received, peak RSS {} MB",
        report["events"]["received"],
        hwm_kb / 1024
    );
}
