//! `dw-game`: a "legacy game server" for drainwatch to watch. Each client request runs a
//! two-write transaction against a real database through the usual client crate, so the
//! probes see real PostgreSQL, MySQL and Redis conversations, and the server writes its own
//! ground truth (what is in flight right now) for the tests to compare with drainwatch.
//!
//! ```text
//! dw-game --db postgres|mysql|redis --db-url URL [--port N] [--pause-ms N] [--pool N]
//!         [--on-term graceful|ignore|default] [--truth FILE] [--push-ms N] [--autocommit]
//!         [--service HOST:PORT] [--service-kept]
//! ```
//!
//! - `--db-url`: `postgresql://postgres@127.0.0.1:5432/postgres`,
//!   `mysql://root@127.0.0.1:3306/drainwatch`, `redis://127.0.0.1:6379/` (always TCP: the
//!   mysql crate's switch to a local unix socket is turned off).
//! - `--port`: listening port on 127.0.0.1 (default 0: any free port).
//! - `--pause-ms`: pause between the two writes when a request names none (default 0).
//! - `--pool`: database connections opened at start and reused (default 2); a request
//!   waits for a free one.
//! - `--on-term`: `graceful` (default): on SIGTERM stop accepting, finish the requests in
//!   flight, close every database connection with the protocol's goodbye (PostgreSQL
//!   Terminate, MySQL COM_QUIT, Redis QUIT), exit 0 (1 if a goodbye failed). `ignore`:
//!   SIGTERM is ignored. `default`: SIGTERM kills at once (the kernel closes the sockets).
//! - `--push-ms N`: the game shape of docs/design.md's push-style connections: a `tick`
//!   line goes out on every client connection every N ms, and what the server answers
//!   (`pong`, `done NAME`) rides on the next tick, in the same write (a game batches what it
//!   sends per tick); an `op` runs on a worker thread while the connection's reader reads
//!   on, so a client that hangs up does not wait for it (its reply is then dropped). On
//!   EOF the server closes the connection at once; a graceful SIGTERM still lets the
//!   workers finish.
//! - `--autocommit`: write A and write B are each their own statement, no transaction
//!   around them (nothing is in flight on the database between them).
//! - `--service HOST:PORT`: the wait between write A and write B is a call to another
//!   service over TCP instead of a pause (an op's PAUSE_MS is then ignored): an HTTP/1.1
//!   `GET /NAME` on a new connection, its whole answer read until the service closes
//!   (`dw-fixture slow-http` answers after its own delay; docs/design.md, "upstream call in
//!   flight"). With `--service-kept`: a line `call NAME` on a connection kept and reused (at
//!   most one per operation running at once), its one-line answer read (`dw-fixture
//!   slow-line`).
//! - `--truth FILE`: after every change, FILE is replaced (write + rename, so readers never
//!   see half a file) by one JSON object:
//!   `{"pid":P,"requests_in_flight":N,"transactions_open":N,"db_connections_open":N,
//!   "completed":N,"last_completion_mono_ns":NS,"between_writes":N,"last_input_mono_ns":NS,
//!   "last_write_mono_ns":NS}`. A request is in flight from reading its
//!   line until its reply is written; a transaction counts as open from the moment write A
//!   was answered (inside BEGIN/START TRANSACTION/MULTI, just before the pause) until
//!   COMMIT/EXEC is answered, so that a test that sees it is inside the pause; `last_completion_mono_ns` is
//!   CLOCK_MONOTONIC after the last reply was written (0 before the first), the clock of the
//!   kernel's bpf_ktime_get_ns. `between_writes`: autocommit operations after write A
//!   and before write B; `last_input_mono_ns`: after the last line was read from a
//!   client (`--push-ms`: or after its connection was closed at EOF); `last_write_mono_ns`:
//!   right before the last write (A or B) was sent; `last_write_done_mono_ns`: after the
//!   operation's last write was answered (after its commit); `close_begun_mono_ns`: right
//!   before a `--push-ms` connection's close at EOF (`last_input_mono_ns` is right after).
//!
//! Protocol, one line each way: `op NAME [PAUSE_MS | @GATE_FILE]` -> `done NAME` (or
//! `error NAME WHY`); `@GATE_FILE` pauses until that file exists;
//! `ping` -> `pong` (no database work). The transaction, with NAME as a parameter:
//! - PostgreSQL: `BEGIN; INSERT INTO ledger(op, step) VALUES (NAME, 'A'); <pause>;
//!   INSERT ... 'B'; COMMIT` (the table is created at start).
//! - MySQL: the same with `START TRANSACTION` (InnoDB table, created at start).
//! - Redis: `MULTI; RPUSH ledger:NAME A; <pause>; RPUSH ledger:NAME B; EXEC`, each its own
//!   round trip so the MULTI is open during the pause (a pipeline would send it all at once;
//!   https://redis.io/docs/latest/develop/interact/transactions/).
//!
//! Prints `ready pid=PID port=PORT` once the pool is connected and it listens.

use std::{
    io::Write,
    net::TcpListener,
    os::fd::AsRawFd,
    path::PathBuf,
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Condvar, Mutex,
    },
    thread,
    time::Duration,
};

// A crate root looks for modules beside itself (src/bin/), not in a folder of its name.
#[path = "game_server/conn.rs"]
mod conn;
#[path = "game_server/push.rs"]
mod push;
#[path = "game_server/requests.rs"]
mod requests;

use conn::{why, Conn, Kind};
use requests::{block_term_in_this_thread, serve_client, Pool, Shared, Truth};

const USAGE: &str = "usage: dw-game --db postgres|mysql|redis --db-url URL [--port N] \
                     [--pause-ms N] [--pool N] [--on-term graceful|ignore|default] [--truth FILE] \
                     [--push-ms N] [--autocommit] [--service HOST:PORT] [--service-kept]";

/// Set by the SIGTERM handler (graceful mode only).
static TERM: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    TERM.store(true, Ordering::SeqCst);
}

#[derive(Clone, Copy, PartialEq)]
enum OnTerm {
    Graceful,
    Ignore,
    Default,
}

struct Args {
    kind: Kind,
    url: String,
    port: u16,
    pause: Duration,
    pool: usize,
    on_term: OnTerm,
    truth: Option<PathBuf>,
    push: Option<Duration>,
    autocommit: bool,
    service: Option<std::net::SocketAddr>,
    service_kept: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut kind, mut url) = (None, None);
    let mut parsed = Args {
        kind: Kind::Postgres,
        url: String::new(),
        port: 0,
        pause: Duration::ZERO,
        pool: 2,
        on_term: OnTerm::Graceful,
        truth: None,
        push: None,
        autocommit: false,
        service: None,
        service_kept: false,
    };
    while let Some(flag) = args.next() {
        if flag == "--autocommit" {
            parsed.autocommit = true;
            continue;
        }
        if flag == "--service-kept" {
            parsed.service_kept = true;
            continue;
        }
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{flag}: not a number: {value}"))
        };
        match flag.as_str() {
            "--db" => {
                kind = Some(match value.as_str() {
                    "postgres" => Kind::Postgres,
                    "mysql" => Kind::Mysql,
                    "redis" => Kind::Redis,
                    _ => return Err(format!("--db: unknown database {value}")),
                })
            }
            "--db-url" => url = Some(value),
            "--port" => parsed.port = number()?.try_into().map_err(|_| "--port: too big")?,
            "--pause-ms" => parsed.pause = Duration::from_millis(number()?),
            "--pool" => parsed.pool = number()?.max(1) as usize,
            "--on-term" => {
                parsed.on_term = match value.as_str() {
                    "graceful" => OnTerm::Graceful,
                    "ignore" => OnTerm::Ignore,
                    "default" => OnTerm::Default,
                    _ => return Err(format!("--on-term: unknown mode {value}")),
                }
            }
            "--truth" => parsed.truth = Some(PathBuf::from(value)),
            "--service" => {
                parsed.service = Some(
                    value
                        .parse()
                        .map_err(|_| format!("--service: not HOST:PORT: {value}"))?,
                )
            }
            "--push-ms" => {
                parsed.push = Some(Duration::from_millis(number()?.max(1)));
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    parsed.kind = kind.ok_or("--db is required")?;
    parsed.url = url.ok_or("--db-url is required")?;
    Ok(parsed)
}

fn set_term_disposition(mode: OnTerm) {
    // SAFETY: sigaction with a handler that only stores to an atomic (async-signal-safe).
    // No SA_RESTART: the main thread's poll() returns at once with EINTR.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = match mode {
            OnTerm::Graceful => on_term as *const () as usize,
            OnTerm::Ignore => libc::SIG_IGN,
            OnTerm::Default => libc::SIG_DFL,
        };
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGTERM, &action, std::ptr::null_mut());
    }
}

fn run(args: Args) -> Result<ExitCode, String> {
    set_term_disposition(args.on_term);
    let truth = Truth {
        counters: Mutex::default(),
        file: args.truth.clone(),
    };
    truth.update(|_| {});
    let mut conns = Vec::new();
    for _ in 0..args.pool {
        let conn = Conn::open(args.kind, &args.url)
            .map_err(|e| format!("connect to {}: {e}", args.url))?;
        conns.push(conn);
        truth.update(|t| t.db_connections_open += 1);
    }
    conns[0]
        .create_schema()
        .map_err(|e| format!("create the ledger: {e}"))?;
    let shared = Arc::new(Shared {
        pool: Pool {
            idle: Mutex::new(conns),
            freed: Condvar::new(),
        },
        truth,
        default_pause: args.pause,
        autocommit: args.autocommit,
        service: args.service,
        service_kept: args.service_kept,
        draining: AtomicBool::new(false),
    });
    let push = args.push;

    let listener =
        TcpListener::bind(("127.0.0.1", args.port)).map_err(|e| format!("listen: {e}"))?;
    listener.set_nonblocking(true).map_err(why)?;
    let port = listener.local_addr().map_err(why)?.port();
    println!("ready pid={} port={port}", std::process::id());
    let _ = std::io::stdout().flush();

    let mut workers: Vec<thread::JoinHandle<()>> = Vec::new();
    while !TERM.load(Ordering::SeqCst) {
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one pollfd that we own. EINTR (SIGTERM) just loops to the check.
        let ready = unsafe { libc::poll(&mut pfd, 1, 100) } > 0;
        workers.retain(|w| !w.is_finished());
        if !ready {
            continue;
        }
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                let shared = Arc::clone(&shared);
                workers.push(thread::spawn(move || {
                    block_term_in_this_thread();
                    match push {
                        Some(every) => push::serve(stream, &shared, every),
                        None => serve_client(stream, &shared),
                    }
                }));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => eprintln!("dw-game: accept: {e}"),
        }
    }

    // Graceful stop: refuse new connections, let requests in flight finish, say goodbye.
    drop(listener);
    shared.draining.store(true, Ordering::SeqCst);
    for worker in workers {
        let _ = worker.join();
    }
    let conns = std::mem::take(&mut *shared.pool.idle.lock().unwrap_or_else(|p| p.into_inner()));
    let mut failed = false;
    for conn in conns {
        if let Err(e) = conn.close() {
            eprintln!("dw-game: closing a database connection: {e}");
            failed = true;
        }
        shared.truth.update(|t| t.db_connections_open -= 1);
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("dw-game: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dw-game: {e}");
            ExitCode::FAILURE
        }
    }
}
