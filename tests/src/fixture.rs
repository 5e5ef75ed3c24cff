//! What the fixture servers (dw-game, game.rs; game_ops, game_ops.rs) share: the ready line
//! they print on stdout when they listen, and the `--truth` file where they write, as JSON
//! numbers, what they themselves say is going on (the ground truth a verdict is checked
//! against).

use std::{
    fmt::Debug,
    io::{BufRead, BufReader},
    path::Path,
    process::Child,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use crate::PATIENCE;

/// A child's first stdout line (its ready line, `ready pid=N port=P`), read on a thread so
/// that a hung start fails after PATIENCE ("" then).
pub fn ready_line(child: &mut Child) -> String {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(PATIENCE).unwrap_or_default();
    crate::phase(&format!("fixture ready: {}", line.trim()));
    line
}

/// The number `name=N` of a ready line.
pub fn ready_field(line: &str, name: &str) -> Option<u32> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// A truth file as read now.
pub struct TruthFile {
    json: serde_json::Value,
    text: String,
}

impl TruthFile {
    pub fn read(path: &Path) -> Self {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("truth file is not JSON ({e}): {text}"));
        Self { json, text }
    }

    /// The number under `key`; one missing fails the test with the file's text.
    pub fn n(&self, key: &str) -> u64 {
        self.json[key]
            .as_u64()
            .unwrap_or_else(|| panic!("truth has no number {key:?}: {}", self.text))
    }
}

/// Reads the truth (`read`) every `step` until `wanted` holds (within PATIENCE); fails
/// saying that `who` never reached `what`, with the last truth and its stderr (`log`).
pub fn wait_truth<T: Debug>(
    who: &str,
    what: &str,
    step: Duration,
    read: impl Fn() -> T,
    wanted: impl Fn(&T) -> bool,
    log: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let truth = read();
        if wanted(&truth) {
            crate::phase(&format!("{who}: {what}"));
            return truth;
        }
        assert!(
            Instant::now() < deadline,
            "{who} never reached {what}; last truth {truth:?}; stderr:\n{}",
            log()
        );
        thread::sleep(step);
    }
}
