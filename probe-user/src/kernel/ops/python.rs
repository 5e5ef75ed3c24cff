//! `--op` on CPython 3.11 (docs/design.md, "operation"): the interpreter's USDT markers
//! `function__entry` and `function__return` (usdt.rs reads and checks them), with the
//! programs of probe-ebpf/src/ops/py.rs attached in the one process.
//!
//! A marker fires only while its semaphore is raised. drainwatch never writes the target's
//! memory: it opens each uprobe with the semaphore's offset as its reference counter
//! (`ref_ctr_offset`, a field of the uprobe PMU's `config`), so the kernel raises the
//! counter when it plants the probe and lowers it when the probe goes, whatever ends
//! drainwatch. aya cannot pass that offset, so the perf events are opened here and the
//! loaded programs attached to them (PERF_EVENT_IOC_SET_BPF).
//!
//! CPython 3.11 fires `function__entry` only on its tracing path (Python/ceval.c: the entry
//! marker is in DO_TRACING, at RESUME; the dispatch goes there when a trace function is set
//! or the `line` marker's semaphore is raised, `OR_DTRACE_LINE`). So the `line` semaphore is
//! raised too, by a third uprobe that carries it as its reference counter, planted at a
//! marker whose code never runs while its own semaphore stays down: no probe fires at each
//! line, but the interpreter runs its tracing dispatch (unspecialized instructions and a
//! line-number check at each), which is what `--op` costs a Python target.
//!
//! Python functions are known only when they run (a name and a file name in a code object),
//! not from the ELF: a SPEC is armed in every CPython target and counts the calls that come.

mod usdt;

use std::{
    collections::HashMap,
    ffi::CString,
    num::NonZeroU32,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    sync::Arc,
};

use aya::{
    maps::{HashMap as BpfHashMap, MapData},
    programs::UProbe,
    Ebpf,
};
use probe_common::{
    ops::py::{PyOpName, PY_NAME_LEN, PY_OP_NAMES},
};

use super::{
    found::{Found, Hooked, Refusal},
    runtime::Runtime,
    symbols::{Maps, OpSpec},
};
use crate::kernel::{links::Links, uprobe::Uprobes};
use usdt::{Marker, PyMarkers};

const PY_ENTRY: &str = "op_py_entry";
const PY_RETURN: &str = "op_py_return";

/// `FUNCTION` or `FILE:FUNCTION` as CPython names them: `co_name` (a function's own name,
/// not a dotted path) and the end of `co_filename`.
fn py_name(spec: &OpSpec) -> Result<PyOpName, String> {
    let bad = |why: &str| {
        format!(
            "{}: {why}; a Python function is named by its own name or FILE:NAME \
             (`purchase`, `game.py:purchase`, `shop/game.py:purchase`)",
            spec.text
        )
    };
    let name = spec.function.as_str();
    if name.contains(['.', ':', '(', ' ', '/']) {
        return Err(bad("not a Python function's name (co_name)"));
    }
    if name.len() >= PY_NAME_LEN {
        return Err(bad(&format!(
            "names of {PY_NAME_LEN} bytes and more are not compared"
        )));
    }
    let file = spec.library.as_deref().unwrap_or("");
    if file.len() >= PY_NAME_LEN {
        return Err(bad(&format!(
            "file names are compared on their last {} bytes",
            PY_NAME_LEN - 1
        )));
    }
    let mut suffix = [0u8; PY_NAME_LEN];
    suffix[..file.len()].copy_from_slice(file.as_bytes());
    Ok(PyOpName {
        function: 0,
        suffix_len: file.len() as u32,
        suffix,
    })
}

/// CPython 3.11 processes: hooked at the interpreter's markers, per frame.
pub(super) struct CPython {
    /// The programs, loaded once; attached through perf events of our own (`links`).
    uprobes: Uprobes,
    links: Links,
    /// Interpreter files' markers, or why not, by file.
    markers: HashMap<PathBuf, Arc<Result<PyMarkers, String>>>,
    /// `PY_OP_NAMES` filled from the `--op` list.
    names_written: bool,
}

impl Default for CPython {
    fn default() -> Self {
        Self {
            uprobes: Uprobes::new("--op CPython", [PY_ENTRY, PY_RETURN]).perf_events_only(),
            links: Links::default(),
            markers: HashMap::new(),
            names_written: false,
        }
    }
}

impl Runtime for CPython {
    fn name(&self) -> &'static str {
        "CPython"
    }

    fn blind_at_attach(&self) -> bool {
        true
    }

    /// A process whose executable or a mapped library is named `python*` or `libpython*`.
    fn claims(&mut self, maps: &Maps, _tgid: u32) -> bool {
        let python = |p: &str| {
            let name = p.rsplit('/').next().unwrap_or(p);
            name.starts_with("libpython") || name.starts_with("python")
        };
        maps.exe().is_some_and(python) || maps.mapped_files().any(python)
    }

    /// Hooks the `--op` functions in the CPython process `tgid`: its interpreter's markers,
    /// once per process.
    fn attach(
        &mut self,
        found: &mut Found,
        ebpf: &mut Ebpf,
        tgid: u32,
        pid: NonZeroU32,
        maps: &Maps,
    ) -> Result<Vec<Hooked>, Refusal> {
        if found.hooked.iter().any(|h| h.tgid == tgid) {
            return Ok(Vec::new());
        }
        let exe = maps.exe().unwrap_or_default().to_string();
        let refuse =
            |why: String| Refusal::Failed(format!("--op on CPython {exe} (pid {tgid}): {why}"));
        let (path, markers) = self.py_markers_of(maps).map_err(refuse)?;
        // A SPEC that is no Python name is the user's to fix, whatever the target.
        self.write_py_names(&found.specs, ebpf).map_err(Refusal::Failed)?;
        self.uprobes
            .load(ebpf)
            .map_err(|e| refuse(format!("loading its programs: {e}")))?;
        let file = maps.file(&path);
        for (program, marker) in [
            (Some(PY_ENTRY), markers.entry),
            (Some(PY_RETURN), markers.ret),
            (None, markers.switch),
        ] {
            let fd = attach_marker(ebpf, program, &file, marker, pid).map_err(|e| {
                refuse(format!(
                    "planting {}: {e}",
                    program.unwrap_or("the line semaphore's uprobe")
                ))
            })?;
            self.links.add_owned(fd);
        }
        found.note_blind(tgid);
        let hooked: Vec<Hooked> = found
            .specs
            .iter()
            .enumerate()
            .map(|(index, spec)| Hooked {
                tgid,
                function: index as u32,
                path: path.clone(),
                symbol: format!(
                    "Python function {}{} (CPython {}: counted from its next call; a name \
                     that never runs counts none)",
                    spec.function,
                    spec.library
                        .as_deref()
                        .map(|f| format!(" in *{f}"))
                        .unwrap_or_default(),
                    markers.version
                ),
            })
            .collect();
        for h in &hooked {
            log::debug!("{}", h.describe(&found.specs));
        }
        found.hooked.extend(hooked.iter().cloned());
        Ok(hooked)
    }

    fn attached(&self) -> usize {
        self.links.len()
    }

    fn take_links(&mut self) -> Links {
        let mut links = self.uprobes.take_links();
        links.append(std::mem::take(&mut self.links));
        links
    }
}

impl CPython {
    /// The interpreter file of the process that holds the markers (the executable, or its
    /// libpython), as it maps it, and its markers.
    fn py_markers_of(&mut self, maps: &Maps) -> Result<(String, PyMarkers), String> {
        let mut candidates: Vec<String> = maps.exe().map(str::to_string).into_iter().collect();
        candidates.extend(
            maps.mapped_files()
                .filter(|p| {
                    p.rsplit('/')
                        .next()
                        .is_some_and(|n| n.starts_with("libpython"))
                })
                .map(str::to_string),
        );
        let mut why = String::from("no interpreter file mapped");
        for path in candidates {
            let file = maps.file(&path);
            let real = std::fs::canonicalize(&file).unwrap_or(file.clone());
            let read = match self.markers.get(&real) {
                Some(read) => read.clone(),
                None => {
                    let read = Arc::new(
                        std::fs::read(&file)
                            .map_err(|e| format!("reading {path}: {e}"))
                            .and_then(|data| PyMarkers::read(&data)),
                    );
                    self.markers.insert(real, read.clone());
                    read
                }
            };
            match &*read {
                Ok(markers) => return Ok((path, markers.clone())),
                Err(e) => why = e.clone(),
            }
        }
        Err(why)
    }

    /// Fills `PY_OP_NAMES` from the `--op` list, once.
    fn write_py_names(&mut self, specs: &[OpSpec], ebpf: &mut Ebpf) -> Result<(), String> {
        if self.names_written {
            return Ok(());
        }
        let mut names: Vec<([u8; PY_NAME_LEN], PyOpName)> = Vec::new();
        for (index, spec) in specs.iter().enumerate() {
            let mut value = py_name(spec)?;
            value.function = index as u32;
            let mut key = [0u8; PY_NAME_LEN];
            key[..spec.function.len()].copy_from_slice(spec.function.as_bytes());
            if names.iter().any(|(k, _)| *k == key) {
                return Err(format!(
                    "{}: a Python function name can be given once (with or without its \
                     file)",
                    spec.text
                ));
            }
            names.push((key, value));
        }
        let map = ebpf
            .map_mut(PY_OP_NAMES)
            .ok_or("no PY_OP_NAMES map in the object")?;
        let mut map = BpfHashMap::<&mut MapData, [u8; PY_NAME_LEN], PyOpName>::try_from(map)
            .map_err(|e| e.to_string())?;
        for (key, value) in names {
            map.insert(key, value, 0)
                .map_err(|e| format!("PY_OP_NAMES: {}", crate::kernel::uprobe::error_line(&e)))?;
        }
        self.names_written = true;
        Ok(())
    }
}

/// Opens a uprobe at `marker` of `file` in process `pid`, its semaphore as the reference
/// counter, and attaches `program` (loaded) to it; without a program the uprobe only holds
/// the semaphore up. Closing the returned fd takes it down (and the semaphore with it).
fn attach_marker(
    ebpf: &Ebpf,
    program: Option<&str>,
    file: &Path,
    marker: Marker,
    pid: NonZeroU32,
) -> Result<OwnedFd, String> {
    let fd = open_uprobe(file, marker, pid)?;
    if let Some(name) = program {
        let program: &UProbe = ebpf
            .program(name)
            .ok_or_else(|| format!("no program {name}"))?
            .try_into()
            .map_err(|e| format!("{name}: {e}"))?;
        let prog_fd = program.fd().map_err(|e| format!("{name}: {e}"))?;
        // SAFETY: ioctls on a perf event fd we own, with a loaded program's fd.
        let set = unsafe {
            libc::ioctl(
                fd.as_raw_fd(),
                aya_obj::generated::PERF_EVENT_IOC_SET_BPF as _,
                prog_fd.as_fd().as_raw_fd(),
            )
        };
        if set != 0 {
            return Err(format!(
                "PERF_EVENT_IOC_SET_BPF: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    // SAFETY: as above.
    if unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            aya_obj::generated::PERF_EVENT_IOC_ENABLE as _,
            0,
        )
    } != 0
    {
        return Err(format!(
            "PERF_EVENT_IOC_ENABLE: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(fd)
}

/// A uprobe PMU event (perf_event_open(2), "uprobe" dynamic PMU) at `marker.offset` of
/// `file`, for process `pid` only, with `marker.semaphore` as its `ref_ctr_offset`.
fn open_uprobe(file: &Path, marker: Marker, pid: NonZeroU32) -> Result<OwnedFd, String> {
    use std::os::unix::ffi::OsStrExt;
    const PMU: &str = "/sys/bus/event_source/devices/uprobe";
    let pmu_type: u32 = std::fs::read_to_string(format!("{PMU}/type"))
        .map_err(|e| format!("{PMU}/type: {e} (a kernel without the uprobe PMU)"))?
        .trim()
        .parse()
        .map_err(|e| format!("{PMU}/type: {e}"))?;
    let shift = config_shift(&format!("{PMU}/format/ref_ctr_offset"))?;
    let path = CString::new(file.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: an all-zero perf_event_attr is its "nothing asked" value.
    let mut attr: aya_obj::generated::perf_event_attr = unsafe { std::mem::zeroed() };
    attr.type_ = pmu_type;
    attr.size = std::mem::size_of::<aya_obj::generated::perf_event_attr>() as u32;
    attr.config = marker.semaphore << shift;
    attr.__bindgen_anon_1.sample_period = 1;
    attr.__bindgen_anon_2.wakeup_events = 1;
    attr.__bindgen_anon_3.uprobe_path = path.as_ptr() as u64;
    attr.__bindgen_anon_4.probe_offset = marker.offset;
    // Created disabled: enabled once its program is set.
    attr.set_disabled(1);
    // SAFETY: a valid attr whose path outlives the call; pid is a process, any CPU.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const _,
            pid.get() as libc::pid_t,
            -1 as libc::c_int,
            -1 as libc::c_int,
            aya_obj::generated::PERF_FLAG_FD_CLOEXEC as libc::c_ulong,
        )
    };
    if fd < 0 {
        return Err(format!(
            "perf_event_open(uprobe): {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: a new fd the kernel just handed us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Where a PMU format field starts in `config` (`config:32-63` → 32).
fn config_shift(format: &str) -> Result<u32, String> {
    let text = std::fs::read_to_string(format).map_err(|e| {
        format!("{format}: {e} (a kernel whose uprobes take no reference counter, before 4.20)")
    })?;
    text.trim()
        .strip_prefix("config:")
        .and_then(|bits| bits.split('-').next())
        .and_then(|start| start.parse().ok())
        .ok_or_else(|| format!("{format}: unexpected `{}`", text.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_specs_are_names_and_file_ends() {
        let spec = |t: &str| OpSpec::parse(t).unwrap();
        let name = py_name(&spec("game.py:purchase")).unwrap();
        assert_eq!(name.suffix_len, 7);
        assert_eq!(&name.suffix[..7], b"game.py");
        assert_eq!(py_name(&spec("purchase")).unwrap().suffix_len, 0);
        assert!(py_name(&spec("Game.purchase")).is_err());
        assert!(py_name(&spec("Game::purchase")).is_err());
        assert!(py_name(&spec(&"x".repeat(64))).is_err());
    }
}
