//! TLS libraries of the targets, hooked in userspace memory: uprobes on OpenSSL's
//! `SSL_write`, `SSL_read`, `SSL_write_ex`, `SSL_read_ex` (probe-ebpf/src/sockets/tls.rs),
//! wherever a target maps them: a shared libssl, or a binary that links OpenSSL statically
//! and exports its symbols (node).
//!
//! Each attachment is scoped to one process (kernel/uprobe.rs: bystanders that map the same
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

use aya::Ebpf;

use crate::kernel::{
    links::Links,
    mapped::{self, Mapping},
    uprobe::{self, UprobeUnit, Uprobes},
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

pub struct TlsHooks {
    /// The uprobes (kernel/uprobe.rs): loaded at the first library found, by process.
    uprobes: Uprobes,
    /// (tgid, mapped path) already looked at.
    seen: HashSet<(u32, String)>,
    found: Vec<TlsLibrary>,
}

impl Default for TlsHooks {
    fn default() -> Self {
        Self {
            uprobes: Uprobes::new("TLS", ENTRIES.iter().map(|e| e.0).chain([RETURN])),
            seen: HashSet::new(),
            found: Vec::new(),
        }
    }
}

impl UprobeUnit for TlsHooks {
    fn take_links(&mut self) -> Links {
        self.uprobes.take_links()
    }
}

impl TlsHooks {
    /// Every TLS library found so far, hooked or not.
    pub fn libraries(&self) -> &[TlsLibrary] {
        &self.found
    }

    /// Hooks the TLS libraries `tgid` maps now that were not hooked in it before; returns
    /// the ones newly found. A process that is gone yields nothing.
    pub fn attach(&mut self, ebpf: &mut Ebpf, tgid: u32) -> Vec<TlsLibrary> {
        let Some(pid) = NonZeroU32::new(tgid) else {
            return Vec::new();
        };
        let mut new = Vec::new();
        for (path, file) in candidates(tgid) {
            if !self.seen.insert((tgid, path.clone())) {
                continue;
            }
            let outcome = match unreadable_kind(&path) {
                Some(kind) => Err(format!("{kind} is not hooked")),
                None => match self.hook(ebpf, pid, &file).and_then(|hooked| {
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

    /// Attaches the entry and return probes to one mapped file of one process, opened at
    /// `target` (kernel/mapped.rs). `Ok(false)`: the file does not define `SSL_write` and
    /// `SSL_read`.
    fn hook(&mut self, ebpf: &mut Ebpf, pid: NonZeroU32, target: &Path) -> Result<bool, String> {
        let names: Vec<&str> = ENTRIES.iter().map(|e| e.1).collect();
        let offsets = match uprobe::symbol_offsets(target, &names) {
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
        for ((program, function, _), offset) in ENTRIES.iter().zip(offsets) {
            let Some(offset) = offset else {
                continue;
            };
            for name in [*program, RETURN] {
                self.uprobes
                    .attach(ebpf, name, target, offset, pid)
                    .map_err(|e| format!("{function} ({name}): {e}"))?;
            }
        }
        Ok(true)
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
    on.set(0, 1, 0).map_err(|e| uprobe::error_line(&e))
}

/// Files a process maps executable that may hold an OpenSSL: any library with "ssl" in its
/// name (libssl.so.3; libssl3.so is NSS's and fails the symbol test), and the program
/// itself (node links OpenSSL statically and exports it). Known TLS libraries drainwatch
/// does not read are listed too, to be named in the report.
fn candidates(tgid: u32) -> Vec<(String, PathBuf)> {
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{tgid}/maps")) else {
        return Vec::new();
    };
    let exe = mapped::exe_of(tgid);
    let mut out: Vec<(String, PathBuf)> = Vec::new();
    for mapping in maps.lines().filter_map(Mapping::parse) {
        let path = mapping.path;
        if !mapping.executable || out.iter().any(|(p, _)| p == path) {
            continue;
        }
        let name = path.rsplit('/').next().unwrap_or(path);
        let wanted =
            name.contains("ssl") || unreadable_kind(path).is_some() || exe.as_deref() == Some(path);
        if wanted {
            // A library upgraded on disk while the process runs is hooked in the file it maps.
            let file = mapping
                .replaced(tgid)
                .unwrap_or_else(|| mapped::in_process(tgid, path));
            out.push((path.to_string(), file));
        }
    }
    out
}

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
