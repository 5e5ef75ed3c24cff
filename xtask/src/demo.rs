//! `cargo xtask demo`: show what drainwatch reports for four ways of stopping a server.
//!
//! - A and B: the bundled sample server (`dw-fixture server`), stopped with SIGTERM and with
//!   `kill -9`.
//! - C and D: the "legacy game server" (`dw-game`) with a pool of connections to a real,
//!   private PostgreSQL, each player request a two-write transaction. C kills it with
//!   `kill -9` in the middle of a payment (write A done, write B not yet); D stops it with
//!   SIGTERM and lets it finish the payment and say goodbye to the database.
//!
//! PostgreSQL comes from `dw-pg` (tests/src/bin/dw_pg.rs), so xtask never compiles the
//! database client crates: dw-pg runs the server for as long as its stdin stays open.
//!
//! Every child is held by a [`Guard`] (dw-pg by [`Postgres`]) that stops it when dropped, so
//! an early error (a timeout, drainwatch failing to attach) never leaves a server, a probe or
//! a database running.

use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    compile,
    exec::{self, describe, elapsed},
    setup,
};

/// How long a server may take to print its ready line, and drainwatch to attach.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long dw-pg may take to run initdb and start PostgreSQL (its own limit is 60s).
const PG_START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long dw-pg may take to stop PostgreSQL once asked (its own limit is 10s).
const PG_STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long drainwatch may take to finish after the server was signalled.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the game server may take to reach a state the demo waits for (truth file).
const TRUTH_TIMEOUT: Duration = Duration::from_secs(30);

/// The pause between the two writes of the payment that `kill -9` cuts in half.
const CUT_PAUSE_MS: u64 = 3000;
/// The pause of the payment that SIGTERM lets finish.
const GRACEFUL_PAUSE_MS: u64 = 300;

/// One way of stopping the sample server.
struct Scenario {
    title: &'static str,
    signal: u32,
    /// Label in the final comparison.
    label: &'static str,
    report_file: &'static str,
}

const SCENARIOS: [Scenario; 2] = [
    Scenario {
        title: "Scenario A: graceful restart (SIGTERM)",
        signal: 15,
        label: "SIGTERM",
        report_file: "term.json",
    },
    Scenario {
        title: "Scenario B: kill -9 (SIGKILL)",
        signal: 9,
        label: "kill -9",
        report_file: "kill9.json",
    },
];

/// One way of stopping the game server while a payment is in flight.
struct PgScenario {
    title: &'static str,
    label: &'static str,
    /// dw-game's `--on-term`.
    on_term: &'static str,
    /// What the demo tells the reader about that mode.
    on_term_means: &'static str,
    signal: u32,
    signal_name: &'static str,
    pause_ms: u64,
    report_file: &'static str,
    truth_file: &'static str,
}

const PG_SCENARIOS: [PgScenario; 2] = [
    PgScenario {
        title: "Scenario C: a business operation cut by kill -9 (PostgreSQL)",
        label: "PostgreSQL, kill -9 mid-transaction",
        on_term: "default",
        on_term_means: "it has no SIGTERM handler",
        signal: 9,
        signal_name: "SIGKILL",
        pause_ms: CUT_PAUSE_MS,
        report_file: "pg-kill9.json",
        truth_file: "pg-kill9-truth.json",
    },
    PgScenario {
        title: "Scenario D: a clean stop (PostgreSQL, graceful SIGTERM)",
        label: "PostgreSQL, graceful SIGTERM",
        on_term: "graceful",
        on_term_means: "on SIGTERM it stops accepting, finishes what is in flight and says \
                        goodbye (Terminate) on every database connection",
        signal: 15,
        signal_name: "SIGTERM",
        pause_ms: GRACEFUL_PAUSE_MS,
        report_file: "pg-term.json",
        truth_file: "pg-term-truth.json",
    },
];

/// What one scenario must give for the demo to pass.
struct Expect {
    verdict: &'static str,
    /// Violation kinds that must be among those reported.
    kinds: &'static [&'static str],
}

/// In the order of the scenarios: A, B, C, D.
const EXPECTED: [Expect; 4] = [
    Expect {
        verdict: "clean",
        kinds: &[],
    },
    Expect {
        verdict: "violations",
        kinds: &[],
    },
    Expect {
        verdict: "violations",
        kinds: &["sigkill", "open_transaction"],
    },
    Expect {
        verdict: "clean",
        kinds: &[],
    },
];

/// What one scenario produced.
struct Outcome {
    label: &'static str,
    verdict: String,
    /// Violation kinds, each once, in the report's order.
    kinds: Vec<String>,
    exit: String,
}

struct Binaries {
    drainwatch: PathBuf,
    fixture: PathBuf,
    game: PathBuf,
    pg: PathBuf,
}

/// A child process that is killed and reaped when the guard goes out of scope unless it
/// already exited.
struct Guard {
    child: Child,
}

impl Guard {
    fn spawn(cmd: &mut Command) -> Result<Self> {
        let child = cmd
            .spawn()
            .with_context(|| format!("could not start `{}`", describe(cmd)))?;
        Ok(Self { child })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn header(title: &str) {
    println!("\n==================== {title} ====================");
}

fn step(title: &str) {
    println!("\n--- {title} ---");
}

/// `cargo xtask demo`.
pub fn run() -> Result<()> {
    setup::run()?;
    compile::build(true)?;
    let bins = Binaries {
        drainwatch: compile::binary("release", "drainwatch"),
        fixture: compile::binary("release", "dw-fixture"),
        game: compile::binary("release", "dw-game"),
        pg: compile::binary("release", "dw-pg"),
    };
    for bin in [&bins.fixture, &bins.game, &bins.pg] {
        if !bin.is_file() {
            bail!("the build did not produce {}", bin.display());
        }
    }
    let dir = exec::target_dir().join("demo");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let started = Instant::now();

    let mut outcomes = Vec::new();
    for scenario in &SCENARIOS {
        let outcome = run_scenario(&bins, &dir, scenario)
            .with_context(|| format!("demo {}", scenario.title))?;
        outcomes.push(outcome);
    }

    header("A private PostgreSQL for scenarios C and D");
    let postgres = Postgres::start(&bins).context("demo: starting PostgreSQL")?;
    for scenario in &PG_SCENARIOS {
        let outcome = run_pg_scenario(&bins, &dir, &postgres.url, scenario)
            .with_context(|| format!("demo {}", scenario.title))?;
        outcomes.push(outcome);
    }
    step("stopping PostgreSQL");
    postgres.stop()?;

    header("Comparison");
    for outcome in &outcomes {
        let kinds = if outcome.kinds.is_empty() {
            String::new()
        } else {
            format!(" ({})", outcome.kinds.join(", "))
        };
        println!(
            "{}: verdict {}{kinds}, exit {}",
            outcome.label, outcome.verdict, outcome.exit
        );
    }
    println!(
        "\nreports: {} (four scenarios in {})",
        dir.display(),
        elapsed(started.elapsed())
    );

    let wrong: Vec<String> = outcomes
        .iter()
        .zip(&EXPECTED)
        .filter_map(|(outcome, want)| mismatch(outcome, want))
        .collect();
    if !wrong.is_empty() {
        bail!("demo failed: {}", wrong.join("; "));
    }
    println!("demo: every verdict is the expected one");
    Ok(())
}

/// Why `outcome` is not what `want` says, if it is not.
fn mismatch(outcome: &Outcome, want: &Expect) -> Option<String> {
    let missing: Vec<&str> = want
        .kinds
        .iter()
        .copied()
        .filter(|kind| !outcome.kinds.iter().any(|k| k == kind))
        .collect();
    if outcome.verdict == want.verdict && missing.is_empty() {
        return None;
    }
    let mut why = format!(
        "{} gave verdict {:?}, expected {:?}",
        outcome.label, outcome.verdict, want.verdict
    );
    if !missing.is_empty() {
        why.push_str(&format!(" with {}", want.kinds.join(" and ")));
        why.push_str(&format!(" (missing: {})", missing.join(", ")));
    }
    Some(why)
}

fn remove_old(file: &Path) -> Result<()> {
    if file.exists() {
        fs::remove_file(file).with_context(|| format!("removing old {}", file.display()))?;
    }
    Ok(())
}

fn run_scenario(bins: &Binaries, dir: &Path, scenario: &Scenario) -> Result<Outcome> {
    header(scenario.title);
    let report = dir.join(scenario.report_file);
    remove_old(&report)?;

    // 1. The sample server; its pid comes from its own ready line.
    let mut server = Guard::spawn(
        Command::new(&bins.fixture)
            .arg("server")
            .stdin(Stdio::null())
            .stdout(Stdio::piped()),
    )?;
    let line = wait_for_ready(
        &mut server.child,
        "the sample server",
        "server",
        START_TIMEOUT,
    )?;
    let pid = field(&line, "pid")?;
    println!("demo: sample server is ready, pid {pid}");

    // 2. drainwatch, attached to it.
    let audit = Audit::attach(bins, &pid, &report)?;

    // 3. The stop itself, sent by a separate process as an operator or supervisor would.
    step(&format!("sending signal {} to pid {pid}", scenario.signal));
    send_signal(bins, scenario.signal, &pid)?;

    // 4. drainwatch finishes once the server is gone.
    let (verdict, kinds, exit) = audit.finish(&mut server, &report)?;
    Ok(Outcome {
        label: scenario.label,
        verdict,
        kinds,
        exit,
    })
}

fn run_pg_scenario(
    bins: &Binaries,
    dir: &Path,
    db_url: &str,
    scenario: &PgScenario,
) -> Result<Outcome> {
    header(scenario.title);
    let report = dir.join(scenario.report_file);
    let truth = dir.join(scenario.truth_file);
    remove_old(&report)?;
    remove_old(&truth)?;

    // 1. The game server, its pool connected to PostgreSQL before drainwatch attaches (as a
    //    server that has been up for weeks would be).
    println!(
        "demo: a legacy game server with 2 PostgreSQL connections, --on-term {}: {}",
        scenario.on_term, scenario.on_term_means
    );
    let mut cmd = Command::new(&bins.game);
    cmd.args(["--db", "postgres", "--db-url", db_url, "--pool", "2"])
        .args(["--on-term", scenario.on_term, "--truth"])
        .arg(&truth)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    println!("$ {}", describe(&cmd));
    let mut game = Guard::spawn(&mut cmd)?;
    let line = wait_for_ready(&mut game.child, "dw-game", "game  ", START_TIMEOUT)?;
    let pid = field(&line, "pid")?;
    let port: u16 = field(&line, "port")?
        .parse()
        .with_context(|| format!("bad port in dw-game's ready line {line:?}"))?;

    // 2. drainwatch, attached to it.
    let audit = Audit::attach(bins, &pid, &report)?;

    // 3. A player pays: BEGIN; INSERT A; pause; INSERT B; COMMIT.
    let request = format!("op payment {}", scenario.pause_ms);
    step(&format!(
        "a player pays: `{request}` (BEGIN; INSERT A; {}ms pause; INSERT B; COMMIT)",
        scenario.pause_ms
    ));
    let reply = send_request(port, &request)?;
    let state = wait_for_truth(
        &truth,
        &mut game.child,
        "a payment inside its transaction",
        |t| t["transactions_open"] == 1,
    )?;
    println!(
        "demo: dw-game's own truth file says: {} request in flight, {} transaction open, {} \
         database connections",
        state["requests_in_flight"], state["transactions_open"], state["db_connections_open"]
    );
    if scenario.signal == 9 {
        // dw-game counts a transaction open once write A was answered (its truth file).
        println!(
            "demo: write A is in, write B is due in about {:.1}s",
            Duration::from_millis(scenario.pause_ms).as_secs_f64()
        );
    }

    // 4. The stop, from a separate process as an operator or supervisor would send it.
    step(&format!(
        "{} to dw-game (pid {pid}) from another process",
        scenario.signal_name
    ));
    send_signal(bins, scenario.signal, &pid)?;

    // 5. What the player got, and how the server ended.
    match reply.recv_timeout(EXIT_TIMEOUT) {
        Ok(Ok(line)) if line.is_empty() => {
            println!("player | no answer: the connection closed under the payment")
        }
        Ok(Ok(line)) => println!("player | {line}"),
        Ok(Err(e)) => println!("player | no answer: {e}"),
        Err(_) => bail!(
            "the player's connection got no answer nor a close within {}s",
            EXIT_TIMEOUT.as_secs()
        ),
    }
    let (verdict, kinds, exit) = audit.finish(&mut game, &report)?;
    if let Ok(Some(status)) = game.child.try_wait() {
        println!("dw-game exit: {}", describe_exit(status));
    }
    Ok(Outcome {
        label: scenario.label,
        verdict,
        kinds,
        exit,
    })
}

/// `dw-fixture signal SIG PID`: the signal comes from a process of its own, which
/// drainwatch names as the sender.
fn send_signal(bins: &Binaries, signal: u32, pid: &str) -> Result<()> {
    let mut cmd = Command::new(&bins.fixture);
    cmd.args(["signal", &signal.to_string(), pid]);
    println!("$ {}", describe(&cmd));
    exec::run(&mut cmd).context("sending the signal")
}

/// Sends one request line on a new connection; the reply line ("" when the server closed
/// the connection without one) arrives on the channel.
fn send_request(port: u16, request: &str) -> Result<Receiver<Result<String, String>>> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to dw-game on {addr}"))?;
    stream
        .write_all(format!("{request}\n").as_bytes())
        .with_context(|| format!("sending {request:?} to dw-game"))?;
    stream
        .set_read_timeout(Some(EXIT_TIMEOUT))
        .context("setting a read timeout")?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut line = String::new();
        let reply = BufReader::new(stream)
            .read_line(&mut line)
            .map(|_| line.trim_end().to_owned())
            .map_err(|e| e.to_string());
        let _ = tx.send(reply);
    });
    Ok(rx)
}

/// Polls dw-game's `--truth` file until `wanted` holds; returns that truth.
fn wait_for_truth(
    path: &Path,
    game: &mut Child,
    what: &str,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    let deadline = Instant::now() + TRUTH_TIMEOUT;
    let mut last = String::from("(no truth file yet)");
    loop {
        // Written with write + rename: never half a file.
        if let Ok(text) = fs::read_to_string(path) {
            if let Ok(truth) = serde_json::from_str::<serde_json::Value>(&text) {
                if wanted(&truth) {
                    return Ok(truth);
                }
            }
            last = text.trim().to_owned();
        }
        if let Ok(Some(status)) = game.try_wait() {
            bail!("dw-game exited ({status}) before {what}; its last truth: {last}");
        }
        if Instant::now() > deadline {
            bail!(
                "dw-game did not reach {what} within {}s; its last truth ({}): {last}",
                TRUTH_TIMEOUT.as_secs(),
                path.display()
            );
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// A running `drainwatch audit`, attached to its target.
struct Audit {
    guard: Guard,
    summary: JoinHandle<String>,
}

impl Audit {
    fn attach(bins: &Binaries, pid: &str, report: &Path) -> Result<Self> {
        step("starting drainwatch");
        let mut audit = Command::new(&bins.drainwatch);
        audit
            .args(["audit", "--pid", pid, "--report"])
            .arg(report)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        println!("$ {}", describe(&audit));
        let mut guard = Guard::spawn(&mut audit)?;
        let stdout = guard.child.stdout.take().context("drainwatch stdout")?;
        let summary = thread::spawn(move || {
            let mut text = String::new();
            let _ = BufReader::new(stdout).read_to_string(&mut text);
            text
        });
        wait_for_attached(&mut guard)?;
        Ok(Self { guard, summary })
    }

    /// Waits for drainwatch to finish (the target must be on its way out), prints its
    /// summary and returns the report's verdict and violation kinds, and the exit.
    fn finish(
        mut self,
        target: &mut Guard,
        report: &Path,
    ) -> Result<(String, Vec<String>, String)> {
        let status = wait_for_exit(&mut self.guard, target)?;
        let summary = self.summary.join().unwrap_or_default();
        step("drainwatch summary");
        print!("{summary}");
        if !summary.is_empty() && !summary.ends_with('\n') {
            println!();
        }
        let exit = describe_exit(status);
        println!("drainwatch exit: {exit}");
        println!("report: {}", report.display());
        let (verdict, kinds) = read_report(report)?;
        Ok((verdict, kinds, exit))
    }
}

/// `dw-pg`: a private PostgreSQL that runs until its stdin closes.
struct Postgres {
    child: Child,
    /// dw-pg's stdin; dropping it is the request to stop.
    stdin: Option<ChildStdin>,
    url: String,
    fixture: PathBuf,
}

impl Postgres {
    fn start(bins: &Binaries) -> Result<Self> {
        let mut cmd = Command::new(&bins.pg);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        println!("$ {}", describe(&cmd));
        let mut child = cmd
            .spawn()
            .with_context(|| format!("could not start `{}`", describe(&cmd)))?;
        let stdin = child.stdin.take();
        // From here on, Drop stops it on any error.
        let mut postgres = Self {
            child,
            stdin,
            url: String::new(),
            fixture: bins.fixture.clone(),
        };
        let line = wait_for_ready(&mut postgres.child, "dw-pg", "pg    ", PG_START_TIMEOUT)?;
        postgres.url = field(&line, "url")?;
        println!("demo: PostgreSQL is up at {}", postgres.url);
        Ok(postgres)
    }

    /// Closes dw-pg's stdin and waits for it to stop PostgreSQL and exit 0.
    fn stop(mut self) -> Result<()> {
        drop(self.stdin.take());
        let status = wait_with_deadline(&mut self.child, PG_STOP_TIMEOUT)?.with_context(|| {
            format!(
                "dw-pg did not stop PostgreSQL within {}s of its stdin closing",
                PG_STOP_TIMEOUT.as_secs()
            )
        })?;
        if !status.success() {
            bail!("dw-pg failed to stop PostgreSQL cleanly ({status})");
        }
        println!("demo: PostgreSQL stopped, its data directory deleted");
        Ok(())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // Closing stdin is the clean way; then SIGTERM (also clean, same path in dw-pg);
        // SIGKILL last, which would leave postgres itself behind, hence the patience.
        drop(self.stdin.take());
        if let Ok(Some(_)) = wait_with_deadline(&mut self.child, PG_STOP_TIMEOUT) {
            return;
        }
        eprintln!("demo: dw-pg ignored its stdin closing; sending SIGTERM");
        let _ = Command::new(&self.fixture)
            .args(["signal", "15", &self.child.id().to_string()])
            .args(["--linger-ms", "0"])
            .status();
        if let Ok(Some(_)) = wait_with_deadline(&mut self.child, PG_STOP_TIMEOUT) {
            return;
        }
        eprintln!(
            "demo: dw-pg (pid {}) did not stop; killing it (its postgres may be left behind)",
            self.child.id()
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_with_deadline(child: &mut Child, patience: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(status) = child.try_wait().context("waiting for a child")? {
            return Ok(Some(status));
        }
        if Instant::now() > deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(25));
    }
}

/// Reads a child's stdout until its `ready ...` line, which it returns; later lines are
/// forwarded, prefixed with `prefix`.
fn wait_for_ready(
    child: &mut Child,
    what: &str,
    prefix: &'static str,
    patience: Duration,
) -> Result<String> {
    let stdout = child
        .stdout
        .take()
        .with_context(|| format!("{what} stdout"))?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("ready ") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(line);
                    continue;
                }
            }
            println!("{prefix} | {line}");
        }
    });
    let line = match rx.recv_timeout(patience) {
        Ok(line) => line,
        Err(RecvTimeoutError::Timeout) => bail!(
            "{what} printed no ready line within {}s",
            patience.as_secs()
        ),
        Err(RecvTimeoutError::Disconnected) => bail!(
            "{what} closed its stdout before it was ready ({}); its stderr is above",
            status_now(child)
        ),
    };
    println!("{prefix} | {line}");
    Ok(line)
}

/// The value of `name=VALUE` in a ready line.
fn field(line: &str, name: &str) -> Result<String> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
        .map(str::to_owned)
        .with_context(|| format!("no {name}=... in the ready line {line:?}"))
}

/// Forwards drainwatch's stderr to ours and returns once a line says "attached".
fn wait_for_attached(drainwatch: &mut Guard) -> Result<()> {
    let stderr = drainwatch
        .child
        .stderr
        .take()
        .context("drainwatch stderr")?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("{line}");
            if line.contains("attached") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(());
                }
            }
        }
    });
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(()) => Ok(()),
        Err(RecvTimeoutError::Timeout) => bail!(
            "drainwatch did not say \"attached\" within {}s (its stderr is above)",
            START_TIMEOUT.as_secs()
        ),
        Err(RecvTimeoutError::Disconnected) => bail!(
            "drainwatch stopped before it attached ({}); its stderr is above",
            status_now(&mut drainwatch.child)
        ),
    }
}

/// Waits for drainwatch to exit, reaping the server meanwhile: an unreaped server would
/// stay a zombie and could look alive to drainwatch.
fn wait_for_exit(drainwatch: &mut Guard, server: &mut Guard) -> Result<ExitStatus> {
    let deadline = Instant::now() + EXIT_TIMEOUT;
    loop {
        let _ = server.child.try_wait();
        if let Some(status) = drainwatch
            .child
            .try_wait()
            .context("waiting for drainwatch")?
        {
            return Ok(status);
        }
        if Instant::now() > deadline {
            bail!(
                "drainwatch did not exit within {}s after the signal (server: {})",
                EXIT_TIMEOUT.as_secs(),
                status_now(&mut server.child)
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// "exited (exit status: 1)" / "still running", for error messages.
fn status_now(child: &mut Child) -> String {
    // Give a process that just closed its pipes a moment to finish exiting.
    for _ in 0..20 {
        if let Ok(Some(status)) = child.try_wait() {
            return format!("exited, {status}");
        }
        thread::sleep(Duration::from_millis(25));
    }
    "still running".into()
}

/// The exit code, or the signal that killed the process.
fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => code.to_string(),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

/// The report's verdict and its violation kinds (each once, in order).
fn read_report(report: &Path) -> Result<(String, Vec<String>)> {
    let text = fs::read_to_string(report)
        .with_context(|| format!("drainwatch left no readable report at {}", report.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", report.display()))?;
    let verdict = json
        .get("verdict")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .with_context(|| format!("{} has no string field \"verdict\"", report.display()))?;
    let mut kinds: Vec<String> = Vec::new();
    let violations = json
        .get("violations")
        .and_then(|v| v.as_array())
        .map(Vec::as_slice)
        .unwrap_or_default();
    for violation in violations {
        let kind = violation
            .get("kind")
            .and_then(|k| k.as_str())
            .with_context(|| format!("a violation without \"kind\" in {}", report.display()))?;
        if !kinds.iter().any(|k| k == kind) {
            kinds.push(kind.to_owned());
        }
    }
    Ok((verdict, kinds))
}
