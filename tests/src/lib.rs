//! Harness for the integration tests: finds the built binaries, runs fixture processes, and
//! runs drainwatch against them. Tests here load real probes into the real kernel, so they
//! need root; without it they fail with the reason rather than skip.

use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

pub use serde_json::Value;

pub mod db;
pub mod fixture;
pub mod game;
pub mod game_go;
pub mod game_ops;
pub mod game_py;
pub mod nginx;
pub mod shop;
pub mod stacks;
pub mod tls;

/// How long a test waits for drainwatch to attach or finish before failing. Generous: it
/// only bounds a failure, and inside the kernel-matrix guests (TCG emulation, see
/// xtask/src/guest.rs) loading the probe alone takes several seconds.
pub const PATIENCE: Duration = Duration::from_secs(90);

/// How long a test waits for drainwatch's own lines (attached, a verdict) and its exit:
/// [`PATIENCE`], stretched in the kernel-matrix guests (up to 3x at [`time_scale`] 3 or
/// more). Loading the probe is the verifier's work, which TCG slows most: with `--op` on
/// CPython a guest on a busy 2-core machine once took more than 90 s to attach (15-25 s
/// on a quiet one). Only a failure waits this long.
pub fn drainwatch_patience() -> Duration {
    PATIENCE * time_scale().clamp(1, 3) as u32
}

/// How many times slower than the build machine this test runs: 1 natively, more inside the
/// kernel-matrix guests (`DW_TIME_SCALE`, set by xtask). Request durations and timing slack
/// are multiplied by it, so that a request is still in flight after a slow attach; what
/// drainwatch itself is asked for (the quiet window) is not.
pub fn time_scale() -> u64 {
    std::env::var("DW_TIME_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1u64)
        .max(1)
}

/// With `DW_PHASES` set (`cargo xtask matrix --phases`), a line on stderr at the end of each
/// costly step of a test (a database or fixture started, drainwatch attached or finished, a
/// fixture's state reached): the wall clock and the time since the previous step, so that a
/// guest's console shows where a test's minutes go under TCG (xtask/src/matrix.rs). Silent
/// otherwise.
pub fn phase(what: &str) {
    static LAST: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
    if std::env::var_os("DW_PHASES").is_none() {
        return;
    }
    let now = Instant::now();
    let since = LAST
        .lock()
        .ok()
        .and_then(|mut last| last.replace(now))
        .map(|t| format!("+{:.1}s", now.duration_since(t).as_secs_f64()))
        .unwrap_or_else(|| "first".to_string());
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    eprintln!("dw-phase {:.1} {since:>8} {what}", wall.as_secs_f64());
}

/// `ms` at this machine's [`time_scale`].
pub fn scaled_ms(ms: u64) -> u64 {
    ms * time_scale()
}

/// A binary from this workspace's target directory: `$ENV` if set (xtask sets it), else
/// the one beside the test executable (target/<profile>/).
pub fn binary(env: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build it first (`cargo xtask test` builds everything)",
        path.display()
    );
    path
}

pub fn drainwatch_bin() -> PathBuf {
    binary("DRAINWATCH_BIN", "drainwatch")
}

pub fn fixture_bin() -> PathBuf {
    binary("DW_FIXTURE_BIN", "dw-fixture")
}

/// The fixture under another name, for tests that find their targets by name (`--comm`):
/// the kernel names a process after the basename of the path it was executed by
/// (`begin_new_exec` → `__set_task_comm(kbasename(bprm->filename))`, fs/exec.c), so a
/// symlink in the test's own directory gives its processes a name no concurrently running
/// test's `dw-fixture` shares. `name` must fit in 15 bytes (TASK_COMM_LEN).
pub fn fixture_named(dir: &TempDir, name: &str) -> PathBuf {
    assert!(name.len() <= 15, "{name:?} is longer than a task's comm");
    let link = dir.0.join(name);
    std::os::unix::fs::symlink(fixture_bin(), &link).expect("symlink the fixture");
    link
}

/// Fails the test with the reason when it cannot load BPF (never a silent skip).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test loads eBPF probes and needs root (euid is {euid}); run `cargo xtask test` as root"
    );
}

/// Polls until the server on loopback `port` has read what was sent to it: its established
/// connections hold nothing unread (a request is then in its hands, in flight).
pub fn until_read(port: u16) {
    let deadline = Instant::now() + PATIENCE;
    let port = format!("sport = :{port}");
    loop {
        let ss = Command::new("ss")
            .args(["-tnH", "state", "established", &port])
            .output()
            .expect("ss runs");
        let text = String::from_utf8_lossy(&ss.stdout).to_string();
        if text.split_whitespace().next() == Some("0") {
            return;
        }
        assert!(Instant::now() < deadline, "request not read: {text}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// A running `dw-fixture server`, killed when dropped.
pub struct Server {
    pub child: Child,
    pub pid: u32,
    pub port: u16,
    /// The pid of the child it forked (`--fork-child`), or 0.
    pub forked: u32,
    /// The pre-forked workers (`--workers N`).
    pub workers: Vec<u32>,
    pub stdout: BufReader<ChildStdout>,
}

impl Server {
    pub fn start(args: &[&str]) -> Self {
        Self::start_from(&fixture_bin(), args)
    }

    /// The same server started from another path to the fixture (see [`fixture_named`]).
    pub fn start_from(bin: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(bin)
            .arg("server")
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start dw-fixture server");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read ready line");
        let field = |name: &str| -> u32 {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name}= in fixture line {line:?}"))
        };
        let (pid, port, forked) = (field("pid"), field("port") as u16, field("child"));
        let workers = line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("workers="))
            .map(|list| list.split(',').filter_map(|p| p.parse().ok()).collect())
            .unwrap_or_default();
        Self {
            child,
            pid,
            port,
            forked,
            workers,
            stdout,
        }
    }

    /// Waits for the server to exit, within [`PATIENCE`].
    pub fn wait(&mut self) -> ExitStatus {
        wait_with_deadline(&mut self.child, PATIENCE).expect("fixture server did not exit")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for &pid in self
            .workers
            .iter()
            .chain(Some(&self.forked).filter(|p| **p != 0))
        {
            // SAFETY: kill(2) on a pid this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `sig` to `pid` from a separate helper process; returns the helper's pid.
pub fn signal_from_helper(sig: i32, pid: u32) -> u32 {
    let mut helper = Command::new(fixture_bin())
        .args([
            "signal",
            &sig.to_string(),
            &pid.to_string(),
            "--linger-ms",
            "500",
        ])
        .spawn()
        .expect("start signal helper");
    let helper_pid = helper.id();
    let status = wait_with_deadline(&mut helper, PATIENCE).expect("signal helper hung");
    assert!(status.success(), "signal helper failed: {status}");
    helper_pid
}

pub fn wait_with_deadline(child: &mut Child, patience: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A running drainwatch, attached.
pub struct Drainwatch {
    child: Child,
    stderr_lines: mpsc::Receiver<String>,
    stderr_seen: Vec<String>,
}

/// What a finished drainwatch left.
#[derive(Debug)]
pub struct Finished {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Drainwatch {
    /// Starts `drainwatch ARGS...` and waits until it says it attached.
    pub fn attach(args: &[&str]) -> Self {
        let mut run = Self::spawn(args);
        // The readiness line itself: a debug line (-v) may mention attaching earlier.
        run.wait_for_stderr("drainwatch: attached to");
        run
    }

    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_with_env(args, &[])
    }

    /// [`Drainwatch::spawn`] with extra environment variables (e.g. `DRAINWATCH_HOOKS`).
    pub fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(drainwatch_bin())
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start drainwatch");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            stderr_lines: rx,
            stderr_seen: Vec::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether drainwatch is still running (has not returned a verdict).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Streams stdout line by line (for `watch --json`); `finish` then reports no stdout.
    pub fn stdout_lines(&mut self) -> mpsc::Receiver<String> {
        let stdout = self.child.stdout.take().expect("stdout not taken yet");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        rx
    }

    /// Sends a signal to drainwatch itself (e.g. SIGINT, as Ctrl-C would).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on a process this test started.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for a stderr line containing `needle`; fails with everything seen so far.
    pub fn wait_for_stderr(&mut self, needle: &str) {
        let patience = drainwatch_patience();
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            match self.stderr_lines.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.stderr_seen.push(line);
                    if found {
                        phase(&format!("drainwatch printed {needle:?}"));
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        // Its last lines may still be on their way from the reader thread
                        // (the needle among them, printed just before it exited): on a
                        // loaded machine that thread can wait its turn for longer than a
                        // moment, so it is given until its end of file (or a few seconds).
                        if self.await_last_lines(needle) {
                            return;
                        }
                        panic!(
                            "drainwatch exited ({status}) before printing {needle:?}; stderr:\n{}",
                            self.stderr_seen.join("\n")
                        );
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!(
            "drainwatch did not print {needle:?} within {patience:?}; stderr:\n{}",
            self.stderr_seen.join("\n")
        );
    }

    /// After drainwatch exited: the stderr lines still on their way, until the reader
    /// thread ends (end of file) or a few seconds pass; whether one contains `needle`
    /// (returned as soon as one does).
    fn await_last_lines(&mut self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.stderr_seen.push(line);
                    if found {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
    }

    fn drain_stderr(&mut self) {
        while let Ok(line) = self.stderr_lines.recv_timeout(Duration::from_millis(200)) {
            self.stderr_seen.push(line);
        }
    }

    /// Waits for drainwatch to exit on its own.
    pub fn finish(mut self) -> Finished {
        let patience = drainwatch_patience();
        let status = wait_with_deadline(&mut self.child, patience);
        let Some(status) = status else {
            let _ = self.child.kill();
            self.drain_stderr();
            panic!(
                "drainwatch did not finish within {patience:?}; stderr:\n{}",
                self.stderr_seen.join("\n")
            );
        };
        let mut stdout = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            let _ = out.read_to_string(&mut stdout);
        }
        self.drain_stderr();
        phase("drainwatch finished");
        Finished {
            code: status.code().unwrap_or(-1),
            stdout,
            stderr: self.stderr_seen.join("\n"),
        }
    }
}

impl Drop for Drainwatch {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The hooks the suite runs drainwatch on, as the report's `coverage.hooks` says them:
/// the backend `DRAINWATCH_HOOKS` forces (passed through by `cargo xtask test`, read by
/// drainwatch itself; docs/hooks.md), or the default. A value drainwatch refuses panics with
/// its refusal: no test can run on it.
pub fn hooks() -> &'static str {
    static FORCED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    match std::env::var("DRAINWATCH_HOOKS") {
        Ok(word) if !word.trim().is_empty() => FORCED.get_or_init(|| {
            doctor_hooks(Some(&word)).unwrap_or_else(|refused| panic!("{refused}"))
        }),
        _ => default_hooks(),
    }
}

/// The backend drainwatch picks on this kernel with nothing forced (docs/hooks.md, "Choosing
/// one"), as `coverage.hooks` says it.
pub fn default_hooks() -> &'static str {
    static DEFAULT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DEFAULT.get_or_init(|| doctor_hooks(None).unwrap_or_else(|refused| panic!("{refused}")))
}

/// The `coverage.hooks` word of the `hooks` line of `drainwatch doctor` run with
/// `DRAINWATCH_HOOKS` set to `forced` (or unset): `  ok       hooks   socket-tracepoints: ...
/// (DRAINWATCH_HOOKS=socket)` (probe-user/src/output/doctor.rs, `hooks_detail`). The backend
/// words are written once, in drainwatch's backend registry (probe-user/src/kernel/
/// backends/), which this crate, driving the built binary from outside, does not link:
/// asking drainwatch keeps them in one place. `Err`: the line's refusal (a backend this
/// kernel cannot run, or a word drainwatch does not know).
fn doctor_hooks(forced: Option<&str>) -> Result<String, String> {
    let mut cmd = Command::new(drainwatch_bin());
    cmd.arg("doctor");
    match forced {
        Some(word) => cmd.env("DRAINWATCH_HOOKS", word),
        None => cmd.env_remove("DRAINWATCH_HOOKS"),
    };
    let out = cmd.output().expect("drainwatch doctor runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("hooks"))
        .unwrap_or_else(|| panic!("no hooks line in drainwatch doctor's output:\n{text}"));
    let mut words = line.split_whitespace();
    match (words.next(), words.nth(1)) {
        (Some("ok"), Some(coverage)) => Ok(coverage.trim_end_matches(':').to_string()),
        _ => Err(format!("drainwatch doctor: {}", line.trim())),
    }
}

/// Runs drainwatch to completion (for commands that exit without attaching).
pub fn run_drainwatch(args: &[&str]) -> Finished {
    Drainwatch::spawn(args).finish()
}

/// A fresh temporary directory, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let base =
            std::env::temp_dir().join(format!("drainwatch-test-{name}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&base).expect("create temp dir");
        Self(base)
    }

    pub fn path(&self, file: &str) -> String {
        self.0.join(file).to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The report of `wait --json` / `stop --json`: their last stdout line (progress lines come
/// before it).
pub fn last_json(stdout: &str) -> Value {
    let line = stdout.trim().lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

pub fn read_report(path: &str) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("report {path} is not JSON: {e}\n{text}"))
}

/// The kinds of a report's violations, in order.
pub fn kinds(report: &Value) -> Vec<String> {
    report["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["kind"].as_str().unwrap().to_string())
        .collect()
}

/// The violations of `kind` in a report.
pub fn violations<'a>(report: &'a Value, kind: &str) -> Vec<&'a Value> {
    report["violations"]
        .as_array()
        .expect("violations array")
        .iter()
        .filter(|v| v["kind"] == kind)
        .collect()
}

/// A loopback address with a port free right now.
pub fn free_loopback_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").to_string()
}

/// The body of `GET {path}` from an HTTP/1.1 server that closes the connection after its
/// response (as `drainwatch serve` does).
pub fn http_get_body(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(PATIENCE))
        .expect("read timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("send request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response until the server closes");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_else(|| panic!("no end of headers in {response:?}"))
}

/// Connection churn: `threads` threads each connecting to 127.0.0.1:`port`, doing one
/// 64-byte round trip with an echo server, and closing, until `duration` has passed.
/// Returns how many connections completed their round trip.
pub fn churn(port: u16, threads: usize, duration: Duration) -> u64 {
    use std::{
        io::{Read, Write},
        sync::atomic::{AtomicU64, Ordering},
    };
    let done = std::sync::Arc::new(AtomicU64::new(0));
    let deadline = std::time::Instant::now() + duration;
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let done = done.clone();
            std::thread::spawn(move || {
                let mut back = [0u8; 64];
                while std::time::Instant::now() < deadline {
                    let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                        continue;
                    };
                    if conn.write_all(&[b'x'; 64]).is_ok() && conn.read_exact(&mut back).is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
    done.load(Ordering::Relaxed)
}

/// `dw-load hold`: opens up to `conns` client connections to 127.0.0.1:`port` (one round
/// trip each) and holds them until its stdin is closed or `secs` pass. Returns the running
/// child and how many connections it opened.
pub fn hold_connections(port: u16, conns: usize, secs: u64) -> (Child, u64) {
    use std::io::{BufRead, BufReader};
    let mut hold = Command::new(binary("DW_LOAD_BIN", "dw-load"))
        .args(["hold", "--port", &port.to_string()])
        .args(["--conns", &conns.to_string(), "--secs", &secs.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start dw-load hold");
    let mut line = String::new();
    BufReader::new(hold.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read dw-load hold");
    let opened = line
        .trim()
        .strip_prefix("open ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("dw-load hold said {line:?}"));
    (hold, opened)
}

/// The event-loop fixture server (Python asyncio, tests/fixtures/event_loop_server.py),
/// killed when dropped.
pub struct EventLoopServer {
    pub child: Child,
    pub pid: u32,
    pub port: u16,
}

impl EventLoopServer {
    /// Starts it with `args` (e.g. `--term-exit-after-ms 1000`) and reads its port.
    pub fn start(args: &[&str]) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/event_loop_server.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs (it is on every machine of this project's kind)");
        let mut port = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut port)
            .expect("the server prints its port");
        let port = port.trim().parse().expect("a port");
        let pid = child.id();
        Self { child, pid, port }
    }

    /// Polls until the server has read what was sent to it (its sockets hold nothing unread).
    pub fn until_read(&self) {
        until_read(self.port);
    }

    /// A connection that sent `op NAME PAUSE_MS`; the reply is read with a reader of it.
    pub fn request(&self, name: &str, pause_ms: u64) -> std::net::TcpStream {
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        std::io::Write::write_all(&mut conn, format!("op {name} {pause_ms}\n").as_bytes()).unwrap();
        conn
    }
}

impl Drop for EventLoopServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
