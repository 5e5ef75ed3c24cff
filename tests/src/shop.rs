//! The small database-backed "shop" servers of the fixtures, on real client libraries:
//! tests/fixtures/pg_shop.py (psycopg 3 / libpq, from target/pyenv) and
//! tests/fixtures/node_shop.js (node-pg, from target/nodeenv). Both speak one line in
//! (`op NAME`), one line out (`done NAME`), run each request as a transaction that pauses
//! until the file `gate` exists in their directory, and print `ready pid=.. port=..` and
//! `txn NAME` on stdout.

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use crate::{drainwatch_bin, TempDir};

pub const PATIENCE: Duration = Duration::from_secs(60);

const PG_SHOP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/pg_shop.py");
const NODE_SHOP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/node_shop.js");

/// The fixtures' Python (`DW_PYTHON`, set by `cargo xtask test`, else target/pyenv).
pub fn python() -> PathBuf {
    let path = std::env::var_os("DW_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/pyenv/bin/python"
            ))
        });
    assert!(
        path.is_file(),
        "no Python venv with psycopg at {}: run `cargo xtask setup`",
        path.display()
    );
    path
}

/// node-pg's node_modules (`DW_NODE_MODULES`, set by `cargo xtask test`, else
/// target/nodeenv/node_modules).
pub fn node_modules() -> PathBuf {
    let path = std::env::var_os("DW_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/nodeenv/node_modules"
            ))
        });
    assert!(
        path.join("pg").is_dir(),
        "no node-pg at {}: run `cargo xtask setup`",
        path.display()
    );
    path
}

/// Which fixture, and how it reaches the database.
#[derive(Clone, Copy, Debug)]
pub enum Client {
    /// pg_shop.py on psycopg (libpq): TLS when the server has ssl=on (sslmode=prefer).
    Psycopg,
    /// node_shop.js on node-pg, plaintext.
    Node,
    /// node_shop.js on node-pg with `ssl: {rejectUnauthorized: false}`.
    NodeTls,
}

impl Client {
    /// The command line of the fixture in `mode` against `url`.
    pub fn command(self, mode: &str, url: &str) -> Command {
        match self {
            Client::Psycopg => {
                let mut cmd = Command::new(python());
                cmd.args([PG_SHOP, mode, url]);
                cmd
            }
            Client::Node | Client::NodeTls => {
                let mut cmd = Command::new("node");
                cmd.args([NODE_SHOP, mode, url])
                    .env("DW_NODE_MODULES", node_modules());
                if matches!(self, Client::NodeTls) {
                    cmd.arg("tls");
                }
                cmd
            }
        }
    }
}

/// A running shop in its own temp dir (where its gate file goes); killed when dropped.
pub struct Shop {
    child: Child,
    pub lines: mpsc::Receiver<String>,
    /// Launched under audit: drainwatch's stderr, line by line.
    stderr: Option<mpsc::Receiver<String>>,
    pub pid: u32,
    pub port: u16,
    dir: TempDir,
}

impl Shop {
    pub fn start(client: Client, mode: &str, url: &str) -> Shop {
        Self::spawn(client.command(mode, url), false)
    }

    /// Launched by `drainwatch audit --report REPORT ARGS -- <fixture>`, so that every
    /// connection is seen from its start; the child is then drainwatch.
    pub fn under_audit(client: Client, mode: &str, url: &str, report: &str, args: &[&str]) -> Shop {
        let fixture = client.command(mode, url);
        let mut cmd = Command::new(drainwatch_bin());
        cmd.args(["audit", "--report", report])
            .args(args)
            .arg("--")
            .arg(fixture.get_program())
            .args(fixture.get_args())
            .envs(
                fixture
                    .get_envs()
                    .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
            );
        Self::spawn(cmd, true)
    }

    fn spawn(mut cmd: Command, pipe_stderr: bool) -> Shop {
        let dir = TempDir::new("shop");
        if pipe_stderr {
            cmd.stderr(Stdio::piped());
        }
        let mut child = cmd
            .current_dir(&dir.0)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the shop fixture");
        let lines = reader(child.stdout.take().unwrap());
        let stderr = child.stderr.take().map(reader);
        let ready = lines.recv_timeout(PATIENCE).expect("the shop says ready");
        let field = |name: &str| -> u32 {
            ready
                .split_whitespace()
                .find_map(|w| w.strip_prefix(name)?.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {ready:?}"))
        };
        let (pid, port) = (field("pid="), field("port=") as u16);
        Shop {
            child,
            lines,
            stderr,
            pid,
            port,
            dir,
        }
    }

    /// Sends `op NAME` and waits until its transaction is open on the server; the receiver
    /// gets the answer line ("" when the connection closed unanswered).
    pub fn request_in_transaction(&self, name: &str) -> mpsc::Receiver<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        stream.write_all(format!("op {name}\n").as_bytes()).unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut answer = String::new();
            let _ = BufReader::new(stream).read_line(&mut answer);
            let _ = tx.send(answer);
        });
        self.expect_line(&format!("txn {name}"));
        rx
    }

    /// Launched under audit: waits for drainwatch to print a line containing `needle` on
    /// stderr; returns the lines read up to it.
    pub fn wait_stderr(&self, needle: &str) -> Vec<String> {
        let stderr = self.stderr.as_ref().expect("launched under audit");
        let mut seen = Vec::new();
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if let Ok(line) = stderr.recv_timeout(Duration::from_millis(50)) {
                let found = line.contains(needle);
                seen.push(line);
                if found {
                    return seen;
                }
            }
        }
        panic!("drainwatch did not print {needle:?}:\n{}", seen.join("\n"));
    }

    /// Waits for the fixture to print `line`.
    pub fn expect_line(&self, line: &str) {
        let got = self
            .lines
            .recv_timeout(PATIENCE)
            .expect("a line from the shop");
        assert_eq!(got, line);
    }

    pub fn open_gate(&self) {
        std::fs::write(self.dir.path("gate"), b"").unwrap();
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on a process this test started.
        assert_eq!(unsafe { libc::kill(self.pid as i32, sig) }, 0);
    }

    /// Waits for the child (the fixture, or drainwatch when launched under audit).
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the shop did not exit");
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Shop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn reader(stdout: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
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
