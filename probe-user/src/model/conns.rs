//! Connections of the targets and what is in flight on them: client requests, database
//! queries, open transactions. Pure, like the rest of the state machine: events in,
//! counts and violations out. Semantics: docs/design.md, "Words".

mod calls;
mod conn;
mod requests;
mod tracker;
mod unknown;

use std::{collections::BTreeMap, net::SocketAddr};

use crate::{
    events::{ConnClose, ConnOpen, DbIo, Protocol, Role},
    model::drain_facts::{DrainFacts, PushConn},
    model::protocol::{self, registry, DbConn, Txn},
    model::report::{
        ClosedBy, ConnectionCounts, InflightAtExit, OpenTransaction, RequestDropped, RollbackHow,
        UnknownAtAttach, Unverified, Violation,
    },
};

pub use calls::{Calls, FIRST_CALL_HOLD};
use conn::leaked;
pub use conn::Conn;
pub use requests::InFlight;
pub use tracker::ConnTracker;
pub(crate) use tracker::{histogram, summary};
use tracker::{record, Unknown};
pub use unknown::{AtAttach, WHAT_REQUEST, WHAT_TRANSACTION};

impl ConnTracker {
    pub fn conns(&self) -> impl Iterator<Item = &Conn> {
        self.conns.values()
    }

    pub fn facts(&self) -> &DrainFacts {
        &self.facts
    }

    pub fn facts_mut(&mut self) -> &mut DrainFacts {
        &mut self.facts
    }

    /// The kernel marked a client connection push-style, or an upstream connection one-way
    /// (its counterpart: model/conns/calls.rs).
    pub fn push_style(&mut self, tgid: u32, fd: u32, at_ms: u64) {
        if let Some(conn) = self.conns.get(&(tgid, fd)) {
            let peer = conn.peer_text();
            match conn.role {
                Role::Client => self.facts.push_style(PushConn {
                    tgid,
                    fd,
                    peer,
                    at_ms,
                }),
                Role::Upstream => self.one_way(tgid, fd, peer),
                _ => {}
            }
        }
    }

    /// When the last activity was (ktime ns); a first upstream call in flight counts as
    /// activity until its hold ends (model/conns/calls.rs).
    pub fn last_activity_ns(&self) -> u64 {
        self.last_activity_ns.max(self.first_calls_hold_until())
    }

    fn touch(&mut self, ktime_ns: u64) {
        self.last_activity_ns = self.last_activity_ns.max(ktime_ns);
    }

    /// Encrypted database connections that closed or were closed by an exit unread.
    pub fn unverified(&self) -> &[Unverified] {
        &self.unverified
    }

    pub fn counts(&self) -> &ConnectionCounts {
        &self.counts
    }

    /// The same counts by target process (tgid), for the metrics' `comm` label.
    pub fn counts_by_tgid(&self) -> &BTreeMap<u32, ConnectionCounts> {
        &self.counts_by_tgid
    }

    fn count_open(&mut self, tgid: u32, role: Role) {
        for counts in [
            &mut self.counts,
            self.counts_by_tgid.entry(tgid).or_default(),
        ] {
            match role {
                Role::Client => counts.client_opened += 1,
                Role::Db => counts.db_opened += 1,
                Role::Upstream | Role::Listener => {}
            }
        }
    }

    fn count_close(&mut self, tgid: u32, role: Role) {
        for counts in [
            &mut self.counts,
            self.counts_by_tgid.entry(tgid).or_default(),
        ] {
            match role {
                Role::Client => counts.client_closed += 1,
                Role::Db => counts.db_closed += 1,
                Role::Upstream | Role::Listener => {}
            }
        }
    }

    fn insert(&mut self, conn: Conn) {
        if let Some(old) = self.conns.remove(&(conn.tgid, conn.fd)) {
            // The fd was reused without a close we saw (dup2 over it, say).
            self.count_close(old.tgid, old.role);
        }
        self.count_open(conn.tgid, conn.role);
        self.conns.insert((conn.tgid, conn.fd), conn);
    }

    /// A connection found in /proc at attach: counted from the first moment, its
    /// transaction state unknown until the first status message. `at_attach`: for a client
    /// connection, whether a request (start unknown) is in flight, until the server sends.
    pub fn add_existing(
        &mut self,
        (tgid, fd): (u32, u32),
        role: Role,
        protocol: Protocol,
        local: Option<SocketAddr>,
        peer: Option<SocketAddr>,
        at_attach: AtAttach,
    ) {
        match at_attach {
            AtAttach::Busy if role == Role::Client => {
                *self.busy_at_attach.entry(tgid).or_default() += 1;
            }
            AtAttach::Busy if role == Role::Upstream => self.call_busy_at_attach(tgid),
            AtAttach::Unknown if role == Role::Client => self.unknown.push(Unknown {
                live: true,
                report: UnknownAtAttach {
                    pid: tgid,
                    fd,
                    peer: peer.map(|p| p.to_string()),
                    what: WHAT_REQUEST,
                    resolved_at_ms: None,
                    resolved_by: None,
                },
            }),
            _ => {}
        }
        // Its transaction state is unknown until the database next reports one (or the
        // database's own view tells, `db_state_at_attach`): until then it holds a drain as an
        // unknown client connection does, never a violation (docs/design.md: unknown is shown as
        // unknown, never counted as "not open").
        if role == Role::Db && registry::of(protocol).is_some_and(|p| p.txn_unknown_at_attach()) {
            self.unknown.push(Unknown {
                live: true,
                report: UnknownAtAttach {
                    pid: tgid,
                    fd,
                    peer: peer.map(|p| p.to_string()),
                    what: WHAT_TRANSACTION,
                    resolved_at_ms: None,
                    resolved_by: None,
                },
            });
        }
        self.insert(Conn {
            tgid,
            fd,
            role,
            protocol,
            local,
            peer,
            opened_ns: None,
            db: (role == Role::Db).then(|| DbConn::new(protocol, false)),
            query_since: None,
            txn_since: None,
        });
    }

    pub fn open(&mut self, event: &ConnOpen) {
        if event.existed {
            return self.first_seen_existing(event);
        }
        self.insert(Conn {
            tgid: event.tgid,
            fd: event.fd,
            role: event.role,
            protocol: event.protocol,
            local: event.local,
            peer: event.peer,
            opened_ns: Some(event.ktime_ns),
            db: (event.role == Role::Db).then(|| DbConn::new(event.protocol, true)),
            query_since: None,
            txn_since: None,
        });
    }

    /// The kernel's first sight of a socket from before attach, reached while its process
    /// was being attached: classified from the survey, it was no new connection (issue #22
    /// item 5). Its event is read after the survey's entry was made, which stands (counted
    /// once, its conversation seen mid-way, its state at attach what the kernel followed
    /// from that first event on). A socket closed before the survey listed it is added as
    /// one from before attach, so that its close finds it.
    fn first_seen_existing(&mut self, event: &ConnOpen) {
        let key = (event.tgid, event.fd);
        if self.conns.get(&key).is_some_and(|c| c.opened_ns.is_none()) {
            return;
        }
        self.add_existing(
            key,
            event.role,
            event.protocol,
            event.local,
            event.peer,
            AtAttach::Idle,
        );
    }

    /// A close(2) by the target. Violations, in order: a client request it will never answer
    /// (`request_dropped`); a database transaction abandoned by the close
    /// (`transaction_rolled_back`); a database connection closed without the protocol's
    /// goodbye (`leaked_db_connection`). An encrypted conversation's goodbye cannot be seen:
    /// its close is `unverified`, not a leak.
    pub fn close(
        &mut self,
        event: &ConnClose,
        at_ms: u64,
        ms: impl Fn(u64) -> u64,
    ) -> Vec<Violation> {
        self.touch(event.ktime_ns);
        // Whatever an unknown connection had going is over; it was not seen, so it is not
        // a violation either.
        self.settle(event.tgid, event.fd, at_ms, "closed");
        self.facts.closed(event.tgid, event.fd);
        self.one_way_closed(event.tgid, event.fd);
        let Some(conn) = self.conns.remove(&(event.tgid, event.fd)) else {
            return Vec::new();
        };
        self.count_close(conn.tgid, conn.role);
        if conn.role == Role::Client {
            // A hang-up is client input too: a server may still write for it (a player's
            // logout), docs/design.md "drain tail".
            self.facts.input(event.ktime_ns);
            if event.push {
                self.facts.push_style(PushConn {
                    tgid: conn.tgid,
                    fd: conn.fd,
                    peer: conn.peer_text(),
                    at_ms,
                });
                self.facts.closed(conn.tgid, conn.fd);
            }
        }
        let mut violations = Vec::new();
        if let (Role::Upstream, Some(since), true) =
            (conn.role, event.request_since_ns, event.request_uncounted)
        {
            self.call_ended_here(conn.tgid, since);
        }
        if let (Role::Client, Some(since), true) =
            (conn.role, event.request_since_ns, event.request_uncounted)
        {
            let ended = self.ended_here.entry(conn.tgid).or_default();
            match since {
                0 => ended.1 += 1,
                _ => ended.0 += 1,
            }
        }
        // On a push-style connection the server sends on its own clock (an answer rides on
        // the next tick, an input needs none): bytes received since its last send prove no
        // answer owed, so its close drops nothing provably (docs/design.md, "request in
        // flight"; the basis names the connection instead).
        if let (Role::Client, Some(since), false) = (conn.role, event.request_since_ns, event.push)
        {
            violations.push(Violation::RequestDropped(RequestDropped {
                pid: conn.tgid,
                at_ms,
                fd: conn.fd,
                peer: conn.peer_text(),
                age_ms: match since {
                    0 => 0,
                    since => event.ktime_ns.saturating_sub(since) / 1_000_000,
                },
            }));
        }
        if conn.role != Role::Db || conn.close_is_clean() {
            return violations;
        }
        if let Some(unread) = conn.unread() {
            self.unverified.push(unread);
            return violations;
        }
        if conn.txn_open() {
            violations.push(conn.rolled_back(at_ms, event.ktime_ns, RollbackHow::Close));
        }
        violations.push(leaked(&conn, at_ms, ClosedBy::UncleanClose, &ms));
        violations
    }

    /// A send or recv on a database connection. A goodbye sent inside an open transaction is
    /// `transaction_rolled_back` (the database rolls it back as the session ends). The
    /// latency of a query it ended is kept for [`ConnTracker::take_query_ended_us`].
    /// `told_to_end`: the target was sent a signal that asks it to end (a stop): a rollback
    /// the client asks for from then on is its shutdown throwing the work away.
    pub fn db_io(&mut self, event: &DbIo, at_ms: u64, told_to_end: bool) -> Option<Violation> {
        self.query_ended_us = None;
        self.touch(event.ktime_ns);
        let key = (event.tgid, event.fd);
        let upgrade = match self.conns.get(&key) {
            None => true,
            Some(conn) => {
                conn.role != Role::Db
                    || (conn.protocol == Protocol::Unknown && event.protocol != Protocol::Unknown)
            }
        };
        if upgrade {
            // An upstream connection the kernel recognised by its first bytes (or one that
            // was never seen opening): from now on it is a database connection.
            let (local, peer, opened_ns, seen) = match self.conns.remove(&key) {
                Some(old) => {
                    if old.role != Role::Db {
                        self.count_open(event.tgid, Role::Db);
                    }
                    // A parser that starts mid-conversation must resynchronise.
                    let from_start = old.opened_ns.is_some() && old.role != Role::Db;
                    (old.local, old.peer, old.opened_ns, from_start)
                }
                None => {
                    self.count_open(event.tgid, Role::Db);
                    (None, None, None, false)
                }
            };
            self.conns.insert(
                key,
                Conn {
                    tgid: event.tgid,
                    fd: event.fd,
                    role: Role::Db,
                    protocol: event.protocol,
                    local,
                    peer,
                    opened_ns,
                    db: Some(DbConn::new(event.protocol, seen)),
                    query_since: None,
                    txn_since: None,
                },
            );
        }
        let conn = self.conns.get_mut(&key).expect("inserted above");
        let txn_was_open = conn.txn_open();
        let goodbye_before = conn.goodbye_sent();
        let db = conn.db.as_mut()?;
        let io = protocol::DbIo {
            dir: event.dir,
            len: event.len,
            head: &event.head,
            tail: &event.tail,
        };
        if event.tls {
            db.start_tls_plaintext(&io);
        }
        let before = db.query_in_flight();
        db.on_io(&io);
        let rollback = db.take_rollback();
        let after = db.query_in_flight();
        match (before, after) {
            (false, true) => {
                conn.query_since = Some(event.ktime_ns);
                self.facts.query(event.ktime_ns);
            }
            (true, false) => {
                if let Some(since) = conn.query_since.take() {
                    self.query_ended_us = Some(record(&mut self.queries, since, event.ktime_ns));
                }
            }
            _ => {}
        }
        // The first reply that carries the transaction state (a MySQL OK/EOF's status flags,
        // a PostgreSQL ReadyForQuery) settles a connection unknown since attach.
        let txn_known = conn.txn() != Txn::Unknown;
        let goodbye_in_txn = txn_was_open && conn.goodbye_sent();
        let how = if goodbye_in_txn {
            Some(RollbackHow::Goodbye)
        } else {
            (rollback && told_to_end).then_some(RollbackHow::Rollback)
        };
        let violation = how.map(|how| conn.rolled_back(at_ms, event.ktime_ns, how));
        if conn.txn_open() {
            conn.txn_since.get_or_insert(event.ktime_ns);
        } else {
            conn.txn_since = None;
        }
        if txn_known {
            self.settle_what(key, WHAT_TRANSACTION, at_ms, "traffic");
        } else if !goodbye_before && conn.goodbye_sent() {
            // The goodbye ends the session: whatever it had open the database rolls back
            // now, unseen, as a close would end it (`close` settles the same way). An exit
            // that follows without close(2) (mysql2's pool.end() then process.exit(0)) then
            // leaves nothing unknown behind.
            self.settle_what(key, WHAT_TRANSACTION, at_ms, "goodbye");
        }
        violation
    }

    /// What is in flight, for one target or all of them.
    pub fn in_flight(&self, tgid: Option<u32>) -> InFlight {
        let mut out = InFlight::default();
        let mut tgids: Vec<u32> = self.requests_by_target.keys().copied().collect();
        tgids.extend(self.busy_at_attach.keys());
        tgids.sort_unstable();
        tgids.dedup();
        out.requests = tgids
            .into_iter()
            .filter(|t| tgid.is_none_or(|wanted| wanted == *t))
            .map(|t| self.requests_in_flight(t))
            .sum();
        let calls = self.calls(tgid);
        out.upstream_calls = calls.in_flight;
        out.first_calls = calls.first;
        for conn in self.conns.values() {
            if tgid.is_some_and(|t| t != conn.tgid) {
                continue;
            }
            out.queries += conn.query_in_flight() as u64;
            out.transactions += conn.txn_open() as u64;
        }
        let mine = |(t, _): &(u32, u32)| tgid.is_none_or(|wanted| wanted == *t);
        out.unknown_txns = self.unresolved_txns().filter(mine).count() as u64;
        out.unknown = self.unresolved().filter(mine).count() as u64 + out.unknown_txns;
        out
    }

    /// A target exited: the kernel closes its connections. `busy_fds`: its client
    /// connections with a request in flight, as the kernel's map said. Returns the
    /// violations, in order: open transactions, leaked database connections, what was in
    /// flight.
    pub fn exit(
        &mut self,
        tgid: u32,
        busy_fds: &[u32],
        ktime_ns: u64,
        at_ms: u64,
        ms: impl Fn(u64) -> u64,
    ) -> Vec<Violation> {
        let keys: Vec<_> = self
            .conns
            .range((tgid, 0)..=(tgid, u32::MAX))
            .map(|(k, _)| *k)
            .collect();
        let gone: Vec<Conn> = keys.iter().filter_map(|k| self.conns.remove(k)).collect();
        if !gone.is_empty()
            || self.requests_in_flight(tgid) > 0
            || self.calls(Some(tgid)).in_flight > 0
        {
            // The kernel closing them is activity, as a close(2) is: else the quiet window
            // would count from before the exit, and a request cut by it would leave the
            // target "drained" since long before, in hindsight.
            self.touch(ktime_ns);
        }
        self.requests_by_target.remove(&tgid);
        self.facts.exited(tgid);
        self.busy_at_attach.remove(&tgid);
        self.ended_here.remove(&tgid);
        self.calls_exited(tgid);
        // Unknown connections cut by the exit stay unresolved: listed, never a violation;
        // the verdict cannot be `clean` about them (`exited_unknown`).
        for unknown in self
            .unknown
            .iter_mut()
            .filter(|u| u.live && u.report.pid == tgid)
        {
            unknown.live = false;
            self.exited_unknown += 1;
        }
        let request_busy = |c: &Conn| c.role == Role::Client && busy_fds.contains(&c.fd);
        // An encrypted conversation's rhythm is no proof of a query in flight (a TLS
        // close_notify or an encrypted Terminate is a send too): unverified instead.
        let query_busy = |c: &Conn| c.query_in_flight() && c.unread().is_none();
        let mut violations = Vec::new();
        for conn in gone.iter().filter(|c| c.txn_open()) {
            violations.push(Violation::OpenTransaction(OpenTransaction {
                pid: tgid,
                at_ms,
                fd: conn.fd,
                peer: conn.peer_text(),
                protocol: conn.protocol,
                age_ms: conn.txn_age_ms(ktime_ns),
            }));
        }
        for conn in gone.iter().filter(|c| c.role == Role::Db) {
            if conn.close_is_clean() {
                continue;
            }
            if let Some(unread) = conn.unread() {
                self.unverified.push(unread);
            } else {
                // A goodbye followed by the exit is a clean close: the kernel only closes
                // what the protocol already ended (node-pg's pool.end() then process.exit()).
                violations.push(leaked(conn, at_ms, ClosedBy::Exit, &ms));
            }
        }
        let busy: Vec<&Conn> = gone
            .iter()
            .filter(|c| request_busy(c) || query_busy(c))
            .collect();
        if !busy.is_empty() {
            violations.push(Violation::InflightAtExit(InflightAtExit {
                pid: tgid,
                at_ms,
                requests: busy.iter().filter(|c| request_busy(c)).count() as u64,
                queries: busy.iter().filter(|c| query_busy(c)).count() as u64,
                connections: busy
                    .iter()
                    .map(|c| c.peer_text().unwrap_or_else(|| format!("fd {}", c.fd)))
                    .collect(),
            }));
        }
        for conn in &gone {
            self.count_close(conn.tgid, conn.role);
        }
        violations
    }
}
