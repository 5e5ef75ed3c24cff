//! Targets are process trees: a real nginx (Debian nginx-light, master + 2 workers,
//! proxying to a slow upstream) and the fixture's pre-fork server, named by the master's pid
//! or by a cgroup. The requests in these tests are in flight when drainwatch attaches, or
//! their connections close when answered (no keep-alive): no verdict here depends on how
//! idle keep-alive connections from before attach are judged.

use drainwatch_tests::{
    game::{mono_ns, Gate},
    nginx::{Nginx, Pending, SlowUpstream},
    *,
};

const QUIET_MS: f64 = 100.0;

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// The peers drainwatch names in the violations that say a request was cut.
fn cut_peers(report: &Value) -> Vec<String> {
    let mut peers: Vec<String> = violations(report, "request_dropped")
        .iter()
        .filter_map(|v| v["peer"].as_str().map(str::to_string))
        .collect();
    for v in violations(report, "inflight_at_exit") {
        for peer in v["connections"].as_array().into_iter().flatten() {
            peers.extend(peer.as_str().map(str::to_string));
        }
    }
    peers
}

fn target_pids(report: &Value) -> Vec<u64> {
    let mut pids: Vec<u64> = report["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["pid"].as_u64())
        .collect();
    pids.sort_unstable();
    pids
}

fn tree_of(nginx: &Nginx) -> Vec<u64> {
    let mut pids: Vec<u64> = std::iter::once(nginx.master)
        .chain(nginx.workers.iter().copied())
        .map(u64::from)
        .collect();
    pids.sort_unstable();
    pids
}

/// Three proxied requests, all waiting at the upstream (so in flight in nginx's workers).
fn three_in_flight(nginx: &Nginx, upstream: &SlowUpstream) -> Vec<Pending> {
    let pending: Vec<Pending> = (0..3).map(|_| Pending::get(nginx.port, "/slow")).collect();
    upstream.wait_requests(3);
    pending
}

/// How long a test lets drainwatch hold before it opens a gate: a `wait` that would return
/// early has given its verdict by then (the quiet window is 100 ms).
fn hold() -> std::time::Duration {
    std::time::Duration::from_millis(scaled_ms(400))
}

/// drainwatch's JSON lines as they come: the verdict is the line with the report's schema
/// (printed before the probe is taken down, which takes the kernel about a second more).
struct Verdicts(std::sync::mpsc::Receiver<String>);

impl Verdicts {
    fn of(run: &mut Drainwatch) -> Self {
        Self(run.stdout_lines())
    }

    /// The report and when it came (CLOCK_MONOTONIC), if it comes within `within`.
    fn within(&self, within: std::time::Duration) -> Option<(Value, u64)> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self.0.recv_timeout(left).ok()?;
            if line.contains("\"schema\"") {
                return Some((serde_json::from_str(&line).expect("JSON report"), mono_ns()));
            }
        }
    }
}

#[test]
fn nginx_wait_on_the_master_holds_while_proxied_requests_run() {
    require_root();
    let dir = TempDir::new("nginx-wait");
    let gate = Gate::new(&dir, "answers");
    let upstream = SlowUpstream::start(0, Some(&gate));
    let nginx = Nginx::start(upstream.port, 2);
    let pending = three_in_flight(&nginx, &upstream);
    let master = nginx.master.to_string();
    let mut wait = Drainwatch::attach(&["wait", "--pid", &master, "--json", "--timeout", "60s"]);
    let verdicts = Verdicts::of(&mut wait);
    if let Some((report, _)) = verdicts.within(hold()) {
        panic!("wait gave a verdict with 3 proxied requests in flight: {report:#}");
    }
    gate.open();
    let (report, returned) = verdicts.within(PATIENCE).expect("a verdict");
    let done = wait.finish();
    assert_eq!(done.code, 0, "{done:?}");
    for p in pending {
        let (reply, ended) = p.reply();
        assert!(reply.ends_with("slow\n"), "answered in full: {reply:?}");
        assert!(
            ended <= returned,
            "wait returned {:.1} ms before a proxied request was answered",
            ms(ended - returned)
        );
    }
    assert_eq!(report["verdict"], "clean", "{report:#}");
    assert_eq!(
        target_pids(&report),
        tree_of(&nginx),
        "master and workers: {report:#}"
    );
    assert!(
        report["drain"]["drained_at_ms"].as_u64().is_some(),
        "{report:#}"
    );
}

#[test]
fn nginx_stop_with_sigterm_names_the_requests_it_cut() {
    require_root();
    let dir = TempDir::new("nginx-term");
    // Never opened: the requests are in flight until nginx cuts them.
    let gate = Gate::new(&dir, "never");
    let upstream = SlowUpstream::start(0, Some(&gate));
    let mut nginx = Nginx::start(upstream.port, 2);
    let report_path = dir.path("report.json");
    let pending = three_in_flight(&nginx, &upstream);
    let master = nginx.master.to_string();
    let done = run_drainwatch(&[
        "stop",
        "--pid",
        &master,
        "--signal",
        "TERM",
        "--report",
        &report_path,
    ]);
    nginx.wait();
    assert_eq!(done.code, 1, "{done:?}");
    assert!(
        done.stderr
            .contains("warning: for nginx, SIGTERM is a fast shutdown that cuts what is in flight"),
        "asked for, sent, and said: {}",
        done.stderr
    );
    let report = read_report(&report_path);
    assert_eq!(report["verdict"], "violations", "{report:#}");
    assert_eq!(target_pids(&report), tree_of(&nginx), "{report:#}");
    let peers = cut_peers(&report);
    for p in pending {
        let local = p.local.clone();
        let (reply, _) = p.reply();
        assert!(
            !reply.contains("slow"),
            "nginx's fast shutdown cut it: {reply:?}"
        );
        assert!(
            peers.contains(&local),
            "the cut request from {local} is named: {peers:?} in {report:#}"
        );
    }
    // Only the master got the signal; its workers are in the report as its children.
    for worker in &nginx.workers {
        let t = report["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["pid"] == *worker)
            .unwrap();
        assert_eq!(t["parent_pid"], nginx.master, "{report:#}");
    }
}

#[test]
fn nginx_stop_with_sigquit_is_clean_and_drains_with_the_slow_request() {
    require_root();
    let dir = TempDir::new("nginx-quit");
    let gate = Gate::new(&dir, "answers");
    let upstream = SlowUpstream::start(0, Some(&gate));
    let mut nginx = Nginx::start(upstream.port, 2);
    let report_path = dir.path("report.json");
    let pending = three_in_flight(&nginx, &upstream);
    let master = nginx.master.to_string();
    let mut stop = Drainwatch::spawn(&[
        "stop",
        "--pid",
        &master,
        "--signal",
        "QUIT",
        "--report",
        &report_path,
    ]);
    stop.wait_for_stderr("sending SIGQUIT");
    let signalled = mono_ns();
    let verdicts = Verdicts::of(&mut stop);
    // The slow request: nginx, stopping gracefully, waits for the upstream's answers.
    if let Some((report, _)) = verdicts.within(hold()) {
        panic!("stop gave a verdict with 3 requests in flight: {report:#}");
    }
    gate.open();
    let mut last_answer = 0;
    for p in pending {
        let (reply, ended) = p.reply();
        assert!(
            reply.ends_with("slow\n"),
            "graceful: answered in full: {reply:?}"
        );
        last_answer = last_answer.max(ended);
    }
    assert!(nginx.wait().success(), "{}", nginx.error_log());
    let done = stop.finish();
    assert_eq!(done.code, 0, "{done:?}");
    let report = read_report(&report_path);
    assert_eq!(report["verdict"], "clean", "{report:#}");
    assert_eq!(target_pids(&report), tree_of(&nginx), "{report:#}");
    let drain = &report["drain"];
    assert_eq!(drain["signal"], "SIGQUIT");
    let drain_ms = drain["drain_ms"].as_f64().unwrap();
    let remaining = ms(last_answer.saturating_sub(signalled));
    assert!(
        drain_ms + 5.0 >= remaining,
        "drained before the slow request was answered: {drain_ms} < {remaining}: {drain}"
    );
    let slack = scaled_ms(100) as f64;
    assert!(
        drain_ms <= remaining + QUIET_MS + slack,
        "drain verdict late: {drain_ms} > {remaining} + quiet + {slack}: {drain}"
    );
}

#[test]
fn check_lists_the_nginx_tree_and_knows_its_sigterm_is_a_fast_shutdown() {
    require_root();
    let upstream = SlowUpstream::start(0, None);
    let nginx = Nginx::start(upstream.port, 2);
    let master = nginx.master.to_string();
    let term = run_drainwatch(&["check", "--pid", &master, "--signal", "TERM"]);
    assert_eq!(term.code, 1, "{term:?}");
    assert!(term.stdout.contains("fast shutdown"), "{}", term.stdout);
    assert!(term.stdout.contains("--signal QUIT"), "{}", term.stdout);
    assert!(term.stdout.contains("tree: 3 processes"), "{}", term.stdout);
    let quit = run_drainwatch(&["check", "--pid", &master, "--signal", "QUIT", "--json"]);
    assert_eq!(quit.code, 0, "{quit:?}");
    let report: Value = serde_json::from_str(quit.stdout.trim()).unwrap();
    assert_eq!(report["disposition"], "handled", "{report:#}");
    let processes = report["processes"].as_array().unwrap();
    assert_eq!(processes.len(), 3, "{report:#}");
    let signalled: Vec<&Value> = processes
        .iter()
        .filter(|p| p["signalled"] == true)
        .collect();
    assert_eq!(signalled.len(), 1, "only the master: {report:#}");
    assert_eq!(signalled[0]["pid"], nginx.master);
    assert_eq!(
        report["listeners"], 1,
        "one socket, held by all three: {report:#}"
    );
}

/// Without `--signal`, `stop` sends nginx its own graceful signal (SIGQUIT, which `check`
/// knows) and says so, instead of SIGTERM, nginx's fast shutdown; `check` judges the same.
#[test]
fn nginx_stop_without_a_signal_sends_its_graceful_one_and_says_so() {
    require_root();
    let dir = TempDir::new("nginx-default");
    let upstream = SlowUpstream::start(0, None);
    let mut nginx = Nginx::start(upstream.port, 2);
    let master = nginx.master.to_string();
    let check = run_drainwatch(&["check", "--pid", &master, "--json"]);
    assert_eq!(check.code, 0, "{check:?}");
    let preflight: Value = serde_json::from_str(check.stdout.trim()).unwrap();
    assert_eq!(preflight["signal"], "SIGQUIT", "{preflight:#}");
    let report_path = dir.path("report.json");
    let done = run_drainwatch(&["stop", "--pid", &master, "--report", &report_path]);
    assert!(nginx.wait().success(), "{}", nginx.error_log());
    assert_eq!(done.code, 0, "{done:?}");
    assert!(
        done.stderr.contains(&format!(
            "nginx ({master}) is nginx: sending its graceful stop, SIGQUIT"
        )),
        "{}",
        done.stderr
    );
    assert!(
        done.stderr.contains("sending SIGQUIT to"),
        "{}",
        done.stderr
    );
    let report = read_report(&report_path);
    assert_eq!(report["drain"]["signal"], "SIGQUIT", "{report:#}");
    assert_eq!(report["verdict"], "clean", "{report:#}");
}

/// The fixture's pre-fork server: workers that existed before attach are watched, so a
/// request in flight in one of them holds `wait` and a graceful stop of the master follows
/// it to the end.
#[test]
fn prefork_workers_from_before_attach_are_watched() {
    require_root();
    let dir = TempDir::new("prefork");
    let gate = Gate::new(&dir, "echo");
    let gate_path = gate.path().to_string_lossy().into_owned();
    let server = Server::start(&["--workers", "2", "--gate", &gate_path]);
    assert_eq!(server.workers.len(), 2);
    let mut client = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    std::io::Write::write_all(&mut client, b"ping\n").unwrap();
    let echoed = std::thread::spawn(move || {
        let mut buf = [0u8; 5];
        std::io::Read::read_exact(&mut client, &mut buf).map(|()| mono_ns())
    });
    // In flight once a worker has read it: its receive queue is empty.
    std::thread::sleep(std::time::Duration::from_millis(100));
    let master = server.pid.to_string();
    let mut wait = Drainwatch::attach(&["wait", "--pid", &master, "--json"]);
    let verdicts = Verdicts::of(&mut wait);
    if let Some((report, _)) = verdicts.within(hold()) {
        panic!("wait gave a verdict with a request in flight in a worker: {report:#}");
    }
    gate.open();
    let (report, returned) = verdicts.within(PATIENCE).expect("a verdict");
    let done = wait.finish();
    assert_eq!(done.code, 0, "{done:?}");
    let answered = echoed.join().unwrap().expect("echoed");
    assert!(
        answered <= returned,
        "wait returned {:.1} ms before the worker answered",
        ms(answered - returned)
    );
    let mut expected: Vec<u64> = std::iter::once(server.pid)
        .chain(server.workers.iter().copied())
        .map(u64::from)
        .collect();
    expected.sort_unstable();
    assert_eq!(target_pids(&report), expected, "{report:#}");
}

/// A cgroup made for the test, named like a systemd unit: `--unit` finds it by name,
/// `--cgroup` by path; the master is signalled, its workers followed.
#[test]
fn a_unit_cgroup_is_its_processes_and_stop_signals_its_main_process() {
    require_root();
    let root = cgroup2_root();
    let unit = format!("dw-test-{}.service", std::process::id());
    let dir = root.join(&unit);
    std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let procs = dir.join("cgroup.procs");
    // The shell moves itself into the cgroup, then becomes the server: every worker it
    // forks is born inside.
    let script = format!(
        "echo $$ > {} && exec {} server --workers 2 --reply-after-ms 500",
        procs.display(),
        fixture_bin().display()
    );
    let mut child = std::process::Command::new("sh")
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let master = child.id();
    assert!(line.contains(&format!("pid={master}")), "{line}");
    let check = run_drainwatch(&["check", "--unit", &unit, "--json"]);
    let check_cgroup = run_drainwatch(&["check", "--cgroup", &dir.to_string_lossy(), "--json"]);
    let dir_text = dir.to_string_lossy().into_owned();
    // A process of the unit that is not the master's descendant: a stop by pid would leave
    // it unwatched, and check says so.
    let mut stray = std::process::Command::new("sh")
        .args([
            "-c",
            &format!("echo $$ > {} && exec sleep 30", procs.display()),
        ])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + PATIENCE;
    while !std::fs::read_to_string(&procs)
        .unwrap_or_default()
        .lines()
        .any(|l| l == stray.id().to_string())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the stray never joined"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let by_pid = run_drainwatch(&["check", "--pid", &master.to_string(), "--json"]);
    let _ = stray.kill();
    let _ = stray.wait();
    let stop = run_drainwatch(&["stop", "--unit", &unit, "--json"]);
    let exited = wait_with_deadline(&mut child, PATIENCE);
    let _ = std::fs::remove_dir(&dir);
    assert!(exited.is_some_and(|s| s.success()), "{stop:?}");
    assert_eq!(check.code, 0, "{check:?}");
    let report: Value = serde_json::from_str(check.stdout.trim()).unwrap();
    let processes = report["processes"].as_array().unwrap();
    assert_eq!(processes.len(), 3, "{report:#}");
    let signalled: Vec<&Value> = processes
        .iter()
        .filter(|p| p["signalled"] == true)
        .collect();
    assert_eq!(signalled.len(), 1, "{report:#}");
    assert_eq!(signalled[0]["pid"], master, "{report:#}");
    assert_eq!(check_cgroup.code, 0, "{dir_text}: {check_cgroup:?}");
    let report: Value = serde_json::from_str(by_pid.stdout.trim()).unwrap();
    let unwatched = report["unwatched"].as_array().unwrap();
    assert!(
        unwatched
            .iter()
            .any(|u| u["pid"] == stray.id() && u["why"].as_str().unwrap().contains(&unit)),
        "{report:#}"
    );
    assert_eq!(stop.code, 0, "{stop:?}");
    let report: Value = serde_json::from_str(stop.stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["verdict"], "clean", "{report:#}");
    assert_eq!(report["targets"].as_array().unwrap().len(), 3, "{report:#}");
}

/// Where cgroup v2 is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts).
fn cgroup2_root() -> std::path::PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            let point = mount.split_whitespace().nth(4)?;
            (fs.split_whitespace().next()? == "cgroup2").then(|| std::path::PathBuf::from(point))
        })
        .expect("a cgroup2 mount: the --unit/--cgroup tests need cgroup v2")
}

/// Any number of selectors: two unrelated servers stopped at once, each signalled (both were
/// named), followed until both have exited.
#[test]
fn stop_takes_several_pids_and_waits_for_all_of_them() {
    require_root();
    let mut a = Server::start(&[]);
    let mut b = Server::start(&["--fork-child"]);
    let (pa, pb) = (a.pid.to_string(), b.pid.to_string());
    let done = run_drainwatch(&["stop", "--pid", &pa, "--pid", &pb, "--json"]);
    assert_eq!(done.code, 0, "{done:?}");
    assert!(
        done.stderr
            .contains(&format!("sending SIGTERM to {pa}, {pb}")),
        "{done:?}"
    );
    assert!(a.wait().success() && b.wait().success());
    let report: Value = serde_json::from_str(done.stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["verdict"], "clean", "{report:#}");
    let mut expected = vec![u64::from(a.pid), u64::from(b.pid), u64::from(b.forked)];
    expected.sort_unstable();
    assert_eq!(target_pids(&report), expected, "{report:#}");
    assert!(
        report["targets"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["exit"]["code"] == 0),
        "every one exited 0: {report:#}"
    );
}

/// An audit of a unit takes in a process that joins the unit's cgroup later (as a restart's
/// new main process does: systemd starts it, no target forks it).
#[test]
fn an_audit_of_a_unit_takes_in_a_process_that_joins_it_later() {
    require_root();
    let root = cgroup2_root();
    let unit = format!("dw-join-{}.service", std::process::id());
    let dir = root.join(&unit);
    std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let procs = dir.join("cgroup.procs");
    let first = format!(
        "echo $$ > {} && exec {} exit 0 --after-ms 60000",
        procs.display(),
        fixture_bin().display()
    );
    let mut first = std::process::Command::new("sh")
        .args(["-c", &first])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + PATIENCE;
    while std::fs::read_to_string(&procs)
        .unwrap_or_default()
        .trim()
        .is_empty()
    {
        assert!(std::time::Instant::now() < deadline, "never joined");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let report_path = TempDir::new("join");
    let report_file = report_path.path("report.json");
    let audit = Drainwatch::attach(&[
        "audit",
        "--unit",
        &unit,
        "--duration",
        &format!("{}ms", scaled_ms(3_000)),
        "--report",
        &report_file,
    ]);
    let second = format!(
        "echo $$ > {} && exec {} exit 3 --after-ms {}",
        procs.display(),
        fixture_bin().display(),
        scaled_ms(800)
    );
    let mut second = std::process::Command::new("sh")
        .args(["-c", &second])
        .spawn()
        .unwrap();
    let second_pid = second.id();
    let second_exit = wait_with_deadline(&mut second, PATIENCE);
    let done = audit.finish();
    let _ = first.kill();
    let _ = first.wait();
    let _ = std::fs::remove_dir(&dir);
    assert_eq!(second_exit.and_then(|s| s.code()), Some(3));
    assert_eq!(done.code, 0, "{done:?}");
    let report = read_report(&report_file);
    let joined = report["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["pid"] == second_pid)
        .unwrap_or_else(|| panic!("{second_pid} joined the unit and is a target: {report:#}"));
    assert_eq!(joined["exit"]["code"], 3, "{report:#}");
}

/// `watch` on the master shows the whole tree and the requests in flight in its workers.
#[test]
fn watch_on_the_nginx_master_shows_its_workers_and_their_requests() {
    require_root();
    let dir = TempDir::new("nginx-watch");
    let gate = Gate::new(&dir, "answers");
    let upstream = SlowUpstream::start(0, Some(&gate));
    let nginx = Nginx::start(upstream.port, 2);
    let pending = three_in_flight(&nginx, &upstream);
    let master = nginx.master.to_string();
    let mut watch = Drainwatch::attach(&["watch", "--pid", &master, "--json"]);
    let frames = watch.stdout_lines();
    let frame: Value = serde_json::from_str(&frames.recv_timeout(PATIENCE).expect("a frame"))
        .expect("a JSON frame");
    gate.open();
    for p in pending {
        p.reply();
    }
    watch.signal(libc::SIGINT);
    let _ = watch.finish();
    let mut pids: Vec<u64> = frame["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["pid"].as_u64())
        .collect();
    pids.sort_unstable();
    assert_eq!(pids, tree_of(&nginx), "{frame:#}");
    assert_eq!(frame["requests_in_flight"], 3, "{frame:#}");
    assert_eq!(frame["connections"]["client"], 3, "{frame:#}");
    assert_eq!(
        frame["connections"]["listener"], 1,
        "one socket held by the master and its two workers is one connection, as check \
         counts it: {frame:#}"
    );
    // A line per request in flight, in the workers; they started before attach, so their
    // age is unknown (null), never a made-up 0.
    let lines = frame["requests_in_flight_on"].as_array().unwrap();
    assert_eq!(lines.len(), 3, "{frame:#}");
    for line in lines {
        let pid = line["pid"].as_u64().unwrap();
        assert!(pid != nginx.master as u64, "in a worker: {frame:#}");
        assert!(tree_of(&nginx).contains(&pid), "{frame:#}");
        assert_eq!(line["age_ms"], Value::Null, "{frame:#}");
    }
}

/// More target processes serving requests at once than the kernel has per-CPU request
/// counters for (probe-ebpf's `REQUEST_COUNTS`, 256 processes here): those that find no
/// room count in their `TARGETS` entry, and drainwatch adds both (kernel/probe/counters.rs).
/// Every request is in flight until answered and counted once, whichever copy holds it.
#[test]
fn more_serving_processes_than_per_cpu_counters_still_count_every_request() {
    const WORKERS: usize = 300;
    require_root();
    let dir = TempDir::new("many-workers");
    let gate = Gate::new(&dir, "echo");
    let gate_path = gate.path().to_string_lossy().into_owned();
    let workers = WORKERS.to_string();
    let server = Server::start(&["--workers", &workers, "--gate", &gate_path]);
    assert_eq!(server.workers.len(), WORKERS);
    let master = server.pid.to_string();
    let mut watch =
        Drainwatch::attach(&["watch", "--pid", &master, "--json", "--interval", "50ms"]);
    let frames = watch.stdout_lines();
    let until = |what: &str, done: &dyn Fn(&Value) -> bool| {
        let deadline = std::time::Instant::now() + PATIENCE;
        let mut last = Value::Null;
        while std::time::Instant::now() < deadline {
            let Ok(line) = frames.recv_timeout(PATIENCE) else {
                break;
            };
            last = serde_json::from_str(&line).unwrap_or(Value::Null);
            if done(&last) {
                return;
            }
        }
        panic!("no watch frame with {what} within {PATIENCE:?}; the last: {last:#}");
    };
    // A worker serves one connection at a time: each connection is another process's.
    let mut clients: Vec<std::net::TcpStream> = (0..WORKERS)
        .map(|_| {
            let mut client = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
            std::io::Write::write_all(&mut client, b"ping\n").unwrap();
            client
        })
        .collect();
    until(&format!("{WORKERS} requests in flight"), &|f| {
        f["requests_in_flight"].as_u64() == Some(WORKERS as u64)
    });
    gate.open();
    for client in &mut clients {
        let mut echo = [0u8; 5];
        std::io::Read::read_exact(client, &mut echo).expect("echoed");
    }
    until(
        &format!("{WORKERS} requests answered, none in flight"),
        &|f| {
            f["requests_in_flight"].as_u64() == Some(0)
                && f["requests"]["count"].as_u64() == Some(WORKERS as u64)
        },
    );
    watch.signal(libc::SIGINT);
    let done = watch.finish();
    assert_eq!(done.code, 0, "{done:?}");
}
