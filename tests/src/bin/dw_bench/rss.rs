//! drainwatch's peak RSS (VmHWM) while the watched server holds many client connections.

use std::{thread, time::Duration};

use drainwatch_tests::{wait_with_deadline, Server};
use serde_json::{json, Value};

use crate::{tracer::Tracer, Table};

fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

pub fn run(conns: usize, table: &mut Table) -> Value {
    eprintln!("dw-bench: RSS with {conns} client connections");
    let server = Server::start(&[]);
    let mut dw = Tracer::drainwatch(server.pid, true);
    thread::sleep(Duration::from_millis(500));
    let idle_kb = status_kb(dw.pid(), "VmHWM:");
    let (mut load, opened) = drainwatch_tests::hold_connections(server.port, conns, 120);
    let opened = opened as usize;
    // Wait (bounded) until the view counts them all, or its count stops growing.
    let last_frame = |dw: &Tracer| {
        dw.stdout
            .iter()
            .rev()
            .find_map(|l| serde_json::from_str::<Value>(l).ok())
            .unwrap_or(Value::Null)
    };
    let mut tracked = Value::Null;
    for _ in 0..8 {
        thread::sleep(Duration::from_millis(1_050));
        dw.poll();
        let now = last_frame(&dw)["connections"]["client"].clone();
        let settled = now == tracked || now.as_u64() >= Some(opened as u64);
        tracked = now;
        if settled {
            break;
        }
    }
    let lost = last_frame(&dw)["events"]["lost"].clone();
    let peak_kb = status_kb(dw.pid(), "VmHWM:");
    let now_kb = status_kb(dw.pid(), "VmRSS:");
    drop(load.stdin.take());
    if wait_with_deadline(&mut load, Duration::from_secs(30)).is_none() {
        let _ = load.kill();
        let _ = load.wait();
    }
    dw.stop();
    let mb = peak_kb as f64 / 1024.0;
    table.row(
        &format!(
            "rss_mb_10k_conns ({opened} opened, {tracked} tracked; peak after attach {:.1} MB, VmRSS now {:.1} MB)",
            idle_kb as f64 / 1024.0,
            now_kb as f64 / 1024.0
        ),
        format!("{mb:.1}"),
        "<= 25",
    );
    json!({
        "rss_mb_10k_conns": mb,
        "rss": {"conns_requested": conns, "conns_opened": opened, "clients_tracked": tracked,
                "idle_mb": idle_kb as f64 / 1024.0, "peak_mb": mb,
                "rss_now_mb": now_kb as f64 / 1024.0, "events_lost": lost},
    })
}
