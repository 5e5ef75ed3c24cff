//! `drainwatch doctor` on the running kernel: what it offers, what drainwatch will use. The
//! kernel matrix runs it in the 5.10, 6.1 and 6.12 guests too (xtask/src/matrix.rs).

use drainwatch_tests::*;

#[test]
fn doctor_says_what_this_kernel_offers_one_line_each() {
    require_root();
    let done = run_drainwatch(&["doctor"]);
    assert_eq!(done.code, 0, "this kernel runs every other test: {done:?}");
    let out = &done.stdout;
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert!(out.contains(release.trim()), "{out}");
    for what in [
        "privileges",
        "bpf ring buffer",
        "bpf task registers",
        "tracefs",
        "tracepoint signal:signal_generate",
        "tracepoint sched:sched_process_exit",
        "process exit",
        "kernel BTF",
        "uprobes",
        "kprobes",
        "fentry",
        "cgroup v2",
        "lockdown",
        "hooks",
    ] {
        assert!(
            out.lines().any(|l| l
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .contains(what)),
            "no line about {what}:\n{out}"
        );
    }
    assert!(!out.contains("MISSING"), "{out}");
    assert!(out.contains("drainwatch can attach here"), "{out}");
}

#[test]
fn doctor_json_is_one_object_with_a_status_per_check() {
    require_root();
    let done = run_drainwatch(&["doctor", "--json"]);
    assert_eq!(done.code, 0, "{done:?}");
    let doc: Value = serde_json::from_str(done.stdout.trim()).expect("one JSON object");
    assert_eq!(doc["usable"], true, "{doc:#}");
    assert_eq!(doc["minimum_kernel"], "5.8");
    let checks = doc["checks"].as_array().expect("checks");
    assert!(checks.len() >= 15, "{doc:#}");
    for check in checks {
        let status = check["status"].as_str().expect("status");
        assert!(["ok", "missing", "absent"].contains(&status), "{check}");
        assert!(check["what"].as_str().is_some_and(|w| !w.is_empty()));
        if status != "ok" {
            assert!(
                check["fix"].as_str().is_some() || status == "absent",
                "{check}"
            );
        }
    }
    // The hooks are named in the report's coverage.hooks words.
    let hooks = doc["hooks"].as_str().expect("hooks");
    assert!(
        ["socket-tracepoints", "fentry", "kprobes", "syscalls"].contains(&hooks),
        "{hooks}"
    );
}

#[test]
fn every_attaching_command_logs_the_doctor_lines_at_v() {
    require_root();
    let mut server = Server::start(&[]);
    let pid = server.pid.to_string();
    let watch = Drainwatch::attach(&["audit", "-v", "--pid", &pid]);
    signal_from_helper(libc::SIGTERM, server.pid);
    server.wait();
    let done = watch.finish();
    assert!(
        done.stderr.contains("doctor:") && done.stderr.contains("bpf ring buffer"),
        "{}",
        done.stderr
    );
}

/// Run as nobody, doctor says once that it lacks privileges and blames the kernel for
/// nothing: no "permission denied (fix: Linux 5.8 or newer)", no "tracefs not mounted", no
/// tracepoint "not on this kernel".
#[test]
fn without_privileges_doctor_says_so_once_and_blames_no_kernel() {
    require_root();
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(drainwatch_bin())
        .arg("doctor")
        .output()
        .expect("setpriv (util-linux) runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    let missing: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("MISSING"))
        .collect();
    assert_eq!(missing.len(), 1, "{stdout}");
    assert!(
        missing[0].contains("privileges") && missing[0].contains("run as root"),
        "{stdout}"
    );
    let others: Vec<&str> = stdout
        .lines()
        .filter(|l| !l.contains("privileges"))
        .collect();
    for blame in [
        "permission denied",
        "fix: Linux",
        "not on this kernel",
        "tracefs",
        "tracepoint ",
    ] {
        assert!(
            others.iter().all(|l| !l.contains(blame)),
            "{blame:?} in:\n{stdout}"
        );
    }
}
