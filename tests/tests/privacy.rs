//! No query text or payload in any output: a secret travels as a client payload and as a
//! query parameter on real PostgreSQL, and is searched for in everything drainwatch wrote.

use drainwatch_tests::{db::PgServer, game::GameServer, *};

const SECRET: &str = "s3cr3t-hunter2-token";

#[test]
fn a_secret_in_payloads_and_query_parameters_appears_in_no_output() {
    require_root();
    let db = PgServer::start();
    let dir = TempDir::new("privacy");
    let (report, junit) = (dir.path("report.json"), dir.path("junit.xml"));
    let mut game = GameServer::start(&db, &["--pool", "1", "--on-term", "default"]);
    let pid = game.pid.to_string();
    let audit = Drainwatch::attach(&[
        "audit", "--pid", &pid, "--report", &report, "--junit", &junit, "-vv",
    ]);
    // The Prometheus exporter watches the same server, at -vv too.
    let listen = free_loopback_addr();
    let serve = Drainwatch::attach(&["serve", "--pid", &pid, "--listen", &listen, "-vv"]);
    // The op name is the client payload and the INSERT's parameter.
    let done_op = game.send_request(SECRET, 0);
    assert!(
        done_op.reply().contains(SECRET),
        "the fixture echoes it, drainwatch must not"
    );
    let pending = game.send_request(&format!("{SECRET}-2"), 3_000);
    game.wait_truth("inside the transaction", |t| t.transactions_open == 1);
    let metrics = http_get_body(&listen, "/metrics");
    assert!(
        metrics.contains("drainwatch_transactions_open"),
        "the exporter is serving: {metrics}"
    );
    signal_from_helper(libc::SIGKILL, game.pid);
    game.wait();
    drop(pending);
    let done = audit.finish();
    // serve ends by itself once its target is gone.
    let served = serve.finish();
    assert_eq!(done.code, 1, "the kill is seen: {done:?}");
    let outputs = [
        ("stdout", done.stdout.clone()),
        ("stderr at -vv", done.stderr.clone()),
        ("report", std::fs::read_to_string(&report).unwrap()),
        ("junit", std::fs::read_to_string(&junit).unwrap()),
        ("metrics", metrics),
        ("serve stdout", served.stdout),
        ("serve stderr at -vv", served.stderr),
    ];
    assert!(
        outputs[1].1.contains("\"event\":\"db_io\""),
        "-vv shows the events it saw: {}",
        outputs[1].1
    );
    for (name, text) in outputs {
        // Any 6-byte piece of the secret would be a leak.
        for piece in SECRET.as_bytes().windows(6) {
            let piece = std::str::from_utf8(piece).unwrap();
            assert!(
                !text.contains(piece),
                "{name} contains {piece:?} of the secret"
            );
        }
        // -vv prints kept bytes as numbers: look for the secret's bytes in that form too.
        let as_numbers = SECRET
            .bytes()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert!(
            !text.contains(&as_numbers[..12]),
            "{name} has the secret as byte values"
        );
    }
}
