//! What `--op` costs (issue #22): a target calling a hot function (`dw-fixture hot-op`,
//! `dw_hot_op`, a few instructions) in a loop, its calls per second untraced and under
//! `drainwatch watch --op dw_hot_op`, side by side in one run (rounds alternate which goes
//! first; the median ratio counts). Per operation: the target's own loss
//! (1/traced − 1/untraced, in ns of its time per call: the uprobe and uretprobe traps and
//! their programs, everything the target pays), and the BPF programs' own run time
//! (`run_time_ns/run_cnt` of `op_entry` + `op_return` with `kernel.bpf_stats_enabled=1`, in
//! a trial of its own), which a noisy machine moves far less.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use drainwatch_tests::fixture_bin;
use serde_json::{json, Value};

use crate::{
    median,
    throughput::{prog_ids, prog_stats, BPF_STATS},
    tracer::{Tracer, SETTLE_AFTER_ATTACH},
    Table,
};

/// `dw-fixture hot-op`, with its latest `calls N NS` line.
struct HotTarget {
    child: Child,
    latest: Arc<Mutex<(u64, u64)>>,
}

impl HotTarget {
    fn start() -> Self {
        let mut child = Command::new(fixture_bin())
            .arg("hot-op")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start dw-fixture hot-op");
        let stdout = child.stdout.take().expect("piped stdout");
        let latest = Arc::new(Mutex::new((0, 0)));
        let into = latest.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut words = line.split_whitespace();
                if words.next() != Some("calls") {
                    continue;
                }
                let mut n = || words.next().and_then(|w| w.parse::<u64>().ok());
                if let (Some(calls), Some(ns)) = (n(), n()) {
                    *into.lock().unwrap() = (calls, ns);
                }
            }
        });
        Self { child, latest }
    }

    /// Calls per second over `secs` from now (the target's own clock).
    fn rate(&self, secs: u64) -> f64 {
        let (c0, t0) = *self.latest.lock().unwrap();
        thread::sleep(Duration::from_secs(secs));
        let (c1, t1) = *self.latest.lock().unwrap();
        assert!(t1 > t0, "dw-fixture hot-op stopped reporting");
        (c1 - c0) as f64 / ((t1 - t0) as f64 / 1e9)
    }
}

impl Drop for HotTarget {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const OP: [&str; 2] = ["--op", "dw_hot_op"];

pub fn run(rounds: usize, secs: u64, table: &mut Table) -> Value {
    let target = HotTarget::start();
    let pid = target.child.id();
    // The loop reaches its pace first.
    thread::sleep(Duration::from_millis(500));
    let mut untraced = Vec::new();
    let mut traced = Vec::new();
    for round in 0..rounds {
        for with_op in [round % 2 == 1, round % 2 == 0] {
            let tracer = with_op.then(|| Tracer::drainwatch_with(pid, false, &OP));
            thread::sleep(SETTLE_AFTER_ATTACH);
            let rate = target.rate(secs);
            if let Some(tracer) = tracer {
                tracer.stop();
                traced.push(rate);
            } else {
                untraced.push(rate);
            }
            eprintln!(
                "dw-bench: round {}/{rounds} hot-op {:<9} {rate:>12.0} calls/s",
                round + 1,
                if with_op { "--op" } else { "untraced" }
            );
            thread::sleep(Duration::from_millis(300));
        }
    }
    let (base, with) = (median(&untraced), median(&traced));
    let ratio = with / base;
    let per_round: Vec<f64> = untraced.iter().zip(&traced).map(|(u, t)| t / u).collect();
    let target_ns = (1e9 / with - 1e9 / base).max(0.0);

    // BPF program run time per operation, in a trial of its own (the stats cost something).
    eprintln!("dw-bench: --op BPF stats trial (kernel.bpf_stats_enabled=1)");
    let stats_before = std::fs::read_to_string(BPF_STATS).unwrap_or_else(|_| "0".into());
    std::fs::write(BPF_STATS, "1").expect("enable kernel.bpf_stats_enabled");
    let tracer = Tracer::drainwatch_with(pid, false, &OP);
    thread::sleep(SETTLE_AFTER_ATTACH);
    let ids = prog_ids(tracer.pid());
    let before = prog_stats(&ids);
    thread::sleep(Duration::from_secs(secs));
    let after = prog_stats(&ids);
    tracer.stop();
    std::fs::write(BPF_STATS, stats_before.trim()).expect("restore kernel.bpf_stats_enabled");
    let delta = |name: &str| -> (u64, u64) {
        after
            .iter()
            .filter(|(_, (n, _, _))| n == name)
            .map(|(id, (_, ns, cnt))| {
                let (_, ns0, cnt0) = before.get(id).cloned().unwrap_or_default();
                (ns - ns0, cnt - cnt0)
            })
            .fold((0, 0), |(a, b), (ns, cnt)| (a + ns, b + cnt))
    };
    let (entry_ns, entry_cnt) = delta("op_entry");
    let (return_ns, return_cnt) = delta("op_return");
    let per = |ns: u64, cnt: u64| {
        if cnt == 0 {
            f64::NAN
        } else {
            ns as f64 / cnt as f64
        }
    };
    let bpf_ns = per(entry_ns, entry_cnt) + per(return_ns, return_cnt);

    let hooks = std::env::var("DRAINWATCH_HOOKS").unwrap_or_else(|_| "default".into());
    table.row(
        &format!(
            "op_throughput_ratio (dw_hot_op calls/s under watch --op ÷ untraced, median of \
             {rounds}, {secs}s each; {with:.0} ÷ {base:.0})"
        ),
        format!(
            "{ratio:.4} (rounds: {})",
            per_round
                .iter()
                .map(|x| format!("{x:.4}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        "(a few-instruction function: the worst case)",
    );
    table.row(
        "op_cost_ns (the target's time per operation: 1/traced − 1/untraced)",
        format!("{target_ns:.0}"),
        "",
    );
    table.row(
        &format!(
            "op_bpf_ns (op_entry + op_return run_time_ns/run_cnt; {entry_cnt} calls, hooks {hooks})"
        ),
        format!(
            "{bpf_ns:.0} ({:.0} + {:.0})",
            per(entry_ns, entry_cnt),
            per(return_ns, return_cnt)
        ),
        "",
    );
    json!({
        "op_throughput_ratio": ratio,
        "op_cost_ns": target_ns,
        "op_bpf_ns": bpf_ns,
        "ops": {
            "hooks": hooks,
            "calls_per_s_untraced": untraced,
            "calls_per_s_with_op": traced,
            "ratio_per_round": per_round,
            "bpf": {
                "op_entry": {"run_time_ns": entry_ns, "run_cnt": entry_cnt},
                "op_return": {"run_time_ns": return_ns, "run_cnt": return_cnt},
            },
        },
    })
}
