//! The kernel, from userspace: loading the eBPF object and attaching its programs
//! ([`probe`], whose `maps` holds the userspace ends of its maps; the steps in [`attach`],
//! every link owned, [`links`]), the hook backends that feed its socket side, one
//! descriptor each ([`backends`]), and what the running kernel says about itself:
//! tracepoint field offsets ([`tracefs`]), struct member offsets ([`btf`]), so that the
//! probe does not depend on one kernel's layout, and which BPF features it offers, found by
//! trying them ([`features`]). [`tls`] hooks the targets' TLS libraries, on [`uprobe`]
//! (programs at an ELF symbol, by process; as [`uprobe_multi`] links where the kernel has
//! them), as does [`ops`] (the `--op` functions); both open the files a process maps as
//! [`mapped`] says (the very file it runs). [`bpf_sys`] holds the bpf(2) commands issued
//! without aya.
//!
//! Imports run one way: probe → backends → attach, features → btf, tracefs; tls → uprobe →
//! uprobe_multi, links; probe → uprobe_multi → bpf_sys, btf; tls, ops → mapped. Owns every bpf(2) call and every read of tracefs and kernel
//! BTF. May use: probe-common's wire types and the crate's errors; nothing else in the crate.

pub mod attach;
pub mod backends;
pub mod bpf_sys;
pub mod btf;
pub mod features;
pub mod links;
pub mod mapped;
pub mod probe;
pub mod tracefs;
pub mod uprobe;
pub mod uprobe_multi;
// Each probe unit's kernel half (`tls`, `ops`).
probe_units!(unit_modules);
