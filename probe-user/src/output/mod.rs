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
