//! Operations (`--op`, docs/design.md "operation") on CPython: the story's release on an
//! asyncio game server (tests/fixtures/game_py.py, behind game_ops' gateway) whose purchase,
//! a coroutine, writes A, waits (a timer, a call to a slow service), writes B; judged by the
//! server's own record and by PostgreSQL's ledger.

use drainwatch_tests::{
    db::PgServer,
    game::mono_ns,
    game_ops::{assert_ops_watched, complete, half_done, GameOps, Gateway},
    game_py,
    nginx::SlowUpstream,
    *,
};

/// Workers of the game (one asyncpg connection each), and the wait between a purchase's
/// two writes.
const WORKERS: u32 = 4;

fn gap_ms() -> u64 {
    scaled_ms(300)
}

/// The release as the story's SRE runs it: the game under load behind its gateway, `wait`
/// attached, the gateway stopped, kill -9 at the verdict; returns wait's report. A Python
/// call begun before attach is not seen (the basis says so): those end within a gap, long
/// before the gateway stops, and new ones keep starting, seen, within the quiet window.
fn release(db: &PgServer, game_args: &[&str], op: Option<&str>) -> Value {
    require_root();
    let (mut game, gateway) = game_under_load(db, game_args);
    let pid = game.pid.to_string();
    let quiet = format!("{}ms", scaled_ms(if op.is_some() { 1000 } else { 100 }));
    let mut args = vec![
        "wait",
        "--pid",
        &pid,
        "--timeout",
        "60s",
        "--json",
        "--quiet",
        &quiet,
    ];
    if let Some(op) = op {
        args.extend(["--op", op]);
    }
    let mut wait = Drainwatch::attach(&args);
    // Purchases never stop while the gateway runs: nothing may call it drained.
    std::thread::sleep(std::time::Duration::from_millis(scaled_ms(1500)));
    if !wait.is_running() {
        panic!(
            "drained while the gateway still sent purchases: {:?}; the game says:\n{}",
            wait.finish(),
            game.log()
        );
    }
    // The gateway stops while a purchase is between its writes (the story's danger; on a
    // loaded machine the game can stall for a while).
    game.wait_truth("a purchase between its writes", |t| t.between_writes >= 1);
    let stopped = mono_ns();
    gateway.stop();
    wait.wait_for_stderr("drained:");
    let truth = game.truth();
    let half = half_done(db);
    game.signal(libc::SIGKILL);
    game.wait();
    assert_eq!(
        (truth.between_writes, truth.queued),
        (0, 0),
        "drained while the game had purchases under way: {truth:?}"
    );
    assert_eq!(
        half, 0,
        "drained with {half} purchases half done in the ledger"
    );
    assert_eq!(half_done(db), 0, "the kill at the verdict cut a purchase");
    assert!(
        truth.last_b_mono_ns > stopped,
        "purchases went on after the gateway stopped (the story's gap): {truth:?}"
    );
    assert!(complete(db) >= 3);
    let done = wait.finish();
    assert_eq!(done.code, 0, "{done:?}");
    serde_json::from_str(done.stdout.lines().last().unwrap()).unwrap()
}

/// `--op purchase` follows the coroutine from its first entry to its final return, across
/// its awaits (docs/design.md, "operation"): the timer gap, which no socket shows, holds the
/// drain.
#[test]
fn py_wait_with_op_on_a_coroutine_is_never_drained_between_its_writes() {
    let db = PgServer::start();
    let report = release(&db, &[], Some("purchase"));
    // One operation per purchase, not one per await: it lasts its gap.
    let hidden = assert_ops_watched(&report, 3, gap_ms());
    assert!(!hidden.contains("no --op"), "{report:#}");
    assert!(
        hidden.contains("operations begun before attach are not seen"),
        "the basis says what a CPython attach cannot see: {report:#}"
    );
    // FILE:FUNCTION names the same coroutine.
    let game = game_py::start(None, 1, 10, &[]);
    let pid = game.pid.to_string();
    for spec in ["game_py.py:purchase", "fixtures/game_py.py:purchase"] {
        let done = run_drainwatch(&["wait", "--pid", &pid, "--op", spec, "--timeout", "5s"]);
        assert_eq!(done.code, 0, "--op {spec}: {done:?}");
    }
}

/// The gap is a call to a slow service (a new connection per call, some in flight at
/// attach): the upstream call in flight holds the drain with no flags at all. Attached
/// mid-load, the service connections that exist at attach are classified from the survey,
/// never from an event that came before it (issue #22 item 5).
#[test]
fn py_service_gap_is_right_with_no_flags() {
    let db = PgServer::start();
    let service = SlowUpstream::start(gap_ms(), None);
    let port = service.port.to_string();
    let report = release(&db, &["--gap", "service", "--service-port", &port], None);
    assert!(
        report["upstream_calls"]["count"].as_u64().unwrap() >= 3,
        "{report:#}"
    );
}

/// The gap is a timer inside the coroutine and no `--op` is given: nothing drainwatch sees
/// holds the drain, so the drained verdict must say what it cannot see (an event loop, the
/// gateway's push-style link).
#[test]
fn py_timer_gap_without_op_says_the_event_loop_could_hide_work() {
    require_root();
    let db = PgServer::start();
    let (game, _gateway) = game_under_load(&db, &[]);
    let pid = game.pid.to_string();
    let done = run_drainwatch(&[
        "wait",
        "--pid",
        &pid,
        "--timeout",
        "60s",
        "--json",
        "--quiet",
        "50ms",
    ]);
    if done.code == 0 {
        let report: Value = serde_json::from_str(done.stdout.lines().last().unwrap()).unwrap();
        let hidden = report["drain"]["basis"]["could_hide_work"].to_string();
        assert!(
            hidden.contains("event loop") && hidden.contains("no --op"),
            "a drained verdict on the asyncio game names the event loop it rests on: \
             {report:#}"
        );
        assert!(
            done.stderr.contains("no --op"),
            "the human line says so too: {}",
            done.stderr
        );
    } else {
        panic!("wait never drained with a purchase every 100 ms? {done:?}");
    }
}

fn game_under_load(db: &PgServer, args: &[&str]) -> (GameOps, Gateway) {
    let game = game_py::start(Some(db), WORKERS, gap_ms(), args);
    // Each player buys every 2 s, stretched with the gap so that the load keeps its shape
    // at any time scale (operations.rs, `every_ms`).
    let gateway = Gateway::start(game.port, 20, scaled_ms(2000));
    game.wait_truth("purchases under way", |t| t.completed >= 3);
    (game, gateway)
}

/// The operation_cut violation of a report, with what the ledger says was half done.
fn check_cut(report: &Value, half: i64) {
    let cuts = violations(report, "operation_cut");
    assert_eq!(cuts.len(), 1, "{report:#}");
    assert_eq!(cuts[0]["function"], "purchase");
    let count = cuts[0]["count"].as_i64().unwrap();
    assert!(
        half >= 1,
        "the scenario needs purchases between A and B: {half}"
    );
    // A purchase that entered but had not finished write A is cut too, and not in the
    // ledger: at most one per worker beyond the half-done ones.
    assert!(
        count >= half && count <= WORKERS as i64,
        "operation_cut count {count}, {half} half done in the ledger: {report:#}"
    );
}

#[test]
fn py_kill_9_mid_purchase_is_operation_cut() {
    require_root();
    let db = PgServer::start();
    let dir = TempDir::new("py-ops-kill");
    let report_path = dir.path("report.json");
    let (mut game, _gateway) = game_under_load(&db, &[]);
    let pid = game.pid.to_string();
    let audit = Drainwatch::attach(&[
        "audit",
        "--pid",
        &pid,
        "--op",
        "purchase",
        "--report",
        &report_path,
    ]);
    // Purchases begun while watched: those from before attach are not seen.
    let attached = game.truth().completed;
    game.wait_truth("purchases since attach, one between its writes", |t| {
        t.completed >= attached + 2 * WORKERS as u64 && t.between_writes >= 1
    });
    game.signal(libc::SIGKILL);
    game.wait();
    let half = half_done(&db);
    let done = audit.finish();
    assert_eq!(done.code, 1, "{done:?}");
    check_cut(&read_report(&report_path), half);
}

#[test]
fn py_an_abandoning_sigterm_handler_is_operation_cut_not_stopped_cleanly() {
    require_root();
    let db = PgServer::start();
    let dir = TempDir::new("py-ops-abandon");
    let report_path = dir.path("report.json");
    let (mut game, _gateway) = game_under_load(&db, &["--on-term", "abandon"]);
    let pid = game.pid.to_string();
    let audit = Drainwatch::attach(&[
        "audit",
        "--pid",
        &pid,
        "--op",
        "purchase",
        "--report",
        &report_path,
    ]);
    // Purchases begun while watched (a Python call begun before attach is not seen), one
    // between its writes when the release signals.
    let attached = game.truth().completed;
    game.wait_truth("purchases since attach, one between its writes", |t| {
        t.completed >= attached + 2 * WORKERS as u64 && t.between_writes >= 1
    });
    game.signal(libc::SIGTERM);
    assert!(game.wait().success(), "the handler exits 0");
    let half = half_done(&db);
    let done = audit.finish();
    assert_eq!(done.code, 1, "{done:?}");
    let report = read_report(&report_path);
    assert_eq!(report["verdict"], "violations", "{report:#}");
    check_cut(&report, half);
}

#[test]
fn py_an_op_that_is_no_python_name_exits_2_in_one_line() {
    require_root();
    let game = game_py::start(None, 1, 10, &[]);
    let pid = game.pid.to_string();
    let done = run_drainwatch(&["wait", "--pid", &pid, "--op", "Game.purchase"]);
    assert_eq!(done.code, 2, "{done:?}");
    let line = done.stderr.lines().last().unwrap_or_default();
    assert!(
        line.starts_with("drainwatch: --op: Game.purchase: not a Python function's name")
            && line.contains("game.py:purchase"),
        "{line}"
    );
}
