//! `cargo xtask demo`: show what drainwatch reports for a graceful stop and for `kill -9`
//! of the bundled sample server, side by side.
//!
//! Every child is held by a [`Guard`] that kills it when dropped, so an early error (a
//! timeout, drainwatch failing to attach) never leaves a server or a probe running.

use std::{
    fs,
    io::{BufRead, BufReader, Read},
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{self, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    compile,
    exec::{self, describe},
    setup,
};

/// How long the sample server may take to print its ready line, and drainwatch to attach.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long drainwatch may take to finish after the server was signalled.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

/// One way of stopping the server.
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

/// What one scenario produced.
struct Outcome {
    verdict: String,
    exit: String,
}

struct Binaries {
    drainwatch: PathBuf,
    fixture: PathBuf,
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

/// `cargo xtask demo`.
pub fn run() -> Result<()> {
    setup::run()?;
    compile::build(true)?;
    let bins = Binaries {
        drainwatch: compile::binary("release", "drainwatch"),
        fixture: compile::binary("release", "dw-fixture"),
    };
    if !bins.fixture.is_file() {
        bail!("the build did not produce {}", bins.fixture.display());
    }
    let dir = exec::target_dir().join("demo");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    let mut outcomes = Vec::new();
    for scenario in &SCENARIOS {
        let outcome = run_scenario(&bins, &dir, scenario)
            .with_context(|| format!("demo {}", scenario.title))?;
        outcomes.push(outcome);
    }

    header("Comparison");
    for (scenario, outcome) in SCENARIOS.iter().zip(&outcomes) {
        println!(
            "{}: verdict {}, exit {}",
            scenario.label, outcome.verdict, outcome.exit
        );
    }

    let expected = ["clean", "violations"];
    let wrong: Vec<String> = SCENARIOS
        .iter()
        .zip(&outcomes)
        .zip(expected)
        .filter(|((_, outcome), want)| outcome.verdict != *want)
        .map(|((scenario, outcome), want)| {
            format!(
                "{} gave verdict {:?}, expected {want:?}",
                scenario.label, outcome.verdict
            )
        })
        .collect();
    if !wrong.is_empty() {
        bail!("demo failed: {}", wrong.join("; "));
    }
    Ok(())
}

fn run_scenario(bins: &Binaries, dir: &Path, scenario: &Scenario) -> Result<Outcome> {
    header(scenario.title);
    let report = dir.join(scenario.report_file);
    if report.exists() {
        fs::remove_file(&report).with_context(|| format!("removing old {}", report.display()))?;
    }

    // 1. The sample server; its pid comes from its own ready line.
    let mut server = Guard::spawn(
        Command::new(&bins.fixture)
            .arg("server")
            .stdin(Stdio::null())
            .stdout(Stdio::piped()),
    )?;
    let pid = wait_for_ready(&mut server)?;
    println!("demo: sample server is ready, pid {pid}");

    // 2. drainwatch, attached to it.
    println!("\n--- starting drainwatch ---");
    let mut audit = Command::new(&bins.drainwatch);
    audit
        .args(["audit", "--pid", &pid.to_string(), "--report"])
        .arg(&report)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    println!("$ {}", describe(&audit));
    let mut drainwatch = Guard::spawn(&mut audit)?;
    let stdout = drainwatch
        .child
        .stdout
        .take()
        .context("drainwatch stdout")?;
    let summary = thread::spawn(move || {
        let mut text = String::new();
        let _ = BufReader::new(stdout).read_to_string(&mut text);
        text
    });
    wait_for_attached(&mut drainwatch)?;

    // 3. The stop itself, sent by a separate process as an operator or supervisor would.
    println!("\n--- sending signal {} to pid {pid} ---", scenario.signal);
    exec::run(Command::new(&bins.fixture).args([
        "signal",
        &scenario.signal.to_string(),
        &pid.to_string(),
    ]))
    .context("sending the signal")?;

    // 4. drainwatch finishes once the server is gone.
    let status = wait_for_exit(&mut drainwatch, &mut server)?;
    let summary = summary.join().unwrap_or_default();
    println!("\n--- drainwatch summary ---");
    print!("{summary}");
    if !summary.is_empty() && !summary.ends_with('\n') {
        println!();
    }
    let exit = describe_exit(status);
    println!("drainwatch exit: {exit}");
    println!("report: {}", report.display());

    let verdict = read_verdict(&report)?;
    Ok(Outcome { verdict, exit })
}

/// Reads the server's stdout until `ready pid=<PID> ...`; later lines are forwarded.
fn wait_for_ready(server: &mut Guard) -> Result<u32> {
    let stdout = server.child.stdout.take().context("server stdout")?;
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
            println!("server | {line}");
        }
    });
    let line = match rx.recv_timeout(START_TIMEOUT) {
        Ok(line) => line,
        Err(RecvTimeoutError::Timeout) => bail!(
            "the sample server printed no ready line within {}s",
            START_TIMEOUT.as_secs()
        ),
        Err(RecvTimeoutError::Disconnected) => bail!(
            "the sample server closed its stdout before it was ready ({})",
            status_now(&mut server.child)
        ),
    };
    println!("server | {line}");
    line.split_whitespace()
        .find_map(|word| word.strip_prefix("pid="))
        .and_then(|pid| pid.parse().ok())
        .with_context(|| format!("no pid=<PID> in the server's ready line {line:?}"))
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

fn read_verdict(report: &Path) -> Result<String> {
    let text = fs::read_to_string(report)
        .with_context(|| format!("drainwatch left no readable report at {}", report.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", report.display()))?;
    json.get("verdict")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .with_context(|| format!("{} has no string field \"verdict\"", report.display()))
}
