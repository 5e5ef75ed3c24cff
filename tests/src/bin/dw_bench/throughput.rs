//! Throughput of a saturated loopback echo server (`dw-fixture server`, 64-byte ping-pong
//! from `dw-load`), untraced and traced, A/B interleaved over rounds; kernel BPF stats per
//! program; lost events at a higher connection count.

use std::{
    collections::BTreeMap,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use drainwatch_tests::Server;
use serde_json::{json, Value};

use crate::{
    cpu::CpuGroup,
    median,
    tracer::{pingpong, Tracer, QUIET_AFTER_DETACH, SETTLE_AFTER_ATTACH},
    Table,
};

/// Connections of the overhead trials.
pub const CONNS: usize = 8;
/// Connections of the high-request-rate trial.
const HIGH_CONNS: usize = 64;
/// Threads of the connection-churn trial (each: connect, one round trip, close, again).
const CHURN_THREADS: usize = 16;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Config {
    /// Server A, nothing attached.
    Untraced,
    /// Server A under `drainwatch watch --pid A`.
    Drainwatch,
    Bpftrace,
    Strace,
    /// Server B, nothing attached.
    BystanderAlone,
    /// Server B while drainwatch watches server A.
    BystanderBeside,
    /// Server A under the floor build (`DW_FLOOR_BIN`: the socket data-path programs return
    /// at their first instruction): what the hooks cost whatever the programs do.
    Floor,
    /// Server B while the floor build watches server A.
    BystanderBesideFloor,
}

impl Config {
    const ALL: [Config; 8] = [
        Config::Untraced,
        Config::Drainwatch,
        Config::Bpftrace,
        Config::Strace,
        Config::BystanderAlone,
        Config::BystanderBeside,
        Config::Floor,
        Config::BystanderBesideFloor,
    ];

    fn key(self) -> &'static str {
        match self {
            Config::Untraced => "untraced",
            Config::Drainwatch => "drainwatch",
            Config::Bpftrace => "bpftrace",
            Config::Strace => "strace",
            Config::BystanderAlone => "bystander_alone",
            Config::BystanderBeside => "bystander_beside_drainwatch",
            Config::Floor => "floor",
            Config::BystanderBesideFloor => "bystander_beside_floor",
        }
    }
}

/// The two servers, each in a cgroup of its own for its CPU time.
struct Servers {
    a: Server,
    b: Server,
    cpu_a: Option<CpuGroup>,
    cpu_b: Option<CpuGroup>,
    /// The floor build of drainwatch (`DW_FLOOR_BIN`, which `cargo xtask bench` builds), if
    /// given: its trials run then.
    floor: Option<std::path::PathBuf>,
}

/// One trial: req/s, and the measured server's CPU time per request (ns; NaN without a
/// cgroup to read it from).
fn trial(config: Config, servers: &Servers, secs: u64) -> (f64, f64) {
    let (a, b) = (&servers.a, &servers.b);
    let tracer = match config {
        Config::Untraced | Config::BystanderAlone => None,
        Config::Drainwatch | Config::BystanderBeside => Some(Tracer::drainwatch(a.pid, false)),
        Config::Floor | Config::BystanderBesideFloor => Some(Tracer::drainwatch_from(
            servers
                .floor
                .as_deref()
                .expect("floor trials run with DW_FLOOR_BIN"),
            a.pid,
            false,
            &[],
        )),
        Config::Bpftrace => Some(Tracer::bpftrace(a.pid)),
        Config::Strace => Some(Tracer::strace(a.pid)),
    };
    let (port, cpu) = match config {
        Config::BystanderAlone | Config::BystanderBeside | Config::BystanderBesideFloor => {
            (b.port, &servers.cpu_b)
        }
        _ => (a.port, &servers.cpu_a),
    };
    thread::sleep(SETTLE_AFTER_ATTACH);
    let cpu_before = cpu.as_ref().map(CpuGroup::used_ns);
    let rps = pingpong(port, CONNS, secs);
    let cpu_per_request = match (cpu, cpu_before) {
        (Some(cpu), Some(before)) => (cpu.used_ns() - before) as f64 / (rps * secs as f64).max(1.0),
        _ => f64::NAN,
    };
    if let Some(tracer) = tracer {
        tracer.stop();
    }
    thread::sleep(QUIET_AFTER_DETACH);
    (rps, cpu_per_request)
}

/// Programs whose fds `pid` holds (from /proc/PID/fdinfo: `prog_id:`).
pub fn prog_ids(pid: u32) -> Vec<u64> {
    let mut ids = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for entry in dir.flatten() {
        if let Ok(text) = std::fs::read_to_string(entry.path()) {
            for line in text.lines() {
                if let Some(id) = line.strip_prefix("prog_id:") {
                    if let Ok(id) = id.trim().parse() {
                        ids.push(id);
                    }
                }
            }
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// (name, run_time_ns, run_cnt) of each program in `ids`, from `bpftool prog show --json`.
pub fn prog_stats(ids: &[u64]) -> BTreeMap<u64, (String, u64, u64)> {
    let out = std::process::Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .expect("run bpftool");
    let all: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let mut stats = BTreeMap::new();
    for prog in all.as_array().into_iter().flatten() {
        let id = prog["id"].as_u64().unwrap_or(0);
        if ids.contains(&id) {
            stats.insert(
                id,
                (
                    prog["name"].as_str().unwrap_or("?").to_string(),
                    prog["run_time_ns"].as_u64().unwrap_or(0),
                    prog["run_cnt"].as_u64().unwrap_or(0),
                ),
            );
        }
    }
    stats
}

pub const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Per-program ns per hit while `tracer` traces a loaded server, hits per second, and all
/// its programs' ns per round trip (issue #26's figure: what one request costs in programs,
/// the target's hits and every other process's together; the stats' window also holds the
/// trial's connection set-up, a few hits in a million).
pub fn per_hit(tracer: &Tracer, port: u16, secs: u64) -> (f64, BTreeMap<String, Value>, u64, f64) {
    let ids = prog_ids(tracer.pid());
    let before = prog_stats(&ids);
    let rps = pingpong(port, CONNS, secs);
    let after = prog_stats(&ids);
    let mut per_hit = BTreeMap::new();
    let mut hits = 0;
    let mut total_ns = 0;
    for (id, (name, ns, cnt)) in &after {
        let (_, ns0, cnt0) = before.get(id).cloned().unwrap_or_default();
        let (ns, cnt) = (ns - ns0, cnt - cnt0);
        if cnt == 0 {
            continue;
        }
        hits += cnt;
        total_ns += ns;
        let key = if per_hit.contains_key(name) {
            format!("{name}#{id}")
        } else {
            name.clone()
        };
        per_hit.insert(key, json!((ns as f64 / cnt as f64 * 10.0).round() / 10.0));
    }
    let per_request = total_ns as f64 / (rps * secs as f64).max(1.0);
    (
        rps,
        per_hit,
        hits / secs.max(1),
        (per_request * 10.0).round() / 10.0,
    )
}

/// The last `watch --json` frame's `events` object.
fn last_events(lines: &[String]) -> Value {
    lines
        .iter()
        .rev()
        .find_map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(|v| v["events"].is_object())
        })
        .map(|v| {
            let mut events = v["events"].clone();
            events["at_ms"] = v["at_ms"].clone();
            events
        })
        .unwrap_or(Value::Null)
}

/// Events per second (received + lost) from a final frame.
fn event_rate(events: &Value) -> f64 {
    let total = events["received"].as_u64().unwrap_or(0) + events["lost"].as_u64().unwrap_or(0);
    total as f64 / (events["at_ms"].as_f64().unwrap_or(1.0) / 1000.0).max(0.001)
}

/// Connections per second of [`drainwatch_tests::churn`]. Every connection is two
/// ring-buffer events in drainwatch (the server's accept and close): the densest event load
/// a server can make, since requests themselves are counted in the kernel and make none.
fn churn(port: u16, threads: usize, secs: u64) -> f64 {
    let started = Instant::now();
    let done = drainwatch_tests::churn(port, threads, Duration::from_secs(secs));
    done as f64 / started.elapsed().as_secs_f64()
}

/// A figure for the JSON: null where it could not be measured (NaN).
fn finite(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else {
        Value::Null
    }
}

fn loss(base: f64, traced: f64) -> f64 {
    (base - traced) / base
}

pub fn run(rounds: usize, secs: u64, table: &mut Table) -> Value {
    let bpftrace = Path::new("/usr/bin/bpftrace").exists()
        || std::process::Command::new("bpftrace")
            .arg("--version")
            .output()
            .is_ok();
    let strace = std::process::Command::new("strace")
        .arg("-V")
        .output()
        .is_ok();
    let (a, b) = (Server::start(&[]), Server::start(&[]));
    let cpu_group = |name: &str, pid: u32| {
        CpuGroup::new(name, pid)
            .map_err(|e| eprintln!("dw-bench: no CPU time per request: {e}"))
            .ok()
    };
    let floor = std::env::var_os("DW_FLOOR_BIN").map(std::path::PathBuf::from);
    if let Some(bin) = &floor {
        assert!(bin.is_file(), "DW_FLOOR_BIN {} is no file", bin.display());
    } else {
        eprintln!(
            "dw-bench: no DW_FLOOR_BIN: the floor trials do not run (cargo xtask bench builds it)"
        );
    }
    let servers = Servers {
        cpu_a: cpu_group("dw-bench-a", a.pid),
        cpu_b: cpu_group("dw-bench-b", b.pid),
        a,
        b,
        floor,
    };
    let a = &servers.a;
    let mut samples: BTreeMap<Config, Vec<f64>> = BTreeMap::new();
    let mut cpu_samples: BTreeMap<Config, Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        // Rotate the order each round, so no configuration always runs first or last.
        for i in 0..Config::ALL.len() {
            let config = Config::ALL[(i + round) % Config::ALL.len()];
            let floor = matches!(config, Config::Floor | Config::BystanderBesideFloor);
            if (config == Config::Bpftrace && !bpftrace)
                || (config == Config::Strace && !strace)
                || (floor && servers.floor.is_none())
            {
                continue;
            }
            let (rps, cpu_ns) = trial(config, &servers, secs);
            eprintln!(
                "dw-bench: round {}/{rounds} {:<28} {rps:>10.0} req/s {cpu_ns:>8.0} ns CPU/req",
                round + 1,
                config.key()
            );
            samples.entry(config).or_default().push(rps);
            cpu_samples.entry(config).or_default().push(cpu_ns);
        }
    }
    let med = |c: Config| samples.get(&c).map(|v| median(v)).unwrap_or(f64::NAN);
    let base = med(Config::Untraced);
    let overhead_ratio = med(Config::Drainwatch) / base;
    let dw_loss = loss(base, med(Config::Drainwatch));
    let bpftrace_loss = loss(base, med(Config::Bpftrace));
    let strace_loss = loss(base, med(Config::Strace));
    let bystander_ratio = med(Config::BystanderBeside) / med(Config::BystanderAlone);
    // Per round too: each traced trial against the same round's untraced one.
    let per_round = |c: Config, against: Config| -> Vec<f64> {
        let (Some(x), Some(y)) = (samples.get(&c), samples.get(&against)) else {
            return Vec::new();
        };
        x.iter().zip(y).map(|(x, y)| x / y).collect()
    };
    // The same from the servers' CPU time per request (less is better, so base ÷ traced).
    let cpu_med = |c: Config| cpu_samples.get(&c).map(|v| median(v)).unwrap_or(f64::NAN);
    let cpu_per_round = |c: Config, against: Config| -> Vec<f64> {
        let (Some(x), Some(y)) = (cpu_samples.get(&c), cpu_samples.get(&against)) else {
            return Vec::new();
        };
        x.iter().zip(y).map(|(x, y)| y / x).collect()
    };
    let cpu_overhead_ratio = cpu_med(Config::Untraced) / cpu_med(Config::Drainwatch);
    let bystander_cpu_ratio = cpu_med(Config::BystanderAlone) / cpu_med(Config::BystanderBeside);
    // The floor: the same trials with programs that do nothing (NaN without DW_FLOOR_BIN).
    let floor_overhead_ratio = med(Config::Floor) / base;
    let floor_bystander_ratio = med(Config::BystanderBesideFloor) / med(Config::BystanderAlone);
    let floor_cpu_overhead_ratio = cpu_med(Config::Untraced) / cpu_med(Config::Floor);
    let floor_bystander_cpu_ratio =
        cpu_med(Config::BystanderAlone) / cpu_med(Config::BystanderBesideFloor);
    // What drainwatch's programs add above the floor, in the server's CPU per request.
    let above_floor_ns = cpu_med(Config::Drainwatch) - cpu_med(Config::Floor);

    // Kernel BPF stats, in a trial of their own: enabling them costs every program a
    // little, which the overhead trials above must not pay.
    eprintln!("dw-bench: BPF stats trial (kernel.bpf_stats_enabled=1)");
    let stats_before = std::fs::read_to_string(BPF_STATS).unwrap_or_else(|_| "0".into());
    std::fs::write(BPF_STATS, "1").expect("enable kernel.bpf_stats_enabled");
    let mut dw = Tracer::drainwatch(a.pid, true);
    thread::sleep(SETTLE_AFTER_ATTACH);
    let (stats_rps, per_hit_ns, hits_per_s, per_request_ns) = per_hit(&dw, a.port, secs);
    dw.poll();
    let overhead_events = last_events(&dw.stop());
    let mut bpftrace_per_hit = BTreeMap::new();
    let mut bpftrace_per_request_ns = f64::NAN;
    if bpftrace {
        thread::sleep(QUIET_AFTER_DETACH);
        let bt = Tracer::bpftrace(a.pid);
        thread::sleep(SETTLE_AFTER_ATTACH);
        (_, bpftrace_per_hit, _, bpftrace_per_request_ns) = per_hit(&bt, a.port, secs);
        bt.stop();
    }
    std::fs::write(BPF_STATS, stats_before.trim()).expect("restore kernel.bpf_stats_enabled");
    thread::sleep(QUIET_AFTER_DETACH);

    // Lost events under the heaviest event loads: many connections at full request rate
    // (requests make no events), then connection churn (two events per connection).
    eprintln!("dw-bench: lost-events trials ({HIGH_CONNS} connections; churn)");
    let dw = Tracer::drainwatch(a.pid, true);
    thread::sleep(SETTLE_AFTER_ATTACH);
    let high_rps = pingpong(a.port, HIGH_CONNS, secs);
    // One more frame after the load, so the last one counts everything.
    thread::sleep(Duration::from_millis(1_100));
    let high_events = last_events(&dw.stop());
    thread::sleep(QUIET_AFTER_DETACH);
    let dw = Tracer::drainwatch(a.pid, true);
    thread::sleep(SETTLE_AFTER_ATTACH);
    let churn_cps = churn(a.port, CHURN_THREADS, secs);
    thread::sleep(Duration::from_millis(1_100));
    let churn_events = last_events(&dw.stop());
    let events_lost = high_events["lost"]
        .as_u64()
        .unwrap_or(u64::MAX)
        .saturating_add(churn_events["lost"].as_u64().unwrap_or(u64::MAX));
    // The overhead trial's own event rate (received + lost per second of the run).
    let overhead_rate = event_rate(&overhead_events);
    let churn_rate = event_rate(&churn_events);
    // What the previous design sent for the overhead trial: two events per request.
    let old_design_rate = 2.0 * stats_rps;

    let fmt_list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    table.row(
        &format!("untraced req/s (median of {rounds}, {CONNS} conns, {secs}s)"),
        format!("{base:.0}"),
        "",
    );
    table.row(
        "overhead_ratio (drainwatch ÷ untraced)",
        format!(
            "{overhead_ratio:.3} (rounds: {})",
            fmt_list(&per_round(Config::Drainwatch, Config::Untraced))
        ),
        ">= 0.97",
    );
    table.row(
        "throughput loss: drainwatch / bpftrace / strace",
        format!(
            "{:.1}% / {:.1}% / {:.1}%",
            dw_loss * 100.0,
            bpftrace_loss * 100.0,
            strace_loss * 100.0
        ),
        "",
    );
    table.row(
        "vs_bpftrace (loss ÷ bpftrace's loss)",
        format!("{:.2}", dw_loss / bpftrace_loss),
        "<= 0.3 (#15)",
    );
    table.row(
        "vs_strace (loss ÷ strace's loss)",
        format!("{:.3}", dw_loss / strace_loss),
        "",
    );
    table.row(
        "bystander_ratio",
        format!(
            "{bystander_ratio:.3} (rounds: {})",
            fmt_list(&per_round(Config::BystanderBeside, Config::BystanderAlone))
        ),
        ">= 0.995",
    );
    table.row(
        "server CPU per request, ns (median): untraced / drainwatch / bpftrace / strace",
        format!(
            "{:.0} / {:.0} / {:.0} / {:.0}",
            cpu_med(Config::Untraced),
            cpu_med(Config::Drainwatch),
            cpu_med(Config::Bpftrace),
            cpu_med(Config::Strace)
        ),
        "",
    );
    table.row(
        "cpu_overhead_ratio (server CPU per request, untraced ÷ drainwatch)",
        format!(
            "{cpu_overhead_ratio:.3} (rounds: {})",
            fmt_list(&cpu_per_round(Config::Drainwatch, Config::Untraced))
        ),
        "",
    );
    table.row(
        &format!(
            "bystander_cpu_ratio (server B CPU per request, alone ÷ beside; {:.0} ÷ {:.0} ns)",
            cpu_med(Config::BystanderAlone),
            cpu_med(Config::BystanderBeside)
        ),
        format!(
            "{bystander_cpu_ratio:.3} (rounds: {})",
            fmt_list(&cpu_per_round(
                Config::BystanderBeside,
                Config::BystanderAlone
            ))
        ),
        "",
    );
    if servers.floor.is_some() {
        table.row(
            "floor_overhead_ratio (programs that return at once ÷ untraced; CPU: untraced ÷ floor)",
            format!(
                "{floor_overhead_ratio:.3} (rounds: {}); CPU {floor_cpu_overhead_ratio:.3}",
                fmt_list(&per_round(Config::Floor, Config::Untraced))
            ),
            "",
        );
        table.row(
            "floor_bystander_ratio (B beside the floor build ÷ alone; CPU: alone ÷ beside)",
            format!(
                "{floor_bystander_ratio:.3} (rounds: {}); CPU {floor_bystander_cpu_ratio:.3}",
                fmt_list(&per_round(
                    Config::BystanderBesideFloor,
                    Config::BystanderAlone
                ))
            ),
            "",
        );
        table.row(
            "server CPU per request above the floor, ns (drainwatch − floor)",
            format!(
                "{above_floor_ns:.0} ({:.0} − {:.0}; the floor itself {:.0} above untraced)",
                cpu_med(Config::Drainwatch),
                cpu_med(Config::Floor),
                cpu_med(Config::Floor) - cpu_med(Config::Untraced)
            ),
            "low",
        );
    }
    let per_hit_text = |m: &BTreeMap<String, Value>| {
        m.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    table.row(
        &format!("per_hit_ns (stats trial: {stats_rps:.0} req/s, {hits_per_s} hits/s)"),
        per_hit_text(&per_hit_ns),
        "low",
    );
    if bpftrace {
        table.row(
            "bpftrace per_hit_ns (same load)",
            per_hit_text(&bpftrace_per_hit),
            "",
        );
    }
    table.row(
        "program ns per request (stats trial, every program's ns ÷ round trips): drainwatch / bpftrace",
        format!("{per_request_ns:.0} / {bpftrace_per_request_ns:.0}"),
        "low",
    );
    table.row(
        &format!("events lost at {CONNS} conns (received)"),
        format!(
            "{} ({})",
            overhead_events["lost"], overhead_events["received"]
        ),
        "",
    );
    table.row(
        &format!("events lost at {HIGH_CONNS} conns ({high_rps:.0} req/s)"),
        format!(
            "{} (received {})",
            high_events["lost"], high_events["received"]
        ),
        "0",
    );
    table.row(
        &format!(
            "events_lost in churn ({churn_cps:.0} conn/s, {churn_rate:.0} events/s = {:.0}x the overhead trial's {overhead_rate:.0}/s, {:.2}x the {old_design_rate:.0}/s of one event per request edge)",
            churn_rate / overhead_rate.max(1.0),
            churn_rate / old_design_rate.max(1.0)
        ),
        format!("{} (received {})", churn_events["lost"], churn_events["received"]),
        "0 at 10x",
    );
    let samples_json: BTreeMap<&str, &Vec<f64>> =
        samples.iter().map(|(c, v)| (c.key(), v)).collect();
    json!({
        "overhead_ratio": overhead_ratio,
        "vs_bpftrace": dw_loss / bpftrace_loss,
        "vs_strace": dw_loss / strace_loss,
        "bystander_ratio": bystander_ratio,
        "cpu_overhead_ratio": cpu_overhead_ratio,
        "bystander_cpu_ratio": bystander_cpu_ratio,
        "floor": {
            "overhead_ratio": finite(floor_overhead_ratio),
            "bystander_ratio": finite(floor_bystander_ratio),
            "cpu_overhead_ratio": finite(floor_cpu_overhead_ratio),
            "bystander_cpu_ratio": finite(floor_bystander_cpu_ratio),
            "cpu_ns_per_request_above_floor": finite(above_floor_ns),
        },
        "per_hit_ns": per_hit_ns,
        "per_request_ns": per_request_ns,
        "bpftrace_per_request_ns": bpftrace_per_request_ns,
        "events_lost": events_lost,
        "throughput": {
            "rounds": rounds,
            "trial_secs": secs,
            "conns": CONNS,
            "payload_bytes": 64,
            "median_rps": samples.keys().map(|c| (c.key(), med(*c))).collect::<BTreeMap<_, _>>(),
            "samples_rps": samples_json,
            "loss": {"drainwatch": dw_loss, "bpftrace": bpftrace_loss, "strace": strace_loss},
            "overhead_ratio_per_round": per_round(Config::Drainwatch, Config::Untraced),
            "bystander_ratio_per_round": per_round(Config::BystanderBeside, Config::BystanderAlone),
            "cpu_ns_per_request": cpu_samples
                .iter()
                .map(|(c, v)| (c.key(), v))
                .collect::<BTreeMap<_, _>>(),
        },
        "bpf_stats": {
            "rps_with_stats": stats_rps,
            "probe_hits_per_s": hits_per_s,
            "bpftrace_per_hit_ns": bpftrace_per_hit,
        },
        "events": {
            "overhead_load": overhead_events,
            "overhead_events_per_s": overhead_rate,
            "high_load": high_events,
            "high_load_conns": HIGH_CONNS,
            "high_load_rps": high_rps,
            "churn": churn_events,
            "churn_threads": CHURN_THREADS,
            "churn_conns_per_s": churn_cps,
            "churn_events_per_s": churn_rate,
            "churn_vs_overhead_event_rate": churn_rate / overhead_rate.max(1.0),
            "per_request_event_design_rate": old_design_rate,
        },
    })
}
