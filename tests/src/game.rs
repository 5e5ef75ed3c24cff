//! Drives `dw-game` (src/bin/game_server.rs) from tests: start it against a private database,
//! hold requests in flight, read its ground truth, stop it.

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

use crate::{
    binary,
    db::Database,
    fixture::{ready_field, ready_line, wait_truth, TruthFile},
    wait_with_deadline, TempDir, PATIENCE,
};

pub fn game_bin() -> PathBuf {
    binary("DW_GAME_BIN", "dw-game")
}

/// CLOCK_MONOTONIC in ns: the clock of the truth file's `last_completion_mono_ns` and of
/// the kernel's bpf_ktime_get_ns, so the three can be compared.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// dw-game's `--truth` file: what the server itself says is going on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Truth {
    pub pid: u32,
    pub requests_in_flight: u64,
    pub transactions_open: u64,
    pub db_connections_open: u64,
    pub completed: u64,
    /// CLOCK_MONOTONIC (ns) just after the last reply was written; 0 before the first.
    pub last_completion_mono_ns: u64,
    /// `--autocommit` operations after write A, before write B.
    pub between_writes: u64,
    /// CLOCK_MONOTONIC (ns) after the last line (or EOF) read from a client; 0 before any.
    pub last_input_mono_ns: u64,
    /// CLOCK_MONOTONIC (ns) right before the last write (A or B) was sent; 0 before any.
    pub last_write_mono_ns: u64,
    /// CLOCK_MONOTONIC (ns) after the last operation's last write was answered (after its
    /// commit): with `last_write_mono_ns`, the bracket of that write's send.
    pub last_write_done_mono_ns: u64,
    /// CLOCK_MONOTONIC (ns) right before a push-style link's close at EOF: with
    /// `last_input_mono_ns` (right after it), the bracket of the close.
    pub close_begun_mono_ns: u64,
}

/// A running `dw-game`, killed when dropped.
pub struct GameServer {
    pub child: Child,
    pub pid: u32,
    pub port: u16,
    truth_path: PathBuf,
    log_path: PathBuf,
    _dir: TempDir,
}

impl GameServer {
    /// Starts dw-game against `db` with extra flags (`--pool`, `--on-term`, ...) and waits
    /// for its ready line.
    pub fn start(db: &dyn Database, args: &[&str]) -> Self {
        let dir = TempDir::new("game");
        let truth_path = dir.0.join("truth.json");
        let log_path = dir.0.join("game.log");
        let log = std::fs::File::create(&log_path).expect("create game.log");
        let mut child = Command::new(game_bin())
            .args(["--db", db.kind().flag(), "--db-url", &db.url()])
            .arg("--truth")
            .arg(&truth_path)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start dw-game");
        let line = ready_line(&mut child);
        let field = |name| ready_field(&line, name);
        let (Some(pid), Some(port)) = (field("pid"), field("port")) else {
            let _ = child.kill();
            let status = child.wait();
            panic!(
                "dw-game did not get ready ({status:?}, stdout {line:?}); its stderr:\n{}\n\
                 database log:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default(),
                db.log_tail()
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

    /// The current ground truth.
    pub fn truth(&self) -> Truth {
        let file = TruthFile::read(&self.truth_path);
        let n = |key| file.n(key);
        Truth {
            pid: n("pid") as u32,
            requests_in_flight: n("requests_in_flight"),
            transactions_open: n("transactions_open"),
            db_connections_open: n("db_connections_open"),
            completed: n("completed"),
            last_completion_mono_ns: n("last_completion_mono_ns"),
            between_writes: n("between_writes"),
            last_input_mono_ns: n("last_input_mono_ns"),
            last_write_done_mono_ns: n("last_write_done_mono_ns"),
            close_begun_mono_ns: n("close_begun_mono_ns"),
            last_write_mono_ns: n("last_write_mono_ns"),
        }
    }

    /// Polls the truth until `wanted` holds (within PATIENCE); fails with the last truth.
    pub fn wait_truth(&self, what: &str, wanted: impl Fn(&Truth) -> bool) -> Truth {
        let step = Duration::from_millis(5);
        wait_truth(
            "dw-game",
            what,
            step,
            || self.truth(),
            wanted,
            || self.log(),
        )
    }

    /// Sends `op NAME PAUSE_MS` on a new connection; the reply is read later.
    pub fn send_request(&self, op: &str, pause_ms: u64) -> Pending {
        self.send_line(&format!("op {op} {pause_ms}\n"))
    }

    /// Sends `op NAME @GATE`: the request holds its transaction open until `gate` is opened.
    pub fn send_gated_request(&self, op: &str, gate: &Gate) -> Pending {
        self.send_line(&format!("op {op} @{}\n", gate.path.display()))
    }

    /// `ping`, answered without database work.
    pub fn ping(&self) -> String {
        self.send_line("ping\n").reply()
    }

    fn send_line(&self, line: &str) -> Pending {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))
            .unwrap_or_else(|e| panic!("connect to dw-game on port {}: {e}", self.port));
        stream.write_all(line.as_bytes()).expect("send request");
        stream
            .set_read_timeout(Some(PATIENCE))
            .expect("read timeout");
        Pending {
            reader: BufReader::new(stream),
        }
    }

    /// Sends `sig` to dw-game.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on a child this test started and has not reaped.
        let rc = unsafe { libc::kill(self.pid as i32, sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid);
    }

    /// Waits for dw-game to exit, within PATIENCE.
    pub fn wait(&mut self) -> ExitStatus {
        wait_with_deadline(&mut self.child, PATIENCE).unwrap_or_else(|| {
            panic!(
                "dw-game did not exit within {PATIENCE:?}; stderr:\n{}",
                self.log()
            )
        })
    }

    /// What dw-game wrote on stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for GameServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A request sent and (maybe) not answered yet; its connection stays open until dropped.
pub struct Pending {
    reader: BufReader<TcpStream>,
}

impl Pending {
    /// The reply line without its newline (waits up to PATIENCE; "" if the server hung up).
    pub fn reply(mut self) -> String {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(_) => line.trim_end().to_string(),
            // A server that dies with unread bytes resets the connection instead of closing it.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => String::new(),
            Err(e) => panic!("read dw-game reply: {e}"),
        }
    }
}

/// A file whose creation releases gated requests ([`GameServer::send_gated_request`]): the
/// test decides when a request completes, whatever the machine's speed.
pub struct Gate {
    path: std::path::PathBuf,
}

impl Gate {
    pub fn new(dir: &TempDir, name: &str) -> Self {
        Self {
            path: dir.0.join(format!("gate-{name}")),
        }
    }

    /// The file (for fixtures' `--gate FILE`).
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Releases the requests waiting on it; returns when (CLOCK_MONOTONIC ns) it did.
    pub fn open(&self) -> u64 {
        std::fs::write(&self.path, b"").expect("create the gate file");
        mono_ns()
    }
}

/// A gateway's link to the game (tests/push.rs, tests/upstream.rs): it reads the ticks on a
/// thread (as a gateway does: the game's sends never block on it) and says what it is told
/// to.
pub struct Gateway {
    stream: TcpStream,
    ticks: std::sync::mpsc::Receiver<String>,
}

impl Gateway {
    pub fn connect(game: &GameServer) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", game.port)).expect("connect to dw-game");
        let reader = BufReader::new(stream.try_clone().expect("clone the link"));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in reader.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { stream, ticks: rx }
    }

    /// Waits for the next line from the game.
    pub fn next_line(&self) -> String {
        self.ticks
            .recv_timeout(PATIENCE)
            .expect("the game pushes a tick every 50 ms")
    }

    /// Waits until the game has pushed `n` ticks on the link.
    pub fn ticks(&self, n: usize) {
        let mut seen = 0;
        while seen < n {
            if self.next_line() == "tick" {
                seen += 1;
            }
        }
    }

    /// Waits for `n` ticks sent from now on: the lines read before are dropped first (a
    /// tick already on its way when this is called is not counted either, see `n`: give
    /// one more than needed).
    pub fn fresh_ticks(&self, n: usize) {
        while self.ticks.try_recv().is_ok() {}
        self.ticks(n);
    }

    pub fn say(&mut self, line: &str) {
        self.stream
            .write_all(format!("{line}\n").as_bytes())
            .expect("write to the game");
    }

    /// The gateway stops: it hangs up the link (a shutdown: the reading thread holds a
    /// duplicate of the socket).
    pub fn hang_up(self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// [`Gateway::hang_up`], then waits until the game has closed its end of the link: a
    /// drainwatch attached next must not find it still open (a loaded kernel-matrix guest
    /// attached before the game had read the hang-up).
    pub fn hang_up_until_closed(self, game: &GameServer) {
        let ours = self.stream.local_addr().expect("the link's address").port();
        self.hang_up();
        let deadline = std::time::Instant::now() + PATIENCE;
        while game_holds_link(game.port, ours) {
            assert!(
                std::time::Instant::now() < deadline,
                "the game never closed the hung-up link (port {ours})"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Whether a socket of the game's end of the link from `peer_port` to `game_port` is still
/// held by a process: its row in /proc/net/tcp or tcp6 (proc(5); an IPv4 link accepted on a
/// dual-stack listener shows in tcp6) has an inode until the last fd of it is closed.
fn game_holds_link(game_port: u16, peer_port: u16) -> bool {
    let port = |addr: &str| {
        addr.rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
    };
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|file| {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                f.len() > 9
                    && port(f[1]) == Some(game_port)
                    && port(f[2]) == Some(peer_port)
                    && f[9] != "0"
            })
    })
}
