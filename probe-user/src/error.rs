//! Errors of the library. Each one says what is wrong and how to fix it in one line; the
//! CLI prints it as `drainwatch: {err:#}` and exits 2.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid {what} `{value}`: {hint}")]
    InvalidValue {
        what: &'static str,
        value: String,
        hint: &'static str,
    },
    #[error("--settle-from {}: {problem}", .path.display())]
    SettleFrom { path: PathBuf, problem: String },
    #[error("no process with pid {0}: check the pid (e.g. `pgrep -a NAME`)")]
    NoSuchProcess(u32),
    #[error("pid {0} is drainwatch itself: name the server's pid instead")]
    SelfTarget(u32),
    #[error("pid 1 is init: drainwatch never stops init nor watches it; name the server's pid")]
    Init,
    #[error("pid {pid} ({comm}) is a kernel thread, not a server: name the server's pid (e.g. `pgrep -a NAME`)")]
    KernelThread { pid: u32, comm: String },
    #[error("{selector} takes in a process drainwatch refuses: {cause}")]
    SelectorRefused { selector: String, cause: String },
    #[error(
        "{} matched no process: check the name (`pgrep -a NAME`, `systemctl status UNIT`) or \
         start the server first", .0.join(", ")
    )]
    NothingMatched(Vec<String>),
    #[error(
        "no systemd unit {unit}: no cgroup of that name under {root}; check the name with \
         `systemctl status {unit}`, or name the processes with --pid or --cgroup"
    )]
    NoSuchUnit { unit: String, root: String },
    #[error("unit {unit} is ambiguous ({first} and {second}): name one with --cgroup PATH")]
    AmbiguousUnit {
        unit: String,
        first: String,
        second: String,
    },
    #[error(
        "no cgroup v2 hierarchy is mounted (/proc/self/mountinfo lists no cgroup2): --unit \
         needs one; name the processes with --pid or --comm"
    )]
    NoCgroup2,
    #[error(
        "no cgroup `{path}`: give a cgroup directory (with a cgroup.procs file){}",
        .root.as_ref().map(|r| format!(", absolute or under {r}")).unwrap_or_default()
    )]
    NoCgroup { path: String, root: Option<String> },
    #[error(
        "cannot read the open files of {comm} ({pid}) (/proc/{pid}/fd: permission denied): \
         run drainwatch as root or as the server's user"
    )]
    CannotSee { pid: u32, comm: String },
    #[error(
        "pid {0} is a 32-bit (ia32) program: drainwatch reads x86_64 system calls only; \
         watch a 64-bit build of the server"
    )]
    Compat32(u32),
    #[error("cannot write {what} {path}: {cause} (choose a writable path)")]
    ReportPath {
        what: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "tracefs is not mounted and could not be mounted ({0}); as root run \
         `mount -t tracefs tracefs /sys/kernel/tracing`"
    )]
    Tracefs(String),
    #[error("tracepoint {category}:{name} format: {problem}")]
    TracepointFormat {
        category: String,
        name: String,
        problem: String,
    },
    #[error(
        "this drainwatch binary was built without its eBPF probe (bpf-linker was missing at \
         build time); build it with `cargo xtask build`"
    )]
    NoProbeObject,
    #[error(
        "permission denied loading the eBPF probe: run drainwatch as root (or with CAP_BPF, \
         CAP_PERFMON and CAP_SYS_RESOURCE)"
    )]
    NotPermitted,
    #[error(
        "this kernel ({release}) lacks {feature} ({detail}): drainwatch needs Linux {since} or \
         newer with it; run `drainwatch doctor` for the whole picture"
    )]
    KernelFeature {
        release: String,
        feature: String,
        detail: String,
        since: String,
    },
    #[error("policy {path}: {problem}")]
    Policy { path: String, problem: String },
    #[error(
        "DRAINWATCH_HOOKS={value}: {problem} (unset it to let drainwatch choose, or set it to \
         syscalls)"
    )]
    Hooks { value: String, problem: String },
    /// A probe unit's refusal, whole in one line: `--op`, a SPEC that is malformed or
    /// matched nothing (naming what was searched and the nearest names), or a target whose
    /// functions are not followed yet.
    #[error("{0}")]
    Unit(String),
    #[error("loading the eBPF probe failed: {0}")]
    Load(String),
    #[error("could not launch `{cmd}`: {cause}")]
    Launch { cmd: String, cause: std::io::Error },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
