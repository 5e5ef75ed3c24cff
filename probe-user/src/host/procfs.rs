//! Small reads from /proc (see proc(5)). Every function returns `None` when the process is
//! gone: processes come and go while drainwatch runs, and that is not an error.

use std::{fs, path::Path, time::Duration};

pub fn process_exists(tgid: u32) -> bool {
    fs::metadata(format!("/proc/{tgid}/stat")).is_ok() && tgid_of(tgid) == Some(tgid)
}

/// The task's `comm` (at most 15 bytes).
pub fn comm(pid: u32) -> Option<String> {
    let raw = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(raw.trim_end_matches('\n').to_string())
}

/// Whether a process runs a 32-bit ELF program (`/proc/PID/exe`'s ELF class, elf(5)): its
/// system calls go through the ia32 table, whose numbers the probe does not read.
pub fn is_32bit(pid: u32) -> bool {
    elf_is_32bit(Path::new(&format!("/proc/{pid}/exe")))
}

/// ELF class 1 (ELFCLASS32) in the file's identification bytes.
fn elf_is_32bit(path: &Path) -> bool {
    use std::io::Read;
    let mut ident = [0u8; 5];
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut ident))
        .is_ok_and(|()| ident[..4] == *b"\x7fELF" && ident[4] == 1)
}

/// Whether a process has ended: its /proc entry is gone, or it is a zombie (dead, not yet
/// reaped). proc(5): the state is the field after the parenthesised comm in /proc/PID/stat.
pub fn has_ended(tgid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{tgid}/stat")) else {
        return true;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    matches!(state, Some("Z" | "X" | "x"))
}

/// The command line, arguments joined by spaces; `None` if gone or a kernel thread.
pub fn cmdline(tgid: u32) -> Option<String> {
    let raw = fs::read(format!("/proc/{tgid}/cmdline")).ok()?;
    if raw.is_empty() {
        return None;
    }
    let text = raw
        .split(|b| *b == 0)
        .filter(|part| !part.is_empty())
        .map(|part| String::from_utf8_lossy(part).into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    Some(text)
}

/// The tgid (process) that a pid (thread) belongs to, from the `Tgid:` line of status.
pub fn tgid_of(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Tgid:"))
        .and_then(|value| value.trim().parse().ok())
}

/// The pids (threads) of a tgid, from /proc/TGID/task.
pub fn threads(tgid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir(format!("/proc/{tgid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Processes (tgids) whose comm is one of `names`.
pub fn pids_with_comm(names: &[String]) -> Vec<u32> {
    if names.is_empty() {
        return Vec::new();
    }
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| comm(*pid).is_some_and(|c| names.contains(&c)))
        .collect()
}

/// The executable's file name, from the /proc/PID/exe link.
pub fn exe_name(pid: u32) -> Option<String> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    Some(exe.file_name()?.to_str()?.to_string())
}

/// CLOCK_MONOTONIC now, the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(process_exists(me));
        assert_eq!(tgid_of(me), Some(me));
        assert!(threads(me).contains(&me));
        assert!(cmdline(me).is_some());
        assert!(comm(me).is_some());
        assert!(!process_exists(0));
        assert!(!has_ended(me));
        assert!(has_ended(4_194_304), "above pid_max: no such process");
    }
}

#[cfg(test)]
mod elf_tests {
    use super::*;

    #[test]
    fn tells_32_bit_programs_from_64_bit_ones() {
        let dir = std::env::temp_dir().join(format!("dw-elf-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let (elf32, elf64, text) = (dir.join("a32"), dir.join("a64"), dir.join("txt"));
        fs::write(&elf32, b"\x7fELF\x01\x01\x01\0").unwrap();
        fs::write(&elf64, b"\x7fELF\x02\x01\x01\0").unwrap();
        fs::write(&text, b"#!/bin/sh\n").unwrap();
        assert!(elf_is_32bit(&elf32));
        assert!(!elf_is_32bit(&elf64));
        assert!(!elf_is_32bit(&text));
        assert!(!elf_is_32bit(&dir.join("missing")));
        assert!(
            !is_32bit(std::process::id()),
            "this test runs as a 64-bit program"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
