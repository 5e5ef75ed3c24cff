//! Drives `game_ops` (tests/fixtures/game_ops.cpp), the compiled game server of issue #22's
//! story: a network thread, worker threads with a PostgreSQL connection each, and a business
//! operation `game::purchase` that writes A, waits on a timer, writes B (autocommit, no
//! transaction around them); and its gateway, one link multiplexing players, with ticks
//! pushed every 50 ms. Built here with the machine's g++ and libpq (Debian `g++`,
//! `libpq-dev`, installed by `cargo xtask setup`).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use crate::{
    db::PgServer,
    drainwatch_bin,
    fixture::{ready_field, ready_line, wait_truth, TruthFile},
    wait_with_deadline, TempDir, PATIENCE,
};

/// The fixture's source, in this repository.
fn source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/game_ops.cpp")
}

/// The built fixture: `DW_GAME_OPS_BIN`, or compiled once per test process beside drainwatch
/// (again when the source is newer).
pub fn game_ops_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("DW_GAME_OPS_BIN") {
                return PathBuf::from(path);
            }
            let out = drainwatch_bin()
                .parent()
                .expect("drainwatch's directory")
                .join("game_ops");
            let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            if modified(&out).is_some() && modified(&out) >= modified(&source()) {
                return out;
            }
            // Built under a name of its own, then renamed: test binaries running at once
            // never see half a file.
            let tmp = out.with_extension(format!("tmp{}", std::process::id()));
            let status = Command::new("g++")
                .args(["-O2", "-g", "-Wall", "-pthread", "-o"])
                .arg(&tmp)
                .arg(source())
                .args(["-I/usr/include/postgresql", "-lpq"])
                .status()
                .unwrap_or_else(|e| {
                    panic!("g++ not found ({e}): run `cargo xtask setup` (Debian g++, libpq-dev)")
                });
            assert!(
                status.success(),
                "g++ could not build {} ({status}): `cargo xtask setup` installs g++ and libpq-dev",
                source().display()
            );
            std::fs::rename(&tmp, &out).expect("move game_ops into place");
            out
        })
        .clone()
}

/// game_ops' `--truth` file: what the server itself says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpsTruth {
    /// Purchases whose write A is done and write B is not.
    pub between_writes: u64,
    /// Purchases received and not yet begun.
    pub queued: u64,
    pub completed: u64,
    /// CLOCK_MONOTONIC (ns) just after the last write B; 0 before the first.
    pub last_b_mono_ns: u64,
}

/// A running `game_ops serve`, killed when dropped.
pub struct GameOps {
    pub child: Child,
    pub pid: u32,
    pub port: u16,
    truth_path: PathBuf,
    log_path: PathBuf,
    _dir: TempDir,
}

impl GameOps {
    /// Starts the server against `db` (`None`: no database, the purchase only waits) with
    /// `--workers`, `--gap-ms` and extra flags (`--on-term abandon`).
    pub fn start(db: Option<&PgServer>, workers: u32, gap_ms: u64, args: &[&str]) -> Self {
        Self::start_with(&game_ops_bin(), db, workers, gap_ms, args)
    }

    /// The same with another server of the same protocol and flags (the Go one,
    /// tests/src/game_go.rs).
    pub fn start_with(
        server: &Path,
        db: Option<&PgServer>,
        workers: u32,
        gap_ms: u64,
        args: &[&str],
    ) -> Self {
        Self::start_command(Command::new(server), db, workers, gap_ms, args)
    }

    /// The same with a server started by `server` (an interpreter and its script, the
    /// Python one, tests/src/game_py.rs), given `serve` and the flags.
    pub fn start_command(
        server: Command,
        db: Option<&PgServer>,
        workers: u32,
        gap_ms: u64,
        args: &[&str],
    ) -> Self {
        use crate::db::Database;
        let url = db.map_or("none".to_string(), |db| db.url());
        Self::start_command_on(server, &url, workers, gap_ms, args)
    }

    /// The same against the database at `url` ("none": no database), e.g. another
    /// database of the same PostgreSQL (tests/tests/fleet.rs: one per game host).
    pub fn start_on(server: &Path, url: &str, workers: u32, gap_ms: u64, args: &[&str]) -> Self {
        Self::start_command_on(Command::new(server), url, workers, gap_ms, args)
    }

    fn start_command_on(
        mut server: Command,
        url: &str,
        workers: u32,
        gap_ms: u64,
        args: &[&str],
    ) -> Self {
        let dir = TempDir::new("game-ops");
        let truth_path = dir.0.join("truth.json");
        let log_path = dir.0.join("game_ops.log");
        let log = std::fs::File::create(&log_path).expect("create game_ops.log");
        let mut child = server
            .args(["serve", "--db-url", url, "--workers", &workers.to_string()])
            .args(["--gap-ms", &gap_ms.to_string()])
            .arg("--truth")
            .arg(&truth_path)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start game_ops");
        let line = ready_line(&mut child);
        let (Some(pid), Some(port)) = (ready_field(&line, "pid"), ready_field(&line, "port"))
        else {
            let _ = child.kill();
            panic!(
                "game_ops did not get ready (stdout {line:?}); stderr:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        };
        Self {
            child,
            pid,
            port: port as u16,
            truth_path,
            log_path,
            _dir: dir,
        }
    }

    pub fn truth(&self) -> OpsTruth {
        let file = TruthFile::read(&self.truth_path);
        let n = |key| file.n(key);
        OpsTruth {
            between_writes: n("between_writes"),
            queued: n("queued"),
            completed: n("completed"),
            last_b_mono_ns: n("last_b_mono_ns"),
        }
    }

    /// Polls the truth until `wanted` holds (within PATIENCE).
    pub fn wait_truth(&self, what: &str, wanted: impl Fn(&OpsTruth) -> bool) -> OpsTruth {
        let step = Duration::from_millis(2);
        wait_truth(
            "game_ops",
            what,
            step,
            || self.truth(),
            wanted,
            || self.log(),
        )
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on a child this test started and has not reaped.
        let rc = unsafe { libc::kill(self.pid as i32, sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid);
    }

    pub fn wait(&mut self) -> std::process::ExitStatus {
        wait_with_deadline(&mut self.child, PATIENCE)
            .unwrap_or_else(|| panic!("game_ops did not exit; stderr:\n{}", self.log()))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for GameOps {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `game_ops gateway`: one link to the server, `players` players each buying
/// every `every_ms` and pinging every second. Killed when dropped.
pub struct Gateway {
    child: Child,
}

impl Gateway {
    pub fn start(port: u16, players: u32, every_ms: u64) -> Self {
        let mut child = Command::new(game_ops_bin())
            .args(["gateway", "--port", &port.to_string()])
            .args(["--players", &players.to_string()])
            .args(["--every-ms", &every_ms.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the gateway");
        let line = ready_line(&mut child);
        assert!(line.starts_with("ready"), "gateway not ready: {line:?}");
        Self { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has exited (reaped here).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// The release's first step: SIGTERM; the gateway closes its link and exits.
    pub fn stop(mut self) {
        // SAFETY: kill(2) on a child this test started and has not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = wait_with_deadline(&mut self.child, PATIENCE).expect("gateway exits");
        assert!(status.success(), "gateway: {status}");
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Purchases the database holds half done: write A and no write B.
pub fn half_done(db: &PgServer) -> i64 {
    let mut client = db.client();
    let row = client
        .query_one(
            "SELECT count(*) FROM (SELECT op FROM ops_ledger GROUP BY op \
             HAVING count(*) FILTER (WHERE step = 'B') = 0) AS a_only",
            &[],
        )
        .expect("read ops_ledger");
    row.get(0)
}

/// Purchases with both writes.
pub fn complete(db: &PgServer) -> i64 {
    let mut client = db.client();
    let row = client
        .query_one("SELECT count(*) FROM ops_ledger WHERE step = 'B'", &[])
        .expect("read ops_ledger");
    row.get(0)
}

/// A drained report that rests on the operations it watched: at least `min_count` of them,
/// none in flight, a median that lasts the purchase's gap (one operation per purchase, not
/// one per await or per thread hop), and `operations` in the basis's observed list. Returns
/// the basis's `could_hide_work`, as text, for what each server kind adds to it.
pub fn assert_ops_watched(report: &serde_json::Value, min_count: u64, gap_ms: u64) -> String {
    let operations = &report["operations"];
    assert!(
        operations["count"].as_u64().unwrap() >= min_count,
        "{report:#}"
    );
    assert_eq!(operations["in_flight"], 0, "{report:#}");
    assert!(
        operations["latency_us"]["p50"].as_u64().unwrap() >= gap_ms * 1000 * 9 / 10,
        "a purchase lasts its gap: {report:#}"
    );
    let basis = &report["drain"]["basis"];
    assert!(
        basis["observed"]
            .as_array()
            .is_some_and(|o| o.iter().any(|w| w == "operations")),
        "{report:#}"
    );
    basis["could_hide_work"].to_string()
}
