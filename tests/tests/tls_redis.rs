//! Redis over TLS read in plaintext (uprobes on OpenSSL's SSL_read/SSL_write,
//! docs/how-it-sees.md "TLS"): Debian's redis-cli (hiredis with its OpenSSL layer, on the
//! system's libssl.so.3), fed commands line by line on a pipe, against a private
//! redis-server listening for TLS with a self-signed certificate (db/redis_server.rs
//! `start_tls`). redis-cli is the audited process: the client end of the conversation is
//! where a server's database connections live. Ground truth: the ledger list, read over the
//! server's plaintext port (MULTI's queued commands only run at EXEC,
//! https://redis.io/docs/latest/develop/interact/transactions/).

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
};

use drainwatch_tests::{
    db::{Database, RedisServer},
    kinds, read_report, require_root,
    shop::PATIENCE,
    tls::{assert_read_in_plaintext, audit},
    violations, TempDir,
};

const REDIS_CLI: &str = "/usr/bin/redis-cli";

/// redis-cli over TLS in its prompt-less mode (stdin a pipe): one command per line, one
/// reply per line on stdout.
struct RedisCli {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl RedisCli {
    fn start(db: &RedisServer) -> Self {
        assert!(
            std::path::Path::new(REDIS_CLI).is_file(),
            "{REDIS_CLI} not found: the Debian package redis-tools (a dependency of \
             redis-server) is missing; `cargo xtask setup` installs it"
        );
        let mut child = Command::new(REDIS_CLI)
            // --insecure: the test server's certificate is self-signed.
            .args(["--tls", "--insecure", "-h", "127.0.0.1", "-p"])
            .arg(db.tls_port().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {REDIS_CLI}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let mut cli = Self {
            stdin: child.stdin.take(),
            child,
            lines,
        };
        // Connected and through the TLS handshake before anyone attaches.
        cli.command("PING", "PONG");
        cli
    }

    /// Sends one command and waits for its one-line reply.
    fn command(&mut self, command: &str, reply: &str) {
        let stdin = self.stdin.as_mut().expect("redis-cli stdin open");
        writeln!(stdin, "{command}").expect("write to redis-cli");
        stdin.flush().unwrap();
        let got = self
            .lines
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|e| panic!("redis-cli: no reply to {command}: {e}"));
        assert_eq!(got, reply, "redis-cli: reply to {command}");
    }
}

impl Drop for RedisCli {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// kill -9 between MULTI and EXEC: `open_transaction` (protocol redis) and the connection
/// leaked (no QUIT). Ground truth: the queued RPUSH never ran.
#[test]
fn redis_cli_tls_kill9_inside_multi_is_open_transaction() {
    require_root();
    let db = RedisServer::start_tls();
    let dir = TempDir::new("tls-redis-kill9");
    let report_path = dir.path("report.json");
    let mut cli = RedisCli::start(&db);
    let dw = audit(cli.child.id(), &report_path);
    cli.command("MULTI", "OK");
    cli.command("RPUSH ledger:rk9 A", "QUEUED");
    // SAFETY: kill(2) on the redis-cli this test started.
    assert_eq!(
        unsafe { libc::kill(cli.child.id() as i32, libc::SIGKILL) },
        0
    );
    cli.child.wait().unwrap();
    let finished = dw.finish();
    assert!(db.ledger_steps("rk9").is_empty(), "discarded");
    let report = read_report(&report_path);
    let kinds = kinds(&report);
    assert!(
        kinds.contains(&"open_transaction".to_string()),
        "{kinds:?}\n{}\n{}",
        finished.stdout,
        finished.stderr
    );
    let open = violations(&report, "open_transaction");
    assert_eq!(open.len(), 1, "{report:#}");
    assert_eq!(open[0]["protocol"], "redis", "{report:#}");
    assert_eq!(open[0]["peer"], format!("127.0.0.1:{}", db.tls_port()));
    let leaks = violations(&report, "leaked_db_connection");
    assert_eq!(leaks.len(), 1, "no QUIT was sent: {report:#}");
    assert_eq!(leaks[0]["closed_by"], "exit", "{report:#}");
    assert_read_in_plaintext(&report, &finished.stderr, true);
    assert_eq!(finished.code, 1);
}

/// MULTI, two RPUSHes, EXEC, then end of input: redis-cli exits 0. The transaction's end
/// was seen inside TLS: no `open_transaction`. redis-cli never says goodbye: its prompt
/// takes `quit` as its own command and exits without sending QUIT (seen with strace on
/// Debian's redis-cli 7.0.15, plaintext: no write after `quit`), and Redis 7.2 deprecates
/// QUIT anyway: a Redis connection closed with no transaction open and no reply owed is a
/// clean close (docs/design.md, "clean close"). Ground truth: both rows.
#[test]
fn redis_cli_tls_exec_then_exit_ends_the_transaction() {
    require_root();
    let db = RedisServer::start_tls();
    let dir = TempDir::new("tls-redis-exec");
    let report_path = dir.path("report.json");
    let mut cli = RedisCli::start(&db);
    let dw = audit(cli.child.id(), &report_path);
    cli.command("MULTI", "OK");
    cli.command("RPUSH ledger:rx A", "QUEUED");
    cli.command("RPUSH ledger:rx B", "QUEUED");
    // EXEC's reply is an array: redis-cli prints one line per element.
    cli.command("EXEC", "1");
    assert_eq!(cli.lines.recv_timeout(PATIENCE).unwrap(), "2");
    drop(cli.stdin.take());
    assert_eq!(cli.child.wait().unwrap().code(), Some(0));
    let finished = dw.finish();
    assert_eq!(db.ledger_steps("rx"), ["A", "B"]);
    let report = read_report(&report_path);
    assert_eq!(
        kinds(&report),
        Vec::<String>::new(),
        "{}\n{}",
        finished.stdout,
        finished.stderr
    );
    assert_eq!(report["verdict"], "clean", "{report:#}");
    assert_eq!(
        report["db_queries"]["count"], 4,
        "MULTI, 2 RPUSH, EXEC: {report:#}"
    );
    assert_read_in_plaintext(&report, &finished.stderr, true);
    assert_eq!(finished.code, 0);
}
