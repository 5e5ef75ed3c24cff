//! The shop servers on real client stacks (tests/fixtures/pg_shop.py on psycopg and asyncpg,
//! tests/fixtures/stacks/shop.go on Go's lib/pq, tests/fixtures/stacks/Shop.java on the
//! PostgreSQL JDBC driver), all speaking one line protocol (pg_shop.py's docstring), so a
//! test drives each stack the same way: `ready pid= port=`, `op NAME` -> `txn NAME` on
//! stdout once the transaction is open on the server -> `done NAME` to the client once the
//! file `gate` exists in the shop's directory.
//!
//! The Go and Java shops are built here from Debian's packages (golang-go +
//! golang-github-lib-pq-dev, default-jdk-headless + libpostgresql-jdbc-java; `cargo xtask
//! setup` installs them) into target/stacks/, once per test process.

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, ExitStatus, Stdio},
    sync::{mpsc, OnceLock},
    thread,
    time::{Duration, Instant},
};

use crate::{db::PgServer, drainwatch_bin, TempDir};

/// How long a shop may take to start, answer or exit (a JVM starts in about a second here,
/// several on a loaded machine).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A client stack: the server's language and database client library.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stack {
    /// Python, psycopg 3 (libpq): modes lossy, goodbye-exit, graceful, write-behind.
    Psycopg,
    /// Python, asyncpg on asyncio: mode asyncpg-exit.
    Asyncpg,
    /// Go, database/sql + lib/pq: modes graceful, exit.
    GoPq,
    /// Java, PostgreSQL JDBC: modes graceful, exit.
    Jdbc,
}

impl Stack {
    pub fn name(self) -> &'static str {
        match self {
            Stack::Psycopg => "psycopg",
            Stack::Asyncpg => "asyncpg",
            Stack::GoPq => "go-lib/pq",
            Stack::Jdbc => "jdbc",
        }
    }

    /// How this stack's driver is told to reach `db` over TCP, with TLS (`tls`: what the
    /// stack's users write to get it: libpq's default sslmode=prefer does it on its own
    /// against a server with ssl=on; lib/pq sslmode=require; JDBC sslmode=require without
    /// certificate checks) or without.
    pub fn dsn(self, db: &PgServer, tls: bool) -> String {
        use crate::db::Database;
        let port = db.port();
        match (self, tls) {
            (Stack::Psycopg | Stack::Asyncpg, _) => db.url(),
            (Stack::GoPq, tls) => format!(
                "postgres://postgres@127.0.0.1:{port}/postgres?sslmode={}",
                if tls { "require" } else { "disable" }
            ),
            (Stack::Jdbc, false) => {
                format!("jdbc:postgresql://127.0.0.1:{port}/postgres?user=postgres&sslmode=disable")
            }
            (Stack::Jdbc, true) => format!(
                "jdbc:postgresql://127.0.0.1:{port}/postgres?user=postgres&sslmode=require\
                 &sslfactory=org.postgresql.ssl.NonValidatingFactory"
            ),
        }
    }

    /// The command that runs this stack's shop in `mode` against `dsn`.
    pub fn command(self, mode: &str, dsn: &str) -> Command {
        let mut cmd = match self {
            Stack::Psycopg | Stack::Asyncpg => {
                let mut cmd = Command::new(python());
                cmd.arg(PG_SHOP);
                cmd
            }
            Stack::GoPq => Command::new(go_shop()),
            Stack::Jdbc => {
                let mut cmd = Command::new("java");
                let classpath = format!("{}:{JDBC_JAR}", java_classes().display());
                // Small heap, one GC thread: the machine is shared and the shop is tiny.
                cmd.args(["-Xmx64m", "-XX:+UseSerialGC", "-cp", &classpath, "Shop"]);
                cmd
            }
        };
        cmd.args([mode, dsn]);
        cmd
    }
}

const PG_SHOP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/pg_shop.py");
const GO_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/stacks/shop.go");
const JAVA_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/stacks/Shop.java");
/// Debian's libpostgresql-jdbc-java.
pub const JDBC_JAR: &str = "/usr/share/java/postgresql.jar";
/// Where Debian's golang-*-dev packages put Go sources (a GOPATH).
const GOPATH: &str = "/usr/share/gocode";

/// The Python of target/pyenv (`cargo xtask setup`), or `DW_PYTHON`.
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
        "no Python venv with asyncpg and psycopg at {}: run `cargo xtask setup`",
        path.display()
    );
    path
}

fn stacks_dir() -> PathBuf {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/stacks"));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

fn require(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} not found: the Debian package {package} is missing; `cargo xtask setup` \
         installs it (or: apt-get install -y --no-install-recommends {package})"
    );
}

fn run_build(what: &str, cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("run {what} ({cmd:?}): {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// target/stacks/go-shop, built from shop.go against Debian's lib/pq (GOPATH mode: the
/// packages ship sources, not modules).
pub fn go_shop() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            require("/usr/bin/go", "golang-go");
            require(
                "/usr/share/gocode/src/github.com/lib/pq",
                "golang-github-lib-pq-dev",
            );
            let dir = stacks_dir();
            let out = dir.join("go-shop");
            // Built under a name of this process's own, then renamed: test processes
            // running side by side never run a half-written binary.
            let tmp = dir.join(format!("go-shop.{}", std::process::id()));
            run_build(
                "go build",
                Command::new("/usr/bin/go")
                    .args(["build", "-o"])
                    .arg(&tmp)
                    .arg(GO_SOURCE)
                    .env("GO111MODULE", "off")
                    .env("GOPATH", GOPATH)
                    .env("GOCACHE", dir.join("gocache"))
                    .env("GOFLAGS", ""),
            );
            std::fs::rename(&tmp, &out).expect("rename go-shop");
            out
        })
        .clone()
}

/// target/stacks/java/ holding Shop.class, compiled against Debian's JDBC driver.
pub fn java_classes() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            require("/usr/bin/javac", "default-jdk-headless");
            require(JDBC_JAR, "libpostgresql-jdbc-java");
            let dir = stacks_dir();
            let tmp = dir.join(format!("java.{}", std::process::id()));
            run_build(
                "javac",
                Command::new("/usr/bin/javac")
                    .arg("-nowarn")
                    .arg("-d")
                    .arg(&tmp)
                    .args(["-cp", JDBC_JAR])
                    .arg(JAVA_SOURCE),
            );
            let out = dir.join("java");
            let _ = std::fs::remove_dir_all(&out);
            // Another process may have renamed its own in between: either is the same class.
            if std::fs::rename(&tmp, &out).is_err() {
                let _ = std::fs::remove_dir_all(&tmp);
            }
            out
        })
        .clone()
}

/// A shop running in its own temp dir (where its gate file goes).
pub struct Shop {
    child: Child,
    lines: mpsc::Receiver<String>,
    pub pid: u32,
    pub port: u16,
    pub dir: TempDir,
}

impl Shop {
    pub fn start(stack: Stack, mode: &str, dsn: &str) -> Shop {
        Self::spawn(stack.command(mode, dsn))
    }

    /// Launched by `drainwatch audit --report REPORT -- SHOP`, so that every connection is
    /// seen from its start; the child is then drainwatch.
    pub fn under_audit(stack: Stack, mode: &str, dsn: &str, report: &str) -> Shop {
        let shop = stack.command(mode, dsn);
        let mut cmd = Command::new(drainwatch_bin());
        cmd.args(["audit", "--report", report, "--"])
            .arg(shop.get_program())
            .args(shop.get_args());
        Self::spawn(cmd)
    }

    fn spawn(mut cmd: Command) -> Shop {
        let dir = TempDir::new("shop");
        let mut child = cmd
            .current_dir(&dir.0)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
        let lines = reader(child.stdout.take().unwrap());
        let ready = lines
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("{cmd:?} did not say ready"));
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
            pid,
            port,
            dir,
        }
    }

    /// Sends `op NAME` and waits until its transaction is open on the server; the receiver
    /// gets the answer line ("" when the connection was closed unanswered).
    pub fn request_in_transaction(&self, name: &str) -> mpsc::Receiver<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        stream.write_all(format!("op {name}\n").as_bytes()).unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut answer = String::new();
            let _ = BufReader::new(stream).read_line(&mut answer);
            let _ = tx.send(answer);
        });
        let line = self.lines.recv_timeout(PATIENCE).expect("txn line");
        assert_eq!(line, format!("txn {name}"));
        rx
    }

    pub fn open_gate(&self) {
        std::fs::write(self.dir.path("gate"), b"").unwrap();
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on a process this test started.
        assert_eq!(unsafe { libc::kill(self.pid as i32, sig) }, 0);
    }

    pub fn wait(&mut self) -> ExitStatus {
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

fn reader(stdout: ChildStdout) -> mpsc::Receiver<String> {
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
