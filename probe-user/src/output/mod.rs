//! Output: what a run shows and writes. [`summary`] (the human summary of a report),
//! [`junit`] (`--junit`), [`metrics`] (the Prometheus text that `serve` answers with),
//! [`publish`] (stdout, and the report files opened before the run), [`doctor`] (what the
//! kernel offers, one line per feature, with a fix), [`progress`] (what `wait` and `stop`
//! show while they follow a drain, and their headline), [`live`] (`watch`'s view),
//! [`preflight`] (`check`'s report), [`http`] (the HTTP server `serve` answers scrapes with).
//!
//! May use: [`crate::model`], [`crate::verdict`], [`crate::events`], the clock in
//! [`crate::host`] and the feature findings of [`crate::kernel`]; never the session or the
//! commands (they hand it what to draw).

pub mod doctor;
pub mod http;
pub mod junit;
pub mod live;
pub mod metrics;
pub mod preflight;
pub mod progress;
pub mod publish;
pub mod summary;

/// Whether stdout is a terminal: a view redrawn in place there, JSON lines otherwise.
pub fn stdout_is_tty() -> bool {
    // SAFETY: isatty on a standard fd.
    unsafe { libc::isatty(libc::STDOUT_FILENO) == 1 }
}

/// Writes `text` to stdout and flushes it. A reader that is gone (EPIPE: `| head`) or a
/// stdout that cannot be written is not an error of the run: the report files still get
/// written, the exit code still says the verdict.
pub fn print_out(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// What makes two connection entries one socket: its role and addresses. The kernel's table
/// holds a connection per process and fd, so a socket several processes hold (nginx's
/// listener, inherited by its workers) is there once for each; docs/design.md ("Words":
/// fds that share one socket are one connection) counts it once, as `check` does. `None`
/// while the local address is unknown (then each entry counts).
pub fn socket_key(
    conn: &crate::model::conns::Conn,
) -> Option<(u8, std::net::SocketAddr, Option<std::net::SocketAddr>)> {
    Some((conn.role as u8, conn.local?, conn.peer))
}
