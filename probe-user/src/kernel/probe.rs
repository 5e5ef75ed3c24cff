//! Loading the eBPF probe and attaching its lifecycle programs and the hook backend it is
//! given (kernel/backends/); the userspace ends of its maps are in probe/maps.rs.
//!
//! Everything is owned by [`Probe`]: dropping it (normally, on error, or on Ctrl-C) closes
//! the program and link fds, so nothing stays attached after drainwatch exits. If drainwatch
//! is killed, the kernel closes the fds and detaches the programs the same way.

use std::{
    any::Any,
    net::{IpAddr, SocketAddr},
    path::Path,
};

use aya::{
    maps::{Array, HashMap, MapData, PerCpuHashMap, PerCpuValues, RingBuf},
    Ebpf, EbpfLoader,
};
use probe_common::{
    latency::{self, LatencyHistogram, LATENCY_OVERFLOW_TGID},
    map_names, ProbeConfig, SockAddr, SockOffsets, DB_PORT_FLAG, DEFAULT_RING_BYTES, NO_OFFSET,
};

use crate::{
    kernel::{
        attach::{self, load_error},
        backends::{syscalls, Backend},
        btf,
        features::{check_privileges, LIFECYCLE_TRACEPOINTS},
        links::Links,
        tracefs::Format,
        uprobe::UprobeUnit,
        uprobe_multi::{self, LoadedObject},
    },
    Error, Result,
};

mod counters;
mod maps;
mod owned;
pub use maps::ConnSeed;
pub use owned::Probe;
use owned::BPF_NOEXIST;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/drainwatch-probe"));

#[derive(Clone, Debug)]
pub struct ProbeOptions {
    pub follow_forks: bool,
    /// Ring-buffer size in bytes (a power of two, at least a page).
    pub ring_bytes: u32,
    /// Watch sockets (connections, requests, database traffic), not only signals and exits.
    pub sockets: bool,
    /// Database ports and the protocol each speaks by default.
    pub db_ports: Vec<(u16, u8)>,
    /// `--db` addresses and the protocol each speaks by default (`probe_common::PROTO_*`).
    pub db_addrs: Vec<(SocketAddr, u8)>,
    /// Which hooks feed the socket side (kernel/backends/, docs/hooks.md).
    pub hooks: &'static Backend,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            follow_forks: true,
            ring_bytes: DEFAULT_RING_BYTES,
            sockets: true,
            db_ports: Vec::new(),
            db_addrs: Vec::new(),
            hooks: &syscalls::SYSCALLS,
        }
    }
}

/// The kernel's form of a socket address (`probe_common::SockAddr`).
pub fn to_wire_addr(addr: &SocketAddr) -> SockAddr {
    let mut out = SockAddr::empty();
    out.port = addr.port();
    match addr.ip() {
        IpAddr::V4(v4) => {
            out.family = libc::AF_INET as u16;
            out.addr[..4].copy_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out.family = libc::AF_INET6 as u16;
            out.addr = v6.octets();
        }
    }
    out
}

/// Fills the load-time config from tracefs format files and kernel BTF.
pub fn probe_config(tracefs_root: &Path, follow_forks: bool) -> Result<ProbeConfig> {
    let signal = Format::find(tracefs_root, "signal", "signal_generate")?;
    let fork = Format::find(tracefs_root, "sched", "sched_process_fork")?;
    let exec = Format::find(tracefs_root, "sched", "sched_process_exec")?;
    let exit = Format::find(tracefs_root, "sched", "sched_process_exit")?;
    let [exit_code, task_signal, signal_live, task_pid, task_comm, siginfo_code, family, num, dport, daddr, v6_daddr, sk_socket, socket_file, file_inode, inode_ino, task_flags, sk_type, unix_addr, unix_peer, socket_sk] =
        btf::kernel_member_offsets([
            ("task_struct", "exit_code"),
            ("task_struct", "signal"),
            ("signal_struct", "live"),
            ("task_struct", "pid"),
            ("task_struct", "comm"),
            ("kernel_siginfo", "si_code"),
            ("sock_common", "skc_family"),
            ("sock_common", "skc_num"),
            ("sock_common", "skc_dport"),
            ("sock_common", "skc_daddr"),
            ("sock_common", "skc_v6_daddr"),
            ("sock", "sk_socket"),
            ("socket", "file"),
            ("file", "f_inode"),
            ("inode", "i_ino"),
            ("task_struct", "flags"),
            ("sock", "sk_type"),
            ("unix_sock", "addr"),
            ("unix_sock", "peer"),
            ("socket", "sk"),
        ]);
    // The socket backend's reads (docs/hooks.md); unknown ones stay NO_OFFSET and the
    // backend refuses to load without them (see `Probe::load`).
    let or_none = |o: Option<u32>| o.unwrap_or(NO_OFFSET);
    let sock = SockOffsets {
        family: or_none(family),
        num: or_none(num),
        dport: or_none(dport),
        daddr: or_none(daddr),
        v6_daddr: or_none(v6_daddr),
        sk_socket: or_none(sk_socket),
        socket_file: or_none(socket_file),
        file_inode: or_none(file_inode),
        inode_ino: or_none(inode_ino),
        task_flags: or_none(task_flags),
        sk_type: or_none(sk_type),
        unix_addr: or_none(unix_addr),
        unix_peer: or_none(unix_peer),
        socket_sk: or_none(socket_sk),
    };
    let task_exit_code_off = exit_code.unwrap_or(0);
    if task_exit_code_off == 0 {
        log::warn!("kernel BTF has no task_struct.exit_code: exit codes will be reported as null");
    }
    // `group_dead` is in the tracepoint only on kernels after 6.12; before, the probe reads
    // `current->signal->live` (see probe_common::ProbeConfig).
    let exit_group_dead_off = if exit.has("group_dead") {
        exit.offset("group_dead", 1)?
    } else {
        NO_OFFSET
    };
    let (task_signal_off, signal_live_off) = match (task_signal, signal_live) {
        (Some(signal), Some(live)) => (signal, live),
        _ => (NO_OFFSET, NO_OFFSET),
    };
    if exit_group_dead_off == NO_OFFSET && task_signal_off == NO_OFFSET {
        log::warn!(
            "neither sched_process_exit.group_dead nor kernel BTF (signal_struct.live): a \
             multi-threaded target whose main thread exits first is taken to have exited then"
        );
    }
    Ok(ProbeConfig {
        ring_bytes: 0,
        self_tgid: std::process::id(),
        follow_forks: follow_forks.into(),
        signal_sig_off: signal.offset("sig", 4)?,
        signal_code_off: signal.offset("code", 4)?,
        signal_pid_off: signal.offset("pid", 4)?,
        signal_group_off: signal.offset("group", 4)?,
        signal_result_off: signal.offset("result", 4)?,
        signal_comm_off: signal.offset("comm", probe_common::COMM_LEN as u32)?,
        fork_parent_pid_off: fork.offset("parent_pid", 4)?,
        fork_child_pid_off: fork.offset("child_pid", 4)?,
        exec_pid_off: exec.offset("pid", 4)?,
        exit_pid_off: exit.offset("pid", 4)?,
        exit_group_dead_off,
        task_exit_code_off,
        task_signal_off,
        signal_live_off,
        task_pid_off: or_none(task_pid),
        task_comm_off: or_none(task_comm),
        siginfo_code_off: or_none(siginfo_code),
        sock,
    })
}

/// aya's loader, made first, before our own BTF reader runs ([`Loader::make`]).
///
/// aya 0.14's `EbpfLoader::new()` reads and parses all of the kernel's BTF (aya issue
/// #1172), which `.btf(None)` then drops: the object needs none (it has no CO-RE
/// relocations: tracepoint offsets and struct members come from our own reader,
/// kernel/btf.rs), and the API has no other constructor. Until 2026-12-07 it was made on a
/// thread beside our reader: both parses were in memory at once, drainwatch's peak RSS was
/// 31.5-33 MB instead of 24.4-25.8, and the overlap no longer saved attach time
/// (docs/bench.md, "Peak RSS at attach"). Made after our reader instead, its parse would
/// overlap the kernel BTF our reader keeps cached, for the same peak.
pub struct Loader(EbpfLoader<'static>);

impl Loader {
    pub fn make() -> Self {
        let mut loader = EbpfLoader::new();
        // Frees the parsed BTF now, before anything else is parsed.
        loader.btf(None);
        Self(loader)
    }

    fn into_inner<'a>(self) -> EbpfLoader<'a> {
        self.0
    }
}

impl Probe {
    /// Loads the object and attaches every tracepoint. A tracepoint that fails to attach is
    /// recorded in [`Probe::failures`] (the verdict becomes `incomplete`); failing to load
    /// at all is an error.
    pub fn load(tracefs_root: &Path, options: &ProbeOptions, loader: Loader) -> Result<Self> {
        if OBJECT.is_empty() {
            return Err(Error::NoProbeObject);
        }
        let started = std::time::Instant::now();
        if let Some(value) = uprobe_multi::env_refused() {
            return Err(Error::InvalidValue {
                what: uprobe_multi::ENV,
                value,
                hint: "set it to perf (every uprobe a perf event) or unset it",
            });
        }
        check_privileges()?;
        let mut config = probe_config(tracefs_root, options.follow_forks)?;
        config.ring_bytes = options.ring_bytes;
        if options.sockets && !cfg!(target_arch = "x86_64") {
            return Err(Error::Load(
                "connection tracking reads x86_64 syscall registers; use --no-sockets here".into(),
            ));
        }
        let mut loader = loader.into_inner();
        let mut ebpf = loader
            .override_global("CONFIG", &config, true)
            .map_max_entries(map_names::EVENTS, options.ring_bytes)
            .map_max_entries(map_names::REQUEST_LATENCY, latency_entries(cpus()?))
            .map_max_entries(map_names::REQUEST_COUNTS, counts_entries(cpus()?))
            .load(OBJECT)
            .map_err(load_error)?;
        // Asked now, while kernel BTF is at hand; the units' programs are loaded later from
        // the object and these maps where the kernel links uprobe_multi programs.
        if uprobe_multi::supported() {
            LoadedObject::register(OBJECT, &ebpf)
                .map_err(|e| Error::Load(format!("keeping the probe's maps: {e}")))?;
        }
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(err) => {
                log::debug!("kernel-side log unavailable: {err}");
                None
            }
        };
        let mut failures = Vec::new();
        let mut links = Links::default();
        let socket_hooks = options.sockets && options.hooks.by_socket();
        if socket_hooks {
            let sock = config.sock;
            let needed = [
                sock.family,
                sock.num,
                sock.dport,
                sock.daddr,
                sock.v6_daddr,
                sock.task_flags,
                sock.sk_type,
                sock.unix_addr,
                sock.unix_peer,
            ];
            if needed.contains(&NO_OFFSET) {
                return Err(Error::Load(
                    "the socket hooks need struct sock and task_struct offsets from kernel BTF, \
                     which this kernel's BTF lacks: unset DRAINWATCH_HOOKS"
                        .into(),
                ));
            }
        }
        if options.sockets {
            fill_db_maps(&mut ebpf, options)?;
            reserve_latency_overflow(&mut ebpf)?;
        }
        attach_lifecycle(&mut ebpf, &config, &mut links, &mut failures)?;
        if options.sockets {
            options.hooks.attach(&mut ebpf, &mut links, &mut failures)?;
        }
        // Not "attached": tools and tests wait for the "drainwatch: attached to ..." line,
        // which comes after the targets and their existing connections are tracked (see
        // `Session::attach`). A debug line saying "attached" here, before any of that, let
        // them send traffic too early: a pre-existing db connection's queries went unseen.
        log::debug!(
            "probe loaded, {} tracepoint links up in {:?}; targets not yet tracked",
            links.len(),
            started.elapsed()
        );
        // Every question to kernel BTF is asked by now (features, backends, offsets).
        btf::release_kernel();
        let events = ebpf
            .take_map(map_names::EVENTS)
            .ok_or_else(|| Error::Load("no EVENTS map in the object".into()))?;
        let events = RingBuf::try_from(events).map_err(load_error)?;
        Ok(Self {
            events,
            logger,
            ebpf,
            failures,
            links,
            hooks: options.hooks,
            units: Vec::new(),
        })
    }

    /// The hooks that feed the socket side (the report's `coverage.hooks`).
    pub fn hooks(&self) -> &'static Backend {
        self.hooks
    }

    /// Holds a uprobe unit (one of a kind) from now until close.
    pub fn install<U: UprobeUnit>(&mut self, unit: U) {
        self.units
            .retain(|held| !(held.as_ref() as &dyn Any).is::<U>());
        self.units.push(Box::new(unit));
    }

    /// The installed unit of type `U`, with the object it attaches into.
    pub fn unit_mut<U: UprobeUnit>(&mut self) -> Option<(&mut U, &mut Ebpf)> {
        let unit = self
            .units
            .iter_mut()
            .find_map(|held| (held.as_mut() as &mut dyn Any).downcast_mut::<U>())?;
        Some((unit, &mut self.ebpf))
    }

    pub fn unit<U: UprobeUnit>(&self) -> Option<(&U, &Ebpf)> {
        let unit = self
            .units
            .iter()
            .find_map(|held| (held.as_ref() as &dyn Any).downcast_ref::<U>())?;
        Some((unit, &self.ebpf))
    }

    /// Tracepoints that did not attach, as "category:name: reason".
    pub fn failures(&self) -> &[String] {
        &self.failures
    }

    /// Something watched only in part since load (a followed process that could not be
    /// surveyed): listed with the failures, so the verdict is `incomplete`, never `clean`.
    pub fn note_failure(&mut self, what: String) {
        self.failures.push(what);
    }

    pub fn events(&mut self) -> &mut RingBuf<MapData> {
        &mut self.events
    }

    /// Detaches everything (together: see [`Links::detach`]) and unloads.
    pub fn close(mut self) {
        let started = std::time::Instant::now();
        let mut links = std::mem::take(&mut self.links);
        for unit in &mut self.units {
            links.append(unit.take_links());
        }
        let count = links.detach();
        LoadedObject::unregister();
        drop(self);
        log::debug!("detached {count} tracepoints in {:?}", started.elapsed());
    }

    /// Moves kernel-side log records (aya-log) to the `log` crate; shown at `-v`.
    pub fn flush_log(&mut self) {
        if let Some(logger) = &mut self.logger {
            logger.flush();
        }
    }
}

/// Attaches the four lifecycle programs (probe-ebpf's lifecycle.rs; docs/hooks.md,
/// "Lifecycle hooks"). As raw tracepoints (`raw_NAME`) where kernel BTF gave the offsets
/// their arguments are read at: BPF_RAW_TRACEPOINT_OPEN makes no perf event, and a perf
/// event's open waits on the kernel's `event_mutex`, which the teardown of a drainwatch that
/// has just exited (host/detach.rs) holds across an RCU grace period per tracepoint and
/// uprobe: 100-700 ms of a back-to-back attach (docs/bench.md, "Where attach goes").
/// Otherwise, or if the raw attach fails, as classic tracepoints (the program named after
/// its tracepoint, reading the record). A tracepoint attached neither way is a failure: the
/// verdict becomes `incomplete`.
fn attach_lifecycle(
    ebpf: &mut Ebpf,
    config: &ProbeConfig,
    links: &mut Links,
    failures: &mut Vec<String>,
) -> Result<()> {
    let raw = ![
        config.task_pid_off,
        config.task_comm_off,
        config.siginfo_code_off,
    ]
    .contains(&NO_OFFSET);
    for (category, name) in LIFECYCLE_TRACEPOINTS {
        if raw {
            let program = format!("raw_{name}");
            match attach::raw_tracepoint(ebpf, &program, name, links) {
                Ok(()) => continue,
                Err(Error::NotPermitted) => return Err(Error::NotPermitted),
                Err(err) => log::debug!("raw tracepoint {name}: {err}; the tracepoint instead"),
            }
        }
        if let Err(err) = attach::tracepoint(ebpf, name, category, &[name], links) {
            if matches!(err, Error::NotPermitted) {
                return Err(err);
            }
            log::warn!("probe {category}:{name} failed: {err}");
            failures.push(format!("{category}:{name}: {err}"));
        }
    }
    Ok(())
}

/// The CPUs a per-CPU map holds a copy for (`/sys/devices/system/cpu/possible`).
fn cpus() -> Result<usize> {
    aya::util::nr_cpus().map_err(|(what, err)| Error::Load(format!("{what}: {err}")))
}

/// Kernel memory the per-CPU latency histograms may take, preallocated at load.
const LATENCY_MAP_BYTES: usize = 16 << 20;

/// How many processes get a latency histogram of their own with `cpus` copies each
/// (probe-ebpf's `REQUEST_LATENCY`, per CPU and preallocated: the kernel calls run-time
/// allocated per-CPU hash maps unsafe in tracepoint programs). Up to 16 CPUs, all of
/// [`latency::MAX_LATENCY_TARGETS`]; beyond, fewer (64 CPUs: 64), never under 16; the
/// processes that find no room share the overflow histogram, reported apart.
fn latency_entries(cpus: usize) -> u32 {
    let each = std::mem::size_of::<LatencyHistogram>() * cpus.max(1);
    (LATENCY_MAP_BYTES / each).clamp(16, latency::MAX_LATENCY_TARGETS as usize) as u32
}

/// Kernel memory the per-CPU request counters may take, preallocated at load.
const COUNTS_MAP_BYTES: usize = 2 << 20;

/// How many processes get per-CPU request counters (probe-ebpf's `REQUEST_COUNTS`,
/// preallocated like the histograms): one per histogram up to 60 CPUs, never under 16.
/// The processes that find no room count in their `TARGETS` entry, which userspace adds in
/// (kernel/probe/counters.rs): all that costs them is the per-CPU copies' speed.
fn counts_entries(cpus: usize) -> u32 {
    let each = std::mem::size_of::<probe_common::RequestCounters>() * cpus.max(1);
    (COUNTS_MAP_BYTES / each).clamp(16, latency::MAX_LATENCY_TARGETS as usize) as u32
}

/// The shared histogram of processes that find the latency map full: made now, while
/// there is room (the kernel's fallback can then not fail).
fn reserve_latency_overflow(ebpf: &mut Ebpf) -> Result<()> {
    let map = ebpf
        .map_mut(map_names::REQUEST_LATENCY)
        .ok_or_else(|| Error::Load("no REQUEST_LATENCY map in the object".into()))?;
    let mut histograms: PerCpuHashMap<_, u32, LatencyHistogram> =
        PerCpuHashMap::try_from(map).map_err(load_error)?;
    let zero = LatencyHistogram {
        counts: [0; probe_common::latency::LATENCY_SLOTS],
    };
    let zeros =
        PerCpuValues::try_from(vec![zero; cpus()?]).map_err(|err| Error::Load(err.to_string()))?;
    histograms
        .insert(LATENCY_OVERFLOW_TGID, zeros, BPF_NOEXIST)
        .map_err(load_error)
}

fn fill_db_maps(ebpf: &mut Ebpf, options: &ProbeOptions) -> Result<()> {
    let map = ebpf
        .map_mut(map_names::DB_PORTS)
        .ok_or_else(|| Error::Load("no DB_PORTS map in the object".into()))?;
    let mut ports: Array<_, u8> = Array::try_from(map).map_err(load_error)?;
    for (port, proto) in &options.db_ports {
        ports
            .set(*port as u32, DB_PORT_FLAG | proto, 0)
            .map_err(load_error)?;
    }
    let map = ebpf
        .map_mut(map_names::DB_ADDRS)
        .ok_or_else(|| Error::Load("no DB_ADDRS map in the object".into()))?;
    let mut addrs: HashMap<_, SockAddr, u8> = HashMap::try_from(map).map_err(load_error)?;
    for (addr, proto) in &options.db_addrs {
        addrs
            .insert(to_wire_addr(addr), *proto, 0)
            .map_err(load_error)?;
    }
    Ok(())
}

#[cfg(test)]
mod latency_map_tests {
    use super::*;

    #[test]
    fn every_process_has_a_histogram_up_to_16_cpus_and_fewer_beyond() {
        let all = latency::MAX_LATENCY_TARGETS;
        assert_eq!(latency_entries(1), all);
        assert_eq!(latency_entries(16), all);
        assert_eq!(latency_entries(64), 64);
        assert_eq!(latency_entries(4096), 16);
    }

    #[test]
    fn request_counters_have_room_for_every_histogram_up_to_60_cpus() {
        let all = latency::MAX_LATENCY_TARGETS;
        assert_eq!(counts_entries(2), all);
        assert_eq!(counts_entries(60), all);
        assert_eq!(counts_entries(64), 240);
        assert_eq!(counts_entries(4096), 16);
    }
}

#[cfg(test)]
mod object_tests {
    use super::*;

    /// kernel/uprobe_multi.rs loads the uprobe programs from this object without CO-RE
    /// relocation (aya relocates against kernel BTF; that loader does not, and falls back to
    /// perf-event uprobes on an object that needs it).
    #[test]
    fn the_object_needs_no_core_relocation() {
        assert!(!OBJECT.is_empty(), "built without the probe object");
        assert!(!uprobe_multi::has_core_relocations(OBJECT));
    }
}
