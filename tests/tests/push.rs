//! Push-style connections and the drain tail (docs/design.md, "request in flight",
//! "drain tail", "drained"), on dw-game in its game shape (`--push-ms`: ticks carry the
//! answers, operations run on workers) with `--autocommit` operations that write A, wait,
//! then write B with nothing in flight between: judged by the server's own truth file and
//! the database's ledger.

use std::{thread, time::Duration};

use drainwatch_tests::{
    db::{Database, PgServer},
    game::{mono_ns, GameServer, Gateway},
    *,
};

/// The tick of the game: the answers ride on it.
const TICK_MS: &str = "50";

fn pid_of(game: &GameServer) -> String {
    game.pid.to_string()
}

#[test]
fn a_server_that_pushes_ticks_is_named_push_style_and_the_basis_says_so() {
    require_root();
    let db = PgServer::start();
    let game = GameServer::start(&db, &["--push-ms", TICK_MS, "--autocommit"]);
    let pid = pid_of(&game);
    let mut watch = Drainwatch::attach(&["watch", "--pid", &pid, "--json", "--interval", "200ms"]);
    let frames = watch.stdout_lines();
    let gateway = Gateway::connect(&game);
    gateway.ticks(4);
    // The live view counts the link as push-style within a few frames.
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let frame = frames.recv_timeout(PATIENCE).expect("watch prints frames");
        let frame: serde_json::Value = serde_json::from_str(&frame).expect("a JSON frame");
        if frame["connections"]["push_style"] == 1 {
            assert_eq!(frame["connections"]["client"], 1, "{frame}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "watch never showed the link push-style: {frame}"
        );
    }
    drop(watch);
    // Closed by the game before `wait` attaches: the basis names the one link that ticks.
    gateway.hang_up_until_closed(&game);
    // `wait` on the game, the gateway's link ticking before attach (it exists then, so the
    // quiet window cannot end before the link does, however slow the machine; and it is
    // the survey's client connection even when a tick beats the survey: issue #22 item 5):
    // drained (nothing in flight), and the verdict says what it rests on.
    let gateway = Gateway::connect(&game);
    gateway.ticks(3);
    let mut wait = Drainwatch::attach(&["wait", "--pid", &pid, "--json", "--quiet", "1s"]);
    wait.wait_for_stderr("drainwatch: drained");
    let done = wait.finish();
    assert_eq!(done.code, 0, "drained stays exit 0: {done:?}");
    let report = last_json(&done.stdout);
    let basis = &report["drain"]["basis"];
    assert_eq!(
        basis["observed"],
        serde_json::json!(["requests", "queries", "transactions", "upstream_calls"]),
        "{report:#}"
    );
    let hidden = basis["could_hide_work"].as_array().expect("a list");
    let push = hidden
        .iter()
        .find(|h| h["why"].as_str().unwrap_or("").contains("push-style"))
        .unwrap_or_else(|| panic!("the push-style link is not named: {report:#}"));
    assert_eq!(push["pid"], game.pid, "{report:#}");
    let why = push["why"].as_str().unwrap();
    assert!(why.contains("fd "), "names the connection: {why}");
    assert!(why.contains("no --op"), "{why}");
    assert!(
        done.stderr.contains(&format!(
            "could hide work: pid {pid}: push-style client connection"
        )),
        "the human line says it: {}",
        done.stderr
    );
    assert!(
        done.stderr.contains("see --op, --settle"),
        "{}",
        done.stderr
    );
    gateway.hang_up();
}

/// The issue's audit of a graceful release: the gateway's ping was read, its answer was due
/// with the next tick, and the gateway hung up first. On a push-style link that proves no
/// dropped request; the game's truth says the same (the answer went nowhere because the
/// link was gone).
#[test]
fn a_push_style_link_hung_up_before_the_next_tick_drops_no_request() {
    require_root();
    let db = PgServer::start();
    // The tick stretched with the machine's slowness: between the ping's read and the next
    // tick the test must see the ping in flight and hang up, which a 50 ms window did not
    // leave room for in a kernel-matrix guest (the pong went out first). The audit lasts
    // past the ticks the test waits for.
    let tick = scaled_ms(50).to_string();
    let game = GameServer::start(&db, &["--push-ms", &tick]);
    let pid = pid_of(&game);
    let dir = TempDir::new("push-hangup");
    let report_path = dir.path("report.json");
    let duration = format!("{}ms", scaled_ms(2_000));
    let audit = Drainwatch::attach(&[
        "audit",
        "--pid",
        &pid,
        "--duration",
        &duration,
        "--report",
        &report_path,
    ]);
    let mut gateway = Gateway::connect(&game);
    gateway.ticks(4);
    // Right after a tick: the next one is a tick away; the gateway hangs up 5 ms after its
    // ping.
    gateway.ticks(1);
    gateway.say("ping");
    let input = game.wait_truth("the ping read", |t| t.requests_in_flight == 1);
    thread::sleep(Duration::from_millis(5));
    gateway.hang_up();
    let after = game.wait_truth("the link closed", |t| t.requests_in_flight == 0);
    assert_eq!(
        after.completed, input.completed,
        "the pong never went out: the link was gone first"
    );
    let done = audit.finish();
    let report = read_report(&report_path);
    assert!(
        violations(&report, "request_dropped").is_empty(),
        "a push-style link's hang-up is no dropped request: {report:#}"
    );
    assert_eq!(report["verdict"], "clean", "{done:?} {report:#}");
    let hidden = report["drain"]["basis"]["could_hide_work"]
        .as_array()
        .expect("a list");
    assert!(
        hidden
            .iter()
            .any(|h| h["why"].as_str().unwrap_or("").contains("push-style")),
        "the basis names the link instead: {report:#}"
    );
}

/// One release of the story: the gateway asks for an operation (A, 800 ms, B) and hangs up
/// (it is stopped); the game writes A at once and B after the pause, with nothing in flight
/// between. The hang-up comes right after the request, so that the tail (hang-up to B) is
/// the pause, whatever the machine's load does to the timing of A.
/// `gateway`: the link, connected before or after drainwatch attached; it ticks (at least)
/// twice while watched first, so that the kernel has seen it push (docs/design.md,
/// "request in flight") and its hang-up with the request read is no dropped request.
fn operation_then_hang_up(
    mut gateway: Gateway,
    game: &GameServer,
    db: &PgServer,
    op: &str,
    pause_ms: u64,
) {
    gateway.fresh_ticks(3);
    gateway.say(&format!("op {op} {pause_ms}"));
    gateway.hang_up();
    game.wait_truth("write A done", |t| t.between_writes == 1);
    assert_eq!(db.ledger_steps(op), ["A"], "inside the pause");
}

/// Staging: an audit measures the drain tail, within a few ms of the game's own record;
/// production: `wait --settle-from` that report never says drained before write B, in
/// every run, where a plain `wait` says drained between A and B.
#[test]
fn settle_from_an_audit_holds_wait_until_the_last_write() {
    require_root();
    let db = PgServer::start();
    let game = GameServer::start(&db, &["--push-ms", TICK_MS, "--autocommit"]);
    let pid = pid_of(&game);
    let dir = TempDir::new("settle-from");
    let audit_path = dir.path("staging.json");
    let pause = scaled_ms(800);
    // The audit lasts until write B is done, by the game's own record (its window is a
    // launched command that ends when the test says so, not a fixed duration that a loaded
    // machine's slow start can outlast).
    let staged = drainwatch_tests::game::Gate::new(&dir, "staged");
    let until_staged = format!(
        "while [ ! -e '{}' ]; do sleep 0.05; done",
        staged.path().display()
    );
    let audit = Drainwatch::attach(&[
        "audit",
        "--pid",
        &pid,
        "--report",
        &audit_path,
        "--",
        "sh",
        "-c",
        &until_staged,
    ]);
    operation_then_hang_up(Gateway::connect(&game), &game, &db, "staging", pause);
    let truth = game.wait_truth("write B done", |t| t.between_writes == 0);
    assert_eq!(db.ledger_steps("staging"), ["A", "B"]);
    staged.open();
    let done = audit.finish();
    assert_eq!(done.code, 0, "{done:?}");
    let report = read_report(&audit_path);
    let tail = report["drain"]["tail_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("the audit measured no tail: {report:#}"));
    // The game brackets its two moments, it cannot stamp them: its close of the link lies
    // between `close_begun` and `last_input` (right before and after close(2)), its write
    // B's send between `last_write` (right before it) and `last_write_done` (its answer
    // read). Stamped on one side only (after the close), a thread that waited its turn
    // around close(2) on a loaded machine made the game's own tail 30-83 ms short.
    let ms = |later: u64, earlier: u64| later.saturating_sub(earlier) / 1_000_000;
    let shortest = ms(truth.last_write_mono_ns, truth.last_input_mono_ns);
    let longest = ms(truth.last_write_done_mono_ns, truth.close_begun_mono_ns);
    let slack = scaled_ms(25);
    assert!(
        tail + slack >= shortest && tail <= longest + slack,
        "tail {tail} ms, the game's own between {shortest} and {longest} ms (slack {slack}): \
         {truth:?}; {report:#}"
    );
    // From the hang-up (just before write A) to write B.
    assert!(tail + slack >= pause, "the tail spans the pause: {tail} ms");
    // Without a settle time the gap between the writes looks drained: the scenario does
    // expose what --settle is for.
    let mut plain = Drainwatch::attach(&["wait", "--pid", &pid, "--json", "--quiet", "300ms"]);
    let mut gateway = Gateway::connect(&game);
    gateway.ticks(1);
    gateway.say(&format!("op plain {}", scaled_ms(5_000)));
    game.wait_truth("write A done", |t| t.between_writes == 1);
    plain.wait_for_stderr("drainwatch: drained");
    assert_eq!(
        db.ledger_steps("plain"),
        ["A"],
        "a plain wait says drained between A and B"
    );
    assert_eq!(game.truth().between_writes, 1);
    assert_eq!(plain.finish().code, 0);
    gateway.hang_up();
    game.wait_truth("the plain op done", |t| t.between_writes == 0);
    for run in 0..5 {
        let op = format!("prod{run}");
        // The link first: the settle time counts from attach while no client input came,
        // and a loaded machine's connect after attach could outlast it (drained before
        // the operation began).
        let gateway = Gateway::connect(&game);
        let mut wait = Drainwatch::attach(&[
            "wait",
            "--pid",
            &pid,
            "--json",
            "--settle-from",
            &audit_path,
        ]);
        operation_then_hang_up(gateway, &game, &db, &op, pause);
        wait.wait_for_stderr("drainwatch: drained");
        let verdict_at = mono_ns();
        let steps = db.ledger_steps(&op);
        let truth = game.truth();
        assert_eq!(
            steps,
            ["A", "B"],
            "run {run}: drained before write B (truth {truth:?})"
        );
        assert_eq!(truth.between_writes, 0, "run {run}: {truth:?}");
        assert!(
            verdict_at > truth.last_write_mono_ns,
            "run {run}: the verdict came before the last write"
        );
        let done = wait.finish();
        assert_eq!(done.code, 0, "run {run}: {done:?}");
        let report = last_json(&done.stdout);
        let settle = report["drain"]["settle_ms"].as_u64().expect("settle_ms");
        assert_eq!(settle, (tail * 3 / 2).max(tail + 100), "{report:#}");
        assert!(
            done.stderr.contains("held by --settle"),
            "the basis says what held it: {}",
            done.stderr
        );
    }
}

#[test]
fn bad_settle_input_is_one_line_and_exit_2() {
    require_root();
    let dir = TempDir::new("settle-bad");
    // A process the commands could act on if they went that far (they must not).
    let mut sleeper = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("start sleep");
    let pid = sleeper.id().to_string();
    let missing = dir.path("missing.json");
    let no_tail = dir.path("no-tail.json");
    std::fs::write(
        &no_tail,
        r#"{"schema":"drainwatch.report/v1","drain":{"tail_ms":null}}"#,
    )
    .unwrap();
    let not_json = dir.path("not-json.txt");
    std::fs::write(&not_json, "tail: 800ms\n").unwrap();
    for (args, says) in [
        (vec!["--settle-from", &missing], "cannot read it"),
        (vec!["--settle-from", &no_tail], "no drain tail"),
        (vec!["--settle-from", &not_json], "not a drainwatch report"),
        (vec!["--settle", "soon"], "invalid duration"),
        (
            vec!["--settle", "1s", "--settle-from", &no_tail],
            "cannot be used with",
        ),
    ] {
        for command in ["wait", "stop"] {
            let mut all = vec![command, "--pid", &pid];
            all.extend(args.iter().copied());
            let done = run_drainwatch(&all);
            assert_eq!(done.code, 2, "{all:?}: {done:?}");
            assert!(done.stderr.contains(says), "{all:?}: {}", done.stderr);
            if !says.contains("used with") {
                assert_eq!(done.stderr.trim().lines().count(), 1, "{}", done.stderr);
            }
        }
    }
    assert!(
        matches!(sleeper.try_wait(), Ok(None)),
        "nothing was signalled"
    );
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}
