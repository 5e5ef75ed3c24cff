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

use drainwatch_tests::{
    db::{Database, PgServer},
    game_ops::{game_ops_bin, GameOps, Gateway},
    *,
};

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
            // The game servers alone: no gateway is stopped, so none is waited for.
            .args(["--limit", "game_servers"])
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

/// The running `drainwatch stop|wait --pid PID ...` commands, from /proc: (the command, PID).
fn running_drainwatch() -> Vec<(String, u32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let command = args.get(1).map(String::as_str).unwrap_or_default();
        if !args.first().is_some_and(|a| a.ends_with("drainwatch"))
            || !matches!(command, "stop" | "wait")
        {
            continue;
        }
        if let Some(at) = args.iter().position(|a| a == "--pid") {
            if let Some(pid) = args.get(at + 1).and_then(|p| p.parse().ok()) {
                found.push((command.to_string(), pid));
            }
        }
    }
    found
}

/// What the test saw while the playbook ran.
struct Timeline {
    started: Instant,
    /// CLOCK_MONOTONIC at `started` (the fixtures' truth files use that clock).
    started_mono_ns: u64,
    /// First moment a `drainwatch stop --pid PID` was seen, by pid.
    stop_seen: HashMap<u32, Duration>,
    /// First and last moment a `drainwatch wait --pid PID` was seen, by pid.
    wait_seen: HashMap<u32, (Duration, Duration)>,
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
    each: impl FnMut(&Timeline),
) -> Timeline {
    run_command(fleet.playbook(), servers, each)
}

/// [`run_playbook`] with any ansible-playbook command line.
fn run_command(
    mut playbook: Command,
    servers: &mut [&mut dyn Polled],
    mut each: impl FnMut(&Timeline),
) -> Timeline {
    let mut child = playbook.spawn().expect("start ansible-playbook");
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
        started_mono_ns: drainwatch_tests::game::mono_ns(),
        stop_seen: HashMap::new(),
        wait_seen: HashMap::new(),
        exited: HashMap::new(),
        code: -1,
        output: String::new(),
    };
    // Gathering facts and three stops: well under a minute on a quiet machine.
    let deadline = line.started + PATIENCE * 3;
    let status = loop {
        let now = line.started.elapsed();
        for (command, pid) in running_drainwatch() {
            if command == "stop" {
                line.stop_seen.entry(pid).or_insert(now);
            } else {
                line.wait_seen.entry(pid).or_insert((now, now)).1 = now;
            }
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

/// The shipped inventory's gateways, each in front of the game server of the same number;
/// game-03 has none (an idle server).
const GATEWAYS: [&str; 2] = ["gw-01.example.internal", "gw-02.example.internal"];

/// A purchase's wait between its writes; the shipped inventory's `settle` (1.5 s) is five
/// times that.
const GAP_MS: u64 = 300;

impl Polled for GameOps {
    fn pid(&self) -> u32 {
        self.pid
    }
    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Polled for Gateway {
    fn pid(&self) -> u32 {
        Gateway::pid(self)
    }
    fn exited(&mut self) -> bool {
        Gateway::exited(self)
    }
}

/// Purchases a game database holds half done (write A, no write B), and whole.
fn ledger(url: &str) -> (i64, i64) {
    let mut client = postgres::Client::connect(url, postgres::NoTls)
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM (SELECT op FROM ops_ledger GROUP BY op \
             HAVING count(*) FILTER (WHERE step = 'B') = 0) AS a_only), \
             (SELECT count(*) FROM ops_ledger WHERE step = 'B')",
            &[],
        )
        .expect("read ops_ledger");
    (row.get(0), row.get(1))
}

/// The story's fleet: the shipped inventory (`gateways`: the unit `game-gateway`, stopped
/// with SIGINT; `game_servers`: `game-server`, settle 1.5 s) plus an inventory of this
/// test's own that puts every host on this machine, by inventory variables only (no `-e`):
/// the connection, drainwatch's path, where reports go, and the commands that find and
/// start each kind of server. Each game host has a C++ game server (tests/fixtures/
/// game_ops.cpp) with a database of its own, abandoning its purchases at SIGTERM (so only
/// the wait before the stop keeps them whole); gw-0N is a gateway multiplexing 20 players
/// onto game-0N, pushing purchases every 100 ms.
struct StoryFleet {
    dir: TempDir,
    inventory: PathBuf,
}

impl StoryFleet {
    fn new() -> Self {
        let dir = TempDir::new("fleet-story");
        let root = dir.0.display().to_string();
        let game = game_ops_bin().display().to_string();
        let ready = |what: &str| {
            format!(
                "echo $! >\"$1.pid\"\n\
                 i=0; until grep -q '^ready' \"$1.out\"; do\n  \
                 i=$((i+1)); [ $i -gt 400 ] && {{ echo \"{what} for $1 not ready\" >&2; exit 1; }}\n  \
                 sleep 0.05\ndone\n"
            )
        };
        let scripts = [
            (
                "start-game",
                format!(
                    "nohup '{game}' serve --db-url \"$(cat \"$1.url\")\" --port \"$(cat \"$1.port\")\" \
                     --workers 4 --gap-ms {GAP_MS} --on-term abandon --truth \"$1.truth.json\" \
                     </dev/null >\"$1.out\" 2>\"$1.err\" &\n{}",
                    ready("game server")
                ),
            ),
            (
                "start-gateway",
                format!(
                    "nohup '{game}' gateway --port \"$(cat \"$1.upstream\")\" --players 20 \
                     --every-ms 2000 </dev/null >\"$1.out\" 2>\"$1.err\" &\n{}",
                    ready("gateway")
                ),
            ),
        ];
        use std::os::unix::fs::PermissionsExt;
        for (name, body) in scripts {
            let path = dir.path(name);
            let text = format!(
                "#!/bin/sh\n# {name} HOST: a fresh server for HOST, detached; its pid in HOST.pid, \
                 back once it listens (what `systemctl start` is on a real host)\n\
                 cd \"$(dirname \"$0\")\" || exit 1\n{body}"
            );
            std::fs::write(&path, text).expect("write a start script");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let inventory = dir.0.join("local.yml");
        let python = python().display().to_string();
        let drainwatch = drainwatch_bin().display().to_string();
        let hosts = |names: &[&str]| {
            names
                .iter()
                .map(|h| format!("        {h}: {{}}\n"))
                .collect::<String>()
        };
        let text = format!(
            "# Every host of docs/fleet/inventory.ini on this machine.\n\
             all:\n  vars:\n\
             \x20   ansible_connection: local\n\
             \x20   ansible_become: false\n\
             \x20   ansible_python_interpreter: {python}\n\
             \x20   drainwatch: {drainwatch}\n\
             \x20   fetch_dir: {root}/reports\n\
             \x20   report_dir: \"{root}/logs/{{{{ inventory_hostname }}}}\"\n\
             \x20   main_pid_command: \"cat {root}/{{{{ inventory_hostname }}}}.pid\"\n\
             \x20 children:\n\
             \x20   gateways:\n      vars:\n\
             \x20       start_command: \"{root}/start-gateway {{{{ inventory_hostname }}}}\"\n\
             \x20     hosts:\n{}\
             \x20   game_servers:\n      vars:\n\
             \x20       start_command: \"{root}/start-game {{{{ inventory_hostname }}}}\"\n\
             \x20     hosts:\n{}",
            hosts(&GATEWAYS),
            hosts(&HOSTS),
        );
        std::fs::write(&inventory, text).expect("write the local inventory");
        std::fs::create_dir_all(dir.path("reports")).unwrap();
        Self { dir, inventory }
    }

    fn set(&self, host: &str, what: &str, value: impl std::fmt::Display) {
        std::fs::write(
            self.dir.path(&format!("{host}.{what}")),
            format!("{value}\n"),
        )
        .unwrap();
    }

    fn pid(&self, host: &str) -> u32 {
        let text = std::fs::read_to_string(self.dir.path(&format!("{host}.pid"))).unwrap();
        text.trim().parse().unwrap()
    }

    /// `ansible-playbook -i docs/fleet/inventory.ini -i local.yml rolling-restart.yml`.
    fn playbook(&self) -> Command {
        let root = workspace();
        let mut cmd = Command::new(python());
        cmd.current_dir(&self.dir.0)
            .env("ANSIBLE_HOME", self.dir.path("ansible"))
            .env("ANSIBLE_LOCAL_TEMP", self.dir.path("ansible/tmp"))
            .env("ANSIBLE_NOCOLOR", "1")
            .args(["-m", "ansible", "playbook", "-i"])
            .arg(root.join("docs/fleet/inventory.ini"))
            .arg("-i")
            .arg(&self.inventory)
            .arg(root.join("docs/fleet/rolling-restart.yml"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// The fetched report files, by name.
    fn reports(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path("reports"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn report(&self, name: &str) -> Value {
        read_report(&self.dir.path(&format!("reports/{name}")))
    }
}

impl Drop for StoryFleet {
    /// The servers the playbook started again belong to nobody else: stopped here.
    fn drop(&mut self) {
        for host in GATEWAYS.iter().chain(HOSTS.iter()) {
            if let Ok(text) = std::fs::read_to_string(self.dir.path(&format!("{host}.pid"))) {
                if let Ok(pid) = text.trim().parse::<i32>() {
                    if std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|c| c.contains("game_ops"))
                    {
                        // SAFETY: kill(2) on a fixture server this test's fleet started.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
        }
    }
}

/// A report as drainwatch writes it: the schema, the mode, a clean verdict about the pid
/// given, no violation, no event lost.
fn check_report(name: &str, report: &Value, mode: &str, pid: u32) {
    assert_eq!(
        report["schema"], "drainwatch.report/v1",
        "{name}: {report:#}"
    );
    assert_eq!(report["mode"], mode, "{name}: {report:#}");
    assert_eq!(report["verdict"], "clean", "{name}: {report:#}");
    assert_eq!(report["targets"][0]["pid"], pid, "{name}: {report:#}");
    assert_eq!(
        report["violations"],
        serde_json::json!([]),
        "{name}: {report:#}"
    );
    assert_eq!(report["events"]["lost"], 0, "{name}: {report:#}");
}

/// The story's release (issue #27) by the shipped playbook and inventory: both gateways
/// stopped first (SIGINT, the inventory's `stop_signal`), then each game server, one after
/// the other, waited for until what its gateway left is done (the inventory's `settle`),
/// stopped, started again; then the gateways started again. Judged by what the test saw
/// (processes and exits, timed), by the game servers' own records and their databases (no
/// purchase half done, although each abandons its purchases at SIGTERM), and by the
/// reports: one stop report per host and one wait report per game server, all clean.
#[test]
fn the_story_release_stops_the_gateways_then_waits_for_and_stops_the_game_servers() {
    require_root();
    let db = PgServer::start();
    let fleet = StoryFleet::new();
    let mut urls = Vec::new();
    let mut games = Vec::new();
    for (i, host) in HOSTS.iter().enumerate() {
        let name = format!("game0{}", i + 1);
        db.execute(&format!("CREATE DATABASE {name}"));
        let url = db.url();
        let url = format!(
            "{}/{name}",
            url.strip_suffix("/postgres").expect("a URL to postgres")
        );
        let port: u16 = free_loopback_addr()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        fleet.set(host, "url", &url);
        fleet.set(host, "port", port);
        let game = GameOps::start_on(
            &game_ops_bin(),
            &url,
            4,
            GAP_MS,
            &["--port", &port.to_string(), "--on-term", "abandon"],
        );
        fleet.set(host, "pid", game.pid);
        urls.push(url);
        games.push(game);
    }
    let mut gateways = Vec::new();
    for (host, game) in GATEWAYS.iter().zip(&games) {
        fleet.set(host, "upstream", game.port);
        let gateway = Gateway::start(game.port, 20, 2000);
        fleet.set(host, "pid", gateway.pid());
        gateways.push(gateway);
    }
    for game in &games[..2] {
        game.wait_truth("purchases under way", |t| t.completed >= 3);
    }
    let old_games: Vec<u32> = games.iter().map(|g| g.pid).collect();
    let old_gateways: Vec<u32> = gateways.iter().map(Gateway::pid).collect();

    let (mut g1, mut g2) = (gateways.remove(0), gateways.remove(0));
    let (mut s1, mut s2, mut s3) = (games.remove(0), games.remove(0), games.remove(0));
    let line = run_command(
        fleet.playbook(),
        &mut [&mut g1, &mut g2, &mut s1, &mut s2, &mut s3],
        |_| {},
    );
    assert_eq!(line.code, 0, "ansible-playbook failed:\n{}", line.output);
    for host in GATEWAYS.iter().chain(HOSTS.iter()) {
        assert!(
            line.output
                .lines()
                .any(|l| l.starts_with(host) && l.contains("failed=0") && !l.contains("ok=0")),
            "{host} did not run through:\n{}",
            line.output
        );
    }

    let at = |map: &HashMap<u32, Duration>, pid: u32, what: &str| -> Duration {
        *map.get(&pid).unwrap_or_else(|| {
            panic!(
                "never saw {what} of {pid}: stops {:?}, waits {:?}, exits {:?}\n{}",
                line.stop_seen, line.wait_seen, line.exited, line.output
            )
        })
    };
    let waits: Vec<(Duration, Duration)> = old_games
        .iter()
        .map(|pid| {
            *line.wait_seen.get(pid).unwrap_or_else(|| {
                panic!("no wait on {pid}: {:?}\n{}", line.wait_seen, line.output)
            })
        })
        .collect();
    let stops: Vec<Duration> = old_games
        .iter()
        .map(|&p| at(&line.stop_seen, p, "the stop"))
        .collect();
    let exits: Vec<Duration> = old_games
        .iter()
        .map(|&p| at(&line.exited, p, "the exit"))
        .collect();
    let gateway_stops: Vec<Duration> = old_gateways
        .iter()
        .map(|&p| at(&line.stop_seen, p, "the stop"))
        .collect();
    let gateway_exits: Vec<Duration> = old_gateways
        .iter()
        .map(|&p| at(&line.exited, p, "the exit"))
        .collect();
    let truths: Vec<_> = [&s1, &s2, &s3].iter().map(|g| g.truth()).collect();
    let last_b: Vec<Option<Duration>> = truths
        .iter()
        .map(|t| {
            (t.last_b_mono_ns > line.started_mono_ns)
                .then(|| Duration::from_nanos(t.last_b_mono_ns - line.started_mono_ns))
        })
        .collect();
    let order = format!(
        "gateways: stops {gateway_stops:?}, exits {gateway_exits:?}; game servers: waits \
         (first, last seen) {waits:?}, stops {stops:?}, exits {exits:?}, last write B {last_b:?}"
    );
    println!("order: {order}");
    // The gateway group first, whole; then the game servers one after the other, each
    // waited for, the wait over before its stop, the stop after the one before exited.
    let last_gateway_exit = *gateway_exits.iter().max().unwrap();
    assert!(
        waits[0].0 > last_gateway_exit,
        "a game server was waited for before every gateway had exited: {order}"
    );
    for i in 0..3 {
        assert!(
            stops[i] > waits[i].1 && exits[i] > stops[i],
            "game-0{}: its stop did not follow its wait: {order}",
            i + 1
        );
        if i > 0 {
            assert!(
                waits[i].0 > exits[i - 1],
                "game-0{} waited for before game-0{i} exited: {order}",
                i + 1
            );
        }
    }
    // Behind each gateway, purchases went on after the gateway left (what the wait is
    // for) and were all done before the stop: the game's own record, and its ledger.
    for i in 0..2 {
        let b = last_b[i].unwrap_or_else(|| panic!("game-0{}: no write B seen: {order}", i + 1));
        assert!(
            b > gateway_exits[i] && b < stops[i],
            "game-0{}: the last write B was not between its gateway's exit and its stop: {order}",
            i + 1
        );
    }
    for (i, (truth, url)) in truths.iter().zip(&urls).enumerate() {
        assert_eq!(
            (truth.between_writes, truth.queued),
            (0, 0),
            "game-0{} exited with purchases under way: {truth:?}",
            i + 1
        );
        let (half, whole) = ledger(url);
        assert_eq!(
            half,
            0,
            "game-0{}: {half} purchases half done in the ledger",
            i + 1
        );
        if i < 2 {
            assert!(
                whole >= 3,
                "game-0{}: {whole} purchases in the ledger",
                i + 1
            );
        }
    }

    // One stop report per host, one wait report per game server, nothing else; each the
    // report of that host's old process, clean, with the inventory's signal and settle.
    let mut expected: Vec<String> = GATEWAYS
        .iter()
        .map(|h| format!("{h}-game-gateway-stop.json"))
        .chain(HOSTS.iter().flat_map(|h| {
            [
                format!("{h}-game-server-stop.json"),
                format!("{h}-game-server-wait.json"),
            ]
        }))
        .collect();
    expected.sort();
    assert_eq!(fleet.reports(), expected, "{}", line.output);
    for (host, &pid) in GATEWAYS.iter().zip(&old_gateways) {
        let name = format!("{host}-game-gateway-stop.json");
        let report = fleet.report(&name);
        check_report(&name, &report, "stop", pid);
        assert_eq!(report["drain"]["signal"], "SIGINT", "{name}: {report:#}");
    }
    for (host, &pid) in HOSTS.iter().zip(&old_games) {
        for mode in ["wait", "stop"] {
            let name = format!("{host}-game-server-{mode}.json");
            let report = fleet.report(&name);
            check_report(&name, &report, mode, pid);
            assert_eq!(report["drain"]["settle_ms"], 1500, "{name}: {report:#}");
        }
        let name = format!("{host}-game-server-stop.json");
        assert_eq!(fleet.report(&name)["drain"]["signal"], "SIGTERM");
    }

    // Everything started again: new game servers, and new gateways onto them.
    for host in GATEWAYS.iter().chain(HOSTS.iter()) {
        let new = fleet.pid(host);
        assert!(
            !old_games.contains(&new) && !old_gateways.contains(&new),
            "{host} was not started again"
        );
        assert!(
            Path::new(&format!("/proc/{new}")).exists(),
            "{host}: {new} is not running"
        );
    }
}
