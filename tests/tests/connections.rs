//! Connections, requests, queries and transactions as drainwatch sees them, compared with
//! the fixture's own ground truth, on real PostgreSQL, MariaDB and Redis. The private
//! databases listen on random ports, so the protocol is recognised by its first bytes unless
//! a test names the port with `--db-port`.

use std::sync::mpsc::Receiver;

use drainwatch_tests::{
    db::{Database, MariaDbServer, PgServer, RedisServer},
    game::{GameServer, Gate},
    *,
};

const POOL: usize = 3;
const PAUSE_MS: u64 = 600;

/// `watch --json` frames, newest kept.
struct Frames {
    lines: Receiver<String>,
    _watch: Drainwatch,
}

impl Frames {
    fn watch(pid: u32, extra: &[&str]) -> Self {
        let pid = pid.to_string();
        let mut args = vec!["watch", "--pid", &pid, "--json", "--interval", "20ms"];
        args.extend_from_slice(extra);
        let mut watch = Drainwatch::attach(&args);
        let lines = watch.stdout_lines();
        Self {
            lines,
            _watch: watch,
        }
    }

    /// A frame drawn after now: frames already queued may be older, and the next one may
    /// have been drawn just before; the third from now was drawn after (each frame drains
    /// the ring buffer before it is drawn).
    fn fresh(&self) -> Value {
        while self.lines.try_recv().is_ok() {}
        let mut line = String::new();
        for _ in 0..3 {
            line = self
                .lines
                .recv_timeout(PATIENCE)
                .unwrap_or_else(|_| panic!("no watch frame within {PATIENCE:?}"));
        }
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("watch printed a non-JSON line ({e}): {line:?}"))
    }
}

/// One quiescent comparison: drainwatch's counts equal the fixture's. The fixture counts a
/// transaction open just before it sends BEGIN, so the first frame may still show that BEGIN
/// (or the first write) in flight: frames are read until the queries rest, for a while.
fn compare(frames: &Frames, game: &GameServer, mismatches: &mut Vec<String>, label: &str) {
    let truth = game.truth();
    let mut frame = frames.fresh();
    for _ in 0..50 {
        if frame["queries_in_flight"] == 0 {
            break;
        }
        frame = frames.fresh();
    }
    assert_eq!(
        frame["queries_in_flight"], 0,
        "{label}: queries rest during the pause: {frame}"
    );
    let seen = (
        frame["requests_in_flight"].as_u64().unwrap(),
        frame["transactions_open"].as_array().unwrap().len() as u64,
        frame["connections"]["db"].as_u64().unwrap(),
    );
    let wanted = (
        truth.requests_in_flight,
        truth.transactions_open,
        truth.db_connections_open,
    );
    eprintln!("{label}: drainwatch {seen:?}, fixture {wanted:?}");
    if seen != wanted {
        mismatches.push(format!(
            "{label}: drainwatch {seen:?} fixture {wanted:?}: {frame}"
        ));
    }
}

/// Attach to a server whose pool is already connected: the connections are counted from the
/// first moment; then requests come and go and each quiescent point is compared.
fn counts_match_the_fixture(db: &dyn Database, extra: &[&str]) {
    require_root();
    let pool = POOL.to_string();
    let game = GameServer::start(db, &["--pool", &pool]);
    let frames = Frames::watch(game.pid, extra);
    let mut mismatches = Vec::new();
    compare(
        &frames,
        &game,
        &mut mismatches,
        "idle, connections from before attach",
    );

    // Each round's requests wait inside their transactions on a gate, not on a timer: on a
    // loaded machine a timed pause let the first request of a round finish before its last
    // one began, and the round never had all of them in flight at once.
    let dir = TempDir::new("counts");
    for round in 1..=3usize {
        let gate = Gate::new(&dir, &format!("r{round}"));
        let pending: Vec<_> = (0..round)
            .map(|i| game.send_gated_request(&format!("r{round}-{i}"), &gate))
            .collect();
        game.wait_truth("requests inside their transactions", |t| {
            t.requests_in_flight == round as u64 && t.transactions_open == round as u64
        });
        compare(
            &frames,
            &game,
            &mut mismatches,
            &format!("round {round}, in flight"),
        );
        gate.open();
        for p in pending {
            assert!(p.reply().starts_with("done"));
        }
        game.wait_truth("idle", |t| t.requests_in_flight == 0);
        compare(
            &frames,
            &game,
            &mut mismatches,
            &format!("round {round}, idle"),
        );
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

#[test]
fn postgres_counts_match_the_fixture() {
    counts_match_the_fixture(&PgServer::start(), &[]);
}

#[test]
fn postgres_on_a_named_db_port_counts_match_the_fixture() {
    let db = PgServer::start();
    let port = db.port().to_string();
    counts_match_the_fixture(&db, &["--db-port", &port]);
}

#[test]
fn mariadb_counts_match_the_fixture() {
    counts_match_the_fixture(&MariaDbServer::start(), &[]);
}

#[test]
fn redis_counts_match_the_fixture() {
    counts_match_the_fixture(&RedisServer::start(), &[]);
}

/// kill -9 in the middle of the two-write transaction: the audit names the SIGKILL, the
/// transaction cut in half, the connections the kernel had to close and the request cut off.
fn kill_nine_mid_transaction(db: &dyn Database) {
    require_root();
    let dir = TempDir::new("cut");
    let report_path = dir.path("report.json");
    let mut game = GameServer::start(db, &["--pool", "1"]);
    let pid = game.pid.to_string();
    let audit = Drainwatch::attach(&["audit", "--pid", &pid, "--report", &report_path]);
    let pending = game.send_request("cut", 5_000);
    game.wait_truth("inside the transaction", |t| t.transactions_open == 1);
    let killer = signal_from_helper(libc::SIGKILL, game.pid);
    game.wait();
    drop(pending);
    let done = audit.finish();
    assert_eq!(done.code, 1, "{done:?}");
    let report = read_report(&report_path);
    let kinds: Vec<&str> = report["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "sigkill",
            "open_transaction",
            "leaked_db_connection",
            "inflight_at_exit"
        ],
        "{report:#}"
    );
    assert_eq!(violations(&report, "sigkill")[0]["sender_tgid"], killer);
    let txn = violations(&report, "open_transaction")[0];
    assert_eq!(txn["protocol"], db.kind().flag(), "{report:#}");
    assert_eq!(txn["peer"], format!("127.0.0.1:{}", db.port()));
    let leak = violations(&report, "leaked_db_connection")[0];
    assert_eq!(leak["closed_by"], "exit");
    assert_eq!(leak["opened_at_ms"], Value::Null, "opened before attach");
    assert!(
        leak["local"]
            .as_str()
            .is_some_and(|l| l.starts_with("127.0.0.1:")),
        "{leak}"
    );
    let cut = violations(&report, "inflight_at_exit")[0];
    assert_eq!(cut["requests"], 1, "{report:#}");
    // The fixture counts the transaction open just before it sends BEGIN, so the kill can
    // land while BEGIN or the first write is still waiting for its answer (then 1 query).
    assert!(cut["queries"].as_u64().unwrap() <= 1, "{report:#}");
    assert!(done.stdout.contains("cut in half"), "{}", done.stdout);
}

#[test]
fn postgres_kill_nine_mid_transaction() {
    kill_nine_mid_transaction(&PgServer::start());
}

#[test]
fn mariadb_kill_nine_mid_transaction() {
    kill_nine_mid_transaction(&MariaDbServer::start());
}

#[test]
fn redis_kill_nine_mid_transaction() {
    kill_nine_mid_transaction(&RedisServer::start());
}

/// SIGTERM to a server that finishes its request and says goodbye to its database: clean.
fn graceful_stop_is_clean(db: &dyn Database) {
    require_root();
    let dir = TempDir::new("graceful");
    let report_path = dir.path("report.json");
    let mut game = GameServer::start(db, &["--pool", "2", "--on-term", "graceful"]);
    let pid = game.pid.to_string();
    let audit = Drainwatch::attach(&["audit", "--pid", &pid, "--report", &report_path]);
    let pending = game.send_request("last", 300);
    game.wait_truth("in flight", |t| t.requests_in_flight == 1);
    signal_from_helper(libc::SIGTERM, game.pid);
    assert!(pending.reply().starts_with("done"));
    assert!(game.wait().success());
    let done = audit.finish();
    let report = read_report(&report_path);
    assert_eq!(report["verdict"], "clean", "{report:#}");
    assert_eq!(done.code, 0);
    assert_eq!(report["connections"]["db_closed"], 2, "{report:#}");
    assert_eq!(report["requests"]["count"], 1, "{report:#}");
    let p50 = report["requests"]["latency_us"]["p50"].as_u64().unwrap();
    assert!(p50 >= 300_000, "the request paused 300ms: {report:#}");
    assert!(
        report["db_queries"]["count"].as_u64().unwrap() >= 3,
        "{report:#}"
    );
}

#[test]
fn postgres_graceful_stop_is_clean() {
    graceful_stop_is_clean(&PgServer::start());
}

#[test]
fn mariadb_graceful_stop_is_clean() {
    graceful_stop_is_clean(&MariaDbServer::start());
}

#[test]
fn redis_graceful_stop_is_clean() {
    graceful_stop_is_clean(&RedisServer::start());
}

/// A request sent the moment drainwatch says it attached, on a database connection from
/// before attach, is seen (regression). At `-v`, the probe loader's debug line used to say
/// "probe loaded and attached" before the targets and their existing connections were
/// tracked; anything waiting for "attached" (this harness, scripts) then sent traffic in
/// that gap, and the pre-existing db connection's queries and transaction went unseen.
#[test]
fn postgres_request_right_after_attach_on_a_connection_from_before() {
    require_root();
    let db = PgServer::start();
    let game = GameServer::start(&db, &["--pool", "1"]);
    // `-v` is the point: the debug output is where the early "attached" came from.
    let frames = Frames::watch(game.pid, &["-v"]);
    // No delay: the request follows "attached" at once.
    let pending = game.send_request("right-after-attach", PAUSE_MS);
    game.wait_truth("the request inside its transaction", |t| {
        t.requests_in_flight == 1 && t.transactions_open == 1
    });
    let mut mismatches = Vec::new();
    compare(
        &frames,
        &game,
        &mut mismatches,
        "in flight right after attach",
    );
    assert!(pending.reply().starts_with("done"));
    game.wait_truth("idle", |t| t.requests_in_flight == 0);
    compare(&frames, &game, &mut mismatches, "idle after it");
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}
