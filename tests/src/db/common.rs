//! What the servers' files share: the database kinds and their trait, free ports, the
//! daemon a server runs as, bootstrapped data directories made once and copied.

use std::{
    fs,
    io::{Read, Seek, SeekFrom},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::wait_with_deadline;

/// How long a database may take to start (initdb and mariadb-install-db are the slow parts:
/// about a second each on this machine, several on a loaded CI host).
pub const START_PATIENCE: Duration = Duration::from_secs(60);

/// Which protocol a server speaks; `flag()` is dw-game's `--db` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbKind {
    Postgres,
    Mysql,
    Redis,
}

impl DbKind {
    pub fn flag(self) -> &'static str {
        match self {
            DbKind::Postgres => "postgres",
            DbKind::Mysql => "mysql",
            DbKind::Redis => "redis",
        }
    }
}

/// What the tests need from any of the three servers.
pub trait Database {
    fn kind(&self) -> DbKind;
    fn port(&self) -> u16;
    /// A URL that dw-game's `--db-url` and the client crates accept.
    fn url(&self) -> String;
    /// The steps that dw-game recorded for `op`, in order (its schema: `ledger(op, step)`
    /// rows in SQL, list `ledger:<op>` in Redis; see src/bin/game_server.rs).
    fn ledger_steps(&self, op: &str) -> Vec<String>;
    /// Connections the server saw end without the protocol's goodbye, once every other
    /// client has gone; `None` where the server does not tell (Redis).
    fn unclean_closes(&self) -> Option<u64>;
    /// The end of the server's log, for failure messages.
    fn log_tail(&self) -> String;
}

/// A shared server (db/shared.rs) is a `&'static` one.
impl<T: Database + ?Sized> Database for &T {
    fn kind(&self) -> DbKind {
        (**self).kind()
    }
    fn port(&self) -> u16 {
        (**self).port()
    }
    fn url(&self) -> String {
        (**self).url()
    }
    fn ledger_steps(&self, op: &str) -> Vec<String> {
        (**self).ledger_steps(op)
    }
    fn unclean_closes(&self) -> Option<u64> {
        (**self).unclean_closes()
    }
    fn log_tail(&self) -> String {
        (**self).log_tail()
    }
}

/// A loopback port that was free a moment ago. Another process may take it before the
/// server binds it; the `start()` functions retry on "address in use".
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

pub(super) fn require_binary(path: &Path, package: &str) {
    if !path.is_file() {
        missing(&path.display().to_string(), package);
    }
}

pub(super) fn missing(what: &str, package: &str) -> ! {
    panic!(
        "{what} not found: the Debian package {package} is missing; `cargo xtask setup` \
         installs it (or: apt-get install -y --no-install-recommends {package})"
    );
}

/// An error with its causes: postgres::Error's Display alone says "error connecting to
/// server" or "db error" without the reason.
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(inner) = cause {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text = format!("{text}: {inner_text}");
        }
        cause = inner.source();
    }
    text
}

pub(super) fn euid_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The last `lines` lines of a log file.
pub(super) fn tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut file) = fs::File::open(path) {
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)));
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A server process, stopped with `stop_signal` (then SIGKILL after 10 s) when dropped.
pub(super) struct Daemon {
    pub(super) child: Child,
    pub(super) name: &'static str,
    pub(super) stop_signal: i32,
    pub(super) log: PathBuf,
}

/// Why a start attempt did not give a ready server.
pub(super) enum NotReady {
    /// Someone else took the port between `free_port()` and the bind: try another.
    PortTaken,
    Failed(String),
}

impl Daemon {
    pub(super) fn spawn(
        name: &'static str,
        cmd: &mut Command,
        log: &Path,
        stop_signal: i32,
    ) -> Self {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let err = out.try_clone().expect("dup log fd");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} ({cmd:?}): {e}"));
        crate::phase(&format!("{name} spawned"));
        Self {
            child,
            name,
            stop_signal,
            log: log.to_path_buf(),
        }
    }

    /// Polls `connect` until it succeeds, the server exits, or [`START_PATIENCE`] passes.
    pub(super) fn wait_ready<T>(
        &mut self,
        mut connect: impl FnMut() -> Result<T, String>,
    ) -> Result<T, NotReady> {
        let deadline = Instant::now() + START_PATIENCE;
        loop {
            let last_error = match connect() {
                Ok(ready) => {
                    crate::phase(&format!("{} ready", self.name));
                    return Ok(ready);
                }
                Err(error) => error,
            };
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = tail(&self.log, 30);
                let lower = log.to_lowercase();
                if lower.contains("already in use") || lower.contains("bind on tcp/ip port") {
                    return Err(NotReady::PortTaken);
                }
                return Err(NotReady::Failed(format!(
                    "{} exited ({status}) before accepting connections; {}:\n{log}",
                    self.name,
                    self.log.display()
                )));
            }
            if Instant::now() > deadline {
                return Err(NotReady::Failed(format!(
                    "{} did not accept a connection within {START_PATIENCE:?} (last error: \
                     {last_error}); {}:\n{}",
                    self.name,
                    self.log.display(),
                    tail(&self.log, 30)
                )));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Daemon {
    /// For a server kept in a `static` (never dropped): a watcher process stops it with
    /// `stop_signal` and removes `dir` once this test process has exited, whatever way: it
    /// reads its stdin, a pipe whose only writer is this process (std's pipes are
    /// close-on-exec, so no child inherits it), until the kernel closes it at our exit.
    pub(super) fn stop_at_exit(&self, dir: &Path) {
        let script = "read _; kill -s \"$1\" \"$2\"; \
                      while kill -0 \"$2\" 2>/dev/null; do sleep 0.1; done; rm -rf \"$3\"";
        let signal = match self.stop_signal {
            libc::SIGINT => "INT",
            _ => "TERM",
        };
        // Never waited for: it outlives this process by design (its parent is then init).
        #[allow(clippy::zombie_processes)]
        let mut watcher = Command::new("/bin/sh")
            .args(["-c", script, "sh", signal, &self.child.id().to_string()])
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start the watcher of {}: {e}", self.name));
        // Kept open until exit, on purpose.
        std::mem::forget(watcher.stdin.take());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: kill(2) on a child this harness started and has not reaped.
        unsafe { libc::kill(self.child.id() as i32, self.stop_signal) };
        if wait_with_deadline(&mut self.child, Duration::from_secs(10)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `start(port)` on fresh ports until one is not taken by someone else.
pub(super) fn on_free_port<T>(what: &str, mut start: impl FnMut(u16) -> Result<T, NotReady>) -> T {
    for _ in 0..5 {
        match start(free_port()) {
            Ok(server) => return server,
            Err(NotReady::PortTaken) => continue,
            Err(NotReady::Failed(why)) => panic!("{what}: {why}"),
        }
    }
    panic!("{what}: five free ports in a row were taken before the server bound them");
}

/// Runs a setup command to completion, failing with its output.
/// A database's data directory made by its bootstrap tool (initdb, mariadb-install-db) once
/// per machine and build of that tool, and copied for each private server: the bootstrap is
/// most of a server's start (initdb ~2.5 s here, over a minute in a TCG guest), a copy a
/// fraction of that. `make` gets the directory to create. Made under a name of its own and
/// renamed into place, so that test processes running at once never see half of one; keyed
/// by the tool's size and time, so that an upgraded database makes a new one. Kept for the
/// next run (40-100 MB each) in `DW_DB_TEMPLATES` (xtask: target/db-templates, which the
/// matrix guests see through their overlay of this machine's files, so that a guest copies
/// instead of bootstrapping under TCG), else the temp dir.
pub(super) fn initialized_once(
    what: &str,
    tool: &Path,
    owner: Option<(u32, u32)>,
    make: impl FnOnce(&Path) -> Command,
) -> PathBuf {
    use std::os::unix::fs::chown;
    let stamp = fs::metadata(tool)
        .and_then(|m| Ok((m.len(), m.modified()?)))
        .map(|(len, at)| {
            let secs = at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            format!("{len}-{secs}")
        })
        .unwrap_or_else(|e| panic!("stat {}: {e}", tool.display()));
    // SAFETY: geteuid has no preconditions.
    let uid = owner.map_or_else(|| unsafe { libc::geteuid() }, |(uid, _)| uid);
    let templates = std::env::var_os("DW_DB_TEMPLATES")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    fs::create_dir_all(&templates)
        .unwrap_or_else(|e| panic!("create {}: {e}", templates.display()));
    let ready = templates.join(format!("drainwatch-{what}-data-{uid}-{stamp}"));
    if ready.join("data").is_dir() {
        return ready.join("data");
    }
    // One bootstrap at a time in this process: the first servers of a test binary start at
    // once, and mariadb-install-db runs side by side were seen to fail on a loaded 2-core
    // machine ("Installation of system tables failed"). The lock only orders them; a
    // poisoned one still works.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    if ready.join("data").is_dir() {
        return ready.join("data");
    }
    let making = templates.join(format!(
        "drainwatch-{what}-data-{uid}-{stamp}.{}.{:?}",
        std::process::id(),
        thread::current().id()
    ));
    let _ = fs::remove_dir_all(&making);
    fs::create_dir_all(&making).expect("create a bootstrap directory");
    if let Some((uid, gid)) = owner {
        chown(&making, Some(uid), Some(gid)).expect("chown the bootstrap directory");
    }
    let mut cmd = make(&making.join("data"));
    cmd.current_dir(&making);
    let log = making.with_extension("log");
    run_setup(what, &mut cmd, &log);
    let _ = fs::remove_file(&log);
    // Another process may have won the race: its directory is as good as ours.
    if fs::rename(&making, &ready).is_err() {
        let _ = fs::remove_dir_all(&making);
    }
    assert!(
        ready.join("data").is_dir(),
        "no bootstrapped {what} data at {}",
        ready.display()
    );
    ready.join("data")
}

/// `cp -a`: the copy keeps the template's owner and modes (PostgreSQL refuses a data
/// directory that is not its user's own, mode 0700).
pub(super) fn copy_initialized(template: &Path, data: &Path) {
    let parent = data.parent().expect("a data directory has a parent");
    run_setup(
        "cp -a (a bootstrapped data directory)",
        Command::new("cp").arg("-a").arg(template).arg(data),
        &parent.join("copy.log"),
    );
}

pub(super) fn run_setup(what: &str, cmd: &mut Command, log: &Path) {
    let out = fs::File::create(log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
    let err = out.try_clone().expect("dup log fd");
    let status = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .unwrap_or_else(|e| panic!("run {what} ({cmd:?}): {e}"));
    assert!(
        status.success(),
        "{what} failed ({status}); {}:\n{}",
        log.display(),
        tail(log, 30)
    );
}

/// Waits until `others()` (sessions besides the caller's) is 0: a session's goodbye (or its
/// absence) is only recorded by the server when that session ends.
pub(super) fn wait_until_alone(what: &str, mut others: impl FnMut() -> u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = others();
        if n == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {n} other sessions still open after 10s"
        );
        thread::sleep(Duration::from_millis(20));
    }
}
