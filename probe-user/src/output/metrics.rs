//! Prometheus metrics of a session, in the text exposition format 0.0.4 (`drainwatch serve`).
//!
//! Gauges are read from the state when a scrape asks; counters are the state's own cumulative
//! counts (they only grow while drainwatch runs). The two latency histograms keep their own
//! Prometheus buckets, fed at each scrape with the latencies the connection tracker recorded
//! since the previous one (it records them in hdrhistogram histograms, in µs, to 3
//! significant digits: a latency lands in a bucket as that rounding leaves it).
//!
//! What differs between servers carries a `comm` label (the target's process name, as
//! `ps -o comm` shows it): `serve --pid <redis> --comm nginx` keeps two series. Names are few,
//! pids are not, so there is no `pid` label but on `target_up`. Request latencies too: the
//! kernel keeps a histogram per target process (probe_common::latency).
//!
//! Every name is prefixed `drainwatch_`; docs/observability.md lists them for dashboards.

use std::collections::{BTreeMap, BTreeSet};

use exposition::Text;
pub use exposition::{HdrFeed, LatencyBuckets, BUCKETS_US};

use crate::{
    events::Role,
    model::conns::ConnTracker,
    model::state::{AuditState, Origin},
};

/// The `Content-Type` of a scrape.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Violation kinds, as the report names them (docs/design.md): every one is exported, zero or
/// not, so that `rate()` and `increase()` work from the first scrape.
pub use crate::verdict::policy::KINDS as VIOLATION_KINDS;

/// A target as `drainwatch_target_up` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetUp {
    pub pid: u32,
    pub comm: String,
    pub up: bool,
}

/// What one scrape shows, apart from the histograms.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// What is in flight and open, by target name (`comm`).
    pub by_comm: BTreeMap<String, CommSnapshot>,
    pub events_received: u64,
    pub events_lost: u64,
    pub probe_failures: u64,
    pub targets: Vec<TargetUp>,
    /// Operations by (target name, SPEC); `None` without `--op` (metrics/ops.rs).
    pub operations: Option<BTreeMap<(String, String), ops::OpsSeries>>,
}

/// The part of a scrape that is counted per target name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommSnapshot {
    /// Open connections: client, db, upstream, listener; a socket several processes of the
    /// name hold (nginx's listener, inherited by its workers) is one (docs/design.md).
    pub connections: [u64; 4],
    /// Opened and closed since attach: client, db.
    pub opened: [u64; 2],
    pub closed: [u64; 2],
    /// Age of the oldest open transaction in µs, 0 when none is open.
    pub oldest_transaction_us: u64,
    pub requests_in_flight: u64,
    pub queries_in_flight: u64,
    pub upstream_calls_in_flight: u64,
    pub transactions_open: u64,
    /// Violations so far, in the order of [`VIOLATION_KINDS`].
    pub violations: [u64; VIOLATION_KINDS.len()],
}

const ROLES: [&str; 4] = ["client", "db", "upstream", "listener"];

fn role_index(role: Role) -> usize {
    match role {
        Role::Client => 0,
        Role::Db => 1,
        Role::Upstream => 2,
        Role::Listener => 3,
    }
}

impl Snapshot {
    /// Reads a session's state now (with the events it lost and its probe's failures).
    pub fn of(state: &AuditState, events_lost: u64, probe_failures: u64) -> Self {
        let mut snapshot = Snapshot {
            events_received: state.received(),
            events_lost,
            probe_failures,
            ..Snapshot::default()
        };
        let comm_of = |tgid: u32| state.comm_of(tgid).unwrap_or("unknown").to_string();
        // Every name watched has its series from the first scrape, zero or not, so that
        // `rate()` and `increase()` work at once.
        for target in state.targets() {
            snapshot.by_comm.entry(target.comm.clone()).or_default();
        }
        for violation in state.violations() {
            if let Some(i) = VIOLATION_KINDS.iter().position(|k| *k == violation.kind()) {
                snapshot
                    .by_comm
                    .entry(comm_of(violation.pid()))
                    .or_default()
                    .violations[i] += 1;
            }
        }
        // Named targets stay listed after they exit (at 0); processes they forked and
        // processes matched by name are listed while they live, so that a server that forks
        // per connection does not grow a series per child forever.
        snapshot.targets = state
            .targets()
            .filter(|t| t.exit.is_none() || matches!(t.origin, Origin::Named | Origin::Launched))
            .map(|t| TargetUp {
                pid: t.tgid,
                comm: t.comm.clone(),
                up: t.exit.is_none(),
            })
            .collect();
        if let Some(conns) = state.conns() {
            let now_ns = crate::host::procfs::monotonic_now().as_nanos() as u64;
            let running: Vec<(u32, String)> = state
                .targets()
                .filter(|t| t.exit.is_none())
                .map(|t| (t.tgid, t.comm.clone()))
                .collect();
            snapshot.add_conns(conns, &running, &comm_of, now_ns);
        }
        snapshot.operations = ops::snapshot(state);
        snapshot
    }

    fn add_conns(
        &mut self,
        conns: &ConnTracker,
        running: &[(u32, String)],
        comm_of: &dyn Fn(u32) -> String,
        now_ns: u64,
    ) {
        for (tgid, comm) in running {
            let in_flight = conns.in_flight(Some(*tgid));
            let named = self.by_comm.entry(comm.clone()).or_default();
            named.requests_in_flight += in_flight.requests;
            named.queries_in_flight += in_flight.queries;
            named.upstream_calls_in_flight += in_flight.upstream_calls;
            named.transactions_open += in_flight.transactions;
        }
        let mut sockets = BTreeSet::new();
        for conn in conns.conns() {
            let comm = comm_of(conn.tgid);
            if let Some(key) = crate::output::socket_key(conn) {
                if !sockets.insert((comm.clone(), key)) {
                    continue;
                }
            }
            let named = self.by_comm.entry(comm).or_default();
            named.connections[role_index(conn.role)] += 1;
            if let (true, Some(since)) = (conn.txn_open(), conn.txn_since) {
                let age_us = now_ns.saturating_sub(since) / 1_000;
                named.oldest_transaction_us = named.oldest_transaction_us.max(age_us);
            }
        }
        for (tgid, counts) in conns.counts_by_tgid() {
            let named = self.by_comm.entry(comm_of(*tgid)).or_default();
            named.opened[0] += counts.client_opened;
            named.opened[1] += counts.db_opened;
            named.closed[0] += counts.client_closed;
            named.closed[1] += counts.db_closed;
        }
    }
}

/// The exporter's memory between scrapes: the latency histograms.
#[derive(Debug, Default)]
pub struct Exporter {
    /// Client request latencies by target name.
    requests: BTreeMap<String, (HdrFeed, LatencyBuckets)>,
    /// Database query latencies by target name.
    queries: BTreeMap<String, (HdrFeed, LatencyBuckets)>,
    /// Operation latencies by SPEC (metrics/ops.rs).
    operations: BTreeMap<String, (HdrFeed, LatencyBuckets)>,
}

impl Exporter {
    /// Everything a scrape returns, read from a session's state now (see [`Snapshot::of`]).
    pub fn scrape(&mut self, state: &AuditState, events_lost: u64, probe_failures: u64) -> String {
        self.update(state);
        self.render(&Snapshot::of(state, events_lost, probe_failures))
    }

    /// Feeds the latencies recorded since the last update into the histograms.
    pub fn update(&mut self, state: &AuditState) {
        for (comm, hdr) in state.request_histograms_by_comm() {
            let (feed, buckets) = self.requests.entry(comm.clone()).or_default();
            feed.feed(hdr, buckets);
        }
        for (comm, hdr) in state.query_histograms_by_comm() {
            let (feed, buckets) = self.queries.entry(comm.clone()).or_default();
            feed.feed(hdr, buckets);
        }
        ops::update(state, &mut self.operations);
    }

    /// Client request latencies of the targets named `comm`.
    pub fn requests(&self, comm: &str) -> Option<&LatencyBuckets> {
        self.requests.get(comm).map(|(_, buckets)| buckets)
    }

    /// Database query latencies of the targets named `comm`.
    pub fn queries(&self, comm: &str) -> Option<&LatencyBuckets> {
        self.queries.get(comm).map(|(_, buckets)| buckets)
    }

    /// The exposition text of a snapshot and the histograms.
    pub fn render(&self, s: &Snapshot) -> String {
        let mut out = Text::default();
        out.family(
            "build_info",
            "gauge",
            "Always 1; the label says which drainwatch version is exporting.",
        );
        out.sample("build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1);
        out.family(
            "target_up",
            "gauge",
            "1 while the target process runs, 0 once a named target has exited.",
        );
        for t in &s.targets {
            let pid = t.pid.to_string();
            out.sample(
                "target_up",
                &[("pid", &pid), ("comm", &t.comm)],
                u8::from(t.up),
            );
        }
        out.family(
            "connections",
            "gauge",
            "Open TCP connections of the targets, by role (client, db, upstream, listener) \
             and target name.",
        );
        for (comm, c) in &s.by_comm {
            for (role, n) in ROLES.iter().zip(c.connections) {
                out.sample("connections", &[("role", role), ("comm", comm)], n);
            }
        }
        out.family(
            "connections_opened_total",
            "counter",
            "Client and database connections opened since drainwatch attached, by target name.",
        );
        for (comm, c) in &s.by_comm {
            for (role, n) in ROLES.iter().zip(c.opened) {
                out.sample(
                    "connections_opened_total",
                    &[("role", role), ("comm", comm)],
                    n,
                );
            }
        }
        out.family(
            "connections_closed_total",
            "counter",
            "Client and database connections closed since drainwatch attached, by target name.",
        );
        for (comm, c) in &s.by_comm {
            for (role, n) in ROLES.iter().zip(c.closed) {
                out.sample(
                    "connections_closed_total",
                    &[("role", role), ("comm", comm)],
                    n,
                );
            }
        }
        per_comm(
            &mut out,
            s,
            "requests_in_flight",
            "gauge",
            "Client requests received and not yet answered, by target name.",
            |c| c.requests_in_flight,
        );
        per_comm(
            &mut out,
            s,
            "db_queries_in_flight",
            "gauge",
            "Database queries sent and not yet fully answered, by target name.",
            |c| c.queries_in_flight,
        );
        per_comm(
            &mut out,
            s,
            "upstream_calls_in_flight",
            "gauge",
            "Calls to other services sent and not yet answered (docs/design.md, \"upstream call \
             in flight\"), by target name.",
            |c| c.upstream_calls_in_flight,
        );
        per_comm(
            &mut out,
            s,
            "transactions_open",
            "gauge",
            "Database transactions open, as the database's own replies say, by target name.",
            |c| c.transactions_open,
        );
        out.family(
            "oldest_transaction_seconds",
            "gauge",
            "How long the oldest open transaction has been open (0 when none is), by target name.",
        );
        for (comm, c) in &s.by_comm {
            out.sample(
                "oldest_transaction_seconds",
                &[("comm", comm)],
                c.oldest_transaction_us as f64 / 1e6,
            );
        }
        per_comm(
            &mut out,
            s,
            "sigkills_total",
            "counter",
            "SIGKILLs generated for a target (by anyone, the kernel included), by target name.",
            |c| c.violations[0],
        );
        out.family(
            "violations_total",
            "counter",
            "Violations seen, by kind (sigkill, leaked_db_connection, open_transaction, \
             inflight_at_exit, request_dropped, transaction_rolled_back, operation_cut) and \
             target name.",
        );
        for (comm, c) in &s.by_comm {
            for (kind, n) in VIOLATION_KINDS.iter().zip(c.violations) {
                out.sample("violations_total", &[("kind", kind), ("comm", comm)], n);
            }
        }
        out.counter(
            "events_received_total",
            "Events read from the kernel probe.",
            s.events_received,
        );
        out.counter(
            "events_lost_total",
            "Events the probe could not deliver or decode: above 0, the picture is incomplete.",
            s.events_lost,
        );
        out.gauge(
            "probe_failures",
            "Probes that failed to attach: above 0, the picture is incomplete.",
            s.probe_failures,
        );
        out.family(
            "request_duration_seconds",
            "histogram",
            "Client request latency: first byte received to the server's next send, by target name.",
        );
        for (comm, (_, buckets)) in &self.requests {
            out.histogram_samples("request_duration_seconds", &[("comm", comm)], buckets);
        }
        out.family(
            "db_query_duration_seconds",
            "histogram",
            "Database query latency: send to the end of the database's reply, by target name.",
        );
        for (comm, (_, buckets)) in &self.queries {
            out.histogram_samples("db_query_duration_seconds", &[("comm", comm)], buckets);
        }
        ops::render(&mut out, s.operations.as_ref(), &self.operations);
        out.0
    }
}

/// One sample per target name.
fn per_comm(
    out: &mut Text,
    s: &Snapshot,
    name: &str,
    kind: &str,
    help: &str,
    value: impl Fn(&CommSnapshot) -> u64,
) {
    out.family(name, kind, help);
    for (comm, c) in &s.by_comm {
        out.sample(name, &[("comm", comm)], value(c));
    }
}

mod exposition;
mod ops;
#[cfg(test)]
mod tests;
