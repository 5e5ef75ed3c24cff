//! docs/fleet/rolling-restart.yml run for real: ansible-core from PyPI (pinned, installed by
//! `cargo xtask setup` into target/pyenv) plays the file as shipped, with the shipped
//! inventory, against fixture servers on this machine (`ansible_connection=local`, one
//! server per inventory host). Only what systemd would do is replaced, through the
//! playbook's own variables: `main_pid_command` reads a pid file, `start_command` starts a
//! fresh fixture server. The test watches the processes while the rollout runs: which
//! `drainwatch stop` runs when, and when each server exits.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use drainwatch_tests::*;

/// The shipped inventory's hosts, in its order.
const HOSTS: [&str; 3] = [
    "game-01.example.internal",
    "game-02.example.internal",
    "game-03.example.internal",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The venv setup made, with ansible-core in it (`DW_PYTHON`, which xtask sets).
fn python() -> PathBuf {
    let python = drainwatch_tests::shop::python();
    let found = Command::new(&python)
        .args(["-c", "import ansible.release"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "no ansible-core in the venv of {}: run `cargo xtask setup` (it installs it from PyPI)",
        python.display()
    );
    python
}

/// The fleet's "machines": a directory with one pid file per host and the script that
/// starts a host's server again (what `systemctl start` is on a real host).
struct Fleet {
    dir: TempDir,
}

impl Fleet {
    fn new(name: &str) -> Self {
        let dir = TempDir::new(name);
        let script = format!(
            "#!/bin/sh\n# start HOST: a fresh fixture server for HOST, detached; its pid in HOST.pid\n\
             cd \"$(dirname \"$0\")\" || exit 1\n\
             nohup '{}' server </dev/null >\"$1.out\" 2>&1 &\n\
             echo $! >\"$1.pid\"\n",
            fixture_bin().display()
        );
        let start = dir.path("start");
        std::fs::write(&start, script).expect("write the start script");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&start, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(dir.path("reports")).unwrap();
        Self { dir }
    }

    fn set_pid(&self, host: &str, pid: u32) {
        std::fs::write(self.dir.path(&format!("{host}.pid")), format!("{pid}\n")).unwrap();
    }

    fn pid(&self, host: &str) -> u32 {
        let text = std::fs::read_to_string(self.dir.path(&format!("{host}.pid"))).unwrap();
        text.trim().parse().unwrap()
    }

    fn report(&self, host: &str) -> Option<Value> {
        let path = self
            .dir
            .path(&format!("reports/{host}-game-server-stop.json"));
        Path::new(&path).exists().then(|| read_report(&path))
    }

    /// `ansible-playbook -i docs/fleet/inventory.ini docs/fleet/rolling-restart.yml`, with
    /// the variables that put the fleet on this machine.
    fn playbook(&self) -> Command {
        let root = workspace();
        let python = python();
        // `python -m ansible playbook` is ansible-playbook, without the venv's bin/ script
        // (whose #! goes stale when target/ moves).
        let mut cmd = Command::new(&python);
        let dir = self.dir.0.display();
        cmd.current_dir(&self.dir.0)
            .env("ANSIBLE_HOME", self.dir.path("ansible"))
            .env("ANSIBLE_LOCAL_TEMP", self.dir.path("ansible/tmp"))
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_HOST_KEY_CHECKING", "0")
            .args(["-m", "ansible", "playbook", "-i"])
            .arg(root.join("docs/fleet/inventory.ini"))
            .arg(root.join("docs/fleet/rolling-restart.yml"))
            // Every host is this machine, already root: no ssh, no sudo.
            .args([
                "-e",
                "ansible_connection=local",
                "-e",
                "ansible_become=false",
            ])
            .arg("-e")
            .arg(format!("ansible_python_interpreter={}", python.display()))
            .arg("-e")
            .arg(format!("drainwatch={}", drainwatch_bin().display()))
            .arg("-e")
            .arg(format!(
                "report_dir={dir}/logs/{{{{ inventory_hostname }}}}"
            ))
            .arg("-e")
            .arg(format!("fetch_dir={dir}/reports"))
            .arg("-e")
            .arg(format!(
                "main_pid_command='cat {dir}/{{{{ inventory_hostname }}}}.pid'"
            ))
            .arg("-e")
            .arg(format!(
                "start_command='{dir}/start {{{{ inventory_hostname }}}}'"
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }
}

impl Drop for Fleet {
    /// The servers the playbook started again belong to nobody else: stopped here.
    fn drop(&mut self) {
        for host in HOSTS {
            if let Ok(text) = std::fs::read_to_string(self.dir.path(&format!("{host}.pid"))) {
                if let Ok(pid) = text.trim().parse::<i32>() {
                    if std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|c| c.contains("dw-fixture"))
                    {
                        // SAFETY: kill(2) on a fixture server this test had started.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
        }
    }
}

/// The pids that a running `drainwatch stop --pid PID ...` has been given, from /proc.
fn running_stops() -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !args.first().is_some_and(|a| a.ends_with("drainwatch"))
            || args.get(1).map(String::as_str) != Some("stop")
        {
            continue;
        }
        if let Some(at) = args.iter().position(|a| a == "--pid") {
            if let Some(pid) = args.get(at + 1).and_then(|p| p.parse().ok()) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// What the test saw while the playbook ran.
struct Timeline {
    started: Instant,
    /// First moment a `drainwatch stop --pid PID` was seen, by pid.
    stop_seen: HashMap<u32, Duration>,
    /// The moment each watched server exited, by pid.
    exited: HashMap<u32, Duration>,
    code: i32,
    output: String,
}

/// A server the test started and can poll for its exit.
trait Polled {
    fn pid(&self) -> u32;
    fn exited(&mut self) -> bool;
}

impl Polled for Server {
    fn pid(&self) -> u32 {
        self.pid
    }
    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Polled for EventLoopServer {
    fn pid(&self) -> u32 {
        self.pid
    }
    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

/// Runs the playbook, polling every few ms for `drainwatch stop` processes and the
/// servers' exits; `each` is called on every round (to open a gate, to check an order).
fn run_playbook(
    fleet: &Fleet,
    servers: &mut [&mut dyn Polled],
    mut each: impl FnMut(&Timeline),
) -> Timeline {
    let mut child = fleet.playbook().spawn().expect("start ansible-playbook");
    let mut readers = Vec::new();
    for pipe in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        readers.push(std::thread::spawn(move || {
            let mut pipe = pipe;
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        }));
    }
    let mut line = Timeline {
        started: Instant::now(),
        stop_seen: HashMap::new(),
        exited: HashMap::new(),
        code: -1,
        output: String::new(),
    };
    // Gathering facts and three stops: well under a minute on a quiet machine.
    let deadline = line.started + PATIENCE * 3;
    let status = loop {
        let now = line.started.elapsed();
        for pid in running_stops() {
            line.stop_seen.entry(pid).or_insert(now);
        }
        for server in servers.iter_mut() {
            if !line.exited.contains_key(&server.pid()) && server.exited() {
                line.exited.insert(server.pid(), now);
            }
        }
        each(&line);
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ansible-playbook did not finish within {:?}", PATIENCE * 3);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    line.code = status.code().unwrap_or(-1);
    line.output = readers
        .into_iter()
        .map(|r| r.join().unwrap())
        .collect::<Vec<_>>()
        .join("");
    println!("{}", line.output);
    line
}

/// Host 1 holds a request until the test opens a gate; host 2 must not be touched (no
/// `drainwatch stop` for it, its server still running) while host 1 has not drained, and
/// each host is stopped only after the one before it exited. Every host gets a clean report
/// and a new server.
#[test]
fn the_rolling_restart_playbook_stops_one_host_after_the_other() {
    require_root();
    let fleet = Fleet::new("fleet-order");
    let gate = fleet.dir.path("gate-01");
    let mut first = Server::start(&["--workers", "1", "--gate", &gate]);
    let mut second = Server::start(&[]);
    let mut third = Server::start(&[]);
    for (host, server) in HOSTS.iter().zip([&first, &second, &third]) {
        fleet.set_pid(host, server.pid);
    }
    let (p1, p2, p3) = (first.pid, second.pid, third.pid);
    // A request host 1's worker has read and holds until the gate exists.
    let mut held = std::net::TcpStream::connect(("127.0.0.1", first.port)).unwrap();
    std::io::Write::write_all(&mut held, b"checkout\n").unwrap();

    // How long host 1 is held after its SIGTERM: host 2 must stay untouched meanwhile.
    let hold = Duration::from_millis(scaled_ms(2000));
    let mut signalled: Option<Duration> = None;
    let mut opened: Option<Duration> = None;
    let mut early = Vec::new();
    let line = run_playbook(&fleet, &mut [&mut first, &mut second, &mut third], |line| {
        if opened.is_some() {
            return;
        }
        let now = line.started.elapsed();
        if line.stop_seen.contains_key(&p2) || line.exited.contains_key(&p2) {
            early.push(format!("host 2 touched at {now:?} before host 1 drained"));
        }
        if signalled.is_none() && in_wait4(p1) {
            signalled = Some(now);
        }
        if signalled.is_some_and(|at| now >= at + hold) {
            std::fs::write(&gate, b"").unwrap();
            opened = Some(now);
        }
    });
    assert_eq!(line.code, 0, "ansible-playbook failed:\n{}", line.output);
    assert!(early.is_empty(), "{}\n{}", early.join("\n"), line.output);
    let opened = opened.expect("the test opened host 1's gate");
    let mut reply = [0u8; 9];
    std::io::Read::read_exact(&mut held, &mut reply).expect("the held request is answered");
    assert_eq!(&reply, b"checkout\n");

    let at = |map: &HashMap<u32, Duration>, pid: u32, what: &str| -> Duration {
        *map.get(&pid).unwrap_or_else(|| {
            panic!(
                "never saw {what} of {pid}: stops {:?}, exits {:?}\n{}",
                line.stop_seen, line.exited, line.output
            )
        })
    };
    let (stop1, stop2, stop3) = (
        at(&line.stop_seen, p1, "the stop"),
        at(&line.stop_seen, p2, "the stop"),
        at(&line.stop_seen, p3, "the stop"),
    );
    let (exit1, exit2, exit3) = (
        at(&line.exited, p1, "the exit"),
        at(&line.exited, p2, "the exit"),
        at(&line.exited, p3, "the exit"),
    );
    let order = format!(
        "stops {stop1:?} {stop2:?} {stop3:?}, host 1 signalled {signalled:?}, gate {opened:?}, \
         exits {exit1:?} {exit2:?} {exit3:?}"
    );
    assert!(
        exit1 >= opened,
        "host 1 exited before its request was let go: {order}"
    );
    assert!(
        stop2 > exit1,
        "host 2 stopped before host 1 exited: {order}"
    );
    assert!(exit2 > exit1 && stop3 > exit2, "out of order: {order}");

    for (host, old) in HOSTS.iter().zip([p1, p2, p3]) {
        let report = fleet
            .report(host)
            .unwrap_or_else(|| panic!("no report fetched for {host}:\n{}", line.output));
        assert_eq!(report["mode"], "stop", "{report:#}");
        assert_eq!(report["verdict"], "clean", "{host}: {report:#}");
        assert_eq!(report["targets"][0]["pid"], old, "{report:#}");
        // The start step ran: a new server, which the postflight check found stoppable.
        let new = fleet.pid(host);
        assert_ne!(new, old, "{host} was not started again");
        assert!(
            Path::new(&format!("/proc/{new}")).exists(),
            "{host}: {new} is not running"
        );
    }
    let drain1 = fleet.report(HOSTS[0]).unwrap()["drain"]["drain_ms"]
        .as_u64()
        .unwrap();
    // From the SIGTERM to the exit: the whole hold, and not much more.
    assert!(
        drain1 as u128 + 50 >= hold.as_millis(),
        "host 1's drain ({drain1} ms) did not last through the hold ({hold:?}): {order}"
    );
    let signalled = signalled.unwrap();
    assert!(stop1 < signalled, "{order}");
    assert!(
        line.output.contains("game-03.example.internal   : ok="),
        "{}",
        line.output
    );
}

/// Whether the pre-fork fixture's master is in wait4(2): it got SIGTERM, passed it on to its
/// workers and waits for them (tests/src/bin/dw_fixture.rs, `prefork`); before, it sleeps.
/// /proc/PID/syscall's first field is the syscall number (proc(5)); 61 is wait4 on x86_64.
fn in_wait4(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/syscall"))
        .is_ok_and(|s| s.split_whitespace().next() == Some("61"))
}

/// Host 2's server exits one second after SIGTERM, cutting a request: its stop is a
/// violation (exit 1), the playbook fails that host, starts its server again (the `always:`
/// part) and ends the rollout: host 3 is never stopped.
#[test]
fn a_stop_with_a_violation_ends_the_rollout() {
    require_root();
    let fleet = Fleet::new("fleet-halt");
    let mut first = Server::start(&[]);
    let mut second = EventLoopServer::start(&["--term-exit-after-ms", "1000"]);
    let mut third = Server::start(&[]);
    fleet.set_pid(HOSTS[0], first.pid);
    fleet.set_pid(HOSTS[1], second.pid);
    fleet.set_pid(HOSTS[2], third.pid);
    let (p1, p2, p3) = (first.pid, second.pid, third.pid);
    let _in_flight = second.request("slow", scaled_ms(600_000));
    second.until_read();

    let line = run_playbook(&fleet, &mut [&mut first, &mut second, &mut third], |_| {});
    assert_ne!(line.code, 0, "the playbook succeeded:\n{}", line.output);
    assert!(
        line.output.contains("game-02.example.internal   : ok=")
            && line.output.contains("failed=1"),
        "{}",
        line.output
    );

    let report1 = fleet.report(HOSTS[0]).expect("host 1's report");
    assert_eq!(report1["verdict"], "clean", "{report1:#}");
    let report2 = fleet.report(HOSTS[1]).unwrap_or_else(|| {
        panic!(
            "host 2's report was fetched, whatever happened:\n{}",
            line.output
        )
    });
    assert_eq!(report2["verdict"], "violations", "{report2:#}");
    assert_eq!(
        violations(&report2, "inflight_at_exit").len(),
        1,
        "{report2:#}"
    );
    assert!(line.exited.contains_key(&p1) && line.exited.contains_key(&p2));
    // Host 2 was started again even though its stop failed.
    assert_ne!(fleet.pid(HOSTS[1]), p2, "host 2 was not started again");

    // Host 3: never stopped, its server untouched, no report.
    assert!(
        !line.stop_seen.contains_key(&p3),
        "host 3 was stopped:\n{}",
        line.output
    );
    assert!(!third.exited(), "host 3's server exited");
    assert_eq!(fleet.pid(HOSTS[2]), p3);
    assert!(fleet.report(HOSTS[2]).is_none(), "a report for host 3");
    assert!(
        !line.output.contains("game-03.example.internal   : ok=")
            || line.output.contains("game-03.example.internal   : ok=0"),
        "host 3 ran tasks:\n{}",
        line.output
    );
}
