//! A unix-domain database connection closed by a target that goes on running: on the
//! socket backend no kernel hook sees that close (docs/hooks.md), userspace sees the fd go;
//! on the syscall backend close(2) does. Either way the report must tell a polite close
//! (clean) from a close without the protocol's goodbye (`leaked_db_connection`,
//! `closed_by: unclean_close`, not `exit`). Real psycopg against a private PostgreSQL through
//! its unix socket; ground truth from the server's own count of unclean closes.

use std::process::Command;

use drainwatch_tests::{
    db::Database, db::PgServer, read_report, require_root, scaled_ms, shop::python, TempDir,
};
use serde_json::Value;

/// Connects over the unix socket, runs a query, closes the connection as MODE says, stays
/// alive LINGER seconds, well past drainwatch's next look at its fds (one drain tick, 50 ms,
/// but a tick can wait for the TLS hooks this process's libssl gets, which take seconds
/// to load in a guest under TCG), then exits without finalizers (which would touch the
/// closed fd).
const CLIENT: &str = r#"
import os, sys, time
import psycopg
url, mode, linger = sys.argv[1], sys.argv[2], float(sys.argv[3])
db = psycopg.connect(url, autocommit=True)
db.execute("SELECT 1")
if mode == "polite":
    db.close()
else:
    os.close(db.fileno())
time.sleep(linger)
print("done", flush=True)
os._exit(0)
"#;

/// `drainwatch audit -vv --report R -- python -c CLIENT URL MODE`: (exit code, report,
/// drainwatch's stderr: every event it read, for a failure's message).
fn audit_client(db: &PgServer, mode: &str) -> (i32, Value, String) {
    let dir = TempDir::new(&format!("unix-close-{mode}"));
    let report_path = dir.path("report.json");
    let out = Command::new(drainwatch_tests::drainwatch_bin())
        .args(["audit", "-vv", "--report", &report_path, "--"])
        .arg(python())
        .args(["-c", CLIENT, &db.unix_url(), mode])
        .arg(format!("{:.1}", scaled_ms(1_000) as f64 / 1000.0))
        .output()
        .expect("run drainwatch audit");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("done"),
        "the client did not finish: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.code().unwrap_or(-1),
        read_report(&report_path),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn kinds(report: &Value) -> Vec<String> {
    report["violations"]
        .as_array()
        .map(|v| {
            v.iter()
                .map(|x| x["kind"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn unix_db_connection_closed_politely_while_running_is_clean() {
    require_root();
    let db = PgServer::start();
    let unclean_before = db.unclean_closes();
    let (code, report, stderr) = audit_client(&db, "polite");
    assert_eq!(db.unclean_closes(), unclean_before, "{}", db.log_tail());
    assert_eq!(kinds(&report), Vec::<String>::new(), "{report:#}\n{stderr}");
    assert_eq!(report["connections"]["db_opened"], 1, "{report:#}");
    assert_eq!(report["connections"]["db_closed"], 1, "{report:#}");
    assert_eq!(code, 0, "{report:#}");
}

#[test]
fn unix_db_connection_closed_without_goodbye_while_running_is_an_unclean_close() {
    require_root();
    let db = PgServer::start();
    let unclean_before = db.unclean_closes().unwrap();
    let (code, report, stderr) = audit_client(&db, "rude");
    assert_eq!(
        db.unclean_closes(),
        Some(unclean_before + 1),
        "{}",
        db.log_tail()
    );
    assert_eq!(
        kinds(&report),
        ["leaked_db_connection"],
        "{report:#}\n{stderr}"
    );
    let leak = &report["violations"][0];
    assert_eq!(leak["closed_by"], "unclean_close", "{report:#}");
    assert_eq!(leak["protocol"], "postgres", "{report:#}");
    assert_eq!(code, 1, "{report:#}");
}
