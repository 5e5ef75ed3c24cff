//! Connections found at attach whose state nothing settled yet: a client connection that may
//! hold a request, a database connection that may hold a transaction. Listed `unknown` until
//! traffic, outside evidence or a close resolves them; never a violation (docs/design.md,
//! "connection": unknown is shown as unknown).

use crate::{
    events::{Protocol, Resolved, ResolvedBy},
    model::protocol::Txn,
    model::report::UnknownAtAttach,
};

use super::tracker::{ConnTracker, Unknown};

/// What was unknown of a client connection at attach: whether a request was in flight.
pub const WHAT_REQUEST: &str = "request";
/// What was unknown of a database connection at attach: whether a transaction was open.
pub const WHAT_TRANSACTION: &str = "transaction";
/// What a client connection that existed before attach had going, as far as the evidence
/// at attach says (`attach_rule`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtAttach {
    /// Nothing in flight (or not a client connection).
    Idle,
    /// A request in flight, its start unknown: it holds a drain until the server sends on
    /// the connection or closes it, and an exit that cuts it is a violation.
    Busy,
    /// No evidence either way: it holds a drain until resolved (traffic, its process seen
    /// waiting for input, a close), is never a violation, and is listed in the report.
    Unknown,
}

impl ConnTracker {
    /// The database's own view of a connection found at attach: its transaction state
    /// (docs/design.md, "what cannot be known at attach ... is resolved from the best outside
    /// evidence"). `at_ns`: when that view was read (the transaction's age counts from it).
    /// Settled at attach, it was never unknown: it is not listed. `None` for `at_ms`: read
    /// at attach; `Some`: read later (a view asked again), then it is listed as resolved by
    /// the database.
    pub fn db_state_at_attach(&mut self, key: (u32, u32), txn: Txn, at_ns: u64) {
        self.db_state_seen(key, txn, at_ns, None);
    }
    /// The database's own view of a connection from before attach, read `at_ms` after attach
    /// (`None`: at attach, before anything was shown).
    pub fn db_state_seen(&mut self, key: (u32, u32), txn: Txn, at_ns: u64, at_ms: Option<u64>) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if let Some(db) = conn.db.as_mut() {
            db.assume_txn(txn);
        }
        if conn.txn_open() {
            conn.txn_since.get_or_insert(at_ns);
        }
        if conn.txn() == Txn::Unknown {
            return;
        }
        match at_ms {
            None => self
                .unknown
                .retain(|u| !(u.live && u.report.what == WHAT_TRANSACTION && key == u.key())),
            Some(at_ms) => {
                if self.settle_what(key, WHAT_TRANSACTION, at_ms, "database") {
                    self.touch(at_ns);
                }
            }
        }
    }
    /// Database connections from before attach whose transaction state is still unknown
    /// (PostgreSQL and MySQL: their next status message tells; no process title or
    /// `--db-url` view did), as (pid, fd, protocol).
    pub fn txn_unknown(&self) -> Vec<(u32, u32, Protocol)> {
        self.unresolved_txns()
            .filter_map(|key| self.conns.get(&key))
            .map(|c| (c.tgid, c.fd, c.protocol))
            .collect()
    }
    /// Connections unknown at attach, resolved or not.
    pub fn unknown_at_attach(&self) -> Vec<UnknownAtAttach> {
        self.unknown.iter().map(|u| u.report.clone()).collect()
    }
    /// How many unknown connections were still unknown when their process exited.
    pub fn exited_unknown(&self) -> u64 {
        self.exited_unknown
    }
    /// The client connections unknown at attach not resolved yet: (tgid, fd).
    pub fn unresolved(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.unresolved_what(WHAT_REQUEST)
    }
    /// The database connections whose transaction state is still unknown since attach:
    /// (tgid, fd).
    pub fn unresolved_txns(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.unresolved_what(WHAT_TRANSACTION)
    }
    fn unresolved_what(&self, what: &'static str) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.unknown
            .iter()
            .filter(move |u| u.live && u.report.what == what)
            .map(Unknown::key)
    }
    /// An unknown connection is known now. Counts as activity: whatever it had going may
    /// have ended just now, so the quiet window starts again.
    pub fn resolve(&mut self, event: &Resolved, at_ms: u64) {
        let by = match event.by {
            ResolvedBy::Traffic => "traffic",
            ResolvedBy::Evidence => "evidence",
        };
        let key = (event.tgid, event.fd);
        if self.settle_what(key, WHAT_REQUEST, at_ms, by) {
            self.touch(event.ktime_ns);
        }
    }
    /// Marks an unresolved unknown connection resolved, whatever was unknown of it; whether
    /// there was one.
    pub(super) fn settle(&mut self, tgid: u32, fd: u32, at_ms: u64, by: &'static str) -> bool {
        let mut any = false;
        for what in [WHAT_REQUEST, WHAT_TRANSACTION] {
            any |= self.settle_what((tgid, fd), what, at_ms, by);
        }
        any
    }
    pub(super) fn settle_what(
        &mut self,
        key: (u32, u32),
        what: &'static str,
        at_ms: u64,
        by: &'static str,
    ) -> bool {
        let Some(unknown) = self
            .unknown
            .iter_mut()
            .find(|u| u.live && u.report.what == what && u.key() == key)
        else {
            return false;
        };
        unknown.live = false;
        unknown.report.resolved_at_ms = Some(at_ms);
        unknown.report.resolved_by = Some(by);
        true
    }
}
