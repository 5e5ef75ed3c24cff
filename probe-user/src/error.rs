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
    #[error("no process with pid {0}: check the pid (e.g. `pgrep -a NAME`)")]
    NoSuchProcess(u32),
    #[error("pid {0} is drainwatch itself: name the server's pid instead")]
    SelfTarget(u32),
    #[error(
        "pid {0} is a 32-bit (ia32) program: drainwatch reads x86_64 system calls only; \
         watch a 64-bit build of the server"
    )]
    Compat32(u32),
    #[error("cannot write report file {path}: {cause} (choose a writable path)")]
    ReportPath {
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
    #[error("loading the eBPF probe failed: {0}")]
    Load(String),
    #[error("could not launch `{cmd}`: {cause}")]
    Launch { cmd: String, cause: std::io::Error },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
