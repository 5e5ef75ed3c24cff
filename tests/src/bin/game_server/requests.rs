//! dw-game's requests (see game_server.rs's header): the state every connection shares
//! (the pool, the ground truth it writes), what one request line does, and one client
//! connection served a request at a time. push.rs serves a `--push-ms` connection with the
//! same pieces; both it and the crate root import them from here, which imports neither.

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    os::fd::AsRawFd,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Condvar, Mutex,
    },
    time::Duration,
};

use super::conn::{Conn, Pause};
/// CLOCK_MONOTONIC in nanoseconds.
pub(super) fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) requests_in_flight: u64,
    pub(super) transactions_open: u64,
    pub(super) db_connections_open: u64,
    pub(super) completed: u64,
    pub(super) last_completion_mono_ns: u64,
    pub(super) between_writes: u64,
    pub(super) last_input_mono_ns: u64,
    pub(super) last_write_mono_ns: u64,
    pub(super) close_begun_mono_ns: u64,
    pub(super) last_write_done_mono_ns: u64,
}

/// The ground truth; the file is rewritten under the lock, so it follows every change in order.
pub(super) struct Truth {
    pub(super) counters: Mutex<Counters>,
    pub(super) file: Option<PathBuf>,
}

impl Truth {
    /// A change kept in memory only, for the next [`Truth::update`] to write: a timestamp
    /// taken right before a send stays right before it (writing the file takes
    /// milliseconds on a busy machine).
    pub(super) fn note(&self, change: impl FnOnce(&mut Counters)) {
        change(&mut self.counters.lock().unwrap_or_else(|p| p.into_inner()));
    }

    pub(super) fn update(&self, change: impl FnOnce(&mut Counters)) {
        let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut c);
        let Some(path) = &self.file else { return };
        let json = serde_json::json!({
            "pid": std::process::id(),
            "requests_in_flight": c.requests_in_flight,
            "transactions_open": c.transactions_open,
            "db_connections_open": c.db_connections_open,
            "completed": c.completed,
            "last_completion_mono_ns": c.last_completion_mono_ns,
            "between_writes": c.between_writes,
            "last_input_mono_ns": c.last_input_mono_ns,
            "last_write_mono_ns": c.last_write_mono_ns,
            "close_begun_mono_ns": c.close_begun_mono_ns,
            "last_write_done_mono_ns": c.last_write_done_mono_ns,
        });
        let tmp = PathBuf::from(format!("{}.tmp", path.display()));
        if let Err(e) =
            std::fs::write(&tmp, format!("{json}\n")).and_then(|_| std::fs::rename(&tmp, path))
        {
            eprintln!("dw-game: cannot write {}: {e}", path.display());
        }
    }
}

/// The fixed set of connections; `take` blocks until one is free.
pub(super) struct Pool {
    pub(super) idle: Mutex<Vec<Conn>>,
    pub(super) freed: Condvar,
}

impl Pool {
    pub(super) fn take(&self) -> Conn {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(conn) = idle.pop() {
                return conn;
            }
            idle = self.freed.wait(idle).unwrap_or_else(|p| p.into_inner());
        }
    }

    pub(super) fn put(&self, conn: Conn) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
        self.freed.notify_one();
    }
}

pub(super) struct Shared {
    pub(super) pool: Pool,
    pub(super) truth: Truth,
    pub(super) default_pause: Duration,
    pub(super) autocommit: bool,
    /// `--service`: the wait between the writes is a call to it.
    pub(super) service: Option<std::net::SocketAddr>,
    /// `--service-kept`: on kept connections.
    pub(super) service_kept: bool,
    /// Set once SIGTERM arrived (graceful): connections take no new request.
    pub(super) draining: AtomicBool,
}

pub(super) fn handle(line: &str, shared: &Shared) -> String {
    let mut words = line.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("ping"), None, None) => "pong\n".to_string(),
        (Some("op"), Some(name), pause) if name.len() <= 64 => {
            let pause = match pause {
                _ if shared.service.is_some() => Pause::Call {
                    service: shared.service.expect("checked"),
                    name: name.to_string(),
                    kept: shared.service_kept,
                },
                None => Pause::For(shared.default_pause),
                Some(gate) if gate.starts_with('@') => Pause::UntilFile(gate[1..].into()),
                Some(ms) => match ms.parse::<u64>() {
                    Ok(ms) => Pause::For(Duration::from_millis(ms)),
                    Err(_) => return format!("error {name} bad pause\n"),
                },
            };
            let mut conn = shared.pool.take();
            let mut opened = false;
            let autocommit = shared.autocommit;
            // Written with the next update: after A the pause's, after B the end's.
            let writing = || shared.truth.note(|t| t.last_write_mono_ns = mono_ns());
            let result = conn.two_writes(name, &pause, autocommit, &writing, || {
                opened = true;
                shared.truth.update(|t| match autocommit {
                    true => t.between_writes += 1,
                    false => t.transactions_open += 1,
                });
            });
            // The other side of the last write: after its answer (after the commit), with
            // the update below.
            shared.truth.note(|t| t.last_write_done_mono_ns = mono_ns());
            if opened {
                shared.truth.update(|t| match autocommit {
                    true => t.between_writes -= 1,
                    false => t.transactions_open -= 1,
                });
            }
            shared.pool.put(conn);
            match result {
                Ok(()) => format!("done {name}\n"),
                Err(e) => format!("error {name} {}\n", e.replace('\n', " ")),
            }
        }
        _ => "error unknown request\n".to_string(),
    }
}

/// Waits for the next request's bytes, giving up when draining (checked every 50 ms).
pub(super) fn next_request_ready(stream: &TcpStream, shared: &Shared) -> bool {
    loop {
        if shared.draining.load(Ordering::SeqCst) {
            return false;
        }
        let mut pfd = libc::pollfd {
            fd: stream.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one pollfd that we own.
        if unsafe { libc::poll(&mut pfd, 1, 50) } > 0 {
            return true;
        }
    }
}

pub(super) fn serve_client(stream: TcpStream, shared: &Shared) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = stream;
    loop {
        if reader.buffer().is_empty() && !next_request_ready(&writer, shared) {
            break;
        }
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let at = mono_ns();
        shared.truth.update(|t| {
            t.requests_in_flight += 1;
            t.last_input_mono_ns = at;
        });
        let reply = handle(line.trim(), shared);
        let sent = writer.write_all(reply.as_bytes()).is_ok();
        let at = mono_ns();
        shared.truth.update(|t| {
            t.requests_in_flight -= 1;
            if sent {
                t.completed += 1;
                t.last_completion_mono_ns = at;
            }
        });
        if !sent {
            break;
        }
    }
}

/// SIGTERM goes to the main thread only, so no worker's syscall is interrupted by it.
pub(super) fn block_term_in_this_thread() {
    // SAFETY: sigset manipulation on a local set, then pthread_sigmask for this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}
