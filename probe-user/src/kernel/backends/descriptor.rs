//! The hook backend descriptor: what one backend's file (socket.rs, fentry.rs,
//! syscalls.rs) fills in, and what the probe, `doctor` and the choice (mod.rs) read.

use aya::Ebpf;

use crate::{
    kernel::{features::Features, links::Links},
    Result,
};

/// One hook backend: everything drainwatch knows of it.
pub struct Backend {
    /// What `DRAINWATCH_HOOKS` accepts for it.
    pub(super) word: &'static str,
    /// The report's `coverage.hooks` word (docs/design.md).
    pub(super) coverage: &'static str,
    /// What `doctor` and `-v` say about it.
    pub(super) describe: &'static str,
    /// Whether connections are keyed by socket (probe-ebpf's `SOCKS`) rather than by
    /// (tgid, fd): every backend but the syscall hooks.
    pub(super) by_socket: bool,
    /// The tracefs tracepoints it attaches to (looked up by `backends::detect`, shown by
    /// `doctor`).
    pub(super) tracepoints: &'static [(&'static str, &'static str)],
    /// What this kernel lacks of what it needs, if anything ("the tracepoint sock:...").
    pub(super) missing: fn(&Features) -> Option<String>,
    /// Loads and attaches its programs, keeping the links; a hook that did not attach is
    /// recorded in the failures (the verdict becomes `incomplete`) or fails the load.
    pub(super) attach: fn(&mut Ebpf, &mut Links, &mut Vec<String>) -> Result<()>,
}

impl Backend {
    pub fn word(&self) -> &'static str {
        self.word
    }

    pub fn coverage(&self) -> &'static str {
        self.coverage
    }

    pub fn describe(&self) -> &'static str {
        self.describe
    }

    pub fn by_socket(&self) -> bool {
        self.by_socket
    }

    pub fn tracepoints(&self) -> &'static [(&'static str, &'static str)] {
        self.tracepoints
    }

    /// What this kernel lacks for it; `None`: it can run here.
    pub fn missing(&self, features: &Features) -> Option<String> {
        (self.missing)(features)
    }

    /// Attaches its programs in `ebpf` (loaded by kernel/probe.rs), adding their links.
    pub fn attach(
        &self,
        ebpf: &mut Ebpf,
        links: &mut Links,
        failures: &mut Vec<String>,
    ) -> Result<()> {
        (self.attach)(ebpf, links, failures)
    }
}

impl PartialEq for Backend {
    fn eq(&self, other: &Self) -> bool {
        self.word == other.word
    }
}

impl Eq for Backend {}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Backend({})", self.word)
    }
}
