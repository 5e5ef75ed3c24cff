//! The TCP connections a process holds now, from /proc, classified (what they are to it),
//! and the judgement on each client connection: did it have a request in flight
//! ([`attach_rule`] on the kernel's evidence). Read at attach ([`super::seed`]), again for
//! connections still unknown (`Session`'s rechecks), and by `check`. Reads only: what is
//! found goes into the probe and the state in [`super::seed`].

use std::{
    collections::{BTreeMap, HashMap},
    time::Instant,
};

use crate::{
    events::{self, Protocol, Role},
    host::{
        blocked::{self, blocked_syscall},
        netstat::{self, TcpSocket},
        procfs,
        server_view::ServerView,
        tcpinfo::{self, SockInfo},
    },
    model::{conns::AtAttach, protocol::registry},
    session::attach_rule::{self, ProcessNow},
    settings::Common,
};

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
        events::Protocol::from_wire(self.wire_proto)
    }
}

/// Role and protocol of a socket that existed before attach, from its addresses alone.
pub fn classify(socket: &TcpSocket, listener_ports: &[u16], common: &Common) -> (Role, Protocol) {
    if socket.is_listener() {
        return (Role::Listener, Protocol::Unknown);
    }
    let peer = socket.remote;
    if common.db_addrs.contains(&peer) || common.db_ports.contains(&peer.port()) {
        let wire = registry::wire_of_port(peer.port());
        return (Role::Db, events::Protocol::from_wire(wire));
    }
    if listener_ports.contains(&socket.local.port()) {
        return (Role::Client, Protocol::Unknown);
    }
    (Role::Upstream, Protocol::Unknown)
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
            Role::Db => registry::wire_of_port(socket.remote.port()),
            _ => probe_common::PROTO_UNKNOWN,
        };
        if matches!(role, Role::Upstream | Role::Db) && wire_proto == probe_common::PROTO_UNKNOWN {
            let server = local_server(socket.remote, &sockets, &mut owners);
            if let Some(protocol) = server.as_deref().and_then(registry::of_server) {
                role = Role::Db;
                wire_proto = protocol.wire();
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

/// The name of the process listening at `peer`, when it runs on this host (in the target's
/// network namespace): its connection from before attach is then known for what it is
/// without waiting for traffic. One scan of /proc per survey, and only when needed.
fn local_server(
    peer: std::net::SocketAddr,
    sockets: &HashMap<u64, TcpSocket>,
    owners: &mut Option<HashMap<u64, u32>>,
) -> Option<String> {
    let inode = sockets.iter().find_map(|(inode, s)| {
        let same_ip = s.local.ip() == peer.ip() || s.local.ip().is_unspecified();
        (s.is_listener() && s.local.port() == peer.port() && same_ip).then_some(*inode)
    })?;
    let owners = owners.get_or_insert_with(netstat::socket_owners);
    procfs::comm(*owners.get(&inode)?)
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
    let threads_working = procfs::threads(tgid)
        .into_iter()
        .filter(|&pid| match blocked_syscall(tgid, pid) {
            // Running, or blocked outside a syscall (a page fault, stopped).
            None => true,
            Some((nr, args)) => {
                let reads_outbound =
                    blocked::is_recv(nr) && outbound_fds.contains(&(args[0] as u32));
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
    let reading = blocked::threads_reading(tgid, &client_fds);
    let infos = tcpinfo::sockets();
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

/// Threads blocked in a recv on one of these fds now: for a database connection, a thread
/// waiting for the database's answer, i.e. a query in flight.
pub fn threads_blocked_reading(tgid: u32, fds: &[u32]) -> usize {
    blocked::threads_reading(tgid, fds).len()
}
