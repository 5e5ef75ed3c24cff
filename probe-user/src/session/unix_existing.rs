//! Unix-domain database connections a process holds now (the TCP ones are
//! [`super::existing`]'s): found from its socket fds and the kernel's unix sock_diag
//! (host/unixdiag.rs). One is a database connection when its other end is bound to a
//! database's socket path (`.s.PGSQL.NNNN`, `mysqld.sock`, `mysql.sock`, `redis*.sock`) or
//! held by a database server process (docs/design.md, "connection"; the names are in
//! model/protocol/registry.rs).
//! Read at attach ([`super::seed`]) and by `check`.

use std::collections::{BTreeMap, HashMap};

use crate::{
    events::{self, Protocol},
    host::{netstat, procfs, unixdiag},
    model::protocol::registry,
};

/// A unix-domain database connection a process holds now.
#[derive(Clone, Debug)]
pub struct UnixDb {
    /// fds sharing the socket, lowest (the primary) first.
    pub fds: Vec<u32>,
    pub inode: u64,
    /// The protocol in the kernel's numbering (`probe_common::PROTO_*`).
    pub wire_proto: u8,
    /// The path the other end is bound to, if any.
    pub peer_path: Option<String>,
    /// The process holding the other end (the database server, or its backend).
    pub server: Option<u32>,
}

impl UnixDb {
    pub fn protocol(&self) -> Protocol {
        events::Protocol::from_wire(self.wire_proto)
    }
}

/// The unix-domain database connections of a process now, from its socket fds and unix
/// sock_diag.
pub fn survey(tgid: u32) -> Vec<UnixDb> {
    let fds = netstat::socket_fds(tgid);
    if fds.is_empty() {
        return Vec::new();
    }
    let unix = unixdiag::connected_streams();
    // fds sharing one socket are one connection: the lowest is its primary.
    let mut by_inode: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    for (fd, inode) in fds {
        if unix.contains_key(&inode) {
            by_inode.entry(inode).or_default().push(fd);
        }
    }
    let mut owners: Option<HashMap<u64, u32>> = None;
    let mut out = Vec::new();
    for (inode, mut fds) in by_inode {
        fds.sort_unstable();
        let Some(peer) = unix[&inode].peer else {
            continue;
        };
        let peer_path = unix.get(&peer).and_then(|p| p.name.clone());
        let by_path = peer_path
            .as_deref()
            .and_then(registry::of_socket_path)
            .map(|p| p.wire());
        let owners = owners.get_or_insert_with(netstat::socket_owners);
        let server = owners.get(&peer).copied();
        let by_process = || Some(registry::of_server(&procfs::comm(server?)?)?.wire());
        let Some(wire_proto) = by_path.or_else(by_process) else {
            continue;
        };
        out.push(UnixDb {
            fds,
            inode,
            wire_proto,
            peer_path,
            server,
        });
    }
    out
}
