//! What a target already had going when drainwatch attached: its TCP connections (from
//! /proc, counted from the first moment) and the socket syscalls its threads were blocked
//! in (from /proc/TGID/task/PID/syscall, see proc(5)), whose sys_enter the probe never saw.
//! Without the latter, a thread-per-connection server whose threads wait in read() would
//! have the first request on every idle connection go unseen.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use probe_common::{ConnKey, Pending, SockAddr};

use crate::{
    events::Protocol,
    events::{self, Role},
    host::db_session::{SessionState, Sessions},
    host::netstat::{self, TcpSocket},
    host::pg_title,
    host::server_view::{self, ServerView},
    host::tcpinfo::SockInfo,
    kernel::probe::Probe,
    model::conns::AtAttach,
    model::{
        protocol::{spec, Txn},
        state::AuditState,
    },
    session::attach_rule::{self, ProcessNow},
    settings::Common,
    Result,
};

/// The database a local server process speaks, by its name (what `ps` shows), in the
/// kernel's numbering.
pub(super) fn protocol_of_server(comm: &str) -> Option<u8> {
    spec::of_server(comm).map(|p| p.wire())
}

/// The name of the process listening at `peer`, when it runs on this host (in the target's
/// network namespace): its connection from before attach is then known for what it is
/// without waiting for traffic. One scan of /proc per attach, cached per peer.
fn local_server(
    peer: std::net::SocketAddr,
    sockets: &std::collections::HashMap<u64, TcpSocket>,
    owners: &mut Option<BTreeMap<u64, u32>>,
) -> Option<String> {
    let inode = sockets.iter().find_map(|(inode, s)| {
        let same_ip = s.local.ip() == peer.ip() || s.local.ip().is_unspecified();
        (s.is_listener() && s.local.port() == peer.port() && same_ip).then_some(*inode)
    })?;
    let owners = owners.get_or_insert_with(socket_owners);
    crate::host::procfs::comm(*owners.get(&inode)?)
}

/// Socket inode -> owning process, over all processes.
fn socket_owners() -> BTreeMap<u64, u32> {
    let mut out = BTreeMap::new();
    let Ok(proc_dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in proc_dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        for (_, inode) in netstat::socket_fds(pid) {
            out.entry(inode).or_insert(pid);
        }
    }
    out
}

/// Role and protocol of a socket that existed before attach, from its addresses alone.
pub fn classify(socket: &TcpSocket, listener_ports: &[u16], common: &Common) -> (Role, Protocol) {
    if socket.is_listener() {
        return (Role::Listener, Protocol::Unknown);
    }
    let peer = socket.remote;
    if common.db_addrs.contains(&peer) || common.db_ports.contains(&peer.port()) {
        let wire = spec::wire_of_port(peer.port());
        return (Role::Db, events::protocol_from_wire(wire));
    }
    if listener_ports.contains(&socket.local.port()) {
        return (Role::Client, Protocol::Unknown);
    }
    (Role::Upstream, Protocol::Unknown)
}

pub fn role_to_wire(role: Role) -> u8 {
    match role {
        Role::Client => probe_common::ROLE_CLIENT,
        Role::Db => probe_common::ROLE_DB,
        Role::Upstream => probe_common::ROLE_UPSTREAM,
        Role::Listener => probe_common::ROLE_LISTENER,
    }
}

/// Tracks the target's current TCP connections (and its unix-domain database connections)
/// and its blocked socket syscalls. `view`: what the server itself said of its clients just
/// before (`server_view`).
pub fn attach(
    probe: &mut Probe,
    state: &mut AuditState,
    tgid: u32,
    common: &Common,
    view: Option<&ServerView>,
) -> Result<()> {
    let primaries = attach_conns(probe, state, tgid, common, view)?;
    super::unix_existing::attach(probe, state, tgid)?;
    attach_blocked_syscalls(probe, tgid, &primaries)
}

/// A TCP connection a process holds now: its fds (the lowest first, the primary), the
/// socket and what it is to the process.
#[derive(Clone, Debug)]
pub struct Held {
    pub fds: Vec<u32>,
    /// The socket's inode (what sock_diag knows it by).
    pub inode: u64,
    pub socket: TcpSocket,
    pub role: Role,
    /// The protocol in the kernel's numbering (`probe_common::PROTO_*`).
    pub wire_proto: u8,
}

impl Held {
    pub fn protocol(&self) -> Protocol {
        events::protocol_from_wire(self.wire_proto)
    }
}

/// The TCP connections of a process now, from /proc, classified.
pub fn survey(tgid: u32, common: &Common) -> Vec<Held> {
    let sockets = netstat::tcp_sockets(tgid);
    // fds sharing a socket inode are one connection: the lowest fd is its primary.
    let mut by_inode: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    for (fd, inode) in netstat::socket_fds(tgid) {
        if sockets.get(&inode).is_some_and(|s| !s.is_closed()) {
            by_inode.entry(inode).or_default().push(fd);
        }
    }
    let listener_ports: Vec<u16> = by_inode
        .keys()
        .filter_map(|inode| sockets.get(inode))
        .filter(|s| s.is_listener())
        .map(|s| s.local.port())
        .collect();
    let mut owners = None;
    let mut out = Vec::new();
    for (inode, mut fds) in by_inode {
        fds.sort_unstable();
        let socket = sockets[&inode].clone();
        let (mut role, _) = classify(&socket, &listener_ports, common);
        let mut wire_proto = match role {
            Role::Db => spec::wire_of_port(socket.remote.port()),
            _ => probe_common::PROTO_UNKNOWN,
        };
        if matches!(role, Role::Upstream | Role::Db) && wire_proto == probe_common::PROTO_UNKNOWN {
            let server = local_server(socket.remote, &sockets, &mut owners);
            if let Some(proto) = server.as_deref().and_then(protocol_of_server) {
                role = Role::Db;
                wire_proto = proto;
            }
        }
        out.push(Held {
            fds,
            inode,
            socket,
            role,
            wire_proto,
        });
    }
    out
}

fn is_recv(nr: u64) -> bool {
    matches!(
        io_kind(nr),
        Some(
            probe_common::IO_READ
                | probe_common::IO_READV
                | probe_common::IO_RECVFROM
                | probe_common::IO_RECVMSG
        )
    )
}

/// What the threads and outbound connections of a process say now (`attach_rule`).
/// `busy_clients`: client connections with evidence of a request in flight.
pub fn process_now(
    tgid: u32,
    held: &[Held],
    infos: &HashMap<u64, SockInfo>,
    busy_clients: usize,
) -> ProcessNow {
    let outbound: Vec<&Held> = held
        .iter()
        .filter(|h| matches!(h.role, Role::Db | Role::Upstream))
        .collect();
    let outbound_fds: Vec<u32> = outbound
        .iter()
        .flat_map(|h| h.fds.iter().copied())
        .collect();
    let threads_working = crate::host::procfs::threads(tgid)
        .into_iter()
        .filter(|&pid| match blocked_syscall(tgid, pid) {
            // Running, or blocked outside a syscall (a page fault, stopped).
            None => true,
            Some((nr, args)) => {
                let reads_outbound = is_recv(nr) && outbound_fds.contains(&(args[0] as u32));
                !attach_rule::waits_for_input(nr, reads_outbound)
            }
        })
        .count();
    let outbound_awaiting = outbound
        .iter()
        .filter(|h| infos.get(&h.inode).is_some_and(attach_rule::awaits_reply))
        .count();
    ProcessNow {
        threads_working,
        outbound_awaiting,
        clients_busy: busy_clients,
    }
}

/// The judgement on each client connection of a process at attach: its primary fd, what
/// it had going, and why (`attach_rule`).
/// `extra_busy`: requests known in flight otherwise (counted by the kernel since attach).
pub fn judge_clients(
    tgid: u32,
    held: &[Held],
    view: Option<&ServerView>,
    extra_busy: usize,
) -> Vec<(u32, AtAttach, &'static str)> {
    let client_fds: Vec<u32> = held
        .iter()
        .filter(|h| h.role == Role::Client)
        .flat_map(|h| h.fds.iter().copied())
        .collect();
    let reading: Vec<u32> = crate::host::procfs::threads(tgid)
        .into_iter()
        .filter_map(|pid| blocked_syscall(tgid, pid))
        .filter(|(nr, args)| is_recv(*nr) && client_fds.contains(&(args[0] as u32)))
        .map(|(_, args)| args[0] as u32)
        .collect();
    let infos = crate::host::tcpinfo::sockets();
    let dumped_at = Instant::now();
    let clients: Vec<(&Held, bool)> = held
        .iter()
        .filter(|h| h.role == Role::Client)
        .map(|h| (h, h.fds.iter().any(|fd| reading.contains(fd))))
        .collect();
    let busy = clients
        .iter()
        .filter(|(h, reader)| {
            matches!(
                attach_rule::from_socket(infos.get(&h.inode), *reader, h.socket.interactive),
                Some((AtAttach::Busy, _))
            )
        })
        .count();
    // Only looked at when there is a tie to settle.
    let mut process = None;
    clients
        .into_iter()
        .map(|(h, reader)| {
            let info = infos.get(&h.inode);
            let interactive = h.socket.interactive;
            let (mut at_attach, mut why) = match attach_rule::from_socket(info, reader, interactive)
            {
                Some(judged) => judged,
                None => {
                    let now = *process
                        .get_or_insert_with(|| process_now(tgid, held, &infos, busy + extra_busy));
                    attach_rule::judge(info, reader, interactive, now)
                }
            };
            // The server's own word, when it gave one and nothing arrived since.
            let said = view.zip(info).and_then(|(view, info)| {
                h.fds
                    .iter()
                    .find_map(|fd| view.of(*fd, info.recv_ago_ms, dumped_at))
            });
            if let (Some(said), false) = (said, at_attach == AtAttach::Idle) {
                if said.blocked {
                    (at_attach, why) =
                        (AtAttach::Idle, "blocked waiting for data (the server says)");
                } else if said.buffered == 0 {
                    (at_attach, why) =
                        (AtAttach::Idle, "no command running on it (the server says)");
                }
            }
            (h.fds[0], at_attach, why)
        })
        .collect()
}

/// The target's own view of its clients, when it is a server that can give one
/// (`server_view`): asked before the probe watches it (so the question is not one of its
/// requests), only while its main thread waits in epoll, and only when it has clients.
pub fn server_view(tgid: u32) -> Option<ServerView> {
    if !server_view::speaks_redis(&crate::host::procfs::comm(tgid)?) {
        return None;
    }
    // epoll_wait, epoll_pwait, epoll_pwait2 (x86_64). The main thread is caught between
    // two waits now and then (its timer work, a command, or simply not given the CPU on a
    // loaded host): looked at again for a while before giving up.
    let waiting =
        || blocked_syscall(tgid, tgid).is_some_and(|(nr, _)| matches!(nr, 232 | 281 | 441));
    let deadline = Instant::now() + Duration::from_millis(250);
    while !waiting() {
        if Instant::now() >= deadline {
            log::debug!(
                "{tgid}: its main thread did not wait for input: not asked for its clients"
            );
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let sockets = netstat::tcp_sockets(tgid);
    let own: Vec<&TcpSocket> = netstat::socket_fds(tgid)
        .into_iter()
        .filter_map(|(_, inode)| sockets.get(&inode))
        .collect();
    let listen = own.iter().find(|s| s.is_listener())?.local;
    let has_clients = own
        .iter()
        .any(|s| !s.is_listener() && !s.is_closed() && s.local.port() == listen.port());
    if !has_clients {
        return None;
    }
    // Twice, the second time with more patience: a host under load can be slow to answer.
    server_view::ask_redis(listen, Duration::from_millis(100))
        .or_else(|| server_view::ask_redis(listen, Duration::from_millis(500)))
}

/// Returns fd -> primary fd for every tracked fd.
fn attach_conns(
    probe: &mut Probe,
    state: &mut AuditState,
    tgid: u32,
    common: &Common,
    view: Option<&ServerView>,
) -> Result<BTreeMap<u32, u32>> {
    let mut primaries = BTreeMap::new();
    let held = survey(tgid, common);
    let mut db_view = DbView::new(common);
    let judged = judge_clients(tgid, &held, view, 0);
    let infos = log::log_enabled!(log::Level::Debug).then(crate::host::tcpinfo::sockets);
    for (fd, at_attach, why) in &judged {
        // The evidence as read just after the judgement (for the record, and for
        // tests/measure/attach_rule.py).
        let Some(h) = held.iter().find(|h| h.fds[0] == *fd) else {
            continue;
        };
        let info = infos.as_ref().and_then(|i| i.get(&h.inode));
        log::debug!(
            "client fd {fd} of {tgid} from {} at attach: {at_attach:?} ({why}; {info:?}, \
             interactive {:?})",
            h.socket.remote,
            h.socket.interactive
        );
    }
    for held in held {
        let fd = held.fds[0];
        let at_attach = judged
            .iter()
            .find(|(primary, _, _)| *primary == fd)
            .map_or(AtAttach::Idle, |(_, at_attach, _)| *at_attach);
        let busy = at_attach == AtAttach::Busy;
        let role = role_to_wire(held.role);
        if held.role == Role::Listener {
            probe.add_listen_port(held.socket.local.port())?;
        }
        let added = probe.add_conn(
            ConnKey { tgid, fd },
            &held.fds[1..],
            role,
            held.wire_proto,
            busy,
            at_attach == AtAttach::Unknown,
        )?;
        // Accepted after the probe attached: the kernel tracks it already, requests and all.
        let at_attach = if added { at_attach } else { AtAttach::Idle };
        let peer = (!held.socket.is_listener()).then_some(held.socket.remote);
        let local = Some(held.socket.local);
        state.add_existing_conn(
            (tgid, fd),
            held.role,
            held.protocol(),
            local,
            peer,
            at_attach,
        );
        if held.role == Role::Db {
            db_state_at_attach(
                state,
                (tgid, fd),
                held.protocol(),
                held.socket.local,
                held.socket.remote,
                &mut db_view,
            );
        }
        for alias in held.fds {
            primaries.insert(alias, fd);
        }
    }
    Ok(primaries)
}

/// Threads blocked in a recv on one of these fds now: for a database connection, a thread
/// waiting for the database's answer, i.e. a query in flight.
pub fn threads_blocked_reading(tgid: u32, fds: &[u32]) -> usize {
    crate::host::procfs::threads(tgid)
        .into_iter()
        .filter_map(|pid| blocked_syscall(tgid, pid))
        .filter(|(nr, args)| is_recv(*nr) && fds.contains(&(args[0] as u32)))
        .count()
}

/// x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl) of the socket syscalls
/// the probe follows, and what the probe calls them.
fn io_kind(nr: u64) -> Option<u8> {
    Some(match nr {
        0 => probe_common::IO_READ,
        1 => probe_common::IO_WRITE,
        19 => probe_common::IO_READV,
        20 => probe_common::IO_WRITEV,
        43 | 288 => probe_common::IO_ACCEPT,
        44 => probe_common::IO_SENDTO,
        45 => probe_common::IO_RECVFROM,
        46 => probe_common::IO_SENDMSG,
        47 => probe_common::IO_RECVMSG,
        _ => return None,
    })
}

/// `nr arg1 .. arg6 sp pc` in hex, or `running`/`-1 ...` when not blocked in a syscall.
fn blocked_syscall(tgid: u32, pid: u32) -> Option<(u64, [u64; 3])> {
    let text = std::fs::read_to_string(format!("/proc/{tgid}/task/{pid}/syscall")).ok()?;
    let mut words = text.split_whitespace();
    let nr: u64 = words.next()?.parse().ok()?;
    let mut args = [0u64; 3];
    for arg in &mut args {
        *arg = u64::from_str_radix(words.next()?.trim_start_matches("0x"), 16).ok()?;
    }
    Some((nr, args))
}

fn attach_blocked_syscalls(
    probe: &mut Probe,
    tgid: u32,
    primaries: &BTreeMap<u32, u32>,
) -> Result<()> {
    if !cfg!(target_arch = "x86_64") {
        return Ok(());
    }
    for pid in crate::host::procfs::threads(tgid) {
        let Some((nr, args)) = blocked_syscall(tgid, pid) else {
            continue;
        };
        let (Some(kind), Some(&primary)) = (io_kind(nr), primaries.get(&(args[0] as u32))) else {
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
                    args[0] as u32
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
        if blocked_syscall(tgid, pid) != Some((nr, args)) {
            probe.remove_pending(pid_tgid);
        }
    }
    Ok(())
}

/// `--db-url`'s own view of its sessions (PostgreSQL's pg_stat_activity, MySQL's
/// information_schema.innodb_trx: which one is the URL's scheme), asked once per attach and
/// only when needed.
pub(super) struct DbView<'a> {
    url: Option<&'a str>,
    sessions: Option<Sessions>,
    /// Asked again during a run: a failure was said at attach already.
    again: bool,
}

impl<'a> DbView<'a> {
    pub(super) fn new(common: &'a Common) -> Self {
        Self {
            url: common.db_url.as_ref().map(|u| u.expose()),
            sessions: None,
            again: false,
        }
    }

    /// The same, asked again during a run (`Session::recheck_txns`).
    pub(super) fn again(common: &'a Common) -> Self {
        Self {
            again: true,
            ..Self::new(common)
        }
    }

    /// The URL's protocol: a postgres:// URL says nothing of MySQL sessions.
    fn protocol(url: &str) -> Option<Protocol> {
        spec::of_url(url).map(|p| p.id())
    }

    fn state(&mut self, protocol: Protocol, client: std::net::SocketAddr) -> Option<SessionState> {
        let url = self
            .url
            .filter(|url| Self::protocol(url) == Some(protocol))?;
        let sessions = self.sessions.get_or_insert_with(|| {
            let asked = match protocol {
                Protocol::Mysql => crate::host::my_view::sessions(url),
                _ => crate::host::pg_view::sessions(url),
            };
            asked.unwrap_or_else(|why| {
                if self.again {
                    log::debug!("{why}: asked again");
                } else {
                    log::warn!("{why}: transactions open before attach stay unknown");
                }
                Default::default()
            })
        });
        sessions.get(&client).copied()
    }
}

/// What is wrong with `--db-url`'s view, if anything, asked once (for `check`: a missing
/// grant is said before the run that needs it, docs/design.md "Command line").
pub fn db_view_problem(common: &Common) -> Option<String> {
    let url = common.db_url.as_ref()?.expose();
    let asked = match DbView::protocol(url)? {
        Protocol::Mysql => crate::host::my_view::sessions(url),
        _ => crate::host::pg_view::sessions(url),
    };
    asked.err()
}

/// A database connection found at attach: the database's own view says whether a
/// transaction is open: a local PostgreSQL backend's process title (host/pg_title.rs), else
/// `--db-url`'s pg_stat_activity (host/pg_view.rs) or innodb_trx (host/my_view.rs), matched
/// by the target's end.
fn db_state_at_attach(
    state: &mut AuditState,
    key: (u32, u32),
    protocol: Protocol,
    local: std::net::SocketAddr,
    peer: std::net::SocketAddr,
    view: &mut DbView,
) {
    if let Some(txn) = db_state_now(protocol, local, peer, view) {
        log::debug!("fd {} of {}: {protocol:?} says {txn:?}", key.1, key.0);
        state.db_state_at_attach(key, txn);
    }
}

/// What the database's own view says now of the session of the TCP connection
/// `local` -> `peer`: the local backend's process title, else `--db-url`'s view. `None`:
/// neither tells (not PostgreSQL or MySQL, no title, no URL, the session not listed, a
/// backend busy with a command).
pub(super) fn db_state_now(
    protocol: Protocol,
    local: std::net::SocketAddr,
    peer: std::net::SocketAddr,
    view: &mut DbView,
) -> Option<Txn> {
    if !spec::of(protocol).is_some_and(|p| p.txn_unknown_at_attach()) {
        return None;
    }
    let title = (protocol == Protocol::Postgres && peer.ip().is_loopback())
        .then(|| pg_title::backend_state(local))
        .flatten();
    let backend = title.or_else(|| view.state(protocol, local))?;
    Some(txn_of(backend))
}

/// The model's word for what the database said of a session.
pub(super) fn txn_of(state: SessionState) -> Txn {
    match state {
        SessionState::Idle => Txn::Idle,
        SessionState::InTransaction => Txn::Open,
        SessionState::Aborted => Txn::Failed,
    }
}
