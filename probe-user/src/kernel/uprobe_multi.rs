//! Uprobes as `uprobe_multi` links (BPF_LINK_CREATE with BPF_TRACE_UPROBE_MULTI, Linux 6.6)
//! where the kernel has them, instead of one perf event per uprobe (docs/hooks.md, "Uprobes").
//!
//! Why: releasing a uprobe's perf event holds the kernel's `event_mutex` across an RCU grace
//! period (kernel/trace/trace_event_perf.c: `perf_uprobe_destroy` → `perf_trace_event_unreg`
//! → `tracepoint_synchronize_unregister`), and opening one takes the same mutex: a drainwatch
//! started right after another one exited (a `wait`, then a `stop`; a release script over a
//! fleet) waited up to ~600 ms behind the previous run's TLS uprobes (docs/bench.md, "Attach
//! and detach"). A uprobe_multi link makes no perf event; neither creating nor releasing it
//! takes `event_mutex` (kernel/trace/bpf_trace.c, `bpf_uprobe_multi_link_attach`).
//!
//! The kernel links only a program loaded for that attach type (`expected_attach_type`,
//! checked by `bpf_uprobe_multi_link_attach`), and aya 0.14 loads uprobe programs without
//! one. So a unit's programs are loaded here, from the same object: parsed with aya-obj,
//! every map reference bound to the map aya created (the very same kernel map, by fd), the
//! calls linked, and the object's BTF loaded for `func_info` (the global functions verified
//! once each, as aya loads them). If any of that fails the unit uses aya's perf-event
//! uprobes instead (kernel/uprobe.rs); the programs and what they see are the same.

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    num::NonZeroU32,
    os::{
        fd::{AsFd, AsRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
    sync::{Arc, Mutex, OnceLock},
};

use aya::maps::{Map, MapData};
use aya_obj::{btf::BtfFeatures, Object, ProgramSection};

use crate::kernel::{
    bpf_sys::{
        bpf, BtfLoadAttr, ProgLoadAttr, UprobeMultiLinkAttr, BPF_BTF_LOAD, BPF_LINK_CREATE,
        BPF_PROG_LOAD, F_UPROBE_MULTI_RETURN, PROG_TYPE_KPROBE, TRACE_UPROBE_MULTI,
    },
    btf,
};

/// `DRAINWATCH_UPROBES=perf` makes every uprobe a perf event even where uprobe_multi links
/// exist (docs/hooks.md): the way back should a kernel's uprobe_multi misbehave.
pub const ENV: &str = "DRAINWATCH_UPROBES";

/// `DRAINWATCH_UPROBES` as set, if it is set to anything but `perf` (the only word it
/// takes): drainwatch refuses to start rather than guess.
pub fn env_refused() -> Option<String> {
    let value = std::env::var_os(ENV)?;
    (value != "perf").then(|| value.to_string_lossy().into_owned())
}

/// Whether this kernel links uprobe_multi programs: its BTF has `struct
/// bpf_uprobe_multi_link` (kernel/trace/bpf_trace.c, built with CONFIG_UPROBES). Asked first
/// while the probe loads (kernel BTF is released after), then remembered.
pub fn supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        if std::env::var_os(ENV).is_some_and(|v| v == "perf") {
            return false;
        }
        btf::kernel_has_struct("bpf_uprobe_multi_link")
    })
}

/// The probe's object and its maps as loaded: the object's bytes, and an fd of each kernel
/// map aya created, by the object's name for it. The fds are duplicates taken right after
/// the load, so the maps the probe later takes out of aya's `Ebpf` (the event ring, the log
/// ring) are here too.
pub struct LoadedObject {
    object: &'static [u8],
    maps: HashMap<String, OwnedFd>,
}

/// The loaded object of this process's probe (one probe per drainwatch process).
static LOADED: Mutex<Option<Arc<LoadedObject>>> = Mutex::new(None);

impl LoadedObject {
    /// Records `object` and the maps of `ebpf`, loaded from it, for the units' programs.
    pub fn register(object: &'static [u8], ebpf: &aya::Ebpf) -> std::io::Result<()> {
        let maps = ebpf
            .maps()
            .map(|(name, map)| {
                let fd = map_data(map).fd().as_fd().try_clone_to_owned()?;
                Ok((name.to_string(), fd))
            })
            .collect::<std::io::Result<_>>()?;
        *lock() = Some(Arc::new(Self { object, maps }));
        Ok(())
    }

    /// Forgets the registered object (the probe is closing); its map fds close with the
    /// last unit that holds them.
    pub fn unregister() {
        *lock() = None;
    }
}

fn lock() -> std::sync::MutexGuard<'static, Option<Arc<LoadedObject>>> {
    LOADED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Every kind of aya map holds its `MapData`.
fn map_data(map: &Map) -> &MapData {
    match map {
        Map::Array(d)
        | Map::ArrayOfMaps(d)
        | Map::BloomFilter(d)
        | Map::CgroupArray(d)
        | Map::CgroupStorage(d)
        | Map::CgrpStorage(d)
        | Map::CpuMap(d)
        | Map::DevMap(d)
        | Map::DevMapHash(d)
        | Map::HashMap(d)
        | Map::HashOfMaps(d)
        | Map::InodeStorage(d)
        | Map::LpmTrie(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuCgroupStorage(d)
        | Map::PerCpuHashMap(d)
        | Map::PerCpuLruHashMap(d)
        | Map::PerfEventArray(d)
        | Map::ProgramArray(d)
        | Map::Queue(d)
        | Map::ReusePortSockArray(d)
        | Map::RingBuf(d)
        | Map::SockHash(d)
        | Map::SockMap(d)
        | Map::SkStorage(d)
        | Map::Stack(d)
        | Map::StackTraceMap(d)
        | Map::Unsupported(d)
        | Map::XskMap(d) => d,
    }
}

/// A unit's programs, loaded for uprobe_multi links.
pub struct Programs {
    /// By name: the program, and whether it is a return probe (a `uretprobe` section).
    loaded: HashMap<String, (OwnedFd, bool)>,
    /// The object's BTF, which the programs' `func_info` refers to.
    _btf: Option<OwnedFd>,
}

impl Programs {
    /// Loads `names` (uprobe and uretprobe programs of the registered object).
    pub fn load(names: &[&str]) -> Result<Self, String> {
        let loaded = lock().clone().ok_or("no probe object registered")?;
        if has_core_relocations(loaded.object) {
            // aya relocates them against kernel BTF; this loader does not.
            return Err("the object has CO-RE relocations".into());
        }
        let mut obj = Object::parse(loaded.object).map_err(|e| format!("parsing: {e}"))?;
        // The BTF features aya found this kernel to have, as aya fixes the BTF up for its
        // own loads.
        let default = BtfFeatures::default();
        let features = aya::features().btf().unwrap_or(&default);
        let btf_fd = match obj
            .fixup_and_sanitize_btf(features)
            .map_err(|e| format!("the object's BTF: {e}"))?
        {
            Some(btf) => Some(load_btf(&btf.to_bytes())?),
            None => None,
        };
        let text_sections: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
        let object_maps = std::mem::take(&mut obj.maps);
        let mut bound = Vec::with_capacity(object_maps.len());
        for (name, map) in &object_maps {
            let fd = loaded
                .maps
                .get(name)
                .ok_or_else(|| format!("map {name} was not created"))?;
            bound.push((name.as_str(), fd.as_raw_fd(), map));
        }
        obj.relocate_maps(bound.into_iter(), &text_sections)
            .map_err(|e| format!("binding maps: {e}"))?;
        obj.relocate_calls(&text_sections)
            .map_err(|e| format!("linking calls: {e}"))?;
        let mut programs = HashMap::new();
        for &name in names {
            let program = obj
                .programs
                .get(name)
                .ok_or_else(|| format!("no program {name} in the object"))?;
            let ret = match program.section {
                ProgramSection::UProbe { .. } => false,
                ProgramSection::URetProbe { .. } => true,
                _ => return Err(format!("{name} is not a uprobe program")),
            };
            let function = obj
                .functions
                .get(&program.function_key())
                .ok_or_else(|| format!("no code for {name}"))?;
            let fd = load_program(name, function, &program.license, btf_fd.as_ref())
                .map_err(|e| format!("loading {name}: {e}"))?;
            programs.insert(name.to_string(), (fd, ret));
        }
        Ok(Self {
            loaded: programs,
            _btf: btf_fd,
        })
    }

    /// Links `program` at file offset `offset` of `file`, in process `pid` only; dropping
    /// the returned fd detaches it.
    pub fn attach(
        &self,
        program: &str,
        file: &Path,
        offset: u64,
        pid: NonZeroU32,
    ) -> Result<OwnedFd, String> {
        let (prog, ret) = self
            .loaded
            .get(program)
            .ok_or_else(|| format!("no program {program}"))?;
        let path = CString::new(file.as_os_str().as_bytes())
            .map_err(|_| format!("{} has a NUL byte", file.display()))?;
        let offsets = [offset];
        let mut attr = UprobeMultiLinkAttr {
            prog_fd: prog.as_raw_fd() as u32,
            attach_type: TRACE_UPROBE_MULTI,
            path: path.as_ptr() as u64,
            offsets: offsets.as_ptr() as u64,
            cnt: offsets.len() as u32,
            multi_flags: if *ret { F_UPROBE_MULTI_RETURN } else { 0 },
            pid: pid.get(),
            ..Default::default()
        };
        bpf(BPF_LINK_CREATE, &mut attr).map_err(|e| format!("uprobe_multi link: {e}"))
    }
}

/// Loads the object's BTF into the kernel.
fn load_btf(bytes: &[u8]) -> Result<OwnedFd, String> {
    let mut attr = BtfLoadAttr {
        btf: bytes.as_ptr() as u64,
        btf_size: bytes.len() as u32,
        ..Default::default()
    };
    bpf(BPF_BTF_LOAD, &mut attr).map_err(|e| format!("loading the object's BTF: {e}"))
}

/// Loads one linked program for uprobe_multi links. A refusal is retried with the
/// verifier's log, whose last line (its verdict) becomes the error; the whole log goes to
/// the `-v` log.
fn load_program(
    name: &str,
    function: &aya_obj::Function,
    license: &std::ffi::CStr,
    btf: Option<&OwnedFd>,
) -> Result<OwnedFd, String> {
    // Counted from the records, not from `num_info`, which aya-obj leaves at the count of the
    // whole section for a function that links no callee.
    let func_info = function.func_info.func_info_bytes();
    let line_info = function.line_info.line_info_bytes();
    let mut prog_name = [0u8; 16];
    let len = name.len().min(prog_name.len() - 1);
    prog_name[..len].copy_from_slice(&name.as_bytes()[..len]);
    let mut attr = ProgLoadAttr {
        prog_type: PROG_TYPE_KPROBE,
        insn_cnt: function.instructions.len() as u32,
        insns: function.instructions.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name,
        expected_attach_type: TRACE_UPROBE_MULTI,
        ..Default::default()
    };
    if let Some(btf) = btf {
        attr.prog_btf_fd = btf.as_raw_fd() as u32;
        if function.func_info_rec_size > 0 {
            attr.func_info = func_info.as_ptr() as u64;
            attr.func_info_cnt = function.func_info.len() as u32;
            attr.func_info_rec_size = function.func_info_rec_size as u32;
        }
        if function.line_info_rec_size > 0 {
            attr.line_info = line_info.as_ptr() as u64;
            attr.line_info_cnt = function.line_info.len() as u32;
            attr.line_info_rec_size = function.line_info_rec_size as u32;
        }
    }
    // EAGAIN: the verifier was interrupted (a signal); libbpf retries it too.
    let mut tries = 0;
    let err = loop {
        match bpf(BPF_PROG_LOAD, &mut attr) {
            Ok(fd) => return Ok(fd),
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && tries < 5 => tries += 1,
            Err(e) => break e,
        }
    };
    let mut log = vec![0u8; 1 << 20];
    attr.log_level = 1;
    attr.log_size = log.len() as u32;
    attr.log_buf = log.as_mut_ptr() as u64;
    if bpf(BPF_PROG_LOAD, &mut attr).is_ok() {
        // Refused, then accepted: nothing to explain.
        return Err(err.to_string());
    }
    let text = String::from_utf8_lossy(&log[..log.iter().position(|&b| b == 0).unwrap_or(0)]);
    log::debug!("verifier log of {name}:\n{text}");
    let verdict = text.lines().rev().find(|l| !l.trim().is_empty());
    Err(match verdict {
        Some(line) => format!("{err}: verifier: {line} (whole log at -v)"),
        None => err.to_string(),
    })
}

/// Whether the object's `.BTF.ext` carries CO-RE relocations (its header's `core_relo_len`;
/// tools/lib/bpf/libbpf_internal.h, `struct btf_ext_header`).
pub fn has_core_relocations(object: &[u8]) -> bool {
    use object::{Object as _, ObjectSection};
    let Ok(elf) = object::File::parse(object) else {
        return false;
    };
    let Some(data) = elf.section_by_name(".BTF.ext").and_then(|s| s.data().ok()) else {
        return false;
    };
    let word = |at: usize| {
        data.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    // magic u16, version u8, flags u8, hdr_len u32, then (off, len) pairs: func_info,
    // line_info, and from a header of 32 bytes on, core_relo.
    match word(4) {
        Some(hdr_len) if hdr_len >= 32 => word(28).is_some_and(|len| len > 0),
        _ => false,
    }
}
