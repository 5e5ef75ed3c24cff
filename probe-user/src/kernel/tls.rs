//! TLS libraries of the targets, hooked in userspace memory: uprobes on OpenSSL's
//! `SSL_write`, `SSL_read`, `SSL_write_ex`, `SSL_read_ex` (probe-ebpf/src/sockets/tls.rs),
//! wherever a target maps them: a shared libssl, or a binary that links OpenSSL statically
//! and exports its symbols (node).
//!
//! Each attachment is scoped to one process (a perf event with its pid: the kernel only
//! plants the breakpoints in that process's memory, so bystanders that map the same
//! libssl pay nothing). Processes are looked at when they become targets and again
//! whenever the session asks ([`TlsHooks::attach`] only does the work for libraries not yet
//! hooked in that process), so a library loaded later (a Python module importing `ssl`) or
//! a forked child is found too.
//!
//! A TLS conversation whose library was not hooked stays `unverified` in the report.

use std::{
    collections::HashSet,
    num::NonZeroU32,
    path::{Path, PathBuf},
};

use aya::{
    programs::{
        uprobe::{UProbeLinkId, UProbeScope},
        UProbe,
    },
    Ebpf,
};

/// Entry programs in the object and the function each is attached to; `true`: needed (a
/// library without it is not an OpenSSL the probe can read).
const ENTRIES: [(&str, &str, bool); 4] = [
    ("ssl_write", "SSL_write", true),
    ("ssl_read", "SSL_read", true),
    // OpenSSL 1.1.1+; CPython's ssl module uses these.
    ("ssl_write_ex", "SSL_write_ex", false),
    ("ssl_read_ex", "SSL_read_ex", false),
];
/// The one return program, attached to each function above.
const RETURN: &str = "ssl_return";

/// A TLS library found in a target, and whether drainwatch reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsLibrary {
    pub tgid: u32,
    /// As the target maps it (`/proc/PID/maps`).
    pub path: String,
    /// `Ok(kind)` when hooked (`"OpenSSL"`); `Err(why)` when a TLS library is there but its
    /// conversations cannot be read.
    pub outcome: Result<&'static str, String>,
}

impl TlsLibrary {
    /// One line for `-v` and the report: `pid 12: /usr/lib/.../libssl.so.3 (OpenSSL, read)`.
    pub fn describe(&self) -> String {
        match &self.outcome {
            Ok(kind) => format!(
                "pid {}: {} ({kind}, read in plaintext)",
                self.tgid, self.path
            ),
            Err(why) => format!("pid {}: {} (not read: {why})", self.tgid, self.path),
        }
    }
}

#[derive(Default)]
pub struct TlsHooks {
    /// Whether the uprobe programs loaded (once, at first use); `Err` says why not.
    loaded: Option<Result<(), String>>,
    /// (tgid, mapped path) already looked at.
    seen: HashSet<(u32, String)>,
    links: Vec<(&'static str, UProbeLinkId)>,
    found: Vec<TlsLibrary>,
}

impl TlsHooks {
    /// Every TLS library found so far, hooked or not.
    pub fn libraries(&self) -> &[TlsLibrary] {
        &self.found
    }

    /// The links, for [`super::probe::Probe::close`] to take down with the others.
    pub fn take_links(&mut self) -> Vec<(&'static str, UProbeLinkId)> {
        std::mem::take(&mut self.links)
    }

    /// Hooks the TLS libraries `tgid` maps now that were not hooked in it before; returns
    /// the ones newly found. A process that is gone yields nothing.
    pub fn attach(&mut self, ebpf: &mut Ebpf, tgid: u32) -> Vec<TlsLibrary> {
        let Some(pid) = NonZeroU32::new(tgid) else {
            return Vec::new();
        };
        let mut new = Vec::new();
        for path in candidates(tgid) {
            if !self.seen.insert((tgid, path.clone())) {
                continue;
            }
            let outcome = match unreadable_kind(&path) {
                Some(kind) => Err(format!("{kind} is not hooked")),
                None => match self.hook(ebpf, pid, &path).and_then(|hooked| {
                    if hooked {
                        switch_on(ebpf)?;
                    }
                    Ok(hooked)
                }) {
                    Ok(true) => Ok("OpenSSL"),
                    // No SSL_write: not a TLS library (an executable without OpenSSL).
                    Ok(false) => continue,
                    // Exited meanwhile (its /proc/PID/root is gone): nothing to say.
                    Err(_) if !Path::new(&format!("/proc/{tgid}/root/")).exists() => return new,
                    Err(why) => Err(why),
                },
            };
            let library = TlsLibrary {
                tgid,
                path,
                outcome,
            };
            log::debug!("TLS: {}", library.describe());
            self.found.push(library.clone());
            new.push(library);
        }
        new
    }

    /// Attaches the entry and return probes to one mapped file of one process. `Ok(false)`:
    /// the file does not define `SSL_write` and `SSL_read`.
    fn hook(&mut self, ebpf: &mut Ebpf, pid: NonZeroU32, path: &str) -> Result<bool, String> {
        // Through the process's own root, so a target in another mount namespace (a
        // container) is hooked in the file it really maps.
        let target = PathBuf::from(format!("/proc/{pid}/root{path}"));
        let names: Vec<&str> = ENTRIES.iter().map(|e| e.1).collect();
        let offsets = match symbol_offsets(&target, &names) {
            Ok(offsets) => offsets,
            // Not an ELF we can read: no OpenSSL there to hook.
            Err(_) => return Ok(false),
        };
        if ENTRIES
            .iter()
            .zip(&offsets)
            .any(|((_, _, needed), offset)| *needed && offset.is_none())
        {
            return Ok(false);
        }
        self.load(ebpf)?;
        for ((program, function, _), offset) in ENTRIES.iter().zip(offsets) {
            let Some(offset) = offset else {
                continue;
            };
            for name in [*program, RETURN] {
                let link = attach_one(ebpf, name, offset, &target, pid)
                    .map_err(|e| format!("{function} ({name}): {e}"))?;
                self.links.push((name, link));
            }
        }
        Ok(true)
    }

    fn load(&mut self, ebpf: &mut Ebpf) -> Result<(), String> {
        self.loaded
            .get_or_insert_with(|| {
                let started = std::time::Instant::now();
                let _timed = Timed(started);
                for name in ENTRIES.iter().map(|e| e.0).chain([RETURN]) {
                    let program: &mut UProbe = ebpf
                        .program_mut(name)
                        .ok_or_else(|| format!("no program {name} in the object"))?
                        .try_into()
                        .map_err(|e| format!("{name}: {e}"))?;
                    program
                        .load()
                        .map_err(|e| format!("loading {name}: {}", chain(&e)))?;
                }
                Ok(())
            })
            .clone()
    }
}

/// Logs how long loading the uprobe programs took (the verifier's work), at -v.
struct Timed(std::time::Instant);

impl Drop for Timed {
    fn drop(&mut self) {
        log::debug!("TLS uprobe programs loaded in {:?}", self.0.elapsed());
    }
}

/// Tells the kernel side that TLS libraries are hooked (`TLS_ON`): the socket hooks then
/// note what the SSL hooks need to tie a memory BIO's `SSL *` to its connection.
fn switch_on(ebpf: &mut Ebpf) -> Result<(), String> {
    let map = ebpf
        .map_mut(probe_common::map_names::TLS_ON)
        .ok_or("no TLS_ON map in the object")?;
    let mut on: aya::maps::Array<_, u32> =
        aya::maps::Array::try_from(map).map_err(|e| e.to_string())?;
    on.set(0, 1, 0).map_err(|e| chain(&e))
}

/// Attaches `program` at file offset `offset` of `target`, in process `pid` only.
fn attach_one(
    ebpf: &mut Ebpf,
    program: &str,
    offset: u64,
    target: &Path,
    pid: NonZeroU32,
) -> Result<UProbeLinkId, String> {
    let uprobe: &mut UProbe = ebpf
        .program_mut(program)
        .ok_or_else(|| format!("no program {program}"))?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    uprobe
        .attach(offset, target, UProbeScope::OneProcess(pid))
        .map_err(|e| chain(&e))
}

/// The file offsets of the functions `names` that the ELF file at `path` defines (in its
/// dynamic symbols or its symbol table), in the order asked; `None` for one it does not
/// define (an import of it does not count). The file is mapped, not read: node is ~100 MB.
fn symbol_offsets(path: &Path, names: &[&str]) -> std::io::Result<Vec<Option<u64>>> {
    use object::{Object, ObjectSection, ObjectSymbol};
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
        // A virtual address to a file offset, through its section (as aya does).
        let Some(section) = symbol
            .section_index()
            .and_then(|i| elf.section_by_index(i).ok())
        else {
            continue;
        };
        let Some((file_offset, _)) = section.file_range() else {
            continue;
        };
        out[slot] = Some(symbol.address() - section.address() + file_offset);
    }
    Ok(out)
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
fn chain(err: &dyn std::error::Error) -> String {
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
    log::debug!("TLS hook refused by the verifier: {text}");
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

/// Files a process maps executable that may hold an OpenSSL: any library with "ssl" in its
/// name (libssl.so.3; libssl3.so is NSS's and fails the symbol test), and the program
/// itself (node links OpenSSL statically and exports it). Known TLS libraries drainwatch
/// does not read are listed too, to be named in the report.
fn candidates(tgid: u32) -> Vec<String> {
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{tgid}/maps")) else {
        return Vec::new();
    };
    let exe = std::fs::read_link(format!("/proc/{tgid}/exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    let mut out: Vec<String> = Vec::new();
    for line in maps.lines() {
        // address perms offset dev inode path
        let mut fields = line.split_whitespace();
        let perms = fields.nth(1).unwrap_or("");
        let Some(path) = fields.nth(3) else {
            continue;
        };
        if !perms.contains('x') || !path.starts_with('/') {
            continue;
        }
        let name = path.rsplit('/').next().unwrap_or(path);
        let wanted =
            name.contains("ssl") || unreadable_kind(path).is_some() || exe.as_deref() == Some(path);
        if wanted && !out.iter().any(|p| p == path) {
            out.push(path.to_string());
        }
    }
    out
}

/// TLS libraries whose conversations drainwatch cannot read (no hooks for them).
fn unreadable_kind(path: &str) -> Option<&'static str> {
    let name = path.rsplit('/').next().unwrap_or(path);
    if name.starts_with("libgnutls") {
        Some("GnuTLS")
    } else if name.starts_with("libnss3") {
        Some("NSS")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::shorten_verifier_log;

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
}
