//! What a loaded probe owns ([`Probe`]), apart from the code that loads it (probe.rs) and the
//! userspace ends of its maps (maps.rs): both add methods to it, and both import it from
//! here.

use aya::{
    maps::{MapData, RingBuf},
    Ebpf,
};

use crate::kernel::{backends::Backend, links::Links, uprobe::UprobeUnit};

/// `BPF_NOEXIST` (include/uapi/linux/bpf.h): insert only if the key is absent.
pub(super) const BPF_NOEXIST: u64 = 1;

pub struct Probe {
    // Field order is drop order: maps and logger go before the programs they feed, links
    // (detaching) before the programs they attach.
    pub(super) events: RingBuf<MapData>,
    pub(super) logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    /// Every attachment, so that [`Probe::close`] can take them down together.
    pub(super) links: Links,
    /// The uprobe units the session installed (TLS hooks, operation probes: kernel/uprobe.rs,
    /// [`UprobeUnit`]).
    pub(super) units: Vec<Box<dyn UprobeUnit>>,
    pub(super) ebpf: Ebpf,
    pub(super) failures: Vec<String>,
    pub(super) hooks: &'static Backend,
}
