//! One connection of a target, and the violations its end can make.

use std::net::SocketAddr;

use crate::{
    events::{Protocol, Role},
    model::protocol::{DbConn, Txn},
    model::report::{
        ClosedBy, LeakedDbConnection, RollbackHow, TransactionRolledBack, Unverified, Violation,
    },
};

#[derive(Debug)]
pub struct Conn {
    pub tgid: u32,
    pub fd: u32,
    pub role: Role,
    pub protocol: Protocol,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    /// `None` for connections that existed before attach.
    pub opened_ns: Option<u64>,
    /// The database conversation (db connections only).
    pub db: Option<DbConn>,
    pub query_since: Option<u64>,
    /// When the transaction was first seen open.
    pub txn_since: Option<u64>,
}
impl Conn {
    pub fn query_in_flight(&self) -> bool {
        self.db.as_ref().is_some_and(DbConn::query_in_flight)
    }

    pub fn txn(&self) -> Txn {
        self.db.as_ref().map(DbConn::txn).unwrap_or(Txn::Unknown)
    }

    /// A transaction is open. After the goodbye it is not: the database rolls it back as it
    /// ends the session (reported then, as `transaction_rolled_back`).
    pub fn txn_open(&self) -> bool {
        !self.goodbye_sent() && matches!(self.txn(), Txn::Open | Txn::Failed)
    }

    pub fn goodbye_sent(&self) -> bool {
        self.db.as_ref().is_some_and(DbConn::goodbye_sent)
    }

    /// A close now ends the conversation cleanly (docs/design.md, "clean close"): after the
    /// protocol's goodbye, or, for Redis, with nothing open or owed.
    pub fn close_is_clean(&self) -> bool {
        self.db.as_ref().is_some_and(DbConn::close_is_clean)
    }

    /// The conversation is encrypted and drainwatch cannot read it (docs/design.md, "encrypted
    /// conversation").
    pub fn encrypted(&self) -> bool {
        self.db.as_ref().is_some_and(DbConn::encrypted)
    }

    /// The conversation is not read (encrypted, or a protocol without a reader): its goodbye
    /// and transactions cannot be seen, and its end is `unverified`, never a violation.
    pub(super) fn unread(&self) -> Option<Unverified> {
        let why = self.db.as_ref()?.unread()?.why();
        Some(Unverified {
            pid: self.tgid,
            fd: self.fd,
            peer: self.peer_text(),
            why,
        })
    }

    pub(super) fn rolled_back(&self, at_ms: u64, ktime_ns: u64, how: RollbackHow) -> Violation {
        Violation::TransactionRolledBack(TransactionRolledBack {
            pid: self.tgid,
            at_ms,
            fd: self.fd,
            peer: self.peer_text(),
            protocol: self.protocol,
            age_ms: self.txn_age_ms(ktime_ns),
            how,
        })
    }

    pub(super) fn txn_age_ms(&self, ktime_ns: u64) -> u64 {
        self.txn_since
            .map(|since| ktime_ns.saturating_sub(since) / 1_000_000)
            .unwrap_or(0)
    }

    pub fn peer_text(&self) -> Option<String> {
        self.peer.map(|p| p.to_string())
    }
}
pub(super) fn leaked(
    conn: &Conn,
    at_ms: u64,
    closed_by: ClosedBy,
    ms: &impl Fn(u64) -> u64,
) -> Violation {
    Violation::LeakedDbConnection(LeakedDbConnection {
        pid: conn.tgid,
        at_ms,
        fd: conn.fd,
        local: conn.local.map(|a| a.to_string()),
        peer: conn.peer_text(),
        protocol: conn.protocol,
        opened_at_ms: conn.opened_ns.map(ms),
        closed_by,
    })
}
