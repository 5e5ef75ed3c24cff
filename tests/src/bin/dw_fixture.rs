//! `dw-fixture`: the small sample server and helpers that the demo and the integration tests
//! run under drainwatch.
//!
//! - `dw-fixture server [--fork-child] [--no-term-handler]`: a TCP echo server on loopback.
//!   Prints `ready pid=PID port=PORT child=CHILD` once it listens. SIGTERM makes it (and its
//!   child) exit 0, unless `--no-term-handler`, where SIGTERM kills it as the default action.
//! - `dw-fixture server --workers N [--reply-after-ms MS] [--gate FILE]`: a pre-fork echo
//!   server, the shape of nginx or gunicorn: the master listens, forks N workers that accept
//!   on its socket (one connection at a time each) and echo every read once FILE exists and
//!   MS ms have passed, then waits. Prints
//!   `ready pid=MASTER port=PORT child=0 workers=W1,W2`. SIGTERM to the master is passed on to
//!   the workers, which finish the echo in hand, close and exit 0; the master exits 0 after
//!   them. Workers die with the master (PR_SET_PDEATHSIG).
//! - `dw-fixture slow-http --delay-ms MS [--gate FILE]`: an HTTP/1.x upstream on loopback that
//!   answers every request `200 slow` once FILE exists and MS ms have passed, and closes
//!   (Connection: close). The gate lets a test decide when requests end, at any machine speed. Prints `ready pid=PID
//!   port=PORT child=0` once it listens, then `request` once it has read each request.
//! - `dw-fixture slow-line --delay-ms MS [--hold-while FILE]`: a service on loopback that
//!   keeps its connections: every line it reads is answered `ok` after MS ms, and not while
//!   FILE exists (a test holds the answers by creating it, at most ten minutes; calls on a
//!   connection a client reuses, docs/design.md "upstream call in flight"). Prints
//!   `ready pid=PID port=PORT child=0` once it listens.
//! - `dw-fixture hot-op [--report-ms MS]`: calls `dw_hot_op` (a few instructions, a symbol of
//!   its own) in a loop forever and prints `calls N NS` (calls so far, ns since start) every
//!   MS ms (default 100): the hot function `dw-bench ops` hooks with `--op dw_hot_op`.
//!   Prints `ready pid=PID port=0 child=0` first.
//! - `dw-fixture uring-echo --port P`: accepts one client on 127.0.0.1:P and echoes through
//!   io_uring, never read(2)/write(2) on the socket (dw_fixture/uring.rs).
//! - `dw-fixture build-game-ops`: compiles the C++ game server of the operations tests if it
//!   is missing or older than its source (tests/src/game_ops.rs, `game_ops_bin`) and prints
//!   its path: the kernel matrix builds it here before its guests start, where it would be
//!   compiled again under TCG in each of them (xtask/src/matrix.rs).
//! - `dw-fixture build-game-go`: builds the Go game server, plain and stripped
//!   (tests/src/game_go.rs), and prints their two paths, one a line, for the same reason.
//! - `dw-fixture signal SIGNUM PID [--linger-ms N]`: sends a signal with kill(2), then stays
//!   alive N ms (default 300) so that its command line can still be read.
//! - `dw-fixture exit CODE [--after-ms N]`: exits with CODE.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::Duration,
};

static TERM: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    TERM.store(true, Ordering::SeqCst);
}

fn install_term_handler() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_term as *const () as usize;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGTERM, &action, std::ptr::null_mut());
    }
}

fn flag_value(args: &[String], flag: &str) -> Option<u64> {
    let at = args.iter().position(|a| a == flag)?;
    args.get(at + 1)?.parse().ok()
}

/// The file a flag names (`--gate FILE`, `--hold-while FILE`).
fn path_flag(args: &[String], flag: &str) -> Option<std::path::PathBuf> {
    let at = args.iter().position(|a| a == flag)?;
    args.get(at + 1).map(Into::into)
}

/// `--gate FILE`: the file whose creation releases held replies.
fn gate_of(args: &[String]) -> Option<std::path::PathBuf> {
    path_flag(args, "--gate")
}

/// A listener on an ephemeral loopback port (only loopback is ever a network target), and
/// its port; the failure exit, said in one line, when there is none.
fn listen_loopback() -> Result<(TcpListener, u16), ExitCode> {
    match TcpListener::bind("127.0.0.1:0") {
        Ok(listener) => {
            let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
            Ok((listener, port))
        }
        Err(err) => {
            eprintln!("dw-fixture: cannot listen on loopback: {err}");
            Err(ExitCode::FAILURE)
        }
    }
}

/// Serves each connection `listener` accepts on a thread of its own, for as long as the
/// process lives.
fn per_connection(listener: TcpListener, handle: impl Fn(TcpStream) + Clone + Send + 'static) {
    for stream in listener.incoming().flatten() {
        let handle = handle.clone();
        thread::spawn(move || handle(stream));
    }
}

fn wait_for_gate(gate: Option<&std::path::Path>) {
    while gate.is_some_and(|g| !g.exists()) {
        thread::sleep(Duration::from_millis(2));
    }
}

fn wait_for_term() {
    while !TERM.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(5));
    }
}

/// A pre-fork worker: accepts on the inherited listener and echoes, one connection at a time;
/// on SIGTERM it finishes the echo in hand and exits.
fn prefork_worker(
    listener: &TcpListener,
    reply_after: Duration,
    gate: Option<std::path::PathBuf>,
) -> ! {
    // SAFETY: prctl(2) with plain integers: die with the master, never outlive a test.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // Non-blocking accept, polled: std retries accept(2) on EINTR, so a blocking one would
    // not notice SIGTERM.
    let _ = listener.set_nonblocking(true);
    while !TERM.load(Ordering::SeqCst) {
        let mut stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(_) => {
                thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_millis(20)));
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    wait_for_gate(gate.as_deref());
                    thread::sleep(reply_after);
                    if stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(_) if TERM.load(Ordering::SeqCst) => break,
                Err(_) => continue,
            }
        }
    }
    // SAFETY: _exit skips the master's atexit handlers and stdio buffers.
    unsafe { libc::_exit(0) }
}

fn prefork(args: &[String], workers: u64) -> ExitCode {
    install_term_handler();
    let reply_after = Duration::from_millis(flag_value(args, "--reply-after-ms").unwrap_or(0));
    let (listener, port) = match listen_loopback() {
        Ok(bound) => bound,
        Err(code) => return code,
    };
    let mut pids = Vec::new();
    for _ in 0..workers {
        // SAFETY: no thread exists yet; the child only runs prefork_worker.
        match unsafe { libc::fork() } {
            0 => prefork_worker(&listener, reply_after, gate_of(args)),
            pid if pid > 0 => pids.push(pid),
            _ => {
                eprintln!(
                    "dw-fixture: fork failed: {}",
                    std::io::Error::last_os_error()
                );
                return ExitCode::FAILURE;
            }
        }
    }
    let list: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
    println!(
        "ready pid={} port={port} child=0 workers={}",
        std::process::id(),
        list.join(",")
    );
    let _ = std::io::stdout().flush();
    wait_for_term();
    for &pid in &pids {
        // SAFETY: plain syscalls on our own children.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    for &pid in &pids {
        // SAFETY: as above.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    }
    ExitCode::SUCCESS
}

/// The slow HTTP upstream: reads a request head, waits, answers and closes. With
/// `--keep-open` it says whether the answer went out (`replied` or `reply failed: ERR`) and
/// keeps the connection, dead or not, until SIGTERM: a server that holds a link its client
/// reset.
fn slow_http(args: &[String]) -> ExitCode {
    let delay = Duration::from_millis(flag_value(args, "--delay-ms").unwrap_or(1000));
    let gate = gate_of(args);
    let keep_open = args.iter().any(|a| a == "--keep-open");
    if keep_open {
        install_term_handler();
    }
    let (listener, port) = match listen_loopback() {
        Ok(bound) => bound,
        Err(code) => return code,
    };
    println!("ready pid={} port={port} child=0", std::process::id());
    let _ = std::io::stdout().flush();
    per_connection(listener, move |mut stream| {
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        println!("request");
        let _ = std::io::stdout().flush();
        wait_for_gate(gate.as_deref());
        thread::sleep(delay);
        let sent = stream.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\
              Connection: close\r\n\r\nslow\n",
        );
        if keep_open {
            match sent {
                Ok(()) => println!("replied"),
                Err(err) => println!("reply failed: {err}"),
            }
            let _ = std::io::stdout().flush();
            wait_for_term();
        }
    });
    ExitCode::SUCCESS
}

/// The line service: one thread per connection, each line answered after the delay.
fn slow_line(args: &[String]) -> ExitCode {
    use std::io::BufRead;
    let delay = Duration::from_millis(flag_value(args, "--delay-ms").unwrap_or(1000));
    let hold = path_flag(args, "--hold-while");
    let (listener, port) = match listen_loopback() {
        Ok(bound) => bound,
        Err(code) => return code,
    };
    println!("ready pid={} port={port} child=0", std::process::id());
    let _ = std::io::stdout().flush();
    per_connection(listener, move |stream| {
        let Ok(reader) = stream.try_clone() else {
            return;
        };
        let mut writer = stream;
        for _line in std::io::BufReader::new(reader)
            .lines()
            .map_while(Result::ok)
        {
            let until = std::time::Instant::now() + Duration::from_secs(600);
            while hold.as_ref().is_some_and(|h| h.exists()) && std::time::Instant::now() < until {
                thread::sleep(Duration::from_millis(1));
            }
            thread::sleep(delay);
            if writer.write_all(b"ok\n").is_err() {
                return;
            }
        }
    });
    ExitCode::SUCCESS
}

fn serve(args: &[String]) -> ExitCode {
    if let Some(workers) = flag_value(args, "--workers") {
        return prefork(args, workers);
    }
    let handle_term = !args.iter().any(|a| a == "--no-term-handler");
    if handle_term {
        install_term_handler();
    }
    let mut child = 0;
    if args.iter().any(|a| a == "--fork-child") {
        // Fork before any thread exists, so the child is a plain copy of this process.
        // SAFETY: single-threaded here; the child only sleeps and polls an atomic.
        match unsafe { libc::fork() } {
            0 => {
                wait_for_term();
                // SAFETY: _exit skips the parent's atexit handlers and stdio buffers.
                unsafe { libc::_exit(0) };
            }
            pid if pid > 0 => child = pid,
            _ => {
                eprintln!(
                    "dw-fixture: fork failed: {}",
                    std::io::Error::last_os_error()
                );
                return ExitCode::FAILURE;
            }
        }
    }
    let (listener, port) = match listen_loopback() {
        Ok(bound) => bound,
        Err(code) => return code,
    };
    thread::spawn(move || {
        per_connection(listener, |mut stream| {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 || stream.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        })
    });
    println!("ready pid={} port={port} child={child}", std::process::id());
    let _ = std::io::stdout().flush();
    wait_for_term();
    if child > 0 {
        // SAFETY: plain syscalls on our own child.
        unsafe {
            libc::kill(child, libc::SIGTERM);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
    }
    ExitCode::SUCCESS
}

fn send_signal(args: &[String]) -> ExitCode {
    let (Some(sig), Some(pid)) = (
        args.first().and_then(|s| s.parse::<i32>().ok()),
        args.get(1).and_then(|s| s.parse::<i32>().ok()),
    ) else {
        eprintln!("usage: dw-fixture signal SIGNUM PID [--linger-ms N]");
        return ExitCode::from(2);
    };
    // SAFETY: kill(2) with plain integers.
    if unsafe { libc::kill(pid, sig) } != 0 {
        eprintln!(
            "dw-fixture: kill({pid}, {sig}): {}",
            std::io::Error::last_os_error()
        );
        return ExitCode::FAILURE;
    }
    thread::sleep(Duration::from_millis(
        flag_value(args, "--linger-ms").unwrap_or(300),
    ));
    ExitCode::SUCCESS
}

fn exit_with(args: &[String]) -> ExitCode {
    let code = args.first().and_then(|s| s.parse::<u8>().ok()).unwrap_or(0);
    let delay = Duration::from_millis(flag_value(args, "--after-ms").unwrap_or(0));
    if args.iter().any(|a| a == "--main-thread-first") {
        // The main thread leaves at once (pthread_exit: the process lives on) and another
        // thread exits the process later: a whole process's exit is its last thread's.
        thread::spawn(move || {
            thread::sleep(delay);
            std::process::exit(code.into());
        });
        // The raw exit(2) system call ends only the calling thread (exit_group(2) ends the
        // process); pthread_exit would unwind through Rust's main and abort.
        // SAFETY: nothing of this thread is used after it; the spawned one keeps running.
        unsafe { libc::syscall(libc::SYS_exit, 0) };
    }
    thread::sleep(delay);
    ExitCode::from(code)
}

/// The hot function of `hot-op`: kept out of line and named, so that `--op dw_hot_op`
/// finds it in the symbol table.
#[no_mangle]
#[inline(never)]
pub extern "C" fn dw_hot_op(x: u64) -> u64 {
    std::hint::black_box(x).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 7
}

fn hot_op(args: &[String]) -> ExitCode {
    let every = Duration::from_millis(flag_value(args, "--report-ms").unwrap_or(100).max(1));
    println!("ready pid={} port=0 child=0", std::process::id());
    let _ = std::io::stdout().flush();
    let start = std::time::Instant::now();
    let mut next = every;
    let mut calls: u64 = 0;
    let mut sum: u64 = 0;
    loop {
        for _ in 0..1024 {
            sum = sum.wrapping_add(dw_hot_op(calls));
            calls += 1;
        }
        let elapsed = start.elapsed();
        if elapsed >= next {
            std::hint::black_box(sum);
            println!("calls {calls} {}", elapsed.as_nanos());
            if std::io::stdout().flush().is_err() {
                return ExitCode::SUCCESS;
            }
            next = elapsed + every;
        }
    }
}

#[path = "dw_fixture/uring.rs"]
mod uring;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("server") => serve(&args[1..]),
        Some("signal") => send_signal(&args[1..]),
        Some("exit") => exit_with(&args[1..]),
        Some("slow-http") => slow_http(&args[1..]),
        Some("slow-line") => slow_line(&args[1..]),
        Some("hot-op") => hot_op(&args[1..]),
        Some("build-game-ops") => {
            println!("{}", drainwatch_tests::game_ops::game_ops_bin().display());
            ExitCode::SUCCESS
        }
        Some("build-game-go") => {
            println!("{}", drainwatch_tests::game_go::game_go_bin().display());
            println!(
                "{}",
                drainwatch_tests::game_go::game_go_stripped_bin().display()
            );
            ExitCode::SUCCESS
        }
        Some("uring-echo") => {
            uring::uring_echo(flag_value(&args[1..], "--port").and_then(|p| u16::try_from(p).ok()))
        }
        _ => {
            eprintln!(
                "usage: dw-fixture server|signal|exit|slow-http|slow-line|hot-op|uring-echo|build-game-ops|build-game-go ... (see the source's header)"
            );
            ExitCode::from(2)
        }
    }
}
