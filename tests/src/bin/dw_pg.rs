//! `dw-pg`: a private, throwaway PostgreSQL for as long as this process's stdin stays open.
//!
//! ```text
//! dw-pg [--tls]
//! ```
//!
//! Starts [`drainwatch_tests::db::PgServer`] (a fresh cluster in a temp dir, on a free
//! loopback port, as the `postgres` user when run as root), prints one line
//! `ready url=postgresql://postgres@127.0.0.1:PORT/postgres` on stdout, then waits until stdin
//! reaches EOF, or SIGTERM or SIGINT arrives. Then it stops the server (PostgreSQL "fast"
//! shutdown), deletes its temp dir and exits 0.
//!
//! This is how `cargo xtask demo` runs a real PostgreSQL without compiling the database client
//! crates into xtask: it keeps dw-pg's stdin as a pipe and closes it to stop the server. If
//! the demo dies, however it dies, the kernel closes that pipe, so the server never outlives
//! it.

use std::{
    io::{Read, Write},
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
};

use drainwatch_tests::db::{Database, PgServer};

/// Set by the SIGTERM/SIGINT handler.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_stop_handlers() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe. No
    // SA_RESTART: a poll() in progress returns at once with EINTR.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_stop as *const () as usize;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGTERM, &action, std::ptr::null_mut());
        libc::sigaction(libc::SIGINT, &action, std::ptr::null_mut());
    }
}

/// Blocks until stdin reaches EOF (or fails), or a stop signal arrived. Whatever is written
/// to stdin meanwhile is read and ignored.
fn wait_for_stop() {
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 512];
    while !STOP.load(Ordering::SeqCst) {
        let mut pfd = libc::pollfd {
            fd: libc::STDIN_FILENO,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one pollfd that we own; 200 ms so a signal is noticed even if it
        // landed between the check above and the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, 200) };
        if ready < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if ready == 0 {
            continue;
        }
        if pfd.revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
            return;
        }
        // POLLIN or POLLHUP: read; 0 bytes is EOF.
        match stdin.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn main() -> ExitCode {
    let tls = std::env::args().nth(1).is_some_and(|a| a == "--tls");
    if std::env::args().len() > 1 + tls as usize {
        eprintln!("usage: dw-pg [--tls]   (close stdin or send SIGTERM to stop)");
        return ExitCode::from(2);
    }
    // Before the start, so a Ctrl-C during initdb still ends in a clean stop.
    install_stop_handlers();
    // start() panics with the reason (missing package, initdb failure, ...): exit 101.
    // `--tls`: ssl=on with a self-signed certificate (libpq sslmode=prefer then speaks TLS).
    let server = if tls {
        PgServer::start_tls()
    } else {
        PgServer::start()
    };
    let mut stdout = std::io::stdout();
    if writeln!(stdout, "ready url={}", server.url())
        .and_then(|()| stdout.flush())
        .is_err()
    {
        // Nobody reads us any more: stop the server right away.
        drop(server);
        return ExitCode::FAILURE;
    }
    wait_for_stop();
    // Stops postgres (SIGINT, SIGKILL after 10 s) and removes its temp dir.
    drop(server);
    ExitCode::SUCCESS
}
