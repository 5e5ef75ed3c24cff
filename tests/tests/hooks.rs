//! The hook layer (docs/hooks.md): choosing a backend with `DRAINWATCH_HOOKS`, refusing one
//! that cannot run, and the socket backend keeping off the syscall path.

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::Command,
    time::Duration,
};

use drainwatch_tests::*;

/// Names of the BPF programs whose fds `pid` holds (its /proc fdinfo `prog_id:` lines,
/// named by `bpftool prog show --json`): this drainwatch's own, whatever other sessions on
/// the machine have loaded.
fn programs_of(pid: u32) -> Vec<String> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .expect("drainwatch's fdinfo")
        .flatten()
    {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        ids.extend(
            text.lines()
                .filter_map(|l| l.strip_prefix("prog_id:"))
                .filter_map(|id| id.trim().parse::<u64>().ok()),
        );
    }
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .expect("bpftool runs (`cargo xtask setup` installs it)");
    let all: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    all.as_array()
        .expect("a list of programs")
        .iter()
        .filter(|p| p["id"].as_u64().is_some_and(|id| ids.contains(&id)))
        .filter_map(|p| p["name"].as_str().map(String::from))
        .collect()
}

/// What `audit` of a fresh server says with `var` = `value` in its environment, once it has
/// exited 2 with that one line.
fn refusal(var: &str, value: &str) -> String {
    let server = Server::start(&[]);
    let pid = server.pid.to_string();
    let done = Drainwatch::spawn_with_env(
        &["audit", "--pid", &pid, "--duration", "1s"],
        &[(var, value)],
    )
    .finish();
    assert_eq!(done.code, 2, "{var}={value}: {done:?}");
    assert_eq!(
        done.stderr.lines().count(),
        1,
        "{var}={value}: {}",
        done.stderr
    );
    done.stderr
}

#[test]
fn an_unknown_backend_is_one_line_and_exit_2() {
    require_root();
    let said = refusal("DRAINWATCH_HOOKS", "sockets-please");
    assert!(
        said.starts_with("drainwatch: DRAINWATCH_HOOKS=sockets-please: not one of"),
        "{said}"
    );
}

/// `DRAINWATCH_UPROBES` takes `perf` or nothing (docs/hooks.md, "Uprobes").
#[test]
fn an_unknown_uprobe_mode_is_one_line_and_exit_2() {
    require_root();
    let said = refusal("DRAINWATCH_UPROBES", "multi-please");
    assert!(
        said.starts_with("drainwatch: invalid DRAINWATCH_UPROBES `multi-please`: set it to perf"),
        "{said}"
    );
}

/// Forced onto a backend it cannot run, drainwatch refuses (exit 2, the variable named)
/// and never falls back: kprobes (not built) everywhere, and the socket tracepoints on a
/// kernel without them (Debian's 6.1 in the matrix).
#[test]
fn a_backend_that_cannot_run_is_refused_not_replaced() {
    require_root();
    let mut refused = vec!["kprobe"];
    if default_hooks() != "socket-tracepoints" {
        refused.push("socket");
    }
    for word in refused {
        let said = refusal("DRAINWATCH_HOOKS", word);
        assert!(
            said.starts_with(&format!("drainwatch: DRAINWATCH_HOOKS={word}: ")),
            "{said}"
        );
    }
}

/// The socket-level backend this run exercises: the suite's own, or where the suite is
/// forced onto the syscall hooks, the one this kernel picks by default. (`DRAINWATCH_HOOKS`
/// word, `coverage.hooks` word, programs it loads: names as the kernel keeps them, 15
/// characters.)
fn socket_level() -> (&'static str, &'static str, [&'static str; 3]) {
    let coverage = match hooks() {
        "syscalls" => default_hooks(),
        chosen => chosen,
    };
    match coverage {
        "socket-tracepoints" => (
            "socket",
            coverage,
            ["sock_send_length", "sock_recv_length", "inet_sock_set_s"],
        ),
        "fentry" => (
            "fentry",
            coverage,
            ["fx_tcp_send", "fx_tcp_recv", "inet_sock_set_s"],
        ),
        other => panic!("no socket-level backend on this kernel (its default: {other})"),
    }
}

/// With a socket-level backend, nothing of drainwatch's sits on raw_syscalls (which would
/// put every task of the host on the syscall slow path), and its socket programs are loaded.
#[test]
fn socket_hooks_keep_off_the_syscall_path_and_say_so() {
    require_root();
    let (word, coverage, wanted) = socket_level();
    let dir = TempDir::new("socket-hooks");
    let report_path = dir.path("report.json");
    let mut server = Server::start(&[]);
    let pid = server.pid.to_string();
    let mut audit = Drainwatch::spawn_with_env(
        &["audit", "--pid", &pid, "--report", &report_path],
        &[("DRAINWATCH_HOOKS", word)],
    );
    audit.wait_for_stderr("drainwatch: attached to");
    let programs = programs_of(audit.pid());
    assert!(
        !programs
            .iter()
            .any(|p| p.starts_with("raw_sys_") || p.starts_with("sys_enter_")),
        "no syscall hook with the {coverage} backend: {programs:?}"
    );
    for wanted in wanted {
        assert!(
            programs.iter().any(|p| p.starts_with(wanted)),
            "{wanted} loaded: {programs:?}"
        );
    }
    // A request and its answer (the fixture echoes), seen through the socket hooks.
    {
        let mut conn = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
        conn.set_read_timeout(Some(Duration::from_millis(scaled_ms(10_000))))
            .unwrap();
        conn.write_all(&[b'x'; 64]).expect("send");
        let mut back = [0u8; 64];
        conn.read_exact(&mut back).expect("echo");
    }
    signal_from_helper(libc::SIGTERM, server.pid);
    assert!(server.wait().success());
    let done = audit.finish();
    assert_eq!(done.code, 0, "{done:?}");
    let report = read_report(&report_path);
    assert_eq!(report["coverage"]["hooks"], coverage, "{report:#}");
    assert_eq!(report["verdict"], "clean", "{report:#}");
    assert!(
        report["connections"]["client_opened"].as_u64() >= Some(1),
        "the accepted connection seen at first sight: {report:#}"
    );
    assert!(
        report["requests"]["count"].as_u64() >= Some(1),
        "its request counted: {report:#}"
    );
}
