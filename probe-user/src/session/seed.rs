//! What a target already had going when drainwatch attached, written into the probe and the
//! state: its TCP connections (from /proc, [`super::existing`], counted from the first
//! moment), its unix-domain database connections ([`super::unix_existing`]), and the socket
//! syscalls its threads were blocked in (host/blocked.rs), whose sys_enter the probe never
//! saw. Without the latter, a thread-per-connection server whose threads wait in read()
//! would have the first request on every idle connection go unseen.

use std::collections::BTreeMap;

use probe_common::{ConnKey, Pending, SockAddr};

use crate::{
    events::Role,
    host::{blocked, pg_title, procfs, server_view::ServerView},
    kernel::probe::{ConnSeed, Probe},
    model::{conns::AtAttach, state::AuditState},
    session::{
        db_view::{self, DbView},
        existing::{self, Held},
        unix_existing,
    },
    settings::Common,
    Result,
};

/// What `tgid`'s sockets are, told to the probe BEFORE the process becomes a target: its
/// listening ports, and each TCP connection's role and protocol by socket inode. The
/// socket-level backends classify a socket of a target at its first send or receive: one
/// that existed before attach and was reached before [`conns`] added it was classified by
/// its peer alone, and a busy server's live clients became `upstream` connections whose
/// requests nobody counted (issue #22: redis under redis-benchmark, `wait` said drained), a
/// worker's connection to a local PostgreSQL on a port no flag names an `upstream` whose
/// transaction state stayed unknown until the timeout. With the survey known first, such a
/// socket is what the survey says from its first event on, and the kernel follows its
/// requests from there (docs/design.md, "connection": connections from before attach are
/// found from /proc). The syscall hooks classify at accept/connect only; a connection from
/// before attach is theirs once [`conns`] adds it. Returns the inodes told, for
/// [`forget_surveyed`] once [`conns`] has run.
pub fn before_target(probe: &mut Probe, tgid: u32, common: &Common) -> Result<Vec<u64>> {
    let held = existing::survey(tgid, common);
    let mut sockets = Vec::new();
    for h in &held {
        if h.role == Role::Listener {
            probe.add_listen_port(h.socket.local.port())?;
        } else {
            sockets.push((h.inode, h.role.to_wire(), h.wire_proto));
        }
    }
    probe.survey_sockets(&sockets)?;
    Ok(sockets.into_iter().map(|(inode, _, _)| inode).collect())
}

/// Forgets what [`before_target`] told: the process's connections are in the probe's
/// connection map now (or it has ended), which classifies them from here on.
pub fn forget_surveyed(probe: &mut Probe, inodes: &[u64]) {
    probe.forget_surveyed(inodes);
}

/// Tracks the target's connections from before attach and its blocked socket syscalls.
/// `view`: what the server itself said of its clients just before (host/server_view.rs).
pub fn conns(
    probe: &mut Probe,
    state: &mut AuditState,
    tgid: u32,
    common: &Common,
    view: Option<&ServerView>,
) -> Result<()> {
    let held = existing::survey(tgid, common);
    let judged = existing::judge_clients(tgid, &held, view, 0);
    log_judgement(tgid, &held, &judged);
    let primaries = tcp_conns(probe, state, tgid, held, &judged, common)?;
    unix_conns(probe, state, tgid)?;
    blocked_syscalls(probe, tgid, &primaries)
}

/// The evidence as read just after the judgement, at debug level (for the record, and for
/// tests/measure/attach_rule.py).
fn log_judgement(tgid: u32, held: &[Held], judged: &[(u32, AtAttach, &'static str)]) {
    if !log::log_enabled!(log::Level::Debug) {
        return;
    }
    let infos = crate::host::tcpinfo::sockets();
    for (fd, at_attach, why) in judged {
        let Some(h) = held.iter().find(|h| h.fds[0] == *fd) else {
            continue;
        };
        let info = infos.get(&h.inode);
        log::debug!(
            "client fd {fd} of {tgid} from {} at attach: {at_attach:?} ({why}; {info:?}, \
             interactive {:?})",
            h.socket.remote,
            h.socket.interactive
        );
    }
}

/// Adds the TCP connections to the probe and the state; returns fd -> primary fd for every
/// tracked fd.
fn tcp_conns(
    probe: &mut Probe,
    state: &mut AuditState,
    tgid: u32,
    held: Vec<Held>,
    judged: &[(u32, AtAttach, &'static str)],
    common: &Common,
) -> Result<BTreeMap<u32, u32>> {
    let mut primaries = BTreeMap::new();
    let mut db_view = DbView::new(common);
    // Upstream connections: whether a call awaits its reply (docs/design.md, "upstream call
    // in flight"), from the kernel's record of the conversation.
    let upstream_fds: Vec<u32> = held
        .iter()
        .filter(|h| h.role == Role::Upstream)
        .flat_map(|h| h.fds.iter().copied())
        .collect();
    let (infos, reading) = if upstream_fds.is_empty() {
        Default::default()
    } else {
        (
            crate::host::tcpinfo::sockets(),
            blocked::threads_reading(tgid, &upstream_fds),
        )
    };
    for held in held {
        let fd = held.fds[0];
        let info = infos
            .get(&held.inode)
            .filter(|_| held.role == Role::Upstream);
        let reader = held.fds.iter().any(|fd| reading.contains(fd));
        let (answered, upstream_busy) = super::attach_rule::upstream(info, reader);
        let first_call = upstream_busy && !answered;
        let at_attach = if upstream_busy {
            AtAttach::Busy
        } else {
            judged
                .iter()
                .find(|(primary, _, _)| *primary == fd)
                .map_or(AtAttach::Idle, |(_, at_attach, _)| *at_attach)
        };
        if held.role == Role::Listener {
            // Again: a listener opened since `listeners` looked.
            probe.add_listen_port(held.socket.local.port())?;
        }
        let added = probe.add_conn(
            ConnKey { tgid, fd },
            &held.fds[1..],
            held.role.to_wire(),
            held.wire_proto,
            ConnSeed {
                busy: at_attach == AtAttach::Busy,
                unknown: at_attach == AtAttach::Unknown,
                answered,
            },
        )?;
        // Already in the kernel's map: it had traffic since the process became a target
        // (or was accepted since), and the kernel follows its requests from there.
        let at_attach = if added { at_attach } else { AtAttach::Idle };
        let peer = (!held.socket.is_listener()).then_some(held.socket.remote);
        let key = (tgid, fd);
        let protocol = held.protocol();
        state.add_existing_conn(
            key,
            held.role,
            protocol,
            Some(held.socket.local),
            peer,
            at_attach,
        );
        if first_call && added {
            state.first_call_at_attach(tgid, procfs::monotonic_now().as_nanos() as u64);
        }
        if held.role == Role::Db {
            let (local, remote) = (held.socket.local, held.socket.remote);
            if let Some(txn) = db_view::db_state_now(protocol, local, remote, &mut db_view) {
                log::debug!("fd {fd} of {tgid}: {protocol:?} says {txn:?}");
                state.db_state_at_attach(key, txn);
            }
        }
        for alias in held.fds {
            primaries.insert(alias, fd);
        }
    }
    Ok(primaries)
}

/// Adds the unix-domain database connections; a local PostgreSQL backend's process title
/// tells whether a transaction is open.
fn unix_conns(probe: &mut Probe, state: &mut AuditState, tgid: u32) -> Result<()> {
    for db in unix_existing::survey(tgid) {
        let key = ConnKey {
            tgid,
            fd: db.fds[0],
        };
        let wire_role = probe_common::ROLE_DB;
        if !probe.add_conn(
            key,
            &db.fds[1..],
            wire_role,
            db.wire_proto,
            ConnSeed::default(),
        )? {
            continue; // opened after the probe attached: the kernel saw it already
        }
        let protocol = db.protocol();
        state.add_existing_conn(
            (tgid, key.fd),
            Role::Db,
            protocol,
            None,
            None,
            AtAttach::Idle,
        );
        log::debug!(
            "fd {} of {tgid}: unix-domain {protocol:?} connection",
            key.fd
        );
        if protocol == crate::events::Protocol::Postgres {
            if let Some(backend) = db.server.and_then(pg_title::unix_backend_state) {
                state.db_state_at_attach((tgid, key.fd), db_view::txn_of(backend));
            }
        }
    }
    Ok(())
}

/// Tells the probe which socket syscall each thread is blocked in on a tracked connection,
/// so that its exit is understood.
fn blocked_syscalls(probe: &mut Probe, tgid: u32, primaries: &BTreeMap<u32, u32>) -> Result<()> {
    if !cfg!(target_arch = "x86_64") {
        return Ok(());
    }
    for pid in procfs::threads(tgid) {
        let Some((nr, args)) = blocked::blocked_syscall(tgid, pid) else {
            continue;
        };
        let fd = args[0] as u32;
        let (Some(kind), Some(&primary)) = (blocked::io_kind(nr), primaries.get(&fd)) else {
            continue;
        };
        let pid_tgid = (tgid as u64) << 32 | pid as u64;
        let vectored = kind == probe_common::IO_READV || kind == probe_common::IO_WRITEV;
        probe.add_pending(
            pid_tgid,
            Pending {
                kind,
                _pad: [0; 3],
                // An accept names the listener itself, which the exit expects as is.
                fd: if kind == probe_common::IO_ACCEPT {
                    fd
                } else {
                    primary
                },
                ptr: args[1],
                count: if vectored { args[2] } else { 0 },
                addr: SockAddr::empty(),
                _pad2: [0; 4],
            },
        )?;
        // If the thread left that syscall while we looked, the entry would be read by the
        // exit of an unrelated one: take it back.
        if blocked::blocked_syscall(tgid, pid) != Some((nr, args)) {
            probe.remove_pending(pid_tgid);
        }
    }
    Ok(())
}
