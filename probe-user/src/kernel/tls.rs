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
                None => match self.hook(ebpf, pid, &path) {
                    Ok(true) => Ok("OpenSSL"),
                    // No SSL_write: not a TLS library (an executable without OpenSSL).
                    Ok(false) => continue,
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
    /// the file does not export `SSL_write`.
    fn hook(&mut self, ebpf: &mut Ebpf, pid: NonZeroU32, path: &str) -> Result<bool, String> {
        self.load(ebpf)?;
        // Through the process's own root, so a target in another mount namespace (a
        // container) is hooked in the file it really maps.
        let target = PathBuf::from(format!("/proc/{pid}/root{path}"));
        for (program, function, needed) in ENTRIES {
            match attach_one(ebpf, program, function, &target, pid) {
                Ok(link) => self.links.push((program, link)),
                Err(AttachError::NoSymbol) if program == "ssl_write" => return Ok(false),
                Err(AttachError::NoSymbol) if !needed => continue,
                Err(err) => return Err(format!("{function}: {err}")),
            }
            match attach_one(ebpf, RETURN, function, &target, pid) {
                Ok(link) => self.links.push((RETURN, link)),
                Err(err) => return Err(format!("{function} return: {err}")),
            }
        }
        Ok(true)
    }

    fn load(&mut self, ebpf: &mut Ebpf) -> Result<(), String> {
        self.loaded
            .get_or_insert_with(|| {
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

enum AttachError {
    NoSymbol,
    Other(String),
}

impl std::fmt::Display for AttachError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttachError::NoSymbol => f.write_str("symbol not found"),
            AttachError::Other(why) => f.write_str(why),
        }
    }
}

fn attach_one(
    ebpf: &mut Ebpf,
    program: &str,
    function: &str,
    target: &Path,
    pid: NonZeroU32,
) -> Result<UProbeLinkId, AttachError> {
    let uprobe: &mut UProbe = ebpf
        .program_mut(program)
        .ok_or_else(|| AttachError::Other(format!("no program {program}")))?
        .try_into()
        .map_err(|e| AttachError::Other(format!("{e}")))?;
    uprobe
        .attach(function, target, UProbeScope::OneProcess(pid))
        .map_err(|e| {
            let text = chain(&e);
            // aya's ResolveSymbolError::Unknown ("unknown symbol `SSL_write`"), or an ELF
            // without the symbol and without a debuglink.
            if text.contains("unknown symbol") || text.contains("debuglink") {
                AttachError::NoSymbol
            } else {
                AttachError::Other(text)
            }
        })
}

/// An error and its sources, as one line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
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
