//! Which processes are targets (docs/design.md, "target"): the ones named by `--pid`, `--comm`,
//! `--unit` and `--cgroup`, plus their descendants that already exist at attach (pre-fork
//! workers: an nginx master brings its workers). Forks after attach are the kernel's job
//! (sched_process_fork); this module only reads /proc and cgroupfs, once per attach.
//!
//! Refused with exit 2: pid 1 (init drops default-action signals and is never a server to
//! drain), kernel threads (no user program, no sockets of their own) and drainwatch itself.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use crate::{host::procfs, Error, Result};

/// PF_KTHREAD, the `flags` field of /proc/PID/stat for kernel threads
/// (include/linux/sched.h).
const PF_KTHREAD: u64 = 0x0020_0000;

/// How deep a cgroup tree is searched for a unit (systemd nests units under slices:
/// /system.slice/NAME.service, /user.slice/user-1000.slice/user@1000.service/app.slice/...).
const UNIT_SEARCH_DEPTH: usize = 6;

/// A cgroup selector, resolved to its directory before anything is attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupSelector {
    /// What the user wrote: `--unit nginx.service` or `--cgroup PATH`.
    pub label: String,
    /// The cgroup directory (with its cgroup.procs).
    pub dir: PathBuf,
}

/// Fields of /proc/PID/stat after the parenthesised comm (proc(5)): state is [0], ppid [1],
/// flags [6].
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// The parent process of a process (its ppid), from /proc/PID/stat.
pub fn parent_of(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// A kernel thread: PF_KTHREAD set, or a child of kthreadd (pid 2) on kernels where the flag
/// reads otherwise. kthreadd itself has PF_KTHREAD.
pub fn is_kernel_thread(pid: u32) -> bool {
    let Some(fields) = stat_fields(pid) else {
        return false;
    };
    let flags: u64 = fields.get(6).and_then(|f| f.parse().ok()).unwrap_or(0);
    flags & PF_KTHREAD != 0 || pid == 2 || fields.get(1).is_some_and(|ppid| ppid == "2")
}

/// Why a process can never be a target, if it cannot.
pub fn refusal(pid: u32) -> Option<Error> {
    if pid == std::process::id() {
        return Some(Error::SelfTarget(pid));
    }
    if pid == 1 {
        return Some(Error::Init);
    }
    if is_kernel_thread(pid) {
        return Some(Error::KernelThread {
            pid,
            comm: procfs::comm(pid).unwrap_or_default(),
        });
    }
    None
}

/// Every process (tgid) and its parent, from one pass over /proc.
fn parents() -> BTreeMap<u32, u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return BTreeMap::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, parent_of(pid)?)))
        .collect()
}

/// The descendants of `roots` that exist now, each with its parent, parents before children.
/// drainwatch itself (and what it launched) is left out: `--pid $$` names the shell that
/// runs drainwatch.
pub fn descendants(roots: &[u32]) -> Vec<(u32, u32)> {
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for (pid, parent) in parents() {
        children.entry(parent).or_default().push(pid);
    }
    let own = std::process::id();
    let mut seen: BTreeSet<u32> = roots.iter().copied().collect();
    let mut queue: std::collections::VecDeque<u32> = roots.iter().copied().collect();
    let mut out = Vec::new();
    while let Some(parent) = queue.pop_front() {
        for &child in children.get(&parent).into_iter().flatten() {
            if child == own || !seen.insert(child) {
                continue;
            }
            out.push((child, parent));
            queue.push_back(child);
        }
    }
    out
}

/// Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup on unified hosts,
/// /sys/fs/cgroup/unified on hybrid ones), from /proc/self/mountinfo (proc(5): the
/// filesystem type follows the ` - ` separator, the mount point is field 5).
pub fn cgroup2_root() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_cgroup2_root(&info)
}

fn parse_cgroup2_root(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        if fs.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        Some(PathBuf::from(mount.split_whitespace().nth(4)?))
    })
}

fn is_cgroup_dir(dir: &Path) -> bool {
    dir.join("cgroup.procs").is_file()
}

/// `--cgroup PATH`: a cgroup directory (`/sys/fs/cgroup/system.slice/docker-ID.scope`), or
/// the path /proc/PID/cgroup shows (`/system.slice/docker-ID.scope`), under the cgroup v2
/// mount.
pub fn cgroup_selector(text: &str) -> Result<CgroupSelector> {
    let given = PathBuf::from(text);
    let dir = if is_cgroup_dir(&given) {
        Some(given)
    } else {
        cgroup2_root()
            .map(|root| root.join(text.trim_start_matches('/')))
            .filter(|dir| is_cgroup_dir(dir))
    };
    let dir = dir.ok_or_else(|| Error::NoCgroup {
        path: text.to_string(),
        root: cgroup2_root().map(|r| r.display().to_string()),
    })?;
    Ok(CgroupSelector {
        label: text.to_string(),
        dir,
    })
}

/// `--unit NAME.service`: the cgroup systemd made for the unit, found by name under the
/// cgroup v2 mount (systemd.unit(5): every unit's processes live in a cgroup named after
/// it). A name without a suffix means `.service`, as with systemctl.
pub fn unit_selector(text: &str) -> Result<CgroupSelector> {
    let name = if text.contains('.') {
        text.to_string()
    } else {
        format!("{text}.service")
    };
    let invalid = || Error::InvalidValue {
        what: "unit",
        value: text.to_string(),
        hint: "use a unit name like nginx.service, as `systemctl status` shows it",
    };
    if name.contains('/') || name.starts_with('.') {
        return Err(invalid());
    }
    let root = cgroup2_root().ok_or(Error::NoCgroup2)?;
    let mut found = Vec::new();
    find_named(&root, &name, UNIT_SEARCH_DEPTH, &mut found);
    // The system instance wins over a user instance's unit of the same name.
    let system = root.join("system.slice").join(&name);
    let dir = match found.len() {
        0 => {
            return Err(Error::NoSuchUnit {
                unit: name,
                root: root.display().to_string(),
            })
        }
        1 => found.remove(0),
        _ if found.contains(&system) => system,
        _ => {
            return Err(Error::AmbiguousUnit {
                unit: name,
                first: found[0].display().to_string(),
                second: found[1].display().to_string(),
            })
        }
    };
    Ok(CgroupSelector { label: name, dir })
}

fn find_named(dir: &Path, name: &str, depth: usize, found: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if entry.file_name() == name && is_cgroup_dir(&path) {
            found.push(path);
        } else if depth > 1 {
            find_named(&path, name, depth - 1, found);
        }
    }
}

/// The processes of a cgroup and of every cgroup below it (cgroup v2's cgroup.procs lists
/// only the cgroup's own members; docs/admin-guide/cgroup-v2.rst).
pub fn cgroup_procs(dir: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(cgroup_procs(&entry.path()));
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Why a process is selected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selected {
    /// `--pid`.
    Pid,
    /// `--comm NAME`.
    Comm(String),
    /// `--unit` or `--cgroup` (the label).
    Cgroup(String),
}

/// The processes the selectors match now (not yet their descendants), in order, each once.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub members: Vec<(u32, Selected)>,
}

impl Selection {
    /// Resolves the selectors against /proc and cgroupfs now. `pids` were validated when the
    /// flags were read. A `--comm` or cgroup that takes in pid 1 or a kernel thread is
    /// refused; drainwatch itself is left out of them.
    pub fn resolve(pids: &[u32], comms: &[String], cgroups: &[CgroupSelector]) -> Result<Self> {
        let mut members: Vec<(u32, Selected)> = Vec::new();
        let mut add = |pid: u32, why: Selected| {
            if !members.iter().any(|(p, _)| *p == pid) {
                members.push((pid, why));
            }
        };
        for &pid in pids {
            add(pid, Selected::Pid);
        }
        let own = std::process::id();
        for comm in comms {
            for pid in procfs::pids_with_comm(std::slice::from_ref(comm)) {
                if pid == own {
                    continue;
                }
                if let Some(err) = refusal(pid) {
                    return Err(Error::SelectorRefused {
                        selector: format!("--comm {comm}"),
                        cause: err.to_string(),
                    });
                }
                add(pid, Selected::Comm(comm.clone()));
            }
        }
        for cgroup in cgroups {
            for pid in cgroup_procs(&cgroup.dir) {
                if pid == own || procfs::tgid_of(pid) != Some(pid) {
                    continue;
                }
                if let Some(err) = refusal(pid) {
                    return Err(Error::SelectorRefused {
                        selector: cgroup.label.clone(),
                        cause: err.to_string(),
                    });
                }
                add(pid, Selected::Cgroup(cgroup.label.clone()));
            }
        }
        Ok(Self { members })
    }

    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().map(|(pid, _)| *pid).collect()
    }

    /// The selectors (as the user wrote them) that matched no process now.
    pub fn unmatched(&self, comms: &[String], cgroups: &[CgroupSelector]) -> Vec<String> {
        let mut out = Vec::new();
        for comm in comms {
            if !self
                .members
                .iter()
                .any(|(_, w)| *w == Selected::Comm(comm.clone()))
            {
                out.push(format!("--comm {comm}"));
            }
        }
        for cgroup in cgroups {
            if !self
                .members
                .iter()
                .any(|(_, w)| *w == Selected::Cgroup(cgroup.label.clone()))
            {
                out.push(cgroup.label.clone());
            }
        }
        out
    }

    /// Every selector, as the user wrote it.
    pub fn labels(&self, comms: &[String], cgroups: &[CgroupSelector]) -> Vec<String> {
        let pids = self
            .members
            .iter()
            .filter(|(_, w)| *w == Selected::Pid)
            .map(|(pid, _)| format!("--pid {pid}"));
        let comms = comms.iter().map(|c| format!("--comm {c}"));
        pids.chain(comms)
            .chain(cgroups.iter().map(|c| c.label.clone()))
            .collect()
    }

    /// What `stop` signals: every process named by `--pid`, and every process a `--comm`,
    /// `--unit` or `--cgroup` matched whose parent is not a target too. A pre-fork server
    /// hears the signal through its master, which is how it is meant to be stopped (nginx's
    /// workers take SIGTERM from anyone as a fast shutdown); for a unit this is its main
    /// process, systemd's KillMode=mixed.
    pub fn to_signal(&self, tree: &BTreeSet<u32>) -> Vec<u32> {
        self.members
            .iter()
            .filter(|(pid, why)| {
                *why == Selected::Pid || parent_of(*pid).is_none_or(|p| !tree.contains(&p))
            })
            .map(|(pid, _)| *pid)
            .collect()
    }

    /// The selection and every descendant that exists now: the whole tree.
    pub fn tree(&self) -> BTreeSet<u32> {
        let pids = self.pids();
        let mut tree: BTreeSet<u32> = pids.iter().copied().collect();
        tree.extend(descendants(&pids).into_iter().map(|(child, _)| child));
        tree
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_on_unified_and_hybrid_hosts() {
        let unified = "35 24 0:30 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_root(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let hybrid = "30 25 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                      31 25 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_root(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            parse_cgroup2_root("1 2 0:3 / /proc rw - proc proc rw\n"),
            None
        );
    }

    #[test]
    fn refuses_init_kernel_threads_and_itself() {
        assert!(matches!(refusal(1), Some(Error::Init)));
        assert!(matches!(
            refusal(std::process::id()),
            Some(Error::SelfTarget(_))
        ));
        // kthreadd is pid 2 on every Linux since 2.6.22 (kernel/kthread.c).
        assert!(is_kernel_thread(2));
        assert!(matches!(refusal(2), Some(Error::KernelThread { .. })));
        assert!(!is_kernel_thread(std::process::id()));
    }

    #[test]
    fn a_child_process_is_a_descendant() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let me = std::process::id();
        let found = descendants(&[me]);
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&(child.id(), me)), "{found:?}");
    }

    #[test]
    fn stop_signals_what_was_named_and_the_tops_of_matched_trees() {
        let me = std::process::id();
        let parent = parent_of(me).unwrap();
        let selection = Selection {
            members: vec![
                (parent, Selected::Comm("x".into())),
                (me, Selected::Comm("x".into())),
            ],
        };
        let tree: BTreeSet<u32> = [parent, me].into();
        assert_eq!(selection.to_signal(&tree), vec![parent]);
        let named = Selection {
            members: vec![(me, Selected::Pid)],
        };
        assert_eq!(named.to_signal(&[parent, me].into()), vec![me]);
    }
}
