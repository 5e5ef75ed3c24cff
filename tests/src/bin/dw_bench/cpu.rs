//! The CPU time a server process spends, read from a cgroup of its own: the scheduler's
//! own accounting in ns (cgroup v1 `cpuacct.usage`, or v2 `cpu.stat` `usage_usec`), which
//! keeps the time of threads that have exited (the fixture server runs a thread per
//! connection) and, unlike req/s, does not move when another session's tasks take the CPU
//! away for a while. What a hook costs the server is its CPU time per request.

use std::{fs, path::PathBuf};

pub struct CpuGroup {
    dir: PathBuf,
    /// The parent's `cgroup.procs`, where the processes go back before the group is removed.
    parent_procs: PathBuf,
    v2: bool,
}

/// Where the cgroup v1 `cpuacct` hierarchy, or else the cgroup v2 one, is mounted.
fn hierarchy() -> Option<(PathBuf, bool)> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    let mut v2 = None;
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, dir, kind, opts, ..] = fields.as_slice() else {
            continue;
        };
        match *kind {
            "cgroup" if opts.split(',').any(|o| o == "cpuacct") => {
                return Some((PathBuf::from(dir), false))
            }
            "cgroup2" if v2.is_none() => v2 = Some(PathBuf::from(dir)),
            _ => {}
        }
    }
    v2.map(|dir| (dir, true))
}

impl CpuGroup {
    /// Moves process `pid` (all its threads, and those it starts later) into a new cgroup
    /// `name`.
    pub fn new(name: &str, pid: u32) -> Result<Self, String> {
        let (root, v2) = hierarchy().ok_or("no cgroup cpuacct (v1) or cgroup2 mount")?;
        let dir = root.join(name);
        let _ = fs::remove_dir(&dir);
        fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let group = Self {
            parent_procs: root.join("cgroup.procs"),
            dir,
            v2,
        };
        fs::write(group.dir.join("cgroup.procs"), pid.to_string())
            .map_err(|e| format!("moving {pid} into {}: {e}", group.dir.display()))?;
        Ok(group)
    }

    /// CPU time used by the group's tasks since it was made, in ns.
    pub fn used_ns(&self) -> u64 {
        if self.v2 {
            let stat = fs::read_to_string(self.dir.join("cpu.stat")).unwrap_or_default();
            stat.lines()
                .find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse::<u64>().ok())
                .map_or(0, |us| us * 1_000)
        } else {
            fs::read_to_string(self.dir.join("cpuacct.usage"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0)
        }
    }
}

impl Drop for CpuGroup {
    fn drop(&mut self) {
        let procs = fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines() {
            let _ = fs::write(&self.parent_procs, pid);
        }
        let _ = fs::remove_dir(&self.dir);
    }
}
