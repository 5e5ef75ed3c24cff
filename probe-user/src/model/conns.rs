//! Connections of the targets and what is in flight on them: client requests, database
//! queries, open transactions. Pure, like the rest of the state machine: events in,
//! counts and violations out. Semantics: docs/design.md, "Words".

use std::{collections::BTreeMap, net::SocketAddr};

use hdrhistogram::Histogram;

use crate::{
    events::Protocol,
    events::{
        ConnClose, ConnOpen, DbIo, RequestSample, Resolved, ResolvedBy, Role, TargetRequests,
    },
    model::protocol::{self, DbConn, Txn},
    model::report::{
        ClosedBy, ConnectionCounts, InflightAtExit, LatencySummary, LeakedDbConnection,
        OpenTransaction, Percentiles, RequestDropped, RollbackHow, TransactionRolledBack,
        UnknownAtAttach, Unverified, Violation,
    },
};

/// A connection unknown at attach; `live` until it is resolved or its process exits.
/// `report.what`: [`WHAT_REQUEST`] (a client connection) or [`WHAT_TRANSACTION`] (a
/// database connection whose transaction state nothing settled at attach).
#[derive(Debug)]
struct Unknown {
    live: bool,
    report: UnknownAtAttach,
}

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

    /// The conversation is encrypted and drainwatch cannot read it (docs/design.md, "encrypted
    /// conversation").
    pub fn encrypted(&self) -> bool {
        self.db.as_ref().is_some_and(DbConn::encrypted)
    }

    fn unverified(&self) -> Unverified {
        Unverified {
            pid: self.tgid,
            fd: self.fd,
            peer: self.peer_text(),
            why: "tls-not-decrypted",
        }
    }

    fn rolled_back(&self, at_ms: u64, ktime_ns: u64, how: RollbackHow) -> Violation {
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

    fn txn_age_ms(&self, ktime_ns: u64) -> u64 {
        self.txn_since
            .map(|since| ktime_ns.saturating_sub(since) / 1_000_000)
            .unwrap_or(0)
    }

    pub fn peer_text(&self) -> Option<String> {
        self.peer.map(|p| p.to_string())
    }
}

/// Counts of what is in flight right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InFlight {
    pub requests: u64,
    pub queries: u64,
    pub transactions: u64,
    /// Connections whose state at attach is still unknown: a client connection may hold a
    /// request, a database connection a transaction (those are also in `unknown_txns`).
    pub unknown: u64,
    /// Of `unknown`, database connections whose transaction state is still unknown.
    pub unknown_txns: u64,
}

impl InFlight {
    pub fn is_idle(&self) -> bool {
        self.requests == 0 && self.queries == 0 && self.transactions == 0 && self.unknown == 0
    }
}

pub(crate) fn histogram() -> Histogram<u64> {
    // 1 µs to 1 hour, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

pub(crate) fn summary(h: &Histogram<u64>) -> LatencySummary {
    LatencySummary {
        count: h.len(),
        latency_us: Percentiles {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
        },
    }
}

/// Records a latency and returns it in µs.
fn record(h: &mut Histogram<u64>, from_ns: u64, to_ns: u64) -> u64 {
    let us = (to_ns.saturating_sub(from_ns) / 1000).max(1);
    h.saturating_record(us);
    us
}

pub struct ConnTracker {
    /// ktime of the last request, database or close event: the drain's quiet window counts
    /// from here once nothing is in flight.
    last_activity_ns: u64,
    conns: BTreeMap<(u32, u32), Conn>,
    /// The kernel's request counters of each running target, as last read.
    requests_by_target: BTreeMap<u32, TargetRequests>,
    /// Client connections found busy at attach, by target (their ends are counted apart).
    busy_at_attach: BTreeMap<u32, u64>,
    /// Requests ended by closes the kernel's counters never saw (`ConnClose::
    /// request_uncounted`), by target: (started while watched, in flight at attach).
    ended_here: BTreeMap<u32, (u64, u64)>,
    /// Client connections whose state at attach was unknown, resolved or not, in order.
    unknown: Vec<Unknown>,
    /// Of those, how many were still unknown when their process exited: each could have
    /// been a request the exit cut.
    exited_unknown: u64,
    counts: ConnectionCounts,
    requests: Histogram<u64>,
    queries: Histogram<u64>,
    /// Encrypted database connections that ended: what happened in them is unknown.
    unverified: Vec<Unverified>,
    /// The latency of the query the last `db_io` ended (µs).
    query_ended_us: Option<u64>,
    /// Requests the kernel counted as ended (answered or closed) since attach, over every
    /// target, exited ones included: what a rate is computed from.
    requests_ended: u64,
}

impl std::fmt::Debug for ConnTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnTracker")
            .field("conns", &self.conns)
            .field("counts", &self.counts)
            .finish_non_exhaustive()
    }
}

impl Default for ConnTracker {
    fn default() -> Self {
        Self {
            last_activity_ns: 0,
            conns: BTreeMap::new(),
            requests_by_target: BTreeMap::new(),
            busy_at_attach: BTreeMap::new(),
            ended_here: BTreeMap::new(),
            unknown: Vec::new(),
            exited_unknown: 0,
            counts: ConnectionCounts::default(),
            requests: histogram(),
            queries: histogram(),
            unverified: Vec::new(),
            query_ended_us: None,
            requests_ended: 0,
        }
    }
}

impl Unknown {
    fn key(&self) -> (u32, u32) {
        (self.report.pid, self.report.fd)
    }
}

impl ConnTracker {
    pub fn conns(&self) -> impl Iterator<Item = &Conn> {
        self.conns.values()
    }

    pub fn last_activity_ns(&self) -> u64 {
        self.last_activity_ns
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

    pub fn requests(&self) -> LatencySummary {
        summary(&self.requests)
    }

    pub fn queries(&self) -> LatencySummary {
        summary(&self.queries)
    }

    /// Requests ended (answered or closed) since attach, as the kernel counted them.
    pub fn requests_ended(&self) -> u64 {
        self.requests_ended
    }

    /// Every client request latency recorded so far, in µs (for the metrics exporter).
    pub fn request_histogram(&self) -> &Histogram<u64> {
        &self.requests
    }

    /// Every database query latency recorded so far, in µs (for the metrics exporter).
    pub fn query_histogram(&self) -> &Histogram<u64> {
        &self.queries
    }

    fn count_open(&mut self, role: Role) {
        match role {
            Role::Client => self.counts.client_opened += 1,
            Role::Db => self.counts.db_opened += 1,
            Role::Upstream | Role::Listener => {}
        }
    }

    fn count_close(&mut self, role: Role) {
        match role {
            Role::Client => self.counts.client_closed += 1,
            Role::Db => self.counts.db_closed += 1,
            Role::Upstream | Role::Listener => {}
        }
    }

    fn insert(&mut self, conn: Conn) {
        if let Some(old) = self.conns.remove(&(conn.tgid, conn.fd)) {
            // The fd was reused without a close we saw (dup2 over it, say).
            self.count_close(old.role);
        }
        self.count_open(conn.role);
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
        if role == Role::Db && matches!(protocol, Protocol::Postgres | Protocol::Mysql) {
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

    pub fn open(&mut self, event: &ConnOpen) {
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
    fn settle(&mut self, tgid: u32, fd: u32, at_ms: u64, by: &'static str) -> bool {
        let mut any = false;
        for what in [WHAT_REQUEST, WHAT_TRANSACTION] {
            any |= self.settle_what((tgid, fd), what, at_ms, by);
        }
        any
    }

    fn settle_what(
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
        let Some(conn) = self.conns.remove(&(event.tgid, event.fd)) else {
            return Vec::new();
        };
        self.count_close(conn.role);
        let mut violations = Vec::new();
        if let (Role::Client, Some(since), true) =
            (conn.role, event.request_since_ns, event.request_uncounted)
        {
            let ended = self.ended_here.entry(conn.tgid).or_default();
            match since {
                0 => ended.1 += 1,
                _ => ended.0 += 1,
            }
        }
        if let (Role::Client, Some(since)) = (conn.role, event.request_since_ns) {
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
        if conn.role != Role::Db || conn.goodbye_sent() {
            return violations;
        }
        if conn.encrypted() {
            self.unverified.push(conn.unverified());
            return violations;
        }
        if conn.txn_open() {
            violations.push(conn.rolled_back(at_ms, event.ktime_ns, RollbackHow::Close));
        }
        violations.push(leaked(&conn, at_ms, ClosedBy::UncleanClose, &ms));
        violations
    }

    /// The kernel's request counters: the latest values of each target, and the latencies
    /// of the requests answered since the previous sample.
    pub fn requests_sample(&mut self, sample: &RequestSample) {
        for target in &sample.targets {
            // Only a running target is sampled: one that exited was removed by `exit`.
            self.touch(target.last_edge_ns);
            let before = self
                .requests_by_target
                .insert(target.tgid, *target)
                .unwrap_or_default();
            self.requests_ended += target.ended.saturating_sub(before.ended)
                + target.existing_ended.saturating_sub(before.existing_ended);
        }
        for &(us, count) in &sample.latency_us {
            let us = us.clamp(1, self.requests.high());
            let _ = self.requests.record_n(us, count);
        }
    }

    /// Client requests in flight in one target: those that started while watched and have
    /// not ended, plus those busy at attach whose end the kernel has not counted yet.
    fn requests_in_flight(&self, tgid: u32) -> u64 {
        let counted = self
            .requests_by_target
            .get(&tgid)
            .copied()
            .unwrap_or_default();
        let busy = self.busy_at_attach.get(&tgid).copied().unwrap_or(0);
        let (ended, existing_ended) = self.ended_here.get(&tgid).copied().unwrap_or_default();
        counted.started.saturating_sub(counted.ended + ended)
            + busy.saturating_sub(counted.existing_ended + existing_ended)
    }

    /// A send or recv on a database connection. A goodbye sent inside an open transaction is
    /// `transaction_rolled_back` (the database rolls it back as the session ends). The
    /// latency of a query it ended is kept for [`ConnTracker::take_query_ended_us`].
    pub fn db_io(&mut self, event: &DbIo, at_ms: u64) -> Option<Violation> {
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
                        self.count_open(Role::Db);
                    }
                    // A parser that starts mid-conversation must resynchronise.
                    let from_start = old.opened_ns.is_some() && old.role != Role::Db;
                    (old.local, old.peer, old.opened_ns, from_start)
                }
                None => {
                    self.count_open(Role::Db);
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
        let after = db.query_in_flight();
        match (before, after) {
            (false, true) => conn.query_since = Some(event.ktime_ns),
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
        let violation =
            goodbye_in_txn.then(|| conn.rolled_back(at_ms, event.ktime_ns, RollbackHow::Goodbye));
        if conn.txn_open() {
            conn.txn_since.get_or_insert(event.ktime_ns);
        } else {
            conn.txn_since = None;
        }
        if txn_known {
            self.settle_what(key, WHAT_TRANSACTION, at_ms, "traffic");
        }
        violation
    }

    /// The latency (µs) of the query the last [`ConnTracker::db_io`] ended, if it ended one.
    pub fn take_query_ended_us(&mut self) -> Option<u64> {
        self.query_ended_us.take()
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
        if !gone.is_empty() || self.requests_in_flight(tgid) > 0 {
            // The kernel closing them is activity, as a close(2) is: else the quiet window
            // would count from before the exit, and a request cut by it would leave the
            // target "drained" since long before, in hindsight.
            self.touch(ktime_ns);
        }
        self.requests_by_target.remove(&tgid);
        self.busy_at_attach.remove(&tgid);
        self.ended_here.remove(&tgid);
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
        let query_busy = |c: &Conn| c.query_in_flight() && !c.encrypted();
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
            if conn.encrypted() && !conn.goodbye_sent() {
                self.unverified.push(conn.unverified());
            } else if !conn.goodbye_sent() {
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
            self.count_close(conn.role);
        }
        violations
    }
}

fn leaked(conn: &Conn, at_ms: u64, closed_by: ClosedBy, ms: &impl Fn(u64) -> u64) -> Violation {
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
