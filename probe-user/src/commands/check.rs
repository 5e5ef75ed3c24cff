//! `drainwatch check --pid PID`: preflight, no waiting. Can this process tree be stopped
//! gracefully right now? Lists the tree a stop would watch and what it would leave out,
//! reads the stop signal's disposition in the processes it goes to from /proc/PID/status
//! (SigCgt, SigIgn, SigBlk; proc(5)), knows the servers whose handled SIGTERM is a fast
//! shutdown (`verdict/shutdown.rs`), and counts the connections the tree holds from /proc.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use crate::{
    events::{signals, Role},
    host::pidfd::{self, Disposition},
    host::targets::{self, Selection},
    host::{netstat, procfs},
    output::preflight::{render, CheckReport, ConnLine, ProcessLine, Unwatched},
    output::summary::protocol_name,
    session::{
        db_view,
        existing::{self, Held},
        unix_existing,
    },
    settings::CheckSettings,
    verdict::shutdown,
    Error, Result,
};

/// The signals whose default action is to do nothing (signal(7)): sent to a program without
/// a handler, they are dropped and a stop would time out.
const DEFAULT_IGNORED: [i32; 4] = [libc::SIGCHLD, libc::SIGCONT, libc::SIGURG, libc::SIGWINCH];

/// Whether drainwatch may read the process's open files: without that it sees no connection,
/// and "0 connections" would be a lie.
fn can_see(pid: u32) -> Result<()> {
    match std::fs::read_dir(format!("/proc/{pid}/fd")) {
        Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => Err(Error::CannotSee {
            pid,
            comm: procfs::comm(pid).unwrap_or_default(),
        }),
        _ => Ok(()),
    }
}

/// Why a stop with `signal` is not graceful for one signalled process, if it is not.
fn judge(
    pid: u32,
    comm: &str,
    signal: i32,
    disposition: Disposition,
    work: &str,
) -> Option<String> {
    let name = signals::name(signal);
    match disposition {
        Disposition::Handled => None,
        Disposition::Default if DEFAULT_IGNORED.contains(&signal) => Some(format!(
            "{comm} ({pid}) has no {name} handler and {name} does nothing by default: \
             `drainwatch stop` would time out; use --signal with the signal it handles"
        )),
        Disposition::Default => Some(format!(
            "{comm} ({pid}) has no {name} handler: {name} will kill it at once, like kill -9, with {work}"
        )),
        Disposition::Ignored => Some(format!(
            "{comm} ({pid}) ignores {name}: `drainwatch stop` would time out; use --signal with the signal it handles"
        )),
        Disposition::Blocked => Some(format!(
            "{comm} ({pid}) blocks {name}: it stays pending until the program unblocks it"
        )),
    }
}

/// Processes outside the tree that hold a socket of the tree (a listener shared with a
/// process that was reparented, a sibling under SO_REUSEPORT would not share it), and the
/// other processes of the systemd unit a named process runs in.
fn unwatched(tree: &BTreeSet<u32>) -> Vec<Unwatched> {
    let mut out: Vec<Unwatched> = Vec::new();
    let mut add = |pid: u32, why: String| {
        if !tree.contains(&pid)
            && !out.iter().any(|u| u.pid == pid)
            && targets::refusal(pid).is_none()
        {
            out.push(Unwatched {
                pid,
                comm: procfs::comm(pid).unwrap_or_default(),
                why,
            });
        }
    };
    let inodes: BTreeSet<u64> = tree
        .iter()
        .flat_map(|pid| netstat::socket_fds(*pid))
        .map(|(_, inode)| inode)
        .collect();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for pid in dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
            if tree.contains(&pid) {
                continue;
            }
            if netstat::socket_fds(pid)
                .iter()
                .any(|(_, inode)| inodes.contains(inode))
            {
                add(pid, "holds a socket of the tree".into());
            }
        }
    }
    let units: BTreeSet<PathBuf> = tree.iter().filter_map(|pid| unit_cgroup_of(*pid)).collect();
    for unit in units {
        let name = unit
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for pid in targets::cgroup_procs(&unit) {
            add(pid, format!("runs in {name} too (add --unit {name})"));
        }
    }
    out
}

/// The cgroup of the systemd unit (`*.service`, `*.scope`) a process runs in, from the
/// `0::PATH` line of /proc/PID/cgroup (cgroup v2).
fn unit_cgroup_of(pid: u32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let unit = Path::new(path).ancestors().find(|p| {
        p.extension()
            .is_some_and(|e| e == "service" || e == "scope")
    })?;
    let dir = targets::cgroup2_root()?.join(unit.strip_prefix("/").ok()?);
    dir.is_dir().then_some(dir)
}

pub fn run(settings: &CheckSettings) -> Result<u8> {
    let set = &settings.targets;
    let selection = Selection::resolve(&set.pids, &set.comms, &set.cgroups)?;
    let unmatched = selection.unmatched(&set.comms, &set.cgroups);
    if !unmatched.is_empty() {
        return Err(Error::NothingMatched(unmatched));
    }
    let tree = selection.tree();
    for pid in &tree {
        can_see(*pid)?;
    }
    let signalled = selection.to_signal(&tree);
    let mut held = Vec::new();
    let mut unix_dbs = Vec::new();
    let mut waiting = 0;
    for &pid in &tree {
        let found = existing::survey(pid, &settings.common);
        // Unix-domain ones too (PostgreSQL's socket directory, mysqld.sock): the usual
        // same-host setup.
        let unix = unix_existing::survey(pid);
        let db_fds: Vec<u32> = found
            .iter()
            .filter(|h| h.role == Role::Db)
            .flat_map(|h| h.fds.iter().copied())
            .chain(unix.iter().flat_map(|u| u.fds.iter().copied()))
            .collect();
        waiting += existing::threads_blocked_reading(pid, &db_fds);
        held.extend(found.into_iter().map(|h| (pid, h)));
        unix_dbs.extend(unix.into_iter().map(|u| (pid, u)));
    }
    // A socket held by several processes of the tree (a listener inherited by every
    // worker) is one socket.
    let count = |role: Role| {
        let unix = unix_dbs
            .iter()
            .filter(|_| role == Role::Db)
            .map(|(_, u)| u.inode);
        held.iter()
            .filter(|(_, h)| h.role == role)
            .map(|(_, h)| h.inode)
            .chain(unix)
            .collect::<BTreeSet<u64>>()
            .len()
    };
    let work = format!(
        "{} client connections, {} database connections ({} queries waiting for an answer)",
        count(Role::Client),
        count(Role::Db),
        waiting
    );
    let mut reasons = Vec::new();
    let mut processes = Vec::new();
    let mut known_server = None;
    let mut first_signal = None;
    for &pid in &tree {
        let comm = procfs::comm(pid).unwrap_or_default();
        let is_signalled = signalled.contains(&pid);
        let disposition = if is_signalled {
            // The signal `stop` would send it: --signal, else its server's graceful one.
            let server = shutdown::known(procfs::exe_name(pid).as_deref(), &comm);
            let (signal, _) = shutdown::stop_signal(settings.signal, server);
            first_signal.get_or_insert(signal);
            let disposition =
                pidfd::disposition_of(pid, signal).ok_or(Error::NoSuchProcess(pid))?;
            reasons.extend(judge(pid, &comm, signal, disposition, &work));
            if let Some(row) = server {
                if disposition == Disposition::Handled && row.fast.contains(&signal) {
                    reasons.push(format!(
                        "{comm} ({pid}): for {}, {} is a fast shutdown that cuts what is in \
                         flight; its graceful stop is --signal {} ({})",
                        row.name,
                        signals::name(signal),
                        signals::name(row.graceful).trim_start_matches("SIG"),
                        row.source
                    ));
                }
                known_server.get_or_insert_with(|| format!("{} ({})", row.name, row.source));
            }
            Some(disposition)
        } else {
            None
        };
        processes.push(ProcessLine {
            pid,
            comm,
            parent_pid: targets::parent_of(pid).filter(|p| tree.contains(p)),
            signalled: is_signalled,
            disposition,
        });
    }
    let first = processes
        .iter()
        .find(|p| p.signalled)
        .ok_or_else(|| Error::NothingMatched(selection.labels(&set.comms, &set.cgroups)))?;
    let report = CheckReport {
        pid: first.pid,
        comm: first.comm.clone(),
        signal: signals::name(first_signal.unwrap_or(libc::SIGTERM)),
        disposition: first.disposition.unwrap_or(Disposition::Default),
        known_server,
        graceful_stop_possible: reasons.is_empty(),
        reasons,
        unwatched: unwatched(&tree),
        processes,
        listeners: count(Role::Listener),
        client_connections: count(Role::Client),
        db_connections: count(Role::Db),
        upstream_connections: count(Role::Upstream),
        db_queries_waiting: waiting,
        connections: {
            // By pid, then fd: the order `ls /proc/PID/fd` and `ss -p` readers expect.
            let mut lines: Vec<ConnLine> = held.iter().map(|(pid, h)| conn_line(*pid, h)).collect();
            lines.extend(unix_dbs.iter().map(|(pid, u)| unix_line(*pid, u)));
            lines.sort_by_key(|c| (c.pid, c.fd));
            lines
        },
    };
    if let Some(why) = db_view::db_view_problem(&settings.common) {
        eprintln!("drainwatch: warning: {why}: transactions open before attach would stay unknown");
    }
    // `check ... | head -n 3`: a reader gone is no error (output/mod.rs).
    if settings.common.json {
        let json = serde_json::to_string(&report).expect("check serializes");
        crate::output::print_out(&format!("{json}\n"));
    } else {
        crate::output::print_out(&render(&report));
    }
    Ok(if report.graceful_stop_possible { 0 } else { 1 })
}

fn conn_line(pid: u32, held: &Held) -> ConnLine {
    ConnLine {
        pid,
        fd: held.fds[0],
        role: held.role,
        protocol: (held.role == Role::Db).then(|| protocol_name(held.protocol()).to_string()),
        local: held.socket.local.to_string(),
        peer: (!held.socket.is_listener()).then(|| held.socket.remote.to_string()),
    }
}

/// A unix-domain database connection: its end is unnamed (`unix`); the other end is the
/// path it is bound to, else the process holding it.
fn unix_line(pid: u32, db: &unix_existing::UnixDb) -> ConnLine {
    let server = || db.server.map(|p| format!("unix (pid {p})"));
    ConnLine {
        pid,
        fd: db.fds[0],
        role: Role::Db,
        protocol: Some(protocol_name(db.protocol()).to_string()),
        local: "unix".to_string(),
        peer: db
            .peer_path
            .as_ref()
            .map(|p| format!("unix:{p}"))
            .or_else(server),
    }
}
