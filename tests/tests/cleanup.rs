//! Nothing stays loaded after drainwatch: not after a normal exit, not after kill -9 (the
//! kernel closes its fds and takes the programs down). Its own test binary, so that no
//! other drainwatch runs at the same time.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use drainwatch_tests::*;

/// Programs of drainwatch's probe loaded right now, from `bpftool prog show --json`.
fn drainwatch_programs() -> usize {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .expect("bpftool runs (`cargo xtask setup` installs it)");
    assert!(
        out.status.success(),
        "bpftool failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let progs: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    progs
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            // bpftool shows the full name from the program's BTF.
            let name = p["name"].as_str().unwrap_or("");
            [
                "signal_generate",
                "sched_process_exec",
                "raw_sys_exit",
                "db_io",
            ]
            .contains(&name)
        })
        .count()
}

fn wait_for_no_programs(what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while drainwatch_programs() > 0 {
        assert!(
            Instant::now() < deadline,
            "{what}: drainwatch's programs are still loaded"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn nothing_stays_loaded_after_exit_or_kill_nine() {
    require_root();
    wait_for_no_programs("before the test");
    let mut sleeper = Command::new("sleep").arg("60").spawn().unwrap();
    let pid = sleeper.id().to_string();

    let audit = Drainwatch::attach(&["audit", "--pid", &pid, "--duration", "300ms"]);
    assert!(
        drainwatch_programs() >= 4,
        "the probe is loaded while it runs"
    );
    let done = audit.finish();
    assert_eq!(done.code, 0, "{done:?}");
    wait_for_no_programs("after a normal exit");

    let audit = Drainwatch::attach(&["audit", "--pid", &pid]);
    assert!(drainwatch_programs() >= 4);
    // SAFETY: kill(2) on the drainwatch this test started.
    unsafe { libc::kill(audit.pid() as i32, libc::SIGKILL) };
    let done = audit.finish();
    assert_eq!(done.code, -1, "killed: {done:?}");
    wait_for_no_programs("after kill -9");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

/// Without root (or CAP_BPF + CAP_PERFMON): one line that says how to fix it, exit 2.
#[test]
fn without_privileges_it_says_so_in_one_line() {
    require_root();
    let me = std::process::id().to_string();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(drainwatch_bin())
        .args(["audit", "--pid", &me])
        .output()
        .expect("setpriv (util-linux) runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("run drainwatch as root"), "{stderr}");
}
