//! `--push-ms`: dw-game as a game server talks to its gateway (docs/design.md, "request in
//! flight": push-style). The server sends on its own clock: a `tick` line every N ms, with
//! the answers that came due since (`pong`, `done NAME`) in the same write; operations run
//! on worker threads while the reader reads on. So a send is no evidence that the work for
//! what it received is done, which is what drainwatch must not take it for.

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use super::requests::{block_term_in_this_thread, handle, mono_ns, next_request_ready, Shared};

/// One client connection: its writing half (gone once the connection is closed) and the
/// answers waiting for the next tick.
struct Link {
    writer: Mutex<Option<TcpStream>>,
    outbox: Mutex<Vec<String>>,
}

impl Link {
    /// Queues an answer for the next tick.
    fn answer(&self, line: String) {
        self.outbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(line);
    }

    /// One tick: `tick` and the answers due, in one write. False once the connection is
    /// closed or broken.
    fn tick(&self, shared: &Shared) -> bool {
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let Some(stream) = writer.as_mut() else {
            return false;
        };
        let due = std::mem::take(&mut *self.outbox.lock().unwrap_or_else(|p| p.into_inner()));
        let mut text = String::from("tick\n");
        for line in &due {
            text.push_str(line);
        }
        let sent = stream.write_all(text.as_bytes()).is_ok();
        let at = mono_ns();
        let answered = due.len() as u64;
        shared.truth.update(|t| {
            t.requests_in_flight -= answered;
            if sent {
                t.completed += answered;
                t.last_completion_mono_ns = at;
            }
        });
        sent
    }

    /// Closes the connection (both halves must go for the socket to close: the reader's is
    /// dropped first by the caller); answers still queued are dropped with it.
    fn close(&self, shared: &Shared) {
        self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        let dropped = std::mem::take(&mut *self.outbox.lock().unwrap_or_else(|p| p.into_inner()));
        shared
            .truth
            .update(|t| t.requests_in_flight -= dropped.len() as u64);
    }
}

/// Serves one client connection the push way until EOF (or a graceful stop), closes it at
/// once, then lets the operations it started finish.
pub fn serve(stream: TcpStream, shared: &Arc<Shared>, every: Duration) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let link = Arc::new(Link {
        writer: Mutex::new(Some(stream)),
        outbox: Mutex::new(Vec::new()),
    });
    let ticker = {
        let (link, shared) = (Arc::clone(&link), Arc::clone(shared));
        thread::spawn(move || {
            block_term_in_this_thread();
            loop {
                thread::sleep(every);
                if !link.tick(&shared) {
                    break;
                }
            }
        })
    };
    let mut reader = BufReader::new(read_half);
    let mut workers = Vec::new();
    loop {
        if reader.buffer().is_empty() && !next_request_ready(reader.get_ref(), shared) {
            break;
        }
        let mut line = String::new();
        let read = reader.read_line(&mut line);
        let at = mono_ns();
        if !matches!(read, Ok(n) if n > 0) {
            break;
        }
        shared.truth.update(|t| {
            t.requests_in_flight += 1;
            t.last_input_mono_ns = at;
        });
        let line = line.trim().to_string();
        if line == "ping" {
            link.answer("pong\n".to_string());
            continue;
        }
        let (link, shared) = (Arc::clone(&link), Arc::clone(shared));
        workers.push(thread::spawn(move || {
            block_term_in_this_thread();
            let reply = handle(&line, &shared);
            link.answer(reply);
        }));
    }
    drop(reader);
    // The close is the client's last input (docs/design.md, "drain tail": a hang-up counts):
    // stamped once the socket is closed, what the server writes after it is the tail. A
    // thread cannot stamp its close(2) itself, only bracket it: on a loaded machine it can
    // wait its turn for tens of ms on either side of the call.
    let begun = mono_ns();
    link.close(shared);
    let closed = mono_ns();
    shared.truth.update(|t| {
        t.close_begun_mono_ns = begun;
        t.last_input_mono_ns = closed;
    });
    for worker in workers {
        let _ = worker.join();
    }
    // Answers of operations that finished after the close went nowhere.
    link.close(shared);
    let _ = ticker.join();
}
