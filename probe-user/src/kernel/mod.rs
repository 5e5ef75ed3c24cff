//! The kernel, from userspace: loading the eBPF object and attaching its programs
//! ([`probe`], which also holds the userspace ends of its maps), and what the running kernel
//! says about itself: tracepoint field offsets ([`tracefs`]), struct member offsets
//! ([`btf`]), so that the probe does not depend on one kernel's layout, and which BPF
//! features it offers, found by trying them ([`features`]), and which hooks feed the socket
//! side ([`hooks`]). [`tls`] hooks the targets' TLS libraries, on [`uprobe`] (programs at an
//! ELF symbol, by process). Every attachment is an owned link ([`links`]).
//!
//! Owns every bpf(2) call and every read of tracefs and kernel BTF. May use: probe-common's
//! wire types and the crate's errors; nothing else in the crate.

pub mod btf;
pub mod features;
pub mod hooks;
pub mod links;
pub mod probe;
pub mod tls;
pub mod tracefs;
pub mod uprobe;
