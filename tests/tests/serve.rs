//! `drainwatch serve`: the Prometheus exporter scraped over plain HTTP while a real probe
//! watches real fixture servers; every scrape is validated by `promtool check metrics`.
//! Also: the shell completions and the man page generated from the command line definition.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use drainwatch_tests::*;

fn free_addr() -> String {
    free_loopback_addr()
}

/// One HTTP/1.1 request with a plain TcpStream: (status line, headers, body).
fn http(addr: &str, request_line: &str) -> (String, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(PATIENCE))
        .expect("read timeout");
    write!(
        stream,
        "{request_line}\r\nHost: {addr}\r\nUser-Agent: drainwatch-tests\r\nAccept: */*\r\n\r\n"
    )
    .expect("send request");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .expect("read the response until the server closes");
    let response = String::from_utf8(response).expect("UTF-8 response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {response:?}"));
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_string(), body.to_string())
}

/// `GET /metrics`, checked for status, type and length.
fn scrape(addr: &str) -> String {
    let (status, headers, body) = http(addr, "GET /metrics HTTP/1.1");
    assert_eq!(status, "HTTP/1.1 200 OK", "{headers}\n{body}");
    assert!(
        headers.contains("Content-Type: text/plain; version=0.0.4"),
        "{headers}"
    );
    assert!(
        headers.contains(&format!("Content-Length: {}", body.len())),
        "{headers}"
    );
    body
}

/// The value of one sample, by its name with labels exactly as exported.
fn value(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{sample} has value {v:?}"))
        })
}

/// Scrapes until every `(sample, value)` holds, then returns that scrape; fails with the last.
fn scrape_until(addr: &str, wanted: &[(&str, f64)]) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = scrape(addr);
        if wanted.iter().all(|(s, v)| value(&text, s) == Some(*v)) {
            return text;
        }
        if Instant::now() > deadline {
            panic!("{wanted:?} did not all hold within {PATIENCE:?}; last scrape:\n{text}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// `promtool check metrics` (Debian package `prometheus`) must accept the scrape without a
/// single lint remark. A missing promtool fails the test: it is part of the contract.
fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): install the Debian package `prometheus` \
                 (`cargo xtask setup` does)"
            )
        });
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool ran");
    let remarks = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && remarks.trim().is_empty(),
        "promtool check metrics: {} {remarks}\nscrape:\n{text}",
        out.status
    );
}

/// One echo round trip: a request the probe sees start and end.
fn echo(stream: &mut TcpStream) {
    stream.write_all(b"ping").expect("send to the fixture");
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).expect("echo from the fixture");
    assert_eq!(&buf, b"ping");
}

#[test]
fn metrics_follow_a_real_server_and_pass_promtool() {
    require_root();
    let server = Server::start(&[]);
    let addr = free_addr();
    let pid = server.pid.to_string();
    let serve = Drainwatch::attach(&["serve", "--pid", &pid, "--listen", &addr]);

    let idle = scrape(&addr);
    promtool_check(&idle);
    assert_eq!(
        value(
            &idle,
            "drainwatch_connections{role=\"client\",comm=\"dw-fixture\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        value(
            &idle,
            "drainwatch_connections{role=\"listener\",comm=\"dw-fixture\"}"
        ),
        Some(1.0)
    );
    let up = format!("drainwatch_target_up{{pid=\"{pid}\",comm=\"dw-fixture\"}}");
    assert_eq!(value(&idle, &up), Some(1.0), "{idle}");

    let mut clients: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(("127.0.0.1", server.port)).expect("connect to fixture"))
        .collect();
    for client in &mut clients {
        client.set_read_timeout(Some(PATIENCE)).unwrap();
        echo(client);
        echo(client);
    }
    let busy = scrape_until(
        &addr,
        &[
            (
                "drainwatch_connections{role=\"client\",comm=\"dw-fixture\"}",
                2.0,
            ),
            (
                "drainwatch_request_duration_seconds_count{comm=\"dw-fixture\"}",
                4.0,
            ),
        ],
    );
    promtool_check(&busy);
    for (sample, wanted) in [
        (
            "drainwatch_connections{role=\"listener\",comm=\"dw-fixture\"}",
            1.0,
        ),
        (
            "drainwatch_connections{role=\"db\",comm=\"dw-fixture\"}",
            0.0,
        ),
        (
            "drainwatch_connections_opened_total{role=\"client\",comm=\"dw-fixture\"}",
            2.0,
        ),
        ("drainwatch_requests_in_flight{comm=\"dw-fixture\"}", 0.0),
        ("drainwatch_db_queries_in_flight{comm=\"dw-fixture\"}", 0.0),
        ("drainwatch_transactions_open{comm=\"dw-fixture\"}", 0.0),
        ("drainwatch_sigkills_total{comm=\"dw-fixture\"}", 0.0),
        ("drainwatch_events_lost_total", 0.0),
        ("drainwatch_probe_failures", 0.0),
        (
            "drainwatch_request_duration_seconds_count{comm=\"dw-fixture\"}",
            4.0,
        ),
        (
            "drainwatch_request_duration_seconds_bucket{comm=\"dw-fixture\",le=\"+Inf\"}",
            4.0,
        ),
    ] {
        assert_eq!(value(&busy, sample), Some(wanted), "{sample}:\n{busy}");
    }
    // The fixture sent no database query: no query latency series under its name.
    assert!(
        !busy.contains("drainwatch_db_query_duration_seconds_count{"),
        "{busy}"
    );
    let received = value(&busy, "drainwatch_events_received_total").unwrap();
    assert!(received > 0.0, "{busy}");
    let sum = value(
        &busy,
        "drainwatch_request_duration_seconds_sum{comm=\"dw-fixture\"}",
    )
    .unwrap();
    assert!(sum > 0.0 && sum < 4.0 * PATIENCE.as_secs_f64(), "{busy}");
    // Buckets are cumulative: never decreasing, ending at the count.
    let buckets: Vec<f64> = busy
        .lines()
        .filter(|l| l.starts_with("drainwatch_request_duration_seconds_bucket{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(buckets.len() > 5, "{busy}");
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");

    drop(clients);
    let closed = scrape_until(
        &addr,
        &[
            (
                "drainwatch_connections{role=\"client\",comm=\"dw-fixture\"}",
                0.0,
            ),
            (
                "drainwatch_connections_closed_total{role=\"client\",comm=\"dw-fixture\"}",
                2.0,
            ),
        ],
    );
    promtool_check(&closed);

    // Anything but GET/HEAD /metrics.
    let (status, _, _) = http(&addr, "GET / HTTP/1.1");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, headers, _) = http(&addr, "POST /metrics HTTP/1.1");
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    assert!(headers.contains("Allow: GET, HEAD"), "{headers}");
    let (status, _, body) = http(&addr, "HEAD /metrics HTTP/1.1");
    assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", ""));

    // SIGTERM (as a service manager stops it): a clean exit.
    serve.signal(libc::SIGTERM);
    let done = serve.finish();
    assert_eq!(done.code, 0, "{done:?}");
}

#[test]
fn several_pids_sigkill_is_counted_and_serve_ends_with_its_targets() {
    require_root();
    let killed = Server::start(&[]);
    let mut survivor = Server::start(&[]);
    let addr = free_addr();
    let (a, b) = (killed.pid.to_string(), survivor.pid.to_string());
    let serve = Drainwatch::attach(&["serve", "--pid", &a, "--pid", &b, "--listen", &addr]);
    let up = |pid: &str| format!("drainwatch_target_up{{pid=\"{pid}\",comm=\"dw-fixture\"}}");
    let both = scrape(&addr);
    assert_eq!(value(&both, &up(&a)), Some(1.0), "{both}");
    assert_eq!(value(&both, &up(&b)), Some(1.0), "{both}");
    assert_eq!(
        value(
            &both,
            "drainwatch_connections{role=\"listener\",comm=\"dw-fixture\"}"
        ),
        Some(2.0)
    );

    signal_from_helper(libc::SIGKILL, killed.pid);
    let after = scrape_until(
        &addr,
        &[
            ("drainwatch_sigkills_total{comm=\"dw-fixture\"}", 1.0),
            (up(&a).as_str(), 0.0),
        ],
    );
    promtool_check(&after);
    assert_eq!(
        value(
            &after,
            "drainwatch_violations_total{kind=\"sigkill\",comm=\"dw-fixture\"}"
        ),
        Some(1.0)
    );
    assert_eq!(value(&after, &up(&b)), Some(1.0), "{after}");
    assert_eq!(
        value(
            &after,
            "drainwatch_connections{role=\"listener\",comm=\"dw-fixture\"}"
        ),
        Some(1.0),
        "{after}"
    );
    // The documented alert fires on what serve exported, one minute apart.
    let sample = "drainwatch_sigkills_total{comm=\"dw-fixture\"}";
    let series = [
        value(&both, sample).unwrap(),
        value(&after, sample).unwrap(),
    ];
    assert_eq!(series, [0.0, 1.0], "{both}\n{after}");
    promtool_test_sigkill_alert(series);

    // The last target exits: serve stops by itself.
    // SAFETY: kill(2) on a process this test started.
    unsafe { libc::kill(survivor.pid as i32, libc::SIGTERM) };
    survivor.wait();
    let done = serve.finish();
    assert_eq!(done.code, 0, "{done:?}");
    assert!(
        done.stderr.contains("every target exited"),
        "{}",
        done.stderr
    );
}

#[test]
fn listen_address_problems_cost_one_line() {
    let own = std::process::id().to_string();
    let bad = run_drainwatch(&["serve", "--pid", &own, "--listen", "localhost"]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert_eq!(bad.stderr.lines().count(), 1, "{}", bad.stderr);
    assert!(
        bad.stderr.contains("invalid listen address"),
        "{}",
        bad.stderr
    );

    // A port already taken fails before anything is attached.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let busy = run_drainwatch(&["serve", "--pid", &own, "--listen", &addr]);
    assert_eq!(busy.code, 2, "{busy:?}");
    assert_eq!(busy.stderr.lines().count(), 1, "{}", busy.stderr);
    assert!(busy.stderr.contains("cannot listen on"), "{}", busy.stderr);

    // No selector: clap's message names them on its first line, then serve's usage.
    let none = run_drainwatch(&["serve"]);
    assert_eq!(none.code, 2, "{none:?}");
    let first = none.stderr.lines().next().unwrap_or_default();
    assert!(
        first.contains(
            "not provided: <--pid <PID>|--comm <NAME>|--unit <NAME.service>|--cgroup <PATH>>"
        ),
        "{}",
        none.stderr
    );
    assert!(
        none.stderr.contains("Usage: drainwatch serve"),
        "{}",
        none.stderr
    );
}

#[test]
fn a_listen_address_beyond_loopback_is_served_with_a_warning() {
    require_root();
    let server = Server::start(&[]);
    let port = free_addr().rsplit(':').next().unwrap().to_string();
    let pid = server.pid.to_string();
    let listen = format!("0.0.0.0:{port}");
    let mut serve = Drainwatch::spawn(&["serve", "--pid", &pid, "--listen", &listen]);
    serve.wait_for_stderr("not loopback");
    serve.wait_for_stderr("attached");
    let text = scrape(&format!("127.0.0.1:{port}"));
    assert!(text.contains("drainwatch_target_up{"), "{text}");
    serve.signal(libc::SIGINT);
    let done = serve.finish();
    assert_eq!(done.code, 0, "{done:?}");
}

#[test]
fn completions_and_man_page_are_generated_from_the_command_line() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run_drainwatch(&["completions", shell]);
        assert_eq!(out.code, 0, "{shell}: {out:?}");
        assert!(
            out.stdout.contains("audit") && out.stdout.contains("stop"),
            "{shell} completions lack subcommands:\n{}",
            out.stdout
        );
        assert!(
            out.stdout.contains("--kill-after"),
            "{shell}: no stop flags"
        );
    }
    // The bash script is valid bash.
    let bash = run_drainwatch(&["completions", "bash"]).stdout;
    let mut check = Command::new("bash")
        .args(["-n", "/dev/stdin"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("bash");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(bash.as_bytes())
        .unwrap();
    assert!(
        check.wait().unwrap().success(),
        "bash -n rejects the script"
    );

    let man = run_drainwatch(&["man"]);
    assert_eq!(man.code, 0, "{man:?}");
    assert!(man.stdout.starts_with(".ie") || man.stdout.contains(".TH drainwatch 1"));
    // roff escapes the dashes.
    for name in ["audit", "stop", "serve", "completions"] {
        let name = format!("drainwatch\\-{name}(1)");
        assert!(man.stdout.contains(&name), "man page lacks {name}");
    }
    let stop = run_drainwatch(&["man", "stop"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    assert!(
        stop.stdout.contains(".TH drainwatch-stop 1"),
        "{}",
        stop.stdout
    );
    assert!(stop.stdout.contains("kill\\-after"), "{}", stop.stdout);
    let bad = run_drainwatch(&["man", "restart"]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("use one of"), "{}", bad.stderr);
}

/// The documentation of serve and of the fleet, relative to the workspace.
const DOCS: [&str; 4] = [
    "docs/observability.md",
    "docs/fleet/README.md",
    "docs/fleet/rolling-restart.yml",
    "README.md",
];

fn workspace_file(path: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// The `--flags` that `drainwatch SUBCOMMAND --help` lists.
fn flags_of(subcommand: &str) -> Vec<String> {
    let help = run_drainwatch(&[subcommand, "--help"]);
    assert_eq!(help.code, 0, "{help:?}");
    help.stdout
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(str::to_string)
        .collect()
}

/// Every `drainwatch SUBCOMMAND ... --flag` written in the docs (`{{ drainwatch }}` in the
/// playbook) uses a subcommand and flags that exist; a typo in an example fails here.
#[test]
fn docs_use_only_subcommands_and_flags_the_cli_has() {
    let subcommands = [
        "check",
        "watch",
        "wait",
        "stop",
        "audit",
        "serve",
        "completions",
        "man",
    ];
    let mut checked = 0;
    let mut problems = Vec::new();
    for path in DOCS {
        let text = workspace_file(path);
        for line in text.lines() {
            let line = line.replace("{{ drainwatch }}", "drainwatch");
            let mut rest = line.as_str();
            while let Some(at) = rest.find("drainwatch ") {
                rest = &rest[at + "drainwatch ".len()..];
                let words: Vec<&str> = rest
                    .split(|c: char| c.is_whitespace() || c == '`')
                    .take_while(|w| !w.is_empty() && *w != "|" && *w != ">")
                    .collect();
                let Some(sub) = words.first().copied() else {
                    continue;
                };
                if !subcommands.contains(&sub) {
                    continue;
                }
                let known = flags_of(sub);
                for flag in words.iter().filter(|w| w.starts_with("--")) {
                    let flag = flag.split('=').next().unwrap();
                    checked += 1;
                    if !known.iter().any(|k| k == flag) {
                        problems.push(format!("{path}: `drainwatch {sub}` has no {flag}: {line}"));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(checked > 10, "only {checked} flags found in the docs");

    // The DaemonSet passes serve's arguments as a YAML list.
    let observability = workspace_file("docs/observability.md");
    let args: Vec<&str> = observability
        .lines()
        .skip_while(|l| l.trim() != "args:")
        .skip(1)
        .map_while(|l| l.trim().strip_prefix("- "))
        .map(|a| a.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(args.first(), Some(&"serve"), "{args:?}");
    let serve_flags = flags_of("serve");
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        assert!(
            serve_flags.iter().any(|k| k == flag),
            "DaemonSet: serve has no {flag}"
        );
    }
}

/// The alerting rules of docs/observability.md, as written there.
fn documented_rules() -> String {
    let text = workspace_file("docs/observability.md");
    text.split("```yaml\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap())
        .find(|block| block.starts_with("# drainwatch-rules.yml"))
        .expect("a ```yaml block starting with `# drainwatch-rules.yml`")
        .to_string()
}

/// `promtool test rules`: the documented GameServerSigkilled alert, fed with
/// `drainwatch_sigkills_total` as scraped from serve (before, after a SIGKILL) a minute
/// apart, fires with the target's comm in its summary; and does not before the kill.
fn promtool_test_sigkill_alert([before, after]: [f64; 2]) {
    let rules = documented_rules();
    let description = rules
        .lines()
        .skip_while(|l| !l.contains("alert: GameServerSigkilled"))
        .find_map(|l| l.trim().strip_prefix("description: "))
        .expect("GameServerSigkilled has a description")
        .trim_matches('"')
        .replace('\'', "''");
    let dir = TempDir::new("promtool-test");
    std::fs::write(dir.path("drainwatch-rules.yml"), &rules).unwrap();
    let test = format!(
        "rule_files: [drainwatch-rules.yml]\n\
         evaluation_interval: 1m\n\
         tests:\n\
         \x20 - interval: 1m\n\
         \x20   input_series:\n\
         \x20     - series: 'drainwatch_sigkills_total{{comm=\"dw-fixture\",instance=\"game-1:9464\"}}'\n\
         \x20       values: '{before} {before} {after} {after}'\n\
         \x20   alert_rule_test:\n\
         \x20     - eval_time: 1m\n\
         \x20       alertname: GameServerSigkilled\n\
         \x20       exp_alerts: []\n\
         \x20     - eval_time: 3m\n\
         \x20       alertname: GameServerSigkilled\n\
         \x20       exp_alerts:\n\
         \x20         - exp_labels: {{severity: warning, comm: dw-fixture, instance: 'game-1:9464'}}\n\
         \x20           exp_annotations:\n\
         \x20             summary: 'dw-fixture on game-1:9464 received SIGKILL'\n\
         \x20             description: '{description}'\n"
    );
    std::fs::write(dir.path("test.yml"), &test).unwrap();
    let out = Command::new("promtool")
        .args(["test", "rules", "test.yml"])
        .current_dir(&dir.0)
        .output()
        .expect("promtool runs (`cargo xtask setup` installs the Debian package prometheus)");
    assert!(
        out.status.success(),
        "promtool test rules:\n{test}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The alerting and recording rules in docs/observability.md pass `promtool check rules`.
#[test]
fn documented_alerting_rules_pass_promtool() {
    let rules = documented_rules();
    let dir = TempDir::new("rules");
    let path = dir.path("drainwatch-rules.yml");
    std::fs::write(&path, rules).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules", &path])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): install the Debian package `prometheus` \
                 (`cargo xtask setup` does)"
            )
        });
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Without --listen, /metrics is served on loopback only (127.0.0.1:9464), never on every
/// interface.
#[test]
fn the_default_listen_address_is_loopback_only() {
    require_root();
    let server = Server::start(&[]);
    let pid = server.pid.to_string();
    let serve = Drainwatch::attach(&["serve", "--pid", &pid]);
    let body = http_get_body("127.0.0.1:9464", "/metrics");
    assert!(body.contains("drainwatch_target_up"), "{body}");
    let listening = std::process::Command::new("ss")
        .args(["-Hltn", "sport = :9464"])
        .output()
        .expect("ss (iproute2) runs");
    let listening = String::from_utf8_lossy(&listening.stdout).to_string();
    let addrs: Vec<&str> = listening
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    assert_eq!(addrs, ["127.0.0.1:9464"], "{listening}");
    serve.signal(libc::SIGTERM);
    let done = serve.finish();
    assert_eq!(done.code, 0, "{done:?}");
}

/// One `op` round trip with the event-loop fixture (`op NAME 0` answered with `done`).
fn op(stream: &mut TcpStream) {
    stream
        .write_all(b"op fast 0\n")
        .expect("send to the event loop");
    let mut buf = [0u8; 5];
    stream
        .read_exact(&mut buf)
        .expect("reply from the event loop");
    assert_eq!(&buf, b"done\n");
}

/// Two different servers watched at once: the pre-fork fixture answering after 40 ms, the
/// event-loop fixture at once. The kernel keeps a latency histogram per process, so
/// `serve` exports two request latency series (by `comm`) and `watch --json` two lines,
/// never one histogram mixing a 40 ms server with a sub-millisecond one.
#[test]
fn two_servers_request_latencies_stay_apart() {
    require_root();
    let slow = Server::start(&["--workers", "1", "--reply-after-ms", "40"]);
    let fast = EventLoopServer::start(&[]);
    let (slow_pid, fast_pid) = (slow.pid.to_string(), fast.pid.to_string());
    let addr = free_addr();
    let serve = Drainwatch::attach(&[
        "serve", "--pid", &slow_pid, "--pid", &fast_pid, "--listen", &addr,
    ]);
    let mut watch = Drainwatch::attach(&[
        "watch",
        "--pid",
        &slow_pid,
        "--pid",
        &fast_pid,
        "--json",
        "--interval",
        "100ms",
    ]);
    let frames = watch.stdout_lines();
    let mut to_slow = TcpStream::connect(("127.0.0.1", slow.port)).unwrap();
    let mut to_fast = TcpStream::connect(("127.0.0.1", fast.port)).unwrap();
    for stream in [&to_slow, &to_fast] {
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
    }
    for _ in 0..5 {
        echo(&mut to_slow);
    }
    for _ in 0..20 {
        op(&mut to_fast);
    }
    let slow_count = "drainwatch_request_duration_seconds_count{comm=\"dw-fixture\"}";
    let fast_count = "drainwatch_request_duration_seconds_count{comm=\"python3\"}";
    let text = scrape_until(&addr, &[(slow_count, 5.0), (fast_count, 20.0)]);
    promtool_check(&text);
    let mean = |comm: &str, count: f64| {
        value(
            &text,
            &format!("drainwatch_request_duration_seconds_sum{{comm=\"{comm}\"}}"),
        )
        .unwrap()
            / count
    };
    let (slow_mean, fast_mean) = (mean("dw-fixture", 5.0), mean("python3", 20.0));
    assert!(
        (0.038..0.5).contains(&slow_mean),
        "dw-fixture answers after 40 ms, mean {slow_mean}s:\n{text}"
    );
    assert!(
        fast_mean < 0.02,
        "the event loop answers at once, mean {fast_mean}s:\n{text}"
    );
    // No series without a name: nothing fell into the shared overflow histogram.
    assert!(
        !text.contains("drainwatch_request_duration_seconds_count{comm=\"unknown\"}"),
        "{text}"
    );

    // watch: the same two, each with its own latency.
    let deadline = Instant::now() + PATIENCE;
    let frame = loop {
        let line = frames
            .recv_timeout(PATIENCE)
            .expect("watch prints a frame a tick");
        let frame: Value = serde_json::from_str(&line).unwrap();
        let counts: Vec<(String, u64)> = frame["requests_by_comm"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["comm"].as_str().unwrap().to_string(),
                    c["count"].as_u64().unwrap(),
                )
            })
            .collect();
        if counts == [("dw-fixture".to_string(), 5), ("python3".to_string(), 20)] {
            break frame;
        }
        assert!(
            Instant::now() < deadline,
            "watch frames never showed both: {line}"
        );
    };
    let by_comm = frame["requests_by_comm"].as_array().unwrap();
    assert!(
        by_comm[0]["latency_us"]["p50"].as_u64().unwrap() >= 38_000,
        "{frame}"
    );
    assert!(
        by_comm[1]["latency_us"]["p50"].as_u64().unwrap() < 20_000,
        "{frame}"
    );
    assert_eq!(
        frame["requests"]["count"], 25,
        "all of them together: {frame}"
    );
    serve.signal(libc::SIGINT);
    watch.signal(libc::SIGINT);
    let _ = serve.finish();
    let _ = watch.finish();
}

/// `watch --json | head -n 3`: once head has its three lines and is gone, the next write
/// fails (EPIPE) and drainwatch detaches and exits (it went on rewriting its line, probe
/// attached, until Ctrl-C).
#[test]
fn watch_into_a_closed_pipe_exits() {
    require_root();
    let mut sleeper = Command::new("sleep").arg("60").spawn().unwrap();
    let script = format!(
        "{} watch --pid {} --json --interval 100ms | head -n 3",
        drainwatch_bin().display(),
        sleeper.id()
    );
    let started = Instant::now();
    let mut pipeline = Command::new("sh")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_with_deadline(&mut pipeline, Duration::from_millis(scaled_ms(20_000)));
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let Some(status) = status else {
        let _ = pipeline.kill();
        panic!("watch went on writing into a closed pipe");
    };
    assert!(status.success(), "{status}");
    let mut out = String::new();
    pipeline
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(out.lines().count(), 3, "{out}");
    for line in out.lines() {
        let frame: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(frame["targets"].is_array(), "{line}");
    }
    eprintln!("watch | head -n 3 ended after {:?}", started.elapsed());
}

/// `serve --op` (issue #22): the purchases of the compiled game server (tests/fixtures/
/// game_ops.cpp) in flight and returned under its name and the function, their latency per
/// function; promtool accepts it.
#[test]
fn operations_are_exported_by_name_and_function_and_pass_promtool() {
    use drainwatch_tests::{
        db::PgServer,
        game_ops::{GameOps, Gateway},
    };
    require_root();
    let db = PgServer::start();
    let gap_ms = scaled_ms(300);
    let game = GameOps::start(Some(&db), 4, gap_ms, &[]);
    let addr = free_addr();
    let pid = game.pid.to_string();
    let serve = Drainwatch::attach(&[
        "serve", "--pid", &pid, "--op", "purchase", "--listen", &addr,
    ]);
    let in_flight = "drainwatch_operations_in_flight{comm=\"game_ops\",function=\"purchase\"}";
    let total = "drainwatch_operations_total{comm=\"game_ops\",function=\"purchase\"}";
    let count = "drainwatch_operation_duration_seconds_count{function=\"purchase\"}";
    let idle = scrape_until(&addr, &[(in_flight, 0.0), (total, 0.0)]);
    promtool_check(&idle);
    let gateway = Gateway::start(game.port, 20, 2000);
    // Under load: purchases between their writes show, while the server's record has them.
    let deadline = Instant::now() + PATIENCE;
    let busy = loop {
        let text = scrape(&addr);
        let truth = game.truth();
        if value(&text, in_flight).is_some_and(|n| n >= 1.0)
            && value(&text, total).is_some_and(|n| n >= 3.0)
            && truth.completed >= 3
        {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no purchase in flight in the metrics ({truth:?}):\n{text}"
        );
        thread::sleep(Duration::from_millis(50));
    };
    promtool_check(&busy);
    assert!(value(&busy, in_flight).unwrap() <= 4.0, "{busy}");
    gateway.stop();
    // Drained: none in flight, every purchase the ledger completed returned and timed.
    let quiet = scrape_until(&addr, &[(in_flight, 0.0)]);
    promtool_check(&quiet);
    let returned = value(&quiet, total).unwrap();
    assert_eq!(value(&quiet, count), Some(returned), "{quiet}");
    let sum = value(
        &quiet,
        "drainwatch_operation_duration_seconds_sum{function=\"purchase\"}",
    )
    .unwrap();
    assert!(
        sum / returned >= gap_ms as f64 / 1000.0 * 0.9,
        "a purchase lasts its gap: {sum} s over {returned}"
    );
    let within_gap = value(
        &quiet,
        "drainwatch_operation_duration_seconds_bucket{function=\"purchase\",le=\"0.25\"}",
    );
    assert_eq!(
        within_gap,
        Some(0.0),
        "no purchase shorter than its gap: {quiet}"
    );
    drop(serve);
}
