//! Loading and attaching the eBPF probe, and the userspace ends of its maps.
//!
//! Everything is owned by [`Probe`]: dropping it (normally, on error, or on Ctrl-C) closes
//! the program and link fds, so nothing stays attached after drainwatch exits. If drainwatch
//! is killed, the kernel closes the fds and detaches the programs the same way.

use std::path::Path;

use aya::{
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
    Ebpf, EbpfLoader,
};
use probe_common::{map_names, Counter, ProbeConfig, TargetInfo, DEFAULT_RING_BYTES};

use crate::{btf::Btf, tracefs::Format, Error, Result};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/drainwatch-probe"));

/// (program name in the object, tracepoint category, tracepoint name)
const TRACEPOINTS: [(&str, &str, &str); 4] = [
    ("signal_generate", "signal", "signal_generate"),
    ("sched_process_fork", "sched", "sched_process_fork"),
    ("sched_process_exec", "sched", "sched_process_exec"),
    ("sched_process_exit", "sched", "sched_process_exit"),
];

#[derive(Clone, Debug)]
pub struct ProbeOptions {
    pub follow_forks: bool,
    /// Ring-buffer size in bytes (a power of two, at least a page).
    pub ring_bytes: u32,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            follow_forks: true,
            ring_bytes: DEFAULT_RING_BYTES,
        }
    }
}

pub struct Probe {
    // Field order is drop order: maps and logger go before the programs they feed.
    events: RingBuf<MapData>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    ebpf: Ebpf,
    failures: Vec<String>,
}

/// Fills the load-time config from tracefs format files and kernel BTF.
pub fn probe_config(tracefs_root: &Path, follow_forks: bool) -> Result<ProbeConfig> {
    let signal = Format::read(tracefs_root, "signal", "signal_generate")?;
    let fork = Format::read(tracefs_root, "sched", "sched_process_fork")?;
    let exec = Format::read(tracefs_root, "sched", "sched_process_exec")?;
    let exit = Format::read(tracefs_root, "sched", "sched_process_exit")?;
    let task_exit_code_off = Btf::from_sys_fs()
        .and_then(|btf| btf.member_offset("task_struct", "exit_code"))
        .unwrap_or(0);
    if task_exit_code_off == 0 {
        log::warn!("kernel BTF has no task_struct.exit_code: exit codes will be reported as null");
    }
    Ok(ProbeConfig {
        self_tgid: std::process::id(),
        follow_forks: follow_forks.into(),
        signal_sig_off: signal.offset("sig", 4)?,
        signal_code_off: signal.offset("code", 4)?,
        signal_pid_off: signal.offset("pid", 4)?,
        signal_group_off: signal.offset("group", 4)?,
        signal_result_off: signal.offset("result", 4)?,
        fork_parent_pid_off: fork.offset("parent_pid", 4)?,
        fork_child_pid_off: fork.offset("child_pid", 4)?,
        exec_pid_off: exec.offset("pid", 4)?,
        exit_pid_off: exit.offset("pid", 4)?,
        exit_group_dead_off: exit.offset("group_dead", 1)?,
        task_exit_code_off,
        _pad: 0,
    })
}

/// Checks privileges up front, so the user gets the fix rather than a bare EPERM.
fn check_privileges() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    // CAP_PERFMON = 38, CAP_BPF = 39 (include/uapi/linux/capability.h).
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let needed = (1u64 << 38) | (1u64 << 39);
    if effective & needed == needed {
        Ok(())
    } else {
        Err(Error::NotPermitted)
    }
}

fn load_error(err: impl std::fmt::Display + std::fmt::Debug) -> Error {
    let text = format!("{err:#}");
    if text.contains("Operation not permitted") || format!("{err:?}").contains("EPERM") {
        Error::NotPermitted
    } else {
        Error::Load(text)
    }
}

impl Probe {
    /// Loads the object and attaches every tracepoint. A tracepoint that fails to attach is
    /// recorded in [`Probe::failures`] (the verdict becomes `incomplete`); failing to load
    /// at all is an error.
    pub fn load(tracefs_root: &Path, options: &ProbeOptions) -> Result<Self> {
        if OBJECT.is_empty() {
            return Err(Error::NoProbeObject);
        }
        check_privileges()?;
        let config = probe_config(tracefs_root, options.follow_forks)?;
        let mut ebpf = EbpfLoader::new()
            .override_global("CONFIG", &config, true)
            .map_max_entries(map_names::EVENTS, options.ring_bytes)
            .load(OBJECT)
            .map_err(load_error)?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(err) => {
                log::debug!("kernel-side log unavailable: {err}");
                None
            }
        };
        let mut failures = Vec::new();
        for (program, category, name) in TRACEPOINTS {
            if let Err(err) = attach(&mut ebpf, program, category, name) {
                if matches!(err, Error::NotPermitted) {
                    return Err(err);
                }
                log::warn!("probe {category}:{name} failed: {err}");
                failures.push(format!("{category}:{name}: {err}"));
            }
        }
        let events = ebpf
            .take_map(map_names::EVENTS)
            .ok_or_else(|| Error::Load("no EVENTS map in the object".into()))?;
        let events = RingBuf::try_from(events).map_err(load_error)?;
        Ok(Self {
            events,
            logger,
            ebpf,
            failures,
        })
    }

    /// Tracepoints that did not attach, as "category:name: reason".
    pub fn failures(&self) -> &[String] {
        &self.failures
    }

    pub fn events(&mut self) -> &mut RingBuf<MapData> {
        &mut self.events
    }

    /// Makes a tgid (or one of its threads) a target.
    pub fn add_target(&mut self, id: u32, tgid: u32) -> Result<()> {
        let map = self
            .ebpf
            .map_mut(map_names::TARGETS)
            .ok_or_else(|| Error::Load("no TARGETS map in the object".into()))?;
        let mut targets: HashMap<_, u32, TargetInfo> =
            HashMap::try_from(map).map_err(load_error)?;
        let info = TargetInfo {
            tgid,
            origin: probe_common::ORIGIN_USER,
        };
        targets.insert(id, info, 0).map_err(load_error)
    }

    /// Events the kernel could not put into the ring buffer (summed over CPUs).
    pub fn lost(&self) -> u64 {
        self.counter(Counter::Lost)
    }

    pub fn counter(&self, counter: Counter) -> u64 {
        let Some(map) = self.ebpf.map(map_names::COUNTERS) else {
            return 0;
        };
        let Ok(counters) = PerCpuArray::<_, u64>::try_from(map) else {
            return 0;
        };
        counters
            .get(&(counter as u32), 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }

    /// Moves kernel-side log records (aya-log) to the `log` crate; shown at `-v`.
    pub fn flush_log(&mut self) {
        if let Some(logger) = &mut self.logger {
            logger.flush();
        }
    }
}

fn attach(ebpf: &mut Ebpf, program: &str, category: &str, name: &str) -> Result<()> {
    let program: &mut TracePoint = ebpf
        .program_mut(program)
        .ok_or_else(|| Error::Load(format!("no program {program} in the object")))?
        .try_into()
        .map_err(load_error)?;
    program.load().map_err(load_error)?;
    program.attach(category, name).map_err(load_error)?;
    Ok(())
}
