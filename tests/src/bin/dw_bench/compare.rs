//! `dw-bench compare BIN...`: drainwatch builds side by side on one echo server, for a change
//! to the programs' hot path (docs/bench.md). Each round runs every build once, in a rotated
//! order, and the server untraced: its throughput, the server's CPU per request, and, with
//! `kernel.bpf_stats_enabled` on for the whole comparison, each build's program time per
//! request and per hit. Figures are medians over rounds; the rotation spreads the machine's drift
//! between rounds over every build.

use std::{collections::BTreeMap, path::PathBuf, thread};

use drainwatch_tests::Server;
use serde_json::{json, Value};

use crate::{
    cpu::CpuGroup,
    median,
    throughput::{per_hit, BPF_STATS, CONNS},
    tracer::{pingpong, Tracer, QUIET_AFTER_DETACH, SETTLE_AFTER_ATTACH},
    Table,
};

/// One build's samples over the rounds.
#[derive(Default)]
struct Samples {
    rps: Vec<f64>,
    cpu_ns: Vec<f64>,
    program_ns: Vec<f64>,
    per_hit: BTreeMap<String, Vec<f64>>,
}

/// Runs the comparison of the drainwatch binaries `bins` ("untraced" is added first).
pub fn run(bins: &[PathBuf], rounds: usize, secs: u64, table: &mut Table) -> Value {
    if let Some(bin) = bins.iter().find(|bin| !bin.is_file()) {
        eprintln!("dw-bench compare: {} is no file", bin.display());
        std::process::exit(2);
    }
    let server = Server::start(&[]);
    let cpu = CpuGroup::new("dw-bench-compare", server.pid)
        .map_err(|e| eprintln!("dw-bench: no CPU time per request: {e}"))
        .ok();
    let stats_before = std::fs::read_to_string(BPF_STATS).unwrap_or_else(|_| "0".into());
    std::fs::write(BPF_STATS, "1").expect("enable kernel.bpf_stats_enabled");
    // Slot 0 is the untraced server; slot i + 1 is bins[i].
    let mut samples: Vec<Samples> = (0..=bins.len()).map(|_| Samples::default()).collect();
    for round in 0..rounds {
        for i in 0..samples.len() {
            let slot = (i + round) % samples.len();
            let bin = slot.checked_sub(1).map(|b| bins[b].as_path());
            let sample = &mut samples[slot];
            let tracer = bin.map(|bin| {
                eprintln!("dw-bench: compare round {round}: {}", bin.display());
                let tracer = Tracer::drainwatch_from(bin, server.pid, false, &[]);
                thread::sleep(SETTLE_AFTER_ATTACH);
                tracer
            });
            let cpu_before = cpu.as_ref().map(CpuGroup::used_ns);
            let rps = match &tracer {
                None => pingpong(server.port, CONNS, secs),
                Some(tracer) => {
                    let (rps, hits, _, per_request) = per_hit(tracer, server.port, secs);
                    sample.program_ns.push(per_request);
                    for (name, ns) in hits {
                        let ns = ns.as_f64().unwrap_or(f64::NAN);
                        sample.per_hit.entry(name).or_default().push(ns);
                    }
                    rps
                }
            };
            if let (Some(cpu), Some(before)) = (&cpu, cpu_before) {
                let requests = (rps * secs as f64).max(1.0);
                sample
                    .cpu_ns
                    .push((cpu.used_ns() - before) as f64 / requests);
            }
            sample.rps.push(rps);
            if let Some(tracer) = tracer {
                tracer.stop();
                thread::sleep(QUIET_AFTER_DETACH);
            }
        }
    }
    std::fs::write(BPF_STATS, stats_before.trim()).expect("restore kernel.bpf_stats_enabled");
    let untraced_rps = median(&samples[0].rps);
    let untraced_cpu = median(&samples[0].cpu_ns);
    table.row("compare: untraced req/s", format!("{untraced_rps:.0}"), "");
    table.row(
        "compare: untraced CPU ns/request",
        format!("{untraced_cpu:.0}"),
        "",
    );
    let mut builds = Vec::new();
    for (bin, sample) in bins.iter().zip(&samples[1..]) {
        let name = bin.display().to_string();
        let ratio = median(&sample.rps) / untraced_rps;
        let cpu_added = median(&sample.cpu_ns) - untraced_cpu;
        let program = median(&sample.program_ns);
        let per_hit: BTreeMap<&String, f64> = sample
            .per_hit
            .iter()
            .map(|(name, ns)| (name, median(ns)))
            .collect();
        table.row(
            &format!("compare: {name} overhead_ratio"),
            format!("{ratio:.3}"),
            "",
        );
        table.row(
            &format!("compare: {name} CPU ns/request added"),
            format!("{cpu_added:.0}"),
            "",
        );
        table.row(
            &format!("compare: {name} program ns/request"),
            format!("{program:.0}"),
            "",
        );
        // The data-path programs (the socket tracepoints', the fexit programs', the syscall
        // hooks'): the hits a request makes.
        let data_path: Vec<String> = per_hit
            .iter()
            .filter(|(name, _)| ["send", "recv", "sys_e"].iter().any(|n| name.contains(n)))
            .map(|(name, ns)| format!("{name} {ns:.1}"))
            .collect();
        table.row(&format!("compare: {name} ns/hit"), data_path.join(", "), "");
        builds.push(json!({
            "bin": name,
            "overhead_ratio": ratio,
            "cpu_ns_per_request_added": cpu_added,
            "program_ns_per_request": program,
            "program_ns_per_hit": per_hit,
        }));
    }
    json!({ "compare": { "rounds": rounds, "untraced_rps": untraced_rps, "builds": builds } })
}
