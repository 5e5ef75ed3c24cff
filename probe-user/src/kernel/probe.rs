//! Loading and attaching the eBPF probe, and the userspace ends of its maps.
//!
//! Everything is owned by [`Probe`]: dropping it (normally, on error, or on Ctrl-C) closes
//! the program and link fds, so nothing stays attached after drainwatch exits. If drainwatch
//! is killed, the kernel closes the fds and detaches the programs the same way.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
};

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, ProgramArray, RingBuf},
    programs::{BtfTracePoint, FExit, ProgramFd, RawTracePoint, TracePoint},
    Ebpf, EbpfLoader,
};
use probe_common::{
    latency::{LatencyHistogram, LATENCY_OVERFLOW_TGID},
    map_names, ConnKey, ConnState, Counter, Pending, ProbeConfig, RequestCounters, SockAddr,
    SockOffsets, TargetInfo, COMM_LEN, CONN_EXISTED, CONN_UNKNOWN, DB_PORT_FLAG,
    DEFAULT_RING_BYTES, NO_OFFSET,
};

use crate::{
    kernel::btf,
    kernel::hooks::Hooks,
    kernel::links::Links,
    kernel::tls::{TlsHooks, TlsLibrary},
    kernel::tracefs::Format,
    Error, Result,
};

/// `BPF_NOEXIST` (include/uapi/linux/bpf.h): insert only if the key is absent.
const BPF_NOEXIST: u64 = 1;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/drainwatch-probe"));

/// (program name in the object, tracepoint category, tracepoints it attaches to)
const LIFECYCLE: [(&str, &str, &[&str]); 4] = [
    ("signal_generate", "signal", &["signal_generate"]),
    ("sched_process_fork", "sched", &["sched_process_fork"]),
    ("sched_process_exec", "sched", &["sched_process_exec"]),
    ("sched_process_exit", "sched", &["sched_process_exit"]),
];

/// The program each watched syscall of a target is handed to by `raw_sys_enter`, with the
/// x86_64 syscall numbers it serves (arch/x86/entry/syscalls/syscall_64.tbl). Their exits
/// all go through `raw_sys_exit`.
const ENTER_PROGRAMS: [(&str, &[u32]); 13] = [
    ("sys_enter_read", &[0]),
    ("sys_enter_write", &[1]),
    ("sys_enter_close", &[3]),
    ("sys_enter_readv", &[19]),
    ("sys_enter_writev", &[20]),
    ("sys_enter_dup", &[32, 33, 292]), // dup, dup2, dup3
    ("sys_enter_connect", &[42]),
    ("sys_enter_accept", &[43, 288]), // accept, accept4
    ("sys_enter_sendto", &[44]),
    ("sys_enter_recvfrom", &[45]),
    ("sys_enter_sendmsg", &[46]),
    ("sys_enter_recvmsg", &[47]),
    ("sys_enter_fcntl", &[72]),
];

/// The two programs attached to raw_syscalls (include/trace/events/syscalls.h).
const RAW_SYSCALLS: [(&str, &str); 2] =
    [("raw_sys_enter", "sys_enter"), ("raw_sys_exit", "sys_exit")];

#[derive(Clone, Debug)]
pub struct ProbeOptions {
    pub follow_forks: bool,
    /// Ring-buffer size in bytes (a power of two, at least a page).
    pub ring_bytes: u32,
    /// Watch sockets (connections, requests, database traffic), not only signals and exits.
    pub sockets: bool,
    /// Database ports and the protocol each speaks by default.
    pub db_ports: Vec<(u16, u8)>,
    /// Database addresses named with `--db`.
    /// `--db` addresses and the protocol each speaks by default (`probe_common::PROTO_*`).
    pub db_addrs: Vec<(SocketAddr, u8)>,
    /// Which hooks feed the socket side (docs/hooks.md).
    pub hooks: Hooks,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            follow_forks: true,
            ring_bytes: DEFAULT_RING_BYTES,
            sockets: true,
            db_ports: Vec::new(),
            db_addrs: Vec::new(),
            hooks: Hooks::Syscalls,
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

pub struct Probe {
    // Field order is drop order: maps and logger go before the programs they feed, links
    // (detaching) before the programs they attach.
    events: RingBuf<MapData>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    /// Every attachment, so that [`Probe::close`] can take them down together.
    links: Links,
    /// The uprobes on the targets' TLS libraries (kernel/tls.rs).
    tls: TlsHooks,
    ebpf: Ebpf,
    failures: Vec<String>,
    hooks: Hooks,
}

/// Fills the load-time config from tracefs format files and kernel BTF.
pub fn probe_config(tracefs_root: &Path, follow_forks: bool) -> Result<ProbeConfig> {
    let signal = Format::read(tracefs_root, "signal", "signal_generate")?;
    let fork = Format::read(tracefs_root, "sched", "sched_process_fork")?;
    let exec = Format::read(tracefs_root, "sched", "sched_process_exec")?;
    let exit = Format::read(tracefs_root, "sched", "sched_process_exit")?;
    let [exit_code, task_signal, signal_live, family, num, dport, daddr, v6_daddr, sk_socket, socket_file, file_inode, inode_ino, task_flags, sk_type, unix_addr, unix_peer, socket_sk] =
        btf::kernel_member_offsets([
            ("task_struct", "exit_code"),
            ("task_struct", "signal"),
            ("signal_struct", "live"),
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
        fork_parent_pid_off: fork.offset("parent_pid", 4)?,
        fork_child_pid_off: fork.offset("child_pid", 4)?,
        exec_pid_off: exec.offset("pid", 4)?,
        exit_pid_off: exit.offset("pid", 4)?,
        exit_group_dead_off,
        task_exit_code_off,
        task_signal_off,
        signal_live_off,
        sock,
    })
}

/// Checks privileges up front, so the user gets the fix rather than a bare EPERM.
pub fn check_privileges() -> Result<()> {
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
        let started = std::time::Instant::now();
        check_privileges()?;
        let mut config = probe_config(tracefs_root, options.follow_forks)?;
        config.ring_bytes = options.ring_bytes;
        if options.sockets && !cfg!(target_arch = "x86_64") {
            return Err(Error::Load(
                "connection tracking reads x86_64 syscall registers; use --no-sockets here".into(),
            ));
        }
        // No kernel BTF for aya: the object has no CO-RE relocations (tracepoint offsets come
        // from tracefs, the one struct field from our own reader), and parsing vmlinux BTF
        // a second time was the largest part of drainwatch's peak memory.
        let mut ebpf = EbpfLoader::new()
            .btf(None)
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
            if !socket_hooks {
                if let Err(err) = install_db_io(&mut ebpf) {
                    failures.push(format!("db_io: {err}"));
                }
            }
        }
        for (program, category, names) in LIFECYCLE {
            if let Err(err) = attach(&mut ebpf, program, category, names, &mut links) {
                if matches!(err, Error::NotPermitted) {
                    return Err(err);
                }
                log::warn!("probe {category}:{program} failed: {err}");
                failures.push(format!("{category}:{program}: {err}"));
            }
        }
        if socket_hooks {
            attach_socket_hooks(&mut ebpf, options.hooks, &mut links, &mut failures)?;
        }
        if options.sockets && !socket_hooks {
            // The dispatch table first: a raw_sys_enter attached before it would miss the
            // first syscalls.
            for (program, numbers) in ENTER_PROGRAMS {
                if let Err(err) = install_enter_program(&mut ebpf, program, numbers) {
                    log::warn!("probe {program} failed: {err}");
                    failures.push(format!("raw_syscalls:{program}: {err}"));
                }
            }
            for (program, tracepoint) in RAW_SYSCALLS {
                if let Err(err) = attach_raw(&mut ebpf, program, tracepoint, &mut links) {
                    if matches!(err, Error::NotPermitted) {
                        return Err(err);
                    }
                    log::warn!("probe raw_syscalls:{tracepoint} failed: {err}");
                    failures.push(format!("raw_syscalls:{tracepoint}: {err}"));
                }
            }
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
            tls: TlsHooks::default(),
        })
    }

    /// The hooks that feed the socket side (the report's `coverage.hooks`).
    pub fn hooks(&self) -> Hooks {
        self.hooks
    }

    /// Hooks the TLS libraries a target maps now and did not before (kernel/tls.rs);
    /// returns those newly found.
    pub fn attach_tls(&mut self, tgid: u32) -> Vec<TlsLibrary> {
        self.tls.attach(&mut self.ebpf, tgid)
    }

    /// Every TLS library found in the targets so far, hooked or not.
    pub fn tls_libraries(&self) -> &[TlsLibrary] {
        self.tls.libraries()
    }

    /// Tracepoints that did not attach, as "category:name: reason".
    pub fn failures(&self) -> &[String] {
        &self.failures
    }

    pub fn events(&mut self) -> &mut RingBuf<MapData> {
        &mut self.events
    }

    /// A local TCP port a target listens on (the socket hooks call a socket first seen
    /// there accepted: `client`).
    pub fn add_listen_port(&mut self, port: u16) -> Result<()> {
        let map = self
            .ebpf
            .map_mut(map_names::LISTEN_PORTS)
            .ok_or_else(|| Error::Load("no LISTEN_PORTS map in the object".into()))?;
        let mut ports: Array<_, u8> = Array::try_from(map).map_err(load_error)?;
        ports.set(port as u32, 1, 0).map_err(load_error)
    }

    /// Makes a tgid (or one of its threads) a target.
    pub fn add_target(&mut self, id: u32, tgid: u32) -> Result<()> {
        // The bitmap first: the kernel looks in TARGETS only for pids whose bit is set.
        if let Some((word, mask)) = probe_common::target_bit(id) {
            let map = self
                .ebpf
                .map_mut(map_names::USER_TARGET_BITS)
                .ok_or_else(|| Error::Load("no USER_TARGET_BITS map in the object".into()))?;
            let mut bits: Array<_, u64> = Array::try_from(map).map_err(load_error)?;
            // Userspace is this map's only writer (the kernel has its own), so a plain
            // read-modify-write is safe.
            let old = bits.get(&word, 0).map_err(load_error)?;
            bits.set(word, old | mask, 0).map_err(load_error)?;
        }
        let map = self
            .ebpf
            .map_mut(map_names::TARGETS)
            .ok_or_else(|| Error::Load("no TARGETS map in the object".into()))?;
        let mut targets: HashMap<_, u32, TargetInfo> =
            HashMap::try_from(map).map_err(load_error)?;
        let info = TargetInfo::new(tgid, probe_common::ORIGIN_USER);
        // BPF_NOEXIST: an entry the kernel made already (a followed fork, or the tgid's own
        // entry when its main thread is added) holds counters that must not be reset.
        match targets.insert(id, info, BPF_NOEXIST) {
            Ok(()) => Ok(()),
            Err(_) if targets.get(&id, 0).is_ok() => Ok(()),
            Err(err) => Err(load_error(err)),
        }
    }

    /// The kernel's request counters of a target process; `None` once it has exited.
    pub fn request_counters(&self, tgid: u32) -> Option<RequestCounters> {
        let map = self.ebpf.map(map_names::TARGETS)?;
        let targets = HashMap::<_, u32, TargetInfo>::try_from(map).ok()?;
        targets.get(&tgid, 0).ok().map(|info| info.requests)
    }

    /// Answered requests by latency bucket, per target process (tgid; the tgid
    /// [`LATENCY_OVERFLOW_TGID`] holds those of processes that found the map full); the last
    /// slot of each is the largest latency seen (µs). See `probe_common::latency`.
    pub fn request_latency(&self) -> Option<Vec<(u32, Vec<u64>)>> {
        let map = self.ebpf.map(map_names::REQUEST_LATENCY)?;
        let histograms = HashMap::<_, u32, LatencyHistogram>::try_from(map).ok()?;
        let mut out: Vec<(u32, Vec<u64>)> = histograms
            .iter()
            .filter_map(|entry| entry.ok())
            .filter(|(_, h)| h.counts.iter().any(|&c| c != 0))
            .map(|(tgid, h)| (tgid, h.counts.to_vec()))
            .collect();
        out.sort_by_key(|(tgid, _)| *tgid);
        Some(out)
    }

    /// The latency histogram of one process, as [`Probe::request_latency`] reads them.
    pub fn request_latency_of(&self, tgid: u32) -> Option<Vec<u64>> {
        let map = self.ebpf.map(map_names::REQUEST_LATENCY)?;
        let histograms = HashMap::<_, u32, LatencyHistogram>::try_from(map).ok()?;
        histograms.get(&tgid, 0).ok().map(|h| h.counts.to_vec())
    }

    /// Forgets the latency histogram of a process that exited, once it has been read: its
    /// room goes to the next process (the kernel never removes one).
    pub fn forget_latency(&mut self, tgid: u32) {
        if tgid == LATENCY_OVERFLOW_TGID {
            return;
        }
        if let Some(map) = self.ebpf.map_mut(map_names::REQUEST_LATENCY) {
            if let Ok(mut histograms) = HashMap::<_, u32, LatencyHistogram>::try_from(map) {
                let _ = histograms.remove(&tgid);
            }
        }
    }

    /// Whether the kernel's connection map says a request is in flight on a connection.
    /// A connection added `unknown` has had traffic since (the kernel clears the flag at
    /// its first send or receive), or is gone.
    pub fn had_traffic(&self, key: ConnKey) -> bool {
        let Some(map) = self.ebpf.map(map_names::CONNS) else {
            return false;
        };
        let Ok(conns) = HashMap::<_, ConnKey, ConnState>::try_from(map) else {
            return false;
        };
        conns
            .get(&key, 0)
            .map_or(true, |state| state.flags & CONN_UNKNOWN == 0)
    }

    pub fn request_in_flight(&self, key: ConnKey) -> bool {
        let Some(map) = self.ebpf.map(map_names::CONNS) else {
            return false;
        };
        let Ok(conns) = HashMap::<_, ConnKey, ConnState>::try_from(map) else {
            return false;
        };
        conns
            .get(&key, 0)
            .is_ok_and(|state| state.request_in_flight != 0)
    }

    /// The request in flight on a connection, by the kernel's map: `None` when there is
    /// none; `Some(None)` when its start is unknown (in flight at attach), else its ktime.
    pub fn request_since(&self, key: ConnKey) -> Option<Option<u64>> {
        let map = self.ebpf.map(map_names::CONNS)?;
        let conns = HashMap::<_, ConnKey, ConnState>::try_from(map).ok()?;
        let state = conns.get(&key, 0).ok()?;
        (state.request_in_flight != 0)
            .then_some((state.request_since_ns != 0).then_some(state.request_since_ns))
    }

    /// Tracks a connection that existed before attach: its primary fd, and the fds that
    /// duplicate it (same socket inode).
    /// `busy`: a client connection whose request may be in flight: the kernel ends it at
    /// the server's next send, with an unknown start (0). Returns false when the kernel
    /// already tracks the fd (it was accepted or connected after the probe attached): its
    /// entry, with any request it counted, is kept.
    pub fn add_conn(
        &mut self,
        key: ConnKey,
        aliases: &[u32],
        role: u8,
        proto: u8,
        busy: bool,
        unknown: bool,
    ) -> Result<bool> {
        let map = self
            .ebpf
            .map_mut(map_names::CONNS)
            .ok_or_else(|| Error::Load("no CONNS map in the object".into()))?;
        let mut conns: HashMap<_, ConnKey, ConnState> =
            HashMap::try_from(map).map_err(load_error)?;
        let mut state = ConnState::new(role, proto, key.fd);
        state.flags = CONN_EXISTED | if unknown { CONN_UNKNOWN } else { 0 };
        state.request_in_flight = busy as u8;
        state.aliases = aliases.len().min(u8::MAX as usize) as u8;
        if conns.insert(key, state, BPF_NOEXIST).is_err() {
            if conns.get(&key, 0).is_ok() {
                return Ok(false);
            }
            return Err(Error::Load(format!(
                "cannot track fd {} of {}: the connection map is full",
                key.fd, key.tgid
            )));
        }
        for &fd in aliases {
            let mut alias = state;
            alias.aliases = 0;
            conns
                .insert(ConnKey { tgid: key.tgid, fd }, alias, 0)
                .map_err(load_error)?;
        }
        Ok(true)
    }

    /// Records a syscall that a thread was already blocked in at attach (from
    /// /proc/TGID/task/PID/syscall), so that its exit is understood.
    pub fn add_pending(&mut self, pid_tgid: u64, pending: Pending) -> Result<()> {
        let map = self
            .ebpf
            .map_mut(map_names::PENDING)
            .ok_or_else(|| Error::Load("no PENDING map in the object".into()))?;
        let mut map: HashMap<_, u64, Pending> = HashMap::try_from(map).map_err(load_error)?;
        map.insert(pid_tgid, pending, 0).map_err(load_error)
    }

    /// Forgets a pending syscall recorded by [`Probe::add_pending`] (it ended meanwhile).
    pub fn remove_pending(&mut self, pid_tgid: u64) {
        if let Some(map) = self.ebpf.map_mut(map_names::PENDING) {
            if let Ok(mut map) = HashMap::<_, u64, Pending>::try_from(map) {
                let _ = map.remove(&pid_tgid);
            }
        }
    }

    /// Forgets connections the kernel closed on its own (the target exited).
    pub fn remove_conns(&mut self, keys: &[ConnKey]) {
        let Some(map) = self.ebpf.map_mut(map_names::CONNS) else {
            return;
        };
        let Ok(mut conns) = HashMap::<_, ConnKey, ConnState>::try_from(map) else {
            return;
        };
        for key in keys {
            let _ = conns.remove(key);
        }
        if self.hooks.by_socket() && !keys.is_empty() {
            self.forget_sockets(keys);
        }
    }

    /// The socket backend's `SOCKS` entries (`struct sock` address -> connection) of
    /// connections closed without a kernel hook seeing it (an exit, a unix-domain close):
    /// else a socket allocated later at the same address would be taken for them.
    fn forget_sockets(&mut self, keys: &[ConnKey]) {
        let Some(map) = self.ebpf.map_mut(SOCKS) else {
            return;
        };
        let Ok(mut socks) = HashMap::<_, u64, ConnKey>::try_from(map) else {
            return;
        };
        let stale: Vec<u64> = socks
            .iter()
            .filter_map(|entry| entry.ok())
            .filter(|(_, key)| keys.contains(key))
            .map(|(sk, _)| sk)
            .collect();
        for sk in stale {
            let _ = socks.remove(&sk);
        }
    }

    /// What the probe could not see: events lost in the ring buffer, fork children and
    /// connections that did not fit their maps, database I/O and TLS plaintext not read.
    pub fn unseen(&self) -> u64 {
        self.lost()
            + self.counter(Counter::TargetsFull)
            + self.counter(Counter::ConnsFull)
            + self.counter(Counter::DbIoMissed)
    }

    /// Watches for processes that exec under `name` (`--comm`).
    pub fn add_comm(&mut self, name: &str) -> Result<()> {
        let map = self
            .ebpf
            .map_mut(map_names::COMMS)
            .ok_or_else(|| Error::Load("no COMMS map in the object".into()))?;
        let mut comms: HashMap<_, [u8; COMM_LEN], u8> =
            HashMap::try_from(map).map_err(load_error)?;
        let mut key = [0u8; COMM_LEN];
        let bytes = name.as_bytes();
        let n = bytes.len().min(COMM_LEN - 1);
        key[..n].copy_from_slice(&bytes[..n]);
        comms.insert(key, 1, 0).map_err(load_error)
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

    /// Detaches everything (together: see [`Links::detach`]) and unloads.
    pub fn close(mut self) {
        let started = std::time::Instant::now();
        let mut links = std::mem::take(&mut self.links);
        links.append(self.tls.take_links());
        let count = links.detach();
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

/// The socket backend's map of sockets (probe-ebpf/src/sockets/sock_tp.rs).
const SOCKS: &str = "SOCKS";

/// The socket backend's programs (probe-ebpf/src/sockets/sock_tp.rs), each a `tp_btf` on
/// the tracepoint of its name.
const SOCKET_HOOKS: [&str; 4] = [
    "sock_send_length",
    "sock_recv_length",
    "inet_sock_set_state",
    "tcp_destroy_sock",
];

/// The fentry backend's programs (probe-ebpf/src/sockets/fexit.rs) and the kernel function
/// each one is an fexit of; with them, the socket backend's lifecycle programs.
const FENTRY_HOOKS: [(&str, &str); 4] = [
    ("fx_tcp_send", "tcp_sendmsg"),
    ("fx_tcp_recv", "tcp_recvmsg"),
    ("fx_unix_send", "unix_stream_sendmsg"),
    ("fx_unix_recv", "unix_stream_recvmsg"),
];
const FENTRY_LIFECYCLE: [&str; 2] = ["inet_sock_set_state", "tcp_destroy_sock"];

/// Loads and attaches a socket-level backend (socket tracepoints, or fentry). A missing
/// hook would lose events silently, so any failure fails the load (the user can unset
/// DRAINWATCH_HOOKS), except permission, which gets its own message.
fn attach_socket_hooks(
    ebpf: &mut Ebpf,
    hooks: Hooks,
    links: &mut Links,
    failures: &mut Vec<String>,
) -> Result<()> {
    let tracepoints: &[&'static str] = match hooks {
        Hooks::Fentry => &FENTRY_LIFECYCLE,
        _ => &SOCKET_HOOKS,
    };
    let fexits: &[(&'static str, &'static str)] = match hooks {
        Hooks::Fentry => &FENTRY_HOOKS,
        _ => &[],
    };
    // aya looks each attach target up in a BTF by name: a stub with only those names, at
    // their kernel ids, instead of all of the kernel's BTF parsed (kernel/btf.rs).
    let typedefs: Vec<String> = tracepoints
        .iter()
        .map(|name| format!("btf_trace_{name}"))
        .collect();
    let wanted: Vec<(u32, &str)> = typedefs
        .iter()
        .map(|name| (btf::KIND_TYPEDEF, name.as_str()))
        .chain(
            fexits
                .iter()
                .map(|&(_, function)| (btf::KIND_FUNC, function)),
        )
        .collect();
    let stub = btf::kernel_id_stub(&wanted)
        .ok_or_else(|| Error::Load(format!("cannot read {}", btf::KERNEL_BTF)))?;
    let btf = aya::Btf::parse(&stub, aya::Endianness::default()).map_err(load_error)?;
    drop(stub);
    let mut fail = |name: &str, err: Error| -> Result<()> {
        if matches!(err, Error::NotPermitted) {
            return Err(err);
        }
        failures.push(format!("{name}: {err}"));
        Err(Error::Load(format!(
            "socket hook {name}: {err} (unset DRAINWATCH_HOOKS to use the default hooks)"
        )))
    };
    for &name in tracepoints {
        let attached = (|| -> Result<_> {
            let program: &mut BtfTracePoint = ebpf
                .program_mut(name)
                .ok_or_else(|| Error::Load(format!("no program {name} in the object")))?
                .try_into()
                .map_err(load_error)?;
            program.load(name, &btf).map_err(load_error)?;
            let id = program.attach().map_err(load_error)?;
            program.take_link(id).map_err(load_error)
        })();
        match attached {
            Ok(link) => links.add(link),
            Err(err) => fail(&format!("tp_btf:{name}"), err)?,
        }
    }
    for &(name, function) in fexits {
        let attached = (|| -> Result<_> {
            let program: &mut FExit = ebpf
                .program_mut(name)
                .ok_or_else(|| Error::Load(format!("no program {name} in the object")))?
                .try_into()
                .map_err(load_error)?;
            program.load(function, &btf).map_err(load_error)?;
            let id = program.attach().map_err(load_error)?;
            program.take_link(id).map_err(load_error)
        })();
        match attached {
            Ok(link) => links.add(link),
            Err(err) => fail(&format!("fexit:{function}"), err)?,
        }
    }
    Ok(())
}

fn attach(
    ebpf: &mut Ebpf,
    program: &'static str,
    category: &str,
    names: &[&str],
    links: &mut Links,
) -> Result<()> {
    let program: &mut TracePoint = ebpf
        .program_mut(program)
        .ok_or_else(|| Error::Load(format!("no program {program} in the object")))?
        .try_into()
        .map_err(load_error)?;
    program.load().map_err(load_error)?;
    for name in names {
        let id = program.attach(category, name).map_err(load_error)?;
        links.add(program.take_link(id).map_err(load_error)?);
    }
    Ok(())
}

fn attach_raw(
    ebpf: &mut Ebpf,
    program: &'static str,
    tracepoint: &str,
    links: &mut Links,
) -> Result<()> {
    let raw: &mut RawTracePoint = ebpf
        .program_mut(program)
        .ok_or_else(|| Error::Load(format!("no program {program} in the object")))?
        .try_into()
        .map_err(load_error)?;
    raw.load().map_err(load_error)?;
    let id = raw.attach(tracepoint).map_err(load_error)?;
    links.add(raw.take_link(id).map_err(load_error)?);
    Ok(())
}

/// Loads a tail-called program and returns its fd.
/// The shared histogram of processes that find the latency map full: made now, while
/// there is room (the kernel's fallback can then not fail).
fn reserve_latency_overflow(ebpf: &mut Ebpf) -> Result<()> {
    let map = ebpf
        .map_mut(map_names::REQUEST_LATENCY)
        .ok_or_else(|| Error::Load("no REQUEST_LATENCY map in the object".into()))?;
    let mut histograms: HashMap<_, u32, LatencyHistogram> =
        HashMap::try_from(map).map_err(load_error)?;
    let zero = LatencyHistogram {
        counts: [0; probe_common::latency::LATENCY_SLOTS],
    };
    histograms
        .insert(LATENCY_OVERFLOW_TGID, zero, BPF_NOEXIST)
        .map_err(load_error)
}

fn load_tail(ebpf: &mut Ebpf, name: &str) -> Result<ProgramFd> {
    let program: &mut RawTracePoint = ebpf
        .program_mut(name)
        .ok_or_else(|| Error::Load(format!("no program {name} in the object")))?
        .try_into()
        .map_err(load_error)?;
    program.load().map_err(load_error)?;
    program
        .fd()
        .map_err(load_error)?
        .try_clone()
        .map_err(load_error)
}

/// Loads a syscall's program and puts it in the dispatch table under its numbers.
fn install_enter_program(ebpf: &mut Ebpf, name: &str, numbers: &[u32]) -> Result<()> {
    let fd = load_tail(ebpf, name)?;
    let map = ebpf
        .map_mut("ENTER_JUMP")
        .ok_or_else(|| Error::Load("no ENTER_JUMP map in the object".into()))?;
    let mut table = ProgramArray::try_from(map).map_err(load_error)?;
    for &nr in numbers {
        table.set(nr, &fd, 0).map_err(load_error)?;
    }
    Ok(())
}

/// Loads the database path program and puts it where the syscall exits tail-call it.
fn install_db_io(ebpf: &mut Ebpf) -> Result<()> {
    let fd = load_tail(ebpf, "db_io")?;
    let map = ebpf
        .map_mut("JUMP")
        .ok_or_else(|| Error::Load("no JUMP map in the object".into()))?;
    let mut jump = ProgramArray::try_from(map).map_err(load_error)?;
    jump.set(0, &fd, 0).map_err(load_error)
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
