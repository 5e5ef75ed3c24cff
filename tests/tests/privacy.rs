//! No query text or payload in any output: a secret travels as a client payload and as a
//! query parameter on real PostgreSQL, and is searched for in everything drainwatch wrote.

use drainwatch_tests::{
    db::{Database, PgServer},
    game::GameServer,
    *,
};

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

/// The same inside TLS (docs/how-it-sees.md, "TLS"): the plaintext that the SSL_read /
/// SSL_write hooks read goes through the same kernel redaction. The secret is the client
/// payload and the INSERT's parameter of a psycopg (libpq) and a node-pg conversation with
/// a PostgreSQL over TLS; it appears in no output, at -vv either.
#[test]
fn a_secret_inside_tls_appears_in_no_output() {
    use drainwatch_tests::shop::{Shop, Stack, PATIENCE};
    require_root();
    let db = PgServer::start_tls();
    for client in [Stack::Psycopg, Stack::NodePgTls] {
        let dir = TempDir::new("privacy-tls");
        let (report, junit) = (dir.path("report.json"), dir.path("junit.xml"));
        let mut shop = Shop::start(client, "graceful", &db.url());
        let pid = shop.pid.to_string();
        let audit = Drainwatch::attach(&[
            "audit", "--pid", &pid, "--report", &report, "--junit", &junit, "-vv",
        ]);
        let answer = shop.request_in_transaction(SECRET);
        shop.signal(libc::SIGTERM);
        shop.open_gate();
        assert_eq!(
            answer.recv_timeout(PATIENCE).unwrap(),
            format!("done {SECRET}\n"),
            "the fixture echoes it, drainwatch must not"
        );
        shop.wait();
        let done = audit.finish();
        let report_text = std::fs::read_to_string(&report).unwrap();
        let parsed: Value = serde_json::from_str(&report_text).unwrap();
        assert_eq!(parsed["verdict"], "clean", "{client:?}: {parsed:#}");
        let outputs = [
            ("stdout", done.stdout.clone()),
            ("stderr at -vv", done.stderr.clone()),
            ("report", report_text),
            ("junit", std::fs::read_to_string(&junit).unwrap()),
        ];
        assert!(
            outputs[1].1.contains("\"event\":\"db_io\"") && outputs[1].1.contains("\"tls\":true"),
            "{client:?}: -vv shows the TLS plaintext events it saw: {}",
            outputs[1].1
        );
        for (name, text) in outputs {
            for piece in SECRET.as_bytes().windows(6) {
                let piece = std::str::from_utf8(piece).unwrap();
                assert!(
                    !text.contains(piece),
                    "{client:?}: {name} contains {piece:?} of the secret"
                );
            }
            let as_numbers = SECRET
                .bytes()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(",");
            assert!(
                !text.contains(&as_numbers[..12]),
                "{client:?}: {name} has the secret as byte values"
            );
        }
    }
}
