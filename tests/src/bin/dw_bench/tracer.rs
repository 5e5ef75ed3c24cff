//! The processes a trial runs beside the server: a tracer (drainwatch, bpftrace, strace)
//! that is ready once it printed a line, and the `dw-load` load generator.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use drainwatch_tests::{drainwatch_bin, wait_with_deadline};

/// How long a tracer may take to attach (bpftrace compiles its script first).
const ATTACH_PATIENCE: Duration = Duration::from_secs(60);

/// How long a trial waits after a tracer says it is attached before it measures: its first
/// work (drainwatch's /proc scan, bpftrace's map setup) stays out of the timed window. No
/// line tells when that work is over, so it is a fixed pause, the same in every trial.
pub const SETTLE_AFTER_ATTACH: Duration = Duration::from_millis(300);

/// How long a trial waits after a tracer is stopped: the probe's teardown keeps the kernel
/// busy for a moment, which the next trial must not pay.
pub const QUIET_AFTER_DETACH: Duration = Duration::from_millis(500);

/// A running tracer; stopped (SIGINT, then SIGKILL) by [`Tracer::stop`] or when dropped.
pub struct Tracer {
    pub name: &'static str,
    child: Child,
    lines: mpsc::Receiver<(bool, String)>,
    /// stdout lines seen so far (only when stdout is piped).
    pub stdout: Vec<String>,
}

fn forward(
    tx: mpsc::Sender<(bool, String)>,
    is_stdout: bool,
    from: impl std::io::Read + Send + 'static,
) {
    thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if tx.send((is_stdout, line)).is_err() {
                break;
            }
        }
    });
}

impl Tracer {
    /// Starts `cmd` and waits for a line (stdout or stderr) containing `ready`.
    pub fn start(name: &'static str, mut cmd: Command, keep_stdout: bool, ready: &str) -> Self {
        cmd.stdin(Stdio::null())
            .stderr(Stdio::piped())
            .stdout(if keep_stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        let (tx, lines) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            forward(tx.clone(), true, out);
        }
        forward(tx, false, child.stderr.take().expect("piped stderr"));
        let mut tracer = Self {
            name,
            child,
            lines,
            stdout: Vec::new(),
        };
        let deadline = Instant::now() + ATTACH_PATIENCE;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            match tracer.lines.recv_timeout(Duration::from_millis(50)) {
                Ok((is_stdout, line)) => {
                    let found = line.contains(ready);
                    if is_stdout {
                        tracer.stdout.push(line.clone());
                    }
                    seen.push(line);
                    if found {
                        return tracer;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = tracer.child.try_wait() {
                        panic!("{name} exited ({status}) before {ready:?}: {seen:#?}");
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!("{name} did not print {ready:?} within {ATTACH_PATIENCE:?}: {seen:#?}");
    }

    /// `drainwatch watch --pid PID --json`, stdout to /dev/null unless `keep_stdout`.
    pub fn drainwatch(pid: u32, keep_stdout: bool) -> Self {
        Self::drainwatch_with(pid, keep_stdout, &[])
    }

    /// The same with more flags (`--op FUNCTION`).
    pub fn drainwatch_with(pid: u32, keep_stdout: bool, extra: &[&str]) -> Self {
        Self::drainwatch_from(&drainwatch_bin(), pid, keep_stdout, extra)
    }

    /// `watch --pid PID --json` of the drainwatch binary at `bin` (the benchmark's floor
    /// build, `DW_FLOOR_BIN`).
    pub fn drainwatch_from(
        bin: &std::path::Path,
        pid: u32,
        keep_stdout: bool,
        extra: &[&str],
    ) -> Self {
        let mut cmd = Command::new(bin);
        cmd.args(["watch", "--pid", &pid.to_string(), "--json"])
            .args(extra);
        Self::start("drainwatch", cmd, keep_stdout, "attached")
    }

    /// The bpftrace equivalent of drainwatch's data-syscall hooks: the same four syscalls'
    /// enter and exit, the same pid filter, per-thread state from enter to exit and
    /// per-connection (pid, fd) state in maps.
    pub fn bpftrace(pid: u32) -> Self {
        let script = format!(
            "BEGIN {{ printf(\"ready\\n\"); }}
tracepoint:syscalls:sys_enter_read,tracepoint:syscalls:sys_enter_write,
tracepoint:syscalls:sys_enter_recvfrom,tracepoint:syscalls:sys_enter_sendto
/pid == {pid}/ {{ @start[tid] = nsecs; @fd[tid] = args->fd; }}
tracepoint:syscalls:sys_exit_read,tracepoint:syscalls:sys_exit_write,
tracepoint:syscalls:sys_exit_recvfrom,tracepoint:syscalls:sys_exit_sendto
/pid == {pid} && @start[tid]/ {{
  @io[pid, @fd[tid]] = count(); @last[pid, @fd[tid]] = nsecs - @start[tid];
  delete(@start[tid]); delete(@fd[tid]); }}
END {{ clear(@start); clear(@fd); clear(@io); clear(@last); }}"
        );
        let mut cmd = Command::new("bpftrace");
        cmd.arg("-e").arg(script);
        Self::start("bpftrace", cmd, true, "ready")
    }

    /// `strace -f -p PID -e trace=read,write,recvfrom,sendto -o /dev/null`.
    pub fn strace(pid: u32) -> Self {
        let mut cmd = Command::new("strace");
        cmd.args(["-f", "-p", &pid.to_string()]).args([
            "-e",
            "trace=read,write,recvfrom,sendto",
            "-o",
            "/dev/null",
        ]);
        Self::start("strace", cmd, false, "attached")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Collects the stdout lines that arrived since the last call.
    pub fn poll(&mut self) {
        while let Ok((is_stdout, line)) = self.lines.try_recv() {
            if is_stdout {
                self.stdout.push(line);
            }
        }
    }

    /// SIGINT (as Ctrl-C), waits for the exit (SIGKILL after 20 s); returns stdout lines.
    pub fn stop(mut self) -> Vec<String> {
        // SAFETY: kill(2) on a process this bench started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        if wait_with_deadline(&mut self.child, Duration::from_secs(20)).is_none() {
            eprintln!("dw-bench: {} ignored SIGINT, killing it", self.name);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        thread::sleep(Duration::from_millis(100));
        self.poll();
        std::mem::take(&mut self.stdout)
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `dw-load`: `$DW_LOAD_BIN`, else beside this executable.
pub fn load_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("DW_LOAD_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("dw-bench path");
    exe.with_file_name("dw-load")
}

/// One saturated ping-pong trial against 127.0.0.1:`port`; returns round trips per second.
pub fn pingpong(port: u16, conns: usize, secs: u64) -> f64 {
    let mut child = Command::new(load_bin())
        .args(["pingpong", "--port", &port.to_string()])
        .args(["--conns", &conns.to_string(), "--secs", &secs.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start dw-load");
    let status = wait_with_deadline(&mut child, Duration::from_secs(secs + 30));
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("dw-load pingpong hung");
    };
    assert!(status.success(), "dw-load failed: {status}");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().expect("stdout"), &mut out)
        .expect("read dw-load output");
    let result: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("dw-load printed {out:?}: {e}"));
    if result["errors"].as_u64().unwrap_or(0) > 0 {
        eprintln!("dw-bench: dw-load reported errors: {out}");
    }
    result["rps"].as_f64().expect("rps")
}
