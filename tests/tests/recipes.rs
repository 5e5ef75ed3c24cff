//! The deployment recipes of docs/ run as written, not only syntax-checked.

use drainwatch_tests::*;

fn workspace_file(path: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// docs/deploy.md's systemd unit: its `ExecStop=` line, with what systemd does to it before
/// running it (systemd.service(5), "Command lines"): the `+` prefix (full privileges) is a
/// flag, not part of the command; `$MAINPID` is the main process's pid; `%n` the unit's full
/// name (systemd.unit(5), "Specifiers"). The words are split as systemd splits them (no
/// shell). Only the binary and the log directory are moved to where the test has them.
#[test]
fn the_systemd_unit_s_exec_stop_runs_as_written() {
    require_root();
    let doc = workspace_file("docs/deploy.md");
    let line = doc
        .lines()
        .find_map(|l| l.strip_prefix("ExecStop="))
        .expect("an ExecStop= line in docs/deploy.md");
    // Prefixes: "+" full privileges, "-" failure ignored (see systemd.service(5)).
    let command = line.trim_start_matches(['+', '-', '@', '!', ':']);
    let server = Server::start(&[]);
    let logs = TempDir::new("execstop");
    let words: Vec<String> = command
        .split_whitespace()
        .map(|w| {
            w.replace("$MAINPID", &server.pid.to_string())
                .replace("%n", "game-server.service")
                .replace("/var/log/drainwatch", &logs.0.display().to_string())
        })
        .collect();
    assert_eq!(words[0], "/usr/local/bin/drainwatch", "{line}");
    let out = std::process::Command::new(drainwatch_bin())
        .args(&words[1..])
        .output()
        .expect("drainwatch runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{line}\n{stdout}{stderr}");
    // Under systemd stdout is the journal, not a terminal: the report is the last line.
    let last: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(last["verdict"], "clean", "{stdout}");
    let report = read_report(&logs.path("game-server.service-stop.json"));
    assert_eq!(report["mode"], "stop");
    assert_eq!(report["verdict"], "clean", "{report:#}");
    assert_eq!(report["targets"][0]["pid"], server.pid);
}
