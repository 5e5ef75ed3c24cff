//! Unix-domain database connections a target already had at attach (the TCP ones are
//! [`super::existing`]'s): found from the target's socket fds and the kernel's unix
//! sock_diag (host/unixdiag.rs). One is a database connection when its other end is bound
//! to a database's socket path (`.s.PGSQL.NNNN`, `mysqld.sock`, `mysql.sock`, `redis*.sock`)
//! or held by a database server process (docs/design.md, "connection"). A local PostgreSQL
//! backend's process title then tells whether a transaction is open.

use std::collections::{BTreeMap, HashMap};

use probe_common::ConnKey;

use crate::{
    events::{self, Protocol, Role},
    host::{netstat, pg_title, procfs, unixdiag},
    kernel::probe::Probe,
    model::{conns::AtAttach, protocol::spec, state::AuditState},
    Result,
};

/// The database a socket path belongs to, by the names the servers use by default, in the
/// kernel's numbering.
fn protocol_of_path(path: &str) -> Option<u8> {
    spec::of_socket_path(path).map(|p| p.wire())
}

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
        events::protocol_from_wire(self.wire_proto)
    }
}

/// The unix-domain database connections of a process now, from its socket fds and unix
/// sock_diag (for `check`, and for [`attach`]).
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
        let by_path = peer_path.as_deref().and_then(protocol_of_path);
        let owners = owners.get_or_insert_with(socket_owners);
        let server = owners.get(&peer).copied();
        let by_process = || {
            let comm = procfs::comm(server?)?;
            super::existing::protocol_of_server(&comm)
        };
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

/// Tracks the target's unix-domain database connections from before attach.
pub fn attach(probe: &mut Probe, state: &mut AuditState, tgid: u32) -> Result<()> {
    for db in survey(tgid) {
        let key = ConnKey {
            tgid,
            fd: db.fds[0],
        };
        if !probe.add_conn(
            key,
            &db.fds[1..],
            probe_common::ROLE_DB,
            db.wire_proto,
            false,
            false,
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
        if protocol == Protocol::Postgres {
            if let Some(backend) = db.server.and_then(pg_title::unix_backend_state) {
                state.db_state_at_attach((tgid, key.fd), super::existing::txn_of(backend));
            }
        }
    }
    Ok(())
}

/// Socket inode -> owning process, over all processes.
fn socket_owners() -> HashMap<u64, u32> {
    let mut out = HashMap::new();
    let Ok(proc_dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in proc_dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        for (_, inode) in netstat::socket_fds(pid) {
            out.entry(inode).or_insert(pid);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_socket_paths() {
        let p = |path| protocol_of_path(path);
        assert_eq!(
            p("/var/run/postgresql/.s.PGSQL.5432"),
            Some(probe_common::PROTO_POSTGRES)
        );
        assert_eq!(
            p("/run/mysqld/mysqld.sock"),
            Some(probe_common::PROTO_MYSQL)
        );
        assert_eq!(
            p("/run/redis/redis-server.sock"),
            Some(probe_common::PROTO_REDIS)
        );
        assert_eq!(p("/run/systemd/journal/stdout"), None);
    }
}
