//! A per-process uprobe unit: programs of the probe object attached at the offset of an ELF
//! symbol in a file, in one process only. kernel/tls.rs (OpenSSL's `SSL_write`/`SSL_read`)
//! is built on it, and any other hook on a target's own functions should be too.
//!
//! Each attachment is scoped to one process (the kernel only plants the breakpoint in that
//! process's memory, so bystanders that map the same file pay nothing): a uprobe_multi link
//! with its pid where the kernel has them (kernel/uprobe_multi.rs: no perf event, so no wait
//! on the kernel's `event_mutex` behind another drainwatch's teardown), else a perf event
//! with its pid. A unit:
//! - loads its programs lazily, at its first attach (a run that never needs them does not
//!   pay the verifier), once; a refusal is remembered and returned by every later attach;
//! - keeps its links ([`crate::kernel::links::Links`]) until [`Uprobes::take_links`] hands
//!   them to `Probe::close`, which detaches them with the probe's others, in parallel.
//!
//! Typical use, per process `pid` and file `path` it maps:
//! ```text
//! let file = mapped::in_process(tgid, path); // or the mapping's `replaced(tgid)`
//! let [Some(offset)] = uprobe::symbol_offsets(&file, &["SSL_write"])?[..] else { .. };
//! unit.attach(ebpf, "ssl_write", &file, offset, pid)?; // the entry
//! unit.attach(ebpf, "ssl_return", &file, offset, pid)?; // its return (a uretprobe)
//! ```
//! or, for one symbol, [`Uprobes::attach_symbol`]. Errors are one line each (`String`):
//! they end up in the report next to what was not hooked, never as a failed run.

use std::{num::NonZeroU32, path::Path};

use aya::{
    programs::{uprobe::UProbeScope, UProbe},
    Ebpf,
};

use crate::kernel::{links::Links, uprobe_multi};

/// A unit of uprobes that the session installs in the probe ([`crate::kernel::probe::Probe`]
/// holds it, since its programs live in the probe's object, and reaches it by type): the TLS
/// hooks (kernel/tls.rs), the operation probes (kernel/ops/). The probe knows nothing else of
/// it: it only takes its links down with its own at close.
pub trait UprobeUnit: std::any::Any + Send {
    /// Its attachments, for `Probe::close` to detach together with the others.
    fn take_links(&mut self) -> Links;
}

/// Uprobe programs of the object, loaded together at first use, and the links they hold.
pub struct Uprobes {
    /// What the unit hooks, for the `-v` log ("TLS").
    what: &'static str,
    /// Its programs in the object (entry and return programs alike: aya tells them apart by
    /// their section, `uprobe` or `uretprobe`).
    programs: Vec<&'static str>,
    /// Whether the unit may link its programs as uprobe_multi links: not when they are
    /// attached to perf events opened elsewhere (CPython's USDT markers, kernel/ops/python.rs).
    multi: bool,
    /// How the programs loaded (once, at first use); `Err` says why they did not.
    loaded: Option<Result<Loaded, String>>,
    links: Links,
}

/// Where a unit's programs were loaded.
enum Loaded {
    /// Into aya's `Ebpf`, attached with a perf event each.
    Aya,
    /// By kernel/uprobe_multi.rs, linked as uprobe_multi links.
    Multi(uprobe_multi::Programs),
}

impl Uprobes {
    pub fn new(what: &'static str, programs: impl IntoIterator<Item = &'static str>) -> Self {
        Self {
            what,
            programs: programs.into_iter().collect(),
            multi: true,
            loaded: None,
            links: Links::default(),
        }
    }

    /// A unit whose programs are attached to perf events the caller opens (it reaches them
    /// in aya's `Ebpf`): never loaded for uprobe_multi links.
    pub fn perf_events_only(mut self) -> Self {
        self.multi = false;
        self
    }

    /// Loads the unit's programs into the kernel if not done yet; the outcome of the first
    /// try is kept (a program the verifier refused stays refused).
    pub fn load(&mut self, ebpf: &mut Ebpf) -> Result<(), String> {
        let (what, programs, multi) = (self.what, &self.programs, self.multi);
        match self.loaded.get_or_insert_with(|| {
            let started = std::time::Instant::now();
            let _timed = Timed(what, started);
            if multi && uprobe_multi::supported() {
                match uprobe_multi::Programs::load(programs) {
                    Ok(loaded) => return Ok(Loaded::Multi(loaded)),
                    Err(why) => log::debug!("{what}: no uprobe_multi links ({why}); perf events"),
                }
            }
            for &name in programs {
                let program: &mut UProbe = ebpf
                    .program_mut(name)
                    .ok_or_else(|| format!("no program {name} in the object"))?
                    .try_into()
                    .map_err(|e| format!("{name}: {e}"))?;
                program
                    .load()
                    .map_err(|e| format!("loading {name}: {}", error_line(&e)))?;
            }
            Ok(Loaded::Aya)
        }) {
            Ok(_) => Ok(()),
            Err(why) => Err(why.clone()),
        }
    }

    /// Attaches `program` (one of the unit's) at file offset `offset` of `file`, in process
    /// `pid` only, loading the unit's programs first if needed.
    pub fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        program: &str,
        file: &Path,
        offset: u64,
        pid: NonZeroU32,
    ) -> Result<(), String> {
        self.load(ebpf)?;
        if let Some(Ok(Loaded::Multi(programs))) = &self.loaded {
            let link = programs.attach(program, file, offset, pid)?;
            self.links.add_owned(link);
            return Ok(());
        }
        let uprobe: &mut UProbe = ebpf
            .program_mut(program)
            .ok_or_else(|| format!("no program {program}"))?
            .try_into()
            .map_err(|e| format!("{e}"))?;
        let id = uprobe
            .attach(offset, file, UProbeScope::OneProcess(pid))
            .map_err(|e| error_line(&e))?;
        let link = uprobe.take_link(id).map_err(|e| error_line(&e))?;
        self.links.add(link);
        Ok(())
    }

    /// Attaches each of `programs` at the function `symbol` that `file` defines, in process
    /// `pid` only. `Ok(false)`: `file` is not an ELF file that defines `symbol`.
    pub fn attach_symbol(
        &mut self,
        ebpf: &mut Ebpf,
        programs: &[&str],
        file: &Path,
        symbol: &str,
        pid: NonZeroU32,
    ) -> Result<bool, String> {
        let Ok(offsets) = symbol_offsets(file, &[symbol]) else {
            return Ok(false);
        };
        let Some(offset) = offsets[0] else {
            return Ok(false);
        };
        for program in programs {
            self.attach(ebpf, program, file, offset, pid)
                .map_err(|e| format!("{symbol} ({program}): {e}"))?;
        }
        Ok(true)
    }

    /// How many uprobes the unit holds.
    pub fn attached(&self) -> usize {
        self.links.len()
    }

    /// The links, for `Probe::close` to take down with the others.
    pub fn take_links(&mut self) -> Links {
        std::mem::take(&mut self.links)
    }
}

/// Logs how long loading a unit's programs took (the verifier's work), at -v.
struct Timed(&'static str, std::time::Instant);

impl Drop for Timed {
    fn drop(&mut self) {
        log::debug!(
            "{} uprobe programs loaded in {:?}",
            self.0,
            self.1.elapsed()
        );
    }
}

/// The file offsets of the functions `names` that the ELF file at `path` defines (in its
/// dynamic symbols or its symbol table), in the order asked; `None` for one it does not
/// define (an import of it does not count). The file is mapped, not read: node is ~100 MB.
pub fn symbol_offsets(path: &Path, names: &[&str]) -> std::io::Result<Vec<Option<u64>>> {
    use object::{Object, ObjectSymbol};
    let file = std::fs::File::open(path)?;
    let map = Mapped::new(&file)?;
    let elf = object::File::parse(map.bytes()).map_err(std::io::Error::other)?;
    let mut out = vec![None; names.len()];
    for symbol in elf.dynamic_symbols().chain(elf.symbols()) {
        if symbol.is_undefined() || symbol.kind() != object::SymbolKind::Text {
            continue;
        }
        let Ok(name) = symbol.name() else {
            continue;
        };
        let Some(slot) = names.iter().position(|n| *n == name) else {
            continue;
        };
        if out[slot].is_some() {
            continue;
        }
        out[slot] = file_offset(&elf, &symbol);
    }
    Ok(out)
}

/// Where a function symbol's code sits in its file: its virtual address turned into a file
/// offset through its section (as aya does), which is what a uprobe is attached at. `None`
/// for a symbol without a section in the file.
pub fn file_offset<'data>(
    elf: &object::File<'data>,
    symbol: &impl object::ObjectSymbol<'data>,
) -> Option<u64> {
    use object::{Object, ObjectSection};
    let section = symbol
        .section_index()
        .and_then(|i| elf.section_by_index(i).ok())?;
    let (start, _) = section.file_range()?;
    Some(symbol.address() - section.address() + start)
}

/// A read-only private mapping of a whole file.
struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapped {
    fn new(file: &std::fs::File) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd;
        let len = file.metadata()?.len() as usize;
        if len == 0 {
            return Err(std::io::Error::other("empty file"));
        }
        // SAFETY: a fresh read-only private mapping of an open file; unmapped in Drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { ptr, len })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `len` readable bytes mapped at `ptr` for the life of self.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// An error and its sources, as one line. A verifier refusal carries the whole verifier log
/// (thousands of lines): the line keeps only the verifier's verdict, and the full log goes
/// to the `-v` log.
pub fn error_line(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    shorten_verifier_log(text)
}

/// `... Verifier output: <log>` → `... verifier: <the log's refusal line> (whole log at -v)`.
fn shorten_verifier_log(text: String) -> String {
    const MARK: &str = "Verifier output:";
    let Some(at) = text.find(MARK) else {
        return text;
    };
    log::debug!("uprobe refused by the verifier: {text}");
    let log = &text[at + MARK.len()..];
    // The refusal is the last line before the verifier's statistics.
    let stats = ["verification time", "stack depth", "processed ", ":"];
    let refusal = log
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !stats.iter().any(|s| l.starts_with(s)))
        .unwrap_or("refused");
    format!("{}verifier: {refusal} (whole log at -v)", &text[..at])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verifier_refusal_keeps_its_verdict_line_only() {
        let text = "loading ssl_return: the BPF_PROG_LOAD syscall returned Permission denied \
                    (os error 13). Verifier output: 0: R1=ctx() R10=fp0\n473: (85) call \
                    bpf_probe_read_user#112\nR1 unbounded memory access, make sure to bounds \
                    check any such access\nverification time 185748 usec\nstack depth 112+0\n\
                    processed 84783 insns (limit 1000000)\n: Permission denied (os error 13)"
            .to_string();
        assert_eq!(
            shorten_verifier_log(text),
            "loading ssl_return: the BPF_PROG_LOAD syscall returned Permission denied (os \
             error 13). verifier: R1 unbounded memory access, make sure to bounds check any \
             such access (whole log at -v)"
        );
        assert_eq!(shorten_verifier_log("no such file".into()), "no such file");
    }

    #[test]
    fn symbols_are_found_at_their_file_offsets_and_imports_do_not_count() {
        // This test binary defines `main` (a text symbol) and imports `malloc` from libc.
        let exe = std::fs::read_link("/proc/self/exe").expect("own executable");
        let offsets = symbol_offsets(&exe, &["main", "malloc", "no_such_function_here"])
            .expect("an ELF file");
        let main = offsets[0].expect("main defined");
        let size = std::fs::metadata(&exe).expect("size").len();
        assert!(main > 0 && main < size, "{main} within the file ({size})");
        assert_eq!(offsets[1], None, "malloc is an import here");
        assert_eq!(offsets[2], None);
        assert!(symbol_offsets(Path::new("/proc/self/status"), &["main"]).is_err());
    }
}
