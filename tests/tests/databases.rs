//! The database harness (src/db/) and the dw-game fixture, proven against real PostgreSQL,
//! MariaDB and Redis before drainwatch's tests rely on them as ground truth. No probe is
//! loaded here. Needs the Debian packages (`cargo xtask setup`); a missing one fails the
//! test with the fix, it never skips.
//!
//! Each test starts its own private server once and runs every scenario against it, so the
//! tests run in parallel without sharing anything.

use std::{
    net::TcpStream,
    os::unix::process::ExitStatusExt,
    thread,
    time::{Duration, Instant},
};

use drainwatch_tests::{
    db::{Database, MariaDbServer, PgServer, RedisServer},
    game::{mono_ns, GameServer, Gate},
    TempDir,
};

/// Three requests in flight at once, each inside its own open transaction; then all answered,
/// both writes of each committed, and the truth back to idle.
fn concurrent_requests(db: &dyn Database) {
    let game = GameServer::start(db, &["--pool", "3"]);
    let idle = game.truth();
    assert_eq!(idle.pid, game.pid);
    assert_eq!(idle.db_connections_open, 3, "{idle:?}");
    assert_eq!(idle.requests_in_flight, 0, "{idle:?}");

    // The requests wait inside their transactions on a gate: a timed pause let the first one
    // finish before the last began on a loaded machine.
    let dir = TempDir::new("concurrent");
    let gate = Gate::new(&dir, "all");
    let ops = ["alpha", "bravo", "charlie"];
    let pending: Vec<_> = ops
        .iter()
        .map(|op| game.send_gated_request(op, &gate))
        .collect();
    game.wait_truth("3 requests in flight, 3 transactions open", |t| {
        t.requests_in_flight == 3 && t.transactions_open == 3
    });
    let opened_at = gate.open();
    for (op, request) in ops.iter().zip(pending) {
        assert_eq!(request.reply(), format!("done {op}"));
    }
    let done = game.wait_truth("all 3 answered", |t| t.completed == 3);
    assert_eq!(done.requests_in_flight, 0, "{done:?}");
    assert_eq!(done.transactions_open, 0, "{done:?}");
    assert_eq!(done.db_connections_open, 3, "{done:?}");
    assert!(
        done.last_completion_mono_ns >= opened_at && done.last_completion_mono_ns <= mono_ns(),
        "last completion at {} ns, the gate opened at {opened_at} ns: not CLOCK_MONOTONIC?",
        done.last_completion_mono_ns
    );
    for op in ops {
        assert_eq!(db.ledger_steps(op), ["A", "B"], "ledger of {op}");
    }
}

/// Polls until a connection to `port` is refused (the listener is closed).
fn wait_refused(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "port {port} still accepts");
        thread::sleep(Duration::from_millis(5));
    }
}

/// SIGTERM with a request in flight: no new connections, the request completes, every
/// database connection is closed with its goodbye, exit 0.
fn graceful_term(db: &dyn Database) {
    let unclean_before = db.unclean_closes();
    let mut game = GameServer::start(db, &["--on-term", "graceful"]);
    // Long enough that the listener is seen closed while the request is still in its pause,
    // even on a loaded machine (500 ms was once not enough under the load test's aftermath).
    let request = game.send_request("graceful", 2_000);
    game.wait_truth("the request's transaction open", |t| {
        t.transactions_open == 1
    });
    game.signal(libc::SIGTERM);
    wait_refused(game.port);
    let draining = game.truth();
    assert_eq!(
        (draining.requests_in_flight, draining.transactions_open),
        (1, 1),
        "the request was not in flight any more when the listener closed"
    );
    assert_eq!(request.reply(), "done graceful");
    let status = game.wait();
    assert_eq!(status.code(), Some(0), "{status}; stderr:\n{}", game.log());
    let last = game.truth();
    assert_eq!(
        (
            last.requests_in_flight,
            last.transactions_open,
            last.db_connections_open,
            last.completed
        ),
        (0, 0, 0, 1),
        "{last:?}"
    );
    assert_eq!(db.ledger_steps("graceful"), ["A", "B"]);
    assert_eq!(
        db.unclean_closes(),
        unclean_before,
        "the server saw a close without goodbye; its log:\n{}",
        db.log_tail()
    );
}

/// `--on-term default`: SIGTERM kills it mid-transaction; the server rolls the transaction
/// back and (PostgreSQL, MariaDB) counts both pool connections as closed without goodbye.
fn killed_by_term(db: &dyn Database) {
    let unclean_before = db.unclean_closes();
    let mut game = GameServer::start(db, &["--on-term", "default"]);
    let request = game.send_request("killed", 5_000);
    game.wait_truth("the request's transaction open", |t| {
        t.transactions_open == 1
    });
    game.signal(libc::SIGTERM);
    let status = game.wait();
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status}");
    assert_eq!(request.reply(), "", "a killed server answers nothing");
    assert!(
        db.ledger_steps("killed").is_empty(),
        "the half transaction was not rolled back"
    );
    if let Some(before) = unclean_before {
        assert_eq!(
            db.unclean_closes(),
            Some(before + 2),
            "both pool connections should count as unclean; log:\n{}",
            db.log_tail()
        );
    }
}

fn all_scenarios(db: &dyn Database) {
    concurrent_requests(db);
    graceful_term(db);
    killed_by_term(db);
}

#[test]
fn postgres_game_server() {
    all_scenarios(&PgServer::start());
}

#[test]
fn mariadb_game_server() {
    all_scenarios(&MariaDbServer::start());
}

#[test]
fn redis_game_server() {
    all_scenarios(&RedisServer::start());
}

/// `--pool 1`: the second request waits for the connection, so two requests are in flight
/// but only one transaction is open.
#[test]
fn pool_of_one_queues_requests() {
    let db = RedisServer::start();
    let game = GameServer::start(&db, &["--pool", "1"]);
    // The first holds the only connection until the gate opens, however busy the machine;
    // the second then finds the gate open.
    let dir = TempDir::new("pool-of-one");
    let gate = Gate::new(&dir, "first");
    let first = game.send_gated_request("first", &gate);
    let second = game.send_gated_request("second", &gate);
    game.wait_truth("2 requests in flight, 1 transaction open", |t| {
        t.requests_in_flight == 2 && t.transactions_open == 1
    });
    // A while later, the gate still shut: the second still waits for the connection.
    thread::sleep(Duration::from_millis(100));
    let waiting = game.truth();
    assert_eq!(
        (waiting.requests_in_flight, waiting.transactions_open),
        (2, 1),
        "{waiting:?}"
    );
    gate.open();
    assert_eq!(first.reply(), "done first");
    assert_eq!(second.reply(), "done second");
    assert_eq!(db.ledger_steps("second"), ["A", "B"]);
}

/// `--on-term ignore`: SIGTERM changes nothing.
#[test]
fn ignored_term_keeps_serving() {
    let db = RedisServer::start();
    let mut game = GameServer::start(&db, &["--on-term", "ignore"]);
    game.signal(libc::SIGTERM);
    thread::sleep(Duration::from_millis(200));
    assert_eq!(game.ping(), "pong");
    assert_eq!(game.send_request("still", 0).reply(), "done still");
    assert!(game.child.try_wait().expect("try_wait").is_none());
}
