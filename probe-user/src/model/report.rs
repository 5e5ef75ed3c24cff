//! The report, `drainwatch.report/v1` (docs/design.md). Serialize-only output types: field names
//! here are part of the contract that CI jobs and outside tests parse.

use serde::Serialize;

use crate::events::Protocol;

pub const SCHEMA: &str = "drainwatch.report/v1";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Audit,
    Stop,
    Wait,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Clean,
    Violations,
    Timeout,
    /// Events were lost or a probe failed: never `clean` about what was not seen.
    Incomplete,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Clean => "clean",
            Verdict::Violations => "violations",
            Verdict::Timeout => "timeout",
            Verdict::Incomplete => "incomplete",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TargetReport {
    pub pid: u32,
    pub comm: String,
    /// The process that forked it after attach, if it was followed rather than named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_pid: Option<u32>,
    /// The launched command's process whose signal made it a target (`audit -- CMD`
    /// follows what it signals, docs/design.md "Command line").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signalled_by: Option<SignalledBy>,
    pub exit: Option<ExitReport>,
}

/// Who made a process a target by signalling it, and with which signal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SignalledBy {
    pub pid: u32,
    pub comm: String,
    pub signal: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExitReport {
    pub at_ms: u64,
    /// Exit status when it exited normally; `null` when a signal ended it or it is unknown.
    pub code: Option<i32>,
    /// The signal that ended it (`"SIGKILL"`), or `null`.
    pub signal: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Violation {
    Sigkill(SigkillViolation),
    LeakedDbConnection(LeakedDbConnection),
    OpenTransaction(OpenTransaction),
    InflightAtExit(InflightAtExit),
    RequestDropped(RequestDropped),
    TransactionRolledBack(TransactionRolledBack),
    OperationCut(OperationCut),
}

impl Violation {
    pub fn pid(&self) -> u32 {
        match self {
            Violation::Sigkill(v) => v.pid,
            Violation::LeakedDbConnection(v) => v.pid,
            Violation::OpenTransaction(v) => v.pid,
            Violation::InflightAtExit(v) => v.pid,
            Violation::RequestDropped(v) => v.pid,
            Violation::TransactionRolledBack(v) => v.pid,
            Violation::OperationCut(v) => v.pid,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Violation::Sigkill(_) => "sigkill",
            Violation::LeakedDbConnection(_) => "leaked_db_connection",
            Violation::OpenTransaction(_) => "open_transaction",
            Violation::InflightAtExit(_) => "inflight_at_exit",
            Violation::RequestDropped(_) => "request_dropped",
            Violation::TransactionRolledBack(_) => "transaction_rolled_back",
            Violation::OperationCut(_) => "operation_cut",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClosedBy {
    /// The target exited with the connection open: the kernel closed it.
    Exit,
    /// The target closed it without the protocol's goodbye.
    UncleanClose,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LeakedDbConnection {
    pub pid: u32,
    pub at_ms: u64,
    pub fd: u32,
    /// "ip:port", or null when it could not be read.
    pub local: Option<String>,
    pub peer: Option<String>,
    pub protocol: Protocol,
    /// Null when the connection existed before attach.
    pub opened_at_ms: Option<u64>,
    pub closed_by: ClosedBy,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OpenTransaction {
    pub pid: u32,
    pub at_ms: u64,
    pub fd: u32,
    pub peer: Option<String>,
    pub protocol: Protocol,
    /// Since the transaction was first seen open (a lower bound when it opened before attach).
    pub age_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InflightAtExit {
    pub pid: u32,
    pub at_ms: u64,
    pub requests: u64,
    pub queries: u64,
    /// Peers of the connections with something in flight.
    pub connections: Vec<String>,
}

/// The target closed a client connection with a request in flight: its client never gets
/// the answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RequestDropped {
    pub pid: u32,
    pub at_ms: u64,
    pub fd: u32,
    pub peer: Option<String>,
    /// Since the request started (0 when it was already in flight at attach: a lower bound).
    pub age_ms: u64,
}

/// How a transaction was abandoned: the database rolls it back either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RollbackHow {
    /// The client said goodbye (PostgreSQL Terminate, MySQL COM_QUIT, Redis QUIT) inside it.
    Goodbye,
    /// The client closed the connection inside it.
    Close,
    /// The client asked for the rollback itself (PostgreSQL ROLLBACK, Redis DISCARD) after
    /// its process was told to end: its shutdown threw the work away.
    Rollback,
}

/// A database connection said goodbye or closed while a transaction was open: the database
/// rolls the business operation back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TransactionRolledBack {
    pub pid: u32,
    pub at_ms: u64,
    pub fd: u32,
    pub peer: Option<String>,
    pub protocol: Protocol,
    /// Since the transaction was first seen open.
    pub age_ms: u64,
    pub how: RollbackHow,
}

/// What the report could not see or know (docs/design.md, "coverage").
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Coverage {
    /// The running kernel's release (filled in by the session).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// Which hooks fed the socket side: `socket-tracepoints`, `fentry`, `kprobes` or
    /// `syscalls` (docs/hooks.md; filled in by the session, which chose them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hooks: Option<&'static str>,
    /// TLS libraries found in the targets: hooked (read in plaintext) or not, one line each
    /// (filled in by the session; docs/how-it-sees.md, "TLS").
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tls_libraries: Vec<String>,
    /// Database conversations drainwatch could not read (TLS it cannot decrypt): whatever
    /// happened in them is unknown, so a verdict that depends on them is `incomplete`.
    pub unverified: Vec<Unverified>,
    /// Client connections whose state at attach the evidence could not settle (docs/design.md,
    /// "unknown"): never counted idle silently, never a violation.
    pub unknown_at_attach: Vec<UnknownAtAttach>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Unverified {
    pub pid: u32,
    pub fd: u32,
    pub peer: Option<String>,
    /// `tls-not-decrypted` or `protocol-not-read` (model/protocol/spec.rs).
    pub why: &'static str,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ConnectionCounts {
    pub client_opened: u64,
    pub client_closed: u64,
    pub db_opened: u64,
    pub db_closed: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub latency_us: Percentiles,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SigkillViolation {
    /// The target (tgid) the SIGKILL was generated for.
    pub pid: u32,
    pub at_ms: u64,
    /// Sender thread id and process id (the kernel's pid and tgid).
    pub sender_pid: u32,
    pub sender_tgid: u32,
    pub sender_comm: String,
    pub sender_cmdline: Option<String>,
    /// Generated by the kernel itself (OOM killer and other SI_KERNEL codes).
    pub by_kernel: bool,
    /// Sent by drainwatch (`stop --kill-after`).
    pub by_drainwatch: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DrainReport {
    pub signal: Option<String>,
    pub signal_at_ms: Option<u64>,
    pub drained_at_ms: Option<u64>,
    pub exited_at_ms: Option<u64>,
    pub drain_ms: Option<u64>,
    /// The drain tail (docs/design.md): last client input to the last database query sent
    /// after it; `null` with no client input seen (or sockets not watched).
    pub tail_ms: Option<u64>,
    /// `--settle` (or what `--settle-from` made of a measured tail) in force; `null` if none.
    pub settle_ms: Option<u64>,
    /// What the verdict rests on; `null` when sockets were not watched.
    pub basis: Option<DrainBasis>,
}

/// What a drain verdict rests on (docs/design.md, "drained").
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DrainBasis {
    /// What was observable for these targets: `requests`, `queries`, `transactions`,
    /// `upstream_calls`, `operations`.
    pub observed: Vec<&'static str>,
    /// Where work could go unseen, by target.
    pub could_hide_work: Vec<HiddenWork>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HiddenWork {
    pub pid: u32,
    pub why: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventCounts {
    pub received: u64,
    pub lost: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub mode: Mode,
    pub verdict: Verdict,
    pub targets: Vec<TargetReport>,
    pub violations: Vec<Violation>,
    /// Violations a `--policy` lets through as warnings (absent without one).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Violation>,
    pub drain: Option<DrainReport>,
    /// `null` without `--op`: operations were not watched.
    pub operations: Option<OperationsReport>,
    /// `null` when sockets were not watched: a report never shows zero for what it did not
    /// measure.
    pub connections: Option<ConnectionCounts>,
    pub requests: Option<LatencySummary>,
    pub db_queries: Option<LatencySummary>,
    /// `null` when sockets were not watched.
    pub upstream_calls: Option<UpstreamCalls>,
    pub events: EventCounts,
    /// What could not be seen or known (absent when sockets were not watched).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coverage: Option<Coverage>,
    /// Probes that failed to attach (the verdict is then `incomplete`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub probe_failures: Vec<String>,
}

/// Calls the targets made to other services over their upstream connections
/// (docs/design.md, "upstream call in flight").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UpstreamCalls {
    /// Calls ended since attach: answered, closed unanswered, or found one-way.
    pub count: u64,
    /// In flight when the report was made.
    pub in_flight: u64,
    /// Upstream connections found one-way (sent to, never answered): their sends are no
    /// calls, and the drain's basis names them.
    pub one_way: u64,
}

/// A connection whose state at attach was unknown, and how (if) it became known.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UnknownAtAttach {
    pub pid: u32,
    pub fd: u32,
    pub peer: Option<String>,
    /// What was unknown: `request` (whether one was in flight).
    pub what: &'static str,
    /// When it became known (ms since attach); `null` if it never did.
    pub resolved_at_ms: Option<u64>,
    /// `traffic`, `evidence` (the attach rules applied again call it idle: its process
    /// waits for input with nothing in flight, or it was answered just before the probe
    /// watched it),
    /// `closed`; `null` if never: then it ended (exit, end of the run) still unknown.
    pub resolved_by: Option<&'static str>,
}

/// `operation_cut`: a target exited (or was killed), or one of its threads exited, with
/// operations of `function` in flight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OperationCut {
    pub pid: u32,
    pub at_ms: u64,
    /// The `--op` SPEC as given.
    pub function: String,
    pub count: u64,
    /// How long the oldest of them had been running when it was cut; 0 when unknown.
    pub oldest_age_ms: u64,
}

/// The report's `operations`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OperationsReport {
    /// Operations that returned.
    pub count: u64,
    /// Operations in flight at the end of the run.
    pub in_flight: u64,
    pub latency_us: Percentiles,
}
